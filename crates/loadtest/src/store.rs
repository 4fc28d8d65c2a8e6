//! Store mode: set every backend up with the same sessions, then run each scenario at
//! each concurrency, backends taking turns within every round.

use std::{
    collections::BTreeMap,
    sync::{atomic::AtomicU64, Arc},
    time::{Duration, Instant},
};

use fred::{clients::Client, interfaces::ClientLike, types::client::ClientPauseKind};

use crate::{
    backend::{Backend, PlainKeys, Settings},
    cli::{BackendSpec, ChaosSpec, RedisHandle, Scenario, StoreArgs},
    data::{permutation, Payload},
    drive::{drive, FaultClock, Load, RoundResult, Stop},
    error::{check_target, Error, Result},
    postgres::{PgCounters, PgMeter},
    redis::{server_version, Fred, RedisCounters},
    report::{Accumulator, Costs, Meta, Report},
    servers,
    ui::Ui,
};

/// After a `FLUSHALL`, requests within this window count as "during the fault": the
/// time a store needs to notice and refill.
const FLUSH_RECOVERY: Duration = Duration::from_millis(500);

/// What the servers counted between two snapshots.
struct Meter {
    redis: Option<Client>,
    postgres: Option<PgMeter>,
}

#[derive(Default, Clone)]
struct Snapshot {
    redis: Option<RedisCounters>,
    postgres: Option<PgCounters>,
    client_cpu_us: Option<u64>,
}

/// CPU time this process has used (all threads, user + system), microseconds, from
/// `/proc/self/stat`; `None` where that does not exist.
pub fn process_cpu_us() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th
    // fields overall, in clock ticks of 1/100 s (USER_HZ is 100 on Linux).
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) * 10_000)
}

impl Meter {
    async fn snapshot(&mut self) -> Snapshot {
        let client_cpu_us = process_cpu_us();
        let redis = match &self.redis {
            Some(client) => RedisCounters::read(client).await.ok(),
            None => None,
        };
        let postgres = match &mut self.postgres {
            Some(meter) => meter.read().await.ok(),
            None => None,
        };
        Snapshot {
            redis,
            postgres,
            client_cpu_us,
        }
    }

    fn exact(&self) -> bool {
        self.postgres.as_ref().is_some_and(PgMeter::exact)
    }
}

