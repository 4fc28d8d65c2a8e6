//! The schema migrations shipped with the crate.
//!
//! Each backend has its own numbered list; the runners live with the backends
//! ([`PostgresDurable::migrate`](crate::PostgresDurable::migrate),
//! [`SqliteDurable::migrate`](crate::SqliteDurable::migrate)) because locking differs.

/// One numbered SQL script, applied once per database and recorded in
/// `tiered_sessions_migrations`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Migration {
    pub(crate) version: i64,
    pub(crate) name: &'static str,
    pub(crate) sql: &'static str,
}

/// Postgres migrations, in the order they are applied.
#[cfg(feature = "postgres")]
pub(crate) const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        name: "create_sessions",
        sql: include_str!("../migrations/postgres/0001_create_sessions.sql"),
    },
    Migration {
        version: 2,
        name: "session_owner",
        sql: include_str!("../migrations/postgres/0002_session_owner.sql"),
    },
    Migration {
        version: 3,
        name: "cache_epoch",
        sql: include_str!("../migrations/postgres/0003_cache_epoch.sql"),
    },
];

/// SQLite migrations, in the order they are applied.
#[cfg(feature = "sqlite")]
pub(crate) const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "create_sessions",
        sql: include_str!("../migrations/sqlite/0001_create_sessions.sql"),
    },
    Migration {
        version: 2,
        name: "session_owner",
        sql: include_str!("../migrations/sqlite/0002_session_owner.sql"),
    },
    Migration {
        version: 3,
        name: "cache_epoch",
        sql: include_str!("../migrations/sqlite/0003_cache_epoch.sql"),
    },
];

/// Logs versions recorded in the database that this build does not know: a newer release
/// of the crate migrated the database (a rolling deploy, or a rollback of the app). They are
/// left alone; sqlx's migrator would refuse to run instead (see the crate docs).
pub(crate) fn note_unknown(backend: crate::Backend, known: &[Migration], applied: &[i64]) {
    for version in applied {
        if !known.iter().any(|m| m.version == *version) {
            tracing::info!(
                %backend,
                version,
                "tiered_sessions migration applied by a newer release; leaving it alone"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(list: &[Migration]) {
        for (i, m) in list.iter().enumerate() {
            assert_eq!(m.version, i64::try_from(i + 1).unwrap_or(i64::MAX));
            assert!(!m.sql.trim().is_empty());
        }
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn postgres_migrations_are_numbered_from_one_without_gaps() {
        check(POSTGRES);
    }

    #[cfg(feature = "sqlite")]
    #[test]
    fn sqlite_migrations_are_numbered_from_one_without_gaps() {
        check(SQLITE);
    }
}
