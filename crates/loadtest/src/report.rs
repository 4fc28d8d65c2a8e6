//! The report: what was measured, as Markdown tables, JSON, and the targets
//! checked as ratios within the run.

use std::{collections::BTreeMap, fmt::Write as _};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::{
    cli::{BackendKind, Scenario},
    drive::{histogram, RoundResult},
    postgres::PgCounters,
    redis::RedisCounters,
};

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// How, when and where it ran.
    pub meta: Meta,
    /// One entry per backend, scenario and concurrency.
    pub measurements: Vec<Measurement>,
    /// The targets that this run's backends allow checking.
    pub targets: Vec<TargetCheck>,
}

/// How, when and where a run happened.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Meta {
    /// `store` or `http`.
    pub mode: String,
    /// The command line.
    pub command: String,
    /// Start time, RFC 3339, UTC.
    pub date: String,
    /// Cores and OS of this machine.
    pub machine: String,
    /// The tool's version.
    pub tool_version: String,
    /// Sessions per backend.
    pub sessions: u64,
    /// Encoded session data, bytes.
    pub payload_bytes: usize,
    /// Bytes of one tiered cache entry (what the floors read).
    pub cache_entry_bytes: usize,
    /// Concurrency levels.
    pub concurrency: Vec<usize>,
    /// Length of a measured round, seconds (if rounds are timed).
    pub round_seconds: Option<f64>,
    /// Requests per measured round (if rounds are counted).
    pub round_requests: Option<u64>,
    /// Warm-up per backend, scenario and concurrency, seconds.
    pub warmup_seconds: f64,
    /// Measured rounds.
    pub rounds: u32,
    /// Seed.
    pub seed: u64,
    /// Idle timeout, seconds.
    pub idle_timeout_seconds: f64,
    /// Share of writes in `mixed`.
    pub write_ratio: f64,
    /// Faults injected.
    pub chaos: Vec<String>,
    /// Redis server version.
    pub redis_version: Option<String>,
    /// Postgres server version.
    pub postgres_version: Option<String>,
    /// Whether Postgres counts come from `pg_stat_statements` (exact).
    pub postgres_counts_exact: Option<bool>,
    /// Which build of the published stores and fred was measured.
    pub build: String,
    /// Backend names and what they are.
    pub backends: Vec<(String, String)>,
    /// Seconds each backend took to create its sessions.
    pub setup_seconds: Vec<(String, f64)>,
}

/// Latency percentiles, microseconds.
#[derive(Debug, Clone, Copy, Serialize, Default, PartialEq)]
pub struct Latency {
    /// Requests timed.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest.
    pub max: f64,
}

impl Latency {
    /// Percentiles of a nanosecond histogram.
    pub fn of(h: &Histogram<u64>) -> Self {
        let us = |ns: u64| ns as f64 / 1000.0;
        Latency {
            count: h.len(),
            mean: h.mean() / 1000.0,
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }
}

/// What requests cost Redis, per request.
#[derive(Debug, Clone, Serialize, Default)]
pub struct RedisCost {
    /// Commands per request (`INFO commandstats`; commands a Lua script runs count too).
    pub commands_per_op: f64,
    /// Server CPU per request, microseconds (`INFO cpu`).
    pub cpu_us_per_op: f64,
    /// Per command.
    pub by_command: BTreeMap<String, f64>,
}

/// What requests cost Postgres, per request.
#[derive(Debug, Clone, Serialize, Default)]
pub struct PgCost {
    /// Statements per request (`BEGIN`/`COMMIT` included); transactions when not exact.
    pub statements_per_op: f64,
    /// Rows inserted, updated or deleted per request.
    pub row_writes_per_op: f64,
    /// WAL bytes per request.
    pub wal_bytes_per_op: f64,
    /// From `pg_stat_statements` (exact) or the lagging statistics views (approximate).
    pub exact: bool,
}

/// The `cold` scenario's extra numbers.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ColdStats {
    /// Sessions read in a pass.
    pub sessions_per_pass: u64,
    /// Share of the first pass's reads that returned the session.
    pub found_ratio: f64,
    /// Share of the sessions in the cache right after the first pass (did reads refill it?).
    pub refilled_ratio: Option<f64>,
    /// Share of the second pass's Redis lookups that hit.
    pub hit_ratio_after: Option<f64>,
    /// Requests per second in the second pass (median of rounds).
    pub second_pass_ops_per_sec: f64,
    /// Errors of the second pass by kind.
    pub second_pass_errors: BTreeMap<String, u64>,
}

