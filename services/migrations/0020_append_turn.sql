-- Which import appends each request id's facts (PostgresConsentView.
-- take_append_turns): of imports that claimed the same record in request_use and
-- found its facts not applied yet, the one that holds the turn appends them, and
-- the others count the record as already present rather than appending it again.
-- until is when the holder's turn runs out: an import that died before saying
-- whether it appended leaves its turns to the next then; NULL once the holder's
-- append was acknowledged. Not a projection table: a rebuild keeps it. Safe to run
-- again from the top.
CREATE TABLE IF NOT EXISTS append_turn (
    brand      text NOT NULL,
    request_id text NOT NULL,
    holder     uuid NOT NULL,
    until      timestamptz,
    PRIMARY KEY (brand, request_id)
);
