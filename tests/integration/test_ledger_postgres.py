"""``PostgresLedger`` against a real PostgreSQL: the conformance suite, then what only
it needs (the recorder's table really is append-only; its NOTIFY wakes subscribers;
two processes share one gapless sequence; a ledger an older version wrote in
``ledger_events`` is carried over by the migration, once)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ledger.ports import Stream
from services.adapters.migrations import MIGRATIONS_DIR, migrate
from services.adapters.postgres_ledger import PostgresLedger
from services.wire.codec import encode_event
from tests.conformance.ledger_suite import (
    LedgerSuite,
    campaign_defined,
    collect,
    message_sent,
    new_phone,
)

pytestmark = pytest.mark.postgres


class TestPostgresLedger(LedgerSuite):
    @pytest.fixture
    async def ledger(self, pool: asyncpg.Pool, postgres_dsn: str) -> AsyncIterator[PostgresLedger]:
        ledger = await PostgresLedger.open(pool, postgres_dsn)
        yield ledger
        await ledger.close()


@pytest.fixture
async def ledger(pool: asyncpg.Pool, postgres_dsn: str) -> AsyncIterator[PostgresLedger]:
    ledger = await PostgresLedger.open(pool, postgres_dsn)
    yield ledger
    await ledger.close()


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ledger_stored_events SET topic = 'ledger.events:ConsentGranted'",
        "UPDATE ledger_stored_events SET state = ''::bytea WHERE originator_version = 0",
        "UPDATE ledger_stored_events SET originator_version = originator_version + 1",
        "DELETE FROM ledger_stored_events",
        "DELETE FROM ledger_stored_events WHERE originator_id = 'campaigns:0'",
        "TRUNCATE ledger_stored_events",
    ],
)
async def test_recorded_events_cannot_be_changed_or_removed(
    pool: asyncpg.Pool, ledger: PostgresLedger, statement: str
) -> None:
    recorded = await ledger.append([message_sent(new_phone()), campaign_defined()])

    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await pool.execute(statement)

    assert await ledger.read(Stream.SUBSCRIBERS, 0, 0) == recorded[:1]
    assert await ledger.read(Stream.CAMPAIGNS, 0, 0) == recorded[1:]


async def test_events_are_stored_by_the_recorder_as_the_envelope_kafka_carries(
    pool: asyncpg.Pool, ledger: PostgresLedger
) -> None:
    sent, defined = message_sent(new_phone()), campaign_defined()
    await ledger.append([sent, defined])

    rows = await pool.fetch(
        "SELECT originator_id, originator_version, topic, state FROM ledger_stored_events "
        "ORDER BY notification_id"
    )

    assert [tuple(row) for row in rows] == [
        ("subscribers:0", 0, "ledger.events:MessageSent", encode_event(sent)),
        ("campaigns:0", 0, "ledger.events:CampaignDefined", encode_event(defined)),
    ]


async def test_a_subscriber_wakes_on_append_without_waiting_for_its_poll(
    ledger: PostgresLedger,
) -> None:
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
    """Two processes appending to one database (two app instances on one laptop):
    each numbers from the end it last saw, and the one that loses an offset to the
    other reads the end again."""
    other_pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=4)
    one = await PostgresLedger.open(pool, postgres_dsn)
    other = await PostgresLedger.open(other_pool, postgres_dsn)
    try:
        phone = new_phone()
        results = await asyncio.gather(
            *(
                ledger.append([message_sent(phone, 10 * i + n) for n in range(3)])
                for i in range(6)
                for ledger in (one, other)
            )
        )
        stored = await one.read(Stream.SUBSCRIBERS, 0, 0)
    finally:
        await one.close()
        await other.close()
        await other_pool.close()

    offsets = sorted(r.position.offset for rs in results for r in rs)
    assert offsets == list(range(36))
    by_offset = sorted((r for rs in results for r in rs), key=lambda r: r.position.offset)
    assert stored == by_offset
    stamps = [r.recorded_at for r in by_offset]
    assert stamps == sorted(stamps)  # recorded_at never goes backwards along a stream


_OLD_INSERT = """
INSERT INTO ledger_events (stream, partition, "offset", event_id, event_type, payload, recorded_at)
VALUES ($1, 0, $2, $3, $4, $5, $6)
"""


async def _old_database(postgres_dsn: str, tmp_path: Path) -> asyncpg.Pool:
    """A database as an older version left it: migrated up to 0010, its ledger in
    ``ledger_events`` (rows as that version's ``append`` wrote them)."""
    old = tmp_path / "migrations"
    old.mkdir()
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if int(path.name[:4]) <= 10:
            shutil.copy(path, old / path.name)
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=4)
    await migrate(pool, old)
    return pool


