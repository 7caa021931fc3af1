-- The local ledger (PostgresLedger) moves into the table of the eventsourcing
-- library's PostgreSQL application recorder, which now appends to it. The columns,
-- the primary key and the notification-id index are the library's own
-- (PostgresApplicationRecorder with originator_id_type "text"), so its
-- create_table() finds them in place; recorded_at is ours: the ledger's clock,
-- which a Kafka record carries as its LogAppendTime. Nothing here can be rebuilt:
-- this table is the source of truth. Safe to run again from the top, like every
-- migration after 0006.
--
-- originator_id names a stream's one partition ('subscribers:0', 'campaigns:0')
-- and originator_version is the event's offset in it: the primary key refuses two
-- events at one offset, and PostgresLedger numbers each append from the stream's
-- end, so offsets start at 0 and have no gaps. notification_id is the library's
-- application sequence over both streams, in commit order (its inserts lock the
-- table). state is the services.wire.codec envelope: the same bytes a Kafka record
-- carries. topic is the library's name of the event's class (module:name).
CREATE TABLE IF NOT EXISTS ledger_stored_events (
    originator_id      text   NOT NULL,
    originator_version bigint NOT NULL,
    topic              text,
    state              bytea,
    notification_id    bigserial,
    PRIMARY KEY (originator_id, originator_version)
);
ALTER TABLE ledger_stored_events
    ADD COLUMN IF NOT EXISTS recorded_at timestamptz NOT NULL DEFAULT clock_timestamp();
CREATE UNIQUE INDEX IF NOT EXISTS ledger_stored_events_notification_id_idx
    ON ledger_stored_events (notification_id ASC);

COMMENT ON TABLE ledger_stored_events IS
    'Append-only ledger of consent facts; UPDATE, DELETE and TRUNCATE raise.';

-- Append-only, by triggers for the reason 0001 gives (the owner is a superuser on
-- a laptop, and superusers ignore privileges).
CREATE OR REPLACE FUNCTION ledger_stored_events_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger_stored_events is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Facts are corrected by appending new facts, never by editing old ones.';
END;
$$;

DROP TRIGGER IF EXISTS ledger_stored_events_no_update_or_delete ON ledger_stored_events;
CREATE TRIGGER ledger_stored_events_no_update_or_delete
    BEFORE UPDATE OR DELETE ON ledger_stored_events
    FOR EACH ROW EXECUTE FUNCTION ledger_stored_events_refuse_change();

DROP TRIGGER IF EXISTS ledger_stored_events_no_truncate ON ledger_stored_events;
CREATE TRIGGER ledger_stored_events_no_truncate
    BEFORE TRUNCATE ON ledger_stored_events
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_stored_events_refuse_change();

-- The facts an older version recorded in ledger_events (0001), at the same offsets
-- with the same bytes and times; then that table goes, in this same transaction,
-- so the facts are in exactly one place. Its rows were stamped in offset order
-- along each stream, so ordering by time keeps each stream's order in the
-- notification ids too.
DO $$
BEGIN
    IF to_regclass('ledger_events') IS NOT NULL THEN
        INSERT INTO ledger_stored_events
            (originator_id, originator_version, topic, state, recorded_at)
        SELECT stream || ':' || partition, "offset", 'ledger.events:' || event_type,
               payload, recorded_at
        FROM ledger_events
        ORDER BY recorded_at, stream, "offset";
        DROP TABLE ledger_events;
        DROP FUNCTION IF EXISTS ledger_events_refuse_change();
    END IF;
END;
$$;
