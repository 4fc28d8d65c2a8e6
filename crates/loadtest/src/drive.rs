//! The load generator: `concurrency` tasks, each running one request after another, each
//! timing every request into its own HDR histogram.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;

use crate::{
    backend::{Op, MAX_ERROR_KINDS},
    cli::Scenario,
    data::Rng,
};

/// How long tasks may take to finish their last request once a round is over before
/// they are abandoned and counted as hung.
const GRACE: Duration = Duration::from_secs(10);
/// Highest latency the histograms hold, in nanoseconds (larger values are clamped).
const MAX_LATENCY_NS: u64 = 120_000_000_000;
/// Label of requests abandoned at the end of a round.
pub const HUNG: &str = "hung (no answer 10 s after the round ended)";
/// Label of error kinds beyond [`MAX_ERROR_KINDS`].
pub const OTHER: &str = "other errors";

/// A new latency histogram: nanoseconds, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("static bounds are valid")
}

/// When a round ends.
#[derive(Debug, Clone)]
pub enum Stop {
    /// After this long (requests in flight finish and count).
    After(Duration),
    /// After this many requests in total.
    Requests(u64),
    /// After one request for each of these session indices, in this order.
    Pass(Arc<Vec<u32>>),
}

/// Whether a fault is being injected, for telling requests during faults from the rest.
#[derive(Debug, Default)]
pub struct FaultClock {
    active: AtomicU64,
    started: AtomicU64,
}

impl FaultClock {
    /// A fault begins.
    pub fn begin(&self) {
        self.started.fetch_add(1, Ordering::SeqCst);
        self.active.fetch_add(1, Ordering::SeqCst);
    }

    /// A fault (and its recovery window) ends.
    pub fn end(&self) {
        self.active.fetch_sub(1, Ordering::SeqCst);
    }

    /// Faults begun so far.
    pub fn started(&self) -> u64 {
        self.started.load(Ordering::SeqCst)
    }

    fn mark(&self) -> (bool, u64) {
        (
            self.active.load(Ordering::Relaxed) > 0,
            self.started.load(Ordering::Relaxed),
        )
    }
}

/// Requests that overlapped a fault.
#[derive(Debug, Clone)]
pub struct FaultSample {
    /// Their latencies.
    pub histogram: Histogram<u64>,
    /// Their errors by kind.
    pub errors: BTreeMap<String, u64>,
}

/// What one round measured.
#[derive(Debug, Clone)]
pub struct RoundResult {
    /// Requests completed, failed ones included.
    pub ops: u64,
    /// From the first request to the last answer.
    pub elapsed: Duration,
    /// Latency of every request, in nanoseconds.
    pub histogram: Histogram<u64>,
    /// Failed requests by kind.
    pub errors: BTreeMap<String, u64>,
    /// Requests that overlapped a fault, when faults were injected.
    pub during_faults: Option<FaultSample>,
}

