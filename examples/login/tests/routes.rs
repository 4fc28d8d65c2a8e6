//! Every route and every error of the login demo, through `oneshot` (no socket), against
//! the two store configurations the demo runs on: Redis + Postgres (private servers the
//! suite starts) and the embedded default (in-process cache + a SQLite file in a temp
//! dir). Each behaviour is one `async fn(Kind)`; `both!` makes a `#[tokio::test]` per
//! configuration.

#![allow(missing_docs, unreachable_pub)] // test code
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use argon2::Params;
use axum::{
    body::Body,
    http::{header, HeaderMap, Request, StatusCode},
    Router,
};
use http_body_util::BodyExt;
use login_demo::{app, AppState, Config, Users, OWNER_POINTER};
use serde_json::{json, Value};
use tiered_sessions::{
    sqlx::{self, Connection as _, PgConnection, SqlitePool},
    MemoryCache, PostgresDurable, RedisCache, SqliteDurable, TieredStore,
};
use tiered_sessions_tests::{shared_postgres, RedisServer};
use time::{format_description::well_known::Rfc3339, OffsetDateTime};
use tower::ServiceExt;

const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
const CHROME_MAC: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 \
                          (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Redis cache, Postgres durable tier.
    Tiered,
    /// In-process cache, SQLite file: the embedded default.
    Embedded,
}

enum Durable {
    Postgres {
        database: String,
    },
    Sqlite {
        pool: SqlitePool,
        _dir: tempfile::TempDir,
    },
}

/// One app over a fresh store, with handles on the tiers under it.
struct Fixture {
    app: Router,
    redis: Option<RedisServer>,
    durable: Durable,
}

impl Fixture {
    async fn new(kind: Kind) -> Self {
        let (builder, redis, durable) = match kind {
            Kind::Tiered => {
                let redis = RedisServer::start().await;
                let cache = RedisCache::connect(&redis.url())
                    .await
                    .unwrap()
                    .with_op_timeout(std::time::Duration::from_secs(2));
                let url = shared_postgres().await.create_database().await;
                let durable = PostgresDurable::connect(&url).await.unwrap();
                durable.migrate().await.unwrap();
                let database = url.rsplit('/').next().unwrap().to_owned();
                (
                    TieredStore::builder(cache).with_durable(durable),
                    Some(redis),
                    Durable::Postgres { database },
                )
            }
            Kind::Embedded => {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("sessions.sqlite");
                let durable = SqliteDurable::connect(&format!("sqlite://{}", path.display()))
                    .await
                    .unwrap();
                durable.migrate().await.unwrap();
                let pool = durable.pool().clone();
                (
                    TieredStore::builder(MemoryCache::new(16 * 1024 * 1024)).with_durable(durable),
                    None,
                    Durable::Sqlite { pool, _dir: dir },
                )
            }
        };
        // As `Config::store` configures it in `main`.
        let store = builder
            .with_idle_timeout(Config::DEFAULT_IDLE_TIMEOUT)
            .with_owner_pointer(OWNER_POINTER)
            .build()
            .unwrap();
        let state = AppState::new(store, cheap_users())
            .with_secure_cookies(false)
            .with_description(format!("{kind:?} test store"));
        Fixture {
            app: app(state),
            redis,
            durable,
        }
    }

    fn browser(&self, user_agent: &str) -> Browser {
        Browser {
            app: self.app.clone(),
            cookie: None,
            user_agent: user_agent.to_owned(),
        }
    }

    /// Cuts the app off from its durable tier: Postgres refuses the database's
    /// connections and drops the open ones; the SQLite pool is closed.
    async fn make_durable_unreachable(&self) {
        match &self.durable {
            Durable::Postgres { database } => {
                let cluster = shared_postgres().await;
                let mut admin = PgConnection::connect(&cluster.url("postgres"))
                    .await
                    .unwrap();
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "ALTER DATABASE {database} ALLOW_CONNECTIONS false"
                )))
                .execute(&mut admin)
                .await
                .unwrap();
                sqlx::query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = $1 AND pid <> pg_backend_pid()",
                )
                .bind(database)
                .execute(&mut admin)
                .await
                .unwrap();
            }
            Durable::Sqlite { pool, .. } => pool.close().await,
        }
    }
}

