-- Parallel (in-flight) request limits, Postgres flavour. Keep in step with
-- migrations/sqlite/0013_max_parallel.sql.
--
-- `max_parallel` caps how many of an entity's requests may be in flight at once (from
-- Check until their usage record, or `limits.parallel_lease`); NULL is no cap.

ALTER TABLE api_keys ADD COLUMN max_parallel BIGINT CHECK (max_parallel IS NULL OR max_parallel >= 1);
ALTER TABLE users ADD COLUMN max_parallel BIGINT CHECK (max_parallel IS NULL OR max_parallel >= 1);
ALTER TABLE teams ADD COLUMN max_parallel BIGINT CHECK (max_parallel IS NULL OR max_parallel >= 1);
