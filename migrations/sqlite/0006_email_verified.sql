-- Whether a user's email is vouched for, SQLite flavour. Keep in step with
-- migrations/postgres/0006_email_verified.sql.
--
-- An OIDC identity is linked to an existing user by email only when the user's email is
-- verified: set by an admin or taken from an issuer that vouches for it. An address the user
-- typed in themselves (registration, profile) is not, or anyone could claim the account of
-- whoever later signs in with that address. Existing rows count as verified, except those
-- the audit log shows were registered or changed by their own user.

ALTER TABLE users ADD COLUMN email_verified INTEGER NOT NULL DEFAULT 1
    CHECK (email_verified IN (0, 1));

UPDATE users SET email_verified = 0 WHERE id IN (
    SELECT target FROM audit_log
    WHERE target IS NOT NULL
      AND ((action = 'user.create' AND actor = 'registration')
        OR (action = 'user.update' AND actor = 'user:' || target AND details LIKE '%"email":%'))
);
