-- Parallel (in-flight) request limits, SQLite flavour. Keep in step with
-- migrations/postgres/0013_max_parallel.sql.
--
-- `max_parallel` caps how many of an entity's requests may be in flight at once (from
-- Check until their usage record, or `limits.parallel_lease`); NULL is no cap.

ALTER TABLE api_keys ADD COLUMN max_parallel INTEGER CHECK (max_parallel IS NULL OR max_parallel >= 1);
ALTER TABLE users ADD COLUMN max_parallel INTEGER CHECK (max_parallel IS NULL OR max_parallel >= 1);
ALTER TABLE teams ADD COLUMN max_parallel INTEGER CHECK (max_parallel IS NULL OR max_parallel >= 1);
