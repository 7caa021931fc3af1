"""Facts dated back before a send but recorded after it: an opt-in, an age
verification, a rule lifting an age gate. Each counts against the sends before it in
hindsight, never for them: a sender that sent without consent and records the
consent afterwards, dated back, gets no "allowed" for the send from the proof
packet's answer in hindsight nor from ``CanSendAsOf`` without ``known_at``, and the
sweep still finds the send. Through the gRPC API, on the embedded default's ledger
and (the opt-in) on Kafka's."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb
from google.protobuf.json_format import MessageToDict

from ledger.ports import ConsistencyToken
from tests.e2e.harness import client, define, imported, inbound, opt_in, opt_out, sent, ts

pytestmark = pytest.mark.asyncio(loop_scope="session")

CHAT = "+12125550617"
"""The number acme's conversational campaign "chat" sends from."""


def campaign(name: str, start: datetime, **policy) -> api.DefineCampaignRequest:
    # Informational: no quiet hours, so the real clock's time of day does not matter.
    return define("acme", name, start, purpose=lpb.CAMPAIGN_PURPOSE_INFORMATIONAL, **policy)


async def judged(c, phone: str, name: str, at: datetime, token: ConsistencyToken):
    """For the send of ``phone`` at ``at``: the packet's answers (then, in hindsight),
    CanSendAsOf's without ``known_at`` and with it now, the sweep's finding, and the
    packet's opt-ins."""
    fresh = token.encode()
    packet = await c.GetProofPacket(
        api.GetProofPacketRequest(phone=phone, brand="acme", campaign=name, at_least_as_fresh=fresh)
    )
    shown = MessageToDict(packet.packet)
    (message,) = shown["messages"]
    asked = api.CanSendAsOfRequest(
        phone=phone, brand="acme", campaign=name, at=ts(at), at_least_as_fresh=fresh
    )
    hindsight = await c.CanSendAsOf(asked)
    asked.known_at.CopyFrom(ts(datetime.now(UTC)))
    known = await c.CanSendAsOf(asked)
    request = api.SweepCampaignRequest(
        brand="acme",
        campaign=name,
        start_time=ts(at - timedelta(hours=1)),
        end_time=ts(at + timedelta(hours=1)),
        at_least_as_fresh=fresh,
    )
    call = c.stub.SweepCampaign(
        request, metadata=[("authorization", f"Bearer {c.token}")], timeout=60
    )
    found = [i.finding for i in [i async for i in call] if i.HasField("finding")]
    found = [f for f in found if f.phone == phone]
    return message, hindsight, known, found, shown.get("opt_ins", [])


async def sent_then_dated_back(service, phone: str, name: str, record) -> list[dict]:
    """A send of ``name`` to ``phone`` ten minutes ago that was not allowed, then the fact
    ``record`` writes (dated an hour back): the send stays not allowed on every reading.
    Returns the packet's opt-ins."""
    now = datetime.now(UTC)
    at = now - timedelta(minutes=10)  # past the clock skew a check of now allows
    async with client(service.address, "acme-app") as c, client(service.address) as auditor:
        token = ConsistencyToken.decode(
            (await c.RecordMessageSent(sent(phone, "acme", name, at))).consistency_token
        )
        written = await record(c, auditor, now - timedelta(hours=1))
        token = token.merge(ConsistencyToken.decode(written.consistency_token))
        message, hindsight, known, found, opt_ins = await judged(auditor, phone, name, at, token)
    assert not message["decision"]["allowed"], message
    late = message["hindsight"]
    assert late is None or not late["allowed"], late
    assert not hindsight.allowed, hindsight
    assert written.event_ids[0] in hindsight.detail, hindsight.detail
    # The send itself is stamped before the campaign's rules were recorded (at the
    # service's start, dated back a day): those do not allow it in hindsight either.
    assert "does not allow it" in hindsight.detail, hindsight.detail
    # Read as known now (an imported history), the fact counts for the send; the allow
    # names it as recorded after the moment, when what was recorded then did not allow.
    assert known.allowed, known
    assert written.event_ids[0] in known.detail, known.detail
    assert "recorded by then it was not allowed" in known.detail, known.detail
    (finding,) = found  # found for what it lacked, not only for asking nothing first
    assert set(finding.kinds) - {api.SWEEP_FINDING_KIND_SENT_WITHOUT_ASKING}, finding
    return opt_ins


