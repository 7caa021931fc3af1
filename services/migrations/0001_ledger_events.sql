-- The local ledger (PostgresLedger): the append-only log of facts for the embedded
-- default, when there is no Kafka. Unlike every later migration's tables, nothing
-- here can be rebuilt: this table is the source of truth.
--
-- One partition per stream (partition is always 0), so a stream is one sequence.
-- Offsets are assigned by PostgresLedger.append under a per-stream advisory lock
-- held to the end of its transaction: they start at 0 and have no gaps, and a
-- stream's rows become visible in offset order.
CREATE TABLE ledger_events (
    stream      text        NOT NULL CHECK (stream IN ('subscribers', 'campaigns')),
    partition   integer     NOT NULL CHECK (partition = 0),
    "offset"    bigint      NOT NULL CHECK ("offset" >= 0),
    event_id    uuid        NOT NULL,
    event_type  text        NOT NULL,
    -- The services.wire.codec envelope: the same bytes a Kafka record carries.
    payload     bytea       NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, partition, "offset")
);

COMMENT ON TABLE ledger_events IS
    'Append-only ledger of consent facts; UPDATE, DELETE and TRUNCATE raise.';

-- Append-only is enforced by triggers, not by REVOKE: the embedded default connects
-- as the table's owner (a superuser in tests and on a laptop), and superusers
-- ignore privileges entirely. The triggers hold for every role; getting past them
-- takes a deliberate ALTER TABLE ... DISABLE TRIGGER by the owner. The error code
-- is the one a REVOKE would give, so callers see one failure either way.
CREATE FUNCTION ledger_events_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger_events is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'Facts are corrected by appending new facts, never by editing old ones.';
END;
$$;

CREATE TRIGGER ledger_events_no_update_or_delete
    BEFORE UPDATE OR DELETE ON ledger_events
    FOR EACH ROW EXECUTE FUNCTION ledger_events_refuse_change();

CREATE TRIGGER ledger_events_no_truncate
    BEFORE TRUNCATE ON ledger_events
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_events_refuse_change();