/// Requests that overlapped injected faults.
#[derive(Debug, Clone, Serialize, Default)]
pub struct FaultReport {
    /// Faults injected over all rounds.
    pub injected: u64,
    /// Latency of the requests that overlapped a fault or its recovery window.
    pub latency_us: Latency,
    /// Their errors by kind.
    pub errors: BTreeMap<String, u64>,
}

/// One backend in one scenario at one concurrency.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    /// Backend name (`tiered`, `fred-get@pool6`, `http GET /api/me`).
    pub backend: String,
    /// Backend kind, in store mode.
    pub kind: Option<BackendKind>,
    /// Scenario.
    pub scenario: Scenario,
    /// Concurrent tasks.
    pub concurrency: usize,
    /// Requests per second of each round (for `cold`: of each first pass).
    pub rounds_ops_per_sec: Vec<f64>,
    /// Median of the rounds.
    pub ops_per_sec: f64,
    /// Requests per second that succeeded (returned the session), median of the rounds.
    pub ok_per_sec: f64,
    /// Requests over all rounds.
    pub ops: u64,
    /// Failed requests over all rounds.
    pub error_count: u64,
    /// Failed requests by kind.
    pub errors: BTreeMap<String, u64>,
    /// Latency over all rounds.
    pub latency_us: Latency,
    /// Redis cost, for backends that use Redis.
    pub redis: Option<RedisCost>,
    /// Postgres cost, for backends that use Postgres.
    pub postgres: Option<PgCost>,
    /// CPU this process used per request, microseconds: the store's own work plus the
    /// client library and the load generator (the same for every backend).
    pub client_cpu_us_per_op: Option<f64>,
    /// `cold` only.
    pub cold: Option<ColdStats>,
    /// With `--chaos`.
    pub faults: Option<FaultReport>,
    /// Every request's latency, nanoseconds (for plots; not in the JSON).
    #[serde(skip)]
    pub histogram: Histogram<u64>,
}

/// What a round cost, `None` for what was not measured (a server the backend does not
/// use).
#[derive(Debug, Clone, Default)]
pub struct Costs {
    /// Redis counters.
    pub redis: Option<RedisCounters>,
    /// Postgres counters, and whether they are exact.
    pub postgres: Option<(PgCounters, bool)>,
    /// CPU of this process, microseconds.
    pub client_cpu_us: Option<u64>,
}

/// Collects a measurement's rounds.
#[derive(Debug, Clone)]
pub struct Accumulator {
    backend: String,
    kind: Option<BackendKind>,
    scenario: Scenario,
    concurrency: usize,
    rounds: Vec<f64>,
    rounds_ok: Vec<f64>,
    histogram: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    redis: Option<RedisCounters>,
    postgres: Option<(PgCounters, bool)>,
    client_cpu_us: Option<u64>,
    cold: Option<ColdParts>,
    faults: Option<(u64, Histogram<u64>, BTreeMap<String, u64>)>,
}

#[derive(Debug, Clone, Default)]
struct ColdParts {
    per_pass: u64,
    found: u64,
    reads: u64,
    cached: Option<u64>,
    hits: u64,
    lookups: u64,
    second: Vec<f64>,
    second_errors: BTreeMap<String, u64>,
}

impl Accumulator {
    /// An empty one.
    pub fn new(
        backend: String,
        kind: Option<BackendKind>,
        scenario: Scenario,
        concurrency: usize,
    ) -> Self {
        Self {
            backend,
            kind,
            scenario,
            concurrency,
            rounds: Vec::new(),
            rounds_ok: Vec::new(),
            histogram: histogram(),
            errors: BTreeMap::new(),
            redis: None,
            postgres: None,
            client_cpu_us: None,
            cold: None,
            faults: None,
        }
    }

