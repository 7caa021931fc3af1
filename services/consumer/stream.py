"""``StreamConsumer``: follow the ledger's Kafka topics from another service.

The topics are a published contract (``protos/README.md``); this is the small
Python client for it, on ``aiokafka``:

* every record arrives decoded (``StreamEvent``: the domain event, upcast to this
  code's class versions, with its envelope, position and headers), one partition's
  records in offset order, so one phone's events in the order they were appended;
* at least once: a record's offset is committed to the consumer's own group only
  after the handler returned for it, so a crash or a restart redelivers, never
  skips. Handlers de-duplicate by ``event_id`` (see ``services.consumer.opt_out_table``);
* fail closed: a record this code cannot decode (a newer schema version, a value
  that is no envelope) stops the consumer with ``UndecodableRecord`` at that
  position rather than skip a fact.

Example::

    async def handle(item: StreamEvent) -> None:
        print(item.event_id, type(item.event).__name__, item.headers["brand"])

    consumer = StreamConsumer(StreamConsumerSettings("kafka:9092", group_id="crm-sync"))
    await consumer.run(handle, stop=stop_event)
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord
from consent.v1 import ledger_pb2
from google.protobuf.message import DecodeError

from ledger.events import LedgerEvent
from ledger.ports import Stream
from services.settings import KafkaLedgerSettings
from services.wire.codec import event_from_proto
from services.wire.enums import WireFormatError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamConsumerSettings:
    """Where the topics are and who is reading them."""

    bootstrap_servers: str
    group_id: str
    """The consumer group: its committed offsets are where a restart resumes. One
    group per downstream purpose; processes of one group share the partitions."""
    topic_prefix: str = ""
    """The ledger's ``CONSENT_KAFKA_TOPIC_PREFIX``, prepended to the topic names."""
    streams: tuple[Stream, ...] = (Stream.SUBSCRIBERS, Stream.CAMPAIGNS)
    client_id: str = "consent-stream-consumer"
    max_batch: int = 500
    """The most records handled between two commits."""
    poll_timeout_s: float = 0.5
    """How long one fetch waits for records; also how soon ``stop`` is noticed."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Further ``AIOKafkaConsumer`` options (security, timeouts); they win."""

    def topics(self) -> list[str]:
        # The ledger's own settings name the topics: one source of truth for names.
        names = KafkaLedgerSettings(self.bootstrap_servers, topic_prefix=self.topic_prefix)
        return [names.topic(stream) for stream in self.streams]

    def consumer_options(self) -> dict[str, Any]:
        return {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": self.client_id,
            "group_id": self.group_id,
            "enable_auto_commit": False,
            # A new group starts at the first event: a downstream table needs them all.
            "auto_offset_reset": "earliest",
            "max_poll_records": self.max_batch,
            **self.extra,
        }


@dataclass(frozen=True)
class StreamEvent:
    """One ledger record, decoded."""

    event: LedgerEvent
    envelope: ledger_pb2.EventEnvelope
    topic: str
    partition: int
    offset: int
    key: bytes
    recorded_at: datetime
    """The broker's stamp (the topics use LogAppendTime); ``event.occurred_at`` is
    when the fact happened in the world."""
    headers: Mapping[str, str]

    @property
    def event_id(self) -> uuid.UUID:
        """The same for every copy of one fact: the key to de-duplicate by."""
        return self.event.event_id


class UndecodableRecord(ValueError):
    """A record this code cannot read; nothing at or after it was handled or committed."""

    def __init__(self, topic: str, partition: int, offset: int, reason: str) -> None:
        super().__init__(f"{topic}/{partition}@{offset}: {reason}")
        self.topic, self.partition, self.offset = topic, partition, offset


def decode_record(record: ConsumerRecord[bytes, bytes]) -> StreamEvent:
    """A Kafka record of a ledger topic as a ``StreamEvent``; ``UndecodableRecord`` if
    it is not one this code can read."""
    where = (record.topic, record.partition, record.offset)
    if record.value is None:
        raise UndecodableRecord(*where, "no value (the ledger never writes one)")
    envelope = ledger_pb2.EventEnvelope()
    try:
        envelope.ParseFromString(record.value)
        event = event_from_proto(envelope)
    except DecodeError as exc:
        raise UndecodableRecord(*where, f"not a consent.v1.EventEnvelope: {exc}") from exc
    except WireFormatError as exc:
        raise UndecodableRecord(*where, str(exc)) from exc
    return StreamEvent(
        event=event,
        envelope=envelope,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key or b"",
        recorded_at=_utc(record.timestamp),
        headers={name: value.decode() for name, value in record.headers},
    )


def _utc(epoch_ms: int) -> datetime:
    return datetime.fromtimestamp(epoch_ms // 1000, UTC) + timedelta(milliseconds=epoch_ms % 1000)


Handler = Callable[[StreamEvent], Awaitable[None]]


class StreamConsumer:
    """Calls a handler for every ledger event, committing each after the handler returns.

    ``run`` handles one record at a time, partition by partition, and commits after
    each fetched batch (and on the way out, for what was handled). A handler that
    raises stops ``run`` with its exception; the record it failed on is not
    committed, so the group's next run starts there.
    """

    def __init__(self, settings: StreamConsumerSettings) -> None:
        self.settings = settings
        self._handled: dict[TopicPartition, int] = {}
        """Next offset per partition whose records were handled but not yet committed."""

    async def run(self, handler: Handler, *, stop: asyncio.Event | None = None) -> None:
        """Consume until ``stop`` is set (forever without one), the handler raises, or
        a record cannot be decoded. Returns once the handled offsets are committed,
        as far as the broker can be reached."""
        stop = stop or asyncio.Event()
        consumer = AIOKafkaConsumer(**self.settings.consumer_options())
        await consumer.start()
        try:
            consumer.subscribe(self.settings.topics(), listener=_CommitOnRevoke(self, consumer))
            while not stop.is_set():
                fetched = await consumer.getmany(
                    timeout_ms=int(self.settings.poll_timeout_s * 1000),
                    max_records=self.settings.max_batch,
                )
                try:
                    for tp, records in fetched.items():
                        for record in records:
                            await handler(decode_record(record))
                            self._handled[tp] = record.offset + 1
                finally:
                    await self._commit(consumer)
        finally:
            try:
                await self._commit(consumer)
            finally:
                await consumer.stop()

    async def _commit(
        self, consumer: AIOKafkaConsumer, only: set[TopicPartition] | None = None
    ) -> None:
        """Commit handled offsets; keep them for the next try when the broker is away.

        Offsets of partitions this consumer no longer owns are dropped: their new
        owner starts from the last commit and handles those records again, which at
        least once allows.
        """
        owned = consumer.assignment()
        offsets = {
            tp: offset
            for tp, offset in self._handled.items()
            if tp in owned and (only is None or tp in only)
        }
        for tp in set(self._handled) - owned:
            del self._handled[tp]
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:
            log.warning("commit of %d partition(s) failed, will retry: %s", len(offsets), exc)
            return
        for tp, offset in offsets.items():
            if self._handled.get(tp) == offset:
                del self._handled[tp]


class _CommitOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """Commit what was handled before a partition moves to another member."""

    def __init__(self, owner: StreamConsumer, consumer: AIOKafkaConsumer) -> None:
        self._owner, self._consumer = owner, consumer

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._owner._commit(self._consumer, only=set(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        pass
