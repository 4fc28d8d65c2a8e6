//! Redis Cluster: a private six-node cluster (three masters, three replicas) on loopback.
//! The store works on it unchanged (every command touches one key), and a master killed or
//! failed over under a read load costs no request when Postgres is configured.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use fred::prelude::*;
use tiered_sessions::{
    tower_sessions::{
        session::{Id, Record},
        SessionStore,
    },
    PostgresDurable, RedisCache, TieredStore,
};
use tiered_sessions_tests::{poll_until, shared_postgres, RedisCluster};
use tokio::sync::Mutex;

/// One cluster at a time: six servers each, and failovers are timed.
static SERIAL: Mutex<()> = Mutex::const_new(());

async fn store(cluster: &RedisCluster, durable: bool) -> TieredStore {
    let url = match durable {
        true => Some(shared_postgres().await.create_database().await),
        false => None,
    };
    store_on(cluster, url.as_deref()).await
}

async fn store_on(cluster: &RedisCluster, database_url: Option<&str>) -> TieredStore {
    let cache = RedisCache::connect(&cluster.url())
        .await
        .expect("a valid cluster URL");
    let mut builder = TieredStore::builder(cache).with_owner_pointer("/user");
    if let Some(url) = database_url {
        let durable = PostgresDurable::connect(url).await.expect("Postgres");
        durable.migrate().await.expect("migrate");
        builder = builder.with_durable(durable);
    }
    builder.build().expect("store")
}

fn record(n: i64, user: &str) -> Record {
    let mut record = tiered_sessions_tests::record(n);
    record.data.insert("user".to_owned(), user.into());
    record
}

fn n_of(record: &Record) -> Option<i64> {
    record.data.get("n")?.as_i64()
}

async fn keys_per_master(cluster: &RedisCluster) -> Vec<u64> {
    let mut counts = Vec::new();
    for i in cluster.masters().await {
        let n: u64 = cluster.nodes()[i].command("DBSIZE", Vec::new()).await;
        counts.push(n);
    }
    counts
}

/// Sessions spread over every master: create, read, change, per-user listing and revoke,
/// logout, with and without Postgres.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_works_on_a_cluster() {
    let _serial = SERIAL.lock().await;
    let cluster = RedisCluster::start().await;
    for durable in [true, false] {
        let store = store(&cluster, durable).await;
        let mut ids = Vec::new();
        for i in 0..200 {
            let mut record = record(i, if i % 2 == 0 { "alice" } else { "bob" });
            store.create(&mut record).await.expect("create");
            ids.push(record.id);
        }
        for (i, id) in ids.iter().enumerate() {
            let mut loaded = store.load(id).await.expect("load").expect("live");
            assert_eq!(n_of(&loaded), Some(i as i64));
            loaded.data.insert("n".to_owned(), (i as i64 + 1000).into());
            store.save(&loaded).await.expect("save");
            let again = store.load(id).await.expect("load").expect("live");
            assert_eq!(n_of(&again), Some(i as i64 + 1000));
        }
        assert!(!store.cache_bypassed());
        let counts = keys_per_master(&cluster).await;
        assert!(
            counts.iter().filter(|&&n| n > 0).count() == 3,
            "sessions on every master: {counts:?}"
        );
        let alice = store.sessions_of("alice").await.expect("list");
        assert!(alice.len() >= 100, "{} of alice's sessions", alice.len());
        assert!(store.revoke("alice", &alice[0].key).await.expect("revoke"));
        let ended = store.revoke_all("bob", None).await.expect("revoke all");
        assert_eq!(ended, 100);
        let mut live = 0;
        for id in &ids {
            if store.load(id).await.expect("load").is_some() {
                live += 1;
            }
        }
        assert_eq!(live, 99, "alice's sessions but the revoked one");
        for id in &ids {
            store.delete(id).await.expect("logout");
            assert!(store.load(id).await.expect("load").is_none());
        }
    }
}

struct Reads {
    ok: AtomicU64,
    failed: AtomicU64,
    first_failure: Mutex<Option<Instant>>,
    last_failure: Mutex<Option<Instant>>,
}

