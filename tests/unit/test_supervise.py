"""``services.projector.supervise``: a failed projector is started again, with
growing pauses, and every failure is counted and logged with its cause."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from services.projector import supervise

pytestmark = pytest.mark.asyncio


class Clock:
    """A monotonic clock that the runs advance, and a sleep that records its pauses."""

    def __init__(self) -> None:
        self.now = 0.0
        self.pauses: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


class Runs:
    """``run`` for ``supervise``: the n-th call lasts ``lasting[n]`` seconds, then
    fails (or returns, if told to); after the scripted calls it waits forever."""

    def __init__(self, clock: Clock, lasting: list[float], *, returns: bool = False) -> None:
        self.clock, self.lasting, self.returns = clock, lasting, returns
        self.calls = 0
        self.forever = asyncio.Event()

    async def __call__(self) -> None:
        self.calls += 1
        if self.calls > len(self.lasting):
            await asyncio.Event().wait()
        self.clock.now += self.lasting[self.calls - 1]
        if self.calls == len(self.lasting):
            self.forever.set()
        if not self.returns:
            raise ConnectionResetError(f"lost the database (run {self.calls})")


async def supervised(runs: Runs, clock: Clock, failures: list[int], **kw: Any) -> None:
    """Run ``supervise`` until the scripted runs are over, then cancel it."""
    task = asyncio.create_task(
        supervise(
            runs,
            name="the projector",
            failed=lambda: failures.append(runs.calls),
            sleep=clock.sleep,
            monotonic=clock.monotonic,
            **kw,
        )
    )
    await asyncio.wait_for(runs.forever.wait(), 5)
    while runs.calls <= len(runs.lasting):  # let the last pause pass and the next run start
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_failing_run_is_started_again_after_pauses_that_double_up_to_a_limit():
    clock, failures = Clock(), []
    runs = Runs(clock, [0.1] * 6)
    await supervised(runs, clock, failures, first_pause=0.5, longest_pause=3.0)
    assert runs.calls == 7  # six failures, then the seventh run keeps running
    assert failures == [1, 2, 3, 4, 5, 6]
    assert clock.pauses == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


async def test_the_pause_starts_small_again_after_a_run_that_lasted():
    clock, failures = Clock(), []
    runs = Runs(clock, [0.1, 0.1, 0.1, 120.0, 0.1, 61.0])
    await supervised(runs, clock, failures, first_pause=0.5, healthy_after=60.0)
    assert clock.pauses == [0.5, 1.0, 2.0, 0.5, 1.0, 0.5]


async def test_it_says_when_a_run_starts_and_when_it_fails():
    """What the projector process's health status follows: not running from a
    failure until the next start, after the pause."""
    clock, failures, said = Clock(), [], []

    async def running(now: bool) -> None:
        said.append((now, runs.calls, len(clock.pauses)))

    runs = Runs(clock, [0.1, 0.1])
    await supervised(runs, clock, failures, running=running)
    # (running?, runs started, pauses taken) at each word
    assert said == [(True, 0, 0), (False, 1, 0), (True, 1, 1), (False, 2, 1), (True, 2, 2)]


async def test_a_run_that_returns_is_a_failure_too():
    clock, failures = Clock(), []
    runs = Runs(clock, [0.1, 0.1], returns=True)
    await supervised(runs, clock, failures)
    assert runs.calls == 3 and failures == [1, 2]


async def test_each_failure_is_logged_with_its_cause(caplog):
    clock, failures = Clock(), []
    runs = Runs(clock, [0.1, 0.1])
    with caplog.at_level(logging.ERROR, logger="services.projector"):
        await supervised(runs, clock, failures)
    logged = [r for r in caplog.records if r.name == "services.projector"]
    assert [r.getMessage() for r in logged] == [
        "the projector failed; starting it again in 0.5 s",
        "the projector failed; starting it again in 1.0 s",
    ]
    assert logged[1].exc_info is not None
    assert str(logged[1].exc_info[1]) == "lost the database (run 2)"


async def test_cancelling_it_stops_the_run_and_counts_no_failure():
    clock, failures = Clock(), []
    running = asyncio.Event()
    stopped = []

    async def run() -> None:
        running.set()
        try:
            await asyncio.Event().wait()
        finally:
            stopped.append(True)

    task = asyncio.create_task(
        supervise(run, name="the projector", failed=lambda: failures.append(1), sleep=clock.sleep)
    )
    await asyncio.wait_for(running.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stopped == [True] and failures == [] and clock.pauses == []
