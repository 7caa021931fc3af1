"""The projector against a real PostgreSQL: crashes lose nothing and apply nothing
twice, a rebuild reproduces the incremental projection row for row, and readers
can wait for a consistency token."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
import pytest

from ledger.events import LedgerEvent, Recorded
from ledger.ports import ConsentView, ConsistencyToken, Stream
from services.adapters.memory_ledger import InMemoryLedger
from services.adapters.postgres_view import PROJECTION_TABLES, PostgresConsentView
from services.projector import Projector, rebuild
from tests.conformance.view_suite import expected_states, generate_events
from tests.integration.waiting import lag, wait_for

pytestmark = pytest.mark.postgres


class ProcessDied(BaseException):
    """Stands for the process dying: not an Exception, so nothing on the way catches it."""


class DiesAfterCommit(ConsentView):
    """A view whose process dies right after its ``die_after``-th batch committed."""

    def __init__(self, inner: PostgresConsentView, die_after: int) -> None:
        self.inner = inner
        self.applied = 0
        self.die_after = die_after

    async def apply(
        self, stream: Stream, batch: Sequence[Recorded], *, known: Mapping[int, int] | None = None
    ) -> None:
        await self.inner.apply(stream, batch, known=known)
        self.applied += 1
        if self.applied == self.die_after:
            raise ProcessDied

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def positions(self, stream: Stream) -> dict[int, int]:
        return await self.inner.positions(stream)

    async def subscriber_states(self, brand: str, phones: Sequence[str]) -> Any:
        return await self.inner.subscriber_states(brand, phones)

    async def digests(self, brand: str, phones: Sequence[str]) -> Any:
        return await self.inner.digests(brand, phones)

    async def campaign_history(self, brand: str, campaign: str) -> Any:
        return await self.inner.campaign_history(brand, campaign)

    async def reset(self) -> None:
        await self.inner.reset()

    def campaign_writes(self, wait: float) -> Any:
        return self.inner.campaign_writes(wait)

    async def campaign_for_number(self, to_phone: str) -> Any:
        return await self.inner.campaign_for_number(to_phone)

    async def history(self, phone: str, brand: str | None = None) -> Any:
        return await self.inner.history(phone, brand)

    async def find_event(self, event_id: str) -> Any:
        return await self.inner.find_event(event_id)

    async def flagged(self, brand: str, after: int = 0) -> Any:
        return await self.inner.flagged(brand, after)

    async def open_flagged_times(self) -> Any:
        return await self.inner.open_flagged_times()

    async def sending_counts(self, brand: str, campaign: str | None, start: Any, end: Any) -> Any:
        return await self.inner.sending_counts(brand, campaign, start, end)

    async def request_use(self, brand: str, request_id: str) -> Any:
        return await self.inner.request_use(brand, request_id)

    async def claim_request(self, brand: str, request_id: str, fingerprint: str, ids: Any) -> Any:
        return await self.inner.claim_request(brand, request_id, fingerprint, ids)

    async def message_use(self, brand: str, phone: str, message_id: str) -> Any:
        return await self.inner.message_use(brand, phone, message_id)

    async def changes(self, brand: str, after: Any, limit: int, **filters: Any) -> Any:
        return await self.inner.changes(brand, after, limit, **filters)


class FailsBeforeCommit(PostgresConsentView):
    """Raises inside the transaction, after the rows and before the positions."""

    def __init__(self, pool: asyncpg.Pool, fail_on: int) -> None:
        super().__init__(pool)
        self.calls = 0
        self.fail_on = fail_on

    async def _write_positions(self, conn: Any, stream: Stream, offsets: dict[int, int]) -> None:
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("injected: the disk filled up before the commit")
        await super()._write_positions(conn, stream, offsets)


async def filled_ledger(
    events: Sequence[LedgerEvent], partitions: int = 4
) -> tuple[InMemoryLedger, list[Recorded]]:
    ledger = InMemoryLedger(partitions)
    recorded: list[Recorded] = []
    for start in range(0, len(events), 250):
        recorded.extend(await ledger.append(events[start : start + 250]))
    return ledger, recorded


async def assert_projection_is_exact(view: PostgresConsentView, recorded: list[Recorded]) -> None:
    expected = expected_states(recorded)
    for brand in sorted({b for _, b in expected}):
        phones = sorted(p for p, b in expected if b == brand)
        assert await view.subscriber_states(brand, phones) == {
            p: expected[p, brand] for p in phones
        }
    copies = await view.table_dump("ledger_event_copy")
    assert len(copies) == len({r.event.event_id for r in recorded})


async def dump(view: PostgresConsentView) -> dict[str, list[tuple[Any, ...]]]:
    return {table: await view.table_dump(table) for table in PROJECTION_TABLES}


async def test_a_projector_dying_right_after_a_commit_resumes_exactly(
    pool: asyncpg.Pool,
) -> None:
    ledger, recorded = await filled_ledger(generate_events(3000, phones=300, brands=3, campaigns=2))
    # A retried append that reached the ledger twice must still be folded once.
    recorded += await ledger.append([r.event for r in recorded[1500:1520]])
    dying = DiesAfterCommit(PostgresConsentView(pool), die_after=5)

    with pytest.raises(ProcessDied):
        await Projector(ledger, dying).catch_up(batch_size=200)
    died_at = await dying.inner.positions(Stream.SUBSCRIBERS)
    assert 0 < sum(died_at.values()) < sum((await ledger.end_offsets(Stream.SUBSCRIBERS)).values())

    restarted = PostgresConsentView(pool)
    await Projector(ledger, restarted).catch_up(batch_size=200)

    await assert_projection_is_exact(restarted, recorded)
    assert await lag(restarted, ledger, Stream.SUBSCRIBERS) == {0: 0, 1: 0, 2: 0, 3: 0}


async def test_an_error_inside_the_transaction_leaves_no_trace(pool: asyncpg.Pool) -> None:
    ledger, recorded = await filled_ledger(generate_events(2000, phones=200, brands=2, campaigns=2))
    failing = FailsBeforeCommit(pool, fail_on=3)

    with pytest.raises(RuntimeError, match="injected"):
        await Projector(ledger, failing).catch_up(batch_size=150)
    positions = await failing.positions(Stream.SUBSCRIBERS)
    copies = await failing.table_dump("ledger_event_copy")
    # Two batches committed; the third's rows were rolled back with its positions.
    assert len(copies) == sum(positions.values()) + len(
        await failing.table_dump("campaign_version")
    )

    restarted = PostgresConsentView(pool)
    await Projector(ledger, restarted).catch_up(batch_size=150)

    await assert_projection_is_exact(restarted, recorded)


async def test_a_projector_cancelled_at_any_moment_resumes_exactly(pool: asyncpg.Pool) -> None:
    events = generate_events(3000, phones=300, brands=3, campaigns=2)
    ledger = InMemoryLedger(4)
    recorded: list[Recorded] = []
    view = PostgresConsentView(pool)
    for round_ in range(3):
        task = asyncio.create_task(Projector(ledger, view, poll_timeout=0.01).run())
        for start in range(round_ * 1000, (round_ + 1) * 1000, 100):
            recorded.extend(await ledger.append(events[start : start + 100]))
            await asyncio.sleep(0.005)
        # Cancelled wherever it is: between batches, or inside a transaction.
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    await Projector(ledger, view).catch_up()

    await assert_projection_is_exact(view, recorded)


async def test_a_rebuild_reproduces_the_incremental_projection_row_for_row(
    pool: asyncpg.Pool,
) -> None:
    events = generate_events(10_000, phones=3000, brands=4, campaigns=3, seed=11)
    ledger = InMemoryLedger(4)
    view = PostgresConsentView(pool)
    recorded: list[Recorded] = []
    started = time.perf_counter()
    for start in range(0, len(events), 1000):
        recorded.extend(await ledger.append(events[start : start + 1000]))
        await Projector(ledger, view).catch_up(batch_size=300)
    incremental_s = time.perf_counter() - started
    incremental = await dump(view)

    started = time.perf_counter()
    assert await rebuild(ledger, view) == len(events)
    rebuild_s = time.perf_counter() - started
    rebuilt = await dump(view)

    print(f"10k events: incremental {incremental_s:.2f}s, rebuild {rebuild_s:.2f}s")
    assert len(incremental["ledger_event_copy"]) == len(events)
    assert len(incremental["subscriber_state"]) > 2000
    for table in PROJECTION_TABLES:
        assert rebuilt[table] == incremental[table], table
    await assert_projection_is_exact(view, recorded)


async def test_wait_for_returns_once_the_token_is_applied(pool: asyncpg.Pool) -> None:
    ledger = InMemoryLedger(4)
    view = PostgresConsentView(pool)
    projector = asyncio.create_task(Projector(ledger, view, poll_timeout=0.05).run())
    try:
        written = await ledger.append(generate_events(50, phones=10, brands=1, campaigns=1))
        token = ConsistencyToken.after(written)

        assert await wait_for(view, token, timeout=5.0)
        phone = next(r.event.phone for r in written if Stream.of(r.event) is Stream.SUBSCRIBERS)  # type: ignore[attr-defined]
        assert await view.history(phone)
    finally:
        projector.cancel()
        with pytest.raises(asyncio.CancelledError):
            await projector


async def test_wait_for_gives_up_after_its_bound(pool: asyncpg.Pool) -> None:
    ledger = InMemoryLedger(4)
    view = PostgresConsentView(pool)
    written = await ledger.append(generate_events(20, phones=5, brands=1, campaigns=1))
    token = ConsistencyToken.after(written)

    # A clock that moves a second at each reading, not with the machine's speed: the
    # wait must look until its bound, and stop at the first reading past it.
    readings: list[float] = []

    def clock() -> float:
        assert len(readings) < 10, "still waiting far past its bound"
        readings.append(float(len(readings)))
        return readings[-1]

    assert not await wait_for(view, token, timeout=4, clock=clock)
    assert readings == [0, 1, 2, 3, 4]
    assert sum((await lag(view, ledger, Stream.SUBSCRIBERS)).values()) == sum(
        1 for r in written if Stream.of(r.event) is Stream.SUBSCRIBERS
    )
