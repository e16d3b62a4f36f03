-- The MA integration user is the MA user of the CRM integration user.
--
-- In Account Engagement a Salesforce user reaches the API as the MA user
-- synced to it (`salesforceId`), and every write is that user's. crmsync logs
-- in as its CRM integration user, so over HTTP its writes are attributed to
-- the MA user tied to that CRM user; linking the two integration users lets a
-- client learn, from the users list, which MA user its own writes carry (I7).
-- The admins were already linked (0001); tenants made from now on link both.

CREATE OR REPLACE FUNCTION sandbox.ensure_tenant(t text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    crm_admin       text;
    crm_integration text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM crm.users WHERE tenant = t AND is_integration) THEN
        INSERT INTO crm.users (tenant, name, email, is_integration) VALUES (t, 'crmsync Integration', 'integration@' || t || '.crm.invalid', true);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM crm.users WHERE tenant = t AND email = 'admin@' || t || '.crm.invalid') THEN
        INSERT INTO crm.users (tenant, name, email) VALUES (t, 'Sandbox Admin', 'admin@' || t || '.crm.invalid');
    END IF;
    SELECT id INTO crm_admin FROM crm.users WHERE tenant = t AND email = 'admin@' || t || '.crm.invalid';
    SELECT id INTO crm_integration FROM crm.users WHERE tenant = t AND is_integration ORDER BY created_at LIMIT 1;
    IF NOT EXISTS (SELECT 1 FROM ma.users WHERE tenant = t AND is_integration) THEN
        INSERT INTO ma.users (tenant, email, first_name, last_name, is_integration, crm_user_id)
        VALUES (t, 'integration@' || t || '.ma.invalid', 'crmsync', 'Integration', true, crm_integration);
    END IF;
    UPDATE ma.users SET crm_user_id = crm_integration WHERE tenant = t AND is_integration AND crm_user_id IS NULL;
    IF NOT EXISTS (SELECT 1 FROM ma.users WHERE tenant = t AND lower(email) = 'admin@' || t || '.ma.invalid') THEN
        INSERT INTO ma.users (tenant, email, first_name, last_name, crm_user_id)
        VALUES (t, 'admin@' || t || '.ma.invalid', 'Sandbox', 'Admin', crm_admin);
    END IF;
END $$;

-- Tenants made before this migration.
UPDATE ma.users m SET crm_user_id = c.id
  FROM crm.users c
 WHERE m.is_integration AND m.crm_user_id IS NULL
   AND c.tenant = m.tenant AND c.is_integration
   AND c.created_at = (SELECT min(created_at) FROM crm.users WHERE tenant = m.tenant AND is_integration);
