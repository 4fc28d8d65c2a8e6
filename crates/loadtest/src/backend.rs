//! The backends: each store or floor, set up with the same sessions, and what one request
//! does to it in each scenario.

use std::{
    borrow::Cow,
    future::Future,
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::Duration,
};

use bytes::Bytes;
use fred::types::config::Options;
use sqlx::Connection;
use tiered_sessions::{
    tower_sessions::{
        session::{Id, Record},
        session_store, CachingSessionStore, SessionStore,
    },
    MemoryCache, PostgresDurable, RedisCache, SqliteDurable, StorageKey, TieredStore,
    TieredStoreBuilder,
};
use tower_sessions_redis_store::RedisStore;
use tower_sessions_sqlx_store::{sqlx as sqlx08, PostgresStore};

use crate::{
    cli::{BackendKind, BackendSpec, Scenario},
    data::{self, Payload},
    error::{chain, redact, Error, Result},
    redis::Fred,
};

/// Tasks that create sessions at once while a backend is set up.
const SETUP_TASKS: usize = 32;
/// Pool size of the Postgres pools the tool opens for tower-sessions-sqlx-store: the same
/// as `PostgresDurable::connect`'s, so both sides get as many connections.
const PG_POOL_SIZE: u32 = 10;
/// Most distinct error kinds kept per measurement; more are counted as "other errors".
pub const MAX_ERROR_KINDS: usize = 16;

/// Key prefix of the tiered store backed by Postgres.
const TIERED_PREFIX: &str = "lt:tiered:";
/// Key prefix of the Redis-only tiered store.
const TIERED_REDIS_PREFIX: &str = "lt:tiered-redis:";
/// Key prefix of the floors' copies of the tiered store's bytes.
const PLAIN_PREFIX: &str = "lt:plain:";

/// What every backend is set up with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Redis, if any backend needs it.
    pub redis_url: Option<String>,
    /// Postgres, if any backend needs it.
    pub database_url: Option<String>,
    /// Sessions per backend.
    pub sessions: u64,
    /// The session data.
    pub payload: Payload,
    /// The stores' idle timeout.
    pub idle: Duration,
    /// The tiered stores' touch interval (`None`: the store's default).
    pub touch_interval: Option<Duration>,
    /// Share of writing requests in `mixed`.
    pub write_ratio: f64,
}

impl Settings {
    fn px(&self) -> i64 {
        i64::try_from(self.idle.as_millis()).unwrap_or(i64::MAX)
    }

    fn touch(&self) -> Duration {
        self.touch_interval.unwrap_or(self.idle / 10)
    }

    fn redis_url(&self, spec: BackendSpec) -> Result<&str> {
        self.redis_url.as_deref().ok_or_else(|| {
            Error::Usage(format!(
                "backend {spec} needs Redis: pass --redis-url (or --spawn-servers)"
            ))
        })
    }

    fn database_url(&self, spec: BackendSpec) -> Result<&str> {
        self.database_url.as_deref().ok_or_else(|| {
            Error::Usage(format!(
                "backend {spec} needs Postgres: pass --database-url (or --spawn-servers)"
            ))
        })
    }
}

/// The plain keys the floors read: a copy of the tiered store's cache entry for every
/// session index, under `lt:plain:<i>`.
#[derive(Debug, Clone)]
pub struct PlainKeys {
    keys: Arc<Vec<String>>,
    value: Bytes,
}

impl PlainKeys {
    /// Writes the keys through `fred`.
    pub async fn create(settings: &Settings, fred: &Fred, progress: &dyn Fn(u64)) -> Result<Self> {
        let keys: Vec<String> = (0..settings.sessions)
            .map(|i| format!("{PLAIN_PREFIX}{i}"))
            .collect();
        let value = Bytes::from(
            settings
                .payload
                .envelope(0, settings.idle, settings.touch()),
        );
        let plain = PlainKeys {
            keys: Arc::new(keys),
            value,
        };
        plain.write(settings, fred, progress).await?;
        Ok(plain)
    }

    /// (Re)writes every key, e.g. after a flush.
    pub async fn write(
        &self,
        settings: &Settings,
        fred: &Fred,
        progress: &dyn Fn(u64),
    ) -> Result<()> {
        let keys = self.keys.clone();
        let (fred, value, px) = (fred.clone(), self.value.clone(), settings.px());
        for_each_index(settings.sessions, progress, move |i| {
            let (keys, fred, value) = (keys.clone(), fred.clone(), value.clone());
            async move {
                fred.set_px(&keys[i as usize], value, px)
                    .await
                    .map_err(|e| e.to_string())
                    .map(|()| None)
            }
        })
        .await
        .map(drop)
        .map_err(|reason| Error::Setup {
            backend: "fred floors".into(),
            reason,
        })
    }

