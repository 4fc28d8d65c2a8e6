//! The versioned binary envelope both tiers store.
//!
//! ```text
//! offset  size  field
//!      0     2  magic "TS"
//!      2     1  format version (2)
//!      3     1  kind: 1 = session record, 2 = tombstone
//!      4    32  storage key of the session the entry belongs to
//!     36     8  version, big-endian u64, incremented by every change
//!     44     8  created at, unix milliseconds, big-endian i64
//!     52     8  idle timeout, milliseconds, big-endian u64
//!     60     8  cache epoch the entry was written under, big-endian u64
//!     68     4  CRC-32 of bytes 0..68 and of the data
//!     72     8  durable expiry, unix milliseconds, big-endian i64 (0: no durable tier)
//!     80     8  cache expiry: when the cache's time to live for it runs out, unix ms
//!     88     …  session data, MessagePack map (records only)
//! ```
//!
//! The header has fixed offsets so that a cache server can compare versions and patch the
//! two expiries without decoding the data (see the Redis tier's Lua scripts), and the
//! entry names its own key so that bytes copied, misrouted or planted under another key
//! are never served as that session: they are a miss. The checksum turns any other damage
//! (a truncated write, a flipped bit, a partial overwrite) into a miss too, rather than
//! data that happens to decode. It leaves out the two expiries so they can be patched in
//! place. Decoding never panics and never allocates more than the input's length.
//!
//! The epoch is how the store invalidates every cached record at once when the cache may
//! have missed a change (see [`TieredStore`](crate::TieredStore)): a record written under
//! an older epoch than the current one is a miss.

use std::{collections::HashMap, time::Duration};

use time::OffsetDateTime;

use crate::StorageKey;

/// The two magic bytes every entry starts with.
pub const MAGIC: [u8; 2] = *b"TS";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u8 = 2;
/// Kind byte of a session record.
pub const KIND_RECORD: u8 = 1;
/// Kind byte of a tombstone: the session was deleted, refills must not bring it back.
pub const KIND_TOMBSTONE: u8 = 2;
/// Offset of the kind byte.
pub const KIND_OFFSET: usize = 3;
/// Offset of the storage key.
pub const KEY_OFFSET: usize = 4;
/// Offset of the version.
pub const VERSION_OFFSET: usize = 36;
/// Offset of the created-at time.
pub const CREATED_OFFSET: usize = 44;
/// Offset of the idle timeout.
pub const IDLE_OFFSET: usize = 52;
/// Offset of the cache epoch.
pub const EPOCH_OFFSET: usize = 60;
/// Offset of the checksum.
pub const CHECKSUM_OFFSET: usize = 68;
/// Offset of the durable expiry; the cache expiry follows it.
pub const DURABLE_EXPIRY_OFFSET: usize = 72;
/// Offset of the cache expiry.
pub const CACHE_EXPIRY_OFFSET: usize = 80;
/// Length of the header; the data follows.
pub const HEADER_LEN: usize = 88;

/// The longest idle timeout or absolute lifetime a session can have: 400 days, the most
/// browsers keep a cookie. Longer values are clamped when written and refused when read.
pub const MAX_LIFETIME: Duration = Duration::from_secs(400 * 24 * 60 * 60);

/// How deeply nested session data may be; deeper data does not decode (a guard against
/// stack exhaustion on hostile bytes).
pub const MAX_DEPTH: usize = 64;

/// Session data as tower-sessions holds it.
pub type Data = HashMap<String, serde_json::Value>;

/// A decoded cache entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// A live session.
    Record(SessionEnvelope),
    /// A deleted session.
    Tombstone,
}

/// A session record as the cache tier stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionEnvelope {
    /// The session's storage key.
    pub key: StorageKey,
    /// Version, incremented by every change.
    pub version: u64,
    /// Creation time (millisecond precision).
    pub created_at: OffsetDateTime,
    /// The session's idle timeout.
    pub idle_timeout: Duration,
    /// The cache epoch the entry was written under.
    pub epoch: u64,
    /// The durable tier's expiry for the session, `None` without a durable tier.
    pub durable_expires_at: Option<OffsetDateTime>,
    /// When the cache's time to live for this entry runs out (as last set by the store).
    pub cache_expires_at: OffsetDateTime,
    /// The session data, MessagePack-encoded by [`encode_data`].
    pub data: Vec<u8>,
}

