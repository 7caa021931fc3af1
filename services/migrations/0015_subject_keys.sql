-- The keys that seal each subject's personal data (ledger/personal_data.py), outside
-- the ledger: destroying a subject's key (secret set to NULL, the row kept as the
-- record of when) erases what it sealed, in every copy of the ledger at once.
-- PostgreSQL keeps the old row version until VACUUM reclaims it, and backups keep it
-- until they expire: the README's "Retention and erasure" says what that means.
-- Safe to run again from the top, like every migration after 0006.
CREATE TABLE IF NOT EXISTS subject_keys (
    key_id       uuid        PRIMARY KEY,
    phone        text        NOT NULL,
    brand        text        NOT NULL,
    secret       bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    destroyed_at timestamptz,
    CHECK ((secret IS NULL) = (destroyed_at IS NOT NULL))
);

-- At most one live key per subject: two writers sealing for one subject at once
-- agree on the key (INSERT ... ON CONFLICT DO NOTHING, then read it).
CREATE UNIQUE INDEX IF NOT EXISTS subject_keys_live
    ON subject_keys (phone, brand) WHERE secret IS NOT NULL;
