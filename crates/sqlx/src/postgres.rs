//! The Postgres durable tier.

use std::{str::FromStr, time::Duration};

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use tiered_sessions_core::{DurableTier, StorageKey, StoredSession, TierError, Updated};
use time::OffsetDateTime;

use crate::{
    codec::{self, truncate_to_ms, RawRow},
    migrate, Backend, SqlxDurableError,
};

const BACKEND: Backend = Backend::Postgres;

/// `application_name` of the connections [`PostgresDurable::connect`] opens, so they can be
/// told apart in `pg_stat_activity`.
const APPLICATION_NAME: &str = "tiered-sessions";
/// Pool size of [`PostgresDurable::connect`].
const MAX_CONNECTIONS: u32 = 10;
/// How long [`PostgresDurable::connect`]'s pool waits for a free connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// Key of the transaction-scoped advisory lock that serialises migration runs: the ASCII
/// bytes of `tiersess`. Fixed, so every instance and every release of the crate agree on it.
const MIGRATION_LOCK_KEY: i64 = 0x7469_6572_7365_7373;

const LOAD: &str = "SELECT key, version, created_at, idle_ms, expires_at, data, owner \
     FROM tiered_sessions WHERE key = $1 AND expires_at > $2";
const LIST_OWNED: &str = "SELECT key, version, created_at, idle_ms, expires_at, data, owner \
     FROM tiered_sessions WHERE owner = $1 AND expires_at > $2 ORDER BY expires_at DESC LIMIT $3";
const DELETE_OWNED: &str = "DELETE FROM tiered_sessions WHERE key = $1 AND owner = $2";
const DELETE_ALL_OWNED: &str = "DELETE FROM tiered_sessions \
     WHERE owner = $1 AND key IS DISTINCT FROM $2 RETURNING key";
const INSERT: &str = "INSERT INTO tiered_sessions \
     (key, version, created_at, idle_ms, expires_at, data, owner) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) \
     ON CONFLICT (key) DO NOTHING";
const UPDATE: &str = "UPDATE tiered_sessions \
     SET data = $2, idle_ms = $3, expires_at = $4, owner = $6, version = version + 1 \
     WHERE key = $1 AND expires_at > $5 RETURNING version, created_at";
const TOUCH: &str = "UPDATE tiered_sessions SET expires_at = GREATEST(expires_at, $2) \
     WHERE key = $1 AND expires_at > $3 RETURNING version";
const DELETE: &str = "DELETE FROM tiered_sessions WHERE key = $1";
// SKIP LOCKED lets several sweepers (one per app instance) share the work instead of
// queueing behind each other's row locks.
const DELETE_EXPIRED: &str = "DELETE FROM tiered_sessions WHERE key IN (\
     SELECT key FROM tiered_sessions WHERE expires_at <= $1 \
     ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)";

const CREATE_BOOKKEEPING: &str = "CREATE TABLE IF NOT EXISTS tiered_sessions_migrations (\
     version bigint PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL)";

/// A [`DurableTier`] on Postgres: the source of truth in a tiered deployment.
///
/// Sessions live in one table, `tiered_sessions`, created by [`migrate`](Self::migrate).
/// Every statement compares against the `now` the store passes in, never the database
/// clock, so an injected clock works and app servers and database need not agree on time
/// beyond the expiry slack.
///
/// Cloning is cheap and shares the pool.
#[derive(Debug, Clone)]
pub struct PostgresDurable {
    pool: PgPool,
}

impl PostgresDurable {
    /// Uses an existing pool, for apps that already have one. Its settings (size, timeouts)
    /// are the app's; consider an acquire timeout of a few seconds so a saturated pool fails
    /// a request instead of hanging it.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Connects a pool of its own to `url` (`postgres://user:password@host/database`).
    ///
    /// The pool holds at most 10 connections (sessions are small, single-row statements),
    /// waits at most 2 s for a free connection before failing with a timeout, and names its
    /// connections `application_name=tiered-sessions` unless the URL sets an
    /// `application_name` itself. One connection is opened right away, so an unreachable
    /// server or bad credentials fail here rather than on the first request.
    pub async fn connect(url: &str) -> Result<Self, SqlxDurableError> {
        let err = |source| SqlxDurableError::sqlx(BACKEND, source);
        let mut options = PgConnectOptions::from_str(url).map_err(err)?;
        if options.get_application_name().is_none() {
            options = options.application_name(APPLICATION_NAME);
        }
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(err)?;
        Ok(Self::new(pool))
    }

