-- How far the stored texts have been read again under each keyword rules (per partition
-- of the subscriber stream: the next record to read). During a rolling upgrade an
-- instance still on older rules may record a disguised STOP as a conversation after
-- the new rules' reading went past its place: serve reads on from here at every start
-- and every minute, so no text goes unread under the current rules. Not a projection
-- table: a rebuild leaves it, as the holds it led to are in the ledger.
CREATE TABLE IF NOT EXISTS texts_read_to (
    rules       text    NOT NULL,
    partition   integer NOT NULL CHECK (partition >= 0),
    next_offset bigint  NOT NULL CHECK (next_offset >= 0),
    PRIMARY KEY (rules, partition)
);
