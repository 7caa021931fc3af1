"""A Kafka projector that is stopping leaves a last assignment alone."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition

from services.adapters.kafka_projector import KafkaProjector
from services.adapters.memory_view import InMemoryConsentView
from services.settings import KafkaLedgerSettings

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_an_assignment_met_while_the_kafka_projector_stops_is_left_alone() -> None:
    """Leaving the group as it stops can finish a rebalance that assigns partitions
    here one last time; seeking them raised "not started" into aiokafka's log."""
    projector = KafkaProjector(
        KafkaLedgerSettings(bootstrap_servers="unused:9092"), InMemoryConsentView()
    )

    await projector.seek_to_stored_positions([TopicPartition("consent.subscribers", 0)])

    assert projector.assignment() == set()
