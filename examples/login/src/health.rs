//! `GET /health`: for load balancers, container platforms and people.

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde_json::{json, Value};

use crate::AppState;

/// Each tier's state. 200 while sessions are served, also when degraded (e.g. Redis down
/// but Postgres up: slower, still correct), which `status` says; 503 when they are not.
///
/// "Served" means a sign-in or a visit can be acknowledged: the tier that holds the truth
/// answers. That is the durable tier when there is one (with it down, cached sessions
/// still read, but no sign-in, sign-out or counter change can be saved, so a load
/// balancer should send users elsewhere), and the cache otherwise.
///
/// ```json
/// {"status":"degraded","store":"cache: Redis at …; durable: postgres://…",
///  "cache":{"state":"down","reason":"…"},"durable":{"state":"ok","latency_ms":0.8}}
/// ```
pub(crate) async fn health(State(state): State<AppState>) -> Response {
    let health = state.store.health().await;
    let serving = health.writable();
    let degraded = serving && !health.cache.is_ok();
    let (status, label) = if !serving {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    } else if degraded {
        (StatusCode::OK, "degraded")
    } else {
        (StatusCode::OK, "ok")
    };
    if status != StatusCode::OK {
        tracing::warn!(?status, "health check: sessions are not being served");
    }
    let mut body = serde_json::to_value(&health).unwrap_or_else(|_| json!({}));
    if let Value::Object(map) = &mut body {
        map.insert("status".to_owned(), json!(label));
        map.insert("store".to_owned(), json!(&*state.tiers));
    }
    (status, [(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}
