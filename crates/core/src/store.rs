//! [`TieredStore`]: the composition of a cache tier and an optional durable tier.

use std::{
    collections::HashSet,
    fmt,
    future::Future,
    hash::{BuildHasher, Hash, Hasher, RandomState},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, PoisonError, Weak,
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use time::OffsetDateTime;
use tower_sessions_core::{
    session::{Id, Record},
    session_store, ExpiredDeletion, SessionStore,
};

use crate::{
    breaker::{Breaker, PROBE_INTERVAL},
    envelope::{self, DecodeError, Entry, SessionEnvelope},
    metrics as names, CacheTier, Clock, ConfigError, DurableTier, Error, StorageKey, StoredSession,
    SystemClock, TierError, TierErrorKind,
};

/// The key under which the store keeps its bookkeeping in the session data it hands to
/// tower-sessions: the version, creation time and idle timeout the record was loaded with,
/// and a digest of the loaded data.
///
/// It lets `save` tell a read-only request (which `SessionManagerLayer` with
/// `with_always_save(true)` saves on every request) from a change without keeping any state
/// between `load` and `save`: unchanged data is not written back, so a read-only request
/// costs no durable statement and can never overwrite a concurrent request's change.
/// Applications must not write this key; it is never stored.
pub const REVISION_KEY: &str = "_tiered_sessions";

/// How close a save's idle timeout must be to the store's default to count as the default.
/// `Session::expiry_date()` is computed a moment before `save`, so it is a few microseconds
/// short of the configured timeout.
const IDLE_SNAP: Duration = Duration::from_secs(1);

/// How many fresh ids `create` tries before giving up (a collision of 128-bit random ids
/// is already astronomically unlikely once).
const MAX_ID_ATTEMPTS: u32 = 8;

/// How long a deleted session's tombstone stays in the cache. It must outlive any refill
/// that read the session from the durable tier before the delete; refills older than
/// [`REFILL_WINDOW`] are dropped, so this leaves a wide margin.
const TOMBSTONE_TTL: Duration = Duration::from_secs(60);

/// A refill whose durable read started longer ago than this is not written to the cache:
/// a delete may have happened meanwhile and its tombstone may have expired.
const REFILL_WINDOW: Duration = Duration::from_secs(10);

/// A durable touch that takes longer than this is abandoned (and retried by a later read).
const TOUCH_TIMEOUT: Duration = Duration::from_secs(5);

/// At most this many durable touches run in the background at once; beyond it, touches
/// are skipped and retried by a later read (the touch slack covers it).
const MAX_TOUCHES_IN_FLIGHT: usize = 256;

/// A [`SessionStore`] that keeps sessions in a cache tier with sliding expiry and, when a
/// durable tier is configured, writes them through to it.
///
/// | operation | cache tier | durable tier |
/// |---|---|---|
/// | `load`, hit | one `GET`; one slide (`EVAL`) per `touch_interval` per session, in the background | nothing, or one touch per `touch_interval` (in the background) |
/// | `load`, miss | `GET`, then a background refill that never overwrites a newer entry | one `SELECT` |
/// | `save`, data unchanged | nothing | nothing |
/// | `save`, data changed | conditional `SET PX` after the durable write | one `UPDATE` (never re-creates a deleted session) |
/// | `create` | `SET NX PX` | `INSERT … ON CONFLICT DO NOTHING`, retried with a new id on conflict |
/// | `delete` | a tombstone that stops stale refills | `DELETE` |
///
/// Without a durable tier, losing the cache loses the sessions in it.
///
/// # When the cache fails
///
/// Every cache call has a deadline (the tier's; 250 ms for Redis). After three failed
/// calls in a row, or as soon as the cache reports a lost connection, a circuit opens:
/// reads and writes go to the durable tier alone, with no wait on the cache, and a probe
/// pings the cache every 200 ms until it answers (see [`TieredStore::cache_bypassed`]).
/// Without a durable tier, requests fail at once while it is open.
///
/// A change the cache did not take (a failed or skipped write or tombstone) is
/// acknowledged only after the **cache epoch**, a counter in the durable tier, was bumped.
/// Every cached record carries the epoch it was written under, and a record older than the
/// epoch an instance knows is a miss. The instance that made the change knows the new
/// epoch at once; every other instance reads it every
/// [`epoch_poll_interval`](TieredStoreBuilder::with_epoch_poll_interval) (1 s). So a
/// change or logout made while the cache failed is never undone by the cache: on this
/// instance at once, on the others within the poll interval. The epoch is also bumped, once,
/// when the cache server is found replaced (its identity, Redis's `run_id`, changed: a
/// restart, perhaps from an older snapshot, or a failover), before any instance serves
/// from it again. A bump costs one durable read per active session, as a `FLUSHALL` would.
///
/// Build it with [`TieredStore::builder`]. Cloning is cheap and shares the store.
#[derive(Clone)]
pub struct TieredStore {
    inner: Arc<Inner>,
}

struct Inner {
    cache: Arc<dyn CacheTier>,
    durable: Option<Arc<dyn DurableTier>>,
    idle_timeout: Duration,
    touch_interval: Duration,
    absolute_lifetime: Option<Duration>,
    max_session_bytes: usize,
    sweep_batch_size: u32,
    clock: Arc<dyn Clock>,
    owner_pointer: Option<OwnerPointer>,
    durable_timeout: Duration,
    epoch_poll_interval: Duration,
    digests: RandomState,
    touches_in_flight: Mutex<HashSet<StorageKey>>,
    breaker: Breaker,
    /// The highest cache epoch this instance knows of; cached records of older epochs are
    /// misses.
    epoch: AtomicU64,
    /// A bump that failed after a change missed the cache; the probe makes it up before the
    /// circuit closes.
    bump_owed: AtomicBool,
    /// Set once the epoch was first read from the durable tier (or the attempt failed) and
    /// the epoch poller runs.
    epoch_ready: tokio::sync::OnceCell<()>,
}

impl fmt::Debug for TieredStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.debug_struct("TieredStore")
            .field("cache", &inner.cache)
            .field("durable", &inner.durable)
            .field("idle_timeout", &inner.idle_timeout)
            .field("touch_interval", &inner.touch_interval)
            .field("absolute_lifetime", &inner.absolute_lifetime)
            .field("max_session_bytes", &inner.max_session_bytes)
            .finish_non_exhaustive()
    }
}

/// Configures a [`TieredStore`]; see [`TieredStore::builder`].
#[derive(Debug)]
#[must_use]
pub struct TieredStoreBuilder {
    cache: Arc<dyn CacheTier>,
    durable: Option<Arc<dyn DurableTier>>,
    idle_timeout: Duration,
    touch_interval: Option<Duration>,
    absolute_lifetime: Option<Duration>,
    max_session_bytes: usize,
    sweep_batch_size: u32,
    clock: Arc<dyn Clock>,
    owner_pointer: Option<String>,
    durable_timeout: Duration,
    epoch_poll_interval: Duration,
}

impl TieredStore {
    /// Starts configuring a store over `cache`.
    pub fn builder(cache: impl CacheTier) -> TieredStoreBuilder {
        TieredStoreBuilder {
            cache: Arc::new(cache),
            durable: None,
            idle_timeout: TieredStoreBuilder::DEFAULT_IDLE_TIMEOUT,
            touch_interval: None,
            absolute_lifetime: None,
            max_session_bytes: TieredStoreBuilder::DEFAULT_MAX_SESSION_BYTES,
            sweep_batch_size: TieredStoreBuilder::DEFAULT_SWEEP_BATCH_SIZE,
            clock: Arc::new(SystemClock),
            owner_pointer: None,
            durable_timeout: TieredStoreBuilder::DEFAULT_DURABLE_TIMEOUT,
            epoch_poll_interval: TieredStoreBuilder::DEFAULT_EPOCH_POLL_INTERVAL,
        }
    }

