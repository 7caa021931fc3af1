"""After an erasure, every fact that can follow it without being a fresh opt-in leaves
every reader saying what README "Erasure" promises: CanSend (the fold's digest, one
refolded from its retained facts, the projection's stored digest and the replica's
compact one, CanSendAsOf's history) denies with ``SUBJECT_ERASED``, or with the
opt-out that stands, and GetConsent says ``ERASED`` or that opt-out; a fresh opt-in
after the erasure allows its campaign, and only its campaign."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from ledger.campaigns import CampaignPolicy, CampaignPurpose
from ledger.digest import Digest, digest_of
from ledger.events import (
    CampaignDefined,
    CandidateResolution,
    ConsentTier,
    DeliveryOutcome,
    DeliveryOutcomeReported,
    LedgerEvent,
    LedgerPosition,
    LegalHoldPlaced,
    LegalHoldReleased,
    MessageKind,
    Recorded,
    Sealed,
    SubjectErased,
    SubscriberLocated,
    evolved,
)
from ledger.policy import Check, Decision, Reason, decide_as_of, earns_exemption
from ledger.state import fold, retained_facts
from ledger.status import ConsentState, consent_state
from services.wire.compact_digest import Shapes
from services.wire.digest import decode_digest, encode_digest
from tests.builders import (
    BRAND,
    PHONE,
    age,
    at,
    campaign,
    flagged,
    granted,
    inbound,
    reconfirmed,
    resolved,
    resumed,
    revoked,
    sent,
)

ERASED_AT = at(10)
AFTER = at(20)
"""When each fact follows the erasure; every reader asks a minute later."""
NOW = at(21)
FRESH = at(30)


def _erasure() -> SubjectErased:
    return SubjectErased(
        event_id=uuid.uuid4(),
        occurred_at=ERASED_AT,
        phone=PHONE,
        brand=BRAND,
        requested_by="dpo",
        key_ids=("k-old",),
    )


def _ids(when: datetime) -> dict[str, Any]:
    return {"event_id": uuid.uuid4(), "occurred_at": when, "phone": PHONE, "brand": BRAND}


def _review_resolved() -> list[LedgerEvent]:
    # Held before the erasure, dismissed after it: the hold lifts, nothing allows.
    candidate = flagged(at(2))
    return [candidate, resolved(AFTER, candidate, CandidateResolution.DISMISSED)]


FOLLOWING: dict[str, tuple[Callable[[], list[LedgerEvent]], bool]] = {
    # name: (the facts after the erasure (a few placed before it), whether they open an
    # opt-out of every campaign of the brand)
    "START to the campaign's number": (
        lambda: [inbound(AFTER, "START", "promo"), resumed(AFTER, "promo")],
        False,
    ),
    "UNSTOP to no campaign's number": (
        lambda: [inbound(AFTER, "UNSTOP"), resumed(AFTER)],
        False,
    ),
    "HELP": (lambda: [inbound(AFTER, "HELP", "promo")], False),
    "reconfirmation": (
        lambda: [inbound(AFTER, "YES", "promo"), reconfirmed(AFTER)],
        False,
    ),
    "conversation on the campaign's number": (
        lambda: [inbound(AFTER, "what are your hours?", "promo")],
        False,
    ),
    "conversation on another campaign's number": (
        lambda: [inbound(AFTER, "what are your hours?", "news")],
        False,
    ),
    "conversation on no campaign's number": (lambda: [inbound(AFTER)], False),
    "age verification": (lambda: [age(AFTER, plus21=True)], False),
    "location": (lambda: [SubscriberLocated(**_ids(AFTER), region="CA")], False),
    "message sent": (lambda: [sent(AFTER)], False),
    "delivery outcome": (
        lambda: [
            DeliveryOutcomeReported(
                **_ids(AFTER),
                message_id="msg-1",
                campaign="promo",
                outcome=DeliveryOutcome.DELIVERED,
            )
        ],
        False,
    ),
    "legal hold placed and released": (
        lambda: [
            LegalHoldPlaced(**_ids(AFTER), hold_id="h1"),
            LegalHoldReleased(**_ids(AFTER), hold_id="h1"),
        ],
        False,
    ),
    "review resolved": (_review_resolved, False),
    "opt-in imported with a time before the erasure": (lambda: [granted(at(5))], False),
    "opt-in sealed with the key the erasure destroyed": (
        lambda: [evolved(granted(AFTER), sealed=Sealed("k-old", b"n" * 12, b"c", ("proof.name",)))],
        False,
    ),
    "opt-in to another campaign": (lambda: [granted(AFTER, "news")], False),
    "keyword opt-in to another campaign": (
        lambda: [inbound(AFTER, "JOIN", "news"), granted(AFTER, "news")],
        False,
    ),
    "opt-out of another campaign": (lambda: [revoked(AFTER, "news")], False),
    "STOPALL": (lambda: [inbound(AFTER, "STOPALL"), revoked(AFTER, None)], True),
}

PURPOSES = {
    "promotional": CampaignPurpose.PROMOTIONAL,
    "informational": CampaignPurpose.INFORMATIONAL,
    "conversational": CampaignPurpose.CONVERSATIONAL,
}


def _recorded(events: list[LedgerEvent]) -> list[Recorded]:
    return [Recorded(e, LedgerPosition(0, i), e.occurred_at) for i, e in enumerate(events)]


def _defined(name: str, purpose: CampaignPurpose) -> CampaignDefined:
    return CampaignDefined(
        event_id=uuid.uuid4(),
        occurred_at=at(days=-1),
        brand=BRAND,
        campaign=name,
        policy=CampaignPolicy(purpose=purpose),
    )


def _history(*, stop_before: bool, following: str, fresh: bool = False) -> list[Recorded]:
    """The number's facts at acme: an opt-in to promo (and a STOP of it, with
    ``stop_before``), the erasure, the ``following`` facts, and a fresh opt-in to promo
    after them with ``fresh``."""
    events: list[LedgerEvent] = [granted(at(0)), granted(at(0), "news")]
    if stop_before:
        events.append(revoked(at(1)))
    events += [_erasure(), *FOLLOWING[following][0]()]
    if fresh:
        events.append(granted(FRESH))
    return _recorded(events)


def _answers(history: list[Recorded], name: str, purpose: CampaignPurpose, now: datetime) -> Any:
    """What each reader answers for ``name`` at ``now``: every CanSend path's
    decision (reason and allowed, for each kind of message a consent allows), and
    GetConsent's state."""
    rules = campaign(name, purpose=purpose)
    state = fold(history)
    digest = digest_of(state)
    shapes = Shapes()
    stored = decode_digest(encode_digest(digest))
    assert stored is not None
    digests: dict[str, Digest] = {
        "fold": digest,
        "refolded": digest_of(fold(retained_facts(state))),
        "stored": stored,
        "replica": shapes.decode(shapes.encode(digest)),
    }
    decisions: dict[str, tuple[bool, Reason]] = {}
    kinds = (
        MessageKind.REGULAR,
        MessageKind.RECONFIRMATION_REQUEST,
        MessageKind.CONVERSATION_REPLY,
    )
    for kind in kinds:
        check = Check(rules, now, kind)  # one Check for many numbers, as a batch asks
        for path, d in digests.items():
            decisions[f"{path}/{kind.value}"] = _said(check(d))
        decisions[f"as_of/{kind.value}"] = _said(
            decide_as_of([_recorded([_defined(name, purpose)])[0], *history], name, now, now, kind)
        )
    pending = bool(state.pending_candidates())
    return decisions, consent_state(digest, name, pending_review=pending)


