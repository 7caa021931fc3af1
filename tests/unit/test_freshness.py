"""``FreshnessGuard.wait_until_applied``: what a write that must count every acknowledged
fact waits for, and how soon it learns the view got there."""

from __future__ import annotations

import asyncio

import pytest

from ledger.ports import ConsistencyToken, Stream
from services.adapters.memory_ledger import InMemoryLedger
from services.adapters.memory_view import InMemoryConsentView
from services.freshness import FreshnessGuard, WatchedAppends
from services.settings import FreshnessSettings
from tests.builders import PHONE, granted, revoked
from tests.loop_time import in_loop_time

# The tests bound waits in loop time on a loop of their own (``in_loop_time``): the
# guard's bounds and intervals mean the same on a machine however loaded.


def _guard(
    ledger: InMemoryLedger, view: InMemoryConsentView, settings: FreshnessSettings
) -> FreshnessGuard:
    return FreshnessGuard(ledger, view, settings, monotonic=asyncio.get_running_loop().time)


@in_loop_time
async def test_wait_until_applied_learns_of_the_projection_in_moments_not_at_the_next_refresh() -> (
    None
):
    ledger, view = InMemoryLedger(partitions=2), InMemoryConsentView()
    # A refresh interval far longer than the bound: only wait_until_applied's own looks can tell.
    guard = _guard(ledger, view, FreshnessSettings(refresh_interval=60, wait_bound=1))
    await guard.start()
    try:
        written = await ledger.append([granted()])

        async def project_soon() -> None:
            await asyncio.sleep(0.02)
            await view.apply(Stream.SUBSCRIBERS, written)

        projecting = asyncio.create_task(project_soon())
        started = asyncio.get_running_loop().time()
        assert await guard.wait_until_applied()
        assert asyncio.get_running_loop().time() - started < 0.2
        await projecting
    finally:
        await guard.stop()


@in_loop_time
async def test_wait_until_applied_fails_closed_when_the_view_does_not_get_there_in_the_bound() -> (
    None
):
    ledger, view = InMemoryLedger(partitions=2), InMemoryConsentView()
    guard = _guard(ledger, view, FreshnessSettings(refresh_interval=60, wait_bound=0.1))
    await guard.start()
    try:
        await ledger.append([granted()])  # never applied
        assert not await guard.wait_until_applied()
        assert await guard.wait_until_applied((Stream.CAMPAIGNS,))  # a stream with nothing behind
    finally:
        await guard.stop()


class _HungLedger(InMemoryLedger):
    async def every_end_offset(self):  # type: ignore[no-untyped-def]
        await asyncio.sleep(3)
        return await super().every_end_offset()


class _DownLedger(InMemoryLedger):
    async def every_end_offset(self):  # type: ignore[no-untyped-def]
        raise ConnectionError("broker down")


@in_loop_time
async def test_wait_until_applied_keeps_its_bound_when_the_broker_hangs_or_is_down() -> None:
    settings = FreshnessSettings(refresh_interval=60, wait_bound=0.1)
    for ledger_type in (_HungLedger, _DownLedger):
        ledger, view = ledger_type(partitions=2), InMemoryConsentView()
        guard = _guard(ledger, view, settings)  # never started: no loop to wait for
        started = asyncio.get_running_loop().time()
        assert not await guard.wait_until_applied()
        assert asyncio.get_running_loop().time() - started < 0.5


@in_loop_time
async def test_wait_until_applied_for_waits_for_the_phones_partition_at_the_ledger_s_end_now() -> (
    None
):
    ledger, view = InMemoryLedger(partitions=4), InMemoryConsentView()
    guard = _guard(ledger, view, FreshnessSettings(refresh_interval=60, wait_bound=0.1))
    await guard.start()  # observed before the write: wait_for_phones would not wait
    try:
        mine = granted()
        other = granted(phone="+14155550199")
        assert ledger.partition_for(mine.phone) != ledger.partition_for(other.phone)
        written = await ledger.append([mine])
        assert await guard.wait_for_phones([mine.phone])  # the last observation: too old
        assert not await guard.wait_until_applied_for([mine.phone])
        await view.apply(Stream.SUBSCRIBERS, written)
        await ledger.append([other])  # another partition, never applied: not waited for
        assert await guard.wait_until_applied_for([mine.phone])
        assert not await guard.wait_until_applied_for([other.phone])
    finally:
        await guard.stop()


