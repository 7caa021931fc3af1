"""``PostgresLedger``: the ``EventLog`` port on the ``eventsourcing`` library's
PostgreSQL application recorder.

The local ledger of the embedded default (``make run`` without Kafka). The
recorder appends; the table is ``ledger_stored_events``
(``services/migrations/0011_ledger_recorder.sql``), whose triggers refuse UPDATE,
DELETE and TRUNCATE. Each stream is one partition (0) and one of the recorder's
originators (``subscribers:0``, ``campaigns:0``); an event's ``originator_version``
is its offset, and its ``state`` the ``services.wire.codec`` envelope a Kafka
record carries.

Appends from one process go through one writer task, which hands everything that
is waiting to the recorder in one ``insert_events`` (one transaction, one commit):
offsets are numbered from each stream's end as this process last saw it, and the
recorder's primary key on (originator, version) refuses an offset another process
took meanwhile, after which the writer reads the ends again and retries. Each row
keeps its event's id, which a unique index (migration 0023) lets be stored once: an
append tried again after an unknown outcome (acknowledged late) inserts only the
events not held yet, and is answered with the rows of those that are. The
recorder locks the table while it inserts, so appends commit one at a time in
offset order: a reader that has seen offset n has seen everything below it.

The recorder is synchronous (psycopg), so the writer calls it in a thread. Reads,
the ends of the streams and the wake-ups of ``subscribe`` (the recorder's NOTIFY)
go through the caller's ``asyncpg`` pool: the recorder's own ``select_events``
leaves out ``recorded_at``, the ledger's clock that a Kafka record carries too.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from eventsourcing.persistence import IntegrityError, PersistenceError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from eventsourcing.utils import get_topic
from psycopg import Cursor
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier

from ledger.events import LedgerEvent, LedgerPosition, Recorded
from ledger.ports import EventLog, LedgerUnavailable, Offsets, Stream
from services.wire.codec import encode_event, recorded_from_stored

PARTITION = 0
TABLE = "ledger_stored_events"
NOTIFY_CHANNEL = TABLE  # the recorder NOTIFYs on a channel named for its table
_MAX_CONFLICTS = 10
"""Times an append re-reads the ends after another process took its offsets."""
_BATCH_EVENTS = 1000
_BATCH_BYTES = 128 * 1024
"""At most this many events, of at most this many bytes, go into one insert (one
alone may be larger), so one transaction stays short. An append of more is split
into inserts of this size. The recorder inserts in psycopg's pipeline mode, which
was seen to hang for good on large inserts (4,800 events of 300 bytes at once, and
1,100 of 700 bytes; client and server each waiting for the other), as
psycopg/psycopg#685 reports for large pipelines."""


def originator_id(stream: Stream) -> str:
    """The recorder's originator that holds ``stream``'s one partition."""
    return f"{stream.value}:{PARTITION}"


_STREAM_END = f"""
SELECT coalesce(max(originator_version) + 1, 0) AS next_offset
FROM {TABLE} WHERE originator_id = $1
"""
_STREAM_ENDS = f"""
SELECT s AS stream,
       (SELECT coalesce(max(originator_version) + 1, 0) FROM {TABLE}
        WHERE originator_id = s || ':0') AS next_offset
FROM unnest($1::text[]) AS s
"""
_READ = f"""
SELECT originator_version, state, recorded_at FROM {TABLE}
WHERE originator_id = $1 AND originator_version >= $2
ORDER BY originator_version LIMIT $3
"""
_STORED = f"""
SELECT originator_id, originator_version, state, recorded_at FROM {TABLE}
WHERE notification_id = ANY($1::bigint[])
"""
_HELD = f"""
SELECT event_id::text AS event_id, originator_id, originator_version, recorded_at FROM {TABLE}
WHERE event_id = ANY($1::uuid[])
"""


@dataclass
class _Append:
    """One caller's append, waiting for the writer."""

    encoded: list[tuple[Stream, LedgerEvent, bytes]]
    done: asyncio.Future[list[Recorded]]
    offsets: list[int] = field(default_factory=list)
    # The parts of the same append after this one: should this one fail, they are
    # not inserted, so that what an append leaves stored is a prefix of it.
    later: list[_Append] = field(default_factory=list)

    @property
    def size_bytes(self) -> int:
        return sum(len(payload) for _, _, payload in self.encoded)


def _parts(
    encoded: list[tuple[Stream, LedgerEvent, bytes]],
) -> list[list[tuple[Stream, LedgerEvent, bytes]]]:
    """``encoded`` in order, in parts of at most ``_BATCH_EVENTS`` and ``_BATCH_BYTES``."""
    parts: list[list[tuple[Stream, LedgerEvent, bytes]]] = [[]]
    size = 0
    for item in encoded:
        if parts[-1] and (len(parts[-1]) == _BATCH_EVENTS or size + len(item[2]) > _BATCH_BYTES):
            parts.append([])
            size = 0
        parts[-1].append(item)
        size += len(item[2])
    return parts


