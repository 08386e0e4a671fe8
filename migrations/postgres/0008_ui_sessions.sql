-- Web UI sessions and the key listing's indexes, Postgres flavour. Keep in step with
-- migrations/sqlite/0008_ui_sessions.sql.
--
-- A browser session of the web UI (/ui) belongs to a user (user_id) or to the master key
-- (master_tag, a fingerprint of the master key it was opened with, so that a new master
-- key ends them). The cookie holds a random token; only its SHA-256 (hex) is stored.
-- expires_at (Unix seconds) is checked on every request; sign-out deletes the row, and
-- expired rows are deleted at each sign-in. The user's role, and whether the user still
-- exists and is not blocked, are read from users on every request, not kept here.
--
-- The key listing pages through keys by id (UUIDv7: in creation order), newest first, for
-- everyone or for one owner: (user_id, id) and (team_id, id) serve an owner's pages without
-- reading all of the owner's keys, and replace the single-column indexes of 0001. The
-- partial indexes serve the pages of the states few keys are in (revoked, blocked, with an
-- expiry) without reading every other key; the listing writes their conditions as here.

CREATE TABLE ui_sessions (
    id         TEXT    PRIMARY KEY,
    token_hash TEXT    NOT NULL UNIQUE,
    user_id    TEXT    REFERENCES users (id),
    master_tag TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    source     TEXT,
    CHECK ((user_id IS NULL) <> (master_tag IS NULL))
);

CREATE INDEX ui_sessions_user ON ui_sessions (user_id);
CREATE INDEX ui_sessions_expires ON ui_sessions (expires_at);

CREATE INDEX api_keys_user_id ON api_keys (user_id, id);
CREATE INDEX api_keys_team_id ON api_keys (team_id, id);
DROP INDEX api_keys_user;
DROP INDEX api_keys_team;
CREATE INDEX api_keys_revoked ON api_keys (id) WHERE revoked_at IS NOT NULL;
CREATE INDEX api_keys_blocked ON api_keys (id) WHERE blocked = TRUE AND revoked_at IS NULL;
CREATE INDEX api_keys_expiring ON api_keys (id) WHERE expires_at IS NOT NULL AND revoked_at IS NULL;
