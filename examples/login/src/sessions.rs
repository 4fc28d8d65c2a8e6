//! What pages and API share: signing in, the visit counter, and a user's session list.

use axum::http::{header, HeaderMap};
use serde::Serialize;
use tiered_sessions::{tower_sessions::Session, StorageKey, TieredStore};
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

use crate::{csrf, AppError, AuthSession, User};

/// Session key of the visit counter.
pub(crate) const VISITS_KEY: &str = "visits";
/// Session key of the user agent seen at sign-in, for the session list.
pub(crate) const USER_AGENT_KEY: &str = "user_agent";
/// Session key of a one-time message for the next page.
pub(crate) const FLASH_KEY: &str = "flash";
/// User agents are cut to this many bytes: enough to name a browser, and a client cannot
/// inflate every session read with a huge header.
const MAX_USER_AGENT_BYTES: usize = 256;

/// Checks credentials and signs the user in; `None` if they are wrong.
///
/// axum-login rotates the session id on sign-in (against session fixation). Someone
/// already signed in is signed out first, so a second sign-in gets a fresh session too.
pub(crate) async fn sign_in(
    auth: &mut AuthSession,
    username: String,
    password: String,
    headers: &HeaderMap,
) -> Result<Option<User>, AppError> {
    let credentials = crate::users::Credentials { username, password };
    let Some(user) = auth.authenticate(credentials).await? else {
        return Ok(None);
    };
    if auth.user.is_some() {
        auth.logout().await?;
    }
    auth.login(&user).await?;
    let session = &auth.session;
    csrf::renew(session).await?;
    if let Some(agent) = user_agent(headers) {
        session.insert(USER_AGENT_KEY, agent).await?;
    }
    tracing::info!(user = %user.username, "signed in");
    Ok(Some(user))
}

/// The request's user agent, cut at a character boundary.
fn user_agent(headers: &HeaderMap) -> Option<String> {
    let agent = String::from_utf8_lossy(headers.get(header::USER_AGENT)?.as_bytes()).into_owned();
    let mut end = agent.len().min(MAX_USER_AGENT_BYTES);
    while !agent.is_char_boundary(end) {
        end -= 1;
    }
    Some(agent[..end].to_owned())
}

/// The visit counter.
pub(crate) async fn visits(session: &Session) -> Result<u64, AppError> {
    Ok(session.get::<u64>(VISITS_KEY).await?.unwrap_or(0))
}

/// Adds one to the visit counter and returns the new value.
pub(crate) async fn count_visit(session: &Session) -> Result<u64, AppError> {
    let visits = visits(session).await?.saturating_add(1);
    session.insert(VISITS_KEY, visits).await?;
    Ok(visits)
}

/// One of a user's sessions, as the list shows it.
#[derive(Debug, Serialize)]
pub(crate) struct Listed {
    /// The session's storage key (a hash of its id: not usable as a cookie), hex.
    pub(crate) key: String,
    /// Whether it is the session of this request.
    pub(crate) current: bool,
    pub(crate) device: String,
    pub(crate) user_agent: Option<String>,
    #[serde(serialize_with = "rfc3339")]
    pub(crate) created_at: OffsetDateTime,
    #[serde(serialize_with = "rfc3339")]
    pub(crate) last_seen_at: OffsetDateTime,
    #[serde(serialize_with = "rfc3339")]
    pub(crate) expires_at: OffsetDateTime,
}

/// `user`'s live sessions, most recently active first, the current one marked.
pub(crate) async fn list(
    store: &TieredStore,
    user: &User,
    session: &Session,
) -> Result<Vec<Listed>, AppError> {
    let current = session.id().map(|id| StorageKey::from_id(&id));
    let owned = store.sessions_of(&user.id.to_string()).await?;
    Ok(owned
        .into_iter()
        .map(|s| {
            let user_agent = s
                .data
                .get(USER_AGENT_KEY)
                .and_then(|v| v.as_str())
                .map(str::to_owned);
            Listed {
                key: s.key.to_hex(),
                current: current.as_ref() == Some(&s.key),
                device: crate::templates::device(user_agent.as_deref()),
                user_agent,
                created_at: s.created_at,
                last_seen_at: s.last_seen_at,
                expires_at: s.expires_at,
            }
        })
        .collect())
}

/// What revoking a session did.
pub(crate) enum Revoked {
    /// It was the current session: signed out.
    Current,
    /// Another session of the user's was deleted.
    Other,
}

/// Signs out the session with storage key `key_hex`, if it is one of the signed-in user's.
/// Another user's key, an expired one and an unknown one all get the same 404.
pub(crate) async fn revoke(
    store: &TieredStore,
    auth: &mut AuthSession,
    key_hex: &str,
) -> Result<Revoked, AppError> {
    let user = auth.user.clone().ok_or(AppError::NotSignedIn)?;
    let key = StorageKey::from_hex(key_hex.trim())
        .ok_or_else(|| AppError::Unprocessable("invalid session key".to_owned()))?;
    let current = auth.session.id().map(|id| StorageKey::from_id(&id));
    if current.as_ref() == Some(&key) {
        // Through the session, not the store: the session layer would otherwise save the
        // request's session again after the store deleted it.
        auth.logout().await?;
        return Ok(Revoked::Current);
    }
    if store.revoke(&user.id.to_string(), &key).await? {
        tracing::info!(user = %user.username, session = %key.to_hex(), "revoked a session");
        Ok(Revoked::Other)
    } else {
        Err(AppError::NotFound("no such session"))
    }
}

/// Signs out every session of the user but this one; returns how many.
pub(crate) async fn revoke_others(
    store: &TieredStore,
    auth: &AuthSession,
) -> Result<u64, AppError> {
    let user = auth.user.as_ref().ok_or(AppError::NotSignedIn)?;
    let keep = auth.session.id();
    let revoked = store
        .revoke_all(&user.id.to_string(), keep.as_ref())
        .await?;
    tracing::info!(user = %user.username, revoked, "signed out everywhere else");
    Ok(revoked)
}

/// The signed-in user, or 401.
pub(crate) fn signed_in(auth: &AuthSession) -> Result<&User, AppError> {
    auth.user.as_ref().ok_or(AppError::NotSignedIn)
}

/// RFC 3339 in UTC, to the millisecond (what the store keeps).
pub(crate) fn to_rfc3339(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    at.replace_millisecond(at.millisecond())
        .unwrap_or(at)
        .format(&Rfc3339)
        .unwrap_or_default()
}

fn rfc3339<S: serde::Serializer>(at: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&to_rfc3339(*at))
}