    /// The default idle timeout: sessions not used for this long expire.
    pub fn idle_timeout(&self) -> Duration {
        self.inner.idle_timeout
    }

    /// The interval at which an active session's durable expiry is refreshed.
    pub fn touch_interval(&self) -> Duration {
        self.inner.touch_interval
    }

    /// The absolute lifetime, if any.
    pub fn absolute_lifetime(&self) -> Option<Duration> {
        self.inner.absolute_lifetime
    }

    /// Whether the cache is bypassed right now: its circuit opened after repeated failures
    /// or a lost connection, so requests go to the durable tier alone (or, without one,
    /// fail at once) until a probe, every 200 ms, finds the cache answering again.
    pub fn cache_bypassed(&self) -> bool {
        self.inner.breaker.is_open()
    }

    /// Whether a durable tier is configured.
    pub fn is_durable(&self) -> bool {
        self.inner.durable.is_some()
    }

    /// Deletes expired rows from the durable tier in batches of the configured size until
    /// none is left; returns how many were deleted. A no-op without a durable tier (the
    /// cache expires entries itself). Safe to run on several instances at once.
    pub async fn sweep_expired(&self) -> Result<u64, Error> {
        let Some(durable) = &self.inner.durable else {
            return Ok(0);
        };
        let batch = self.inner.sweep_batch_size;
        let mut total = 0;
        loop {
            let now = self.inner.clock.now();
            let deleted = self
                .durable_op("sweep", durable.delete_expired(now, batch))
                .await?;
            total += deleted;
            if deleted < u64::from(batch) {
                return Ok(total);
            }
            // Yield between batches so a large backlog does not hog the runtime.
            tokio::task::yield_now().await;
        }
    }
}

impl TieredStoreBuilder {
    /// Default idle timeout: 30 minutes, a common web default.
    pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
    /// Default limit on encoded session data: 256 KiB. Sessions are read on every request;
    /// anything larger belongs in the database, referenced from the session.
    pub const DEFAULT_MAX_SESSION_BYTES: usize = 256 * 1024;
    /// Default number of rows the sweeper deletes per statement: small enough to keep each
    /// statement's locks and WAL short.
    pub const DEFAULT_SWEEP_BATCH_SIZE: u32 = 1000;
    /// Default deadline of every durable tier call: 2 s. A write that takes longer fails
    /// with a timeout error and is not acknowledged.
    pub const DEFAULT_DURABLE_TIMEOUT: Duration = Duration::from_secs(2);
    /// Default interval at which each instance reads the cache epoch: 1 s, the bound on how
    /// long another instance may serve a cached copy that a failed cache write left behind.
    pub const DEFAULT_EPOCH_POLL_INTERVAL: Duration = Duration::from_secs(1);

    /// Adds a durable tier: the source of truth, written through on every change.
    pub fn with_durable(mut self, durable: impl DurableTier) -> Self {
        self.durable = Some(Arc::new(durable));
        self
    }

    /// Sets the idle timeout (default [`Self::DEFAULT_IDLE_TIMEOUT`]): a session not used
    /// for this long expires; every request that presents it, reads included, restarts the
    /// clock. A session can override it with `Session::set_expiry`.
    pub fn with_idle_timeout(mut self, idle_timeout: Duration) -> Self {
        self.idle_timeout = idle_timeout;
        self
    }

    /// Sets how often an active session's durable expiry is refreshed (default: a tenth of
    /// the idle timeout).
    ///
    /// Reads slide the cache expiry on every request, but write the durable tier at most
    /// once per interval per session. The durable expiry is written as `now + idle +
    /// touch_interval`, so it never expires a live session early; the price is that a
    /// session whose cache entry is lost can outlive its idle timeout by at most this
    /// interval. Shorter means tighter expiry and more durable writes.
    pub fn with_touch_interval(mut self, touch_interval: Duration) -> Self {
        self.touch_interval = Some(touch_interval);
        self
    }

    /// Caps every session's life at this long after creation, however active (default:
    /// none).
    pub fn with_absolute_lifetime(mut self, absolute_lifetime: Duration) -> Self {
        self.absolute_lifetime = Some(absolute_lifetime);
        self
    }

    /// Sets the limit on encoded session data (default
    /// [`Self::DEFAULT_MAX_SESSION_BYTES`]); larger saves fail before anything is written.
    pub fn with_max_session_bytes(mut self, max_session_bytes: usize) -> Self {
        self.max_session_bytes = max_session_bytes;
        self
    }

    /// Sets how many expired rows one sweep statement deletes (default
    /// [`Self::DEFAULT_SWEEP_BATCH_SIZE`]).
    pub fn with_sweep_batch_size(mut self, sweep_batch_size: u32) -> Self {
        self.sweep_batch_size = sweep_batch_size;
        self
    }

    /// Where in the session data the owner of a session is found, as a JSON pointer whose
    /// first segment is the session key: `"/axum-login.data/user_id"` for axum-login's user
    /// id. With it, [`TieredStore::sessions_of`], [`TieredStore::revoke`] and
    /// [`TieredStore::revoke_all`] work ("log out everywhere"). Default: none.
    pub fn with_owner_pointer(mut self, pointer: impl Into<String>) -> Self {
        self.owner_pointer = Some(pointer.into());
        self
    }

    /// Sets the deadline of every durable tier call (default
    /// [`Self::DEFAULT_DURABLE_TIMEOUT`]). A call past it fails with a timeout error; a
    /// write that times out is not acknowledged (it may still have been applied, once).
    pub fn with_durable_timeout(mut self, timeout: Duration) -> Self {
        self.durable_timeout = timeout;
        self
    }

    /// Sets how often each instance reads the cache epoch from the durable tier (default
    /// [`Self::DEFAULT_EPOCH_POLL_INTERVAL`]). When an instance cannot write a change to the
    /// cache, it bumps the epoch; other instances stop serving cached copies written
    /// before the bump within this interval. Shorter means a tighter bound and one more
    /// tiny query per interval per instance.
    pub fn with_epoch_poll_interval(mut self, interval: Duration) -> Self {
        self.epoch_poll_interval = interval;
        self
    }

    /// Replaces the clock the expiry logic reads (default: the system clock). For tests.
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Validates the configuration and builds the store.
    pub fn build(self) -> Result<TieredStore, ConfigError> {
        let idle = self.idle_timeout;
        if idle.is_zero() {
            return Err(ConfigError::Zero("idle_timeout"));
        }
        for (name, value) in [
            ("idle_timeout", Some(idle)),
            ("absolute_lifetime", self.absolute_lifetime),
        ] {
            if value.is_some_and(|v| v > envelope::MAX_LIFETIME) {
                return Err(ConfigError::TooLong(name));
            }
        }
        let touch = self.touch_interval.unwrap_or(idle / 10);
        if touch.is_zero() {
            return Err(ConfigError::Zero("touch_interval"));
        }
        if touch > idle {
            return Err(ConfigError::TouchAfterIdle { touch, idle });
        }
        if let Some(absolute) = self.absolute_lifetime {
            if absolute < idle {
                return Err(ConfigError::AbsoluteBeforeIdle { absolute, idle });
            }
        }
        if self.sweep_batch_size == 0 {
            return Err(ConfigError::Zero("sweep_batch_size"));
        }
        if self.max_session_bytes == 0 {
            return Err(ConfigError::Zero("max_session_bytes"));
        }
        if self.durable_timeout.is_zero() {
            return Err(ConfigError::Zero("durable_timeout"));
        }
        if self.epoch_poll_interval.is_zero() {
            return Err(ConfigError::Zero("epoch_poll_interval"));
        }
        let owner_pointer = self
            .owner_pointer
            .map(|p| OwnerPointer::parse(&p).ok_or(ConfigError::OwnerPointer(p)))
            .transpose()?;
        Ok(TieredStore {
            inner: Arc::new(Inner {
                cache: self.cache,
                durable: self.durable,
                idle_timeout: idle,
                touch_interval: touch,
                absolute_lifetime: self.absolute_lifetime,
                max_session_bytes: self.max_session_bytes,
                sweep_batch_size: self.sweep_batch_size,
                clock: self.clock,
                owner_pointer,
                durable_timeout: self.durable_timeout,
                epoch_poll_interval: self.epoch_poll_interval,
                digests: RandomState::new(),
                touches_in_flight: Mutex::new(HashSet::new()),
                breaker: Breaker::default(),
                epoch: AtomicU64::new(0),
                bump_owed: AtomicBool::new(false),
                epoch_ready: tokio::sync::OnceCell::new(),
            }),
        })
    }
}

