//! The `CacheTier` contract, run against `RedisCache` on a private `redis-server` and
//! against `MemoryCache`: the conditional writes the store's ordering guarantees rest on.

use std::time::Duration;

use fred::prelude::*;
use tiered_sessions::{
    tower_sessions::session::Id, CacheTier, MemoryCache, RedisCache, StorageKey,
};
use tiered_sessions_core::envelope::{self, Entry, SessionEnvelope};
use tiered_sessions_tests::RedisServer;
use time::OffsetDateTime;

const TTL: Duration = Duration::from_secs(60);

fn entry(key: &StorageKey, version: u64, n: u64) -> Vec<u8> {
    let data = [("n".to_owned(), serde_json::json!(n))]
        .into_iter()
        .collect();
    SessionEnvelope {
        key: *key,
        version,
        created_at: OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("time"),
        idle_timeout: Duration::from_secs(1800),
        epoch: 1,
        durable_expires_at: None,
        cache_expires_at: OffsetDateTime::from_unix_timestamp(1_700_001_800).expect("time"),
        data: envelope::encode_data(&data, "_").expect("encode"),
    }
    .encode()
}

fn version_of(bytes: &[u8], key: &StorageKey) -> Option<u64> {
    match envelope::decode(bytes, key) {
        Ok(Entry::Record(env)) => Some(env.version),
        _ => None,
    }
}

async fn conditional_writes_follow_versions(cache: &dyn CacheTier) {
    let key = StorageKey::from_id(&Id::default());
    assert!(cache.get(&key).await.expect("get").is_none());
    // `require_present` refuses to create.
    assert!(!cache
        .put(&key, &entry(&key, 1, 1), TTL, true)
        .await
        .expect("put"));
    assert!(cache
        .insert(&key, &entry(&key, 1, 1), TTL)
        .await
        .expect("insert"));
    assert!(
        !cache
            .insert(&key, &entry(&key, 1, 9), TTL)
            .await
            .expect("insert"),
        "NX"
    );
    assert!(cache
        .put(&key, &entry(&key, 3, 3), TTL, true)
        .await
        .expect("put"));
    // An older version never replaces a newer one, with or without `require_present`.
    assert!(!cache
        .put(&key, &entry(&key, 2, 2), TTL, false)
        .await
        .expect("put"));
    assert!(!cache
        .put(&key, &entry(&key, 2, 2), TTL, true)
        .await
        .expect("put"));
    let got = cache.get(&key).await.expect("get").expect("present");
    assert_eq!(version_of(&got, &key), Some(3));
    // Same version: a later epoch replaces it, an earlier one does not.
    let mut later = envelope::decode(&got, &key).expect("decodes");
    if let Entry::Record(env) = &mut later {
        env.epoch = 2;
    }
    let Entry::Record(later) = later else {
        panic!("a record")
    };
    assert!(cache
        .put(&key, &later.encode(), TTL, false)
        .await
        .expect("put"));
    assert!(!cache
        .put(&key, &entry(&key, 3, 3), TTL, false)
        .await
        .expect("put"));
    // A tombstone stops every later conditional write.
    cache
        .replace(&key, &envelope::encode_tombstone(&key), TTL)
        .await
        .expect("replace");
    assert!(!cache
        .put(&key, &entry(&key, 9, 9), TTL, false)
        .await
        .expect("put"));
    // Garbage, and another key's entry, are overwritten by a refill but not by a
    // `require_present` save.
    let other = StorageKey::from_id(&Id::default());
    for junk in [b"junk".to_vec(), entry(&other, 50, 50)] {
        cache.replace(&key, &junk, TTL).await.expect("replace");
        assert!(!cache
            .put(&key, &entry(&key, 1, 1), TTL, true)
            .await
            .expect("put"));
        assert!(cache
            .put(&key, &entry(&key, 1, 1), TTL, false)
            .await
            .expect("put"));
    }
    cache.remove(&key).await.expect("remove");
    assert!(cache.get(&key).await.expect("get").is_none());
}