/// Reads sessions from 32 tasks until `stop`; counts successes and failures.
async fn read_load(store: &TieredStore, ids: Arc<Vec<Id>>, stop: Arc<AtomicBool>) -> Arc<Reads> {
    let reads = Arc::new(Reads {
        ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        first_failure: Mutex::new(None),
        last_failure: Mutex::new(None),
    });
    for t in 0..32 {
        let (store, ids, stop, reads) = (store.clone(), ids.clone(), stop.clone(), reads.clone());
        tokio::spawn(async move {
            let mut i = t;
            while !stop.load(Ordering::Relaxed) {
                i = (i + 7) % ids.len();
                let ok =
                    matches!(store.load(&ids[i]).await, Ok(Some(r)) if n_of(&r) == Some(i as i64));
                if ok {
                    reads.ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    reads.failed.fetch_add(1, Ordering::Relaxed);
                    let now = Instant::now();
                    reads.first_failure.lock().await.get_or_insert(now);
                    *reads.last_failure.lock().await = Some(now);
                }
            }
        });
    }
    reads
}

/// A master fails (killed, or failed over by hand) under a read load. With Postgres:
/// no request fails. Redis only: requests fail during the failover window only. Prints
/// the window and the counts.
async fn master_fails_under_load(durable: bool, how: &str) {
    let mut cluster = RedisCluster::start().await;
    let store = store(&cluster, durable).await;
    let mut ids = Vec::new();
    for i in 0..2000 {
        let mut record = record(i, "carol");
        store.create(&mut record).await.expect("create");
        ids.push(record.id);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let reads = read_load(&store, Arc::new(ids), stop.clone()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let master = cluster.masters().await[0];
    let began = Instant::now();
    match how {
        "kill" => cluster.node_mut(master).kill(),
        _ => {
            // A manual failover: run on a replica of that master.
            let master_id = cluster.node_id(master).await;
            let replicas: Vec<String> = cluster.nodes()[master]
                .command("CLUSTER", vec!["REPLICAS".into(), master_id.into()])
                .await;
            let replicas = replicas.join("\n");
            let port = replicas
                .split_whitespace()
                .nth(1)
                .and_then(|a| a.split('@').next())
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .expect("a replica address");
            let replica = cluster
                .nodes()
                .iter()
                .find(|n| n.port() == port)
                .expect("the replica is ours");
            let _: Value = replica.command("CLUSTER", vec!["FAILOVER".into()]).await;
        }
    }
    let healed = poll_until(
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async { cluster.all_ok().await && cluster.masters().await.len() == 3 },
    )
    .await;
    assert!(healed, "the cluster failed over within 30 s");
    let window = began.elapsed();
    let back = poll_until(
        Duration::from_secs(10),
        Duration::from_millis(10),
        || async { !store.cache_bypassed() },
    )
    .await;
    assert!(back, "the store is back on the cluster");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = (
        reads.ok.load(Ordering::Relaxed),
        reads.failed.load(Ordering::Relaxed),
    );
    let failing = match (
        *reads.first_failure.lock().await,
        *reads.last_failure.lock().await,
    ) {
        (Some(first), Some(last)) => format!("{:?}", last - first),
        _ => "none".to_owned(),
    };
    println!(
        "| master {how}, {} | {} | {failed} | failover window {window:?} | failures over {failing} |",
        if durable { "Redis + Postgres" } else { "Redis only" },
        ok + failed,
    );
    if durable {
        assert_eq!(failed, 0, "no request fails with Postgres configured");
    } else if let (Some(first), Some(last)) = (
        *reads.first_failure.lock().await,
        *reads.last_failure.lock().await,
    ) {
        assert!(
            first >= began && last <= began + window + Duration::from_secs(2),
            "Redis-only failures stay inside the failover window"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_costs_no_request_with_postgres() {
    let _serial = SERIAL.lock().await;
    master_fails_under_load(true, "kill").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_fails_redis_only_requests_during_the_failover_only() {
    let _serial = SERIAL.lock().await;
    master_fails_under_load(false, "kill").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_failover_costs_no_request_with_postgres() {
    let _serial = SERIAL.lock().await;
    master_fails_under_load(true, "failover").await;
}

/// A logout whose tombstone never reached the replica (stopped while it was written), then
/// the master killed and that replica promoted: Redis has the logged-out session again, and
/// the store, with Postgres, still never serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_lost_in_a_failover_never_revives_a_logout() {
    let _serial = SERIAL.lock().await;
    let mut cluster = RedisCluster::start().await;
    let database_url = shared_postgres().await.create_database().await;
    let store = store_on(&cluster, Some(&database_url)).await;
    let mut record = record(1, "dave");
    store.create(&mut record).await.expect("create");
    let id = record.id;
    assert!(store.load(&id).await.expect("load").is_some());

    // The master holding the session, and its replica (in sync: it has the record).
    let cache = RedisCache::connect(&cluster.url()).await.expect("cluster");
    let key = cache.redis_key(&tiered_sessions::StorageKey::from_id(&id));
    let mut master = None;
    for i in cluster.masters().await {
        let here: Result<Option<Vec<u8>>, _> = cluster.nodes()[i].admin().get(&key).await;
        if matches!(here, Ok(Some(_))) {
            master = Some(i);
        }
    }
    let master = master.expect("a master holds the session");
    let master_id = cluster.node_id(master).await;
    let replica = {
        let mut found = None;
        for (i, node) in cluster.nodes().iter().enumerate() {
            let info: String = node.command("CLUSTER", vec!["NODES".into()]).await;
            let me = info
                .lines()
                .find(|l| l.contains("myself"))
                .unwrap_or_default();
            if me.contains("slave") && me.contains(&master_id) {
                found = Some(i);
            }
        }
        found.expect("the master has a replica")
    };

    // Stop the replica and cut its link (bytes already sent would still reach it), log
    // out (the tombstone reaches the master only), kill the master, let the replica run
    // again: it takes over without the tombstone.
    cluster.nodes()[replica].stop_process();
    let _: Value = cluster.nodes()[master]
        .command(
            "CLIENT",
            vec!["KILL".into(), "TYPE".into(), "replica".into()],
        )
        .await;
    store.delete(&id).await.expect("logout");
    cluster.node_mut(master).kill();
    cluster.nodes()[replica].cont_process();
    let promoted = poll_until(
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async { cluster.all_ok().await && cluster.masters().await.contains(&replica) },
    )
    .await;
    assert!(promoted, "the stale replica took over");
    let revived: Option<Vec<u8>> = cluster.nodes()[replica]
        .admin()
        .get(&key)
        .await
        .expect("GET on the new master");
    let revived = revived.expect("the new master has the logged-out session back");
    assert!(matches!(
        tiered_sessions_core::envelope::decode(
            &revived,
            &tiered_sessions::StorageKey::from_id(&id)
        ),
        Ok(tiered_sessions_core::envelope::Entry::Record(_))
    ));

    let back = poll_until(
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async { !store.cache_bypassed() && matches!(store.load(&id).await, Ok(None)) },
    )
    .await;
    assert!(
        back,
        "the running instance never serves the logged-out session"
    );
    for _ in 0..20 {
        assert_eq!(store.load(&id).await.expect("load"), None);
    }
    let fresh = store_on(&cluster, Some(&database_url)).await;
    assert_eq!(
        fresh.load(&id).await.expect("load"),
        None,
        "nor does a new instance"
    );
}

/// Sentinel: a master, a replica and three sentinels. The store reaches the master through
/// the sentinels, and a `SENTINEL FAILOVER` under a read load costs no request with
/// Postgres configured; with Redis only, requests fail during the failover only. Afterwards
/// the store works on the new master.
async fn sentinel_failover_under_load(durable: bool) {
    let sentinels = tiered_sessions_tests::RedisSentinels::start().await;
    let cache = RedisCache::connect(&sentinels.url())
        .await
        .expect("a valid sentinel URL");
    let mut builder = TieredStore::builder(cache);
    if durable {
        let database_url = shared_postgres().await.create_database().await;
        let tier = PostgresDurable::connect(&database_url)
            .await
            .expect("Postgres");
        tier.migrate().await.expect("migrate");
        builder = builder.with_durable(tier);
    }
    let store = builder.build().expect("store");
    let mut ids = Vec::new();
    for i in 0..500 {
        let mut record = record(i, "erin");
        store.create(&mut record).await.expect("create");
        ids.push(record.id);
    }
    let before = sentinels.master_port().await.expect("a master");
    let stop = Arc::new(AtomicBool::new(false));
    let reads = read_load(&store, Arc::new(ids.clone()), stop.clone()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let began = Instant::now();
    sentinels.failover();
    let switched = poll_until(
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async { sentinels.master_port().await.is_some_and(|p| p != before) },
    )
    .await;
    assert!(switched, "the sentinels promoted the replica within 30 s");
    let switched_after = began.elapsed();
    let on_new_master = poll_until(
        Duration::from_secs(15),
        Duration::from_millis(50),
        || async {
            let mut record = record(7, "erin");
            if store.cache_bypassed() || store.create(&mut record).await.is_err() {
                return false;
            }
            // The new session is in the new master, read directly.
            let Some(port) = sentinels.master_port().await else {
                return false;
            };
            let Ok(direct) = RedisCache::connect(&format!("redis://127.0.0.1:{port}")).await else {
                return false;
            };
            let key = tiered_sessions::StorageKey::from_id(&record.id);
            matches!(
                tiered_sessions::CacheTier::get(&direct, &key).await,
                Ok(Some(_))
            )
        },
    )
    .await;
    assert!(on_new_master, "the store writes to the new master");
    // The window: until the store works on the new master.
    let window = began.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = (
        reads.ok.load(Ordering::Relaxed),
        reads.failed.load(Ordering::Relaxed),
    );
    let (first, last) = (
        *reads.first_failure.lock().await,
        *reads.last_failure.lock().await,
    );
    let failing = match (first, last) {
        (Some(first), Some(last)) => format!("{:?}", last - first),
        _ => "none".to_owned(),
    };
    println!(
        "| SENTINEL FAILOVER, {} | {} | {failed} | promoted after {switched_after:?}, store on the new master after {window:?} | failures over {failing} |",
        if durable { "Redis + Postgres" } else { "Redis only" },
        ok + failed
    );
    if durable {
        assert_eq!(failed, 0, "no request fails with Postgres configured");
    } else if let (Some(first), Some(last)) = (first, last) {
        assert!(
            first >= began && last <= began + window,
            "Redis-only failures stay inside the failover window"
        );
    }
    for (i, id) in ids.iter().enumerate() {
        let loaded = store.load(id).await.expect("load").expect("live");
        assert_eq!(n_of(&loaded), Some(i as i64));
    }
}

/// Sessions whose slots move between masters under a read and write load (`MOVED` after
/// each move, `ASK` while a slot is half-moved): with Postgres no request fails and no
/// acknowledged write is lost; with Redis only, failures are requests for the moving
/// sessions alone. Afterwards every moved session is served from the cluster again.
async fn slots_migrate_under_load(durable: bool) {
    const SESSIONS: usize = 300;
    const MOVING: usize = 30;
    let cluster = RedisCluster::start().await;
    let database_url = match durable {
        true => Some(shared_postgres().await.create_database().await),
        false => None,
    };
    let store = store_on(&cluster, database_url.as_deref()).await;
    let keys = RedisCache::connect(&cluster.url()).await.expect("cluster");
    let mut ids = Vec::new();
    for i in 0..SESSIONS {
        let mut record = record(i as i64, "frank");
        store.create(&mut record).await.expect("create");
        ids.push(record.id);
    }
    let slot_of = |id: &Id| {
        fred::util::redis_keyslot(
            keys.redis_key(&tiered_sessions::StorageKey::from_id(id))
                .as_bytes(),
        )
    };
    let moving: std::collections::BTreeSet<u16> = ids[..MOVING].iter().map(slot_of).collect();
    // Whether each session's slot moves (sessions past the first `MOVING` may share one).
    let in_moving: Arc<Vec<bool>> =
        Arc::new(ids.iter().map(|id| moving.contains(&slot_of(id))).collect());
    let ids = Arc::new(ids);

    // Readers over every session; failures are recorded by session.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed_moving, failed_other) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut tasks = Vec::new();
    for t in 0..32 {
        let (store, ids, stop) = (store.clone(), ids.clone(), stop.clone());
        let (ok, failed_moving, failed_other) =
            (ok.clone(), failed_moving.clone(), failed_other.clone());
        let in_moving = in_moving.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = t;
            while !stop.load(Ordering::Relaxed) {
                // Half of the reads go to the moving sessions.
                i = if i % 2 == 0 {
                    (i + 7) % MOVING
                } else {
                    (i + 7) % SESSIONS
                };
                let id = &ids[i];
                match store.load(id).await {
                    Ok(Some(r)) if n_of(&r) == Some(i as i64) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ if in_moving[i] => {
                        failed_moving.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed_other.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // A failure can come back at once (an open circuit): let the test run.
                tokio::task::yield_now().await;
            }
        }));
    }
    // One writer changing the moving sessions; it counts the changes acknowledged.
    let writer = {
        let (store, ids, stop) = (store.clone(), ids.clone(), stop.clone());
        tokio::spawn(async move {
            let mut acked = vec![0i64; MOVING];
            let (mut tried, mut refused) = (0u64, 0u64);
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i = (i + 1) % MOVING;
                tried += 1;
                let Ok(Some(mut record)) = store.load(&ids[i]).await else {
                    refused += 1;
                    continue;
                };
                let w = record.data.get("w").and_then(|v| v.as_i64()).unwrap_or(0);
                record.data.insert("w".to_owned(), (w + 1).into());
                match store.save(&record).await {
                    Ok(()) => acked[i] += 1,
                    Err(_) => refused += 1,
                }
            }
            (acked, tried, refused)
        })
    };

    tokio::time::sleep(Duration::from_millis(300)).await;
    let began = Instant::now();
    let masters = cluster.masters().await;
    for (n, &slot) in moving.iter().enumerate() {
        let from = cluster.owner_of(slot, masters[0]).await.expect("an owner");
        let to = masters
            [(masters.iter().position(|&m| m == from).unwrap_or(0) + 1 + n % 2) % masters.len()];
        cluster
            .migrate_slot(slot, from, to, Duration::from_millis(100))
            .await;
    }
    let window = began.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("reader");
    }
    let (acked, tried, refused) = writer.await.expect("writer");
    let (ok, failed_moving, failed_other) = (
        ok.load(Ordering::Relaxed),
        failed_moving.load(Ordering::Relaxed),
        failed_other.load(Ordering::Relaxed),
    );
    let mut redirections = std::collections::BTreeMap::new();
    for i in 0..cluster.nodes().len() {
        for (kind, count) in cluster.error_replies(i).await {
            *redirections.entry(kind).or_insert(0u64) += count;
        }
    }
    println!(
        "| {} slots moved, {} | reads {} | failed {} (all of moving sessions: {}) | writes {tried}, refused {refused} | window {window:?} | replies {redirections:?} |",
        moving.len(),
        if durable { "Redis + Postgres" } else { "Redis only" },
        ok + failed_moving + failed_other,
        failed_moving + failed_other,
        failed_other == 0,
    );
    assert!(
        redirections.get("ASK").is_some_and(|&n| n > 0)
            && redirections.get("MOVED").is_some_and(|&n| n > 0),
        "the load met both redirections: {redirections:?}"
    );
    assert_eq!(failed_other, 0, "sessions in other slots never fail");
    if durable {
        assert_eq!(
            failed_moving, 0,
            "no request fails with Postgres configured"
        );
        assert_eq!(refused, 0, "no change fails with Postgres configured");
    }
    // Every acknowledged change is there.
    for (i, id) in ids[..MOVING].iter().enumerate() {
        let record = store.load(id).await.expect("load").expect("live");
        let w = record.data.get("w").and_then(|v| v.as_i64()).unwrap_or(0);
        assert_eq!(
            w, acked[i],
            "session {i}: every acknowledged change, no other"
        );
    }

    // The moved sessions are served by the cluster again: once their entries are back,
    // reading them costs GETs on the masters and, with Postgres, no durable statement.
    assert!(!store.cache_bypassed(), "the store reads the cluster");
    let served = poll_until(
        Duration::from_secs(15),
        Duration::from_millis(100),
        || async {
            let before = match &database_url {
                Some(url) => Some(tiered_sessions_tests::PgStats::snapshot(url).await),
                None => None,
            };
            let masters = cluster.masters().await;
            for &m in &masters {
                cluster.nodes()[m].reset_stats().await;
            }
            for (i, id) in ids[..MOVING].iter().enumerate() {
                match store.load(id).await {
                    Ok(Some(r)) if n_of(&r) == Some(i as i64) => {}
                    _ => return false,
                }
            }
            let mut gets = 0;
            for &m in &masters {
                gets += cluster.nodes()[m]
                    .command_calls()
                    .await
                    .get("get")
                    .copied()
                    .unwrap_or(0);
            }
            let durable_reads = match (&database_url, before) {
                (Some(url), Some(before)) => {
                    let delta = tiered_sessions_tests::PgStats::snapshot(url)
                        .await
                        .since(&before);
                    delta.statement_calls().unwrap_or(u64::MAX)
                        - delta
                            .calls_matching("tiered_sessions_cache_epoch")
                            .unwrap_or(0)
                }
                _ => 0,
            };
            gets >= MOVING as u64 && durable_reads == 0
        },
    )
    .await;
    assert!(served, "the moved sessions are read from the cluster again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_migrations_cost_no_request_with_postgres() {
    let _serial = SERIAL.lock().await;
    slots_migrate_under_load(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_migrations_fail_redis_only_requests_for_moving_sessions_only() {
    let _serial = SERIAL.lock().await;
    slots_migrate_under_load(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_costs_no_request_with_postgres() {
    let _serial = SERIAL.lock().await;
    sentinel_failover_under_load(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_fails_redis_only_requests_during_the_failover_only() {
    let _serial = SERIAL.lock().await;
    sentinel_failover_under_load(false).await;
}
