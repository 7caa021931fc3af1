-- Accountable access records refusals too: an audit call turned away before it read
-- anything (another brand's, a token without the audit scope, bad input, a campaign
-- never defined) is written with outcome 'refused', the status it got and what the
-- caller was told, so that "who tried to read what" has the attempts as well as the
-- reads (services/usecases/access.py). Rows written before this have outcome
-- 'admitted', which is what every one of them was. Adding a column with a constant
-- default rewrites no row, so the append-only triggers of 0013 do not fire.
-- Safe to run again from the top, like every migration after 0006.
ALTER TABLE audit_access ADD COLUMN IF NOT EXISTS outcome text NOT NULL DEFAULT 'admitted';
ALTER TABLE audit_access ADD COLUMN IF NOT EXISTS refusal_code text;
ALTER TABLE audit_access ADD COLUMN IF NOT EXISTS refusal text;
