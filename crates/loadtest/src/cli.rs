//! Command-line options (clap derive). They live in the library so that tests can build a
//! run from the same flags a user types.

use std::{fmt, path::PathBuf, str::FromStr, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Load tests of session reads: tiered-sessions side by side with the stores users pick
/// today, or a running web server over HTTP.
#[derive(Debug, Parser)]
#[command(name = "session-loadtest", version, about, long_about = None)]
pub struct Cli {
    /// What to drive.
    #[command(subcommand)]
    pub command: Command,
}

/// The two modes.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Drive `SessionStore` implementations in-process, side by side in one run.
    Store(StoreArgs),
    /// Drive a running web server: sign users in, then read a page with their cookies.
    Http(HttpArgs),
}

/// Options every mode shares: how much load, for how long, and where the report goes.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Concurrent tasks, each running one request after another; a comma-separated list
    /// runs each level in turn.
    #[arg(long, short = 'c', value_delimiter = ',', default_value = "1,16,64")]
    pub concurrency: Vec<usize>,

    /// Length of one measured round per backend (e.g. `3s`, `500ms`, `1m`).
    #[arg(long, short = 'd', default_value = "3s", value_parser = parse_duration, conflicts_with = "requests")]
    pub duration: Duration,

    /// Requests per measured round per backend, instead of a duration.
    #[arg(long, short = 'n')]
    pub requests: Option<u64>,

    /// Unmeasured load before the first round of each backend, scenario and concurrency.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,

    /// Measured rounds; backends take turns within each round so that noise on a shared
    /// machine hits them alike, and the median round is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,

    /// Seed of the access pattern and of the session contents.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,

    /// Writes the full report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Draws throughput and latency percentiles per backend into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,

    /// No progress bar (it is also off when stderr is not a terminal).
    #[arg(long, short = 'q')]
    pub quiet: bool,

    /// Allows servers that are not on a loopback address. A load test can hurt the
    /// server it targets: point it at a machine you own, on purpose.
    #[arg(long)]
    pub allow_remote: bool,
}

/// `session-loadtest store`.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Redis for every Redis-backed backend, e.g. `redis://127.0.0.1:6379`. Use a
    /// scratch server: the run writes sessions to it (and `--chaos flush` flushes it).
    #[arg(long, value_name = "URL")]
    pub redis_url: Option<String>,

    /// Postgres for every Postgres-backed backend, e.g.
    /// `postgres://postgres@127.0.0.1:5432/loadtest`. Use a scratch database.
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,

    /// Starts a private redis-server and Postgres on free loopback ports for this run
    /// (needs `redis-server` and the PostgreSQL server binaries) instead of taking URLs.
    #[arg(long, conflicts_with_all = ["redis_url", "database_url"])]
    pub spawn_servers: bool,

    /// Backends to drive, comma-separated; `NAME@pool6` runs a Redis-backed one on a fred
    /// `Pool` of 6 connections instead of one auto-pipelining `Client`.
    #[arg(long, short = 'b', value_delimiter = ',', default_value = DEFAULT_BACKENDS)]
    pub backends: Vec<BackendSpec>,

    /// Scenarios to run, comma-separated.
    #[arg(
        long,
        short = 's',
        value_delimiter = ',',
        default_value = "read,sliding,mixed,cold"
    )]
    pub scenarios: Vec<Scenario>,

    /// Sessions per backend.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub sessions: u64,

    /// Size of a session's data, MessagePack-encoded, in bytes (at least ~170: the fields
    /// of a typical login session; the rest is padding).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub payload_bytes: u64,

    /// Fraction of requests in the `mixed` scenario that change the session and save it.
    #[arg(long, default_value_t = 0.1, value_parser = parse_ratio)]
    pub write_ratio: f64,

    /// Idle timeout of every store (the sliding expiry).
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// Durable touch interval of the tiered stores (default: the store's, a tenth of the
    /// idle timeout).
    #[arg(long, value_parser = parse_duration)]
    pub touch_interval: Option<Duration>,

    /// Faults injected into Redis during every measured round: `flush=2s` (FLUSHALL every
    /// 2 s) or `pause=500ms/5s` (CLIENT PAUSE 500 ms every 5 s). Repeatable.
    #[arg(long, value_name = "SPEC")]
    pub chaos: Vec<ChaosSpec>,

    /// Leaves the sessions in Redis and Postgres at the end instead of deleting them.
    #[arg(long)]
    pub keep_data: bool,

    /// Shared load options.
    #[command(flatten)]
    pub load: LoadArgs,
}

