-- Accounts. The e-mail is stored normalised (trimmed, lower-cased) by the service, so a
-- plain unique constraint is enough; its name is what the service maps to 409.
CREATE TABLE users (
    id            UUID        PRIMARY KEY,
    email         TEXT        NOT NULL,
    name          TEXT        NOT NULL,
    -- argon2id PHC string; never logged, never returned.
    password_hash TEXT        NOT NULL,
    role          TEXT        NOT NULL DEFAULT 'user',
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT users_email_unique UNIQUE (email),
    CONSTRAINT users_role_known CHECK (role IN ('user', 'admin'))
);
