//! One store per test, in each configuration the behaviour suite runs against, with handles
//! to reach under the store into its tiers (to delete, flush or corrupt what it keeps).

#![allow(dead_code, unreachable_pub)] // each test binary uses a different part of it

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use async_trait::async_trait;
use axum::{
    body::Body,
    extract::Query,
    http::{header, Request, StatusCode},
    routing::{get, post},
    Router,
};
use fred::prelude::*;
use http_body_util::BodyExt;
use serde_json::Value as Json;
use sqlx::{PgPool, Row as _, SqlitePool};
use tiered_sessions::{
    tower_sessions::{session::Id, Expiry, Session},
    CacheTier, DurableTier, MemoryCache, PostgresDurable, RedisCache, SqliteDurable, StorageKey,
    StoredSession, TierError, TieredStore, TieredStoreBuilder, Updated,
};
use tiered_sessions_tests::{shared_postgres, RedisCluster, RedisServer, TlsRedis, TLS_PASSWORD};
use time::OffsetDateTime;
use tower::ServiceExt;

/// Where the test app keeps the signed-in user.
pub const OWNER_POINTER: &str = "/auth/user_id";

/// The store configurations every behaviour test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Redis cache, Postgres durable tier.
    Tiered,
    /// Redis only.
    RedisOnly,
    /// A six-node Redis Cluster cache, Postgres durable tier.
    ClusterTiered,
    /// A six-node Redis Cluster only.
    ClusterRedisOnly,
    /// Redis over TLS as an ACL user, Postgres durable tier.
    TlsTiered,
    /// In-process cache, SQLite durable tier (the embedded default).
    Embedded,
}

impl Kind {
    pub fn durable(self) -> bool {
        !matches!(self, Kind::RedisOnly | Kind::ClusterRedisOnly)
    }
}

#[allow(clippy::large_enum_variant)] // one per test; boxing buys nothing
enum CacheHandle {
    Redis {
        server: RedisServer,
        cache: RedisCache,
    },
    /// The store reaches the server over TLS; the test's admin client uses its plain port.
    Tls {
        redis: TlsRedis,
        cache: RedisCache,
    },
    Cluster {
        cluster: RedisCluster,
        /// A client of the whole cluster, for commands on one key.
        admin: Client,
        cache: RedisCache,
    },
    Memory(MemoryCache),
}

enum DurableHandle {
    Postgres {
        url: String,
        pool: PgPool,
    },
    Sqlite {
        _dir: tempfile::TempDir,
        path: PathBuf,
        pool: SqlitePool,
    },
}

/// A durable row, as the test sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurableRow {
    pub version: i64,
    pub idle_ms: i64,
    pub expires_at_ms: i64,
}

pub struct Fixture {
    pub kind: Kind,
    pub store: TieredStore,
    cache: CacheHandle,
    durable: Option<DurableHandle>,
}

impl Fixture {
    pub async fn new(kind: Kind) -> Self {
        Self::with(kind, |b| b).await
    }

