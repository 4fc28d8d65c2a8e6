//! The crate's error type and its classification into [`TierErrorKind`]s.

use std::fmt;

use tiered_sessions_core::{TierError, TierErrorKind};

/// Which database a [`SqlxDurableError`] came from; also the tier name in a [`TierError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// [`PostgresDurable`](crate::PostgresDurable).
    Postgres,
    /// [`SqliteDurable`](crate::SqliteDurable).
    Sqlite,
}

impl Backend {
    /// The lowercase name, `"postgres"` or `"sqlite"`, used as [`TierError::tier`].
    pub const fn name(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Sqlite => "sqlite",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Errors of [`PostgresDurable`](crate::PostgresDurable) and
/// [`SqliteDurable`](crate::SqliteDurable).
///
/// The [`DurableTier`](tiered_sessions_core::DurableTier) methods return these converted into a
/// [`TierError`], whose kind is decided from the sqlx error variant and the database's error
/// code, never from message text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqlxDurableError {
    /// A statement or connection failed.
    #[error("{backend} durable tier: {source}; check that the database is reachable and that `migrate()` has run")]
    Sqlx {
        /// The database.
        backend: Backend,
        /// The sqlx error.
        #[source]
        source: sqlx::Error,
    },

    /// A row of `tiered_sessions` does not hold what this crate writes.
    #[error("corrupt row in {backend} table `tiered_sessions`: {reason}; the row was not written by this crate or was changed by hand, delete it")]
    CorruptRow {
        /// The database.
        backend: Backend,
        /// What is wrong with the row.
        reason: String,
    },

    /// A value passed in does not fit the database column.
    #[error("`{field}` is out of range for the {backend} durable tier (a signed 64-bit column); pass a smaller value")]
    OutOfRange {
        /// The database.
        backend: Backend,
        /// The field that did not fit.
        field: &'static str,
    },

    /// A schema migration failed and was rolled back with every other migration of the run.
    #[error("{backend} migration {version} ({name}) failed and was rolled back: {source}; fix the cause and call `migrate()` again")]
    Migration {
        /// The database.
        backend: Backend,
        /// The migration's number.
        version: i64,
        /// The migration's name.
        name: &'static str,
        /// The sqlx error.
        #[source]
        source: sqlx::Error,
    },
}

impl SqlxDurableError {
    /// The database the error came from.
    pub fn backend(&self) -> Backend {
        match self {
            Self::Sqlx { backend, .. }
            | Self::CorruptRow { backend, .. }
            | Self::OutOfRange { backend, .. }
            | Self::Migration { backend, .. } => *backend,
        }
    }

    /// How the durable tier failed, decided from the sqlx error variant and the database's
    /// error code.
    pub fn kind(&self) -> TierErrorKind {
        match self {
            Self::Sqlx { backend, source }
            | Self::Migration {
                backend, source, ..
            } => classify(*backend, source),
            Self::CorruptRow { .. } | Self::OutOfRange { .. } => TierErrorKind::Other,
        }
    }

    #[cfg_attr(
        not(any(feature = "postgres", feature = "sqlite")),
        allow(dead_code, reason = "only the backends construct errors")
    )]
    pub(crate) fn sqlx(backend: Backend, source: sqlx::Error) -> Self {
        Self::Sqlx { backend, source }
    }
}

impl From<SqlxDurableError> for TierError {
    fn from(err: SqlxDurableError) -> Self {
        TierError::new(err.backend().name(), err.kind(), err)
    }
}

fn classify(backend: Backend, err: &sqlx::Error) -> TierErrorKind {
    match err {
        sqlx::Error::PoolTimedOut => TierErrorKind::Timeout,
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => TierErrorKind::Unavailable,
        sqlx::Error::Database(db_err) => match db_err.code() {
            Some(code) => match backend {
                Backend::Postgres => classify_sqlstate(&code),
                Backend::Sqlite => classify_sqlite_code(&code),
            },
            None => TierErrorKind::Rejected,
        },
        _ => TierErrorKind::Other,
    }
}

