-- Custom roles, SQLite flavour. Keep in step with migrations/postgres/0012_roles.sql.
--
-- A user's `role` is a built-in role's name (admin, manager, user, viewer) or the name of
-- a row here. `permissions` is a JSON array of permission names (LLM route permissions and
-- read permissions, never `admin`). A role is not renamed; one a live user holds is not
-- deleted (the store checks both in the writing transaction).

CREATE TABLE roles (
    name        TEXT    PRIMARY KEY NOT NULL,
    permissions TEXT    NOT NULL DEFAULT '[]',
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE INDEX users_role ON users (role) WHERE deleted_at IS NULL;
