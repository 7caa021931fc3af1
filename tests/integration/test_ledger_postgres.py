"""``PostgresLedger`` against a real PostgreSQL: the conformance suite, then what only
it needs (the table really is append-only; LISTEN/NOTIFY wakes subscribers)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from ledger.ports import Stream
from services.adapters.postgres_ledger import PostgresLedger
from tests.conformance.ledger_suite import LedgerSuite, campaign_defined, message_sent, new_phone

pytestmark = pytest.mark.postgres


class TestPostgresLedger(LedgerSuite):
    @pytest.fixture
    async def ledger(self, pool: asyncpg.Pool) -> AsyncIterator[PostgresLedger]:
        ledger = PostgresLedger(pool)
        yield ledger
        await ledger.close()


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ledger_events SET event_type = 'ConsentGranted'",
        "UPDATE ledger_events SET payload = ''::bytea WHERE \"offset\" = 0",
        "DELETE FROM ledger_events",
        "DELETE FROM ledger_events WHERE stream = 'campaigns'",
        "TRUNCATE ledger_events",
    ],
)
async def test_recorded_events_cannot_be_changed_or_removed(
    pool: asyncpg.Pool, statement: str
) -> None:
    ledger = PostgresLedger(pool)
    recorded = await ledger.append([message_sent(new_phone()), campaign_defined()])

    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await pool.execute(statement)

    assert await ledger.read(Stream.SUBSCRIBERS, 0, 0) == recorded[:1]
    assert await ledger.read(Stream.CAMPAIGNS, 0, 0) == recorded[1:]


async def test_a_subscriber_wakes_on_append_without_waiting_for_its_poll(
    pool: asyncpg.Pool,
) -> None:
    ledger = PostgresLedger(pool)
    subscription = ledger.subscribe(Stream.SUBSCRIBERS, {0: 0}, poll_timeout=60)
    try:
        pending = asyncio.ensure_future(anext(subscription))
        await asyncio.sleep(0.3)  # the subscription has read nothing and is listening
        assert not pending.done()
        recorded = await ledger.append([message_sent(new_phone())])

        batch = await asyncio.wait_for(pending, 5)
    finally:
        await subscription.aclose()  # type: ignore[attr-defined]

    assert batch == recorded


async def test_two_ledgers_on_two_pools_share_one_gapless_sequence(
    pool: asyncpg.Pool, postgres_dsn: str
) -> None:
    """Two processes appending to one database (two app instances on one laptop)."""
    other_pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=4)
    try:
        one, other = PostgresLedger(pool), PostgresLedger(other_pool)
        phone = new_phone()
        results = await asyncio.gather(
            *(
                ledger.append([message_sent(phone, 10 * i + n) for n in range(3)])
                for i in range(6)
                for ledger in (one, other)
            )
        )
    finally:
        await other_pool.close()

    offsets = sorted(r.position.offset for rs in results for r in rs)
    assert offsets == list(range(36))
    stamps = [r.recorded_at for r in sorted((r for rs in results for r in rs),
                                            key=lambda r: r.position.offset)]  # fmt: skip
    assert stamps == sorted(stamps)  # recorded_at never goes backwards along a stream
