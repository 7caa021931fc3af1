"""Recording delivery outcomes (``RecordDeliveryOutcome``): validated by field, tied
to the send they report on, and recorded once per request."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from ledger.commands import (
    OPT_OUT_ERROR_CODES,
    HandleInboundMessage,
    RecordDeliveryOutcome,
    RecordMessageSent,
    RefusedOutcome,
    ResolveRevocationCandidate,
    provider_opt_out_hold,
    to_events,
)
from ledger.errors import InvalidPhoneNumber, InvalidRequest
from ledger.events import (
    CandidateResolution,
    DeliveryOutcome,
    DeliveryOutcomeReported,
    MessageKind,
    MessageSent,
    RevocationCandidateFlagged,
)
from ledger.packet import assemble
from ledger.policy import Reason, decide
from ledger.ports import ConsistencyToken, Stream
from ledger.state import fold
from services.errors import (
    FailedPrecondition,
    HeldForReview,
    PermissionDenied,
    PreconditionHeldForReview,
)
from tests.builders import BRAND, PHONE, at, campaign, granted, record
from tests.unit.usecase_harness import NOW, NUMBER, claim, define, opt_in, running

ASYNC = pytest.mark.asyncio(loop_scope="session")


def sent(request_id: str = "s1", message_id: str = "SM1", **changes) -> RecordMessageSent:
    fields = {
        "request_id": request_id,
        "phone": PHONE,
        "brand": BRAND,
        "campaign": "promo",
        "message_id": message_id,
        "kind": MessageKind.REGULAR,
        "occurred_at": at(10),
        **changes,
    }
    return RecordMessageSent(**fields)


def outcome(
    request_id: str = "d1",
    message_id: str = "SM1",
    result: DeliveryOutcome | None = DeliveryOutcome.FAILED,
    error_code: str = "30003",
) -> RecordDeliveryOutcome:
    return RecordDeliveryOutcome(
        request_id, PHONE, BRAND, message_id, result, at(11), error_code=error_code
    )


def test_an_outcome_without_one_is_refused_naming_outcome():
    with pytest.raises(InvalidRequest) as err:
        to_events(outcome(result=None), at(20))
    assert err.value.field == "outcome"


def test_an_error_code_on_a_delivered_message_is_refused():
    with pytest.raises(InvalidRequest) as err:
        to_events(outcome(result=DeliveryOutcome.DELIVERED), at(20))
    assert err.value.field == "error_code"
    assert "delivered" in err.value.reason


def test_an_outcome_without_a_message_id_is_refused_naming_it():
    with pytest.raises(InvalidRequest) as err:
        to_events(outcome(message_id=""), at(20))
    assert err.value.field == "message_id"


def test_a_sending_number_that_is_no_number_is_refused_naming_from_number():
    with pytest.raises(InvalidPhoneNumber) as err:
        to_events(sent(from_number="not a number"), at(20))
    assert err.value.field == "from_number"


def test_the_sending_number_is_kept_with_the_send():
    [event] = to_events(sent(from_number="+12125550100"), at(20))
    assert isinstance(event, MessageSent)
    assert event.from_number == "+12125550100"


def test_a_send_without_a_sending_number_keeps_its_ids():
    # A field added with a default changes no earlier request's ids: a retry across
    # the upgrade is still a retry.
    [without] = to_events(sent(), at(20))
    [blank] = to_events(sent(from_number=""), at(20))
    assert without.event_id == blank.event_id


@ASYNC
async def test_an_outcome_carries_the_campaign_of_the_send_it_reports_on():
    async with running() as (app, _):
        await app.writes.record(define())
        await app.writes.record(opt_in("o1"))
        await app.writes.record(sent())
        written = await app.writes.record(outcome())
        await app.guard.wait_for_token(written.token)
        [recorded] = [
            r
            for r in await app.view.history(PHONE, BRAND)
            if isinstance(r.event, DeliveryOutcomeReported)
        ]
        assert recorded.event.campaign == "promo"
        assert recorded.event.outcome is DeliveryOutcome.FAILED
        assert recorded.event.error_code == "30003"


@ASYNC
async def test_an_outcome_of_a_message_never_recorded_as_sent_is_refused_and_not_written():
    async with running() as (app, _):
        await app.writes.record(define())
        await app.writes.record(sent())
        with pytest.raises(FailedPrecondition) as err:
            await app.writes.record(outcome(message_id="SM-unknown"))
        assert err.value.field == "message_id"
        ledger = app.ledger
        events = await ledger.read(Stream.SUBSCRIBERS, ledger.partition_for(PHONE), 0)
        assert not any(isinstance(r.event, DeliveryOutcomeReported) for r in events)


@ASYNC
async def test_a_retried_outcome_is_recorded_once():
    async with running() as (app, _):
        await app.writes.record(define())
        await app.writes.record(sent())
        first = await app.writes.record(outcome())
        await app.guard.wait_for_token(first.token)
        again = await app.writes.record(outcome())
        assert again.replayed and again.event_ids == first.event_ids
        ledger = app.ledger
        events = await ledger.read(Stream.SUBSCRIBERS, ledger.partition_for(PHONE), 0)
        assert sum(isinstance(r.event, DeliveryOutcomeReported) for r in events) == 1


def _reported(message_id: str = "SM1", error_code: str = "21610", request_id: str = "d1"):
    [event] = to_events(outcome(request_id, message_id, error_code=error_code), at(20))
    assert isinstance(event, DeliveryOutcomeReported)
    return replace(event, campaign="promo")


def test_an_outcome_saying_the_recipient_opted_out_at_the_provider_holds_the_number():
    """Twilio's 21610 is answered only after the person replied STOP to the sender: a
    STOP this ledger never recorded. Until reviewed, every campaign of the brand is
    denied, from the outcome's own time, saying the provider reported it."""
    hold = provider_opt_out_hold(_reported(), OPT_OUT_ERROR_CODES, at(20))
    assert hold is not None and hold.provider_reported
    assert not (hold.imported or hold.refused or hold.unattributed or hold.reused_id)
    assert (hold.phone, hold.brand, hold.campaign, hold.occurred_at) == (PHONE, BRAND, None, at(11))
    state = fold(record([granted(at(0)), hold]))
    for name in ("promo", "other"):
        d = decide(state, campaign(name), at(12))
        assert d.reason is Reason.REVOCATION_PENDING_REVIEW, d
        assert d.detail.startswith(
            "an opt-out the SMS provider reported (the provider reported error 21610"
        ), d.detail
    late = decide(state, campaign("promo"), at(12) + timedelta(days=30))
    assert late.reason is Reason.REVOCATION_OVERDUE
    assert "after it was held" in late.detail
    packet = assemble(record([granted(at(0)), hold]), PHONE, BRAND, None, at(12))
    (line,) = [e.summary for e in packet.events if e.event_id == str(hold.event_id)]
    assert line.startswith("opt-out the SMS provider reported, held for review: ")


