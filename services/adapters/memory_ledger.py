"""``InMemoryLedger``: the ``EventLog`` port in a process's memory, for fast unit tests.

It keeps Kafka's shape (subscriber events spread over partitions by phone, campaign
events in one partition, offsets counting from 0 per partition) so code tested
against it meets the same positions in production. Nothing is durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime

from ledger.events import LedgerEvent, LedgerPosition, Recorded, SubscriberEvent
from ledger.ports import EventLog, Offsets, Stream


def _utc_now() -> datetime:
    return datetime.now(UTC)


class InMemoryLedger(EventLog):
    """``partitions`` is the subscriber stream's partition count; campaigns have one."""

    def __init__(self, partitions: int = 1, *, clock: Callable[[], datetime] = _utc_now) -> None:
        if partitions < 1:
            raise ValueError("partitions must be at least 1")
        self._clock = clock
        self._logs: dict[Stream, list[list[Recorded]]] = {
            Stream.SUBSCRIBERS: [[] for _ in range(partitions)],
            Stream.CAMPAIGNS: [[]],
        }
        self._appended = asyncio.Condition()

    def partition_for(self, phone: str) -> int:
        """A stable hash of the phone (crc32, not ``hash()``, which changes between
        processes), so one subscriber's history is one sequence."""
        return zlib.crc32(phone.encode()) % len(self._logs[Stream.SUBSCRIBERS])

    async def append(self, events: Sequence[LedgerEvent]) -> list[Recorded]:
        # Resolve every stream first so an event of no stream appends nothing at all.
        targets = [(Stream.of(event), self._partition_of(event), event) for event in events]
        recorded: list[Recorded] = []
        for stream, partition, event in targets:
            log = self._logs[stream][partition]
            r = Recorded(event, LedgerPosition(partition, len(log)), self._clock())
            log.append(r)
            recorded.append(r)
        if recorded:
            async with self._appended:
                self._appended.notify_all()
        return recorded

    async def read(
        self, stream: Stream, partition: int, start: int, limit: int = 1000
    ) -> list[Recorded]:
        if start < 0 or limit < 0:
            raise ValueError("start and limit must not be negative")
        return self._log(stream, partition)[start : start + limit]

    async def partitions(self, stream: Stream) -> list[int]:
        return list(range(len(self._logs[stream])))

    async def end_offsets(self, stream: Stream) -> dict[int, int]:
        return {p: len(log) for p, log in enumerate(self._logs[stream])}

    async def subscribe(
        self, stream: Stream, start: Offsets, *, poll_timeout: float = 0.5
    ) -> AsyncIterator[list[Recorded]]:
        """Partitions missing from ``start`` are read from their first event."""
        positions = {p: start.get(p, 0) for p in range(len(self._logs[stream]))}
        while True:
            batch = self._take(stream, positions)
            if not batch:
                async with self._appended:
                    batch = self._take(stream, positions)
                    if not batch:
                        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
                        # cancel that arrives together with a notification.
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(poll_timeout):
                                await self._appended.wait()
                        batch = self._take(stream, positions)
            yield batch

    def _take(self, stream: Stream, positions: dict[int, int]) -> list[Recorded]:
        batch: list[Recorded] = []
        for partition, offset in positions.items():
            new = self._logs[stream][partition][offset:]
            positions[partition] = offset + len(new)
            batch.extend(new)
        return batch

    def _partition_of(self, event: LedgerEvent) -> int:
        return self.partition_for(event.phone) if isinstance(event, SubscriberEvent) else 0

    def _log(self, stream: Stream, partition: int) -> list[Recorded]:
        logs = self._logs[stream]
        if not 0 <= partition < len(logs):
            raise ValueError(f"{stream.value} has no partition {partition}")
        return logs[partition]
