"""The projector: folds the ledger into the read model, and helpers for readers.

``Projector`` follows any ``Ledger`` through the port (the in-memory and the local
PostgreSQL ledgers). ``KafkaProjector`` reads Kafka in a consumer group so several
instances share the partitions. Both resume from the positions the view stored
with its rows, never from Kafka's committed offsets: the view commits its rows and
its positions in one transaction, so a crash between a write and anything after it
replays a batch the view then skips, and nothing is lost or applied twice.
That is also why ``supervise`` may simply start a failed projector again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from ledger.events import Recorded
from ledger.ports import ConsentView, Ledger, Stream
from services.adapters.kafka_ledger import recorded_from_record

if TYPE_CHECKING:
    from services.adapters.kafka_ledger import KafkaLedgerSettings

log = logging.getLogger(__name__)


async def supervise(
    run: Callable[[], Awaitable[None]],
    *,
    name: str,
    failed: Callable[[], None] = lambda: None,
    first_pause: float = 0.5,
    longest_pause: float = 30.0,
    healthy_after: float = 60.0,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> None:
    """Run ``run()`` until cancelled, and start it again whenever it fails.

    A projector fails when PostgreSQL or Kafka does, usually for a moment (a
    failover, a restart); left dead, it would leave every read failing closed
    until someone restarted the process. Each failure is logged with its cause
    and counted through ``failed``; the pause before the next start doubles from
    ``first_pause`` up to ``longest_pause``, and goes back to ``first_pause`` once a
    run has lasted ``healthy_after`` seconds. A run that returns is a failure too:
    a projector follows the ledger forever.
    """
    pause = first_pause
    while True:
        started = monotonic()
        try:
            await run()
            problem: BaseException = RuntimeError(f"{name} returned; it should run forever")
        except Exception as exc:  # cancellation is a BaseException: it ends the loop
            problem = exc
        failed()
        if monotonic() - started >= healthy_after:
            pause = first_pause
        log.error("%s failed; starting it again in %.1f s", name, pause, exc_info=problem)
        await sleep(pause)
        pause = min(pause * 2, longest_pause)


class Projector:
    """Folds ``ledger`` into ``view``, one task per stream, until cancelled."""

    def __init__(
        self,
        ledger: Ledger,
        view: ConsentView,
        *,
        streams: Iterable[Stream] = tuple(Stream),
        poll_timeout: float = 0.5,
    ) -> None:
        self._ledger = ledger
        self._view = view
        self._streams = tuple(streams)
        self._poll_timeout = poll_timeout

    async def run(self) -> None:
        """Follow every stream forever; an error in one stops all (let it restart)."""
        async with asyncio.TaskGroup() as tasks:
            for stream in self._streams:
                tasks.create_task(self.follow(stream), name=f"projector-{stream.value}")

    async def follow(self, stream: Stream) -> None:
        start = await self._view.positions(stream)
        async for batch in self._ledger.subscribe(stream, start, poll_timeout=self._poll_timeout):
            if batch:
                await self._view.apply(stream, batch)

    async def catch_up(self, *, batch_size: int = 5000) -> int:
        """Apply everything the ledger holds now and return; the number of events read."""
        count = 0
        for stream in self._streams:
            applied = await self._view.positions(stream)
            for partition, end in sorted((await self._ledger.end_offsets(stream)).items()):
                offset = applied.get(partition, 0)
                while offset < end:
                    batch = await self._ledger.read(
                        stream, partition, offset, min(batch_size, end - offset)
                    )
                    if not batch:
                        break
                    await self._view.apply(stream, batch)
                    count += len(batch)
                    offset = batch[-1].position.offset + 1
        return count


async def rebuild(ledger: Ledger, view: ConsentView, *, batch_size: int = 5000) -> int:
    """Empty the view and fold the whole ledger again from offset 0.

    Stop the projectors writing to ``view`` first. Returns the number of events read.
    """
    await view.reset()
    return await Projector(ledger, view).catch_up(batch_size=batch_size)


async def lag(view: ConsentView, ledger: Ledger, stream: Stream) -> dict[int, int]:
    """Per partition, how many events the ledger holds that the view has not applied."""
    applied = await view.positions(stream)
    ends = await ledger.end_offsets(stream)
    return {p: max(0, end - applied.get(p, 0)) for p, end in sorted(ends.items())}


# -- Kafka ----------------------------------------------------------------------------


class _SeekToStoredPositions(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, projector: KafkaProjector) -> None:
        self._projector = projector

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        pass  # nothing to flush: every applied batch is already committed in PostgreSQL

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        # Should this fail (PostgreSQL unreachable), aiokafka logs it and resumes from
        # Kafka's committed offsets; those are committed only after the view's
        # transaction, so they are never ahead of it: a replay at worst, never a gap.
        await self._projector.seek_to_stored_positions(assigned)


class KafkaProjector:
    """Projects the ledger's Kafka topics in a consumer group.

    On every assignment each partition is sought to the position the view stored;
    Kafka's committed offsets are written after each batch only so that the usual
    lag monitoring works, and are never read back.
    """

    def __init__(
        self,
        settings: KafkaLedgerSettings,
        view: ConsentView,
        *,
        group_id: str = "consent-projector",
        max_records: int = 2000,
        poll_timeout: float = 0.5,
        consumer_options: dict[str, Any] | None = None,
    ) -> None:
        self._settings = settings
        self._view = view
        self._group_id = group_id
        self._max_records = max_records
        self._poll_timeout = poll_timeout
        self._extra_options = dict(consumer_options or {})
        self._streams = {settings.topic(stream): stream for stream in Stream}
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        options = {
            **self._settings.consumer_options(),
            "group_id": self._group_id,
            "enable_auto_commit": False,
            "isolation_level": "read_committed",
            # Only for a partition with no stored position, which the listener always
            # seeks; "earliest" is the safe answer should that ever not happen.
            "auto_offset_reset": "earliest",
            **self._extra_options,
        }
        consumer = AIOKafkaConsumer(**options)
        await consumer.start()
        consumer.subscribe(list(self._streams), listener=_SeekToStoredPositions(self))
        self._consumer = consumer

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()  # leaves the group, so the others rebalance at once

    async def run(self) -> None:
        """``start`` if needed, then project until cancelled; always ``stop``s."""
        if self._consumer is None:
            await self.start()
        try:
            while True:
                await self.step()
        finally:
            await self.stop()

    async def step(self) -> int:
        """Fetch one round of records, apply them per stream; the number applied."""
        consumer = self._started()
        fetched = await consumer.getmany(
            timeout_ms=int(self._poll_timeout * 1000), max_records=self._max_records
        )
        batches: dict[Stream, list[Recorded]] = {}
        for tp, records in fetched.items():
            batches.setdefault(self._streams[tp.topic], []).extend(
                recorded_from_record(r) for r in records
            )
        for stream, batch in batches.items():
            await self._view.apply(stream, batch)
        if fetched:
            await self._commit_for_monitoring(
                {tp: records[-1].offset + 1 for tp, records in fetched.items() if records}
            )
        return sum(len(b) for b in batches.values())

    def assignment(self) -> set[tuple[Stream, int]]:
        """The (stream, partition) pairs this instance currently projects."""
        consumer = self._consumer
        if consumer is None:
            return set()
        return {(self._streams[tp.topic], tp.partition) for tp in consumer.assignment()}

    async def seek_to_stored_positions(self, assigned: Iterable[TopicPartition]) -> None:
        consumer = self._started()
        positions: dict[Stream, dict[int, int]] = {}
        for tp in sorted(assigned):
            stream = self._streams[tp.topic]
            if stream not in positions:
                positions[stream] = await self._view.positions(stream)
            consumer.seek(tp, positions[stream].get(tp.partition, 0))

    async def _commit_for_monitoring(self, offsets: dict[TopicPartition, int]) -> None:
        try:
            await self._started().commit(offsets)
        except KafkaError as exc:
            # A rebalance took the partitions away: harmless, PostgreSQL has the truth.
            log.info("projector: offsets not committed to Kafka (%s)", exc)

    def _started(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("KafkaProjector is not started: await projector.start() first")
        return self._consumer
