"""Retention, legal holds and erasure in the domain: when an erasure is possible, and
what an erased subscriber's state allows (nothing before it, a fresh opt-in after)."""

from __future__ import annotations

import itertools
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ledger.campaigns import CampaignPurpose
from ledger.errors import InvalidRequest
from ledger.events import (
    LegalHoldPlaced,
    LegalHoldReleased,
    Recorded,
    Sealed,
    SubjectErased,
    evolved,
)
from ledger.policy import Reason, decide
from ledger.reread import held_for, reread_hold
from ledger.retention import (
    PlaceLegalHold,
    Refusal,
    RequestErasure,
    Retention,
    add_years,
    erasure_event,
    erasure_verdict,
    hold_event,
)
from ledger.state import fold, retained_facts
from tests.builders import (
    BRAND,
    PHONE,
    at,
    campaign,
    granted,
    inbound,
    record,
    resumed,
    revoked,
    sent,
)

FIVE = Retention()


def erasure(when: datetime) -> SubjectErased:
    return SubjectErased(
        event_id=uuid.uuid4(), occurred_at=when, phone=PHONE, brand=BRAND, requested_by="dpo"
    )


def hold(when: datetime, hold_id: str = "smith-v-acme") -> LegalHoldPlaced:
    return LegalHoldPlaced(
        event_id=uuid.uuid4(), occurred_at=when, phone=PHONE, brand=BRAND, hold_id=hold_id
    )


def release(when: datetime, hold_id: str = "smith-v-acme") -> LegalHoldReleased:
    return LegalHoldReleased(
        event_id=uuid.uuid4(), occurred_at=when, phone=PHONE, brand=BRAND, hold_id=hold_id
    )


# --- retention -------------------------------------------------------------------


def test_add_years_keeps_the_day_and_moves_29_february_to_the_28th() -> None:
    assert add_years(datetime(2026, 3, 2, 18, tzinfo=UTC), 5) == datetime(
        2031, 3, 2, 18, tzinfo=UTC
    )
    assert add_years(datetime(2028, 2, 29, tzinfo=UTC), 5) == datetime(2033, 2, 28, tzinfo=UTC)


def test_the_default_period_is_five_years_after_the_last_fact() -> None:
    history = record([granted(at(0)), revoked(at(days=30))])

    early = erasure_verdict(history, FIVE, at(days=400))

    assert not early.allowed
    assert early.refusal is Refusal.RETENTION_PERIOD
    assert early.possible_from == add_years(at(days=30), 5)
    assert early.possible_from.isoformat() in early.explain()


def test_erasure_is_possible_from_the_end_of_the_period_on() -> None:
    history = record([granted(at(0)), revoked(at(days=30))])
    end = add_years(at(days=30), 5)

    assert not erasure_verdict(history, FIVE, end - timedelta(microseconds=1)).allowed
    assert erasure_verdict(history, FIVE, end).allowed
    assert erasure_verdict(history, Retention(years=2), add_years(at(days=30), 2)).allowed


def test_a_fact_recorded_late_restarts_the_period_from_when_it_was_recorded() -> None:
    history = record([granted(at(0))], known_at=[at(days=365)])

    verdict = erasure_verdict(history, FIVE, add_years(at(0), 5))

    assert verdict.possible_from == add_years(at(days=365), 5)


def test_a_hold_placed_on_an_old_text_read_again_does_not_restart_the_period() -> None:
    # The hold is the service's reading of a text it had, placed at the text's time:
    # counted from its record, years after the text, the number's data was kept years
    # past the period (47 CFR 64.1200(d)(6) counts a do-not-call request from when it
    # was made). Another brand's copy of it (``held_for``) counts so too.
    text = inbound(at(days=30), "ST\u00d8P")
    held = reread_hold(text)
    placed = add_years(at(days=30), 3)
    history = record([granted(at(0)), text, held, held_for(held, "globex")])
    history[2:] = [replace(r, recorded_at=placed) for r in history[2:]]

    verdict = erasure_verdict(history, FIVE, add_years(at(days=30), 5))

    assert verdict.allowed, verdict
    assert verdict.last_fact == at(days=30)
    # Any other fact recorded late, a hold of another kind included, counts from then.
    other = replace(history[2], event=replace(held, request_id="refused-1"))
    assert not erasure_verdict([*history[:2], other], FIVE, add_years(at(days=30), 5)).allowed


def test_holds_and_erasures_do_not_restart_the_period() -> None:
    history = record([granted(at(0)), hold(at(days=900)), release(at(days=901))])

    assert erasure_verdict(history, FIVE, add_years(at(0), 5)).allowed


def test_a_standing_legal_hold_refuses_even_after_the_period() -> None:
    history = record([granted(at(0)), hold(at(days=10))])

    verdict = erasure_verdict(history, FIVE, add_years(at(0), 9))

    assert verdict.refusal is Refusal.LEGAL_HOLD
    assert verdict.holds == ("smith-v-acme",)
    assert "smith-v-acme" in verdict.explain()


def test_a_released_hold_no_longer_refuses_but_another_still_does() -> None:
    released = record([granted(at(0)), hold(at(1)), release(at(2))])
    two = record([granted(at(0)), hold(at(1)), hold(at(2), "other"), release(at(3))])

    assert erasure_verdict(released, FIVE, add_years(at(0), 6)).allowed
    assert erasure_verdict(two, FIVE, add_years(at(0), 6)).holds == ("other",)