impl RoundResult {
    /// Requests per second.
    pub fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Failed requests.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Adds one error to a by-kind count, folding kinds beyond the limit into [`OTHER`].
pub fn count_error(errors: &mut BTreeMap<String, u64>, kind: &str, n: u64) {
    if let Some(count) = errors.get_mut(kind) {
        *count += n;
    } else if errors.len() < MAX_ERROR_KINDS {
        errors.insert(kind.to_owned(), n);
    } else {
        *errors.entry(OTHER.to_owned()).or_default() += n;
    }
}

/// The shape of one round.
#[derive(Debug, Clone)]
pub struct Load {
    /// What each request does.
    pub scenario: Scenario,
    /// Tasks.
    pub concurrency: usize,
    /// When to stop.
    pub stop: Stop,
    /// Seed of the access pattern (each task draws its own stream).
    pub seed: u64,
    /// Share of writing requests in `mixed`.
    pub write_ratio: f64,
}

/// Runs one round of `load` against `op`. `live` counts finished requests as they
/// happen (for the progress bar); `faults` tells which requests overlapped a fault.
pub async fn drive(
    op: &Op,
    load: &Load,
    live: &Arc<AtomicU64>,
    faults: Option<Arc<FaultClock>>,
) -> RoundResult {
    let n = op.len().max(1);
    let stop_flag = Arc::new(AtomicBool::new(false));
    let budget = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(load.concurrency);
    for t in 0..load.concurrency {
        let (op, load, live, faults) = (op.clone(), load.clone(), live.clone(), faults.clone());
        let (stop_flag, budget) = (stop_flag.clone(), budget.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(load.seed, t as u64);
            let mut latencies = histogram();
            let mut errors = BTreeMap::new();
            let mut fault_sample = faults.as_ref().map(|_| FaultSample {
                histogram: histogram(),
                errors: BTreeMap::new(),
            });
            let mut unreported = 0u64;
            loop {
                let i = match &load.stop {
                    Stop::After(_) => {
                        if stop_flag.load(Ordering::Relaxed) {
                            break;
                        }
                        rng.below(n)
                    }
                    Stop::Requests(limit) => {
                        if budget.fetch_add(1, Ordering::Relaxed) >= *limit {
                            break;
                        }
                        rng.below(n)
                    }
                    Stop::Pass(order) => {
                        let k = budget.fetch_add(1, Ordering::Relaxed) as usize;
                        match order.get(k) {
                            Some(i) => *i as usize,
                            None => break,
                        }
                    }
                };
                let write = load.scenario == Scenario::Mixed && rng.chance(load.write_ratio);
                let before = faults.as_ref().map(|f| f.mark());
                let t0 = Instant::now();
                let result = op.run(load.scenario, i, write).await;
                let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
                latencies.saturating_record(ns.max(1));
                if let Err(kind) = &result {
                    count_error(&mut errors, kind, 1);
                }
                if let (Some(clock), Some((was_active, began)), Some(sample)) =
                    (&faults, before, fault_sample.as_mut())
                {
                    let (is_active, now_began) = clock.mark();
                    if was_active || is_active || now_began != began {
                        sample.histogram.saturating_record(ns.max(1));
                        if let Err(kind) = &result {
                            count_error(&mut sample.errors, kind, 1);
                        }
                    }
                }
                // An in-process store (the memory cache) may never wait: give the timers
                // and the other tasks their turn (a no-op until tokio's budget runs out).
                tokio::task::consume_budget().await;
                unreported += 1;
                if unreported == 32 {
                    live.fetch_add(unreported, Ordering::Relaxed);
                    unreported = 0;
                }
            }
            live.fetch_add(unreported, Ordering::Relaxed);
            (latencies, errors, fault_sample)
        }));
    }
    if let Stop::After(duration) = load.stop {
        tokio::time::sleep(duration).await;
        stop_flag.store(true, Ordering::Relaxed);
    }

    let mut result = RoundResult {
        ops: 0,
        elapsed: Duration::ZERO,
        histogram: histogram(),
        errors: BTreeMap::new(),
        during_faults: faults.as_ref().map(|_| FaultSample {
            histogram: histogram(),
            errors: BTreeMap::new(),
        }),
    };
    let mut hung = 0;
    for task in tasks {
        let abort = task.abort_handle();
        // Bounded: a request that never answers must not hang the run.
        let joined = match load.stop {
            Stop::After(_) => tokio::time::timeout(GRACE, task).await.ok(),
            _ => Some(task.await),
        };
        match joined {
            Some(Ok((histogram, errors, sample))) => {
                let _ = result.histogram.add(&histogram);
                for (kind, count) in errors {
                    count_error(&mut result.errors, &kind, count);
                }
                if let (Some(total), Some(sample)) = (result.during_faults.as_mut(), sample) {
                    let _ = total.histogram.add(&sample.histogram);
                    for (kind, count) in sample.errors {
                        count_error(&mut total.errors, &kind, count);
                    }
                }
            }
            Some(Err(_)) | None => {
                abort.abort();
                hung += 1;
            }
        }
    }
    result.elapsed = started.elapsed();
    if hung > 0 {
        count_error(&mut result.errors, HUNG, hung);
        result.histogram.saturating_record(MAX_LATENCY_NS);
        for _ in 1..hung {
            result.histogram.saturating_record(MAX_LATENCY_NS);
        }
    }
    result.ops = result.histogram.len();
    result
}
