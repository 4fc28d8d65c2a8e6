//! Run with `cargo bench -p tiered-sessions-tests --bench read_throughput` (add
//! `-- --seconds 5 --sessions 10000` to change the defaults).
//!
//! Session reads side by side, in one run, against a private `redis-server` and a private
//! Postgres cluster it starts itself: `TieredStore::load` (Redis + Postgres, cache hits)
//! versus a plain fred `GET` and a plain `GETEX … PX` of the same bytes on the same fred
//! client, at 16 and 64 concurrent tasks. Rounds alternate between the three so that
//! background noise on a shared machine hits them alike; the median round is reported.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use fred::{
    interfaces::{ClientLike, KeysInterface},
    types::{config::Options, ClusterHash, CustomCommand, Value},
};
use tiered_sessions::{
    tower_sessions::{
        session::{Id, Record},
        SessionStore,
    },
    PostgresDurable, RedisCache, StorageKey, TieredStore,
};
use tiered_sessions_tests::{PostgresCluster, RedisServer};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    StoreLoad,
    Get,
    GetEx,
    /// GETEX with the per-command options the store's Redis tier uses (deadline, fail
    /// fast, one attempt): what the store's read costs in fred before any store logic.
    GetExWithOptions,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::StoreLoad => "TieredStore::load (Redis+Postgres, hit)",
            Op::Get => "fred GET, same bytes",
            Op::GetEx => "fred GETEX PX, same bytes",
            Op::GetExWithOptions => "fred GETEX PX + store's command options",
        }
    }
}

struct Setup {
    store: TieredStore,
    cache: RedisCache,
    ids: Arc<Vec<Id>>,
    plain_keys: Arc<Vec<String>>,
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A session the size of a typical login: ~200 bytes of MessagePack.
fn session_data(i: u64) -> Record {
    let data = [
        (
            "axum-login.data".to_owned(),
            serde_json::json!({
                "user_id": format!("6f1c2b1e-8d4a-4c7e-9a51-{i:012}"),
                "auth_hash": "Yk3p9mB2xQ7vLr8sT1wZ4nC6hJ0fD5gA",
            }),
        ),
        (
            "csrf".to_owned(),
            serde_json::json!("c2f9a1e4b7d03a6e9f1c4b7a0d3e6f92"),
        ),
        ("visits".to_owned(), serde_json::json!(i % 1000)),
        ("theme".to_owned(), serde_json::json!("dark")),
        ("locale".to_owned(), serde_json::json!("en-GB")),
    ]
    .into_iter()
    .collect();
    Record {
        id: Id::default(),
        data,
        expiry_date: time::OffsetDateTime::now_utc() + time::Duration::minutes(30),
    }
}

async fn setup(redis: &RedisServer, pg_url: &str, sessions: u64) -> Setup {
    let cache = RedisCache::connect(&redis.url()).await.expect("redis");
    let durable = PostgresDurable::connect(pg_url).await.expect("postgres");
    durable.migrate().await.expect("migrate");
    let store = TieredStore::builder(cache.clone())
        .with_durable(durable)
        .build()
        .expect("store");
    let mut ids = Vec::new();
    let mut plain_keys = Vec::new();
    let mut bytes_total = 0;
    for i in 0..sessions {
        let mut record = session_data(i);
        store.create(&mut record).await.expect("create");
        let key = cache.redis_key(&StorageKey::from_id(&record.id));
        let entry: Vec<u8> = redis.admin().get(&key).await.expect("GET");
        bytes_total += entry.len();
        let plain = format!("plain:{i}");
        let _: () = redis
            .admin()
            .set(&plain, entry, None, None, false)
            .await
            .expect("SET");
        ids.push(record.id);
        plain_keys.push(plain);
    }
    println!(
        "{sessions} sessions, {} bytes per cache entry on average",
        bytes_total / sessions as usize
    );
    Setup {
        store,
        cache,
        ids: Arc::new(ids),
        plain_keys: Arc::new(plain_keys),
    }
}

async fn round(setup: &Setup, op: Op, tasks: usize, seconds: u64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (stop, done) = (stop.clone(), done.clone());
        let (store, client) = (setup.store.clone(), setup.cache.client().clone());
        let (ids, keys) = (setup.ids.clone(), setup.plain_keys.clone());
        handles.push(tokio::spawn(async move {
            let mut x = 0x9e37_79b9_7f4a_7c15_u64 ^ (t as u64 + 1);
            let mut n = 0;
            let getex = CustomCommand::new_static("GETEX", ClusterHash::FirstKey, false);
            let options = Options {
                max_attempts: Some(1),
                timeout: Some(Duration::from_millis(250)),
                fail_fast: true,
                ..Options::default()
            };
            while !stop.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x % ids.len() as u64) as usize;
                match op {
                    Op::StoreLoad => {
                        let record = store.load(&ids[i]).await.expect("load");
                        assert!(record.is_some(), "every session is live");
                    }
                    Op::Get => {
                        let v: Option<Vec<u8>> = client.get(&keys[i]).await.expect("GET");
                        assert!(v.is_some());
                    }
                    Op::GetEx | Op::GetExWithOptions => {
                        let args: Vec<Value> =
                            vec![keys[i].as_str().into(), "PX".into(), 1_800_000_i64.into()];
                        let v: Option<Vec<u8>> = if op == Op::GetEx {
                            client.custom(getex.clone(), args).await
                        } else {
                            client
                                .with_options(&options)
                                .custom(getex.clone(), args)
                                .await
                        }
                        .expect("GETEX");
                        assert!(v.is_some());
                    }
                }
                n += 1;
            }
            done.fetch_add(n, Ordering::Relaxed);
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for handle in handles {
        handle.await.expect("task");
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let seconds = arg("--seconds", 3);
        let sessions = arg("--sessions", 10_000);
        let rounds = arg("--rounds", 3);
        let redis = RedisServer::start().await;
        let cluster = PostgresCluster::init().await;
        let pg_url = cluster.create_database().await;
        let setup = setup(&redis, &pg_url, sessions).await;
        let ops = [Op::StoreLoad, Op::Get, Op::GetEx, Op::GetExWithOptions];
        for tasks in [16, 64] {
            // Warm up every path once.
            for op in ops {
                round(&setup, op, tasks, 1).await;
            }
            let mut results: Vec<Vec<f64>> = vec![Vec::new(); ops.len()];
            for _ in 0..rounds {
                for (i, op) in ops.iter().enumerate() {
                    results[i].push(round(&setup, *op, tasks, seconds).await);
                }
            }
            let median = |v: &mut Vec<f64>| {
                v.sort_by(|a, b| a.total_cmp(b));
                v[v.len() / 2]
            };
            let medians: Vec<f64> = results.iter_mut().map(median).collect();
            println!("\nconcurrency {tasks}: median of {rounds} rounds of {seconds} s");
            println!(
                "{:<42} {:>12} {:>10} {:>10}",
                "operation", "ops/s", "vs GET", "vs GETEX"
            );
            for (op, ops_per_s) in ops.iter().zip(&medians) {
                println!(
                    "{:<42} {:>12.0} {:>10.2} {:>10.2}",
                    op.name(),
                    ops_per_s,
                    ops_per_s / medians[1],
                    ops_per_s / medians[2]
                );
            }
        }
    });
}
