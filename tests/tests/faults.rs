//! Fault injection against real servers the suite starts itself: a private `redis-server`
//! per test, private Postgres databases (a private cluster where Postgres itself fails),
//! and a TCP proxy between the store and a server for hangs, delays and resets.
//!
//! The tests run one at a time (they share two cores and measure latency). Those under
//! load print one row of the fault table each; run them with
//! `cargo test -p tiered-sessions-tests --test faults -- --nocapture` to see it, and set
//! `FAULT_SESSIONS` (default 2000) for the number of sessions the 64 readers spread over.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicI64, Ordering},
        Arc, Mutex as StdMutex,
    },
    time::{Duration, Instant},
};

use fred::prelude::*;
use rand::{rngs::StdRng, Rng, SeedableRng};
use tiered_sessions::{
    tower_sessions::{
        session::{Id, Record},
        SessionStore,
    },
    DurableTier, PostgresDurable, RedisCache, StorageKey, TieredStore,
};
use tiered_sessions_core::envelope::{self, Entry};
use tiered_sessions_tests::{
    poll_some, poll_until, record, shared_postgres, Fault, FaultProxy, PostgresCluster, RedisServer,
};
use time::OffsetDateTime;
use tokio::{sync::Mutex, task::JoinHandle};

/// One fault test at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// The cache deadline: `RedisCache`'s default operation timeout.
const DEADLINE: Duration = Duration::from_millis(250);
/// What the p99 during a fault may exceed the cache deadline by in these tests: one
/// Postgres round trip under the test's own load plus scheduling noise on two shared
/// cores. The closing note of the reliability work reports the measured values.
const P99_SLACK: Duration = Duration::from_millis(250);
const READERS: usize = 64;
const WRITERS: usize = 8;

fn session_count() -> usize {
    std::env::var("FAULT_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

async fn store(redis_url: &str, database_url: Option<&str>) -> TieredStore {
    let cache = RedisCache::connect(redis_url)
        .await
        .expect("a valid Redis URL");
    let mut builder = TieredStore::builder(cache);
    if let Some(url) = database_url {
        builder = builder.with_durable(durable(url).await);
    }
    builder.build().expect("store")
}

async fn durable(url: &str) -> PostgresDurable {
    let durable = PostgresDurable::connect(url).await.expect("Postgres");
    durable.migrate().await.expect("migrate");
    durable
}

async fn create(store: &TieredStore, n: i64) -> Id {
    let mut record = record(n);
    store.create(&mut record).await.expect("create");
    record.id
}

fn n_of(record: &Record) -> Option<i64> {
    record.data.get("n")?.as_i64()
}

/// What a request that changes the session does: load, change, save. Returns the value
/// written, `None` when the session is gone.
async fn increment(store: &TieredStore, id: &Id) -> Result<Option<i64>, String> {
    let Some(mut record) = store.load(id).await.map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let next = n_of(&record).ok_or("no n in the session")? + 1;
    record.data.insert("n".to_owned(), next.into());
    store.save(&record).await.map_err(|e| e.to_string())?;
    Ok(Some(next))
}

async fn load_n(store: &TieredStore, id: &Id) -> Option<i64> {
    store.load(id).await.expect("load").as_ref().and_then(n_of)
}

/// The value the durable tier holds for a session, read around the store.
async fn durable_n(durable: &PostgresDurable, id: &Id) -> Option<i64> {
    let row = durable
        .load(&StorageKey::from_id(id), OffsetDateTime::now_utc())
        .await
        .expect("durable load")?;
    envelope::decode_data(&row.data)?.get("n")?.as_i64()
}

// --- load ------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    took: Duration,
    ok: bool,
}

/// 64 readers over many sessions and 8 writers on sessions of their own, recording every
/// request; what the tests under load inject their faults into.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
    samples: Arc<StdMutex<Vec<Sample>>>,
    errors: Arc<StdMutex<Vec<String>>>,
    writer_ids: Vec<Id>,
    acked: Arc<Vec<AtomicI64>>,
}

struct Row {
    fault: &'static str,
    requests: usize,
    failed: usize,
    lost_writes: usize,
    p99: Duration,
    max: Duration,
    back: Duration,
    errors: Vec<String>,
}

