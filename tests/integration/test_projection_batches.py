"""The view's batches against a real PostgreSQL: a batch of thousands writes exactly
the rows that the same stream applied one event at a time writes, and a connection
lost in the middle of a batch, large or small, leaves none of it behind."""

from __future__ import annotations

import dataclasses
from typing import Any

import asyncpg
import pytest

from ledger.events import LedgerEvent, MessageSent, Recorded, SubscriberEvent
from ledger.ports import Stream
from services.adapters.memory_view import InMemoryConsentView
from services.adapters.postgres_view import (
    _COPY_AT,
    PROJECTION_TABLES,
    PostgresConsentView,
    _FactBytes,
    _SubscriberRows,
    _Writes,
)
from services.projector import Projector
from services.wire.codec import encode_event, recorded_from_stored
from tests.conformance.view_suite import generate_events
from tests.integration.test_projector_postgres import (
    assert_projection_is_exact,
    dump,
    filled_ledger,
)

pytestmark = pytest.mark.postgres


def mixed_stream(count: int, phones: int = 120) -> list[LedgerEvent]:
    """``generate_events`` with what only some batches meet: requests of two events,
    a request id reused by another request (no fact), provider message ids sent twice
    (the second no fact), and appends retried (the same event id twice)."""
    events = generate_events(count, phones=phones, brands=3, campaigns=2, seed=23)
    out: list[LedgerEvent] = []
    for i, event in enumerate(events):
        if isinstance(event, SubscriberEvent) and i % 4 == 0:
            # i and i + 4 share a request (the same fingerprint) unless i % 24 == 0,
            # where a second request reuses the id with another fingerprint.
            request = i // 8
            fingerprint = f"fp-{request}-{i % 24 == 0}"
            event = dataclasses.replace(
                event, request_id=f"req-{request}", request_fingerprint=fingerprint
            )
        if isinstance(event, MessageSent) and i % 9 == 0:
            event = dataclasses.replace(event, message_id=f"m-shared-{i % 5}")
        out.append(event)
        if i % 97 == 0:
            out.append(event)  # a retried append
    return out


async def tables(view: PostgresConsentView, pool: asyncpg.Pool) -> dict[str, list[Any]]:
    found = await dump(view)
    found["request_use"] = [
        tuple(row.values())
        for row in await pool.fetch("SELECT * FROM request_use ORDER BY brand, request_id")
    ]
    return found


async def test_a_batch_writes_what_one_event_at_a_time_writes(pool: asyncpg.Pool) -> None:
    ledger, recorded = await filled_ledger(mixed_stream(1500))
    view = PostgresConsentView(pool)

    await Projector(ledger, view).catch_up(batch_size=1)
    one_at_a_time = await tables(view, pool)
    await view.reset()
    await pool.execute("TRUNCATE request_use")
    await Projector(ledger, view).catch_up(batch_size=5000)
    batched = await tables(view, pool)

    assert len(one_at_a_time["ledger_event_copy"]) < len(recorded)  # the retries, once
    assert one_at_a_time["request_use"], "the stream has requests"
    assert one_at_a_time["message_use"], "the stream has provider message ids"
    assert one_at_a_time["flagged_reply"], "the stream has flagged replies"
    for table in (*PROJECTION_TABLES, "request_use"):
        assert batched[table] == one_at_a_time[table], table
    # And the states are those of the in-memory view, which shares no code with it.
    memory = InMemoryConsentView()
    await Projector(ledger, memory).catch_up(batch_size=5000)
    keys = {
        (r.event.phone, r.event.brand) for r in recorded if isinstance(r.event, SubscriberEvent)
    }
    for brand in sorted({b for _, b in keys}):
        phones = sorted(p for p, b in keys if b == brand)
        assert await view.subscriber_states(brand, phones) == await memory.subscriber_states(
            brand, phones
        )


