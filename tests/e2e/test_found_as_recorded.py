"""A write one instance answers as recorded before, where another instance recorded
it a moment ago, counts as the answering instance's own write, on the real Kafka
and PostgreSQL: its next CanSend without a token must not read what CanSend reads
(the instance's replica of the view) as of before that write.

``7742259`` made RecordOptOut, RecordMessageSent, RecordMessagesSent and inbound
texts so. A refused opt-out answered as held, an import's record answered "already
present" and an erasure answered as recorded before were still not: the instance
allowed a send to a number it had just answered as held, opted out or erased.

Two instances share the ledger and the view. ``lagging`` observes the ledger's end
once a minute, and trusts an observation for as long (``refresh_interval``): its
replica stays as of its last observation until something makes it look again, so
a write it did not count as its own is one its next check cannot see."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api

from ledger.ports import AppendTurn, ConsistencyToken, Stream
from ledger.retention import add_years
from services.adapters.kafka_ledger import KafkaLedger
from services.bootstrap import Runtime
from services.settings import FreshnessSettings
from tests.e2e.harness import (
    Clock,
    client,
    define,
    held_info,
    inbound,
    kafka_settings,
    opt_in,
    opt_out,
    service_settings,
    ts,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

SENDER = "+12125550191"
LAGGING = FreshnessSettings(refresh_interval=60.0, max_observation_age=300.0, wait_bound=5.0)


@pytest.fixture
async def prompt_and_lagging(tmp_path, postgres_dsn, kafka_bootstrap):
    """``prompt`` observes as a service does by default; ``lagging`` as above. acme's
    campaign "promo" sends from SENDER."""
    clock = Clock()
    prefix = f"found-{uuid.uuid4().hex[:8]}."
    group = f"group-{uuid.uuid4().hex[:8]}"
    kafka = kafka_settings(kafka_bootstrap, prefix)
    # Made and seen first: the second instance to start, describing topics the first
    # made a moment ago, was refused them now and then on a busy broker.
    await KafkaLedger(kafka).ensure_topics()
    runtimes: list[Runtime] = []
    try:
        for name, freshness in (("prompt", None), ("lagging", LAGGING)):
            (tmp_path / name).mkdir()
            settings = service_settings(tmp_path / name, postgres_dsn, kafka=kafka, group=group)
            if freshness is not None:
                settings = replace(settings, freshness=freshness)
            runtime = Runtime(settings, clock=clock)
            await runtime.start()
            runtimes.append(runtime)
        prompt, lagging = runtimes
        async with client(prompt.address) as admin:
            w = await admin.DefineCampaign(
                define("acme", "promo", clock.now - timedelta(days=1), [SENDER])
            )
        assert await prompt.guard.wait_for_token(ConsistencyToken.decode(w.consistency_token))
        yield prompt, lagging, clock
    finally:
        for runtime in runtimes:
            await runtime.stop()


def phone(i: int) -> str:
    return f"+1415555{6100 + i:04d}"


async def opted_in(prompt: Runtime, lagging: Runtime, number: str, clock: Clock) -> None:
    """``number`` opted in through ``prompt``; ``lagging`` has observed it, and allows."""
    async with client(prompt.address) as c:
        await c.RecordOptIn(opt_in(number, "acme", "promo", clock.now - timedelta(days=1)))
    assert await lagging.guard.wait_until_applied()  # an observation now: the opt-in's
    assert (await can_send(lagging, number)).allowed


async def can_send(runtime: Runtime, number: str) -> api.CanSendResponse:
    async with client(runtime.address, "acme-app") as c:
        return await c.CanSend(api.CanSendRequest(phone=number, brand="acme", campaign="promo"))


async def seen_by(runtime: Runtime, token: str) -> None:
    """The view both instances share has applied ``token`` (``runtime`` observes at
    once)."""
    assert runtime.guard is not None
    assert await runtime.guard.wait_for_token(ConsistencyToken.decode(token))


async def ends(runtime: Runtime) -> dict[int, int]:
    assert runtime.ledger is not None
    return await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)


async def held(call, request) -> dict[str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
    info = held_info(caught.value)
    assert info is not None, caught.value.details()
    return info


@pytest.mark.parametrize("write", ["RecordOptOut", "HandleInboundMessage"])
async def test_a_refused_opt_out_answered_as_held_before_is_the_instance_s_own(
    prompt_and_lagging, write
):
    """A gateway's STOP refused for a detail is held through one instance; its retry
    reaches the other, which finds the hold and answers it as held. That instance's
    next check without a token allowed the number it had just answered as held."""
    prompt, lagging, clock = prompt_and_lagging
    number = phone(0 if write == "RecordOptOut" else 1)
    await opted_in(prompt, lagging, number, clock)
    if write == "RecordOptOut":
        request = opt_out(number, "acme", "promo", clock.now)
        request.occurred_at.CopyFrom(ts(clock.now + timedelta(hours=3)))  # refused: ahead
    else:
        request = inbound(number, SENDER, "STOP\0", clock.now)  # refused: a NUL
    async with client(prompt.address, "acme-app") as p, client(lagging.address, "acme-app") as g:
        first = await held(getattr(p, write), request)
        await seen_by(prompt, first["consistency_token"])
        again = await held(getattr(g, write), request)
    assert again["candidate_event_id"] == first["candidate_event_id"]  # held once, by prompt
    answer = await can_send(lagging, number)
    assert not answer.allowed, answer
    assert answer.reason == api.REASON_REVOCATION_PENDING_REVIEW, answer


class Requests:
    """A client stream of ImportConsents messages sent one at a time."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[api.ImportConsentsRequest | None] = asyncio.Queue()

    def send(self, *records: api.ImportRecord) -> None:
        self._queue.put_nowait(api.ImportConsentsRequest(records=records))

    def close(self) -> None:
        self._queue.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[api.ImportConsentsRequest]:
        while (request := await self._queue.get()) is not None:
            yield request