impl Load {
    async fn start(store: &TieredStore) -> Load {
        let count = session_count();
        let mut creators = Vec::new();
        for part in 0..16 {
            let store = store.clone();
            creators.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in (part..count).step_by(16) {
                    ids.push((i, create(&store, i as i64).await));
                }
                ids
            }));
        }
        let mut ids = vec![Id::default(); count];
        for creator in creators {
            for (i, id) in creator.await.expect("creator") {
                ids[i] = id;
            }
        }
        let ids = Arc::new(ids);
        let mut writer_ids = Vec::new();
        for _ in 0..WRITERS {
            writer_ids.push(create(store, 0).await);
        }
        let load = Load {
            stop: Arc::default(),
            tasks: Vec::new(),
            samples: Arc::default(),
            errors: Arc::default(),
            acked: Arc::new((0..WRITERS).map(|_| AtomicI64::new(0)).collect()),
            writer_ids,
        };
        let mut tasks = Vec::new();
        for reader in 0..READERS {
            let (store, ids, stop) = (store.clone(), ids.clone(), load.stop.clone());
            let (samples, errors) = (load.samples.clone(), load.errors.clone());
            tasks.push(tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(reader as u64);
                while !stop.load(Ordering::Relaxed) {
                    let i = rng.gen_range(0..ids.len());
                    let at = Instant::now();
                    let got = store.load(&ids[i]).await;
                    let ok = matches!(&got, Ok(Some(r)) if n_of(r) == Some(i as i64));
                    if !ok {
                        note(&errors, format!("read {i}: {got:?}"));
                    }
                    push(&samples, at, ok);
                }
            }));
        }
        for (w, id) in load.writer_ids.iter().enumerate() {
            let (store, id, stop) = (store.clone(), *id, load.stop.clone());
            let (samples, errors, acked) = (
                load.samples.clone(),
                load.errors.clone(),
                load.acked.clone(),
            );
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let at = Instant::now();
                    let written = increment(&store, &id).await;
                    let ok = matches!(written, Ok(Some(_)));
                    match written {
                        Ok(Some(n)) => acked[w].store(n, Ordering::Relaxed),
                        other => note(&errors, format!("write {w}: {other:?}")),
                    }
                    push(&samples, at, ok);
                    // Pace the writers: the load is mostly reads, as on a real site.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }
        Load { tasks, ..load }
    }

    /// Lets the load run for `period`.
    async fn run_for(&self, period: Duration) {
        tokio::time::sleep(period).await;
    }

    /// Stops the load after the fault (from `begin` to `end`), once the store is back on
    /// the cache and has run on it for a second, and checks every acknowledged write.
    async fn finish(
        self,
        fault: &'static str,
        store: &TieredStore,
        database_url: Option<&str>,
        (begin, end): (Instant, Instant),
    ) -> Row {
        let back = poll_some(
            Duration::from_secs(10),
            Duration::from_millis(5),
            || async { (!store.cache_bypassed()).then(Instant::now) },
        )
        .await
        .expect("the store goes back to the cache within 10 s");
        self.run_for(Duration::from_secs(1)).await;
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("load task");
        }
        let samples = self.samples.lock().expect("samples").clone();
        let mut during: Vec<Duration> = samples
            .iter()
            .filter(|s| s.at >= begin && s.at <= end)
            .map(|s| s.took)
            .collect();
        during.sort();
        let p99 = during
            .get((during.len() * 99 / 100).min(during.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default();
        let mut lost_writes = 0;
        let checker = match database_url {
            Some(url) => Some(durable(url).await),
            None => None,
        };
        for (w, id) in self.writer_ids.iter().enumerate() {
            let acked = self.acked[w].load(Ordering::Relaxed);
            let served = load_n(store, id).await.unwrap_or(-1);
            // A write that failed may still have been applied (a lost reply): at most one.
            if served < acked || served > acked + 1 {
                lost_writes += 1;
            }
            if let Some(durable) = &checker {
                assert_eq!(
                    durable_n(durable, id).await,
                    Some(served),
                    "{fault}: the store serves what the durable tier holds"
                );
            }
        }
        let errors = self.errors.lock().expect("errors").clone();
        Row {
            fault,
            requests: samples.len(),
            failed: samples.iter().filter(|s| !s.ok).count(),
            lost_writes,
            p99,
            max: during.last().copied().unwrap_or_default(),
            back: back.saturating_duration_since(end),
            errors,
        }
    }
}

