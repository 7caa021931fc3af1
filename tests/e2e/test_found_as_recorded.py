"""A write one instance answers as recorded before, where another instance recorded
it a moment ago, counts as the answering instance's own write, on the real Kafka
and PostgreSQL: its next CanSend without a token must not read what CanSend reads
(the instance's replica of the view) as of before that write.

``7742259`` made RecordOptOut, RecordMessageSent, RecordMessagesSent and inbound
texts so. A refused opt-out answered as held and an erasure answered as recorded
before were still not: the instance allowed a send to a number it had just answered
as held or erased.

Two instances share the ledger and the view. ``lagging`` observes the ledger's end
once a minute, and trusts an observation for as long (``refresh_interval``): its
replica stays as of its last observation until something makes it look again, so
a write it did not count as its own is one its next check cannot see."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import timedelta

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api

from ledger.ports import ConsistencyToken
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
