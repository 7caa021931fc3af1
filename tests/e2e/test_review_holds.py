"""The life of a hold for review, through the real gRPC server: what a reviewer's
resolution lifts, and what it must leave denying."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb

from ledger.ports import ConsistencyToken
from services.bootstrap import Runtime
from tests.e2e.harness import (
    Clock,
    client,
    define,
    held_info,
    imported,
    inbound,
    module_clock,
    opt_in,
    opt_out,
    sent,
    ts,
)
from tests.e2e.test_lifecycle import ACME_NUMBER

pytestmark = pytest.mark.asyncio(loop_scope="session")


def phone(i: int) -> str:
    return f"+1415555{7000 + i:04d}"


async def _promo(serve: Any, clock: Clock, **where: Any) -> tuple[Runtime, Clock]:
    campaign = define("acme", "promo", clock.now - timedelta(days=60), [ACME_NUMBER])
    return await serve(name="holds", clock=clock, campaigns=[campaign], **where), clock


@pytest.fixture(scope="module")
async def embedded(module_serve):
    """acme's promo campaign on the embedded default's ledger; each test has numbers
    of its own."""
    return await _promo(module_serve, module_clock(), on_kafka=False)


@pytest.fixture(scope="module")
async def on_kafka(module_serve):
    return await _promo(module_serve, module_clock())


async def readers(
    runtime: Runtime, number: str, fresh: str, at: datetime, kind: int = 0
) -> dict[str, Any]:
    """What CanSend, CanSendBatch and CanSendAsOf (at ``at``) say of ``number`` for a
    message of ``kind`` (a regular one by default)."""
    ask = dict(
        phone=number, brand="acme", campaign="promo", at_least_as_fresh=fresh, message_kind=kind
    )
    async with client(runtime.address) as c:
        one = await c.CanSend(api.CanSendRequest(**ask))
        batch = await c.CanSendBatch(
            api.CanSendBatchRequest(
                phones=[number],
                brand="acme",
                campaign="promo",
                at_least_as_fresh=fresh,
                message_kind=kind,
            )
        )
        as_of = await c.CanSendAsOf(api.CanSendAsOfRequest(**ask, at=ts(at)))
    return {
        "CanSend": (one.allowed, one.reason),
        "CanSendBatch": [(d.allowed, d.reason) for d in batch.decisions],
        "CanSendAsOf": (as_of.allowed, as_of.reason),
    }


def denied(reason: int) -> dict[str, Any]:
    return {
        "CanSend": (False, reason),
        "CanSendBatch": [(False, reason)],
        "CanSendAsOf": (False, reason),
    }


def refused_at_provider(message: Any, at: datetime) -> api.RecordDeliveryOutcomeRequest:
    """Twilio's 21610 for ``message``: the person opted out at the provider."""
    return api.RecordDeliveryOutcomeRequest(
        request_id=f"d-{uuid.uuid4().hex}",
        phone=message.phone,
        brand="acme",
        message_id=message.message_id,
        outcome=lpb.DELIVERY_OUTCOME_FAILED,
        error_code="21610",
        occurred_at=ts(at),
    )


def dismissal(number: str, candidate: str, at: datetime) -> api.ResolveRevocationCandidateRequest:
    return api.ResolveRevocationCandidateRequest(
        request_id=f"r-{uuid.uuid4().hex}",
        phone=number,
        brand="acme",
        candidate_event_id=candidate,
        resolution=lpb.CANDIDATE_RESOLUTION_DISMISSED,
        occurred_at=ts(at),
        resolved_by="reviewer: the person texted START",
    )


async def _reported(
    c, message: api.RecordMessageSentRequest, report, *, recorded: bool
) -> tuple[str, str]:
    """The provider's 21610 ``report`` of ``message``: with the send recorded, or, as
    Twilio refuses at the send, with none recorded and the outcome refused. The id of
    the report's own hold, and the consistency token that sees it."""
    if recorded:
        await c.RecordMessageSent(message)
        again = await c.RecordDeliveryOutcome(report)
        assert len(again.event_ids) == 2, again  # the outcome and a hold of its own
        return again.event_ids[1], again.consistency_token
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await c.RecordDeliveryOutcome(report)
    info = held_info(caught.value)
    assert info is not None, caught.value
    return info["candidate_event_id"], info["consistency_token"]


