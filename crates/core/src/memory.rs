//! An in-process cache tier on moka, for the embedded default and fast tests.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use moka::{
    ops::compute::{CompResult, Op},
    sync::Cache,
    Expiry,
};
use time::OffsetDateTime;

use crate::{envelope, CacheTier, StorageKey, TierError};

/// A [`CacheTier`] in the process's memory, bounded by size, with per-entry time to live.
///
/// It follows the same conditional-write rules as the Redis tier, so a [`TieredStore`](crate::TieredStore)
/// behaves the same on it. It is not shared between processes: with several app instances,
/// use Redis. Cloning is cheap and shares the entries.
#[derive(Debug, Clone)]
pub struct MemoryCache {
    cache: Cache<StorageKey, Slot>,
}

#[derive(Debug, Clone)]
struct Slot {
    bytes: Bytes,
    ttl: Duration,
}

#[derive(Debug)]
struct SlotTtl;

impl Expiry<StorageKey, Slot> for SlotTtl {
    fn expire_after_create(&self, _: &StorageKey, slot: &Slot, _: Instant) -> Option<Duration> {
        Some(slot.ttl)
    }

    fn expire_after_update(
        &self,
        _: &StorageKey,
        slot: &Slot,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(slot.ttl)
    }
}

impl MemoryCache {
    /// A cache holding at most about `max_bytes` of entries; the least recently used go
    /// first when it is full (with a durable tier, they are read back on the next request).
    pub fn new(max_bytes: u64) -> Self {
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_, slot: &Slot| {
                // Entry bytes plus a rough per-entry overhead (key, bookkeeping).
                u32::try_from(slot.bytes.len() + 96).unwrap_or(u32::MAX)
            })
            .expire_after(SlotTtl)
            .build();
        Self { cache }
    }

    /// Reads an entry without touching its time to live (for inspection; the store reads
    /// with [`CacheTier::get`]).
    pub fn peek(&self, key: &StorageKey) -> Option<Bytes> {
        self.cache.get(key).map(|slot| slot.bytes)
    }

    /// Drops every entry, as `FLUSHALL` does to Redis.
    pub fn clear(&self) {
        self.cache.invalidate_all();
    }

    fn compute(
        &self,
        key: &StorageKey,
        f: impl FnOnce(Option<Slot>) -> Op<Slot>,
    ) -> CompResult<StorageKey, Slot> {
        self.cache
            .entry(*key)
            .and_compute_with(|entry| f(entry.map(|e| e.into_value())))
    }
}

#[async_trait]
impl CacheTier for MemoryCache {
    async fn get(&self, key: &StorageKey) -> Result<Option<Bytes>, TierError> {
        Ok(self.cache.get(key).map(|slot| slot.bytes))
    }

    async fn insert(
        &self,
        key: &StorageKey,
        entry: &[u8],
        ttl: Duration,
    ) -> Result<bool, TierError> {
        let bytes = Bytes::copy_from_slice(entry);
        Ok(matches!(
            self.compute(key, |slot| match slot {
                Some(_) => Op::Nop,
                None => Op::Put(Slot { bytes, ttl }),
            }),
            CompResult::Inserted(_)
        ))
    }

    async fn put(
        &self,
        key: &StorageKey,
        entry: &[u8],
        ttl: Duration,
        require_present: bool,
    ) -> Result<bool, TierError> {
        let bytes = Bytes::copy_from_slice(entry);
        Ok(matches!(
            self.compute(key, |slot| {
                if envelope::put_allowed(
                    slot.as_ref().map(|s| &s.bytes[..]),
                    &bytes,
                    require_present,
                ) {
                    Op::Put(Slot { bytes, ttl })
                } else {
                    Op::Nop
                }
            }),
            CompResult::Inserted(_) | CompResult::ReplacedWith(_)
        ))
    }

    async fn replace(
        &self,
        key: &StorageKey,
        entry: &[u8],
        ttl: Duration,
    ) -> Result<(), TierError> {
        self.cache.insert(
            *key,
            Slot {
                bytes: Bytes::copy_from_slice(entry),
                ttl,
            },
        );
        Ok(())
    }

    async fn remove(&self, key: &StorageKey) -> Result<(), TierError> {
        self.cache.invalidate(key);
        Ok(())
    }

    async fn peek(&self, key: &StorageKey) -> Result<Option<(Bytes, Duration)>, TierError> {
        // moka does not expose an entry's remaining time; the full TTL of its last write is
        // the closest it tells.
        Ok(self.cache.get(key).map(|slot| (slot.bytes, slot.ttl)))
    }

    async fn ping(&self) -> Result<(), TierError> {
        Ok(())
    }

    async fn slide(
        &self,
        key: &StorageKey,
        version: u64,
        ttl: Duration,
        durable_expires_at: Option<OffsetDateTime>,
        cache_expires_at: OffsetDateTime,
    ) -> Result<bool, TierError> {
        let prefix = envelope::record_prefix(key, version);
        let patch = envelope::expiry_bytes(durable_expires_at, cache_expires_at);
        Ok(matches!(
            self.compute(key, |slot| match slot {
                Some(slot)
                    if slot.bytes.starts_with(&prefix)
                        && slot.bytes.len() >= envelope::HEADER_LEN =>
                {
                    let mut bytes = slot.bytes.to_vec();
                    bytes[envelope::DURABLE_EXPIRY_OFFSET..envelope::HEADER_LEN]
                        .copy_from_slice(&patch);
                    Op::Put(Slot {
                        bytes: bytes.into(),
                        ttl,
                    })
                }
                _ => Op::Nop,
            }),
            CompResult::ReplacedWith(_)
        ))
    }
}