async fn slides_check_the_version(cache: &dyn CacheTier) {
    let key = StorageKey::from_id(&Id::default());
    cache
        .insert(&key, &entry(&key, 4, 4), TTL)
        .await
        .expect("insert");
    let at = OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("time");
    assert!(
        !cache
            .slide(&key, 3, TTL, Some(at), at)
            .await
            .expect("slide"),
        "stale version"
    );
    let cache_at = OffsetDateTime::from_unix_timestamp(1_800_000_100).expect("time");
    assert!(cache
        .slide(&key, 4, TTL, Some(at), cache_at)
        .await
        .expect("slide"));
    let got = cache.get(&key).await.expect("get").expect("present");
    let Ok(Entry::Record(env)) = envelope::decode(&got, &key) else {
        panic!("a record")
    };
    assert_eq!(env.durable_expires_at, Some(at));
    assert_eq!(env.cache_expires_at, cache_at);
    assert_eq!(env.version, 4);
    let absent = StorageKey::from_id(&Id::default());
    assert!(!cache.slide(&absent, 1, TTL, None, at).await.expect("slide"));
    assert!(
        cache.get(&absent).await.expect("get").is_none(),
        "never creates"
    );
}

#[tokio::test]
async fn redis_conditional_writes_follow_versions() {
    let server = RedisServer::start().await;
    let cache = RedisCache::connect(&server.url()).await.expect("connect");
    conditional_writes_follow_versions(&cache).await;
}

#[tokio::test]
async fn memory_conditional_writes_follow_versions() {
    conditional_writes_follow_versions(&MemoryCache::new(1 << 20)).await;
}

#[tokio::test]
async fn redis_slides_check_the_version() {
    let server = RedisServer::start().await;
    let cache = RedisCache::connect(&server.url()).await.expect("connect");
    slides_check_the_version(&cache).await;
}

#[tokio::test]
async fn memory_slides_check_the_version() {
    slides_check_the_version(&MemoryCache::new(1 << 20)).await;
}

#[tokio::test]
async fn redis_reads_leave_the_ttl_and_slides_set_it() {
    let server = RedisServer::start().await;
    let cache = RedisCache::connect(&server.url())
        .await
        .expect("connect")
        .with_key_prefix("t:");
    let key = StorageKey::from_id(&Id::default());
    let name = cache.redis_key(&key);
    assert!(name.starts_with("t:"));
    cache
        .insert(&key, &entry(&key, 1, 1), Duration::from_secs(10))
        .await
        .expect("insert");
    let pttl: i64 = server.admin().pttl(&name).await.expect("pttl");
    assert!((9_000..=10_000).contains(&pttl), "{pttl}");
    cache.get(&key).await.expect("get");
    let pttl: i64 = server.admin().pttl(&name).await.expect("pttl");
    assert!((8_000..=10_000).contains(&pttl), "GET left it: {pttl}");
    let at = OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("time");
    assert!(cache
        .slide(&key, 1, Duration::from_secs(100), Some(at), at)
        .await
        .expect("slide"));
    let pttl: i64 = server.admin().pttl(&name).await.expect("pttl");
    assert!((98_000..=100_000).contains(&pttl), "slid: {pttl}");
}

#[tokio::test]
async fn redis_wrong_type_is_overwritten_by_a_refill_only() {
    let server = RedisServer::start().await;
    let cache = RedisCache::connect(&server.url()).await.expect("connect");
    let key = StorageKey::from_id(&Id::default());
    let name = cache.redis_key(&key);
    let _: () = server.admin().hset(&name, ("a", "b")).await.expect("hset");
    assert!(
        cache.get(&key).await.is_err(),
        "GET on a hash is an error, not a panic"
    );
    assert!(!cache
        .put(&key, &entry(&key, 1, 1), TTL, true)
        .await
        .expect("put"));
    assert!(cache
        .put(&key, &entry(&key, 1, 1), TTL, false)
        .await
        .expect("put"));
    let got = cache.get(&key).await.expect("get").expect("present");
    assert_eq!(version_of(&got, &key), Some(1));
}

#[tokio::test]
async fn redis_works_over_a_pool() {
    let server = RedisServer::start().await;
    let config = Config::from_url(&server.url()).expect("url");
    let pool = Builder::from_config(config).build_pool(3).expect("pool");
    pool.init().await.expect("connect");
    let cache = RedisCache::new(pool);
    conditional_writes_follow_versions(&cache).await;
}
