-- Read-only mirrors of CRM objects in the MA (R4-R6), and CRM custom objects.
--
-- The engine writes the mirrors; MA users can edit a prospect account (the
-- next CRM change overwrites the edit) but have no way to create or edit an
-- opportunity or a custom object record.

CREATE TABLE ma.prospect_accounts (
    id                bigserial PRIMARY KEY,
    tenant            text NOT NULL DEFAULT 'default',
    crm_account_id    text NOT NULL,
    name              text,
    industry          text,
    website           text,
    city              text,
    country           text,
    created_at        timestamptz,
    created_by        text,
    modstamp          timestamptz,
    last_modified_by  text NOT NULL,
    field_stamps      jsonb NOT NULL DEFAULT '{}',
    mod_xid           xid8,
    sync_fence        bigint NOT NULL DEFAULT 0,
    UNIQUE (tenant, crm_account_id)
);
CREATE TRIGGER track BEFORE INSERT OR UPDATE ON ma.prospect_accounts FOR EACH ROW EXECUTE FUNCTION sandbox.track_change(
    'name', 'industry', 'website', 'city', 'country');

-- A prospect shows the prospect account of its contact's CRM account.
ALTER TABLE ma.prospects ADD COLUMN prospect_account_id bigint REFERENCES ma.prospect_accounts(id) ON DELETE SET NULL;
CREATE INDEX ma_prospects_account ON ma.prospects (prospect_account_id) WHERE prospect_account_id IS NOT NULL;

CREATE TABLE ma.opportunities (
    id                  bigserial PRIMARY KEY,
    tenant              text NOT NULL DEFAULT 'default',
    crm_opportunity_id  text NOT NULL,
    name                text,
    stage               text,
    amount              numeric(18, 2),
    close_date          date,
    is_closed           boolean NOT NULL DEFAULT false,
    is_won              boolean NOT NULL DEFAULT false,
    created_at          timestamptz,
    created_by          text,
    modstamp            timestamptz,
    last_modified_by    text NOT NULL,
    field_stamps        jsonb NOT NULL DEFAULT '{}',
    mod_xid             xid8,
    sync_fence          bigint NOT NULL DEFAULT 0,
    UNIQUE (tenant, crm_opportunity_id)
);
CREATE TRIGGER track BEFORE INSERT OR UPDATE ON ma.opportunities FOR EACH ROW EXECUTE FUNCTION sandbox.track_change(
    'name', 'stage', 'amount', 'close_date', 'is_closed', 'is_won');

-- Which prospects see an opportunity: those whose contact has a role on it.
CREATE TABLE ma.opportunity_prospects (
    opportunity_id  bigint NOT NULL REFERENCES ma.opportunities(id) ON DELETE CASCADE,
    prospect_id     bigint NOT NULL REFERENCES ma.prospects(id) ON DELETE CASCADE,
    PRIMARY KEY (opportunity_id, prospect_id)
);
CREATE INDEX ma_opportunity_prospects_prospect ON ma.opportunity_prospects (prospect_id);

CREATE TABLE ma.custom_object_records (
    id                bigserial PRIMARY KEY,
    tenant            text NOT NULL DEFAULT 'default',
    object_type       text NOT NULL,
    crm_id            text NOT NULL,
    fields            jsonb NOT NULL DEFAULT '{}',
    created_at        timestamptz,
    created_by        text,
    modstamp          timestamptz,
    last_modified_by  text NOT NULL,
    field_stamps      jsonb NOT NULL DEFAULT '{}',
    mod_xid           xid8,
    sync_fence        bigint NOT NULL DEFAULT 0,
    UNIQUE (tenant, object_type, crm_id)
);
CREATE TRIGGER track BEFORE INSERT OR UPDATE ON ma.custom_object_records FOR EACH ROW EXECUTE FUNCTION sandbox.track_change('fields');

CREATE TABLE ma.custom_object_prospects (
    record_id    bigint NOT NULL REFERENCES ma.custom_object_records(id) ON DELETE CASCADE,
    prospect_id  bigint NOT NULL REFERENCES ma.prospects(id) ON DELETE CASCADE,
    PRIMARY KEY (record_id, prospect_id)
);

-- CRM custom objects: one table for every custom object type, fields in jsonb
-- (a custom object's fields are whatever its admin defined).
CREATE TABLE crm.custom_records (
    id                text PRIMARY KEY DEFAULT crm.new_id('a0X'),
    tenant            text NOT NULL DEFAULT 'default',
    object_type       text NOT NULL,
    fields            jsonb NOT NULL DEFAULT '{}',
    is_deleted        boolean NOT NULL DEFAULT false,
    created_at        timestamptz,
    created_by        text,
    modstamp          timestamptz,
    last_modified_by  text NOT NULL,
    field_stamps      jsonb NOT NULL DEFAULT '{}',
    mod_xid           xid8,
    sync_fence        bigint NOT NULL DEFAULT 0
);
CREATE INDEX crm_custom_records_feed ON crm.custom_records (tenant, object_type, mod_xid, id);
CREATE TRIGGER track BEFORE INSERT OR UPDATE ON crm.custom_records FOR EACH ROW EXECUTE FUNCTION sandbox.track_change(
    'fields', 'is_deleted');
CREATE TRIGGER notify AFTER INSERT OR UPDATE ON crm.custom_records FOR EACH STATEMENT EXECUTE FUNCTION sandbox.notify_change();

-- Look-ups the engine makes when it reconciles mirrors.
CREATE INDEX crm_contacts_account ON crm.contacts (tenant, account_id);
CREATE INDEX crm_ocr_opportunity ON crm.opportunity_contact_roles (tenant, opportunity_id);
CREATE INDEX crm_ocr_contact ON crm.opportunity_contact_roles (tenant, contact_id);