/// Why an entry was not decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Shorter than a header, or no magic: not ours.
    #[error("not a tiered-sessions entry")]
    Foreign,
    /// Written by a format version this build does not know.
    #[error("unknown entry format version {0}")]
    UnknownFormat(u8),
    /// An unknown kind byte.
    #[error("unknown entry kind {0}")]
    UnknownKind(u8),
    /// The entry names another session's key.
    #[error("entry belongs to another key")]
    WrongKey,
    /// The checksum does not match, or a header field is out of range.
    #[error("corrupt entry")]
    Corrupt,
}

impl SessionEnvelope {
    /// Encodes the record with its header.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.data.len());
        push_header(&mut out, KIND_RECORD, &self.key, self.version);
        out.extend_from_slice(&unix_ms(self.created_at).to_be_bytes());
        out.extend_from_slice(&duration_ms(self.idle_timeout).to_be_bytes());
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&expiry_bytes(
            self.durable_expires_at,
            self.cache_expires_at,
        ));
        out.extend_from_slice(&self.data);
        seal(&mut out);
        out
    }
}

/// Encodes a tombstone for `key`.
pub fn encode_tombstone(key: &StorageKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN);
    push_header(&mut out, KIND_TOMBSTONE, key, u64::MAX);
    out.resize(HEADER_LEN, 0);
    seal(&mut out);
    out
}

fn checksum(entry: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&entry[..CHECKSUM_OFFSET]);
    hasher.update(&entry[HEADER_LEN..]);
    hasher.finalize()
}

fn seal(entry: &mut [u8]) {
    let sum = checksum(entry);
    entry[CHECKSUM_OFFSET..DURABLE_EXPIRY_OFFSET].copy_from_slice(&sum.to_be_bytes());
}

fn push_header(out: &mut Vec<u8>, kind: u8, key: &StorageKey, version: u64) {
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT_VERSION);
    out.push(kind);
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(&version.to_be_bytes());
}

/// Decodes an entry read under `expected`. The data bytes are not decoded here, see
/// [`decode_data`].
pub fn decode(bytes: &[u8], expected: &StorageKey) -> Result<Entry, DecodeError> {
    let header = bytes.get(..HEADER_LEN).ok_or(DecodeError::Foreign)?;
    if header[..2] != MAGIC {
        return Err(DecodeError::Foreign);
    }
    if header[2] != FORMAT_VERSION {
        return Err(DecodeError::UnknownFormat(header[2]));
    }
    if be_u32(header, CHECKSUM_OFFSET) != checksum(bytes) {
        return Err(DecodeError::Corrupt);
    }
    if &header[KEY_OFFSET..VERSION_OFFSET] != expected.as_bytes() {
        return Err(DecodeError::WrongKey);
    }
    match header[KIND_OFFSET] {
        KIND_TOMBSTONE => Ok(Entry::Tombstone),
        KIND_RECORD => {
            let created_ms = be_i64(header, CREATED_OFFSET);
            let idle_ms = be_u64(header, IDLE_OFFSET);
            let durable_ms = be_i64(header, DURABLE_EXPIRY_OFFSET);
            let created_at = from_unix_ms(created_ms).ok_or(DecodeError::Corrupt)?;
            let durable_expires_at = match durable_ms {
                0 => None,
                ms => Some(from_unix_ms(ms).ok_or(DecodeError::Corrupt)?),
            };
            let cache_expires_at =
                from_unix_ms(be_i64(header, CACHE_EXPIRY_OFFSET)).ok_or(DecodeError::Corrupt)?;
            if idle_ms == 0 || idle_ms > duration_ms(MAX_LIFETIME) {
                return Err(DecodeError::Corrupt);
            }
            Ok(Entry::Record(SessionEnvelope {
                key: *expected,
                version: be_u64(header, VERSION_OFFSET),
                created_at,
                idle_timeout: Duration::from_millis(idle_ms),
                epoch: be_u64(header, EPOCH_OFFSET),
                durable_expires_at,
                cache_expires_at,
                data: bytes[HEADER_LEN..].to_vec(),
            }))
        }
        other => Err(DecodeError::UnknownKind(other)),
    }
}

/// Whether a conditional cache write of `new` may replace `current` (the bytes stored
/// under the same key, `None` when absent). The rule every [`CacheTier`](crate::CacheTier)
/// implements atomically:
///
/// - never over a tombstone of the same session (a deleted session stays deleted);
/// - never over a higher version of the same session (a slow writer or a refill racing a
///   change cannot roll it back), nor over the same version written under a later epoch;
/// - with `require_present`, only over a live record of the same session (a save without a
///   durable tier must not re-create a session that expired or was deleted);
/// - anything else (absent, foreign, corrupt, another format) is overwritten.
pub fn put_allowed(current: Option<&[u8]>, new: &[u8], require_present: bool) -> bool {
    let ours = |cur: &[u8]| {
        cur.len() >= HEADER_LEN
            && new.len() >= HEADER_LEN
            && cur[..3] == new[..3]
            && cur[KEY_OFFSET..VERSION_OFFSET] == new[KEY_OFFSET..VERSION_OFFSET]
    };
    match current {
        Some(cur) if ours(cur) => match cur[KIND_OFFSET] {
            KIND_TOMBSTONE => false,
            KIND_RECORD => order(cur) <= order(new),
            _ => !require_present,
        },
        _ => !require_present,
    }
}

