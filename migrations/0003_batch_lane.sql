-- The batch lane (R7): what each feed sent to it, and a fast count of what
-- the lane processed in the last hour.
ALTER TABLE feeds ADD COLUMN published_batch bigint NOT NULL DEFAULT 0;
CREATE INDEX audit_log_lane ON audit_log (connection_id, lane, at);

-- The CRM record the MA's mirrors last showed this identity linked to (null:
-- none). Whoever changed the link (matcher or applier), the applier sees the
-- difference and reconciles the mirrors of both records.
ALTER TABLE identities ADD COLUMN mirror_crm_id text;
