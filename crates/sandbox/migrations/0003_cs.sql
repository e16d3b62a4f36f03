-- The sandbox CS platform (Gainsight): CS users, the CS lead object and the
-- CS opportunity object that hold CSQLs, and the lead admin's configuration
-- (stages, views, email notifications), which a renewal center shares.

CREATE TABLE cs.users (
    id                     bigserial PRIMARY KEY,
    tenant                 text NOT NULL DEFAULT 'default',
    name                   text NOT NULL,
    email                  text NOT NULL,
    -- 'csm' (a full licence) or 'internal_collaborator' (free: a sales user).
    user_type              text NOT NULL DEFAULT 'csm' CHECK (user_type IN ('csm', 'internal_collaborator')),
    -- The CRM user this CS user is tied to, if any (15 or 18 characters).
    crm_user_id            text,
    is_admin               boolean NOT NULL DEFAULT false,
    -- Gainsight support's elevated privilege: needed to delete CS opportunity records.
    has_support_privilege  boolean NOT NULL DEFAULT false,
    is_integration         boolean NOT NULL DEFAULT false,
    created_at             timestamptz NOT NULL DEFAULT now()
);

-- CSQLs synced as leads live in the CS lead object.
CREATE TABLE cs.lead_records (
    id                bigserial PRIMARY KEY,
    tenant            text NOT NULL DEFAULT 'default',
    first_name        text,
    last_name         text,
    email             text,
    company           text,
    title             text,
    phone             text,
    status            text NOT NULL DEFAULT 'New',
    owner_id          bigint REFERENCES cs.users(id),
    created_by_id     bigint REFERENCES cs.users(id),
    -- The CS user who saved the CSQL last (status write-backs do not count).
    saved_by_id       bigint REFERENCES cs.users(id),
    -- What the sync did, shown to the CSM.
    crm_id            text,
    sync_status       text NOT NULL DEFAULT 'not_synced',
    sync_error        text,
    is_deleted        boolean NOT NULL DEFAULT false,
    created_at        timestamptz,
    created_by        text,
    modstamp          timestamptz,
    last_modified_by  text NOT NULL,
    field_stamps      jsonb NOT NULL DEFAULT '{}',
    mod_xid           xid8,
    sync_fence        bigint NOT NULL DEFAULT 0
);
CREATE INDEX cs_lead_records_feed ON cs.lead_records (tenant, mod_xid, id);
CREATE TRIGGER track BEFORE INSERT OR UPDATE ON cs.lead_records FOR EACH ROW EXECUTE FUNCTION sandbox.track_change(
    'first_name', 'last_name', 'email', 'company', 'title', 'phone', 'status', 'owner_id', 'is_deleted');
CREATE TRIGGER notify AFTER INSERT OR UPDATE ON cs.lead_records FOR EACH STATEMENT EXECUTE FUNCTION sandbox.notify_change();

-- CSQLs synced as opportunities live in the CS opportunity object.
CREATE TABLE cs.opportunity_records (
    id                bigserial PRIMARY KEY,
    tenant            text NOT NULL DEFAULT 'default',
    name              text,
    company           text,
    amount            numeric(18, 2),
    stage             text NOT NULL DEFAULT 'Prospecting',
    close_date        date,
    owner_id          bigint REFERENCES cs.users(id),
    created_by_id     bigint REFERENCES cs.users(id),
    saved_by_id       bigint REFERENCES cs.users(id),
    crm_id            text,
    sync_status       text NOT NULL DEFAULT 'not_synced',
    sync_error        text,
    is_deleted        boolean NOT NULL DEFAULT false,
    created_at        timestamptz,
    created_by        text,
    modstamp          timestamptz,
    last_modified_by  text NOT NULL,
    field_stamps      jsonb NOT NULL DEFAULT '{}',
    mod_xid           xid8,
    sync_fence        bigint NOT NULL DEFAULT 0
);
CREATE INDEX cs_opportunity_records_feed ON cs.opportunity_records (tenant, mod_xid, id);
CREATE TRIGGER track BEFORE INSERT OR UPDATE ON cs.opportunity_records FOR EACH ROW EXECUTE FUNCTION sandbox.track_change(
    'name', 'company', 'amount', 'stage', 'close_date', 'owner_id', 'is_deleted');
CREATE TRIGGER notify AFTER INSERT OR UPDATE ON cs.opportunity_records FOR EACH STATEMENT EXECUTE FUNCTION sandbox.notify_change();

