"""The compliance sweep in hindsight through the real gRPC server, on the real Kafka
ledger and PostgreSQL and on the embedded default's ledger: a send that an opt-out
recorded after it (by RecordOptOut, or imported) shows sent after the opt-out is
found, as the proof packet marks it "not allowed in hindsight"."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb
from google.protobuf.json_format import MessageToDict

from ledger.ports import ConsistencyToken
from tests.e2e.harness import client, define, defined, opt_in, opt_out, sent, serving, ts

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(params=["kafka", "embedded"])
async def service(request, tmp_path, postgres_dsn, kafka_bootstrap):
    """A service on the Kafka ledger, or on the embedded default's PostgreSQL ledger,
    with acme's informational campaign "info" (no quiet hours at night) defined."""
    bootstrap = kafka_bootstrap if request.param == "kafka" else None
    now = datetime.now(UTC)
    campaign = define(
        "acme", "info", now - timedelta(days=2), purpose=lpb.CAMPAIGN_PURPOSE_INFORMATIONAL
    )
    async with serving(
        tmp_path, postgres_dsn, bootstrap, name="hindsight", campaigns=[campaign]
    ) as runtime:
        yield runtime, now


def number(i: int) -> str:
    return f"+1415557{i:04d}"


async def sweep(c, start: datetime, end: datetime, fresh: str) -> list[api.SweepFinding]:
    request = api.SweepCampaignRequest(
        brand="acme",
        campaign="info",
        start_time=ts(start),
        end_time=ts(end),
        at_least_as_fresh=fresh,
    )
    call = c.stub.SweepCampaign(
        request, metadata=[("authorization", f"Bearer {c.token}")], timeout=120
    )
    return [item.finding async for item in call if item.HasField("finding")]


async def not_allowed_in_hindsight(c, phone: str, fresh: str) -> dict[str, str]:
    """The proof packet's sends of ``phone`` marked not allowed in hindsight, by
    message id, with the reason."""
    packet = await c.GetProofPacket(
        api.GetProofPacketRequest(phone=phone, brand="acme", at_least_as_fresh=fresh)
    )
    return {
        m["message_id"]: m["hindsight"]["reason"]
        for m in MessageToDict(packet.packet)["messages"]
        if m["hindsight"] is not None and not m["hindsight"]["allowed"]
    }


async def test_sends_before_opt_outs_recorded_after_them_are_found_in_hindsight(service):
    """Each number opted in, was sent a message that CanSend allowed, and then an
    opt-out placed before that message was recorded: one by RecordOptOut, one by an
    import of an older opt-out of every campaign. The sweep judged each send only as
    recorded and found nothing, while the packet marks both not allowed in hindsight."""
    runtime, now = service
    one, other = number(1), number(2)
    async with client(runtime.address, "acme-app") as c:
        token = ConsistencyToken({})
        for phone in (one, other):
            granted = await c.RecordOptIn(opt_in(phone, "acme", "info", now - timedelta(days=1)))
            token = token.merge(ConsistencyToken.decode(granted.consistency_token))
        asked = api.ReliedOnAnswer(
            consistency_token=token.encode(), allowed=True, reason=api.REASON_CONSENT_ACTIVE
        )
        messages = {}
        for phone in (one, other):
            request = sent(phone, "acme", "info", now - timedelta(hours=2), relied_on=asked)
            w = await c.RecordMessageSent(request)
            token = token.merge(ConsistencyToken.decode(w.consistency_token))
            messages[phone] = request.message_id
        stop = await c.RecordOptOut(opt_out(one, "acme", "info", now - timedelta(hours=3)))
        token = token.merge(ConsistencyToken.decode(stop.consistency_token))
        older = opt_out(other, "acme", None, now - timedelta(hours=3))
        imports = c.stub.ImportConsents(
            iter([api.ImportConsentsRequest(records=[api.ImportRecord(opt_out=older)])]),
            metadata=[("authorization", f"Bearer {c.token}")],
            timeout=60,
        )
        (imported,) = [a async for a in imports]
        assert imported.imported == 1 and not imported.refusals
        fresh = token.merge(ConsistencyToken.decode(imported.consistency_token)).encode()
        findings = await sweep(c, now - timedelta(days=1), now, fresh)
        marked = {p: await not_allowed_in_hindsight(c, p, fresh) for p in (one, other)}
    assert marked == {
        one: {messages[one]: "revoked"},
        other: {messages[other]: "revoked_brand_wide"},
    }
    found = {f.phone: f for f in findings}
    assert sorted(found) == [one, other] and len(findings) == 2
    for phone, reason in ((one, api.REASON_REVOKED), (other, api.REASON_REVOKED_BRAND_WIDE)):
        f = found[phone]
        assert f.message_id == messages[phone] and f.hindsight
        assert list(f.kinds) == [api.SWEEP_FINDING_KIND_AFTER_OPT_OUT]
        assert not f.allowed and f.reason == reason


