"""How long a write may keep its caller waiting on the server.

A write held while the ledger is down would otherwise wait for the ledger's own
timeout (40 s), long after its caller's deadline: the caller would see
DEADLINE_EXCEEDED with no word on what happened, and the write could still be
recorded later. The server gives up first, while the caller still listens, and
says so: UNAVAILABLE, outcome unknown, retry with the same request_id (which
records nothing twice)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import grpc

from services.errors import OutcomeUnknown

R = TypeVar("R")

MARGIN = 0.1
"""The share of the caller's remaining time kept for the answer to reach it."""
MARGIN_AT_MOST = 0.5
"""Seconds, however long the caller's deadline."""


def write_budget(context: grpc.aio.ServicerContext, limit: float) -> float:
    """Seconds a write may wait: ``limit``, or less when the caller's deadline
    (less a margin for the answer's way back) comes sooner."""
    remaining: float | None = context.time_remaining()
    if remaining is None:
        return limit
    return max(0.0, min(limit, remaining - min(MARGIN_AT_MOST, MARGIN * remaining)))


async def within(budget: float, write: Coroutine[Any, Any, R]) -> R:
    """``write``'s result, or ``OutcomeUnknown`` once ``budget`` seconds have passed.

    The write runs as a task that this call stops waiting for (and cancels): a
    frozen database answers not even a cancellation, and a cancelled call into
    asyncpg waits for that answer, so cancelling the caller would not return in
    time (``services.adapters.postgres_view.bounded`` does the same for reads)."""
    task = asyncio.ensure_future(write)
    try:
        done, _ = await asyncio.wait({task}, timeout=budget)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()
        task.add_done_callback(_retrieve)
        raise OutcomeUnknown(f"the write was not acknowledged within {budget:.3g} s")
    return task.result()


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Take the outcome of a write nobody waits for any more, so it is not logged."""
    if not task.cancelled():
        task.exception()
