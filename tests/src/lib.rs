//! Test support for the tiered-sessions integration suite: real Redis and Postgres servers
//! that the tests start themselves, and helpers to count what a request cost.
//!
//! - [`RedisServer`]: a private `redis-server` per test, with fault switches (kill,
//!   restart, `SIGSTOP`) and `INFO commandstats` counts.
//! - [`shared_postgres`]: one private Postgres cluster per test binary; each test takes a
//!   fresh database with [`PostgresCluster::create_database`]. Fault tests that stop the
//!   server start their own [`PostgresCluster`].
//! - [`PgStats`]: transactions, row changes and statements of one database.
//! - [`poll_until`] / [`poll_some`]: wait for a condition with a deadline.
//! - [`ChromeDriver`]: headless Chromium sessions for end-to-end tests.
//! - [`RedisCluster`]: six private nodes joined into a Redis Cluster.
//! - [`RedisSentinels`]: a master, a replica and three sentinels.
//! - [`TlsRedis`]: a server with a TLS port, certificates made at test time and an ACL
//!   user.
//! - [`FaultProxy`]: a TCP proxy between the store and a server that injects faults
//!   (delay, blackhole, reset, refuse), undone by a guard on drop.
//!
//! Every server is cleaned up when its value is dropped, and by a watchdog process when
//! the test process dies first, so nothing outlives a test run.
//!
//! ```no_run
//! use tiered_sessions_tests::{shared_postgres, PgStats, RedisServer};
//!
//! // In tests/tests/*.rs, under #[tokio::test]:
//! async fn session_survives_redis_flush() {
//!     let redis = RedisServer::start().await;
//!     let database_url = shared_postgres().await.create_database().await;
//!     // ... build the store from redis.url() and database_url, make a session ...
//!     redis.flushall().await;
//!     let before = PgStats::settled(&database_url).await;
//!     // ... load the session again, close the pool ...
//!     let cost = PgStats::settled(&database_url).await.since(&before);
//!     assert_eq!(cost.n_tup_ins, 0);
//! }
//! ```

mod browser;
mod cluster;
mod net;
mod pg_stats;
mod poll;
mod postgres;
mod process;
mod proxy;
mod redis;
mod sentinel;
mod tls;

pub use browser::{ChromeDriver, CHROMIUM_ARGS};
pub use cluster::RedisCluster;
pub use net::free_port;
pub use pg_stats::{pg_stats, PgStats, SESSIONS_TABLE};
pub use poll::{poll_some, poll_until};
pub use postgres::{shared_postgres, PostgresCluster};
pub use proxy::{Fault, FaultGuard, FaultProxy};
pub use redis::RedisServer;
pub use sentinel::{RedisSentinels, SENTINEL_SERVICE};
pub use tls::{Certs, TlsRedis, TLS_PASSWORD, TLS_USER};

#[cfg(test)]
mod tests;

/// A session record with `{"n": n}` as its data, expiring in 30 minutes, for tests that
/// create sessions through the store directly.
pub fn record(n: i64) -> tiered_sessions::tower_sessions::session::Record {
    tiered_sessions::tower_sessions::session::Record {
        id: tiered_sessions::tower_sessions::session::Id::default(),
        data: [("n".to_owned(), serde_json::json!(n))]
            .into_iter()
            .collect(),
        expiry_date: time::OffsetDateTime::now_utc() + time::Duration::minutes(30),
    }
}
