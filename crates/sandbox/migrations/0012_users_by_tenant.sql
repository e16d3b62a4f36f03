-- The sandbox CRM's users by tenant. Every connector start and every
-- `sandbox.ensure_tenant` looks a tenant's users up (its integration user,
-- its admin), and `crm.users` had no index but its primary key: each look
-- read every user of every tenant. At 10,000 connections (20,000 users)
-- `ensure_tenant` took 7.8 ms and the integration-user lookup 4.6 ms, 39,000
-- and 9,400 calls of them in one run of `crmsync bench connections`: the
-- largest PostgreSQL cost of that run's initial sync (issue 29).
CREATE INDEX crm_users_tenant ON crm.users (tenant, email);
CREATE INDEX crm_users_integration ON crm.users (tenant) WHERE is_integration;
