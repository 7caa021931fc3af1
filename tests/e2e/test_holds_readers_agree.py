"""Every reader says what CanSend says of a number held for review, through the real
gRPC server: each kind of hold (an opt-out refused for its details, a reply flagged
as one, a STOP to a number no campaign sends from, an opt-out of a campaign never
defined, a provider's opt-out code with and without a recorded send, an imported
opt-out held), while held, after a fresh opt-in, past its deadline, and resolved
revoked or dismissed. The readers: CanSendBatch, CanSendAsOf, GetConsent, ListEvents,
the review queue, the proof packet (its holds, timeline and sends), SweepCampaign,
WatchConsentChanges, the stored ``consent_status`` rows and, on Kafka, the streaming
consumers' opt-out table. One service per ledger serves the module (the embedded
default for every case, Kafka for one); each case writes a number of its own."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb
from google.protobuf.json_format import MessageToDict

from ledger.ports import ConsistencyToken, Stream
from services.bootstrap import Runtime
from services.consumer.opt_out_table import OptOutTable
from services.consumer.stream import StreamConsumer, StreamConsumerSettings, StreamEvent
from tests.e2e.harness import (
    Client,
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

pytestmark = pytest.mark.asyncio(loop_scope="session")

SENDER = "+12125550284"
"""The number acme's promo sends from."""
UNOWNED = "+12125550298"
"""A number no campaign sends from: a STOP to it is held under every brand ("*")."""
CAMPAIGNS = ("promo", "alerts")
HOLD_REASONS = {
    api.REASON_REVOCATION_PENDING_REVIEW,
    api.REASON_REVOCATION_OVERDUE,
    api.REASON_REVOKED_BRAND_WIDE,
}
KINDS = (
    "refused opt-out",
    "flagged reply",
    "unowned STOP",
    "undefined campaign",
    "provider code",
    "provider code, no send",
    "imported opt-out",
)
_numbers = iter(range(100))
_STORED = {
    api.CONSENT_STATE_ACTIVE: "active",
    api.CONSENT_STATE_REVOKED: "revoked",
    api.CONSENT_STATE_REVOKED_BRAND_WIDE: "revoked",
}
"""``consent_status.status`` for GetConsent's state, with no hold pending."""


def as_dict(message: Any) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


@dataclass
class Case:
    c: Client
    clock: Clock
    phone: str
    dsn: str
    export: Export | None = None
    token: ConsistencyToken = field(default_factory=lambda: ConsistencyToken({}))
    start: str = ""
    """A token from before the hold: where the watch starts."""
    sends: dict[str, datetime] = field(default_factory=dict)

    def wrote(self, token: str) -> None:
        if token:
            self.token = self.token.merge(ConsistencyToken.decode(token))

    def fresh(self) -> str:
        return self.token.encode()


async def services(module_serve: Any, clock: Clock) -> dict[str, Runtime]:
    campaigns = [
        define("acme", "promo", clock.now - timedelta(days=60), [SENDER]),
        define("acme", "alerts", clock.now - timedelta(days=60)),
    ]
    return {
        "embedded": await module_serve(
            on_kafka=False, name="holds", clock=clock, campaigns=campaigns
        ),
        "kafka": await module_serve(name="holds", clock=clock, campaigns=campaigns),
    }


class Export:
    """The streaming consumers' worked example (``services.consumer.opt_out_table``)
    kept in sync with a Kafka ledger: a CRM's copy of who is opted in."""

    def __init__(self, runtime: Runtime, path: Path) -> None:
        kafka = runtime.settings.kafka
        assert kafka is not None
        self.table = OptOutTable(path)
        self.applied: set[str] = set()
        self.changed = asyncio.Condition()
        self.stop = asyncio.Event()
        settings = StreamConsumerSettings(
            kafka.bootstrap_servers,
            group_id=f"holds-{uuid.uuid4().hex[:8]}",
            topic_prefix=kafka.topic_prefix,
            streams=(Stream.SUBSCRIBERS,),
            poll_timeout_s=0.1,
        )
        self.task = asyncio.create_task(StreamConsumer(settings).run(self._apply, stop=self.stop))

    async def _apply(self, item: StreamEvent) -> None:
        self.table.apply(item)
        async with self.changed:
            self.applied.add(str(item.event_id))
            self.changed.notify_all()

    async def status(self, phone: str, ids: set[str]) -> dict[str, bool]:
        """The table's rows of ``phone`` at acme once the events ``ids`` are applied."""
        async with asyncio.timeout(30), self.changed:
            await self.changed.wait_for(lambda: ids <= self.applied)
        return self.table.status("acme", phone)

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 30)
        self.table.close()


