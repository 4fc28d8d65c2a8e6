//! The core of tiered-sessions: [`TieredStore`], a [`tower_sessions_core::SessionStore`]
//! composed of a fast [`CacheTier`] (Redis, or memory in-process) and an optional
//! [`DurableTier`] (Postgres, SQLite) that is the source of truth.
//!
//! - **Reads** are one cache round trip (`GET`); the cache expiry is slid at most once per
//!   touch interval per session, in the background. A miss for any reason reads through to
//!   the durable tier and refills the cache.
//! - **Cache failures** never fail a request when a durable tier is configured: a circuit
//!   breaker sends requests to the durable tier while the cache is down or slow, and a
//!   cache epoch makes sure no instance serves a copy that a failed cache write left stale.
//! - **Changes** are written to the durable tier first, then to the cache, before the
//!   response is sent; a read-only request writes nothing back, so it cannot undo a
//!   concurrent change.
//! - **The durable expiry** is touched at most once per touch interval per session, with
//!   slack so it never expires a live session early.
//! - **Both tiers** store a [`StorageKey`] (a hash of the session id) and a versioned
//!   [`SessionEnvelope`], never the id itself.
//!
//! Most applications use the `tiered-sessions` facade crate, which builds the tiers from
//! URLs. This crate is for those who write a tier of their own.
//!
//! ```
//! use std::time::Duration;
//!
//! use tiered_sessions_core::{MemoryCache, TieredStore};
//!
//! let store = TieredStore::builder(MemoryCache::new(64 * 1024 * 1024))
//!     .with_idle_timeout(Duration::from_secs(30 * 60))
//!     .build()
//!     .expect("valid configuration");
//! # let _ = store;
//! ```

mod breaker;
mod clock;
pub mod envelope;
mod error;
mod key;
#[cfg(feature = "memory")]
mod memory;
pub mod metrics;
mod store;
mod tier;

pub use clock::{Clock, SystemClock};
pub use envelope::SessionEnvelope;
pub use error::{BoxError, ConfigError, Error, TierError, TierErrorKind};
pub use key::StorageKey;
#[cfg(feature = "memory")]
pub use memory::MemoryCache;
pub use store::{Health, OwnedSession, TierHealth, TieredStore, TieredStoreBuilder, REVISION_KEY};
pub use tier::{CacheTier, DurableTier, StoredSession, Updated};
pub use tower_sessions_core;