    /// A fixture whose store is configured by `configure` on top of the tiers.
    /// The store's warnings and errors show up in a failing test's output.
    fn log_to_test_output() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
            .with_test_writer()
            .try_init();
    }

    pub async fn with(
        kind: Kind,
        configure: impl FnOnce(TieredStoreBuilder) -> TieredStoreBuilder,
    ) -> Self {
        Self::log_to_test_output();
        let cache = match kind {
            Kind::Tiered | Kind::RedisOnly => {
                let server = RedisServer::start().await;
                // A generous deadline: these tests are about behaviour, not timeouts, and
                // run on a loaded 2-core machine.
                let cache = RedisCache::connect(&server.url())
                    .await
                    .expect("connect to the private redis-server")
                    .with_op_timeout(Duration::from_secs(2));
                CacheHandle::Redis { server, cache }
            }
            Kind::TlsTiered => {
                let redis = TlsRedis::start().await;
                let options = tiered_sessions::ConnectOptions::default().with_ca_file(redis.ca());
                let cache = RedisCache::connect_with(&redis.url(TLS_PASSWORD), &options)
                    .await
                    .expect("connect over TLS to the private redis-server")
                    .with_op_timeout(Duration::from_secs(2));
                CacheHandle::Tls { redis, cache }
            }
            Kind::ClusterTiered | Kind::ClusterRedisOnly => {
                let cluster = RedisCluster::start().await;
                let cache = RedisCache::connect(&cluster.url())
                    .await
                    .expect("connect to the private cluster")
                    .with_op_timeout(Duration::from_secs(2));
                let config = Config::from_url(&cluster.url()).expect("cluster URL");
                let admin = Builder::from_config(config).build().expect("admin client");
                admin.init().await.expect("connect the admin client");
                CacheHandle::Cluster {
                    cluster,
                    admin,
                    cache,
                }
            }
            Kind::Embedded => CacheHandle::Memory(MemoryCache::new(64 * 1024 * 1024)),
        };
        let durable = match kind {
            Kind::Tiered | Kind::ClusterTiered | Kind::TlsTiered => {
                let url = shared_postgres().await.create_database().await;
                let pool = PgPool::connect(&url)
                    .await
                    .expect("connect to the private postgres");
                Some(DurableHandle::Postgres { url, pool })
            }
            Kind::Embedded => {
                let dir = tempfile::tempdir().expect("temp dir");
                let path = dir.path().join("sessions.sqlite");
                Some(DurableHandle::Sqlite {
                    _dir: dir,
                    path,
                    pool: SqlitePool::connect_lazy("sqlite::memory:").expect("lazy pool"),
                })
            }
            Kind::RedisOnly | Kind::ClusterRedisOnly => None,
        };
        let mut builder = match &cache {
            CacheHandle::Redis { cache, .. }
            | CacheHandle::Tls { cache, .. }
            | CacheHandle::Cluster { cache, .. } => TieredStore::builder(cache.clone()),
            CacheHandle::Memory(cache) => TieredStore::builder(cache.clone()),
        };
        let durable = match durable {
            Some(DurableHandle::Postgres { url, pool }) => {
                let tier = PostgresDurable::connect(&url)
                    .await
                    .expect("postgres durable tier");
                tier.migrate().await.expect("migrations apply");
                builder = builder.with_durable(tier);
                Some(DurableHandle::Postgres { url, pool })
            }
            Some(DurableHandle::Sqlite { _dir, path, .. }) => {
                let url = format!("sqlite://{}", path.display());
                let tier = SqliteDurable::connect(&url)
                    .await
                    .expect("sqlite durable tier");
                tier.migrate().await.expect("migrations apply");
                builder = builder.with_durable(tier);
                let pool = SqlitePool::connect(&url)
                    .await
                    .expect("inspect the sqlite file");
                Some(DurableHandle::Sqlite { _dir, path, pool })
            }
            None => None,
        };
        let store = configure(builder.with_owner_pointer(OWNER_POINTER))
            .build()
            .expect("valid store configuration");
        Self {
            kind,
            store,
            cache,
            durable,
        }
    }

    /// The single Redis server (not a cluster's nodes).
    pub fn redis(&self) -> Option<&RedisServer> {
        match &self.cache {
            CacheHandle::Redis { server, .. } => Some(server),
            CacheHandle::Tls { redis, .. } => Some(&redis.server),
            _ => None,
        }
    }

    /// Options that complete [`Self::redis_url`] (the CA of a TLS server).
    pub fn redis_options(&self) -> tiered_sessions::ConnectOptions {
        match &self.cache {
            CacheHandle::Tls { redis, .. } => {
                tiered_sessions::ConnectOptions::default().with_ca_file(redis.ca())
            }
            _ => tiered_sessions::ConnectOptions::default(),
        }
    }

    /// The URL the store uses to reach the Redis server or cluster.
    pub fn redis_url(&self) -> Option<String> {
        match &self.cache {
            CacheHandle::Redis { server, .. } => Some(server.url()),
            CacheHandle::Tls { redis, .. } => Some(redis.url(TLS_PASSWORD)),
            CacheHandle::Cluster { cluster, .. } => Some(cluster.url()),
            CacheHandle::Memory(_) => None,
        }
    }

    /// A client for commands on one key: the server's, or one of the whole cluster.
    fn admin(&self) -> Option<&Client> {
        match &self.cache {
            CacheHandle::Redis { server, .. } => Some(server.admin()),
            CacheHandle::Tls { redis, .. } => Some(redis.server.admin()),
            CacheHandle::Cluster { admin, .. } => Some(admin),
            CacheHandle::Memory(_) => None,
        }
    }

    /// The servers that hold keys: the server, or the cluster's masters.
    async fn key_servers(&self) -> Vec<&RedisServer> {
        match &self.cache {
            CacheHandle::Redis { server, .. } => vec![server],
            CacheHandle::Tls { redis, .. } => vec![&redis.server],
            CacheHandle::Cluster { cluster, .. } => {
                let nodes = cluster.nodes();
                cluster
                    .masters()
                    .await
                    .into_iter()
                    .map(|i| &nodes[i])
                    .collect()
            }
            CacheHandle::Memory(_) => Vec::new(),
        }
    }

    /// Zeroes the command statistics of every Redis server (see [`Self::redis_calls`]).
    pub async fn reset_redis_stats(&self) {
        let servers: Vec<&RedisServer> = match &self.cache {
            CacheHandle::Redis { server, .. } => vec![server],
            CacheHandle::Tls { redis, .. } => vec![&redis.server],
            CacheHandle::Cluster { cluster, .. } => cluster.nodes().iter().collect(),
            CacheHandle::Memory(_) => panic!("a Redis fixture"),
        };
        for server in servers {
            server.reset_stats().await;
        }
    }

    pub fn postgres_url(&self) -> Option<&str> {
        match &self.durable {
            Some(DurableHandle::Postgres { url, .. }) => Some(url),
            _ => None,
        }
    }

    fn redis_key(&self, id: &Id) -> Option<String> {
        match &self.cache {
            CacheHandle::Redis { cache, .. }
            | CacheHandle::Tls { cache, .. }
            | CacheHandle::Cluster { cache, .. } => Some(cache.redis_key(&StorageKey::from_id(id))),
            CacheHandle::Memory(_) => None,
        }
    }

    /// The raw cache entry of a session.
    pub async fn cache_raw(&self, id: &Id) -> Option<Vec<u8>> {
        let key = StorageKey::from_id(id);
        match (&self.cache, self.admin(), self.redis_key(id)) {
            // GET of a key of another type is an error: it holds no entry.
            (_, Some(admin), Some(redis_key)) => admin
                .get::<Option<Vec<u8>>, _>(redis_key)
                .await
                .ok()
                .flatten(),
            (CacheHandle::Memory(cache), ..) => cache.peek(&key).map(|b| b.to_vec()),
            _ => None,
        }
    }

    /// The session's cache entry once it is a live record of this store: refills run in
    /// the background, so this polls for up to 2 s. `None` if none appears.
    pub async fn cache_refilled(&self, id: &Id) -> Option<Vec<u8>> {
        let key = StorageKey::from_id(id);
        tiered_sessions_tests::poll_some(
            Duration::from_secs(2),
            Duration::from_millis(5),
            || async {
                self.cache_raw(id).await.filter(|raw| {
                    matches!(
                        tiered_sessions_core::envelope::decode(raw, &key),
                        Ok(tiered_sessions_core::envelope::Entry::Record(_))
                    )
                })
            },
        )
        .await
    }

    /// Overwrites a session's cache entry with `bytes`.
    pub async fn cache_set_raw(&self, id: &Id, bytes: &[u8]) {
        let key = StorageKey::from_id(id);
        match (&self.cache, self.admin(), self.redis_key(id)) {
            (_, Some(admin), Some(redis_key)) => {
                let _: () = admin
                    .set(
                        redis_key,
                        bytes.to_vec(),
                        Some(Expiration::EX(600)),
                        None,
                        false,
                    )
                    .await
                    .expect("SET");
            }
            (CacheHandle::Memory(cache), ..) => cache
                .replace(&key, bytes, Duration::from_secs(600))
                .await
                .expect("memory replace"),
            _ => unreachable!("every fixture has a cache"),
        }
    }

    /// Replaces a session's cache entry with a value of another type (Redis only).
    pub async fn cache_set_wrong_type(&self, id: &Id) -> bool {
        match (self.admin(), self.redis_key(id)) {
            (Some(admin), Some(key)) => {
                let _: () = admin.del(&key).await.expect("DEL");
                let _: () = admin.hset(&key, ("field", "value")).await.expect("HSET");
                true
            }
            _ => false,
        }
    }

    pub async fn cache_delete(&self, id: &Id) {
        let key = StorageKey::from_id(id);
        match (&self.cache, self.admin(), self.redis_key(id)) {
            (_, Some(admin), Some(redis_key)) => {
                let _: () = admin.del(redis_key).await.expect("DEL");
            }
            (CacheHandle::Memory(cache), ..) => cache.remove(&key).await.expect("memory remove"),
            _ => unreachable!("every fixture has a cache"),
        }
    }

    /// Makes a session's cache entry expire now, as its TTL running out would (Redis only).
    pub async fn expire_cache_key(&self, id: &Id) {
        let admin = self.admin().expect("a Redis fixture");
        let key = self.redis_key(id).expect("a Redis key");
        let _: () = admin.pexpire(&key, 1, None).await.expect("PEXPIRE");
        let gone = tiered_sessions_tests::poll_until(
            Duration::from_secs(2),
            Duration::from_millis(5),
            || async { !admin.exists::<bool, _>(&key).await.expect("EXISTS") },
        )
        .await;
        assert!(gone, "key expired");
    }

    /// A second store over the same embedded tiers whose durable loads are held for `hold`.
    pub async fn slow_embedded_store(&self, hold: Duration) -> TieredStore {
        let (CacheHandle::Memory(cache), Some(DurableHandle::Sqlite { path, .. })) =
            (&self.cache, &self.durable)
        else {
            panic!("an embedded fixture");
        };
        let durable = SqliteDurable::connect(&format!("sqlite://{}", path.display()))
            .await
            .expect("sqlite");
        TieredStore::builder(cache.clone())
            .with_durable(SlowLoads {
                inner: durable,
                hold,
            })
            .build()
            .expect("store")
    }

    pub async fn cache_flush(&self) {
        match &self.cache {
            CacheHandle::Memory(cache) => cache.clear(),
            _ => {
                for server in self.key_servers().await {
                    server.flushall().await;
                }
            }
        }
    }

    /// Remaining time to live of a session's cache entry (Redis only).
    pub async fn cache_pttl(&self, id: &Id) -> Option<i64> {
        match (self.admin(), self.redis_key(id)) {
            (Some(admin), Some(key)) => Some(admin.pttl::<i64, _>(key).await.expect("PTTL")),
            _ => None,
        }
    }

    /// All cache keys (Redis only).
    pub async fn cache_keys(&self) -> Vec<String> {
        let mut all = Vec::new();
        for server in self.key_servers().await {
            let keys: Vec<String> = server.command("KEYS", vec!["*".into()]).await;
            all.extend(keys);
        }
        all
    }

    /// The durable row of a session, expired or not.
    pub async fn durable_row(&self, id: &Id) -> Option<DurableRow> {
        let key = StorageKey::from_id(id).as_bytes().to_vec();
        match self.durable.as_ref()? {
            DurableHandle::Postgres { pool, .. } => sqlx::query(
                "SELECT version, idle_ms, (extract(epoch from expires_at) * 1000)::bigint AS expires_ms \
                 FROM tiered_sessions WHERE key = $1",
            )
            .bind(key)
            .fetch_optional(pool)
            .await
            .expect("select row")
            .map(|r| DurableRow { version: r.get(0), idle_ms: r.get(1), expires_at_ms: r.get(2) }),
            DurableHandle::Sqlite { pool, .. } => {
                sqlx::query("SELECT version, idle_ms, expires_at FROM tiered_sessions WHERE key = ?")
                    .bind(key)
                    .fetch_optional(pool)
                    .await
                    .expect("select row")
                    .map(|r| DurableRow { version: r.get(0), idle_ms: r.get(1), expires_at_ms: r.get(2) })
            }
        }
    }

    /// All durable keys, hex-encoded, and the raw bytes of every column.
    pub async fn durable_dump(&self) -> Vec<Vec<u8>> {
        let sql = "SELECT key, data FROM tiered_sessions";
        let rows: Vec<(Vec<u8>, Vec<u8>)> = match self.durable.as_ref() {
            Some(DurableHandle::Postgres { pool, .. }) => {
                sqlx::query_as(sql).fetch_all(pool).await.expect("dump")
            }
            Some(DurableHandle::Sqlite { pool, .. }) => {
                sqlx::query_as(sql).fetch_all(pool).await.expect("dump")
            }
            None => Vec::new(),
        };
        rows.into_iter().flat_map(|(k, d)| [k, d]).collect()
    }

    /// Deletes a session's durable row behind the store's back, as a logout whose cache
    /// write failed leaves things.
    pub async fn durable_delete_directly(&self, id: &Id) {
        let key = StorageKey::from_id(id).as_bytes().to_vec();
        match self.durable.as_ref() {
            Some(DurableHandle::Postgres { pool, .. }) => {
                sqlx::query("DELETE FROM tiered_sessions WHERE key = $1")
                    .bind(key)
                    .execute(pool)
                    .await
                    .expect("delete");
            }
            Some(DurableHandle::Sqlite { pool, .. }) => {
                sqlx::query("DELETE FROM tiered_sessions WHERE key = ?")
                    .bind(key)
                    .execute(pool)
                    .await
                    .expect("delete");
            }
            None => panic!("a durable fixture"),
        }
    }

    /// Overwrites a session's durable data with bytes that are not MessagePack.
    pub async fn durable_corrupt_directly(&self, id: &Id) {
        let key = StorageKey::from_id(id).as_bytes().to_vec();
        let garbage = b"\xc1\xc1 not a session".to_vec();
        match self.durable.as_ref() {
            Some(DurableHandle::Postgres { pool, .. }) => {
                sqlx::query("UPDATE tiered_sessions SET data = $1 WHERE key = $2")
                    .bind(garbage)
                    .bind(key)
                    .execute(pool)
                    .await
                    .expect("update");
            }
            Some(DurableHandle::Sqlite { pool, .. }) => {
                sqlx::query("UPDATE tiered_sessions SET data = ? WHERE key = ?")
                    .bind(garbage)
                    .bind(key)
                    .execute(pool)
                    .await
                    .expect("update");
            }
            None => panic!("a durable fixture"),
        }
    }

    pub async fn durable_count(&self) -> i64 {
        let sql = "SELECT count(*) FROM tiered_sessions";
        match self.durable.as_ref() {
            Some(DurableHandle::Postgres { pool, .. }) => sqlx::query_scalar(sql)
                .fetch_one(pool)
                .await
                .expect("count"),
            Some(DurableHandle::Sqlite { pool, .. }) => sqlx::query_scalar(sql)
                .fetch_one(pool)
                .await
                .expect("count"),
            None => 0,
        }
    }

    /// Redis commands by name since the last reset, summed over the servers that hold keys,
    /// without the test's own admin commands and the cluster client's slot-map reads.
    pub async fn redis_calls(&self) -> BTreeMap<String, u64> {
        let mut calls = BTreeMap::new();
        for server in self.key_servers().await {
            for (name, n) in server.command_calls().await {
                *calls.entry(name).or_insert(0) += n;
            }
        }
        calls.retain(|name, _| {
            let command = name.split('|').next().unwrap_or(name);
            ![
                // The test's own admin commands, the cluster client's slot-map reads, and
                // replication between cluster nodes.
                "info", "config", "ping", "client", "hello", "select", "auth", "cluster", "role",
                "replconf", "psync", "sync",
            ]
            .contains(&command)
        });
        calls
    }

    pub fn app(&self) -> Router {
        app(&self.store)
    }
}