    /// Bytes per value.
    pub fn value_len(&self) -> usize {
        self.value.len()
    }

    /// Deletes the keys.
    pub async fn delete(&self, fred: &Fred) {
        let _ = fred.del_all(&self.keys).await;
    }
}

/// One request against a backend, cloned into every task.
#[derive(Clone)]
pub enum Op {
    /// A `SessionStore`.
    Store {
        /// The store.
        store: Arc<dyn SessionStore>,
        /// Its sessions' ids, by index.
        ids: Arc<Vec<Id>>,
        /// The idle timeout, set as the expiry of every save (`Expiry::OnInactivity`).
        idle: Duration,
    },
    /// A plain Redis command.
    Floor {
        /// The fred handle.
        fred: Fred,
        /// The keys, by index.
        keys: Arc<Vec<String>>,
        /// What `mixed` writes.
        value: Bytes,
        /// `GETEX`'s `PX`.
        px: i64,
        /// Which read.
        read: FloorRead,
    },
    /// An HTTP request (see [`crate::http`]).
    Http(crate::http::HttpOp),
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Store { store, ids, .. } => f
                .debug_struct("Store")
                .field("store", store)
                .field("sessions", &ids.len())
                .finish_non_exhaustive(),
            Op::Floor { read, keys, .. } => f
                .debug_struct("Floor")
                .field("read", read)
                .field("keys", &keys.len())
                .finish_non_exhaustive(),
            Op::Http(http) => f.debug_tuple("Http").field(http).finish(),
        }
    }
}

/// The floors' read commands.
#[derive(Clone, Debug)]
pub enum FloorRead {
    /// `GET key`.
    Get,
    /// `GETEX key PX idle`.
    GetEx,
    /// `GETEX key PX idle` with these per-command options.
    GetExWithOptions(Options),
}

/// The outcome of one request that failed: a short label to count it under.
pub type ErrorKind = Cow<'static, str>;

/// The label of a request that found no session where one was created.
pub const MISSING: &str = "session not found";

impl Op {
    /// How many sessions (or cookies) it picks from.
    pub fn len(&self) -> usize {
        match self {
            Op::Store { ids, .. } => ids.len(),
            Op::Floor { keys, .. } => keys.len(),
            Op::Http(http) => http.len(),
        }
    }

    /// Whether there is nothing to pick from.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs one request on session `i`; `write` asks the `mixed` scenario to change it.
    pub async fn run(&self, scenario: Scenario, i: usize, write: bool) -> Result<(), ErrorKind> {
        match self {
            Op::Store { store, ids, idle } => {
                let id = &ids[i];
                let record = store.load(id).await.map_err(store_error)?;
                let Some(mut record) = record else {
                    return Err(MISSING.into());
                };
                let save = match scenario {
                    Scenario::Read | Scenario::Cold => false,
                    Scenario::Sliding => true,
                    Scenario::Mixed if write => {
                        let visits = record
                            .data
                            .get("visits")
                            .and_then(serde_json::Value::as_u64)
                            .unwrap_or(0);
                        record
                            .data
                            .insert("visits".to_owned(), serde_json::json!(visits + 1));
                        true
                    }
                    Scenario::Mixed => false,
                };
                if save {
                    // What `SessionManagerLayer` does with `Expiry::OnInactivity` before
                    // every save; the record is otherwise the one `load` returned.
                    record.expiry_date = data::expiry(*idle);
                    store.save(&record).await.map_err(store_error)?;
                }
                Ok(())
            }
            Op::Floor {
                fred,
                keys,
                value,
                px,
                read,
            } => {
                let key = &keys[i];
                if scenario == Scenario::Mixed && write {
                    return fred
                        .set_px(key, value.clone(), *px)
                        .await
                        .map_err(fred_error);
                }
                let found = match read {
                    FloorRead::Get => fred.get(key).await,
                    FloorRead::GetEx => fred.getex(key, *px, None).await,
                    FloorRead::GetExWithOptions(options) => {
                        fred.getex(key, *px, Some(options)).await
                    }
                }
                .map_err(fred_error)?;
                found.map(drop).ok_or(MISSING.into())
            }
            Op::Http(http) => http.run(i).await,
        }
    }
}

