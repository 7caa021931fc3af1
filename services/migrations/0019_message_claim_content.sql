-- What each claiming send said of its message (ledger.events.message_content), so a
-- copy that says something else is refused as soon as it meets the claim, even before
-- the first send can be read from the view. NULL on claims made before this column:
-- a copy that meets one of those waits for the view, as every copy did. Safe to run
-- again from the top.
ALTER TABLE message_claim ADD COLUMN IF NOT EXISTS content text;
