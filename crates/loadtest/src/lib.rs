//! session-loadtest: what a session read costs, side by side with the stores users pick
//! today, on your own machine.
//!
//! **Store mode** drives `SessionStore` implementations in-process with the same sessions
//! (same data, same bytes): this project's `TieredStore` (Redis + Postgres, Redis only,
//! memory + SQLite), tower-sessions-redis-store's `RedisStore`,
//! `CachingSessionStore<RedisStore, PostgresStore>`, tower-sessions-sqlx-store's
//! `PostgresStore`, and the floors, a plain fred `GET` and `GETEX` of the bytes the tiered
//! store keeps. Each scenario (`read`, `sliding`, `mixed`, `cold`) runs at each
//! concurrency; within a round the backends take turns, so the noise of a shared machine
//! hits them alike, and the median round is reported with latency percentiles (HDR
//! histograms), errors by kind, and what each request cost the servers: Redis commands
//! (`INFO commandstats`) and Postgres statements, row writes and WAL bytes
//! (`pg_stat_statements`).
//!
//! **HTTP mode** signs users in through a server's login request and reads a page with
//! their cookies.
//!
//! The binary is a thin shell over [`run`]; tests call [`store::run`] and [`http_run`]
//! and inspect the [`Report`](report::Report).

pub mod backend;
pub mod cli;
pub mod data;
pub mod drive;
pub mod error;
pub mod http;
pub mod plot;
pub mod postgres;
pub mod redis;
pub mod report;
pub mod servers;
pub mod store;
pub mod ui;

use std::sync::{atomic::AtomicU64, Arc};

use cli::{Cli, Command, HttpArgs, LoadArgs, Scenario};
use drive::{drive, Load, Stop};
use error::{Error, Result};
use report::{Accumulator, Meta, Report};
use ui::Ui;

/// Runs a parsed command line: measures, prints the tables to stdout, writes `--json`
/// and `--plot`. Returns the report.
pub async fn run(cli: Cli) -> Result<Report> {
    let (report, load) = match &cli.command {
        Command::Store(args) => {
            let ui = Ui::new(args.load.quiet);
            let report = store::run(args, &ui).await;
            ui.finish();
            (report?, &args.load)
        }
        Command::Http(args) => {
            let ui = Ui::new(args.load.quiet);
            let report = http_run(args, &ui).await;
            ui.finish();
            (report?, &args.load)
        }
    };
    print!("{}", header(&report.meta));
    print!("{}", report.to_markdown());
    write_outputs(&report, load)?;
    Ok(report)
}

/// Writes `--json` and `--plot` if asked for.
pub fn write_outputs(report: &Report, load: &LoadArgs) -> Result<()> {
    if let Some(path) = &load.json {
        let text = serde_json::to_string_pretty(report).map_err(|e| Error::Output {
            path: path.display().to_string(),
            source: e.into(),
        })?;
        std::fs::write(path, text).map_err(|source| Error::Output {
            path: path.display().to_string(),
            source,
        })?;
    }
    if let Some(path) = &load.plot {
        plot::draw(report, path)?;
    }
    Ok(())
}

