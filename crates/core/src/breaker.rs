//! The circuit breaker in front of the cache tier.
//!
//! Closed, every request asks the cache first. After [`FAILURES_TO_OPEN`] failures in a row
//! (unreachable, timed out), or as soon as the cache tier reports a lost connection, it
//! opens: requests go straight to the durable tier (or, without one, fail at once) and a
//! single probe task pings the cache every [`PROBE_INTERVAL`]. When the cache answers
//! again, the store invalidates what the cache may hold from before (a new cache epoch)
//! and closes the circuit.

use std::{
    sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    time::Duration,
};

/// Failed cache calls in a row that open the circuit. More than one, so that a single
/// dropped connection or slow command does not send every instance to the database.
pub(crate) const FAILURES_TO_OPEN: u32 = 3;

/// How often an open circuit probes the cache.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Debug, Default)]
pub(crate) struct Breaker {
    open: AtomicBool,
    failures: AtomicU32,
    /// The cache tier's connection-loss count when the circuit last closed.
    seen_disconnects: AtomicU64,
}

impl Breaker {
    /// Whether cache calls go ahead: the circuit is closed and the cache has not lost a
    /// connection since it closed.
    pub(crate) fn allows(&self, disconnects: u64) -> bool {
        !self.open.load(Ordering::Acquire)
            && self.seen_disconnects.load(Ordering::Relaxed) == disconnects
    }

    pub(crate) fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    pub(crate) fn success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a failure; returns `true` when it opened the circuit (the caller starts the
    /// probe).
    pub(crate) fn failure(&self) -> bool {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        failures >= FAILURES_TO_OPEN && self.trip()
    }

    /// Opens the circuit; returns `true` if it was closed (the caller starts the probe).
    pub(crate) fn trip(&self) -> bool {
        !self.open.swap(true, Ordering::AcqRel)
    }

    /// Closes the circuit, taking `disconnects` as the connection-loss count it has
    /// accounted for.
    pub(crate) fn close(&self, disconnects: u64) {
        self.seen_disconnects.store(disconnects, Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
        self.open.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_failures_in_a_row_and_on_a_lost_connection() {
        let breaker = Breaker::default();
        assert!(breaker.allows(0));
        assert!(!breaker.failure());
        breaker.success();
        for _ in 1..FAILURES_TO_OPEN {
            assert!(!breaker.failure());
        }
        assert!(breaker.failure(), "the third failure in a row opens it");
        assert!(!breaker.failure(), "only one caller starts the probe");
        assert!(!breaker.allows(0));
        breaker.close(0);
        assert!(breaker.allows(0));
        assert!(!breaker.allows(1), "a lost connection is not trusted");
        assert!(breaker.trip());
        breaker.close(1);
        assert!(breaker.allows(1));
    }
}
