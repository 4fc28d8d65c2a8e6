#![doc = include_str!("../../../README.md")]
//!
//! # Feature flags
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `redis` | yes | [`RedisCache`], the Redis cache tier on fred, and the [`fred`] re-export |
//! | `postgres` | yes | [`PostgresDurable`], the Postgres durable tier, and the [`sqlx`] re-export |
//! | `sqlite` | yes | [`SqliteDurable`], the SQLite durable tier of the embedded default |
//! | `memory` | yes | [`MemoryCache`], the in-process cache tier of the embedded default |

use std::{fmt, path::PathBuf, time::Duration};

#[cfg(feature = "redis")]
pub use fred;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub use sqlx;
#[cfg(feature = "memory")]
pub use tiered_sessions_core::MemoryCache;
pub use tiered_sessions_core::{
    metrics, CacheTier, Clock, ConfigError, DurableTier, Error, Health, OwnedSession, StorageKey,
    StoredSession, SystemClock, TierError, TierErrorKind, TierHealth, TieredStore,
    TieredStoreBuilder, Updated, REVISION_KEY,
};
#[cfg(feature = "redis")]
pub use tiered_sessions_redis::{ConnectOptions, RedisCache, RedisCacheError};
#[cfg(feature = "postgres")]
pub use tiered_sessions_sqlx::PostgresDurable;
#[cfg(feature = "sqlite")]
pub use tiered_sessions_sqlx::SqliteDurable;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub use tiered_sessions_sqlx::SqlxDurableError;
pub use tower_sessions;
use tower_sessions::{Expiry, SessionManagerLayer};

/// Errors of [`Builder::build`]: each says which setting to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The store configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The Redis cache tier could not be set up.
    #[cfg(feature = "redis")]
    #[error("Redis cache tier ({url}): {source}")]
    Redis {
        /// The URL with any password removed.
        url: String,
        /// What failed.
        #[source]
        source: RedisCacheError,
    },
    /// The durable tier could not be set up or migrated.
    #[cfg(any(feature = "postgres", feature = "sqlite"))]
    #[error("durable tier ({url}): {source}")]
    Durable {
        /// The URL with any password removed.
        url: String,
        /// What failed.
        #[source]
        source: SqlxDurableError,
    },
    /// A URL names a tier this build does not include or that does not exist.
    #[error("{what} URL `{url}` is not supported by this build: {hint}")]
    Unsupported {
        /// Which setting (`REDIS_URL`, `DATABASE_URL`).
        what: &'static str,
        /// The URL with any password removed.
        url: String,
        /// What to do about it.
        hint: &'static str,
    },
}

/// Where the durable tier lives.
#[derive(Debug, Clone, PartialEq, Eq)]
enum DurableSetting {
    /// A database URL (`postgres://…`, `sqlite://…`).
    Url(String),
    /// The embedded default: a SQLite file.
    SqliteFile(PathBuf),
    /// No durable tier (cache only).
    None,
}

