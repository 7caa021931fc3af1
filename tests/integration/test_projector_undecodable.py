"""A record on a real Kafka topic that this code cannot read (an event type it does
not know, a version of a class newer than it knows, or a field it does not know)
stops the projectors at it, with the reason, rather than being skipped or read as
less than it says: the view never moves past a fact it did not fold, as a skipped
opt-out would leave a send allowed."""

from __future__ import annotations

import uuid

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from consent.v1 import ledger_pb2

from ledger.ports import Stream
from services.adapters.kafka_ledger import _key, encode_event, record_headers
from services.adapters.kafka_projector import KafkaProjector
from services.adapters.postgres_view import PostgresConsentView
from services.projector import Projector, rebuild
from services.wire.codec import WireFormatError
from tests.builders import at, granted, revoked, sent
from tests.integration.test_ledger_kafka import settings_for_test, started_ledger

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

PHONE = "+14155550123"


def unreadable(kind: str) -> bytes:
    """An opt-out as a reader this code cannot read would have written it."""
    env = ledger_pb2.EventEnvelope()
    env.ParseFromString(encode_event(revoked(at(5), phone=PHONE)))
    if kind == "type":
        env.event_type = "ConsentTeleported"
    elif kind == "version":
        env.schema_version = 99
    else:  # a field a newer writer added, its class's version left as it was
        return env.SerializeToString() + bytes([0x98, 0x06, 0x01])  # field 99: 1
    return env.SerializeToString()


@pytest.mark.parametrize("kind", ["type", "version", "field"])
async def test_an_unreadable_event_stops_the_projectors_at_it(
    kafka_bootstrap: str, pool: asyncpg.Pool, kind: str
) -> None:
    settings = settings_for_test(kafka_bootstrap, subscriber_partitions=1)
    async with started_ledger(settings) as ledger:
        before = [granted(at(0), phone=PHONE), sent(at(1), phone=PHONE)]
        await ledger.append(before)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            event = revoked(at(5), phone=PHONE)
            await producer.send_and_wait(
                settings.topic(Stream.SUBSCRIBERS),
                unreadable(kind),
                key=_key(event),
                headers=record_headers(event),
            )
        finally:
            await producer.stop()
        await ledger.append([sent(at(6), phone=PHONE)])
        view = PostgresConsentView(pool)

        with pytest.raises(WireFormatError):
            await Projector(ledger, view).catch_up(batch_size=1)
        # Everything before the unreadable record is applied; nothing past it.
        assert await view.positions(Stream.SUBSCRIBERS) == {0: len(before)}
        assert len(await view.table_dump("ledger_event_copy")) == len(before)

        with pytest.raises(WireFormatError):
            await Projector(ledger, view).catch_up(batch_size=500)
        with pytest.raises(WireFormatError):
            await rebuild(ledger, view, batch_size=1)
        assert await view.positions(Stream.SUBSCRIBERS) == {0: len(before)}

        group = KafkaProjector(settings, view, group_id=f"g-{uuid.uuid4().hex[:8]}")
        await group.start()
        try:
            with pytest.raises(WireFormatError):
                for _ in range(50):  # until the fetch reaches the record
                    await group.step()
        finally:
            await group.stop()
        assert sum((await view.positions(Stream.SUBSCRIBERS)).values()) <= len(before)
