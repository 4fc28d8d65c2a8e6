//! The Redis cache tier of tiered-sessions, on [fred](https://docs.rs/fred).
//!
//! [`RedisCache`] stores each session under `<prefix><hex of its storage key>` as a
//! [`SessionEnvelope`](tiered_sessions_core::SessionEnvelope):
//!
//! - a read is one `GET`; the store slides the expiry with a separate script at most once
//!   per touch interval per session (see [`CacheTier::slide`]);
//! - a new session is `SET key … NX PX`;
//! - a change or a refill after a miss is a single-key Lua script (run by `EVALSHA`) that writes only if the
//!   stored entry is not a tombstone and not a newer version of the same session, so a slow
//!   writer or a refill racing a change can never roll it back (no `SET … XX` that silently
//!   drops the write);
//! - a slide sets the time to live and records both expiries in place with `SETRANGE`,
//!   under the same version check.
//!
//! The store stops trusting the cache whenever fred reports a lost connection (see
//! [`CacheTier::disconnects`]): the server may have restarted from an older snapshot or
//! failed over to a replica that missed writes.
//!
//! Every command touches one key, so the tier works unchanged on Redis Cluster.
//!
//! It works over a fred [`Client`] or [`Pool`] (anything that speaks
//! keys, Lua and custom commands), built by you or by [`RedisCache::connect`]. fred
//! features that change behaviour for other users of fred in the same application (such as
//! `default-nil-types`) are not turned on.
//!
//! ```no_run
//! # async fn run() -> Result<(), tiered_sessions_redis::RedisCacheError> {
//! use tiered_sessions_redis::RedisCache;
//!
//! let cache = RedisCache::connect("redis://127.0.0.1:6379").await?.with_key_prefix("myapp:session:");
//! # let _ = cache;
//! # Ok(())
//! # }
//! ```

use std::{
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, OnceLock,
    },
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use fred::{
    clients::{Client, Pool},
    error::{Error as FredError, ErrorKind},
    interfaces::{ClientLike, EventInterface, KeysInterface, LuaInterface, SetsInterface},
    types::{
        config::{Config, Options, ReconnectPolicy, UnresponsiveConfig},
        scripts::Script,
        Builder, ClusterHash, CustomCommand, Expiration, FromValue, SetOptions, Value,
    },
};
use tiered_sessions_core::{
    envelope::{self, duration_ms},
    CacheTier, StorageKey, TierError, TierErrorKind,
};
use time::OffsetDateTime;

pub use fred;

