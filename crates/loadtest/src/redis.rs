//! fred handles: one auto-pipelining `Client` or a `Pool`, configured the way
//! `RedisCache::connect` configures its client, so every Redis backend runs on the same
//! client configuration.

use std::{collections::BTreeMap, time::Duration};

use bytes::Bytes;
use fred::{
    clients::{Client, Pool},
    error::Error as FredError,
    interfaces::{ClientLike, KeysInterface},
    types::{
        config::{Config, Options, ReconnectPolicy},
        Builder, ClusterHash, CustomCommand, Expiration, InfoKind, Value,
    },
};

use crate::{
    cli::RedisHandle,
    error::{redact, Error, Result},
};

/// How long connecting may take before the run gives up with a message.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Keys per multi-key command (`DEL`, `EXISTS`) when a backend's keys are handled in bulk.
pub const BULK: usize = 500;

/// A connected fred handle.
#[derive(Clone, Debug)]
pub enum Fred {
    /// One auto-pipelining client.
    Client(Client),
    /// A round-robin pool of clients.
    Pool(Pool),
}

fn builder(url: &str) -> Result<Builder> {
    let config = Config::from_url(url).map_err(|e| Error::Url {
        what: "--redis-url",
        url: redact(url),
        reason: format!("{e}; expected redis://[user:password@]host[:port][/db]"),
    })?;
    let mut builder = Builder::from_config(config);
    // As `RedisCache::connect`: a 1 s connection timeout, reconnection with backoff.
    builder
        .with_connection_config(|c| c.connection_timeout = Duration::from_secs(1))
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2));
    Ok(builder)
}

fn connect_error(url: &str, err: impl std::fmt::Display) -> Error {
    Error::Connect {
        what: "Redis",
        url: redact(url),
        reason: format!("{err}; is redis-server running there? (or use --spawn-servers)"),
    }
}

impl Fred {
    /// Connects `handle` to `url` and waits for the connection.
    pub async fn connect(url: &str, handle: RedisHandle) -> Result<Fred> {
        let builder = builder(url)?;
        let fred = match handle {
            RedisHandle::Client => Fred::Client(builder.build().map_err(|e| Error::Url {
                what: "--redis-url",
                url: redact(url),
                reason: e.to_string(),
            })?),
            RedisHandle::Pool(n) => Fred::Pool(builder.build_pool(n).map_err(|e| Error::Url {
                what: "--redis-url",
                url: redact(url),
                reason: e.to_string(),
            })?),
        };
        let init = async {
            match &fred {
                Fred::Client(c) => c.init().await.map(drop),
                Fred::Pool(p) => p.init().await.map(drop),
            }
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, init).await {
            Ok(Ok(())) => Ok(fred),
            Ok(Err(e)) => {
                fred.quit().await;
                Err(connect_error(url, e))
            }
            Err(_) => {
                fred.quit().await;
                Err(connect_error(
                    url,
                    format!("no answer within {CONNECT_TIMEOUT:?}"),
                ))
            }
        }
    }

    /// Closes the connections.
    pub async fn quit(&self) {
        let _ = match self {
            Fred::Client(c) => c.quit().await,
            Fred::Pool(p) => p.quit().await,
        };
    }

    /// `GET key`.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, FredError> {
        match self {
            Fred::Client(c) => c.get(key).await,
            Fred::Pool(p) => p.get(key).await,
        }
    }

    /// `GETEX key PX px`, with per-command `options` when given.
    pub async fn getex(
        &self,
        key: &str,
        px: i64,
        options: Option<&Options>,
    ) -> Result<Option<Bytes>, FredError> {
        let getex = CustomCommand::new_static("GETEX", ClusterHash::FirstKey, false);
        let args: Vec<Value> = vec![key.into(), "PX".into(), px.into()];
        match (self, options) {
            (Fred::Client(c), None) => c.custom(getex, args).await,
            (Fred::Client(c), Some(o)) => c.with_options(o).custom(getex, args).await,
            (Fred::Pool(p), None) => p.custom(getex, args).await,
            (Fred::Pool(p), Some(o)) => p.with_options(o).custom(getex, args).await,
        }
    }

    /// `SET key value PX px`.
    pub async fn set_px(&self, key: &str, value: Bytes, px: i64) -> Result<(), FredError> {
        let expire = Some(Expiration::PX(px));
        match self {
            Fred::Client(c) => c.set(key, value, expire, None, false).await,
            Fred::Pool(p) => p.set(key, value, expire, None, false).await,
        }
    }

    /// `DEL` of every key, in batches.
    pub async fn del_all(&self, keys: &[String]) -> Result<(), FredError> {
        for chunk in keys.chunks(BULK) {
            let chunk: Vec<String> = chunk.to_vec();
            let _: i64 = match self {
                Fred::Client(c) => c.del(chunk).await?,
                Fred::Pool(p) => p.del(chunk).await?,
            };
        }
        Ok(())
    }

    /// How many of `keys` exist, counted in batches.
    pub async fn count_existing(&self, keys: &[String]) -> Result<u64, FredError> {
        let mut total = 0;
        for chunk in keys.chunks(BULK) {
            let chunk: Vec<String> = chunk.to_vec();
            let n: u64 = match self {
                Fred::Client(c) => c.exists(chunk).await?,
                Fred::Pool(p) => p.exists(chunk).await?,
            };
            total += n;
        }
        Ok(total)
    }

    /// The client to run admin commands on.
    pub fn admin(&self) -> &Client {
        match self {
            Fred::Client(c) => c,
            Fred::Pool(p) => p.next(),
        }
    }
}

