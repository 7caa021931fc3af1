"""Where a campaign's consent stands (``ledger.status``), as GetConsent says it and
the projection's ``consent_status`` table stores it."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ledger.digest import digest_of
from ledger.policy import Reason, decide
from ledger.state import fold
from ledger.status import ConsentState, consent_state, revocation_in_force
from tests.builders import at, campaign, flagged, granted, record, resumed, revoked


def stands(*events):
    state = fold(record(list(events)))
    digest = digest_of(state)
    return consent_state(digest, "promo"), revocation_in_force(state, digest, "promo")


def test_never_granted_until_a_grant_or_an_opt_out_is_on_record():
    assert stands() == (ConsentState.NEVER_GRANTED, None)
    assert stands(granted(at(0), "other")) == (ConsentState.NEVER_GRANTED, None)
    assert stands(revoked(at(1)))[0] is ConsentState.REVOKED  # an opt-out on record stands


def test_a_grant_stands_until_an_opt_out_of_the_campaign_or_the_brand():
    assert stands(granted(at(0))) == (ConsentState.ACTIVE, None)
    stop = revoked(at(1))
    state, revocation = stands(granted(at(0)), stop)
    assert state is ConsentState.REVOKED
    assert revocation is not None and revocation.event == stop
    stopall = revoked(at(1), None)
    state, revocation = stands(granted(at(0)), stopall)
    assert state is ConsentState.REVOKED_BRAND_WIDE
    assert revocation is not None and revocation.event == stopall


@pytest.mark.parametrize(
    "after",
    [granted(at(2)), resumed(at(2), "promo")],
    ids=["a new grant", "a resume"],
)
def test_a_later_grant_or_resume_lifts_the_opt_out(after):
    assert stands(granted(at(0)), revoked(at(1)), after) == (ConsentState.ACTIVE, None)


def test_a_brand_wide_resume_does_not_lift_the_campaign_s_own_stop():
    state, _ = stands(granted(at(0)), revoked(at(1)), revoked(at(2), None), resumed(at(3)))
    assert state is ConsentState.REVOKED


def test_a_reply_awaiting_review_outranks_every_other_state():
    for events in ((), (granted(at(0)),), (granted(at(0)), revoked(at(1), None))):
        digest = digest_of(fold(record(list(events))))
        assert consent_state(digest, "promo", pending_review=True) is ConsentState.PENDING_REVIEW


def test_an_unattributed_opt_out_awaiting_review_is_revoked_brand_wide_as_cansend_says():
    """An opt-out no defined campaign could take counts for every campaign until it is
    resolved: CanSend answers REVOKED_BRAND_WIDE, while GetConsent's state said
    PENDING_REVIEW. A reply flagged beside it does not make it less."""
    unattributed = replace(flagged(at(1), "STOP"), unattributed=True, campaign="winter-sale")
    for events in (
        (granted(at(0)), unattributed),
        (granted(at(0)), flagged(at(2)), unattributed),
        (unattributed,),
    ):
        state = fold(record(list(events)))
        digest = digest_of(state)
        pending = state.pending_candidates()
        answer = decide(state, campaign("promo"), at(3))
        assert answer.reason is Reason.REVOKED_BRAND_WIDE
        stands = consent_state(
            digest,
            "promo",
            pending_review=bool(pending),
            unattributed=any(c.event.unattributed for c in pending),
        )
        assert stands is ConsentState.REVOKED_BRAND_WIDE
    only_flagged = fold(record([granted(at(0)), flagged(at(2))]))
    assert decide(only_flagged, campaign("promo"), at(3)).reason is (
        Reason.REVOCATION_PENDING_REVIEW
    )
    assert consent_state(digest_of(only_flagged), "promo", pending_review=True) is (
        ConsentState.PENDING_REVIEW
    )


def test_under_revoke_all_an_opt_out_of_another_campaign_ends_this_one():
    """CanSend reads a STOP to a sibling campaign as one of all under the revoke-all
    rule; read without it, GetConsent said ACTIVE, with no opt-out, for a campaign
    CanSend denied."""
    stop = revoked(at(1), "alerts")
    events = (granted(at(0)), granted(at(0), "alerts"), stop)
    state = fold(record(list(events)))
    digest = digest_of(state)
    assert consent_state(digest, "promo") is ConsentState.ACTIVE  # the rule not in force
    assert consent_state(digest, "promo", revoke_all=True) is ConsentState.REVOKED_BRAND_WIDE
    revocation = revocation_in_force(state, digest, "promo", revoke_all=True)
    assert revocation is not None and revocation.event == stop
    # A consent given after the opt-out is the person's newer word for its campaign.
    again = fold(record([*events, granted(at(2))]))
    assert consent_state(digest_of(again), "promo", revoke_all=True) is ConsentState.ACTIVE
