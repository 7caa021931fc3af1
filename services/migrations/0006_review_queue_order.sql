-- The review queue's order (ListRevocationCandidates): each flagged reply gets a
-- position as the view applies it. The queue had been ordered by recorded time,
-- and a reply from a partition the projector applied late could land before a
-- page a reviewer had already read, and be skipped by the next page.
--
-- Positions come from one counter row, raised in the transaction that applies
-- the reply: its row lock holds the next writer back until that transaction
-- ends, so positions grow in commit order and a reader that has seen position n
-- finds every reply committed since above n. A rebuild empties flagged_reply but
-- keeps the counter, so positions never go back.
CREATE TABLE flagged_reply (
    event_id uuid   PRIMARY KEY,
    brand    text   NOT NULL,
    phone    text   NOT NULL,
    position bigint NOT NULL UNIQUE
);
CREATE INDEX flagged_reply_brand ON flagged_reply (brand, position);

CREATE TABLE flagged_reply_counter (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    last     bigint  NOT NULL
);

-- Replies flagged before this migration keep the order they had: recorded time.
INSERT INTO flagged_reply (event_id, brand, phone, position)
SELECT event_id, brand, phone, row_number() OVER (ORDER BY recorded_at, event_id)
FROM ledger_event_copy
WHERE event_type = 'RevocationCandidateFlagged';

INSERT INTO flagged_reply_counter (last) SELECT count(*) FROM flagged_reply;
