-- The owner of a session (for example the signed-in user's id), read by the store from a
-- configurable place in the session data, so that one user's sessions can be listed and
-- revoked together. NULL for anonymous sessions, which the partial index leaves out.
ALTER TABLE tiered_sessions ADD COLUMN owner TEXT;
CREATE INDEX tiered_sessions_owner_idx ON tiered_sessions (owner) WHERE owner IS NOT NULL;
