"""``Coalesced``: calls that arrive while a batch is in flight go as the next batch."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from services.adapters.coalescing import Coalesced


class Store:
    """Answers a call with its double; ``gate`` holds every statement until set."""

    def __init__(self, bad: frozenset[int] = frozenset()) -> None:
        self.bad = bad
        self.gate = asyncio.Event()
        self.gate.set()
        self.sent: list[list[int]] = []

    async def one(self, call: int) -> int:
        self.sent.append([call])
        await self.gate.wait()
        if call in self.bad:
            raise ValueError(call)
        return 2 * call

    async def many(self, calls: Sequence[int]) -> list[int]:
        self.sent.append(list(calls))
        await self.gate.wait()
        if self.bad.intersection(calls):
            raise ValueError("the batch failed")
        return [2 * c for c in calls]


async def test_the_first_call_goes_alone_and_the_waiting_ones_as_one_batch() -> None:
    store = Store()
    store.gate.clear()
    take = Coalesced(store.one, store.many)
    first = asyncio.create_task(take(1))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert store.sent == [[1]]  # sent at once, no timer
    rest = [asyncio.create_task(take(c)) for c in (2, 3, 4)]
    await asyncio.sleep(0)
    assert store.sent == [[1]]  # waiting for the batch in flight
    store.gate.set()
    assert await asyncio.gather(first, *rest) == [2, 4, 6, 8]
    assert store.sent == [[1], [2, 3, 4]]
    assert await take(5) == 10  # idle again: alone
    assert store.sent[-1] == [5]


async def test_a_failed_batch_answers_each_call_alone() -> None:
    store = Store(bad=frozenset({3}))
    store.gate.clear()
    take = Coalesced(store.one, store.many)
    calls = [asyncio.create_task(take(c)) for c in (1, 2, 3, 4)]  # at once: one batch
    await asyncio.sleep(0)
    store.gate.set()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert outcomes[:2] == [2, 4] and outcomes[3] == 8
    assert isinstance(outcomes[2], ValueError) and outcomes[2].args == (3,)
    assert store.sent == [[1, 2, 3, 4], [1], [2], [3], [4]]


async def test_a_caller_that_stops_waiting_leaves_the_others_answered() -> None:
    store = Store()
    store.gate.clear()
    take = Coalesced(store.one, store.many)
    first = asyncio.create_task(take(1))
    await asyncio.sleep(0)
    impatient, patient = asyncio.create_task(take(2)), asyncio.create_task(take(3))
    await asyncio.sleep(0)
    impatient.cancel()
    store.gate.set()
    assert (await first, await patient) == (2, 6)
    with pytest.raises(asyncio.CancelledError):
        await impatient
    assert store.sent == [[1], [2, 3]]


async def test_a_batch_past_its_bound_holds_up_no_later_call() -> None:
    """A statement stuck on a connection that answers nothing held every later call
    behind it; past the bound its callers are answered TimeoutError and the next
    calls are sent without waiting for it."""
    stuck = asyncio.Event()

    async def one(call: int) -> int:
        if call == 1:
            await stuck.wait()
        return 2 * call

    async def many(calls: Sequence[int]) -> list[int]:
        return [2 * c for c in calls]

    take = Coalesced(one, many, bound=0.05)
    first = asyncio.create_task(take(1))
    await asyncio.sleep(0)
    assert await asyncio.wait_for(take(2), 5) == 4
    with pytest.raises(TimeoutError):
        await first
    stuck.set()
