-- Usage records and spend, Postgres flavour. Keep in step with migrations/sqlite/0004_usage.sql.
--
-- usage_records holds one row per upstream request, keyed by Envoy's x-request-id, so writing
-- a record twice (a retried batch, a record reported by both ext_proc and the access log)
-- stores it once. key_id, user_id and team_id are plain text, not foreign keys: usage of a
-- key, user or team that was deleted, or that this database never knew, is still kept, since
-- usage history must not be lost. Times (at, written_at) are Unix seconds (BIGINT); at is
-- when the request was decided, written_at when the record was stored. Token counts are
-- BIGINT, cost_usd is USD as DOUBLE PRECISION (sqlx's Any driver cannot decode numeric).
-- estimated: the counts are what was seen of a response that ended early. source is
-- ext_proc or access_log.
--
-- spend holds the cost accrued by one key, user or team (entity_kind 'key', 'user', 'team')
-- in one budget period [period_start, period_end), Unix seconds, from the entity's
-- budget_duration (1mo calendar months when it has none). A period is keyed by its start,
-- so a new period starts a new row and never overwrites another: a budget reset is only a
-- new period_start, and a reset never erases spend recorded after it (nor before it). Rows
-- of past periods stay as history.

CREATE TABLE usage_records (
    request_id          TEXT             PRIMARY KEY,
    at                  BIGINT           NOT NULL,
    key_id              TEXT,
    user_id             TEXT,
    team_id             TEXT,
    model               TEXT,
    input_tokens        BIGINT           NOT NULL DEFAULT 0,
    output_tokens       BIGINT           NOT NULL DEFAULT 0,
    cached_input_tokens BIGINT           NOT NULL DEFAULT 0,
    reasoning_tokens    BIGINT           NOT NULL DEFAULT 0,
    cost_usd            DOUBLE PRECISION NOT NULL DEFAULT 0,
    status              BIGINT           NOT NULL,
    latency_ms          BIGINT           NOT NULL,
    estimated           BOOLEAN          NOT NULL DEFAULT FALSE,
    source              TEXT             NOT NULL,
    written_at          BIGINT           NOT NULL
);

CREATE INDEX usage_records_at ON usage_records (at);
CREATE INDEX usage_records_key ON usage_records (key_id, at);
CREATE INDEX usage_records_user ON usage_records (user_id, at);
CREATE INDEX usage_records_team ON usage_records (team_id, at);

CREATE TABLE spend (
    entity_kind  TEXT             NOT NULL CHECK (entity_kind IN ('key', 'user', 'team')),
    entity_id    TEXT             NOT NULL,
    period_start BIGINT           NOT NULL,
    period_end   BIGINT           NOT NULL,
    spend_usd    DOUBLE PRECISION NOT NULL DEFAULT 0,
    PRIMARY KEY (entity_kind, entity_id, period_start)
);
