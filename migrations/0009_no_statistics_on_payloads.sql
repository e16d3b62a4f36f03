-- No planner statistics on the columns that only carry payloads.
--
-- While a first sync fills `identities` and `audit_log`, they are analyzed
-- again and again (by autovacuum, and by the tiers themselves: see
-- `crmsync_infra::statistics`). Each ANALYZE samples up to 30,000 rows and,
-- for every column, sorts the sampled values to find the common ones and
-- the histogram bounds: for a 2.7 kB identity state or an audit entry's
-- write list, detoasting and comparing whole documents. No statement
-- filters, joins or sorts on these columns, so the planner never reads what
-- was computed. Measured on a 60,000-pair backfill's tables: ANALYZE of
-- `identities` took 134 ms, 97 ms without them; of `audit_log` 190 ms, 58.
-- The keys and ids the tiers look up by keep their statistics.
ALTER TABLE identities ALTER COLUMN fields SET STATISTICS 0;
ALTER TABLE identities ALTER COLUMN fields_text SET STATISTICS 0;
ALTER TABLE audit_log ALTER COLUMN writes SET STATISTICS 0;
ALTER TABLE audit_log ALTER COLUMN detail SET STATISTICS 0;
ALTER TABLE sync_errors ALTER COLUMN reason SET STATISTICS 0;
ALTER TABLE sync_errors ALTER COLUMN payload SET STATISTICS 0;
