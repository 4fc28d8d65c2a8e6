//! Run with `cargo run -p login-demo`, then open <http://127.0.0.1:3000>.
//!
//! With no settings it uses the embedded default store (an in-process cache and the
//! SQLite file `tiered-sessions.sqlite`); `REDIS_URL` and `DATABASE_URL` switch to Redis
//! and Postgres. See `login_demo::config` for every variable.

use std::{net::IpAddr, process::ExitCode};

use login_demo::{AppState, Config, Users};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    // Logs go to stderr: stdout carries the one startup line, for people and scripts.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    match start().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let mut message = format!("login-demo: {err}");
            let mut source = err.source();
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

async fn start() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::from_env()?;
    let builder = config.store();
    let tiers = builder.describe();
    let store = builder.build().await?;
    let state = AppState::new(store, Users::demo())
        .with_secure_cookies(config.cookie_secure)
        .with_description(tiers.clone());

    let listener = tokio::net::TcpListener::bind((config.host.as_str(), config.port))
        .await
        .map_err(|e| format!("cannot listen on {}:{}: {e}", config.host, config.port))?;
    let mut addr = listener.local_addr()?;
    if addr.ip().is_unspecified() {
        // Listening on every interface: this machine's loopback is the one to open.
        addr.set_ip(IpAddr::from([127, 0, 0, 1]));
    }
    println!("login-demo ({tiers}): open http://{addr}/");
    login_demo::run(listener, state, shutdown()).await?;
    Ok(())
}

/// Ctrl-C, or SIGTERM (what container platforms send).
async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}
