//! The support library's own tests, against the real servers it starts.

use std::process::Command;
use std::time::Duration;

use fred::prelude::*;
use sqlx::{Connection, PgConnection};

use crate::process::process_exists;
use crate::{poll_some, poll_until, shared_postgres, PgStats, PostgresCluster, RedisServer};

const GONE_TIMEOUT: Duration = Duration::from_secs(10);
const TICK: Duration = Duration::from_millis(20);

async fn gone(pid: u32) -> bool {
    poll_until(GONE_TIMEOUT, TICK, || async move { !process_exists(pid) }).await
}

#[tokio::test]
async fn redis_server_counts_commands_and_is_removed_on_drop() {
    let redis = RedisServer::start().await;
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}", redis.port()));
    redis.reset_stats().await;
    let admin = redis.admin();
    let () = admin.set("k", "v", None, None, false).await.expect("SET");
    let value: String = admin.get("k").await.expect("GET");
    assert_eq!(value, "v");
    let calls = redis.command_calls().await;
    assert_eq!(calls.get("set"), Some(&1), "{calls:?}");
    assert_eq!(calls.get("get"), Some(&1), "{calls:?}");

    redis.flushall().await;
    let exists: u64 = admin.exists("k").await.expect("EXISTS");
    assert_eq!(exists, 0);

    let (pid, dir) = (redis.pid(), redis.dir().to_owned());
    drop(redis);
    assert!(!process_exists(pid), "redis-server {pid} survived drop");
    assert!(!dir.exists(), "{} survived drop", dir.display());
}

#[tokio::test]
async fn redis_restart_keeps_port_and_saved_keys() {
    let mut redis = RedisServer::start_with(&["--dbfilename", "dump.rdb"]).await;
    let port = redis.port();
    let () = redis
        .admin()
        .set("kept", "1", None, None, false)
        .await
        .expect("SET");
    let _: Value = redis.command("SAVE", Vec::new()).await;

    let old_pid = redis.pid();
    redis.kill();
    assert!(
        !process_exists(old_pid),
        "SIGKILLed redis-server {old_pid} not reaped"
    );
    assert!(redis.admin().ping::<String>(None).await.is_err());

    redis.restart().await;
    assert_eq!(redis.port(), port);
    assert_ne!(redis.pid(), old_pid);
    let kept: Option<String> = redis.admin().get("kept").await.expect("GET");
    assert_eq!(kept.as_deref(), Some("1"));
}

#[tokio::test]
async fn redis_stop_process_hangs_clients_until_cont() {
    let redis = RedisServer::start().await;
    let client = Builder::from_config(Config::from_url(&redis.url()).expect("url"))
        .with_performance_config(|perf| perf.default_command_timeout = Duration::from_millis(300))
        .build()
        .expect("client");
    client.init().await.expect("connect");

    redis.stop_process();
    let hung = client.ping::<String>(None).await;
    assert!(hung.is_err(), "PING answered by a stopped server: {hung:?}");
    redis.cont_process();
    let resumed = poll_until(Duration::from_secs(5), TICK, || async {
        client.ping::<String>(None).await.is_ok()
    })
    .await;
    assert!(resumed, "no PONG after SIGCONT");
    let _ = client.quit().await;
}

#[tokio::test]
async fn redis_extra_args_reach_the_server() {
    let redis =
        RedisServer::start_with(&["--maxmemory", "2mb", "--maxmemory-policy", "allkeys-lru"]).await;
    let config: Vec<String> = redis
        .command("CONFIG", vec!["GET".into(), "maxmemory".into()])
        .await;
    assert_eq!(config, ["maxmemory", "2097152"]);
    // --enable-debug-command local is on.
    let _: Value = redis
        .command("DEBUG", vec!["SLEEP".into(), "0".into()])
        .await;
}

