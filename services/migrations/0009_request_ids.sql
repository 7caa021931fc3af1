-- Which request first used each request id of a brand, so that a request id reused
-- for another request is refused (ALREADY_EXISTS) and never recorded as a second
-- fact. A writer takes the id here before it appends (PostgresConsentView.
-- claim_request), and the projection applies only events of the request that holds
-- their id; an id first seen by the projection (a writer that did not take it) goes
-- to the first request applied. Not a projection table: a rebuild keeps it, so the
-- rebuilt view holds to the answers writers were given. Ids used before this
-- migration are not known here.
CREATE TABLE IF NOT EXISTS request_use (
    brand       text   NOT NULL,
    request_id  text   NOT NULL,
    fingerprint text   NOT NULL,
    event_ids   uuid[] NOT NULL,
    PRIMARY KEY (brand, request_id)
);

-- The MessageSent that first recorded each provider message id to a phone for a
-- brand: a later MessageSent with that message id is the same message, and is not
-- applied again (it must not count twice for caps or the opt-out rate). Rebuilt
-- from the ledger, in ledger order (one phone's facts share a partition).
CREATE TABLE IF NOT EXISTS message_use (
    brand      text NOT NULL,
    phone      text NOT NULL,
    message_id text NOT NULL,
    event_id   uuid NOT NULL,
    PRIMARY KEY (brand, phone, message_id)
);