fn store_error(err: session_store::Error) -> ErrorKind {
    let (variant, message) = match &err {
        session_store::Error::Encode(m) => ("encode", m),
        session_store::Error::Decode(m) => ("decode", m),
        session_store::Error::Backend(m) => ("backend", m),
    };
    Cow::Owned(format!("{variant}: {}", shorten(message)))
}

fn fred_error(err: fred::error::Error) -> ErrorKind {
    Cow::Owned(format!("redis: {}", shorten(&err.to_string())))
}

/// The first 80 characters of a message, on one line.
pub fn shorten(message: &str) -> String {
    let line = message.replace('\n', " ");
    match line.char_indices().nth(80) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line,
    }
}

/// The cache key of a session id.
type KeyOf = Arc<dyn Fn(&Id) -> String + Send + Sync>;

/// Where a backend keeps its cache entries, to empty the cache (`cold`) and to see
/// whether it refilled.
#[derive(Clone)]
enum CacheSide {
    /// Redis keys, one per session id.
    Redis { fred: Fred, key: KeyOf },
    /// The in-process cache.
    Memory(MemoryCache),
    /// No cache.
    None,
}

/// How a backend gets its sessions back after its Redis was emptied.
#[derive(Clone)]
enum Restore {
    /// It has a durable tier: reads bring them back.
    Durable,
    /// Create them again (fresh ids).
    Recreate,
    /// Create them again under the same ids (`RedisStore::create` keeps a free id).
    SameIds,
    /// Copy every session from the durable store back into the cache store (for
    /// `CachingSessionStore`, which never refills the cache itself).
    Refill {
        cache: Arc<dyn SessionStore>,
        durable: Arc<dyn SessionStore>,
    },
}

