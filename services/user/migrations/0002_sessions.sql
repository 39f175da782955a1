-- Sessions: one per login. Every access token names its session (`sid`);
-- the user service refuses tokens whose session row is gone or expired.
-- Ending a session (logout, password or role change, a reused refresh
-- token) deletes its row; deleting the user deletes its sessions.
CREATE TABLE sessions (
    id          uuid PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- Absolute end: refreshing never extends it.
    expires_at  timestamptz NOT NULL
);

CREATE INDEX sessions_user_idx ON sessions (user_id);
CREATE INDEX sessions_expires_idx ON sessions (expires_at);

-- Refresh tokens, stored as SHA-256 of the random token (the token itself
-- never is). A session has one current (unused) token; a used one records
-- the token that replaced it, so a spent token presented again is
-- recognised as a copy and ends the session (reuse detection).
CREATE TABLE refresh_tokens (
    hash         bytea PRIMARY KEY CHECK (length(hash) = 32),
    session_id   uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    issued_at    timestamptz NOT NULL DEFAULT now(),
    used_at      timestamptz,
    replaced_by  bytea,
    CHECK ((used_at IS NULL) = (replaced_by IS NULL))
);

CREATE INDEX refresh_tokens_session_idx ON refresh_tokens (session_id);
CREATE UNIQUE INDEX refresh_tokens_current_idx ON refresh_tokens (session_id) WHERE used_at IS NULL;