async def test_batches_that_copy_their_new_rows_write_what_statements_write(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches large enough to COPY their new rows (the event copies, and the state
    and status rows of subscribers not stored yet), with stored subscribers upserted
    beside them in the same batch, write every table as batches too small to copy."""
    ledger, _ = await filled_ledger(mixed_stream(5000, phones=1500))
    view = PostgresConsentView(pool)
    small = 50
    assert small < _COPY_AT
    await Projector(ledger, view).catch_up(batch_size=small)
    by_statements = await tables(view, pool)
    await view.reset()
    await pool.execute("TRUNCATE request_use")
    sent: list[tuple[int, int, int, int]] = []
    send = _SubscriberRows.send

    def counted(rows: _SubscriberRows, writes: _Writes) -> None:
        sent.append((*map(len, rows.states), *map(len, rows.statuses)))
        send(rows, writes)

    monkeypatch.setattr(_SubscriberRows, "send", counted)
    await Projector(ledger, view).catch_up(batch_size=600)

    # Some batches copied new subscribers' rows while they upserted stored ones'.
    assert any(
        new >= _COPY_AT and stored and new_statuses >= _COPY_AT and stored_statuses
        for new, stored, new_statuses, stored_statuses in sent
    )
    copied = await tables(view, pool)
    for table in (*PROJECTION_TABLES, "request_use"):
        assert copied[table] == by_statements[table], table


async def test_events_read_as_a_ledger_stores_them_are_projected_to_the_same_rows(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger, recorded = await filled_ledger(mixed_stream(1500))
    view = PostgresConsentView(pool)
    await Projector(ledger, view).catch_up(batch_size=500)
    from_memory = await tables(view, pool)
    await view.reset()
    await pool.execute("TRUNCATE request_use")
    kept = 0
    read_from_memory = ledger.read

    async def read_as_stored(*args: Any, **kwargs: Any) -> list[Recorded]:
        nonlocal kept
        batch = [
            recorded_from_stored(encode_event(r.event), r.position, r.recorded_at)
            for r in await read_from_memory(*args, **kwargs)
        ]
        kept += sum(r.envelope is not None for r in batch)
        return batch

    monkeypatch.setattr(ledger, "read", read_as_stored)
    await Projector(ledger, view).catch_up(batch_size=500)

    assert kept > len(recorded) // 2  # most copies came from the bytes read
    assert await tables(view, pool) == from_memory


class ConnectionLostMidBatch(PostgresConsentView):
    """Loses its connection on its ``lose_on``-th batch, after the event copies and
    the subscriber rows went in and before the positions did."""

    def __init__(self, pool: asyncpg.Pool, lose_on: int) -> None:
        super().__init__(pool)
        self.batches = 0
        self.lose_on = lose_on

    async def _fold_subscribers(
        self, writes: _Writes, new: Any, encoded: _FactBytes, event_rows: Any
    ) -> None:
        await super()._fold_subscribers(writes, new, encoded, event_rows)
        self.batches += 1
        if self.batches == self.lose_on:
            await writes.conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")


@pytest.mark.parametrize("batch", [400, 60])
async def test_a_connection_lost_mid_batch_leaves_nothing_and_the_restart_is_exact(
    pool: asyncpg.Pool, batch: int
) -> None:
    ledger, recorded = await filled_ledger(
        generate_events(3000, phones=300, brands=3, campaigns=2, seed=5)
    )
    losing = ConnectionLostMidBatch(pool, lose_on=3)

    with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)):
        await Projector(ledger, losing).catch_up(batch_size=batch)
    positions = await losing.positions(Stream.SUBSCRIBERS)
    copies = await losing.table_dump("ledger_event_copy")
    # Two subscriber batches committed; the third went with its connection.
    applied = sum(positions.values())
    assert batch < applied <= 2 * batch
    assert len(copies) == applied + len(await losing.table_dump("campaign_version"))

    restarted = PostgresConsentView(pool)
    await Projector(ledger, restarted).catch_up(batch_size=batch)
    await assert_projection_is_exact(restarted, recorded)
    after_loss = await dump(restarted)
    await restarted.reset()
    await Projector(ledger, restarted).catch_up(batch_size=batch)
    assert await dump(restarted) == after_loss


class ConnectionLostWhileFolding(PostgresConsentView):
    """Loses its connection on its ``lose_on``-th batch while the fold runs, at its
    ``at``-th turn of the event loop: the event copies' statement under way or just
    sent, no subscriber row written yet."""

    def __init__(self, pool: asyncpg.Pool, lose_on: int, at: int) -> None:
        super().__init__(pool)
        self.lose_on, self.at = lose_on, at
        self.batches = 0
        self.turns = 0
        self.killed = False

    async def _fold_subscribers(
        self, writes: _Writes, new: Any, encoded: _FactBytes, event_rows: Any
    ) -> None:
        self.batches += 1
        self.turns = 0
        await super()._fold_subscribers(writes, new, encoded, event_rows)

    async def _let_writes_run(self, conn: asyncpg.Connection) -> None:
        if self.batches == self.lose_on and self.turns == self.at:
            # From another connection: this one is busy with the event copies.
            await self._pool.execute("SELECT pg_terminate_backend($1)", conn.get_server_pid())
            self.killed = True
        self.turns += 1
        await super()._let_writes_run(conn)


@pytest.mark.parametrize(("batch", "at"), [(400, 1), (400, 0), (60, 0)])
async def test_a_connection_lost_while_the_copies_go_in_leaves_nothing(
    pool: asyncpg.Pool, batch: int, at: int
) -> None:
    ledger, recorded = await filled_ledger(
        generate_events(3000, phones=300, brands=3, campaigns=2, seed=5)
    )
    losing = ConnectionLostWhileFolding(pool, lose_on=3, at=at)

    with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)):
        await Projector(ledger, losing).catch_up(batch_size=batch)
    assert losing.killed
    positions = await losing.positions(Stream.SUBSCRIBERS)
    applied = sum(positions.values())
    assert batch < applied <= 2 * batch  # two batches committed, the third none of it
    copies = await losing.table_dump("ledger_event_copy")
    assert len(copies) == applied + len(await losing.table_dump("campaign_version"))
    subscribers = [r for r in recorded if isinstance(r.event, SubscriberEvent)]
    partition = {r.event.phone: r.position.partition for r in subscribers}  # type: ignore[attr-defined]
    for phone, _, _, last_offset, *_ in await losing.table_dump("subscriber_state"):
        assert last_offset < positions[partition[phone]]  # no row of the lost batch

    restarted = PostgresConsentView(pool)
    await Projector(ledger, restarted).catch_up(batch_size=batch)
    await assert_projection_is_exact(restarted, recorded)
