//! The behaviour suite: every test runs against each store configuration it applies to —
//! Redis + Postgres (`tiered`), Redis only (`redis_only`), memory + SQLite (`embedded`),
//! the two Redis ones again on a six-node Redis Cluster (`cluster_tiered`,
//! `cluster_redis_only`), and Redis + Postgres over TLS as an ACL user (`tls_tiered`) — on
//! private servers the suite starts itself.

mod common;

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::{id_of, send, start_session, Fixture, Kind, SlowLoads};
use tiered_sessions::{
    tower_sessions::{
        session::{Id, Record},
        SessionStore,
    },
    PostgresDurable, RedisCache, StorageKey, TieredStore,
};
use tiered_sessions_tests::{poll_until, PgStats};
use time::OffsetDateTime;

macro_rules! suite {
    (
        all: [$($all:ident),* $(,)?],
        durable: [$($durable:ident),* $(,)?],
        redis: [$($redis:ident),* $(,)?],
        cache_only: [$($cache_only:ident),* $(,)?],
        tiered_only: [$($tiered_only:ident),* $(,)?] $(,)?
    ) => {
        suite!(@module tiered, Tiered, [$($all,)* $($durable,)* $($redis,)* $($tiered_only,)*]);
        suite!(@module embedded, Embedded, [$($all,)* $($durable,)*]);
        suite!(@module redis_only, RedisOnly, [$($all,)* $($redis,)* $($cache_only,)*]);
        suite!(@module cluster_tiered, ClusterTiered, [$($all,)* $($durable,)* $($redis,)* $($tiered_only,)*]);
        suite!(@module cluster_redis_only, ClusterRedisOnly, [$($all,)* $($redis,)* $($cache_only,)*]);
        suite!(@module tls_tiered, TlsTiered, [$($all,)* $($durable,)* $($redis,)* $($tiered_only,)*]);
    };
    (@module $module:ident, $kind:ident, [$($name:ident,)*]) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Kind::$kind).await;
                }
            )*
        }
    };
}

suite! {
    all: [
        session_round_trips_through_the_router,
        concurrent_read_only_request_never_undoes_a_change,
        sliding_expiry_keeps_an_active_session_alive,
        idle_session_dies_on_time,
        per_session_expiry_is_honoured,
        absolute_lifetime_caps_an_active_session,
        cycle_id_replaces_the_session_in_every_tier,
        logout_deletes_the_session_from_every_tier,
        save_never_recreates_a_deleted_session,
        create_never_reuses_the_given_id,
        logout_then_write_never_revives_the_old_id,
        oversized_session_is_rejected_before_any_write,
        storage_keys_are_hashes_of_the_id,
        another_sessions_bytes_are_never_served,
        one_owners_sessions_are_listed_and_revoked_together,
        health_reports_every_tier,
        malformed_cookies_start_a_fresh_session,
    ],
    durable: [
        session_survives_cache_key_delete,
        session_survives_cache_flush,
        session_survives_corrupt_cache_entry,
        durable_touch_is_lazy_and_never_early,
        expired_rows_are_swept_in_batches,
        delete_racing_a_refill_is_not_undone,
        change_racing_a_refill_is_not_undone,
        cache_stops_serving_a_session_the_durable_tier_lost_within_a_touch_interval,
        owner_listing_survives_a_cache_flush,
        corrupt_durable_row_is_a_fresh_session,
    ],
    redis: [
        read_only_requests_cost_one_get_and_no_durable_statement,
        a_change_costs_one_durable_update_and_one_cache_write,
        cache_reads_slide_the_ttl,
    ],
    cache_only: [
        redis_only_session_is_lost_with_the_cache,
        corrupt_cache_entry_is_a_miss_without_durable_tier,
    ],
    tiered_only: [
        session_survives_wrong_type_cache_entry,
        session_survives_cache_key_expiry,
    ],
}

/// Idle timeout of the tests that wait for expiry: long enough to be safe from scheduling
/// noise on a loaded 2-core machine, short enough to keep the suite fast.
const SHORT_IDLE: Duration = Duration::from_millis(2000);
const SHORT_TOUCH: Duration = Duration::from_millis(200);

fn short(b: tiered_sessions::TieredStoreBuilder) -> tiered_sessions::TieredStoreBuilder {
    b.with_idle_timeout(SHORT_IDLE)
        .with_touch_interval(SHORT_TOUCH)
}

async fn read(f: &Fixture, cookie: &str) -> String {
    let reply = send(&f.app(), "GET", "/read", Some(cookie)).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    reply.body
}

async fn loaded_n(store: &TieredStore, id: &Id) -> Option<u64> {
    let record = store.load(id).await.expect("load")?;
    Some(record.data.get("n").and_then(|v| v.as_u64()).unwrap_or(0))
}

// --- all configurations -------------------------------------------------------------