/// A JSON pointer into session data: the session key, then a pointer inside its value.
#[derive(Debug, Clone)]
struct OwnerPointer {
    key: String,
    inner: String,
}

impl OwnerPointer {
    fn parse(pointer: &str) -> Option<Self> {
        let rest = pointer.strip_prefix('/')?;
        let (first, inner) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let key = first.replace("~1", "/").replace("~0", "~");
        (!key.is_empty()).then(|| Self {
            key,
            inner: inner.to_owned(),
        })
    }

    /// The owner named in `data`: a string as is, a number or boolean as written in JSON.
    fn owner_in(&self, data: &envelope::Data) -> Option<String> {
        let value = data.get(&self.key)?.pointer(&self.inner)?;
        let owner = match value {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(_) | serde_json::Value::Bool(_) => value.to_string(),
            _ => return None,
        };
        (!owner.is_empty() && owner.len() <= MAX_OWNER_LEN).then_some(owner)
    }
}

/// Owners longer than this are not indexed (an id, not a document).
const MAX_OWNER_LEN: usize = 256;

/// At most this many sessions of one owner are listed.
const MAX_LISTED: u32 = 1000;

/// How long a health probe may take per tier.
const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// One of an owner's live sessions, as [`TieredStore::sessions_of`] lists them.
#[derive(Debug, Clone)]
pub struct OwnedSession {
    /// The session's storage key: what to pass to [`TieredStore::revoke`]. It is not the
    /// session id (that never leaves the cookie), so it is safe to show.
    pub key: StorageKey,
    /// When the session was created.
    pub created_at: OffsetDateTime,
    /// When it was last used, give or take the touch interval.
    pub last_seen_at: OffsetDateTime,
    /// When it expires unless used again.
    pub expires_at: OffsetDateTime,
    /// The session data.
    pub data: envelope::Data,
}

/// The state of one tier, from [`TieredStore::health`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum TierHealth {
    /// It answered.
    Ok {
        /// How long the probe took.
        latency_ms: f64,
    },
    /// It answers, but the store is not using it fully yet (the cache's circuit is open).
    Degraded {
        /// Why.
        reason: String,
    },
    /// It did not answer in time, or answered with an error.
    Down {
        /// Why.
        reason: String,
    },
}

impl TierHealth {
    /// Whether the tier answered.
    pub fn is_ok(&self) -> bool {
        matches!(self, Self::Ok { .. })
    }
}

/// The state of the store's tiers, from [`TieredStore::health`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Health {
    /// The cache tier.
    pub cache: TierHealth,
    /// The durable tier, if configured.
    pub durable: Option<TierHealth>,
}

impl Health {
    /// Whether sessions are being served: with a durable tier, when either tier answers
    /// (Redis down: everything goes to the database; database down: cached reads work,
    /// writes fail); without one, when the cache answers.
    pub fn serving(&self) -> bool {
        self.cache.is_ok() || self.durable.as_ref().is_some_and(TierHealth::is_ok)
    }

    /// Whether changes can be saved: with a durable tier, when it answers (the cache may be
    /// down: changes go to the database alone); without one, when the cache answers.
    pub fn writable(&self) -> bool {
        match &self.durable {
            Some(durable) => durable.is_ok(),
            None => self.cache.is_ok(),
        }
    }

    /// Whether some configured tier is down while sessions are still served.
    pub fn degraded(&self) -> bool {
        self.serving()
            && !(self.cache.is_ok() && self.durable.as_ref().is_none_or(TierHealth::is_ok))
    }
}

async fn probe(ping: impl std::future::Future<Output = Result<(), TierError>>) -> TierHealth {
    let started = Instant::now();
    match tokio::time::timeout(PING_TIMEOUT, ping).await {
        Ok(Ok(())) => TierHealth::Ok {
            latency_ms: started.elapsed().as_secs_f64() * 1000.0,
        },
        Ok(Err(e)) => TierHealth::Down {
            reason: e.to_string(),
        },
        Err(_) => TierHealth::Down {
            reason: format!("no answer within {PING_TIMEOUT:?}"),
        },
    }
}

/// Releases a session's durable-touch slot when dropped.
struct InFlight {
    store: TieredStore,
    key: StorageKey,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.store
            .inner
            .touches_in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

/// The bookkeeping kept under [`REVISION_KEY`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Revision {
    version: u64,
    created_at_ms: i64,
    idle_ms: u64,
    digest: u64,
}

impl Revision {
    fn to_value(self) -> serde_json::Value {
        serde_json::json!([self.version, self.created_at_ms, self.idle_ms, self.digest])
    }

    fn from_value(value: Option<&serde_json::Value>) -> Option<Self> {
        let items = value?.as_array()?;
        match items.as_slice() {
            [version, created, idle, digest] => Some(Self {
                version: version.as_u64()?,
                created_at_ms: created.as_i64()?,
                idle_ms: idle.as_u64()?,
                digest: digest.as_u64()?,
            }),
            _ => None,
        }
    }
}

/// Why a stored record is not served.
enum Unusable {
    /// Past its absolute lifetime.
    Expired,
    /// The data bytes do not decode.
    Corrupt,
}

impl Inner {
    /// A digest of session data, computed from the values themselves so that a save can
    /// tell unchanged data without encoding it. A keyed hash (SipHash with a per-process
    /// random key): the revision is only ever compared within the process that wrote it
    /// (one request's load and save), and users cannot craft collisions without the key.
    /// Entries are combined by addition, so the map's iteration order does not matter.
    fn digest(&self, key: &StorageKey, data: &envelope::Data) -> u64 {
        let entries = data.len() - usize::from(data.contains_key(REVISION_KEY));
        let mut sum = self.digests.hash_one((key.as_bytes(), entries));
        for (name, value) in data {
            if name == REVISION_KEY {
                continue;
            }
            let mut hasher = self.digests.build_hasher();
            name.hash(&mut hasher);
            hash_value(&mut hasher, value);
            sum = sum.wrapping_add(hasher.finish());
        }
        sum
    }

    fn deadline(&self, created_at: OffsetDateTime) -> Option<OffsetDateTime> {
        self.absolute_lifetime.map(|a| plus(created_at, a))
    }

    /// The cache time to live of a session written or slid now: its idle timeout plus the
    /// touch interval of slack (reads slide it at most once per interval), cut short by the
    /// absolute lifetime.
    fn cache_ttl(&self, env: &SessionEnvelope, now: OffsetDateTime) -> Duration {
        let mut ttl = env.idle_timeout.saturating_add(self.touch_interval);
        if let Some(deadline) = self.deadline(env.created_at) {
            let left = Duration::try_from(deadline - now).unwrap_or(Duration::ZERO);
            ttl = ttl.min(left);
        }
        ttl.max(Duration::from_millis(1))
    }

    /// The durable expiry of a session active now: idle timeout plus the touch interval of
    /// slack, capped by the absolute lifetime.
    fn durable_expiry(
        &self,
        created_at: OffsetDateTime,
        idle: Duration,
        now: OffsetDateTime,
    ) -> OffsetDateTime {
        let expiry = plus(plus(now, idle), self.touch_interval);
        match self.deadline(created_at) {
            Some(deadline) => expiry.min(deadline),
            None => expiry,
        }
    }

