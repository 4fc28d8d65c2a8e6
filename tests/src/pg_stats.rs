//! What the code under test cost in Postgres: transactions, row changes, statements.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, Connection, PgConnection, Row};

use crate::postgres::SUPPORT_APP;

/// The table the durable tier writes (`tiered_sessions`).
pub const SESSIONS_TABLE: &str = "tiered_sessions";

/// Marks the one statement a snapshot runs in the measured database, to leave it out of
/// [`PgStats::statements`].
const MARKER: &str = "tiered-sessions-tests:pg_stats";
/// Transactions one snapshot adds to the measured database: its connection's startup
/// transaction and the one read of `pg_stat_user_tables`.
const OWN_XACTS_PER_SNAPSHOT: u64 = 2;
/// How long [`PgStats::settled`] waits for the other connections to close.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a snapshot waits for its own backend to exit (and so flush its counters).
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Snapshots taken per database, keyed `host:port/db`, to subtract their transactions.
static SNAPSHOTS: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

/// Cumulative statistics of one database, for counting what the code under test did
/// between two snapshots: take one before, one after, and compare with [`since`](Self::since).
///
/// Where each number comes from, and why it is exact:
/// - `xact_commit`/`xact_rollback` are `pg_stat_database` for the database, read over a
///   connection to the `postgres` database so the read itself adds nothing. A snapshot
///   also connects to the measured database once (for the table counters), which commits
///   two transactions there (connection startup + the read); every snapshot waits until
///   that backend has exited, so its counts are flushed, and later snapshots subtract them.
///   Do not take two snapshots of the same database concurrently.
/// - `n_tup_*` are `pg_stat_user_tables` for [`SESSIONS_TABLE`] (summed over schemas),
///   which a read does not change.
/// - `statements` is `pg_stat_statements` (normalized query text → calls) for the
///   database, `None` when the server does not preload it. Unlike the others it is
///   updated the moment a statement finishes. Utility statements (`BEGIN`, `COMMIT`)
///   count; the snapshot's own read is left out.
///
/// Postgres counts more transactions than an app issues: every new connection commits
/// one at startup, each autocommit statement is one, and so is each statement sqlx
/// prepares outside a transaction (the first run of a query on a connection: its
/// Parse/Describe/Sync commits on its own). A backend publishes its
/// counters when it exits, or when it goes idle at most once a second; a backend that
/// published less than a second ago holds the rest for up to 10 s of idleness
/// (`PGSTAT_IDLE_INTERVAL`, observed here). So an idle pool is not enough: close the pool
/// under test (`pool.close().await`) and use [`settled`](Self::settled).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PgStats {
    /// Committed transactions in the database, not counting this crate's own snapshots.
    pub xact_commit: u64,
    /// Rolled-back transactions in the database.
    pub xact_rollback: u64,
    /// Rows inserted into [`SESSIONS_TABLE`].
    pub n_tup_ins: u64,
    /// Rows updated in [`SESSIONS_TABLE`] (HOT updates included).
    pub n_tup_upd: u64,
    /// Rows deleted from [`SESSIONS_TABLE`].
    pub n_tup_del: u64,
    /// Calls per normalized statement, from `pg_stat_statements`; `None` if unavailable.
    pub statements: Option<BTreeMap<String, u64>>,
}

impl PgStats {
    /// The database's statistics now, as far as backends have published them.
    ///
    /// Exact only once every connection that did work has closed (see the type docs);
    /// prefer [`settled`](Self::settled) for counting.
    pub async fn snapshot(url: &str) -> PgStats {
        read(url, false).await
    }

    /// Waits until no client connection other than its own is open on the database
    /// (which means every backend that worked there has exited and published its
    /// counters), then takes a [`snapshot`](Self::snapshot): exact counts.
    ///
    /// Close the pool under test first (`pool.close().await`; a store holding a clone
    /// shares it). Panics if connections are still open after 30 s.
    pub async fn settled(url: &str) -> PgStats {
        read(url, true).await
    }

    /// The change from `earlier` to `self`: counters subtracted, statements whose call
    /// count did not change left out (`None` if either side has no statements).
    pub fn since(&self, earlier: &PgStats) -> PgStats {
        let statements = match (&self.statements, &earlier.statements) {
            (Some(now), Some(before)) => Some(
                now.iter()
                    .filter_map(|(query, calls)| {
                        let delta = calls.saturating_sub(before.get(query).copied().unwrap_or(0));
                        (delta > 0).then(|| (query.clone(), delta))
                    })
                    .collect(),
            ),
            _ => None,
        };
        PgStats {
            xact_commit: self.xact_commit.saturating_sub(earlier.xact_commit),
            xact_rollback: self.xact_rollback.saturating_sub(earlier.xact_rollback),
            n_tup_ins: self.n_tup_ins.saturating_sub(earlier.n_tup_ins),
            n_tup_upd: self.n_tup_upd.saturating_sub(earlier.n_tup_upd),
            n_tup_del: self.n_tup_del.saturating_sub(earlier.n_tup_del),
            statements,
        }
    }

    /// Total statement calls, or `None` without `pg_stat_statements`.
    pub fn statement_calls(&self) -> Option<u64> {
        self.statements
            .as_ref()
            .map(|statements| statements.values().sum())
    }

    /// Calls of statements whose text contains `needle`, ignoring ASCII case, e.g.
    /// `"update tiered_sessions"`; `None` without `pg_stat_statements`.
    pub fn calls_matching(&self, needle: &str) -> Option<u64> {
        let needle = needle.to_ascii_lowercase();
        self.statements.as_ref().map(|statements| {
            statements
                .iter()
                .filter(|(query, _)| query.to_ascii_lowercase().contains(&needle))
                .map(|(_, calls)| calls)
                .sum()
        })
    }
}

