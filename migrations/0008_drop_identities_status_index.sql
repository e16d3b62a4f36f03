-- `identities_status` (connection_id, status) served only the CLI's status
-- and report counts, which read every identity of a connection anyway. On
-- the hot path it did harm: every new identity paid an entry in it, and
-- while a first sync fills the table, the planner (with no statistics, or
-- statistics from when the table was small) took it as the cheap way to
-- find a connection's rows, so the identity lookups of a 30,000-pair
-- backfill read 1.45 million index entries through it in 227 scans instead
-- of probing the prospect, CRM id and email indexes by key. Without it the
-- only indexes on `identities` are the ones the tiers look up by.
DROP INDEX IF EXISTS identities_status;
