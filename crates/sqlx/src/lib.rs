//! The durable tier of tiered-sessions on [sqlx]: [`PostgresDurable`] for deployments with a
//! Postgres server, [`SqliteDurable`] for the embedded default on a single machine. Both
//! implement [`tiered_sessions_core::DurableTier`], the source of truth behind the cache.
//!
//! # What is stored
//!
//! One row per session in one table, `tiered_sessions`, filed under the session's
//! [`StorageKey`](tiered_sessions_core::StorageKey) (the SHA-256 of its id, so a database dump
//! yields no usable cookie):
//!
//! | column       | Postgres      | SQLite              | meaning                                   |
//! |--------------|---------------|---------------------|-------------------------------------------|
//! | `key`        | `bytea` PK    | `BLOB` PK           | the 32-byte storage key                   |
//! | `version`    | `bigint`      | `INTEGER`           | incremented by every update               |
//! | `created_at` | `timestamptz` | `INTEGER` (unix ms) | start of the absolute lifetime            |
//! | `idle_ms`    | `bigint`      | `INTEGER`           | the session's idle timeout, milliseconds  |
//! | `expires_at` | `timestamptz` | `INTEGER` (unix ms) | when the row may be swept (indexed)       |
//! | `data`       | `bytea`       | `BLOB`              | the encoded session, opaque to this crate |
//!
//! Times are written truncated to the millisecond in both databases, so a session read back
//! compares equal to the one written whichever backend holds it. Every statement compares
//! against the `now` passed in by the store, never the database's clock, so the store's
//! clock can be injected in tests and app servers need not agree with the database on time.
//!
//! # Migrations
//!
//! The schema ships with the crate as numbered SQL files (`migrations/postgres/`,
//! `migrations/sqlite/`), embedded in the binary. Call `migrate()` once at start-up, on
//! every instance: it applies what is missing, in order, in one transaction, and records
//! each migration in a bookkeeping table of its own, `tiered_sessions_migrations`.
//! Concurrent runs are serialised by a transaction-scoped advisory lock on Postgres and by
//! `BEGIN IMMEDIATE` on SQLite, so several instances starting at once apply each migration
//! exactly once.
//!
//! sqlx's own migrator is deliberately not used: by default it keeps its records in
//! `_sqlx_migrations`, the table the application's own migrations use, and fails when that
//! table holds migrations it does not know, so a library's migrations and an app's would
//! break each other. Moving it to another table takes its `dangerous_set_table_name`; a
//! runner of a few lines keeps the locking, and the tolerance of migrations recorded by a
//! newer release of this crate (during a rolling deploy, or after a rollback), explicit.
//!
//! # Errors
//!
//! Constructors and `migrate()` return [`SqlxDurableError`]; the [`DurableTier`] methods
//! return it converted into a [`TierError`](tiered_sessions_core::TierError), classified from
//! the sqlx error variant and the database's error code (Postgres SQLSTATE, SQLite result
//! code) into unavailable, timed out, rejected or other, never from message text.
//!
//! # Feature flags
//!
//! | feature    | default | enables            |
//! |------------|---------|--------------------|
//! | `postgres` | yes     | [`PostgresDurable`] |
//! | `sqlite`   | yes     | [`SqliteDurable`]   |
//!
//! [`DurableTier`]: tiered_sessions_core::DurableTier

#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod codec;
mod error;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod migrate;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use error::{Backend, SqlxDurableError};
#[cfg(feature = "postgres")]
pub use postgres::PostgresDurable;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteDurable;

/// The sqlx this crate is built on, so pools passed to `new` come from the same version.
pub use sqlx;
