-- The review queue's places, given by the database as each flagged reply's event
-- copy is inserted, whichever version of the service inserts it. Before this,
-- the projector placed its batch's replies itself and, to catch any an instance
-- of an earlier version had applied without a place, looked through every
-- flagged reply each time: a cost that grew with the queue's whole history.
--
-- The trigger raises the counter row, as the projector did: its row lock holds
-- the next placing transaction back until this one ends, so places still grow
-- in commit order. It is deferred to the commit, so the counter is still the
-- last lock a transaction takes, after the same locks in the same order as every
-- other writer, and waiting on it cannot deadlock. Within one transaction,
-- replies are placed in the order they were inserted (ledger order); they become
-- visible together.
--
-- A reply already placed (an instance of the previous version, still running
-- during an upgrade, places its replies itself before it commits) is left as it
-- is.

-- No event copy is inserted while this runs: a reply an earlier version applies
-- meanwhile would otherwise miss both the places given below and the trigger.
LOCK TABLE ledger_event_copy IN SHARE ROW EXCLUSIVE MODE;
SELECT last FROM flagged_reply_counter FOR UPDATE;

CREATE FUNCTION place_flagged_reply() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    place bigint;
BEGIN
    IF EXISTS (SELECT 1 FROM flagged_reply WHERE event_id = NEW.event_id) THEN
        RETURN NULL;
    END IF;
    UPDATE flagged_reply_counter SET last = last + 1 RETURNING last INTO place;
    INSERT INTO flagged_reply (event_id, brand, phone, position)
    VALUES (NEW.event_id, NEW.brand, NEW.phone, place);
    RETURN NULL;
END
$$;

-- Replies an earlier version applied without a place since 0006 get theirs now,
-- in recorded order, after every reply placed so far.
INSERT INTO flagged_reply (event_id, brand, phone, position)
SELECT e.event_id, e.brand, e.phone,
       (SELECT last FROM flagged_reply_counter)
         + row_number() OVER (ORDER BY e.recorded_at, e.event_id)
FROM ledger_event_copy AS e
WHERE e.event_type = 'RevocationCandidateFlagged'
  AND NOT EXISTS (SELECT 1 FROM flagged_reply AS f WHERE f.event_id = e.event_id);
UPDATE flagged_reply_counter
SET last = greatest(last, (SELECT coalesce(max(position), 0) FROM flagged_reply));

CREATE CONSTRAINT TRIGGER ledger_event_copy_place_flagged
AFTER INSERT ON ledger_event_copy
DEFERRABLE INITIALLY DEFERRED
FOR EACH ROW WHEN (NEW.event_type = 'RevocationCandidateFlagged')
EXECUTE FUNCTION place_flagged_reply();
