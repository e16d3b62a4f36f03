-- Change Data Capture for the sandbox CRM, as Salesforce publishes it over
-- the Pub/Sub API (`crmsync sandbox serve`).
--
-- A change to a CRM record of an entity the org selected for change events
-- (Setup > Change Data Capture: `sandbox.cdc_selection`) is captured by a
-- row trigger, whoever writes it: the command line, the engine, the
-- sandbox server's REST, Collections and Bulk paths, or plain SQL. The MA
-- and CS schemas are not captured at all.
--
--   sandbox.cdc_<schema>_<table>  the rows each transaction wrote, as they
--                                 were and as they became, until sequenced
--   sandbox.cdc_pending           those captures as changes: entity, record,
--                                 type and the fields to publish
--   sandbox.cdc_events            the event log subscribers read, by replay id
--
-- The capture is what the sandbox's own write path pays, so it does as
-- little as it can: it copies the old and new rows as they are (a composite
-- value, no per-field conversion) into a table without indexes. Turning
-- them into field values, diffs and events is the sequencer's work
-- (crates/sandbox/src/cdc), off the write path. Measured on 20,000 leads:
-- building the fields as jsonb in the trigger cost about 17 us a row, the
-- copy about 3.5. A commit is announced on the existing `crmsync_sandbox`
-- channel (the tables' `notify` triggers), which the sequencer listens to.
--
-- Replay ids are handed out by the sequencer in the order transactions
-- become visible (their commit order): it numbers only the changes of
-- committed transactions, so one that started early and commits late gets
-- ids after everything already numbered, and a subscriber resuming after
-- any replay id still receives it.
--
-- A write through the sandbox server names its API and client for the
-- events' changeOrigin in the transaction-local setting
-- `crmsync.change_origin` (`com/salesforce/api/rest/60.0;client=crmsync`);
-- other writes leave it empty, as a change made in the UI is.
--
-- The capture tables have columns of the CRM tables' row types, so
-- PostgreSQL refuses to retype a column of a captured table in place (the
-- migrations never do: see the engine's migration test).

-- Which entities publish change events, per org. Without a row, the
-- entities the engine reads are selected and custom objects are not.
CREATE TABLE sandbox.cdc_selection (
    tenant    text NOT NULL,
    entity    text NOT NULL,
    selected  boolean NOT NULL,
    PRIMARY KEY (tenant, entity)
);

-- Whether an org's entity is selected. Every captured table's trigger asks
-- it for every row written, so it reads no table: it is recompiled from
-- `sandbox.cdc_selection` whenever that changes, as one expression the
-- trigger's WHEN clause inlines (a table look-up per row cost more than
-- the capture itself).
CREATE FUNCTION sandbox.cdc_compile_selection() RETURNS void LANGUAGE plpgsql AS $gen$
DECLARE
    defaults text := $$e IN ('Lead', 'Contact', 'Account', 'Opportunity', 'OpportunityContactRole')$$;
    cases    text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('sandbox.cdc_selected'));
    SELECT string_agg(format('WHEN t = %L AND e = %L THEN %s', tenant, entity, CASE WHEN selected THEN 'true' ELSE 'false' END), ' '
                      ORDER BY tenant, entity)
      INTO cases FROM sandbox.cdc_selection;
    EXECUTE format('CREATE OR REPLACE FUNCTION sandbox.cdc_selected(t text, e text) RETURNS boolean LANGUAGE sql STABLE AS %L',
                   'SELECT ' || CASE WHEN cases IS NULL THEN defaults ELSE format('CASE %s ELSE %s END', cases, defaults) END);
END $gen$;

CREATE FUNCTION sandbox.cdc_selection_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM sandbox.cdc_compile_selection();
    RETURN NULL;
END $$;

CREATE TRIGGER compile AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON sandbox.cdc_selection
    FOR EACH STATEMENT EXECUTE FUNCTION sandbox.cdc_selection_changed();
SELECT sandbox.cdc_compile_selection();

-- Orders the captured rows of all tables (within a transaction, too).
CREATE SEQUENCE sandbox.cdc_change_seq;

