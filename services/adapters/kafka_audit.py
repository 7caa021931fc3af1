"""The ledger's records as Kafka stores them, and the checkpoint topic.

``KafkaRecords`` reads the ledger topics' records as stored (value bytes and the
broker's LogAppendTime stamp), which the hash chain covers; the ``KafkaLedger``
decodes them, and decoding upcasts old versions, so its events cannot be hashed.
``KafkaCheckpoints`` keeps the signed checkpoints in their own topic
(``consent.checkpoints.v1`` after the prefix, created by ``KafkaLedger.ensure_topics``
with the ledger topics' settings: kept forever, never compacted), one JSON object a
record, keyed by ``stream/partition``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from ledger.chain import ChainRecord, Checkpoint
from ledger.ports import Stream
from services.adapters.kafka_ledger import consumer_options, producer_options, stop_producer
from services.settings import KafkaLedgerSettings

log = logging.getLogger(__name__)
_SCAN = 1000
"""Checkpoint records read at a time when looking back from the topic's end."""


class _Reader:
    """One consumer, assigned to one partition at a time; reads take turns."""

    def __init__(self, settings: KafkaLedgerSettings) -> None:
        self.settings = settings
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(**consumer_options(self.settings))
        await self._consumer.start()

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    def _started(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("not started: await start() first")
        return self._consumer

    async def partitions(self, topic: str) -> list[int]:
        consumer = self._started()
        found = consumer.partitions_for_topic(topic)
        if not found:
            # A consumer assigned nothing knows no topic's metadata, and its public
            # ``topics()`` fetches it without keeping it: the cluster it fetched says.
            cluster = await consumer._client.fetch_all_metadata()
            found = cluster.partitions_for_topic(topic)
        return sorted(found or ())

    async def bounds(self, topic: str, partition: int) -> tuple[int, int]:
        consumer = self._started()
        tp = TopicPartition(topic, partition)
        first = (await consumer.beginning_offsets([tp]))[tp]
        return first, (await consumer.end_offsets([tp]))[tp]

    async def end(self, topic: str, partition: int) -> int:
        tp = TopicPartition(topic, partition)
        return int((await self._started().end_offsets([tp]))[tp])

    async def read(
        self, topic: str, partition: int, start: int, stop: int
    ) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
        """The records of ``[start, stop)``, in offset order, a page at a time."""
        tp = TopicPartition(topic, partition)
        position = start
        while position < stop:
            async with self._lock:
                consumer = self._started()
                consumer.assign([tp])
                try:
                    consumer.seek(tp, position)
                    fetched = await asyncio.wait_for(
                        consumer.getmany(
                            tp, timeout_ms=1000, max_records=min(stop - position, 500)
                        ),
                        self.settings.request_timeout_s,
                    )
                finally:
                    consumer.unsubscribe()
            for record in fetched.get(tp, []):
                if record.offset >= stop:
                    return
                position = record.offset + 1
                yield record


class KafkaRecords:
    """``services.checkpoints.RecordSource`` on the ledger topics."""

    def __init__(self, settings: KafkaLedgerSettings) -> None:
        self.settings = settings
        self._reader = _Reader(settings)

    async def start(self) -> None:
        await self._reader.start()

    async def close(self) -> None:
        await self._reader.close()

    async def partitions(self, stream: str) -> list[int]:
        return await self._reader.partitions(self.settings.topic(Stream(stream)))

    async def end_offset(self, stream: str, partition: int) -> int:
        return await self._reader.end(self.settings.topic(Stream(stream)), partition)

    async def first_offset(self, stream: str, partition: int) -> int:
        return (await self._reader.bounds(self.settings.topic(Stream(stream)), partition))[0]

    async def records(
        self, stream: str, partition: int, start: int, stop: int
    ) -> AsyncIterator[ChainRecord]:
        topic = self.settings.topic(Stream(stream))
        async for record in self._reader.read(topic, partition, start, stop):
            yield ChainRecord(
                stream, partition, record.offset, record.timestamp * 1000, record.value or b""
            )


class KafkaCheckpoints:
    """``services.checkpoints.CheckpointStore`` on the checkpoint topic.

    ``renewed`` is called each time a new producer replaces one whose publish
    failed (``_renew_producer``), for the metric that counts them."""

    def __init__(
        self, settings: KafkaLedgerSettings, renewed: Callable[[], None] | None = None
    ) -> None:
        self.settings = settings
        self._renewed = renewed
        self.topic = settings.checkpoint_topic_name()
        self._reader = _Reader(settings)
        self._producer: AIOKafkaProducer | None = None
        self._writes = False
        self._failed = False

    async def start(self, *, write: bool = True) -> None:
        await self._reader.start()
        self._writes = write
        if write:
            self._producer = AIOKafkaProducer(**producer_options(self.settings))
            await self._producer.start()

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        self._writes = False
        if producer is not None:
            await stop_producer(producer, self.settings.request_timeout_s)
        await self._reader.close()

    async def publish(self, checkpoints: Sequence[Checkpoint]) -> None:
        if not self._writes:
            raise RuntimeError("KafkaCheckpoints was started read-only")
        if self._failed or self._producer is None:
            await self._renew_producer()
        producer = self._producer
        assert producer is not None
        try:
            sent = [
                await producer.send(
                    self.topic,
                    json.dumps(c.to_json(), sort_keys=True).encode(),
                    key=f"{c.stream}/{c.partition}".encode(),
                )
                for c in checkpoints
            ]
            await asyncio.wait_for(
                asyncio.gather(*sent), self.settings.append_timeout_s
            )  # acks=all: each is on every in-sync replica
        except BaseException:
            self._failed = True
            raise

    async def _renew_producer(self) -> None:
        """A new producer in place of one whose publish failed: aiokafka's idempotent
        producer may have spent the sequence number of a batch it gave up on, and
        the broker then refuses all its later batches (see
        ``KafkaLedger._renew_producer_if_spent``). The old one first sends or gives
        up on what it holds, so that checkpoints still land in the order signed."""
        old, self._producer, failed = self._producer, None, self._failed
        if old is not None:
            await stop_producer(old, self.settings.request_timeout_s)
        fresh = AIOKafkaProducer(**producer_options(self.settings))
        try:
            await fresh.start()
        except BaseException:
            await fresh.stop()
            raise
        self._producer, self._failed = fresh, False
        if failed:
            log.warning("Kafka checkpoints: a publish failed; sending with a new producer")
            if self._renewed is not None:
                self._renewed()

    async def latest(
        self, key_id: str, wanted: set[tuple[str, int]]
    ) -> dict[tuple[str, int], Checkpoint]:
        """Looks back from the topic's end, a page at a time, until every wanted
        partition is found or the topic's start is reached (``REFRESH`` keeps every
        partition's latest within the last hour or so of checkpoints)."""
        found: dict[tuple[str, int], Checkpoint] = {}
        for partition in await self._reader.partitions(self.topic):
            first, stop = await self._reader.bounds(self.topic, partition)
            while stop > first and not wanted <= found.keys():
                start = max(first, stop - _SCAN)
                async for record in self._reader.read(self.topic, partition, start, stop):
                    checkpoint = _parse(record)
                    if not isinstance(checkpoint, Checkpoint) or checkpoint.key_id != key_id:
                        continue
                    where = (checkpoint.stream, checkpoint.partition)
                    if where in wanted and (
                        where not in found or checkpoint.end >= found[where].end
                    ):
                        found[where] = checkpoint
                stop = start
        return found

    async def every(self) -> AsyncIterator[Checkpoint | str]:
        for partition in await self._reader.partitions(self.topic):
            first, stop = await self._reader.bounds(self.topic, partition)
            async for record in self._reader.read(self.topic, partition, first, stop):
                yield _parse(record)


def _parse(record: ConsumerRecord[bytes, bytes]) -> Checkpoint | str:
    where = f"{record.topic}/{record.partition}@{record.offset}"
    try:
        data: Any = json.loads(record.value or b"")
        return Checkpoint.from_json(data)
    except ValueError as exc:
        return f"{where} is not a checkpoint: {exc}"
