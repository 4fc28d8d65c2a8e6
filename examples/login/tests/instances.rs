//! Several app instances: two `login-demo` processes share one Redis and one Postgres. A
//! session started on one is used on the other, and a change or a logout on either is
//! seen by the other on its next request.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{header, Method, Request, StatusCode};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use serde_json::{json, Value};
use tiered_sessions_tests::{free_port, poll_until, shared_postgres, RedisServer};

/// A `login-demo` process on a free loopback port; killed when dropped.
struct Instance {
    child: Child,
    base: String,
}

impl Instance {
    fn start(redis_url: &str, database_url: &str) -> Instance {
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_login-demo"))
            .env_clear()
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("REDIS_URL", redis_url)
            .env("DATABASE_URL", database_url)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("the login-demo binary starts");
        Instance {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    set_cookie: Option<String>,
    json: Value,
}

/// One request; `cookie` is the value of the session cookie `id`.
async fn call(
    client: &Client<HttpConnector, Full<Bytes>>,
    instance: &Instance,
    method: Method,
    path: &str,
    cookie: Option<&str>,
    body: Option<Value>,
) -> Option<Reply> {
    let mut request = Request::builder()
        .method(method)
        .uri(format!("{}{path}", instance.base))
        .header(header::USER_AGENT, "instances-test");
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, format!("id={cookie}"));
    }
    let body = match body {
        Some(body) => {
            request = request.header(header::CONTENT_TYPE, "application/json");
            Full::new(Bytes::from(body.to_string()))
        }
        None => Full::new(Bytes::new()),
    };
    let response = client.request(request.body(body).ok()?).await.ok()?;
    let status = response.status();
    let set_cookie = response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok()?.strip_prefix("id="))
        .map(|v| v.split(';').next().unwrap_or_default().to_owned())
        .find(|v| !v.is_empty());
    let bytes = response.into_body().collect().await.ok()?.to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Some(Reply {
        status,
        set_cookie,
        json,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_sessions_changes_and_logouts() {
    let redis = RedisServer::start().await;
    let database_url = shared_postgres().await.create_database().await;
    let (a, b) = (
        Instance::start(&redis.url(), &database_url),
        Instance::start(&redis.url(), &database_url),
    );
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    for instance in [&a, &b] {
        let up = poll_until(
            Duration::from_secs(60),
            Duration::from_millis(100),
            || async {
                matches!(
                    call(&client, instance, Method::GET, "/health", None, None).await,
                    Some(Reply {
                        status: StatusCode::OK,
                        ..
                    })
                )
            },
        )
        .await;
        assert!(up, "{} answers /health", instance.base);
    }
    let get = |instance, path, cookie| call(&client, instance, Method::GET, path, cookie, None);
    let post = |instance, path, cookie| {
        call(
            &client,
            instance,
            Method::POST,
            path,
            cookie,
            Some(json!({})),
        )
    };

    // Signed in on A, known on B.
    let login = call(
        &client,
        &a,
        Method::POST,
        "/api/login",
        None,
        Some(json!({ "username": "alice", "password": "rabbit-hole-42" })),
    )
    .await
    .expect("login on A");
    assert_eq!(login.status, StatusCode::OK, "{login:?}");
    let cookie = login.set_cookie.expect("a session cookie");
    let me = get(&b, "/api/me", Some(&cookie)).await.expect("me on B");
    assert_eq!(me.status, StatusCode::OK, "{me:?}");
    assert_eq!(me.json["user"]["username"], "alice");
    assert_eq!(me.json["visits"], 0);

    // Changes on either are seen by the other on its next request.
    for (n, (writer, reader)) in [(&a, &b), (&b, &a), (&a, &b)].into_iter().enumerate() {
        let visit = post(writer, "/api/visit", Some(&cookie))
            .await
            .expect("visit");
        assert_eq!(visit.json["visits"], n + 1, "{visit:?}");
        let me = get(reader, "/api/me", Some(&cookie)).await.expect("me");
        assert_eq!(me.json["visits"], n + 1, "{me:?}");
    }

    // A logout on B ends the session on A at once.
    let out = post(&b, "/api/logout", Some(&cookie))
        .await
        .expect("logout");
    assert_eq!(out.json, json!({ "signed_out": true }));
    let me = get(&a, "/api/me", Some(&cookie)).await.expect("me on A");
    assert_eq!(me.status, StatusCode::UNAUTHORIZED, "{me:?}");

    // "Sign out everywhere else" on A ends B's sessions of the same user.
    let mut cookies = Vec::new();
    for instance in [&a, &b, &b] {
        let login = call(
            &client,
            instance,
            Method::POST,
            "/api/login",
            None,
            Some(json!({ "username": "alice", "password": "rabbit-hole-42" })),
        )
        .await
        .expect("login");
        cookies.push(login.set_cookie.expect("a session cookie"));
    }
    let sessions = get(&b, "/api/sessions", Some(&cookies[1]))
        .await
        .expect("list");
    assert_eq!(
        sessions.json["sessions"].as_array().map(Vec::len),
        Some(3),
        "{sessions:?}"
    );
    let revoked = post(&a, "/api/sessions/revoke-others", Some(&cookies[0]))
        .await
        .expect("revoke others");
    assert_eq!(revoked.status, StatusCode::OK, "{revoked:?}");
    for cookie in &cookies[1..] {
        let me = get(&b, "/api/me", Some(cookie)).await.expect("me on B");
        assert_eq!(me.status, StatusCode::UNAUTHORIZED, "{me:?}");
    }
    let me = get(&b, "/api/me", Some(&cookies[0]))
        .await
        .expect("me on B");
    assert_eq!(
        me.status,
        StatusCode::OK,
        "the session that signed the others out lives"
    );
}