@pytest.fixture(scope="module")
async def embedded(module_serve):
    start = datetime.now(UTC) - timedelta(days=1)
    return await module_serve(
        on_kafka=False,
        name="backdated",
        campaigns=[
            campaign("info", start),
            campaign("beer", start, age_gated=True, category="alcohol"),
            # Gated by its flag alone: rules lifting a category's gate would change
            # what it sends, which ends the consent given before them on its own.
            campaign("wine", start, age_gated=True),
            define("acme", "chat", start, [CHAT], purpose=lpb.CAMPAIGN_PURPOSE_CONVERSATIONAL),
        ],
    )


def opted_in(phone: str, name: str):
    async def record(c, _auditor, at: datetime):
        return await c.RecordOptIn(opt_in(phone, "acme", name, at))

    return record


def imported_in(phone: str, name: str):
    """``opted_in``'s opt-in, imported (``ImportConsents``), as a migration would."""

    async def record(c, auditor, at: datetime):
        answer = await imported(c, api.ImportRecord(opt_in=opt_in(phone, "acme", name, at)))
        assert answer.imported == 1, answer
        listed = await auditor.ListEvents(
            api.ListEventsRequest(
                phone=phone, brand="acme", at_least_as_fresh=answer.consistency_token
            )
        )
        granted = [
            e.event.event_id for e in listed.events if e.event.event_type == "ConsentGranted"
        ]
        return SimpleNamespace(event_ids=granted, consistency_token=answer.consistency_token)

    return record


def first_message(opt_ins: list[dict]) -> list[dict]:
    """Each opt-in's "first message" of the packet's template."""
    return [t for o in opt_ins for t in o["template"] if t["key"] == "first_message"]


async def test_an_opt_in_dated_back_after_a_send_allows_it_on_no_reading(embedded):
    phone = "+14155550611"
    opt_ins = await sent_then_dated_back(embedded, phone, "info", opted_in(phone, "info"))
    # Nor is the send its first message: the packet named it so, the proof's template
    # filled by a send made before the opt-in was known, while CanSend owed the
    # opt-out language still (only a send recorded after a consent meets it).
    assert [t["missing"] for t in first_message(opt_ins)] == [True], opt_ins


async def test_an_opt_in_imported_dated_back_after_a_send_allows_it_on_no_reading(embedded):
    phone = "+14155550617"
    opt_ins = await sent_then_dated_back(embedded, phone, "info", imported_in(phone, "info"))
    assert [t["missing"] for t in first_message(opt_ins)] == [True], opt_ins


async def test_an_age_verified_dated_back_after_a_send_allows_it_on_no_reading(embedded):
    phone = "+14155550612"
    async with client(embedded.address, "acme-app") as c:
        await c.RecordOptIn(opt_in(phone, "acme", "beer", datetime.now(UTC) - timedelta(hours=2)))

    async def verified(c, _auditor, at: datetime):
        return await c.RecordAgeVerification(
            api.RecordAgeVerificationRequest(
                request_id=uuid.uuid4().hex,
                phone=phone,
                brand="acme",
                method="id_scan",
                occurred_at=ts(at),
                verified_21_plus=True,
            )
        )

    await sent_then_dated_back(embedded, phone, "beer", verified)


async def test_an_age_gate_lifted_back_in_time_after_a_send_allows_it_on_no_reading(embedded):
    phone = "+14155550613"
    async with client(embedded.address, "acme-app") as c:
        await c.RecordOptIn(opt_in(phone, "acme", "wine", datetime.now(UTC) - timedelta(hours=2)))

    async def lifted(_c, auditor, at: datetime):
        return await auditor.ChangeCampaignPolicy(
            api.ChangeCampaignPolicyRequest(
                request_id=uuid.uuid4().hex,
                brand="acme",
                campaign="wine",
                policy=lpb.CampaignPolicy(purpose=lpb.CAMPAIGN_PURPOSE_INFORMATIONAL),
                occurred_at=ts(at),
            )
        )

    await sent_then_dated_back(embedded, phone, "wine", lifted)


