-- What the policy reads about a phone and brand (ledger.digest), stored beside the
-- snapshot so that CanSend reads a few numbers and ids instead of decoding and
-- folding events: services.wire.digest's encoding, a version byte and MessagePack.
--
-- A cache of the snapshot and nothing more: rows written before this column
-- existed (NULL), or in a format the service does not know, are answered from the
-- snapshot. A rebuild writes it for every row.
ALTER TABLE subscriber_state ADD COLUMN digest bytea;