async fn session_round_trips_through_the_router(kind: Kind) {
    let f = Fixture::new(kind).await;
    let app = f.app();
    let cookie = start_session(&app).await;
    assert_eq!(read(&f, &cookie).await, "1");
    assert_eq!(send(&app, "POST", "/incr", Some(&cookie)).await.body, "2");
    assert_eq!(read(&f, &cookie).await, "2");
    // Without a cookie there is no session, and nothing is created for a read.
    let anon = send(&app, "GET", "/read", None).await;
    assert_eq!(anon.body, "0");
    assert!(anon.cookie.is_none());
    // An unknown but well-formed id is not adopted: the response starts no session for it.
    let unknown = Id::default().to_string();
    let reply = send(&app, "POST", "/incr", Some(&unknown)).await;
    assert_eq!(reply.body, "1");
    assert_ne!(reply.cookie.as_deref(), Some(unknown.as_str()));
}

/// 100 rounds of a read-only request that loads the session, then waits while a writing
/// request changes it, then saves (as `with_always_save(true)` does): no write is lost.
async fn concurrent_read_only_request_never_undoes_a_change(kind: Kind) {
    let f = Fixture::new(kind).await;
    let app = f.app();
    let cookie = start_session(&app).await;
    for round in 0..100u64 {
        let delay = (round % 7) * 300;
        let path = format!("/slow-read?us={delay}");
        let slow = send(&app, "GET", &path, Some(&cookie));
        let write = send(&app, "POST", "/incr", Some(&cookie));
        let (slow, write) = tokio::join!(slow, write);
        assert_eq!(slow.status, StatusCode::OK);
        assert_eq!(write.status, StatusCode::OK);
    }
    assert_eq!(read(&f, &cookie).await, "101");
    // And the store itself: a stale record saved after a change does not undo it.
    let id = id_of(&cookie);
    let stale = f.store.load(&id).await.expect("load").expect("live");
    let mut fresh = f.store.load(&id).await.expect("load").expect("live");
    fresh.data.insert("n".into(), 500.into());
    f.store.save(&fresh).await.expect("save");
    f.store.save(&stale).await.expect("save unchanged");
    assert_eq!(loaded_n(&f.store, &id).await, Some(500));
}

/// Read every idle/3 for three idle timeouts: the session lives on in every tier.
async fn sliding_expiry_keeps_an_active_session_alive(kind: Kind) {
    let f = Fixture::with(kind, short).await;
    let app = f.app();
    let cookie = start_session(&app).await;
    let id = id_of(&cookie);
    let until = Instant::now() + SHORT_IDLE * 3;
    while Instant::now() < until {
        tokio::time::sleep(SHORT_IDLE / 3).await;
        assert_eq!(
            read(&f, &cookie).await,
            "1",
            "alive after {:?}",
            until.elapsed()
        );
    }
    if kind.durable() {
        // The durable tier alone (cache gone) still has it: touches kept it alive there.
        f.cache_flush().await;
        assert_eq!(loaded_n(&f.store, &id).await, Some(1));
    }
}

/// Left idle, a session is gone after its idle timeout: from the cache on time, and from
/// the durable tier within the touch interval of slack.
async fn idle_session_dies_on_time(kind: Kind) {
    let f = Fixture::with(kind, short).await;
    let cookie = start_session(&f.app()).await;
    let id = id_of(&cookie);
    let started = Instant::now();
    // Still there shortly before the timeout.
    tokio::time::sleep(SHORT_IDLE - Duration::from_millis(600)).await;
    assert!(f.cache_raw(&id).await.is_some(), "alive before the timeout");
    // The cache entry lives up to a touch interval past the idle timeout (reads slide it
    // at most once per interval), as the durable row does.
    let tolerance = SHORT_TOUCH;
    let gone = poll_until(SHORT_IDLE * 3, Duration::from_millis(50), || async {
        // Read the tiers without sliding: `load` would count as activity.
        f.cache_raw(&id).await.is_none()
    })
    .await;
    assert!(gone, "cache entry outlived the idle timeout");
    tokio::time::sleep(
        (SHORT_IDLE + tolerance + Duration::from_millis(300)).saturating_sub(started.elapsed()),
    )
    .await;
    assert_eq!(
        f.store.load(&id).await.expect("load").map(|_| ()),
        None,
        "session outlived idle + slack"
    );
}

async fn per_session_expiry_is_honoured(kind: Kind) {
    // The store's default is long; this one session asks for 1 s of inactivity.
    let f = Fixture::with(kind, |b| b.with_touch_interval(Duration::from_millis(100))).await;
    let app = f.app();
    let cookie = start_session(&app).await;
    let id = id_of(&cookie);
    let reply = send(&app, "POST", "/expiry?ms=1000", Some(&cookie)).await;
    assert_eq!(reply.status, StatusCode::OK);
    if let Some(pttl) = f.cache_pttl(&id).await {
        assert!(
            (1..=1100).contains(&pttl),
            "cache TTL follows the session's own expiry (plus the touch interval): {pttl}"
        );
    }
    if kind.durable() {
        let row = f.durable_row(&id).await.expect("durable row");
        assert!((990..=1000).contains(&row.idle_ms), "{row:?}");
    }
    // Its own timeout, not the default, governs: idle 1.5 s later it is gone everywhere.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert!(f.store.load(&id).await.expect("load").is_none());
}