/// Errors of setting up a [`RedisCache`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisCacheError {
    /// The URL could not be parsed; expected `redis://[user:password@]host[:port][/db]` or
    /// `rediss://…` for TLS.
    #[error("invalid Redis URL: {0}")]
    Url(#[source] FredError),
    /// Redis refused the connection's settings (a wrong password or user, an untrusted or
    /// mismatched certificate): check the credentials and the TLS settings.
    #[error("Redis refused the connection (check the password and TLS settings): {0}")]
    Connect(#[source] FredError),
    /// A Redis command failed.
    #[error("Redis command failed: {0}")]
    Command(#[from] FredError),
    /// A Redis command did not answer within the cache operation timeout.
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    /// The CA file for TLS could not be used; give a readable PEM file of CA certificates.
    #[error("cannot use {path} as the TLS certificate authority: {reason}")]
    Tls {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

impl From<RedisCacheError> for TierError {
    fn from(err: RedisCacheError) -> Self {
        let kind = match &err {
            RedisCacheError::Timeout(_) => TierErrorKind::Timeout,
            RedisCacheError::Url(_) | RedisCacheError::Tls { .. } => TierErrorKind::Rejected,
            RedisCacheError::Connect(_) => TierErrorKind::Unavailable,
            RedisCacheError::Command(e) => kind_of(e),
        };
        TierError::new("redis", kind, err)
    }
}

fn kind_of(err: &FredError) -> TierErrorKind {
    match err.kind() {
        // `MOVED` or `ASK` not followed (see `NO_REDIRECTIONS`).
        ErrorKind::Routing if err.details().starts_with("Too many redirections") => {
            TierErrorKind::Redirected
        }
        ErrorKind::Timeout => TierErrorKind::Timeout,
        ErrorKind::IO
        | ErrorKind::Canceled
        | ErrorKind::Routing
        | ErrorKind::Cluster
        | ErrorKind::Sentinel
        | ErrorKind::Backpressure => TierErrorKind::Unavailable,
        // fred's kind for a `WRONGTYPE` reply; our own arguments are always well-formed.
        ErrorKind::InvalidArgument => TierErrorKind::WrongType,
        // Error replies from the server (OOM, READONLY, NOPERM, …).
        ErrorKind::Unknown
        | ErrorKind::Auth
        | ErrorKind::InvalidCommand
        | ErrorKind::Config
        | ErrorKind::Url => TierErrorKind::Rejected,
        _ => TierErrorKind::Other,
    }
}

/// A [`CacheTier`] on Redis through fred. Cloning is cheap and shares the connection.
#[derive(Clone)]
pub struct RedisCache<C = Client> {
    client: C,
    prefix: Arc<str>,
    op_timeout: Duration,
    options: Options,
    scripts: Arc<Scripts>,
    disconnects: Arc<Disconnects>,
}

/// The Lua scripts, run with `EVALSHA` (falling back to `EVAL`, which caches the script,
/// when the server answers `NOSCRIPT`: after a restart or on a new cluster node).
struct Scripts {
    put: Script,
    slide: Script,
    peek: Script,
}

/// Counts connection losses that fred reports, from the first time the store asks.
#[derive(Default)]
struct Disconnects {
    count: Arc<AtomicU64>,
    watching: OnceLock<()>,
}

/// fred clients whose connection losses a [`RedisCache`] can watch: [`Client`] and [`Pool`].
pub trait ConnectionEvents {
    /// Receivers of the error events of every connection: fred broadcasts one when a
    /// connection breaks (the server closed it, restarted, or stopped answering) or a
    /// connection attempt fails.
    fn connection_events(&self) -> Vec<ConnectionEventReceiver>;
}

/// A stream of connection errors, from [`ConnectionEvents::connection_events`].
pub type ConnectionEventReceiver =
    tokio::sync::broadcast::Receiver<(FredError, Option<fred::types::config::Server>)>;

impl ConnectionEvents for Client {
    fn connection_events(&self) -> Vec<ConnectionEventReceiver> {
        vec![self.error_rx()]
    }
}

impl ConnectionEvents for Pool {
    fn connection_events(&self) -> Vec<ConnectionEventReceiver> {
        self.clients()
            .iter()
            .flat_map(ConnectionEvents::connection_events)
            .collect()
    }
}

/// Counts every event of `events` into `count` until the client is dropped.
async fn count_into(mut events: ConnectionEventReceiver, count: Arc<AtomicU64>) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match events.recv().await {
            Ok(_) | Err(RecvError::Lagged(_)) => {
                count.fetch_add(1, Ordering::AcqRel);
            }
            Err(RecvError::Closed) => return,
        }
    }
}

impl<C> fmt::Debug for RedisCache<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the client: its configuration can hold credentials.
        f.debug_struct("RedisCache")
            .field("prefix", &self.prefix)
            .field("op_timeout", &self.op_timeout)
            .finish_non_exhaustive()
    }
}

impl RedisCache<Client> {
    /// Default cache operation timeout: 250 ms. A cache that answers slower than this is
    /// treated as failed, and with a durable tier the request goes to the database instead
    /// of waiting.
    pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_millis(250);

    /// How long [`RedisCache::connect`] waits for the first connection before returning
    /// anyway.
    pub const STARTUP_WAIT: Duration = Duration::from_secs(1);

    /// Connects to the Redis at `url` (`redis://`, `rediss://`, and fred's
    /// `redis-cluster://` and `redis-sentinel://`) with one auto-pipelining client, set up
    /// for a cache: a 1 s connection timeout, reconnection with backoff (up to 1 s) forever,
    /// a connection that does not answer for 2 s is dropped and replaced, and on Redis
    /// Cluster a `MOVED` or `ASK` fails the command rather than being followed (see
    /// [`TierErrorKind::Redirected`]; fred still refreshes its slot map after a `MOVED`).
    ///
    /// Redis being down is not an error: the client keeps connecting in the background
    /// (after waiting [`Self::STARTUP_WAIT`] for the first connection), and the store
    /// serves sessions from the durable tier meanwhile. A malformed URL, a refused password
    /// or an untrusted certificate is an error.
    pub async fn connect(url: &str) -> Result<Self, RedisCacheError> {
        Self::connect_with(url, &ConnectOptions::default()).await
    }