/// The order of two records of one session: version, then epoch.
fn order(entry: &[u8]) -> (u64, u64) {
    (be_u64(entry, VERSION_OFFSET), be_u64(entry, EPOCH_OFFSET))
}

/// The header prefix (magic, format, kind, key, version) that identifies `version` of a
/// live record of `key`; [`CacheTier::slide`](crate::CacheTier::slide) compares it before
/// patching.
pub fn record_prefix(key: &StorageKey, version: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(CREATED_OFFSET);
    push_header(&mut out, KIND_RECORD, key, version);
    out
}

/// The 16 bytes stored at [`DURABLE_EXPIRY_OFFSET`]: the durable expiry (0 for none), then
/// the cache expiry. [`CacheTier::slide`](crate::CacheTier::slide) patches them in place.
pub fn expiry_bytes(
    durable_expires_at: Option<OffsetDateTime>,
    cache_expires_at: OffsetDateTime,
) -> [u8; 16] {
    let mut out = [0; 16];
    out[..8].copy_from_slice(&durable_expires_at.map_or(0, unix_ms).to_be_bytes());
    out[8..].copy_from_slice(&unix_ms(cache_expires_at).to_be_bytes());
    out
}

/// Encodes session data canonically: a MessagePack map with keys in sorted order, so that
/// equal data always encodes to equal bytes (the store compares digests of it to tell a
/// read-only request from a change). Keys starting with `skip` are left out.
pub fn encode_data(data: &Data, skip: &str) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    let sorted: std::collections::BTreeMap<&str, &serde_json::Value> = data
        .iter()
        .filter(|(k, _)| k.as_str() != skip)
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    rmp_serde::to_vec(&sorted)
}

/// Decodes session data written by [`encode_data`]; `None` when the bytes are not a valid
/// map (a corrupt entry is a miss, never a panic).
pub fn decode_data(bytes: &[u8]) -> Option<Data> {
    // Straight from the slice (the `io::Read` reader copies every string through a buffer).
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    de.set_max_depth(MAX_DEPTH);
    let data = serde::Deserialize::deserialize(&mut de).ok()?;
    // Trailing bytes mean the entry is not what was written: reading one more value must
    // hit the end of the input.
    match <serde::de::IgnoredAny as serde::Deserialize>::deserialize(&mut de) {
        Err(rmp_serde::decode::Error::InvalidMarkerRead(e))
            if e.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            Some(data)
        }
        _ => None,
    }
}

fn be_u64(bytes: &[u8], at: usize) -> u64 {
    let mut buf = [0; 8];
    buf.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(buf)
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    let mut buf = [0; 4];
    buf.copy_from_slice(&bytes[at..at + 4]);
    u32::from_be_bytes(buf)
}

fn be_i64(bytes: &[u8], at: usize) -> i64 {
    let mut buf = [0; 8];
    buf.copy_from_slice(&bytes[at..at + 8]);
    i64::from_be_bytes(buf)
}

