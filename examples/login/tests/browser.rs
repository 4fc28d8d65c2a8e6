//! The demo in a real headless Chromium, on Redis + Postgres servers the test starts:
//! sign in, reload, survive `FLUSHALL`, see the session from a second browser and sign it
//! out from there, sign out. Saves a screenshot of the profile page under
//! `target/screenshots/`.

use std::time::Duration;

use fantoccini::{Client, Locator};
use login_demo::{app, users::Users, AppState, OWNER_POINTER};
use tiered_sessions_tests::{poll_some, poll_until, shared_postgres, ChromeDriver, RedisServer};

/// The text of the first element matching `css`, waiting for it to appear. One script
/// finds and reads it, so a navigation in between cannot leave a stale element handle.
async fn text(browser: &Client, css: &str) -> String {
    let script = "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;";
    let found = poll_some(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async {
            let value = browser.execute(script, vec![css.into()]).await.ok()?;
            value.as_str().map(|s| s.trim().to_owned())
        },
    )
    .await;
    found.unwrap_or_else(|| panic!("no `{css}` on the page"))
}

async fn sign_in(browser: &Client, url: &str, user: &str, password: &str) {
    browser.goto(url).await.expect("open the demo");
    let form = browser
        .form(Locator::Css("form[action='/login']"))
        .await
        .expect("the sign-in form");
    form.set_by_name("username", user).await.expect("username");
    form.set_by_name("password", password)
        .await
        .expect("password");
    form.submit().await.expect("submit");
    // The click returns before the next page has loaded: wait for it.
    let signed_in = poll_until(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async { text(browser, "h1").await.starts_with("Hello") },
    )
    .await;
    assert!(signed_in, "signed in as {user}");
}

async fn visits(browser: &Client) -> u64 {
    text(browser, "#visits")
        .await
        .parse()
        .expect("a visit count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_signs_in_survives_a_flush_and_signs_out_another_browser() {
    let redis = RedisServer::start().await;
    let database = shared_postgres().await.create_database().await;
    let store = tiered_sessions::Builder::new()
        .with_redis_url(redis.url())
        .with_cache_op_timeout(Duration::from_secs(2))
        .with_database_url(&database)
        .with_owner_pointer(OWNER_POINTER)
        .build()
        .await
        .expect("store");
    let users = Users::demo_hashed_with(argon2::Params::new(8, 1, 1, None).expect("params"))
        .expect("demo users");
    let state = AppState::new(store, users)
        .with_secure_cookies(false)
        .with_description("Redis + Postgres (test servers)");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move { axum::serve(listener, app(state)).await });

    let driver = ChromeDriver::start().await;
    let laptop = driver.browser().await;
    let phone = driver.browser().await;

    // The sign-in page shows the demo accounts.
    laptop.goto(&url).await.expect("open");
    let accounts = text(&laptop, "table.accounts").await;
    assert!(
        accounts.contains("alice") && accounts.contains("rabbit-hole-42"),
        "{accounts}"
    );

    sign_in(&laptop, &url, "alice", "rabbit-hole-42").await;
    let first = visits(&laptop).await;
    laptop.refresh().await.expect("reload");
    assert_eq!(
        visits(&laptop).await,
        first + 1,
        "the counter lives in the session"
    );

    // The cache is flushed: still signed in, nothing lost.
    redis.flushall().await;
    laptop.refresh().await.expect("reload");
    assert_eq!(visits(&laptop).await, first + 2, "signed in after FLUSHALL");

    let cookies = laptop.get_all_cookies().await.expect("cookies");
    let cookie = cookies
        .iter()
        .find(|c| c.name() == "id")
        .expect("session cookie");
    assert_eq!(cookie.http_only(), Some(true), "HttpOnly");
    assert_eq!(cookie.path(), Some("/"));
    assert_eq!(
        cookie.same_site().map(|s| s.to_string()).as_deref(),
        Some("Lax")
    );
    assert_eq!(
        cookie.secure(),
        Some(false),
        "plain HTTP on 127.0.0.1 keeps the cookie"
    );

    // A second device: both sessions are listed, and it signs the laptop out.
    sign_in(&phone, &url, "alice", "rabbit-hole-42").await;
    assert_eq!(
        phone
            .find_all(Locator::Css("table.sessions tbody tr"))
            .await
            .expect("rows")
            .len(),
        2
    );
    let shot = screenshot(&phone).await;
    phone
        .find(Locator::Css(
            "form[action='/sessions/revoke-others'] button",
        ))
        .await
        .expect("sign out everywhere else")
        .click()
        .await
        .expect("click");
    let left = poll_until(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            phone
                .find_all(Locator::Css("table.sessions tbody tr"))
                .await
                .is_ok_and(|rows| rows.len() == 1)
        },
    )
    .await;
    assert!(left, "only this device is left");
    laptop.refresh().await.expect("reload");
    assert_eq!(
        text(&laptop, "h1").await,
        "Sign in",
        "the laptop was signed out"
    );

    // And sign out.
    phone
        .find(Locator::Css("form[action='/logout'] button"))
        .await
        .expect("sign out")
        .click()
        .await
        .expect("click");
    let signed_out = poll_until(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async { text(&phone, "h1").await == "Sign in" },
    )
    .await;
    assert!(signed_out, "back on the sign-in page");
    assert!(
        std::fs::metadata(&shot).is_ok_and(|m| m.len() > 10_000),
        "screenshot at {shot}"
    );

    laptop.close().await.expect("close");
    phone.close().await.expect("close");
    server.abort();
}

/// Saves the profile page as a PNG and returns its path.
async fn screenshot(browser: &Client) -> String {
    let png = browser.screenshot().await.expect("screenshot");
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/screenshots");
    std::fs::create_dir_all(dir).expect("screenshot dir");
    let path = format!("{dir}/login-demo-profile.png");
    std::fs::write(&path, png).expect("write screenshot");
    path
}
