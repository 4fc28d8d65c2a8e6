-- The cache epoch: one counter shared by every store instance on this database. An
-- instance that could not write a change to the cache (Redis down, slow or unreachable from
-- it) increments it, and so does the first instance that finds the cache server replaced
-- (its identity, Redis's run_id, differs from cache_identity: a restart, perhaps from an
-- older snapshot, or a failover); cached records written under an older epoch are then
-- served by no instance. Starts at 1, so records written before an instance first read it
-- (epoch 0) are never trusted.
CREATE TABLE tiered_sessions_cache_epoch (
    id smallint PRIMARY KEY CHECK (id = 1),
    epoch bigint NOT NULL,
    cache_identity text
);
INSERT INTO tiered_sessions_cache_epoch (id, epoch) VALUES (1, 1);