/// Counters of a Redis server that tell what a workload cost it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisCounters {
    /// Calls per command (`INFO commandstats`), lowercase: `getex`, `eval`, `set`.
    pub calls: BTreeMap<String, u64>,
    /// `keyspace_hits` (`INFO stats`): lookups of a key that exists.
    pub keyspace_hits: u64,
    /// `keyspace_misses`: lookups of a key that does not exist.
    pub keyspace_misses: u64,
    /// CPU the server used, microseconds (`used_cpu_user` + `used_cpu_sys`, `INFO cpu`).
    pub cpu_us: u64,
}

/// Commands that the tool itself sends (statistics, faults, connection set-up): left out
/// of what a backend costs.
fn is_own_command(name: &str) -> bool {
    matches!(
        name,
        "info" | "flushall" | "flushdb" | "ping" | "hello" | "auth" | "select" | "quit"
    ) || name.starts_with("client|")
        || name.starts_with("config|")
        || name.starts_with("command|")
}

impl RedisCounters {
    /// Reads the counters through `client`.
    pub async fn read(client: &Client) -> Result<RedisCounters, FredError> {
        let commandstats: String = client.info(Some(InfoKind::CommandStats)).await?;
        let stats: String = client.info(Some(InfoKind::Stats)).await?;
        let cpu: String = client.info(Some(InfoKind::Cpu)).await?;
        let field = |info: &str, name: &str| -> f64 {
            info.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0.0)
        };
        let cpu_seconds = field(&cpu, "used_cpu_user") + field(&cpu, "used_cpu_sys");
        Ok(RedisCounters {
            calls: parse_commandstats(&commandstats),
            keyspace_hits: field(&stats, "keyspace_hits") as u64,
            keyspace_misses: field(&stats, "keyspace_misses") as u64,
            cpu_us: (cpu_seconds * 1e6) as u64,
        })
    }

    /// What happened between `earlier` and `self`, without the tool's own commands.
    pub fn since(&self, earlier: &RedisCounters) -> RedisCounters {
        RedisCounters {
            calls: self
                .calls
                .iter()
                .filter(|(name, _)| !is_own_command(name))
                .filter_map(|(name, calls)| {
                    let delta = calls.saturating_sub(earlier.calls.get(name).copied().unwrap_or(0));
                    (delta > 0).then(|| (name.clone(), delta))
                })
                .collect(),
            keyspace_hits: self.keyspace_hits.saturating_sub(earlier.keyspace_hits),
            keyspace_misses: self.keyspace_misses.saturating_sub(earlier.keyspace_misses),
            cpu_us: self.cpu_us.saturating_sub(earlier.cpu_us),
        }
    }

    /// Adds `other` to `self`.
    pub fn add(&mut self, other: &RedisCounters) {
        for (name, calls) in &other.calls {
            *self.calls.entry(name.clone()).or_default() += calls;
        }
        self.keyspace_hits += other.keyspace_hits;
        self.keyspace_misses += other.keyspace_misses;
        self.cpu_us += other.cpu_us;
    }

    /// Every counted command call.
    pub fn total_calls(&self) -> u64 {
        self.calls.values().sum()
    }
}

/// `cmdstat_getex:calls=3,usec=…` lines → `{"getex": 3}`.
pub fn parse_commandstats(info: &str) -> BTreeMap<String, u64> {
    info.lines()
        .filter_map(|line| {
            let (name, fields) = line.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = fields
                .split(',')
                .find_map(|field| field.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_ascii_lowercase(), calls))
        })
        .collect()
}

/// The server's version (`INFO server`), for the report.
pub async fn server_version(client: &Client) -> Option<String> {
    let info: String = client.info(Some(InfoKind::Server)).await.ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .map(|v| v.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commandstats_deltas_leave_out_the_tools_own_commands() {
        let before = RedisCounters {
            calls: parse_commandstats(
                "cmdstat_getex:calls=3,usec=1\r\ncmdstat_info:calls=9,usec=1\r\n",
            ),
            keyspace_hits: 3,
            keyspace_misses: 0,
            cpu_us: 100,
        };
        let after = RedisCounters {
            calls: parse_commandstats(
                "cmdstat_getex:calls=13,usec=1\r\ncmdstat_info:calls=11,usec=1\r\n\
                 cmdstat_client|pause:calls=1,usec=1\r\ncmdstat_eval:calls=2,usec=1\r\n",
            ),
            keyspace_hits: 12,
            keyspace_misses: 1,
            cpu_us: 250,
        };
        let delta = after.since(&before);
        assert_eq!(delta.calls.get("getex"), Some(&10));
        assert_eq!(delta.calls.get("eval"), Some(&2));
        assert_eq!(delta.total_calls(), 12);
        assert_eq!((delta.keyspace_hits, delta.keyspace_misses), (9, 1));
        assert_eq!(delta.cpu_us, 150);
    }
}
