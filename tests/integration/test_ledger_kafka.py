"""``KafkaLedger`` against a real broker: the conformance suite, then what only Kafka needs
(topic settings, refusing unsafe topics, surviving a broker restart, failing when down)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from ledger.events import Recorded
from ledger.ports import EventTooLarge, Stream
from services.adapters.kafka_ledger import (
    KafkaLedger,
    UnsafeTopicError,
    producer_options,
    topic_configs,
)
from services.settings import KafkaLedgerSettings
from tests.conformance.ledger_suite import (
    LedgerSuite,
    by_partition,
    campaign_defined,
    collect,
    message_sent,
    new_phone,
    read_all,
)
from tests.infra.kafka_broker import KafkaBroker
from tests.infra.topic_configs import altered

pytestmark = pytest.mark.kafka


def settings_for_test(bootstrap: str, **overrides: object) -> KafkaLedgerSettings:
    """Topics of the test's own (a unique prefix) sized for the one-node test broker."""
    base = KafkaLedgerSettings(
        bootstrap_servers=bootstrap,
        topic_prefix=f"test-{uuid.uuid4().hex[:10]}.",
        subscriber_partitions=3,
        campaign_partitions=1,
        replication_factor=1,
        min_insync_replicas=1,
        request_timeout_s=10,
        append_timeout_s=15,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def started_ledger(
    settings: KafkaLedgerSettings, renewed: Callable[[], None] | None = None
) -> AsyncIterator[KafkaLedger]:
    ledger = KafkaLedger(settings, renewed=renewed)
    await ledger.ensure_topics()
    await ledger.start()
    try:
        yield ledger
    finally:
        await asyncio.wait_for(ledger.close(), 30)


def lowered_since_read(ledger: KafkaLedger) -> None:
    """Make ``ledger`` one that read the topics' ``max.message.bytes`` before it was
    lowered: it then sends a record above the limit, and the broker refuses it (a
    limit it knows refuses such a record before anything is sent). Lowering the limit
    under a running ledger instead would race the broker applying it."""
    ledger._batch_limit = None


@contextlib.asynccontextmanager
async def admin_client(bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


class TestKafkaLedger(LedgerSuite):
    @pytest.fixture
    async def ledger(self, kafka_bootstrap: str) -> AsyncIterator[KafkaLedger]:
        async with started_ledger(settings_for_test(kafka_bootstrap)) as ledger:
            yield ledger


def test_the_producer_waits_for_every_in_sync_replica_and_is_idempotent() -> None:
    options = producer_options(KafkaLedgerSettings(bootstrap_servers="kafka:9092"))

    assert options["acks"] == "all"
    assert options["enable_idempotence"] is True


def test_min_insync_replicas_above_the_replication_factor_is_refused() -> None:
    with pytest.raises(ValueError, match="min_insync_replicas"):
        KafkaLedgerSettings(bootstrap_servers="kafka:9092", replication_factor=2,
                            min_insync_replicas=3)  # fmt: skip


async def test_ensure_topics_creates_both_topics_with_ledger_settings(
    kafka_bootstrap: str,
) -> None:
    settings = settings_for_test(kafka_bootstrap, subscriber_partitions=4)

    await KafkaLedger(settings).ensure_topics()
    await KafkaLedger(settings).ensure_topics()  # a second run finds them fine

    names = [settings.topic(Stream.SUBSCRIBERS), settings.topic(Stream.CAMPAIGNS)]
    assert names == [
        f"{settings.topic_prefix}consent.subscriber-events.v1",
        f"{settings.topic_prefix}consent.campaign-events.v1",
    ]
    async with admin_client(kafka_bootstrap) as admin:
        topics = {t["topic"]: t for t in await admin.describe_topics(names)}
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        )
    assert [len(topics[name]["partitions"]) for name in names] == [4, 1]
    configs = {
        resource["resource_name"]: {
            e["config_names"]: e["config_value"] for e in resource["config_entries"]
        }
        for response in responses
        for resource in response.to_object()["resources"]
    }
    for name in names:
        assert configs[name]["cleanup.policy"] == "delete"
        assert configs[name]["retention.ms"] == "-1"
        assert configs[name]["retention.bytes"] == "-1"
        assert configs[name]["message.timestamp.type"] == "LogAppendTime"
        assert configs[name]["min.insync.replicas"] == "1"
        assert configs[name]["unclean.leader.election.enable"] == "false"


@pytest.mark.parametrize(
    ("configs", "complaint"),
    [
        ({"cleanup.policy": "compact"}, "cleanup.policy='compact'"),
        ({"cleanup.policy": "compact,delete", "retention.ms": "-1"}, "cleanup.policy"),
        ({"retention.ms": str(7 * 24 * 3600 * 1000)}, "retention.ms='604800000'"),
        ({"retention.ms": "-1", "retention.bytes": "1073741824"}, "retention.bytes"),
        ({"retention.ms": "-1", "retention.bytes": "-1"}, "message.timestamp.type"),
        (
            {
                "retention.ms": "-1",
                "retention.bytes": "-1",
                "message.timestamp.type": "LogAppendTime",
                "unclean.leader.election.enable": "true",
            },
            "unclean.leader.election.enable='true'",
        ),
    ],
)
async def test_an_existing_topic_with_unsafe_settings_is_refused(
    kafka_bootstrap: str, configs: dict[str, str], complaint: str
) -> None:
    settings = settings_for_test(kafka_bootstrap)
    subscribers = settings.topic(Stream.SUBSCRIBERS)
    async with admin_client(kafka_bootstrap) as admin:
        await admin.create_topics([NewTopic(subscribers, 3, 1, topic_configs=configs)])

    with pytest.raises(UnsafeTopicError, match="unsafe for a ledger") as refused:
        await KafkaLedger(settings).ensure_topics()

    assert f"{subscribers}: {complaint}" in str(refused.value)


async def test_an_existing_topic_with_another_partition_count_is_refused(
    kafka_bootstrap: str,
) -> None:
    settings = settings_for_test(kafka_bootstrap)
    await KafkaLedger(settings).ensure_topics()

    with pytest.raises(UnsafeTopicError, match="has 3 partitions, not 6"):
        await KafkaLedger(replace(settings, subscriber_partitions=6)).ensure_topics()


async def test_start_refuses_missing_topics_without_creating_them(kafka_bootstrap: str) -> None:
    settings = settings_for_test(kafka_bootstrap)
    ledger = KafkaLedger(settings)

    with pytest.raises(UnsafeTopicError, match="does not exist"):
        await ledger.start()

    # The test broker, like Kafka by default, auto-creates topics a client asks about.
    async with admin_client(kafka_bootstrap) as admin:
        topics = await admin.list_topics()
    assert not [t for t in topics if t.startswith(settings.topic_prefix)]


async def test_acknowledged_events_all_survive_a_broker_restart_mid_stream(
    private_kafka_broker: KafkaBroker,
) -> None:
    settings = settings_for_test(private_kafka_broker.bootstrap_servers)
    acknowledged: list[Recorded] = []
    refused = 0
    async with started_ledger(settings) as ledger:
        subscription = ledger.subscribe(Stream.SUBSCRIBERS, {}, poll_timeout=0.2)
        restarted = asyncio.Event()

        async def keep_appending() -> None:
            nonlocal refused
            acknowledged_after_restart = 0
            while acknowledged_after_restart < 5:
                after_restart = restarted.is_set()
                batch = [message_sent(new_phone(), n) for n in range(10)]
                try:
                    acknowledged.extend(await ledger.append(batch))
                except ConnectionError:
                    refused += 1  # not acknowledged: the ledger promised nothing
                else:
                    acknowledged_after_restart += after_restart
                await asyncio.sleep(0.05)

        async def restart_midway() -> None:
            while len(acknowledged) < 50:
                await asyncio.sleep(0.05)
            await asyncio.to_thread(private_kafka_broker.restart)
            restarted.set()

        try:
            await asyncio.wait_for(asyncio.gather(keep_appending(), restart_midway()), 120)
            delivered = await collect(subscription, len(acknowledged), timeout=60)
        finally:
            await subscription.aclose()  # type: ignore[attr-defined]
        stored = await read_all(ledger, Stream.SUBSCRIBERS)

    assert len(acknowledged) >= 100, f"too few appends got through ({refused} refused)"
    stored_positions = {r.position: r for rs in stored.values() for r in rs}
    missing = [r for r in acknowledged if stored_positions.get(r.position) != r]
    assert not missing, f"{len(missing)} acknowledged events lost or changed by the restart"
    delivered_ids = {r.event.event_id for r in delivered}
    assert {r.event.event_id for r in acknowledged} <= delivered_ids


async def test_append_raises_within_its_timeout_when_the_broker_is_down(
    private_kafka_broker: KafkaBroker,
) -> None:
    settings = settings_for_test(
        private_kafka_broker.bootstrap_servers, request_timeout_s=2, append_timeout_s=4
    )
    async with started_ledger(settings) as ledger:
        await ledger.append([message_sent(new_phone())])  # connected and warm
        await asyncio.to_thread(private_kafka_broker.stop)

        started = time.monotonic()
        with pytest.raises(ConnectionError, match="not acknowledged"):
            await ledger.append([message_sent(new_phone()), campaign_defined()])
        elapsed = time.monotonic() - started

    assert elapsed < settings.append_timeout_s + 2


async def test_read_and_subscribe_see_one_phone_in_one_partition_across_ledgers(
    kafka_bootstrap: str,
) -> None:
    """Two writers (two app nodes) agree on where a phone lives: Kafka's key hashing."""
    settings = settings_for_test(kafka_bootstrap)
    phone = new_phone()
    async with started_ledger(settings) as one, started_ledger(settings) as other:
        first = await one.append([message_sent(phone, 0)])
        second = await other.append([message_sent(phone, 1)])

        stored = await read_all(one, Stream.SUBSCRIBERS)

    assert first[0].position.partition == second[0].position.partition
    assert by_partition(first + second) == {p: rs for p, rs in stored.items() if rs}


async def test_an_event_too_large_for_a_record_is_refused_before_anything_is_sent(
    kafka_bootstrap: str,
) -> None:
    settings = settings_for_test(kafka_bootstrap)
    async with started_ledger(settings) as ledger:
        huge = replace(message_sent(new_phone(), 1), message_id="x" * settings.max_record_bytes)

        with pytest.raises(EventTooLarge, match="larger than a record may be"):
            await ledger.append([message_sent(new_phone(), 0), huge])

        assert sum((await ledger.end_offsets(Stream.SUBSCRIBERS)).values()) == 0


async def test_an_event_the_broker_refuses_as_too_large_is_not_an_outage(
    kafka_bootstrap: str,
) -> None:
    # A topic whose own limit is below the producer's: the broker refuses the record.
    settings = settings_for_test(kafka_bootstrap)
    await KafkaLedger(settings).ensure_topics()
    async with admin_client(kafka_bootstrap) as admin:
        topic = settings.topic(Stream.SUBSCRIBERS)
        limit = {**topic_configs(settings), "max.message.bytes": "4096"}  # a whole new set
        await altered(admin, topic, limit)
    async with started_ledger(settings) as ledger:
        lowered_since_read(ledger)
        large = replace(message_sent(new_phone()), message_id="x" * 10_000)

        with pytest.raises(EventTooLarge, match="refused a record as too large") as refused:
            await ledger.append([large])

        assert not isinstance(refused.value, ConnectionError)  # not "retry"


async def test_an_event_over_the_topics_limit_sends_none_of_its_append(
    kafka_bootstrap: str,
) -> None:
    """The broker refused such a record alone, after writing the others of its append
    (a batched send answered "nothing written" with two of three recorded)."""
    settings = settings_for_test(kafka_bootstrap)
    await KafkaLedger(settings).ensure_topics()
    async with admin_client(kafka_bootstrap) as admin:
        topic = settings.topic(Stream.SUBSCRIBERS)
        limit = {**topic_configs(settings), "max.message.bytes": "4096"}
        await altered(admin, topic, limit)
    async with started_ledger(settings) as ledger:
        large = replace(message_sent(new_phone()), message_id="x" * 5_000)

        with pytest.raises(EventTooLarge, match="larger than a record may be") as refused:
            await ledger.append([message_sent(new_phone()), large, message_sent(new_phone())])

        assert refused.value.places == (1,)
        assert sum((await ledger.end_offsets(Stream.SUBSCRIBERS)).values()) == 0


async def test_a_partition_takes_appends_again_after_the_broker_refused_one_of_them(
    kafka_bootstrap: str,
) -> None:
    """A batch the producer gave up on has spent a sequence number the broker never
    saw: aiokafka's idempotent producer then had every later append to that
    partition refused (OutOfOrderSequenceNumber) until the process restarted. A
    broker restart leaves such batches too (they expire while no leader is known);
    a batch refused as too large is the way to make one at will."""
    settings = settings_for_test(kafka_bootstrap)
    await KafkaLedger(settings).ensure_topics()
    async with admin_client(kafka_bootstrap) as admin:
        topic = settings.topic(Stream.SUBSCRIBERS)
        limit = {**topic_configs(settings), "max.message.bytes": "4096"}
        await altered(admin, topic, limit)
    renewals: list[None] = []
    async with started_ledger(settings, renewed=lambda: renewals.append(None)) as ledger:
        lowered_since_read(ledger)
        phone = new_phone()
        before = await ledger.append([message_sent(phone, 0)])
        with pytest.raises(EventTooLarge):
            await ledger.append([replace(message_sent(phone, 1), message_id="x" * 10_000)])
        assert not renewals  # renewed at the next append, not when the batch fails

        after = [await ledger.append([message_sent(phone, n)]) for n in (2, 3)]

        assert [r[0].position.partition for r in after] == [before[0].position.partition] * 2
        assert after[0][0].position.offset < after[1][0].position.offset
        assert len(renewals) == 1  # once for the failed batch, not for each append after


async def test_appends_made_at_once_are_each_answered_with_their_own_records(
    kafka_bootstrap: str,
) -> None:
    """Appends of one turn of the event loop go to the producer together; each is
    still answered with its own events' positions, as the topic holds them."""
    settings = settings_for_test(kafka_bootstrap)
    async with started_ledger(settings) as ledger:
        batches = [[message_sent(new_phone(), n) for n in range(1 + i % 3)] for i in range(24)]
        answers = await asyncio.gather(*(ledger.append(b) for b in batches))

        stored = await read_all(ledger, Stream.SUBSCRIBERS)

    for batch, answer in zip(batches, answers, strict=True):
        assert [r.event for r in answer] == batch
    held = {(p, r.position.offset): r.event for p, rs in stored.items() for r in rs}
    for answer in answers:
        for r in answer:
            assert held[(r.position.partition, r.position.offset)] == r.event


async def test_an_append_the_broker_refuses_fails_alone_among_appends_made_at_once(
    kafka_bootstrap: str,
) -> None:
    settings = settings_for_test(kafka_bootstrap)
    await KafkaLedger(settings).ensure_topics()
    async with admin_client(kafka_bootstrap) as admin:
        topic = settings.topic(Stream.SUBSCRIBERS)
        limit = {**topic_configs(settings), "max.message.bytes": "4096"}
        await altered(admin, topic, limit)
    async with started_ledger(settings) as ledger:
        large = replace(message_sent(new_phone()), message_id="x" * 10_000)
        others = [[campaign_defined()] for _ in range(6)]  # the campaigns' topic: no limit

        outcomes = await asyncio.gather(
            *(ledger.append(b) for b in [others[0], [large], *others[1:]]),
            return_exceptions=True,
        )

        assert isinstance(outcomes[1], EventTooLarge)
        kept = [o for i, o in enumerate(outcomes) if i != 1]
        assert [[r.event for r in o] for o in kept] == others  # type: ignore[union-attr]
        assert sum((await ledger.end_offsets(Stream.CAMPAIGNS)).values()) == len(others)


async def test_appends_made_at_once_fit_a_topic_s_own_record_limit(
    kafka_bootstrap: str,
) -> None:
    """The broker's limit (``max.message.bytes``) is on a batch of records: appends of
    a partition made at once, each far below it, went as one batch above it, and each
    was refused as too large (INVALID_ARGUMENT, never retried: a STOP so refused was
    lost). The producer's batches now stay within the topics' limit."""
    settings = settings_for_test(kafka_bootstrap)
    await KafkaLedger(settings).ensure_topics()
    async with admin_client(kafka_bootstrap) as admin:
        topic = settings.topic(Stream.SUBSCRIBERS)
        limit = {**topic_configs(settings), "max.message.bytes": "4096"}
        await altered(admin, topic, limit)
    async with started_ledger(settings) as ledger:
        phone = new_phone()  # one partition
        answers = await asyncio.gather(
            *(ledger.append([message_sent(phone, n)]) for n in range(64)),
            return_exceptions=True,
        )

    assert [a for a in answers if isinstance(a, BaseException)] == []


async def test_appends_made_at_once_fit_a_record_limit_lowered_while_running(
    kafka_bootstrap: str,
) -> None:
    """The topics' ``max.message.bytes`` was read only at start: lowered under a
    running ledger, appends made at once to one partition went as one batch above
    the new limit, and each was refused as too large (INVALID_ARGUMENT, never
    retried; a STOP so refused was held for review, any other write lost). The
    ledger now reads the limit again and sends them in smaller batches, each record
    once and one append's records in order; a record too large on its own is still
    refused as such."""
    settings = settings_for_test(kafka_bootstrap)
    async with started_ledger(settings) as ledger:
        phone = new_phone()  # one partition
        await ledger.append([message_sent(phone, -1)])  # the producer made
        async with admin_client(kafka_bootstrap) as admin:
            topic = settings.topic(Stream.SUBSCRIBERS)
            limit = {**topic_configs(settings), "max.message.bytes": "4096"}
            await altered(admin, topic, limit)
        single = [[message_sent(phone, n)] for n in range(32)]
        many = [message_sent(phone, n) for n in range(32, 64)]
        answers = await asyncio.gather(
            *(ledger.append(events) for events in [*single, many]), return_exceptions=True
        )
        assert [a for a in answers if isinstance(a, BaseException)] == []
        large = replace(message_sent(phone, 99), message_id="x" * 5_000)
        # The limit read again: refused before it is sent.
        with pytest.raises(EventTooLarge, match="larger than a record may be"):
            await ledger.append([large])
        (written,) = [
            [r.event for r in part]
            for part in (await read_all(ledger, Stream.SUBSCRIBERS)).values()
            if part
        ]

    ids = [e.event_id for e in written[1:]]
    assert sorted(ids) == sorted(e.event_id for e in [*(s for [s] in single), *many])
    assert [i for i in ids if i in {e.event_id for e in many}] == [e.event_id for e in many]