@pytest.fixture(scope="module")
async def ledgers(
    module_serve, tmp_path_factory
) -> AsyncIterator[tuple[dict[str, Runtime], Clock, Export]]:
    clock = module_clock()
    runtimes = await services(module_serve, clock)
    export = Export(runtimes["kafka"], tmp_path_factory.mktemp("holds") / "opt_outs.sqlite")
    try:
        yield runtimes, clock, export
    finally:
        await export.close()


async def send(case: Case, name: str, at: datetime, relied: bool) -> None:
    message = sent(case.phone, "acme", "promo", at, from_number=SENDER)
    if relied:
        asked = await case.c.CanSend(
            api.CanSendRequest(
                phone=case.phone, brand="acme", campaign="promo", at_least_as_fresh=case.fresh()
            )
        )
        assert asked.allowed, asked
        message.relied_on.CopyFrom(
            api.ReliedOnAnswer(
                consistency_token=asked.consistency_token,
                allowed=asked.allowed,
                reason=asked.reason,
                evidence_event_ids=asked.evidence_event_ids,
            )
        )
    case.wrote((await case.c.RecordMessageSent(message)).consistency_token)
    case.sends[name] = at
    case.sends[message.message_id] = at


async def hold(case: Case, kind: str) -> None:
    """Hold ``case``'s number for review, the way ``kind`` says."""
    c, phone, now = case.c, case.phone, case.clock.now
    at = now - timedelta(minutes=50)
    if kind == "refused opt-out":  # no channel: refused, and held
        try:
            await c.RecordOptOut(opt_out(phone, "acme", "promo", at, channel=0))
        except grpc.aio.AioRpcError as err:
            info = held_info(err)
            assert info is not None, err
            case.wrote(info["consistency_token"])
            return
        raise AssertionError("an opt-out with no channel was recorded")
    if kind == "flagged reply":
        w = await c.HandleInboundMessage(inbound(phone, SENDER, "please stop texting me", at))
    elif kind == "unowned STOP":
        w = await c.HandleInboundMessage(inbound(phone, UNOWNED, "STOP", at))
    elif kind == "undefined campaign":
        w = await c.RecordOptOut(opt_out(phone, "acme", "winter-sale", at, text="stop it"))
    elif kind.startswith("provider code"):
        if kind == "provider code":
            message_id = next(m for m in case.sends if m.startswith("SM"))
        else:
            message_id = f"SM{uuid.uuid4().hex[:12]}"
        request = api.RecordDeliveryOutcomeRequest(
            request_id=uuid.uuid4().hex,
            phone=phone,
            brand="acme",
            message_id=message_id,
            outcome=lpb.DELIVERY_OUTCOME_FAILED,
            error_code="21610",
            occurred_at=ts(at),
        )
        try:
            w = await c.RecordDeliveryOutcome(request)
        except grpc.aio.AioRpcError as err:
            info = held_info(err)
            assert info is not None and kind.endswith("no send"), err
            case.wrote(info["consistency_token"])
            return
    else:  # an opt-out said to come three hours ahead: refused, and held
        record = opt_out(phone, "acme", "promo", now + timedelta(hours=3))
        w = await imported(c, api.ImportRecord(opt_out=record))
        assert (w.imported, w.held_for_review) == (0, 1), w
    case.wrote(w.consistency_token)


async def watched(case: Case, wanted: set[str]) -> set[str]:
    """The event ids WatchConsentChanges gives of ``case``'s number from before the
    hold, once ``wanted`` are among them (or 20 s have passed)."""
    call = case.c.stub.WatchConsentChanges(
        api.WatchConsentChangesRequest(brand="acme", campaign="promo", resume_token=case.start),
        metadata=[("authorization", f"Bearer {case.c.token}")],
        timeout=60,
    )
    seen: set[str] = set()
    try:
        async with asyncio.timeout(20):
            while not wanted <= seen:
                change = await call.read()
                assert change is not grpc.aio.EOF
                if change.event.event.phone == case.phone:
                    seen.add(change.event.event.event_id)
    except TimeoutError:
        pass
    finally:
        call.cancel()
    return seen