/// The app every HTTP-level test drives: a counter, a slow reader, login with id rotation,
/// logout, and per-session expiry.
pub fn app(store: &TieredStore) -> Router {
    Router::new()
        .route("/read", get(read))
        .route("/slow-read", get(slow_read))
        .route("/incr", post(incr))
        .route("/visit", get(incr))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/sign-in", post(sign_in))
        .route("/logout-with-flash", post(logout_with_flash))
        .route("/expiry", post(set_expiry))
        .layer(tiered_sessions::session_layer(store).with_secure(false))
}

async fn read(session: Session) -> Result<String, StatusCode> {
    let n = session.get::<u64>("n").await.map_err(|e| {
        eprintln!("read failed: {e:?}");
        StatusCode::SERVICE_UNAVAILABLE
    })?;
    Ok(n.unwrap_or(0).to_string())
}

/// A read-only request that holds its loaded record while other requests run, so that its
/// save lands after theirs.
async fn slow_read(
    session: Session,
    Query(q): Query<BTreeMap<String, u64>>,
) -> Result<String, StatusCode> {
    let n = session
        .get::<u64>("n")
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    tokio::time::sleep(Duration::from_micros(q.get("us").copied().unwrap_or(0))).await;
    Ok(n.unwrap_or(0).to_string())
}

