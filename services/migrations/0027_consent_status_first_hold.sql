-- 0024 named, for a number held for review twice or more, the hold placed first in
-- the review queue; the projector, and so a rebuild, names the first GetConsent
-- lists: the brand's own holds before those of brand '*', each by event id. A
-- rebuild then changed the rows 0024 set. They name that hold now. Safe to run again.
UPDATE consent_status AS s
SET held_event_id = h.event_id
FROM (
    SELECT DISTINCT ON (c.phone, c.brand) c.phone, c.brand, f.event_id
    FROM consent_status AS c
    JOIN flagged_reply AS f
      ON f.phone = c.phone AND f.brand IN (c.brand, '*') AND f.resolved IS NOT TRUE
    WHERE c.status = 'pending_review'
    ORDER BY c.phone, c.brand, f.brand = '*', f.event_id
) AS h
WHERE s.phone = h.phone AND s.brand = h.brand AND s.status = 'pending_review'
  AND s.held_event_id IS DISTINCT FROM h.event_id;