async def readings(case: Case) -> dict[str, Any]:
    """What every reader says of ``case``'s number now."""
    c, phone, now = case.c, case.phone, case.clock.now
    said: dict[str, Any] = {}
    for campaign in CAMPAIGNS:
        ask: dict[str, Any] = dict(
            phone=phone, brand="acme", campaign=campaign, at_least_as_fresh=case.fresh()
        )
        said[f"CanSend {campaign}"] = await c.CanSend(api.CanSendRequest(**ask))
        (said[f"CanSendBatch {campaign}"],) = (
            await c.CanSendBatch(
                api.CanSendBatchRequest(
                    phones=[phone], brand="acme", campaign=campaign, at_least_as_fresh=case.fresh()
                )
            )
        ).decisions
        said[f"CanSendAsOf {campaign}"] = await c.CanSendAsOf(
            api.CanSendAsOfRequest(**ask, at=ts(now))
        )
        said[f"GetConsent {campaign}"] = await c.GetConsent(api.GetConsentRequest(**ask))
        for name, at in case.sends.items():
            if not name.startswith("SM"):
                said[f"CanSendAsOf {campaign} {name}"] = await c.CanSendAsOf(
                    api.CanSendAsOfRequest(**ask, at=ts(at))
                )
    said["ListEvents"] = await c.ListEvents(
        api.ListEventsRequest(phone=phone, brand="acme", at_least_as_fresh=case.fresh())
    )
    said["packet"] = as_dict(
        (
            await c.GetProofPacket(
                api.GetProofPacketRequest(
                    phone=phone, brand="acme", campaign="promo", at_least_as_fresh=case.fresh()
                ),
                timeout=60,
            )
        ).packet
    )
    first = min(case.sends.values(), default=now)
    window = dict(start_time=ts(first - timedelta(hours=1)), end_time=ts(now + timedelta(hours=4)))
    call = c.stub.SweepCampaign(
        api.SweepCampaignRequest(
            brand="acme", campaign="promo", at_least_as_fresh=case.fresh(), **window
        ),
        metadata=[("authorization", f"Bearer {c.token}")],
        timeout=60,
    )
    queued: set[str] = set()
    for brand in ("acme", "*"):
        page = ""
        while True:
            listed = await c.ListRevocationCandidates(
                api.ListRevocationCandidatesRequest(
                    brand=brand, page_size=500, page_token=page, at_least_as_fresh=case.fresh()
                )
            )
            queued |= {e.event.event_id for e in listed.candidates if e.event.phone == phone}
            page = listed.next_page_token
            if not page:
                break
    said["review queue"] = queued
    conn = await asyncpg.connect(case.dsn)
    try:
        rows = await conn.fetch(
            "SELECT campaign, to_jsonb(s) AS row FROM consent_status AS s"
            " WHERE phone = $1 AND brand = 'acme'",
            phone,
        )
    finally:
        await conn.close()
    said["consent_status"] = {r["campaign"]: json.loads(r["row"]) for r in rows}
    if case.export is not None:
        ids = {e.event.event_id for e in said["ListEvents"].events}
        said["export"] = await case.export.status(phone, ids)
    said["sweep"] = {
        i.finding.message_id: i.finding
        async for i in call
        if i.HasField("finding") and i.finding.phone == phone
    }
    return said


def evidence(answer: Any) -> list[str]:
    return list(answer.evidence_event_ids)