async def _provider_opt_out_after_a_start(
    service: tuple[Runtime, Clock], number: str, *, recorded: bool = True
) -> None:
    runtime, clock = service
    t = clock.now
    async with client(runtime.address, "acme-app") as c:
        await c.RecordOptIn(opt_in(number, "acme", "promo", t - timedelta(days=1)))
        first = sent(number, "acme", "promo", t - timedelta(minutes=30))
        await c.RecordMessageSent(first)
        held = await c.RecordDeliveryOutcome(refused_at_provider(first, t - timedelta(minutes=29)))
        assert len(held.event_ids) == 2, held  # the outcome and its hold
        hold = held.event_ids[1]
        start = await c.HandleInboundMessage(
            inbound(number, ACME_NUMBER, "START", t - timedelta(minutes=20))
        )
        assert start.reply == api.REPLY_KIND_NONE, start  # the hold stands
        helped = await c.HandleInboundMessage(
            inbound(number, ACME_NUMBER, "HELP", t - timedelta(minutes=19))
        )
        assert helped.reply == api.REPLY_KIND_HELP, helped
        # The HELP's reply, which the hold does not stop, is refused by the provider:
        # the person opted out there again since the START.
        reply = sent(
            number, "acme", "promo", t - timedelta(minutes=19), kind=lpb.MESSAGE_KIND_HELP_REPLY
        )
        report = refused_at_provider(reply, t - timedelta(minutes=19))
        later, again = await _reported(c, reply, report, recorded=recorded)
        assert later != hold
    async with client(runtime.address) as reviewer:
        # The reviewer dismisses the first hold: the START came after it.
        resolved = await reviewer.ResolveRevocationCandidate(
            dismissal(number, hold, t - timedelta(minutes=10))
        )
    token = ConsistencyToken.decode(resolved.consistency_token).merge(
        ConsistencyToken.decode(again)
    )
    said = await readers(runtime, number, token.encode(), t - timedelta(minutes=5))
    assert said == denied(api.REASON_REVOCATION_PENDING_REVIEW), said


async def test_a_provider_opt_out_after_a_start_outlives_the_dismissal_of_the_one_before(
    embedded,
):
    """A 21610 reported while another such hold was pending added no hold of its own
    ("one review answers the person's one opt-out"). After a START it is another
    opt-out: the reviewer who dismissed the first hold, as the START said, let the
    number be sent to though the provider said it had opted out since."""
    await _provider_opt_out_after_a_start(embedded, phone(1))
    await _provider_opt_out_after_a_start(embedded, phone(3), recorded=False)


async def test_a_provider_opt_out_after_a_start_outlives_it_on_kafka(on_kafka):
    await _provider_opt_out_after_a_start(on_kafka, phone(2))


async def _a_start_then_please_stop(service: tuple[Runtime, Clock], number: str) -> None:
    runtime, clock = service
    t = clock.now
    async with client(runtime.address, "acme-app") as c:
        await c.RecordOptIn(opt_in(number, "acme", "promo", t - timedelta(days=1)))
        await c.HandleInboundMessage(inbound(number, ACME_NUMBER, "STOP", t - timedelta(minutes=3)))
        start = await c.HandleInboundMessage(
            inbound(number, ACME_NUMBER, "START", t - timedelta(minutes=2))
        )
        assert start.reply == api.REPLY_KIND_OPT_IN_CONFIRMATION, start
        confirmation = lpb.MESSAGE_KIND_OPT_IN_CONFIRMATION
        said = await readers(runtime, number, start.consistency_token, t, confirmation)
        assert said["CanSend"] == (True, api.REASON_OPT_IN_CONFIRMATION_ALLOWED), said
        flagged = await c.HandleInboundMessage(
            inbound(number, ACME_NUMBER, "please stop texting me", t - timedelta(minutes=1))
        )
        assert flagged.intent == api.INBOUND_INTENT_REVOCATION_CANDIDATE, flagged
    said = await readers(runtime, number, flagged.consistency_token, t, confirmation)
    assert said == denied(api.REASON_REVOCATION_PENDING_REVIEW), said


async def test_a_start_is_not_confirmed_once_a_reply_after_it_awaits_review(embedded):
    """ "START", then "please stop texting me": a STOP there denies the START's
    confirmation, but the reply, held for review, left it allowed, and the person
    who asked to be left alone was told they were subscribed again."""
    await _a_start_then_please_stop(embedded, phone(4))


async def test_a_start_is_not_confirmed_once_a_reply_after_it_awaits_review_on_kafka(on_kafka):
    await _a_start_then_please_stop(on_kafka, phone(5))


