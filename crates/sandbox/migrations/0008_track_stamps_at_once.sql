-- Change tracking builds a write's field stamps in one step.
--
-- The functions 0006 compiles added each changed column's stamp with its own
-- `stamp || jsonb_build_object(col, mark)`, so a write that changes n columns
-- rebuilt the row's whole stamp object n times. An update of nine columns
-- of 30,000 leads spent 0.8 to 1.0 s in the trigger; collecting the changed
-- columns' keys and parsing their stamps as one object spent 0.46 s, for
-- the same stamps. The outcome is unchanged: a column gets a fresh
-- {"at", "by"} stamp when an insert gives it a value or an update changes
-- it; the row gets its modstamp and transaction id.
--
-- `sandbox.track_columns` now also names the columns in the trigger's
-- arguments (which the generated function ignores), so a later
-- recompilation can read them from `pg_trigger`, as 0006 read the generic
-- trigger's. The triggers 0006 compiled have no arguments; their columns are
-- read back from the `IF NEW.<col> IS DISTINCT FROM` tests of their bodies.

CREATE OR REPLACE FUNCTION sandbox.track_columns(tbl regclass, cols text[]) RETURNS void LANGUAGE plpgsql AS $gen$
DECLARE
    fn        text := format('sandbox.%I', 'track_' || replace(tbl::text, '.', '_'));
    on_insert text := '';
    on_update text := '';
    col       text;
BEGIN
    FOREACH col IN ARRAY cols LOOP
        -- The column's key as JSON text, quoted as a SQL literal.
        on_insert := on_insert || format(E'\n        IF NEW.%I IS NOT NULL THEN changed := changed || %L::text; END IF;', col, to_json(col)::text);
        on_update := on_update || format(E'\n        IF NEW.%1$I IS DISTINCT FROM OLD.%1$I THEN changed := changed || %2$L::text; END IF;', col, to_json(col)::text);
    END LOOP;
    EXECUTE format($f$
CREATE OR REPLACE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql AS $body$
DECLARE
    ts      timestamptz := clock_timestamp();
    -- One stamp as JSON text; the changed columns' keys are joined around it.
    mark    text := jsonb_build_object('at', ts, 'by', NEW.last_modified_by)::text;
    changed text[] := '{}';
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
    NEW.mod_xid := pg_current_xact_id();
    RETURN NEW;
END $body$
$f$, fn, on_insert, on_update);
    EXECUTE format('DROP TRIGGER IF EXISTS track ON %s', tbl);
    EXECUTE format('CREATE TRIGGER track BEFORE INSERT OR UPDATE ON %s FOR EACH ROW EXECUTE FUNCTION %s(%s)',
                   tbl, fn, (SELECT string_agg(quote_literal(c), ', ') FROM unnest(cols) AS c));
END $gen$;

DO $$
DECLARE
    t    record;
    cols text[];
BEGIN
    FOR t IN
        SELECT tr.tgrelid::regclass AS tbl, tr.tgnargs, tr.tgargs, p.prosrc
        FROM pg_trigger tr JOIN pg_proc p ON p.oid = tr.tgfoid
        WHERE tr.tgname = 'track' AND tr.tgfoid <> 'sandbox.track_change'::regproc
    LOOP
        IF t.tgnargs > 0 THEN
            -- tgargs holds the arguments NUL-separated, with a trailing NUL.
            cols := (string_to_array(encode(t.tgargs, 'escape'), '\000'))[1:t.tgnargs];
        ELSE
            -- Written by format('%I'): plain names bare, others double-quoted.
            SELECT array_agg(CASE WHEN m[1] LIKE '"%' THEN replace(substr(m[1], 2, length(m[1]) - 2), '""', '"') ELSE m[1] END
                             ORDER BY n)
            INTO cols
            FROM regexp_matches(t.prosrc, 'IF NEW\.("(?:[^"]|"")+"|[^ ]+) IS DISTINCT FROM OLD\.', 'g') WITH ORDINALITY AS r(m, n);
        END IF;
        PERFORM sandbox.track_columns(t.tbl, cols);
    END LOOP;
END $$;
