"""The worked consumer (``services/consumer/opt_out_table.py``) against the service it
copies, through the real gRPC server on the real Kafka and PostgreSQL.

Random histories of every kind of fact that changes whether a number may be messaged
(opt-ins, STOPs, STOPALLs, STARTs, replies held for review, STOPs to a number no
campaign owns, opt-outs naming no defined campaign or refused for a detail and held,
a brand taking up the revoke-all rule, the dismissals and decisions of
those holds, reconfirmations, legal holds, erasures, facts an earlier version kept
under a number's other spelling) are recorded through the API; the example follows
the topic; and for every number, brand and campaign its table may not say "opted in"
where CanSend denies for want of consent. A consumer that copies the example and lets
such a number through is a wrong allow the README taught."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import grpc
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb

import ledger.phone
from ledger.events import ANY_BRAND
from ledger.ports import ConsistencyToken, Stream
from ledger.retention import add_years
from services.bootstrap import Runtime
from services.consumer import StreamConsumerSettings
from services.consumer.opt_out_table import OptOutTable, keep_in_sync
from tests.e2e.harness import (
    Client,
    Clock,
    client,
    define,
    held_info,
    inbound,
    noon_in_los_angeles,
    opt_in,
    opt_out,
    ts,
)
from tests.e2e.test_two_spellings import forget_spellings
from tests.integration.test_stream_consumer import committed

pytestmark = pytest.mark.asyncio(loop_scope="session")

NUMBERS = {
    ("acme", "promo"): "+12125550100",
    ("acme", "news"): "+12125550101",
    ("globex", "promo"): "+12125550102",
}
"""Each campaign and the number it sends from."""
UNOWNED = "+12125550199"
"""A number no campaign sends from: a STOP to it is held under brand '*'."""

DENIED_FOR_CONSENT = {
    api.REASON_NO_CONSENT,
    api.REASON_REVOKED,
    api.REASON_REVOKED_BRAND_WIDE,
    api.REASON_REVOCATION_PENDING_REVIEW,
    api.REASON_REVOCATION_OVERDUE,
    api.REASON_SUBJECT_ERASED,
}
"""CanSend's reasons that say the person's consent is missing or withdrawn; the others
(quiet hours, caps, tiers) are no business of a table of opt-outs."""

TWO_SPELLINGS = (
    ("+5491112344{:03d}", "+541112344{:03d}"),  # Argentina: with and without the 9
    ("+24166441{:03d}", "+24106441{:03d}"),  # Gabon since 2019, and its old number
    ("+24177441{:03d}", "+2417441{:03d}"),  # the old number written without its 0
)


@dataclass
class Subject:
    """One number's generated history."""

    kept: str
    other: str = ""
    """Its other spelling, for a number written two ways."""
    holds: list[tuple[str, str, datetime]] = field(default_factory=list)
    """(brand, candidate event id, when) of each hold recorded and not yet resolved."""
    said: list[str] = field(default_factory=list)
    """What was recorded, in order, to show with a failure."""

    def spelling(self, rng: random.Random) -> str:
        return rng.choice([self.kept, self.other]) if self.other else self.kept


def subjects(rng: random.Random) -> list[Subject]:
    found = [Subject(f"+1415{rng.randrange(2_000_000, 9_999_999)}") for _ in range(9)]
    for kept, other in TWO_SPELLINGS:
        n = rng.randrange(1000)
        found.append(Subject(kept.format(n), other.format(n)))
        assert other.format(n) in ledger.phone.forms_stored_before(kept.format(n))
    return found