-- The lead admin's configuration per area. With CSQLs synced as
-- opportunities and a renewal center configured, the opportunity area shares
-- the renewal center's row (`shared_with`): a change on either side shows on both.
CREATE TABLE cs.admin_config (
    tenant               text NOT NULL DEFAULT 'default',
    area                 text NOT NULL CHECK (area IN ('lead', 'opportunity', 'renewal')),
    stages               jsonb NOT NULL DEFAULT '[]',
    table_view           jsonb NOT NULL DEFAULT '[]',
    detail_view          jsonb NOT NULL DEFAULT '[]',
    email_notifications  jsonb NOT NULL DEFAULT '{}',
    shared_with          text CHECK (shared_with IN ('renewal')),
    PRIMARY KEY (tenant, area)
);

-- Which object this CS tenant keeps CSQLs in (set when the record type
-- switches); a renewal center configured later shares with it too.
CREATE TABLE cs.csql_settings (
    tenant       text PRIMARY KEY,
    record_type  text NOT NULL CHECK (record_type IN ('lead', 'opportunity'))
);

-- The CRM remembers which CSM created a CSQL written by the integration user,
-- and opportunities made from CSQLs are upserted by crmsync's external id.
ALTER TABLE crm.leads ADD COLUMN csql_created_by text;
ALTER TABLE crm.opportunities ADD COLUMN csql_created_by text;
ALTER TABLE crm.opportunities ADD COLUMN crmsync_id text;
ALTER TABLE crm.opportunities ADD CONSTRAINT crm_opportunities_crmsync_id UNIQUE (tenant, crmsync_id);

CREATE FUNCTION sandbox.ensure_cs_tenant(t text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM cs.users WHERE tenant = t AND is_integration) THEN
        INSERT INTO cs.users (tenant, name, email, is_integration) VALUES (t, 'crmsync Integration', 'integration@' || t || '.cs.invalid', true);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM cs.users WHERE tenant = t AND is_admin) THEN
        INSERT INTO cs.users (tenant, name, email, is_admin) VALUES (t, 'CS Admin', 'admin@' || t || '.cs.invalid', true);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM cs.users WHERE tenant = t AND has_support_privilege) THEN
        INSERT INTO cs.users (tenant, name, email, has_support_privilege) VALUES (t, 'Gainsight Support', 'support@' || t || '.cs.invalid', true);
    END IF;
    INSERT INTO cs.admin_config (tenant, area, stages, table_view, detail_view, email_notifications) VALUES
        (t, 'lead', '["New", "Working", "Qualified", "Converted"]', '["Name", "Company", "Status", "Owner"]',
         '["Name", "Email", "Company", "Title", "Phone", "Status"]', '{"on_create": true}'),
        (t, 'opportunity', '["Prospecting", "Qualification", "Proposal", "Closed Won", "Closed Lost"]',
         '["Name", "Company", "Stage", "Amount", "Owner"]', '["Name", "Company", "Stage", "Amount", "Close Date"]', '{"on_create": true}')
    ON CONFLICT DO NOTHING;
END $$;

SELECT sandbox.ensure_cs_tenant('default');

-- With CSQLs kept as opportunities and a renewal center configured, the
-- opportunity area uses the renewal center's stage and view settings (one
-- row: a change from either side shows on both); otherwise its own.
CREATE FUNCTION sandbox.share_renewal_config(t text) RETURNS void LANGUAGE sql AS $$
    UPDATE cs.admin_config SET shared_with = CASE
        WHEN EXISTS (SELECT 1 FROM cs.csql_settings WHERE tenant = t AND record_type = 'opportunity')
         AND EXISTS (SELECT 1 FROM cs.admin_config WHERE tenant = t AND area = 'renewal')
        THEN 'renewal' END
    WHERE tenant = t AND area = 'opportunity';
$$;

-- The CRM user a CS tenant writes CSQLs as under the `integration` sync user:
-- the CS platform's own connected user in that CRM org (not crmsync's), so
-- its writes are ordinary changes to the MA sync.
CREATE FUNCTION sandbox.cs_crm_user(cs_tenant text, crm_tenant text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    mail text := 'cs-integration@' || cs_tenant || '.cs.invalid';
    found text;
BEGIN
    SELECT id INTO found FROM crm.users WHERE tenant = crm_tenant AND email = mail;
    IF found IS NULL THEN
        INSERT INTO crm.users (tenant, name, email) VALUES (crm_tenant, 'CS Platform Integration', mail) RETURNING id INTO found;
    END IF;
    RETURN found;
END $$;