/// A backend, set up and holding its sessions.
pub struct Backend {
    /// Which backend.
    pub spec: BackendSpec,
    op: Op,
    cache: CacheSide,
    restore: Restore,
    /// The table holding its rows, and whether they are keyed by the hashed storage key
    /// (`key`) rather than the session id (`id`), for the clean-up at the end.
    cleanup_sql: Option<(&'static str, bool)>,
    _dir: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl Backend {
    /// Connects the backend and creates `settings.sessions` sessions in it. `plain` holds
    /// the floors' keys.
    pub async fn setup(
        spec: BackendSpec,
        settings: &Settings,
        plain: Option<&PlainKeys>,
        progress: &dyn Fn(u64),
    ) -> Result<Backend> {
        let setup_error = |reason: String| Error::Setup {
            backend: spec.to_string(),
            reason,
        };
        let idle = settings.idle;
        let mut dir = None;
        let mut cleanup_sql = None;
        let (store, cache, restore): (Arc<dyn SessionStore>, CacheSide, Restore) = match spec.kind {
            BackendKind::Tiered | BackendKind::TieredRedis => {
                let prefix = if spec.kind == BackendKind::Tiered {
                    TIERED_PREFIX
                } else {
                    TIERED_REDIS_PREFIX
                };
                let url = settings.redis_url(spec)?;
                let fred = Fred::connect(url, spec.handle).await?;
                let (builder, key): (TieredStoreBuilder, KeyOf) = match &fred {
                    // `RedisCache::connect` builds this same client; built here once so
                    // the cache side can share it.
                    Fred::Client(client) => {
                        let cache = RedisCache::new(client.clone()).with_key_prefix(prefix);
                        let name = cache.clone();
                        (
                            TieredStore::builder(cache),
                            Arc::new(move |id| name.redis_key(&StorageKey::from_id(id))),
                        )
                    }
                    Fred::Pool(pool) => {
                        let cache = RedisCache::new(pool.clone()).with_key_prefix(prefix);
                        let name = cache.clone();
                        (
                            TieredStore::builder(cache),
                            Arc::new(move |id| name.redis_key(&StorageKey::from_id(id))),
                        )
                    }
                };
                let mut builder = builder.with_idle_timeout(idle);
                if let Some(touch) = settings.touch_interval {
                    builder = builder.with_touch_interval(touch);
                }
                let restore = if spec.kind == BackendKind::Tiered {
                    let url = settings.database_url(spec)?;
                    let durable = PostgresDurable::connect(url)
                        .await
                        .map_err(|e| pg_connect_error(url, &e))?;
                    durable
                        .migrate()
                        .await
                        .map_err(|e| setup_error(chain(&e)))?;
                    builder = builder.with_durable(durable);
                    cleanup_sql = Some(("tiered_sessions", true));
                    Restore::Durable
                } else {
                    Restore::Recreate
                };
                let store = builder.build().map_err(|e| setup_error(chain(&e)))?;
                (Arc::new(store), CacheSide::Redis { fred, key }, restore)
            }
            BackendKind::TieredSqlite => {
                let tmp = tempfile::Builder::new()
                    .prefix("session-loadtest-")
                    .tempdir()
                    .map_err(|e| setup_error(format!("cannot create a temp dir: {e}")))?;
                let file = tmp.path().join("sessions.sqlite");
                let durable = SqliteDurable::connect(&path_str(&file))
                    .await
                    .map_err(|e| setup_error(chain(&e)))?;
                durable
                    .migrate()
                    .await
                    .map_err(|e| setup_error(chain(&e)))?;
                dir = Some(tmp);
                // Room for every session twice over: the cache must not evict in the run.
                let bytes = (settings.sessions * (settings.payload.encoded_len() as u64 + 200) * 2)
                    .max(64 << 20);
                let cache = MemoryCache::new(bytes);
                let mut builder = TieredStore::builder(cache.clone())
                    .with_durable(durable)
                    .with_idle_timeout(idle);
                if let Some(touch) = settings.touch_interval {
                    builder = builder.with_touch_interval(touch);
                }
                let store = builder.build().map_err(|e| setup_error(chain(&e)))?;
                (Arc::new(store), CacheSide::Memory(cache), Restore::Durable)
            }
            BackendKind::RedisStore => {
                let fred = Fred::connect(settings.redis_url(spec)?, spec.handle).await?;
                let store: Arc<dyn SessionStore> = match &fred {
                    Fred::Client(c) => Arc::new(RedisStore::new(c.clone())),
                    Fred::Pool(p) => Arc::new(RedisStore::new(p.clone())),
                };
                let key = Arc::new(|id: &Id| id.to_string());
                (store, CacheSide::Redis { fred, key }, Restore::SameIds)
            }
            BackendKind::Caching => {
                let fred = Fred::connect(settings.redis_url(spec)?, spec.handle).await?;
                let cache: Arc<dyn SessionStore> = match &fred {
                    Fred::Client(c) => Arc::new(RedisStore::new(c.clone())),
                    Fred::Pool(p) => Arc::new(RedisStore::new(p.clone())),
                };
                let durable = Arc::new(postgres_store(spec, settings).await?);
                cleanup_sql = Some(("tower_sessions.session", false));
                let store: Arc<dyn SessionStore> = Arc::new(CachingSessionStore::new(
                    ArcStore(cache.clone()),
                    ArcStore(durable.clone()),
                ));
                let key = Arc::new(|id: &Id| id.to_string());
                let restore = Restore::Refill { cache, durable };
                (store, CacheSide::Redis { fred, key }, restore)
            }
            BackendKind::PostgresStore => {
                let store = postgres_store(spec, settings).await?;
                cleanup_sql = Some(("tower_sessions.session", false));
                (Arc::new(store), CacheSide::None, Restore::Durable)
            }
            BackendKind::FredGet | BackendKind::FredGetex | BackendKind::FredGetexOpts => {
                let fred = Fred::connect(settings.redis_url(spec)?, spec.handle).await?;
                let plain =
                    plain.ok_or_else(|| setup_error("the plain keys are missing".into()))?;
                let read = match spec.kind {
                    BackendKind::FredGet => FloorRead::Get,
                    BackendKind::FredGetex => FloorRead::GetEx,
                    _ => FloorRead::GetExWithOptions(store_command_options()),
                };
                let op = Op::Floor {
                    fred,
                    keys: plain.keys.clone(),
                    value: plain.value.clone(),
                    px: settings.px(),
                    read,
                };
                return Ok(Backend {
                    spec,
                    op,
                    cache: CacheSide::None,
                    restore: Restore::Durable,
                    cleanup_sql: None,
                    _dir: None,
                });
            }
        };
        let ids = create_sessions(&store, settings, None, progress)
            .await
            .map_err(setup_error)?;
        Ok(Backend {
            spec,
            op: Op::Store {
                store,
                ids: Arc::new(ids),
                idle,
            },
            cache,
            restore,
            cleanup_sql,
            _dir: dir,
        })
    }

    /// The request to run.
    pub fn op(&self) -> &Op {
        &self.op
    }

    /// Whether the backend has a cache that `cold` can empty.
    pub fn has_cache(&self) -> bool {
        !matches!(self.cache, CacheSide::None)
    }

    /// Whether its cache is in Redis (so Redis counters tell its hit ratio).
    pub fn cache_in_redis(&self) -> bool {
        matches!(self.cache, CacheSide::Redis { .. })
    }

    fn ids(&self) -> &[Id] {
        match &self.op {
            Op::Store { ids, .. } => ids,
            _ => &[],
        }
    }

    fn cache_keys(&self, key: &(dyn Fn(&Id) -> String + Send + Sync)) -> Vec<String> {
        self.ids().iter().map(key).collect()
    }

    /// Empties the backend's cache: deletes its own Redis keys (nothing else), or clears
    /// its in-process cache.
    pub async fn empty_cache(&self) -> Result<()> {
        match &self.cache {
            CacheSide::Redis { fred, key } => fred
                .del_all(&self.cache_keys(key.as_ref()))
                .await
                .map_err(|e| Error::Setup {
                    backend: self.spec.to_string(),
                    reason: format!("emptying its cache: {e}"),
                }),
            CacheSide::Memory(cache) => {
                cache.clear();
                Ok(())
            }
            CacheSide::None => Ok(()),
        }
    }

    /// How many of its sessions are in its cache; `None` without a cache.
    pub async fn cached_sessions(&self) -> Option<u64> {
        match &self.cache {
            CacheSide::Redis { fred, key } => fred
                .count_existing(&self.cache_keys(key.as_ref()))
                .await
                .ok(),
            CacheSide::Memory(cache) => Some(
                self.ids()
                    .iter()
                    .filter(|id| cache.peek(&StorageKey::from_id(id)).is_some())
                    .count() as u64,
            ),
            CacheSide::None => None,
        }
    }

    /// Gives the backend its sessions back after its Redis keys were lost (a flush, or an
    /// emptied cache): backends with a durable tier read them back by themselves; the
    /// others get them created again.
    pub async fn restore(&mut self, settings: &Settings, progress: &dyn Fn(u64)) -> Result<()> {
        let setup_error = |reason: String| Error::Setup {
            backend: self.spec.to_string(),
            reason,
        };
        let Op::Store { store, ids, .. } = &self.op else {
            return Ok(());
        };
        match self.restore.clone() {
            Restore::Durable => Ok(()),
            Restore::Recreate => {
                self.empty_cache().await?;
                let fresh = create_sessions(store, settings, None, progress)
                    .await
                    .map_err(setup_error)?;
                if let Op::Store { ids, .. } = &mut self.op {
                    *ids = Arc::new(fresh);
                }
                Ok(())
            }
            Restore::SameIds => {
                self.empty_cache().await?;
                create_sessions(store, settings, Some(ids.clone()), progress)
                    .await
                    .map(drop)
                    .map_err(setup_error)
            }
            Restore::Refill { cache, durable } => {
                self.empty_cache().await?;
                let ids = ids.clone();
                for_each_index(settings.sessions, progress, move |i| {
                    let (cache, durable, ids) = (cache.clone(), durable.clone(), ids.clone());
                    async move {
                        let id = ids[i as usize];
                        if let Some(mut record) =
                            durable.load(&id).await.map_err(|e| e.to_string())?
                        {
                            cache.create(&mut record).await.map_err(|e| e.to_string())?;
                        }
                        Ok(None)
                    }
                })
                .await
                .map(drop)
                .map_err(setup_error)
            }
        }
    }

    /// Deletes the backend's sessions from Redis and Postgres (`--keep-data` skips this).
    pub async fn cleanup(&self, settings: &Settings) {
        let _ = self.empty_cache().await;
        let (Some((table, hashed)), Some(url)) = (self.cleanup_sql, &settings.database_url) else {
            return;
        };
        let Ok(mut conn) = crate::postgres::connect(url).await else {
            return;
        };
        for chunk in self.ids().chunks(crate::redis::BULK * 4) {
            let result = if hashed {
                let keys: Vec<Vec<u8>> = chunk
                    .iter()
                    .map(|id| StorageKey::from_id(id).as_bytes().to_vec())
                    .collect();
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM {table} WHERE key = ANY($1)"
                )))
                .bind(keys)
                .execute(&mut conn)
                .await
            } else {
                let keys: Vec<String> = chunk.iter().map(Id::to_string).collect();
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM {table} WHERE id = ANY($1)"
                )))
                .bind(keys)
                .execute(&mut conn)
                .await
            };
            if result.is_err() {
                break;
            }
        }
        let _ = conn.close().await;
    }
}

