//! The two tier traits the [`TieredStore`](crate::TieredStore) composes.
//!
//! Both are small and speak in [`StorageKey`]s and encoded bytes: the store owns the
//! session format and the ordering between tiers, a tier only moves bytes.

use std::{fmt::Debug, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use time::OffsetDateTime;

use crate::{StorageKey, TierError};

/// A fast, lossy tier (Redis, or memory in-process) holding encoded
/// [`SessionEnvelope`](crate::SessionEnvelope)s with a time to live.
///
/// Conditional writes ([`put`](CacheTier::put), [`slide`](CacheTier::slide))
/// must be atomic on the server and follow [`crate::envelope::put_allowed`]: an
/// implementation on Redis does it in a single-key Lua script, so it works on a cluster.
#[async_trait]
pub trait CacheTier: Debug + Send + Sync + 'static {
    /// Reads the entry (`GET`). `None` when absent. A key holding a value of another type
    /// is an error of kind [`WrongType`](crate::TierErrorKind::WrongType).
    async fn get(&self, key: &StorageKey) -> Result<Option<Bytes>, TierError>;

    /// Stores `entry` only if nothing is stored under `key` (`SET NX PX`). Returns whether
    /// it was stored.
    async fn insert(
        &self,
        key: &StorageKey,
        entry: &[u8],
        ttl: Duration,
    ) -> Result<bool, TierError>;

    /// Stores `entry` unless [`crate::envelope::put_allowed`] forbids it: never over a
    /// tombstone or a newer version of the same session, and, with `require_present`, only
    /// over a live entry of the same session. Returns whether it was stored.
    async fn put(
        &self,
        key: &StorageKey,
        entry: &[u8],
        ttl: Duration,
        require_present: bool,
    ) -> Result<bool, TierError>;

    /// Stores `entry` whatever is there (`SET PX`); used for tombstones.
    async fn replace(&self, key: &StorageKey, entry: &[u8], ttl: Duration)
        -> Result<(), TierError>;

    /// Removes the entry (`DEL`).
    async fn remove(&self, key: &StorageKey) -> Result<(), TierError>;

    /// Slides an entry's expiry: if the entry still holds `version` of this session, sets
    /// its time to live to `ttl` and records both expiries in place (the bytes at
    /// [`DURABLE_EXPIRY_OFFSET`](crate::envelope::DURABLE_EXPIRY_OFFSET), see
    /// [`crate::envelope::expiry_bytes`]). Returns whether it did.
    async fn slide(
        &self,
        key: &StorageKey,
        version: u64,
        ttl: Duration,
        durable_expires_at: Option<OffsetDateTime>,
        cache_expires_at: OffsetDateTime,
    ) -> Result<bool, TierError>;

    /// Reads an entry and its remaining time to live without sliding it.
    async fn peek(&self, key: &StorageKey) -> Result<Option<(Bytes, Duration)>, TierError>;

    /// Checks that the tier answers (`PING`).
    async fn ping(&self) -> Result<(), TierError>;

    /// Who is answering: an identifier that changes whenever the cache's contents may have
    /// been replaced behind the store's back (Redis: the server's `run_id`, new at every
    /// start, so also after a restart from an older snapshot or a failover to a replica).
    /// `None` for a tier that cannot be replaced (in-process memory).
    async fn identity(&self) -> Result<Option<String>, TierError> {
        Ok(None)
    }

    /// How many times a connection to the cache was lost so far. The store compares it
    /// between requests: a lost connection may mean the server restarted (perhaps from an
    /// older snapshot) or failed over, so whatever it holds may predate changes, and the
    /// store stops trusting it until it has invalidated it. A tier that cannot lose
    /// anything (in-process memory) keeps the default, 0.
    fn disconnects(&self) -> u64 {
        0
    }

    /// Adds `member` to the index of `owner`'s sessions. Only used without a durable tier
    /// (with one, the durable tier is the index). Every operation touches one key, so it
    /// works on Redis Cluster.
    async fn index_add(&self, owner: &str, member: &StorageKey) -> Result<(), TierError> {
        let _ = (owner, member);
        Err(crate::TierError::unsupported("a per-owner index"))
    }

    /// The members of `owner`'s index (sessions that may have ended since).
    async fn index_members(&self, owner: &str) -> Result<Vec<StorageKey>, TierError> {
        let _ = owner;
        Err(crate::TierError::unsupported("a per-owner index"))
    }

    /// Removes members from `owner`'s index.
    async fn index_remove(&self, owner: &str, members: &[StorageKey]) -> Result<(), TierError> {
        let _ = (owner, members);
        Err(crate::TierError::unsupported("a per-owner index"))
    }
}

