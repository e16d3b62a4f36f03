-- What the console's overview shows of the deployment (issue 28): the
-- replicas of each tier seen recently and whether they were ready, and
-- when each feed last published a change.
--
-- Each replica writes its row every few seconds (`crmsync_infra::health`):
-- a handful of small updates a minute per replica, whatever the load. A
-- replica that stops writing is shown as not seen since; rows unseen for a
-- day are deleted by the replicas themselves.
CREATE TABLE replicas (
    tier        text NOT NULL,
    replica     text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    seen_at     timestamptz NOT NULL DEFAULT now(),
    ready       boolean NOT NULL,
    -- Why not, when not: "draining", "Redis: no answer"...
    not_ready   text,
    PRIMARY KEY (tier, replica)
);

-- The last time a feed published a change (not an echo, not an empty poll).
-- Nullable and without a default: no rewrite, and older producers, which do
-- not set it, keep working.
ALTER TABLE feeds ADD COLUMN last_published_at timestamptz;
