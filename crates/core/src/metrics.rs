//! Names of the metrics the store records through the [`metrics`](https://docs.rs/metrics)
//! crate. Install any `metrics` recorder (Prometheus, StatsD, …) to collect them; without
//! one they cost an atomic load.

/// Cache reads that returned a live session.
pub const CACHE_HITS_TOTAL: &str = "tiered_sessions_cache_hits_total";
/// Cache reads that did not; label `reason`: `absent`, `corrupt`, `foreign`, `wrong_key`,
/// `unknown_format`, `wrong_type`, `unavailable`.
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
