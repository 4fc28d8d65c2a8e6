//! TLS and AUTH: a private `redis-server` with a TLS port, a CA and a server certificate
//! made at test time with the `openssl` command, and an ACL user; the store runs over
//! `rediss://` with that CA, and wrong settings are clear errors without secrets in them.

use tiered_sessions::{
    tower_sessions::SessionStore, BuildError, Builder, RedisCache, StorageKey, TieredStore,
};
use tiered_sessions_tests::{
    record, shared_postgres, RedisServer, TlsRedis, TLS_PASSWORD as PASSWORD, TLS_USER as USER,
};

async fn exercise(store: &TieredStore, redis: &TlsRedis) {
    let mut created = record(1);
    store.create(&mut created).await.expect("create");
    let mut loaded = store.load(&created.id).await.expect("load").expect("live");
    loaded.data.insert("n".to_owned(), 2.into());
    store.save(&loaded).await.expect("save");
    let again = store.load(&created.id).await.expect("load").expect("live");
    assert_eq!(again.data.get("n"), Some(&2.into()));
    assert!(!store.cache_bypassed(), "served by Redis over TLS");
    // The entry is in this Redis, written over the TLS connection.
    let name =
        RedisCache::new(redis.server.admin().clone()).redis_key(&StorageKey::from_id(&created.id));
    let raw: Option<Vec<u8>> = fred::interfaces::KeysInterface::get(redis.server.admin(), &name)
        .await
        .expect("GET");
    assert!(raw.is_some(), "cached in Redis");
    store.delete(&created.id).await.expect("delete");
    assert_eq!(store.load(&created.id).await.expect("load"), None);
}

#[tokio::test]
async fn the_store_runs_over_tls_as_an_acl_user() {
    let redis = TlsRedis::start().await;
    let database_url = shared_postgres().await.create_database().await;
    let store = Builder::new()
        .with_redis_url(redis.url(PASSWORD))
        .with_redis_ca_file(redis.ca())
        .with_database_url(&database_url)
        .build()
        .await
        .expect("build over TLS");
    exercise(&store, &redis).await;

    // The same with the credentials given separately, as from REDISHOST / REDIS_AUTH.
    let store = Builder::from_lookup(|name| match name {
        "REDIS_CA_FILE" => Some(redis.ca()),
        "DATABASE_URL" => Some(database_url.clone()),
        _ => None,
    })
    .with_redis_url(format!("rediss://127.0.0.1:{}", redis.tls_port))
    .with_redis_username(USER)
    .with_redis_password(PASSWORD)
    .build()
    .await
    .expect("build with separate credentials");
    exercise(&store, &redis).await;
}

#[tokio::test]
async fn managed_redis_variables_reach_the_server() {
    let redis = RedisServer::start().await;
    let port = redis.port().to_string();
    let store = Builder::from_lookup(|name| match name {
        "REDISHOST" => Some("127.0.0.1".to_owned()),
        "REDISPORT" => Some(port.clone()),
        _ => None,
    })
    .without_durable()
    .build()
    .await
    .expect("build from REDISHOST / REDISPORT");
    let mut created = record(1);
    store.create(&mut created).await.expect("create");
    assert!(store.load(&created.id).await.expect("load").is_some());
    let calls = redis.command_calls().await;
    assert!(calls.get("set").copied().unwrap_or(0) >= 1, "{calls:?}");
}

fn assert_clear(err: &BuildError, wants: &str) {
    let text = format!("{err} {err:?}");
    assert!(!text.contains(PASSWORD), "no password in errors: {text}");
    assert!(
        !text.contains("not-the-password"),
        "no password in errors: {text}"
    );
    assert!(text.to_lowercase().contains(wants), "{wants}: {text}");
}

#[tokio::test]
async fn a_wrong_password_is_a_clear_error() {
    let redis = TlsRedis::start().await;
    let err = Builder::new()
        .with_redis_url(redis.url("not-the-password"))
        .with_redis_ca_file(redis.ca())
        .without_durable()
        .build()
        .await
        .expect_err("a wrong password");
    assert_clear(&err, "password");
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_clear_error() {
    let redis = TlsRedis::start().await;
    // The system roots do not know the test CA.
    let err = Builder::new()
        .with_redis_url(redis.url(PASSWORD))
        .without_durable()
        .build()
        .await
        .expect_err("an untrusted certificate");
    assert_clear(&err, "certificate");
    // A CA file that is not one.
    let not_pem = std::path::PathBuf::from(redis.certs.path("san.ext"));
    let err = Builder::new()
        .with_redis_url(redis.url(PASSWORD))
        .with_redis_ca_file(&not_pem)
        .without_durable()
        .build()
        .await
        .expect_err("not a CA file");
    assert_clear(&err, "certificate authority");
    assert!(not_pem.exists());
}

#[tokio::test]
async fn secrets_never_show_in_debug_output() {
    let builder = Builder::new()
        .with_redis_url(format!("rediss://{USER}:{PASSWORD}@127.0.0.1:1"))
        .with_redis_password(PASSWORD);
    let shown = format!("{builder:?} {}", builder.describe());
    assert!(!shown.contains(PASSWORD), "{shown}");
    let options = tiered_sessions::ConnectOptions::default().with_password(PASSWORD);
    assert!(!format!("{options:?}").contains(PASSWORD));
}