async def test_an_opt_in_dated_back_after_a_send_on_kafka(module_serve):
    service = await module_serve(
        name="backdated", campaigns=[campaign("info", datetime.now(UTC) - timedelta(days=1))]
    )
    for phone, record in (("+14155550614", opted_in), ("+14155550618", imported_in)):
        opt_ins = await sent_then_dated_back(service, phone, "info", record(phone, "info"))
        assert [t["missing"] for t in first_message(opt_ins)] == [True], opt_ins


async def test_a_dismissal_dated_back_to_its_hold_allows_no_send_made_during_it(embedded):
    """A send while an opt-out refused for its details awaited review, then the
    reviewer's dismissal dated back to the hold: the send was made under the hold, and
    the dismissal recorded since does not make it allowed in hindsight."""
    phone, now = "+14155550616", datetime.now(UTC)
    held_at, at = now - timedelta(minutes=20), now - timedelta(minutes=10)
    async with client(embedded.address, "acme-app") as c, client(embedded.address) as auditor:
        await c.RecordOptIn(opt_in(phone, "acme", "info", now - timedelta(hours=2)))
        with pytest.raises(grpc.aio.AioRpcError):  # no channel: refused, and held
            await c.RecordOptOut(opt_out(phone, "acme", "info", held_at, channel=0))
        sending = await c.RecordMessageSent(sent(phone, "acme", "info", at))
        token = ConsistencyToken.decode(sending.consistency_token)
        queue = await auditor.ListRevocationCandidates(
            api.ListRevocationCandidatesRequest(brand="acme", at_least_as_fresh=token.encode())
        )
        (hold,) = [h for h in queue.candidates if h.event.phone == phone]
        dismissed = await auditor.ResolveRevocationCandidate(
            api.ResolveRevocationCandidateRequest(
                request_id=uuid.uuid4().hex,
                phone=phone,
                brand="acme",
                candidate_event_id=hold.event.event_id,
                resolution=lpb.CANDIDATE_RESOLUTION_DISMISSED,
                occurred_at=ts(held_at),
                resolved_by="reviewer",
            )
        )
        token = token.merge(ConsistencyToken.decode(dismissed.consistency_token))
        message, hindsight, _, found, _ = await judged(auditor, phone, "info", at, token)
    assert message["decision"]["reason"] == "revocation_pending_review", message
    assert message["hindsight"] is None or not message["hindsight"]["allowed"], message
    assert not hindsight.allowed and dismissed.event_ids[0] in hindsight.detail, hindsight
    (finding,) = found
    assert api.SWEEP_FINDING_KIND_AFTER_OPT_OUT in finding.kinds, finding


async def test_an_opt_in_dated_back_after_a_reply_puts_it_on_no_other_grounds(embedded):
    """A reply inside a conversation the person began needs no opt-in; an opt-in dated
    back before it, recorded after, gave it in the packet a "hindsight" ruling that
    allowed it on that consent (with a first message's obligations), which the CLI
    counted "not allowed in hindsight", while the sweep found nothing in hindsight.
    Every reading now stands on the conversation."""
    phone, now = "+14155550619", datetime.now(UTC)
    at = now - timedelta(minutes=10)
    async with client(embedded.address, "acme-app") as c, client(embedded.address) as auditor:
        await c.HandleInboundMessage(inbound(phone, CHAT, "hi, are you open today?", at))
        reply = sent(phone, "acme", "chat", at + timedelta(seconds=30))
        reply.kind = lpb.MESSAGE_KIND_CONVERSATION_REPLY
        token = ConsistencyToken.decode((await c.RecordMessageSent(reply)).consistency_token)
        written = await c.RecordOptIn(opt_in(phone, "acme", "chat", now - timedelta(hours=1)))
        token = token.merge(ConsistencyToken.decode(written.consistency_token))
        # (CanSendAsOf for the moment is the unit tests' to ask: this service's
        # rules were recorded at its start, a few minutes after the reply.)
        moment = at + timedelta(seconds=30)
        message, _, _, found, _ = await judged(auditor, phone, "chat", moment, token)
    assert (message["decision"]["allowed"], message["decision"]["reason"]) == (
        True,
        "conversation_reply",
    ), message
    assert message.get("hindsight") is None, message
    (finding,) = found  # asked nothing first, and nothing else
    assert list(finding.kinds) == [api.SWEEP_FINDING_KIND_SENT_WITHOUT_ASKING], finding