    /// The idle timeout a save asks for: the time left until the record's expiry date,
    /// snapped to the default when it is the default. `None` when already expired.
    fn idle_of(&self, record: &Record, now: OffsetDateTime) -> Option<Duration> {
        let left = Duration::try_from(record.expiry_date - now).ok()?;
        if left.abs_diff(self.idle_timeout) <= IDLE_SNAP {
            return Some(self.idle_timeout);
        }
        let left = left.min(envelope::MAX_LIFETIME);
        // To the nearest millisecond: the expiry date was computed a few microseconds ago.
        let millis = envelope::duration_ms(left + Duration::from_micros(500));
        (millis > 0).then(|| Duration::from_millis(millis))
    }

    fn to_record(
        &self,
        id: &Id,
        env: &SessionEnvelope,
        now: OffsetDateTime,
    ) -> Result<Record, Unusable> {
        let deadline = self.deadline(env.created_at);
        if deadline.is_some_and(|d| now >= d) {
            return Err(Unusable::Expired);
        }
        let mut data = envelope::decode_data(&env.data).ok_or(Unusable::Corrupt)?;
        let revision = Revision {
            version: env.version,
            created_at_ms: envelope::unix_ms(env.created_at),
            idle_ms: envelope::duration_ms(env.idle_timeout),
            digest: self.digest(&env.key, &data),
        };
        data.insert(REVISION_KEY.to_owned(), revision.to_value());
        let mut expiry_date = plus(now, env.idle_timeout);
        if let Some(deadline) = deadline {
            expiry_date = expiry_date.min(deadline);
        }
        Ok(Record {
            id: *id,
            data,
            expiry_date,
        })
    }

    fn owner_of(&self, data: &envelope::Data) -> Option<String> {
        self.owner_pointer.as_ref()?.owner_in(data)
    }

    fn encode_data(&self, record: &Record) -> Result<Vec<u8>, Error> {
        let data = envelope::encode_data(&record.data, REVISION_KEY)?;
        if data.len() > self.max_session_bytes {
            return Err(Error::TooLarge {
                size: data.len(),
                limit: self.max_session_bytes,
            });
        }
        Ok(data)
    }
}

/// Feeds a JSON value to `hasher`, tagging each kind so that, say, `1` and `"1"` differ.
/// Objects iterate in key order (serde_json's map is sorted); arrays in order.
fn hash_value(hasher: &mut impl Hasher, value: &serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Null => hasher.write_u8(0),
        Value::Bool(b) => hasher.write_u8(if *b { 1 } else { 2 }),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                hasher.write_u8(3);
                hasher.write_u64(u);
            } else if let Some(i) = n.as_i64() {
                hasher.write_u8(4);
                hasher.write_i64(i);
            } else {
                hasher.write_u8(5);
                hasher.write_u64(n.as_f64().map_or(0, f64::to_bits));
            }
        }
        Value::String(s) => {
            hasher.write_u8(6);
            s.hash(hasher);
        }
        Value::Array(items) => {
            hasher.write_u8(7);
            hasher.write_usize(items.len());
            for item in items {
                hash_value(hasher, item);
            }
        }
        Value::Object(map) => {
            hasher.write_u8(8);
            hasher.write_usize(map.len());
            for (name, item) in map {
                name.hash(hasher);
                hash_value(hasher, item);
            }
        }
    }
}

/// `t + d`, saturating at the end of the representable calendar instead of panicking.
fn plus(t: OffsetDateTime, d: Duration) -> OffsetDateTime {
    time::Duration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d))
        .unwrap_or(time::PrimitiveDateTime::MAX.assume_utc())
}

fn cache_error(err: &TierError, op: &'static str) {
    metrics::counter!(names::ERRORS_TOTAL, "tier" => "cache", "kind" => err.kind().to_string())
        .increment(1);
    // Debug, not warn: during an outage this would be one line per request. The circuit
    // breaker logs its state changes.
    tracing::debug!(error = %err, op, "session cache operation failed");
}

fn durable_error(err: TierError, op: &'static str) -> Error {
    metrics::counter!(names::ERRORS_TOTAL, "tier" => "durable", "kind" => err.kind().to_string())
        .increment(1);
    tracing::error!(error = %err, op, "session durable tier operation failed");
    Error::Durable(err)
}

fn miss(reason: &'static str) {
    metrics::counter!(names::CACHE_MISSES_TOTAL, "reason" => reason).increment(1);
}

/// Whether a cache failure says something about the cache as a whole (and counts towards
/// opening the circuit), rather than about one entry or one command.
fn is_outage(err: &TierError) -> bool {
    matches!(
        err.kind(),
        TierErrorKind::Unavailable | TierErrorKind::Timeout | TierErrorKind::Other
    )
}

fn circuit_open_error() -> TierError {
    TierError::new(
        "cache",
        TierErrorKind::Unavailable,
        "the cache is not answering (circuit open); retrying in the background",
    )
}

/// Runs `task` on the current tokio runtime; without one (a store used outside tokio), the
/// background work is skipped.
fn spawn(task: impl Future<Output = ()> + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn(task);
        }
        Err(_) => tracing::debug!("no tokio runtime; background session work skipped"),
    }
}

/// Reads the cache epoch from the durable tier every `interval` while the store lives.
async fn poll_epoch(store: Weak<Inner>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let Some(inner) = store.upgrade() else {
            return;
        };
        let Some(durable) = &inner.durable else {
            return;
        };
        match tokio::time::timeout(inner.durable_timeout, durable.epoch()).await {
            Ok(Ok(epoch)) => {
                inner.epoch.fetch_max(epoch, Ordering::AcqRel);
            }
            Ok(Err(err)) => tracing::debug!(error = %err, "cache epoch poll failed"),
            Err(_) => tracing::debug!("cache epoch poll timed out"),
        }
    }
}

/// Pings the cache every [`PROBE_INTERVAL`] until it answers, then closes the circuit.
async fn probe_until_closed(store: Weak<Inner>) {
    loop {
        tokio::time::sleep(PROBE_INTERVAL).await;
        let Some(inner) = store.upgrade() else {
            return;
        };
        if (TieredStore { inner }).try_close().await {
            return;
        }
    }
}

impl TieredStore {
    /// Reads the cache epoch once before the first request (bumping it if the cache server
    /// is not the one the durable tier last saw) and starts the poller that keeps it
    /// current. Later calls return at once.
    async fn ensure_epoch(&self) {
        let inner = &*self.inner;
        if inner.durable.is_none() {
            return;
        }
        inner
            .epoch_ready
            .get_or_init(|| async {
                if self.sync_epoch().await.is_err() {
                    // Until the poller reads it, the highest epoch seen in cache entries is
                    // the floor.
                    tracing::warn!("cache epoch unknown at startup; polling for it");
                }
                spawn(poll_epoch(
                    Arc::downgrade(&self.inner),
                    inner.epoch_poll_interval,
                ));
            })
            .await;
    }

    fn epoch(&self) -> u64 {
        self.inner.epoch.load(Ordering::Acquire)
    }

    /// Reads the epoch, first telling the durable tier which cache server answers: if it
    /// is not the one recorded (a restart, perhaps from an older snapshot, or a failover),
    /// the epoch is bumped, so nothing cached before counts.
    async fn sync_epoch(&self) -> Result<(), Error> {
        let inner = &*self.inner;
        if inner.durable.is_none() {
            return Ok(());
        }
        let identity = if self.cache_allowed() {
            let identity = inner.cache.identity().await;
            self.cache_outcome(&identity, "identity");
            identity.ok().flatten()
        } else {
            None
        };
        self.observe_epoch(identity.as_deref()).await
    }

