"""``KafkaLedger``: the ``EventLog`` port on Apache Kafka, through ``aiokafka``.

Two topics. Subscriber events are keyed by phone, so one subscriber's history lives
in one partition, in order. Campaign events go to their own topic, keyed by
``brand/campaign``, which every node reads whole. Records carry the
``services.wire.codec`` envelope; ``recorded_at`` is the broker's LogAppendTime.
Every record also carries headers (``record_headers``) that let a consumer route
or skip it without decoding the value; ``protos/README.md`` is their contract.

aiokafka's defaults suit telemetry, not a ledger: the producer here always waits for
every in-sync replica (``acks="all"``) and is idempotent (a retried batch is not
written twice, nor reordered), and ``append`` returns only after the broker
acknowledged every event. Topics must never be compacted or expire: compaction
keeps only the last record per key, which for a phone would erase its consent
history; ``ensure_topics`` refuses topics configured that way.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    KafkaError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
)
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.structs import ConsumerRecord, RecordMetadata

from ledger.events import CampaignEvent, LedgerEvent, LedgerPosition, Recorded, SubscriberEvent
from ledger.ports import EventLog, EventTooLarge, LedgerUnavailable, Offsets, Stream
from ledger.upcasting import class_version
from services.settings import KafkaLedgerSettings
from services.wire.codec import encode_event, recorded_from_stored


def topic_configs(settings: KafkaLedgerSettings) -> dict[str, str]:
    """What makes a topic a ledger: keep everything, forever, stamped by the broker."""
    return {
        "cleanup.policy": "delete",
        "retention.ms": "-1",
        "retention.bytes": "-1",
        "message.timestamp.type": "LogAppendTime",
        "min.insync.replicas": str(settings.min_insync_replicas),
        # A replica that missed acknowledged appends must never become the
        # leader: it would serve a log without them, and they would be lost.
        "unclean.leader.election.enable": "false",
    }


PRODUCER_BATCH_BYTES = 16_384
"""aiokafka's own batch size, kept where the topics allow it."""


def producer_options(
    settings: KafkaLedgerSettings, batch_limit: int | None = None
) -> dict[str, Any]:
    """``batch_limit``: the smallest ``max.message.bytes`` of the topics written. The
    broker applies it to a whole batch of records, and refuses the batch, every
    record in it, as too large: the producer's batches stay within it."""
    return {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": settings.client_id,
        "acks": "all",
        "enable_idempotence": True,
        "request_timeout_ms": int(settings.request_timeout_s * 1000),
        "max_request_size": settings.max_record_bytes,
        "max_batch_size": min(PRODUCER_BATCH_BYTES, batch_limit or PRODUCER_BATCH_BYTES),
    }


def consumer_options(settings: KafkaLedgerSettings) -> dict[str, Any]:
    return {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": settings.client_id,
        "group_id": None,
        "enable_auto_commit": False,
        # An offset the log does not have is a bug (a position from another
        # cluster or topic); jumping to either end would hide it.
        "auto_offset_reset": "none",
        "request_timeout_ms": int(settings.request_timeout_s * 1000),
    }


log = logging.getLogger(__name__)

_TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError)
_RESIZES = 3
"""Times one append is sent again in smaller batches after a refusal as too large."""


class _Unacknowledged(Exception):
    """An append some of whose records the broker did not acknowledge: ``first``, the
    first failure, and each record's metadata or failure, in the append's order."""

    def __init__(
        self, first: BaseException, outcomes: list[RecordMetadata | BaseException]
    ) -> None:
        super().__init__(str(first))
        self.first, self.outcomes = first, outcomes


def _refused_unwritten(error: BaseException) -> bool:
    """Whether the broker refused the record's batch, so that it was not written: as
    too large, or as out of sequence, which follows a batch refused on its partition
    (``_renew_producer_if_spent``). A timeout or a lost connection may have written it."""
    return isinstance(error, (*_TOO_LARGE, OutOfOrderSequenceNumber))


_CONTROLLER_LOOKS = 5


async def _create_topics(admin: AIOKafkaAdminClient, new_topics: list[NewTopic]) -> Any:
    """``admin.create_topics``, asked again a few times while the broker's metadata
    names no controller yet: aiokafka then fails with AttributeError (``None.nodeId``,
    seen when two instances start at once), and refreshes the metadata on the next
    call. Any other failure, or the last, is raised."""
    for look in range(1, _CONTROLLER_LOOKS + 1):
        try:
            return await admin.create_topics(new_topics)
        except AttributeError:
            if look == _CONTROLLER_LOOKS:
                raise
            log.info("Kafka names no controller yet; asking again (%d)", look)
            await asyncio.sleep(0.2 * look)
    raise AssertionError("unreachable")


