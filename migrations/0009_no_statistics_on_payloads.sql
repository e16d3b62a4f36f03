-- No planner statistics on the columns that only carry payloads.
--
-- While a first sync fills `identities` and `audit_log`, they are analyzed
-- again and again (by autovacuum, and by the tiers themselves: see
-- `crmsync_infra::statistics`). Each ANALYZE samples up to 30,000 rows and,
-- for every column, sorts the sampled values to find the common ones and
-- the histogram bounds. For an identity's state (2.7 kB of JSON, detoasted
-- and compared with the database's collation) that was 70 of the 112 ms an
-- ANALYZE of a 60,000-identity table took. No statement filters, joins or
-- sorts on these columns, so the planner never reads what was computed.
-- A target of 0 keeps them out of the sample's work; the keys and ids the
-- tiers look up by keep their statistics.
ALTER TABLE identities ALTER COLUMN fields SET STATISTICS 0;
ALTER TABLE identities ALTER COLUMN fields_text SET STATISTICS 0;
ALTER TABLE audit_log ALTER COLUMN writes SET STATISTICS 0;
ALTER TABLE audit_log ALTER COLUMN detail SET STATISTICS 0;
ALTER TABLE sync_errors ALTER COLUMN reason SET STATISTICS 0;
ALTER TABLE sync_errors ALTER COLUMN payload SET STATISTICS 0;
