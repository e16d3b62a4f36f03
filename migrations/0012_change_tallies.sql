-- Running counts of finished changes, kept as audit entries are inserted,
-- so the figures read from them cost a few rows.
--
-- The batch lane's backlog was the producers' published count less
-- `count(DISTINCT change_id)` over every batch-lane entry the audit log ever
-- held, and the budget's use a count of the last hour's entries. Every
-- applier replica computed both every five seconds for its metrics: at
-- 321,000 entries, 125 ms and 57 ms of PostgreSQL's CPU each time, growing
-- with the log forever. The progress probe (the demo's and the benchmarks'
-- wait until the pipeline is idle) counted the whole log the same way.
--
-- One row per connection, lane, minute and backend: a transaction is one
-- backend's, so concurrent writers never wait on one another's row lock.
-- Minutes older than two hours are folded into the '-infinity' row of
-- backend 0 (`crmsync_store::audit::fold_tallies`), so the table stays small.
CREATE TABLE change_tallies (
    -- No foreign key, as for the audit log (0010): every write would lock
    -- the connection's row FOR KEY SHARE. The trigger below deletes them.
    connection_id  text NOT NULL,
    lane           text NOT NULL,
    minute         timestamptz NOT NULL,
    backend        integer NOT NULL,
    -- Changes whose first audit entry this was (a change redelivered to
    -- another stage is counted once, as `count(DISTINCT change_id)` did).
    finished       bigint NOT NULL DEFAULT 0,
    -- Entries of the apply stage: what the batch budget was spent on.
    applied        bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (connection_id, lane, minute, backend)
);

-- A trigger, not the inserting statement, keeps the tallies: the previous
-- release's replicas, still writing entries during a rolling update, are
-- counted too. One statement's entries are added at once, from its
-- transition table. A change counts as finished at its first entry: the
-- lateral probe (one `audit_log_once` lookup per entry; the `LIMIT` keeps it
-- from being flattened into a join) looks for the change's entry at another
-- stage (a stage has one entry per change).
CREATE FUNCTION tally_audit_entries() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO change_tallies AS t (connection_id, lane, minute, backend, finished, applied)
    SELECT n.connection_id, n.lane, date_trunc('minute', now()), pg_backend_pid(),
           count(*) FILTER (WHERE other.one IS NULL), count(*) FILTER (WHERE n.stage = 'apply')
    FROM new_entries n
    LEFT JOIN LATERAL (SELECT 1 AS one FROM audit_log a
                       WHERE a.connection_id = n.connection_id AND a.change_id = n.change_id AND a.stage <> n.stage LIMIT 1) other ON true
    GROUP BY n.connection_id, n.lane
    ORDER BY n.connection_id, n.lane
    ON CONFLICT (connection_id, lane, minute, backend)
    DO UPDATE SET finished = t.finished + excluded.finished, applied = t.applied + excluded.applied;
    RETURN NULL;
END $$;

-- Created before the counting below: its lock waits for the inserts under
-- way, and holds off new ones until this migration commits, so no entry is
-- counted twice or missed.
CREATE TRIGGER tally AFTER INSERT ON audit_log
    REFERENCING NEW TABLE AS new_entries
    FOR EACH STATEMENT EXECUTE FUNCTION tally_audit_entries();

-- What the log already holds: every change once, at its first entry, and
-- the last two hours' apply entries in their minutes.
INSERT INTO change_tallies (connection_id, lane, minute, backend, finished, applied)
SELECT connection_id, lane, '-infinity', 0, count(*), 0
FROM (SELECT DISTINCT ON (connection_id, change_id) connection_id, lane FROM audit_log ORDER BY connection_id, change_id, id) first
GROUP BY connection_id, lane;

INSERT INTO change_tallies (connection_id, lane, minute, backend, finished, applied)
SELECT connection_id, lane, date_trunc('minute', at), 0, 0, count(*)
FROM audit_log
WHERE stage = 'apply' AND at >= now() - interval '2 hours'
GROUP BY connection_id, lane, date_trunc('minute', at);

-- Deleting a connection takes its tallies with its audit log.
CREATE OR REPLACE FUNCTION delete_connection_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM identities WHERE connection_id = OLD.id;
    DELETE FROM audit_log WHERE connection_id = OLD.id;
    DELETE FROM change_tallies WHERE connection_id = OLD.id;
    RETURN OLD;
END $$;