def test_only_the_codes_that_say_opted_out_hold_and_one_message_holds_once():
    assert provider_opt_out_hold(_reported(error_code="30003"), OPT_OUT_ERROR_CODES, at(20)) is None
    held = provider_opt_out_hold(_reported(), OPT_OUT_ERROR_CODES, at(20))
    assert provider_opt_out_hold(_reported(), frozenset({"X1"}), at(20)) is None
    # Another outcome of the same message (another request) holds under the same id;
    # another message's under its own.
    again = provider_opt_out_hold(_reported(request_id="d2"), OPT_OUT_ERROR_CODES, at(30))
    other = provider_opt_out_hold(_reported("SM2"), OPT_OUT_ERROR_CODES, at(20))
    assert held is not None and again is not None and other is not None
    assert again.event_id == held.event_id and other.event_id != held.event_id
    # Stamped ahead of the clock, it is placed now, not when it would deny nothing.
    ahead = replace(_reported(), occurred_at=at(23))
    placed = provider_opt_out_hold(ahead, OPT_OUT_ERROR_CODES, at(20))
    assert placed is not None and placed.occurred_at == at(20)


def _holds(events) -> list[RevocationCandidateFlagged]:
    return [
        r.event
        for r in events
        if isinstance(r.event, RevocationCandidateFlagged) and r.event.provider_reported
    ]


@ASYNC
async def test_a_21610_outcome_holds_the_number_with_it_once_until_dismissed():
    async with running() as (app, _):
        await app.writes.record(define())
        await app.writes.record(opt_in("o1"))
        await app.writes.record(sent())
        await app.writes.record(sent("s2", "SM2"))
        await app.writes.record(sent("s3", "SM3"))
        other = await app.writes.record(outcome("d0", "SM3", error_code="30003"))
        assert len(other.event_ids) == 1
        checked = await app.checks.can_send(PHONE, BRAND, "promo", token=other.token)
        assert checked.decision.allowed, checked.decision
        written = await app.writes.record(outcome(error_code="21610"))
        assert len(written.event_ids) == 2  # the outcome and its hold, in one append
        checked = await app.checks.can_send(PHONE, BRAND, "promo", token=written.token)
        assert checked.decision.reason is Reason.REVOCATION_PENDING_REVIEW, checked.decision
        assert "SMS provider reported" in checked.decision.detail
        again = await app.writes.record(outcome(error_code="21610"))
        assert again.event_ids == written.event_ids
        second = await app.writes.record(outcome("d2", "SM2", error_code="21610"))
        assert len(second.event_ids) == 2  # a report of its own: a hold of its own
        ledger = app.ledger
        events = await ledger.read(Stream.SUBSCRIBERS, ledger.partition_for(PHONE), 0)
        holds = list({h.event_id: h for h in _holds(events)}.values())
        assert len(holds) == 2, holds
        for i, hold in enumerate(holds):
            resolve = ResolveRevocationCandidate(
                f"r{i}", PHONE, BRAND, str(hold.event_id), CandidateResolution.DISMISSED, NOW
            )
            resolved = await app.writes.record(resolve)
            checked = await app.checks.can_send(PHONE, BRAND, "promo", token=resolved.token)
            # Each dismissal lifts its own report only: sends go on once both are.
            assert checked.decision.allowed == (i == 1), checked.decision


