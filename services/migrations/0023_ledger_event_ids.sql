-- consent-ledger: no transaction
-- Each event stored once in the local ledger. An append acknowledged late (an
-- import's, a client's) is tried again with the same event ids, and the recorder's
-- primary key on (originator_id, originator_version) let it store them again at new
-- offsets. PostgresLedger now writes each event's id beside it, and this unique
-- index refuses a second row with one; the writer then finds the rows held and
-- answers with them, inserting only the rest (services/adapters/postgres_ledger.py).
--
-- Rows written before keep no id (NULL, which a unique index lets repeat): the
-- table is append-only, and a database that already holds a repeated event must
-- still start. Readers skip such repeats by the id in the envelope, as before.
-- Built concurrently for the reason 0005 gives: appends go on meanwhile.
ALTER TABLE ledger_stored_events ADD COLUMN IF NOT EXISTS event_id uuid;
DROP INDEX CONCURRENTLY IF EXISTS ledger_stored_events_event_id_idx;
CREATE UNIQUE INDEX CONCURRENTLY ledger_stored_events_event_id_idx
    ON ledger_stored_events (event_id);