async def test_an_older_versions_ledger_is_carried_over_at_the_same_offsets(
    postgres_dsn: str, tmp_path: Path
) -> None:
    pool = await _old_database(postgres_dsn, tmp_path)
    at = datetime(2026, 5, 1, 12, tzinfo=UTC)
    phone = new_phone()
    subscriber_events = [message_sent(phone, n) for n in range(3)]
    campaign_events = [campaign_defined("promo"), campaign_defined("news")]
    # The two streams interleaved in time, as appends of both would be.
    old_rows = [
        ("subscribers", n, e, at + timedelta(seconds=2 * n))
        for n, e in enumerate(subscriber_events)
    ] + [
        ("campaigns", n, e, at + timedelta(seconds=2 * n + 1))
        for n, e in enumerate(campaign_events)
    ]
    try:
        for stream, offset, event, recorded_at in old_rows:
            await pool.execute(
                _OLD_INSERT, stream, offset, event.event_id, event.EVENT_TYPE,
                encode_event(event), recorded_at,
            )  # fmt: skip

        applied = await migrate(pool)
        again = await migrate(pool)
        ledger = await PostgresLedger.open(pool, postgres_dsn)
        try:
            subscribers = await ledger.read(Stream.SUBSCRIBERS, 0, 0)
            campaigns = await ledger.read(Stream.CAMPAIGNS, 0, 0)
            ends = await ledger.every_end_offset()
            appended = await ledger.append([message_sent(phone, 3), campaign_defined("more")])
            subscription = ledger.subscribe(Stream.SUBSCRIBERS, {0: 0})
            try:
                followed = await collect(subscription, 4)
            finally:
                await subscription.aclose()  # type: ignore[attr-defined]
        finally:
            await ledger.close()
        old_table = await pool.fetchval("SELECT to_regclass('ledger_events')")
        order = await pool.fetch(
            "SELECT originator_id, originator_version FROM ledger_stored_events "
            "ORDER BY notification_id"
        )
    finally:
        await pool.close()

    assert applied[0] == "0011_ledger_recorder" and again == []
    assert [(r.event, r.position.offset, r.recorded_at) for r in subscribers] == [
        (e, n, t) for s, n, e, t in old_rows if s == "subscribers"
    ]
    assert [(r.event, r.position.offset, r.recorded_at) for r in campaigns] == [
        (e, n, t) for s, n, e, t in old_rows if s == "campaigns"
    ]
    assert ends == {Stream.SUBSCRIBERS: {0: 3}, Stream.CAMPAIGNS: {0: 2}}
    assert [r.position.offset for r in appended] == [3, 2]
    assert [r.event for r in followed] == [*subscriber_events, appended[0].event]
    assert old_table is None  # the facts are in one place only
    # The application sequence follows the old rows' times, then the new append.
    assert [tuple(row) for row in order] == [
        ("subscribers:0", 0), ("campaigns:0", 0), ("subscribers:0", 1), ("campaigns:0", 1),
        ("subscribers:0", 2), ("subscribers:0", 3), ("campaigns:0", 2),
    ]  # fmt: skip


async def test_an_insert_the_recorder_retried_after_it_was_committed_is_not_appended_twice(
    pool: asyncpg.Pool, ledger: PostgresLedger
) -> None:
    """The recorder retries an insert whose connection failed, and the first try may
    have been committed: the retry then meets its own rows at those offsets."""
    first = await ledger.append([message_sent(new_phone())])
    insert = ledger._recorder.insert_events

    def committed_then_retried(stored: Any, **kwargs: Any) -> Any:
        insert(stored, **kwargs)
        return insert(stored, **kwargs)  # raises IntegrityError, as the retry would

    ledger._recorder.insert_events = committed_then_retried  # type: ignore[method-assign]
    sent = message_sent(new_phone())
    recorded = await ledger.append([sent])
    ledger._recorder.insert_events = insert  # type: ignore[method-assign]
    after = await ledger.append([message_sent(new_phone())])

    assert [(r.event, r.position.offset) for r in recorded] == [(sent, 1)]
    assert await ledger.read(Stream.SUBSCRIBERS, 0, 0) == first + recorded + after
    assert [r.position.offset for r in after] == [2]


