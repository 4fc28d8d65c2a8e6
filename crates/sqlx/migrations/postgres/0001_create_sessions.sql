-- One row per session, filed under the 32-byte SHA-256 storage key (never the session id).
-- Times are written truncated to the millisecond so that they compare equal after a round
-- trip, the same precision the SQLite schema stores.
CREATE TABLE tiered_sessions (
    key        bytea       PRIMARY KEY CHECK (octet_length(key) = 32),
    version    bigint      NOT NULL CHECK (version >= 0),
    created_at timestamptz NOT NULL,
    idle_ms    bigint      NOT NULL CHECK (idle_ms >= 0),
    expires_at timestamptz NOT NULL,
    data       bytea       NOT NULL
);

-- The sweeper deletes in `expires_at` order, in bounded batches.
CREATE INDEX tiered_sessions_expires_at_idx ON tiered_sessions (expires_at);
