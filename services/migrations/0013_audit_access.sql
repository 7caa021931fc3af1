-- Accountable access: one row per audit read (who, through what, which read, of which
-- brand, number and campaign, the request id, when), written before the read is
-- answered (services/usecases/access.py). Rows are only ever added: triggers refuse
-- UPDATE, DELETE and TRUNCATE, as for ledger_checkpoints, so a reader cannot wipe the
-- trace of what it read. Not on the ledger: an access is no fact about consent, and
-- neither the fold nor the streaming consumers should see it; listing by brand, number
-- and time needs the indexes a topic lacks.
-- Safe to run again from the top, like every migration after 0006.
CREATE TABLE IF NOT EXISTS audit_access (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL,
    subject     text NOT NULL,
    via         text NOT NULL,
    action      text NOT NULL,
    -- NULL: a read across every brand (an operator's token).
    brand       text,
    phone       text,
    campaign    text,
    request_id  text NOT NULL,
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb,
    written_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS audit_access_by_brand ON audit_access (brand, id);
CREATE INDEX IF NOT EXISTS audit_access_by_phone ON audit_access (phone, id);

CREATE OR REPLACE FUNCTION audit_access_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_access is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE OR REPLACE TRIGGER audit_access_no_update_or_delete
    BEFORE UPDATE OR DELETE ON audit_access
    FOR EACH ROW EXECUTE FUNCTION audit_access_refuse_change();

CREATE OR REPLACE TRIGGER audit_access_no_truncate
    BEFORE TRUNCATE ON audit_access
    FOR EACH STATEMENT EXECUTE FUNCTION audit_access_refuse_change();