async def test_an_append_larger_than_one_insert_is_stored_whole_while_followed(
    ledger: PostgresLedger,
) -> None:
    # Inserts of some 3,000 events or more hung in the recorder's pipeline mode (with a
    # subscriber following, at once): an append of 4,800 is now inserts of 1,000.
    followed: list[int] = []

    async def follow() -> None:
        async for batch in ledger.subscribe(Stream.SUBSCRIBERS, {}):
            followed.append(len(batch))

    following = asyncio.create_task(follow())
    try:
        phones = [new_phone() for _ in range(100)]
        events = [message_sent(p, n) for n in range(48) for p in phones]

        recorded = await ledger.append(events)

        assert [r.event for r in recorded] == events
        assert [r.position.offset for r in recorded] == list(range(len(events)))
        assert await ledger.end_offsets(Stream.SUBSCRIBERS) == {0: len(events)}
    finally:
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await following


async def test_events_appended_again_are_answered_where_they_are_stored(
    ledger: PostgresLedger,
) -> None:
    """An append tried again after an unknown outcome (acknowledged late) carries the
    same event ids: the ledger stores each once, and answers the events it held with
    their rows."""
    phone = new_phone()
    first, second, third = (message_sent(phone, n) for n in range(3))
    recorded = await ledger.append([first, second])

    again = await ledger.append([first, second])
    partly = await ledger.append([first, third, third])
    after = await ledger.append([message_sent(phone, 3)])

    assert again == recorded
    assert partly[0] == recorded[0]
    assert partly[1] == partly[2]  # an event twice in one append is stored once too
    assert (partly[1].event, partly[1].position.offset) == (third, 2)
    assert [x.position.offset for x in after] == [3]  # no gap where the repeats were
    stored = await ledger.read(Stream.SUBSCRIBERS, 0, 0)
    assert [x.event for x in stored] == [first, second, third, after[0].event]


async def test_a_repeat_held_by_another_process_is_not_stored_again(
    pool: asyncpg.Pool, postgres_dsn: str, ledger: PostgresLedger
) -> None:
    """Two processes on one database: one appends what the other stored."""
    other = await PostgresLedger.open(pool, postgres_dsn)
    try:
        sent = message_sent(new_phone())
        stored = await other.append([sent])
        await ledger.append([message_sent(new_phone())])  # this one's ends move on
        again = await ledger.append([sent, message_sent(new_phone())])
    finally:
        await other.close()

    assert again[0] == stored[0]
    assert again[1].position.offset == 2
    assert len(await ledger.read(Stream.SUBSCRIBERS, 0, 0)) == 3


async def test_a_database_holding_repeated_events_still_starts(
    postgres_dsn: str, tmp_path: Path
) -> None:
    """A ledger an older version stored some event twice in (an import tried again)
    takes the event-id index: the rows written before keep no id, and read as they
    did."""
    old = tmp_path / "migrations"
    old.mkdir()
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if int(path.name[:4]) < 23:
            shutil.copy(path, old / path.name)
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=4)
    try:
        await migrate(pool, old)
        phone = new_phone()
        twice = message_sent(phone, 0)
        for offset in range(2):
            await pool.execute(
                "INSERT INTO ledger_stored_events (originator_id, originator_version, topic, state)"
                " VALUES ('subscribers:0', $1, 'ledger.events:MessageSent', $2)",
                offset,
                encode_event(twice),
            )
        applied = await migrate(pool)
        ledger = await PostgresLedger.open(pool, postgres_dsn)
        try:
            appended = await ledger.append([message_sent(phone, 1)])
            again = await ledger.append([appended[0].event])
            stored = await ledger.read(Stream.SUBSCRIBERS, 0, 0)
        finally:
            await ledger.close()
    finally:
        await pool.close()

    assert applied[0] == "0023_ledger_event_ids", applied
    assert [r.event for r in stored] == [twice, twice, appended[0].event]
    assert again == appended
