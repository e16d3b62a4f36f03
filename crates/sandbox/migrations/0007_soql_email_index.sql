-- SOQL compares text fields without regard to case, and the sandbox's SOQL
-- server writes `Email IN (...)` as `lower(t.email) IN (lower($2), ...)`.
-- The email indexes of 0001 are on `lower(btrim(email))` (the direct
-- lookups' form), which that condition cannot use: every SOQL email match,
-- the matcher's lookup of a new record's counterpart over HTTP, read the
-- whole table (6.7 ms at 10,000 leads). A real org indexes Email.

CREATE INDEX IF NOT EXISTS crm_leads_email_ci ON crm.leads (tenant, lower(email));
CREATE INDEX IF NOT EXISTS crm_contacts_email_ci ON crm.contacts (tenant, lower(email));
