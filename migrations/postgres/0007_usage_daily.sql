-- The daily usage rollup and the retention mark, Postgres flavour. Keep in step with
-- migrations/sqlite/0007_usage_daily.sql.
--
-- usage_daily holds, per UTC day (days since 1970-01-01, floor division, so also before
-- 1970) and per (key, user, team, model), the sums of the usage records of that day:
-- requests, the four token counts and cost_usd. An absent key, user, team or model is ''
-- (the report group of records without one), so the primary key has no NULLs. It is written
-- in the same transaction as the records, from the records that were new, so it always
-- equals an aggregation of usage_records by day; reports read it for whole days and the raw
-- records only for the parts of days at the edges of their range. Token sums saturate at
-- the BIGINT maximum (as counts are stored saturated). The primary key serves reports over
-- a range of days; the other indexes those restricted to one key, user or team.
--
-- usage_retention has at most one row (id 1): pruned_before, the start of a UTC day (Unix
-- seconds) before which raw usage records have been deleted (usage.retention). Reports read
-- days before it whole from usage_daily.

CREATE TABLE usage_daily (
    day                 BIGINT           NOT NULL,
    key_id              TEXT             NOT NULL,
    user_id             TEXT             NOT NULL,
    team_id             TEXT             NOT NULL,
    model               TEXT             NOT NULL,
    requests            BIGINT           NOT NULL,
    input_tokens        BIGINT           NOT NULL,
    output_tokens       BIGINT           NOT NULL,
    cached_input_tokens BIGINT           NOT NULL,
    reasoning_tokens    BIGINT           NOT NULL,
    cost_usd            DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (day, key_id, user_id, team_id, model)
);

CREATE INDEX usage_daily_key ON usage_daily (key_id, day);
CREATE INDEX usage_daily_user ON usage_daily (user_id, day);
CREATE INDEX usage_daily_team ON usage_daily (team_id, day);

-- Reports no longer read usage_records by owner (whole days come from usage_daily, the
-- edges are at most two partial days, found by the index on at), so the owner indexes of
-- 0004 only cost writes.
DROP INDEX IF EXISTS usage_records_key;
DROP INDEX IF EXISTS usage_records_user;
DROP INDEX IF EXISTS usage_records_team;

CREATE TABLE usage_retention (
    id            BIGINT PRIMARY KEY CHECK (id = 1),
    pruned_before BIGINT NOT NULL
);

-- Backfill: the rollup of every record already stored (benches/ingest.rs runs this too).
INSERT INTO usage_daily (day, key_id, user_id, team_id, model, requests, input_tokens,
    output_tokens, cached_input_tokens, reasoning_tokens, cost_usd)
SELECT (at - ((at % 86400) + 86400) % 86400) / 86400,
       COALESCE(key_id, ''), COALESCE(user_id, ''), COALESCE(team_id, ''), COALESCE(model, ''),
       COUNT(*),
       CAST(LEAST(SUM(input_tokens), 9223372036854775807) AS BIGINT),
       CAST(LEAST(SUM(output_tokens), 9223372036854775807) AS BIGINT),
       CAST(LEAST(SUM(cached_input_tokens), 9223372036854775807) AS BIGINT),
       CAST(LEAST(SUM(reasoning_tokens), 9223372036854775807) AS BIGINT),
       SUM(cost_usd)
FROM usage_records
GROUP BY 1, 2, 3, 4, 5;