def disagreements(said: dict[str, Any], case: Case) -> list[str]:
    """Where a reader's answer contradicts CanSend's."""
    found: list[str] = []
    events = {e.event.event_id for e in said["ListEvents"].events}
    packet = said["packet"]
    packet_events = {e["event_id"] for e in packet.get("events", [])}
    for campaign in CAMPAIGNS:
        one = said[f"CanSend {campaign}"]
        answer = (one.allowed, api.Reason.Name(one.reason), evidence(one))
        for reader in ("CanSendBatch", "CanSendAsOf"):
            other = said[f"{reader} {campaign}"]
            got = (other.allowed, api.Reason.Name(other.reason), evidence(other))
            if got != answer:
                found.append(f"{reader} {campaign}: {got} where CanSend {answer}")
        consent = said[f"GetConsent {campaign}"]
        state = api.ConsentState.Name(consent.state)
        pending = [p.event.event_id for p in consent.pending_revocation_candidates]
        if one.allowed != (consent.state == api.CONSENT_STATE_ACTIVE):
            found.append(f"GetConsent {campaign}: {state} where CanSend {answer}")
        if one.reason in HOLD_REASONS and not set(evidence(one)) <= set(pending) | {
            consent.revocation.event.event_id
        }:
            found.append(f"GetConsent {campaign}: holds {pending} where CanSend {answer}")
        if one.reason in (
            api.REASON_REVOCATION_PENDING_REVIEW,
            api.REASON_REVOCATION_OVERDUE,
        ) and consent.state not in (
            api.CONSENT_STATE_PENDING_REVIEW,
            api.CONSENT_STATE_REVOKED_BRAND_WIDE,
        ):
            found.append(f"GetConsent {campaign}: {state} where CanSend {answer}")
        # An allow's evidence names the campaign's definition too: a denial's, facts
        # of the number alone.
        for e in [] if one.allowed else evidence(one):
            if e not in events:
                found.append(f"ListEvents lacks {e}, CanSend's evidence for {campaign}")
            if e not in packet_events:
                found.append(f"packet lacks {e}, CanSend's evidence for {campaign}")
        if set(pending) != said["review queue"]:
            found.append(f"review queue {said['review queue']} where GetConsent {pending}")
        # The stored row says the hold as GetConsent does, or what GetConsent says.
        row = said["consent_status"].get(campaign, {})
        if pending:
            if row.get("status") == "active" or row.get("held_event_id") not in pending:
                found.append(f"consent_status {campaign}: {row} where GetConsent holds {pending}")
        elif (row.get("status"), row.get("held_event_id")) != (_STORED[consent.state], None):
            found.append(f"consent_status {campaign}: {row} where GetConsent {state}")
        # The streaming example's table: never opted in where CanSend denies.
        if "export" in said and said["export"].get(campaign, False) != one.allowed:
            found.append(f"export {campaign}: {said['export']} where CanSend {answer}")
    promo = said["CanSend promo"]
    held = {
        line["event"]["event_id"]
        for line in packet.get("opt_outs", [])
        if line["kind"] != "revocation" and not line.get("resolution")
    }
    on_hold = promo.reason in HOLD_REASONS and promo.reason != api.REASON_REVOKED_BRAND_WIDE
    if on_hold and not set(evidence(promo)) <= held:
        found.append(f"packet holds {held} where CanSend {evidence(promo)}")
    if promo.allowed and held:
        found.append(f"packet holds {held} where CanSend allows")
    points = [p for p in packet.get("timeline", []) if p.get("state")]
    last = points[-1]["state"] if points else None
    if (last == "active") != promo.allowed:
        found.append(f"packet timeline ends {last!r} where CanSend {promo.allowed}")
    # A send's answer in the packet and the sweep: CanSendAsOf at its moment.
    messages = {m["message_id"]: m for m in packet.get("messages", [])}
    for mid, at in case.sends.items():
        if not mid.startswith("SM"):
            continue
        (name,) = [n for n, t in case.sends.items() if t == at and not n.startswith("SM")]
        then = said[f"CanSendAsOf promo {name}"]
        line = messages.get(mid)
        if line is None:
            found.append(f"packet lacks the send {name}")
            continue
        ruling = line.get("hindsight") or line["decision"]
        if ruling.get("allowed", False) != then.allowed:
            found.append(f"packet: {name} {ruling} where CanSendAsOf {then.allowed}")
        finding = said["sweep"].get(mid)
        if not then.allowed and (finding is None or finding.allowed):
            found.append(f"sweep finds nothing of {name} where CanSendAsOf {then.reason}")
        if finding is not None and not finding.allowed and finding.reason != then.reason:
            found.append(f"sweep: {name} {finding.reason} where CanSendAsOf {then.reason}")
    return found


