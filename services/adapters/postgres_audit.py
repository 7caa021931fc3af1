"""The embedded default's records as stored, and its checkpoints' table.

``PostgresRecords`` reads ``ledger_events`` (``PostgresLedger``'s table) as stored:
the envelope's bytes and ``recorded_at``. ``PostgresCheckpoints`` keeps the signed
checkpoints in ``ledger_checkpoints`` (migration 0011), append-only like the ledger.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence

import asyncpg

from ledger.chain import ChainRecord, Checkpoint, micros

_PAGE = 1000


class PostgresRecords:
    """``services.checkpoints.RecordSource`` on ``ledger_events``: one partition (0)
    per stream."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def partitions(self, stream: str) -> list[int]:
        return [0]

    async def end_offset(self, stream: str, partition: int) -> int:
        end = await self._pool.fetchval(
            'SELECT coalesce(max("offset") + 1, 0) FROM ledger_events '
            "WHERE stream = $1 AND partition = $2",
            stream,
            partition,
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
                'SELECT "offset", payload, recorded_at FROM ledger_events '
                'WHERE stream = $1 AND partition = $2 AND "offset" >= $3 AND "offset" < $4 '
                'ORDER BY "offset" LIMIT $5',
                stream,
                partition,
                position,
                stop,
                _PAGE,
            )
            if not rows:
                return
            for row in rows:
                yield ChainRecord(
                    stream, partition, row["offset"], micros(row["recorded_at"]), row["payload"]
                )
            position = rows[-1]["offset"] + 1


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
