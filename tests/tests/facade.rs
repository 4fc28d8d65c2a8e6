//! The facade: `Builder` from URLs, the embedded default, and the layer it configures.

mod common;

use std::time::Duration;

use common::{app, id_of, send, start_session};
use tiered_sessions::{tower_sessions::SessionStore, BuildError, Builder};
use tiered_sessions_tests::{shared_postgres, RedisServer};

#[tokio::test]
async fn embedded_default_keeps_sessions_in_a_sqlite_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("sessions.sqlite");
    let builder = Builder::new().with_sqlite_file(&file);
    assert!(builder.describe().contains("in-process memory"));
    let store = builder.clone().build().await.expect("embedded store");
    assert!(store.is_durable());
    let cookie = start_session(&app(&store)).await;
    // A second process-like store over the same file (a fresh, empty cache) sees it.
    let restarted = builder.build().await.expect("embedded store");
    let record = restarted
        .load(&id_of(&cookie))
        .await
        .expect("load")
        .expect("durable");
    assert_eq!(record.data.get("n"), Some(&1.into()));
    assert!(file.exists());
}

#[tokio::test]
async fn redis_and_postgres_urls_build_a_tiered_store() {
    let redis = RedisServer::start().await;
    let pg = shared_postgres().await.create_database().await;
    let store = Builder::new()
        .with_redis_url(redis.url())
        .with_database_url(&pg)
        .with_key_prefix("app1:")
        .with_idle_timeout(Duration::from_secs(600))
        .build()
        .await
        .expect("tiered store");
    assert_eq!(store.idle_timeout(), Duration::from_secs(600));
    let app = app(&store);
    let cookie = start_session(&app).await;
    let keys: Vec<String> = redis.command("KEYS", vec!["app1:*".into()]).await;
    assert_eq!(keys.len(), 1, "the key prefix is applied: {keys:?}");
    redis.flushall().await;
    assert_eq!(send(&app, "GET", "/read", Some(&cookie)).await.body, "1");
}

#[tokio::test]
async fn layer_sets_a_sliding_http_only_cookie() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Builder::new()
        .with_sqlite_file(dir.path().join("s.sqlite"))
        .with_idle_timeout(Duration::from_secs(900))
        .build()
        .await
        .expect("store");
    let app = app(&store);
    let reply = send(&app, "POST", "/incr", None).await;
    let cookie = reply.set_cookie.expect("a session cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=900"] {
        assert!(cookie.contains(attribute), "{attribute} in {cookie}");
    }
    // A read-only request refreshes the cookie too: the expiry slides.
    let id = reply.cookie.expect("id");
    let again = send(&app, "GET", "/read", Some(&id)).await;
    assert!(again.set_cookie.is_some_and(|c| c.contains("Max-Age=900")));
}

#[tokio::test]
async fn bad_urls_say_what_to_fix() {
    let err = Builder::new()
        .with_database_url("mysql://localhost/app")
        .build()
        .await
        .expect_err("unsupported");
    assert!(matches!(err, BuildError::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("postgres://"), "{err}");

    // Redis being down is not an error (the store connects in the background); a URL
    // that cannot be parsed is, and its message names the URL without the password.
    let err = Builder::new()
        .with_redis_url("redis://user:hunter2@127.0.0.1:notaport")
        .without_durable()
        .build()
        .await
        .expect_err("not a port");
    let text = format!("{err} {err:?}");
    assert!(!text.contains("hunter2"), "no password in errors: {text}");
    assert!(text.contains("user:***@127.0.0.1:notaport"), "{text}");
}
