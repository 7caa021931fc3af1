"""How long a write may keep its caller waiting on the server.

A write held while the ledger is down used to wait for the ledger's own timeout
(40 s), long after its caller's deadline: the caller saw DEADLINE_EXCEEDED with
no word on what happened, and the write could still be recorded later. The
server now gives up first, while the caller still listens, and says so:
UNAVAILABLE, outcome unknown, retry with the same request_id (which records
nothing twice)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

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


async def within(budget: float, write: Awaitable[R]) -> R:
    """``write``'s result, or ``OutcomeUnknown`` once ``budget`` seconds have passed."""
    try:
        async with asyncio.timeout(budget):
            return await write
    except TimeoutError:
        raise OutcomeUnknown(f"the write was not acknowledged within {budget:.3g} s") from None