@pytest.mark.parametrize("record", ["opt-out", "held opt-out"])
async def test_an_imported_record_answered_as_present_is_the_instance_s_own(
    prompt_and_lagging, record
):
    """Two imports of one export at once, through two instances: a record the other
    imported a moment ago is "already present" (or, refused and held, held before).
    The instance that answered so allowed the number it had just counted as opted
    out in its next check without a token."""
    prompt, lagging, clock = prompt_and_lagging
    number = phone(2 if record == "opt-out" else 3)
    await opted_in(prompt, lagging, number, clock)
    stopped = opt_out(number, "acme", "promo", clock.now - timedelta(hours=1), f"x-{number}")
    if record == "held opt-out":
        stopped.occurred_at.CopyFrom(ts(clock.now + timedelta(hours=3)))  # refused: ahead
    stop = api.ImportRecord(opt_out=stopped)
    other = api.ImportRecord(
        opt_in=opt_in(phone(9), "acme", "promo", clock.now - timedelta(days=2), f"y-{number}")
    )
    async with client(prompt.address, "acme-app") as p, client(lagging.address, "acme-app") as g:
        auth = [("authorization", f"Bearer {g.token}")]
        requests = Requests()
        answers = g.stub.ImportConsents(requests, metadata=auth, timeout=60).__aiter__()
        requests.send(other)  # the lagging import begins (and observes the ledger)
        await anext(answers)
        done = [
            a
            async for a in p.stub.ImportConsents(
                [api.ImportConsentsRequest(records=[stop])],
                metadata=[("authorization", f"Bearer {p.token}")],
                timeout=60,
            )
        ]
        assert (done[0].imported, done[0].held_for_review) == (
            (1, 0) if record == "opt-out" else (0, 1)
        ), done
        await seen_by(prompt, done[0].consistency_token)
        before = await ends(lagging)
        requests.send(stop)
        answer = await anext(answers)
        requests.close()
        assert [a async for a in answers] == []
    assert await ends(lagging) == before  # found, not appended again
    if record == "opt-out":
        assert (answer.imported, answer.already_present) == (0, 1), answer
    else:  # held by the other import: refused, and said to be held
        assert answer.imported == 0 and answer.refusals[0].held_for_review, answer
    decided = await can_send(lagging, number)
    assert not decided.allowed, decided


