//! Run with `cargo run -p tiered-sessions --example counter`, then open
//! <http://127.0.0.1:3000>.
//!
//! A visit counter kept in a session: the store end to end, on the embedded default (an
//! in-process cache and a SQLite file) unless `REDIS_URL` / `DATABASE_URL` say otherwise.
//! `HOST` and `PORT` override the address.

use axum::{response::Html, routing::get, Router};
use tiered_sessions::tower_sessions::Session;

async fn count(session: Session) -> Html<String> {
    let visits = match session.get::<u64>("visits").await {
        Ok(visits) => visits.unwrap_or(0) + 1,
        Err(err) => return Html(format!("<p>session unavailable: {err}</p>")),
    };
    if let Err(err) = session.insert("visits", visits).await {
        return Html(format!("<p>session unavailable: {err}</p>"));
    }
    let expires = session.expiry_date();
    Html(format!(
        "<!doctype html><title>tiered-sessions</title>\
         <p>You have visited this page <b>{visits}</b> times in this session.</p>\
         <p>The session expires at {expires} unless you come back sooner.</p>"
    ))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let builder = tiered_sessions::Builder::from_env();
    let tiers = builder.describe();
    let store = builder.build().await?;
    let app = Router::new()
        .route("/", get(count))
        .layer(tiered_sessions::session_layer(&store).with_secure(false));
    let host = std::env::var("HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    let listener = tokio::net::TcpListener::bind(format!("{host}:{port}")).await?;
    println!(
        "tiered-sessions counter ({tiers}): http://{}/",
        listener.local_addr()?
    );
    axum::serve(listener, app).await?;
    Ok(())
}
