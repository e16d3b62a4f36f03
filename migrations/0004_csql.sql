-- CSQLs synced to the CRM (R9): which CRM record each CSQL became, and the
-- last user edit of the CSQL the sync has seen (so the engine's own status
-- write-backs on the CSQL are not taken for edits).
CREATE TABLE csql_links (
    connection_id    text NOT NULL REFERENCES connections(id) ON DELETE CASCADE,
    record_type      text NOT NULL CHECK (record_type IN ('lead', 'opportunity')),
    cs_id            bigint NOT NULL,
    crm_object       text,
    crm_id           text,
    -- synced, refused (not permitted), rejected (the CRM refused the write)
    outcome          text NOT NULL,
    -- Why it was refused or rejected, as reported on the CSQL.
    error            text,
    seen_edit_at     timestamptz,
    fence            bigint NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (connection_id, record_type, cs_id)
);
CREATE UNIQUE INDEX csql_links_crm ON csql_links (connection_id, crm_id) WHERE crm_id IS NOT NULL;
