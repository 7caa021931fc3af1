"""How ``KafkaLedger.append`` settles an append from its records' deliveries, on a
stand-in producer whose deliveries the test completes in an order of its choosing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError
from aiokafka.structs import RecordMetadata

from ledger.events import MessageKind, MessageSent, event_id_for
from services.adapters.kafka_ledger import KafkaLedger
from services.settings import KafkaLedgerSettings

PARTITIONS = 12


class CountedDelivery(asyncio.Future[RecordMetadata]):
    """A delivery that counts how often it is asked whether it is done."""

    asked = 0

    def done(self) -> bool:
        CountedDelivery.asked += 1
        return super().done()


class StandInProducer:
    """Takes records as aiokafka's producer does (a future each), acknowledges none
    until the test says so."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[CountedDelivery, str]] = []

    async def send(self, topic: str, value: bytes, **_: Any) -> CountedDelivery:
        delivery = CountedDelivery()
        self.deliveries.append((delivery, topic))
        return delivery

    def acknowledge(self, index: int) -> None:
        delivery, topic = self.deliveries[index]
        delivery.set_result(
            RecordMetadata(topic, index % PARTITIONS, None, index, 1_700_000_000_000, -1, 0)
        )


def _sends(count: int) -> list[MessageSent]:
    return [
        MessageSent(
            event_id=event_id_for(f"settle-{i}"),
            occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
            phone=f"+1415555{i:04d}",
            brand="acme",
            campaign="promo",
            message_id=f"m-{i}",
            kind=MessageKind.REGULAR,
        )
        for i in range(count)
    ]


def _ledger(producer: StandInProducer) -> KafkaLedger:
    ledger = KafkaLedger(KafkaLedgerSettings(bootstrap_servers="unused:9092"))
    ledger._producer = producer  # type: ignore[assignment]
    return ledger


async def _sent(ledger: KafkaLedger, producer: StandInProducer, count: int) -> asyncio.Task[Any]:
    appended = asyncio.ensure_future(ledger.append(_sends(count)))
    while len(producer.deliveries) < count:
        await asyncio.sleep(0)
    return appended


async def test_an_append_of_many_records_settles_in_a_step_a_record() -> None:
    """Acknowledged first to last, each record's acknowledgement used to ask every
    delivery before it whether it was done: half a million questions for 1,000."""
    producer = StandInProducer()
    ledger = _ledger(producer)
    appended = await _sent(ledger, producer, 1_000)
    CountedDelivery.asked = 0
    for i in range(1_000):
        producer.acknowledge(i)
        await asyncio.sleep(0)
    recorded = await appended
    assert [r.position.offset for r in recorded] == list(range(1_000))
    assert CountedDelivery.asked <= 4 * 1_000


async def test_an_append_waits_for_its_last_record_in_any_order() -> None:
    producer = StandInProducer()
    ledger = _ledger(producer)
    appended = await _sent(ledger, producer, 30)
    for i in range(29, 0, -1):  # all but the first
        producer.acknowledge(i)
    await asyncio.sleep(0.01)
    assert not appended.done()
    producer.acknowledge(0)
    recorded = await appended
    assert [r.position.offset for r in recorded] == list(range(30))


async def test_a_failed_record_fails_the_append_once_all_are_settled() -> None:
    producer = StandInProducer()
    ledger = _ledger(producer)
    appended = await _sent(ledger, producer, 10)
    producer.deliveries[3][0].set_exception(KafkaTimeoutError())
    await asyncio.sleep(0.01)
    assert not appended.done()  # the others may still be written: it waits for them
    for i in [*range(3), *range(4, 10)]:
        producer.acknowledge(i)
    with pytest.raises(Exception, match="not acknowledged"):
        await appended
    assert ledger._spent is producer  # the next append renews the producer
