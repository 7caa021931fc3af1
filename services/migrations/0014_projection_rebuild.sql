-- A rebuild under way (`consent-ledger rebuild`, PostgresConsentView.begin_rebuild):
-- the row is inserted in the transaction that empties the projections and deleted
-- once the rebuild has caught up with the ledger. A rebuild that finds the row was
-- interrupted (a signal, a lost connection, a killed pod) and resumes from the
-- positions the view stored with its rows, instead of emptying the view again.
-- Not a projection table: a rebuild's own truncation leaves it alone.
-- Safe to run again from the top, like every migration after 0006.
CREATE TABLE IF NOT EXISTS projection_rebuild (
    only_row   boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    started_at timestamptz NOT NULL
);
