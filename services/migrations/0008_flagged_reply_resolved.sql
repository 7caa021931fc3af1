-- Whether the view has applied a resolution of each flagged reply, so that the
-- review queue reads its unresolved replies only: a page then costs what its
-- candidates cost, not what every reply ever resolved before them does.
--
-- Replies flagged before this migration are left NULL, "not known": the queue
-- lists them and the fold of their numbers decides, as before, until a rebuild
-- marks them. So are those whose resolution an instance of an earlier version
-- applies during an upgrade (false, there).
ALTER TABLE flagged_reply ADD COLUMN resolved boolean;
ALTER TABLE flagged_reply ALTER COLUMN resolved SET DEFAULT false;
CREATE INDEX flagged_reply_open ON flagged_reply (brand, position) WHERE resolved IS NOT TRUE;
