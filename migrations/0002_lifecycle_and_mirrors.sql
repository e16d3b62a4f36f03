-- Lifecycle (R8) and read-only mirrors (R4-R6). Additive only: replicas of
-- the previous release keep working while this one rolls out.

-- An identity whose CRM record was deleted: its prospect is in the MA
-- recycle bin until the record is restored.
ALTER TABLE identities DROP CONSTRAINT identities_status_check;
ALTER TABLE identities ADD CONSTRAINT identities_status_check
    CHECK (status IN ('linked', 'pending_assignment', 'creating_crm', 'creating_ma', 'recycled'));
-- Whether the engine has put the prospect in the recycle bin.
ALTER TABLE identities ADD COLUMN ma_recycled boolean NOT NULL DEFAULT false;
-- The account the linked contact belonged to when last seen, to notice moves.
ALTER TABLE identities ADD COLUMN crm_account_id text;

-- Mirrors to reconcile after an identity changed (a new link, a conversion,
-- a delete, a contact moving account): written in the same transaction as
-- the identity, so the work survives a crash, and removed once done. `seq`
-- changes when a key is queued again, so a reconciliation that started
-- before only removes the entry it saw.
CREATE SEQUENCE mirror_outbox_seq;
CREATE TABLE mirror_outbox (
    connection_id  text NOT NULL REFERENCES connections(id) ON DELETE CASCADE,
    key            text NOT NULL,
    seq            bigint NOT NULL DEFAULT nextval('mirror_outbox_seq'),
    queued_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (connection_id, key)
);
CREATE INDEX mirror_outbox_age ON mirror_outbox (queued_at);
