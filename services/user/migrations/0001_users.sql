-- Accounts. Emails are stored normalised (trimmed, lower-case) and unique.
CREATE TABLE users (
    id             uuid PRIMARY KEY,
    email          text NOT NULL UNIQUE CHECK (email = lower(email) AND length(email) <= 254),
    name           text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    password_hash  text NOT NULL,
    role           text NOT NULL CHECK (role IN ('admin', 'user')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX users_created_idx ON users (created_at, id);
