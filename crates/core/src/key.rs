//! Storage keys: what both tiers file a session under.

use std::fmt;

use sha2::{Digest, Sha256};
use tower_sessions_core::session::Id;

/// The key a session is stored under in every tier: the SHA-256 of its id.
///
/// The session id is the bearer credential in the cookie. Storing only its hash means a dump
/// of Redis or Postgres (a backup, a replica, `MONITOR` output, a `KEYS *` in a support
/// ticket) yields nothing that can be replayed as a cookie, the way Rails' and
/// async-session's stores do it. The hash is domain-separated so it cannot be confused with
/// any other SHA-256 of the same bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorageKey([u8; 32]);

impl StorageKey {
    /// Derives the storage key of a session id.
    pub fn from_id(id: &Id) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"tiered-sessions/v1/id\0");
        hasher.update(id.0.to_le_bytes());
        Self(hasher.finalize().into())
    }

    /// The key of an owner's session index (a different domain from session keys, so the
    /// two can never collide).
    pub fn from_owner(owner: &str) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"tiered-sessions/v1/owner\0");
        hasher.update(owner.as_bytes());
        Self(hasher.finalize().into())
    }

    /// Parses the 64-character hex form written by [`StorageKey::to_hex`].
    pub fn from_hex(hex: &str) -> Option<Self> {
        let bytes = hex.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let nibble = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        };
        let mut out = [0; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
        }
        Some(Self(out))
    }

    /// Wraps raw key bytes, as read back from a durable tier.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw 32 bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, 64 characters: the form used in cache key names.
    pub fn to_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(64);
        for byte in self.0 {
            out.push(HEX[usize::from(byte >> 4)] as char);
            out.push(HEX[usize::from(byte & 0x0f)] as char);
        }
        out
    }
}

impl fmt::Debug for StorageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A short prefix is enough to correlate log lines; the key is not a secret, but
        // 64 hex characters per line help nobody.
        write!(f, "StorageKey({}…)", &self.to_hex()[..12])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_stable_and_not_the_id() {
        let id = Id(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        let key = StorageKey::from_id(&id);
        assert_eq!(key, StorageKey::from_id(&id));
        assert_ne!(key, StorageKey::from_id(&Id(id.0 + 1)));
        assert_eq!(key.to_hex().len(), 64);
        assert!(!key.to_hex().contains(&id.to_string()));
        assert_eq!(StorageKey::from_hex(&key.to_hex()), Some(key));
        assert_eq!(
            StorageKey::from_hex(&key.to_hex().to_uppercase()),
            Some(key)
        );
        assert_eq!(StorageKey::from_hex("zz"), None);
        assert_eq!(StorageKey::from_hex(&"g".repeat(64)), None);
        assert_ne!(StorageKey::from_owner("7"), StorageKey::from_owner("8"));
    }
}