/// Postgres reports a five-character SQLSTATE.
fn classify_sqlstate(code: &str) -> TierErrorKind {
    match code {
        // admin_shutdown, crash_shutdown, cannot_connect_now: the server is going away or
        // not there yet, as much "unavailable" as a refused connection.
        "57P01" | "57P02" | "57P03" => TierErrorKind::Unavailable,
        // query_canceled, also raised by `statement_timeout`.
        "57014" => TierErrorKind::Timeout,
        // Class 08: connection exception.
        _ if code.starts_with("08") => TierErrorKind::Unavailable,
        _ => TierErrorKind::Rejected,
    }
}

/// SQLite reports its (extended) result code as a decimal number; the primary code is the
/// low byte.
fn classify_sqlite_code(code: &str) -> TierErrorKind {
    const SQLITE_BUSY: i32 = 5;
    const SQLITE_LOCKED: i32 = 6;
    const SQLITE_IOERR: i32 = 10;
    const SQLITE_CANTOPEN: i32 = 14;
    match code.parse::<i32>().map(|extended| extended & 0xff) {
        // The busy timeout elapsed while another connection held the lock.
        Ok(SQLITE_BUSY | SQLITE_LOCKED) => TierErrorKind::Timeout,
        // The file cannot be read, written or opened.
        Ok(SQLITE_IOERR | SQLITE_CANTOPEN) => TierErrorKind::Unavailable,
        _ => TierErrorKind::Rejected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_classified_by_class_and_code() {
        assert_eq!(classify_sqlstate("08006"), TierErrorKind::Unavailable);
        assert_eq!(classify_sqlstate("08001"), TierErrorKind::Unavailable);
        assert_eq!(classify_sqlstate("57P01"), TierErrorKind::Unavailable);
        assert_eq!(classify_sqlstate("57P02"), TierErrorKind::Unavailable);
        assert_eq!(classify_sqlstate("57P03"), TierErrorKind::Unavailable);
        assert_eq!(classify_sqlstate("57014"), TierErrorKind::Timeout);
        assert_eq!(classify_sqlstate("23505"), TierErrorKind::Rejected);
        assert_eq!(classify_sqlstate("42P01"), TierErrorKind::Rejected);
        assert_eq!(classify_sqlstate("25006"), TierErrorKind::Rejected);
    }

    #[test]
    fn sqlite_codes_are_classified_by_primary_code() {
        assert_eq!(classify_sqlite_code("5"), TierErrorKind::Timeout);
        assert_eq!(classify_sqlite_code("517"), TierErrorKind::Timeout); // BUSY_SNAPSHOT
        assert_eq!(classify_sqlite_code("6"), TierErrorKind::Timeout);
        assert_eq!(classify_sqlite_code("10"), TierErrorKind::Unavailable);
        assert_eq!(classify_sqlite_code("266"), TierErrorKind::Unavailable); // IOERR_READ
        assert_eq!(classify_sqlite_code("14"), TierErrorKind::Unavailable);
        assert_eq!(classify_sqlite_code("2067"), TierErrorKind::Rejected); // CONSTRAINT_UNIQUE
        assert_eq!(classify_sqlite_code("1"), TierErrorKind::Rejected);
        assert_eq!(
            classify_sqlite_code("not a number"),
            TierErrorKind::Rejected
        );
    }

    #[test]
    fn sqlx_variants_are_classified_and_the_tier_is_named() {
        let cases = [
            (sqlx::Error::PoolTimedOut, TierErrorKind::Timeout),
            (sqlx::Error::PoolClosed, TierErrorKind::Unavailable),
            (sqlx::Error::WorkerCrashed, TierErrorKind::Unavailable),
            (
                sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
                TierErrorKind::Unavailable,
            ),
            (sqlx::Error::RowNotFound, TierErrorKind::Other),
            (sqlx::Error::Protocol("bad".into()), TierErrorKind::Other),
        ];
        for (source, kind) in cases {
            let err: TierError = SqlxDurableError::sqlx(Backend::Postgres, source).into();
            assert_eq!(err.kind(), kind);
            assert_eq!(err.tier(), "postgres");
            assert!(std::error::Error::source(&err).is_some());
        }

        let err: TierError = SqlxDurableError::CorruptRow {
            backend: Backend::Sqlite,
            reason: "key is 3 bytes".into(),
        }
        .into();
        assert_eq!(err.kind(), TierErrorKind::Other);
        assert_eq!(err.tier(), "sqlite");
    }
}