async fn absolute_lifetime_caps_an_active_session(kind: Kind) {
    let f = Fixture::with(kind, |b| {
        b.with_idle_timeout(Duration::from_millis(1000))
            .with_touch_interval(Duration::from_millis(100))
            .with_absolute_lifetime(Duration::from_millis(1500))
    })
    .await;
    let app = f.app();
    let cookie = start_session(&app).await;
    let id = id_of(&cookie);
    let started = Instant::now();
    // Active every 200 ms, yet capped at 1.5 s after creation.
    let mut last_alive = Duration::ZERO;
    while started.elapsed() < Duration::from_millis(2500) {
        if f.store.load(&id).await.expect("load").is_some() {
            last_alive = started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        last_alive >= Duration::from_millis(1000),
        "alive while active: {last_alive:?}"
    );
    assert!(
        last_alive < Duration::from_millis(1500),
        "capped: {last_alive:?}"
    );
    f.cache_flush().await;
    assert!(
        f.store.load(&id).await.expect("load").is_none(),
        "not revived from the durable tier"
    );
}

async fn cycle_id_replaces_the_session_in_every_tier(kind: Kind) {
    let f = Fixture::new(kind).await;
    let app = f.app();
    let old = start_session(&app).await;
    let reply = send(&app, "POST", "/login", Some(&old)).await;
    assert_eq!(reply.status, StatusCode::OK);
    let new = reply.cookie.expect("a rotated id");
    assert_ne!(new, old);
    // The old id is dead in both tiers, the new one carries the data.
    assert!(f.store.load(&id_of(&old)).await.expect("load").is_none());
    assert!(f.durable_row(&id_of(&old)).await.is_none());
    assert_eq!(read(&f, &new).await, "1");
    if kind.durable() {
        assert!(f.durable_row(&id_of(&new)).await.is_some());
        f.cache_flush().await;
        assert_eq!(read(&f, &new).await, "1");
        assert!(f.store.load(&id_of(&old)).await.expect("load").is_none());
    }
}

async fn logout_deletes_the_session_from_every_tier(kind: Kind) {
    let f = Fixture::new(kind).await;
    let app = f.app();
    let cookie = start_session(&app).await;
    let id = id_of(&cookie);
    let reply = send(&app, "POST", "/logout", Some(&cookie)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply.set_cookie.is_some_and(|c| c.starts_with("id=;")),
        "cookie removed"
    );
    assert!(f.store.load(&id).await.expect("load").is_none());
    assert!(f.durable_row(&id).await.is_none());
    // A flush does not bring it back.
    f.cache_flush().await;
    assert!(f.store.load(&id).await.expect("load").is_none());
    assert_eq!(read(&f, &cookie).await, "0");
}

async fn save_never_recreates_a_deleted_session(kind: Kind) {
    let f = Fixture::new(kind).await;
    let cookie = start_session(&f.app()).await;
    let id = id_of(&cookie);
    let mut record = f.store.load(&id).await.expect("load").expect("live");
    f.store.delete(&id).await.expect("delete");
    record.data.insert("n".into(), 99.into());
    f.store
        .save(&record)
        .await
        .expect("a save that lost the race is not an error");
    assert!(f.store.load(&id).await.expect("load").is_none());
    assert!(f.durable_row(&id).await.is_none());
    f.cache_flush().await;
    assert!(f.store.load(&id).await.expect("load").is_none());
}

async fn create_never_reuses_the_given_id(kind: Kind) {
    let f = Fixture::new(kind).await;
    let cookie = start_session(&f.app()).await;
    let taken = id_of(&cookie);
    let mut record = Record {
        id: taken,
        data: [("n".to_owned(), 7.into())].into_iter().collect(),
        expiry_date: OffsetDateTime::now_utc() + time::Duration::minutes(30),
    };
    f.store.create(&mut record).await.expect("create");
    assert_ne!(record.id, taken, "create draws its own id");
    assert_eq!(
        loaded_n(&f.store, &taken).await,
        Some(1),
        "the first session is intact"
    );
    assert_eq!(loaded_n(&f.store, &record.id).await, Some(7));
}

/// `Session::flush` followed by a write in the same request (a "signed out" flash
/// message) makes tower-sessions create a session from a record that still carries the old
/// id: the old id must stay dead.
async fn logout_then_write_never_revives_the_old_id(kind: Kind) {
    let f = Fixture::new(kind).await;
    let app = f.app();
    let old = start_session(&app).await;
    let reply = send(&app, "POST", "/logout-with-flash", Some(&old)).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let new = reply.cookie.expect("a session for the flash message");
    assert_ne!(new, old);
    assert!(f.store.load(&id_of(&old)).await.expect("load").is_none());
    assert!(f.durable_row(&id_of(&old)).await.is_none());
    assert_eq!(read(&f, &old).await, "0");
    let flash = f
        .store
        .load(&id_of(&new))
        .await
        .expect("load")
        .expect("live");
    assert_eq!(flash.data.get("flash"), Some(&"signed out".into()));
    assert_eq!(flash.data.get("n"), None, "the old data is gone");
}

async fn oversized_session_is_rejected_before_any_write(kind: Kind) {
    let f = Fixture::with(kind, |b| b.with_max_session_bytes(1024)).await;
    let cookie = start_session(&f.app()).await;
    let id = id_of(&cookie);
    let mut record = f.store.load(&id).await.expect("load").expect("live");
    record.data.insert("blob".into(), "x".repeat(2000).into());
    let err = f.store.save(&record).await.expect_err("too large");
    assert!(
        err.to_string().contains("1024"),
        "the error states the limit: {err}"
    );
    assert_eq!(loaded_n(&f.store, &id).await, Some(1));
    if kind.durable() {
        assert_eq!(f.durable_row(&id).await.expect("row").version, 1);
    }
    let mut new = Record {
        id: Id::default(),
        data: record.data.clone(),
        expiry_date: record.expiry_date,
    };
    assert!(f.store.create(&mut new).await.is_err());
    assert!(f.store.load(&new.id).await.expect("load").is_none());
}

async fn storage_keys_are_hashes_of_the_id(kind: Kind) {
    let f = Fixture::new(kind).await;
    let cookie = start_session(&f.app()).await;
    let id = id_of(&cookie);
    let raw_id = id.0.to_le_bytes();
    let hex_id: String = raw_id.iter().map(|b| format!("{b:02x}")).collect();
    for key in f.cache_keys().await {
        assert!(
            !key.contains(&cookie) && !key.contains(&hex_id),
            "cache key {key} reveals the id"
        );
        assert!(key.contains(&StorageKey::from_id(&id).to_hex()));
    }
    if let Some(entry) = f.cache_raw(&id).await {
        assert!(
            !entry.windows(16).any(|w| w == raw_id),
            "cache entry holds the id"
        );
        assert!(!entry.windows(cookie.len()).any(|w| w == cookie.as_bytes()));
    }
    for column in f.durable_dump().await {
        assert!(
            !column.windows(16).any(|w| w == raw_id),
            "durable row holds the id"
        );
        assert!(!column.windows(cookie.len()).any(|w| w == cookie.as_bytes()));
    }
}

/// Session B's entry copied under session A's key: A never sees B's data.
async fn another_sessions_bytes_are_never_served(kind: Kind) {
    let f = Fixture::new(kind).await;
    let app = f.app();
    let a = start_session(&app).await;
    let b = start_session(&app).await;
    for _ in 0..4 {
        send(&app, "POST", "/incr", Some(&b)).await;
    }
    let b_bytes = f.cache_raw(&id_of(&b)).await.expect("b cached");
    f.cache_set_raw(&id_of(&a), &b_bytes).await;
    let seen = f.store.load(&id_of(&a)).await.expect("load");
    if kind.durable() {
        assert_eq!(
            seen.and_then(|r| r.data.get("n").cloned()),
            Some(1.into()),
            "A's own data, from the durable tier"
        );
    } else {
        assert!(seen.is_none(), "a miss, not B's data");
    }
    assert_eq!(read(&f, &b).await, "5");
}

async fn sign_in(f: &Fixture, user: &str) -> String {
    let anon = start_session(&f.app()).await;
    let reply = send(
        &f.app(),
        "POST",
        &format!("/sign-in?user={user}"),
        Some(&anon),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    reply.cookie.expect("a rotated id")
}

/// alice signs in on three devices and bob on one: alice's list has exactly her three; she
/// can revoke one of hers but not bob's, then sign out everywhere but here.
async fn one_owners_sessions_are_listed_and_revoked_together(kind: Kind) {
    let f = Fixture::new(kind).await;
    let alice: Vec<String> = one_after_another((0..3).map(|_| sign_in(&f, "alice"))).await;
    let bob = sign_in(&f, "bob").await;
    let listed = f.store.sessions_of("alice").await.expect("list");
    let mut keys: Vec<_> = listed.iter().map(|s| s.key).collect();
    keys.sort();
    let mut expected: Vec<_> = alice
        .iter()
        .map(|c| StorageKey::from_id(&id_of(c)))
        .collect();
    expected.sort();
    assert_eq!(keys, expected, "exactly alice's sessions");
    for s in &listed {
        assert_eq!(s.data["auth"]["user_id"], "alice");
        assert!(
            s.created_at <= s.last_seen_at && s.last_seen_at < s.expires_at,
            "{s:?}"
        );
    }
    // Not bob's session, whatever the key.
    let bob_key = StorageKey::from_id(&id_of(&bob));
    assert!(!f.store.revoke("alice", &bob_key).await.expect("revoke"));
    assert_eq!(read(&f, &bob).await, "1");
    // One of hers.
    let first = StorageKey::from_id(&id_of(&alice[0]));
    assert!(f.store.revoke("alice", &first).await.expect("revoke"));
    assert_eq!(read(&f, &alice[0]).await, "0");
    assert_eq!(f.store.sessions_of("alice").await.expect("list").len(), 2);
    // Everywhere but here.
    let here = id_of(&alice[2]);
    assert_eq!(
        f.store
            .revoke_all("alice", Some(&here))
            .await
            .expect("revoke all"),
        1
    );
    assert_eq!(read(&f, &alice[1]).await, "0");
    assert_eq!(read(&f, &alice[2]).await, "1");
    let left = f.store.sessions_of("alice").await.expect("list");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].key, StorageKey::from_id(&here));
    assert_eq!(f.store.sessions_of("bob").await.expect("list").len(), 1);
    assert!(f.store.sessions_of("carol").await.expect("list").is_empty());
}

