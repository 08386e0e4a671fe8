-- tollgate schema, SQLite flavour. Keep in step with migrations/postgres/0001_init.sql:
-- the store runs the same SQL text on both, so table and column names must match.
--
-- Times are Unix seconds. Lists (permissions, models) and metadata are JSON text.
-- Booleans are INTEGER 0/1: SQLite has no boolean storage class, and sqlx's Any driver
-- reports the stored value's class (INTEGER), which the store decodes as 0/1.
-- Users and teams are soft-deleted (deleted_at) so that revoked keys and usage history keep
-- a valid owner; uniqueness of names only holds among rows that are not deleted.

CREATE TABLE users (
    id              TEXT    PRIMARY KEY NOT NULL,
    username        TEXT    NOT NULL,
    email           TEXT    NOT NULL,
    full_name       TEXT,
    role            TEXT    NOT NULL,
    blocked         INTEGER NOT NULL DEFAULT 0 CHECK (blocked IN (0, 1)),
    password_hash   TEXT,
    rpm             INTEGER,
    tpm             INTEGER,
    max_budget      REAL,
    budget_duration TEXT,
    metadata        TEXT    NOT NULL DEFAULT '{}',
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    deleted_at      INTEGER
);

CREATE UNIQUE INDEX users_username_live ON users (username) WHERE deleted_at IS NULL;
CREATE UNIQUE INDEX users_email_live ON users (email) WHERE deleted_at IS NULL;

CREATE TABLE teams (
    id              TEXT    PRIMARY KEY NOT NULL,
    name            TEXT    NOT NULL,
    models          TEXT    NOT NULL DEFAULT '[]',
    blocked         INTEGER NOT NULL DEFAULT 0 CHECK (blocked IN (0, 1)),
    rpm             INTEGER,
    tpm             INTEGER,
    max_budget      REAL,
    budget_duration TEXT,
    metadata        TEXT    NOT NULL DEFAULT '{}',
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    deleted_at      INTEGER
);

CREATE UNIQUE INDEX teams_name_live ON teams (name) WHERE deleted_at IS NULL;

CREATE TABLE team_members (
    team_id    TEXT    NOT NULL REFERENCES teams (id),
    user_id    TEXT    NOT NULL REFERENCES users (id),
    role       TEXT    NOT NULL,
    source     TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (team_id, user_id)
);

CREATE INDEX team_members_user ON team_members (user_id);

CREATE TABLE api_keys (
    id                  TEXT    PRIMARY KEY NOT NULL,
    name                TEXT    NOT NULL,
    key_hash            TEXT    NOT NULL UNIQUE,
    key_hint            TEXT    NOT NULL,
    previous_hash       TEXT,
    previous_expires_at INTEGER,
    user_id             TEXT    REFERENCES users (id),
    team_id             TEXT    REFERENCES teams (id),
    permissions         TEXT    NOT NULL DEFAULT '[]',
    models              TEXT    NOT NULL DEFAULT '[]',
    rpm                 INTEGER,
    tpm                 INTEGER,
    max_budget          REAL,
    budget_duration     TEXT,
    expires_at          INTEGER,
    blocked             INTEGER NOT NULL DEFAULT 0 CHECK (blocked IN (0, 1)),
    metadata            TEXT    NOT NULL DEFAULT '{}',
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    revoked_at          INTEGER
);

CREATE INDEX api_keys_previous_hash ON api_keys (previous_hash);
CREATE INDEX api_keys_user ON api_keys (user_id);
CREATE INDEX api_keys_team ON api_keys (team_id);

CREATE TABLE audit_log (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      INTEGER NOT NULL,
    actor   TEXT    NOT NULL,
    action  TEXT    NOT NULL,
    target  TEXT,
    source  TEXT,
    details TEXT    NOT NULL DEFAULT '{}'
);

CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_actor ON audit_log (actor, at);
CREATE INDEX audit_log_action ON audit_log (action, at);
CREATE INDEX audit_log_target ON audit_log (target, at);