/// Builds a [`TieredStore`] from URLs, the way an application is configured.
///
/// - Cache tier: Redis at the given URL, or, without one, an in-process [`MemoryCache`].
/// - Durable tier: Postgres or SQLite at the given database URL, or, without one, the
///   SQLite file `tiered-sessions.sqlite` in the working directory; or none with
///   [`Builder::without_durable`].
///
/// So with no settings at all it runs on a bare machine (the embedded default), and in
/// production `REDIS_URL` and `DATABASE_URL` switch it to Redis and Postgres. Migrations
/// of the durable tier run in `build` (they are idempotent and safe to run from several
/// instances at once).
#[derive(Clone)]
#[must_use]
pub struct Builder {
    redis_url: Option<String>,
    redis_username: Option<String>,
    redis_password: Option<String>,
    redis_ca_file: Option<PathBuf>,
    durable: DurableSetting,
    key_prefix: Option<String>,
    idle_timeout: Duration,
    touch_interval: Option<Duration>,
    absolute_lifetime: Option<Duration>,
    max_session_bytes: usize,
    cache_op_timeout: Option<Duration>,
    memory_cache_bytes: u64,
    owner_pointer: Option<String>,
    durable_timeout: Option<Duration>,
    epoch_poll_interval: Option<Duration>,
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No secrets: URLs without their passwords, and no AUTH string.
        f.debug_struct("Builder")
            .field("redis_url", &self.redis_url.as_deref().map(redact))
            .field("redis_username", &self.redis_username)
            .field(
                "redis_password",
                &self.redis_password.as_ref().map(|_| "***"),
            )
            .field("redis_ca_file", &self.redis_ca_file)
            .field("durable", &self.describe())
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Builder {
    /// The embedded default's SQLite file.
    pub const DEFAULT_SQLITE_FILE: &'static str = "tiered-sessions.sqlite";
    /// Default size of the in-process cache: 64 MiB.
    pub const DEFAULT_MEMORY_CACHE_BYTES: u64 = 64 * 1024 * 1024;

    /// The embedded default: in-process cache, SQLite file, 30-minute idle timeout.
    pub fn new() -> Self {
        Self {
            redis_url: None,
            redis_username: None,
            redis_password: None,
            redis_ca_file: None,
            durable: DurableSetting::SqliteFile(PathBuf::from(Self::DEFAULT_SQLITE_FILE)),
            key_prefix: None,
            idle_timeout: TieredStoreBuilder::DEFAULT_IDLE_TIMEOUT,
            touch_interval: None,
            absolute_lifetime: None,
            max_session_bytes: TieredStoreBuilder::DEFAULT_MAX_SESSION_BYTES,
            cache_op_timeout: None,
            memory_cache_bytes: Self::DEFAULT_MEMORY_CACHE_BYTES,
            owner_pointer: None,
            durable_timeout: None,
            epoch_poll_interval: None,
        }
    }

    /// Reads the process environment, see [`Builder::from_lookup`].
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the settings through `lookup` (unset or blank ones keep the embedded default):
    ///
    /// - `REDIS_URL`: the Redis cache tier. When it is unset, the split variables that
    ///   managed-Redis guides use: `REDISHOST`, `REDISPORT` (default 6379) and
    ///   `REDIS_AUTH` (the AUTH string, kept out of URLs and logs);
    /// - `REDIS_CA_FILE`: a PEM file of the CAs to trust for `rediss://`;
    /// - `DATABASE_URL`: the durable tier.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let var = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let mut builder = Self::new();
        if let Some(url) = var("REDIS_URL") {
            builder = builder.with_redis_url(url);
        } else if let Some(host) = var("REDISHOST") {
            let host = host.trim();
            let host = if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]") // an IPv6 address
            } else {
                host.to_owned()
            };
            let port = var("REDISPORT").unwrap_or_else(|| "6379".to_owned());
            builder = builder.with_redis_url(format!("redis://{host}:{}", port.trim()));
            if let Some(auth) = var("REDIS_AUTH") {
                builder = builder.with_redis_password(auth);
            }
        }
        if let Some(path) = var("REDIS_CA_FILE") {
            builder = builder.with_redis_ca_file(path);
        }
        if let Some(url) = var("DATABASE_URL") {
            builder = builder.with_database_url(url);
        }
        builder
    }

    /// Uses Redis at `url` as the cache tier.
    pub fn with_redis_url(mut self, url: impl Into<String>) -> Self {
        self.redis_url = Some(url.into());
        self
    }

    /// Sets the Redis ACL user, overriding the URL's.
    pub fn with_redis_username(mut self, username: impl Into<String>) -> Self {
        self.redis_username = Some(username.into());
        self
    }

    /// Sets the Redis password or AUTH string, overriding the URL's. It never appears in
    /// `Debug` output, logs or errors.
    pub fn with_redis_password(mut self, password: impl Into<String>) -> Self {
        self.redis_password = Some(password.into());
        self
    }

    /// Trusts the certificate authorities in this PEM file for `rediss://` (instead of the
    /// system's roots).
    pub fn with_redis_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.redis_ca_file = Some(path.into());
        self
    }

    /// Uses the database at `url` (`postgres://…`, `postgresql://…`, `sqlite://…`) as the
    /// durable tier.
    pub fn with_database_url(mut self, url: impl Into<String>) -> Self {
        self.durable = DurableSetting::Url(url.into());
        self
    }

    /// Uses a SQLite file at `path` as the durable tier.
    pub fn with_sqlite_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.durable = DurableSetting::SqliteFile(path.into());
        self
    }

    /// No durable tier: a cache-only store. With Redis, a Redis flush, eviction or restart
    /// then loses the sessions in it.
    pub fn without_durable(mut self) -> Self {
        self.durable = DurableSetting::None;
        self
    }

    /// Sets the Redis key prefix (default `tsess:`).
    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = Some(prefix.into());
        self
    }

    /// Sets the idle timeout; see [`TieredStoreBuilder::with_idle_timeout`].
    pub fn with_idle_timeout(mut self, idle_timeout: Duration) -> Self {
        self.idle_timeout = idle_timeout;
        self
    }

    /// Sets the durable touch interval; see [`TieredStoreBuilder::with_touch_interval`].
    pub fn with_touch_interval(mut self, touch_interval: Duration) -> Self {
        self.touch_interval = Some(touch_interval);
        self
    }

    /// Sets the absolute lifetime; see [`TieredStoreBuilder::with_absolute_lifetime`].
    pub fn with_absolute_lifetime(mut self, absolute_lifetime: Duration) -> Self {
        self.absolute_lifetime = Some(absolute_lifetime);
        self
    }

    /// Sets the session size limit; see [`TieredStoreBuilder::with_max_session_bytes`].
    pub fn with_max_session_bytes(mut self, max_session_bytes: usize) -> Self {
        self.max_session_bytes = max_session_bytes;
        self
    }

    /// Sets where the owner of a session is found in its data; see
    /// [`TieredStoreBuilder::with_owner_pointer`].
    pub fn with_owner_pointer(mut self, pointer: impl Into<String>) -> Self {
        self.owner_pointer = Some(pointer.into());
        self
    }

    /// Sets the deadline of each Redis operation (default 250 ms).
    pub fn with_cache_op_timeout(mut self, cache_op_timeout: Duration) -> Self {
        self.cache_op_timeout = Some(cache_op_timeout);
        self
    }

    /// Sets the deadline of each durable tier call; see
    /// [`TieredStoreBuilder::with_durable_timeout`].
    pub fn with_durable_timeout(mut self, timeout: Duration) -> Self {
        self.durable_timeout = Some(timeout);
        self
    }

    /// Sets how often the cache epoch is read; see
    /// [`TieredStoreBuilder::with_epoch_poll_interval`].
    pub fn with_epoch_poll_interval(mut self, interval: Duration) -> Self {
        self.epoch_poll_interval = Some(interval);
        self
    }

    /// Sets the size of the in-process cache used when no Redis URL is given (default
    /// [`Self::DEFAULT_MEMORY_CACHE_BYTES`]).
    pub fn with_memory_cache_bytes(mut self, bytes: u64) -> Self {
        self.memory_cache_bytes = bytes;
        self
    }

    /// A one-line description of the tiers this builder will use, without credentials, for
    /// a startup log line.
    pub fn describe(&self) -> String {
        let cache = match &self.redis_url {
            Some(url) => format!("Redis at {}", redact(url)),
            None => "in-process memory".to_owned(),
        };
        let durable = match &self.durable {
            DurableSetting::Url(url) => redact(url),
            DurableSetting::SqliteFile(path) => format!("SQLite file {}", path.display()),
            DurableSetting::None => "none (sessions are lost with the cache)".to_owned(),
        };
        format!("cache: {cache}; durable: {durable}")
    }

    /// Connects the tiers, runs the durable tier's migrations and builds the store.
    pub async fn build(self) -> Result<TieredStore, BuildError> {
        let mut store = match self.cache().await? {
            #[cfg(feature = "redis")]
            Cache::Redis(cache) => TieredStore::builder(*cache),
            #[cfg(feature = "memory")]
            Cache::Memory(cache) => TieredStore::builder(cache),
        };
        store = match self.durable.clone() {
            DurableSetting::None => store,
            DurableSetting::Url(url) => self.durable_from_url(store, &url).await?,
            DurableSetting::SqliteFile(path) => {
                let url = format!("sqlite://{}", path.display());
                self.durable_from_url(store, &url).await?
            }
        };
        store = store
            .with_idle_timeout(self.idle_timeout)
            .with_max_session_bytes(self.max_session_bytes);
        if let Some(touch) = self.touch_interval {
            store = store.with_touch_interval(touch);
        }
        if let Some(absolute) = self.absolute_lifetime {
            store = store.with_absolute_lifetime(absolute);
        }
        if let Some(pointer) = self.owner_pointer {
            store = store.with_owner_pointer(pointer);
        }
        if let Some(timeout) = self.durable_timeout {
            store = store.with_durable_timeout(timeout);
        }
        if let Some(interval) = self.epoch_poll_interval {
            store = store.with_epoch_poll_interval(interval);
        }
        Ok(store.build()?)
    }

    async fn cache(&self) -> Result<Cache, BuildError> {
        match &self.redis_url {
            #[cfg(feature = "redis")]
            Some(url) => {
                let err = |source| BuildError::Redis {
                    url: redact(url),
                    source,
                };
                let mut options = ConnectOptions::default();
                options.username = self.redis_username.clone();
                options.password = self.redis_password.clone();
                options.ca_file = self.redis_ca_file.clone();
                let mut cache = RedisCache::connect_with(url, &options).await.map_err(err)?;
                if let Some(prefix) = &self.key_prefix {
                    cache = cache.with_key_prefix(prefix.clone());
                }
                if let Some(timeout) = self.cache_op_timeout {
                    cache = cache.with_op_timeout(timeout);
                }
                Ok(Cache::Redis(Box::new(cache)))
            }
            #[cfg(not(feature = "redis"))]
            Some(url) => Err(BuildError::Unsupported {
                what: "REDIS_URL",
                url: redact(url),
                hint: "enable the `redis` feature of tiered-sessions",
            }),
            #[cfg(feature = "memory")]
            None => Ok(Cache::Memory(MemoryCache::new(self.memory_cache_bytes))),
            #[cfg(not(feature = "memory"))]
            None => Err(BuildError::Unsupported {
                what: "REDIS_URL",
                url: String::new(),
                hint: "set REDIS_URL, or enable the `memory` feature for an in-process cache",
            }),
        }
    }

    async fn durable_from_url(
        &self,
        store: TieredStoreBuilder,
        url: &str,
    ) -> Result<TieredStoreBuilder, BuildError> {
        let scheme = url.split(':').next().unwrap_or_default();
        #[allow(unused_variables)] // unused when neither SQL feature is on
        let err = |source| BuildError::Durable {
            url: redact(url),
            source,
        };
        match scheme {
            #[cfg(feature = "postgres")]
            "postgres" | "postgresql" => {
                let durable = PostgresDurable::connect(url).await.map_err(err)?;
                durable.migrate().await.map_err(err)?;
                Ok(store.with_durable(durable))
            }
            #[cfg(feature = "sqlite")]
            "sqlite" => {
                let durable = SqliteDurable::connect(url).await.map_err(err)?;
                durable.migrate().await.map_err(err)?;
                Ok(store.with_durable(durable))
            }
            _ => Err(BuildError::Unsupported {
                what: "DATABASE_URL",
                url: redact(url),
                hint: "use postgres://… or sqlite://… (with the `postgres` or `sqlite` feature)",
            }),
        }
    }
}