/// The demo users with the cheapest Argon2 parameters, so a debug build checks a password
/// in microseconds (the embedded hashes take a quarter second each there).
fn cheap_users() -> Users {
    Users::demo_hashed_with(Params::new(8, 1, 1, None).unwrap()).unwrap()
}

/// A client with a cookie jar of one cookie, the session's.
struct Browser {
    app: Router,
    cookie: Option<String>,
    user_agent: String,
}

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }

    fn content_type(&self) -> &str {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn location(&self) -> Option<&str> {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
    }

    /// The value of the hidden CSRF field on a page.
    fn csrf(&self) -> String {
        let (_, rest) = self
            .body
            .split_once(r#"name="csrf" value=""#)
            .unwrap_or_else(|| panic!("no CSRF field on the page: {}", self.body));
        rest.split('"').next().unwrap().to_owned()
    }
}

impl Browser {
    async fn send(&mut self, request: axum::http::request::Builder, body: Body) -> Reply {
        let mut request = request.header(header::USER_AGENT, &self.user_agent);
        if let Some(cookie) = &self.cookie {
            request = request.header(header::COOKIE, format!("id={cookie}"));
        }
        let response = self
            .app
            .clone()
            .oneshot(request.body(body).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        for set in headers.get_all(header::SET_COOKIE) {
            let set = set.to_str().unwrap();
            let Some(value) = set.strip_prefix("id=") else {
                panic!("an unexpected cookie: {set}");
            };
            let value = value.split(';').next().unwrap();
            if value.is_empty() || set.contains("Max-Age=0") {
                self.cookie = None; // a removal
            } else {
                assert!(set.contains("HttpOnly"), "{set}");
                assert!(set.contains("SameSite=Lax"), "{set}");
                self.cookie = Some(value.to_owned());
            }
        }
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn get(&mut self, path: &str) -> Reply {
        self.send(Request::get(path), Body::empty()).await
    }

    async fn post_form(&mut self, path: &str, fields: &[(&str, &str)]) -> Reply {
        let body = serde_urlencoded::to_string(fields).unwrap();
        self.send(
            Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded"),
            Body::from(body),
        )
        .await
    }

    async fn post_json(&mut self, path: &str, body: Value) -> Reply {
        self.send(
            Request::post(path).header(header::CONTENT_TYPE, "application/json"),
            Body::from(body.to_string()),
        )
        .await
    }

    /// The CSRF token of the current session, from the start page.
    async fn csrf(&mut self) -> String {
        let page = self.get("/").await;
        assert_eq!(page.status, StatusCode::OK, "{page:?}");
        page.csrf()
    }

    async fn sign_in_form(&mut self, username: &str, password: &str) -> Reply {
        let csrf = self.csrf().await;
        self.post_form(
            "/login",
            &[
                ("username", username),
                ("password", password),
                ("csrf", &csrf),
            ],
        )
        .await
    }

    async fn api_login(&mut self, username: &str, password: &str) -> Reply {
        self.post_json(
            "/api/login",
            json!({ "username": username, "password": password }),
        )
        .await
    }

    async fn signed_in_as(&mut self, username: &str, password: &str) {
        let reply = self.api_login(username, password).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        assert!(self.cookie.is_some());
    }

    async fn me(&mut self) -> Reply {
        self.get("/api/me").await
    }

    /// The storage key of this browser's session, from the session list.
    async fn own_key(&mut self) -> String {
        let sessions = self.sessions().await;
        let own = sessions.iter().find(|s| s["current"] == true).unwrap();
        own["key"].as_str().unwrap().to_owned()
    }

    async fn sessions(&mut self) -> Vec<Value> {
        let reply = self.get("/api/sessions").await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        reply.json()["sessions"].as_array().unwrap().clone()
    }
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod tiered {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Kind::Tiered).await;
                }
            )*
        }
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Kind::Embedded).await;
                }
            )*
        }
    };
}