class _SlowLedger(InMemoryLedger):
    """A ledger whose end offsets take ``delay`` to read (a loaded broker and loop),
    counting how often they are asked for and how many asks are under way at once."""

    def __init__(self, delay: float, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(**kwargs)
        self.delay, self.asked, self.under_way, self.most_under_way = delay, 0, 0, 0

    async def every_end_offset(self):  # type: ignore[no-untyped-def]
        self.asked += 1
        self.under_way += 1
        self.most_under_way = max(self.most_under_way, self.under_way)
        try:
            await asyncio.sleep(self.delay)
            return await super().every_end_offset()
        finally:
            self.under_way -= 1


@in_loop_time
async def test_a_read_does_not_trust_an_observation_older_than_the_refresh_interval() -> None:
    """The promise: a write acknowledged one refresh interval before a read counts.
    The last observation was made before the opt-out; a read arriving more than an
    interval after the opt-out must look again, find it unapplied, and fail closed,
    never answer from the old, caught-up looking observation."""
    ledger, view = InMemoryLedger(partitions=2), InMemoryConsentView()
    guard = _guard(ledger, view, FreshnessSettings(refresh_interval=0.05, wait_bound=0.2))
    await guard.observe()  # no loop: only what reads ask for is observed
    assert guard.status.caught_up
    await ledger.append([revoked(granted().occurred_at)])  # acknowledged, never applied
    await asyncio.sleep(0.06)

    assert not await guard.wait_for_phones([PHONE])
    assert not await guard.wait_for_all()


@in_loop_time
async def test_a_read_within_the_interval_uses_the_last_observation_without_asking() -> None:
    ledger = _SlowLedger(0.0, partitions=2)
    guard = _guard(ledger, InMemoryConsentView(), FreshnessSettings(refresh_interval=5))
    await guard.observe()
    asked = ledger.asked

    assert await guard.wait_for_phones([PHONE])
    assert ledger.asked == asked


@in_loop_time
async def test_readers_waiting_for_a_fresh_observation_share_one() -> None:
    ledger = _SlowLedger(0.03, partitions=2)
    # An interval long enough that all the readers arrive within one of the first
    # reader's observation, however slow the machine.
    guard = _guard(ledger, InMemoryConsentView(), FreshnessSettings(refresh_interval=1))
    await guard.observe()
    await asyncio.sleep(1.1)
    asked = ledger.asked

    answers = await asyncio.gather(*(guard.wait_for_phones([PHONE]) for _ in range(200)))

    assert all(answers)
    assert ledger.asked - asked == 1
    assert ledger.most_under_way == 1


@in_loop_time
async def test_a_read_never_uses_an_observation_that_started_before_its_interval() -> None:
    """An observation under way that started too long before a read cannot vouch for
    writes acknowledged after it started: the read asks for a newer one."""
    ledger = _SlowLedger(0.1, partitions=2)
    guard = _guard(
        ledger, InMemoryConsentView(), FreshnessSettings(refresh_interval=0.02, wait_bound=1)
    )
    old = asyncio.ensure_future(guard.observe())
    await asyncio.sleep(0.05)  # ``old`` started 50 ms ago, more than an interval
    await ledger.append([revoked(granted().occurred_at)])  # after ``old`` asked

    assert not await guard.wait_for_phones([PHONE])  # the newer look sees it unapplied
    assert ledger.asked >= 2
    await old


@in_loop_time
async def test_a_hung_ledger_fails_reads_closed_in_the_bound_with_few_asks_under_way() -> None:
    ledger = _SlowLedger(30, partitions=2)
    guard = _guard(
        ledger, InMemoryConsentView(), FreshnessSettings(refresh_interval=0.01, wait_bound=0.2)
    )
    started = asyncio.get_running_loop().time()

    answers = []
    for _ in range(5):  # readers arriving over a second, each needing a newer look
        answers += await asyncio.gather(*(guard.wait_for_phones([PHONE]) for _ in range(50)))

    assert not any(answers)
    assert asyncio.get_running_loop().time() - started < 5 * 0.2 + 0.5
    assert ledger.most_under_way <= 2
    await guard.stop()


@in_loop_time
async def test_concurrent_waits_share_their_looks_at_the_ledger() -> None:
    """Sixty-four writes catching up at once ask the ledger for its ends a few times,
    not sixty-four: each waits for an observation that started after it arrived,
    and those arriving together share one."""
    ledger = _SlowLedger(0.01, partitions=2)
    guard = _guard(
        ledger, InMemoryConsentView(), FreshnessSettings(refresh_interval=60, wait_bound=1)
    )
    await guard.observe()
    asked = ledger.asked

    answers = await asyncio.gather(*(guard.wait_until_applied_for([PHONE]) for _ in range(64)))

    assert all(answers)
    assert ledger.asked - asked <= 3
    assert ledger.most_under_way <= 2


@in_loop_time
async def test_a_wait_never_uses_an_observation_that_started_before_it_arrived() -> None:
    """A write acknowledged just before a catch-up must count, even though an
    observation under way (started before the write) would have landed sooner."""
    ledger = _SlowLedger(0.1, partitions=2)
    view = InMemoryConsentView()
    guard = _guard(ledger, view, FreshnessSettings(refresh_interval=60, wait_bound=1))
    old = asyncio.ensure_future(guard.observe())
    await asyncio.sleep(0.02)  # ``old`` asked for the ends already
    await ledger.append([revoked(granted().occurred_at)])  # acknowledged, never applied

    assert not await guard.wait_until_applied_for([PHONE])
    await old


@in_loop_time
async def test_a_phones_read_with_a_token_waits_for_the_token_as_well() -> None:
    ledger, view = InMemoryLedger(partitions=2), InMemoryConsentView()
    guard = _guard(ledger, view, FreshnessSettings(refresh_interval=0.01, wait_bound=0.1))
    await guard.start()
    try:
        # A write to a number in another partition than PHONE's, not applied yet.
        numbers = (f"+1415555{n:04d}" for n in range(2600, 2700))
        other = next(p for p in numbers if ledger.partition_for(p) != ledger.partition_for(PHONE))
        written = await ledger.append([granted(phone=other)])
        token = ConsistencyToken.after(written)
        assert await guard.wait_for_phones([PHONE])  # PHONE's partition is not behind
        assert not await guard.wait_for_phones([PHONE], token)
        await view.apply(Stream.SUBSCRIBERS, written)
        assert await guard.wait_for_phones([PHONE], token)
    finally:
        await guard.stop()


@in_loop_time
async def test_a_read_after_this_instance_s_own_write_waits_for_it_with_no_observation() -> None:
    """No loop, no observation after the write: only the write's own note can tell a
    read that the opt-out it follows is not applied yet."""
    ledger, view = InMemoryLedger(partitions=4), InMemoryConsentView()
    guard = _guard(ledger, view, FreshnessSettings(refresh_interval=60, wait_bound=0.1))
    writes = WatchedAppends(ledger, guard)
    opt_in = await writes.append([granted()])
    await view.apply(Stream.SUBSCRIBERS, opt_in)
    await guard.observe()
    assert await guard.wait_for_phones([PHONE])

    opt_out = await writes.append([revoked(granted().occurred_at)])

    assert not await guard.wait_for_phones([PHONE])
    assert not await guard.wait_for_phones([f"+1415555{n:04d}" for n in range(2600, 2640)])
    assert not await guard.wait_for_all()
    # Another partition than the write's is not held up by it.
    numbers = (f"+1415555{n:04d}" for n in range(2600, 2700))
    other = next(p for p in numbers if ledger.partition_for(p) != ledger.partition_for(PHONE))
    assert await guard.wait_for_phones([other])

    async def project_soon() -> None:
        await asyncio.sleep(0.02)
        await view.apply(Stream.SUBSCRIBERS, opt_out)

    projecting = asyncio.create_task(project_soon())
    started = asyncio.get_running_loop().time()
    guard = _with_bound(guard, 1)
    assert await guard.wait_for_phones([PHONE])  # learnt in moments, not at the next refresh
    assert asyncio.get_running_loop().time() - started < 0.5
    await projecting
    assert await guard.wait_for_all()


@in_loop_time
async def test_an_observation_that_finds_a_write_applied_makes_its_note_needless() -> None:
    ledger, view = InMemoryLedger(partitions=2), InMemoryConsentView()
    guard = _guard(ledger, view, FreshnessSettings(refresh_interval=60, wait_bound=0.1))
    writes = WatchedAppends(ledger, guard)
    written = await writes.append([granted()])
    assert guard._written  # noted
    await view.apply(Stream.SUBSCRIBERS, written)
    await guard.observe()
    assert not guard._written  # applied, and observed so
    assert guard.status.caught_up and await guard.wait_for_phones([PHONE])


@in_loop_time
async def test_a_write_the_ledger_refuses_is_not_noted() -> None:
    class Refusing(InMemoryLedger):
        async def append(self, events):  # type: ignore[no-untyped-def]
            raise ConnectionError("broker down")

    ledger, view = Refusing(partitions=2), InMemoryConsentView()
    guard = _guard(ledger, view, FreshnessSettings(refresh_interval=60, wait_bound=0.1))
    await guard.observe()
    with pytest.raises(ConnectionError):
        await WatchedAppends(ledger, guard).append([granted()])
    assert not guard._written and await guard.wait_for_phones([PHONE])


def _with_bound(guard: FreshnessGuard, seconds: float) -> FreshnessGuard:
    guard._settings = FreshnessSettings(
        refresh_interval=guard._settings.refresh_interval, wait_bound=seconds
    )
    return guard


async def test_ready_says_why_not_while_the_view_stays_behind_or_the_ledger_is_unseen() -> None:
    """The readiness probe's answer: ready while a read arriving now could be answered;
    not once the view has left an observed end unapplied for longer than a read
    waits (no projector advances it), nor once the ledger has gone unobserved past
    the age a read trusts; ready again when the view catches up."""
    clock = [100.0]
    ledger, view = InMemoryLedger(partitions=2), InMemoryConsentView()
    settings = FreshnessSettings(refresh_interval=0.05, wait_bound=0.5)
    guard = FreshnessGuard(ledger, view, settings, monotonic=lambda: clock[0])
    assert guard.ready() is not None and "never" in str(guard.ready())  # nothing observed yet
    await guard.observe()
    assert guard.ready() is None

    written = await ledger.append([granted()])  # not applied: the projector is stopped
    await guard.observe()
    clock[0] += 0.4
    await guard.observe()
    assert guard.ready() is None, "behind for less than a read waits"
    clock[0] += 0.2
    await guard.observe()
    why = guard.ready()
    assert why is not None and "CONSENT_FRESHNESS_WAIT_MS" in why

    await view.apply(Stream.SUBSCRIBERS, written)
    clock[0] += 0.05
    await guard.observe()
    assert guard.ready() is None

    clock[0] += settings.max_observation_age + 0.1  # the broker went quiet: no observation
    why = guard.ready()
    assert why is not None and "last observed" in why


async def test_ready_remembers_the_oldest_unapplied_end_past_many_observations() -> None:
    clock = [0.0]
    ledger, view = InMemoryLedger(partitions=1), InMemoryConsentView()
    settings = FreshnessSettings(refresh_interval=0.05, wait_bound=0.5)
    guard = FreshnessGuard(ledger, view, settings, monotonic=lambda: clock[0])
    applied = []
    for _ in range(200):  # far more observations than it keeps, each finding more
        applied += await ledger.append([granted()])
        await guard.observe()
        clock[0] += 0.05
    assert guard.ready() is not None
    await view.apply(Stream.SUBSCRIBERS, applied[:100])  # half way: still behind
    await guard.observe()
    assert guard.ready() is not None
    await view.apply(Stream.SUBSCRIBERS, applied[100:])
    await guard.observe()
    assert guard.ready() is None


async def test_a_view_is_applied_since_start_only_once_it_reaches_the_first_observed_ends() -> None:
    # A view filled again from the ledger (its database lost) starts behind: what its
    # writers noted beside their appends comes back only as it applies them.
    ledger, view = InMemoryLedger(partitions=4), InMemoryConsentView()
    mine, other = granted(), granted(phone="+14155550199")
    assert ledger.partition_for(mine.phone) != ledger.partition_for(other.phone)
    written = await ledger.append([mine])
    others = await ledger.append([other])
    guard = _guard(ledger, view, FreshnessSettings(refresh_interval=60, wait_bound=0.1))
    assert not guard.applied_since_start_for([mine.phone])  # never observed
    await guard.start()
    try:
        assert not guard.applied_since_start_for([mine.phone])
        await view.apply(Stream.SUBSCRIBERS, written)
        await guard.observe()
        assert guard.applied_since_start_for([mine.phone])
        assert not guard.applied_since_start_for([other.phone])
        await ledger.append([granted()])  # after the start: noted by its writer
        await view.apply(Stream.SUBSCRIBERS, others)
        await guard.observe()
        assert guard.applied_since_start_for([other.phone])
        assert guard.applied_since_start_for([mine.phone, other.phone])
    finally:
        await guard.stop()