/// Unix milliseconds of a time (saturating).
pub fn unix_ms(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// The time of unix milliseconds; `None` out of range.
pub fn from_unix_ms(ms: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

/// Whole milliseconds of a duration (saturating).
pub fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use tower_sessions_core::session::Id;

    use super::*;

    fn envelope(version: u64) -> SessionEnvelope {
        let mut data = Data::new();
        data.insert("user".into(), serde_json::json!({"id": 7, "name": "alice"}));
        SessionEnvelope {
            key: StorageKey::from_id(&Id(42)),
            version,
            created_at: from_unix_ms(1_700_000_000_123).expect("in range"),
            idle_timeout: Duration::from_secs(1800),
            epoch: 4,
            durable_expires_at: from_unix_ms(1_700_000_900_000),
            cache_expires_at: from_unix_ms(1_700_000_800_000).expect("in range"),
            data: encode_data(&data, "_").expect("encodes"),
        }
    }

    #[test]
    fn round_trips() {
        let env = envelope(3);
        let bytes = env.encode();
        assert_eq!(decode(&bytes, &env.key), Ok(Entry::Record(env.clone())));
        let data = decode_data(&env.data).expect("data decodes");
        assert_eq!(data["user"]["name"], "alice");
    }

    #[test]
    fn any_damage_is_corrupt_but_the_expiries_may_be_patched() {
        let env = envelope(3);
        let mut bytes = env.encode();
        let at = from_unix_ms(1_800_000_000_000).expect("in range");
        let cache_at = from_unix_ms(1_800_000_000_500).expect("in range");
        bytes[DURABLE_EXPIRY_OFFSET..HEADER_LEN].copy_from_slice(&expiry_bytes(Some(at), cache_at));
        let Ok(Entry::Record(patched)) = decode(&bytes, &env.key) else {
            panic!("a patched entry decodes");
        };
        assert_eq!(patched.durable_expires_at, Some(at));
        assert_eq!(patched.cache_expires_at, cache_at);
        let mut epoch = bytes.clone();
        epoch[EPOCH_OFFSET + 7] ^= 0x01;
        assert_eq!(
            decode(&epoch, &env.key),
            Err(DecodeError::Corrupt),
            "the epoch is sealed"
        );
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        assert_eq!(decode(&bytes, &env.key), Err(DecodeError::Corrupt));
        assert_eq!(decode_data(&[0x80, 0x00]), None, "trailing bytes");
    }

    #[test]
    fn another_keys_entry_is_refused() {
        let env = envelope(1);
        let other = StorageKey::from_id(&Id(43));
        assert_eq!(decode(&env.encode(), &other), Err(DecodeError::WrongKey));
    }

    #[test]
    fn garbage_never_panics() {
        let key = StorageKey::from_id(&Id(1));
        let good = envelope(1).encode();
        for len in 0..good.len() {
            let _ = decode(&good[..len], &key);
        }
        let mut flipped = good.clone();
        for i in 0..flipped.len() {
            flipped[i] ^= 0xff;
            let _ = decode(&flipped, &key);
            if let Ok(Entry::Record(e)) = decode(&flipped, &envelope(1).key) {
                let _ = decode_data(&e.data);
            }
            flipped[i] ^= 0xff;
        }
        assert_eq!(decode(b"", &key), Err(DecodeError::Foreign));
        // Nesting past the limit is refused, not a stack overflow.
        let mut deep = vec![0x81, 0xa1, b'k'];
        deep.extend(std::iter::repeat_n(0x91, 10_000));
        deep.push(0xc0);
        assert_eq!(decode_data(&deep), None);
        // A MessagePack map header announcing 2^32-1 entries must not allocate them.
        assert_eq!(decode_data(&[0xdf, 0xff, 0xff, 0xff, 0xff]), None);
        let mut future = good;
        future[2] = 9;
        assert_eq!(
            decode(&future, &envelope(1).key),
            Err(DecodeError::UnknownFormat(9))
        );
    }

    #[test]
    fn data_encoding_is_canonical() {
        let mut a = Data::new();
        let mut b = Data::new();
        for i in 0..50 {
            a.insert(format!("k{i}"), serde_json::json!(i));
        }
        for i in (0..50).rev() {
            b.insert(format!("k{i}"), serde_json::json!(i));
        }
        b.insert("skip".into(), serde_json::json!(true));
        assert_eq!(encode_data(&a, "skip").ok(), encode_data(&b, "skip").ok());
    }

    #[test]
    fn put_rule() {
        let v1 = envelope(1).encode();
        let v2 = envelope(2).encode();
        let tomb = encode_tombstone(&envelope(1).key);
        let foreign = envelope(9).encode();
        let mut other_key = foreign.clone();
        other_key[KEY_OFFSET] ^= 1;
        assert!(put_allowed(None, &v1, false));
        assert!(!put_allowed(None, &v1, true));
        assert!(put_allowed(Some(&v1), &v2, true));
        assert!(put_allowed(Some(&v1), &v1, true));
        assert!(!put_allowed(Some(&v2), &v1, false));
        assert!(!put_allowed(Some(&tomb), &v2, false));
        assert!(put_allowed(Some(b"garbage"), &v1, false));
        assert!(!put_allowed(Some(b"garbage"), &v1, true));
        assert!(put_allowed(Some(&other_key), &v1, false));
        // Same version: a later epoch wins, an earlier one does not.
        let mut v2_later = envelope(2);
        v2_later.epoch += 1;
        let v2_later = v2_later.encode();
        assert!(put_allowed(Some(&v2), &v2_later, false));
        assert!(!put_allowed(Some(&v2_later), &v2, false));
        assert!(put_allowed(Some(&v2_later), &envelope(3).encode(), false));
    }
}
