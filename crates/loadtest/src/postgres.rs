//! What a workload cost Postgres, from its statistics views.
//!
//! `pg_stat_statements` (when the server preloads it) is exact and immediate: a
//! statement's calls, rows and WAL bytes are counted the moment it finishes, so a snapshot
//! before and after a round attributes them to that round. Without it the tool falls back
//! to `pg_stat_database`, `pg_stat_user_tables` and `pg_stat_wal`, which backends publish
//! up to a second late (more when a connection goes idle): those numbers are marked
//! approximate.

use std::str::FromStr;

use sqlx::{
    postgres::{PgConnectOptions, PgConnection},
    Connection, Row,
};

use crate::error::{chain, redact, Error, Result};

/// Marks the tool's own statistics queries, to leave them out of `pg_stat_statements`.
const MARKER: &str = "session-loadtest:meter";

/// Tables the backends write: the tiered store's, and tower-sessions-sqlx-store's.
const TABLES: &str = "'tiered_sessions', 'session'";

/// Cumulative counters of one database.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PgCounters {
    /// Statements executed (with `pg_stat_statements`; `BEGIN`/`COMMIT` included), or
    /// committed transactions (without it).
    pub statements: u64,
    /// Rows inserted, updated or deleted.
    pub row_writes: u64,
    /// WAL bytes written.
    pub wal_bytes: u64,
}

impl PgCounters {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &PgCounters) -> PgCounters {
        PgCounters {
            statements: self.statements.saturating_sub(earlier.statements),
            row_writes: self.row_writes.saturating_sub(earlier.row_writes),
            wal_bytes: self.wal_bytes.saturating_sub(earlier.wal_bytes),
        }
    }

    /// Adds `other` to `self`.
    pub fn add(&mut self, other: &PgCounters) {
        self.statements += other.statements;
        self.row_writes += other.row_writes;
        self.wal_bytes += other.wal_bytes;
    }
}

/// One connection that reads the statistics of the database the backends use.
#[derive(Debug)]
pub struct PgMeter {
    conn: PgConnection,
    statements_view: bool,
    version: String,
}

/// Connects to `url` with the tool's `application_name`, as a one-line error on failure.
pub async fn connect(url: &str) -> Result<PgConnection> {
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| Error::Url {
            what: "--database-url",
            url: redact(url),
            reason: format!("{e}; expected postgres://user[:password]@host[:port]/database"),
        })?
        .application_name("session-loadtest");
    let connect = PgConnection::connect_with(&options);
    match tokio::time::timeout(std::time::Duration::from_secs(5), connect).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(Error::Connect {
            what: "Postgres",
            url: redact(url),
            reason: format!(
                "{}; is the server running, and do the user and database exist? (or use --spawn-servers)",
                chain(&e)
            ),
        }),
        Err(_) => Err(Error::Connect {
            what: "Postgres",
            url: redact(url),
            reason: "no answer within 5 s".into(),
        }),
    }
}

impl PgMeter {
    /// Connects, and turns on `pg_stat_statements` in the database if the server preloads
    /// it and the user may create the extension.
    pub async fn connect(url: &str) -> Result<PgMeter> {
        let mut conn = connect(url).await?;
        let version: String = sqlx::query_scalar("SHOW server_version")
            .fetch_one(&mut conn)
            .await
            .unwrap_or_default();
        let preloaded: bool = sqlx::query_scalar(
            "SELECT current_setting('shared_preload_libraries') LIKE '%pg_stat_statements%'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap_or(false);
        let mut statements_view = false;
        if preloaded {
            // Best effort: without the privilege the fallback counters still work.
            let _ = sqlx::raw_sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                .execute(&mut conn)
                .await;
            statements_view = sqlx::raw_sql("SELECT 1 FROM pg_stat_statements LIMIT 1")
                .execute(&mut conn)
                .await
                .is_ok();
        }
        Ok(PgMeter {
            conn,
            statements_view,
            version,
        })
    }

    /// Whether the counts are exact (`pg_stat_statements`) rather than approximate.
    pub fn exact(&self) -> bool {
        self.statements_view
    }

    /// The server version, for the report.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The counters now.
    pub async fn read(&mut self) -> Result<PgCounters, sqlx::Error> {
        let sql = if self.statements_view {
            format!(
                "SELECT /* {MARKER} */ coalesce(sum(calls), 0)::int8, \
                 coalesce(sum(rows) FILTER (WHERE query ~* '^\\s*(insert|update|delete)'), 0)::int8, \
                 coalesce(sum(wal_bytes), 0)::int8 \
                 FROM pg_stat_statements \
                 WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                 AND strpos(query, '{MARKER}') = 0"
            )
        } else {
            format!(
                "SELECT /* {MARKER} */ \
                 (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database())::int8, \
                 (SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) FROM pg_stat_user_tables \
                  WHERE relname IN ({TABLES}))::int8, \
                 (SELECT wal_bytes FROM pg_stat_wal)::int8"
            )
        };
        let row = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .fetch_one(&mut self.conn)
            .await?;
        let get = |i: usize| -> u64 {
            row.try_get::<Option<i64>, _>(i)
                .ok()
                .flatten()
                .map_or(0, |v| u64::try_from(v).unwrap_or(0))
        };
        Ok(PgCounters {
            statements: get(0),
            row_writes: get(1),
            wal_bytes: get(2),
        })
    }
}
