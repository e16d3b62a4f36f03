-- The sandbox systems: an MA (Account Engagement), a CRM (Sales Cloud) and,
-- later, a CS platform (Gainsight), each in a PostgreSQL schema of its own.
-- A `tenant` column stands for the MA business unit / CRM org, so several
-- connections can each have systems of their own in one database.
--
-- Change tracking: every tracked row carries
--   modstamp       when it last changed (SystemModstamp / updatedAt)
--   mod_xid        the id of the transaction that changed it, for gap-free paging
--   field_stamps   per column: {"at": when, "by": which user} of its last change
--   last_modified_by  the user who made the change
--   sync_fence     the newest fencing token that wrote the row (writes with an
--                  older token are refused: a paused writer cannot clobber it)
--
-- Change feeds page on (mod_xid, id) and only read rows whose transaction id
-- is below the oldest transaction still running (pg_snapshot_xmin), so a row
-- committed late by a long transaction can never be skipped.

CREATE SCHEMA IF NOT EXISTS ma;
CREATE SCHEMA IF NOT EXISTS crm;
CREATE SCHEMA IF NOT EXISTS cs;

CREATE FUNCTION sandbox.track_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    col   text;
    ts    timestamptz := clock_timestamp();
    n     jsonb := to_jsonb(NEW);
    o     jsonb;
    stamp jsonb;
    mark  jsonb;
BEGIN
    mark := jsonb_build_object('at', ts, 'by', NEW.last_modified_by);
    IF TG_OP = 'INSERT' THEN
        stamp := '{}'::jsonb;
        FOREACH col IN ARRAY TG_ARGV LOOP
            IF n -> col IS NOT NULL AND n -> col <> 'null'::jsonb THEN
                stamp := stamp || jsonb_build_object(col, mark);
            END IF;
        END LOOP;
        NEW.created_at := coalesce(NEW.created_at, ts);
        NEW.created_by := coalesce(NEW.created_by, NEW.last_modified_by);
    ELSE
        o := to_jsonb(OLD);
        stamp := coalesce(OLD.field_stamps, '{}'::jsonb);
        FOREACH col IN ARRAY TG_ARGV LOOP
            IF n -> col IS DISTINCT FROM o -> col THEN
                stamp := stamp || jsonb_build_object(col, mark);
            END IF;
        END LOOP;
    END IF;
    NEW.field_stamps := stamp;
    NEW.modstamp := ts;
    NEW.mod_xid := pg_current_xact_id();
    RETURN NEW;
END $$;

-- Wakes change feeds at commit instead of waiting for the next poll.
CREATE FUNCTION sandbox.notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('crmsync_sandbox', TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME);
    RETURN NULL;
END $$;

-- Salesforce-style ids: 3-character key prefix, 12 characters of body with
-- mixed case (so case-sensitivity is real), 3-character case suffix.
CREATE SEQUENCE crm.id_seq;

CREATE FUNCTION crm.case_suffix(s15 text) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    alphabet text := 'ABCDEFGHIJKLMNOPQRSTUVWXYZ012345';
    result   text := '';
    mask     int;
BEGIN
    FOR chunk IN 0..2 LOOP
        mask := 0;
        FOR i IN 0..4 LOOP
            IF substr(s15, chunk * 5 + i + 1, 1) ~ '^[A-Z]$' THEN
                mask := mask | (1 << i);
            END IF;
        END LOOP;
        result := result || substr(alphabet, mask + 1, 1);
    END LOOP;
    RETURN result;
END $$;

