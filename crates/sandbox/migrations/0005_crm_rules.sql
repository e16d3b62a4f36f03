-- Validation rules and duplicate rules of the sandbox CRM, as an admin sets
-- them up in Sales Cloud. They make the CRM refuse writes the way a real org
-- does (FIELD_CUSTOM_VALIDATION_EXCEPTION, DUPLICATES_DETECTED), so the
-- engine's handling of target rejections can be exercised end to end.
--
-- Additive only: older sandbox builds ignore these tables.

-- A record is refused when the value of `field` (a column of the object's
-- table, blank read as '') does not match the POSIX regular expression
-- `must_match`.
CREATE TABLE crm.validation_rules (
    tenant      text NOT NULL,
    object      text NOT NULL CHECK (object IN ('lead', 'contact')),
    name        text NOT NULL,
    field       text NOT NULL,
    must_match  text NOT NULL,
    message     text NOT NULL,
    active      boolean NOT NULL DEFAULT true,
    PRIMARY KEY (tenant, object, name)
);

-- A record is blocked when another live record of the object has the same
-- (case-insensitive, non-blank) value in `field`.
CREATE TABLE crm.duplicate_rules (
    tenant  text NOT NULL,
    object  text NOT NULL CHECK (object IN ('lead', 'contact')),
    name    text NOT NULL,
    field   text NOT NULL,
    active  boolean NOT NULL DEFAULT true,
    PRIMARY KEY (tenant, object, name)
);