fn push(samples: &StdMutex<Vec<Sample>>, at: Instant, ok: bool) {
    let took = at.elapsed();
    samples
        .lock()
        .expect("samples")
        .push(Sample { at, took, ok });
}

fn note(errors: &StdMutex<Vec<String>>, error: String) {
    let mut errors = errors.lock().expect("errors");
    if errors.len() < 5 {
        errors.push(error);
    }
}

impl Row {
    fn print(&self) {
        println!(
            "| {} | {} | {} | {} | {:.0} ms | {:.0} ms | {:.0} ms |",
            self.fault,
            self.requests,
            self.failed,
            self.lost_writes,
            self.p99.as_secs_f64() * 1000.0,
            self.max.as_secs_f64() * 1000.0,
            self.back.as_secs_f64() * 1000.0,
        );
    }

    /// The bar with Postgres configured: nothing fails, nothing is lost, the p99 stays
    /// near the cache deadline, and the store is back on Redis within 2 s.
    fn assert_met(&self) {
        self.print();
        assert_eq!(
            self.failed, 0,
            "{}: failed requests: {:?}",
            self.fault, self.errors
        );
        assert_eq!(self.lost_writes, 0, "{}: lost writes", self.fault);
        assert!(
            self.p99 <= DEADLINE + P99_SLACK,
            "{}: p99 during the fault {:?}",
            self.fault,
            self.p99
        );
        assert!(
            self.back <= Duration::from_secs(2),
            "{}: back on Redis after {:?}",
            self.fault,
            self.back
        );
    }
}

struct Rig {
    redis: RedisServer,
    proxy: Option<FaultProxy>,
    database_url: String,
    store: TieredStore,
}

impl Rig {
    async fn new(proxied: bool) -> Rig {
        Rig::with_redis(RedisServer::start().await, proxied).await
    }

    async fn with_redis(redis: RedisServer, proxied: bool) -> Rig {
        let database_url = shared_postgres().await.create_database().await;
        let proxy = if proxied {
            Some(FaultProxy::start(([127, 0, 0, 1], redis.port()).into()).await)
        } else {
            None
        };
        let redis_url = match &proxy {
            Some(proxy) => format!("redis://127.0.0.1:{}", proxy.port()),
            None => redis.url(),
        };
        let store = store(&redis_url, Some(&database_url)).await;
        Rig {
            redis,
            proxy,
            database_url,
            store,
        }
    }

    async fn load(&self) -> Load {
        let load = Load::start(&self.store).await;
        load.run_for(Duration::from_secs(1)).await;
        load
    }

    async fn finish(&self, load: Load, fault: &'static str, window: (Instant, Instant)) {
        load.finish(fault, &self.store, Some(&self.database_url), window)
            .await
            .assert_met();
    }
}