async fn health_reports_every_tier(kind: Kind) {
    let f = Fixture::new(kind).await;
    let health = f.store.health().await;
    assert!(health.cache.is_ok(), "{health:?}");
    assert_eq!(health.durable.is_some(), kind.durable());
    assert!(health.serving() && !health.degraded(), "{health:?}");
    let json = serde_json::to_value(&health).expect("serializes");
    assert_eq!(json["cache"]["state"], "ok");
}

/// Cookies that name no live session (garbage, the wrong length, 10 KB, SQL-looking text,
/// a well-formed id nobody issued) get a fresh session under a new id; the presented id
/// is never adopted.
async fn malformed_cookies_start_a_fresh_session(kind: Kind) {
    let f = Fixture::new(kind).await;
    let app = f.app();
    let unknown = Id::default().to_string();
    let long = "A".repeat(10 * 1024);
    let cookies = [
        "garbage",
        "AAAA",
        long.as_str(),
        "x' OR '1'='1",
        "'; DROP TABLE tiered_sessions; --",
        unknown.as_str(),
    ];
    for cookie in cookies {
        let reply = send(&app, "POST", "/incr", Some(cookie)).await;
        assert_eq!(reply.status, StatusCode::OK, "{cookie:.40}: {reply:?}");
        assert_eq!(reply.body, "1", "{cookie:.40}: a fresh session");
        let issued = reply.cookie.expect("a new cookie");
        assert_ne!(issued, cookie, "never adopted");
        assert_eq!(read(&f, &issued).await, "1");
    }
    assert!(f
        .store
        .load(&id_of(&unknown))
        .await
        .expect("load")
        .is_none());
    if kind.durable() {
        assert_eq!(f.durable_count().await, cookies.len() as i64);
    }
}

