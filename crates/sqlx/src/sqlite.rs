//! The SQLite durable tier, for the embedded default.

use std::{
    str::FromStr,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use tiered_sessions_core::{DurableTier, StorageKey, StoredSession, TierError, Updated};
use time::OffsetDateTime;

use crate::{
    codec::{self, from_unix_ms, to_unix_ms, RawRow},
    migrate, Backend, SqlxDurableError,
};

const BACKEND: Backend = Backend::Sqlite;

/// How long a statement of [`SqliteDurable::connect`]'s pool waits for another connection's
/// write lock before failing with a timeout.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between attempts to open a database that another process is switching to WAL.
const OPEN_RETRY_DELAY: Duration = Duration::from_millis(20);

const LOAD: &str = "SELECT key, version, created_at, idle_ms, expires_at, data, owner \
     FROM tiered_sessions WHERE key = ?1 AND expires_at > ?2";
const LIST_OWNED: &str = "SELECT key, version, created_at, idle_ms, expires_at, data, owner \
     FROM tiered_sessions WHERE owner = ?1 AND expires_at > ?2 ORDER BY expires_at DESC LIMIT ?3";
const DELETE_OWNED: &str = "DELETE FROM tiered_sessions WHERE key = ?1 AND owner = ?2";
const DELETE_ALL_OWNED: &str = "DELETE FROM tiered_sessions \
     WHERE owner = ?1 AND key IS NOT ?2 RETURNING key";
const INSERT: &str = "INSERT INTO tiered_sessions \
     (key, version, created_at, idle_ms, expires_at, data, owner) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
     ON CONFLICT (key) DO NOTHING";
const UPDATE: &str = "UPDATE tiered_sessions \
     SET data = ?2, idle_ms = ?3, expires_at = ?4, owner = ?6, version = version + 1 \
     WHERE key = ?1 AND expires_at > ?5 RETURNING version, created_at";
const TOUCH: &str = "UPDATE tiered_sessions SET expires_at = MAX(expires_at, ?2) \
     WHERE key = ?1 AND expires_at > ?3 RETURNING version";
const DELETE: &str = "DELETE FROM tiered_sessions WHERE key = ?1";
const DELETE_EXPIRED: &str = "DELETE FROM tiered_sessions WHERE rowid IN (\
     SELECT rowid FROM tiered_sessions WHERE expires_at <= ?1 ORDER BY expires_at LIMIT ?2)";

const CREATE_BOOKKEEPING: &str = "CREATE TABLE IF NOT EXISTS tiered_sessions_migrations (\
     version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL) STRICT";

/// A [`DurableTier`] on a SQLite file: the durable tier of the embedded default, for a
/// single machine.
///
/// Sessions live in one table, `tiered_sessions`, created by [`migrate`](Self::migrate);
/// times are stored as unix milliseconds. Every statement compares against the `now` the
/// store passes in, never SQLite's clock.
///
/// Cloning is cheap and shares the pool.
#[derive(Debug, Clone)]
pub struct SqliteDurable {
    pool: SqlitePool,
}

impl SqliteDurable {
    /// Uses an existing pool. Use WAL journal mode and a busy timeout of a few seconds, as
    /// [`connect`](Self::connect) does, or concurrent requests fail with `SQLITE_BUSY`.
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }

    /// Opens the database at `url_or_path`: a `sqlite:` URL (`sqlite://sessions.db`,
    /// `sqlite::memory:`) or a plain file path.
    ///
    /// The file is created if missing and put in WAL journal mode, so reads do not wait for
    /// writes; a statement waits up to 5 s for another connection's write lock. Other pool
    /// settings are sqlx's defaults. An in-memory database lives only as long as the pool
    /// keeps a connection open: use a file for anything but tests.
    pub async fn connect(url_or_path: &str) -> Result<Self, SqlxDurableError> {
        let err = |source| SqlxDurableError::sqlx(BACKEND, source);
        let options = if url_or_path.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(url_or_path).map_err(err)?
        } else {
            SqliteConnectOptions::new().filename(url_or_path)
        };
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(BUSY_TIMEOUT);
        // Turning a new file into WAL mode takes an exclusive lock that SQLite's busy timeout
        // does not wait for, so when several processes open the same new file at once all
        // but one fail with SQLITE_BUSY. Once the file is in WAL mode (it stays so) opening
        // it again is a no-op: retry within the busy timeout.
        let deadline = Instant::now() + BUSY_TIMEOUT;
        let pool = loop {
            match SqlitePoolOptions::new().connect_with(options.clone()).await {
                Ok(pool) => break pool,
                Err(e) if is_busy(&e) && Instant::now() < deadline => {
                    tokio::time::sleep(OPEN_RETRY_DELAY).await;
                }
                Err(e) => return Err(err(e)),
            }
        };
        Ok(Self::new(pool))
    }

    /// The connection pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Creates or upgrades the schema: applies, in order, every migration shipped with this
    /// crate that the database has not recorded in `tiered_sessions_migrations`.
    ///
    /// Idempotent and safe to call from several processes at once: all of it runs in one
    /// `BEGIN IMMEDIATE` transaction, which takes the database's write lock first, so
    /// concurrent runs wait for each other (up to the busy timeout) and then find nothing to
    /// do. A failing migration rolls the whole run back. Migrations recorded by a newer
    /// release of this crate are left alone.
    pub async fn migrate(&self) -> Result<(), SqlxDurableError> {
        let err = |source| SqlxDurableError::sqlx(BACKEND, source);
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(err)?;
        sqlx::query(CREATE_BOOKKEEPING)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        let applied: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM tiered_sessions_migrations")
                .fetch_all(&mut *tx)
                .await
                .map_err(err)?;
        migrate::note_unknown(BACKEND, migrate::SQLITE, &applied);

        for migration in migrate::SQLITE {
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
                 VALUES (?1, ?2, ?3)",
            )
            .bind(migration.version)
            .bind(migration.name)
            .bind(to_unix_ms(
                BACKEND,
                "applied_at",
                OffsetDateTime::now_utc(),
            )?)
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        }
        tx.commit().await.map_err(err)
    }
}