-- The event log. `fields` holds column-named values (a custom object's data
-- fields by API name): every non-null one for CREATE and UNDELETE, the
-- changed ones (nulls included) for UPDATE, none for DELETE and gap events;
-- `changed` the columns an UPDATE changed.
CREATE TABLE sandbox.cdc_events (
    replay_id         bigint PRIMARY KEY,
    tenant            text NOT NULL,
    entity            text NOT NULL,
    change_type       text NOT NULL,
    record_ids        jsonb NOT NULL,
    change_origin     text NOT NULL,
    transaction_key   text NOT NULL,
    sequence_number   integer NOT NULL,
    commit_timestamp  timestamptz NOT NULL,
    commit_number     bigint NOT NULL,
    commit_user       text NOT NULL,
    fields            jsonb,
    changed           jsonb
);
CREATE INDEX cdc_events_stream ON sandbox.cdc_events (tenant, replay_id);
CREATE INDEX cdc_events_age ON sandbox.cdc_events (tenant, commit_timestamp);

-- The sequencer's position; its row lock makes sequencers take turns.
CREATE TABLE sandbox.cdc_sequencer (
    id                 integer PRIMARY KEY CHECK (id = 1),
    last_replay_id     bigint NOT NULL,
    last_commit_number bigint NOT NULL,
    last_commit_at     timestamptz NOT NULL
);
INSERT INTO sandbox.cdc_sequencer VALUES (1, 0, 0, '-infinity');

-- Test switches per org: the next `gaps` events are sent as gap events, the
-- next `overflows` transactions as overflow events.
CREATE TABLE sandbox.cdc_switches (
    tenant     text PRIMARY KEY,
    gaps       integer NOT NULL DEFAULT 0,
    overflows  integer NOT NULL DEFAULT 0
);


-- The captured tables, for sandbox.cdc_pending.
CREATE TABLE sandbox.cdc_captured (
    relation       regclass PRIMARY KEY,
    capture_table  text NOT NULL,
    pending_query  text NOT NULL
);

-- Starts capturing a CRM table: its capture table, the row trigger filling
-- it for selected entities, and its part of sandbox.cdc_pending. `entity`
-- names the entity (NULL: the table's `object_type` column does, for
-- custom objects, whose jsonb `fields` are compared key by key); `cols` the
-- columns that are record fields. The created and modified stamps are
-- added here.
CREATE FUNCTION sandbox.cdc_capture(tbl regclass, entity text, cols text[]) RETURNS void LANGUAGE plpgsql AS $gen$
DECLARE
    capture   text := format('sandbox.%I', 'cdc_' || replace(tbl::text, '.', '_'));
    ent       text := coalesce(quote_literal(entity), '(c.new).object_type');
    vals      text := '';
    unchanged text := '';
    pending   text;
    col       text;