#[tokio::test]
async fn private_postgres_stops_starts_and_is_removed_on_drop() {
    let cluster = PostgresCluster::init().await;
    let url = cluster.create_database().await;
    assert!(url.starts_with(&format!(
        "postgres://postgres@127.0.0.1:{}/t_",
        cluster.port()
    )));

    let options = url
        .parse::<sqlx::postgres::PgConnectOptions>()
        .expect("url")
        .application_name("doomed");
    let mut doomed = PgConnection::connect_with(&options).await.expect("connect");
    assert_eq!(cluster.terminate_backends("doomed").await, 1);
    assert!(sqlx::query("SELECT 1").execute(&mut doomed).await.is_err());

    cluster.stop_fast().await;
    assert!(PgConnection::connect(&url).await.is_err());
    cluster.start().await;
    cluster.stop_immediate().await;
    cluster.start().await;
    let mut conn = PgConnection::connect(&url)
        .await
        .expect("connect after restart");
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut conn)
        .await
        .expect("SELECT");
    assert_eq!(one, 1);
    conn.close().await.expect("close");

    let dir = cluster.dir().to_owned();
    let postmaster = postmaster_pid(&dir);
    drop(cluster);
    assert!(!dir.exists(), "{} survived drop", dir.display());
    assert!(
        gone(postmaster).await,
        "postmaster {postmaster} survived drop"
    );
}

fn postmaster_pid(dir: &std::path::Path) -> u32 {
    let pid_file =
        std::fs::read_to_string(dir.join("data/postmaster.pid")).expect("postmaster.pid");
    pid_file
        .lines()
        .next()
        .and_then(|line| line.parse().ok())
        .expect("pid on line 1")
}

// Two tests, each on its own runtime, share the cluster: nothing in the static may be
// tied to the runtime of whichever test started it.
#[tokio::test]
async fn shared_postgres_serves_one_runtime() {
    shared_postgres_serves_a_test().await;
}

#[tokio::test]
async fn shared_postgres_serves_another_runtime() {
    shared_postgres_serves_a_test().await;
}

async fn shared_postgres_serves_a_test() {
    let cluster = shared_postgres().await;
    let urls = futures_join(cluster).await;
    for url in urls {
        let mut conn = PgConnection::connect(&url).await.expect("connect");
        sqlx::query("CREATE TABLE t (x int)")
            .execute(&mut conn)
            .await
            .expect("CREATE");
        conn.close().await.expect("close");
    }
}

/// Creates several databases at once, as parallel tests do.
async fn futures_join(cluster: &'static PostgresCluster) -> Vec<String> {
    let tasks: Vec<_> = (0..4)
        .map(|_| tokio::spawn(cluster.create_database()))
        .collect();
    let mut urls = Vec::new();
    for task in tasks {
        urls.push(task.await.expect("create_database task"));
    }
    urls.sort();
    urls.dedup();
    assert_eq!(urls.len(), 4);
    urls
}

#[tokio::test]
async fn pg_stats_counts_exactly_what_a_pool_did() {
    let url = shared_postgres().await.create_database().await;
    let pool = sqlx::PgPool::connect(&url).await.expect("pool");
    sqlx::query("CREATE TABLE tiered_sessions (key text PRIMARY KEY, v int)")
        .execute(&pool)
        .await
        .expect("CREATE");
    pool.close().await;

    let before = PgStats::settled(&url).await;
    // Reading stats changes nothing by itself.
    let again = PgStats::settled(&url).await;
    let nothing = again.since(&before);
    assert_eq!(
        (
            nothing.xact_commit,
            nothing.xact_rollback,
            nothing.n_tup_ins,
            nothing.n_tup_upd,
            nothing.n_tup_del
        ),
        (0, 0, 0, 0, 0),
        "{nothing:#?}"
    );
    assert!(
        matches!(nothing.statement_calls(), None | Some(0)),
        "{nothing:#?}"
    );

    let mut conn = PgConnection::connect(&url).await.expect("connect");
    for key in ["a", "b", "c"] {
        sqlx::query("INSERT INTO tiered_sessions VALUES ($1, 1)")
            .bind(key)
            .execute(&mut conn)
            .await
            .expect("INSERT");
    }
    sqlx::query("UPDATE tiered_sessions SET v = 2 WHERE key = 'a'")
        .execute(&mut conn)
        .await
        .expect("UPDATE");
    let mut tx = conn.begin().await.expect("BEGIN");
    sqlx::query("DELETE FROM tiered_sessions WHERE key = 'b'")
        .execute(&mut *tx)
        .await
        .expect("DELETE");
    tx.rollback().await.expect("ROLLBACK");
    conn.close().await.expect("close");

    let cost = PgStats::settled(&url).await.since(&before);
    assert_eq!((cost.n_tup_ins, cost.n_tup_upd), (3, 1), "{cost:#?}");
    // Rolled-back deletes still count as deleted tuples.
    assert_eq!(cost.n_tup_del, 1, "{cost:#?}");
    // Connection startup + 3 inserts + 1 update, plus one for each statement sqlx prepared
    // outside a transaction (INSERT, UPDATE): its Parse/Describe/Sync is a transaction too.
    assert_eq!(
        (cost.xact_commit, cost.xact_rollback),
        (1 + 3 + 1 + 2, 1),
        "{cost:#?}"
    );
    if cost.statements.is_some() {
        assert_eq!(
            cost.calls_matching("insert into tiered_sessions"),
            Some(3),
            "{cost:#?}"
        );
        assert_eq!(
            cost.calls_matching("update tiered_sessions"),
            Some(1),
            "{cost:#?}"
        );
    }
}

