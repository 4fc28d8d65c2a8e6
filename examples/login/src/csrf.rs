//! CSRF protection.
//!
//! **Forms** (`POST /login`, `/logout`, `/sessions/*`) carry a synchronizer token: a
//! random 256-bit value kept in the session under [`CSRF_KEY`] and repeated in a hidden
//! `csrf` field. The server compares the two in constant time before it looks at anything
//! else in the form, and replaces the token when the user signs in (sign-out deletes the
//! session and the token with it). A page on another site cannot read the token, so it
//! cannot forge the form.
//!
//! **JSON endpoints** (`POST /api/*`) require `Content-Type: application/json`. An HTML
//! form can only send `application/x-www-form-urlencoded`, `multipart/form-data` or
//! `text/plain`, and a cross-site `fetch` with a JSON content type needs a CORS preflight,
//! which this app never grants (it sends no CORS headers). The session cookie is also
//! `SameSite=Lax`, so browsers do not attach it to cross-site POSTs at all.

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Request},
    http::{header, HeaderMap},
};
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;
use tiered_sessions::tower_sessions::Session;

use crate::AppError;

/// The session key of the CSRF token.
pub const CSRF_KEY: &str = "csrf";
/// The form field that carries it.
pub const CSRF_FIELD: &str = "csrf";

/// The session's CSRF token, created (and stored in the session) on first use.
pub async fn token(session: &Session) -> Result<String, AppError> {
    if let Some(token) = session.get::<String>(CSRF_KEY).await? {
        return Ok(token);
    }
    renew(session).await
}

/// Replaces the session's CSRF token with a fresh one (on sign-in, so a token seen before
/// it is worthless after it).
pub async fn renew(session: &Session) -> Result<String, AppError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| AppError::Internal(format!("getrandom: {e}")))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    session.insert(CSRF_KEY, &token).await?;
    Ok(token)
}

/// Checks a submitted token against the session's, in constant time.
pub async fn verify(session: &Session, submitted: Option<&str>) -> Result<(), AppError> {
    let Some(submitted) = submitted.filter(|s| !s.is_empty()) else {
        return Err(AppError::Csrf);
    };
    // No token in the session: it expired, was signed out, or never existed (a forged
    // request, or a form left open across a restart of an in-memory-only store).
    let Some(expected) = session.get::<String>(CSRF_KEY).await? else {
        return Err(AppError::Csrf);
    };
    if bool::from(expected.as_bytes().ct_eq(submitted.as_bytes())) {
        Ok(())
    } else {
        Err(AppError::Csrf)
    }
}

/// A form body whose CSRF token has been checked: the extractor for every state-changing
/// page route.
///
/// The order matters: the token is checked before the rest of the form is parsed, so a
/// forged request gets a 403 whatever else it sends, and only a genuine one learns about
/// missing fields (422).
#[derive(Debug)]
pub struct CsrfForm<T>(pub T);

impl<S, T> FromRequest<S> for CsrfForm<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AppError> {
        let (mut parts, body) = req.into_parts();
        let session = Session::from_request_parts(&mut parts, state)
            .await
            .map_err(|(_, msg)| AppError::Internal(msg.to_owned()))?;
        if !has_content_type(&parts.headers, "application/x-www-form-urlencoded") {
            return Err(AppError::UnsupportedMediaType(
                "expected a form (application/x-www-form-urlencoded)",
            ));
        }
        // `Bytes` honours the body limit (`DefaultBodyLimit`): too large is a 413.
        let bytes = Bytes::from_request(Request::from_parts(parts, body), state).await?;
        let submitted = form_urlencoded::parse(&bytes)
            .find(|(name, _)| name == CSRF_FIELD)
            .map(|(_, value)| value.into_owned());
        verify(&session, submitted.as_deref()).await?;
        serde_urlencoded::from_bytes(&bytes)
            .map(CsrfForm)
            .map_err(|e| AppError::Unprocessable(format!("invalid form: {e}")))
    }
}

/// Whether the request's `Content-Type` is `expected` (parameters such as `charset` are
/// allowed).
pub(crate) fn has_content_type(headers: &HeaderMap, expected: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case(expected))
}
