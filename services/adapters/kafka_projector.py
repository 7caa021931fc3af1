"""``KafkaProjector``: projects the ledger's Kafka topics in a consumer group.

Several instances share the partitions. Like the generic ``Projector`` it resumes
from the positions the view stored with its rows, never from Kafka's committed
offsets: the view commits its rows and its positions in one transaction, so a
crash between a write and anything after it replays a batch the view then skips.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from ledger.events import Recorded
from ledger.ports import ConsentView, Stream, ViewRebuilt, advance_known
from services.adapters.kafka_ledger import consumer_options, recorded_from_record

if TYPE_CHECKING:
    from services.settings import KafkaLedgerSettings

log = logging.getLogger(__name__)


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
        self._known: dict[Stream, dict[int, int]] = {stream: {} for stream in Stream}
        """Each partition's position as this instance last saw it stored: sought to
        at its assignment, raised by each batch it applied (``ConsentView.apply``)."""

    async def start(self) -> None:
        options = {
            **consumer_options(self._settings),
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
            known = self._known[stream]
            try:
                await self._view.apply(stream, batch, known=known)
            except ViewRebuilt:
                # A rebuild began beneath this instance: follow on from where the
                # view stands now, not from past it (a gap the rebuild would skip).
                log.info("the view was rebuilt: seeking to its stored positions again")
                await self.seek_to_stored_positions(consumer.assignment())
                return 0
            advance_known(known, batch)
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
        consumer = self._consumer
        if consumer is None:
            # Stopping: leaving the group can finish a rebalance that assigns these
            # partitions here one last time; the instance that gets them next seeks.
            return
        positions: dict[Stream, dict[int, int]] = {}
        for tp in sorted(assigned):
            stream = self._streams[tp.topic]
            if stream not in positions:
                positions[stream] = await self._view.positions(stream)
            stored = positions[stream].get(tp.partition, 0)
            self._known[stream][tp.partition] = stored
            consumer.seek(tp, stored)

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