#[tokio::test]
async fn pg_stats_settled_returns_at_once_without_open_connections() {
    let url = shared_postgres().await.create_database().await;
    let started = std::time::Instant::now();
    let _ = PgStats::settled(&url).await;
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn poll_helpers_respect_the_deadline() {
    let mut calls = 0;
    let met = poll_until(
        Duration::from_millis(100),
        Duration::from_millis(10),
        || {
            calls += 1;
            async { false }
        },
    )
    .await;
    assert!(!met);
    assert!(calls >= 2, "checked {calls} times");
    let value = poll_some(Duration::from_secs(1), TICK, || async { Some(7) }).await;
    assert_eq!(value, Some(7));
}

/// Env var that turns [`leak_servers_and_exit`] on in a child copy of this test binary.
const LEAK_CHILD: &str = "TIERED_SESSIONS_TESTS_LEAK_CHILD";

/// Runs this test binary again with only [`leak_servers_and_exit`], which starts the shared
/// cluster and a Redis it never drops and exits; the watchdogs must clean both up.
#[test]
fn servers_do_not_outlive_the_test_process() {
    let exe = std::env::current_exe().expect("current_exe");
    let out = Command::new(exe)
        .args([
            "tests::leak_servers_and_exit",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(LEAK_CHILD, "1")
        .output()
        .expect("re-run the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix("LEAKED "))
        .unwrap_or_else(|| {
            panic!(
                "child printed no LEAKED line:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let mut fields = line.split(' ');
    let mut next = || fields.next().expect("LEAKED fields").to_owned();
    let (pg_dir, postmaster, redis_pid, redis_dir) = (next(), next(), next(), next());
    let postmaster: u32 = postmaster.parse().expect("pid");
    let redis_pid: u32 = redis_pid.parse().expect("pid");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        assert!(
            gone(postmaster).await,
            "postmaster {postmaster} outlived its test process"
        );
        assert!(
            gone(redis_pid).await,
            "redis-server {redis_pid} outlived its test process"
        );
        for dir in [pg_dir, redis_dir] {
            let removed = poll_until(GONE_TIMEOUT, TICK, || {
                let exists = std::path::Path::new(&dir).exists();
                async move { !exists }
            })
            .await;
            assert!(removed, "{dir} outlived its test process");
        }
    });
}

#[tokio::test]
#[ignore = "run by servers_do_not_outlive_the_test_process in a child process"]
async fn leak_servers_and_exit() {
    if std::env::var_os(LEAK_CHILD).is_none() {
        return;
    }
    let cluster = shared_postgres().await;
    let redis = RedisServer::start().await;
    println!(
        "LEAKED {} {} {} {}",
        cluster.dir().display(),
        postmaster_pid(cluster.dir()),
        redis.pid(),
        redis.dir().display()
    );
    std::mem::forget(redis);
    // Exit as a crashed or killed test binary would: no destructors, statics never dropped.
    std::process::exit(0);
}
