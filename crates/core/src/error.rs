//! Errors of the store and of its tiers.

use std::fmt;

/// A boxed error from a tier's client library, kept as the source of a [`TierError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong in a tier, coarse enough to decide on (retry, fall back, give up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TierErrorKind {
    /// The server could not be reached or the connection broke.
    Unavailable,
    /// The call did not complete within its deadline.
    Timeout,
    /// The server answered but refused the command (out of memory, read-only replica,
    /// authentication, a bad statement).
    Rejected,
    /// The key holds a value of another type that the tier cannot read (Redis
    /// `WRONGTYPE`): a problem with this one entry, not with the tier.
    WrongType,
    /// The key's hash slot is moving between Redis Cluster nodes (a slot migration or a
    /// failover under way) and the command was not followed to the new node: a problem
    /// with this one key for a moment, not with the tier.
    Redirected,
    /// Anything else.
    Other,
}

impl fmt::Display for TierErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unavailable => "unavailable",
            Self::Timeout => "timed out",
            Self::Rejected => "rejected",
            Self::WrongType => "found a value of the wrong type",
            Self::Redirected => "redirected to another cluster node",
            Self::Other => "failed",
        })
    }
}

/// An error from a cache or durable tier, classified by [`TierErrorKind`] with the client
/// library's error as its source.
#[derive(Debug, thiserror::Error)]
#[error("{tier} tier {kind}: {source}")]
pub struct TierError {
    tier: &'static str,
    kind: TierErrorKind,
    #[source]
    source: BoxError,
}

impl TierError {
    /// Wraps a client error. `tier` names the tier in messages (`"redis"`, `"postgres"`).
    pub fn new(tier: &'static str, kind: TierErrorKind, source: impl Into<BoxError>) -> Self {
        Self {
            tier,
            kind,
            source: source.into(),
        }
    }

    /// The kind of failure.
    pub fn kind(&self) -> TierErrorKind {
        self.kind
    }

    /// An error for an operation this tier does not offer.
    pub fn unsupported(what: &'static str) -> Self {
        Self::new(
            "cache",
            TierErrorKind::Other,
            format!("this tier has no {what}; configure a durable tier or Redis"),
        )
    }

    /// The tier that failed, as given to [`TierError::new`].
    pub fn tier(&self) -> &'static str {
        self.tier
    }
}

/// Errors of [`TieredStore`](crate::TieredStore) operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The durable tier failed; nothing was acknowledged. Check that Postgres (or the
    /// SQLite file) is reachable; the store retries on the next request.
    #[error("durable tier: {0}")]
    Durable(#[source] TierError),

    /// The cache tier failed and there is no durable tier to fall back to (Redis-only
    /// mode). Check that Redis is reachable.
    #[error("cache tier: {0}")]
    Cache(#[source] TierError),

    /// The session data could not be encoded (a value serde cannot represent).
    #[error("session data could not be encoded: {0}")]
    Encode(#[from] rmp_serde::encode::Error),

    /// The encoded session data is larger than the configured limit; store less in the
    /// session or raise `max_session_bytes`.
    #[error("session data is {size} bytes, over the limit of {limit} bytes; store less in the session or raise the limit with `with_max_session_bytes`")]
    TooLarge {
        /// Encoded size of the session data.
        size: usize,
        /// The configured limit.
        limit: usize,
    },

    /// No free session id was found after several attempts: the id generator or the
    /// storage is broken.
    #[error("no unused session id found after {0} attempts; check the random number generator and the durable tier's primary key")]
    IdExhausted(u32),
}

impl From<Error> for tower_sessions_core::session_store::Error {
    fn from(err: Error) -> Self {
        use tower_sessions_core::session_store::Error as StoreError;
        // tower-sessions only carries strings: log the typed chain before it is flattened.
        tracing::error!(error = %err, source = ?std::error::Error::source(&err), "session store operation failed");
        match err {
            Error::Encode(e) => StoreError::Encode(e.to_string()),
            other => StoreError::Backend(other.to_string()),
        }
    }
}

/// Invalid store configuration, reported by `build()`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A duration that must be positive is zero.
    #[error("`{0}` must be greater than zero")]
    Zero(&'static str),
    /// A duration is longer than 400 days, the most a browser keeps a cookie.
    #[error("`{0}` must not exceed 400 days")]
    TooLong(&'static str),
    /// The touch interval is longer than the idle timeout, so a session could expire in the
    /// durable tier between two touches.
    #[error("`touch_interval` ({touch:?}) must not exceed `idle_timeout` ({idle:?})")]
    TouchAfterIdle {
        /// The configured touch interval.
        touch: std::time::Duration,
        /// The configured idle timeout.
        idle: std::time::Duration,
    },
    /// The owner pointer is not a JSON pointer naming a session key (`/key/inner/path`).
    #[error("owner pointer `{0}` must be a JSON pointer starting with `/` and a session key, like `/axum-login.data/user_id`")]
    OwnerPointer(String),
    /// The absolute lifetime is shorter than the idle timeout.
    #[error("`absolute_lifetime` ({absolute:?}) must be at least `idle_timeout` ({idle:?})")]
    AbsoluteBeforeIdle {
        /// The configured absolute lifetime.
        absolute: std::time::Duration,
        /// The configured idle timeout.
        idle: std::time::Duration,
    },
}
