"""``PostgresLedger``: the ``Ledger`` port as an append-only PostgreSQL table.

The local ledger of the embedded default (``make run`` without Kafka). Rows hold
the same ``services.wire.codec`` envelope a Kafka record carries, in the table
``ledger_events`` of ``services/migrations/0001_ledger_events.sql``, whose triggers
refuse UPDATE, DELETE and TRUNCATE.

Each stream is one partition (0). ``append`` takes a per-stream advisory lock for
the rest of its transaction and numbers its events from the stream's current end,
so offsets have no gaps and a stream's rows become visible in offset order (a
transaction is visible before its locks are released): a reader that has seen
offset n has seen everything below it. Subscribers LISTEN for the NOTIFY each
append sends on commit, and poll every ``poll_timeout`` in case one is missed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from ledger.events import LedgerEvent, LedgerPosition, Recorded
from ledger.ports import Ledger, LedgerUnavailable, Offsets, Stream
from services.wire.codec import decode_event, encode_event

PARTITION = 0
NOTIFY_CHANNEL = "ledger_events"
_LOCK_CLASS = 0x4C454447  # "LEDG": the advisory-lock namespace of the ledger's streams
_STREAM_LOCK_KEY = {Stream.SUBSCRIBERS: 1, Stream.CAMPAIGNS: 2}

_LOCK_STREAM = "SELECT pg_advisory_xact_lock($1::integer, $2::integer)"
# clock_timestamp() after the lock, not the column's now() (the transaction's start,
# which can precede a concurrent append that got earlier offsets), so recorded_at
# does not go backwards along a stream.
_STREAM_END = """
SELECT coalesce(max("offset") + 1, 0) AS next_offset, clock_timestamp() AS recorded_at
FROM ledger_events WHERE stream = $1 AND partition = 0
"""
_STREAM_ENDS = """
SELECT s AS stream,
       (SELECT coalesce(max("offset") + 1, 0) FROM ledger_events
        WHERE stream = s AND partition = 0) AS next_offset
FROM unnest($1::text[]) AS s
"""
_INSERT = """
INSERT INTO ledger_events (stream, partition, "offset", event_id, event_type, payload, recorded_at)
SELECT $1, 0, $2 + e.n - 1, e.event_id, e.event_type, e.payload, $3
FROM unnest($4::uuid[], $5::text[], $6::bytea[]) WITH ORDINALITY
     AS e(event_id, event_type, payload, n)
