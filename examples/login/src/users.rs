//! The demo's users and the axum-login backend that checks their passwords.

use std::{collections::HashMap, fmt, sync::Arc};

use argon2::{
    password_hash::{phc::PasswordHash, PasswordHasher, PasswordVerifier},
    Algorithm, Argon2, Params, Version,
};
use axum_login::{AuthUser, AuthnBackend};
use serde::{Deserialize, Serialize};
use uuid::{uuid, Uuid};

/// One demo account: what the sign-in page shows, and the stored password hash.
#[derive(Debug, Clone, Copy)]
pub struct DemoAccount {
    /// The user's fixed id (fixed so sessions in the SQLite file survive a restart).
    pub id: Uuid,
    /// The sign-in name.
    pub username: &'static str,
    /// The display name.
    pub name: &'static str,
    /// The password, shown on the sign-in page: these are demo accounts.
    pub password: &'static str,
    /// The password's Argon2id hash (PHC string, OWASP's minimum parameters: 19 MiB,
    /// 2 passes), generated once, so that the hash, and with it every session's
    /// `auth_hash`, stays the same across restarts.
    phc: &'static str,
}

/// The two seeded accounts.
pub const DEMO_ACCOUNTS: [DemoAccount; 2] = [
    DemoAccount {
        id: uuid!("00847d56-5c00-4313-bd50-f2e2250e4649"),
        username: "alice",
        name: "Alice Liddell",
        password: "rabbit-hole-42",
        phc: "$argon2id$v=19$m=19456,t=2,p=1$W9horlIdNMbHXlYkNVcJQA$pG0FmecpNYWHekjh2Lm1XXtvVwATY4/bxZA+4/wfF/o",
    },
    DemoAccount {
        id: uuid!("228ed19b-909c-444f-9d60-61d6060ab83e"),
        username: "bob",
        name: "Bob Builder",
        password: "can-we-fix-it",
        phc: "$argon2id$v=19$m=19456,t=2,p=1$26yyKU/ci7PtUyKaXDXPZg$qFg0qziHoMGpzSLGi1GYtm2ZJqM8bth5KiV4C+EIDvc",
    },
];

/// A signed-up user. The password hash never leaves the process: it is skipped when the
/// user is serialized and redacted in `Debug`.
#[derive(Clone, Serialize)]
pub struct User {
    /// The user's id; sessions name their owner by it.
    pub id: Uuid,
    /// The sign-in name.
    pub username: String,
    /// The display name.
    pub name: String,
    #[serde(skip)]
    password_hash: String,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("username", &self.username)
            .field("password_hash", &"[redacted]")
            .finish()
    }
}

impl AuthUser for User {
    type Id = Uuid;

    fn id(&self) -> Uuid {
        self.id
    }

    /// axum-login keeps this in the session and signs the session out when it no longer
    /// matches, so changing a password would end every session made with the old one.
    fn session_auth_hash(&self) -> &[u8] {
        self.password_hash.as_bytes()
    }
}

/// What a sign-in form or `POST /api/login` sends.
#[derive(Clone, Deserialize)]
pub struct Credentials {
    /// The sign-in name.
    pub username: String,
    /// The password, in plain text only for as long as the check takes.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"[redacted]")
            .finish()
    }
}

/// Why a password could not be checked (never that it was wrong: that is `Ok(None)`).
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// The blocking hash task panicked or was cancelled.
    #[error("password check did not complete: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// Hashing a password failed (only when hashing at startup).
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// The user directory: an in-memory map, and the [`AuthnBackend`] axum-login asks.
#[derive(Debug, Clone)]
pub struct Users {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    by_username: HashMap<String, User>,
    by_id: HashMap<Uuid, User>,
    /// A hash to check unknown usernames against, so that "no such user" takes as long
    /// as "wrong password" and the response time does not tell which names exist.
    decoy_hash: String,
}

impl Users {
    /// The demo accounts with their embedded hashes.
    pub fn demo() -> Self {
        Self::from_users(DEMO_ACCOUNTS.iter().map(|a| user(a, a.phc.to_owned())))
    }

    /// The demo accounts, their passwords hashed now with `params` (for tests, which use
    /// the cheapest parameters so that a debug build checks a password in microseconds).
    pub fn demo_hashed_with(params: Params) -> Result<Self, UsersError> {
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let users = DEMO_ACCOUNTS
            .iter()
            .map(|account| {
                let hash = argon2
                    .hash_password(account.password.as_bytes())
                    .map_err(|e| UsersError::Hash(e.to_string()))?;
                Ok(user(account, hash.to_string()))
            })
            .collect::<Result<Vec<_>, UsersError>>()?;
        Ok(Self::from_users(users))
    }

    fn from_users(users: impl IntoIterator<Item = User>) -> Self {
        let users: Vec<User> = users.into_iter().collect();
        let decoy_hash = users
            .first()
            .map(|u| u.password_hash.clone())
            .unwrap_or_default();
        Self {
            inner: Arc::new(Inner {
                by_username: users
                    .iter()
                    .map(|u| (u.username.clone(), u.clone()))
                    .collect(),
                by_id: users.into_iter().map(|u| (u.id, u)).collect(),
                decoy_hash,
            }),
        }
    }

    /// The user with this id.
    pub fn get(&self, id: &Uuid) -> Option<&User> {
        self.inner.by_id.get(id)
    }
}

fn user(account: &DemoAccount, password_hash: String) -> User {
    User {
        id: account.id,
        username: account.username.to_owned(),
        name: account.name.to_owned(),
        password_hash,
    }
}

/// Whether `password` matches the PHC string `hash`. Argon2 is deliberately slow (tens of
/// milliseconds, far more in a debug build), so callers run it on the blocking pool.
fn verify(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

impl AuthnBackend for Users {
    type User = User;
    type Credentials = Credentials;
    type Error = UsersError;

    async fn authenticate(&self, creds: Credentials) -> Result<Option<User>, UsersError> {
        let user = self.inner.by_username.get(&creds.username).cloned();
        let hash = user.as_ref().map_or_else(
            || self.inner.decoy_hash.clone(),
            |u| u.password_hash.clone(),
        );
        let matches = tokio::task::spawn_blocking(move || verify(&hash, &creds.password)).await?;
        Ok(user.filter(|_| matches))
    }

    async fn get_user(&self, id: &Uuid) -> Result<Option<User>, UsersError> {
        Ok(self.get(id).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_hashes_match_the_demo_passwords() {
        for account in DEMO_ACCOUNTS {
            assert!(
                verify(account.phc, account.password),
                "{}",
                account.username
            );
            assert!(!verify(account.phc, "wrong"), "{}", account.username);
            assert!(
                account.phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
                "OWASP minimum parameters"
            );
        }
    }

    #[test]
    fn debug_output_hides_secrets() {
        let users = Users::demo();
        let alice = users.get(&DEMO_ACCOUNTS[0].id).expect("alice");
        assert!(!format!("{alice:?}").contains("argon2"));
        assert!(!serde_json::to_string(alice)
            .expect("json")
            .contains("argon2"));
        let creds = Credentials {
            username: "alice".into(),
            password: "rabbit-hole-42".into(),
        };
        assert!(!format!("{creds:?}").contains("rabbit"));
    }
}
