-- Whether a user's email is vouched for, Postgres flavour. Keep in step with
-- migrations/sqlite/0006_email_verified.sql.
--
-- An OIDC identity is linked to an existing user by email only when the user's email is
-- verified: set by an admin or taken from an issuer that vouches for it. An address the user
-- typed in themselves (registration, profile) is not, or anyone could claim the account of
-- whoever later signs in with that address. Existing rows count as verified, except those
-- the audit log shows were registered or changed by their own user.

ALTER TABLE users ADD COLUMN email_verified BOOLEAN NOT NULL DEFAULT TRUE;

UPDATE users SET email_verified = FALSE WHERE id IN (
    SELECT target FROM audit_log
    WHERE target IS NOT NULL
      AND ((action = 'user.create' AND actor = 'registration')
        OR (action = 'user.update' AND actor = 'user:' || target AND details LIKE '%"email":%'))
);
