"""The seed's worker processes, awaited so that a cancelled seed (Ctrl-C) ends."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time

import pytest

from bench.seed import _applied


def _square(n: int) -> int:
    return n * n


def _fail(message: str) -> int:
    raise ValueError(message)


def _nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


async def test_results_and_errors_come_back_from_the_workers() -> None:
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        assert await asyncio.gather(*(_applied(pool, _square, (n,)) for n in (3, 4))) == [9, 16]
        with pytest.raises(ValueError, match="no such share"):
            await _applied(pool, _fail, ("no such share",))


async def test_a_cancelled_wait_leaves_at_once_and_the_pool_ends_its_workers() -> None:
    ctx = multiprocessing.get_context("spawn")
    threads = set(threading.enumerate())
    started = time.monotonic()
    with ctx.Pool(1) as pool:
        workers = list(pool._pool)  # type: ignore[attr-defined]
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(_applied(pool, _nap, (60.0,)), 0.5)
    # Leaving the block terminated the worker mid-task, and no thread is left waiting
    # on it: one blocked in ``AsyncResult.get`` kept an interrupted bench from exiting.
    for worker in workers:
        worker.join(10)
        assert not worker.is_alive()
    assert time.monotonic() - started < 30
    assert set(threading.enumerate()) <= threads
