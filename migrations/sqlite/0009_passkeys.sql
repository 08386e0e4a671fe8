-- Passkeys (WebAuthn) of the web UI, SQLite flavour. Keep in step with
-- migrations/postgres/0009_passkeys.sql.
--
-- passkey_handles gives each user one opaque WebAuthn user handle (user.id in the creation
-- options; 32 random bytes, base64url), made the first time the user registers a passkey:
-- authenticators keep it with a discoverable credential and hand it back when they sign in,
-- and it says nothing about the person (not the email, not the user id).
--
-- passkeys holds the registered credentials: credential_id (base64url of the raw id, at
-- most 1023 bytes, unique across all users), public_key (the COSE_Key the authenticator
-- gave, base64url), algorithm (its COSE number: -7 ES256, -8 EdDSA, -257 RS256),
-- sign_count (the authenticator's signature counter, 0 for those that keep none),
-- transports (JSON list, as the browser reported them), backup_eligible and backed_up (the
-- BE and BS flags: a synced passkey), aaguid (hex, the authenticator model, not trusted:
-- attestation is not verified). Deleting a user deletes their passkeys (users are
-- soft-deleted: the store deletes the rows; the cascade covers a hard delete).
--
-- passkey_challenges holds the ceremonies in progress, so that any replica can finish one:
-- the SHA-256 (hex) of the 32-byte challenge, the ceremony ('register' or 'authenticate'),
-- the user it is for (always for 'register'; for 'authenticate' when a username was
-- given), the relying party id and user verification requirement it was issued under, an
-- optional hash of what the caller bound it to (its browser session), and when it expires.
-- A challenge is deleted when it is used, whatever the outcome.

CREATE TABLE passkey_handles (
    user_id     TEXT    PRIMARY KEY NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    user_handle TEXT    NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);

CREATE TABLE passkeys (
    id              TEXT    PRIMARY KEY NOT NULL,
    user_id         TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    credential_id   TEXT    NOT NULL UNIQUE,
    public_key      TEXT    NOT NULL,
    algorithm       INTEGER NOT NULL,
    sign_count      INTEGER NOT NULL DEFAULT 0,
    name            TEXT    NOT NULL,
    transports      TEXT    NOT NULL DEFAULT '[]',
    backup_eligible INTEGER NOT NULL DEFAULT 0 CHECK (backup_eligible IN (0, 1)),
    backed_up       INTEGER NOT NULL DEFAULT 0 CHECK (backed_up IN (0, 1)),
    aaguid          TEXT    NOT NULL,
    created_at      INTEGER NOT NULL,
    last_used_at    INTEGER
);

CREATE INDEX passkeys_user ON passkeys (user_id);

CREATE TABLE passkey_challenges (
    challenge_hash TEXT    PRIMARY KEY NOT NULL,
    ceremony       TEXT    NOT NULL CHECK (ceremony IN ('register', 'authenticate')),
    user_id        TEXT    REFERENCES users (id) ON DELETE CASCADE,
    rp_id          TEXT    NOT NULL,
    uv_required    INTEGER NOT NULL DEFAULT 0 CHECK (uv_required IN (0, 1)),
    binding_hash   TEXT,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL
);

CREATE INDEX passkey_challenges_expiry ON passkey_challenges (expires_at);
