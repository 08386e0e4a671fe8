-- Organizations (tenants), SQLite flavour. Keep in step with migrations/postgres/0011_orgs.sql.
--
-- An org sits above teams and users: teams.org_id and users.org_id name it (NULL: the
-- installation's own, outside every org). An org carries limits and a budget like a team
-- (rpm, tpm, max_budget, budget_duration) and max_parallel (requests in flight). Orgs are
-- soft-deleted like teams, and only an org without live teams or users can be deleted, so
-- a live team or user never names a deleted org. Names are unique among live orgs.
--
-- usage_records.org_id and usage_daily.org_id carry the org a request was charged to
-- (usage_daily: '' for none, as its other owner columns; not part of the key, since the org
-- follows from the key, user and team, which never move between orgs). spend and alerts
-- accept entity_kind 'org'; SQLite cannot change a CHECK constraint, so both tables are
-- rebuilt with their rows.

CREATE TABLE orgs (
    id              TEXT    PRIMARY KEY NOT NULL,
    name            TEXT    NOT NULL,
    rpm             INTEGER,
    tpm             INTEGER,
    max_budget      REAL,
    budget_duration TEXT,
    max_parallel    INTEGER,
    metadata        TEXT    NOT NULL DEFAULT '{}',
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    deleted_at      INTEGER
);

CREATE UNIQUE INDEX orgs_name_live ON orgs (name) WHERE deleted_at IS NULL;

ALTER TABLE teams ADD COLUMN org_id TEXT REFERENCES orgs (id);
ALTER TABLE users ADD COLUMN org_id TEXT REFERENCES orgs (id);
CREATE INDEX teams_org ON teams (org_id);
CREATE INDEX users_org ON users (org_id);

ALTER TABLE usage_records ADD COLUMN org_id TEXT;
ALTER TABLE usage_daily ADD COLUMN org_id TEXT NOT NULL DEFAULT '';
CREATE INDEX usage_daily_org ON usage_daily (org_id, day);

CREATE TABLE spend_new (
    entity_kind  TEXT    NOT NULL CHECK (entity_kind IN ('key', 'user', 'team', 'org')),
    entity_id    TEXT    NOT NULL,
    period_start INTEGER NOT NULL,
    period_end   INTEGER NOT NULL,
    spend_usd    REAL    NOT NULL DEFAULT 0,
    PRIMARY KEY (entity_kind, entity_id, period_start)
);
INSERT INTO spend_new SELECT entity_kind, entity_id, period_start, period_end, spend_usd FROM spend;
DROP TABLE spend;
ALTER TABLE spend_new RENAME TO spend;

CREATE TABLE alerts_new (
    id              TEXT    PRIMARY KEY NOT NULL,
    entity_kind     TEXT    NOT NULL CHECK (entity_kind IN ('key', 'user', 'team', 'org')),
    entity_id       TEXT    NOT NULL,
    period_start    INTEGER NOT NULL,
    period_end      INTEGER NOT NULL,
    threshold       INTEGER NOT NULL CHECK (threshold > 0),
    spend_usd       REAL    NOT NULL,
    budget_usd      REAL    NOT NULL,
    created_at      INTEGER NOT NULL,
    state           TEXT    NOT NULL DEFAULT 'pending'
                            CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,
    last_error      TEXT,
    delivered_at    INTEGER,
    UNIQUE (entity_kind, entity_id, period_start, threshold)
);
INSERT INTO alerts_new (id, entity_kind, entity_id, period_start, period_end, threshold,
    spend_usd, budget_usd, created_at, state, attempts, next_attempt_at, last_error,
    delivered_at)
SELECT id, entity_kind, entity_id, period_start, period_end, threshold, spend_usd,
    budget_usd, created_at, state, attempts, next_attempt_at, last_error, delivered_at
FROM alerts;
DROP TABLE alerts;
ALTER TABLE alerts_new RENAME TO alerts;
CREATE INDEX alerts_due ON alerts (state, next_attempt_at);
CREATE INDEX alerts_created ON alerts (created_at);
