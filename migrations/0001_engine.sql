-- crmsync engine state: everything that must survive a restart.
--
-- Every row carries its connection id. Each later migration must stay
-- compatible with replicas still running the previous release: add columns
-- and tables, never rename or drop in the same step.

-- A connection: one MA business unit + one CRM org (+ optionally one CS tenant).
CREATE TABLE connections (
    id          text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    settings    jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- A single-connection deployment needs no configuration at all.
INSERT INTO connections (id) VALUES ('default');

-- Change feeds: one per connection and source object. The cursor only moves
-- after the broker confirmed the page it covers (I1); the lease keeps two
-- producer replicas from polling one feed, and its token fences a holder that
-- lost the lease while paused.
CREATE TABLE feeds (
    connection_id   text NOT NULL REFERENCES connections(id) ON DELETE CASCADE,
    feed            text NOT NULL,
    cursor          jsonb,
    lease_owner     text,
    lease_token     bigint NOT NULL DEFAULT 0,
    lease_until     timestamptz,
    polled_at       timestamptz,
    published       bigint NOT NULL DEFAULT 0,
    suppressed      bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (connection_id, feed)
);

-- The identity map: one row per person per connection (I2). The unique
-- indexes are the backstop behind the Redis locks: whatever a stale lock
-- holder does, one prospect, one CRM record and one email belong to at most
-- one identity.
CREATE TABLE identities (
    id                uuid PRIMARY KEY,
    connection_id     text NOT NULL REFERENCES connections(id) ON DELETE CASCADE,
    status            text NOT NULL CHECK (status IN ('linked', 'pending_assignment', 'creating_crm', 'creating_ma')),
    prospect_id       bigint,
    crm_object        text CHECK (crm_object IN ('lead', 'contact')),
    crm_id            text CHECK (length(crm_id) = 18),
    email             text,
    -- CRM user that will own the lead being created (R3).
    owner_id          text,
    -- Per-field versions and known values, see crmsync_domain::merge.
    fields            jsonb NOT NULL DEFAULT '{}',
    -- The prospect already shows its CRM id.
    ma_link_written   boolean NOT NULL DEFAULT false,
    -- Fencing: the token of the identity lock under which the row was last
    -- written; a write carrying an older token is refused.
    fence             bigint NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    linked_at         timestamptz
);
CREATE UNIQUE INDEX identities_prospect ON identities (connection_id, prospect_id) WHERE prospect_id IS NOT NULL;
CREATE UNIQUE INDEX identities_crm ON identities (connection_id, crm_id) WHERE crm_id IS NOT NULL;
CREATE UNIQUE INDEX identities_email ON identities (connection_id, email) WHERE email IS NOT NULL;
CREATE INDEX identities_status ON identities (connection_id, status);

-- What the engine did, per command: one row per applied (or decided) change.
CREATE TABLE audit_log (
    id              bigserial PRIMARY KEY,
    connection_id   text NOT NULL REFERENCES connections(id) ON DELETE CASCADE,
    change_id       uuid NOT NULL,
    stage           text NOT NULL,
    identity_id     uuid,
    source_side     text NOT NULL,
    source_object   text NOT NULL,
    source_id       text NOT NULL,
    -- created_lead, created_prospect, updated, linked, pending, no_change, skipped...
    action          text NOT NULL,
    -- Field names written per side: {"ma": [...], "crm": [...]}; no values.
    writes          jsonb NOT NULL DEFAULT '{}',
    detail          text,
    lane            text NOT NULL,
    at              timestamptz NOT NULL DEFAULT now()
);
-- A redelivered command does not log twice.
CREATE UNIQUE INDEX audit_log_once ON audit_log (connection_id, change_id, stage);
CREATE INDEX audit_log_identity ON audit_log (identity_id);
CREATE INDEX audit_log_action ON audit_log (connection_id, action);

-- Sync errors (I6): named, kept, retryable. One open row per record and
-- category; a repeat bumps its counter instead of piling up.
CREATE TABLE sync_errors (
    id              bigserial PRIMARY KEY,
    connection_id   text NOT NULL REFERENCES connections(id) ON DELETE CASCADE,
    stage           text NOT NULL,
    object          text NOT NULL,
    record_id       text NOT NULL,
    category        text NOT NULL,
    reason          text NOT NULL,
    change_id       uuid,
    -- The record as detected, to retry it later.
    payload         jsonb,
    status          text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'resolved', 'dismissed', 'retried')),
    occurrences     integer NOT NULL DEFAULT 1,
    first_seen_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at    timestamptz NOT NULL DEFAULT now(),
    closed_at       timestamptz
);
CREATE UNIQUE INDEX sync_errors_open ON sync_errors (connection_id, object, record_id, category) WHERE status = 'open';
CREATE INDEX sync_errors_by_category ON sync_errors (connection_id, status, category);