/// The per-command options `RedisCache` sets on every command (its deadline is a timer
/// around the call, not one of fred's options).
fn store_command_options() -> Options {
    Options {
        max_attempts: Some(1),
        fail_fast: true,
        ..Options::default()
    }
}

fn path_str(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn pg_connect_error(url: &str, err: &(dyn std::error::Error + 'static)) -> Error {
    Error::Connect {
        what: "Postgres",
        url: redact(url),
        reason: format!(
            "{}; is the server running, and do the user and database exist? (or use --spawn-servers)",
            chain(err)
        ),
    }
}

/// A tower-sessions-sqlx-store `PostgresStore` on a pool of its own, migrated.
async fn postgres_store(spec: BackendSpec, settings: &Settings) -> Result<PostgresStore> {
    let url = settings.database_url(spec)?;
    let pool = sqlx08::postgres::PgPoolOptions::new()
        .max_connections(PG_POOL_SIZE)
        .acquire_timeout(Duration::from_secs(2))
        .connect(url)
        .await
        .map_err(|e| pg_connect_error(url, &e))?;
    let store = PostgresStore::new(pool);
    store.migrate().await.map_err(|e| Error::Setup {
        backend: spec.to_string(),
        reason: chain(&e),
    })?;
    Ok(store)
}

/// A shared store that is itself a `SessionStore`, so `CachingSessionStore` can hold the
/// same stores the tool keeps for restoring.
#[derive(Debug, Clone)]
struct ArcStore(Arc<dyn SessionStore>);

#[async_trait::async_trait]
impl SessionStore for ArcStore {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        self.0.create(record).await
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        self.0.save(record).await
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        self.0.load(id).await
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        self.0.delete(id).await
    }
}

/// Creates session `i` for every index through the store's own `create`, as the session
/// layer does on a first write; returns the ids by index. With `same_ids`, each session
/// asks for its old id.
async fn create_sessions(
    store: &Arc<dyn SessionStore>,
    settings: &Settings,
    same_ids: Option<Arc<Vec<Id>>>,
    progress: &dyn Fn(u64),
) -> Result<Vec<Id>, String> {
    let (store, payload, idle) = (store.clone(), settings.payload.clone(), settings.idle);
    let created = for_each_index(settings.sessions, progress, move |i| {
        let (store, payload, same_ids) = (store.clone(), payload.clone(), same_ids.clone());
        async move {
            let mut record = payload.record(i, idle);
            if let Some(ids) = &same_ids {
                record.id = ids[i as usize];
            }
            store
                .create(&mut record)
                .await
                .map_err(|e| format!("creating a session: {e}"))?;
            Ok(Some(record.id))
        }
    })
    .await?;
    Ok(created)
}

/// Runs `f(i)` for every `i` in `0..n` on [`SETUP_TASKS`] tasks; collects the ids they
/// return, by index. Stops at the first error.
async fn for_each_index<F, Fut>(n: u64, progress: &dyn Fn(u64), f: F) -> Result<Vec<Id>, String>
where
    F: Fn(u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<Id>, String>> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let first_error: Arc<Mutex<Option<String>>> = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..SETUP_TASKS {
        let (next, done, failed, first_error, f) = (
            next.clone(),
            done.clone(),
            failed.clone(),
            first_error.clone(),
            f.clone(),
        );
        tasks.spawn(async move {
            let mut ids = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n || failed.load(Ordering::Relaxed) {
                    return ids;
                }
                match f(i).await {
                    Ok(Some(id)) => ids.push((i, id)),
                    Ok(None) => {}
                    Err(e) => {
                        failed.store(true, Ordering::Relaxed);
                        first_error
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .get_or_insert(e);
                        return ids;
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let mut pairs = Vec::with_capacity(n as usize);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            joined = tasks.join_next() => match joined {
                Some(Ok(ids)) => pairs.extend(ids),
                Some(Err(e)) => return Err(format!("a setup task failed: {e}")),
                None => break,
            },
            _ = tick.tick() => progress(done.load(Ordering::Relaxed)),
        }
    }
    progress(done.load(Ordering::Relaxed));
    if let Some(e) = first_error
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
    {
        return Err(e);
    }
    pairs.sort_unstable_by_key(|(i, _)| *i);
    Ok(pairs.into_iter().map(|(_, id)| id).collect())
}
