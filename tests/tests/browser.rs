//! The session cookie in a real headless Chromium: set, sent back, kept across reloads, with
//! the flags the layer promises.

mod common;

use common::Fixture;
use tiered_sessions_tests::ChromeDriver;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_browser_keeps_the_session_across_a_cache_flush() {
    let f = Fixture::new(common::Kind::Tiered).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let app = f.app();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let driver = ChromeDriver::start().await;
    let browser = driver.browser().await;
    browser.goto(&format!("{url}/visit")).await.expect("goto");
    assert_eq!(page_text(&browser).await, "1");
    for expected in ["2", "3"] {
        browser.refresh().await.expect("reload");
        assert_eq!(page_text(&browser).await, expected);
    }
    f.cache_flush().await;
    browser.refresh().await.expect("reload");
    assert_eq!(
        page_text(&browser).await,
        "4",
        "still the same session after FLUSHALL"
    );

    let cookies = browser.get_all_cookies().await.expect("cookies");
    let id = cookies
        .iter()
        .find(|c| c.name() == "id")
        .expect("the session cookie");
    assert_eq!(id.http_only(), Some(true));
    assert_eq!(id.path(), Some("/"));
    assert_eq!(
        id.same_site().map(|s| s.to_string()).as_deref(),
        Some("Strict")
    );
    browser.close().await.expect("close");
    server.abort();
}

async fn page_text(browser: &fantoccini::Client) -> String {
    let text = browser
        .execute("return document.body.innerText", Vec::new())
        .await
        .expect("innerText");
    text.as_str().expect("a string").trim().to_owned()
}
