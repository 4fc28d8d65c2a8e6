//! Conversions between the trait's types and the database columns, shared by both backends.
//!
//! Every conversion of data read back from a database is checked: a row that does not fit
//! the trait's types is reported as [`SqlxDurableError::CorruptRow`], never a panic or a
//! wrapped number.

use std::time::Duration;

use tiered_sessions_core::{StorageKey, StoredSession};
use time::OffsetDateTime;

use crate::{Backend, SqlxDurableError};

/// A row as read from either database, times already decoded.
#[derive(Debug)]
pub(crate) struct RawRow {
    pub(crate) key: Vec<u8>,
    pub(crate) version: i64,
    pub(crate) created_at: OffsetDateTime,
    pub(crate) idle_ms: i64,
    pub(crate) expires_at: OffsetDateTime,
    pub(crate) data: Vec<u8>,
    pub(crate) owner: Option<String>,
}

impl RawRow {
    pub(crate) fn into_session(self, backend: Backend) -> Result<StoredSession, SqlxDurableError> {
        Ok(StoredSession {
            key: key_from_db(backend, &self.key)?,
            version: version_from_db(backend, self.version)?,
            created_at: self.created_at,
            idle_timeout: idle_from_db(backend, self.idle_ms)?,
            expires_at: self.expires_at,
            data: self.data,
            owner: self.owner,
        })
    }
}

fn corrupt(backend: Backend, reason: String) -> SqlxDurableError {
    SqlxDurableError::CorruptRow { backend, reason }
}

pub(crate) fn key_from_db(backend: Backend, bytes: &[u8]) -> Result<StorageKey, SqlxDurableError> {
    <[u8; 32]>::try_from(bytes)
        .map(StorageKey::from_bytes)
        .map_err(|_| corrupt(backend, format!("key is {} bytes, not 32", bytes.len())))
}

pub(crate) fn version_to_db(backend: Backend, version: u64) -> Result<i64, SqlxDurableError> {
    i64::try_from(version).map_err(|_| SqlxDurableError::OutOfRange {
        backend,
        field: "version",
    })
}

pub(crate) fn version_from_db(backend: Backend, version: i64) -> Result<u64, SqlxDurableError> {
    u64::try_from(version).map_err(|_| corrupt(backend, format!("version {version} is negative")))
}

/// Idle timeouts are stored in whole milliseconds; anything finer is dropped.
pub(crate) fn idle_to_db(backend: Backend, idle: Duration) -> Result<i64, SqlxDurableError> {
    i64::try_from(idle.as_millis()).map_err(|_| SqlxDurableError::OutOfRange {
        backend,
        field: "idle_timeout",
    })
}

pub(crate) fn idle_from_db(backend: Backend, idle_ms: i64) -> Result<Duration, SqlxDurableError> {
    u64::try_from(idle_ms)
        .map(Duration::from_millis)
        .map_err(|_| corrupt(backend, format!("idle_ms {idle_ms} is negative")))
}

/// Drops everything below the millisecond (rounding toward the past), so that what Postgres
/// stores compares equal to what SQLite stores and to what a caller reads back.
#[cfg(feature = "postgres")]
pub(crate) fn truncate_to_ms(t: OffsetDateTime) -> OffsetDateTime {
    let nanos = t.nanosecond();
    // Cannot fail: the result is a valid nanosecond-of-second no larger than the input.
    t.replace_nanosecond(nanos - nanos % 1_000_000).unwrap_or(t)
}

/// Unix milliseconds, rounded toward the past like [`truncate_to_ms`].
#[cfg(feature = "sqlite")]
pub(crate) fn to_unix_ms(
    backend: Backend,
    field: &'static str,
    t: OffsetDateTime,
) -> Result<i64, SqlxDurableError> {
    // Every `OffsetDateTime` fits (±9999 years, or ±999999 with `time/large-dates`, is far
    // inside an i64 of milliseconds), but the check costs nothing.
    i64::try_from(t.unix_timestamp_nanos().div_euclid(1_000_000))
        .map_err(|_| SqlxDurableError::OutOfRange { backend, field })
}

