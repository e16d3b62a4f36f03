-- A custom field on prospects, leads and contacts (`Preferred_Language__c`),
-- as real orgs and business units have dozens: what an admin maps when
-- adding a field mapping (issue 28), listed from the sandbox's schema like
-- Salesforce's describe or Account Engagement's custom fields. Unmapped by
-- default, so nothing syncs it until someone maps it.
--
-- Additive only: a column added at the end of each table (the CRM tables'
-- capture tables hold their row type, which admits an added column), and
-- each table's tracking trigger compiled again from its own column list
-- plus the new column, so that its edits get per-field stamps like the rest.

ALTER TABLE ma.prospects ADD COLUMN preferred_language text;
ALTER TABLE crm.leads ADD COLUMN preferred_language text;
ALTER TABLE crm.contacts ADD COLUMN preferred_language text;

DO $$
DECLARE
    t    regclass;
    cols text[];
BEGIN
    FOREACH t IN ARRAY ARRAY['ma.prospects', 'crm.leads', 'crm.contacts']::regclass[] LOOP
        SELECT (string_to_array(encode(tr.tgargs, 'escape'), '\000'))[1:tr.tgnargs] INTO cols
          FROM pg_trigger tr WHERE tr.tgrelid = t AND tr.tgname = 'track';
        PERFORM sandbox.track_columns(t, cols || ARRAY['preferred_language']);
    END LOOP;
END $$;
