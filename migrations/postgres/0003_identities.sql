-- OIDC identities, Postgres flavour. Keep in step with migrations/sqlite/0003_identities.sql.
--
-- An identity is what a verified OIDC token names: its issuer and subject (the issuer's
-- stable id for the person; the email may change). Each points at the tollgate user it
-- logs in as. Rows stay when their user is soft-deleted; the next login of that identity
-- provisions a new user and repoints the row. Times are Unix seconds (BIGINT).

CREATE TABLE identities (
    issuer       TEXT   NOT NULL,
    subject      TEXT   NOT NULL,
    user_id      TEXT   NOT NULL REFERENCES users (id),
    created_at   BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    PRIMARY KEY (issuer, subject)
);

CREATE INDEX identities_user ON identities (user_id);