    /// Adds a measured round and what it cost.
    pub fn add_round(&mut self, round: &RoundResult, costs: Costs, faults_injected: Option<u64>) {
        let Costs {
            redis,
            postgres,
            client_cpu_us,
        } = costs;
        if let Some(cpu) = client_cpu_us {
            *self.client_cpu_us.get_or_insert(0) += cpu;
        }
        self.rounds.push(round.ops_per_sec());
        let ok = round.ops.saturating_sub(round.error_count());
        self.rounds_ok
            .push(ok as f64 / round.elapsed.as_secs_f64().max(1e-9));
        let _ = self.histogram.add(&round.histogram);
        for (kind, n) in &round.errors {
            crate::drive::count_error(&mut self.errors, kind, *n);
        }
        if let Some(delta) = redis {
            self.redis
                .get_or_insert_with(RedisCounters::default)
                .add(&delta);
        }
        if let Some((delta, exact)) = postgres {
            let total = self.postgres.get_or_insert((PgCounters::default(), exact));
            total.0.add(&delta);
            total.1 &= exact;
        }
        if let (Some(injected), Some(sample)) = (faults_injected, &round.during_faults) {
            let total = self
                .faults
                .get_or_insert_with(|| (0, histogram(), BTreeMap::new()));
            total.0 += injected;
            let _ = total.1.add(&sample.histogram);
            for (kind, n) in &sample.errors {
                crate::drive::count_error(&mut total.2, kind, *n);
            }
        }
    }

    /// Adds the `cold` extras of a round: the first pass is added with
    /// [`add_round`](Self::add_round); this takes what was found, what the cache held
    /// after it, and the second pass with its Redis lookups.
    pub fn add_cold(
        &mut self,
        first: &RoundResult,
        cached: Option<u64>,
        second: &RoundResult,
        second_redis: Option<&RedisCounters>,
    ) {
        let parts = self.cold.get_or_insert_with(ColdParts::default);
        parts.per_pass = first.ops;
        parts.reads += first.ops;
        parts.found += first.ops - first.error_count().min(first.ops);
        if let Some(cached) = cached {
            *parts.cached.get_or_insert(0) += cached;
        }
        if let Some(r) = second_redis {
            parts.hits += r.keyspace_hits;
            parts.lookups += r.keyspace_hits + r.keyspace_misses;
        }
        parts.second.push(second.ops_per_sec());
        for (kind, n) in &second.errors {
            crate::drive::count_error(&mut parts.second_errors, kind, *n);
        }
    }

    /// The measurement.
    pub fn finish(self) -> Measurement {
        let ops = self.histogram.len();
        let per_op = |x: u64| if ops == 0 { 0.0 } else { x as f64 / ops as f64 };
        let redis = self.redis.map(|r| RedisCost {
            commands_per_op: per_op(r.total_calls()),
            cpu_us_per_op: per_op(r.cpu_us),
            by_command: r
                .calls
                .iter()
                .map(|(name, calls)| (name.clone(), per_op(*calls)))
                .collect(),
        });
        let postgres = self.postgres.map(|(p, exact)| PgCost {
            statements_per_op: per_op(p.statements),
            row_writes_per_op: per_op(p.row_writes),
            wal_bytes_per_op: per_op(p.wal_bytes),
            exact,
        });
        let rounds_total = self.rounds.len() as u64;
        let cold = self.cold.map(|c| ColdStats {
            sessions_per_pass: c.per_pass,
            found_ratio: if c.reads == 0 {
                0.0
            } else {
                c.found as f64 / c.reads as f64
            },
            refilled_ratio: c
                .cached
                .map(|cached| cached as f64 / (c.per_pass * rounds_total).max(1) as f64),
            hit_ratio_after: (c.lookups > 0).then(|| c.hits as f64 / c.lookups as f64),
            second_pass_ops_per_sec: median(&c.second),
            second_pass_errors: c.second_errors,
        });
        let faults = self.faults.map(|(injected, h, errors)| FaultReport {
            injected,
            latency_us: Latency::of(&h),
            errors,
        });
        Measurement {
            ops_per_sec: median(&self.rounds),
            ok_per_sec: median(&self.rounds_ok),
            rounds_ops_per_sec: self.rounds,
            ops,
            error_count: self.errors.values().sum(),
            errors: self.errors,
            latency_us: Latency::of(&self.histogram),
            redis,
            postgres,
            client_cpu_us_per_op: self.client_cpu_us.map(per_op),
            cold,
            faults,
            backend: self.backend,
            kind: self.kind,
            scenario: self.scenario,
            concurrency: self.concurrency,
            histogram: self.histogram,
        }
    }
}

/// The median (the upper one of an even count); 0 for none.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

