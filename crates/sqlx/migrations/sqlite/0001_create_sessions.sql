-- One row per session, filed under the 32-byte SHA-256 storage key (never the session id).
-- Times are unix milliseconds. STRICT makes a version overflow an error instead of a silent
-- conversion to REAL; the explicit NOT NULL on the key works around SQLite accepting NULL
-- primary keys in rowid tables.
CREATE TABLE tiered_sessions (
    key        BLOB    NOT NULL PRIMARY KEY CHECK (length(key) = 32),
    version    INTEGER NOT NULL CHECK (version >= 0),
    created_at INTEGER NOT NULL,
    idle_ms    INTEGER NOT NULL CHECK (idle_ms >= 0),
    expires_at INTEGER NOT NULL,
    data       BLOB    NOT NULL
) STRICT;

-- The sweeper deletes in `expires_at` order, in bounded batches.
CREATE INDEX tiered_sessions_expires_at_idx ON tiered_sessions (expires_at);
