"""Candidates that count as revocations: overdue ones, and unattributed opt-outs."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from ledger.campaigns import CampaignPurpose
from ledger.commands import ResolveRevocationCandidate, to_events
from ledger.digest import digest_of, with_phone_wide
from ledger.events import ANY_BRAND, CampaignDefined, CandidateResolution, MessageKind, event_id_for
from ledger.policy import Check, Reason, decide, decide_as_of
from ledger.state import SubscriberState, fold
from tests.builders import PHONE, campaign, flagged, granted, inbound, record, resolved

PROMO = campaign()
CHAT = campaign("chat", purpose=CampaignPurpose.CONVERSATIONAL)
FLAGGED_AT = datetime(2026, 3, 2, 18, 0, tzinfo=UTC)  # a Monday
DUE = datetime(2026, 3, 17, 4, 0, tzinfo=UTC)  # midnight EDT after Monday 2026-03-16


def state_of(*events):
    return fold(record(list(events)))


def test_a_candidate_is_pending_until_the_end_of_the_tenth_business_day():
    s = state_of(granted(FLAGGED_AT.replace(hour=1)), flagged(FLAGGED_AT))
    d = decide(s, PROMO, datetime(2026, 3, 17, 3, 59, tzinfo=UTC))
    assert d.reason is Reason.REVOCATION_PENDING_REVIEW


def test_a_candidate_unresolved_past_its_deadline_counts_as_a_revocation():
    c = flagged(FLAGGED_AT)
    d = decide(state_of(granted(FLAGGED_AT.replace(hour=1)), c), PROMO, DUE)
    assert not d.allowed and d.reason is Reason.REVOCATION_OVERDUE
    assert d.evidence == (str(c.event_id),)


@pytest.mark.parametrize(
    "kind",
    [MessageKind.REGULAR, MessageKind.CONVERSATION_REPLY, MessageKind.RECONFIRMATION_REQUEST],
)
def test_an_overdue_candidate_denies_every_kind_a_revocation_stops(kind):
    s = state_of(inbound(DUE.replace(hour=5)), flagged(FLAGGED_AT))
    assert decide(s, CHAT, DUE.replace(hour=6), kind).reason is Reason.REVOCATION_OVERDUE


def test_a_dismissal_after_the_deadline_ends_it():
    c = flagged(FLAGGED_AT)
    s = state_of(
        granted(FLAGGED_AT.replace(hour=1)),
        c,
        resolved(DUE.replace(day=20), c, CandidateResolution.DISMISSED),
    )
    assert decide(s, PROMO, DUE.replace(day=20, hour=18)).allowed


def test_the_digest_carries_each_candidates_deadline():
    c = flagged(FLAGGED_AT)
    (pending,) = digest_of(state_of(c)).pending
    assert pending.event_id == str(c.event_id) and pending.unattributed is False
    assert pending.due == int((DUE - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 1e6)


def test_an_unattributed_opt_out_denies_every_campaign_at_once():
    stop = replace(flagged(FLAGGED_AT, "STOP"), unattributed=True, campaign="gone")
    s = state_of(granted(FLAGGED_AT.replace(hour=1)), stop)
    d = decide(s, PROMO, FLAGGED_AT.replace(hour=19))
    assert not d.allowed and d.reason is Reason.REVOKED_BRAND_WIDE
    assert d.evidence == (str(stop.event_id),)


def test_a_phone_wide_candidate_reaches_every_brands_digest():
    stop = replace(flagged(FLAGGED_AT, "STOP"), brand=ANY_BRAND, unattributed=True)
    phone_wide = digest_of(state_of(stop))
    other = digest_of(state_of(granted(FLAGGED_AT.replace(hour=1))))
    merged = with_phone_wide(other, phone_wide)
    assert merged is not None
    d = Check(PROMO, FLAGGED_AT.replace(hour=19))(merged)
    assert d.reason is Reason.REVOKED_BRAND_WIDE
    unknown = with_phone_wide(None, phone_wide)
    assert unknown is not None
    other_brand = replace(PROMO, brand="globex")
    assert Check(other_brand, FLAGGED_AT.replace(hour=19))(unknown).reason is (
        Reason.REVOKED_BRAND_WIDE
    )


def test_nothing_is_added_without_a_phone_wide_candidate():
    empty = digest_of(SubscriberState(phone=PHONE, brand=ANY_BRAND))
    assert with_phone_wide(None, empty) is None
    own = digest_of(state_of(granted(FLAGGED_AT)))
    assert with_phone_wide(own, empty) is own


def test_as_of_questions_see_a_phone_wide_stop_from_when_it_came():
    defined = CampaignDefined(
        event_id=event_id_for("define-promo"),
        occurred_at=FLAGGED_AT.replace(day=1),
        brand=PROMO.brand,
        campaign="promo",
        policy=PROMO.policy,
    )
    stop = replace(flagged(FLAGGED_AT, "STOP"), brand=ANY_BRAND, unattributed=True)
    history = record([defined, granted(FLAGGED_AT.replace(hour=1)), stop])
    later = FLAGGED_AT.replace(hour=19)
    assert decide_as_of(history, "promo", later, later).reason is Reason.REVOKED_BRAND_WIDE
    before = FLAGGED_AT.replace(hour=17)
    assert decide_as_of(history, "promo", before, later).allowed


def test_a_revoked_resolution_under_every_brand_leaves_the_stop_denying():
    # Recorded before 34200de refused it: its ConsentRevoked is under "*", no real
    # brand, so lifting the hold let every brand send to a number that said STOP.
    stop = replace(flagged(FLAGGED_AT, "STOP"), brand=ANY_BRAND, unattributed=True)
    at = FLAGGED_AT.replace(hour=19)
    old = replace(resolved(at, stop, CandidateResolution.REVOKED), brand=ANY_BRAND)
    phone_wide = digest_of(state_of(stop, old))
    merged = with_phone_wide(digest_of(state_of(granted(FLAGGED_AT.replace(hour=1)))), phone_wide)
    assert merged is not None
    assert Check(PROMO, at.replace(hour=20))(merged).reason is Reason.REVOKED_BRAND_WIDE

    defined = CampaignDefined(
        event_id=event_id_for("define-promo"),
        occurred_at=FLAGGED_AT.replace(day=1),
        brand=PROMO.brand,
        campaign="promo",
        policy=PROMO.policy,
    )
    history = record([defined, granted(FLAGGED_AT.replace(hour=1)), stop, old])
    later = at.replace(hour=20)
    assert decide_as_of(history, "promo", later, later).reason is Reason.REVOKED_BRAND_WIDE

    # A dismissal, the way out the refusal names, still lifts it; and a brand's own
    # "revoked" still resolves its candidate.
    dismissed = replace(resolved(later, stop, CandidateResolution.DISMISSED), brand=ANY_BRAND)
    assert not digest_of(state_of(stop, old, dismissed)).pending
    own = flagged(FLAGGED_AT, "stop please")
    assert not digest_of(state_of(own, resolved(at, own, CandidateResolution.REVOKED))).pending


def test_every_part_of_a_revoked_resolution_written_alone_still_denies():
    # A Kafka append of several events is not atomic: a process killed between two
    # batches, or a batch given up on, leaves a prefix in the ledger, unacknowledged
    # but read. The resolution written without its ConsentRevoked lifted the hold
    # and let the number be sent to again.
    c = flagged(FLAGGED_AT)
    cmd = ResolveRevocationCandidate(
        "resolve-1", PHONE, c.brand, str(c.event_id), CandidateResolution.REVOKED, FLAGGED_AT
    )
    events = to_events(cmd, FLAGGED_AT.replace(hour=19))
    assert len(events) == 2
    later = FLAGGED_AT.replace(hour=20)
    for end in range(len(events) + 1):
        s = state_of(granted(FLAGGED_AT.replace(hour=1)), c, *events[:end])
        assert not decide(s, PROMO, later).allowed, events[:end]
