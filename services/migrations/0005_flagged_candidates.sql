-- consent-ledger: no transaction
-- The numbers with a reply flagged as a possible opt-out, per brand: the review
-- queue (ListRevocationCandidates) starts from them, reading only flagged events
-- rather than a brand's every event. A partial index, so only the rare flagged
-- events pay for it. Built concurrently: on a large ledger_event_copy a plain
-- CREATE INDEX would stop the projector's inserts (and so fail reads closed) for
-- as long as the build takes. A build that failed half-way leaves an invalid
-- index, hence the drop first.
DROP INDEX CONCURRENTLY IF EXISTS ledger_event_copy_flagged;
CREATE INDEX CONCURRENTLY ledger_event_copy_flagged ON ledger_event_copy (brand, phone)
    WHERE event_type = 'RevocationCandidateFlagged';