async def _confirmed_from_the_reply(service: tuple[Runtime, Clock], late: str, soon: str) -> None:
    runtime, clock = service
    t = clock.now
    confirmation = lpb.MESSAGE_KIND_OPT_OUT_CONFIRMATION
    said = {}
    async with client(runtime.address, "acme-app") as c, client(runtime.address) as reviewer:
        for number, ago in ((late, timedelta(hours=3)), (soon, timedelta(minutes=2))):
            await c.RecordOptIn(opt_in(number, "acme", "promo", t - timedelta(days=1)))
            flagged = await c.HandleInboundMessage(
                inbound(number, ACME_NUMBER, "please stop texting me", t - ago)
            )
            revoked = await reviewer.ResolveRevocationCandidate(
                api.ResolveRevocationCandidateRequest(
                    request_id=f"r-{uuid.uuid4().hex}",
                    phone=number,
                    brand="acme",
                    candidate_event_id=flagged.event_ids[-1],
                    resolution=lpb.CANDIDATE_RESOLUTION_REVOKED,
                    occurred_at=ts(t),
                    resolved_by="reviewer: it reads as a STOP",
                )
            )
            said[number] = await readers(
                runtime, number, revoked.consistency_token, t, confirmation
            )
    assert said[late] == denied(api.REASON_OPT_OUT_CONFIRMATION_NOT_ALLOWED), said
    allowed = (True, api.REASON_OPT_OUT_CONFIRMATION_ALLOWED)
    assert said[soon] == {"CanSend": allowed, "CanSendBatch": [allowed], "CanSendAsOf": allowed}


async def test_an_opt_out_a_review_records_is_confirmed_only_within_minutes_of_the_reply(
    embedded,
):
    """A reviewer's "revoked" records the opt-out at the review: its one confirmation
    was allowed for five minutes from then, hours after the person's reply, where
    47 CFR 64.1200(a)(12) allows it within five minutes of the request (a STOP
    recorded that late owes none). A review within those minutes still owes it."""
    await _confirmed_from_the_reply(embedded, phone(6), phone(7))


async def test_an_opt_out_a_review_records_is_confirmed_from_the_reply_on_kafka(on_kafka):
    await _confirmed_from_the_reply(on_kafka, phone(8), phone(9))


async def test_a_start_is_not_said_to_be_owed_a_confirmation_under_a_stop_of_every_brand(
    embedded,
):
    """A STOP to a number no campaign sends from, from a caller of every brand, is
    held under ``*`` and denies every brand: the START after it is not confirmed,
    and HandleInboundMessage said a confirmation was owed all the same, where the
    README has CanSend allow the reply it names."""
    runtime, clock = embedded
    t, number = clock.now, phone(10)
    async with client(runtime.address) as operator:
        await operator.RecordOptIn(opt_in(number, "acme", "promo", t - timedelta(days=1)))
        await operator.HandleInboundMessage(
            inbound(number, "+12125550961", "STOP", t - timedelta(minutes=3))
        )
        start = await operator.HandleInboundMessage(
            inbound(number, ACME_NUMBER, "START", t - timedelta(minutes=2))
        )
    confirmation = lpb.MESSAGE_KIND_OPT_IN_CONFIRMATION
    said = await readers(runtime, number, start.consistency_token, t, confirmation)
    assert said == denied(api.REASON_REVOKED_BRAND_WIDE), said
    assert start.reply == api.REPLY_KIND_NONE, start


async def _a_second_provider_opt_out(
    service: tuple[Runtime, Clock], number: str, *, recorded: bool = True
) -> None:
    runtime, clock = service
    t = clock.now
    async with client(runtime.address, "acme-app") as c:
        await c.RecordOptIn(opt_in(number, "acme", "promo", t - timedelta(days=1)))
        first, second = (
            sent(number, "acme", "promo", t - timedelta(minutes=30)),
            sent(number, "acme", "promo", t - timedelta(minutes=29)),
        )
        await c.RecordMessageSent(first)
        held = await c.RecordDeliveryOutcome(refused_at_provider(first, t - timedelta(minutes=28)))
        hold = held.event_ids[1]
        # The provider refuses the second message too, no consent recorded between.
        report = refused_at_provider(second, t - timedelta(minutes=27))
        later, token = await _reported(c, second, report, recorded=recorded)
        assert later != hold
    async with client(runtime.address) as reviewer:
        # The reviewer reads the first report as the provider's glitch, and dismisses
        # it: the second report still stands.
        resolved = await reviewer.ResolveRevocationCandidate(
            dismissal(number, hold, t - timedelta(minutes=10))
        )
        fresh = ConsistencyToken.decode(resolved.consistency_token).merge(
            ConsistencyToken.decode(token)
        )
        said = await readers(runtime, number, fresh.encode(), t - timedelta(minutes=5))
        assert said == denied(api.REASON_REVOCATION_PENDING_REVIEW), said
        resolved = await reviewer.ResolveRevocationCandidate(
            dismissal(number, later, t - timedelta(minutes=9))
        )
    said = await readers(runtime, number, resolved.consistency_token, t - timedelta(minutes=5))
    assert said["CanSend"][0] and said["CanSendAsOf"][0], said  # both reviewed: sends go on


