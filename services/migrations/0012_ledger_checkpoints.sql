-- The signed checkpoints of the ledger's hash chain (services/checkpoints.py) for the
-- embedded default, whose ledger is a table here: what the checkpoint topic holds
-- under Kafka (where this table is a copy, to find the checkpoints of an event). Like the ledger's own table, nothing here can be rebuilt, so rows are
-- only ever added (triggers refuse UPDATE, DELETE and TRUNCATE, as for the ledger).
-- Safe to run again from the top, like every migration after 0006.
CREATE TABLE IF NOT EXISTS ledger_checkpoints (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream      text    NOT NULL,
    partition   integer NOT NULL,
    end_offset  bigint  NOT NULL,
    key_id      text    NOT NULL,
    -- The checkpoint as published: the JSON object a checkpoint record carries.
    checkpoint  text    NOT NULL
);

CREATE INDEX IF NOT EXISTS ledger_checkpoints_latest
    ON ledger_checkpoints (key_id, stream, partition, end_offset);
-- Which checkpoints cover an event (a proof packet's question): under Kafka too, the
-- writer keeps a copy of each checkpoint here as this index.
CREATE INDEX IF NOT EXISTS ledger_checkpoints_covering
    ON ledger_checkpoints (stream, partition, end_offset);

CREATE OR REPLACE FUNCTION ledger_checkpoints_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger_checkpoints is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE OR REPLACE TRIGGER ledger_checkpoints_no_update_or_delete
    BEFORE UPDATE OR DELETE ON ledger_checkpoints
    FOR EACH ROW EXECUTE FUNCTION ledger_checkpoints_refuse_change();

CREATE OR REPLACE TRIGGER ledger_checkpoints_no_truncate
    BEFORE TRUNCATE ON ledger_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_checkpoints_refuse_change();