/// [`PgStats::snapshot`] of the database at `url`.
pub async fn pg_stats(url: &str) -> PgStats {
    PgStats::snapshot(url).await
}

async fn read(url: &str, settle: bool) -> PgStats {
    let target: PgConnectOptions = url
        .parse()
        .unwrap_or_else(|err| panic!("not a Postgres URL: {url}: {err}"));
    let db = target
        .get_database()
        .unwrap_or_else(|| panic!("{url} names no database"))
        .to_owned();
    let key = format!("{}:{}/{db}", target.get_host(), target.get_port());
    let target = target.application_name(SUPPORT_APP);

    // Everything but the table counters is read from the `postgres` database, where reading
    // does not disturb the measured one.
    let admin_options = target.clone().database("postgres");
    let mut admin = PgConnection::connect_with(&admin_options)
        .await
        .unwrap_or_else(|err| {
            panic!("cannot connect to the postgres database behind {url}: {err}")
        });
    if settle {
        wait_for_no_clients(&mut admin, &db).await;
    }
    let (xact_commit, xact_rollback): (i64, i64) = sqlx::query_as(
        "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = $1",
    )
    .bind(&db)
    .fetch_optional(&mut admin)
    .await
    .expect("pg_stat_database query failed")
    .unwrap_or_else(|| panic!("no database {db} behind {url}"));
    let statements = read_statements(&mut admin, &db).await;

    let (pid, n_tup_ins, n_tup_upd, n_tup_del) = read_table(&target).await;
    wait_for_exit(&mut admin, pid).await;
    let _ = admin.close().await;

    let earlier_snapshots = {
        let mut snapshots = SNAPSHOTS.lock().unwrap_or_else(PoisonError::into_inner);
        let count = snapshots.entry(key).or_default();
        *count += 1;
        *count - 1
    };
    PgStats {
        xact_commit: count(xact_commit).saturating_sub(earlier_snapshots * OWN_XACTS_PER_SNAPSHOT),
        xact_rollback: count(xact_rollback),
        n_tup_ins,
        n_tup_upd,
        n_tup_del,
        statements,
    }
}

/// Table counters, read over the snapshot's one connection to the measured database.
///
/// Uses the simple query protocol so the read is exactly one transaction.
async fn read_table(target: &PgConnectOptions) -> (i32, u64, u64, u64) {
    let mut conn = PgConnection::connect_with(target)
        .await
        .expect("cannot connect to the measured database");
    let sql = format!(
        "SELECT /* {MARKER} */ pg_backend_pid(), \
         coalesce(sum(n_tup_ins), 0)::int8, coalesce(sum(n_tup_upd), 0)::int8, \
         coalesce(sum(n_tup_del), 0)::int8 \
         FROM pg_stat_user_tables WHERE relname = '{SESSIONS_TABLE}'"
    );
    let row = sqlx::raw_sql(AssertSqlSafe(sql))
        .fetch_one(&mut conn)
        .await
        .expect("pg_stat_user_tables query failed");
    let get = |index: usize| -> u64 {
        count(
            row.try_get::<i64, _>(index)
                .expect("pg_stat_user_tables column is int8"),
        )
    };
    let pid: i32 = row.try_get(0).expect("pg_backend_pid() is int4");
    let counters = (pid, get(1), get(2), get(3));
    let _ = conn.close().await;
    counters
}

/// `None` unless `pg_stat_statements` is both preloaded and created in `postgres`.
async fn read_statements(admin: &mut PgConnection, db: &str) -> Option<BTreeMap<String, u64>> {
    let available: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'pg_stat_statements') \
         AND current_setting('shared_preload_libraries') LIKE '%pg_stat_statements%'",
    )
    .fetch_one(&mut *admin)
    .await
    .expect("pg_extension query failed");
    if !available {
        return None;
    }
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT s.query, sum(s.calls)::int8 FROM pg_stat_statements s \
         JOIN pg_database d ON d.oid = s.dbid \
         WHERE d.datname = $1 AND strpos(s.query, $2) = 0 GROUP BY s.query",
    )
    .bind(db)
    .bind(MARKER)
    .fetch_all(&mut *admin)
    .await
    .expect("pg_stat_statements query failed");
    Some(
        rows.into_iter()
            .map(|(query, calls)| (query, count(calls)))
            .collect(),
    )
}

async fn wait_for_no_clients(admin: &mut PgConnection, db: &str) {
    let until = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = $1 AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
        )
        .bind(db)
        .fetch_one(&mut *admin)
        .await
        .expect("pg_stat_activity query failed");
        if open == 0 {
            return;
        }
        assert!(
            Instant::now() < until,
            "{open} connections to {db} still open after {SETTLE_TIMEOUT:?}: close the pool under \
             test (`pool.close().await`) before PgStats::settled; an idle backend may hold its \
             statistics back for 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until backend `pid` is gone from `pg_stat_activity`. A backend publishes its
/// statistics on exit before it leaves `pg_stat_activity`, so after this its
/// transactions are in `pg_stat_database`.
async fn wait_for_exit(admin: &mut PgConnection, pid: i32) {
    let until = Instant::now() + EXIT_TIMEOUT;
    loop {
        let alive: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $1)")
                .bind(pid)
                .fetch_one(&mut *admin)
                .await
                .expect("pg_stat_activity query failed");
        if !alive {
            return;
        }
        assert!(
            Instant::now() < until,
            "backend {pid} still alive {EXIT_TIMEOUT:?} after its connection closed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Postgres counters are `bigint` but never negative.
fn count(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}
