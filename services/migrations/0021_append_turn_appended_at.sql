-- When each append turn ended with its holder's append acknowledged (until NULL):
-- a finished turn is needed only until the projection applies its facts (a later
-- import then finds them applied and asks for no turn), so turns are pruned a day
-- after they end or run out (PostgresConsentView.prune_append_turns). Turns that
-- ended before this migration count from when it ran. Safe to run again from the
-- top.
ALTER TABLE append_turn ADD COLUMN IF NOT EXISTS appended_at timestamptz;
UPDATE append_turn SET appended_at = now() WHERE until IS NULL AND appended_at IS NULL;