class PostgresLedger(EventLog):
    """The ledger on an ``asyncpg`` pool the caller owns (and closes), and a
    recorder on a connection of its own (``open`` makes it; ``close`` closes it).

    Each running ``subscribe`` holds one connection of the pool for its LISTEN.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        recorder: PostgresApplicationRecorder,
        *,
        append_timeout_s: float = 30.0,
        batch_size: int = 1000,
    ) -> None:
        self._pool = pool
        self._recorder = recorder
        self._append_timeout_s = append_timeout_s
        self._batch_size = batch_size
        self._waiting: deque[_Append] = deque()
        self._writer: asyncio.Task[None] | None = None
        self._ends: dict[Stream, int] = {}

    @classmethod
    async def open(cls, pool: asyncpg.Pool, dsn: str, **options: Any) -> PostgresLedger:
        """Connect the recorder to the database at ``dsn`` (which ``pool`` reaches
        too, migrated) and let it create what it needs beside the migrated table."""
        recorder = await asyncio.to_thread(_recorder, dsn)
        return cls(pool, recorder, **options)

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        for waiting in self._waiting:
            if not waiting.done.done():
                waiting.done.set_exception(LedgerUnavailable("PostgreSQL ledger closed"))
        self._waiting.clear()
        await asyncio.to_thread(self._recorder.datastore.close)

    async def append(self, events: Sequence[LedgerEvent]) -> list[Recorded]:
        """Raises ``LedgerUnavailable`` when the database does not acknowledge in time;
        the caller must then treat the write as not done."""
        # Encode everything first: an event that cannot be encoded writes nothing.
        encoded = [(Stream.of(event), event, encode_event(event)) for event in events]
        if not encoded:
            return []
        loop = asyncio.get_running_loop()
        # In order, one after the other in the queue: the writer inserts them in turn.
        # Should one fail, those before it may be stored (as a Kafka append's may),
        # and none after it is.
        parts = [_Append(part, loop.create_future()) for part in _parts(encoded)]
        for place, part in enumerate(parts):
            part.later = parts[place + 1 :]
        self._waiting.extend(parts)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write(), name="postgres-ledger-writer")
        every = asyncio.gather(*(part.done for part in parts), return_exceptions=True)
        try:
            results = await asyncio.wait_for(asyncio.shield(every), self._append_timeout_s)
        except TimeoutError as exc:
            raise LedgerUnavailable(
                f"PostgreSQL ledger: {len(encoded)} event(s) not acknowledged in "
                f"{self._append_timeout_s:g} s"
            ) from exc
        recorded: list[Recorded] = []
        for result in results:
            if isinstance(result, BaseException):
                raise result
            recorded.extend(result)
        return recorded

    async def _write(self) -> None:
        """Insert what is waiting, batch by batch, until nothing is."""
        while self._waiting:
            batch = [self._waiting.popleft()]
            size = len(batch[0].encoded)
            size_bytes = batch[0].size_bytes
            while (
                self._waiting
                and size + len(self._waiting[0].encoded) <= _BATCH_EVENTS
                and size_bytes + self._waiting[0].size_bytes <= _BATCH_BYTES
            ):
                batch.append(self._waiting.popleft())
                size += len(batch[-1].encoded)
                size_bytes += batch[-1].size_bytes
            try:
                recorded = await self._insert(batch)
            except Exception as exc:
                # This insert may have been committed after all: start again from the
                # stored ends, and tell every caller of the batch.
                self._ends.clear()
                failure: Exception = exc
                if isinstance(exc, OSError | asyncpg.PostgresError | PersistenceError):
                    failure = LedgerUnavailable(
                        f"PostgreSQL ledger: {size} event(s) not appended: "
                        f"{type(exc).__name__}: {exc}"
                    )
                # Nor are the rest of these appends inserted: a caller orders its
                # events so that a prefix of them is safe (an import's opt-outs go
                # before its opt-ins), which a later part stored without this one
                # is not: it would allow a number the lost opt-out denies.
                for waiting in batch:
                    for part in (waiting, *waiting.later):
                        if not part.done.done():
                            part.done.set_exception(failure)
                self._waiting = deque(w for w in self._waiting if not w.done.done())
                continue
            for waiting, result in zip(batch, recorded, strict=True):
                if not waiting.done.done():
                    waiting.done.set_result(result)

    async def _insert(self, batch: list[_Append]) -> list[list[Recorded]]:
        # The rows of this batch's events that the ledger holds already, by event id:
        # stored by an earlier try of the same append (acknowledged too late, or
        # retried by the recorder after a lost commit), here or by another process.
        held: dict[uuid.UUID, asyncpg.Record] = {}
        for _ in range(_MAX_CONFLICTS):
            for stream in Stream:
                if stream not in self._ends:
                    self._ends[stream] = await self._pool.fetchval(
                        _STREAM_END, originator_id(stream)
                    )
            ends = dict(self._ends)
            stored: list[StoredEvent] = []
            event_ids: list[uuid.UUID] = []
            placed: dict[uuid.UUID, int] = {}  # an event twice in the batch is stored once
            for waiting in batch:
                waiting.offsets = []
                for stream, event, payload in waiting.encoded:
                    key = event.event_id
                    if key in held:
                        waiting.offsets.append(held[key]["originator_version"])
                        continue
                    if key in placed:
                        waiting.offsets.append(placed[key])
                        continue
                    placed[key] = ends[stream]
                    waiting.offsets.append(ends[stream])
                    stored.append(
                        StoredEvent(
                            originator_id=originator_id(stream),
                            originator_version=ends[stream],
                            topic=get_topic(type(event)),
                            state=payload,
                        )
                    )
                    event_ids.append(key)
                    ends[stream] += 1
            if not stored:
                return self._recorded(batch, list(held.values()))
            try:
                ids = await asyncio.to_thread(
                    self._recorder.insert_events, stored, event_ids=event_ids
                )
            except IntegrityError:
                # Another process took these offsets, or some of these events are
                # stored already: the insert stored nothing, and the ids tell which.
                self._ends.clear()
                found = await self._pool.fetch(_HELD, event_ids)
                held.update((uuid.UUID(row["event_id"]), row) for row in found)
                continue
            self._ends = ends
            rows = await self._pool.fetch(_STORED, list(ids or ()))
            return self._recorded(batch, [*held.values(), *rows])
        raise LedgerUnavailable(
            f"PostgreSQL ledger: other writers took the offsets {_MAX_CONFLICTS} times running"
        )

    @staticmethod
    def _recorded(batch: list[_Append], rows: list[asyncpg.Record]) -> list[list[Recorded]]:
        stamped = {(row["originator_id"], row["originator_version"]): row for row in rows}
        return [
            [
                Recorded(
                    event,
                    LedgerPosition(PARTITION, offset),
                    stamped[(originator_id(stream), offset)]["recorded_at"],
                )
                for (stream, event, _), offset in zip(waiting.encoded, waiting.offsets, strict=True)
            ]
            for waiting in batch
        ]

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
        rows = await db.fetch(_READ, originator_id(stream), start, limit)
        return [
            recorded_from_stored(
                row["state"],
                LedgerPosition(PARTITION, row["originator_version"]),
                row["recorded_at"],
            )
            for row in rows
        ]

    async def partitions(self, stream: Stream) -> list[int]:
        return [PARTITION]

    @property
    def stores_events_once(self) -> bool:
        """True: its unique index on the event id (``_insert``)."""
        return True

    async def settled(self) -> None:
        """Nothing to wait for: an insert still on its way stores an event at most once."""

    def partition_for(self, phone: str) -> int:
        return PARTITION

    async def end_offsets(self, stream: Stream) -> dict[int, int]:
        return {PARTITION: await self._pool.fetchval(_STREAM_END, originator_id(stream))}

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


def _recorder(dsn: str) -> PostgresApplicationRecorder:
    """The library's recorder on ``ledger_stored_events``, on a connection of its own."""
    params = conninfo_to_dict(dsn)
    datastore = PostgresDatastore(
        dbname=str(params.get("dbname", "")),
        host=str(params.get("host", "")),
        port=str(params.get("port", "5432")),
        user=str(params.get("user", "")),
        password=str(params.get("password", "")),
        originator_id_type="text",
        pool_size=1,
    )
    recorder = _Recorder(datastore, events_table_name=TABLE)
    recorder.create_table()  # its row type; the table itself is migration 0011's
    return recorder


