"""Token buckets per caller: a burst, a steady rate, a batch's cost, and when to retry."""

from __future__ import annotations

import asyncio
import gc
import math
from collections.abc import AsyncIterator
from typing import Any

import pytest

from services.errors import RateLimited
from services.grpc_api.admission import CallerLimits, OpenStreams, TokenBucket
from services.settings import UNLIMITED, RateLimit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_admits_its_burst_then_says_when_to_retry() -> None:
    bucket = TokenBucket(RateLimit(rate=2, burst=3), now=0)
    assert [bucket.take(0) for _ in range(3)] == [0, 0, 0]
    assert bucket.take(0) == pytest.approx(0.5)
    assert bucket.take(0.25) == pytest.approx(0.25)  # half filled again
    assert bucket.take(0.5) == 0


def test_a_bucket_fills_at_its_rate_up_to_its_burst_only() -> None:
    bucket = TokenBucket(RateLimit(rate=10, burst=2), now=0)
    assert bucket.take(0) == bucket.take(0) == 0
    assert bucket.take(3600) == bucket.take(3600) == 0  # an hour's quiet buys only the burst
    assert bucket.take(3600) > 0


def test_a_charge_beyond_the_bucket_is_waited_off() -> None:
    bucket = TokenBucket(RateLimit(rate=100, burst=10), now=0)
    assert bucket.take(0) == 0
    bucket.charge(999)  # a batch of 1,000 numbers, admitted on one token
    assert bucket.take(0) == pytest.approx(9.91)  # (1 - (10 - 1000)) / 100


def test_the_default_limits_callers_without_their_own() -> None:
    clock = Clock()
    limits = CallerLimits(RateLimit(1, 1), clock)
    assert limits.admit("a", None) == 0
    assert limits.admit("a", None) == pytest.approx(1.0)
    assert limits.admit("b", None) == 0  # each caller has its own bucket
    assert limits.admit("c", RateLimit(100, 5)) == 0
    assert [limits.admit("c", RateLimit(100, 5)) for _ in range(4)] == [0] * 4
    assert limits.admit("c", RateLimit(100, 5)) > 0


def test_unlimited_callers_and_no_default_never_wait() -> None:
    clock = Clock()
    assert all(CallerLimits(None, clock).admit("a", None) == 0 for _ in range(10_000))
    limited = CallerLimits(RateLimit(1, 1), clock)
    assert all(limited.admit("ops", UNLIMITED) == 0 for _ in range(10_000))


def test_a_changed_limit_takes_effect_at_once() -> None:
    clock = Clock()
    limits = CallerLimits(None, clock)
    assert limits.admit("a", RateLimit(1, 1)) == 0
    assert limits.admit("a", RateLimit(1, 1)) > 0
    assert limits.admit("a", RateLimit(1000, 1000)) == 0  # the tokens file was edited


def test_charges_count_against_the_callers_bucket() -> None:
    clock = Clock()
    limits = CallerLimits(RateLimit(10, 10), clock)
    assert limits.admit("a", None) == 0
    limits.charge("a", 100)
    assert limits.admit("a", None) == pytest.approx((1 - (9 - 100)) / 10)


@pytest.mark.parametrize("rate", [0, -1, math.nan])
def test_a_rate_must_be_above_zero(rate) -> None:
    with pytest.raises(ValueError, match="above 0"):
        RateLimit(rate, 1)


def test_the_burst_defaults_to_a_seconds_worth() -> None:
    assert RateLimit.of(2.5) == RateLimit(2.5, 3)
    assert RateLimit.of(0.1) == RateLimit(0.1, 1)
    with pytest.raises(ValueError, match="burst"):
        RateLimit.of(5, 0)


def _import_call(limit: RateLimit, clock: Clock) -> tuple[Any, Any]:
    """The admission gate of one caller limited to ``limit``, and its ImportConsents."""
    from consent.v1 import consent_service_pb2 as api

    from services.grpc_api import admission as admission_module
    from services.grpc_api.auth import Principal

    caller = Principal("importer", frozenset(), None, limit)
    gate = admission_module.Admission(
        lambda context: caller, ["consent.v1.ConsentService"], CallerLimits(clock=clock)
    )
    call = admission_module._Call(
        gate,
        "ImportConsents",
        api.ImportConsentsRequest.FromString,
        "consent.v1.ImportConsentsRequest",
        gate._authenticate,
        admission_module._COSTS["ImportConsents"],
    )
    return gate, call