async def test_a_second_provider_opt_out_outlives_the_dismissal_of_the_first(embedded):
    """A 21610 reported while another such hold was pending, with no consent between,
    added no hold ("one review answers the person's one opt-out"): the reviewer who
    dismissed the first report as the provider's glitch lifted the denial, though the
    second report still said the person had opted out there. Each report is held."""
    await _a_second_provider_opt_out(embedded, phone(11))
    await _a_second_provider_opt_out(embedded, phone(12), recorded=False)


async def test_a_second_provider_opt_out_outlives_the_first_on_kafka(on_kafka):
    await _a_second_provider_opt_out(on_kafka, phone(13))


async def test_an_imported_opt_out_owes_no_confirmation_and_a_live_one_after_it_does(on_kafka):
    """An import's opt-out was received by another platform, which owed its one
    confirmation and may have sent it: dated a minute ago, CanSend allowed ours, and
    the sender could text the person a second time after their STOP. A live STOP
    recorded after it owes its own, as before."""
    runtime, clock = on_kafka
    t, number = clock.now, phone(20)
    confirmation = lpb.MESSAGE_KIND_OPT_OUT_CONFIRMATION
    async with client(runtime.address) as admin:
        await admin.RecordOptIn(opt_in(number, "acme", "promo", t - timedelta(days=1)))
        stop = opt_out(number, "acme", "promo", t - timedelta(minutes=1))
        answer = await imported(admin, api.ImportRecord(opt_out=stop))
        assert answer.imported == 1, answer
        said = await readers(runtime, number, answer.consistency_token, t, confirmation)
        assert said == denied(api.REASON_OPT_OUT_CONFIRMATION_NOT_ALLOWED), said
        ask = dict(phone=number, brand="acme", campaign="promo")
        asked = dict(**ask, at_least_as_fresh=answer.consistency_token)
        one = await admin.CanSend(api.CanSendRequest(**asked, message_kind=confirmation))
        regular = await admin.CanSend(api.CanSendRequest(**asked))
        assert "imported" in one.detail, one
        assert regular.reason == api.REASON_REVOKED, regular
        assert list(one.evidence_event_ids) == list(regular.evidence_event_ids), (one, regular)

        live = await admin.RecordOptOut(opt_out(number, "acme", "promo", t))
        said = await readers(runtime, number, live.consistency_token, t, confirmation)
    allowed = (True, api.REASON_OPT_OUT_CONFIRMATION_ALLOWED)
    assert said == {"CanSend": allowed, "CanSendBatch": [allowed], "CanSendAsOf": allowed}


async def test_an_imported_opt_out_of_an_undefined_campaign_owes_no_confirmation(on_kafka):
    """An import's opt-out naming a campaign not defined is kept for review; a
    review's "revoked" of it, within minutes of its time, allowed our confirmation,
    though another platform received that STOP and owed it. The queue shows it
    imported, and a live one of the same kind still owes its confirmation."""
    runtime, clock = on_kafka
    t, confirmation = clock.now, lpb.MESSAGE_KIND_OPT_OUT_CONFIRMATION
    said, shown = {}, {}
    async with client(runtime.address) as admin:
        for number, how in ((phone(21), "import"), (phone(22), "live")):
            await admin.RecordOptIn(opt_in(number, "acme", "promo", t - timedelta(days=1)))
            stop = opt_out(number, "acme", "launch", t - timedelta(minutes=1))
            if how == "import":
                answer = await imported(admin, api.ImportRecord(opt_out=stop))
                assert answer.imported == 1, answer
                token = answer.consistency_token
            else:
                token = (await admin.RecordOptOut(stop)).consistency_token
            queue = await admin.ListRevocationCandidates(
                api.ListRevocationCandidatesRequest(brand="acme", at_least_as_fresh=token)
            )
            (hold,) = [h for h in queue.candidates if h.event.phone == number]
            shown[how] = hold.event.revocation_candidate_flagged.imported
            revoked = await admin.ResolveRevocationCandidate(
                api.ResolveRevocationCandidateRequest(
                    request_id=f"r-{uuid.uuid4().hex}",
                    phone=number,
                    brand="acme",
                    candidate_event_id=hold.event.event_id,
                    resolution=lpb.CANDIDATE_RESOLUTION_REVOKED,
                    occurred_at=ts(t),
                    resolved_by="reviewer: a STOP for a campaign we never ran",
                )
            )
            said[how] = await readers(runtime, number, revoked.consistency_token, t, confirmation)
    assert shown == {"import": True, "live": False}, shown
    assert said["import"] == denied(api.REASON_OPT_OUT_CONFIRMATION_NOT_ALLOWED), said
    allowed = (True, api.REASON_OPT_OUT_CONFIRMATION_ALLOWED)
    assert said["live"] == {"CanSend": allowed, "CanSendBatch": [allowed], "CanSendAsOf": allowed}
