-- tollgate schema, Postgres flavour. Keep in step with migrations/sqlite/0001_init.sql:
-- the store runs the same SQL text on both, so table and column names must match.
--
-- Times are Unix seconds (BIGINT). Lists (permissions, models) and metadata are JSON kept as
-- TEXT: sqlx's Any driver cannot decode json/jsonb, and the store never queries inside them.
-- Users and teams are soft-deleted (deleted_at) so that revoked keys and usage history keep
-- a valid owner; uniqueness of names only holds among rows that are not deleted.

CREATE TABLE users (
    id              TEXT             PRIMARY KEY,
    username        TEXT             NOT NULL,
    email           TEXT             NOT NULL,
    full_name       TEXT,
    role            TEXT             NOT NULL,
    blocked         BOOLEAN          NOT NULL DEFAULT FALSE,
    password_hash   TEXT,
    rpm             BIGINT,
    tpm             BIGINT,
    max_budget      DOUBLE PRECISION,
    budget_duration TEXT,
    metadata        TEXT             NOT NULL DEFAULT '{}',
    created_at      BIGINT           NOT NULL,
    updated_at      BIGINT           NOT NULL,
    deleted_at      BIGINT
);

CREATE UNIQUE INDEX users_username_live ON users (username) WHERE deleted_at IS NULL;
CREATE UNIQUE INDEX users_email_live ON users (email) WHERE deleted_at IS NULL;

CREATE TABLE teams (
    id              TEXT             PRIMARY KEY,
    name            TEXT             NOT NULL,
    models          TEXT             NOT NULL DEFAULT '[]',
    blocked         BOOLEAN          NOT NULL DEFAULT FALSE,
    rpm             BIGINT,
    tpm             BIGINT,
    max_budget      DOUBLE PRECISION,
    budget_duration TEXT,
    metadata        TEXT             NOT NULL DEFAULT '{}',
    created_at      BIGINT           NOT NULL,
    updated_at      BIGINT           NOT NULL,
    deleted_at      BIGINT
);

CREATE UNIQUE INDEX teams_name_live ON teams (name) WHERE deleted_at IS NULL;

CREATE TABLE team_members (
    team_id    TEXT   NOT NULL REFERENCES teams (id),
    user_id    TEXT   NOT NULL REFERENCES users (id),
    role       TEXT   NOT NULL,
    source     TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (team_id, user_id)
);

CREATE INDEX team_members_user ON team_members (user_id);

CREATE TABLE api_keys (
    id                  TEXT             PRIMARY KEY,
    name                TEXT             NOT NULL,
    key_hash            TEXT             NOT NULL UNIQUE,
    key_hint            TEXT             NOT NULL,
    previous_hash       TEXT,
    previous_expires_at BIGINT,
    user_id             TEXT             REFERENCES users (id),
    team_id             TEXT             REFERENCES teams (id),
    permissions         TEXT             NOT NULL DEFAULT '[]',
    models              TEXT             NOT NULL DEFAULT '[]',
    rpm                 BIGINT,
    tpm                 BIGINT,
    max_budget          DOUBLE PRECISION,
    budget_duration     TEXT,
    expires_at          BIGINT,
    blocked             BOOLEAN          NOT NULL DEFAULT FALSE,
    metadata            TEXT             NOT NULL DEFAULT '{}',
    created_at          BIGINT           NOT NULL,
    updated_at          BIGINT           NOT NULL,
    revoked_at          BIGINT
);

CREATE INDEX api_keys_previous_hash ON api_keys (previous_hash);
CREATE INDEX api_keys_user ON api_keys (user_id);
CREATE INDEX api_keys_team ON api_keys (team_id);

CREATE TABLE audit_log (
    id      BIGSERIAL PRIMARY KEY,
    at      BIGINT    NOT NULL,
    actor   TEXT      NOT NULL,
    action  TEXT      NOT NULL,
    target  TEXT,
    source  TEXT,
    details TEXT      NOT NULL DEFAULT '{}'
);

CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_actor ON audit_log (actor, at);
CREATE INDEX audit_log_action ON audit_log (action, at);
CREATE INDEX audit_log_target ON audit_log (target, at);
