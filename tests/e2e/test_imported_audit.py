"""What auditors read back about imported facts (real Kafka, real PostgreSQL): an
import's records carry their own past times, and every audit read of them agrees
with what CanSend and CanSendAsOf answer for those times."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta

from consent.v1 import consent_service_pb2 as api
from google.protobuf import json_format

from tests.e2e.harness import Client, Clock, client, define, opt_in, opt_out, ts

PROMO_SENDER = "+12125550191"
ALERTS_SENDER = "+12125550192"


async def imported(app: Client, records: Sequence[api.ImportRecord]) -> str:
    """Import ``records`` in one stream; the consistency token of its last answer."""

    async def sent() -> AsyncIterator[api.ImportConsentsRequest]:
        yield api.ImportConsentsRequest(records=records)

    answers = app.stub.ImportConsents(
        sent(), metadata=[("authorization", f"Bearer {app.token}")], timeout=30
    )
    return [a async for a in answers][-1].consistency_token


async def test_a_held_opt_out_of_one_campaign_is_in_the_packet_of_each_it_denies(serve):
    """An imported opt-out held for review denies every campaign of its brand, but
    a campaign's packet listed it only under the campaign it named: the packet of
    another campaign showed a send judged not allowed on evidence it did not hold."""
    clock = Clock()
    now = clock.now
    opted_in, opted_out = now - timedelta(days=3 * 365), now - timedelta(days=365)
    service = await serve(
        clock=clock,
        campaigns=[
            define("acme", name, now - timedelta(days=6 * 365), [number])
            for name, number in (("promo", PROMO_SENDER), ("alerts", ALERTS_SENDER))
        ],
    )
    phone = "+14155550193"
    async with client(service.address) as admin:
        # No channel: refused, and held for review under the number and brand.
        held = opt_out(phone, "acme", "promo", opted_out, "old-out-1", channel=0)
        await imported(admin, [api.ImportRecord(opt_out=held)])
        grant = opt_in(phone, "acme", "alerts", opted_in, "old-in-1")
        await imported(admin, [api.ImportRecord(opt_in=grant)])
        sent = await admin.RecordMessagesSent(
            api.RecordMessagesSentRequest(
                request_id=uuid.uuid4().hex,
                brand="acme",
                messages=[
                    api.SentMessage(
                        phone=phone,
                        campaign="alerts",
                        message_id="alerts-after-the-opt-out",
                        occurred_at=ts(opted_out + timedelta(days=30)),
                        from_number=ALERTS_SENDER,
                        included_opt_out_language=True,
                        identified_sender=True,
                    )
                ],
            )
        )
        asked = dict(phone=phone, brand="acme", at_least_as_fresh=sent.consistency_token)
        then = await admin.CanSendAsOf(
            api.CanSendAsOfRequest(
                **asked, campaign="alerts", at=ts(opted_out + timedelta(days=30))
            )
        )
        assert not then.allowed
        assert then.reason == api.REASON_REVOCATION_OVERDUE, then
        answer = await admin.GetProofPacket(api.GetProofPacketRequest(**asked, campaign="alerts"))
    packet = json_format.MessageToDict(answer.packet)
    [message] = packet["messages"]
    assert not message["decision"]["allowed"]
    listed = {e["event_id"] for e in packet["events"]}
    assert set(then.evidence_event_ids) <= listed
    assert set(message["decision"]["evidence"]) <= listed
    [hold] = packet["opt_outs"]
    assert hold["event"]["event_id"] in then.evidence_event_ids
    assert hold["scope"].startswith("every campaign of acme"), hold["scope"]


async def test_a_held_opt_out_of_one_campaign_is_in_another_campaigns_packet_unsent(serve):
    """Another campaign's packet held the hold only when a send's decision cited it:
    with nothing sent, it showed the opt-in standing and no opt-out, while CanSend
    denied that campaign on the hold."""
    clock = Clock()
    now = clock.now
    service = await serve(
        clock=clock,
        campaigns=[
            define("acme", name, now - timedelta(days=6 * 365), [number])
            for name, number in (("promo", PROMO_SENDER), ("alerts", ALERTS_SENDER))
        ],
    )
    phone = "+14155550194"
    async with client(service.address) as admin:
        held = opt_out(phone, "acme", "promo", now - timedelta(days=365), "old-out-2", channel=0)
        await imported(admin, [api.ImportRecord(opt_out=held)])
        grant = opt_in(phone, "acme", "alerts", now - timedelta(days=3 * 365), "old-in-2")
        token = await imported(admin, [api.ImportRecord(opt_in=grant)])
        asked = dict(phone=phone, brand="acme", at_least_as_fresh=token)
        now_answer = await admin.CanSend(api.CanSendRequest(**asked, campaign="alerts"))
        assert not now_answer.allowed
        answer = await admin.GetProofPacket(api.GetProofPacketRequest(**asked, campaign="alerts"))
    packet = json_format.MessageToDict(answer.packet)
    assert set(now_answer.evidence_event_ids) <= {e["event_id"] for e in packet["events"]}
    [hold] = packet["opt_outs"]
    assert hold["event"]["event_id"] in now_answer.evidence_event_ids
    assert hold["kind"] == "candidate"