    /// The connection pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Creates or upgrades the schema: applies, in order, every migration shipped with this
    /// crate that the database has not recorded in `tiered_sessions_migrations`.
    ///
    /// Idempotent, and safe to call from every instance at start-up: all of it runs in one
    /// transaction that first takes a transaction-scoped advisory lock, so concurrent runs
    /// wait for each other and then find nothing to do. A failing migration rolls the whole
    /// run back. Migrations recorded by a newer release of this crate are left alone.
    pub async fn migrate(&self) -> Result<(), SqlxDurableError> {
        let err = |source| SqlxDurableError::sqlx(BACKEND, source);
        let mut tx = self.pool.begin().await.map_err(err)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK_KEY)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        // Postgres sends a NOTICE for `CREATE TABLE IF NOT EXISTS` on an existing table, and
        // sqlx logs notices at INFO: every start-up would log one.
        sqlx::query("SET LOCAL client_min_messages = warning")
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        sqlx::query(CREATE_BOOKKEEPING)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        let applied: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM tiered_sessions_migrations")
                .fetch_all(&mut *tx)
                .await
                .map_err(err)?;
        migrate::note_unknown(BACKEND, migrate::POSTGRES, &applied);

        for migration in migrate::POSTGRES {
            if applied.contains(&migration.version) {
                continue;
            }
            tracing::info!(
                backend = %BACKEND,
                version = migration.version,
                name = migration.name,
                "applying tiered_sessions migration"
            );
            let failed = |source| SqlxDurableError::Migration {
                backend: BACKEND,
                version: migration.version,
                name: migration.name,
                source,
            };
            sqlx::raw_sql(migration.sql)
                .execute(&mut *tx)
                .await
                .map_err(failed)?;
            sqlx::query(
                "INSERT INTO tiered_sessions_migrations (version, name, applied_at) \
                 VALUES ($1, $2, $3)",
            )
            .bind(migration.version)
            .bind(migration.name)
            .bind(truncate_to_ms(OffsetDateTime::now_utc()))
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        }
        tx.commit().await.map_err(err)
    }
}

fn db_err(source: sqlx::Error) -> TierError {
    SqlxDurableError::sqlx(BACKEND, source).into()
}

type Row = (
    Vec<u8>,
    i64,
    OffsetDateTime,
    i64,
    OffsetDateTime,
    Vec<u8>,
    Option<String>,
);

fn from_row(row: Row) -> Result<StoredSession, TierError> {
    let (key, version, created_at, idle_ms, expires_at, data, owner) = row;
    let raw = RawRow {
        key,
        version,
        created_at,
        idle_ms,
        expires_at,
        data,
        owner,
    };
    Ok(raw.into_session(BACKEND)?)
}

#[async_trait]
impl DurableTier for PostgresDurable {
    async fn load(
        &self,
        key: &StorageKey,
        now: OffsetDateTime,
    ) -> Result<Option<StoredSession>, TierError> {
        let row: Option<Row> = sqlx::query_as(LOAD)
            .bind(key.as_bytes().as_slice())
            .bind(truncate_to_ms(now))
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.map(from_row).transpose()
    }

    async fn insert(&self, session: &StoredSession) -> Result<bool, TierError> {
        let done = sqlx::query(INSERT)
            .bind(session.key.as_bytes().as_slice())
            .bind(codec::version_to_db(BACKEND, session.version)?)
            .bind(truncate_to_ms(session.created_at))
            .bind(codec::idle_to_db(BACKEND, session.idle_timeout)?)
            .bind(truncate_to_ms(session.expires_at))
            .bind(session.data.as_slice())
            .bind(session.owner.as_deref())
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(done.rows_affected() == 1)
    }

