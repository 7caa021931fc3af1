"""Recording delivery outcomes (``RecordDeliveryOutcome``): validated by field, tied
to the send they report on, and recorded once per request."""

from __future__ import annotations

import pytest

from ledger.commands import RecordDeliveryOutcome, RecordMessageSent, to_events
from ledger.errors import InvalidPhoneNumber, InvalidRequest
from ledger.events import DeliveryOutcome, DeliveryOutcomeReported, MessageKind, MessageSent
from ledger.ports import Stream
from services.errors import FailedPrecondition
from tests.builders import BRAND, PHONE, at
from tests.unit.usecase_harness import define, opt_in, running

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
