"""An opt-out stamped ahead of the clock that recorded it (placed at T, saying T+40s:
``ConsentRevoked.stated_at``) stands in the fold and the policy at the time it said,
against consents, STARTs, texts and other opt-outs: a consent stated between its
place and that time never outranks it, however it reached the ledger (an instance
that raced past the write's check, or one too old to make it). Its one confirmation
still counts from its place."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import timedelta

import pytest

from ledger.campaigns import CampaignPurpose
from ledger.commands import to_events
from ledger.digest import digest_of, micros
from ledger.events import CampaignDefined, ConsentTier, MessageKind
from ledger.policy import (
    Check,
    Reason,
    decide,
    decide_as_of,
    earns_exemption,
)
from ledger.state import fold, retained_facts
from ledger.status import ConsentState, consent_state, revocation_in_force
from services.wire.codec import decode_event, encode_event
from services.wire.compact_digest import Shapes
from services.wire.digest import decode_digest, encode_digest
from tests.builders import (
    BRAND,
    at,
    campaign,
    granted,
    inbound,
    opt_in,
    record,
    resumed,
    revoked,
    sent,
)

PROMO = campaign("promo")
T = at(60)


def ahead(when, campaign="promo", *, said=timedelta(seconds=40)):
    """An opt-out placed at ``when`` that said it happened ``said`` later."""
    return replace(revoked(when, campaign), stated_at=when + said)


def s(seconds: float):
    return T + timedelta(seconds=seconds)


def state_of(*events):
    return fold(record(list(events), delay=timedelta(0)))


def recorded_in_order(*events):
    """``events`` recorded one after another (ledger order), each known when appended
    at the end: the opt-out first, the consent raced past its check after it."""
    last = max(e.occurred_at for e in events)
    return record(list(events), known_at=[last + timedelta(seconds=i) for i in range(len(events))])


@pytest.mark.parametrize("scope", ["promo", None], ids=["campaign", "brand-wide"])
def test_an_opt_in_stated_before_the_time_an_opt_out_said_does_not_outrank_it(scope):
    state = fold(
        recorded_in_order(granted(T - timedelta(hours=1)), ahead(T, scope), granted(s(20)))
    )
    d = decide(state, PROMO, s(30))
    assert not d.allowed
    assert d.reason is (Reason.REVOKED if scope else Reason.REVOKED_BRAND_WIDE)
    assert consent_state(digest_of(state), "promo") is (
        ConsentState.REVOKED if scope else ConsentState.REVOKED_BRAND_WIDE
    )


@pytest.mark.parametrize("scope", ["promo", None], ids=["campaign", "brand-wide"])
def test_an_opt_in_stated_after_the_time_an_opt_out_said_outranks_it(scope):
    state = fold(
        recorded_in_order(granted(T - timedelta(hours=1)), ahead(T, scope), granted(s(41)))
    )
    d = decide(state, PROMO, s(45))
    assert d.allowed and d.reason is Reason.CONSENT_ACTIVE
    assert consent_state(digest_of(state), "promo") is ConsentState.ACTIVE


def test_an_opt_in_at_the_very_time_the_opt_out_said_loses_to_it():
    state = fold(recorded_in_order(granted(T - timedelta(hours=1)), ahead(T), granted(s(40))))
    assert not decide(state, PROMO, s(45)).allowed


@pytest.mark.parametrize("scope", ["promo", None], ids=["campaign", "brand-wide"])
def test_a_start_stated_before_the_time_an_opt_out_said_does_not_resume(scope):
    state = fold(
        recorded_in_order(granted(T - timedelta(hours=1)), ahead(T, scope), resumed(s(20), scope))
    )
    assert not decide(state, PROMO, s(30)).allowed
    later = fold(
        recorded_in_order(granted(T - timedelta(hours=1)), ahead(T, scope), resumed(s(41), scope))
    )
    assert decide(later, PROMO, s(45)).allowed


@pytest.mark.parametrize("first", ["ahead", "unstated"])
def test_of_several_opt_outs_the_one_that_said_the_latest_time_is_kept_too(first):
    # R1 placed at T said T+40s; R2 placed at T+10s said nothing more. By place R2 is
    # the later, and a grant at T+20s outranked it; by the records' own times R1 is.
    r1, r2 = ahead(T), revoked(s(10))
    opt_outs = [r1, r2] if first == "ahead" else [r2, r1]
    events = [granted(T - timedelta(hours=1)), *opt_outs, granted(s(20))]
    state = fold(recorded_in_order(*events))
    kept = state.campaign("promo")
    assert (kept.revocation.event, kept.revocation_said.event) == (r2, r1)
    d = decide(state, PROMO, s(30))
    assert not d.allowed and d.evidence == (str(r1.event_id),)
    # A state refolded from what it keeps is the same state, and denies the same.
    again = fold(retained_facts(state))
    assert again == state and not decide(again, PROMO, s(30)).allowed


def test_a_campaigns_opt_out_and_a_stopall_are_ordered_by_the_times_they_said():
    own, stopall = ahead(T, "promo"), revoked(s(10), None)
    state = fold(recorded_in_order(granted(T - timedelta(hours=1)), own, stopall, granted(s(20))))
    d = decide(state, PROMO, s(30))
    assert not d.allowed and d.reason is Reason.REVOKED
    assert d.evidence == (str(own.event_id),)


def test_under_revoke_all_an_opt_out_of_another_campaign_said_later_ends_this_one():
    alerts = campaign("alerts", revoke_all=True)
    state = fold(
        recorded_in_order(
            granted(T - timedelta(hours=1), "alerts"), ahead(T), granted(s(20), "alerts")
        )
    )
    d = decide(state, alerts, s(30))
    assert not d.allowed and d.reason is Reason.REVOKED_BRAND_WIDE
    assert consent_state(digest_of(state), "alerts", revoke_all=True) is (
        ConsentState.REVOKED_BRAND_WIDE
    )
    assert revocation_in_force(state, digest_of(state), "alerts", revoke_all=True) is (
        state.campaign("promo").revocation
    )
    after = fold(
        recorded_in_order(
            granted(T - timedelta(hours=1), "alerts"), ahead(T), granted(s(41), "alerts")
        )
    )
    assert decide(after, alerts, s(45)).allowed


@pytest.mark.parametrize("scope", ["support", None], ids=["campaign", "brand-wide"])
def test_a_text_stated_before_the_time_an_opt_out_said_opens_no_conversation(scope):
    support = campaign("support", purpose=CampaignPurpose.CONVERSATIONAL)

    def talk(text_at, *regrant):
        return fold(
            recorded_in_order(
                granted(T - timedelta(hours=1), "support", tier=ConsentTier.CONVERSATIONAL),
                ahead(T, scope),
                inbound(text_at, "hi", "support"),
                *regrant,
            )
        )

    # The text does not open the conversation, whether or not the person opted in
    # again after the opt-out said it happened (a conversational grant answers by
    # the conversation), nor earns a reply its exemption from the caps.
    regrant = granted(s(41), "support", tier=ConsentTier.CONVERSATIONAL)
    d = decide(talk(s(20), regrant), support, s(45), MessageKind.CONVERSATION_REPLY)
    assert not d.allowed and d.reason is Reason.CONVERSATION_WINDOW_CLOSED
    assert not earns_exemption(
        digest_of(talk(s(20))), support, s(30), MessageKind.CONVERSATION_REPLY
    )
    # A text after that time does both.
    assert decide(talk(s(42), regrant), support, s(45), MessageKind.CONVERSATION_REPLY).allowed
    assert earns_exemption(digest_of(talk(s(42))), support, s(45), MessageKind.CONVERSATION_REPLY)


def test_the_one_confirmation_still_counts_from_the_opt_outs_place():
    state = fold(recorded_in_order(granted(T - timedelta(hours=1)), ahead(T)))
    d = decide(state, PROMO, s(1), MessageKind.OPT_OUT_CONFIRMATION)
    assert d.allowed and d.reason is Reason.OPT_OUT_CONFIRMATION_ALLOWED
    confirmed = fold(
        recorded_in_order(
            granted(T - timedelta(hours=1)),
            ahead(T),
            sent(s(1), kind=MessageKind.OPT_OUT_CONFIRMATION, exempt=True),
        )
    )
    assert not decide(confirmed, PROMO, s(2), MessageKind.OPT_OUT_CONFIRMATION).allowed


def test_as_of_a_moment_between_the_opt_outs_place_and_its_time_it_denies():
    defined = CampaignDefined(
        event_id=uuid.uuid4(),
        occurred_at=T - timedelta(days=1),
        brand=BRAND,
        campaign="promo",
        policy=PROMO.policy,
    )
    events = [defined, granted(T - timedelta(hours=1)), ahead(T), granted(s(20))]
    history = record(events, known_at=[T - timedelta(days=1), *(s(20 + i) for i in range(3))])
    for moment in (s(25), s(39)):
        d = decide_as_of(history, "promo", moment, s(100))
        assert not d.allowed and d.reason is Reason.REVOKED, moment


def test_a_stated_time_earlier_than_the_place_moves_the_opt_out_nowhere():
    # No service writes one; a record that says so orders the opt-out at its place.
    early = replace(revoked(T), stated_at=T - timedelta(seconds=30))
    state = fold(recorded_in_order(granted(T - timedelta(hours=1)), early, granted(s(-10))))
    assert not decide(state, PROMO, s(1)).allowed
    assert digest_of(state).campaign("promo").revocation_said is None


@pytest.mark.parametrize("scope", ["promo", None], ids=["campaign", "brand-wide"])
def test_the_stated_time_survives_every_encoding_of_the_digest(scope):
    state = fold(
        recorded_in_order(granted(T - timedelta(hours=1)), ahead(T, scope), granted(s(20)))
    )
    digest = digest_of(state)
    said = digest.campaign("promo").revocation_said if scope else digest.brand_revocation_said
    assert said is not None and said.at == micros(s(40))
    assert decode_digest(encode_digest(digest)) == digest
    shapes = Shapes()
    assert shapes.decode(shapes.encode(digest)) == digest
    assert not Check(PROMO, s(30))(shapes.decode(shapes.encode(digest))).allowed


def test_an_opt_out_not_stamped_ahead_costs_no_more_bytes():
    placed = digest_of(state_of(granted(T - timedelta(hours=1)), revoked(T)))
    said = digest_of(state_of(granted(T - timedelta(hours=1)), ahead(T)))
    assert placed.campaign("promo").revocation_said is None
    # The mark of the time it said: 8 bytes of time, 4 of offset, 16 of id.
    assert len(Shapes().encode(said)) == len(Shapes().encode(placed)) + 28


@pytest.mark.parametrize("scope", ["promo", None], ids=["campaign", "brand-wide"])
def test_a_start_stamped_ahead_after_an_opt_out_stamped_ahead_resumes(scope):
    # A gateway two minutes fast passes on a STOP (placed at T, saying T+2m), then a
    # START a second later (placed at T+1s, saying T+2m1s): by their own times the
    # START is the later, and by place too.
    stop = ahead(T, scope, said=timedelta(minutes=2))
    start = replace(resumed(s(1), scope), stated_at=s(121))
    state = fold(recorded_in_order(granted(T - timedelta(hours=1)), stop, start))
    assert decide(state, PROMO, s(2)).allowed
    assert consent_state(digest_of(state), "promo") is ConsentState.ACTIVE
    # One saying a time before the STOP's does not resume.
    early = replace(resumed(s(1), scope), stated_at=s(119))
    state = fold(recorded_in_order(granted(T - timedelta(hours=1)), stop, early))
    assert not decide(state, PROMO, s(2)).allowed


def test_an_opt_in_stamped_ahead_outranks_an_opt_out_only_if_later_by_both_times():
    # R1 placed at T said T+40s; the opt-in placed at T+5s said T+45s: later by both.
    r1 = ahead(T)
    form = replace(granted(s(5)), stated_at=s(45))
    state = fold(recorded_in_order(granted(T - timedelta(hours=1)), r1, form))
    assert decide(state, PROMO, s(6)).allowed
    # R2 recorded after it at T+10s said nothing ahead: the opt-in, recorded before
    # it, cannot have happened after it, whatever time it said.
    r2 = revoked(s(10))
    state = fold(recorded_in_order(granted(T - timedelta(hours=1)), r1, form, r2))
    d = decide(state, PROMO, s(11))
    assert not d.allowed and d.evidence == (str(r2.event_id),)
    again = fold(retained_facts(state))
    assert again == state


def test_consents_stamped_ahead_keep_the_time_they_said():
    now = T
    ahead_by = timedelta(seconds=40)
    [grant] = to_events(opt_in(now + ahead_by, request_id="in-1"), now)
    assert (grant.occurred_at, grant.stated_at) == (now, now + ahead_by)
    [on_time] = to_events(opt_in(now - ahead_by, request_id="in-2"), now)
    assert on_time.stated_at is None
    for event in (grant, replace(resumed(now), stated_at=now + ahead_by)):
        assert decode_event(encode_event(event)) == event


def test_under_revoke_all_a_start_stated_too_early_takes_nothing_from_the_grant():
    """An opt-in stamped ahead (placed at T+10s, saying T+70s) is later by both times
    than an opt-out of another campaign (placed at T+5s, saying T+45s), so the
    revoke-all rule leaves it standing; a START to this campaign recorded after it
    but stated before T+45s took its place and was ended by that opt-out."""
    alerts = campaign("alerts", revoke_all=True)
    facts = [
        granted(T - timedelta(hours=1), "alerts"),
        ahead(s(5)),
        replace(granted(s(10), "alerts"), stated_at=s(70)),
        resumed(s(20), "alerts"),
    ]
    state = fold(recorded_in_order(*facts))
    assert decide(state, alerts, s(80)).allowed
    digest = digest_of(state)
    assert consent_state(digest, "alerts", revoke_all=True) is ConsentState.ACTIVE
    assert revocation_in_force(state, digest, "alerts", revoke_all=True) is None
