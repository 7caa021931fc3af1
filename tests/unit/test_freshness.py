"""``FreshnessGuard.catch_up``: what a write that must count every acknowledged
fact waits for, and how soon it learns the view got there."""

from __future__ import annotations

import asyncio

from ledger.ports import Stream
from services.adapters.memory_ledger import InMemoryLedger
from services.adapters.memory_view import InMemoryConsentView
from services.freshness import FreshnessGuard, FreshnessSettings
from tests.builders import granted


async def test_catch_up_learns_of_the_projection_in_moments_not_at_the_next_refresh() -> None:
    ledger, view = InMemoryLedger(partitions=2), InMemoryConsentView()
    # A refresh interval far longer than the bound: only catch_up's own looks can tell.
    guard = FreshnessGuard(ledger, view, FreshnessSettings(refresh_interval=60, wait_bound=1))
    await guard.start()
    try:
        written = await ledger.append([granted()])

        async def project_soon() -> None:
            await asyncio.sleep(0.02)
            await view.apply(Stream.SUBSCRIBERS, written)

        projecting = asyncio.create_task(project_soon())
        started = asyncio.get_running_loop().time()
        assert await guard.catch_up()
        assert asyncio.get_running_loop().time() - started < 0.2
        await projecting
    finally:
        await guard.stop()


async def test_catch_up_fails_closed_when_the_view_does_not_get_there_in_the_bound() -> None:
    ledger, view = InMemoryLedger(partitions=2), InMemoryConsentView()
    guard = FreshnessGuard(ledger, view, FreshnessSettings(refresh_interval=60, wait_bound=0.1))
    await guard.start()
    try:
        await ledger.append([granted()])  # never applied
        assert not await guard.catch_up()
        assert await guard.catch_up((Stream.CAMPAIGNS,))  # a stream with nothing behind
    finally:
        await guard.stop()


class _HungLedger(InMemoryLedger):
    async def every_end_offset(self):  # type: ignore[no-untyped-def]
        await asyncio.sleep(3)
        return await super().every_end_offset()


class _DownLedger(InMemoryLedger):
    async def every_end_offset(self):  # type: ignore[no-untyped-def]
        raise ConnectionError("broker down")


async def test_catch_up_keeps_its_bound_when_the_broker_hangs_or_is_down() -> None:
    settings = FreshnessSettings(refresh_interval=60, wait_bound=0.1)
    for ledger_type in (_HungLedger, _DownLedger):
        ledger, view = ledger_type(partitions=2), InMemoryConsentView()
        guard = FreshnessGuard(ledger, view, settings)  # never started: no loop to wait for
        started = asyncio.get_running_loop().time()
        assert not await guard.catch_up()
        assert asyncio.get_running_loop().time() - started < 0.5


async def test_catch_up_phones_waits_for_the_phones_partition_at_the_ledger_s_end_now() -> None:
    ledger, view = InMemoryLedger(partitions=4), InMemoryConsentView()
    guard = FreshnessGuard(ledger, view, FreshnessSettings(refresh_interval=60, wait_bound=0.1))
    await guard.start()  # observed before the write: wait_for_phones would not wait
    try:
        mine = granted()
        other = granted(phone="+14155550199")
        assert ledger.partition_for(mine.phone) != ledger.partition_for(other.phone)
        written = await ledger.append([mine])
        assert await guard.wait_for_phones([mine.phone])  # the last observation: too old
        assert not await guard.catch_up_phones([mine.phone])
        await view.apply(Stream.SUBSCRIBERS, written)
        await ledger.append([other])  # another partition, never applied: not waited for
        assert await guard.catch_up_phones([mine.phone])
        assert not await guard.catch_up_phones([other.phone])
    finally:
        await guard.stop()
