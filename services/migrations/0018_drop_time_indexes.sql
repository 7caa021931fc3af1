-- consent-ledger: no transaction
-- Two indexes of ledger_event_copy that no query reads: every read of a time window
-- names the brand too (the opt-out rate reads ledger_event_copy_brand and _campaign),
-- and the review queue finds its replies' times by event id. Each event copy paid
-- for two more index entries (4-7 % of its insert, bench/HISTORY.md) and their disk.
-- Dropped concurrently, so the projector's inserts do not wait on the drop.
DROP INDEX CONCURRENTLY IF EXISTS ledger_event_copy_occurred;
DROP INDEX CONCURRENTLY IF EXISTS ledger_event_copy_recorded;
