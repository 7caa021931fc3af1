"""One text, and one request, through two instances on one Kafka ledger and one view,
at once and a few milliseconds apart (a probe, not part of the suite: run it by
name, ``pytest tests/e2e/probe_twoinst.py -s``; PROBE_TRIALS sets the tries of each
timing, 10 by default). Prints, per timing, how often the ledger held the text's
facts twice (two request ids, one gateway message id) or a request's event twice
(one request id, the same fields); fails on neither."""

from __future__ import annotations

import asyncio
import collections
import os
import random
from collections.abc import Awaitable
from datetime import timedelta
from typing import Any

import pytest
from consent.v1 import consent_service_pb2 as api

from ledger.ports import Stream
from services.bootstrap import Runtime
from tests.e2e.harness import client, inbound, opt_in, opt_out, sent
from tests.e2e.test_inbound_replies import PROMO_NUMBER, instances, standing

pytestmark = pytest.mark.asyncio(loop_scope="session")

TRIALS = int(os.environ.get("PROBE_TRIALS", "10"))
TIMINGS: list[str | int] = ["concurrent", "b-first", 2, 5, 10, 20, 40, "after-ack"]
"""At once; B 2 ms ahead of A; A that many ms ahead of B; B once A answered."""

__all__ = ["instances"]  # the fixture, used by name


async def ledger_events(runtime: Runtime, phones: set[str]) -> dict[str, list[tuple[str, str]]]:
    """Each of ``phones``' records in the subscribers' topic: type and event id."""
    out: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
    assert runtime.ledger is not None
    for p in await runtime.ledger.partitions(Stream.SUBSCRIBERS):
        start = 0
        while got := await runtime.ledger.read(Stream.SUBSCRIBERS, p, start, 1000):
            for r in got:
                phone = getattr(r.event, "phone", None)
                if phone in phones:
                    out[phone].append((type(r.event).__name__, str(r.event.event_id)))
            start = got[-1].position.offset + 1
    return out


async def pair(first: Awaitable[Any], second: Awaitable[Any], timing: str | int) -> list[Any]:
    if timing == "concurrent":
        return list(await asyncio.gather(first, second))
    if timing == "b-first":
        b = asyncio.ensure_future(second)
        await asyncio.sleep(0.002)
        return list(await asyncio.gather(first, b))
    if timing == "after-ack":
        return [await first, await second]
    assert isinstance(timing, int)
    a = asyncio.ensure_future(first)
    await asyncio.sleep(timing / 1000)
    return list(await asyncio.gather(a, second))


@pytest.mark.parametrize("to", [PROMO_NUMBER, "+12125550199"], ids=["owned", "unowned"])
async def test_one_text_under_two_request_ids(instances, to):
    (a, b), when = instances
    tries: dict[str, tuple[str, list[int]]] = {}
    async with client(a.address, "acme-app") as ca, client(b.address, "acme-app") as cb:
        for timing in TIMINGS:
            for _ in range(TRIALS):
                phone = f"+1415{random.randint(2000000, 9999999)}"
                at = when - timedelta(minutes=30)
                w = await ca.RecordOptIn(opt_in(phone, "acme", "promo", at))
                await standing(ca, phone, w.consistency_token)
                await standing(cb, phone, w.consistency_token)
                text = inbound(phone, to, "STOP", when - timedelta(minutes=5))
                other = api.HandleInboundMessageRequest()
                other.CopyFrom(text)
                other.request_id = text.request_id + "-b"
                answers = await pair(
                    ca.HandleInboundMessage(text), cb.HandleInboundMessage(other), timing
                )
                tries[phone] = (str(timing), [r.reply for r in answers])
    stored = await ledger_events(a, set(tries))
    summary: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for phone, (timing, replies) in tries.items():
        kinds = collections.Counter(k for k, _ in stored[phone])
        owed = sum(r != api.REPLY_KIND_NONE for r in replies)
        texts, revoked = kinds["InboundMessageReceived"], kinds["ConsentRevoked"]
        summary[timing][f"texts={texts} opt-outs={revoked} replies owed={owed}"] += 1
    for timing, counted in summary.items():
        print("one text", to, timing, dict(counted))


def as_batch(request_id: str, one: api.RecordMessageSentRequest) -> api.RecordMessagesSentRequest:
    """``one`` as the one message of a batched call under ``request_id``."""
    message = api.SentMessage(
        phone=one.phone, campaign=one.campaign, message_id=one.message_id,
        occurred_at=one.occurred_at, included_opt_out_language=True, identified_sender=True,
    )  # fmt: skip
    return api.RecordMessagesSentRequest(request_id=request_id, brand="acme", messages=[message])


@pytest.mark.parametrize("kind", ["opt-out", "opt-in", "send", "text", "batch", "batches"])
async def test_one_request_through_both(instances, kind):
    (a, b), when = instances
    tries: dict[str, str] = {}
    async with client(a.address, "acme-app") as ca, client(b.address, "acme-app") as cb:
        for timing in TIMINGS:
            for _ in range(TRIALS):
                phone = f"+1415{random.randint(2000000, 9999999)}"
                w = await ca.RecordOptIn(
                    opt_in(phone, "acme", "promo", when - timedelta(minutes=30))
                )
                await standing(ca, phone, w.consistency_token)
                await standing(cb, phone, w.consistency_token)
                at = when - timedelta(minutes=5)
                request: Any
                if kind == "opt-out":
                    request, rpc = opt_out(phone, "acme", "promo", at), "RecordOptOut"
                elif kind == "opt-in":
                    request, rpc = opt_in(phone, "acme", "promo", at), "RecordOptIn"
                elif kind == "send":
                    request, rpc = sent(phone, "acme", "promo", at), "RecordMessageSent"
                elif kind in ("batch", "batches"):
                    one = sent(phone, "acme", "promo", at)
                    request, rpc = as_batch(one.request_id, one), "RecordMessagesSent"
                else:
                    request, rpc = inbound(phone, PROMO_NUMBER, "STOP", at), "HandleInboundMessage"
                # Two batches carrying the same message under two request ids.
                other = as_batch(request.request_id + "-b", one) if kind == "batches" else request
                answers = await pair(getattr(ca, rpc)(request), getattr(cb, rpc)(other), timing)
                same = list(answers[0].event_ids) == list(answers[1].event_ids)
                tries[phone] = str(timing) + ("" if same else " (answered apart)")
    stored = await ledger_events(a, set(tries))
    summary: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for phone, timing in tries.items():
        ids = collections.Counter(i for _, i in stored[phone][1:])  # after the setup's opt-in
        summary[timing][f"records={sum(ids.values())} events={len(ids)}"] += 1
    for timing, counted in summary.items():
        print("one request", kind, timing, dict(counted))
