-- What the policy reads about a phone and brand (ledger.digest), stored beside the
-- snapshot so that CanSend reads a few numbers and ids instead of decoding and
-- folding events: services.wire.digest's encoding, a version byte and MessagePack.
--
-- A cache of the snapshot and nothing more: rows written before this column
-- existed (NULL), or in a format the service does not know, are answered from the
-- snapshot. A rebuild writes it for every row.
ALTER TABLE subscriber_state ADD COLUMN digest bytea;

-- Reads find a row by (phone, brand), the primary key, and nothing reads by brand
-- alone. The index on brand only misled the planner: for a batch of numbers it
-- scanned every row of the brand instead of looking each number up.
DROP INDEX subscriber_state_brand;
