-- The numbers with a reply flagged as a possible opt-out, per brand: the review
-- queue (ListRevocationCandidates) starts from them. A partial index, so only the
-- rare flagged events pay for it, and the queue never scans a brand's every event.
CREATE INDEX ledger_event_copy_flagged ON ledger_event_copy (brand, phone)
    WHERE event_type = 'RevocationCandidateFlagged';
