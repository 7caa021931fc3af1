-- Which send first claimed each provider message id to a phone for a brand, taken by
-- the writer before it appends (PostgresConsentView.take_request), as request_use
-- holds request ids. A send that finds the id claimed by another send waits for the
-- view to apply what was acknowledged for its phone and asks message_use, which the
-- projection keeps and which decides; one that claims it is the first send of that
-- message through the API, and needs no wait. Not a projection table: a rebuild
-- keeps it. Safe to run again from the top, like every migration after 0006.
CREATE TABLE IF NOT EXISTS message_claim (
    brand      text NOT NULL,
    phone      text NOT NULL,
    message_id text NOT NULL,
    event_id   uuid NOT NULL,
    PRIMARY KEY (brand, phone, message_id)
);