// --- with a durable tier -------------------------------------------------------------

/// A durable row whose data does not decode is a miss that starts a fresh session (with a
/// warning in the log), never a panic or an error page.
async fn corrupt_durable_row_is_a_fresh_session(kind: Kind) {
    let f = Fixture::new(kind).await;
    let app = f.app();
    let cookie = start_session(&app).await;
    let id = id_of(&cookie);
    f.durable_corrupt_directly(&id).await;
    f.cache_flush().await;
    assert!(f
        .store
        .load(&id)
        .await
        .expect("a miss, not an error")
        .is_none());
    let reply = send(&app, "POST", "/incr", Some(&cookie)).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.body, "1", "a fresh session");
    assert_ne!(reply.cookie.as_deref(), Some(cookie.as_str()));
}

async fn session_survives_cache_key_delete(kind: Kind) {
    let f = Fixture::new(kind).await;
    let cookie = start_session(&f.app()).await;
    let id = id_of(&cookie);
    f.cache_delete(&id).await;
    assert_eq!(read(&f, &cookie).await, "1");
    assert!(
        f.cache_refilled(&id).await.is_some(),
        "read-through refilled the cache"
    );
}

async fn session_survives_cache_flush(kind: Kind) {
    let f = Fixture::new(kind).await;
    let app = f.app();
    let cookies: Vec<String> = one_after_another((0..20).map(|_| start_session(&app))).await;
    f.cache_flush().await;
    for cookie in &cookies {
        assert_eq!(read(&f, cookie).await, "1");
        assert!(f.cache_refilled(&id_of(cookie)).await.is_some());
    }
    // A change after the flush is kept in both tiers.
    assert_eq!(
        send(&app, "POST", "/incr", Some(&cookies[0])).await.body,
        "2"
    );
    f.cache_flush().await;
    assert_eq!(read(&f, &cookies[0]).await, "2");
}

async fn session_survives_corrupt_cache_entry(kind: Kind) {
    let f = Fixture::new(kind).await;
    let cookie = start_session(&f.app()).await;
    let id = id_of(&cookie);
    let good = f.cache_raw(&id).await.expect("cached");
    let mut truncated = good.clone();
    truncated.truncate(good.len() - 3);
    let mut bad_data = good.clone();
    let last = bad_data.len() - 1;
    bad_data[last] ^= 0xff;
    bad_data.push(0xc1); // never a valid MessagePack byte
    let mut future_format = good.clone();
    future_format[2] = 99;
    for corrupt in [
        b"garbage".to_vec(),
        Vec::new(),
        truncated,
        bad_data,
        future_format,
    ] {
        f.cache_set_raw(&id, &corrupt).await;
        assert_eq!(read(&f, &cookie).await, "1", "after {corrupt:?}");
        let refilled = f.cache_refilled(&id).await.expect("refilled");
        assert_eq!(
            &refilled[..4],
            &good[..4],
            "the cache holds a good entry again"
        );
    }
}