    /// [`RedisCache::connect`] with credentials or TLS settings that complete the URL (see
    /// [`ConnectOptions`]).
    pub async fn connect_with(
        url: &str,
        options: &ConnectOptions,
    ) -> Result<Self, RedisCacheError> {
        let mut config = Config::from_url(url).map_err(RedisCacheError::Url)?;
        // Retry the first connection like any later one instead of failing `connect`.
        config.fail_fast = false;
        if let Some(username) = &options.username {
            config.username = Some(username.clone());
        }
        if let Some(password) = &options.password {
            config.password = Some(password.clone());
        }
        #[cfg(feature = "tls")]
        if let Some(ca_file) = &options.ca_file {
            config.tls = Some(tls::with_ca_file(ca_file)?.into());
        }
        let client = Builder::from_config(config)
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_secs(1);
                c.max_redirections = NO_REDIRECTIONS;
                c.unresponsive = UnresponsiveConfig {
                    max_timeout: Some(Duration::from_secs(2)),
                    interval: Duration::from_millis(500),
                };
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 1_000, 2))
            .build()
            .map_err(RedisCacheError::Url)?;
        let cache = Self::new(client);
        // Subscribe before the first connection attempt, so a failure is counted and seen.
        cache.watch_connections();
        let mut errors = cache.client.error_rx();
        let router = cache.client.connect();
        let first = async {
            tokio::select! {
                connected = cache.client.wait_for_connect() => connected,
                Ok((error, _)) = errors.recv() => Err(error),
            }
        };
        match tokio::time::timeout(Self::STARTUP_WAIT, first).await {
            Ok(Ok(())) => {}
            // Settings that will never work: say so now rather than retry forever.
            Ok(Err(e)) if refused(&e) => {
                // Stop reconnecting (best effort: QUIT waits for a connection that never
                // comes, so it is not waited for long).
                let _ = tokio::time::timeout(Duration::from_millis(100), cache.client.quit()).await;
                return Err(RedisCacheError::Connect(e));
            }
            Ok(Err(e)) => tracing::warn!(
                error = %e,
                "Redis is not reachable yet; connecting in the background (sessions are served \
                 from the durable tier meanwhile, if one is configured)"
            ),
            Err(_) => tracing::warn!(
                "Redis did not answer within {:?}; connecting in the background (sessions are \
                 served from the durable tier meanwhile, if one is configured)",
                Self::STARTUP_WAIT
            ),
        }
        tokio::spawn(async move {
            if let Ok(Err(e)) = router.await {
                tracing::error!(
                    error = %e,
                    "the Redis client stopped and will not reconnect: sessions are served \
                     from the durable tier, if one is configured; restart the application"
                );
            }
        });
        Ok(cache)
    }
}

/// Whether a connection error means the settings are wrong (and retrying cannot help),
/// rather than that Redis is not reachable yet: a refused password or user, a certificate
/// that is not trusted or does not match (rustls reports those as I/O errors, so their
/// text is the only mark).
fn refused(err: &FredError) -> bool {
    let details = err.details();
    matches!(
        err.kind(),
        ErrorKind::Auth | ErrorKind::Tls | ErrorKind::Config | ErrorKind::Url
    ) || ["WRONGPASS", "NOAUTH", "NOPERM"]
        .iter()
        .any(|code| details.starts_with(code))
        || (*err.kind() == ErrorKind::IO && details.to_ascii_lowercase().contains("certificate"))
}

/// Settings that complete a Redis URL, for deployments that keep secrets or certificates
/// out of it (managed Redis guides give a host, a port and an AUTH string separately).
/// `Debug` never shows the password.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// The ACL user name (overrides the URL's).
    pub username: Option<String>,
    /// The password or AUTH string (overrides the URL's).
    pub password: Option<String>,
    /// A PEM file of the certificate authorities to trust for `rediss://` instead of the
    /// system's roots (a private CA, as managed Redis services use).
    pub ca_file: Option<std::path::PathBuf>,
}

