"""Writes tried again after an unknown outcome store each event once on the Kafka
ledger (the embedded default's ledger refuses a held event id by itself:
``tests/integration/test_ledger_postgres.py``, ``test_import_slow_append.py``).

An append "acknowledged late" (``acknowledged_late``): its caller is told the broker
did not acknowledge in time, and its records are written a moment later. Kafka's
idempotent producer covers only its own retries, so each writer that tries again,
itself (an import) or for its client (the same request again: a single write, a
batched send, a hold), must find out what the first try stored before it appends:
each of them appended everything again, and the topic held the records twice."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb

from ledger.ports import Stream
from services.adapters.kafka_ledger import KafkaLedger
from services.bootstrap import Runtime
from tests.e2e.harness import (
    Clock,
    client,
    define,
    held_info,
    imported,
    opt_in,
    opt_out,
    serving,
    ts,
)
from tests.e2e.test_batched_sends import call, message

pytestmark = pytest.mark.asyncio(loop_scope="session")

LATE_S = 1.0
"""How long after its caller was told "not acknowledged" the late append is sent."""


@dataclass
class Late:
    """The appends ``acknowledged_late`` answered early: ``written`` each resolves
    once its records are acknowledged by the broker."""

    written: list[asyncio.Future[Any]] = field(default_factory=list)


def acknowledged_late(ledger: KafkaLedger) -> Late:
    """The next append through ``ledger`` is answered "not acknowledged in time" at
    once, and its records are sent ``LATE_S`` later, and written."""
    sent, send_one = ledger._sent, ledger._send_one
    late = Late()

    def answered_at_once(records: Any) -> asyncio.Future[Any]:
        answer = sent(records)
        if late.written:
            return answer
        late.written.append(answer)
        told: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        told.set_exception(TimeoutError())
        return told

    async def sent_late(producer: Any, records: Any, answer: Any, *rest: Any) -> None:
        if answer in late.written:
            await asyncio.sleep(LATE_S)
        await send_one(producer, records, answer, *rest)

    ledger._sent = answered_at_once  # type: ignore[method-assign]
    ledger._send_one = sent_late  # type: ignore[method-assign]
    return late


async def stored(runtime: Runtime, late: Late) -> Counter[str]:
    """How many times each event id is in the subscribers' topic, once the late
    append is written (the tries after it were acknowledged before their answer)."""
    assert late.written, "no append was acknowledged late"
    await late.written[0]
    return await stored_in(runtime, Stream.SUBSCRIBERS)


async def stored_in(runtime: Runtime, stream: Stream) -> Counter[str]:
    """How many times each event id is in ``stream``'s topic."""
    ledger = runtime.ledger
    assert ledger is not None
    counts: Counter[str] = Counter()
    for partition, end in (await ledger.end_offsets(stream)).items():
        for start in range(0, end, 1000):
            for r in await ledger.read(stream, partition, start):
                counts[str(r.event.event_id)] += 1
    return counts


@pytest.fixture
async def service(tmp_path, postgres_dsn, kafka_bootstrap):
    clock = Clock()
    campaign = define("acme", "promo", clock.now - timedelta(days=30))
    async with serving(
        tmp_path, postgres_dsn, kafka_bootstrap, name="once", clock=clock, campaigns=[campaign]
    ) as runtime:
        assert isinstance(runtime.ledger, KafkaLedger)
        yield runtime, clock


def numbers(n: int, first: int = 0) -> list[str]:
    return [f"+1303559{first + i:04d}" for i in range(n)]


async def test_an_import_tried_again_appends_only_what_its_first_try_did_not(service):
    runtime, clock = service
    phones = numbers(30)
    records = [
        api.ImportRecord(
            opt_out=opt_out(p, "acme", None, clock.now - timedelta(days=1), f"out-{p}")
        )
        for p in phones
    ]
    late = acknowledged_late(runtime.ledger)
    async with client(runtime.address, "acme-app") as app:
        answer = await imported(app, *records)

    assert answer.imported == len(records), answer
    counts = await stored(runtime, late)
    assert len(counts) == len(records)
    assert set(counts.values()) == {1}, counts


async def test_a_single_write_sent_again_is_answered_as_its_first_try(service):
    runtime, clock = service
    [number] = numbers(1, 100)
    request = opt_out(number, "acme", "promo", clock.now - timedelta(minutes=1))
    late = acknowledged_late(runtime.ledger)
    async with client(runtime.address, "acme-app") as app:
        with pytest.raises(grpc.aio.AioRpcError) as first:
            await app.RecordOptOut(request)
        assert first.value.code() == grpc.StatusCode.UNAVAILABLE, first.value
        again = await app.RecordOptOut(request)

    counts = await stored(runtime, late)
    assert counts[again.event_ids[0]] == 1, counts
    assert sum(counts.values()) == 1, counts