    async fn update(
        &self,
        key: &StorageKey,
        data: &[u8],
        idle_timeout: Duration,
        expires_at: OffsetDateTime,
        owner: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<Option<Updated>, TierError> {
        let row: Option<(i64, OffsetDateTime)> = sqlx::query_as(UPDATE)
            .bind(key.as_bytes().as_slice())
            .bind(data)
            .bind(codec::idle_to_db(BACKEND, idle_timeout)?)
            .bind(truncate_to_ms(expires_at))
            .bind(truncate_to_ms(now))
            .bind(owner)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        let Some((version, created_at)) = row else {
            return Ok(None);
        };
        Ok(Some(Updated {
            version: codec::version_from_db(BACKEND, version)?,
            created_at,
        }))
    }

    async fn touch(
        &self,
        key: &StorageKey,
        expires_at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<Option<u64>, TierError> {
        let version: Option<i64> = sqlx::query_scalar(TOUCH)
            .bind(key.as_bytes().as_slice())
            .bind(truncate_to_ms(expires_at))
            .bind(truncate_to_ms(now))
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(version
            .map(|v| codec::version_from_db(BACKEND, v))
            .transpose()?)
    }

    async fn delete(&self, key: &StorageKey) -> Result<(), TierError> {
        sqlx::query(DELETE)
            .bind(key.as_bytes().as_slice())
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn delete_expired(&self, now: OffsetDateTime, batch_size: u32) -> Result<u64, TierError> {
        let done = sqlx::query(DELETE_EXPIRED)
            .bind(truncate_to_ms(now))
            .bind(i64::from(batch_size))
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(done.rows_affected())
    }

    async fn list_owned(
        &self,
        owner: &str,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<StoredSession>, TierError> {
        let rows: Vec<Row> = sqlx::query_as(LIST_OWNED)
            .bind(owner)
            .bind(truncate_to_ms(now))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.into_iter().map(from_row).collect()
    }

    async fn delete_owned(&self, owner: &str, key: &StorageKey) -> Result<bool, TierError> {
        let done = sqlx::query(DELETE_OWNED)
            .bind(key.as_bytes().as_slice())
            .bind(owner)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(done.rows_affected() > 0)
    }

    async fn delete_all_owned(
        &self,
        owner: &str,
        keep: Option<&StorageKey>,
    ) -> Result<Vec<StorageKey>, TierError> {
        let keys: Vec<Vec<u8>> = sqlx::query_scalar(DELETE_ALL_OWNED)
            .bind(owner)
            .bind(keep.map(|k| k.as_bytes().as_slice()))
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        keys.iter()
            .map(|k| Ok(codec::key_from_db(BACKEND, k)?))
            .collect()
    }

    async fn ping(&self) -> Result<(), TierError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }
    async fn epoch(&self) -> Result<u64, TierError> {
        let epoch: i64 =
            sqlx::query_scalar("SELECT epoch FROM tiered_sessions_cache_epoch WHERE id = 1")
                .fetch_one(&self.pool)
                .await
                .map_err(db_err)?;
        Ok(u64::try_from(epoch).unwrap_or(0))
    }

    async fn observe_cache(&self, identity: &str) -> Result<u64, TierError> {
        // One statement: the UPDATE only matches (and bumps) when the identity changed.
        let epoch: i64 = sqlx::query_scalar(
            "WITH bumped AS (
                UPDATE tiered_sessions_cache_epoch
                SET epoch = epoch + 1, cache_identity = $1
                WHERE id = 1 AND cache_identity IS DISTINCT FROM $1
                RETURNING epoch
            )
            SELECT epoch FROM bumped
            UNION ALL
            SELECT epoch FROM tiered_sessions_cache_epoch
            WHERE id = 1 AND NOT EXISTS (SELECT 1 FROM bumped)",
        )
        .bind(identity)
        .fetch_one(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(u64::try_from(epoch).unwrap_or(0))
    }

    async fn bump_epoch(&self) -> Result<u64, TierError> {
        let epoch: i64 = sqlx::query_scalar(
            "UPDATE tiered_sessions_cache_epoch SET epoch = epoch + 1 WHERE id = 1 RETURNING epoch",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(u64::try_from(epoch).unwrap_or(0))
    }
}
