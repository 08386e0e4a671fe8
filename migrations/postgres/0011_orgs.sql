-- Organizations (tenants), Postgres flavour. Keep in step with migrations/sqlite/0011_orgs.sql
-- (which explains the tables).

CREATE TABLE orgs (
    id              TEXT             PRIMARY KEY,
    name            TEXT             NOT NULL,
    rpm             BIGINT,
    tpm             BIGINT,
    max_budget      DOUBLE PRECISION,
    budget_duration TEXT,
    max_parallel    BIGINT,
    metadata        TEXT             NOT NULL DEFAULT '{}',
    created_at      BIGINT           NOT NULL,
    updated_at      BIGINT           NOT NULL,
    deleted_at      BIGINT
);

CREATE UNIQUE INDEX orgs_name_live ON orgs (name) WHERE deleted_at IS NULL;

ALTER TABLE teams ADD COLUMN org_id TEXT REFERENCES orgs (id);
ALTER TABLE users ADD COLUMN org_id TEXT REFERENCES orgs (id);
CREATE INDEX teams_org ON teams (org_id);
CREATE INDEX users_org ON users (org_id);

ALTER TABLE usage_records ADD COLUMN org_id TEXT;
ALTER TABLE usage_daily ADD COLUMN org_id TEXT NOT NULL DEFAULT '';
CREATE INDEX usage_daily_org ON usage_daily (org_id, day);

ALTER TABLE spend DROP CONSTRAINT spend_entity_kind_check;
ALTER TABLE spend ADD CONSTRAINT spend_entity_kind_check
    CHECK (entity_kind IN ('key', 'user', 'team', 'org'));
ALTER TABLE alerts DROP CONSTRAINT alerts_entity_kind_check;
ALTER TABLE alerts ADD CONSTRAINT alerts_entity_kind_check
    CHECK (entity_kind IN ('key', 'user', 'team', 'org'));