async fn incr(session: Session) -> Result<String, StatusCode> {
    let unavailable = |_| StatusCode::SERVICE_UNAVAILABLE;
    let n = session
        .get::<u64>("n")
        .await
        .map_err(unavailable)?
        .unwrap_or(0)
        + 1;
    session.insert("n", n).await.map_err(unavailable)?;
    Ok(n.to_string())
}

async fn login(session: Session) -> Result<String, StatusCode> {
    let unavailable = |_| StatusCode::SERVICE_UNAVAILABLE;
    session.cycle_id().await.map_err(unavailable)?;
    session.insert("user", "alice").await.map_err(unavailable)?;
    Ok("ok".into())
}

async fn logout(session: Session) -> Result<String, StatusCode> {
    session
        .flush()
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    Ok("bye".into())
}

/// Signs in as `?user=…` (rotating the id, as a login does) and keeps the user where the
/// store's owner pointer finds it.
async fn sign_in(
    session: Session,
    Query(q): Query<BTreeMap<String, String>>,
) -> Result<String, StatusCode> {
    let unavailable = |_| StatusCode::SERVICE_UNAVAILABLE;
    let user = q.get("user").cloned().unwrap_or_default();
    session.cycle_id().await.map_err(unavailable)?;
    session
        .insert("auth", serde_json::json!({ "user_id": user }))
        .await
        .map_err(unavailable)?;
    Ok(user)
}

