"""An obligation CanSend names stays owed until a message that discharged it: every
reader (CanSend, CanSendBatch, CanSendAsOf) keeps it owed after a send that only
seemed to, on the embedded default and on real Kafka."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb

from services.bootstrap import Runtime
from tests.e2e.harness import Client, client, define, inbound, module_clock, opt_in, sent, ts

SENDER = "+12125550187"
CLOCK = module_clock()


@pytest.fixture(scope="module", params=["embedded", "kafka"])
async def service(request, module_serve) -> Runtime:
    """acme/promo from SENDER, one service per ledger for the module's own numbers."""
    promo = define("acme", "promo", CLOCK.now - timedelta(days=60), [SENDER])
    on_kafka = request.param == "kafka"
    return await module_serve(
        name=f"obligations-{request.param}", clock=CLOCK, campaigns=[promo], on_kafka=on_kafka
    )


def _phone() -> str:
    return f"+1415555{uuid.uuid4().int % 10_000:04d}"


def undelivered(
    message: api.RecordMessageSentRequest, at: datetime
) -> api.RecordDeliveryOutcomeRequest:
    return api.RecordDeliveryOutcomeRequest(
        request_id=uuid.uuid4().hex,
        phone=message.phone,
        brand="acme",
        message_id=message.message_id,
        outcome=lpb.DELIVERY_OUTCOME_UNDELIVERABLE,
        error_code="30003",
        occurred_at=ts(at),
    )


async def owed(c: Client, phone: str, fresh: str) -> dict[str, list[str]]:
    """The obligations each reader names for a regular message to ``phone`` now."""
    asked = dict(phone=phone, brand="acme", campaign="promo", at_least_as_fresh=fresh)
    one = await c.CanSend(api.CanSendRequest(**asked))
    batch = await c.CanSendBatch(
        api.CanSendBatchRequest(
            phones=[phone], brand="acme", campaign="promo", at_least_as_fresh=fresh
        )
    )
    then = await c.CanSendAsOf(api.CanSendAsOfRequest(**asked, at=ts(CLOCK.now)))
    answers = {"CanSend": one, "CanSendBatch": batch.decisions[0], "CanSendAsOf": then}
    assert all(a.allowed for a in answers.values()), answers
    return {
        name: sorted(api.Obligation.Name(o) for o in a.obligations) for name, a in answers.items()
    }


async def test_opt_out_language_in_a_first_message_never_delivered_is_owed_again(
    service,
) -> None:
    """The first message carried "Reply STOP to unsubscribe" but the provider said it
    never reached the handset (30003): the person never read it, yet every reader
    stopped naming the opt-out language for the next message."""
    phone = _phone()
    now = CLOCK.now
    async with client(service.address) as c:
        await c.RecordOptIn(opt_in(phone, "acme", "promo", now - timedelta(hours=2)))
        first = sent(phone, "acme", "promo", now - timedelta(hours=1), from_number=SENDER)
        await c.RecordMessageSent(first)
        w = await c.RecordDeliveryOutcome(undelivered(first, now - timedelta(minutes=59)))
        for said in (await owed(c, phone, w.consistency_token)).values():
            assert "OBLIGATION_INCLUDE_OPT_OUT_LANGUAGE" in said
        # Carried again by a send recorded after the report, it is met.
        w = await c.RecordMessageSent(
            sent(phone, "acme", "promo", now - timedelta(minutes=30), from_number=SENDER)
        )
        for said in (await owed(c, phone, w.consistency_token)).values():
            assert "OBLIGATION_INCLUDE_OPT_OUT_LANGUAGE" not in said


async def test_a_late_first_message_that_did_not_reconfirm_leaves_the_reconfirmation_owed(
    service,
) -> None:
    """Nothing went out in the 30 days after the opt-in, so the first message had to
    reconfirm; a regular message went instead, and every reader then stopped naming
    the reconfirmation, as though that message had made it."""
    phone = _phone()
    now = CLOCK.now
    async with client(service.address) as c:
        await c.RecordOptIn(opt_in(phone, "acme", "promo", now - timedelta(days=40)))
        w = await c.RecordMessageSent(
            sent(phone, "acme", "promo", now - timedelta(hours=2), from_number=SENDER)
        )
        for said in (await owed(c, phone, w.consistency_token)).values():
            assert "OBLIGATION_RECONFIRM_IN_THIS_MESSAGE" in said
        request = sent(phone, "acme", "promo", now - timedelta(hours=1), from_number=SENDER)
        request.kind = lpb.MESSAGE_KIND_RECONFIRMATION_REQUEST
        w = await c.RecordMessageSent(request)
        for said in (await owed(c, phone, w.consistency_token)).values():
            assert "OBLIGATION_RECONFIRM_IN_THIS_MESSAGE" not in said


async def test_a_reconfirmation_request_never_delivered_leaves_the_reconfirmation_owed(
    service,
) -> None:
    """The late first message was a reconfirmation request, but the provider said it
    never reached the handset: the consent was not reconfirmed, yet every reader
    stopped naming the reconfirmation."""
    phone = _phone()
    now = CLOCK.now
    async with client(service.address) as c:
        await c.RecordOptIn(opt_in(phone, "acme", "promo", now - timedelta(days=40)))
        request = sent(phone, "acme", "promo", now - timedelta(hours=1), from_number=SENDER)
        request.kind = lpb.MESSAGE_KIND_RECONFIRMATION_REQUEST
        await c.RecordMessageSent(request)
        w = await c.RecordDeliveryOutcome(undelivered(request, now - timedelta(minutes=59)))
        for said in (await owed(c, phone, w.consistency_token)).values():
            assert "OBLIGATION_RECONFIRM_IN_THIS_MESSAGE" in said


async def test_a_send_stamped_ahead_and_recorded_before_a_stop_and_start_meets_nothing(
    service,
) -> None:
    """A sender whose clock runs four minutes ahead recorded a message with the
    opt-out language; the person then sent STOP and START. By its stamp the message
    followed the START, so CanSend and CanSendBatch took it for the new consent's
    first message, while CanSendAsOf, for the same moment, did not."""
    phone = _phone()
    now = CLOCK.now
    async with client(service.address) as c:
        await c.RecordOptIn(opt_in(phone, "acme", "promo", now - timedelta(hours=1)))
        await c.RecordMessageSent(
            sent(phone, "acme", "promo", now + timedelta(minutes=4), from_number=SENDER)
        )
        await c.HandleInboundMessage(inbound(phone, SENDER, "STOP", now - timedelta(minutes=2)))
        w = await c.HandleInboundMessage(
            inbound(phone, SENDER, "START", now - timedelta(minutes=1))
        )
        for said in (await owed(c, phone, w.consistency_token)).values():
            assert "OBLIGATION_INCLUDE_OPT_OUT_LANGUAGE" in said
