//! Polling with a deadline: wait for a condition, never sleep and hope.

use std::future::Future;
use std::time::{Duration, Instant};

/// Calls `check` every `interval` until it returns `true` or `deadline` has passed.
///
/// Returns whether the condition was met. `check` runs at least once, and once more at the
/// deadline, so a condition that becomes true just before the deadline is not missed.
/// The deadline is measured on the wall clock (`std::time::Instant`), so it also holds
/// under a paused tokio clock.
///
/// ```no_run
/// # async fn f(server: &tiered_sessions_tests::RedisServer) {
/// use std::time::Duration;
/// use tiered_sessions_tests::poll_until;
///
/// let evicted = poll_until(Duration::from_secs(5), Duration::from_millis(50), || async {
///     server.command_calls().await.get("set").copied().unwrap_or(0) > 100
/// })
/// .await;
/// assert!(evicted, "no eviction within 5 s");
/// # }
/// ```
#[must_use = "assert on the result: `false` means the deadline passed"]
pub async fn poll_until<F, Fut>(deadline: Duration, interval: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    poll_some(deadline, interval, || {
        let attempt = check();
        async move { attempt.await.then_some(()) }
    })
    .await
    .is_some()
}

/// Calls `check` every `interval` until it returns `Some(value)` or `deadline` has passed.
///
/// Returns the first value, or `None` at the deadline. Same timing rules as
/// [`poll_until`]; use this one when the condition yields something the test needs next.
pub async fn poll_some<T, F, Fut>(deadline: Duration, interval: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        let now = Instant::now();
        if now >= until {
            return None;
        }
        tokio::time::sleep(interval.min(until - now)).await;
    }
}