@ASYNC
async def test_a_start_after_an_opt_out_the_provider_reported_leaves_it_for_review():
    """A START resumes a campaign's own STOP, never a hold (as for every other hold):
    the reviewer, who sees the START in the history, dismisses it."""
    async with running() as (app, _):
        await app.writes.record(claim("define-promo", BRAND, "promo", NUMBER))
        await app.writes.record(opt_in("o1"))
        await app.writes.record(sent())
        await app.writes.record(outcome(error_code="21610"))
        start = HandleInboundMessage("in-1", PHONE, NUMBER, "START", "MM1", at(12))
        answered = await app.writes.handle_inbound(start)
        checked = await app.checks.can_send(PHONE, BRAND, "promo", token=answered.write.token)
        assert checked.decision.reason is Reason.REVOCATION_PENDING_REVIEW, checked.decision


def _refuse(brand: str) -> None:
    raise PermissionDenied("brand", f"may not write for {brand!r}")


@ASYNC
async def test_a_21610_outcome_refused_for_a_detail_holds_the_number_all_the_same():
    """Twilio answers 21610 when asked to send: the message never went out, so the
    sender often recorded no send. The outcome is refused, and the number held all
    the same (the refusal says so); once per message, and never for a caller that
    may not write for the brand or for another code."""
    async with running() as (app, _):
        await app.writes.record(define())
        await app.writes.record(opt_in("o1"))
        unsent = outcome(error_code="21610")
        with pytest.raises(FailedPrecondition) as err:
            await app.writes.record(unsent)
        said = RefusedOutcome(PHONE, BRAND, "SM1", "21610", None)  # no time: placed now
        await app.writes.hold_refused_outcome(said, err.value, _refuse)
        other = replace(said, error_code="30003")
        await app.writes.hold_refused_outcome(other, err.value, lambda brand: None)
        ledger = app.ledger
        assert not _holds(await ledger.read(Stream.SUBSCRIBERS, ledger.partition_for(PHONE), 0))
        with pytest.raises(PreconditionHeldForReview) as held:
            await app.writes.hold_refused_outcome(said, err.value, lambda brand: None)
        assert held.value.field == "message_id" and "held for review" in held.value.reason
        hold_id = held.value.metadata["candidate_event_id"]
        token = ConsistencyToken.decode(held.value.metadata["consistency_token"])
        checked = await app.checks.can_send(PHONE, BRAND, "promo", token=token)
        assert checked.decision.reason is Reason.REVOCATION_PENDING_REVIEW, checked.decision
        assert "the outcome was refused (message_id: no message" in checked.decision.detail
        # A retry names that hold; another message's outcome, refused for its time, is
        # a report of its own: held on its own, which dismissing the first leaves.
        with pytest.raises(PreconditionHeldForReview) as again:
            await app.writes.hold_refused_outcome(said, err.value, lambda brand: None)
        assert again.value.metadata["candidate_event_ids"] == hold_id
        ahead = replace(said, message_id="SM2", occurred_at=at(10_000))
        with pytest.raises(HeldForReview) as late:
            await app.writes.hold_refused_outcome(
                ahead, InvalidRequest("occurred_at", "is ahead"), lambda brand: None
            )
        other_id = late.value.metadata["candidate_event_ids"]
        assert other_id not in ("", hold_id), late.value.metadata
        # The send recorded after all, the corrected outcome keeps the same one hold.
        await app.writes.record(sent())
        written = await app.writes.record(unsent)
        assert written.event_ids[1:] == [hold_id]
        await app.guard.wait_for_token(written.token)
        events = await ledger.read(Stream.SUBSCRIBERS, ledger.partition_for(PHONE), 0)
        assert {str(h.event_id) for h in _holds(events)} == {hold_id, other_id}
        # Written again as first placed, not at the corrected outcome's time.
        assert {h.occurred_at for h in _holds(events) if str(h.event_id) == hold_id} == {NOW}
