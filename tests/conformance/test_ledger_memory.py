"""``InMemoryLedger`` against the ``EventLog`` conformance suite, plus what only it offers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from ledger.ports import Stream
from services.adapters.memory_ledger import InMemoryLedger
from tests.conformance.ledger_suite import LedgerSuite, message_sent, new_phone


class TestInMemoryLedger(LedgerSuite):
    @pytest.fixture
    async def ledger(self) -> AsyncIterator[InMemoryLedger]:
        ledger = InMemoryLedger(partitions=4)
        yield ledger
        await ledger.close()


async def test_recorded_at_comes_from_the_injected_clock() -> None:
    frozen = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    ledger = InMemoryLedger(clock=lambda: frozen)

    recorded = await ledger.append([message_sent(new_phone())])

    assert recorded[0].recorded_at == frozen


async def test_phones_spread_over_partitions_the_same_way_in_every_instance() -> None:
    phones = [new_phone() for _ in range(40)]
    one, other = InMemoryLedger(partitions=4), InMemoryLedger(partitions=4)

    placed = [r.position.partition for r in await one.append([message_sent(p) for p in phones])]
    again = [r.position.partition for r in await other.append([message_sent(p) for p in phones])]

    assert placed == again
    assert len(set(placed)) == 4
    assert await one.partitions(Stream.SUBSCRIBERS) == [0, 1, 2, 3]
    assert await one.partitions(Stream.CAMPAIGNS) == [0]


def test_a_ledger_needs_at_least_one_partition() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        InMemoryLedger(partitions=0)