impl ConnectOptions {
    /// Sets the ACL user name.
    pub fn with_username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// Sets the password or AUTH string.
    pub fn with_password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Trusts the certificate authorities in this PEM file for TLS.
    pub fn with_ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }
}

impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

#[cfg(feature = "tls")]
mod tls {
    use std::path::Path;

    use fred::rustls::{
        self,
        pki_types::{pem::PemObject, CertificateDer},
    };

    use crate::RedisCacheError;

    /// A rustls client configuration that trusts the certificate authorities in `path`.
    pub(crate) fn with_ca_file(path: &Path) -> Result<rustls::ClientConfig, RedisCacheError> {
        let tls_error = |reason: String| RedisCacheError::Tls {
            path: path.to_owned(),
            reason,
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| tls_error(e.to_string()))? {
            let cert = cert.map_err(|e| tls_error(e.to_string()))?;
            roots.add(cert).map_err(|e| tls_error(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(tls_error("no certificate in the file".to_owned()));
        }
        Ok(rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth())
    }
}

impl<C> RedisCache<C>
where
    C: ClientLike
        + KeysInterface
        + LuaInterface
        + SetsInterface
        + ConnectionEvents
        + Clone
        + Send
        + Sync
        + 'static,
{
    /// Default key prefix: `tsess:`.
    pub const DEFAULT_KEY_PREFIX: &'static str = "tsess:";

    /// Wraps a connected fred client or pool.
    ///
    /// On Redis Cluster, build it with `max_redirections = 0` in its connection config, as
    /// [`RedisCache::connect`] does (see [`TierErrorKind::Redirected`]); a cluster client
    /// that follows redirections is logged as a warning here.
    pub fn new(client: C) -> Self {
        if client.is_clustered() && client.connection_config().max_redirections != NO_REDIRECTIONS {
            tracing::warn!(
                "the Redis Cluster client follows MOVED/ASK redirections: fred 10.1 can then \
                 hand replies to the wrong commands during a slot migration; set \
                 `max_redirections = 0` in its connection config"
            );
        }
        Self {
            client,
            prefix: Self::DEFAULT_KEY_PREFIX.into(),
            op_timeout: RedisCache::DEFAULT_OP_TIMEOUT,
            options: command_options(),
            scripts: Arc::new(Scripts::new()),
            disconnects: Arc::default(),
        }
    }

    /// Starts counting the client's connection losses (once; needs a tokio runtime, else
    /// it is tried again on the next call).
    fn watch_connections(&self) {
        if self.disconnects.watching.get().is_some() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        self.disconnects.watching.get_or_init(|| {
            for events in self.client.connection_events() {
                runtime.spawn(count_into(events, self.disconnects.count.clone()));
            }
        });
    }

    /// Sets the prefix of every key (default [`Self::DEFAULT_KEY_PREFIX`]), to share one
    /// Redis between applications. On Redis Cluster a prefix may carry no hash tag: each
    /// session is its own key.
    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into().into();
        self
    }

    /// Sets the deadline of every cache operation (default
    /// [`RedisCache::DEFAULT_OP_TIMEOUT`]).
    pub fn with_op_timeout(mut self, op_timeout: Duration) -> Self {
        self.op_timeout = op_timeout;
        self
    }

    /// The underlying fred client.
    pub fn client(&self) -> &C {
        &self.client
    }

    /// The Redis key of an owner's session index (a set of storage keys in hex), used only
    /// without a durable tier.
    pub fn owner_key(&self, owner: &str) -> String {
        let mut out = String::with_capacity(self.prefix.len() + 70);
        out.push_str(&self.prefix);
        out.push_str("owner:");
        out.push_str(&StorageKey::from_owner(owner).to_hex());
        out
    }

    /// The Redis key a session is stored under.
    pub fn redis_key(&self, key: &StorageKey) -> String {
        let mut out = String::with_capacity(self.prefix.len() + 64);
        out.push_str(&self.prefix);
        out.push_str(&key.to_hex());
        out
    }

    async fn run<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, FredError>>,
    ) -> Result<T, TierError> {
        // The one deadline of every cache call. fred's own per-command timeout is not used:
        // it did not fire for a script while Redis was killed, and a second timer on every
        // read would cost the hot path for nothing.
        //
        // fred's command futures are large; boxed, the future that every `CacheTier` call
        // returns stays small, so it is not copied around by the kilobyte on the hot path.
        match tokio::time::timeout(self.op_timeout, Box::pin(call)).await {
            Ok(result) => result.map_err(|e| RedisCacheError::Command(e).into()),
            Err(_) => Err(RedisCacheError::Timeout(self.op_timeout).into()),
        }
    }

