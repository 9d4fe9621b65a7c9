-- Manual replays of single events, waiting for the delivery loop: their stream positions,
-- kept on the endpoint (at the tenant's home, moving with it) until they have been sent once,
-- so a replay asked for is not lost when a node stops before sending it.
ALTER TABLE webhook_endpoints
    ADD COLUMN pending_replays bigint[] NOT NULL DEFAULT '{}' CHECK (cardinality(pending_replays) <= 100);