"""
_READ = """
SELECT "offset", payload, recorded_at FROM ledger_events
WHERE stream = $1 AND partition = 0 AND "offset" >= $2
ORDER BY "offset" LIMIT $3
"""


class PostgresLedger(Ledger):
    """The ledger on an ``asyncpg`` pool the caller owns (and closes).

    Each running ``subscribe`` holds one connection of the pool for its LISTEN.
    """

    def __init__(
        self, pool: asyncpg.Pool, *, append_timeout_s: float = 30.0, batch_size: int = 1000
    ) -> None:
        self._pool = pool
        self._append_timeout_s = append_timeout_s
        self._batch_size = batch_size

    async def append(self, events: Sequence[LedgerEvent]) -> list[Recorded]:
        """Raises ``ConnectionError`` when the database cannot be reached in time; the
        transaction then wrote nothing."""
        # Encode everything first: an event that cannot be encoded writes nothing.
        encoded = [(Stream.of(event), event, encode_event(event)) for event in events]
        if not encoded:
            return []
        try:
            positions = await asyncio.wait_for(self._insert(encoded), self._append_timeout_s)
        except (OSError, TimeoutError, asyncpg.PostgresConnectionError) as exc:
            raise LedgerUnavailable(
                f"PostgreSQL ledger: {len(encoded)} event(s) not appended: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        return [
            Recorded(event, LedgerPosition(PARTITION, offset), recorded_at)
            for (_, event, _), (offset, recorded_at) in zip(encoded, positions, strict=True)
        ]

    async def _insert(
        self, encoded: list[tuple[Stream, LedgerEvent, bytes]]
    ) -> list[tuple[int, datetime]]:
        per_stream: dict[Stream, list[tuple[LedgerEvent, bytes]]] = {}
        for stream, event, payload in encoded:
            per_stream.setdefault(stream, []).append((event, payload))
        assigned: dict[Stream, tuple[int, datetime]] = {}
        async with self._pool.acquire() as conn, conn.transaction():
            # Locks in one fixed order, so two appends spanning both streams cannot deadlock.
            for stream in sorted(per_stream, key=lambda s: _STREAM_LOCK_KEY[s]):
                rows = per_stream[stream]
                await conn.execute(_LOCK_STREAM, _LOCK_CLASS, _STREAM_LOCK_KEY[stream])
                end = await conn.fetchrow(_STREAM_END, stream.value)
                first, recorded_at = end["next_offset"], end["recorded_at"]
                await conn.execute(
                    _INSERT,
                    stream.value,
                    first,
                    recorded_at,
                    [event.event_id for event, _ in rows],
                    [event.EVENT_TYPE for event, _ in rows],
                    [payload for _, payload in rows],
                )
                assigned[stream] = (first, recorded_at)
            await conn.execute(
                "SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, ",".join(s.value for s in per_stream)
            )
        # Back to call order: the n-th event of a stream got that stream's first offset + n.
        taken = dict.fromkeys(per_stream, 0)
        positions: list[tuple[int, datetime]] = []
        for stream, _, _ in encoded:
            first, recorded_at = assigned[stream]
            positions.append((first + taken[stream], recorded_at))
            taken[stream] += 1
        return positions

    async def read(
        self, stream: Stream, partition: int, start: int, limit: int = 1000
    ) -> list[Recorded]:
        if start < 0 or limit < 0:
            raise ValueError("start and limit must not be negative")
        if partition != PARTITION:
            raise ValueError(f"{stream.value} has no partition {partition}")
        return await self._read(self._pool, stream, start, limit)

    @staticmethod
    async def _read(db: Any, stream: Stream, start: int, limit: int) -> list[Recorded]:
        rows = await db.fetch(_READ, stream.value, start, limit)
        return [
            Recorded(
                decode_event(row["payload"]),
                LedgerPosition(PARTITION, row["offset"]),
                row["recorded_at"],
            )
            for row in rows
        ]

    async def partitions(self, stream: Stream) -> list[int]:
        return [PARTITION]

    def partition_for(self, phone: str) -> int:
        return PARTITION

    async def end_offsets(self, stream: Stream) -> dict[int, int]:
        row = await self._pool.fetchrow(_STREAM_END, stream.value)
        return {PARTITION: row["next_offset"]}

    async def every_end_offset(self) -> dict[Stream, dict[int, int]]:
        """Every stream's end in one statement (one round trip)."""
        rows = await self._pool.fetch(_STREAM_ENDS, [s.value for s in Stream])
        return {Stream(row["stream"]): {PARTITION: row["next_offset"]} for row in rows}

    async def subscribe(
        self, stream: Stream, start: Offsets, *, poll_timeout: float = 0.5
    ) -> AsyncIterator[list[Recorded]]:
        """A missing partition 0 in ``start`` reads the stream from its first event."""
        position = start.get(PARTITION, 0)
        appended = asyncio.Event()

        def on_notify(conn: Any, pid: int, channel: str, payload: str) -> None:
            if stream.value in payload.split(","):
                appended.set()

        async with self._pool.acquire() as conn:
            await conn.add_listener(NOTIFY_CHANNEL, on_notify)
            try:
                while True:
                    appended.clear()  # before reading: a NOTIFY during the read is kept
                    batch = await self._read(conn, stream, position, self._batch_size)
                    if batch:
                        position = batch[-1].position.offset + 1
                        yield batch
                        continue
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(appended.wait(), poll_timeout)
                    if not appended.is_set():
                        yield []
            finally:
                with contextlib.suppress(asyncpg.InterfaceError, OSError):
                    await conn.remove_listener(NOTIFY_CHANNEL, on_notify)