    /// Runs a script on one key by its SHA-1 (`EVALSHA`), sending the source (`EVAL`) only
    /// when the server does not have it yet; both under one deadline.
    async fn script<R: FromValue>(
        &self,
        script: &Script,
        key: String,
        args: Vec<Value>,
    ) -> Result<R, TierError> {
        let client = self.client.with_options(&self.options);
        self.run(async {
            match client
                .evalsha::<R, _, _, _>(script.sha1().clone(), key.clone(), args.clone())
                .await
            {
                Err(e) if e.details().starts_with("NOSCRIPT") => {
                    let lua = script.lua().cloned().unwrap_or_default();
                    client.eval(lua, key, args).await
                }
                result => result,
            }
        })
        .await
    }

    /// On Redis Cluster, the identity is every live master's address and `run_id`: it
    /// changes when a master restarts (perhaps from an older snapshot) or a replica takes
    /// over (which may have missed writes), and not with the node a command happens to hit.
    async fn cluster_identity(&self) -> Result<String, TierError> {
        let cluster_nodes = CustomCommand::new_static("CLUSTER", ClusterHash::Random, false);
        let nodes: String = self
            .run(
                self.client
                    .with_options(&self.options)
                    .custom(cluster_nodes, vec![Value::from("NODES")]),
            )
            .await?;
        let mut masters = Vec::new();
        for line in nodes.lines() {
            let mut fields = line.split_whitespace().skip(1);
            let (Some(address), Some(flags)) = (fields.next(), fields.next()) else {
                continue;
            };
            let flags: Vec<&str> = flags.split(',').collect();
            if !flags.contains(&"master") || flags.iter().any(|f| f.starts_with("fail")) {
                continue;
            }
            let address = address.split(['@', ',']).next().unwrap_or_default();
            let Some((host, port)) = address.rsplit_once(':') else {
                continue;
            };
            let Ok(port) = port.parse::<u16>() else {
                continue;
            };
            let node = fred::types::config::Server::new(host, port);
            let run_id = self.run_id(Some(node)).await?;
            masters.push(format!("{address}={}", run_id.as_deref().unwrap_or("?")));
        }
        masters.sort();
        Ok(masters.join(","))
    }

    /// The `run_id` of the server answering `INFO server`: `node`, or any one.
    async fn run_id(
        &self,
        node: Option<fred::types::config::Server>,
    ) -> Result<Option<String>, TierError> {
        let options = Options {
            cluster_node: node,
            ..self.options.clone()
        };
        let info = CustomCommand::new_static("INFO", ClusterHash::Random, false);
        let text: String = self
            .run(
                self.client
                    .with_options(&options)
                    .custom(info, vec![Value::from("server")]),
            )
            .await?;
        Ok(text
            .lines()
            .find_map(|line| line.strip_prefix("run_id:"))
            .map(|id| id.trim().to_owned()))
    }
}

/// How many `MOVED` or `ASK` redirections fred follows: none. A redirected command fails
/// with [`TierErrorKind::Redirected`] instead (the store serves that session from the
/// durable tier meanwhile), and fred refreshes its slot map after a `MOVED`. It is set for
/// the whole client, not per command: the reply mix-up below hits every command on the
/// connection, whichever one was redirected.
///
/// fred 10.1 follows an `ASK` by sending `ASKING` to the importing node and taking the next
/// reply on that pipelined connection as its answer: with other commands in flight there,
/// the replies that follow go to the wrong commands (a write could be told it succeeded
/// when it was never run), and a command out of attempts stops the client for good.
const NO_REDIRECTIONS: u32 = 0;

/// Per-command options for a cache: fail at once while the connection is down instead of
/// queueing (a queued write replayed after a reconnect could land after a later change),
/// and one attempt.
fn command_options() -> Options {
    Options {
        max_attempts: Some(1),
        fail_fast: true,
        ..Options::default()
    }
}