async def test_an_erasure_answered_as_recorded_before_is_the_instance_s_own(
    prompt_and_lagging, monkeypatch
):
    """An erasure requested through both instances at once: one records it while the
    other decides, and the other finds it recorded and answers with its event. That
    instance's next check without a token allowed the number it had just erased."""
    prompt, lagging, clock = prompt_and_lagging
    number = phone(4)
    async with client(prompt.address) as c:
        await c.RecordOptIn(opt_in(number, "acme", "promo", clock.now - timedelta(days=1)))
    clock.now = add_years(clock.now, 6)  # past the retention period
    assert await lagging.guard.wait_until_applied()
    assert (await can_send(lagging, number)).allowed
    request = api.RequestErasureRequest(
        request_id=f"erase-{uuid.uuid4().hex}", phone=number, brand="acme", reference="DSR-9"
    )
    erasure = lagging.usecases.erasure
    decided = erasure._everything
    recorded: list[api.RequestErasureResponse] = []

    async def then_recorded_through_prompt(*subject):
        history = await decided(*subject)  # decided on what was there before prompt's
        if not recorded:
            async with client(prompt.address) as c:
                recorded.append(await c.RequestErasure(request))
            await seen_by(prompt, recorded[0].consistency_token)
        return history

    monkeypatch.setattr(erasure, "_everything", then_recorded_through_prompt)
    async with client(lagging.address) as c:
        again = await c.RequestErasure(request)
    assert again.event_id == recorded[0].event_id  # recorded once, through prompt
    answer = await can_send(lagging, number)
    assert not answer.allowed, answer
    assert answer.reason == api.REASON_SUBJECT_ERASED, answer


async def test_a_record_another_import_appended_meanwhile_is_the_instance_s_own(
    prompt_and_lagging, monkeypatch
):
    """Two imports of one record at once, through two instances: the lagging one finds
    the other holding the record's turn to append, waits, and counts the record as
    present once the other appended it, perhaps before its own view has applied it.
    That instance's next check without a token allowed the number it had just
    counted as opted out."""
    prompt, lagging, clock = prompt_and_lagging
    number = phone(5)
    await opted_in(prompt, lagging, number, clock)
    stop = api.ImportRecord(
        opt_out=opt_out(number, "acme", "promo", clock.now - timedelta(hours=1), f"x-{number}")
    )
    other = api.ImportRecord(
        opt_in=opt_in(phone(9), "acme", "promo", clock.now - timedelta(days=2), f"y-{number}")
    )
    # prompt's import takes the record's turn, then waits to append it ...
    ledger = prompt.usecases.writes.ctx.ledger
    appending, go_on = asyncio.Event(), asyncio.Event()
    append = ledger.append

    async def held_back(events):
        appending.set()
        await go_on.wait()
        return await append(events)

    monkeypatch.setattr(ledger, "append", held_back)
    # ... until lagging's import has found that turn held by another.
    view = lagging.usecases.writes.ctx.view
    turns_seen: list[AppendTurn] = []
    take = view.take_append_turns

    async def watched(*args, **kwargs):
        turns = await take(*args, **kwargs)
        turns_seen.extend(turns)
        if AppendTurn.HELD in turns:
            go_on.set()
        return turns

    monkeypatch.setattr(view, "take_append_turns", watched)
    async with client(prompt.address, "acme-app") as p, client(lagging.address, "acme-app") as g:
        requests = Requests()
        auth = [("authorization", f"Bearer {g.token}")]
        answers = g.stub.ImportConsents(requests, metadata=auth, timeout=60).__aiter__()
        requests.send(other)  # the lagging import begins (and observes the ledger)
        await anext(answers)
        turns_seen.clear()
        done = asyncio.ensure_future(
            p.stub.ImportConsents(
                [api.ImportConsentsRequest(records=[stop])],
                metadata=[("authorization", f"Bearer {p.token}")],
                timeout=60,
            ).read()
        )
        await appending.wait()
        requests.send(stop)
        answer = await anext(answers)
        requests.close()
        assert [a async for a in answers] == []
        assert (await done).imported == 1
    assert turns_seen[-1] is AppendTurn.APPENDED, turns_seen  # counted present so
    assert (answer.imported, answer.already_present) == (0, 1), answer
    decided = await can_send(lagging, number)
    assert not decided.allowed, decided
