//! The HTML pages. Every form posts a CSRF token ([`CsrfForm`]); every success redirects
//! (303) back to `/`, so reloading a page never re-submits a form.

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{Html, IntoResponse, Redirect, Response},
};
use serde::Deserialize;
use time::OffsetDateTime;

use crate::{
    csrf::{self, CsrfForm},
    sessions::{self, Revoked, FLASH_KEY},
    templates::{humane, render, LoginPage, ProfilePage, SessionRow, Stamp},
    AppError, AppState, AuthSession, DEMO_ACCOUNTS,
};

/// `GET /`: the sign-in form, or the profile page (which counts a visit).
pub(crate) async fn index(
    State(state): State<AppState>,
    auth: AuthSession,
) -> Result<Response, AppError> {
    let session = &auth.session;
    let csrf = csrf::token(session).await?;
    let flash = session.remove::<String>(FLASH_KEY).await?;
    let Some(user) = &auth.user else {
        return login_page(&state, &csrf, "", None, flash, StatusCode::OK);
    };
    let visits = sessions::count_visit(session).await?;
    let now = OffsetDateTime::now_utc();
    let listed = sessions::list(&state.store, user, session).await?;
    let others = listed.iter().filter(|s| !s.current).count();
    let page = ProfilePage {
        name: &user.name,
        username: &user.username,
        csrf: &csrf,
        flash,
        visits,
        expires: Stamp::new(session.expiry_date(), now),
        idle: humane(state.store.idle_timeout()),
        sessions: listed
            .into_iter()
            .map(|s| SessionRow {
                key: s.key,
                device: s.device,
                user_agent: s.user_agent.unwrap_or_default(),
                created: Stamp::new(s.created_at, now),
                last_seen: Stamp::new(s.last_seen_at, now),
                expires: Stamp::new(s.expires_at, now),
                current: s.current,
            })
            .collect(),
        others,
        tiers: &state.tiers,
    };
    Ok(Html(render(&page)?).into_response())
}

fn login_page(
    state: &AppState,
    csrf: &str,
    username: &str,
    error: Option<&str>,
    flash: Option<String>,
    status: StatusCode,
) -> Result<Response, AppError> {
    let page = LoginPage {
        csrf,
        username,
        error,
        flash,
        accounts: &DEMO_ACCOUNTS,
        tiers: &state.tiers,
        idle: humane(state.store.idle_timeout()),
    };
    Ok((status, Html(render(&page)?)).into_response())
}

/// The sign-in form.
#[derive(Debug, Deserialize)]
pub(crate) struct LoginForm {
    username: String,
    password: String,
}

/// `POST /login`: signs in and redirects to `/`, or shows the form again with a 401.
pub(crate) async fn login(
    State(state): State<AppState>,
    mut auth: AuthSession,
    headers: HeaderMap,
    CsrfForm(form): CsrfForm<LoginForm>,
) -> Result<Response, AppError> {
    let username = form.username.clone();
    match sessions::sign_in(&mut auth, form.username, form.password, &headers).await? {
        Some(_) => Ok(Redirect::to("/").into_response()),
        None => {
            let csrf = csrf::token(&auth.session).await?;
            let error = AppError::InvalidCredentials.to_string();
            login_page(
                &state,
                &csrf,
                &username,
                Some(&error),
                None,
                StatusCode::UNAUTHORIZED,
            )
        }
    }
}

/// A form with nothing but its CSRF token.
#[derive(Debug, Deserialize)]
pub(crate) struct TokenOnly {}

/// `POST /logout`: deletes the session.
pub(crate) async fn logout(
    mut auth: AuthSession,
    CsrfForm(TokenOnly {}): CsrfForm<TokenOnly>,
) -> Result<Redirect, AppError> {
    auth.logout().await?;
    Ok(Redirect::to("/"))
}

/// The revoke button's form.
#[derive(Debug, Deserialize)]
pub(crate) struct RevokeForm {
    key: String,
}

/// `POST /sessions/revoke`: signs out one of the user's sessions.
pub(crate) async fn revoke(
    State(state): State<AppState>,
    mut auth: AuthSession,
    CsrfForm(form): CsrfForm<RevokeForm>,
) -> Result<Redirect, AppError> {
    let flash = match sessions::revoke(&state.store, &mut auth, &form.key).await? {
        Revoked::Current => "You signed out.",
        Revoked::Other => "That session is signed out.",
    };
    auth.session.insert(FLASH_KEY, flash).await?;
    Ok(Redirect::to("/"))
}

/// `POST /sessions/revoke-others`: signs out every other session of the user.
pub(crate) async fn revoke_others(
    State(state): State<AppState>,
    auth: AuthSession,
    CsrfForm(TokenOnly {}): CsrfForm<TokenOnly>,
) -> Result<Redirect, AppError> {
    let revoked = sessions::revoke_others(&state.store, &auth).await?;
    let flash = match revoked {
        0 => "There were no other sessions.".to_owned(),
        1 => "Signed out 1 other session.".to_owned(),
        n => format!("Signed out {n} other sessions."),
    };
    auth.session.insert(FLASH_KEY, flash).await?;
    Ok(Redirect::to("/"))
}