@dataclass
class Recorder:
    """Records generated facts through the API as the operator (a token of every brand,
    so a STOP to an unowned number is held under '*')."""

    admin: Client
    clock: Clock
    rng: random.Random
    tokens: list[str] = field(default_factory=list)
    recorded: Counter[str] = field(default_factory=Counter)
    refusal: grpc.aio.AioRpcError | None = None
    """The latest call refused."""

    async def call(self, subject: Subject, what: str, rpc: Awaitable[object]) -> object | None:
        try:
            answer = await rpc
        except grpc.aio.AioRpcError as err:
            # Refused (a reconfirmation with no consent, an erasure under a legal
            # hold): what a client would see, and part of the history all the same.
            assert err.code() in (
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.FAILED_PRECONDITION,
            ), err
            subject.said.append(f"{what}: refused {err.details()}")
            self.refusal = err
            return None
        subject.said.append(what)
        self.recorded[what.split(" ")[0]] += 1
        token = getattr(answer, "consistency_token", "")
        if token:
            self.tokens.append(token)
        return answer

    def moment(self, before: timedelta = timedelta(hours=4)) -> datetime:
        """A moment before the clock's now, in no particular order: facts are recorded
        late, as from paper forms."""
        return self.clock.now - self.rng.random() * before

    async def step(self, subject: Subject, kinds: list[str]) -> None:
        rng, admin = self.rng, self.admin
        kind = rng.choice(kinds)
        brand, campaign = rng.choice(sorted(NUMBERS))
        phone, at = subject.spelling(rng), self.moment()
        what = f"{kind} {phone} {brand}/{campaign} at {at:%Y-%m-%d %H:%M:%S}"
        if kind == "opt_in":
            await self.call(subject, what, admin.RecordOptIn(opt_in(phone, brand, campaign, at)))
        elif kind == "opt_out":
            await self.call(subject, what, admin.RecordOptOut(opt_out(phone, brand, campaign, at)))
        elif kind == "stopall":
            what = f"{kind} {phone} {brand} at {at:%Y-%m-%d %H:%M:%S}"
            await self.call(subject, what, admin.RecordOptOut(opt_out(phone, brand, None, at)))
        elif kind in ("start", "stop_text", "stopall_text", "held_reply"):
            body = {
                "start": "START",
                "stop_text": "STOP",
                "stopall_text": "STOPALL",
                "held_reply": "please stop texting me",
            }[kind]
            answer = await self.call(
                subject,
                what,
                admin.HandleInboundMessage(inbound(phone, NUMBERS[brand, campaign], body, at)),
            )
            if kind == "held_reply" and answer is not None:
                subject.holds.append((brand, answer.event_ids[-1], at))  # type: ignore[attr-defined]
        elif kind == "refused_opt_out":
            request = opt_out(phone, brand, campaign, at, text="STOP\0")  # a NUL in it
            self.refusal = None
            await self.call(subject, what, admin.RecordOptOut(request))
            assert self.refusal is not None, "an opt-out with a NUL in it was taken"
            held = held_info(self.refusal)  # refused for the NUL, and held all the same
            assert held is not None, self.refusal
            self.recorded["held_refusal"] += 1
            self.tokens.append(held["consistency_token"])
            subject.holds.append((brand, held["candidate_event_id"], self.clock.now))
        elif kind == "unowned_stop":
            what = f"{kind} {phone} at {at:%Y-%m-%d %H:%M:%S}"
            answer = await self.call(
                subject, what, admin.HandleInboundMessage(inbound(phone, UNOWNED, "STOP", at))
            )
            if answer is not None:
                subject.holds.append((ANY_BRAND, answer.event_ids[-1], at))  # type: ignore[attr-defined]
        elif kind == "undefined_campaign":
            what = f"{kind} {phone} {brand}/ghost at {at:%Y-%m-%d %H:%M:%S}"
            answer = await self.call(
                subject, what, admin.RecordOptOut(opt_out(phone, brand, "ghost", at))
            )
            if answer is not None:
                subject.holds.append((brand, answer.event_ids[-1], at))  # type: ignore[attr-defined]
        elif kind == "resolve" and subject.holds:
            held_brand, candidate, flagged = rng.choice(subject.holds)
            # Under '*' a hold is only dismissed; a brand's is decided either way, in turn.
            revoked = held_brand != ANY_BRAND and self.recorded["dismiss"] > self.recorded["revoke"]
            resolution = (
                lpb.CANDIDATE_RESOLUTION_REVOKED if revoked else lpb.CANDIDATE_RESOLUTION_DISMISSED
            )
            when = flagged + (self.clock.now - flagged) * rng.random()
            what = f"{'revoke' if revoked else 'dismiss'} {held_brand} hold {candidate}"
            subject.holds.remove((held_brand, candidate, flagged))  # resolved once
            await self.call(
                subject,
                what,
                admin.ResolveRevocationCandidate(
                    api.ResolveRevocationCandidateRequest(
                        request_id=uuid.uuid4().hex,
                        phone=phone,
                        brand=held_brand,
                        candidate_event_id=candidate,
                        resolution=resolution,
                        occurred_at=ts(when),
                        resolved_by="reviewer",
                    )
                ),
            )
        elif kind == "reconfirm":
            request = api.RecordReconfirmationRequest(
                request_id=uuid.uuid4().hex,
                phone=phone,
                brand=brand,
                campaign=campaign,
                channel=lpb.REVOCATION_CHANNEL_KEYWORD,
                occurred_at=ts(at),
            )
            await self.call(subject, what, admin.RecordReconfirmation(request))
        elif kind == "legal_hold":
            request = api.PlaceLegalHoldRequest(
                request_id=uuid.uuid4().hex, phone=phone, brand=brand, hold_id="matter-1"
            )
            await self.call(subject, f"{kind} {phone} {brand}", admin.PlaceLegalHold(request))
        elif kind == "erase":
            request = api.RequestErasureRequest(
                request_id=uuid.uuid4().hex, phone=phone, brand=brand, reference="DSR-1"
            )
            what = f"{kind} {phone} {brand} at {self.clock.now:%Y-%m-%d %H:%M:%S}"
            await self.call(subject, what, admin.RequestErasure(request))


EVERY_KIND = [
    *["opt_in"] * 5,
    "opt_out",
    "stopall",
    "start",
    "stop_text",
    "stopall_text",
    "held_reply",
    "unowned_stop",
    "undefined_campaign",
    "refused_opt_out",
    *["resolve"] * 3,
    "reconfirm",
]