async def test_a_send_without_asking_before_a_late_opt_out_is_one_finding_with_both(service):
    """A send recorded without asking CanSend, then an opt-out placed before it: the
    sweep gives one finding for the send, naming what it lacked as recorded and in
    hindsight, with both answers."""
    runtime, now = service
    phone = number(3)
    async with client(runtime.address, "acme-app") as c:
        granted = await c.RecordOptIn(opt_in(phone, "acme", "info", now - timedelta(days=1)))
        token = ConsistencyToken.decode(granted.consistency_token)
        request = sent(phone, "acme", "info", now - timedelta(hours=2))
        w = await c.RecordMessageSent(request)
        token = token.merge(ConsistencyToken.decode(w.consistency_token))
        stop = await c.RecordOptOut(opt_out(phone, "acme", "info", now - timedelta(hours=3)))
        fresh = token.merge(ConsistencyToken.decode(stop.consistency_token)).encode()
        findings = [
            f for f in await sweep(c, now - timedelta(days=1), now, fresh) if f.phone == phone
        ]
        marked = await not_allowed_in_hindsight(c, phone, fresh)
    assert marked == {request.message_id: "revoked"}
    (found,) = findings
    assert list(found.kinds) == [
        api.SWEEP_FINDING_KIND_SENT_WITHOUT_ASKING,
        api.SWEEP_FINDING_KIND_AFTER_OPT_OUT,
    ]
    assert found.hindsight and list(found.hindsight_kinds) == [api.SWEEP_FINDING_KIND_AFTER_OPT_OUT]
    assert not found.allowed and found.reason == api.REASON_REVOKED
    assert found.as_recorded.allowed and found.as_recorded.reason == api.REASON_CONSENT_ACTIVE
    assert not found.HasField("relied_on")


async def test_the_campaigns_packet_answers_where_a_send_of_another_campaign_is_cited(service):
    """The one confirmation a STOP is owed went out for another campaign, and the
    campaign's own second one was refused citing it. The sweep found that send; the
    campaign's proof packet, which an auditor reads beside it, failed (INTERNAL) on
    the cited send of the other campaign."""
    runtime, now = service
    await defined(
        runtime,
        [
            define(
                "acme",
                "alerts",
                now - timedelta(days=2),
                purpose=lpb.CAMPAIGN_PURPOSE_INFORMATIONAL,
            )
        ],
    )
    phone = number(4)
    async with client(runtime.address, "acme-app") as c:
        granted = await c.RecordOptIn(opt_in(phone, "acme", "info", now - timedelta(days=1)))
        token = ConsistencyToken.decode(granted.consistency_token)
        stop = await c.RecordOptOut(opt_out(phone, "acme", "info", now - timedelta(hours=3)))
        token = token.merge(ConsistencyToken.decode(stop.consistency_token))
        ids = {}
        for campaign, minutes in (("alerts", 1), ("info", 2)):
            at = now - timedelta(hours=3) + timedelta(minutes=minutes)
            request = sent(phone, "acme", campaign, at, kind=lpb.MESSAGE_KIND_OPT_OUT_CONFIRMATION)
            w = await c.RecordMessageSent(request)
            token = token.merge(ConsistencyToken.decode(w.consistency_token))
            ids[campaign] = request.message_id
        fresh = token.encode()
        findings = [
            f for f in await sweep(c, now - timedelta(days=1), now, fresh) if f.phone == phone
        ]
        packet = await c.GetProofPacket(
            api.GetProofPacketRequest(
                phone=phone, brand="acme", campaign="info", at_least_as_fresh=fresh
            )
        )
    (found,) = findings
    assert found.message_id == ids["info"] and not found.hindsight
    assert api.SWEEP_FINDING_KIND_AFTER_OPT_OUT in found.kinds
    (message,) = MessageToDict(packet.packet)["messages"]
    assert message["message_id"] == ids["info"] and not message["decision"]["allowed"]
    assert (
        message["decision"]["reason"]
        == MessageToDict(found)["reason"].removeprefix("REASON_").lower()
    )