    /// Reads the durable epoch into this instance, first recording `identity` (the cache
    /// server answering now), which bumps the epoch if the server was replaced.
    async fn observe_epoch(&self, identity: Option<&str>) -> Result<(), Error> {
        let inner = &*self.inner;
        let Some(durable) = &inner.durable else {
            return Ok(());
        };
        let before = self.epoch();
        let epoch = match identity {
            Some(identity) => {
                self.durable_op("observe_cache", durable.observe_cache(identity))
                    .await?
            }
            None => self.durable_op("epoch", durable.epoch()).await?,
        };
        inner.epoch.fetch_max(epoch, Ordering::AcqRel);
        if before != 0 && epoch > before {
            tracing::info!(
                epoch,
                "cache epoch moved on; entries cached before are not served"
            );
        }
        Ok(())
    }

    /// Whether to call the cache now. A closed circuit says yes, unless the cache lost a
    /// connection since it closed: then it opens (the server may have restarted from an
    /// older snapshot, or failed over to a replica that missed writes).
    fn cache_allowed(&self) -> bool {
        let inner = &*self.inner;
        if inner.breaker.allows(inner.cache.disconnects()) {
            return true;
        }
        if inner.breaker.trip() {
            self.circuit_opened("the cache connection was lost");
        }
        false
    }

    /// Accounts for the result of a cache call.
    fn cache_outcome<T>(&self, result: &Result<T, TierError>, op: &'static str) {
        match result {
            Ok(_) => self.inner.breaker.success(),
            Err(err) => {
                cache_error(err, op);
                if is_outage(err) && self.inner.breaker.failure() {
                    self.circuit_opened("cache calls failed");
                }
            }
        }
    }

    fn circuit_opened(&self, reason: &'static str) {
        metrics::gauge!(names::CACHE_CIRCUIT_OPEN).set(1.0);
        metrics::counter!(names::CACHE_CIRCUIT_CHANGES_TOTAL, "to" => "open").increment(1);
        let then = if self.inner.durable.is_some() {
            "sessions are served from the durable tier"
        } else {
            "session requests fail at once"
        };
        tracing::warn!(
            reason,
            "session cache circuit opened: {then} until the cache answers"
        );
        spawn(probe_until_closed(Arc::downgrade(&self.inner)));
    }

    /// Closes the circuit if the cache answers and, with a durable tier, the epoch is in
    /// order: bumped if the cache server was replaced meanwhile (a restart, perhaps from an
    /// older snapshot, or a failover) or if a bump after a missed change is still owed.
    /// Changes made while the circuit was open bumped it already.
    async fn try_close(&self) -> bool {
        let inner = &*self.inner;
        let disconnects = inner.cache.disconnects();
        if !probe(inner.cache.ping()).await.is_ok() {
            return false;
        }
        if inner.durable.is_some() {
            if inner.bump_owed.load(Ordering::Acquire) {
                if self.bump_epoch("owed").await.is_err() {
                    return false;
                }
                inner.bump_owed.store(false, Ordering::Release);
            }
            let identity = match tokio::time::timeout(PING_TIMEOUT, inner.cache.identity()).await {
                Ok(Ok(identity)) => identity,
                _ => return false,
            };
            if self.observe_epoch(identity.as_deref()).await.is_err() {
                return false;
            }
        }
        inner.breaker.close(disconnects);
        metrics::gauge!(names::CACHE_CIRCUIT_OPEN).set(0.0);
        metrics::counter!(names::CACHE_CIRCUIT_CHANGES_TOTAL, "to" => "closed").increment(1);
        tracing::info!("session cache answers again; circuit closed");
        true
    }

    async fn bump_epoch(&self, reason: &'static str) -> Result<(), Error> {
        let Some(durable) = &self.inner.durable else {
            return Ok(());
        };
        let epoch = self.durable_op("bump_epoch", durable.bump_epoch()).await?;
        self.inner.epoch.fetch_max(epoch, Ordering::AcqRel);
        metrics::counter!(names::EPOCH_BUMPS_TOTAL, "reason" => reason).increment(1);
        tracing::debug!(epoch, reason, "cache epoch bumped");
        Ok(())
    }

    /// A change the durable tier accepted did not reach the cache: bump the epoch so that
    /// no instance serves the cached copy from before it. If even that fails, the change is
    /// not acknowledged, and this instance stops using the cache until a bump succeeds.
    async fn invalidate_cache(&self, reason: &'static str) -> Result<(), Error> {
        let bumped = self.bump_epoch(reason).await;
        if bumped.is_err() {
            self.inner.bump_owed.store(true, Ordering::Release);
            if self.inner.breaker.trip() {
                self.circuit_opened("a change could not be recorded in the cache epoch");
            }
        }
        bumped
    }