/// Whether SQLite reported SQLITE_BUSY (primary result code 5, any extended code).
fn is_busy(err: &sqlx::Error) -> bool {
    const SQLITE_BUSY: i32 = 5;
    let sqlx::Error::Database(db_err) = err else {
        return false;
    };
    db_err
        .code()
        .and_then(|code| code.parse::<i32>().ok())
        .is_some_and(|code| code & 0xff == SQLITE_BUSY)
}

fn db_err(source: sqlx::Error) -> TierError {
    SqlxDurableError::sqlx(BACKEND, source).into()
}

type Row = (Vec<u8>, i64, i64, i64, i64, Vec<u8>, Option<String>);

fn from_row(row: Row) -> Result<StoredSession, TierError> {
    let (key, version, created_at, idle_ms, expires_at, data, owner) = row;
    let raw = RawRow {
        key,
        version,
        created_at: from_unix_ms(BACKEND, "created_at", created_at)?,
        idle_ms,
        expires_at: from_unix_ms(BACKEND, "expires_at", expires_at)?,
        data,
        owner,
    };
    Ok(raw.into_session(BACKEND)?)
}

#[async_trait]
impl DurableTier for SqliteDurable {
    async fn load(
        &self,
        key: &StorageKey,
        now: OffsetDateTime,
    ) -> Result<Option<StoredSession>, TierError> {
        let row: Option<Row> = sqlx::query_as(LOAD)
            .bind(key.as_bytes().as_slice())
            .bind(to_unix_ms(BACKEND, "now", now)?)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        row.map(from_row).transpose()
    }