async def stop_producer(producer: AIOKafkaProducer, timeout: float) -> None:
    """Send what is buffered, then disconnect; give up on the buffer after ``timeout``.

    An idempotent aiokafka producer retries an unsent batch for as long as it runs,
    and ``stop()`` waits for it: with the broker down, forever. Whatever is still
    buffered after ``request_timeout_s`` was never acknowledged (its ``append``
    raised), so dropping it keeps the port's promise. aiokafka offers no public
    way to abandon the buffer; stopping its sender task is what makes ``stop()``
    return.
    """
    stopping = asyncio.ensure_future(producer.stop())
    done, _ = await asyncio.wait({stopping}, timeout=timeout)
    if not done:
        producer._sender.sender_task.cancel()
    await stopping


class UnsafeTopicError(RuntimeError):
    """A ledger topic is missing, or configured so that it could lose or reorder events."""


class KafkaLedger(EventLog):
    """Call ``start()`` before use and ``close()`` after; ``ensure_topics()`` needs neither.

    ``renewed`` is called each time a new producer replaces one whose batch failed
    (``_renew_producer_if_spent``), for the metric that counts them."""

    def __init__(
        self, settings: KafkaLedgerSettings, renewed: Callable[[], None] | None = None
    ) -> None:
        self.settings = settings
        self._renewed = renewed
        self._producer: AIOKafkaProducer | None = None
        self._spent: AIOKafkaProducer | None = None
        """The producer, if a batch of it failed (``_renew_producer_if_spent``)."""
        self._renewing = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        # Appends waiting for ``_send_queued`` to hand their records to the producer.
        self._queued: list[_Queued] = []
        self._on_their_way: set[asyncio.Future[None]] = set()
        """Per append (try) sent, until each of its records is acknowledged or given
        up on by the producer: for ``settled``, as its answer may come first (a
        timeout)."""
        self._sender: asyncio.Task[None] | None = None
        self._reader: AIOKafkaConsumer | None = None
        # One consumer serves every ``read``; reads reassign it, so they take turns.
        self._read_lock = asyncio.Lock()
        self._subscriber_partitions: list[int] = []
        # The smallest max.message.bytes of the topics, as ``_verify_topics`` found it,
        # or lower when read again after a refusal (``_smaller_batches``).
        self._batch_limit: int | None = None
        self._batch_size = PRODUCER_BATCH_BYTES
        """The largest batch of the producer sending now."""
        self._resizing = asyncio.Lock()

    async def start(self) -> None:
        """Connect; raises ``UnsafeTopicError`` unless every topic (both streams' and
        the checkpoints') exists with ledger settings.

        Checking first matters: aiokafka asks for metadata with auto-creation allowed,
        so on a broker with ``auto.create.topics.enable`` (Kafka's default) the first
        append to a missing topic would create it with a seven-day retention.
        """
        await self.verify_topics()
        producer = self._new_producer()
        reader = AIOKafkaConsumer(**consumer_options(self.settings))
        await producer.start()
        try:
            await reader.start()
            subscriber_partitions = await producer.partitions_for(
                self.settings.topic(Stream.SUBSCRIBERS)
            )
        except BaseException:
            await producer.stop()
            await reader.stop()
            raise
        self._producer, self._reader = producer, reader
        self._subscriber_partitions = sorted(subscriber_partitions)

    def _new_producer(self) -> AIOKafkaProducer:
        options = producer_options(self.settings, self._batch_limit)
        self._batch_size = options["max_batch_size"]
        return AIOKafkaProducer(**options)

    def partition_for(self, phone: str) -> int | None:
        """Where Kafka's default partitioner (the producer's) puts ``phone``; None before
        ``start``."""
        if not self._subscriber_partitions:
            return None
        partition: int = DefaultPartitioner()(phone.encode(), self._subscriber_partitions, [])
        return partition

    async def close(self) -> None:
        producer, reader = self._producer, self._reader
        self._producer = self._reader = None
        if producer is not None:
            await self._stop_producer(producer)
        for retiring in list(self._retiring):
            await retiring
        if reader is not None:
            await reader.stop()

    async def _stop_producer(self, producer: AIOKafkaProducer) -> None:
        await stop_producer(producer, self.settings.request_timeout_s)

    # -- topics -----------------------------------------------------------------------

    async def ensure_topics(self) -> None:
        """Create missing topics with ledger settings, then check every one of them.

        Raises ``UnsafeTopicError`` naming each problem of an existing topic rather
        than write a ledger into a topic that compacts or expires it.
        """
        admin = self._admin()
        await admin.start()
        try:
            new_topics = [
                NewTopic(
                    topic,
                    partitions,
                    self.settings.replication_factor,
                    topic_configs=topic_configs(self.settings),
                )
                for topic, partitions in self.settings.topic_partitions().items()
            ]
            response = await _create_topics(admin, new_topics)
            for result in response.to_object()["topic_errors"]:
                if result["error_code"] not in (0, TopicAlreadyExistsError.errno):
                    raise KafkaError(
                        f"Kafka ledger: cannot create topic {result['topic']!r}: "
                        f"error {result['error_code']} {result.get('error_message') or ''}"
                    )
            await self._verify_topics(admin, await_creation=True)
        finally:
            await admin.close()

    async def verify_topics(self) -> None:
        """Raise ``UnsafeTopicError`` unless every topic (both streams' and the
        checkpoints') exists with ledger settings."""
        admin = self._admin()
        await admin.start()
        try:
            await self._verify_topics(admin, await_creation=False)
        finally:
            await admin.close()

    async def _described_topics(
        self, admin: AIOKafkaAdminClient, names: list[str], await_creation: bool
    ) -> list[dict[str, Any]]:
        # Describing a missing topic would create it with the broker's defaults
        # (aiokafka allows auto-creation); listing every topic never creates one.
        existing = set(await admin.list_topics())
        names = [name for name in names if name in existing or await_creation]
        if not names:
            return []
        # A topic just created takes a moment to reach the broker's metadata cache.
        return await self._asked_until_known(
            lambda: admin.describe_topics(names),
            lambda t: t["error_code"] == UnknownTopicOrPartitionError.errno,
            await_creation,
        )

    async def _described_configs(
        self, admin: AIOKafkaAdminClient, topics: list[str], await_creation: bool
    ) -> list[dict[str, Any]]:
        """Each topic's configs (``describe_configs``). Of topics just created, the
        broker asked may not know one yet (seen on a three-broker cluster): asked again
        until ``request_timeout_s``, as ``_described_topics`` waits for the topics."""
        if not topics:
            return []
        resources = [ConfigResource(ConfigResourceType.TOPIC, t) for t in topics]

        async def configs() -> list[dict[str, Any]]:
            responses = await admin.describe_configs(resources)
            return [r for response in responses for r in response.to_object()["resources"]]

        return await self._asked_until_known(
            configs, lambda r: r["error_code"] != 0, await_creation
        )

    async def _asked_until_known(
        self,
        ask: Callable[[], Awaitable[list[dict[str, Any]]]],
        unknown: Callable[[dict[str, Any]], bool],
        await_creation: bool,
    ) -> list[dict[str, Any]]:
        """``ask()``'s answer; of topics just created (``await_creation``), asked again
        every 0.1 s while an entry is ``unknown``, until ``request_timeout_s``."""
        deadline = asyncio.get_running_loop().time() + self.settings.request_timeout_s
        while True:
            found = await ask()
            pending = any(unknown(entry) for entry in found)
            if not (await_creation and pending) or asyncio.get_running_loop().time() > deadline:
                return found
            await asyncio.sleep(0.1)

    async def _verify_topics(self, admin: AIOKafkaAdminClient, await_creation: bool) -> None:
        names = self.settings.topic_partitions()
        problems: dict[str, list[str]] = {name: [] for name in names}
        described = await self._described_topics(admin, list(names), await_creation)
        for name in names.keys() - {topic["topic"] for topic in described}:
            problems[name].append("does not exist (create it with ensure_topics / migrate)")
        for topic in described:
            name = topic["topic"]
            if topic["error_code"] != 0:
                problems[name].append(f"does not exist or cannot be described ({topic})")
                continue
            want = names[name]
            if len(topic["partitions"]) != want:
                problems[name].append(
                    f"has {len(topic['partitions'])} partitions, not {want} (a different "
                    "count moves phones between partitions and breaks their order)"
                )
            replicas = min(len(p["replicas"]) for p in topic["partitions"])
            if replicas < self.settings.replication_factor:
                problems[name].append(
                    f"has replication factor {replicas}, below {self.settings.replication_factor}"
                )
        topics = [t["topic"] for t in described]
        for resource in await self._described_configs(admin, topics, await_creation):
            name = resource["resource_name"]
            if resource["error_code"] != 0:
                problems[name].append(f"configs unreadable: {resource['error_message']}")
                continue
            found = {e["config_names"]: e["config_value"] for e in resource["config_entries"]}
            problems[name].extend(self._config_problems(found))
            if (found.get("max.message.bytes") or "").isdigit():
                limit = int(found["max.message.bytes"])
                self._batch_limit = min(self._batch_limit or limit, limit)
        report = [f"{name}: {p}" for name, ps in problems.items() for p in ps]
        if report:
            raise UnsafeTopicError(
                "Kafka ledger topics are missing or unsafe for a ledger; create them with "
                "ensure_topics, fix them (kafka-configs --alter) or use another prefix:\n  "
                + "\n  ".join(report)
            )

    def _config_problems(self, found: dict[str, str]) -> list[str]:
        problems = [
            f"{key}={found.get(key)!r}, must be {want!r}"
            for key, want in topic_configs(self.settings).items()
            if key != "min.insync.replicas" and found.get(key) != want
        ]
        min_isr = int(found.get("min.insync.replicas") or 0)
        if min_isr < self.settings.min_insync_replicas:
            problems.append(
                f"min.insync.replicas={min_isr}, must be at least "
                f"{self.settings.min_insync_replicas}"
            )
        return problems

    def _admin(self) -> AIOKafkaAdminClient:
        return AIOKafkaAdminClient(
            bootstrap_servers=self.settings.bootstrap_servers,
            client_id=self.settings.client_id,
            request_timeout_ms=int(self.settings.request_timeout_s * 1000),
        )

    # -- the port ---------------------------------------------------------------------

    async def append(self, events: Sequence[LedgerEvent]) -> list[Recorded]:
        """Raises ``ConnectionError`` when any event is not acknowledged in time; some
        of them may have been written anyway, or be written still: a retry must wait
        until they settle (``settled``) and append only those not stored (Kafka's
        idempotent producer covers only its own retries). Raises ``EventTooLarge``,
        which no retry gets past, for an event over ``max_record_bytes`` or the
        topics' ``max.message.bytes`` (nothing is sent; its ``places`` name each such
        event) and for one the broker refuses as too large (a topic's
        ``max.message.bytes`` lowered since it was read; the other events may have
        been written)."""
        # Encode everything first: an event that cannot be encoded, or is too large to
        # send, sends nothing.
        records = [
            (self.settings.topic(Stream.of(e)), _key(e), encode_event(e), record_headers(e))
            for e in events
        ]
        # The topics' max.message.bytes as last read, when lower: the broker would
        # refuse such a record alone after writing the others of the append (half of
        # a batched send), so it is refused here, before any is sent.
        limit = self.record_limit()
        too_large = _over(limit, events, records)
        if too_large and limit < self.settings.max_record_bytes:
            try:
                limit = await self._record_limit()
            except (KafkaError, TimeoutError) as exc:
                raise LedgerUnavailable(
                    f"Kafka ledger: the topics' max.message.bytes could not be read from "
                    f"{self.settings.bootstrap_servers}: {type(exc).__name__}: {exc}"
                ) from exc
            too_large = [t for t in too_large if t[2] > limit]
        if too_large:
            _, event, size = too_large[0]
            raise EventTooLarge(
                f"Kafka ledger: a {type(event).__name__} of {size:,} bytes is larger than "
                f"a record may be ({limit:,} bytes)",
                [place for place, _, _ in too_large],
            )
        if not records:
            return []
        try:
            metadata = await self._sent_within_limit(records)
        except _TOO_LARGE as exc:  # the broker's limit, below the producer's: no retry helps
            raise EventTooLarge(
                f"Kafka ledger: {self.settings.bootstrap_servers} refused a record as too "
                f"large: {type(exc).__name__}: {exc}"
            ) from exc
        except (KafkaError, TimeoutError) as exc:
            raise LedgerUnavailable(
                f"Kafka ledger: {len(records)} event(s) not acknowledged by "
                f"{self.settings.bootstrap_servers}: {type(exc).__name__}: {exc}"
            ) from exc
        return [
            Recorded(event, LedgerPosition(md.partition, md.offset), _utc(md.timestamp))
            for event, md in zip(events, metadata, strict=True)
        ]

    async def _sent_within_limit(self, records: list[Record]) -> list[RecordMetadata]:
        """``_sent``'s metadata; the records a batch refused as too large (or out of
        sequence behind one so refused) are sent again, alone, in smaller batches when
        the topics' ``max.message.bytes`` was lowered since the producer was made (it
        is read at start only). The broker
        wrote none of a refused batch, so each record is written once; one too large
        on its own is refused still (``EventTooLarge``: an opt-out is held)."""
        outcomes: list[RecordMetadata | None] = [None] * len(records)
        unsent = list(range(len(records)))
        for attempt in range(_RESIZES + 1):
            size = self._batch_size
            try:
                sent = await self._sent([records[i] for i in unsent])
            except _Unacknowledged as exc:
                failed = []
                for i, outcome in zip(unsent, exc.outcomes, strict=True):
                    if isinstance(outcome, BaseException):
                        failed.append(i)
                    else:
                        outcomes[i] = outcome
                if not (
                    attempt < _RESIZES
                    # Out of sequence behind a batch refused as too large on its
                    # partition, an append's own batch was not written either.
                    and isinstance(exc.first, (*_TOO_LARGE, OutOfOrderSequenceNumber))
                    and all(
                        _refused_unwritten(o) for o in exc.outcomes if isinstance(o, BaseException)
                    )
                    and _order_kept(records, failed, outcomes)
                    and await self._smaller_batches(size)
                ):
                    raise exc.first from None
                unsent = failed
            else:
                for i, md in zip(unsent, sent, strict=True):
                    outcomes[i] = md
                break
        return [md for md in outcomes if md is not None]

    async def _smaller_batches(self, tried: int) -> bool:
        """After a batch of at most ``tried`` bytes was refused as too large: whether
        the producer's batches are smaller now, read again from the topics'
        ``max.message.bytes`` (once for the appends refused together)."""
        async with self._resizing:
            if self._batch_size >= tried:
                limits = await self._record_limits()
                if not limits or min(limits) >= tried:
                    return False  # the record is too large on its own
                log.warning(
                    "Kafka ledger: max.message.bytes is now %d, below the producer's "
                    "batches of %d bytes; sending with smaller batches",
                    min(limits),
                    tried,
                )
                # Not while a producer is being made (with the old limit).
                async with self._renewing:
                    self._batch_limit = min(limits)
                    self._spent = self._started_producer()  # renewed at the next send
                    self._batch_size = min(PRODUCER_BATCH_BYTES, self._batch_limit)
            return self._batch_size < tried

    async def _record_limits(self) -> list[int]:
        """The topics' ``max.message.bytes``, read now."""
        admin = self._admin()
        await admin.start()
        try:
            topics = list(self.settings.topic_partitions())
            resources = await self._described_configs(admin, topics, False)
        finally:
            await admin.close()
        return [
            int(value)
            for r in resources
            for e in r["config_entries"]
            if e["config_names"] == "max.message.bytes"
            and (value := e["config_value"] or "").isdigit()
        ]

    async def too_large(self, events: Sequence[LedgerEvent]) -> list[int]:
        """The places of the events larger than a record may be, by
        ``max_record_bytes`` and the topics' ``max.message.bytes`` as last read (at
        start, or when the broker last refused a record): what ``append`` refuses
        before sending. A limit lowered on the broker since is not known here."""
        records = [(_key(e), encode_event(e), record_headers(e)) for e in events]
        return [place for place, _, _ in _over(self.record_limit(), events, records)]

    def record_limit(self) -> int:
        """``max_record_bytes``, or the topics' ``max.message.bytes`` as last read when
        lower."""
        return min(self.settings.max_record_bytes, self._batch_limit or sys.maxsize)

    async def _record_limit(self) -> int:
        """The largest record the topics take, their ``max.message.bytes`` read again:
        one raised since it was last read lets larger records be sent from now on."""
        limits = await self._record_limits()
        if limits:
            self._batch_limit = min(limits)
        return self.record_limit()

    def _sent(self, records: list[Record]) -> asyncio.Future[list[RecordMetadata]]:
        """Each record's metadata once the broker acknowledged all of them; the first
        failure, or ``TimeoutError`` after ``append_timeout_s``, if not.

        The appends of one turn of the event loop are handed to the producer together,
        by one task under one timer (``_send_queued``): per append, a task, a timer and
        a future for each record cost as much as its part of the produce request.
        Each append is still answered on its own records' acknowledgements alone."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[list[RecordMetadata]] = loop.create_future()
        settled: asyncio.Future[None] = loop.create_future()
        self._on_their_way.add(settled)
        settled.add_done_callback(self._on_their_way.discard)
        self._queued.append((records, answer, settled))
        if self._sender is None:
            self._sender = loop.create_task(self._send_queued())
        return answer

    async def _send_queued(self) -> None:
        try:
            while self._queued:
                group, self._queued = self._queued, []
                loop = asyncio.get_running_loop()
                timer = loop.call_later(self.settings.append_timeout_s, _expire, group)
                try:
                    producer = await self._renew_producer_if_spent()
                except Exception as exc:
                    for _, answer, settled in group:
                        _fail(answer, exc)
                        _settle(settled)
                    timer.cancel()
                    continue
                pending = [len(group)]
                for records, answer, settled in group:
                    await self._send_one(producer, records, answer, settled, timer, pending)
        finally:
            self._sender = None
            for _, answer, settled in self._queued:  # only when this task was cancelled
                _fail(answer, LedgerUnavailable("Kafka ledger: the append was not sent"))
                _settle(settled)
            self._queued = []

    @property
    def longest_append_s(self) -> float | None:
        # ``settled``'s bound: an append is acknowledged, or given up on by its
        # producer, within it.
        return self.settings.append_timeout_s + self.settings.request_timeout_s

    async def settled(self) -> None:
        """Wait until every append sent before the call has each record acknowledged
        or given up on by its producer (``_on_their_way``): an append answered with
        a timeout may still be written until then. ``LedgerUnavailable`` after the
        producer's own bound (``request_timeout_s``) and the append's."""
        sent = list(self._on_their_way)
        if not sent:
            return
        bound = self.settings.append_timeout_s + self.settings.request_timeout_s
        _, on_their_way = await asyncio.wait(sent, timeout=bound)
        if on_their_way:
            raise LedgerUnavailable(
                f"Kafka ledger: {len(on_their_way)} append(s) neither acknowledged nor given "
                f"up on in {bound:g} s"
            )

    async def _send_one(
        self,
        producer: AIOKafkaProducer,
        records: list[Record],
        answer: asyncio.Future[list[RecordMetadata]],
        on_their_way: asyncio.Future[None],
        timer: asyncio.TimerHandle,
        pending: list[int],
    ) -> None:
        """Queue ``records`` (in order: one key's events keep it), and answer
        ``answer`` when the last of them is acknowledged; cancel ``timer`` when every
        append of its group (``pending`` counts them down) is answered. Settle
        ``on_their_way`` once no record is (each acknowledged or given up on)."""
        deliveries: list[asyncio.Future[RecordMetadata]] = []
        # Counted down, not checked whole on each acknowledgement: an append of 1,000
        # records acknowledged in order would ask half a million times.
        waiting = 1  # the records' deliveries, and the loop that sends them
        abandoned = False

        def settled(delivery: asyncio.Future[Any] | None = None) -> None:
            nonlocal waiting
            if delivery is not None and not delivery.cancelled() and delivery.exception():
                self._spent = producer
            waiting -= 1
            if not waiting:
                _settle(on_their_way)
            if waiting or abandoned:
                return
            failed = next(
                (d.exception() for d in deliveries if not d.cancelled() and d.exception()), None
            )
            if failed is not None:
                _fail(answer, _Unacknowledged(failed, [_outcome(d) for d in deliveries]))
            elif not answer.done():
                answer.set_result([d.result() for d in deliveries])
            pending[0] -= 1
            if not pending[0]:
                timer.cancel()

        try:
            for topic, key, value, headers in records:
                delivery = await producer.send(topic, value, key=key, headers=headers)
                waiting += 1
                delivery.add_done_callback(settled)
                deliveries.append(delivery)
        except Exception as exc:  # this append alone: the group's others go on
            # Its records sent before still mark a failed producer spent (``settled``),
            # but the append is answered here, once.
            abandoned = True
            _fail(answer, exc)
            pending[0] -= 1
            if not pending[0]:
                timer.cancel()
            settled()  # the loop's own count: settled once the records sent are
            return
        settled()

    async def _renew_producer_if_spent(self) -> AIOKafkaProducer:
        """The producer to send with: a new one if a batch of the current one failed.

        An idempotent producer numbers each partition's batches, and the broker
        takes a batch only if it follows the last one it wrote. aiokafka numbers a
        batch as it takes it for sending, also when it then gives up on it (a batch
        that waited ``request_timeout_s`` for a partition with no leader, as during
        a broker restart, or one the broker refused), and never numbers again: the
        broker then refuses every later batch of that partition
        (``OutOfOrderSequenceNumber``) for as long as the producer lives (aiokafka
        issue #1017). Kafka's Java producer takes a new producer id then; so does
        this. Durability is unchanged: the new producer is as idempotent and
        ``acks=all``, and what the old one still holds is sent, or given up on
        within ``request_timeout_s``, as ``close`` does.
        """
        producer = self._started_producer()
        if self._spent is not producer:
            return producer
        async with self._renewing:
            producer = self._started_producer()
            if self._spent is not producer:
                return producer  # renewed while this append waited
            fresh = self._new_producer()
            try:
                await fresh.start()  # fails while the broker is away: the next append tries
            except BaseException:
                await fresh.stop()
                raise
            self._producer, self._spent = fresh, None
        log.warning("Kafka ledger: a batch failed; sending with a new idempotent producer")
        if self._renewed is not None:
            self._renewed()
        retiring = asyncio.create_task(self._stop_producer(producer))
        self._retiring.add(retiring)
        retiring.add_done_callback(self._retiring.discard)
        return fresh

    async def read(
        self, stream: Stream, partition: int, start: int, limit: int = 1000
    ) -> list[Recorded]:
        if start < 0 or limit < 0:
            raise ValueError("start and limit must not be negative")
        await self._check_partition(stream, partition)
        tp = TopicPartition(self.settings.topic(stream), partition)
        async with self._read_lock:
            reader = self._started_reader()
            end = (await reader.end_offsets([tp]))[tp]
            stop = min(end, start + limit)
            if start >= stop:
                return []
            reader.assign([tp])
            try:
                reader.seek(tp, start)
                return await asyncio.wait_for(
                    self._fetch(reader, tp, start, stop), self.settings.request_timeout_s
                )
            finally:
                reader.unsubscribe()  # stop background fetching until the next read

    async def _fetch(
        self, reader: AIOKafkaConsumer, tp: TopicPartition, start: int, stop: int
    ) -> list[Recorded]:
        out: list[Recorded] = []
        position = start
        while position < stop:
            fetched = await reader.getmany(tp, timeout_ms=1000, max_records=stop - position)
            for record in fetched.get(tp, []):
                if record.offset >= stop:
                    break
                out.append(recorded_from_record(record))
                position = record.offset + 1
        return out

    async def partitions(self, stream: Stream) -> list[int]:
        producer = self._started_producer()
        return sorted(await producer.partitions_for(self.settings.topic(stream)))

    async def end_offsets(self, stream: Stream) -> dict[int, int]:
        return (await self._end_offsets([stream]))[stream]

    async def every_end_offset(self) -> dict[Stream, dict[int, int]]:
        """One ListOffsets request for every topic (the broker leads them all, or
        one request per leader), where ``end_offsets`` per stream would send one each."""
        return await self._end_offsets(list(Stream))

    async def _end_offsets(self, streams: list[Stream]) -> dict[Stream, dict[int, int]]:
        by_topic = {self.settings.topic(s): s for s in streams}
        tps = []
        for topic, stream in by_topic.items():
            partitions = await self.partitions(stream)
            if stream is Stream.SUBSCRIBERS and partitions != self._subscriber_partitions:
                # The producer puts a phone by the partitions it sees now, and reads wait
                # on the phone's partition as counted at start: a fact written to the
                # other one would go unwaited for. Every observation fails, so reads fail
                # closed, as a start on this topic would.
                raise UnsafeTopicError(
                    f"{topic} has {len(partitions)} partitions, not the "
                    f"{len(self._subscriber_partitions)} it had at start (a different count "
                    "moves phones between partitions and breaks their order)"
                )
            tps += [TopicPartition(topic, p) for p in partitions]
        ends = await self._started_reader().end_offsets(tps)
        found: dict[Stream, dict[int, int]] = {s: {} for s in streams}
        for tp, offset in ends.items():
            found[by_topic[tp.topic]][tp.partition] = offset
        return found

    async def subscribe(
        self, stream: Stream, start: Offsets, *, poll_timeout: float = 0.5
    ) -> AsyncIterator[list[Recorded]]:
        """Partitions missing from ``start`` are read from their first event."""
        topic = self.settings.topic(stream)
        tps = [TopicPartition(topic, p) for p in await self.partitions(stream)]
        consumer = AIOKafkaConsumer(**consumer_options(self.settings))
        await consumer.start()
        try:
            consumer.assign(tps)
            for tp in tps:
                consumer.seek(tp, start.get(tp.partition, 0))
            while True:
                fetched = await consumer.getmany(*tps, timeout_ms=int(poll_timeout * 1000))
                yield [recorded_from_record(record) for tp in tps for record in fetched.get(tp, [])]
        finally:
            await consumer.stop()

    async def _check_partition(self, stream: Stream, partition: int) -> None:
        if partition not in await self.partitions(stream):
            raise ValueError(f"{stream.value} has no partition {partition}")

    def _started_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("KafkaLedger is not started: await ledger.start() first")
        return self._producer

    def _started_reader(self) -> AIOKafkaConsumer:
        if self._reader is None:
            raise RuntimeError("KafkaLedger is not started: await ledger.start() first")
        return self._reader


Header = tuple[str, bytes]
Record = tuple[str, bytes, bytes, list[Header]]
"""A record as handed to the producer: topic, key, value, headers."""
_Queued = tuple[list[Record], asyncio.Future[list[RecordMetadata]], asyncio.Future[None]]
"""An append waiting to be sent: its records, its answer, and its settling."""

CONTENT_TYPE = "application/x-protobuf; messageType=consent.v1.EventEnvelope"
"""The ``content-type`` header of every record: what the value is."""


def record_headers(event: LedgerEvent) -> list[Header]:
    """What a consumer needs to route a record without decoding its value.

    Copies of envelope fields (the envelope stays the source of truth), UTF-8, in
    this order; ``campaign`` only when the event names one. Documented as a
    contract in ``protos/README.md``: add headers, never rename or drop one.
    """
    brand = event.brand if isinstance(event, SubscriberEvent | CampaignEvent) else ""
    headers: list[Header] = [
        ("content-type", CONTENT_TYPE.encode()),
        ("event-id", str(event.event_id).encode()),
        ("event-type", type(event).EVENT_TYPE.encode()),
        ("schema-version", str(class_version(type(event))).encode()),
        ("brand", brand.encode()),
    ]
    campaign = getattr(event, "campaign", None)
    if campaign:
        headers.append(("campaign", campaign.encode()))
    return headers


def _key(event: LedgerEvent) -> bytes:
    if isinstance(event, SubscriberEvent):
        return event.phone.encode()
    if isinstance(event, CampaignEvent):
        return f"{event.brand}/{event.campaign}".encode()
    raise TypeError(f"{type(event).__name__} belongs to no stream")


def recorded_from_record(record: ConsumerRecord[bytes, bytes]) -> Recorded:
    """A Kafka record as the ledger recorded it; ``recorded_at`` is the broker's stamp."""
    if record.value is None:
        raise ValueError(f"empty record at {record.topic}/{record.partition}@{record.offset}")
    return recorded_from_stored(
        record.value, LedgerPosition(record.partition, record.offset), _utc(record.timestamp)
    )


def _utc(epoch_ms: int) -> datetime:
    # Integer arithmetic: a float division can land a microsecond off the broker's stamp.
    return datetime.fromtimestamp(epoch_ms // 1000, UTC) + timedelta(milliseconds=epoch_ms % 1000)


def _outcome(delivery: asyncio.Future[RecordMetadata]) -> RecordMetadata | BaseException:
    if delivery.cancelled():
        return asyncio.CancelledError()
    return delivery.exception() or delivery.result()


def _order_kept(
    records: list[Record], failed: list[int], outcomes: list[RecordMetadata | None]
) -> bool:
    """Whether sending the ``failed`` records again keeps each key's order: no record
    of the same key after one of them was written."""
    first_failed: dict[tuple[str, bytes], int] = {}
    for i in failed:
        first_failed.setdefault((records[i][0], records[i][1]), i)
    return not any(
        outcomes[j] is not None and first_failed.get((topic, key), j) < j
        for j, (topic, key, _, _) in enumerate(records)
    )


def _fail(answer: asyncio.Future[Any], error: BaseException) -> None:
    if not answer.done():
        answer.set_exception(error)


def _settle(on_their_way: asyncio.Future[None]) -> None:
    if not on_their_way.done():
        on_their_way.set_result(None)


def _expire(group: list[_Queued]) -> None:
    """The appends of ``group`` not acknowledged within ``append_timeout_s`` fail;
    their records may still be written until they settle (``KafkaLedger.settled``),
    which a retry must find out before it appends them again."""
    for _, answer, _ in group:
        _fail(answer, TimeoutError())


def _over(
    limit: int, events: Sequence[LedgerEvent], records: Sequence[tuple[Any, ...]]
) -> list[tuple[int, LedgerEvent, int]]:
    """Of ``events``, encoded as ``records`` (each ending with its key, value and
    headers), those over ``limit`` bytes: each with its place and its size."""
    over = []
    for place, (event, record) in enumerate(zip(events, records, strict=True)):
        key, value, headers = record[-3:]
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
        if size > limit:
            over.append((place, event, size))
    return over