    /// A durable tier call under the durable deadline.
    async fn durable_op<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<T, TierError>>,
    ) -> Result<T, Error> {
        let limit = self.inner.durable_timeout;
        match tokio::time::timeout(limit, call).await {
            Ok(result) => result.map_err(|e| durable_error(e, op)),
            Err(_) => Err(durable_error(
                TierError::new(
                    "durable",
                    TierErrorKind::Timeout,
                    format!("no answer within {limit:?}; check that the database is reachable"),
                ),
                op,
            )),
        }
    }

    async fn load_inner(&self, id: &Id) -> Result<Option<Record>, Error> {
        let inner = &*self.inner;
        let key = StorageKey::from_id(id);
        self.ensure_epoch().await;
        let now = inner.clock.now();

        let mut refill = self.cache_allowed();
        if refill {
            let got = inner.cache.get(&key).await;
            if !matches!(&got, Err(e) if e.kind() == TierErrorKind::WrongType) {
                self.cache_outcome(&got, "get");
            }
            match got {
                Ok(Some(bytes)) => match envelope::decode(&bytes, &key) {
                    Ok(Entry::Record(env)) => {
                        // A plain load first: the read path must not bounce the line
                        // between cores with a read-modify-write on every request.
                        let known = self.epoch();
                        if env.epoch > known {
                            inner.epoch.fetch_max(env.epoch, Ordering::AcqRel);
                        }
                        if env.epoch < known {
                            miss("stale_epoch");
                        } else {
                            match inner.to_record(id, &env, now) {
                                Ok(record) => {
                                    metrics::counter!(names::CACHE_HITS_TOTAL).increment(1);
                                    self.maintain(&env, now, true);
                                    return Ok(Some(record));
                                }
                                Err(Unusable::Expired) => return Ok(None),
                                Err(Unusable::Corrupt) => miss("corrupt"),
                            }
                        }
                    }
                    // A deleted session: never read it back from anywhere.
                    Ok(Entry::Tombstone) => return Ok(None),
                    Err(DecodeError::Foreign) => miss("foreign"),
                    Err(DecodeError::WrongKey) => {
                        tracing::warn!(key = ?key, "cache entry belongs to another session; ignored");
                        miss("wrong_key")
                    }
                    Err(DecodeError::UnknownFormat(_) | DecodeError::UnknownKind(_)) => {
                        miss("unknown_format")
                    }
                    Err(DecodeError::Corrupt) => miss("corrupt"),
                },
                Ok(None) => miss("absent"),
                // Something else lives under the key: a miss; the refill replaces it.
                Err(err) if err.kind() == TierErrorKind::WrongType => {
                    tracing::warn!(key = ?key, "cache key holds a value of another type; ignored");
                    miss("wrong_type");
                }
                Err(err) => {
                    miss("unavailable");
                    if inner.durable.is_none() {
                        return Err(Error::Cache(err));
                    }
                    refill = false;
                }
            }
        } else {
            if inner.durable.is_none() {
                return Err(Error::Cache(circuit_open_error()));
            }
            metrics::counter!(names::CACHE_BYPASSES_TOTAL).increment(1);
        }

        let Some(durable) = &inner.durable else {
            return Ok(None);
        };
        // The epoch before the read: if a change that misses the cache lands after it, the
        // bump that follows that change makes this refill a miss.
        let epoch = self.epoch();
        let row = self.durable_op("load", durable.load(&key, now)).await?;
        metrics::counter!(names::DURABLE_READS_TOTAL).increment(1);
        let Some(row) = row else {
            return Ok(None);
        };
        let mut env = SessionEnvelope {
            key,
            version: row.version,
            created_at: row.created_at,
            idle_timeout: row
                .idle_timeout
                .clamp(Duration::from_millis(1), envelope::MAX_LIFETIME),
            epoch,
            durable_expires_at: Some(row.expires_at),
            cache_expires_at: now,
            data: row.data,
        };
        env.cache_expires_at = plus(now, inner.cache_ttl(&env, now));
        let record = match inner.to_record(id, &env, now) {
            Ok(record) => record,
            Err(Unusable::Expired) => return Ok(None),
            Err(Unusable::Corrupt) => {
                tracing::warn!(key = ?key, "durable session row has undecodable data; starting a fresh session");
                return Ok(None);
            }
        };
        if refill {
            self.refill(&env, now);
        }
        self.maintain(&env, now, false);
        Ok(Some(record))
    }

    /// Writes a session read from the durable tier back to the cache, in the background so
    /// the read does not wait for it. Conditional: a change or delete that landed since the
    /// read wins, and a refill that takes longer than [`REFILL_WINDOW`] is dropped.
    fn refill(&self, env: &SessionEnvelope, now: OffsetDateTime) {
        let store = self.clone();
        let (key, entry, ttl) = (env.key, env.encode(), self.inner.cache_ttl(env, now));
        let started = Instant::now();
        spawn(async move {
            let put = store.inner.cache.put(&key, &entry, ttl, false);
            let Ok(written) =
                tokio::time::timeout(REFILL_WINDOW.saturating_sub(started.elapsed()), put).await
            else {
                return;
            };
            store.cache_outcome(&written, "refill");
            if let Ok(true) = written {
                metrics::counter!(names::CACHE_REFILLS_TOTAL).increment(1);
            }
        });
    }

    /// Slides a served session's expiry where due, in the background: the durable expiry
    /// and the cache's time to live are each moved at most once per touch interval per
    /// session, and only while they no longer cover a full idle timeout from now.
    fn maintain(&self, env: &SessionEnvelope, now: OffsetDateTime, cached: bool) {
        let inner = &*self.inner;
        let slack = inner.touch_interval;
        let durable_expires_at = inner.durable_expiry(env.created_at, env.idle_timeout, now);
        let touch_due = inner.durable.is_some()
            && env
                .durable_expires_at
                .is_none_or(|at| plus(at, slack) <= durable_expires_at);
        let ttl = inner.cache_ttl(env, now);
        let cache_expires_at = plus(now, ttl);
        let slide_due = cached && plus(env.cache_expires_at, slack) <= cache_expires_at;
        if !touch_due && !slide_due {
            return;
        }
        {
            let mut in_flight = inner
                .touches_in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if in_flight.len() >= MAX_TOUCHES_IN_FLIGHT || !in_flight.insert(env.key) {
                return;
            }
        }
        let (key, version) = (env.key, env.version);
        // Frees the in-flight slot however the task ends (done, failed, never run, or
        // dropped with its runtime), so a session is never left untouchable.
        let slot = InFlight {
            store: self.clone(),
            key,
        };
        let mut kept_durable_expiry = env.durable_expires_at;
        spawn(async move {
            let store = &slot.store;
            let inner = &*store.inner;
            if touch_due {
                let Some(durable) = &inner.durable else {
                    return;
                };
                let touched = tokio::time::timeout(
                    TOUCH_TIMEOUT,
                    durable.touch(&key, durable_expires_at, now),
                );
                match touched.await {
                    Ok(Ok(Some(current))) if current == version => {
                        metrics::counter!(names::DURABLE_TOUCHES_TOTAL).increment(1);
                        kept_durable_expiry = Some(durable_expires_at);
                    }
                    // The cache served a version the durable tier has moved past (a cache
                    // write that failed): drop it, the next read refills the current one.
                    Ok(Ok(Some(current))) => {
                        metrics::counter!(names::DURABLE_TOUCHES_TOTAL).increment(1);
                        tracing::warn!(key = ?key, cached = version, current, "cache held a stale version; dropped");
                        let removed = inner.cache.remove(&key).await;
                        store.cache_outcome(&removed, "remove");
                        return;
                    }
                    // The session is gone from the source of truth (a delete whose cache
                    // write failed): the cache must stop serving it.
                    Ok(Ok(None)) => {
                        if cached {
                            tracing::warn!(key = ?key, "cache served a session the durable tier no longer has; revoked");
                            // Logged by `tombstone`; the next touch tries again.
                            let _ = store.tombstone(&key).await;
                        }
                        return;
                    }
                    // Leave the cache's expiry alone too, so that the tiers agree on when
                    // the session ends.
                    Ok(Err(e)) => {
                        durable_error(e, "touch");
                        return;
                    }
                    Err(_) => {
                        tracing::warn!(key = ?key, timeout = ?TOUCH_TIMEOUT, "durable touch timed out");
                        return;
                    }
                }
            }
            if cached && store.cache_allowed() {
                let slid = inner
                    .cache
                    .slide(&key, version, ttl, kept_durable_expiry, cache_expires_at)
                    .await;
                store.cache_outcome(&slid, "slide");
                if let Ok(true) = slid {
                    metrics::counter!(names::CACHE_SLIDES_TOTAL).increment(1);
                }
            }
        });
    }

    async fn save_inner(&self, record: &Record) -> Result<(), Error> {
        let inner = &*self.inner;
        let key = StorageKey::from_id(&record.id);
        self.ensure_epoch().await;
        let now = inner.clock.now();
        let Some(idle) = inner.idle_of(record, now) else {
            // Its own expiry date has passed: it is over.
            return self.delete_key(&key).await;
        };
        let revision = Revision::from_value(record.data.get(REVISION_KEY));
        if let Some(rev) = revision {
            let same_idle = Duration::from_millis(rev.idle_ms).abs_diff(idle) <= IDLE_SNAP;
            if same_idle && rev.digest == inner.digest(&key, &record.data) {
                // A read-only request: `load` already slid the expiries where due.
                // Writing back could undo a concurrent change.
                return Ok(());
            }
        }
        let data = inner.encode_data(record)?;

        match &inner.durable {
            Some(durable) => {
                let created_at = revision
                    .and_then(|r| envelope::from_unix_ms(r.created_at_ms))
                    .unwrap_or(now);
                let expires_at = inner.durable_expiry(created_at, idle, now);
                // Durable first: it is the source of truth, and an UPDATE never re-creates
                // a session that a concurrent logout deleted.
                let owner = inner.owner_of(&record.data);
                let epoch = self.epoch();
                let updated = self
                    .durable_op(
                        "update",
                        durable.update(&key, &data, idle, expires_at, owner.as_deref(), now),
                    )
                    .await?;
                metrics::counter!(names::DURABLE_WRITES_TOTAL, "op" => "update").increment(1);
                let Some(updated) = updated else {
                    metrics::counter!(names::SAVES_DISCARDED_TOTAL).increment(1);
                    tracing::debug!(key = ?key, "save found the session gone; nothing written");
                    return Ok(());
                };
                let mut env = SessionEnvelope {
                    key,
                    version: updated.version,
                    created_at: updated.created_at,
                    idle_timeout: idle,
                    epoch,
                    durable_expires_at: Some(expires_at),
                    cache_expires_at: now,
                    data,
                };
                env.cache_expires_at = plus(now, inner.cache_ttl(&env, now));
                self.write_cache_after_durable(&env, now).await
            }
            None => {
                if !self.cache_allowed() {
                    return Err(Error::Cache(circuit_open_error()));
                }
                let (version, created_at) = match revision {
                    Some(rev) => (
                        rev.version.saturating_add(1),
                        envelope::from_unix_ms(rev.created_at_ms).unwrap_or(now),
                    ),
                    // A record that did not come from `load`: read the stored version.
                    None => match self.current_envelope(&key).await? {
                        Some(cur) => (cur.version.saturating_add(1), cur.created_at),
                        None => {
                            metrics::counter!(names::SAVES_DISCARDED_TOTAL).increment(1);
                            return Ok(());
                        }
                    },
                };
                let mut env = SessionEnvelope {
                    key,
                    version,
                    created_at,
                    idle_timeout: idle,
                    epoch: 0,
                    durable_expires_at: None,
                    cache_expires_at: now,
                    data,
                };
                env.cache_expires_at = plus(now, inner.cache_ttl(&env, now));
                self.index(&key, &record.data).await?;
                // `require_present`: without a durable tier the cache is the truth, and a
                // save must not re-create a session that expired or was deleted meanwhile.
                let written = inner
                    .cache
                    .put(&key, &env.encode(), inner.cache_ttl(&env, now), true)
                    .await;
                self.cache_outcome(&written, "put");
                if !written.map_err(Error::Cache)? {
                    metrics::counter!(names::SAVES_DISCARDED_TOTAL).increment(1);
                }
                Ok(())
            }
        }
    }

    async fn current_envelope(&self, key: &StorageKey) -> Result<Option<SessionEnvelope>, Error> {
        let got = self.inner.cache.get(key).await;
        self.cache_outcome(&got, "get");
        Ok(
            match got
                .map_err(Error::Cache)?
                .map(|b| envelope::decode(&b, key))
            {
                Some(Ok(Entry::Record(env))) => Some(env),
                _ => None,
            },
        )
    }

    /// Writes a change that the durable tier has accepted to the cache. If the cache is
    /// bypassed or the write fails, the cache may still hold the previous version: bump the
    /// epoch so that no instance serves it.
    async fn write_cache_after_durable(
        &self,
        env: &SessionEnvelope,
        now: OffsetDateTime,
    ) -> Result<(), Error> {
        let inner = &*self.inner;
        if !self.cache_allowed() {
            return self.invalidate_cache("cache_bypassed").await;
        }
        let put = inner
            .cache
            .put(&env.key, &env.encode(), inner.cache_ttl(env, now), false)
            .await;
        self.cache_outcome(&put, "put");
        match put {
            Ok(_) => Ok(()),
            Err(_) => self.invalidate_cache("cache_write_failed").await,
        }
    }

    async fn create_inner(&self, record: &mut Record) -> Result<(), Error> {
        let inner = &*self.inner;
        self.ensure_epoch().await;
        let now = inner.clock.now();
        let idle = inner.idle_of(record, now).unwrap_or(inner.idle_timeout);
        let data = inner.encode_data(record)?;
        for _ in 0..MAX_ID_ATTEMPTS {
            // Always a fresh id, never the one the record carries: after `Session::flush`
            // the record keeps its old (perhaps stolen) id, and a write in the same request
            // would otherwise bring that id back to life.
            record.id = Id::default();
            let key = StorageKey::from_id(&record.id);
            let created_at = envelope::from_unix_ms(envelope::unix_ms(now)).unwrap_or(now);
            let durable_expires_at = inner
                .durable
                .as_ref()
                .map(|_| inner.durable_expiry(created_at, idle, now));
            let mut env = SessionEnvelope {
                key,
                version: 1,
                created_at,
                idle_timeout: idle,
                epoch: self.epoch(),
                durable_expires_at,
                cache_expires_at: now,
                data: data.clone(),
            };
            env.cache_expires_at = plus(now, inner.cache_ttl(&env, now));
            if let (Some(durable), Some(expires_at)) = (&inner.durable, durable_expires_at) {
                let session = StoredSession {
                    key,
                    version: 1,
                    created_at,
                    idle_timeout: idle,
                    expires_at,
                    data: data.clone(),
                    owner: inner.owner_of(&record.data),
                };
                let inserted = self.durable_op("insert", durable.insert(&session)).await?;
                metrics::counter!(names::DURABLE_WRITES_TOTAL, "op" => "insert").increment(1);
                if !inserted {
                    tracing::warn!("session id collision in the durable tier; drawing a new id");
                    continue;
                }
            }
            if inner.durable.is_none() {
                if !self.cache_allowed() {
                    return Err(Error::Cache(circuit_open_error()));
                }
                self.index(&key, &record.data).await?;
            }
            // With the circuit open, the durable row is the session; a later read refills
            // the cache.
            if self.cache_allowed() {
                let inserted = inner
                    .cache
                    .insert(&key, &env.encode(), inner.cache_ttl(&env, now))
                    .await;
                self.cache_outcome(&inserted, "insert");
                match inserted {
                    Ok(true) => {}
                    Ok(false) => {
                        // Something (a tombstone, a stale entry) is filed under this id in
                        // the cache: do not share it. Undo the durable row and draw again.
                        tracing::warn!("session id collision in the cache tier; drawing a new id");
                        if let Some(durable) = &inner.durable {
                            self.durable_op("delete", durable.delete(&key)).await?;
                        }
                        continue;
                    }
                    Err(err) => {
                        if inner.durable.is_none() {
                            return Err(Error::Cache(err));
                        }
                        // The durable row is the session; the next read refills the cache.
                    }
                }
            }
            let revision = Revision {
                version: 1,
                created_at_ms: envelope::unix_ms(created_at),
                idle_ms: envelope::duration_ms(idle),
                digest: inner.digest(&key, &record.data),
            };
            record
                .data
                .insert(REVISION_KEY.to_owned(), revision.to_value());
            return Ok(());
        }
        Err(Error::IdExhausted(MAX_ID_ATTEMPTS))
    }

    /// Without a durable tier, records the session in its owner's index in the cache.
    async fn index(&self, key: &StorageKey, data: &envelope::Data) -> Result<(), Error> {
        let Some(owner) = self.inner.owner_of(data) else {
            return Ok(());
        };
        let added = self.inner.cache.index_add(&owner, key).await;
        self.cache_outcome(&added, "index_add");
        added.map_err(Error::Cache)
    }

    /// Marks a session that the durable tier no longer has as deleted in the cache. When
    /// that cannot be done, the epoch is bumped instead, so no instance serves the cached
    /// copy. Returns whether a tombstone was written.
    async fn tombstone(&self, key: &StorageKey) -> Result<bool, Error> {
        let inner = &*self.inner;
        if self.cache_allowed() {
            let written = inner
                .cache
                .replace(key, &envelope::encode_tombstone(key), TOMBSTONE_TTL)
                .await;
            self.cache_outcome(&written, "tombstone");
            match written {
                Ok(()) => return Ok(true),
                Err(err) if inner.durable.is_none() => return Err(Error::Cache(err)),
                Err(_) => {}
            }
        } else if inner.durable.is_none() {
            return Err(Error::Cache(circuit_open_error()));
        }
        self.invalidate_cache("delete_not_cached").await?;
        Ok(false)
    }

    fn owned(
        key: StorageKey,
        created_at: OffsetDateTime,
        data: envelope::Data,
        expires_at: OffsetDateTime,
        last_seen_at: OffsetDateTime,
    ) -> OwnedSession {
        OwnedSession {
            key,
            created_at,
            last_seen_at: last_seen_at.max(created_at),
            expires_at,
            data,
        }
    }

    /// The live sessions of `owner` (see
    /// [`TieredStoreBuilder::with_owner_pointer`]), most recently active first, at most
    /// 1000. With a durable tier they come from it (so the list survives a cache flush);
    /// without one, from an index in the cache.
    pub async fn sessions_of(&self, owner: &str) -> Result<Vec<OwnedSession>, Error> {
        let inner = &*self.inner;
        let now = inner.clock.now();
        let mut sessions = Vec::new();
        match &inner.durable {
            Some(durable) => {
                let rows = self
                    .durable_op("list_owned", durable.list_owned(owner, now, MAX_LISTED))
                    .await?;
                for row in rows {
                    let Some(data) = envelope::decode_data(&row.data) else {
                        continue;
                    };
                    // The durable expiry is written as last touch + idle + touch interval.
                    let last_seen = row.expires_at - row.idle_timeout - inner.touch_interval;
                    let expires = plus(last_seen, row.idle_timeout);
                    sessions.push(Self::owned(
                        row.key,
                        row.created_at,
                        data,
                        expires,
                        last_seen,
                    ));
                }
            }
            None => {
                let members = inner
                    .cache
                    .index_members(owner)
                    .await
                    .map_err(Error::Cache)?;
                let mut gone = Vec::new();
                for key in members {
                    match self.peek_owned(owner, &key).await? {
                        Some((env, data, left)) => {
                            let ttl = env.idle_timeout.saturating_add(inner.touch_interval);
                            let last_seen = now - ttl.saturating_sub(left);
                            let expires = plus(now, left);
                            sessions.push(Self::owned(
                                env.key,
                                env.created_at,
                                data,
                                expires,
                                last_seen,
                            ));
                        }
                        None => gone.push(key),
                    }
                }
                if !gone.is_empty() {
                    if let Err(e) = inner.cache.index_remove(owner, &gone).await {
                        cache_error(&e, "index_remove");
                    }
                }
                sessions.sort_by_key(|s| std::cmp::Reverse(s.last_seen_at));
            }
        }
        Ok(sessions)
    }

    /// A cached live session of `owner`, with its remaining time to live.
    async fn peek_owned(
        &self,
        owner: &str,
        key: &StorageKey,
    ) -> Result<Option<(SessionEnvelope, envelope::Data, Duration)>, Error> {
        let inner = &*self.inner;
        let Some((bytes, left)) = inner.cache.peek(key).await.map_err(Error::Cache)? else {
            return Ok(None);
        };
        let Ok(Entry::Record(env)) = envelope::decode(&bytes, key) else {
            return Ok(None);
        };
        let Some(data) = envelope::decode_data(&env.data) else {
            return Ok(None);
        };
        Ok((inner.owner_of(&data).as_deref() == Some(owner)).then_some((env, data, left)))
    }

    /// Ends one session of `owner`, in every tier. Returns `false`, doing nothing, when
    /// `owner` has no live session under `key` (so a user can only revoke their own).
    pub async fn revoke(&self, owner: &str, key: &StorageKey) -> Result<bool, Error> {
        let inner = &*self.inner;
        match &inner.durable {
            Some(durable) => {
                let deleted = self
                    .durable_op("delete_owned", durable.delete_owned(owner, key))
                    .await?;
                if deleted {
                    self.tombstone(key).await?;
                }
                Ok(deleted)
            }
            None => {
                if self.peek_owned(owner, key).await?.is_none() {
                    return Ok(false);
                }
                self.delete_key(key).await?;
                if let Err(e) = inner.cache.index_remove(owner, &[*key]).await {
                    cache_error(&e, "index_remove");
                }
                Ok(true)
            }
        }
    }

    /// Ends every session of `owner` except the one with id `keep` (typically the current
    /// one: "sign out everywhere else"); returns how many were ended.
    pub async fn revoke_all(&self, owner: &str, keep: Option<&Id>) -> Result<u64, Error> {
        let inner = &*self.inner;
        let keep = keep.map(StorageKey::from_id);
        let ended = match &inner.durable {
            Some(durable) => {
                let keys = self
                    .durable_op(
                        "delete_all_owned",
                        durable.delete_all_owned(owner, keep.as_ref()),
                    )
                    .await?;
                for key in &keys {
                    // Once the cache could not take a tombstone, the epoch was bumped,
                    // which covers the rest.
                    if !self.tombstone(key).await? {
                        break;
                    }
                }
                keys
            }
            None => {
                let members = inner
                    .cache
                    .index_members(owner)
                    .await
                    .map_err(Error::Cache)?;
                let mut ended = Vec::new();
                for key in members.into_iter().filter(|k| Some(*k) != keep) {
                    if self.peek_owned(owner, &key).await?.is_some() {
                        self.delete_key(&key).await?;
                    }
                    ended.push(key);
                }
                if let Err(e) = inner.cache.index_remove(owner, &ended).await {
                    cache_error(&e, "index_remove");
                }
                ended
            }
        };
        Ok(ended.len() as u64)
    }

    /// Probes each tier (each bounded by a one-second timeout).
    pub async fn health(&self) -> Health {
        let inner = &*self.inner;
        let cache = async {
            match probe(inner.cache.ping()).await {
                TierHealth::Ok { .. } if inner.breaker.is_open() => TierHealth::Degraded {
                    reason: "circuit open: the cache answers again, requests return to it once the probe confirms".into(),
                },
                health => health,
            }
        };
        match &inner.durable {
            Some(durable) => {
                let (cache, durable) = tokio::join!(cache, probe(durable.ping()));
                Health {
                    cache,
                    durable: Some(durable),
                }
            }
            None => Health {
                cache: cache.await,
                durable: None,
            },
        }
    }

    async fn delete_key(&self, key: &StorageKey) -> Result<(), Error> {
        let inner = &*self.inner;
        match &inner.durable {
            Some(durable) => {
                self.durable_op("delete", durable.delete(key)).await?;
                metrics::counter!(names::DURABLE_WRITES_TOTAL, "op" => "delete").increment(1);
                // A tombstone rather than DEL: a load that read the row before the delete
                // must not refill the cache with it afterwards.
                self.tombstone(key).await.map(|_| ())
            }
            None => {
                if !self.cache_allowed() {
                    return Err(Error::Cache(circuit_open_error()));
                }
                let removed = inner.cache.remove(key).await;
                self.cache_outcome(&removed, "remove");
                removed.map_err(Error::Cache)
            }
        }
    }
}

