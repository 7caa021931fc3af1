-- The keyword rules every stored text was last read again under (services.bootstrap,
-- ledger.reread). A text is recorded with the reading it got when it came, and a
-- later fix of the rules (a STOP in look-alike letters) leaves a disguised STOP
-- recorded as a conversation: serve reads the stored texts again once the rules
-- differ from those named here, holds for review each that reads as stopping now,
-- and names the new rules. Not a projection table: a rebuild leaves it, as the
-- holds it led to are in the ledger.
CREATE TABLE IF NOT EXISTS texts_read_under (
    only_row boolean     PRIMARY KEY DEFAULT true CHECK (only_row),
    rules    text        NOT NULL,
    read_at  timestamptz NOT NULL DEFAULT now()
);