async def caught_up(runtime: Runtime, group: str) -> None:
    """Wait until ``group`` committed every record of the subscriber topic."""
    settings = runtime.settings.kafka
    assert settings is not None
    topic = settings.topic(Stream.SUBSCRIBERS)
    reader = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers)
    await reader.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(settings.subscriber_partitions)]
        end = sum((await reader.end_offsets(partitions)).values())
    finally:
        await reader.stop()
    deadline = asyncio.get_running_loop().time() + 120
    while await committed(settings, group) < end:
        assert asyncio.get_running_loop().time() < deadline, "the example never caught up"
        await asyncio.sleep(0.2)


async def wrong_allows(
    admin: Client, table: OptOutTable, people: list[Subject]
) -> tuple[list[str], int]:
    """Every (number, brand, campaign) the table says is opted in where CanSend denies
    for want of consent, with its history; and how many it says are opted in where
    CanSend allows (so that the comparison compared something)."""
    found, agreed = [], 0
    for person in people:
        for brand, campaign in sorted(NUMBERS):
            for phone in filter(None, (person.kept, person.other)):
                answer = await admin.CanSend(
                    api.CanSendRequest(phone=phone, brand=brand, campaign=campaign)
                )
                assert answer.reason != api.REASON_NOT_CONSISTENT
                if not table.status(brand, phone).get(campaign, False):
                    continue
                if answer.allowed:
                    agreed += 1
                elif answer.reason in DENIED_FOR_CONSENT:
                    reason = api.Reason.Name(answer.reason)
                    history = "\n    ".join(person.said)
                    found.append(f"{phone} {brand}/{campaign}: CanSend {reason}\n    {history}")
    return found, agreed


async def applied(runtime: Runtime, tokens: list[str]) -> None:
    assert runtime.guard is not None
    for token in tokens:
        assert await runtime.guard.wait_for_token(ConsistencyToken.decode(token), timeout=60)


async def test_the_example_table_never_says_opted_in_where_cansend_denies_consent(
    serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(20261204)
    clock = Clock(noon_in_los_angeles(ahead=timedelta(hours=2)))
    campaigns = [
        define(brand, campaign, clock.now - timedelta(days=60), [number])
        for (brand, campaign), number in NUMBERS.items()
    ]
    runtime = await serve(name="consumer", clock=clock, campaigns=campaigns)
    kafka = runtime.settings.kafka
    assert kafka is not None
    group = f"opt-out-table-{uuid.uuid4().hex[:8]}"
    settings = StreamConsumerSettings(
        kafka.bootstrap_servers,
        group_id=group,
        topic_prefix=kafka.topic_prefix,
        streams=(Stream.SUBSCRIBERS,),
        poll_timeout_s=0.2,
    )
    people = subjects(rng)
    table = OptOutTable(tmp_path / "opt_outs.sqlite")
    stop = asyncio.Event()
    async with client(runtime.address) as admin:
        record = Recorder(admin, clock, rng)

        async def phase(steps: int, kinds: list[str]) -> None:
            for _ in range(steps):
                for person in people:
                    await record.step(person, kinds)

        # An earlier version kept each spelling of a number as written: its facts stay
        # under the other spelling, in another partition.
        forget_spellings()
        monkeypatch.setattr(ledger.phone, "_kept_form", lambda e164: e164)
        for person in people:
            if person.other:
                for _ in range(3):
                    await record.step(
                        Subject(person.other, holds=person.holds, said=person.said), EVERY_KIND
                    )
        monkeypatch.undo()
        forget_spellings()

        syncing = asyncio.create_task(keep_in_sync(table, settings, stop))
        try:
            await phase(3, EVERY_KIND)
            # One brand takes up the revoke-all rule before it is in force for all.
            policy = api.SetBrandPolicyRequest(
                request_id=uuid.uuid4().hex, brand="acme", revoke_all=True
            )
            record.tokens.append((await admin.SetBrandPolicy(policy)).consistency_token)
            await phase(3, EVERY_KIND)
            await check(runtime, admin, table, people, record, group)

            # Years later, past the retention period: erasures, legal holds, and new
            # facts on either side of them.
            clock.now = add_years(clock.now, 6)
            await phase(1, ["legal_hold", *["erase"] * 4])
            clock.now += timedelta(hours=6)
            await phase(4, EVERY_KIND)
            await check(runtime, admin, table, people, record, group)
        finally:
            stop.set()
            await asyncio.wait_for(syncing, 60)
            table.close()

    kinds = {k for k in EVERY_KIND if k not in ("resolve", "refused_opt_out")}
    kinds |= {"dismiss", "revoke", "erase", "legal_hold", "held_refusal"}
    assert kinds <= set(record.recorded), f"kinds never recorded: {kinds - set(record.recorded)}"


async def check(
    runtime: Runtime,
    admin: Client,
    table: OptOutTable,
    people: list[Subject],
    record: Recorder,
    group: str,
) -> None:
    await applied(runtime, record.tokens)
    await caught_up(runtime, group)
    found, agreed = await wrong_allows(admin, table, people)
    assert not found, "the table says opted in where CanSend denies:\n" + "\n".join(found)
    assert agreed, "no number was opted in: the comparison compared nothing"
