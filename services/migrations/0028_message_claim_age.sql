-- When each send claimed its message id, by the database's clock: a claim older than
-- the longest an append may take, whose send the view (caught up with the ledger)
-- does not hold, named a send never written, and another send of the message takes
-- it over (PostgresConsentView.take_over_message_claims). Claims made before this
-- column read as made now, so none is taken over sooner than a new one would be.
-- Safe to run again from the top.
ALTER TABLE message_claim ADD COLUMN IF NOT EXISTS claimed_at timestamptz NOT NULL DEFAULT now();