/// The default `--backends`: every store and both floors, on one fred `Client` each.
pub const DEFAULT_BACKENDS: &str =
    "tiered,tiered-redis,tiered-sqlite,redis-store,caching,postgres-store,fred-get,fred-getex";

/// `session-loadtest http`.
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// The server, e.g. `http://127.0.0.1:3000`.
    #[arg(long, value_name = "URL")]
    pub base_url: String,

    /// The sign-in request: `POST` of `{"username","password"}` as JSON to this path.
    #[arg(long, default_value = "/api/login", value_name = "PATH")]
    pub login_path: String,

    /// The page read with each user's cookie (`GET`).
    #[arg(long, default_value = "/api/me", value_name = "PATH")]
    pub read_path: String,

    /// A user to sign in, `NAME:PASSWORD`; repeatable. Sign-ins take the users in turn.
    #[arg(long = "user", value_name = "NAME:PASSWORD", required = true)]
    pub users: Vec<Credentials>,

    /// Sessions to open (sign-ins) before reading.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub sessions: u64,

    /// Shared load options.
    #[command(flatten)]
    pub load: LoadArgs,
}

/// A workload: what one request does to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// `load` only.
    Read,
    /// `load` + `save` of the unchanged record, as `SessionManagerLayer` with
    /// save-every-request does on a read-only request (for the floors: `GETEX`).
    Sliding,
    /// `load`; a `--write-ratio` share of requests also change the session and save it.
    Mixed,
    /// Cache emptied first: one pass over every session reads through the durable tier,
    /// then a second pass measures whether the cache refilled.
    Cold,
}

impl Scenario {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Read => "read",
            Scenario::Sliding => "sliding",
            Scenario::Mixed => "mixed",
            Scenario::Cold => "cold",
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The stores and floors the tool can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    /// `TieredStore`: Redis cache, Postgres durable tier.
    Tiered,
    /// `TieredStore` without a durable tier.
    TieredRedis,
    /// `TieredStore`: in-process memory cache, SQLite durable tier (the embedded default).
    TieredSqlite,
    /// `tower_sessions_redis_store::RedisStore`.
    RedisStore,
    /// `tower_sessions::CachingSessionStore<RedisStore, PostgresStore>`.
    Caching,
    /// `tower_sessions_sqlx_store::PostgresStore`.
    PostgresStore,
    /// A plain fred `GET` of the bytes the tiered store keeps.
    FredGet,
    /// A plain fred `GETEX key PX idle` of the same bytes.
    FredGetex,
    /// `GETEX` with the per-command options the tiered store's Redis tier sets (deadline,
    /// fail fast, one attempt): what its read costs in fred before any store logic.
    FredGetexOpts,
}