async def test_a_batched_send_sent_again_records_each_message_once(service):
    runtime, clock = service
    when = clock.now - timedelta(minutes=5)
    request = call("batch-late", [message(i, when) for i in range(20)])
    late = acknowledged_late(runtime.ledger)
    async with client(runtime.address, "acme-app") as app:
        with pytest.raises(grpc.aio.AioRpcError) as first:
            await app.RecordMessagesSent(request)
        assert first.value.code() == grpc.StatusCode.UNAVAILABLE, first.value
        again = await app.RecordMessagesSent(request)

    counts = await stored(runtime, late)
    assert sorted(counts) == sorted(again.event_ids)
    assert set(counts.values()) == {1}, counts


async def test_a_hold_sent_again_is_held_once(service):
    runtime, clock = service
    [number] = numbers(1, 200)
    async with client(runtime.address, "acme-app") as app:
        opted = await app.RecordOptIn(
            opt_in(number, "acme", "promo", clock.now - timedelta(days=1))
        )
        request = opt_out(number, "acme", "promo", clock.now)
        request.occurred_at.CopyFrom(ts(clock.now + timedelta(hours=3)))  # refused: held
        late = acknowledged_late(runtime.ledger)
        with pytest.raises(grpc.aio.AioRpcError) as first:
            await app.RecordOptOut(request)
        assert first.value.code() == grpc.StatusCode.UNAVAILABLE, first.value
        with pytest.raises(grpc.aio.AioRpcError) as again:
            await app.RecordOptOut(request)
        assert again.value.code() == grpc.StatusCode.INVALID_ARGUMENT, again.value

    counts = await stored(runtime, late)
    counts.pop(opted.event_ids[0])
    assert len(counts) == 1 and set(counts.values()) == {1}, counts


async def test_a_resolution_sent_again_is_recorded_once(service):
    runtime, clock = service
    [number] = numbers(1, 300)
    async with client(runtime.address, "acme-app") as app, client(runtime.address) as admin:
        request = opt_out(number, "acme", "promo", clock.now)
        request.occurred_at.CopyFrom(ts(clock.now + timedelta(hours=3)))  # refused: held
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await app.RecordOptOut(request)
        info = held_info(refused.value)
        assert info is not None, refused.value
        resolve = api.ResolveRevocationCandidateRequest(
            request_id="resolve-late",
            phone=number,
            brand="acme",
            candidate_event_id=info["candidate_event_id"],
            resolution=lpb.CANDIDATE_RESOLUTION_DISMISSED,
            occurred_at=ts(clock.now),
        )
        late = acknowledged_late(runtime.ledger)
        with pytest.raises(grpc.aio.AioRpcError) as first:
            await admin.ResolveRevocationCandidate(resolve)
        assert first.value.code() == grpc.StatusCode.UNAVAILABLE, first.value
        again = await admin.ResolveRevocationCandidate(resolve)

    counts = await stored(runtime, late)
    assert counts[again.event_ids[0]] == 1, counts
    assert counts[info["candidate_event_id"]] == 1, counts
    assert sum(counts.values()) == 2, counts


async def test_copies_of_one_request_sent_at_once_store_its_events_once(service):
    """A client that sends one request several times at once (a retry fired before
    the first answer, a queue delivering twice): each copy found the request id taken
    by its own request before the first copy's append was on its way, so each
    appended the events again, and the topic held a policy change twenty times."""
    runtime, clock = service
    [number] = numbers(1, 400)
    when = clock.now - timedelta(minutes=5)
    before = await stored_in(runtime, Stream.CAMPAIGNS)
    async with client(runtime.address, "acme-app") as app, client(runtime.address) as admin:
        policy = lpb.CampaignPolicy(daily_cap=50)
        sent_at_once = [
            (
                admin.ChangeCampaignPolicy,
                api.ChangeCampaignPolicyRequest(
                    request_id="policy-at-once", brand="acme", campaign="promo",
                    policy=policy, occurred_at=ts(when - timedelta(minutes=1)),
                ),
            ),
            (app.RecordOptIn, opt_in(number, "acme", "promo", when, "opt-in-at-once")),
            (app.RecordMessagesSent, call("sends-at-once", [message(i, when) for i in range(5)])),
        ]  # fmt: skip
        for rpc, request in sent_at_once:
            answers = await asyncio.gather(*(rpc(request) for _ in range(20)))
            assert len({tuple(a.event_ids) for a in answers}) == 1, answers

    campaigns = await stored_in(runtime, Stream.CAMPAIGNS) - before
    assert sum(campaigns.values()) == 1, campaigns
    subscribers = await stored_in(runtime, Stream.SUBSCRIBERS)
    assert len(subscribers) == 6 and set(subscribers.values()) == {1}, subscribers