enum Cache {
    #[cfg(feature = "redis")]
    Redis(Box<RedisCache>),
    #[cfg(feature = "memory")]
    Memory(MemoryCache),
}

/// Removes the password from a URL for messages: `redis://user:secret@host` becomes
/// `redis://user:***@host`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                "***".to_owned()
            };
            format!("{scheme}://{masked}@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

/// A [`SessionManagerLayer`] configured consistently with `store`: the cookie's expiry is
/// the store's idle timeout and slides on every request (`OnInactivity`), and every request
/// that presents a session saves it (`with_always_save(true)`), so reads count as activity.
///
/// That costs nothing extra here: the store tells a read-only request from a change and
/// writes nothing back for it. Chain the usual `with_*` methods to adjust the cookie (for
/// example `.with_secure(false)` for plain-HTTP local development).
pub fn session_layer(store: &TieredStore) -> SessionManagerLayer<TieredStore> {
    let idle = time::Duration::try_from(store.idle_timeout()).unwrap_or(time::Duration::MAX);
    SessionManagerLayer::new(store.clone())
        .with_expiry(Expiry::OnInactivity(idle))
        .with_always_save(true)
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redact_hides_passwords_only() {
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(
            redact("redis://user:secret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redact("redis://:secret@host"), "redis://:***@host");
        assert_eq!(
            redact("postgres://app:p%40ss@db/app?sslmode=require"),
            "postgres://app:***@db/app?sslmode=require"
        );
        assert_eq!(
            redact("sqlite://sessions.sqlite"),
            "sqlite://sessions.sqlite"
        );
    }
}