async def a_case(
    runtime: Runtime, clock: Clock, kind: str, resolution: str, export: Export | None
) -> list[str]:
    """Hold a number of its own the way ``kind`` says and ask every reader: held, held
    after a fresh opt-in, held past its deadline, and once resolved."""
    phone = f"+1415557{4400 + next(_numbers):04d}"
    found: list[str] = []
    base = clock.now
    try:
        return await _held_and_resolved(runtime, clock, kind, resolution, phone, found, export)
    finally:
        # Back to where the case began (and a little on), so that no case runs past
        # the day the revoke-all rule applies to every brand.
        clock.now = base + timedelta(minutes=5)


async def _held_and_resolved(
    runtime: Runtime,
    clock: Clock,
    kind: str,
    resolution: str,
    phone: str,
    found: list[str],
    export: Export | None,
) -> list[str]:
    async with client(runtime.address) as c:
        case = Case(c, clock, phone, runtime.settings.postgres_dsn or "", export)
        for campaign in CAMPAIGNS:
            w = await c.RecordOptIn(opt_in(phone, "acme", campaign, clock.now - timedelta(days=2)))
            case.wrote(w.consistency_token)
        case.start = case.fresh()
        await send(case, "before", clock.now - timedelta(minutes=55), relied=True)
        # Sent after the time the hold is placed at (its opt-out's own), but recorded
        # before it: not allowed in hindsight.
        await send(case, "between", clock.now - timedelta(minutes=45), relied=True)
        await hold(case, kind)
        clock.now += timedelta(minutes=1)
        await send(case, "after", clock.now - timedelta(seconds=10), relied=False)
        said = await readings(case)
        answer = said["CanSend promo"]
        assert not answer.allowed and answer.reason in HOLD_REASONS, answer
        (held,) = [
            e.event
            for e in said["ListEvents"].events
            if e.event.event_type == "RevocationCandidateFlagged"
        ]
        found += [f"held: {d}" for d in disagreements(said, case)]
        seen = await watched(case, {held.event_id})
        if held.event_id not in seen:
            found.append(f"held: WatchConsentChanges gave {seen}, not the hold")
        # A fresh opt-in lifts no hold.
        w = await c.RecordOptIn(opt_in(phone, "acme", "promo", clock.now - timedelta(seconds=5)))
        case.wrote(w.consistency_token)
        found += [f"opted in again: {d}" for d in disagreements(await readings(case), case)]
        # Past its ten business days it counts as a revocation.
        clock.now += timedelta(days=15)
        said = await readings(case)
        overdue = said["CanSend promo"]
        assert not overdue.allowed and overdue.reason in HOLD_REASONS, overdue
        found += [f"overdue: {d}" for d in disagreements(said, case)]
        w = await c.ResolveRevocationCandidate(
            api.ResolveRevocationCandidateRequest(
                request_id=uuid.uuid4().hex,
                phone=phone,
                brand=held.brand,
                candidate_event_id=held.event_id,
                resolution=(
                    lpb.CANDIDATE_RESOLUTION_REVOKED
                    if resolution == "revoked"
                    else lpb.CANDIDATE_RESOLUTION_DISMISSED
                ),
                occurred_at=ts(clock.now),
            )
        )
        case.wrote(w.consistency_token)
        said = await readings(case)
        resolved = said["CanSend promo"]
        assert resolved.allowed is (resolution == "dismissed"), resolved
        found += [f"{resolution}: {d}" for d in disagreements(said, case)]
        seen = await watched(case, set(w.event_ids))
        if not set(w.event_ids) <= seen:
            found.append(f"{resolution}: WatchConsentChanges lacks {list(w.event_ids)}")
    return found


CASES = [
    ("embedded", kind, resolution)
    for kind in KINDS
    for resolution in ("revoked", "dismissed")
    # A STOP of no brand can only be dismissed: "revoked" would opt out of no brand.
    if not (kind == "unowned STOP" and resolution == "revoked")
] + [("kafka", "unowned STOP", "dismissed")]


@pytest.mark.parametrize("ledger, kind, resolution", CASES)
async def test_every_reader_says_what_cansend_says_of_a_hold(ledgers, ledger, kind, resolution):
    """Each kind of hold, held, then resolved: no reader says allowed, active or
    nothing held where CanSend denies for the hold, nor holds where CanSend allows."""
    runtimes, clock, export = ledgers
    found = await a_case(
        runtimes[ledger], clock, kind, resolution, export if ledger == "kafka" else None
    )
    assert not found, "\n".join(found)