def _said(decision: Decision) -> tuple[bool, Reason]:
    return decision.allowed, decision.reason


def _every(decisions: dict[str, tuple[bool, Reason]]) -> set[tuple[bool, Reason]]:
    return set(decisions.values())


def _assert_erased(
    following: str, decisions: dict[str, tuple[bool, Reason]], state: ConsentState
) -> None:
    """Every reader denies as erased, or names the brand-wide opt-out ``following`` made."""
    if FOLLOWING[following][1]:
        assert _every(decisions) == {(False, Reason.REVOKED_BRAND_WIDE)}, decisions
        assert state is ConsentState.REVOKED_BRAND_WIDE
    else:
        assert _every(decisions) == {(False, Reason.SUBJECT_ERASED)}, decisions
        assert state is ConsentState.ERASED


@pytest.mark.parametrize("purpose", PURPOSES.values(), ids=PURPOSES.keys())
@pytest.mark.parametrize("following", FOLLOWING)
def test_no_fact_after_an_erasure_but_a_fresh_opt_in_allows_and_each_reader_says_erased(
    following: str, purpose: CampaignPurpose
) -> None:
    history = _history(stop_before=False, following=following)
    decisions, state = _answers(history, "promo", purpose, NOW)

    _assert_erased(following, decisions, state)


@pytest.mark.parametrize("following", FOLLOWING)
def test_an_opt_out_from_before_the_erasure_still_stands_and_every_reader_names_it(
    following: str,
) -> None:
    history = _history(stop_before=True, following=following)
    decisions, state = _answers(history, "promo", CampaignPurpose.PROMOTIONAL, NOW)

    # The later of the two opt-outs is the one named, by every reader alike.
    brand_wide = FOLLOWING[following][1]
    reason = Reason.REVOKED_BRAND_WIDE if brand_wide else Reason.REVOKED
    assert _every(decisions) == {(False, reason)}, decisions
    assert state is (ConsentState.REVOKED_BRAND_WIDE if brand_wide else ConsentState.REVOKED)


