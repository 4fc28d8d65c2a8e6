//! The durable tier against a real Postgres, and the store when Postgres is down.

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use common::{app, id_of, send, start_session};
use tiered_sessions::{
    tower_sessions::session::Id, DurableTier, PostgresDurable, RedisCache, StorageKey,
    StoredSession, TieredStore,
};
use tiered_sessions_tests::{shared_postgres, PostgresCluster, RedisServer};
use time::OffsetDateTime;

fn now_ms() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1_000_000 * 1_000_000)
        .expect("valid nanosecond")
}

fn session(key: StorageKey, data: &[u8], expires_in: time::Duration) -> StoredSession {
    let now = now_ms();
    StoredSession {
        key,
        version: 1,
        created_at: now,
        idle_timeout: Duration::from_secs(1800),
        expires_at: now + expires_in,
        data: data.to_vec(),
        owner: None,
    }
}

#[tokio::test]
async fn postgres_migrations_are_idempotent_under_concurrency() {
    let url = shared_postgres().await.create_database().await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let durable = PostgresDurable::connect(&url).await.expect("connect");
            durable.migrate().await.expect("concurrent migrate");
        }));
    }
    for task in tasks {
        task.await.expect("join");
    }
    let durable = PostgresDurable::connect(&url).await.expect("connect");
    durable.migrate().await.expect("migrate again");
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM tiered_sessions_migrations")
        .fetch_one(durable.pool())
        .await
        .expect("bookkeeping table");
    let files = std::fs::read_dir(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crates/sqlx/migrations/postgres"
    ))
    .expect("migrations dir")
    .count();
    assert_eq!(applied, files as i64, "each migration applied exactly once");
    let indexed: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT FROM pg_indexes WHERE tablename = 'tiered_sessions' \
         AND indexdef LIKE '%(expires_at)%')",
    )
    .fetch_one(durable.pool())
    .await
    .expect("pg_indexes");
    assert!(indexed, "the sweeper's expiry index exists");
}

#[tokio::test]
async fn postgres_insert_of_a_taken_key_writes_nothing() {
    let url = shared_postgres().await.create_database().await;
    let durable = PostgresDurable::connect(&url).await.expect("connect");
    durable.migrate().await.expect("migrate");
    let key = StorageKey::from_id(&Id::default());
    let first = session(key, b"first", time::Duration::minutes(5));
    assert!(durable.insert(&first).await.expect("insert"));
    let second = session(key, b"second", time::Duration::minutes(5));
    assert!(
        !durable.insert(&second).await.expect("insert"),
        "conflict reported"
    );
    let row = durable
        .load(&key, now_ms())
        .await
        .expect("load")
        .expect("row");
    assert_eq!(row.data, b"first");
}

#[tokio::test]
async fn postgres_update_never_recreates_and_touch_only_moves_forward() {
    let url = shared_postgres().await.create_database().await;
    let durable = PostgresDurable::connect(&url).await.expect("connect");
    durable.migrate().await.expect("migrate");
    let key = StorageKey::from_id(&Id::default());
    let row = session(key, b"v1", time::Duration::minutes(5));
    durable.insert(&row).await.expect("insert");
    let now = now_ms();
    let later = now + time::Duration::minutes(10);
    let updated = durable
        .update(&key, b"v2", Duration::from_secs(60), later, None, now)
        .await
        .expect("update")
        .expect("live row");
    assert_eq!(updated.version, 2);
    assert_eq!(updated.created_at, row.created_at);
    // A touch to an earlier time does not move the expiry back.
    assert_eq!(
        durable
            .touch(&key, now + time::Duration::minutes(1), now)
            .await
            .expect("touch"),
        Some(2),
        "touch reports the live version"
    );
    let loaded = durable.load(&key, now).await.expect("load").expect("row");
    assert_eq!(loaded.expires_at, later);
    assert_eq!(loaded.data, b"v2");
    durable.delete(&key).await.expect("delete");
    let gone = durable
        .update(&key, b"v3", Duration::from_secs(60), later, None, now)
        .await;
    assert_eq!(gone.expect("update"), None, "an update never re-creates");
    assert_eq!(durable.touch(&key, later, now).await.expect("touch"), None);
    assert_eq!(durable.load(&key, now).await.expect("load"), None);
    // An expired row is neither loaded nor updated.
    let expired = session(
        StorageKey::from_id(&Id::default()),
        b"old",
        time::Duration::milliseconds(-1),
    );
    durable.insert(&expired).await.expect("insert");
    assert_eq!(
        durable.load(&expired.key, now_ms()).await.expect("load"),
        None
    );
    let stale = durable
        .update(
            &expired.key,
            b"x",
            Duration::from_secs(1),
            later,
            None,
            now_ms(),
        )
        .await;
    assert_eq!(stale.expect("update"), None);
}

/// Postgres stopped: a change fails with an error after a bounded wait and writes nothing
/// anywhere; cached reads keep working; once Postgres is back, the pool recovers by itself.
#[tokio::test]
async fn save_that_cannot_reach_postgres_fails_and_writes_nothing() {
    let cluster = PostgresCluster::init().await;
    let url = cluster.create_database().await;
    let redis = RedisServer::start().await;
    let durable = PostgresDurable::connect(&url).await.expect("connect");
    durable.migrate().await.expect("migrate");
    let cache = RedisCache::connect(&redis.url()).await.expect("redis");
    let store = TieredStore::builder(cache)
        .with_durable(durable)
        .build()
        .expect("store");
    let app = app(&store);
    let cookie = start_session(&app).await;
    let id = id_of(&cookie);

    cluster.stop_fast().await;
    let started = std::time::Instant::now();
    let reply = send(&app, "POST", "/incr", Some(&cookie)).await;
    assert!(
        reply.status.is_server_error(),
        "not acknowledged: {reply:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded wait: {:?}",
        started.elapsed()
    );
    // The cache was not written either: reads still see the last durable value.
    assert_eq!(send(&app, "GET", "/read", Some(&cookie)).await.body, "1");
    let record = tiered_sessions::tower_sessions::SessionStore::load(&store, &id)
        .await
        .expect("cached read while Postgres is down")
        .expect("live");
    assert_eq!(record.data.get("n"), Some(&1.into()));

    cluster.start().await;
    let mut recovered = false;
    for _ in 0..50 {
        let reply = send(&app, "POST", "/incr", Some(&cookie)).await;
        if reply.status == StatusCode::OK {
            assert_eq!(reply.body, "2");
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "the pool reconnects without a restart");
    redis.flushall().await;
    assert_eq!(send(&app, "GET", "/read", Some(&cookie)).await.body, "2");
}