#[cfg(feature = "sqlite")]
pub(crate) fn from_unix_ms(
    backend: Backend,
    field: &'static str,
    ms: i64,
) -> Result<OffsetDateTime, SqlxDurableError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).map_err(|_| {
        corrupt(
            backend,
            format!("{field} {ms} ms is not a representable time"),
        )
    })
}

#[cfg(test)]
mod tests {
    use tiered_sessions_core::TierErrorKind;
    use time::macros::datetime;

    use super::*;

    fn row() -> RawRow {
        RawRow {
            key: vec![7; 32],
            version: 3,
            created_at: datetime!(2024-01-01 0:00 UTC),
            idle_ms: 1_500,
            expires_at: datetime!(2024-01-01 1:00 UTC),
            data: b"data".to_vec(),
            owner: None,
        }
    }

    #[test]
    fn a_valid_row_decodes() -> Result<(), SqlxDurableError> {
        let session = row().into_session(Backend::Sqlite)?;
        assert_eq!(session.key, StorageKey::from_bytes([7; 32]));
        assert_eq!(session.version, 3);
        assert_eq!(session.idle_timeout, Duration::from_millis(1_500));
        Ok(())
    }

    #[test]
    fn a_short_key_is_a_corrupt_row() {
        let raw = RawRow {
            key: vec![7; 31],
            ..row()
        };
        let err = raw.into_session(Backend::Postgres).err();
        assert!(matches!(err, Some(SqlxDurableError::CorruptRow { .. })));
        assert_eq!(err.map(|e| e.kind()), Some(TierErrorKind::Other));
    }

    #[test]
    fn negative_idle_or_version_is_a_corrupt_row() {
        let raw = RawRow {
            idle_ms: -1,
            ..row()
        };
        assert!(matches!(
            raw.into_session(Backend::Sqlite),
            Err(SqlxDurableError::CorruptRow { .. })
        ));
        let raw = RawRow {
            version: -1,
            ..row()
        };
        assert!(matches!(
            raw.into_session(Backend::Sqlite),
            Err(SqlxDurableError::CorruptRow { .. })
        ));
    }

    #[test]
    fn values_over_i64_are_out_of_range() {
        assert!(matches!(
            version_to_db(Backend::Postgres, u64::MAX),
            Err(SqlxDurableError::OutOfRange {
                field: "version",
                ..
            })
        ));
        assert!(matches!(
            idle_to_db(Backend::Postgres, Duration::MAX),
            Err(SqlxDurableError::OutOfRange {
                field: "idle_timeout",
                ..
            })
        ));
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn truncation_drops_sub_millisecond_digits() {
        assert_eq!(
            truncate_to_ms(datetime!(2024-01-01 0:00:00.123_456_789 UTC)),
            datetime!(2024-01-01 0:00:00.123 UTC)
        );
        assert_eq!(
            truncate_to_ms(datetime!(1960-01-01 0:00:00.999_999_999 UTC)),
            datetime!(1960-01-01 0:00:00.999 UTC)
        );
    }

    #[cfg(feature = "sqlite")]
    #[test]
    fn unix_ms_round_trips_and_rounds_toward_the_past() -> Result<(), SqlxDurableError> {
        let b = Backend::Sqlite;
        let t = datetime!(2024-01-01 0:00:00.123_456 UTC);
        let ms = to_unix_ms(b, "t", t)?;
        assert_eq!(
            from_unix_ms(b, "t", ms)?,
            datetime!(2024-01-01 0:00:00.123 UTC)
        );
        let before_epoch = datetime!(1969-12-31 23:59:59.999_5 UTC);
        assert_eq!(to_unix_ms(b, "t", before_epoch)?, -1);
        assert!(from_unix_ms(b, "t", i64::MAX).is_err());
        Ok(())
    }
}