// --- Redis faults under load, with Postgres --------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushall_under_load() {
    let _serial = SERIAL.lock().await;
    let rig = Rig::new(false).await;
    let load = rig.load().await;
    let begin = Instant::now();
    for _ in 0..4 {
        rig.redis.flushall().await;
        load.run_for(Duration::from_millis(500)).await;
    }
    rig.finish(
        load,
        "FLUSHALL every 500 ms for 2 s",
        (begin, Instant::now()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_empty_under_load() {
    let _serial = SERIAL.lock().await;
    let mut rig = Rig::new(false).await;
    let load = rig.load().await;
    let begin = Instant::now();
    rig.redis.restart().await;
    let end = Instant::now();
    rig.finish(load, "restart, empty", (begin, end)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_for_two_seconds_under_load() {
    let _serial = SERIAL.lock().await;
    let mut rig = Rig::new(false).await;
    let load = rig.load().await;
    let begin = Instant::now();
    rig.redis.kill();
    load.run_for(Duration::from_secs(2)).await;
    rig.redis.restart().await;
    let end = Instant::now();
    rig.finish(load, "killed (refused) for 2 s", (begin, end))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_for_three_seconds_under_load() {
    let _serial = SERIAL.lock().await;
    let rig = Rig::new(false).await;
    let load = rig.load().await;
    let begin = Instant::now();
    rig.redis.stop_process();
    load.run_for(Duration::from_secs(3)).await;
    rig.redis.cont_process();
    let end = Instant::now();
    rig.finish(load, "SIGSTOP for 3 s (hang)", (begin, end))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_blackhole_under_load() {
    let _serial = SERIAL.lock().await;
    let rig = Rig::new(true).await;
    let proxy = rig.proxy.as_ref().expect("proxied");
    let load = rig.load().await;
    let begin = Instant::now();
    {
        let _hole = proxy.inject(Fault::Blackhole);
        load.run_for(Duration::from_secs(3)).await;
    }
    let end = Instant::now();
    rig.finish(load, "proxy blackhole for 3 s", (begin, end))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_reset_under_load() {
    let _serial = SERIAL.lock().await;
    let rig = Rig::new(true).await;
    let proxy = rig.proxy.as_ref().expect("proxied");
    let load = rig.load().await;
    let begin = Instant::now();
    {
        let _reset = proxy.inject(Fault::Reset);
        load.run_for(Duration::from_secs(1)).await;
    }
    let end = Instant::now();
    rig.finish(load, "proxy resets every connection for 1 s", (begin, end))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_redis_under_load() {
    let _serial = SERIAL.lock().await;
    let rig = Rig::new(true).await;
    let proxy = rig.proxy.as_ref().expect("proxied");
    let load = rig.load().await;
    let begin = Instant::now();
    {
        // 2 × 50 ms per round trip: slow, but inside the deadline.
        let _slow = proxy.inject(Fault::Delay(Duration::from_millis(50)));
        load.run_for(Duration::from_secs(2)).await;
    }
    let end = Instant::now();
    rig.finish(load, "proxy delay 50 ms each way for 2 s", (begin, end))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_sleep_under_load() {
    let _serial = SERIAL.lock().await;
    let rig = Rig::new(false).await;
    let load = rig.load().await;
    let begin = Instant::now();
    rig.redis
        .command::<Value>("DEBUG", vec!["SLEEP".into(), "2".into()])
        .await;
    let end = Instant::now();
    rig.finish(load, "DEBUG SLEEP 2 (slow)", (begin, end)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_pause_under_load() {
    let _serial = SERIAL.lock().await;
    let rig = Rig::new(false).await;
    let load = rig.load().await;
    let begin = Instant::now();
    rig.redis
        .command::<Value>("CLIENT", vec!["PAUSE".into(), "2000".into()])
        .await;
    load.run_for(Duration::from_secs(2)).await;
    let end = Instant::now();
    rig.finish(load, "CLIENT PAUSE 2000 ALL", (begin, end))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_paused_under_load() {
    let _serial = SERIAL.lock().await;
    let rig = Rig::new(false).await;
    let load = rig.load().await;
    let begin = Instant::now();
    rig.redis
        .command::<Value>(
            "CLIENT",
            vec!["PAUSE".into(), "2000".into(), "WRITE".into()],
        )
        .await;
    load.run_for(Duration::from_secs(2)).await;
    let end = Instant::now();
    rig.finish(load, "CLIENT PAUSE 2000 WRITE", (begin, end))
        .await;
}

// --- Redis faults, one request at a time ---------------------------------------------------

/// Writes paused, reads served: a change is acknowledged, and the next read, served by the
/// paused Redis, returns the new data, never the old cached copy.
#[tokio::test]
async fn writes_paused_reads_return_the_new_data() {
    let _serial = SERIAL.lock().await;
    let rig = Rig::new(false).await;
    let id = create(&rig.store, 1).await;
    assert_eq!(load_n(&rig.store, &id).await, Some(1));
    rig.redis
        .command::<Value>(
            "CLIENT",
            vec!["PAUSE".into(), "3000".into(), "WRITE".into()],
        )
        .await;
    let started = Instant::now();
    assert_eq!(increment(&rig.store, &id).await, Ok(Some(2)));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the change did not wait for the pause: {:?}",
        started.elapsed()
    );
    assert_eq!(load_n(&rig.store, &id).await, Some(2));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "read during the pause"
    );
    rig.redis
        .command::<Value>("CLIENT", vec!["UNPAUSE".into()])
        .await;
    assert_eq!(load_n(&rig.store, &id).await, Some(2));
}

/// The app starts while Redis is down, serves sessions from Postgres, and moves onto Redis
/// once it comes up, without a restart.
#[tokio::test]
async fn starts_with_redis_down_and_uses_it_once_up() {
    let _serial = SERIAL.lock().await;
    let mut redis = RedisServer::start().await;
    redis.kill();
    let database_url = shared_postgres().await.create_database().await;
    let started = Instant::now();
    let store = store(&redis.url(), Some(&database_url)).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "build does not wait for Redis: {:?}",
        started.elapsed()
    );
    let id = create(&store, 1).await;
    assert_eq!(increment(&store, &id).await, Ok(Some(2)));
    assert_eq!(load_n(&store, &id).await, Some(2));
    let health = store.health().await;
    assert!(!health.cache.is_ok(), "{health:?}");
    assert!(
        health.writable() && health.serving() && health.degraded(),
        "{health:?}"
    );

    redis.restart().await;
    let on_redis = poll_until(
        Duration::from_secs(5),
        Duration::from_millis(20),
        || async { !store.cache_bypassed() && load_n(&store, &id).await == Some(2) },
    )
    .await;
    assert!(on_redis, "the store uses Redis once it is up");
    // Refilled on the next read, then served by Redis.
    let cached = poll_until(
        Duration::from_secs(5),
        Duration::from_millis(20),
        || async {
            load_n(&store, &id).await;
            let calls = redis.command_calls().await;
            calls.get("eval").copied().unwrap_or(0) + calls.get("evalsha").copied().unwrap_or(0) > 0
        },
    )
    .await;
    assert!(cached, "the session was refilled into Redis");
    let health = store.health().await;
    assert!(health.cache.is_ok() && !health.degraded(), "{health:?}");
    assert_eq!(increment(&store, &id).await, Ok(Some(3)));
    assert_eq!(load_n(&store, &id).await, Some(3));
}

/// Redis restarted from an older snapshot brings back a session logged out after the
/// snapshot: neither the instance that saw the restart nor a new one serves it.
#[tokio::test]
async fn restart_from_an_older_snapshot_never_resurrects_a_logout() {
    let _serial = SERIAL.lock().await;
    let mut rig = Rig::new(false).await;
    let id = create(&rig.store, 1).await;
    let changed = create(&rig.store, 1).await;
    assert_eq!(load_n(&rig.store, &id).await, Some(1));
    let _: Value = rig.redis.command::<Value>("SAVE", Vec::new()).await;
    rig.store.delete(&id).await.expect("logout");
    assert_eq!(increment(&rig.store, &changed).await, Ok(Some(2)));
    // SIGKILL: no save on the way down (SHUTDOWN NOSAVE); the restart loads dump.rdb.
    rig.redis.restart().await;
    let cache = RedisCache::connect(&rig.redis.url()).await.expect("redis");
    let raw: Option<Vec<u8>> = rig
        .redis
        .admin()
        .get(cache.redis_key(&StorageKey::from_id(&id)))
        .await
        .expect("GET");
    let raw = raw.expect("the snapshot brought the logged-out session back into Redis");
    assert!(matches!(
        envelope::decode(&raw, &StorageKey::from_id(&id)),
        Ok(Entry::Record(_))
    ));

    let fresh = store(&rig.redis.url(), Some(&rig.database_url)).await;
    for (who, store) in [
        ("a new instance", &fresh),
        ("the running instance", &rig.store),
    ] {
        let stays_out = poll_until(
            Duration::from_secs(3),
            Duration::from_millis(20),
            || async { matches!(store.load(&id).await, Ok(None)) },
        )
        .await;
        assert!(stays_out, "{who} serves no logged-out session");
        assert_eq!(store.load(&id).await.expect("load"), None, "{who}");
        assert_eq!(
            load_n(store, &changed).await,
            Some(2),
            "{who}: the newer change"
        );
    }
}

/// Two instances share Redis and Postgres; one is cut off from Redis by the proxy while it
/// logs a user out and changes another session. The other instance, which still reads
/// Redis, stops serving the old copies within the epoch poll interval.
#[tokio::test]
async fn an_instance_cut_off_from_redis_logs_out_and_the_other_sees_it() {
    let _serial = SERIAL.lock().await;
    let rig = Rig::new(true).await;
    let proxy = rig.proxy.as_ref().expect("proxied");
    let other = store(&rig.redis.url(), Some(&rig.database_url)).await;
    let gone = create(&other, 1).await;
    let changed = create(&other, 1).await;
    for store in [&rig.store, &other] {
        assert_eq!(load_n(store, &gone).await, Some(1));
        assert_eq!(load_n(store, &changed).await, Some(1));
    }
    {
        let _cut = proxy.inject(Fault::Blackhole);
        rig.store.delete(&gone).await.expect("logout while cut off");
        assert_eq!(increment(&rig.store, &changed).await, Ok(Some(2)));
        let started = Instant::now();
        let seen = poll_until(
            Duration::from_secs(3),
            Duration::from_millis(10),
            || async {
                other.load(&gone).await.expect("load").is_none()
                    && load_n(&other, &changed).await == Some(2)
            },
        )
        .await;
        assert!(seen, "the other instance sees the logout and the change");
        println!(
            "other instance saw the logout after {:?}",
            started.elapsed()
        );
        assert!(started.elapsed() <= Duration::from_secs(2));
    }
    for store in [&rig.store, &other] {
        assert_eq!(store.load(&gone).await.expect("load"), None);
        assert_eq!(load_n(store, &changed).await, Some(2));
    }
}

/// A logout racing a save of the same session, 1000 times: the logout always wins, in
/// both tiers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_racing_a_save_always_wins() {
    let _serial = SERIAL.lock().await;
    let rig = Rig::new(false).await;
    let checker = durable(&rig.database_url).await;
    for i in 0..1000 {
        let id = create(&rig.store, 1).await;
        let mut record = rig.store.load(&id).await.expect("load").expect("live");
        record.data.insert("n".to_owned(), 2.into());
        let (saver, deleter) = (rig.store.clone(), rig.store.clone());
        let save = tokio::spawn(async move { saver.save(&record).await });
        let delete = tokio::spawn(async move { deleter.delete(&id).await });
        save.await.expect("task").expect("save");
        delete.await.expect("task").expect("delete");
        assert_eq!(rig.store.load(&id).await.expect("load"), None, "round {i}");
        assert_eq!(durable_n(&checker, &id).await, None, "round {i}");
    }
}

/// 50 tasks × 20 saves on one session, with Redis paused mid-way: every save is
/// acknowledged, and afterwards the cache and Postgres agree on one whole record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_never_leave_a_torn_or_stale_record() {
    let _serial = SERIAL.lock().await;
    let rig = Rig::new(false).await;
    let id = create(&rig.store, 0).await;
    let mut tasks = Vec::new();
    for t in 0..50 {
        let store = rig.store.clone();
        tasks.push(tokio::spawn(async move {
            for j in 0..20 {
                let mut record = store.load(&id).await.expect("load").expect("live");
                record.data.insert(format!("t{t}"), j.into());
                record.data.insert("n".to_owned(), (t * 100 + j).into());
                store.save(&record).await.expect("save");
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    rig.redis
        .command::<Value>("CLIENT", vec!["PAUSE".into(), "500".into()])
        .await;
    for task in tasks {
        task.await.expect("writer");
    }
    let checker = durable(&rig.database_url).await;
    let key = StorageKey::from_id(&id);
    let row = checker
        .load(&key, OffsetDateTime::now_utc())
        .await
        .expect("row")
        .expect("live");
    assert_eq!(row.version, 1 + 50 * 20, "every save applied once");
    let settled = poll_until(
        Duration::from_secs(5),
        Duration::from_millis(20),
        || async {
            let served = rig.store.load(&id).await.expect("load").expect("live");
            let mut data = served.data.clone();
            data.remove(tiered_sessions::REVISION_KEY);
            Some(data) == envelope::decode_data(&row.data)
        },
    )
    .await;
    assert!(settled, "the store serves the durable record");
}

/// Redis only: with Redis down, requests fail, and fail fast: none waits longer than the
/// cache deadline, and once the circuit is open they fail at once.
#[tokio::test]
async fn redis_only_fails_fast_while_redis_is_down() {
    let _serial = SERIAL.lock().await;
    let mut redis = RedisServer::start().await;
    let proxy = FaultProxy::start(([127, 0, 0, 1], redis.port()).into()).await;
    let store = store(&format!("redis://127.0.0.1:{}", proxy.port()), None).await;
    let id = create(&store, 1).await;
    assert_eq!(load_n(&store, &id).await, Some(1));
    let mut slowest = Duration::ZERO;
    let mut failed = 0;
    {
        let _hang = proxy.inject(Fault::Blackhole);
        for _ in 0..100 {
            let started = Instant::now();
            if store.load(&id).await.is_err() {
                failed += 1;
            }
            slowest = slowest.max(started.elapsed());
        }
    }
    println!("| Redis only: proxy blackhole | 100 | {failed} | n/a | max {slowest:?} | |");
    assert_eq!(failed, 100, "Redis-only requests fail while Redis hangs");
    assert!(
        slowest <= DEADLINE + Duration::from_millis(100),
        "no request waits past the deadline: {slowest:?}"
    );
    redis.kill();
    let started = Instant::now();
    assert!(store.load(&id).await.is_err());
    assert!(started.elapsed() <= DEADLINE);
    redis.restart().await;
    let back = poll_until(
        Duration::from_secs(5),
        Duration::from_millis(20),
        || async {
            let mut record = record(1);
            store.create(&mut record).await.is_ok()
        },
    )
    .await;
    assert!(back, "Redis-only works again once Redis is back");
}

/// `maxmemory 2mb` with `allkeys-lru` and thousands of sessions: Redis evicts, nothing is
/// lost.
#[tokio::test]
async fn eviction_under_maxmemory_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let redis =
        RedisServer::start_with(&["--maxmemory", "2mb", "--maxmemory-policy", "allkeys-lru"]).await;
    let rig = Rig::with_redis(redis, false).await;
    let pad = "x".repeat(1000);
    let mut ids = Vec::new();
    for i in 0..3000 {
        let mut record = record(i);
        record.data.insert("pad".to_owned(), pad.clone().into());
        rig.store.create(&mut record).await.expect("create");
        ids.push(record.id);
    }
    let info: String = rig
        .redis
        .admin()
        .info(Some(fred::types::InfoKind::Stats))
        .await
        .expect("INFO");
    let evicted: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("evicted_keys:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(evicted > 0, "Redis evicted sessions");
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(load_n(&rig.store, id).await, Some(i as i64), "session {i}");
    }
}

/// `noeviction` and a full Redis: writes to Redis fail with OOM; changes still land in
/// Postgres, and reads return them.
#[tokio::test]
async fn a_full_redis_rejecting_writes_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let redis =
        RedisServer::start_with(&["--maxmemory", "2mb", "--maxmemory-policy", "noeviction"]).await;
    let rig = Rig::with_redis(redis, false).await;
    let id = create(&rig.store, 1).await;
    let filler = "y".repeat(64 * 1024);
    for i in 0.. {
        let set: Result<(), _> = rig
            .redis
            .admin()
            .set(format!("filler:{i}"), filler.as_str(), None, None, false)
            .await;
        if set.is_err() {
            break;
        }
    }
    for n in 2..20 {
        assert_eq!(increment(&rig.store, &id).await, Ok(Some(n)));
        assert_eq!(load_n(&rig.store, &id).await, Some(n));
    }
    let other = create(&rig.store, 7).await;
    assert_eq!(load_n(&rig.store, &other).await, Some(7));
}

// --- Postgres faults -------------------------------------------------------------------------

struct PgRig {
    cluster: PostgresCluster,
    _redis: RedisServer,
    proxy: FaultProxy,
    store: TieredStore,
}

impl PgRig {
    async fn new() -> PgRig {
        let cluster = PostgresCluster::init().await;
        let url = cluster.create_database().await;
        // Through a proxy, so a hang can be injected.
        let proxy = FaultProxy::start(([127, 0, 0, 1], cluster.port()).into()).await;
        let proxied = url.replace(
            &format!(":{}/", cluster.port()),
            &format!(":{}/", proxy.port()),
        );
        let redis = RedisServer::start().await;
        let store = store(&redis.url(), Some(&proxied)).await;
        PgRig {
            cluster,
            _redis: redis,
            proxy,
            store,
        }
    }
}

/// A change while Postgres is unavailable fails within the durable deadline and is not
/// acknowledged; cached reads keep working; the pool recovers by itself.
async fn postgres_outage(rig: &PgRig, id: &Id, stop: impl std::future::Future<Output = ()>) {
    stop.await;
    let started = Instant::now();
    let change = increment(&rig.store, id).await;
    assert!(change.is_err(), "not acknowledged: {change:?}");
    let took = started.elapsed();
    assert!(took <= Duration::from_millis(2500), "bounded: {took:?}");
    println!("change during the Postgres fault failed after {took:?}: {change:?}");
    assert_eq!(load_n(&rig.store, id).await, Some(1), "cached read");
}

async fn recovers(rig: &PgRig, id: &Id) {
    let recovered = poll_some(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async { increment(&rig.store, id).await.ok().flatten() },
    )
    .await;
    assert_eq!(recovered, Some(2), "the pool recovers without a restart");
    assert_eq!(load_n(&rig.store, id).await, Some(2));
}

#[tokio::test]
async fn postgres_fast_restart() {
    let _serial = SERIAL.lock().await;
    let rig = PgRig::new().await;
    let id = create(&rig.store, 1).await;
    postgres_outage(&rig, &id, rig.cluster.stop_fast()).await;
    rig.cluster.start().await;
    recovers(&rig, &id).await;
}

#[tokio::test]
async fn postgres_immediate_stop_and_crash_recovery() {
    let _serial = SERIAL.lock().await;
    let rig = PgRig::new().await;
    let id = create(&rig.store, 1).await;
    postgres_outage(&rig, &id, rig.cluster.stop_immediate()).await;
    rig.cluster.start().await;
    recovers(&rig, &id).await;
}

#[tokio::test]
async fn postgres_hang() {
    let _serial = SERIAL.lock().await;
    let rig = PgRig::new().await;
    let id = create(&rig.store, 1).await;
    {
        let _hang = rig.proxy.inject(Fault::Blackhole);
        postgres_outage(&rig, &id, async {}).await;
    }
    recovers(&rig, &id).await;
}

#[tokio::test]
async fn postgres_backends_killed() {
    let _serial = SERIAL.lock().await;
    let rig = PgRig::new().await;
    let id = create(&rig.store, 1).await;
    let killed = rig.cluster.terminate_backends("tiered-sessions").await;
    assert!(killed > 0, "the pool had connections");
    // The pool notices dead connections when it hands them out: the next change succeeds.
    assert_eq!(increment(&rig.store, &id).await, Ok(Some(2)));
    assert_eq!(load_n(&rig.store, &id).await, Some(2));
}

/// Redis and Postgres both down: requests fail with errors, quickly, and everything works
/// again once both are back.
#[tokio::test]
async fn both_down_then_back() {
    let _serial = SERIAL.lock().await;
    let cluster = PostgresCluster::init().await;
    let url = cluster.create_database().await;
    let mut redis = RedisServer::start().await;
    let store = store(&redis.url(), Some(&url)).await;
    let id = create(&store, 1).await;
    redis.kill();
    cluster.stop_fast().await;
    for _ in 0..5 {
        let started = Instant::now();
        assert!(
            store.load(&id).await.is_err(),
            "an error, not a wrong answer"
        );
        assert!(increment(&store, &id).await.is_err());
        assert!(started.elapsed() <= Duration::from_secs(5));
    }
    cluster.start().await;
    redis.restart().await;
    let back = poll_some(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async { increment(&store, &id).await.ok().flatten() },
    )
    .await;
    assert_eq!(back, Some(2));
    let cached = poll_until(
        Duration::from_secs(5),
        Duration::from_millis(20),
        || async { !store.cache_bypassed() },
    )
    .await;
    assert!(cached, "back on Redis");
    assert_eq!(load_n(&store, &id).await, Some(2));
}
