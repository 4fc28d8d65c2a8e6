//! The one error type of the app, and how it reaches a client.
//!
//! Handlers return [`AppError`]; its `IntoResponse` logs what the operator needs (only
//! server-side failures, at `error`; bad input is the client's business, at `debug`) and
//! answers with a status and a short public message. The body is JSON, and the
//! [`render_errors`] middleware turns it into an HTML page for page routes, so each
//! handler says *what* went wrong and one place decides *how* it looks.

use axum::{
    extract::{rejection::BytesRejection, rejection::JsonRejection, Request},
    http::{header, HeaderValue, StatusCode},
    middleware::Next,
    response::{Html, IntoResponse, Response},
    Json,
};
use serde::Serialize;
use tiered_sessions::tower_sessions::session;

use crate::templates::{render, ErrorPage};

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The request body is malformed (bad JSON syntax, a bad form encoding).
    #[error("{0}")]
    BadRequest(String),
    /// Wrong password or unknown user: one message for both, so it does not tell which.
    #[error("invalid username or password")]
    InvalidCredentials,
    /// The route needs a signed-in user.
    #[error("sign in first")]
    NotSignedIn,
    /// The CSRF token is missing, forged or stale.
    #[error("the form is out of date or was not sent by this site; reload the page and try again")]
    Csrf,
    /// No such thing (or not yours: a session of another user looks the same).
    #[error("{0}")]
    NotFound(&'static str),
    /// The body is larger than the app accepts.
    #[error("the request body is too large")]
    PayloadTooLarge,
    /// The body is not of the type the route takes (e.g. JSON without
    /// `Content-Type: application/json`).
    #[error("{0}")]
    UnsupportedMediaType(&'static str),
    /// The body parses but does not have the fields the route needs.
    #[error("{0}")]
    Unprocessable(String),
    /// The session store could not be reached.
    #[error("sessions are temporarily unavailable; try again shortly")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A bug or an unexpected failure; details go to the log only.
    #[error("internal error")]
    Internal(String),
}

impl AppError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::InvalidCredentials | AppError::NotSignedIn => StatusCode::UNAUTHORIZED,
            AppError::Csrf => StatusCode::FORBIDDEN,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<session::Error> for AppError {
    fn from(err: session::Error) -> Self {
        AppError::Unavailable(Box::new(err))
    }
}

impl From<tiered_sessions::Error> for AppError {
    fn from(err: tiered_sessions::Error) -> Self {
        AppError::Unavailable(Box::new(err))
    }
}

impl From<axum_login::Error<crate::Users>> for AppError {
    fn from(err: axum_login::Error<crate::Users>) -> Self {
        match err {
            axum_login::Error::Session(err) => AppError::from(err),
            axum_login::Error::Backend(err) => AppError::Internal(err.to_string()),
        }
    }
}

impl From<JsonRejection> for AppError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonDataError(e) => AppError::Unprocessable(e.body_text()),
            JsonRejection::JsonSyntaxError(e) => AppError::BadRequest(e.body_text()),
            JsonRejection::MissingJsonContentType(_) => {
                AppError::UnsupportedMediaType("expected Content-Type: application/json")
            }
            JsonRejection::BytesRejection(e) => bytes_rejection(e),
            other => AppError::BadRequest(other.body_text()),
        }
    }
}

impl From<BytesRejection> for AppError {
    fn from(rejection: BytesRejection) -> Self {
        bytes_rejection(rejection)
    }
}

fn bytes_rejection(rejection: BytesRejection) -> AppError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        AppError::PayloadTooLarge
    } else {
        AppError::BadRequest(rejection.body_text())
    }
}

/// What a client learns about an error; kept in the response's extensions for
/// [`render_errors`].
#[derive(Debug, Clone, Serialize)]
struct PublicError {
    error: String,
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            AppError::Unavailable(source) => {
                tracing::error!(error = %source, ?source, "session store unavailable");
            }
            AppError::Internal(detail) => tracing::error!(%detail, "internal error"),
            // Bad input is not the server's failure: worth a debug line, not an alert.
            _ => tracing::debug!(%status, error = %self, "request rejected"),
        }
        let public = PublicError {
            error: self.to_string(),
        };
        let mut response = (status, Json(public.clone())).into_response();
        response.extensions_mut().insert(public);
        response
    }
}

/// Where a response goes: JSON for scripts, HTML for people.
fn wants_json(path: &str) -> bool {
    path.starts_with("/api/") || path == "/api" || path == "/health"
}

/// Outermost middleware: gives every error response a body in the route's format.
///
/// - An [`AppError`] on a page route becomes an HTML error page.
/// - A bare error from a layer (axum's 404/405, or the 500 that tower-sessions and
///   axum-login answer with when the store fails to load or save a session) gets a
///   message too; such a 500 means the session store failed, so it becomes a 503.
pub async fn render_errors(request: Request, next: Next) -> Response {
    let json = wants_json(request.uri().path());
    let response = next.run(request).await;
    let status = response.status();
    if !status.is_client_error() && !status.is_server_error() {
        return response;
    }
    let public = match response.extensions().get::<PublicError>() {
        Some(_) if json => return response,
        Some(public) => public.clone(),
        None if response.headers().contains_key(header::CONTENT_TYPE) => return response,
        None => {
            let err = match status {
                StatusCode::INTERNAL_SERVER_ERROR => {
                    // The layer has logged the store's error already.
                    return respond(
                        json,
                        StatusCode::SERVICE_UNAVAILABLE,
                        "sessions are temporarily unavailable; try again shortly".to_owned(),
                    );
                }
                StatusCode::NOT_FOUND => "no such page".to_owned(),
                StatusCode::METHOD_NOT_ALLOWED => "method not allowed".to_owned(),
                other => other
                    .canonical_reason()
                    .unwrap_or("request failed")
                    .to_lowercase(),
            };
            return respond(json, status, err);
        }
    };
    let mut page = respond(false, status, public.error);
    // Keep headers a layer set on the error response (e.g. the session cookie).
    for (name, value) in response.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            page.headers_mut().append(name, value.clone());
        }
    }
    page
}

fn respond(json: bool, status: StatusCode, error: String) -> Response {
    if json {
        return (status, Json(PublicError { error })).into_response();
    }
    let page = ErrorPage {
        status: status.as_u16(),
        reason: status.canonical_reason().unwrap_or("Error"),
        message: &error,
    };
    match render(&page) {
        Ok(html) => (status, Html(html)).into_response(),
        Err(_) => {
            let mut response = (status, error).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            response
        }
    }
}
