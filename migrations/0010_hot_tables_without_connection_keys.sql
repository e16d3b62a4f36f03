-- `identities` and `audit_log` no longer carry a foreign key to
-- `connections`; a trigger keeps what its ON DELETE CASCADE did.
--
-- A foreign key is checked for every inserted row: PostgreSQL looks the
-- connection up and locks its one row FOR KEY SHARE. A first sync inserts
-- an identity and an audit entry for every person, from a dozen
-- transactions at once, all against the same row. In a 200,000-pair
-- backfill (2 replicas per tier, pg_stat_statements, the same 200,000 rows
-- inserted each way) the checks were 4 buffer hits a row and 2.5 s of
-- the identity inserts' 10.5 s of execution, 1.4 s of the audit inserts'
-- 5.2 s; in interleaved runs the
-- backfill spent 100 to 104 instead of 107 to 112 PostgreSQL CPU ms per
-- 1,000 records without them.
--
-- What the key guarded still holds: the tiers write these rows only for
-- a connection whose settings they have just loaded (a message for an
-- unknown connection fails before it writes anything), and no connection
-- is deleted while its tiers run. The quieter tables (`feeds`,
-- `sync_errors`, `mirror_outbox`, `csql_links`) keep their keys.
ALTER TABLE identities DROP CONSTRAINT IF EXISTS identities_connection_id_fkey;
ALTER TABLE audit_log DROP CONSTRAINT IF EXISTS audit_log_connection_id_fkey;

-- Deleting a connection still takes its identities and audit log with it.
CREATE FUNCTION delete_connection_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM identities WHERE connection_id = OLD.id;
    DELETE FROM audit_log WHERE connection_id = OLD.id;
    RETURN OLD;
END $$;

CREATE TRIGGER delete_rows AFTER DELETE ON connections
    FOR EACH ROW EXECUTE FUNCTION delete_connection_rows();