/// A session as the durable tier stores it: one row per session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    /// The session's storage key (primary key).
    pub key: StorageKey,
    /// Incremented by every change; orders cache writes.
    pub version: u64,
    /// When the session was created; the absolute lifetime counts from here.
    pub created_at: OffsetDateTime,
    /// The session's idle timeout.
    pub idle_timeout: Duration,
    /// When the row may be swept. Written with slack, see
    /// [`TieredStoreBuilder::with_touch_interval`](crate::TieredStoreBuilder::with_touch_interval).
    pub expires_at: OffsetDateTime,
    /// The encoded session data.
    pub data: Vec<u8>,
    /// Who the session belongs to (for example a user id), when the store is configured to
    /// read one from the session data; lets one owner's sessions be listed and revoked.
    pub owner: Option<String>,
}

/// What a successful [`DurableTier::update`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Updated {
    /// The new version of the session.
    pub version: u64,
    /// When the session was created.
    pub created_at: OffsetDateTime,
}

/// A durable tier (Postgres, SQLite): the source of truth when configured.
#[async_trait]
pub trait DurableTier: Debug + Send + Sync + 'static {
    /// Loads the session if it exists and `expires_at > now`.
    async fn load(
        &self,
        key: &StorageKey,
        now: OffsetDateTime,
    ) -> Result<Option<StoredSession>, TierError>;

    /// Inserts a new session; returns `false`, writing nothing, when the key exists
    /// (`INSERT … ON CONFLICT DO NOTHING`).
    async fn insert(&self, session: &StoredSession) -> Result<bool, TierError>;

    /// Replaces the data, idle timeout, expiry and owner of a live session and increments
    /// its version. Never creates a row: `None` when the session is gone (deleted, or
    /// `expires_at <= now`).
    async fn update(
        &self,
        key: &StorageKey,
        data: &[u8],
        idle_timeout: Duration,
        expires_at: OffsetDateTime,
        owner: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<Option<Updated>, TierError>;

    /// Moves the expiry of a live session forward to `expires_at` (never backward). Returns
    /// the session's current version, `None` when no live row was found; the store uses it
    /// to find out that the cache holds a stale entry.
    async fn touch(
        &self,
        key: &StorageKey,
        expires_at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<Option<u64>, TierError>;

    /// Deletes the session; deleting an absent session is not an error.
    async fn delete(&self, key: &StorageKey) -> Result<(), TierError>;

    /// Deletes at most `batch_size` rows with `expires_at <= now`; returns how many. Safe
    /// to run on several instances at once.
    async fn delete_expired(&self, now: OffsetDateTime, batch_size: u32) -> Result<u64, TierError>;

    /// The live sessions of `owner`, latest expiry first, at most `limit`.
    async fn list_owned(
        &self,
        owner: &str,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<StoredSession>, TierError>;

    /// Deletes the session `key` if it belongs to `owner`; returns whether it did.
    async fn delete_owned(&self, owner: &str, key: &StorageKey) -> Result<bool, TierError>;

    /// Deletes every session of `owner` but `keep`; returns the keys it deleted.
    async fn delete_all_owned(
        &self,
        owner: &str,
        keep: Option<&StorageKey>,
    ) -> Result<Vec<StorageKey>, TierError>;

    /// Checks that the tier answers (`SELECT 1`).
    async fn ping(&self) -> Result<(), TierError>;

    /// The current cache epoch: a counter shared by every store instance on this durable
    /// tier. Cached records written under an older epoch are not trusted.
    async fn epoch(&self) -> Result<u64, TierError>;

    /// Increments the cache epoch and returns the new value; called when a change could
    /// not be written to the cache, so that no instance serves the old cached copy.
    async fn bump_epoch(&self) -> Result<u64, TierError>;

    /// Records the identity of the cache the store talks to (see [`CacheTier::identity`])
    /// and returns the current epoch, incremented first if the identity differs from the
    /// one recorded last: the cache was restarted or replaced, and may hold entries older
    /// than changes made since. Atomic, so several instances noticing the same restart
    /// bump once.
    async fn observe_cache(&self, identity: &str) -> Result<u64, TierError>;
}
