//! The clock the expiry logic reads, injectable for tests.

use std::fmt::Debug;

use time::OffsetDateTime;

/// A source of the current time for expiry decisions (absolute lifetime, durable touch,
/// durable expiry). The cache tier's own time to live runs on the cache server's clock.
pub trait Clock: Debug + Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> OffsetDateTime;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}