fn px(ttl: Duration) -> i64 {
    i64::try_from(duration_ms(ttl).max(1)).unwrap_or(i64::MAX)
}

impl Scripts {
    fn new() -> Self {
        // Lua strings are 1-based: byte at offset `o` is `string.byte(s, o + 1)`.
        let key_from = envelope::KEY_OFFSET + 1;
        let key_to = envelope::VERSION_OFFSET;
        let version_from = envelope::VERSION_OFFSET + 1;
        let version_to = envelope::CREATED_OFFSET;
        let epoch_from = envelope::EPOCH_OFFSET + 1;
        let epoch_to = envelope::CHECKSUM_OFFSET;
        let kind_at = envelope::KIND_OFFSET + 1;
        let header = envelope::HEADER_LEN;
        let (record, tombstone) = (envelope::KIND_RECORD, envelope::KIND_TOMBSTONE);
        // Mirrors `envelope::put_allowed`. `redis.pcall` so that a key of another type
        // (WRONGTYPE) counts as foreign and is overwritten rather than failing the write.
        let put = format!(
            r#"
local new = ARGV[1]
local cur = redis.pcall('GET', KEYS[1])
if type(cur) ~= 'string' then cur = nil end
local function number(s, from, to)
  local v = 0
  for i = from, to do v = v * 256 + string.byte(s, i) end
  return v
end
local function newer(a, b)
  local va, vb = number(a, {version_from}, {version_to}), number(b, {version_from}, {version_to})
  if va ~= vb then return va > vb end
  return number(a, {epoch_from}, {epoch_to}) > number(b, {epoch_from}, {epoch_to})
end
local ours = cur ~= nil and #cur >= {header} and #new >= {header}
  and string.sub(cur, 1, 3) == string.sub(new, 1, 3)
  and string.sub(cur, {key_from}, {key_to}) == string.sub(new, {key_from}, {key_to})
if ours then
  local kind = string.byte(cur, {kind_at})
  if kind == {tombstone} then return 0 end
  if kind == {record} then
    if newer(cur, new) then return 0 end
  elseif ARGV[3] == '1' then
    return 0
  end
elseif ARGV[3] == '1' then
  return 0
end
redis.call('SET', KEYS[1], new, 'PX', ARGV[2])
return 1
"#
        );
        let prefix_len = envelope::CREATED_OFFSET;
        let offset = envelope::DURABLE_EXPIRY_OFFSET;
        let slide = format!(
            r#"
local cur = redis.pcall('GET', KEYS[1])
if type(cur) ~= 'string' or #cur < {header} or string.sub(cur, 1, {prefix_len}) ~= ARGV[1] then
  return 0
end
redis.call('SETRANGE', KEYS[1], {offset}, ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"#
        );
        // GET and PTTL of one key in one round trip; a key of another type reads as absent.
        let peek = r#"
local cur = redis.pcall('GET', KEYS[1])
if type(cur) ~= 'string' then return false end
return {cur, redis.call('PTTL', KEYS[1])}
"#
        .to_owned();
        Self {
            put: Script::from_lua(put),
            slide: Script::from_lua(slide),
            peek: Script::from_lua(peek),
        }
    }
}

#[async_trait]
impl<C> CacheTier for RedisCache<C>
where
    C: ClientLike
        + KeysInterface
        + LuaInterface
        + SetsInterface
        + ConnectionEvents
        + Clone
        + Send
        + Sync
        + 'static,
{
    async fn get(&self, key: &StorageKey) -> Result<Option<Bytes>, TierError> {
        // Without the fail-fast options of writes: a read queued across a reconnect and
        // answered late is harmless (the deadline still bounds the wait, and the store
        // stops reading the cache as soon as the connection is lost), and skipping the
        // per-command options is measurably cheaper on the hot path.
        self.run(self.client.get::<Option<Bytes>, _>(self.redis_key(key)))
            .await
    }

    async fn insert(
        &self,
        key: &StorageKey,
        entry: &[u8],
        ttl: Duration,
    ) -> Result<bool, TierError> {
        let reply: Value = self
            .run(self.client.with_options(&self.options).set(
                self.redis_key(key),
                Bytes::copy_from_slice(entry),
                Some(Expiration::PX(px(ttl))),
                Some(SetOptions::NX),
                false,
            ))
            .await?;
        Ok(!reply.is_null())
    }

    async fn put(
        &self,
        key: &StorageKey,
        entry: &[u8],
        ttl: Duration,
        require_present: bool,
    ) -> Result<bool, TierError> {
        let args: Vec<Value> = vec![
            Bytes::copy_from_slice(entry).into(),
            px(ttl).into(),
            if require_present { "1" } else { "0" }.into(),
        ];
        let written: i64 = self
            .script(&self.scripts.put, self.redis_key(key), args)
            .await?;
        Ok(written == 1)
    }

    async fn replace(
        &self,
        key: &StorageKey,
        entry: &[u8],
        ttl: Duration,
    ) -> Result<(), TierError> {
        self.run(self.client.with_options(&self.options).set::<(), _, _>(
            self.redis_key(key),
            Bytes::copy_from_slice(entry),
            Some(Expiration::PX(px(ttl))),
            None,
            false,
        ))
        .await
    }

    async fn remove(&self, key: &StorageKey) -> Result<(), TierError> {
        self.run(
            self.client
                .with_options(&self.options)
                .del::<(), _>(self.redis_key(key)),
        )
        .await
    }

    async fn slide(
        &self,
        key: &StorageKey,
        version: u64,
        ttl: Duration,
        durable_expires_at: Option<OffsetDateTime>,
        cache_expires_at: OffsetDateTime,
    ) -> Result<bool, TierError> {
        let args: Vec<Value> = vec![
            Bytes::from(envelope::record_prefix(key, version)).into(),
            Bytes::copy_from_slice(&envelope::expiry_bytes(
                durable_expires_at,
                cache_expires_at,
            ))
            .into(),
            px(ttl).into(),
        ];
        let slid: i64 = self
            .script(&self.scripts.slide, self.redis_key(key), args)
            .await?;
        Ok(slid == 1)
    }

    async fn identity(&self) -> Result<Option<String>, TierError> {
        if self.client.is_clustered() {
            return self.cluster_identity().await.map(Some);
        }
        self.run_id(None).await
    }

    fn disconnects(&self) -> u64 {
        self.watch_connections();
        self.disconnects.count.load(Ordering::Acquire)
    }

    async fn peek(&self, key: &StorageKey) -> Result<Option<(Bytes, Duration)>, TierError> {
        let reply: Option<(Bytes, i64)> = self
            .script(&self.scripts.peek, self.redis_key(key), Vec::new())
            .await?;
        Ok(reply.map(|(bytes, pttl)| {
            // -1: no expiry (not written by this store); treat as just written.
            let left = u64::try_from(pttl).map_or(Duration::ZERO, Duration::from_millis);
            (bytes, left)
        }))
    }

    async fn ping(&self) -> Result<(), TierError> {
        let ping = CustomCommand::new_static("PING", ClusterHash::Random, false);
        self.run(
            self.client
                .with_options(&self.options)
                .custom::<Value, Value>(ping, Vec::new()),
        )
        .await
        .map(|_| ())
    }

    async fn index_add(&self, owner: &str, member: &StorageKey) -> Result<(), TierError> {
        self.run(
            self.client
                .with_options(&self.options)
                .sadd::<(), _, _>(self.owner_key(owner), member.to_hex()),
        )
        .await
    }

    async fn index_members(&self, owner: &str) -> Result<Vec<StorageKey>, TierError> {
        let members: Vec<String> = self
            .run(
                self.client
                    .with_options(&self.options)
                    .smembers(self.owner_key(owner)),
            )
            .await?;
        Ok(members
            .iter()
            .filter_map(|m| StorageKey::from_hex(m))
            .collect())
    }

    async fn index_remove(&self, owner: &str, members: &[StorageKey]) -> Result<(), TierError> {
        if members.is_empty() {
            return Ok(());
        }
        let members: Vec<String> = members.iter().map(StorageKey::to_hex).collect();
        self.run(
            self.client
                .with_options(&self.options)
                .srem::<(), _, _>(self.owner_key(owner), members),
        )
        .await
    }
}
