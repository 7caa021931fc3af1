-- consent_status is written from each number's own facts when they are applied: it
-- ignores the revoke-all rule (a STOP to one campaign revoking the brand's others,
-- 47 CFR 64.1200(a)(10), in force from 2027-01-31 or earlier by a campaign's or a
-- brand's setting, which no new fact of the number announces) and replies held for
-- review. A reader who took its 'active' for "may send" would send where CanSend
-- denies: the comments say so where a database reader looks. Safe to run again.
COMMENT ON TABLE consent_status IS
    'Not a decision: ignores the revoke-all rule and replies awaiting review, so '
    '''active'' here may be denied. Ask CanSend (or GetConsent, which applies both) '
    'before any send; this table is for counts and operations queries only.';
COMMENT ON COLUMN consent_status.status IS
    'The campaign''s own grant and opt-outs alone (and brand-wide ones); not the '
    'revoke-all rule nor a pending review: not whether a message may be sent.';