/// Runs store mode; returns the report (not yet printed).
pub async fn run(args: &StoreArgs, ui: &Ui) -> Result<Report> {
    let started = time::OffsetDateTime::now_utc();
    let mut specs: Vec<BackendSpec> = Vec::new();
    for spec in &args.backends {
        if !specs.contains(spec) {
            specs.push(*spec);
        }
    }
    let mut scenarios = args.scenarios.clone();
    scenarios.sort_unstable();
    scenarios.dedup();
    let concurrency = validate_concurrency(&args.load.concurrency)?;
    let needs_redis = specs.iter().any(|s| s.kind.uses_redis()) || !args.chaos.is_empty();
    let needs_pg = specs.iter().any(|s| s.kind.uses_postgres());

    let spawned = if args.spawn_servers {
        ui.status("starting private redis-server and Postgres");
        Some(servers::spawn(needs_redis, needs_pg).await?)
    } else {
        None
    };
    let redis_url = match &spawned {
        Some(s) => s.redis_url.clone(),
        None => args.redis_url.clone(),
    };
    let database_url = match &spawned {
        Some(s) => s.database_url.clone(),
        None => args.database_url.clone(),
    };
    if let Some(url) = &redis_url {
        check_target("--redis-url", url, args.load.allow_remote)?;
    }
    if let Some(url) = &database_url {
        check_target("--database-url", url, args.load.allow_remote)?;
    }
    if needs_redis && redis_url.is_none() {
        return Err(Error::Usage(
            "these backends need Redis: pass --redis-url redis://127.0.0.1:6379 (or --spawn-servers)".into(),
        ));
    }
    if needs_pg && database_url.is_none() {
        return Err(Error::Usage(
            "these backends need Postgres: pass --database-url postgres://user@127.0.0.1/db (or --spawn-servers)".into(),
        ));
    }

    let admin = match &redis_url {
        Some(url) if needs_redis => Some(Fred::connect(url, RedisHandle::Client).await?),
        _ => None,
    };
    let mut meter = Meter {
        redis: admin.as_ref().map(|f| f.admin().clone()),
        postgres: match &database_url {
            Some(url) if needs_pg => Some(PgMeter::connect(url).await?),
            _ => None,
        },
    };

    let settings = Settings {
        redis_url,
        database_url,
        sessions: args.sessions,
        payload: Payload::new(args.load.seed, args.payload_bytes as usize),
        idle: args.idle_timeout,
        touch_interval: args.touch_interval,
        write_ratio: args.write_ratio,
    };
    let mut meta = Meta {
        mode: "store".into(),
        command: command_line(),
        date: started
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        machine: machine(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        sessions: args.sessions,
        payload_bytes: settings.payload.encoded_len(),
        concurrency: concurrency.clone(),
        round_seconds: args
            .load
            .requests
            .is_none()
            .then_some(args.load.duration.as_secs_f64()),
        round_requests: args.load.requests,
        warmup_seconds: args.load.warmup.as_secs_f64(),
        rounds: args.load.rounds,
        seed: args.load.seed,
        idle_timeout_seconds: args.idle_timeout.as_secs_f64(),
        write_ratio: args.write_ratio,
        chaos: args.chaos.iter().map(ToString::to_string).collect(),
        redis_version: match &meter.redis {
            Some(c) => server_version(c).await,
            None => None,
        },
        postgres_version: meter.postgres.as_ref().map(|p| p.version().to_owned()),
        postgres_counts_exact: meter.postgres.as_ref().map(PgMeter::exact),
        build: BUILD.into(),
        backends: specs
            .iter()
            .map(|s| (s.to_string(), s.kind.describe().to_owned()))
            .collect(),
        ..Meta::default()
    };

    // Set up: the floors' keys, then every backend with its own sessions.
    let plain = match (&admin, specs.iter().any(|s| s.kind.is_floor())) {
        (Some(fred), true) => {
            let progress = ui.counter("writing the floors' keys".into(), args.sessions);
            Some(PlainKeys::create(&settings, fred, &progress).await?)
        }
        _ => None,
    };
    meta.cache_entry_bytes = plain.as_ref().map_or_else(
        || {
            settings
                .payload
                .envelope(0, settings.idle, settings.idle / 10)
                .len()
        },
        PlainKeys::value_len,
    );
    let mut backends = Vec::with_capacity(specs.len());
    for spec in &specs {
        let progress = ui.counter(format!("setting up {spec}"), args.sessions);
        let setup_started = Instant::now();
        let backend = Backend::setup(*spec, &settings, plain.as_ref(), &progress).await?;
        let seconds = setup_started.elapsed().as_secs_f64();
        ui.note(format!(
            "set up {spec}: {} sessions in {seconds:.1} s",
            args.sessions
        ));
        meta.setup_seconds.push((spec.to_string(), seconds));
        backends.push(backend);
    }

    let mut accumulators: BTreeMap<(Scenario, usize, usize), Accumulator> = BTreeMap::new();
    let stop = match args.load.requests {
        Some(n) => Stop::Requests(n),
        None => Stop::After(args.load.duration),
    };
    let mut run = Runner {
        args,
        ui,
        meter: &mut meter,
        admin: admin.as_ref(),
        plain: plain.as_ref(),
        settings: &settings,
    };
    // The timed scenarios of one concurrency level share their rounds, so that the noise
    // of a shared machine hits `read` and `sliding` alike too, not only the backends.
    let timed: Vec<Scenario> = scenarios
        .iter()
        .copied()
        .filter(|s| *s != Scenario::Cold)
        .collect();
    for &c in &concurrency {
        if timed.is_empty() {
            break;
        }
        let kinds: Vec<_> = backends.iter().map(|b| b.spec.kind).collect();
        let pairs: Vec<(Scenario, usize)> = timed
            .iter()
            .flat_map(|&s| {
                kinds
                    .iter()
                    .enumerate()
                    .filter(move |(_, k)| k.runs(s))
                    .map(move |(b, _)| (s, b))
            })
            .collect();
        let load = Load {
            scenario: Scenario::Read,
            concurrency: c,
            stop: stop.clone(),
            seed: args.load.seed,
            write_ratio: args.write_ratio,
        };
        run.timed(&mut backends, &pairs, &load, &mut accumulators)
            .await?;
        ui.note(format!(
            "done: {} at concurrency {c}",
            timed
                .iter()
                .map(|s| s.name())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if scenarios.contains(&Scenario::Cold) {
        let active: Vec<usize> = (0..backends.len())
            .filter(|&b| backends[b].spec.kind.runs(Scenario::Cold))
            .collect();
        for &c in &concurrency {
            let load = Load {
                scenario: Scenario::Cold,
                concurrency: c,
                stop: stop.clone(),
                seed: args.load.seed,
                write_ratio: args.write_ratio,
            };
            run.cold(&mut backends, &active, &load, &mut accumulators)
                .await?;
            ui.note(format!("done: cold at concurrency {c}"));
        }
    }

    if !args.keep_data && spawned.is_none() {
        ui.status("deleting the sessions the run created");
        for backend in &backends {
            backend.cleanup(&settings).await;
        }
        if let (Some(plain), Some(admin)) = (&plain, &admin) {
            plain.delete(admin).await;
        }
    }
    if let Some(admin) = &admin {
        admin.quit().await;
    }
    drop(spawned);

    let mut report = Report {
        meta,
        measurements: accumulators
            .into_values()
            .map(Accumulator::finish)
            .collect(),
        targets: Vec::new(),
    };
    report.check_targets();
    Ok(report)
}

/// Which build of the published stores this tool measures.
pub const BUILD: &str = "tower-sessions 0.14, tower-sessions-redis-store 0.16 and \
     tower-sessions-sqlx-store 0.15 (postgres) on fred 10.1 with its default features \
     (no `default-nil-types`: RedisStore's `SET … XX` on a missing key is an error)";

fn validate_concurrency(levels: &[usize]) -> Result<Vec<usize>> {
    let mut levels = levels.to_vec();
    levels.sort_unstable();
    levels.dedup();
    if levels.is_empty() || levels.iter().any(|&c| c == 0 || c > 4096) {
        return Err(Error::Usage(
            "--concurrency takes levels between 1 and 4096, e.g. 1,16,64".into(),
        ));
    }
    Ok(levels)
}

/// The command line, as typed.
pub fn command_line() -> String {
    let mut args = std::env::args();
    let program = args
        .next()
        .map(|p| {
            std::path::Path::new(&p)
                .file_name()
                .map_or(p.clone(), |f| f.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    std::iter::once(program)
        .chain(args.map(|a| if a.contains(' ') { format!("'{a}'") } else { a }))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Cores, CPU model and kernel of this machine.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_owned())
        .unwrap_or_default();
    format!("{cores} cores, {cpu}, Linux {kernel}")
}

struct Runner<'a> {
    args: &'a StoreArgs,
    ui: &'a Ui,
    meter: &'a mut Meter,
    admin: Option<&'a Fred>,
    plain: Option<&'a PlainKeys>,
    settings: &'a Settings,
}

impl Runner<'_> {
    /// One measured (or warm-up) run of `backend`, with faults when asked for.
    async fn measure(
        &mut self,
        backend: &Backend,
        load: &Load,
        label: String,
        chaos: bool,
    ) -> (RoundResult, Snapshot, Option<u64>) {
        let live = Arc::new(AtomicU64::new(0));
        let _rate = self.ui.rate(label, live.clone());
        let before = self.meter.snapshot().await;
        let (clock, injector) = match (chaos && !self.args.chaos.is_empty(), self.admin) {
            (true, Some(admin)) => {
                let clock = Arc::new(FaultClock::default());
                let (tx, rx) = tokio::sync::watch::channel(false);
                let tasks: Vec<_> = self
                    .args
                    .chaos
                    .iter()
                    .map(|spec| {
                        tokio::spawn(inject(
                            admin.admin().clone(),
                            *spec,
                            clock.clone(),
                            rx.clone(),
                        ))
                    })
                    .collect();
                (Some(clock), Some((tx, tasks)))
            }
            _ => (None, None),
        };
        let round = drive(backend.op(), load, &live, clock.clone()).await;
        let injected = match injector {
            Some((tx, tasks)) => {
                let _ = tx.send(true);
                for task in tasks {
                    let _ = task.await;
                }
                clock.map(|c| c.started())
            }
            None => None,
        };
        let after = self.meter.snapshot().await;
        (round, delta(&before, &after), injected)
    }

    fn costs(&self, backend: &Backend, d: &Snapshot) -> Costs {
        let kind = backend.spec.kind;
        Costs {
            redis: d.redis.clone().filter(|_| kind.uses_redis()),
            postgres: d
                .postgres
                .filter(|_| kind.uses_postgres())
                .map(|p| (p, self.meter.exact())),
            client_cpu_us: d.client_cpu_us,
        }
    }

    async fn restore_all(&mut self, backends: &mut [Backend]) -> Result<()> {
        for backend in backends.iter_mut() {
            let progress = self.ui.counter(
                format!("restoring {}", backend.spec),
                self.settings.sessions,
            );
            backend.restore(self.settings, &progress).await?;
        }
        if let (Some(plain), Some(admin)) = (self.plain, self.admin) {
            let progress = self
                .ui
                .counter("restoring the floors' keys".into(), self.settings.sessions);
            plain.write(self.settings, admin, &progress).await?;
        }
        Ok(())
    }

    /// `read`, `sliding`, `mixed` at one concurrency: a warm-up of every (scenario,
    /// backend) pair, then rounds in which every pair takes its turn.
    async fn timed(
        &mut self,
        backends: &mut [Backend],
        pairs: &[(Scenario, usize)],
        load: &Load,
        out: &mut BTreeMap<(Scenario, usize, usize), Accumulator>,
    ) -> Result<()> {
        let c = load.concurrency;
        if !self.args.load.warmup.is_zero() {
            for &(scenario, b) in pairs {
                let mut warm = load.clone();
                warm.scenario = scenario;
                warm.stop = Stop::After(self.args.load.warmup);
                let label = format!("{scenario} c={c} {} warm-up", backends[b].spec);
                let _ = self.measure(&backends[b], &warm, label, false).await;
            }
        }
        let rounds = self.args.load.rounds as usize;
        let flushes = self
            .args
            .chaos
            .iter()
            .any(|c| matches!(c, ChaosSpec::Flush { .. }));
        for r in 0..rounds {
            for k in 0..pairs.len() {
                // Rotate who goes first, so no pair always follows the same one.
                let (scenario, b) = pairs[(k + r * (pairs.len() / rounds).max(1)) % pairs.len()];
                let mut round_load = load.clone();
                round_load.scenario = scenario;
                round_load.seed = load.seed.wrapping_add(r as u64);
                let label = format!(
                    "{scenario} c={c} {} round {}/{rounds}",
                    backends[b].spec,
                    r + 1
                );
                let (round, d, injected) =
                    self.measure(&backends[b], &round_load, label, true).await;
                let costs = self.costs(&backends[b], &d);
                out.entry((scenario, c, b))
                    .or_insert_with(|| {
                        Accumulator::new(
                            backends[b].spec.to_string(),
                            Some(backends[b].spec.kind),
                            scenario,
                            c,
                        )
                    })
                    .add_round(&round, costs, injected);
                if flushes {
                    self.restore_all(backends).await?;
                }
            }
        }
        Ok(())
    }

    /// `cold`: empty the cache, read every session once (measured), see what the cache
    /// holds, read them all again.
    async fn cold(
        &mut self,
        backends: &mut [Backend],
        active: &[usize],
        load: &Load,
        out: &mut BTreeMap<(Scenario, usize, usize), Accumulator>,
    ) -> Result<()> {
        let c = load.concurrency;
        let per_pass = match self.args.load.requests {
            Some(n) => n.min(self.settings.sessions),
            None => self.settings.sessions,
        };
        let rounds = self.args.load.rounds as usize;
        for r in 0..rounds {
            let order = Arc::new(permutation(
                self.settings.sessions as usize,
                self.args.load.seed.wrapping_add(r as u64),
            ));
            let order = Arc::new(order[..per_pass as usize].to_vec());
            for k in 0..active.len() {
                let b = active[(k + r) % active.len()];
                let spec = backends[b].spec;
                self.ui
                    .status(format!("cold c={c} {spec}: emptying its cache"));
                backends[b].empty_cache().await?;
                let mut pass = load.clone();
                pass.stop = Stop::Pass(order.clone());
                let label = format!("cold c={c} {spec} round {}/{rounds}, first pass", r + 1);
                let (first, d1, injected) = self.measure(&backends[b], &pass, label, true).await;
                let cached = if backends[b].has_cache() {
                    backends[b].cached_sessions().await
                } else {
                    None
                };
                let label = format!("cold c={c} {spec} round {}/{rounds}, second pass", r + 1);
                let (second, d2, _) = self.measure(&backends[b], &pass, label, false).await;
                let costs = self.costs(&backends[b], &d1);
                let second_redis = d2.redis.filter(|_| backends[b].cache_in_redis());
                let acc = out.entry((Scenario::Cold, c, b)).or_insert_with(|| {
                    Accumulator::new(spec.to_string(), Some(spec.kind), Scenario::Cold, c)
                });
                acc.add_round(&first, costs, injected);
                acc.add_cold(&first, cached, &second, second_redis.as_ref());
            }
            self.restore_all(backends).await?;
        }
        Ok(())
    }
}

fn delta(before: &Snapshot, after: &Snapshot) -> Snapshot {
    Snapshot {
        redis: match (&before.redis, &after.redis) {
            (Some(b), Some(a)) => Some(a.since(b)),
            _ => None,
        },
        postgres: match (&before.postgres, &after.postgres) {
            (Some(b), Some(a)) => Some(a.since(b)),
            _ => None,
        },
        client_cpu_us: match (before.client_cpu_us, after.client_cpu_us) {
            (Some(b), Some(a)) => Some(a.saturating_sub(b)),
            _ => None,
        },
    }
}

/// Injects `spec` into Redis until `stop` turns true: the first fault half a period in,
/// then one per period. Returns how many it injected.
async fn inject(
    admin: Client,
    spec: ChaosSpec,
    clock: Arc<FaultClock>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> u64 {
    let every = match spec {
        ChaosSpec::Flush { every } | ChaosSpec::Pause { every, .. } => every,
    };
    let mut next = tokio::time::Instant::now() + every / 2;
    let mut injected = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = stop.changed() => return injected,
        }
        if *stop.borrow() {
            return injected;
        }
        clock.begin();
        match spec {
            ChaosSpec::Flush { .. } => {
                let _: Result<(), _> = admin.flushall(false).await;
                tokio::time::sleep(FLUSH_RECOVERY).await;
            }
            ChaosSpec::Pause { pause, .. } => {
                let ms = i64::try_from(pause.as_millis()).unwrap_or(i64::MAX);
                let _ = fred::interfaces::ClientInterface::client_pause(
                    &admin,
                    ms,
                    Some(ClientPauseKind::All),
                )
                .await;
                tokio::time::sleep(pause).await;
            }
        }
        clock.end();
        injected += 1;
        next += every;
    }
}
