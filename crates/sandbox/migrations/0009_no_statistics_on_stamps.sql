-- No planner statistics on the per-field stamps and free-form fields.
--
-- Autovacuum analyzes a sandbox table after every tenth of its rows has
-- changed, so a backfill that writes every lead and prospect analyzes them
-- about ten times over. Sorting 30,000 sampled stamp objects was 144 of the
-- 316 ms an ANALYZE of 60,000 leads took, for statistics no statement
-- reads: the sandbox only ever looks stamps up by row.
ALTER TABLE ma.prospects ALTER COLUMN field_stamps SET STATISTICS 0;
ALTER TABLE ma.prospect_accounts ALTER COLUMN field_stamps SET STATISTICS 0;
ALTER TABLE ma.opportunities ALTER COLUMN field_stamps SET STATISTICS 0;
ALTER TABLE ma.custom_object_records ALTER COLUMN fields SET STATISTICS 0;
ALTER TABLE ma.custom_object_records ALTER COLUMN field_stamps SET STATISTICS 0;
ALTER TABLE crm.accounts ALTER COLUMN field_stamps SET STATISTICS 0;
ALTER TABLE crm.leads ALTER COLUMN field_stamps SET STATISTICS 0;
ALTER TABLE crm.contacts ALTER COLUMN field_stamps SET STATISTICS 0;
ALTER TABLE crm.opportunities ALTER COLUMN field_stamps SET STATISTICS 0;
ALTER TABLE crm.opportunity_contact_roles ALTER COLUMN field_stamps SET STATISTICS 0;
ALTER TABLE crm.custom_records ALTER COLUMN fields SET STATISTICS 0;
ALTER TABLE crm.custom_records ALTER COLUMN field_stamps SET STATISTICS 0;
ALTER TABLE cs.lead_records ALTER COLUMN field_stamps SET STATISTICS 0;
ALTER TABLE cs.opportunity_records ALTER COLUMN field_stamps SET STATISTICS 0;
