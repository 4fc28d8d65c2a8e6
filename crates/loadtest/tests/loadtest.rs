//! The tool against real servers the tests start themselves (a private `redis-server` per
//! test, a fresh database on the binary's private Postgres): a few seconds of load each,
//! then checks that the report is consistent with itself and with the cost model.

use clap::Parser;
use session_loadtest::{
    cli::{Cli, Command, HttpArgs, Scenario, StoreArgs},
    report::{Measurement, Report},
    ui::Ui,
};
use tiered_sessions_tests::{shared_postgres, RedisServer};

fn store_args(args: &[&str]) -> StoreArgs {
    let argv = std::iter::once("session-loadtest")
        .chain(std::iter::once("store"))
        .chain(args.iter().copied());
    match Cli::try_parse_from(argv).expect("valid arguments").command {
        Command::Store(args) => args,
        Command::Http(_) => unreachable!("parsed as store"),
    }
}

fn http_args(args: &[&str]) -> HttpArgs {
    let argv = std::iter::once("session-loadtest")
        .chain(std::iter::once("http"))
        .chain(args.iter().copied());
    match Cli::try_parse_from(argv).expect("valid arguments").command {
        Command::Http(args) => args,
        Command::Store(_) => unreachable!("parsed as http"),
    }
}

fn get<'a>(report: &'a Report, backend: &str, scenario: Scenario) -> &'a Measurement {
    report
        .measurements
        .iter()
        .find(|m| m.backend == backend && m.scenario == scenario)
        .unwrap_or_else(|| panic!("no measurement of {backend} in {scenario}"))
}