async def test_an_import_stream_is_slowed_to_its_callers_rate_not_refused(monkeypatch) -> None:
    """Each message of an ``ImportConsents`` stream costs its records: the stream's
    first is admitted with the call, and each later one waits, before it is read,
    until the caller's bucket holds a call again. Refused part way, an import would
    stop with the work it asked for done; uncounted, a limit bounded nothing."""
    from consent.v1 import consent_service_pb2 as api

    from services.grpc_api import admission as admission_module

    clock, waits = Clock(), []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock.now += seconds

    monkeypatch.setattr(admission_module.asyncio, "sleep", sleep)
    limit = RateLimit(rate=10, burst=5)
    gate, call = _import_call(limit, clock)
    message = api.ImportConsentsRequest(records=[api.ImportRecord()] * 20)
    read = []

    async def behavior(requests, context):
        async for request in requests:
            read.append((len(request.records), clock.now))
        return "answered"

    async def raws():
        for _ in range(3):
            yield message.SerializeToString()

    assert await call.streaming(behavior)(raws(), object()) == "answered"
    # 5 - 20 = -15: the second message waits 1.6 s for one call, then takes its 20.
    assert [n for n, _ in read] == [20, 20, 20]
    assert [round(at - 1000.0, 6) for _, at in read] == [0.0, 1.6, 3.6]
    assert sum(waits) == pytest.approx(3.6)
    assert gate._limits.admit("importer", limit) == pytest.approx(2.0)  # -19 after the last


async def test_import_streams_opened_at_once_each_wait_for_their_first_message(
    monkeypatch,
) -> None:
    """Each stream's opening is admitted while the bucket holds a call, before any
    message is charged: two opened at once took 2 of 5, then 20 records each with
    no wait, and a caller limited to 200 calls a second had 30 messages of 1,000
    records worked on at once. The second stream's first message now waits until
    the first's records are paid off: 15 calls at 10 a second."""
    from consent.v1 import consent_service_pb2 as api

    from services.grpc_api import admission as admission_module

    clock, pause = Clock(), asyncio.sleep

    async def sleep(seconds: float) -> None:
        clock.now += seconds
        await pause(0)

    monkeypatch.setattr(admission_module.asyncio, "sleep", sleep)
    _, call = _import_call(RateLimit(rate=10, burst=5), clock)
    message = api.ImportConsentsRequest(records=[api.ImportRecord()] * 20).SerializeToString()
    opened, read = asyncio.Event(), []

    async def behavior(requests, context):
        async for request in requests:
            read.append((len(request.records), clock.now))
        return "answered"

    async def raws():
        await opened.wait()  # the message comes once both streams are open
        yield message

    streams = [asyncio.ensure_future(call.streaming(behavior)(raws(), object())) for _ in "ab"]
    await pause(0.01)
    opened.set()

    assert await asyncio.gather(*streams) == ["answered"] * 2
    # 5 - 2 opened = 3; 3 - 19 = -16 after the first message: 1.6 s to pay off.
    assert [(n, round(at - 1000.0, 6)) for n, at in read] == [(20, 0.0), (20, 1.6)]


async def test_a_stream_gives_its_place_back_however_it_ends() -> None:
    """A stream holds its place in an async generator, as the servicer's do; a place
    not given back locks its caller out until a restart. It is given back when the
    stream runs to its end, fails part way (bad input, a revoked token), is cancelled
    while it waits (the client cancelled, its deadline passed, its connection went),
    and when it is dropped while it waits at a ``yield``: gRPC cancels a call whose
    client went away while its send waits for the client to read, and never closes
    the generator; the loop's finalizer closes it once no one holds it, which takes
    no collection of cycles (turned off here)."""
    streams = OpenStreams("test", 1, "one at a time")
    gate = asyncio.Event()

    async def stream(fail: bool = False) -> AsyncIterator[int]:
        with streams.opened("acme-app"):
            yield 1
            if fail:
                raise ValueError("a bad chunk")
            await gate.wait()
            yield 2

    def given_back() -> bool:
        with streams.opened("acme-app"):
            return True

    # Read to its end.
    gate.set()
    assert [item async for item in stream()] == [1, 2]
    assert given_back()
    gate.clear()
    # Failed part way.
    with pytest.raises(ValueError):
        _ = [item async for item in stream(fail=True)]
    assert given_back()
    # Cancelled while it waits.
    waiting = stream()
    assert await anext(waiting) == 1
    task = asyncio.ensure_future(anext(waiting))
    await asyncio.sleep(0)
    with pytest.raises(RateLimited):
        given_back()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert given_back()
    # Dropped at a yield, never closed.
    collecting = gc.isenabled()
    gc.disable()
    try:
        dropped = stream()
        assert await anext(dropped) == 1
        with pytest.raises(RateLimited):
            given_back()
        del dropped
        await asyncio.sleep(0.01)  # the finalizer's aclose, a task, runs on the loop
        assert given_back()
    finally:
        if collecting:
            gc.enable()
