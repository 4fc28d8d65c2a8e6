//! The sessions every backend stores: the same data for the same index, so that every
//! backend reads the same bytes.

use std::{collections::HashMap, time::Duration};

use tiered_sessions::{
    tower_sessions::session::{Id, Record},
    StorageKey, REVISION_KEY,
};
use tiered_sessions_core::{envelope, SessionEnvelope};
use time::OffsetDateTime;

/// Session data as tower-sessions holds it.
pub type Data = HashMap<String, serde_json::Value>;

/// Makes session `i`'s data: the fields of a typical login session (an axum-login user,
/// a CSRF token, a few preferences), padded so that its MessagePack encoding is
/// `payload_bytes` long when that is larger than the fields alone.
#[derive(Debug, Clone)]
pub struct Payload {
    seed: u64,
    pad: usize,
    encoded_len: usize,
}

impl Payload {
    /// Finds the padding that brings the encoded data of every session to `payload_bytes`
    /// (all sessions encode to the same length: their fields have fixed widths).
    pub fn new(seed: u64, payload_bytes: usize) -> Self {
        let mut payload = Self {
            seed,
            pad: 0,
            encoded_len: 0,
        };
        payload.encoded_len = encoded_len(&payload.data(0));
        // The pad's own MessagePack header grows at 32 and 256 bytes: a few steps converge.
        for _ in 0..8 {
            if payload.encoded_len == payload_bytes {
                break;
            }
            let diff = payload_bytes as i64 - payload.encoded_len as i64;
            let Some(pad) = payload.pad.checked_add_signed(diff as isize) else {
                break;
            };
            let mut next = payload.clone();
            next.pad = pad;
            next.encoded_len = encoded_len(&next.data(0));
            if next.encoded_len > payload_bytes && payload.encoded_len < payload_bytes {
                // A header boundary: one byte short is as close as it gets.
                next.pad = pad.saturating_sub(next.encoded_len - payload_bytes);
                next.encoded_len = encoded_len(&next.data(0));
                payload = next;
                break;
            }
            payload = next;
        }
        payload
    }

    /// The encoded size of one session's data, in bytes.
    pub fn encoded_len(&self) -> usize {
        self.encoded_len
    }

    /// Session `i`'s data.
    pub fn data(&self, i: u64) -> Data {
        let token = mix(self.seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut data: Data = [
            (
                "axum-login.data".to_owned(),
                serde_json::json!({
                    "user_id": format!("6f1c2b1e-8d4a-4c7e-9a51-{:012}", i % 1_000_000_000_000),
                    "auth_hash": format!("{token:016x}{:016x}", mix(token)),
                }),
            ),
            (
                "csrf".to_owned(),
                serde_json::json!(format!("{:016x}{:016x}", mix(token ^ 1), mix(token ^ 2))),
            ),
            ("visits".to_owned(), serde_json::json!(0)),
            ("theme".to_owned(), serde_json::json!("dark")),
            ("locale".to_owned(), serde_json::json!("en-GB")),
        ]
        .into_iter()
        .collect();
        if self.pad > 0 {
            data.insert("pad".to_owned(), serde_json::json!("x".repeat(self.pad)));
        }
        data
    }

    /// A record of session `i` with a random id, expiring `idle` from now, as
    /// `SessionManagerLayer` hands it to `create`.
    pub fn record(&self, i: u64, idle: Duration) -> Record {
        Record {
            id: Id::default(),
            data: self.data(i),
            expiry_date: expiry(idle),
        }
    }

    /// The cache entry the tiered store would keep for session `i`: the bytes the plain
    /// `GET`/`GETEX` floors read.
    pub fn envelope(&self, i: u64, idle: Duration, touch_interval: Duration) -> Vec<u8> {
        let now = OffsetDateTime::now_utc();
        let data = envelope::encode_data(&self.data(i), REVISION_KEY).unwrap_or_default();
        SessionEnvelope {
            key: StorageKey::from_id(&Id(i128::from(mix(self.seed ^ i)))),
            version: 1,
            created_at: now,
            idle_timeout: idle,
            epoch: 1,
            durable_expires_at: Some(now + idle + touch_interval),
            cache_expires_at: now + idle + touch_interval,
            data,
        }
        .encode()
    }
}

/// `now + idle`, what `Expiry::OnInactivity(idle)` sets before every save.
pub fn expiry(idle: Duration) -> OffsetDateTime {
    OffsetDateTime::now_utc() + idle
}

fn encoded_len(data: &Data) -> usize {
    envelope::encode_data(data, REVISION_KEY).map_or(0, |v| v.len())
}

/// SplitMix64: a fast, well-mixed 64-bit hash for seeds and tokens.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A xorshift generator per task: cheap enough not to show in the measurement.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `stream` (a task index) of `seed`.
    pub fn new(seed: u64, stream: u64) -> Self {
        Self(mix(seed ^ mix(stream)) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A uniform index below `n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        // Lemire's multiply-shift: no division on the hot path.
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// `true` with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64) < p * (1u64 << 53) as f64
    }
}

/// The indices `0..n` in a seeded random order (Fisher-Yates).
pub fn permutation(n: usize, seed: u64) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n as u32).collect();
    let mut rng = Rng::new(seed, u64::MAX);
    for i in (1..order.len()).rev() {
        let j = rng.below(i + 1);
        order.swap(i, j);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_have_the_asked_size() {
        for size in [200, 256, 300, 1000, 4096] {
            let payload = Payload::new(7, size);
            let len = payload.encoded_len();
            assert!(len == size || len + 1 == size, "{size}: got {len}");
            assert_eq!(
                encoded_len(&payload.data(123_456)),
                len,
                "same for every index"
            );
        }
        // Smaller than the fields alone: no padding, the natural size.
        assert!(Payload::new(7, 10).encoded_len() > 10);
    }

    #[test]
    fn permutations_cover_every_index_once() {
        let mut order = permutation(1000, 3);
        assert_ne!(order[..10], (0..10).collect::<Vec<u32>>()[..]);
        order.sort_unstable();
        assert_eq!(order, (0..1000).collect::<Vec<u32>>());
    }

    #[test]
    fn rng_stays_in_range() {
        let mut rng = Rng::new(1, 2);
        assert!((0..10_000).all(|_| rng.below(7) < 7));
        let hits = (0..10_000).filter(|_| rng.chance(0.1)).count();
        assert!((800..1200).contains(&hits), "{hits}");
    }
}
