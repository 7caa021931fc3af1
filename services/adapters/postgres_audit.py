"""The embedded default's records as stored, and its checkpoints' table.

``PostgresRecords`` reads ``PostgresLedger``'s table as stored: each stream's one
partition is an originator (``subscribers:0``), an offset its version, the record's
bytes its ``state`` (the envelope a Kafka record carries) and ``recorded_at``.
``PostgresCheckpoints`` keeps the signed checkpoints in ``ledger_checkpoints``
(migration 0012), append-only like the ledger. ``PostgresWriterLock`` is the
checkpoint writer's turn.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import AsyncIterator, Sequence

import asyncpg

from ledger.chain import ChainRecord, Checkpoint, micros
from services.adapters.postgres_ledger import TABLE

_PAGE = 1000

log = logging.getLogger(__name__)


class PostgresRecords:
    """``services.checkpoints.RecordSource`` on the embedded ledger: one partition (0)
    per stream."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def partitions(self, stream: str) -> list[int]:
        return [0]

    async def end_offset(self, stream: str, partition: int) -> int:
        end = await self._pool.fetchval(
            f"SELECT coalesce(max(originator_version) + 1, 0) FROM {TABLE} "
            "WHERE originator_id = $1",
            f"{stream}:{partition}",
        )
        return int(end)

    async def first_offset(self, stream: str, partition: int) -> int:
        return 0

    async def records(
        self, stream: str, partition: int, start: int, stop: int
    ) -> AsyncIterator[ChainRecord]:
        position = start
        while position < stop:
            rows = await self._pool.fetch(
                f"SELECT originator_version, state, recorded_at FROM {TABLE} "
                "WHERE originator_id = $1 AND originator_version >= $2 "
                "AND originator_version < $3 ORDER BY originator_version LIMIT $4",
                f"{stream}:{partition}",
                position,
                stop,
                _PAGE,
            )
            if not rows:
                return
            for row in rows:
                offset = row["originator_version"]
                yield ChainRecord(
                    stream, partition, offset, micros(row["recorded_at"]), bytes(row["state"])
                )
            position = rows[-1]["originator_version"] + 1


class PostgresCheckpoints:
    """``services.checkpoints.CheckpointStore`` on ``ledger_checkpoints``."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def publish(self, checkpoints: Sequence[Checkpoint]) -> None:
        await self._pool.executemany(
            "INSERT INTO ledger_checkpoints (stream, partition, end_offset, key_id, checkpoint) "
            "VALUES ($1, $2, $3, $4, $5)",
            [
                (c.stream, c.partition, c.end, c.key_id, json.dumps(c.to_json(), sort_keys=True))
                for c in checkpoints
            ],
        )

    async def latest(
        self, key_id: str, wanted: set[tuple[str, int]]
    ) -> dict[tuple[str, int], Checkpoint]:
        found: dict[tuple[str, int], Checkpoint] = {}
        for stream, partition in wanted:
            text = await self._pool.fetchval(
                "SELECT checkpoint FROM ledger_checkpoints "
                "WHERE key_id = $1 AND stream = $2 AND partition = $3 "
                "ORDER BY end_offset DESC, id DESC LIMIT 1",
                key_id,
                stream,
                partition,
            )
            if text is not None:
                found[(stream, partition)] = Checkpoint.from_json(json.loads(text))
        return found

    async def covering(self, stream: str, partition: int, offset: int) -> list[Checkpoint]:
        """The checkpoints that cover ``offset`` of the partition, the nearest first
        (one per key that signed one, usually)."""
        rows = await self._pool.fetch(
            "SELECT checkpoint FROM ledger_checkpoints "
            "WHERE stream = $1 AND partition = $2 AND end_offset > $3 "
            "ORDER BY end_offset, id LIMIT 16",
            stream,
            partition,
            offset,
        )
        found = [Checkpoint.from_json(json.loads(row["checkpoint"])) for row in rows]
        return [c for c in found if c.start <= offset]

    async def every(self) -> AsyncIterator[Checkpoint | str]:
        after = 0
        while True:
            rows = await self._pool.fetch(
                "SELECT id, checkpoint FROM ledger_checkpoints WHERE id > $1 ORDER BY id LIMIT $2",
                after,
                _PAGE,
            )
            if not rows:
                return
            for row in rows:
                try:
                    yield Checkpoint.from_json(json.loads(row["checkpoint"]))
                except ValueError as exc:
                    yield f"ledger_checkpoints row {row['id']} is not a checkpoint: {exc}"
            after = rows[-1]["id"]


class PostgresWriterLock:
    """The writer's turn: a session advisory lock on a connection of its own, so it
    goes when the process (or its connection) does."""

    def __init__(self, dsn: str, name: str, timeout: float = 5.0) -> None:
        self._dsn = dsn
        self._key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        self._timeout = timeout
        self._conn: asyncpg.Connection | None = None
        self._held = False

    async def held(self) -> bool:
        try:
            if self._conn is None or self._conn.is_closed():
                self._held = False
                self._conn = await asyncpg.connect(self._dsn, timeout=self._timeout)
            if self._held:
                await self._conn.fetchval("SELECT 1", timeout=self._timeout)  # still there?
            else:
                self._held = bool(
                    await self._conn.fetchval(
                        "SELECT pg_try_advisory_lock($1::bigint)", self._key, timeout=self._timeout
                    )
                )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("checkpoints: cannot hold the writer's turn: %s", exc)
            await self.close()
            return False
        return self._held

    async def close(self) -> None:
        conn, held = self._conn, self._held
        self._conn, self._held = None, False
        if conn is None:
            return
        # Unlock on purpose before going: the server frees a session lock only once it
        # notices the connection is gone, so a successor asking right after a bare
        # disconnect could still find it taken.
        try:
            if held:
                await conn.fetchval(
                    "SELECT pg_advisory_unlock($1::bigint)", self._key, timeout=self._timeout
                )
            await conn.close(timeout=self._timeout)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("checkpoints: leaving the writer's turn uncleanly: %s", exc)
            conn.terminate()