impl BackendKind {
    /// Every kind, in report order.
    pub const ALL: [BackendKind; 9] = [
        BackendKind::Tiered,
        BackendKind::TieredRedis,
        BackendKind::TieredSqlite,
        BackendKind::RedisStore,
        BackendKind::Caching,
        BackendKind::PostgresStore,
        BackendKind::FredGet,
        BackendKind::FredGetex,
        BackendKind::FredGetexOpts,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Tiered => "tiered",
            BackendKind::TieredRedis => "tiered-redis",
            BackendKind::TieredSqlite => "tiered-sqlite",
            BackendKind::RedisStore => "redis-store",
            BackendKind::Caching => "caching",
            BackendKind::PostgresStore => "postgres-store",
            BackendKind::FredGet => "fred-get",
            BackendKind::FredGetex => "fred-getex",
            BackendKind::FredGetexOpts => "fred-getex-opts",
        }
    }

    /// What it is, for the report's legend.
    pub fn describe(self) -> &'static str {
        match self {
            BackendKind::Tiered => "TieredStore, Redis + Postgres",
            BackendKind::TieredRedis => "TieredStore, Redis only",
            BackendKind::TieredSqlite => "TieredStore, memory + SQLite",
            BackendKind::RedisStore => "tower-sessions-redis-store RedisStore",
            BackendKind::Caching => "CachingSessionStore<RedisStore, PostgresStore>",
            BackendKind::PostgresStore => "tower-sessions-sqlx-store PostgresStore",
            BackendKind::FredGet => "plain fred GET, same bytes",
            BackendKind::FredGetex => "plain fred GETEX PX, same bytes",
            BackendKind::FredGetexOpts => "fred GETEX PX + the store's command options",
        }
    }

    /// Whether it talks to Redis.
    pub fn uses_redis(self) -> bool {
        !matches!(self, BackendKind::TieredSqlite | BackendKind::PostgresStore)
    }

    /// Whether it talks to Postgres.
    pub fn uses_postgres(self) -> bool {
        matches!(
            self,
            BackendKind::Tiered | BackendKind::Caching | BackendKind::PostgresStore
        )
    }

    /// Whether it is a plain Redis command rather than a `SessionStore`.
    pub fn is_floor(self) -> bool {
        matches!(
            self,
            BackendKind::FredGet | BackendKind::FredGetex | BackendKind::FredGetexOpts
        )
    }

    /// Whether it has a durable tier behind its cache (its sessions survive an empty cache).
    pub fn is_durable(self) -> bool {
        matches!(
            self,
            BackendKind::Tiered
                | BackendKind::TieredSqlite
                | BackendKind::Caching
                | BackendKind::PostgresStore
        )
    }

    /// Whether it takes part in `scenario` (a plain `GET` does not slide, the floors have
    /// no durable tier to read through).
    pub fn runs(self, scenario: Scenario) -> bool {
        match scenario {
            Scenario::Read | Scenario::Mixed => true,
            Scenario::Sliding => self != BackendKind::FredGet,
            Scenario::Cold => !self.is_floor(),
        }
    }
}

/// The fred handle a Redis-backed backend runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RedisHandle {
    /// One auto-pipelining `Client` (what `RedisCache::connect` builds).
    Client,
    /// A round-robin `Pool` of this many clients.
    Pool(usize),
}

/// A backend and its fred handle: `tiered`, `fred-get@pool6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendSpec {
    /// The store or floor.
    pub kind: BackendKind,
    /// The fred handle (always `Client` for backends without Redis).
    pub handle: RedisHandle,
}

impl BackendSpec {
    /// `kind` on one fred `Client`.
    pub fn client(kind: BackendKind) -> Self {
        Self {
            kind,
            handle: RedisHandle::Client,
        }
    }
}

impl fmt::Display for BackendSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.handle {
            RedisHandle::Client => f.write_str(self.kind.name()),
            RedisHandle::Pool(n) => write!(f, "{}@pool{n}", self.kind.name()),
        }
    }
}

impl FromStr for BackendSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, handle) = match s.trim().split_once('@') {
            Some((name, handle)) => (name, Some(handle)),
            None => (s.trim(), None),
        };
        let kind = BackendKind::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| {
                let names: Vec<_> = BackendKind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown backend `{name}`; choose from {}", names.join(", "))
            })?;
        let handle = match handle {
            None | Some("client") => RedisHandle::Client,
            Some(h) => {
                let size = h
                    .strip_prefix("pool")
                    .and_then(|n| n.parse::<usize>().ok())
                    .filter(|n| (1..=256).contains(n))
                    .ok_or_else(|| {
                        format!("`{s}`: the handle after `@` is `client` or `poolN` (N in 1..=256)")
                    })?;
                if !kind.uses_redis() {
                    return Err(format!(
                        "`{s}`: {name} does not use Redis, it takes no `@{h}`"
                    ));
                }
                RedisHandle::Pool(size)
            }
        };
        Ok(Self { kind, handle })
    }
}

/// A fault to inject into Redis during measured rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChaosSpec {
    /// `FLUSHALL` every `every`.
    Flush {
        /// Time between flushes.
        every: Duration,
    },
    /// `CLIENT PAUSE <pause> ALL` every `every`.
    Pause {
        /// How long Redis stops answering.
        pause: Duration,
        /// Time between the starts of two pauses.
        every: Duration,
    },
}