async fn logout_with_flash(session: Session) -> Result<String, StatusCode> {
    let unavailable = |_| StatusCode::SERVICE_UNAVAILABLE;
    session.flush().await.map_err(unavailable)?;
    session
        .insert("flash", "signed out")
        .await
        .map_err(unavailable)?;
    Ok("bye".into())
}

async fn set_expiry(
    session: Session,
    Query(q): Query<BTreeMap<String, u64>>,
) -> Result<String, StatusCode> {
    let ms = q.get("ms").copied().unwrap_or(1000);
    session.set_expiry(Some(Expiry::OnInactivity(time::Duration::milliseconds(
        ms as i64,
    ))));
    session
        .insert("custom", ms)
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    Ok("ok".into())
}

/// The answer to one request.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: String,
    /// The session id the response set, if it set one (`None` also for a removal).
    pub cookie: Option<String>,
    pub set_cookie: Option<String>,
}

/// Sends one request through `app` without a socket.
pub async fn send(app: &Router, method: &str, path: &str, cookie: Option<&str>) -> Reply {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(id) = cookie {
        request = request.header(header::COOKIE, format!("id={id}"));
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let status = response.status();
    let set_cookie = response
        .headers()
        .get(header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let cookie = set_cookie.as_deref().and_then(|c| {
        let value = c.strip_prefix("id=")?.split(';').next()?;
        (!value.is_empty()).then(|| value.to_owned())
    });
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    Reply {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
        cookie,
        set_cookie,
    }
}

/// Parses a cookie value into a session id.
pub fn id_of(cookie: &str) -> Id {
    cookie.parse().expect("a session id")
}

/// Starts a session with `n = 1` and returns its cookie.
pub async fn start_session(app: &Router) -> String {
    let reply = send(app, "POST", "/incr", None).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    reply.cookie.expect("a new session sets a cookie")
}

pub fn json(s: &str) -> Json {
    serde_json::from_str(s).expect("json")
}

/// A durable tier that holds every `load` answer for a while before returning it, so a
/// refill reaches the cache after a concurrent delete or change. The tier underneath is the
/// real one.
#[derive(Debug)]
pub struct SlowLoads<D> {
    pub inner: D,
    pub hold: Duration,
}

#[async_trait]
impl<D: DurableTier> DurableTier for SlowLoads<D> {
    async fn load(
        &self,
        key: &StorageKey,
        now: OffsetDateTime,
    ) -> Result<Option<StoredSession>, TierError> {
        let row = self.inner.load(key, now).await;
        tokio::time::sleep(self.hold).await;
        row
    }
    async fn insert(&self, session: &StoredSession) -> Result<bool, TierError> {
        self.inner.insert(session).await
    }
    async fn update(
        &self,
        key: &StorageKey,
        data: &[u8],
        idle: Duration,
        expires_at: OffsetDateTime,
        owner: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<Option<Updated>, TierError> {
        self.inner
            .update(key, data, idle, expires_at, owner, now)
            .await
    }
    async fn list_owned(
        &self,
        owner: &str,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<StoredSession>, TierError> {
        self.inner.list_owned(owner, now, limit).await
    }
    async fn delete_owned(&self, owner: &str, key: &StorageKey) -> Result<bool, TierError> {
        self.inner.delete_owned(owner, key).await
    }
    async fn delete_all_owned(
        &self,
        owner: &str,
        keep: Option<&StorageKey>,
    ) -> Result<Vec<StorageKey>, TierError> {
        self.inner.delete_all_owned(owner, keep).await
    }
    async fn ping(&self) -> Result<(), TierError> {
        self.inner.ping().await
    }
    async fn touch(
        &self,
        key: &StorageKey,
        expires_at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<Option<u64>, TierError> {
        self.inner.touch(key, expires_at, now).await
    }
    async fn delete(&self, key: &StorageKey) -> Result<(), TierError> {
        self.inner.delete(key).await
    }
    async fn delete_expired(&self, now: OffsetDateTime, batch: u32) -> Result<u64, TierError> {
        self.inner.delete_expired(now, batch).await
    }
    async fn epoch(&self) -> Result<u64, TierError> {
        self.inner.epoch().await
    }
    async fn bump_epoch(&self) -> Result<u64, TierError> {
        self.inner.bump_epoch().await
    }
    async fn observe_cache(&self, identity: &str) -> Result<u64, TierError> {
        self.inner.observe_cache(identity).await
    }
}
