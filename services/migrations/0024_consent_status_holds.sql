-- consent_status said 'active' for a number held for review (a refused opt-out, a
-- flagged reply, a STOP to a number no campaign sends from, a provider's opt-out
-- code, an imported opt-out held) while CanSend and GetConsent denied it. A row now
-- says 'pending_review' while an opt-out of its brand (or of brand '*', which holds
-- every brand) awaits review, and held_event_id names the hold (the first of
-- several), as GetConsent lists it. The rows stored before are set so from the
-- review queue's table; the projector keeps them so from then on. Safe to run again.
ALTER TABLE consent_status ADD COLUMN IF NOT EXISTS held_event_id uuid;
ALTER TABLE consent_status DROP CONSTRAINT IF EXISTS consent_status_status_check;
ALTER TABLE consent_status ADD CONSTRAINT consent_status_status_check
    CHECK (status IN ('active', 'revoked', 'none', 'pending_review'));
UPDATE consent_status AS s
SET status = 'pending_review', held_event_id = h.event_id
FROM (
    SELECT DISTINCT ON (c.phone, c.brand) c.phone, c.brand, f.event_id
    FROM consent_status AS c
    JOIN flagged_reply AS f
      ON f.phone = c.phone AND f.brand IN (c.brand, '*') AND f.resolved IS NOT TRUE
    ORDER BY c.phone, c.brand, f.brand = '*', f.position
) AS h
WHERE s.phone = h.phone AND s.brand = h.brand AND s.held_event_id IS DISTINCT FROM h.event_id;
COMMENT ON TABLE consent_status IS
    'Not a decision: ignores the revoke-all rule, so ''active'' here may be denied. '
    'A number held for review is ''pending_review'' (held_event_id names the hold). '
    'Ask CanSend (or GetConsent, which applies both) before any send; this table is '
    'for counts and operations queries only.';
COMMENT ON COLUMN consent_status.status IS
    'The campaign''s own grant and opt-outs alone (and brand-wide ones), or '
    '''pending_review'' while an opt-out awaits review; not the revoke-all rule: not '
    'whether a message may be sent.';
COMMENT ON COLUMN consent_status.held_event_id IS
    'The opt-out held for review that denies every campaign of the brand (its '
    'RevocationCandidateFlagged event id, the first of several); NULL when none is.';
