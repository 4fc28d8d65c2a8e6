//! A small login app on tiered-sessions: sign-in with axum-login, a profile page with a
//! visit counter and the user's active sessions ("sign out everywhere else"), a JSON API
//! for scripts, and `/health`.
//!
//! `main.rs` only reads the configuration and calls [`run`]; everything else is here so
//! tests can drive [`app`] without a socket.
//!
//! | route | what it does |
//! |---|---|
//! | `GET /` | the sign-in form, or the profile page when signed in (counts a visit) |
//! | `POST /login` | form `username`, `password`, `csrf`; rotates the session id |
//! | `POST /logout` | form `csrf`; deletes the session |
//! | `POST /sessions/revoke` | form `key`, `csrf`: signs out one of your sessions |
//! | `POST /sessions/revoke-others` | form `csrf`: signs out all your other sessions |
//! | `POST /api/login` | JSON `{"username","password"}`: 200 `{"user",…}` or 401 |
//! | `GET /api/me` | 200 `{"user","visits","expires_at"}` or 401 |
//! | `POST /api/visit` | increments the visit counter: `{"visits": n}` |
//! | `POST /api/logout` | deletes the session |
//! | `GET /api/sessions` | your sessions |
//! | `POST /api/sessions/revoke` | JSON `{"key"}`: signs out one of your sessions |
//! | `POST /api/sessions/revoke-others` | signs out all your other sessions |
//! | `GET /health` | each tier's state; 200 while sessions are served, else 503 |
//!
//! CSRF: see [`csrf`]. Errors: see [`error`].

use std::{future::Future, sync::Arc, time::Duration};

use axum::{
    extract::DefaultBodyLimit,
    http::header,
    middleware,
    response::IntoResponse,
    routing::{get, post},
    Router,
};
use axum_login::AuthManagerLayerBuilder;
use tiered_sessions::{tower_sessions::cookie::SameSite, TieredStore};
use tokio::net::TcpListener;

mod api;
pub mod config;
pub mod csrf;
pub mod error;
mod health;
mod pages;
mod sessions;
mod templates;
pub mod users;

pub use config::Config;
pub use error::AppError;
pub use users::{User, Users, DEMO_ACCOUNTS};

/// Where axum-login keeps its data in the session (its default key).
pub const AUTH_DATA_KEY: &str = "axum-login.data";
/// The JSON pointer to a session's owner in the session data: axum-login's `user_id`.
/// Build the store with it ([`tiered_sessions::Builder::with_owner_pointer`]) so it can
/// list and revoke a user's sessions.
pub const OWNER_POINTER: &str = "/axum-login.data/user_id";
/// Request bodies larger than this are refused with 413: every form and JSON body of
/// this app is a few hundred bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// How often expired rows are swept from the durable tier.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// The axum-login session of this app.
pub type AuthSession = axum_login::AuthSession<Users>;

/// What the handlers share: the session store, the users, and the cookie setting.
#[derive(Debug, Clone)]
pub struct AppState {
    store: TieredStore,
    users: Users,
    secure_cookies: bool,
    tiers: Arc<str>,
}

impl AppState {
    /// State over `store` (built with [`OWNER_POINTER`]) and `users`, with `Secure`
    /// cookies.
    pub fn new(store: TieredStore, users: Users) -> Self {
        Self {
            store,
            users,
            secure_cookies: true,
            tiers: Arc::from(""),
        }
    }

    /// Whether the session cookie is `Secure` (default `true`). Browsers drop `Secure`
    /// cookies set over plain HTTP on anything but `localhost`, so a plain-HTTP setup
    /// turns it off.
    #[must_use]
    pub fn with_secure_cookies(mut self, secure: bool) -> Self {
        self.secure_cookies = secure;
        self
    }

    /// The one-line description of the store's tiers shown on the pages
    /// ([`tiered_sessions::Builder::describe`]).
    #[must_use]
    pub fn with_description(mut self, tiers: impl Into<String>) -> Self {
        self.tiers = Arc::from(tiers.into());
        self
    }

    /// The session store.
    pub fn store(&self) -> &TieredStore {
        &self.store
    }
}

/// The whole app, ready to serve.
///
/// Layers, outermost first: error rendering (a body for every error, HTML or JSON by
/// route), the body limit, then sessions and axum-login on every route but `/health` and
/// the stylesheet, which need no session and must not create one.
pub fn app(state: AppState) -> Router {
    let session_layer = tiered_sessions::session_layer(&state.store)
        .with_secure(state.secure_cookies)
        // Lax rather than the default Strict: following a link to the demo from another
        // site keeps you signed in, while cross-site POSTs still go without the cookie.
        .with_same_site(SameSite::Lax);
    let auth_layer = AuthManagerLayerBuilder::new(state.users.clone(), session_layer)
        .with_data_key(AUTH_DATA_KEY)
        .build();

    let api = Router::new()
        .route("/login", post(api::login))
        .route("/me", get(api::me))
        .route("/visit", post(api::visit))
        .route("/logout", post(api::logout))
        .route("/sessions", get(api::sessions))
        .route("/sessions/revoke", post(api::revoke))
        .route("/sessions/revoke-others", post(api::revoke_others))
        .route_layer(middleware::from_fn(api::require_json));

    Router::new()
        .route("/", get(pages::index))
        .route("/login", post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/sessions/revoke", post(pages::revoke))
        .route("/sessions/revoke-others", post(pages::revoke_others))
        .nest("/api", api)
        .layer(auth_layer)
        .route("/health", get(health::health))
        .route("/style.css", get(stylesheet))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(error::render_errors))
        .with_state(state)
}

async fn stylesheet() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("../assets/style.css"),
    )
}

/// Serves [`app`] on `listener` until `shutdown` completes, then finishes the requests in
/// flight. Also sweeps expired sessions from the durable tier in the background.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let sweeper = tokio::spawn(sweep(state.store.clone()));
    let served = axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await;
    sweeper.abort();
    served
}

/// Deletes expired durable rows every [`SWEEP_INTERVAL`] (a no-op without a durable tier).
async fn sweep(store: TieredStore) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match store.sweep_expired().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "swept expired sessions"),
            Err(err) => tracing::warn!(error = %err, "sweeping expired sessions failed"),
        }
    }
}