/// `137k`, `6.9k`, `523`, `1.2M`.
pub fn si(x: f64) -> String {
    if x >= 10_000_000.0 {
        format!("{:.0}M", x / 1e6)
    } else if x >= 1_000_000.0 {
        format!("{:.1}M", x / 1e6)
    } else if x >= 10_000.0 {
        format!("{:.0}k", x / 1e3)
    } else if x >= 1_000.0 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

/// Microseconds with sensible digits: `41`, `8.3`, `1.2k`... printed as `µs` values.
fn us(x: f64) -> String {
    if x >= 10_000.0 {
        format!("{:.0}k", x / 1000.0)
    } else if x >= 1000.0 {
        format!("{:.1}k", x / 1000.0)
    } else if x >= 10.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

fn per_op(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else if x < 0.01 {
        format!("{x:.4}")
    } else {
        format!("{x:.2}")
    }
}

/// One of the targets, checked within the run.
#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    /// What is compared.
    pub target: String,
    /// The measured value (a ratio, or a count per request).
    pub value: f64,
    /// `>=` or `<=` ...
    pub relation: &'static str,
    /// ... this.
    pub threshold: f64,
    /// Whether it holds; `None` for reported-only comparisons.
    pub met: Option<bool>,
}

impl Report {
    /// The measurement of `backend` in `scenario` at `concurrency`.
    pub fn find(
        &self,
        backend: &str,
        scenario: Scenario,
        concurrency: usize,
    ) -> Option<&Measurement> {
        self.measurements.iter().find(|m| {
            m.backend == backend && m.scenario == scenario && m.concurrency == concurrency
        })
    }

    /// Checks the targets that the measured backends allow.
    pub fn check_targets(&mut self) {
        let mut checks = Vec::new();
        let mut concurrencies: Vec<usize> =
            self.measurements.iter().map(|m| m.concurrency).collect();
        concurrencies.sort_unstable();
        concurrencies.dedup();
        let ratio = |check: &mut Vec<TargetCheck>,
                     target: String,
                     a: Option<&Measurement>,
                     b: Option<&Measurement>,
                     threshold: Option<f64>| {
            if let (Some(a), Some(b)) = (a, b) {
                if b.ops_per_sec > 0.0 {
                    let value = a.ops_per_sec / b.ops_per_sec;
                    check.push(TargetCheck {
                        target,
                        value,
                        relation: ">=",
                        threshold: threshold.unwrap_or(0.0),
                        met: threshold.map(|t| value >= t),
                    });
                }
            }
        };
        for &c in &concurrencies {
            let get = |b: &str, s| self.find(b, s, c);
            use Scenario::*;
            ratio(
                &mut checks,
                format!("read c={c}: tiered ÷ fred-getex"),
                get("tiered", Read),
                get("fred-getex", Read),
                Some(0.9),
            );
            ratio(
                &mut checks,
                format!("read c={c}: tiered ÷ fred-get (stretch)"),
                get("tiered", Read),
                get("fred-get", Read),
                None,
            );
            ratio(
                &mut checks,
                format!("read c={c}: tiered ÷ redis-store"),
                get("tiered", Read),
                get("redis-store", Read),
                Some(1.0),
            );
            ratio(
                &mut checks,
                format!("read c={c}: tiered-redis ÷ fred-getex"),
                get("tiered-redis", Read),
                get("fred-getex", Read),
                None,
            );
            ratio(
                &mut checks,
                format!("sliding c={c}: tiered sliding ÷ tiered read"),
                get("tiered", Sliding),
                get("tiered", Read),
                Some(0.85),
            );
            ratio(
                &mut checks,
                format!("sliding c={c}: tiered ÷ caching"),
                get("tiered", Sliding),
                get("caching", Sliding),
                Some(20.0),
            );
            if let Some(m) = get("tiered", Sliding) {
                if let Some(r) = &m.redis {
                    checks.push(TargetCheck {
                        target: format!("sliding c={c}: tiered Redis commands per request"),
                        value: r.commands_per_op,
                        relation: "<=",
                        threshold: 1.05,
                        met: Some(r.commands_per_op <= 1.05),
                    });
                }
                if let Some(p) = &m.postgres {
                    checks.push(TargetCheck {
                        target: format!("sliding c={c}: tiered Postgres row writes per request"),
                        value: p.row_writes_per_op,
                        relation: "<=",
                        threshold: 0.01,
                        met: Some(p.row_writes_per_op <= 0.01),
                    });
                }
            }
            ratio(
                &mut checks,
                format!("cold c={c}: tiered first pass ÷ postgres-store load"),
                get("tiered", Cold),
                get("postgres-store", Cold),
                Some(0.8),
            );
            if let Some(hit) = get("tiered", Cold).and_then(|m| m.cold.as_ref()?.hit_ratio_after) {
                checks.push(TargetCheck {
                    target: format!("cold c={c}: tiered hit ratio after the first pass"),
                    value: hit,
                    relation: ">=",
                    threshold: 0.99,
                    met: Some(hit >= 0.99),
                });
            }
            // Client versus Pool, for any backend measured both ways.
            for m in self
                .measurements
                .iter()
                .filter(|m| m.concurrency == c && m.backend.contains("@pool"))
            {
                let base = m.backend.split('@').next().unwrap_or_default();
                ratio(
                    &mut checks,
                    format!("{} c={c}: {} ÷ {base} (Client)", m.scenario, m.backend),
                    Some(m),
                    self.find(base, m.scenario, c),
                    None,
                );
            }
        }
        self.targets = checks;
    }

    /// The report as Markdown: a summary of throughput, then the details per scenario.
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let mut scenarios: Vec<Scenario> = self.measurements.iter().map(|m| m.scenario).collect();
        scenarios.dedup();
        scenarios.sort_unstable();
        scenarios.dedup();
        let mut concurrencies: Vec<usize> =
            self.measurements.iter().map(|m| m.concurrency).collect();
        concurrencies.sort_unstable();
        concurrencies.dedup();
        let mut backends: Vec<&str> = Vec::new();
        for m in &self.measurements {
            if !backends.contains(&m.backend.as_str()) {
                backends.push(&m.backend);
            }
        }

        let _ = writeln!(
            out,
            "### Throughput, requests/s (median of {} rounds)\n",
            self.meta.rounds
        );
        let mut header = String::from("| backend |");
        let mut rule = String::from("|---|");
        for s in &scenarios {
            for c in &concurrencies {
                let _ = write!(header, " {s} c={c} |");
                rule.push_str("---:|");
            }
        }
        let _ = writeln!(out, "{header}\n{rule}");
        for b in &backends {
            let mut row = format!("| {b} |");
            for s in &scenarios {
                for c in &concurrencies {
                    match self.find(b, *s, *c) {
                        Some(m) if m.ops > 0 => {
                            let mark = if m.error_count > 0 { "¹" } else { "" };
                            let _ = write!(row, " {}{mark} |", si(m.ops_per_sec));
                        }
                        _ => row.push_str(" — |"),
                    }
                }
            }
            let _ = writeln!(out, "{row}");
        }
        if self.measurements.iter().any(|m| m.error_count > 0) {
            let _ = writeln!(out, "\n¹ some requests failed: see the errors below.");
        }
        let _ = writeln!(out);

        for s in &scenarios {
            let _ = writeln!(out, "### {s}: latency (µs) and cost per request\n");
            let _ = writeln!(
                out,
                "| backend | c | req/s | p50 | p90 | p99 | p99.9 | max | errors | client CPU µs | Redis CPU µs | Redis cmds | Postgres stmts | row writes | WAL bytes |\n\
                 |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            );
            for b in &backends {
                for c in &concurrencies {
                    let Some(m) = self.find(b, *s, *c) else {
                        continue;
                    };
                    let l = &m.latency_us;
                    let redis = m
                        .redis
                        .as_ref()
                        .map_or("—".into(), |r| per_op(r.commands_per_op));
                    let redis_cpu = m
                        .redis
                        .as_ref()
                        .map_or("—".into(), |r| format!("{:.1}", r.cpu_us_per_op));
                    let client_cpu = m
                        .client_cpu_us_per_op
                        .map_or("—".into(), |x| format!("{x:.1}"));
                    let (stmts, rows, wal) = m.postgres.as_ref().map_or(
                        ("—".into(), "—".into(), "—".into()),
                        |p| {
                            let approx = if p.exact { "" } else { "≈" };
                            (
                                format!("{approx}{}", per_op(p.statements_per_op)),
                                format!("{approx}{}", per_op(p.row_writes_per_op)),
                                format!("{approx}{:.0}", p.wal_bytes_per_op),
                            )
                        },
                    );
                    let _ = writeln!(
                        out,
                        "| {b} | {c} | {} | {} | {} | {} | {} | {} | {} | {client_cpu} | {redis_cpu} | {redis} | {stmts} | {rows} | {wal} |",
                        si(m.ops_per_sec),
                        us(l.p50),
                        us(l.p90),
                        us(l.p99),
                        us(l.p999),
                        us(l.max),
                        m.error_count,
                    );
                }
            }
            let _ = writeln!(out);
            if *s == Scenario::Cold {
                let _ = writeln!(
                    out,
                    "Cold: the backend's cache is emptied, a first pass reads every session once \
                     (the rows above), then a second pass reads them again.\n\n\
                     | backend | c | sessions found (1st pass) | in cache after it | Redis hit ratio (2nd pass) | 2nd pass req/s |\n\
                     |---|---:|---:|---:|---:|---:|"
                );
                for b in &backends {
                    for c in &concurrencies {
                        let Some(cold) = self.find(b, *s, *c).and_then(|m| m.cold.as_ref()) else {
                            continue;
                        };
                        let pct = |x: Option<f64>| {
                            x.map_or("—".into(), |x| format!("{:.1} %", x * 100.0))
                        };
                        let _ = writeln!(
                            out,
                            "| {b} | {c} | {} | {} | {} | {} |",
                            pct(Some(cold.found_ratio)),
                            pct(cold.refilled_ratio),
                            pct(cold.hit_ratio_after),
                            si(cold.second_pass_ops_per_sec),
                        );
                    }
                }
                let _ = writeln!(out);
            }
        }

        if self.measurements.iter().any(|m| m.faults.is_some()) {
            let _ = writeln!(
                out,
                "### Faults ({}): requests that overlapped a fault or its recovery window\n\n\
                 | backend | scenario | c | faults | requests | errors | p50 | p99 | max |\n\
                 |---|---|---:|---:|---:|---:|---:|---:|---:|",
                self.meta.chaos.join(", ")
            );
            for m in &self.measurements {
                let Some(f) = &m.faults else { continue };
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    m.backend,
                    m.scenario,
                    m.concurrency,
                    f.injected,
                    f.latency_us.count,
                    f.errors.values().sum::<u64>(),
                    us(f.latency_us.p50),
                    us(f.latency_us.p99),
                    us(f.latency_us.max),
                );
            }
            let _ = writeln!(out);
        }

        let failing: Vec<&Measurement> = self
            .measurements
            .iter()
            .filter(|m| m.error_count > 0)
            .collect();
        if !failing.is_empty() {
            let _ = writeln!(
                out,
                "### Errors\n\n| backend | scenario | c | count | kind |\n|---|---|---:|---:|---|"
            );
            for m in failing {
                for (kind, n) in &m.errors {
                    let _ = writeln!(
                        out,
                        "| {} | {} | {} | {n} | {} |",
                        m.backend,
                        m.scenario,
                        m.concurrency,
                        kind.replace('|', "/")
                    );
                }
            }
            let _ = writeln!(out);
        }

        let with_redis: Vec<&Measurement> = self
            .measurements
            .iter()
            .filter(|m| m.redis.as_ref().is_some_and(|r| !r.by_command.is_empty()))
            .collect();
        if !with_redis.is_empty() {
            let _ = writeln!(
                out,
                "### Redis commands per request, by command\n\n\
                 (`INFO commandstats` also counts the commands a Lua script runs inside Redis: \
                 an `eval` with its `get` and `set` is one round trip.)\n\n\
                 | backend | scenario | c | commands |\n|---|---|---:|---|"
            );
            for m in with_redis {
                let Some(r) = &m.redis else { continue };
                let cmds: Vec<String> = r
                    .by_command
                    .iter()
                    .map(|(name, x)| format!("{name} {}", per_op(*x)))
                    .collect();
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} |",
                    m.backend,
                    m.scenario,
                    m.concurrency,
                    cmds.join(", ")
                );
            }
            let _ = writeln!(out);
        }

        if !self.targets.is_empty() {
            let _ = writeln!(out, "### Targets (ratios within this run)\n\n| target | value | goal | |\n|---|---:|---:|---|");
            for t in &self.targets {
                let verdict = match t.met {
                    Some(true) => "met",
                    Some(false) => "missed",
                    None => "reported",
                };
                let goal = if t.met.is_some() {
                    format!("{} {}", t.relation, t.threshold)
                } else {
                    "—".into()
                };
                let _ = writeln!(
                    out,
                    "| {} | {:.3} | {goal} | {verdict} |",
                    t.target, t.value
                );
            }
            let _ = writeln!(out);
        }
        out
    }
}