BEGIN
    FOREACH col IN ARRAY cols LOOP
        vals := vals || format('%L, (c.new).%I, ', col, col);
        unchanged := unchanged || format('CASE WHEN (c.new).%1$I IS NOT DISTINCT FROM (c.old).%1$I THEN %1$L END, ', col);
    END LOOP;
    EXECUTE format('CREATE TABLE %s (id bigint NOT NULL DEFAULT nextval(''sandbox.cdc_change_seq''), '
                   'xid xid8 NOT NULL DEFAULT pg_current_xact_id(), origin text NOT NULL, old %s, new %s NOT NULL)',
                   capture, tbl, tbl);
    EXECUTE format($f$
CREATE FUNCTION %1$s() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO %1$s (origin, new) VALUES (coalesce(current_setting('crmsync.change_origin', true), ''), NEW);
    ELSE
        INSERT INTO %1$s (origin, old, new) VALUES (coalesce(current_setting('crmsync.change_origin', true), ''), OLD, NEW);
    END IF;
    RETURN NULL;
END $body$
$f$, capture);
    EXECUTE format('CREATE TRIGGER cdc AFTER INSERT OR UPDATE ON %s FOR EACH ROW WHEN (sandbox.cdc_selected(NEW.tenant, %s)) '
                   'EXECUTE FUNCTION %s()', tbl, coalesce(quote_literal(entity), 'NEW.object_type'), capture);
    -- The capture as a change: created, deleted (into the recycle bin),
    -- undeleted or updated, with the fields its event publishes.
    pending := format($q$
SELECT c.id, c.xid, (c.new).tenant AS tenant, %1$s AS entity, (c.new).id::text AS record_id, k.change_type,
       (c.new).modstamp AS at, (c.new).last_modified_by AS commit_user, c.origin,
       CASE k.change_type
           WHEN 'DELETE' THEN NULL
           WHEN 'UPDATE' THEN %4$s
           ELSE jsonb_strip_nulls(%2$sjsonb_build_object(%3$s'created_at', (c.new).created_at, 'created_by', (c.new).created_by,
                                                      'modstamp', (c.new).modstamp, 'last_modified_by', (c.new).last_modified_by))
       END AS fields
FROM %5$s c
CROSS JOIN LATERAL (SELECT CASE WHEN (c.old).id IS NULL THEN 'CREATE'
                                WHEN (c.new).is_deleted AND NOT (c.old).is_deleted THEN 'DELETE'
                                WHEN (c.old).is_deleted AND NOT (c.new).is_deleted THEN 'UNDELETE'
                                ELSE 'UPDATE' END AS change_type) k$q$,
        ent,
        CASE WHEN entity IS NULL THEN '(c.new).fields || ' ELSE '' END,
        vals,
        CASE WHEN entity IS NULL THEN
            -- Custom data fields compared key by key (a removed key is nulled).
            format($u$(SELECT coalesce(jsonb_object_agg(ks.k, (c.new).fields -> ks.k), '{}'::jsonb)
                         FROM (SELECT jsonb_object_keys((c.new).fields) UNION SELECT jsonb_object_keys((c.old).fields)) ks(k)
                        WHERE (c.new).fields -> ks.k IS DISTINCT FROM (c.old).fields -> ks.k)
                      || (jsonb_build_object('modstamp', (c.new).modstamp, 'last_modified_by', (c.new).last_modified_by)
                          - array_remove(ARRAY[CASE WHEN (c.new).last_modified_by IS NOT DISTINCT FROM (c.old).last_modified_by
                                                    THEN 'last_modified_by' END], NULL))$u$)
        ELSE
            format($u$jsonb_build_object(%1$s'modstamp', (c.new).modstamp, 'last_modified_by', (c.new).last_modified_by)
                      - array_remove(ARRAY[%2$sCASE WHEN (c.new).last_modified_by IS NOT DISTINCT FROM (c.old).last_modified_by
                                                    THEN 'last_modified_by' END], NULL)$u$, vals, unchanged)
        END,
        capture);
    INSERT INTO sandbox.cdc_captured VALUES (tbl, capture, pending)
    ON CONFLICT (relation) DO UPDATE SET capture_table = EXCLUDED.capture_table, pending_query = EXCLUDED.pending_query;
    EXECUTE 'CREATE OR REPLACE VIEW sandbox.cdc_pending AS '
            || (SELECT string_agg(c.pending_query, E'\nUNION ALL' ORDER BY c.relation::text) FROM sandbox.cdc_captured c);
END $gen$;

SELECT sandbox.cdc_capture('crm.leads', 'Lead', ARRAY[
    'first_name', 'last_name', 'title', 'company', 'city', 'country', 'phone', 'email', 'status', 'owner_id',
    'has_opted_out_of_email', 'is_converted', 'converted_account_id', 'converted_contact_id', 'converted_opportunity_id',
    'pi_score', 'pi_grade', 'csql_created_by', 'crmsync_id']);
SELECT sandbox.cdc_capture('crm.contacts', 'Contact', ARRAY[
    'first_name', 'last_name', 'account_id', 'title', 'mailing_city', 'mailing_country', 'phone', 'email', 'owner_id',
    'has_opted_out_of_email', 'pi_score', 'pi_grade', 'crmsync_id']);
SELECT sandbox.cdc_capture('crm.accounts', 'Account', ARRAY[
    'name', 'industry', 'billing_city', 'billing_country', 'website', 'owner_id']);
SELECT sandbox.cdc_capture('crm.opportunities', 'Opportunity', ARRAY[
    'account_id', 'name', 'stage_name', 'amount', 'close_date', 'is_closed', 'is_won', 'owner_id', 'csql_created_by', 'crmsync_id']);
SELECT sandbox.cdc_capture('crm.opportunity_contact_roles', 'OpportunityContactRole', ARRAY[
    'opportunity_id', 'contact_id', 'role', 'is_primary']);
SELECT sandbox.cdc_capture('crm.custom_records', NULL, ARRAY[]::text[]);

-- Removes the sequenced captures of these transactions from every capture
-- table.
CREATE FUNCTION sandbox.cdc_consume(xids xid8[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    t text;
BEGIN
    FOR t IN SELECT capture_table FROM sandbox.cdc_captured LOOP
        EXECUTE format('DELETE FROM %s WHERE xid = ANY($1)', t) USING xids;
    END LOOP;
END $$;
