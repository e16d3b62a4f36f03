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
-- little as it can: the row trigger that already stamps each write (0006,
-- 0008) also copies the new row as it is (a composite value, no per-field
-- conversion, without its field stamps) with the names of the columns it
-- changed, into a table without indexes. Turning captures into field
-- values, diffs and events is the sequencer's work (crates/sandbox/src/cdc),
-- after the commit. Measured for 20,000 leads as PostgreSQL backend CPU
-- (median of 12 runs on 2 shared cores) and write-ahead log:
--   one INSERT of 20,000 rows        865 -> 1,060 ms   35 -> 41 MB
--   20,000 one-row INSERTs         1,125 -> 1,340 ms   27 -> 33 MB
--   UPDATEs of 200 rows each         780 ->   905 ms   38 -> 45 MB
-- about 6 to 11 us and 0.3 kB a row; wall-clock times stayed within the
-- machine's noise. What was measured and dropped: fields built as jsonb in
-- a trigger (17 us a row), a capture trigger of its own copying the old and
-- new rows (up to 25 us, and twice the log), copying the field stamps
-- (another 20 to 45 MB of log per 20,000 rows). A commit is announced on the
-- existing `crmsync_sandbox` channel (the tables' `notify` triggers), which
-- the sequencer listens to.

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

-- The captured tables: the entity each holds (NULL: its `object_type`
-- column names it, for custom objects), the columns that are record fields,
-- its capture table and its part of sandbox.cdc_pending.
CREATE TABLE sandbox.cdc_captured (
    relation       regclass PRIMARY KEY,
    entity         text,
    cdc_columns    text[] NOT NULL,
    capture_table  text NOT NULL,
    pending_query  text NOT NULL
);

-- Change tracking (0006, 0008) compiled per table, now also capturing the
-- change of a table registered in sandbox.cdc_captured, for a selected
-- entity: the same trigger call that stamps the row copies it, with the
-- names of the columns the write changed (JSON-quoted, as the stamps name
-- them) and, for a custom record, its fields before the write. One trigger
-- call per row instead of two, and no copy of the old row (on 20,000
-- updated leads: 175 ms of CPU instead of 485). A later recompilation of a
-- table's tracking keeps its capture. Everything else is as 0008 compiles it.
CREATE OR REPLACE FUNCTION sandbox.track_columns(tbl regclass, cols text[]) RETURNS void LANGUAGE plpgsql AS $gen$
DECLARE
    fn        text := format('sandbox.%I', 'track_' || replace(tbl::text, '.', '_'));
    on_insert text := '';
    on_update text := '';
    capture   text := '';
    snapshot  text := '';
    cdc       sandbox.cdc_captured;
    col       text;
BEGIN
    FOREACH col IN ARRAY cols LOOP
        -- The column's key as JSON text, quoted as a SQL literal.
        on_insert := on_insert || format(E'\n        IF NEW.%I IS NOT NULL THEN changed := changed || %L::text; END IF;', col, to_json(col)::text);
        on_update := on_update || format(E'\n        IF NEW.%1$I IS DISTINCT FROM OLD.%1$I THEN changed := changed || %2$L::text; END IF;', col, to_json(col)::text);
    END LOOP;
    SELECT * INTO cdc FROM sandbox.cdc_captured WHERE relation = tbl;
    IF FOUND THEN
        -- Record fields the stamps do not track, and the modifier.
        FOREACH col IN ARRAY cdc.cdc_columns || ARRAY['last_modified_by'] LOOP
            IF NOT col = ANY(cols) THEN
                capture := capture || format(E'\n            IF NEW.%1$I IS DISTINCT FROM OLD.%1$I THEN also := also || %2$L::text; END IF;', col, to_json(col)::text);
            END IF;
        END LOOP;
        -- The copy leaves out the field stamps, most of a row's bytes
        -- (and of the write-ahead log a capture costs).
        capture := format($c$
    IF sandbox.cdc_selected(NEW.tenant, %1$s) THEN
        snap := NEW;
        snap.field_stamps := NULL;
        IF TG_OP = 'INSERT' THEN
            INSERT INTO %2$s (origin, new) VALUES (coalesce(current_setting('crmsync.change_origin', true), ''), snap);
        ELSE%3$s
            INSERT INTO %2$s (origin, changed, old_fields, new)
            VALUES (coalesce(current_setting('crmsync.change_origin', true), ''), changed || also, %4$s, snap);
        END IF;
    END IF;$c$,
            coalesce(quote_literal(cdc.entity), 'NEW.object_type'), cdc.capture_table, capture,
            CASE WHEN cdc.entity IS NULL THEN 'OLD.fields' ELSE 'NULL' END);
        snapshot := format(E'\n    snap    %s;', tbl);
    END IF;
    EXECUTE format($f$
CREATE OR REPLACE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql AS $body$
DECLARE
    ts      timestamptz := clock_timestamp();
    -- One stamp as JSON text; the changed columns' keys are joined around it.
    mark    text := jsonb_build_object('at', ts, 'by', NEW.last_modified_by)::text;
    changed text[] := '{}';
    also    text[] := '{}';%s
BEGIN
    IF TG_OP = 'INSERT' THEN%s
        NEW.field_stamps := '{}'::jsonb;
        NEW.created_at := coalesce(NEW.created_at, ts);
        NEW.created_by := coalesce(NEW.created_by, NEW.last_modified_by);
    ELSE%s
        NEW.field_stamps := coalesce(OLD.field_stamps, '{}'::jsonb);
    END IF;
    IF cardinality(changed) > 0 THEN
        NEW.field_stamps := NEW.field_stamps
            || ('{' || array_to_string(changed, ':' || mark || ',') || ':' || mark || '}')::jsonb;
    END IF;
    NEW.modstamp := ts;
    NEW.mod_xid := pg_current_xact_id();%s
    RETURN NEW;
END $body$
$f$, fn, snapshot, on_insert, on_update, capture);
    EXECUTE format('DROP TRIGGER IF EXISTS track ON %s', tbl);
    EXECUTE format('CREATE TRIGGER track BEFORE INSERT OR UPDATE ON %s FOR EACH ROW EXECUTE FUNCTION %s(%s)',
                   tbl, fn, (SELECT string_agg(quote_literal(c), ', ') FROM unnest(cols) AS c));
END $gen$;

-- Starts capturing a CRM table: its capture table, its part of
-- sandbox.cdc_pending, and its tracking trigger compiled again to fill it.
-- `entity` names the entity (NULL: the `object_type` column does, for
-- custom objects, whose jsonb `fields` are compared key by key); `cols` the
-- columns that are record fields. The created and modified stamps are
-- added here.
CREATE FUNCTION sandbox.cdc_capture(tbl regclass, entity text, cols text[]) RETURNS void LANGUAGE plpgsql AS $gen$
DECLARE
    capture  text := format('sandbox.%I', 'cdc_' || replace(tbl::text, '.', '_'));
    ent      text := coalesce(quote_literal(entity), '(c.new).object_type');
    vals      text := '';
    unchanged text := '';
    pending   text;
    tracked   text[];
    col       text;
BEGIN
    FOREACH col IN ARRAY cols LOOP
        vals := vals || format('%L, (c.new).%I, ', col, col);
        unchanged := unchanged || format('CASE WHEN %L = ANY(c.changed) THEN NULL ELSE %L END, ', to_json(col)::text, col);
    END LOOP;
    EXECUTE format('CREATE TABLE %s (id bigint NOT NULL DEFAULT nextval(''sandbox.cdc_change_seq''), '
                   'xid xid8 NOT NULL DEFAULT pg_current_xact_id(), origin text NOT NULL, changed text[], '
                   'old_fields jsonb, new %s NOT NULL)', capture, tbl);
    -- The capture as a change: created (no changed columns), deleted (into
    -- the recycle bin), undeleted or updated, with the fields its event
    -- publishes.
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
CROSS JOIN LATERAL (SELECT CASE WHEN c.changed IS NULL THEN 'CREATE'
                                WHEN '"is_deleted"' = ANY(c.changed) AND (c.new).is_deleted THEN 'DELETE'
                                WHEN '"is_deleted"' = ANY(c.changed) THEN 'UNDELETE'
                                ELSE 'UPDATE' END AS change_type) k$q$,
        ent,
        CASE WHEN entity IS NULL THEN '(c.new).fields || ' ELSE '' END,
        vals,
        CASE WHEN entity IS NULL THEN
            -- Custom data fields compared key by key (a removed key is nulled).
            $u$(SELECT coalesce(jsonb_object_agg(ks.k, (c.new).fields -> ks.k), '{}'::jsonb)
                  FROM (SELECT jsonb_object_keys((c.new).fields) UNION SELECT jsonb_object_keys(coalesce(c.old_fields, (c.new).fields))) ks(k)
                 WHERE (c.new).fields -> ks.k IS DISTINCT FROM coalesce(c.old_fields, (c.new).fields) -> ks.k)
               || jsonb_build_object('modstamp', (c.new).modstamp)
               || CASE WHEN '"last_modified_by"' = ANY(c.changed)
                       THEN jsonb_build_object('last_modified_by', (c.new).last_modified_by) ELSE '{}' END$u$
        ELSE
            -- The changed columns' values (those it names, JSON-quoted) and the modification stamp.
            format($u$jsonb_build_object(%1$s'modstamp', (c.new).modstamp, 'last_modified_by', (c.new).last_modified_by)
                      - array_remove(ARRAY[%2$sCASE WHEN '"last_modified_by"' = ANY(c.changed) THEN NULL ELSE 'last_modified_by' END], NULL)$u$,
                   vals, unchanged)
        END,
        capture);
    INSERT INTO sandbox.cdc_captured VALUES (tbl, entity, cols, capture, pending)
    ON CONFLICT (relation) DO UPDATE SET entity = EXCLUDED.entity, cdc_columns = EXCLUDED.cdc_columns,
        capture_table = EXCLUDED.capture_table, pending_query = EXCLUDED.pending_query;
    EXECUTE 'CREATE OR REPLACE VIEW sandbox.cdc_pending AS '
            || (SELECT string_agg(c.pending_query, E'\nUNION ALL' ORDER BY c.relation::text) FROM sandbox.cdc_captured c);
    -- The tracking trigger, compiled again from the columns it names.
    SELECT (string_to_array(encode(tr.tgargs, 'escape'), '\000'))[1:tr.tgnargs] INTO tracked
      FROM pg_trigger tr WHERE tr.tgrelid = tbl AND tr.tgname = 'track';
    PERFORM sandbox.track_columns(tbl, tracked);
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