@pytest.mark.parametrize("purpose", PURPOSES.values(), ids=PURPOSES.keys())
@pytest.mark.parametrize("following", FOLLOWING)
def test_a_fresh_opt_in_after_the_erasure_allows_its_campaign_and_no_other(
    following: str, purpose: CampaignPurpose
) -> None:
    history = _history(stop_before=True, following=following, fresh=True)

    decisions, state = _answers(history, "promo", purpose, FRESH + timedelta(minutes=1))
    assert _every(decisions) == {(True, Reason.CONSENT_ACTIVE)}, decisions
    assert state is ConsentState.ACTIVE

    others, other_state = _answers(history, "deals", purpose, FRESH + timedelta(minutes=1))
    _assert_erased(following, others, other_state)


@pytest.mark.parametrize("following", FOLLOWING)
def test_as_of_a_moment_before_the_erasure_or_before_it_was_known_the_consent_stood(
    following: str,
) -> None:
    # The erasure changes what may be sent from its time on, as the ledger learned
    # it: a send before it, or checked as the ledger stood before it, was allowed.
    history = _history(stop_before=False, following=following)
    defined = _recorded([_defined("promo", CampaignPurpose.PROMOTIONAL)])[0]
    facts = [defined, *history]

    before = decide_as_of(facts, "promo", ERASED_AT - timedelta(minutes=1), NOW)
    unknown = decide_as_of(facts, "promo", NOW, ERASED_AT - timedelta(seconds=1))

    # A reply held for review before the erasure holds everything until resolved.
    held = following == "review resolved"
    then = (False, Reason.REVOCATION_PENDING_REVIEW) if held else (True, Reason.CONSENT_ACTIVE)
    assert _said(before) == then
    assert _said(unknown) == then


def test_a_conversational_grant_after_the_erasure_opens_its_conversations_again() -> None:
    history = _recorded(
        [
            granted(at(0)),
            _erasure(),
            inbound(AFTER, "what are your hours?", "promo"),
            granted(FRESH, tier=ConsentTier.CONVERSATIONAL),
        ]
    )
    rules = campaign(purpose=CampaignPurpose.CONVERSATIONAL)
    digest = digest_of(fold(history))

    later = FRESH + timedelta(minutes=1)
    assert _said(Check(rules, later)(digest)) == (True, Reason.CONVERSATION_REPLY)
    # Without that grant the text alone opens nothing after an erasure.
    assert _said(Check(rules, later)(digest_of(fold(history[:-1])))) == (
        False,
        Reason.SUBJECT_ERASED,
    )


def test_replies_owed_to_a_text_after_the_erasure_are_the_text_s_own() -> None:
    # A STOP's confirmation and a HELP's reply are earned by the text alone, erased or
    # not; a START's confirmation needs the consent it resumed, which the erasure took.
    rules = campaign()
    help_after = digest_of(
        fold(_recorded([granted(at(0)), _erasure(), inbound(AFTER, "HELP", "promo")]))
    )
    stop_after = digest_of(fold(_recorded([granted(at(0)), _erasure(), revoked(AFTER)])))
    start_after = digest_of(
        fold(
            _recorded(
                [
                    granted(at(0)),
                    _erasure(),
                    inbound(AFTER, "START", "promo"),
                    resumed(AFTER, "promo"),
                ]
            )
        )
    )

    assert Check(rules, NOW, MessageKind.HELP_REPLY)(help_after).allowed
    assert Check(rules, NOW, MessageKind.OPT_OUT_CONFIRMATION)(stop_after).allowed
    assert _said(Check(rules, NOW, MessageKind.OPT_IN_CONFIRMATION)(start_after)) == (
        False,
        Reason.SUBJECT_ERASED,
    )


@pytest.mark.parametrize("purpose", PURPOSES.values(), ids=PURPOSES.keys())
def test_a_reply_held_for_review_after_the_erasure_is_named_by_every_reader(
    purpose: CampaignPurpose,
) -> None:
    # Like an opt-out that stands, a reply that may be one is named while it is held;
    # dismissed, the erasure is ("review resolved" above).
    history = _recorded([granted(at(0)), _erasure(), flagged(AFTER, "leave me alone")])

    decisions, state = _answers(history, "promo", purpose, NOW)

    assert _every(decisions) == {(False, Reason.REVOCATION_PENDING_REVIEW)}, decisions
    assert state is ConsentState.PENDING_REVIEW


def test_a_reply_to_a_text_after_the_erasure_earns_no_exemption_from_the_caps() -> None:
    # Judged at the write as CanSend judges it: no conversation is open to reply in.
    rules = campaign(purpose=CampaignPurpose.CONVERSATIONAL)
    text = inbound(AFTER, "are you open?", "promo")
    erased = digest_of(fold(_recorded([granted(at(0)), _erasure(), text])))
    kept = digest_of(fold(_recorded([granted(at(0)), text])))

    assert not earns_exemption(erased, rules, NOW, MessageKind.CONVERSATION_REPLY)
    assert earns_exemption(kept, rules, NOW, MessageKind.CONVERSATION_REPLY)