class _Recorder(PostgresApplicationRecorder):
    """The library's recorder, whose insert also writes each event's id (the
    ``event_ids`` given to ``insert_events``) beside its row, for the unique index
    that stores an event once (migration 0023). The rest is the library's: the
    table lock, the NOTIFY, the notification ids returned. The ids go in binary
    (``%b``): psycopg's text form of a list of UUIDs took 4 µs an event, a
    tenth of an import's append."""

    def __init__(self, datastore: PostgresDatastore, *, events_table_name: str) -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        self.insert_events_statement = SQL(
            "INSERT INTO {schema}.{table} AS t"
            " (originator_id, originator_version, topic, state, event_id)"
            " SELECT * FROM unnest(%s::{schema}.{stored_event_type}[], %b::uuid[])"
            " RETURNING notification_id"
        ).format(
            schema=Identifier(self.datastore.schema),
            table=Identifier(self.events_table_name),
            stored_event_type=Identifier(self.stored_event_type_name),
        )

    def _insert_stored_events(
        self,
        curs: Cursor[DictRow],
        stored_events: Sequence[StoredEvent],
        *,
        event_ids: Sequence[uuid.UUID] = (),
        **kwargs: Any,
    ) -> None:
        if len(event_ids) != len(stored_events):
            raise ValueError("each stored event needs its event id")
        self._lock_table(curs)
        self._notify_channel(curs)
        rows = [
            self.construct_pg_stored_event(e.originator_id, e.originator_version, e.topic, e.state)
            for e in stored_events
        ]
        curs.execute(query=self.insert_events_statement, params=(rows, list(event_ids)))
