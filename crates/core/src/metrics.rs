//! Names of the metrics the store records through the [`metrics`](https://docs.rs/metrics)
//! crate. Install any `metrics` recorder (Prometheus, StatsD, …) to collect them; without
//! one they cost an atomic load.

/// Cache reads that returned a live session.
pub const CACHE_HITS_TOTAL: &str = "tiered_sessions_cache_hits_total";
/// Cache reads that did not; label `reason`: `absent`, `corrupt`, `foreign`, `wrong_key`,
/// `unknown_format`, `wrong_type`, `stale_epoch` (written before the last epoch bump),
/// `unavailable`.
pub const CACHE_MISSES_TOTAL: &str = "tiered_sessions_cache_misses_total";
/// Cache entries rewritten from the durable tier after a miss.
pub const CACHE_REFILLS_TOTAL: &str = "tiered_sessions_cache_refills_total";
/// Reads answered by the durable tier.
pub const DURABLE_READS_TOTAL: &str = "tiered_sessions_durable_reads_total";
/// Durable writes; label `op`: `insert`, `update`, `delete`.
pub const DURABLE_WRITES_TOTAL: &str = "tiered_sessions_durable_writes_total";
/// Durable expiry touches (at most one per touch interval per active session).
pub const DURABLE_TOUCHES_TOTAL: &str = "tiered_sessions_durable_touches_total";
/// Errors; labels `tier` (`cache`, `durable`) and `kind` (see `TierErrorKind`).
pub const ERRORS_TOTAL: &str = "tiered_sessions_errors_total";
/// Saves that found the session gone (deleted or expired meanwhile) and wrote nothing.
pub const SAVES_DISCARDED_TOTAL: &str = "tiered_sessions_saves_discarded_total";
/// Reads and writes that did not ask the cache because its circuit was open.
pub const CACHE_BYPASSES_TOTAL: &str = "tiered_sessions_cache_bypasses_total";
/// Cache expiries slid by a read (at most one per touch interval per active session).
pub const CACHE_SLIDES_TOTAL: &str = "tiered_sessions_cache_slides_total";
/// Gauge: 1 while the cache's circuit is open (requests bypass the cache), else 0.
pub const CACHE_CIRCUIT_OPEN: &str = "tiered_sessions_cache_circuit_open";
/// Changes of the cache circuit's state; label `to`: `open`, `closed`.
pub const CACHE_CIRCUIT_CHANGES_TOTAL: &str = "tiered_sessions_cache_circuit_changes_total";
/// Cache epoch bumps by this instance; label `reason`: `cache_write_failed`,
/// `cache_bypassed`, `delete_not_cached`, `owed` (a failed bump made up).
pub const EPOCH_BUMPS_TOTAL: &str = "tiered_sessions_epoch_bumps_total";
