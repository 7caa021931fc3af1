-- A number that changes whenever the projections are emptied for a rebuild.
--
-- Readers that keep a copy of the view in memory (services.adapters.digest_replica)
-- follow it by the positions it has applied, reading only what changed since. A
-- rebuild (PostgresConsentView.reset) truncates every projection table and folds
-- the ledger again, and the positions alone cannot always tell: they may have
-- grown past the copy's again by the time it looks. The epoch can: reset bumps it
-- in the transaction that truncates, and a reader that sees it change loads the
-- view afresh. This table is not a projection table: rebuilds never empty it.
CREATE TABLE projection_epoch (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    epoch    bigint  NOT NULL
);

INSERT INTO projection_epoch (epoch) VALUES (0);
