-- Login sessions, Postgres flavour. Keep in step with migrations/sqlite/0002_sessions.sql.
--
-- failed_logins counts consecutive failed password logins; locked_until (Unix seconds) is
-- set when it reaches the configured threshold. Refresh tokens are stored as the SHA-256 of
-- the opaque token; all tokens issued from one login share a family_id, so the reuse of a
-- rotated token can revoke every descendant at once.

ALTER TABLE users ADD COLUMN failed_logins BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN locked_until BIGINT;

CREATE TABLE refresh_tokens (
    id         TEXT   PRIMARY KEY,
    user_id    TEXT   NOT NULL REFERENCES users (id),
    family_id  TEXT   NOT NULL,
    token_hash TEXT   NOT NULL UNIQUE,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    used_at    BIGINT,
    revoked_at BIGINT,
    source     TEXT
);

CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);
