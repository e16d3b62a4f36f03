-- Pausing a connection (issue 28): while `paused_at` is set, the producer
-- publishes nothing for it and moves none of its cursors, and the matcher
-- and applier write nothing to its systems (they hold its messages back;
-- see `crmsync_infra::worker`). A column rather than a settings key: it is
-- the engine's running state, not configuration, so no settings change
-- saved from an older read can switch it back, and every tier reads it in
-- the same statement as the settings.
--
-- Additive: a replica of the previous release ignores the columns.
ALTER TABLE connections
    ADD COLUMN paused_at timestamptz,
    ADD COLUMN paused_by text;
