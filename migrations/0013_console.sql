-- The admin console (issue 28): its users, their sessions and API tokens,
-- and the admin audit log. All of it lives here, not in a replica's memory,
-- so any number of console replicas behind a load balancer share it, and a
-- failed sign-in counts against its user whichever replica it reached.
--
-- No credential is stored: passwords as argon2id hashes (PHC strings),
-- session and API tokens as SHA-256 digests (they are 256 random bits, so a
-- fast digest is enough; a stolen table opens nothing).
CREATE TABLE console_users (
    id              bigserial PRIMARY KEY,
    name            text NOT NULL UNIQUE,
    role            text NOT NULL CHECK (role IN ('admin', 'viewer')),
    password_hash   text NOT NULL,
    -- Failed sign-ins since the last good one; past a few, each one locks
    -- the user out for longer (`crmsync_console::users`).
    failed_signins  integer NOT NULL DEFAULT 0,
    locked_until    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE console_sessions (
    token_hash  bytea PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES console_users (id) ON DELETE CASCADE,
    -- The session's CSRF token, put in every form it is shown and checked
    -- on every POST. Not a credential on its own: it opens nothing without
    -- the session cookie.
    csrf_token  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);

CREATE TABLE console_api_tokens (
    id            bigserial PRIMARY KEY,
    user_id       bigint NOT NULL REFERENCES console_users (id) ON DELETE CASCADE,
    name          text NOT NULL,
    token_hash    bytea NOT NULL UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz
);

-- Every change an admin makes, from the console, its JSON API or the CLI:
-- who, when, through what, on which connection, and the value before and
-- after. No foreign key to connections: the trail outlives what it is about.
CREATE TABLE admin_audit (
    id             bigserial PRIMARY KEY,
    at             timestamptz NOT NULL DEFAULT now(),
    actor          text NOT NULL,
    via            text NOT NULL,
    connection_id  text,
    action         text NOT NULL,
    target         text,
    before         jsonb,
    after          jsonb
);
-- The console pages the log newest first, all of it or one connection's.
CREATE INDEX admin_audit_connection ON admin_audit (connection_id, id DESC);
