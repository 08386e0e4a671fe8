-- Sign-ins with SSO, SQLite flavour. Keep in step with migrations/postgres/0010_sso_logins.sql.
--
-- One row per sign-in started and not finished yet (at most 10 minutes): the callback takes
-- it by the SHA-256 of its `state` (DELETE … RETURNING, so it is used once) on whichever
-- replica the browser comes back to. browser_hash is the SHA-256 of the token in the cookie
-- of the browser that started it. Rows past expires_at are deleted by the next start.

CREATE TABLE sso_logins (
    state_hash    TEXT    PRIMARY KEY NOT NULL,
    browser_hash  TEXT    NOT NULL,
    issuer        TEXT    NOT NULL,
    code_verifier TEXT    NOT NULL,
    nonce         TEXT    NOT NULL,
    redirect_uri  TEXT    NOT NULL,
    return_to     TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL
);

CREATE INDEX sso_logins_expires ON sso_logins (expires_at);