/// Every measurement counts each request once: in `ops`, in the histogram and in the
/// latency percentiles.
fn assert_consistent(report: &Report) {
    assert!(!report.measurements.is_empty());
    for m in &report.measurements {
        let what = format!("{} {} c={}", m.backend, m.scenario, m.concurrency);
        assert!(m.ops > 0, "{what}: no requests");
        assert_eq!(m.ops, m.histogram.len(), "{what}: ops vs histogram");
        assert_eq!(m.ops, m.latency_us.count, "{what}: ops vs latency count");
        assert_eq!(m.error_count, m.errors.values().sum::<u64>(), "{what}");
        assert!(m.error_count <= m.ops, "{what}");
        assert!(
            m.ops_per_sec > 0.0 && m.ok_per_sec <= m.ops_per_sec + 1e-6,
            "{what}"
        );
        let l = &m.latency_us;
        assert!(
            l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max,
            "{what}: {l:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_mode_reports_throughput_latency_and_cost_per_request() {
    let redis = RedisServer::start().await;
    let database = shared_postgres().await.create_database().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("report.json");
    let svg = dir.path().join("report.svg");
    let args = store_args(&[
        "--redis-url",
        &redis.url(),
        "--database-url",
        &database,
        "--backends",
        "tiered,tiered-redis,tiered-sqlite,redis-store,caching,postgres-store,fred-get,fred-getex",
        "--sessions",
        "300",
        "--duration",
        "300ms",
        "--warmup",
        "0s",
        "--rounds",
        "1",
        "--concurrency",
        "8",
        "--json",
        json.to_str().expect("utf-8 path"),
        "--plot",
        svg.to_str().expect("utf-8 path"),
    ]);
    let report = session_loadtest::store::run(&args, &Ui::hidden())
        .await
        .expect("the run succeeds");
    session_loadtest::write_outputs(&report, &args.load).expect("outputs written");
    assert_consistent(&report);

    // read: one GET per request for the tiered stores, nothing in Postgres.
    let tiered = get(&report, "tiered", Scenario::Read);
    assert_eq!(tiered.error_count, 0, "{:?}", tiered.errors);
    let redis_cost = tiered.redis.as_ref().expect("Redis counted");
    assert!(
        (1.0..=1.05).contains(&redis_cost.commands_per_op),
        "{redis_cost:?}"
    );
    assert!(redis_cost.by_command.contains_key("get"), "{redis_cost:?}");
    let pg = tiered.postgres.as_ref().expect("Postgres counted");
    assert!(pg.exact, "the test cluster preloads pg_stat_statements");
    assert!(pg.row_writes_per_op <= 0.01, "{pg:?}");

    // sliding: the tiered store writes nothing back; the published stores write every time.
    let tiered = get(&report, "tiered", Scenario::Sliding);
    let redis_cost = tiered.redis.as_ref().expect("Redis counted");
    assert!(redis_cost.commands_per_op <= 1.05, "{redis_cost:?}");
    assert!(tiered.postgres.as_ref().expect("counted").row_writes_per_op <= 0.01);
    let caching = get(&report, "caching", Scenario::Sliding);
    let pg = caching.postgres.as_ref().expect("counted");
    assert!((0.95..=1.05).contains(&pg.row_writes_per_op), "{pg:?}");
    assert!(pg.wal_bytes_per_op > 50.0, "{pg:?}");
    let redis_store = get(&report, "redis-store", Scenario::Sliding);
    let cost = redis_store.redis.as_ref().expect("counted");
    assert!(
        (1.95..=2.05).contains(&cost.commands_per_op),
        "GET + SET: {cost:?}"
    );
    assert!(
        report.find("fred-get", Scenario::Sliding, 8).is_none(),
        "GET does not slide"
    );

    // mixed: about a tenth of the requests write.
    let tiered = get(&report, "tiered", Scenario::Mixed);
    let writes = tiered.postgres.as_ref().expect("counted").row_writes_per_op;
    assert!((0.02..=0.25).contains(&writes), "{writes}");

    // cold: the tiered stores read through and refill; Redis-only stores lost everything;
    // CachingSessionStore fails on its `SET … XX` refill.
    let cold = get(&report, "tiered", Scenario::Cold);
    let stats = cold.cold.as_ref().expect("cold stats");
    assert_eq!(stats.sessions_per_pass, 300);
    assert_eq!(stats.found_ratio, 1.0);
    assert_eq!(stats.refilled_ratio, Some(1.0));
    assert!(
        stats.hit_ratio_after.expect("Redis lookups") >= 0.99,
        "{stats:?}"
    );
    assert!(cold.postgres.as_ref().expect("counted").statements_per_op >= 0.99);
    let sqlite = get(&report, "tiered-sqlite", Scenario::Cold);
    assert_eq!(
        sqlite.cold.as_ref().expect("cold stats").refilled_ratio,
        Some(1.0)
    );
    let lost = get(&report, "redis-store", Scenario::Cold);
    assert_eq!(lost.cold.as_ref().expect("cold stats").found_ratio, 0.0);
    assert_eq!(lost.error_count, lost.ops);
    let caching = get(&report, "caching", Scenario::Cold);
    assert_eq!(caching.error_count, caching.ops, "{:?}", caching.errors);

    // The targets are computed from the same run; the outputs exist.
    assert!(report
        .targets
        .iter()
        .any(|t| t.target.contains("tiered ÷ fred-getex")));
    let parsed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written"))
            .expect("valid JSON");
    assert_eq!(
        parsed["measurements"].as_array().map(Vec::len),
        Some(report.measurements.len())
    );
    let plot = std::fs::read_to_string(&svg).expect("svg written");
    assert!(plot.starts_with("<svg") && plot.contains("tiered-sqlite"));
    let markdown = report.to_markdown();
    assert!(markdown.contains("| tiered |") && markdown.contains("### Targets"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_flush_loses_redis_only_sessions_but_not_tiered_ones() {
    let redis = RedisServer::start().await;
    let database = shared_postgres().await.create_database().await;
    let args = store_args(&[
        "--redis-url",
        &redis.url(),
        "--database-url",
        &database,
        "--backends",
        "tiered,redis-store",
        "--scenarios",
        "read",
        "--sessions",
        "200",
        "--duration",
        "1s",
        "--warmup",
        "0s",
        "--rounds",
        "1",
        "--concurrency",
        "4",
        "--chaos",
        "flush=400ms",
    ]);
    let report = session_loadtest::store::run(&args, &Ui::hidden())
        .await
        .expect("the run succeeds");
    assert_consistent(&report);
    let tiered = get(&report, "tiered", Scenario::Read);
    let faults = tiered.faults.as_ref().expect("faults reported");
    assert!(faults.injected >= 1, "{faults:?}");
    assert!(faults.latency_us.count > 0, "requests during the faults");
    assert_eq!(
        tiered.error_count, 0,
        "read through Postgres: {:?}",
        tiered.errors
    );
    let redis_store = get(&report, "redis-store", Scenario::Read);
    assert!(
        redis_store
            .errors
            .get("session not found")
            .copied()
            .unwrap_or(0)
            > 0,
        "a flush logs RedisStore's users out: {:?}",
        redis_store.errors
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_pause_shows_in_latency_during_faults() {
    let redis = RedisServer::start().await;
    let args = store_args(&[
        "--redis-url",
        &redis.url(),
        "--backends",
        "redis-store",
        "--scenarios",
        "read",
        "--sessions",
        "100",
        "--duration",
        "1s",
        "--warmup",
        "0s",
        "--rounds",
        "1",
        "--concurrency",
        "2",
        "--chaos",
        "pause=300ms/800ms",
    ]);
    let report = session_loadtest::store::run(&args, &Ui::hidden())
        .await
        .expect("the run succeeds");
    assert_consistent(&report);
    let m = get(&report, "redis-store", Scenario::Read);
    let faults = m.faults.as_ref().expect("faults reported");
    assert!(faults.injected >= 1);
    // A request sent during the pause waits for its end.
    assert!(faults.latency_us.max >= 100_000.0, "{faults:?}");
    assert!(m.latency_us.max >= 100_000.0);
}

mod http {
    use axum::{http::StatusCode, routing::get, routing::post, Json, Router};
    use tiered_sessions::{MemoryCache, TieredStore};
    use tower_sessions::Session;

    use super::*;

    #[derive(serde::Deserialize)]
    struct Login {
        username: String,
        password: String,
    }

    async fn login(session: Session, Json(login): Json<Login>) -> StatusCode {
        if login.password != format!("{}-pw", login.username) {
            return StatusCode::UNAUTHORIZED;
        }
        match session.insert("user", login.username).await {
            Ok(()) => StatusCode::NO_CONTENT,
            Err(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    async fn me(session: Session) -> Result<String, StatusCode> {
        match session.get::<String>("user").await {
            Ok(Some(user)) => Ok(user),
            Ok(None) => Err(StatusCode::UNAUTHORIZED),
            Err(_) => Err(StatusCode::SERVICE_UNAVAILABLE),
        }
    }

    /// A login demo in miniature on 127.0.0.1:0; returns its base URL.
    async fn serve() -> String {
        let store = TieredStore::builder(MemoryCache::new(16 << 20))
            .build()
            .expect("store");
        let app = Router::new()
            .route("/api/login", post(login))
            .route("/api/me", get(me))
            .layer(tiered_sessions::session_layer(&store).with_secure(false));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("bound");
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn http_mode_signs_in_then_reads_with_the_cookies() {
        let base = serve().await;
        let args = http_args(&[
            "--base-url",
            &base,
            "--user",
            "alice:alice-pw",
            "--user",
            "bob:bob-pw",
            "--sessions",
            "20",
            "--concurrency",
            "4",
            "--duration",
            "400ms",
            "--warmup",
            "100ms",
            "--rounds",
            "2",
        ]);
        let report = session_loadtest::http_run(&args, &Ui::hidden())
            .await
            .expect("the run succeeds");
        assert_consistent(&report);
        let m = &report.measurements[0];
        assert_eq!(m.backend, "http GET /api/me");
        assert_eq!(m.rounds_ops_per_sec.len(), 2);
        assert_eq!(m.error_count, 0, "{:?}", m.errors);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_login_is_a_clear_error() {
        let base = serve().await;
        let args = http_args(&[
            "--base-url",
            &base,
            "--user",
            "alice:wrong",
            "--sessions",
            "2",
        ]);
        let err = session_loadtest::http_run(&args, &Ui::hidden())
            .await
            .expect_err("the login fails");
        let message = err.to_string();
        assert!(message.starts_with("login failed:"), "{message}");
        assert!(
            message.contains("401") && message.contains("--user"),
            "{message}"
        );
    }
}

/// The binary: bad input is one line on stderr and a non-zero exit, before any load.
mod cli {
    use std::process::Command;

    fn run(args: &[&str]) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_session-loadtest"))
            .args(args)
            .output()
            .expect("the binary runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn one_line_error(args: &[&str], needle: &str) {
        let (ok, stderr) = run(args);
        assert!(!ok, "{args:?} should fail");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }

    #[test]
    fn bad_input_is_a_one_line_error() {
        let closed = tiered_sessions_tests::free_port();
        one_line_error(
            &[
                "store",
                "--redis-url",
                &format!("redis://127.0.0.1:{closed}"),
                "--backends",
                "fred-get",
                "-q",
            ],
            "cannot connect to Redis",
        );
        one_line_error(
            &[
                "store",
                "--database-url",
                "mysql//nope",
                "--backends",
                "postgres-store",
                "-q",
            ],
            "--database-url",
        );
        one_line_error(
            &[
                "store",
                "--database-url",
                &format!("postgres://postgres@127.0.0.1:{closed}/x"),
                "--backends",
                "postgres-store",
                "-q",
            ],
            "cannot connect to Postgres",
        );
        one_line_error(
            &[
                "store",
                "--redis-url",
                "redis://192.0.2.1:6379",
                "--backends",
                "fred-get",
                "-q",
            ],
            "--allow-remote",
        );
        one_line_error(&["store", "--backends", "tiered", "-q"], "--redis-url");
        one_line_error(
            &[
                "http",
                "--base-url",
                &format!("http://127.0.0.1:{closed}"),
                "--user",
                "a:b",
                "-q",
            ],
            "cannot connect to the server",
        );
        let (ok, stderr) = run(&["store", "--backends", "mongo"]);
        assert!(
            !ok && stderr.contains("unknown backend `mongo`"),
            "{stderr}"
        );
    }
}