    async fn insert(&self, session: &StoredSession) -> Result<bool, TierError> {
        let done = sqlx::query(INSERT)
            .bind(session.key.as_bytes().as_slice())
            .bind(codec::version_to_db(BACKEND, session.version)?)
            .bind(to_unix_ms(BACKEND, "created_at", session.created_at)?)
            .bind(codec::idle_to_db(BACKEND, session.idle_timeout)?)
            .bind(to_unix_ms(BACKEND, "expires_at", session.expires_at)?)
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
        let row: Option<(i64, i64)> = sqlx::query_as(UPDATE)
            .bind(key.as_bytes().as_slice())
            .bind(data)
            .bind(codec::idle_to_db(BACKEND, idle_timeout)?)
            .bind(to_unix_ms(BACKEND, "expires_at", expires_at)?)
            .bind(to_unix_ms(BACKEND, "now", now)?)
            .bind(owner)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        let Some((version, created_at)) = row else {
            return Ok(None);
        };
        Ok(Some(Updated {
            version: codec::version_from_db(BACKEND, version)?,
            created_at: from_unix_ms(BACKEND, "created_at", created_at)?,
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
            .bind(to_unix_ms(BACKEND, "expires_at", expires_at)?)
            .bind(to_unix_ms(BACKEND, "now", now)?)
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
            .bind(to_unix_ms(BACKEND, "now", now)?)
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
            .bind(to_unix_ms(BACKEND, "now", now)?)
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
        // SQLite has no data-modifying CTEs: bump if the identity changed, then read. A bump
        // by another instance in between only makes the epoch read higher, which is safe.
        sqlx::query(
            "UPDATE tiered_sessions_cache_epoch SET epoch = epoch + 1, cache_identity = ?1
             WHERE id = 1 AND cache_identity IS NOT ?1",
        )
        .bind(identity)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        self.epoch().await
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

#[cfg(test)]
mod tests {
    use std::error::Error;

    use time::macros::datetime;

    use super::*;

    type TestResult = Result<(), Box<dyn Error>>;

    /// A fixed clock: every time in these tests is relative to it, with millisecond
    /// precision so that what is written compares equal to what is read back.
    const NOW: OffsetDateTime = datetime!(2024-06-01 12:00:00.250 UTC);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn key(n: u8) -> StorageKey {
        StorageKey::from_bytes([n; 32])
    }

    fn session(n: u8, expires_at: OffsetDateTime) -> StoredSession {
        StoredSession {
            key: key(n),
            version: 1,
            created_at: NOW,
            idle_timeout: secs(60),
            expires_at,
            data: vec![n; 16],
            owner: None,
        }
    }

    /// A migrated database in a fresh temporary directory, removed on drop.
    async fn open() -> Result<(SqliteDurable, tempfile::TempDir), Box<dyn Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("sessions.db");
        let durable = SqliteDurable::connect(path.to_str().ok_or("non-UTF-8 temp path")?).await?;
        durable.migrate().await?;
        Ok((durable, dir))
    }

    async fn count(durable: &SqliteDurable, table_query: &'static str) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(table_query)
            .fetch_one(durable.pool())
            .await
    }

    #[tokio::test]
    async fn migrate_twice_is_idempotent() -> TestResult {
        let (durable, _dir) = open().await?;
        durable.migrate().await?;
        let recorded = count(&durable, "SELECT COUNT(*) FROM tiered_sessions_migrations").await?;
        assert_eq!(recorded, i64::try_from(migrate::SQLITE.len())?);
        assert!(durable.insert(&session(1, NOW + secs(60))).await?);
        durable.migrate().await?;
        assert!(durable.load(&key(1), NOW).await?.is_some());
        Ok(())
    }

    #[tokio::test]
    async fn concurrent_migrations_apply_each_migration_once() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("sessions.db");
        let path = path.to_str().ok_or("non-UTF-8 temp path")?.to_owned();
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let path = path.clone();
            tasks.push(tokio::spawn(async move {
                let durable = SqliteDurable::connect(&path).await?;
                durable.migrate().await?;
                Ok::<_, SqlxDurableError>(durable)
            }));
        }
        let mut last = None;
        for task in tasks {
            last = Some(task.await??);
        }
        let durable = last.ok_or("no task ran")?;
        let recorded = count(&durable, "SELECT COUNT(*) FROM tiered_sessions_migrations").await?;
        assert_eq!(recorded, i64::try_from(migrate::SQLITE.len())?);
        Ok(())
    }

    #[tokio::test]
    async fn load_returns_what_was_inserted() -> TestResult {
        let (durable, _dir) = open().await?;
        let stored = session(1, NOW + secs(60));
        assert!(durable.insert(&stored).await?);
        assert_eq!(durable.load(&key(1), NOW).await?, Some(stored));
        assert_eq!(durable.load(&key(2), NOW).await?, None);
        Ok(())
    }

    #[tokio::test]
    async fn times_are_stored_to_the_millisecond() -> TestResult {
        let (durable, _dir) = open().await?;
        let mut stored = session(1, datetime!(2024-06-01 12:01:00.123_456_789 UTC));
        stored.created_at = datetime!(2024-06-01 11:00:00.999_999 UTC);
        stored.idle_timeout = Duration::from_micros(1_500_700);
        assert!(durable.insert(&stored).await?);
        let loaded = durable
            .load(&key(1), NOW)
            .await?
            .ok_or("session not found")?;
        assert_eq!(loaded.expires_at, datetime!(2024-06-01 12:01:00.123 UTC));
        assert_eq!(loaded.created_at, datetime!(2024-06-01 11:00:00.999 UTC));
        assert_eq!(loaded.idle_timeout, Duration::from_millis(1_500));
        Ok(())
    }

    #[tokio::test]
    async fn load_ignores_expired_rows() -> TestResult {
        let (durable, _dir) = open().await?;
        assert!(durable.insert(&session(1, NOW + secs(10))).await?);
        assert!(durable.load(&key(1), NOW + secs(9)).await?.is_some());
        // Expired at exactly `expires_at`.
        assert!(durable.load(&key(1), NOW + secs(10)).await?.is_none());
        assert!(durable.load(&key(1), NOW + secs(11)).await?.is_none());
        Ok(())
    }

    #[tokio::test]
    async fn insert_conflict_returns_false_and_leaves_the_first_row_intact() -> TestResult {
        let (durable, _dir) = open().await?;
        let first = session(1, NOW + secs(60));
        assert!(durable.insert(&first).await?);
        let second = StoredSession {
            version: 7,
            data: b"someone else".to_vec(),
            expires_at: NOW + secs(600),
            ..first.clone()
        };
        assert!(!durable.insert(&second).await?);
        assert_eq!(durable.load(&key(1), NOW).await?, Some(first));
        Ok(())
    }

    #[tokio::test]
    async fn update_increments_version_and_never_recreates_a_deleted_row() -> TestResult {
        let (durable, _dir) = open().await?;
        assert!(durable.insert(&session(1, NOW + secs(60))).await?);

        let updated = durable
            .update(&key(1), b"new", secs(120), NOW + secs(120), None, NOW)
            .await?;
        assert_eq!(
            updated,
            Some(Updated {
                version: 2,
                created_at: NOW
            })
        );
        let loaded = durable
            .load(&key(1), NOW)
            .await?
            .ok_or("session not found")?;
        assert_eq!(loaded.version, 2);
        assert_eq!(loaded.data, b"new");
        assert_eq!(loaded.idle_timeout, secs(120));
        assert_eq!(loaded.expires_at, NOW + secs(120));

        durable.delete(&key(1)).await?;
        assert_eq!(
            durable
                .update(&key(1), b"again", secs(60), NOW + secs(60), None, NOW)
                .await?,
            None
        );
        assert_eq!(durable.load(&key(1), NOW).await?, None);
        // Deleting what is already gone is not an error.
        durable.delete(&key(1)).await?;
        Ok(())
    }

    #[tokio::test]
    async fn update_ignores_expired_rows() -> TestResult {
        let (durable, _dir) = open().await?;
        assert!(durable.insert(&session(1, NOW + secs(10))).await?);
        let later = NOW + secs(10);
        assert_eq!(
            durable
                .update(&key(1), b"late", secs(60), later + secs(60), None, later)
                .await?,
            None
        );
        let still = durable.load(&key(1), NOW).await?.ok_or("row was removed")?;
        assert_eq!((still.version, still.data), (1, vec![1; 16]));
        Ok(())
    }

    #[tokio::test]
    async fn touch_only_moves_expiry_forward_and_ignores_expired_rows() -> TestResult {
        let (durable, _dir) = open().await?;
        assert!(durable.insert(&session(1, NOW + secs(60))).await?);
        let expiry = |d: &SqliteDurable| {
            let d = d.clone();
            async move { d.load(&key(1), NOW).await.map(|s| s.map(|s| s.expires_at)) }
        };

        assert_eq!(durable.touch(&key(1), NOW + secs(30), NOW).await?, Some(1));
        assert_eq!(expiry(&durable).await?, Some(NOW + secs(60)));

        assert_eq!(durable.touch(&key(1), NOW + secs(120), NOW).await?, Some(1));
        assert_eq!(expiry(&durable).await?, Some(NOW + secs(120)));

        let late = NOW + secs(120);
        assert_eq!(durable.touch(&key(1), late + secs(60), late).await?, None);
        assert_eq!(expiry(&durable).await?, Some(NOW + secs(120)));

        assert_eq!(durable.touch(&key(2), NOW + secs(60), NOW).await?, None);
        assert_eq!(durable.load(&key(2), NOW).await?, None);
        Ok(())
    }

    #[tokio::test]
    async fn delete_expired_respects_batch_size_and_deletes_only_expired_rows() -> TestResult {
        let (durable, _dir) = open().await?;
        for n in 1..=5 {
            assert!(
                durable
                    .insert(&session(n, NOW - secs(u64::from(n))))
                    .await?
            );
        }
        // Expires exactly now: expired.
        assert!(durable.insert(&session(6, NOW)).await?);
        for n in 10..=11 {
            assert!(durable.insert(&session(n, NOW + secs(1))).await?);
        }

        assert_eq!(durable.delete_expired(NOW, 4).await?, 4);
        assert_eq!(durable.delete_expired(NOW, 4).await?, 2);
        assert_eq!(durable.delete_expired(NOW, 4).await?, 0);
        assert_eq!(durable.delete_expired(NOW, 0).await?, 0);

        let left = count(&durable, "SELECT COUNT(*) FROM tiered_sessions").await?;
        assert_eq!(left, 2);
        for n in 10..=11 {
            assert!(durable.load(&key(n), NOW).await?.is_some());
        }
        Ok(())
    }

    #[tokio::test]
    async fn delete_expired_takes_the_oldest_first() -> TestResult {
        let (durable, _dir) = open().await?;
        for n in 1..=3 {
            assert!(
                durable
                    .insert(&session(n, NOW - secs(u64::from(n))))
                    .await?
            );
        }
        assert_eq!(durable.delete_expired(NOW, 1).await?, 1);
        // Key 3 expired first, so it went first.
        let remaining: Vec<Vec<u8>> =
            sqlx::query_scalar("SELECT key FROM tiered_sessions ORDER BY expires_at")
                .fetch_all(durable.pool())
                .await?;
        assert_eq!(remaining, vec![vec![2; 32], vec![1; 32]]);
        Ok(())
    }

    #[tokio::test]
    async fn accepts_sqlite_urls() -> TestResult {
        let durable = SqliteDurable::connect("sqlite::memory:").await?;
        durable.migrate().await?;
        assert!(durable.insert(&session(1, NOW + secs(1))).await?);
        Ok(())
    }
}