/// Reads every 100 ms for 2.5 s with a 1 s touch interval: only a handful of durable
/// writes, and the durable expiry always covers a full idle timeout after the last read.
async fn durable_touch_is_lazy_and_never_early(kind: Kind) {
    let idle = Duration::from_millis(3000);
    let touch = Duration::from_millis(1000);
    let f = Fixture::with(kind, |b| {
        b.with_idle_timeout(idle).with_touch_interval(touch)
    })
    .await;
    let app = f.app();
    let cookie = start_session(&app).await;
    let id = id_of(&cookie);
    let mut expiries = std::collections::BTreeSet::new();
    let started = Instant::now();
    let mut last_read = OffsetDateTime::now_utc();
    while started.elapsed() < Duration::from_millis(2500) {
        assert_eq!(read(&f, &cookie).await, "1");
        last_read = OffsetDateTime::now_utc();
        expiries.insert(f.durable_row(&id).await.expect("row").expires_at_ms);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let row = f.durable_row(&id).await.expect("row");
    assert_eq!(row.version, 1, "touches never change the data version");
    // Creation plus at most one touch per interval (and one that may be in flight).
    assert!(
        expiries.len() <= 5,
        "{} distinct durable expiries in 2.5 s: {expiries:?}",
        expiries.len()
    );
    assert!(
        expiries.len() >= 2,
        "the durable expiry was touched: {expiries:?}"
    );
    let covered = poll_until(
        Duration::from_secs(3),
        Duration::from_millis(50),
        || async {
            let row = f.durable_row(&id).await.expect("row");
            let last_read_ms = (last_read.unix_timestamp_nanos() / 1_000_000) as i64;
            row.expires_at_ms >= last_read_ms + idle.as_millis() as i64 - 5
        },
    )
    .await;
    assert!(
        covered,
        "durable expiry covers the idle timeout after the last read"
    );
}

async fn expired_rows_are_swept_in_batches(kind: Kind) {
    let f = Fixture::with(kind, |b| {
        b.with_idle_timeout(Duration::from_millis(500))
            .with_touch_interval(Duration::from_millis(50))
            .with_sweep_batch_size(3)
    })
    .await;
    let app = f.app();
    for _ in 0..10 {
        start_session(&app).await;
    }
    // Two sessions with a long expiry of their own survive the sweep.
    for _ in 0..2 {
        let cookie = start_session(&app).await;
        send(&app, "POST", "/expiry?ms=600000", Some(&cookie)).await;
    }
    assert_eq!(f.durable_count().await, 12);
    let expired = poll_until(
        Duration::from_secs(5),
        Duration::from_millis(100),
        || async {
            f.store.sweep_expired().await.expect("sweep") > 0 || f.durable_count().await == 2
        },
    )
    .await;
    assert!(expired);
    // Several sweepers at once are safe.
    let (a, b) = tokio::join!(f.store.sweep_expired(), f.store.sweep_expired());
    a.expect("sweep");
    b.expect("sweep");
    let done = poll_until(
        Duration::from_secs(5),
        Duration::from_millis(100),
        || async {
            f.store.sweep_expired().await.expect("sweep");
            f.durable_count().await == 2
        },
    )
    .await;
    assert!(done, "{} rows left", f.durable_count().await);
}

/// A store over the fixture's tiers whose durable loads are slow, and the plain store.
async fn slow_refill_store(f: &Fixture) -> TieredStore {
    let hold = Duration::from_millis(300);
    match f.kind {
        Kind::Tiered | Kind::ClusterTiered | Kind::TlsTiered => {
            let url = f.redis_url().expect("redis");
            let cache = RedisCache::connect_with(&url, &f.redis_options())
                .await
                .expect("redis");
            let durable = PostgresDurable::connect(f.postgres_url().expect("pg"))
                .await
                .expect("pg");
            TieredStore::builder(cache)
                .with_durable(SlowLoads {
                    inner: durable,
                    hold,
                })
                .build()
                .expect("store")
        }
        Kind::Embedded => f.slow_embedded_store(hold).await,
        Kind::RedisOnly | Kind::ClusterRedisOnly => unreachable!("no durable tier"),
    }
}

async fn delete_racing_a_refill_is_not_undone(kind: Kind) {
    let f = Fixture::new(kind).await;
    let slow = slow_refill_store(&f).await;
    let cookie = start_session(&f.app()).await;
    let id = id_of(&cookie);
    f.cache_flush().await;
    // The slow store reads the row, then the session is deleted, then the refill lands.
    let loading = tokio::spawn({
        let slow = slow.clone();
        async move { slow.load(&id).await.map(|r| r.is_some()) }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    f.store.delete(&id).await.expect("delete");
    assert!(
        loading.await.expect("join").expect("load"),
        "the racing load saw the old row"
    );
    assert!(
        f.store.load(&id).await.expect("load").is_none(),
        "the refill did not resurrect it"
    );
    assert!(slow.load(&id).await.expect("load").is_none());
}

async fn change_racing_a_refill_is_not_undone(kind: Kind) {
    let f = Fixture::new(kind).await;
    let slow = slow_refill_store(&f).await;
    let app = f.app();
    let cookie = start_session(&app).await;
    let id = id_of(&cookie);
    f.cache_flush().await;
    let loading = tokio::spawn({
        let slow = slow.clone();
        async move { slow.load(&id).await.map(|r| r.is_some()) }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(send(&app, "POST", "/incr", Some(&cookie)).await.body, "2");
    assert!(loading.await.expect("join").expect("load"));
    assert_eq!(
        read(&f, &cookie).await,
        "2",
        "the stale refill did not roll the change back"
    );
}

/// A logout whose cache write failed leaves a live cache entry over a deleted row; the
/// next durable touch (at most one touch interval later) finds the row gone and revokes it.
async fn cache_stops_serving_a_session_the_durable_tier_lost_within_a_touch_interval(kind: Kind) {
    let f = Fixture::with(kind, short).await;
    let app = f.app();
    let cookie = start_session(&app).await;
    let id = id_of(&cookie);
    f.durable_delete_directly(&id).await;
    let started = Instant::now();
    let revoked = poll_until(SHORT_TOUCH * 10, Duration::from_millis(20), || async {
        read(&f, &cookie).await == "0"
    })
    .await;
    assert!(revoked, "still served after {:?}", started.elapsed());
    assert!(
        started.elapsed() < SHORT_TOUCH * 5,
        "revoked within about one touch interval: {:?}",
        started.elapsed()
    );
    f.cache_flush().await;
    assert_eq!(read(&f, &cookie).await, "0");
}

async fn owner_listing_survives_a_cache_flush(kind: Kind) {
    let f = Fixture::new(kind).await;
    let a = sign_in(&f, "alice").await;
    let b = sign_in(&f, "alice").await;
    f.cache_flush().await;
    assert_eq!(f.store.sessions_of("alice").await.expect("list").len(), 2);
    // And revoking still reaches the cache: a refilled entry is tombstoned.
    assert_eq!(read(&f, &a).await, "1");
    assert_eq!(
        f.store
            .revoke_all("alice", Some(&id_of(&b)))
            .await
            .expect("revoke"),
        1
    );
    assert_eq!(read(&f, &a).await, "0");
    assert_eq!(read(&f, &b).await, "1");
}

// --- Redis configurations -------------------------------------------------------------

async fn read_only_requests_cost_one_get_and_no_durable_statement(kind: Kind) {
    const N: u64 = 200;
    let f = Fixture::new(kind).await;
    let app = f.app();
    let cookie = start_session(&app).await;
    read(&f, &cookie).await;
    let before = match f.postgres_url() {
        Some(url) => Some(PgStats::snapshot(url).await),
        None => None,
    };
    f.reset_redis_stats().await;
    let started = Instant::now();
    for _ in 0..N {
        assert_eq!(read(&f, &cookie).await, "1");
    }
    let calls = f.redis_calls().await;
    assert_eq!(calls.get("get"), Some(&N), "{calls:?}");
    assert_eq!(
        calls.values().sum::<u64>(),
        N,
        "one Redis command per read-only request: {calls:?}"
    );
    if let (Some(url), Some(before)) = (f.postgres_url(), before) {
        let delta = PgStats::snapshot(url).await.since(&before);
        assert_eq!(
            session_statements(&delta),
            Some(0),
            "no Postgres statement for read-only requests: {delta:?}"
        );
        assert_epoch_polls_only(&delta, started.elapsed());
        let row = f.durable_row(&id_of(&cookie)).await.expect("row");
        assert_eq!(row.version, 1, "nothing written back");
    }
}

async fn a_change_costs_one_durable_update_and_one_cache_write(kind: Kind) {
    const N: u64 = 50;
    let f = Fixture::new(kind).await;
    let app = f.app();
    let cookie = start_session(&app).await;
    // One change first: the server learns the script (`EVAL`) on the first `NOSCRIPT`.
    send(&app, "POST", "/incr", Some(&cookie)).await;
    let before = match f.postgres_url() {
        Some(url) => Some(PgStats::snapshot(url).await),
        None => None,
    };
    f.reset_redis_stats().await;
    let started = Instant::now();
    for i in 0..N {
        let reply = send(&app, "POST", "/incr", Some(&cookie)).await;
        assert_eq!(reply.body, (i + 3).to_string());
    }
    let calls = f.redis_calls().await;
    assert_eq!(calls.get("evalsha"), Some(&N), "{calls:?}");
    // INFO counts the GET and SET that the script runs inside Redis too; round trips are
    // GET + EVALSHA.
    assert_eq!(calls.get("get"), Some(&(2 * N)), "{calls:?}");
    assert_eq!(calls.get("set"), Some(&N), "{calls:?}");
    assert_eq!(calls.values().sum::<u64>(), 4 * N, "{calls:?}");
    if let (Some(url), Some(before)) = (f.postgres_url(), before) {
        let delta = PgStats::snapshot(url).await.since(&before);
        assert_eq!(
            delta.calls_matching("update tiered_sessions"),
            Some(N),
            "one UPDATE per change: {delta:?}"
        );
        assert_eq!(
            session_statements(&delta),
            Some(N),
            "and no other statement: {delta:?}"
        );
        assert_epoch_polls_only(&delta, started.elapsed());
        let row = f.durable_row(&id_of(&cookie)).await.expect("row");
        assert_eq!(row.version, N as i64 + 2);
    }
}

/// A read slides the cache TTL once it no longer covers a full idle timeout, i.e. at most
/// once per touch interval: reads in between cost a plain `GET`.
async fn cache_reads_slide_the_ttl(kind: Kind) {
    let f = Fixture::with(kind, short).await;
    let cookie = start_session(&f.app()).await;
    let id = id_of(&cookie);
    let full = (SHORT_IDLE + SHORT_TOUCH).as_millis() as i64;
    f.reset_redis_stats().await;
    // Within the first touch interval: not due, nothing but the GET.
    read(&f, &cookie).await;
    assert_eq!(scripts_run(&f.redis_calls().await), 0);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let before = f.cache_pttl(&id).await.expect("pttl");
    assert!(before <= full - 700, "TTL runs down: {before}");
    read(&f, &cookie).await;
    let slid = poll_until(Duration::from_secs(2), Duration::from_millis(5), || async {
        f.cache_pttl(&id).await.expect("pttl") > full - 200
    })
    .await;
    assert!(slid, "a read restarts the TTL once due");
    assert_eq!(scripts_run(&f.redis_calls().await), 1, "one slide");
}

// --- without a durable tier ---------------------------------------------------------------

async fn redis_only_session_is_lost_with_the_cache(kind: Kind) {
    let f = Fixture::new(kind).await;
    let cookie = start_session(&f.app()).await;
    f.cache_flush().await;
    assert_eq!(
        read(&f, &cookie).await,
        "0",
        "documented: Redis-only sessions die with Redis"
    );
}

async fn corrupt_cache_entry_is_a_miss_without_durable_tier(kind: Kind) {
    let f = Fixture::new(kind).await;
    let cookie = start_session(&f.app()).await;
    let id = id_of(&cookie);
    f.cache_set_raw(&id, b"\x00garbage").await;
    assert!(f
        .store
        .load(&id)
        .await
        .expect("a miss, not an error")
        .is_none());
    assert!(f.cache_set_wrong_type(&id).await);
    assert!(f.store.load(&id).await.is_err() || f.store.load(&id).await.expect("load").is_none());
}

// --- Redis + Postgres only -------------------------------------------------------------------

async fn session_survives_wrong_type_cache_entry(kind: Kind) {
    let f = Fixture::new(kind).await;
    let cookie = start_session(&f.app()).await;
    let id = id_of(&cookie);
    assert!(f.cache_set_wrong_type(&id).await);
    assert_eq!(read(&f, &cookie).await, "1");
    assert!(
        f.cache_refilled(&id).await.is_some(),
        "the refill replaced the foreign value"
    );
}

async fn session_survives_cache_key_expiry(kind: Kind) {
    let f = Fixture::new(kind).await;
    let cookie = start_session(&f.app()).await;
    let id = id_of(&cookie);
    f.expire_cache_key(&id).await;
    assert_eq!(read(&f, &cookie).await, "1");
    assert!(f.cache_refilled(&id).await.is_some());
}

/// Scripts a test made Redis run: `EVALSHA`, plus `EVAL` when the server did not know the
/// script yet (its first `EVALSHA` is answered `NOSCRIPT`).
fn scripts_run(calls: &std::collections::BTreeMap<String, u64>) -> u64 {
    let evalsha = calls.get("evalsha").copied().unwrap_or(0);
    let eval = calls.get("eval").copied().unwrap_or(0);
    evalsha.max(eval)
}

/// Statements a request ran: all but the epoch polls, which each instance runs once per
/// poll interval whatever the traffic.
fn session_statements(delta: &PgStats) -> Option<u64> {
    Some(delta.statement_calls()? - delta.calls_matching("tiered_sessions_cache_epoch")?)
}

/// The epoch statements in `delta` are polls (one per second), not per-request work.
fn assert_epoch_polls_only(delta: &PgStats, elapsed: Duration) {
    let polls = delta
        .calls_matching("tiered_sessions_cache_epoch")
        .unwrap_or(0);
    assert!(
        polls <= elapsed.as_secs() + 2,
        "{polls} epoch statements in {elapsed:?}: {delta:?}"
    );
}

async fn one_after_another<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let mut out = Vec::new();
    for f in futures {
        out.push(f.await);
    }
    out
}