#[async_trait]
impl SessionStore for TieredStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        Ok(self.create_inner(record).await?)
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        Ok(self.save_inner(record).await?)
    }

    async fn load(&self, session_id: &Id) -> session_store::Result<Option<Record>> {
        Ok(self.load_inner(session_id).await?)
    }

    async fn delete(&self, session_id: &Id) -> session_store::Result<()> {
        Ok(self.delete_key(&StorageKey::from_id(session_id)).await?)
    }
}

#[async_trait]
impl ExpiredDeletion for TieredStore {
    async fn delete_expired(&self) -> session_store::Result<()> {
        self.sweep_expired().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryCache;

    fn data(pairs: &[(&str, serde_json::Value)]) -> envelope::Data {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    #[test]
    fn the_digest_tells_unchanged_data_from_any_change() {
        let store = TieredStore::builder(MemoryCache::new(1 << 20))
            .build()
            .expect("store");
        let inner = &store.inner;
        let key = StorageKey::from_id(&Id(7));
        let user = serde_json::json!({"id": 7, "roles": ["a", "b"]});
        let a = data(&[("user", user.clone()), ("n", 1.into())]);
        let mut b = data(&[("n", 1.into()), ("user", user)]);
        b.insert(REVISION_KEY.to_owned(), serde_json::json!([1, 2, 3, 4]));
        assert_eq!(
            inner.digest(&key, &a),
            inner.digest(&key, &b),
            "order and revision ignored"
        );
        for changed in [
            data(&[
                ("user", serde_json::json!({"id": 7, "roles": ["b", "a"]})),
                ("n", 1.into()),
            ]),
            data(&[
                ("user", serde_json::json!({"id": 7, "roles": ["a", "b"]})),
                ("n", "1".into()),
            ]),
            data(&[
                ("user", serde_json::json!({"id": 7, "roles": ["a", "b"]})),
                ("n", 1.5.into()),
            ]),
            data(&[("user", serde_json::json!({"id": 7, "roles": ["a", "b"]}))]),
            data(&[
                ("user", serde_json::json!({"id": 7, "roles": ["a", "b"]})),
                ("m", 1.into()),
            ]),
        ] {
            assert_ne!(
                inner.digest(&key, &a),
                inner.digest(&key, &changed),
                "{changed:?}"
            );
        }
        let other = StorageKey::from_id(&Id(8));
        assert_ne!(
            inner.digest(&key, &a),
            inner.digest(&other, &a),
            "keyed by session"
        );
    }
}