def test_an_erasure_the_verdict_refuses_is_never_built() -> None:
    history = record([granted(at(0))])
    verdict = erasure_verdict(history, FIVE, at(days=1))

    with pytest.raises(ValueError, match="refuses"):
        erasure_event(RequestErasure("r1", PHONE, BRAND), at(days=1), verdict, "dpo")


def test_hold_requests_name_every_bad_field() -> None:
    with pytest.raises(InvalidRequest) as err:
        hold_event(PlaceLegalHold("", "not a phone", "Bad Brand!", ""), at(0), "law")

    assert {f for f, _ in err.value.violations} == {"request_id", "phone", "brand", "hold_id"}


# --- what an erased subscriber allows --------------------------------------------


def test_after_erasure_a_send_is_denied_as_erased_not_as_no_consent() -> None:
    state = fold(record([granted(at(0)), erasure(at(10))]))

    decision = decide(state, campaign(), at(11))

    assert not decision.allowed
    assert decision.reason is Reason.SUBJECT_ERASED


def test_a_start_after_erasure_does_not_resume_the_erased_consent() -> None:
    state = fold(
        record([granted(at(0)), revoked(at(1)), erasure(at(10)), resumed(at(20), "promo")])
    )

    decision = decide(state, campaign(), at(21))

    # Without the erasure the START would resume the grant; with it there is no grant
    # to resume, and the opt-out stands.
    assert not decision.allowed
    assert decision.reason is Reason.REVOKED
    assert decide(
        fold(record([granted(at(0)), revoked(at(1)), resumed(at(20), "promo")])), campaign(), at(21)
    ).allowed


def test_a_fresh_opt_in_after_erasure_allows_again() -> None:
    state = fold(record([granted(at(0)), revoked(at(1)), erasure(at(10)), granted(at(20))]))

    assert decide(state, campaign(), at(21)).reason is Reason.CONSENT_ACTIVE


def test_the_first_message_of_an_erased_consent_is_forgotten_with_it() -> None:
    # The grant it followed is gone, so a state refolded from the retained facts
    # has no consent for the send to open: the fold forgets it as well.
    state = fold(record([granted(at(0)), sent(at(5)), erasure(at(10))]))

    assert state.campaign("promo").opener is None
    assert fold(retained_facts(state)) == state
    # Nor does its opt-out language, though a grant that moved it is gone as well.
    events = [sent(at(0)), granted(at(0)), erasure(at(0))]
    state = fold(record(events))
    assert state.campaign("promo").last_disclosed is None
    assert fold(retained_facts(state)) == state


def test_a_grant_from_before_the_erasure_recorded_after_it_allows_nothing() -> None:
    events = [granted(at(0)), erasure(at(10)), granted(at(5))]

    state = fold(record(events))

    assert decide(state, campaign(), at(11)).reason is Reason.SUBJECT_ERASED


def sealed_with(key_id: str, when: datetime) -> Any:
    """A grant at ``when`` whose proof is sealed with the key ``key_id``."""
    return evolved(granted(when), sealed=Sealed(key_id, b"n" * 12, b"c", ("proof.name",)))


def test_a_grant_sealed_with_a_key_the_erasure_destroyed_allows_nothing_wherever_placed() -> None:
    # An opt-in under way while the number was erased: sealed with the key the
    # erasure destroys, appended after it (or placed before it but said later).
    gone = evolved(erasure(at(10)), key_ids=("k1",))
    after = [sealed_with("k1", at(0)), gone, sealed_with("k1", at(20))]
    before = [sealed_with("k1", at(0)), sealed_with("k1", at(20)), gone]

    for events in (after, before):
        state = fold(record(events))
        assert decide(state, campaign(), at(21)).reason is Reason.SUBJECT_ERASED
        refolded = fold(retained_facts(state))
        assert decide(refolded, campaign(), at(21)).reason is Reason.SUBJECT_ERASED
    # A fresh opt-in sealed with a key made after the erasure allows.
    fresh = fold(record([sealed_with("k1", at(0)), gone, sealed_with("k2", at(20))]))
    assert decide(fresh, campaign(), at(21)).reason is Reason.CONSENT_ACTIVE


def test_a_conversation_the_person_began_before_the_erasure_is_over() -> None:
    conversational = campaign(purpose=CampaignPurpose.CONVERSATIONAL)
    state = fold(record([inbound(at(0), campaign="promo"), erasure(at(1))]))

    assert decide(state, conversational, at(2)).reason is Reason.SUBJECT_ERASED
    # Nor does a text after it open one: only a fresh opt-in allows after an erasure.
    again = fold(record([inbound(at(0)), erasure(at(1)), inbound(at(2), campaign="promo")]))
    assert decide(again, conversational, at(3)).reason is Reason.SUBJECT_ERASED


def test_the_erased_state_is_the_same_in_any_order_and_refolds_from_its_facts() -> None:
    events = [granted(at(0)), revoked(at(1)), erasure(at(10)), resumed(at(12)), granted(at(20))]
    states = {
        fold(
            [
                Recorded(e, r.position, r.recorded_at)
                for e, r in zip(order, record(list(order)), strict=True)
            ]
        )
        .campaigns["promo"]
        .grant.event.event_id  # type: ignore[union-attr]
        for order in itertools.permutations(events)
    }
    state = fold(record(events))

    assert states == {events[-1].event_id}
    assert fold(retained_facts(state)) == state
