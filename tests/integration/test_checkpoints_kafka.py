"""The checkpoint writer on the real Kafka topics: it reads the records as stored,
signs checkpoints into their topic, and a new writer resumes after them."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from ledger.chain import Chain
from ledger.ports import Stream
from services.adapters.kafka_audit import KafkaCheckpoints, KafkaRecords
from services.adapters.kafka_ledger import KafkaLedger, topic_configs
from services.checkpoints import Checkpointer, SigningKey
from services.settings import KafkaLedgerSettings
from tests.builders import granted
from tests.infra.topic_configs import altered

pytestmark = [pytest.mark.kafka, pytest.mark.asyncio(loop_scope="session")]

T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


class Always:
    """The writer's turn, always this process's."""

    async def held(self) -> bool:
        return True

    async def close(self) -> None:
        pass


def _settings(kafka_bootstrap: str) -> KafkaLedgerSettings:
    return KafkaLedgerSettings(
        bootstrap_servers=kafka_bootstrap,
        topic_prefix=f"it-{uuid.uuid4().hex[:8]}.",
        subscriber_partitions=2,
        replication_factor=1,
        min_insync_replicas=1,
        request_timeout_s=10,
    )


Started = tuple[KafkaLedgerSettings, KafkaLedger, KafkaRecords, KafkaCheckpoints, SigningKey]


@asynccontextmanager
async def _started(
    kafka_bootstrap: str, tmp_path: Path, renewed: Callable[[], None] | None = None
) -> AsyncIterator[Started]:
    """A ledger on topics of its own, its records and checkpoint store started, and a
    signing key: what a checkpoint writer needs."""
    settings = _settings(kafka_bootstrap)
    ledger = KafkaLedger(settings)
    await ledger.ensure_topics()
    await ledger.start()
    records, store = KafkaRecords(settings), KafkaCheckpoints(settings, renewed=renewed)
    await records.start()
    await store.start()
    try:
        yield settings, ledger, records, store, SigningKey.generate(tmp_path / "key.pem")
    finally:
        await store.close()
        await records.close()
        await ledger.close()


async def test_checkpoints_cover_the_records_as_stored_and_a_writer_resumes(
    kafka_bootstrap, tmp_path
):
    async with _started(kafka_bootstrap, tmp_path) as (_, ledger, records, store, key):
        await ledger.append([granted(phone=f"+1415555{n:04d}") for n in range(6)])
        first = await Checkpointer(records, store, key, Always(), lambda: T0, 0.1).round()
        ends = await ledger.end_offsets(Stream.SUBSCRIBERS)
        assert {c.partition: c.end for c in first if c.stream == "subscribers"} == ends
        for c in first:  # the heads are those of the records as stored, from offset 0
            chain = Chain(c.stream, c.partition)
            async for r in records.records(c.stream, c.partition, 0, c.end):
                chain.add(r)
            assert c.start == 0 and chain.head == c.head

        recorded = await ledger.append([granted(phone="+14155559999")])
        where = ("subscribers", recorded[0].position.partition)
        second = await Checkpointer(records, store, key, Always(), lambda: T0, 0.1).round()
        assert [(c.stream, c.partition, c.start, c.end) for c in second] == [
            (*where, ends[where[1]], ends[where[1]] + 1)
        ]
        assert [c async for c in store.every()] == first + second


async def test_checkpoints_are_published_again_after_the_broker_refused_some(
    kafka_bootstrap, tmp_path
):
    """A publish the producer gave up on (refused here; after a broker restart, one
    that waited too long for a leader) spent a sequence number the broker never
    saw, and aiokafka's idempotent producer then had every later checkpoint
    refused (OutOfOrderSequenceNumber) until the process restarted."""
    renewals: list[None] = []
    started = _started(kafka_bootstrap, tmp_path, renewed=lambda: renewals.append(None))
    async with started as (settings, ledger, records, store, key):
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            writer = Checkpointer(records, store, key, Always(), lambda: T0, 0.1)
            await ledger.append([granted(phone=f"+1415555{n:04d}") for n in range(4)])
            first = await writer.round()
            await ledger.append([granted(phone="+14155559999")])
            await _configs(admin, settings, {"max.message.bytes": "100"})
            with pytest.raises(KafkaError):
                await writer.round()
            await _configs(admin, settings, {})
            assert not renewals  # the first start is no renewal

            second = await writer.round()

            assert second and [c async for c in store.every()] == first + second
            assert len(renewals) == 1
        finally:
            await admin.close()


async def _configs(
    admin: AIOKafkaAdminClient, settings: KafkaLedgerSettings, changes: dict[str, str]
) -> None:
    """Set the checkpoint topic's whole config set (altering replaces it): a ledger
    topic's, with ``changes``."""
    await altered(admin, settings.checkpoint_topic_name(), {**topic_configs(settings), **changes})
