//! The JSON API, for scripts and the load-test tool. Answers are JSON, errors
//! `{"error": "…"}`. Every request other than `GET` must say
//! `Content-Type: application/json` ([`require_json`]; see [`crate::csrf`] for why), even
//! when it has no body.

use axum::{
    extract::{FromRequest, Request, State},
    http::{HeaderMap, Method},
    middleware::Next,
    response::Response,
    Json,
};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{
    csrf::has_content_type,
    sessions::{self, signed_in, to_rfc3339},
    users::Credentials,
    AppError, AppState, AuthSession,
};

/// A JSON body whose rejections are [`AppError`]s (400 bad syntax, 413 too large, 415 not
/// JSON, 422 missing or mistyped fields).
#[derive(Debug, FromRequest)]
#[from_request(via(Json), rejection(AppError))]
pub(crate) struct ApiJson<T>(T);

/// Refuses state-changing API requests that are not `application/json` with 415: the
/// CSRF defence of the JSON API.
pub(crate) async fn require_json(request: Request, next: Next) -> Result<Response, AppError> {
    let safe = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if !safe && !has_content_type(request.headers(), "application/json") {
        return Err(AppError::UnsupportedMediaType(
            "expected Content-Type: application/json",
        ));
    }
    Ok(next.run(request).await)
}

/// `POST /api/login`: `{"username","password"}` → 200 `{"user","expires_at"}` and the
/// session cookie, or 401.
pub(crate) async fn login(
    mut auth: AuthSession,
    headers: HeaderMap,
    ApiJson(credentials): ApiJson<Credentials>,
) -> Result<Json<Value>, AppError> {
    let Credentials { username, password } = credentials;
    let user = sessions::sign_in(&mut auth, username, password, &headers)
        .await?
        .ok_or(AppError::InvalidCredentials)?;
    Ok(Json(json!({
        "user": user,
        "expires_at": to_rfc3339(auth.session.expiry_date()),
    })))
}

/// `GET /api/me`: the user, the visit counter and the (sliding) expiry, or 401.
pub(crate) async fn me(
    State(state): State<AppState>,
    auth: AuthSession,
) -> Result<Json<Value>, AppError> {
    let user = signed_in(&auth)?;
    let visits = sessions::visits(&auth.session).await?;
    Ok(Json(json!({
        "user": user,
        "visits": visits,
        "expires_at": to_rfc3339(auth.session.expiry_date()),
        "idle_timeout_secs": state.store.idle_timeout().as_secs(),
    })))
}

/// `POST /api/visit`: adds one to the visit counter, `{"visits": n}`.
pub(crate) async fn visit(auth: AuthSession) -> Result<Json<Value>, AppError> {
    signed_in(&auth)?;
    let visits = sessions::count_visit(&auth.session).await?;
    Ok(Json(json!({ "visits": visits })))
}

/// `POST /api/logout`: deletes the session; `{"signed_out": true}` if there was a user.
pub(crate) async fn logout(mut auth: AuthSession) -> Result<Json<Value>, AppError> {
    let user = auth.logout().await?;
    Ok(Json(json!({ "signed_out": user.is_some() })))
}

/// `GET /api/sessions`: the user's live sessions, most recently active first.
pub(crate) async fn sessions(
    State(state): State<AppState>,
    auth: AuthSession,
) -> Result<Json<Value>, AppError> {
    let user = signed_in(&auth)?;
    let listed = sessions::list(&state.store, user, &auth.session).await?;
    Ok(Json(json!({ "sessions": listed })))
}

/// The body of `POST /api/sessions/revoke`.
#[derive(Debug, Deserialize)]
pub(crate) struct RevokeRequest {
    key: String,
}

/// `POST /api/sessions/revoke`: `{"key"}` (from `GET /api/sessions`) → `{"revoked": true}`,
/// or 404 if it is not a live session of this user.
pub(crate) async fn revoke(
    State(state): State<AppState>,
    mut auth: AuthSession,
    ApiJson(request): ApiJson<RevokeRequest>,
) -> Result<Json<Value>, AppError> {
    sessions::revoke(&state.store, &mut auth, &request.key).await?;
    Ok(Json(json!({ "revoked": true })))
}

/// `POST /api/sessions/revoke-others`: signs out the user's other sessions,
/// `{"revoked": n}`.
pub(crate) async fn revoke_others(
    State(state): State<AppState>,
    auth: AuthSession,
) -> Result<Json<Value>, AppError> {
    let revoked = sessions::revoke_others(&state.store, &auth).await?;
    Ok(Json(json!({ "revoked": revoked })))
}