CREATE FUNCTION crm.new_id(prefix text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    digits text := '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';
    -- A bijection on 0..62^10 scatters consecutive numbers over the alphabet.
    n      bigint := (nextval('crm.id_seq') * 7919 + 104729) % 839299365868340224;
    body   text := '';
    s15    text;
BEGIN
    FOR i IN 1..10 LOOP
        body := substr(digits, (n % 62)::int + 1, 1) || body;
        n := n / 62;
    END LOOP;
    s15 := prefix || '5g' || body;
    RETURN s15 || crm.case_suffix(s15);
END $$;

-- ---------------------------------------------------------------- MA -------

CREATE TABLE ma.users (
    id              bigserial PRIMARY KEY,
    tenant          text NOT NULL DEFAULT 'default',
    email           text NOT NULL,
    first_name      text,
    last_name       text,
    -- The user's CRM user, as the MA stores it (15 or 18 characters).
    crm_user_id     text,
    is_integration  boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX ma_users_email ON ma.users (tenant, lower(email));

CREATE TABLE ma.prospects (
    id                bigserial PRIMARY KEY,
    tenant            text NOT NULL DEFAULT 'default',
    email             text,
    first_name        text,
    last_name         text,
    company           text,
    job_title         text,
    phone             text,
    city              text,
    country           text,
    opted_out         boolean NOT NULL DEFAULT false,
    score             integer NOT NULL DEFAULT 0,
    grade             text,
    crm_lead_fid      text,
    crm_contact_fid   text,
    assigned_user_id  bigint REFERENCES ma.users(id),
    is_deleted        boolean NOT NULL DEFAULT false,
    created_at        timestamptz,
    created_by        text,
    modstamp          timestamptz,
    last_modified_by  text NOT NULL,
    field_stamps      jsonb NOT NULL DEFAULT '{}',
    mod_xid           xid8,
    sync_fence        bigint NOT NULL DEFAULT 0
);
CREATE INDEX ma_prospects_feed ON ma.prospects (tenant, mod_xid, id);
CREATE INDEX ma_prospects_email ON ma.prospects (tenant, lower(btrim(email)));
CREATE TRIGGER track BEFORE INSERT OR UPDATE ON ma.prospects FOR EACH ROW EXECUTE FUNCTION sandbox.track_change(
    'email', 'first_name', 'last_name', 'company', 'job_title', 'phone', 'city', 'country', 'opted_out', 'score',
    'grade', 'crm_lead_fid', 'crm_contact_fid', 'assigned_user_id', 'is_deleted');
CREATE TRIGGER notify AFTER INSERT OR UPDATE ON ma.prospects FOR EACH STATEMENT EXECUTE FUNCTION sandbox.notify_change();

-- ---------------------------------------------------------------- CRM ------

CREATE TABLE crm.users (
    id              text PRIMARY KEY DEFAULT crm.new_id('005'),
    tenant          text NOT NULL DEFAULT 'default',
    name            text NOT NULL,
    email           text NOT NULL,
    is_active       boolean NOT NULL DEFAULT true,
    -- "API Enabled" permission: needed to sync as a logged-in user (R9).
    api_enabled     boolean NOT NULL DEFAULT true,
    is_integration  boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE crm.accounts (
    id                text PRIMARY KEY DEFAULT crm.new_id('001'),
    tenant            text NOT NULL DEFAULT 'default',
    name              text NOT NULL,
    industry          text,
    website           text,
    billing_city      text,
    billing_country   text,
    owner_id          text REFERENCES crm.users(id),
    is_deleted        boolean NOT NULL DEFAULT false,
    created_at        timestamptz,
    created_by        text,
    modstamp          timestamptz,
    last_modified_by  text NOT NULL,
    field_stamps      jsonb NOT NULL DEFAULT '{}',
    mod_xid           xid8,
    sync_fence        bigint NOT NULL DEFAULT 0
);
CREATE INDEX crm_accounts_feed ON crm.accounts (tenant, mod_xid, id);
CREATE TRIGGER track BEFORE INSERT OR UPDATE ON crm.accounts FOR EACH ROW EXECUTE FUNCTION sandbox.track_change(
    'name', 'industry', 'website', 'billing_city', 'billing_country', 'owner_id', 'is_deleted');
CREATE TRIGGER notify AFTER INSERT OR UPDATE ON crm.accounts FOR EACH STATEMENT EXECUTE FUNCTION sandbox.notify_change();

CREATE TABLE crm.leads (
    id                        text PRIMARY KEY DEFAULT crm.new_id('00Q'),
    tenant                    text NOT NULL DEFAULT 'default',
    first_name                text,
    last_name                 text,
    email                     text,
    company                   text,
    title                     text,
    phone                     text,
    city                      text,
    country                   text,
    has_opted_out_of_email    boolean NOT NULL DEFAULT false,
    pi_score                  integer,
    pi_grade                  text,
    owner_id                  text REFERENCES crm.users(id),
    status                    text NOT NULL DEFAULT 'Open - Not Contacted',
    is_converted              boolean NOT NULL DEFAULT false,
    converted_contact_id      text,
    converted_account_id      text,
    converted_opportunity_id  text,
    -- crmsync's external id field (CrmSync_Id__c): idempotent creates.
    crmsync_id                text,
    is_deleted                boolean NOT NULL DEFAULT false,
    created_at                timestamptz,
    created_by                text,
    modstamp                  timestamptz,
    last_modified_by          text NOT NULL,
    field_stamps              jsonb NOT NULL DEFAULT '{}',
    mod_xid                   xid8,
    sync_fence                bigint NOT NULL DEFAULT 0,
    UNIQUE (tenant, crmsync_id)
);
CREATE INDEX crm_leads_feed ON crm.leads (tenant, mod_xid, id);
CREATE INDEX crm_leads_email ON crm.leads (tenant, lower(btrim(email)));
CREATE TRIGGER track BEFORE INSERT OR UPDATE ON crm.leads FOR EACH ROW EXECUTE FUNCTION sandbox.track_change(
    'first_name', 'last_name', 'email', 'company', 'title', 'phone', 'city', 'country', 'has_opted_out_of_email',
    'pi_score', 'pi_grade', 'owner_id', 'status', 'is_converted', 'converted_contact_id', 'is_deleted');
CREATE TRIGGER notify AFTER INSERT OR UPDATE ON crm.leads FOR EACH STATEMENT EXECUTE FUNCTION sandbox.notify_change();

CREATE TABLE crm.contacts (
    id                        text PRIMARY KEY DEFAULT crm.new_id('003'),
    tenant                    text NOT NULL DEFAULT 'default',
    account_id                text REFERENCES crm.accounts(id),
    first_name                text,
    last_name                 text,
    email                     text,
    title                     text,
    phone                     text,
    mailing_city              text,
    mailing_country           text,
    has_opted_out_of_email    boolean NOT NULL DEFAULT false,
    pi_score                  integer,
    pi_grade                  text,
    owner_id                  text REFERENCES crm.users(id),
    crmsync_id                text,
    is_deleted                boolean NOT NULL DEFAULT false,
    created_at                timestamptz,
    created_by                text,
    modstamp                  timestamptz,
    last_modified_by          text NOT NULL,
    field_stamps              jsonb NOT NULL DEFAULT '{}',
    mod_xid                   xid8,
    sync_fence                bigint NOT NULL DEFAULT 0,
    UNIQUE (tenant, crmsync_id)
);
CREATE INDEX crm_contacts_feed ON crm.contacts (tenant, mod_xid, id);
CREATE INDEX crm_contacts_email ON crm.contacts (tenant, lower(btrim(email)));
CREATE TRIGGER track BEFORE INSERT OR UPDATE ON crm.contacts FOR EACH ROW EXECUTE FUNCTION sandbox.track_change(
    'account_id', 'first_name', 'last_name', 'email', 'title', 'phone', 'mailing_city', 'mailing_country',
    'has_opted_out_of_email', 'pi_score', 'pi_grade', 'owner_id', 'is_deleted');
CREATE TRIGGER notify AFTER INSERT OR UPDATE ON crm.contacts FOR EACH STATEMENT EXECUTE FUNCTION sandbox.notify_change();

CREATE TABLE crm.opportunities (
    id                text PRIMARY KEY DEFAULT crm.new_id('006'),
    tenant            text NOT NULL DEFAULT 'default',
    name              text NOT NULL,
    account_id        text REFERENCES crm.accounts(id),
    stage_name        text NOT NULL DEFAULT 'Prospecting',
    amount            numeric(18, 2),
    close_date        date,
    is_closed         boolean NOT NULL DEFAULT false,
    is_won            boolean NOT NULL DEFAULT false,
    owner_id          text REFERENCES crm.users(id),
    is_deleted        boolean NOT NULL DEFAULT false,
    created_at        timestamptz,
    created_by        text,
    modstamp          timestamptz,
    last_modified_by  text NOT NULL,
    field_stamps      jsonb NOT NULL DEFAULT '{}',
    mod_xid           xid8,
    sync_fence        bigint NOT NULL DEFAULT 0
);
CREATE INDEX crm_opportunities_feed ON crm.opportunities (tenant, mod_xid, id);
CREATE TRIGGER track BEFORE INSERT OR UPDATE ON crm.opportunities FOR EACH ROW EXECUTE FUNCTION sandbox.track_change(
    'name', 'account_id', 'stage_name', 'amount', 'close_date', 'is_closed', 'is_won', 'owner_id', 'is_deleted');
CREATE TRIGGER notify AFTER INSERT OR UPDATE ON crm.opportunities FOR EACH STATEMENT EXECUTE FUNCTION sandbox.notify_change();

CREATE TABLE crm.opportunity_contact_roles (
    id                text PRIMARY KEY DEFAULT crm.new_id('00K'),
    tenant            text NOT NULL DEFAULT 'default',
    opportunity_id    text NOT NULL REFERENCES crm.opportunities(id),
    contact_id        text NOT NULL REFERENCES crm.contacts(id),
    role              text,
    is_primary        boolean NOT NULL DEFAULT false,
    is_deleted        boolean NOT NULL DEFAULT false,
    created_at        timestamptz,
    created_by        text,
    modstamp          timestamptz,
    last_modified_by  text NOT NULL,
    field_stamps      jsonb NOT NULL DEFAULT '{}',
    mod_xid           xid8,
    sync_fence        bigint NOT NULL DEFAULT 0
);
CREATE INDEX crm_ocr_feed ON crm.opportunity_contact_roles (tenant, mod_xid, id);
CREATE TRIGGER track BEFORE INSERT OR UPDATE ON crm.opportunity_contact_roles FOR EACH ROW EXECUTE FUNCTION sandbox.track_change(
    'opportunity_id', 'contact_id', 'role', 'is_primary', 'is_deleted');
CREATE TRIGGER notify AFTER INSERT OR UPDATE ON crm.opportunity_contact_roles FOR EACH STATEMENT EXECUTE FUNCTION sandbox.notify_change();

-- ------------------------------------------------------------- tenants -----

-- Every tenant has a human admin (who the command line acts as) and the
-- integration user the engine acts as, in both systems.
CREATE FUNCTION sandbox.ensure_tenant(t text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    crm_admin text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM crm.users WHERE tenant = t AND is_integration) THEN
        INSERT INTO crm.users (tenant, name, email, is_integration) VALUES (t, 'crmsync Integration', 'integration@' || t || '.crm.invalid', true);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM crm.users WHERE tenant = t AND email = 'admin@' || t || '.crm.invalid') THEN
        INSERT INTO crm.users (tenant, name, email) VALUES (t, 'Sandbox Admin', 'admin@' || t || '.crm.invalid');
    END IF;
    SELECT id INTO crm_admin FROM crm.users WHERE tenant = t AND email = 'admin@' || t || '.crm.invalid';
    IF NOT EXISTS (SELECT 1 FROM ma.users WHERE tenant = t AND is_integration) THEN
        INSERT INTO ma.users (tenant, email, first_name, last_name, is_integration)
        VALUES (t, 'integration@' || t || '.ma.invalid', 'crmsync', 'Integration', true);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM ma.users WHERE tenant = t AND lower(email) = 'admin@' || t || '.ma.invalid') THEN
        INSERT INTO ma.users (tenant, email, first_name, last_name, crm_user_id)
        VALUES (t, 'admin@' || t || '.ma.invalid', 'Sandbox', 'Admin', crm_admin);
    END IF;
END $$;

SELECT sandbox.ensure_tenant('default');