impl fmt::Display for ChaosSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChaosSpec::Flush { every } => write!(f, "flush={}", show_duration(*every)),
            ChaosSpec::Pause { pause, every } => {
                write!(
                    f,
                    "pause={}/{}",
                    show_duration(*pause),
                    show_duration(*every)
                )
            }
        }
    }
}

impl FromStr for ChaosSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("`{s}`: expected `flush=EVERY` (e.g. flush=2s) or `pause=LENGTH/EVERY` (e.g. pause=500ms/5s)")
        };
        let (kind, value) = s.split_once('=').ok_or_else(bad)?;
        let spec = match kind.trim() {
            "flush" => ChaosSpec::Flush {
                every: parse_duration(value)?,
            },
            "pause" => {
                let (pause, every) = value.split_once('/').ok_or_else(bad)?;
                let (pause, every) = (parse_duration(pause)?, parse_duration(every)?);
                if pause >= every {
                    return Err(format!(
                        "`{s}`: the pause must be shorter than the time between pauses"
                    ));
                }
                ChaosSpec::Pause { pause, every }
            }
            _ => return Err(bad()),
        };
        match spec {
            ChaosSpec::Flush { every } | ChaosSpec::Pause { every, .. }
                if every < Duration::from_millis(100) =>
            {
                Err(format!("`{s}`: faults at most every 100 ms"))
            }
            _ => Ok(spec),
        }
    }
}

/// A user of the HTTP mode: `NAME:PASSWORD`.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl FromStr for Credentials {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            Some((user, password)) if !user.is_empty() => Ok(Self {
                username: user.to_owned(),
                password: password.to_owned(),
            }),
            _ => Err(format!("`{s}`: expected NAME:PASSWORD, e.g. alice:secret")),
        }
    }
}

/// Parses `250ms`, `3s`, `1.5s`, `2m`, `1h`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{s}`: expected a duration such as 500ms, 3s or 2m"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("`{s}`: unknown unit `{other}`; use ms, s, m or h")),
    };
    if !seconds.is_finite() || !(0.0..=30.0 * 24.0 * 3600.0).contains(&seconds) {
        return Err(format!("`{s}`: out of range"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// A duration as `parse_duration` reads it back: `500ms`, `3s`, `2m`.
pub fn show_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 60_000 == 0 && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 && ms > 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!(
            "`{s}`: expected a number between 0 and 1, e.g. 0.1"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3 parsecs").is_err());
        assert_eq!(show_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(show_duration(Duration::from_secs(120)), "2m");
    }

    #[test]
    fn backends_parse_with_handles() {
        let spec: BackendSpec = "fred-get@pool6".parse().expect("valid");
        assert_eq!(spec.kind, BackendKind::FredGet);
        assert_eq!(spec.handle, RedisHandle::Pool(6));
        assert_eq!(spec.to_string(), "fred-get@pool6");
        assert_eq!(
            "tiered".parse::<BackendSpec>(),
            Ok(BackendSpec::client(BackendKind::Tiered))
        );
        assert!("postgres-store@pool2".parse::<BackendSpec>().is_err());
        assert!("mongo".parse::<BackendSpec>().is_err());
        assert!("tiered@pool0".parse::<BackendSpec>().is_err());
    }

    #[test]
    fn chaos_specs_parse() {
        assert_eq!(
            "flush=2s".parse(),
            Ok(ChaosSpec::Flush {
                every: Duration::from_secs(2)
            })
        );
        assert_eq!(
            "pause=500ms/5s".parse(),
            Ok(ChaosSpec::Pause {
                pause: Duration::from_millis(500),
                every: Duration::from_secs(5)
            })
        );
        assert!("pause=5s/1s".parse::<ChaosSpec>().is_err());
        assert!("flood=1s".parse::<ChaosSpec>().is_err());
        assert_eq!(
            "pause=500ms/5s".parse::<ChaosSpec>().map(|c| c.to_string()),
            Ok("pause=500ms/5s".to_owned())
        );
    }

    #[test]
    fn the_cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
