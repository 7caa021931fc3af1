-- consent-ledger: no transaction
-- A brand's subscriber events by partition and offset: the change stream
-- (WatchConsentChanges) reads, per partition, the events of one brand after the
-- offset its resume token names, and no other index finds them without reading
-- the brand's whole history. Built concurrently for the reason 0005 gives.
DROP INDEX CONCURRENTLY IF EXISTS ledger_event_copy_changes;
CREATE INDEX CONCURRENTLY ledger_event_copy_changes
    ON ledger_event_copy (brand, partition, "offset")
    WHERE stream = 'subscribers';