both!(
    anonymous_start_page_is_the_sign_in_form,
    form_sign_in_rotates_the_session_id,
    wrong_credentials_are_401_without_saying_which,
    csrf_token_missing_forged_or_stale_is_403,
    malformed_forms_are_422_and_oversized_bodies_413,
    logout_form_ends_the_session,
    api_login_me_visit_logout,
    api_rejects_bad_input_with_json_errors,
    garbage_cookie_is_signed_out_not_an_error,
    sign_out_everywhere_else_leaves_only_the_current_session,
    revoking_another_users_session_is_refused,
    revoke_button_signs_out_one_session,
    health_is_200_when_every_tier_answers,
    health_is_503_when_the_durable_tier_is_unreachable,
    unknown_routes_and_methods_get_error_pages,
);

async fn anonymous_start_page_is_the_sign_in_form(kind: Kind) {
    let fx = Fixture::new(kind).await;
    let mut browser = fx.browser(FIREFOX);
    let page = browser.get("/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.content_type().starts_with("text/html"));
    assert!(page.body.contains(r#"action="/login""#), "{}", page.body);
    assert_eq!(page.csrf().len(), 64);
    for shown in ["alice", "rabbit-hole-42", "bob", "can-we-fix-it"] {
        assert!(page.body.contains(shown), "credentials shown: {shown}");
    }
    assert!(
        browser.cookie.is_some(),
        "the CSRF token lives in a session"
    );
    // The same session keeps the same token.
    assert_eq!(browser.csrf().await, page.csrf());

    let css = browser.get("/style.css").await;
    assert_eq!(css.status, StatusCode::OK);
    assert!(css.content_type().starts_with("text/css"));
}

async fn form_sign_in_rotates_the_session_id(kind: Kind) {
    let fx = Fixture::new(kind).await;
    let mut browser = fx.browser(FIREFOX);
    let token_before = browser.csrf().await;
    let anonymous = browser.cookie.clone().unwrap();

    let reply = browser.sign_in_form("alice", "rabbit-hole-42").await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{reply:?}");
    assert_eq!(reply.location(), Some("/"));
    let signed_in = browser.cookie.clone().unwrap();
    assert_ne!(signed_in, anonymous, "sign-in rotates the session id");

    // The pre-login id is dead: it does not carry the sign-in.
    let mut attacker = fx.browser(FIREFOX);
    attacker.cookie = Some(anonymous);
    assert_eq!(attacker.me().await.status, StatusCode::UNAUTHORIZED);

    // The profile page: the user, a visit counted per view, this session listed.
    let page = browser.get("/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("Alice Liddell"), "{}", page.body);
    assert!(page.body.contains(r#"id="visits">1<"#), "{}", page.body);
    assert!(page.body.contains("Firefox on Linux"));
    assert!(page.body.contains("this device"));
    assert!(page.body.contains("30 minutes"));
    assert_ne!(
        page.csrf(),
        token_before,
        "the CSRF token is renewed at sign-in"
    );
    let page = browser.get("/").await;
    assert!(page.body.contains(r#"id="visits">2<"#));
    assert_eq!(browser.me().await.json()["visits"], 2);
}

async fn wrong_credentials_are_401_without_saying_which(kind: Kind) {
    let fx = Fixture::new(kind).await;
    let mut browser = fx.browser(FIREFOX);
    let wrong_password = browser.sign_in_form("alice", "guess").await;
    let unknown_user = browser.sign_in_form("mallory", "guess").await;
    for reply in [&wrong_password, &unknown_user] {
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert!(reply.content_type().starts_with("text/html"));
        assert!(reply.body.contains("invalid username or password"));
        // The form comes back, ready to try again.
        assert_eq!(reply.csrf().len(), 64);
    }
    assert!(wrong_password.body.contains(r#"value="alice""#));
    assert_eq!(browser.me().await.status, StatusCode::UNAUTHORIZED);

    let api = browser.api_login("alice", "guess").await;
    assert_eq!(api.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        api.json(),
        json!({ "error": "invalid username or password" })
    );
    let api = browser.api_login("", "").await;
    assert_eq!(api.status, StatusCode::UNAUTHORIZED);
}

async fn csrf_token_missing_forged_or_stale_is_403(kind: Kind) {
    let fx = Fixture::new(kind).await;
    let mut browser = fx.browser(FIREFOX);
    let token = browser.csrf().await;
    let forged = "0".repeat(64);
    let login = |csrf: Option<&str>| {
        let mut fields = vec![("username", "alice"), ("password", "rabbit-hole-42")];
        if let Some(csrf) = csrf {
            fields.push(("csrf", csrf));
        }
        fields
            .iter()
            .map(|(k, v)| (*k, v.to_string()))
            .collect::<Vec<_>>()
    };
    for fields in [
        login(None),
        login(Some("")),
        login(Some(&forged)),
        login(Some(&token[..63])),
    ] {
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let reply = browser.post_form("/login", &fields).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{fields:?}");
        assert!(reply.content_type().starts_with("text/html"));
        assert!(reply.body.contains("reload the page"), "{}", reply.body);
    }
    // The token checks out before anything else: a forged request with missing fields is
    // still a 403, not a 422 that would tell it what to fix.
    let reply = browser.post_form("/login", &[("csrf", &forged)]).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);

    // A valid token from another session (or one left from before a sign-out) is stale.
    let mut other = fx.browser(FIREFOX);
    let fields = login(Some(&token));
    let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(
        other.post_form("/login", &fields).await.status,
        StatusCode::FORBIDDEN,
        "no session: no token to match"
    );
    other.get("/").await;
    assert_eq!(
        other.post_form("/login", &fields).await.status,
        StatusCode::FORBIDDEN,
        "another session's token"
    );

    // Signed in, every state-changing form needs the token.
    assert_eq!(
        browser.post_form("/login", &fields).await.status,
        StatusCode::SEE_OTHER
    );
    for path in ["/logout", "/sessions/revoke-others", "/sessions/revoke"] {
        let reply = browser
            .post_form(path, &[("csrf", &token), ("key", &forged)])
            .await;
        assert_eq!(
            reply.status,
            StatusCode::FORBIDDEN,
            "{path}: the pre-login token is stale"
        );
        let reply = browser.post_form(path, &[("key", &forged)]).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{path}: no token");
    }
    assert_eq!(browser.me().await.status, StatusCode::OK, "still signed in");
}

async fn malformed_forms_are_422_and_oversized_bodies_413(kind: Kind) {
    let fx = Fixture::new(kind).await;
    let mut browser = fx.browser(FIREFOX);
    let csrf = browser.csrf().await;
    let reply = browser
        .post_form("/login", &[("username", "alice"), ("csrf", &csrf)])
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{reply:?}");
    assert!(reply.content_type().starts_with("text/html"));

    let huge = "x".repeat(64 * 1024);
    let reply = browser
        .post_form(
            "/login",
            &[("username", "alice"), ("password", &huge), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(reply.content_type().starts_with("text/html"));
    let reply = browser
        .post_json(
            "/api/login",
            json!({ "username": "alice", "password": huge }),
        )
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(reply.json()["error"]
        .as_str()
        .unwrap()
        .contains("too large"));

    // A form that is not a form.
    let reply = browser
        .send(
            Request::post("/login").header(header::CONTENT_TYPE, "application/json"),
            Body::from(json!({ "username": "alice", "csrf": csrf }).to_string()),
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

async fn logout_form_ends_the_session(kind: Kind) {
    let fx = Fixture::new(kind).await;
    let mut browser = fx.browser(FIREFOX);
    browser.sign_in_form("bob", "can-we-fix-it").await;
    let session = browser.cookie.clone().unwrap();
    let csrf = browser.csrf().await;
    let reply = browser.post_form("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(reply.location(), Some("/"));
    assert!(browser.cookie.is_none(), "the cookie is removed");
    let mut replay = fx.browser(FIREFOX);
    replay.cookie = Some(session);
    assert_eq!(replay.me().await.status, StatusCode::UNAUTHORIZED);
    let page = replay.get("/").await;
    assert!(page.body.contains(r#"action="/login""#));
}

async fn api_login_me_visit_logout(kind: Kind) {
    let fx = Fixture::new(kind).await;
    let mut script = fx.browser("curl/8.5.0");
    let reply = script.api_login("alice", "rabbit-hole-42").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let body = reply.json();
    assert_eq!(body["user"]["username"], "alice");
    assert_eq!(body["user"]["id"], "00847d56-5c00-4313-bd50-f2e2250e4649");
    assert!(body["user"].get("password_hash").is_none());
    assert!(!reply.body.contains("argon2"));
    assert!(script.cookie.is_some());

    let me = script.me().await;
    assert_eq!(me.status, StatusCode::OK);
    let me = me.json();
    assert_eq!(me["user"]["name"], "Alice Liddell");
    assert_eq!(me["visits"], 0);
    assert_eq!(me["idle_timeout_secs"], 1800);
    let expires_at = OffsetDateTime::parse(me["expires_at"].as_str().unwrap(), &Rfc3339).unwrap();
    let left = expires_at - OffsetDateTime::now_utc();
    assert!(
        left > time::Duration::minutes(29) && left <= time::Duration::minutes(30),
        "sliding expiry is now + the idle timeout: {left}"
    );

    for expected in 1..=3 {
        let reply = script.post_json("/api/visit", json!({})).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        assert_eq!(reply.json(), json!({ "visits": expected }));
    }
    // An empty body is fine; the content type is what counts.
    let reply = script
        .send(
            Request::post("/api/visit").header(header::CONTENT_TYPE, "application/json"),
            Body::empty(),
        )
        .await;
    assert_eq!(reply.json(), json!({ "visits": 4 }));
    assert_eq!(script.me().await.json()["visits"], 4);

    let sessions = script.sessions().await;
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0]["current"], true);
    assert_eq!(sessions[0]["device"], "curl/8.5.0");
    assert_eq!(sessions[0]["user_agent"], "curl/8.5.0");
    assert_eq!(sessions[0]["key"].as_str().unwrap().len(), 64);

    let session = script.cookie.clone().unwrap();
    let reply = script.post_json("/api/logout", json!({})).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json(), json!({ "signed_out": true }));
    script.cookie = Some(session);
    let me = script.me().await;
    assert_eq!(me.status, StatusCode::UNAUTHORIZED);
    assert_eq!(me.json(), json!({ "error": "sign in first" }));
}

async fn api_rejects_bad_input_with_json_errors(kind: Kind) {
    let fx = Fixture::new(kind).await;
    let mut script = fx.browser("curl/8.5.0");
    let cases = [
        (
            "POST",
            "/api/login",
            Some("application/json"),
            "{\"username\":\"alice\"}",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "POST",
            "/api/login",
            Some("application/json"),
            "{\"username\":",
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/api/login",
            Some("application/json"),
            "[]",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "POST",
            "/api/login",
            None,
            "{\"username\":\"alice\",\"password\":\"rabbit-hole-42\"}",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "POST",
            "/api/login",
            Some("text/plain"),
            "{\"username\":\"alice\",\"password\":\"rabbit-hole-42\"}",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "POST",
            "/api/login",
            Some("application/x-www-form-urlencoded"),
            "username=alice&password=rabbit-hole-42",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        ("GET", "/api/me", None, "", StatusCode::UNAUTHORIZED),
        ("GET", "/api/sessions", None, "", StatusCode::UNAUTHORIZED),
        (
            "POST",
            "/api/visit",
            Some("application/json"),
            "",
            StatusCode::UNAUTHORIZED,
        ),
        (
            "POST",
            "/api/sessions/revoke-others",
            Some("application/json"),
            "",
            StatusCode::UNAUTHORIZED,
        ),
        ("GET", "/api/nope", None, "", StatusCode::NOT_FOUND),
        (
            "GET",
            "/api/visit",
            None,
            "",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
    ];
    for (method, path, content_type, body, expected) in cases {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        let reply = script.send(request, Body::from(body)).await;
        assert_eq!(reply.status, expected, "{method} {path} {body}: {reply:?}");
        assert!(
            reply.content_type().starts_with("application/json"),
            "{reply:?}"
        );
        assert!(reply.json()["error"].is_string(), "{reply:?}");
    }

    // Signed in, a cross-site form post (no JSON content type) still changes nothing.
    script.signed_in_as("alice", "rabbit-hole-42").await;
    for content_type in [
        None,
        Some("text/plain"),
        Some("multipart/form-data; boundary=x"),
    ] {
        let mut request = Request::post("/api/visit");
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        let reply = script.send(request, Body::empty()).await;
        assert_eq!(
            reply.status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type:?}"
        );
    }
    for path in ["/api/logout", "/api/sessions/revoke-others"] {
        let reply = script.send(Request::post(path), Body::empty()).await;
        assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{path}");
    }
    let me = script.me().await.json();
    assert_eq!(me["visits"], 0, "no cross-site visit counted");
}

async fn garbage_cookie_is_signed_out_not_an_error(kind: Kind) {
    let fx = Fixture::new(kind).await;
    let mut browser = fx.browser(FIREFOX);
    for cookie in [
        "garbage",
        "",
        "AAAAAAAAAAAAAAAAAAAAAA",
        "%00%ff",
        "aGVsbG8gd29ybGQ",
        &"A".repeat(4000),
    ] {
        browser.cookie = Some(cookie.to_owned());
        let me = browser.me().await;
        assert_eq!(me.status, StatusCode::UNAUTHORIZED, "{cookie}: {me:?}");
        browser.cookie = Some(cookie.to_owned());
        let page = browser.get("/").await;
        assert_eq!(page.status, StatusCode::OK, "{cookie}");
        assert!(page.body.contains(r#"action="/login""#));
    }
    // A well-formed id of no session: signed out too, and a fresh session works.
    let mut other = fx.browser(FIREFOX);
    other.signed_in_as("alice", "rabbit-hole-42").await;
    let real = other.cookie.clone().unwrap();
    let mut forged = real.clone().into_bytes();
    forged[0] = if forged[0] == b'A' { b'B' } else { b'A' };
    browser.cookie = Some(String::from_utf8(forged).unwrap());
    assert_eq!(browser.me().await.status, StatusCode::UNAUTHORIZED);
    browser.signed_in_as("bob", "can-we-fix-it").await;
    assert_eq!(browser.me().await.json()["user"]["username"], "bob");
}

async fn sign_out_everywhere_else_leaves_only_the_current_session(kind: Kind) {
    let fx = Fixture::new(kind).await;
    let mut laptop = fx.browser(FIREFOX);
    let mut desktop = fx.browser(CHROME_MAC);
    let mut phone = fx.browser("curl/8.5.0");
    let mut bob = fx.browser(FIREFOX);
    laptop.sign_in_form("alice", "rabbit-hole-42").await;
    desktop.signed_in_as("alice", "rabbit-hole-42").await;
    phone.signed_in_as("alice", "rabbit-hole-42").await;
    bob.signed_in_as("bob", "can-we-fix-it").await;

    let sessions = laptop.sessions().await;
    assert_eq!(sessions.len(), 3, "{sessions:?}");
    assert_eq!(sessions.iter().filter(|s| s["current"] == true).count(), 1);
    let mut devices: Vec<&str> = sessions
        .iter()
        .map(|s| s["device"].as_str().unwrap())
        .collect();
    devices.sort_unstable();
    assert_eq!(
        devices,
        ["Chrome on macOS", "Firefox on Linux", "curl/8.5.0"]
    );
    let page = laptop.get("/").await;
    assert!(page.body.contains("Chrome on macOS"));
    assert!(page.body.contains("Sign out everywhere else (2)"));

    let csrf = page.csrf();
    let reply = laptop
        .post_form("/sessions/revoke-others", &[("csrf", &csrf)])
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{reply:?}");
    let page = laptop.get("/").await;
    assert!(
        page.body.contains("Signed out 2 other sessions."),
        "{}",
        page.body
    );
    assert!(!page.body.contains("Sign out everywhere else"));

    let sessions = laptop.sessions().await;
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0]["current"], true);
    assert_eq!(laptop.me().await.status, StatusCode::OK);
    assert_eq!(desktop.me().await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(phone.me().await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        bob.me().await.status,
        StatusCode::OK,
        "other users are untouched"
    );

    // The API does the same.
    desktop.signed_in_as("alice", "rabbit-hole-42").await;
    let reply = desktop
        .post_json("/api/sessions/revoke-others", json!({}))
        .await;
    assert_eq!(reply.json(), json!({ "revoked": 1 }));
    assert_eq!(laptop.me().await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(desktop.sessions().await.len(), 1);
}

async fn revoking_another_users_session_is_refused(kind: Kind) {
    let fx = Fixture::new(kind).await;
    let mut alice = fx.browser(FIREFOX);
    let mut bob = fx.browser(CHROME_MAC);
    alice.signed_in_as("alice", "rabbit-hole-42").await;
    bob.signed_in_as("bob", "can-we-fix-it").await;
    let bobs_key = bob.own_key().await;

    let reply = alice
        .post_json("/api/sessions/revoke", json!({ "key": bobs_key }))
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{reply:?}");
    assert_eq!(reply.json(), json!({ "error": "no such session" }));
    let csrf = alice.csrf().await;
    let reply = alice
        .post_form("/sessions/revoke", &[("csrf", &csrf), ("key", &bobs_key)])
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.content_type().starts_with("text/html"));
    assert_eq!(
        bob.me().await.status,
        StatusCode::OK,
        "bob is still signed in"
    );

    for key in ["not-hex", "", &"g".repeat(64), &bobs_key[..62]] {
        let reply = alice
            .post_json("/api/sessions/revoke", json!({ "key": key }))
            .await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{key}");
    }
    let reply = alice
        .post_json("/api/sessions/revoke", json!({ "key": "0".repeat(64) }))
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    // Anonymous: nothing to revoke with.
    let mut anonymous = fx.browser(FIREFOX);
    let reply = anonymous
        .post_json("/api/sessions/revoke", json!({ "key": bobs_key }))
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(bob.me().await.status, StatusCode::OK);
}

async fn revoke_button_signs_out_one_session(kind: Kind) {
    let fx = Fixture::new(kind).await;
    let mut laptop = fx.browser(FIREFOX);
    let mut phone = fx.browser("curl/8.5.0");
    let mut tablet = fx.browser(CHROME_MAC);
    laptop.sign_in_form("alice", "rabbit-hole-42").await;
    phone.signed_in_as("alice", "rabbit-hole-42").await;
    tablet.signed_in_as("alice", "rabbit-hole-42").await;
    let phone_key = phone.own_key().await;

    let page = laptop.get("/").await;
    assert!(page
        .body
        .contains(&format!(r#"name="key" value="{phone_key}""#)));
    let reply = laptop
        .post_form(
            "/sessions/revoke",
            &[("csrf", &page.csrf()), ("key", &phone_key)],
        )
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{reply:?}");
    assert_eq!(phone.me().await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(tablet.me().await.status, StatusCode::OK);
    let page = laptop.get("/").await;
    assert!(page.body.contains("That session is signed out."));
    assert_eq!(laptop.sessions().await.len(), 2);

    // Revoking the current session signs it out.
    let own_key = tablet.own_key().await;
    let reply = tablet
        .post_json("/api/sessions/revoke", json!({ "key": own_key }))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(tablet.me().await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(laptop.sessions().await.len(), 1);
}

async fn health_is_200_when_every_tier_answers(kind: Kind) {
    let fx = Fixture::new(kind).await;
    let mut probe = fx.browser("kube-probe/1.30");
    let reply = probe.get("/health").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let body = reply.json();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["cache"]["state"], "ok");
    assert_eq!(body["durable"]["state"], "ok");
    assert!(body["cache"]["latency_ms"].is_number());
    assert!(probe.cookie.is_none(), "a health check makes no session");
}

async fn health_is_503_when_the_durable_tier_is_unreachable(kind: Kind) {
    let fx = Fixture::new(kind).await;
    let mut alice = fx.browser(FIREFOX);
    alice.signed_in_as("alice", "rabbit-hole-42").await;
    fx.make_durable_unreachable().await;

    let reply = fx.browser("kube-probe/1.30").get("/health").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    let body = reply.json();
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["cache"]["state"], "ok");
    assert_eq!(body["durable"]["state"], "down");
    assert!(body["durable"]["reason"].is_string());

    // Cached sessions still read; nothing that must be saved is acknowledged, and the
    // failure is a 503 with a message, never a bare 500.
    assert_eq!(alice.me().await.status, StatusCode::OK);
    let visit = alice.post_json("/api/visit", json!({})).await;
    assert_eq!(visit.status, StatusCode::SERVICE_UNAVAILABLE, "{visit:?}");
    assert!(visit.json()["error"]
        .as_str()
        .unwrap()
        .contains("unavailable"));
    let mut newcomer = fx.browser(FIREFOX);
    let login = newcomer.api_login("bob", "can-we-fix-it").await;
    assert_eq!(login.status, StatusCode::SERVICE_UNAVAILABLE, "{login:?}");
    let page = newcomer.get("/").await;
    assert_eq!(page.status, StatusCode::SERVICE_UNAVAILABLE, "{page:?}");
    assert!(page.content_type().starts_with("text/html"));
}

async fn unknown_routes_and_methods_get_error_pages(kind: Kind) {
    let fx = Fixture::new(kind).await;
    let mut browser = fx.browser(FIREFOX);
    let reply = browser.get("/nope").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.content_type().starts_with("text/html"));
    assert!(reply.body.contains("404"));
    let reply = browser.get("/login").await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(reply.content_type().starts_with("text/html"));
}

// Redis + Postgres only: what the durable tier is for.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_survives_redis_flush() {
    let fx = Fixture::new(Kind::Tiered).await;
    let mut alice = fx.browser(FIREFOX);
    alice.sign_in_form("alice", "rabbit-hole-42").await;
    assert_eq!(alice.get("/").await.status, StatusCode::OK);
    alice.post_json("/api/visit", json!({})).await;
    fx.redis.as_ref().unwrap().flushall().await;

    let me = alice.me().await;
    assert_eq!(me.status, StatusCode::OK, "still signed in after FLUSHALL");
    assert_eq!(me.json()["visits"], 2, "one page view, one API visit");
    assert_eq!(alice.sessions().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_is_degraded_but_serving() {
    let mut fx = Fixture::new(Kind::Tiered).await;
    let mut alice = fx.browser(FIREFOX);
    alice.signed_in_as("alice", "rabbit-hole-42").await;
    fx.redis.as_mut().unwrap().kill();

    let reply = fx.browser("kube-probe/1.30").get("/health").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let body = reply.json();
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["cache"]["state"], "down");
    assert_eq!(body["durable"]["state"], "ok");
    assert_eq!(
        alice.me().await.status,
        StatusCode::OK,
        "reads fall back to Postgres"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_still_accepts_sign_ins_and_visits() {
    let mut fx = Fixture::new(Kind::Tiered).await;
    let mut alice = fx.browser(FIREFOX);
    alice.signed_in_as("alice", "rabbit-hole-42").await;
    fx.redis.as_mut().unwrap().kill();

    let deadline = std::time::Duration::from_secs(10);
    let visit = tokio::time::timeout(deadline, alice.post_json("/api/visit", json!({})))
        .await
        .expect("a visit completes while Redis is down");
    assert_eq!(visit.json(), json!({ "visits": 1 }));
    let mut bob = fx.browser(CHROME_MAC);
    let login = tokio::time::timeout(deadline, bob.api_login("bob", "can-we-fix-it"))
        .await
        .expect("a sign-in completes while Redis is down");
    assert_eq!(login.status, StatusCode::OK, "{login:?}");
    let logout = tokio::time::timeout(deadline, bob.post_json("/api/logout", json!({})))
        .await
        .expect("a sign-out completes while Redis is down");
    assert_eq!(logout.status, StatusCode::OK, "{logout:?}");
}

/// `main`'s path: the store from `Config` (here the embedded default in a temp dir) lists
/// a user's sessions, so the owner pointer is wired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_from_config_lists_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("demo.sqlite").display());
    let config = Config::from_lookup(|name| (name == "DATABASE_URL").then(|| url.clone())).unwrap();
    let builder = config.store();
    assert!(builder.describe().contains("in-process memory"));
    let store = builder.build().await.unwrap();
    let app = app(AppState::new(store, cheap_users()));
    let mut alice = Browser {
        app,
        cookie: None,
        user_agent: FIREFOX.to_owned(),
    };
    alice.signed_in_as("alice", "rabbit-hole-42").await;
    assert_eq!(alice.sessions().await.len(), 1);
}