/// The lines above the tables: what ran, where, when.
pub fn header(meta: &Meta) -> String {
    let mut out = format!(
        "## session-loadtest ({mode} mode)\n\n- command: `{}`\n- date: {}\n- machine: {}\n",
        meta.command,
        meta.date,
        meta.machine,
        mode = meta.mode
    );
    if meta.mode == "store" {
        out.push_str(&format!(
            "- {} sessions per backend, {} B of MessagePack data each ({} B per tiered cache entry); \
             rounds of {} after {:.1} s of warm-up, {} rounds, backends in turn; seed {}\n",
            meta.sessions,
            meta.payload_bytes,
            meta.cache_entry_bytes,
            meta.round_requests.map_or_else(
                || format!("{:.1} s", meta.round_seconds.unwrap_or(0.0)),
                |n| format!("{n} requests")
            ),
            meta.warmup_seconds,
            meta.rounds,
            meta.seed,
        ));
        out.push_str(&format!(
            "- servers: Redis {}, Postgres {} (Postgres counts {})\n- build: {}\n",
            meta.redis_version.as_deref().unwrap_or("—"),
            meta.postgres_version.as_deref().unwrap_or("—"),
            match meta.postgres_counts_exact {
                Some(true) => "exact, from pg_stat_statements",
                Some(false) => "approximate: pg_stat_statements is not preloaded",
                None => "—",
            },
            meta.build,
        ));
        if !meta.chaos.is_empty() {
            out.push_str(&format!("- faults: {}\n", meta.chaos.join(", ")));
        }
        out.push_str("- backends (time to create their sessions):\n");
        for (name, what) in &meta.backends {
            let setup = meta
                .setup_seconds
                .iter()
                .find(|(n, _)| n == name)
                .map_or(String::new(), |(_, s)| format!(" ({s:.1} s)"));
            out.push_str(&format!("  - `{name}`: {what}{setup}\n"));
        }
    }
    out.push_str(
        "\nThe machine is shared with the servers and other work: read the ratios between \
         backends of one run, not the absolute numbers.\n\n",
    );
    out
}

/// Runs HTTP mode; returns the report (not yet printed).
pub async fn http_run(args: &HttpArgs, ui: &Ui) -> Result<Report> {
    let started = time::OffsetDateTime::now_utc();
    let progress = ui.counter("signing in".into(), args.sessions);
    let op = backend::Op::Http(http::sign_in(args, &progress).await?);
    let name = format!("http GET {}", args.read_path);
    let mut concurrency = args.load.concurrency.clone();
    concurrency.sort_unstable();
    concurrency.dedup();
    if concurrency.is_empty() || concurrency.contains(&0) {
        return Err(Error::Usage(
            "--concurrency takes levels of at least 1".into(),
        ));
    }
    let mut measurements = Vec::new();
    for &c in &concurrency {
        let mut load = Load {
            scenario: Scenario::Read,
            concurrency: c,
            stop: Stop::After(args.load.warmup),
            seed: args.load.seed,
            write_ratio: 0.0,
        };
        if !args.load.warmup.is_zero() {
            let live = Arc::new(AtomicU64::new(0));
            let _rate = ui.rate(format!("{name} c={c} warm-up"), live.clone());
            drive(&op, &load, &live, None).await;
        }
        load.stop = match args.load.requests {
            Some(n) => Stop::Requests(n),
            None => Stop::After(args.load.duration),
        };
        let mut acc = Accumulator::new(name.clone(), None, Scenario::Read, c);
        for r in 0..args.load.rounds {
            let live = Arc::new(AtomicU64::new(0));
            let _rate = ui.rate(
                format!("{name} c={c} round {}/{}", r + 1, args.load.rounds),
                live.clone(),
            );
            load.seed = args.load.seed.wrapping_add(u64::from(r));
            let cpu = store::process_cpu_us();
            let round = drive(&op, &load, &live, None).await;
            let costs = report::Costs {
                client_cpu_us: cpu
                    .zip(store::process_cpu_us())
                    .map(|(a, b)| b.saturating_sub(a)),
                ..report::Costs::default()
            };
            acc.add_round(&round, costs, None);
        }
        measurements.push(acc.finish());
    }
    let meta = Meta {
        mode: "http".into(),
        command: store::command_line(),
        date: started
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        machine: store::machine(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        sessions: args.sessions,
        concurrency,
        round_seconds: args
            .load
            .requests
            .is_none()
            .then_some(args.load.duration.as_secs_f64()),
        round_requests: args.load.requests,
        warmup_seconds: args.load.warmup.as_secs_f64(),
        rounds: args.load.rounds,
        seed: args.load.seed,
        backends: vec![(
            name,
            format!(
                "{} with {} signed-in sessions",
                args.base_url, args.sessions
            ),
        )],
        ..Meta::default()
    };
    Ok(Report {
        meta,
        measurements,
        targets: Vec::new(),
    })
}
