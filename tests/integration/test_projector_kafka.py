"""``KafkaProjector`` against a real broker and a real PostgreSQL: events appended
through ``KafkaLedger`` are projected exactly, the view's stored positions (not
Kafka's committed offsets) decide where it resumes, and two instances in one group
hand partitions over without losing or double-applying anything."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence

import asyncpg
import pytest
import pytest_asyncio

from ledger.events import LedgerEvent, Recorded
from ledger.ports import ConsistencyToken, Stream
from services.adapters.kafka_ledger import KafkaLedger
from services.adapters.kafka_projector import KafkaProjector
from services.adapters.postgres_view import PROJECTION_TABLES, PostgresConsentView
from services.projector import rebuild
from services.settings import KafkaLedgerSettings
from tests.conformance.view_suite import expected_states, generate_events
from tests.integration.waiting import lag, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

# Short heartbeats so a rebalance after an instance leaves takes well under a second.
FAST_GROUP = {"heartbeat_interval_ms": 300, "session_timeout_ms": 6000}


@pytest_asyncio.fixture(loop_scope="session")
async def ledger(kafka_bootstrap: str) -> AsyncIterator[KafkaLedger]:
    settings = KafkaLedgerSettings(
        bootstrap_servers=kafka_bootstrap,
        topic_prefix=f"test-{uuid.uuid4().hex[:10]}.",
        subscriber_partitions=4,
        campaign_partitions=1,
        replication_factor=1,
        min_insync_replicas=1,
        request_timeout_s=10,
        append_timeout_s=15,
    )
    ledger = KafkaLedger(settings)
    await ledger.ensure_topics()
    await ledger.start()
    try:
        yield ledger
    finally:
        await asyncio.wait_for(ledger.close(), 30)


@contextlib.asynccontextmanager
async def running(projector: KafkaProjector) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(projector.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)


async def append(ledger: KafkaLedger, events: Sequence[LedgerEvent]) -> list[Recorded]:
    out: list[Recorded] = []
    for start in range(0, len(events), 500):
        out.extend(await ledger.append(events[start : start + 500]))
    return out


async def assert_projection_is_exact(
    view: PostgresConsentView, ledger: KafkaLedger, recorded: list[Recorded]
) -> None:
    expected = expected_states(recorded)
    for brand in sorted({b for _, b in expected}):
        phones = sorted(p for p, b in expected if b == brand)
        assert await view.subscriber_states(brand, phones) == {
            p: expected[p, brand] for p in phones
        }
    copies = await view.table_dump("ledger_event_copy")
    assert len(copies) == len({r.event.event_id for r in recorded})
    for stream in Stream:
        assert set((await lag(view, ledger, stream)).values()) == {0}


async def test_events_appended_through_kafka_are_projected_exactly(
    ledger: KafkaLedger, pool: asyncpg.Pool
) -> None:
    view = PostgresConsentView(pool)
    projector = KafkaProjector(
        ledger.settings, view, group_id=f"g-{uuid.uuid4().hex[:8]}", consumer_options=FAST_GROUP
    )
    async with running(projector):
        recorded = await append(ledger, generate_events(1500, phones=150, brands=3, campaigns=2))
        # A client retry that reached the ledger twice: the view folds it once.
        recorded += await append(ledger, [r.event for r in recorded[700:710]])

        assert await wait_for(view, ConsistencyToken.after(recorded), timeout=60)

    await assert_projection_is_exact(view, ledger, recorded)
    first_copies: dict[uuid.UUID, Recorded] = {}
    for r in recorded:
        first_copies.setdefault(r.event.event_id, r)
    phones = Counter(getattr(r.event, "phone", None) for r in recorded[700:710]) - Counter([None])
    phone = phones.most_common(1)[0][0]
    # The same positions and broker recorded_at that KafkaLedger.append returned.
    assert await view.history(phone) == [
        r for r in first_copies.values() if getattr(r.event, "phone", None) == phone
    ]


async def test_the_stored_positions_decide_not_the_committed_offsets(
    ledger: KafkaLedger, pool: asyncpg.Pool
) -> None:
    view = PostgresConsentView(pool)
    group = f"g-{uuid.uuid4().hex[:8]}"
    recorded = await append(ledger, generate_events(600, phones=80, brands=2, campaigns=2))
    async with running(KafkaProjector(ledger.settings, view, group_id=group)):
        assert await wait_for(view, ConsistencyToken.after(recorded), timeout=60)
    incremental = {t: await view.table_dump(t) for t in PROJECTION_TABLES}

    # The group has committed every offset; an emptied view must still be refilled.
    await view.reset()
    async with running(KafkaProjector(ledger.settings, view, group_id=group)):
        assert await wait_for(view, ConsistencyToken.after(recorded), timeout=60)

    assert {t: await view.table_dump(t) for t in PROJECTION_TABLES} == incremental
    # And a rebuild that reads through KafkaLedger.read gives the very same rows.
    assert await rebuild(ledger, view) == len(recorded)
    assert {t: await view.table_dump(t) for t in PROJECTION_TABLES} == incremental


async def test_a_second_instance_takes_over_when_one_stops_mid_stream(
    ledger: KafkaLedger, pool: asyncpg.Pool
) -> None:
    events = generate_events(4000, phones=400, brands=3, campaigns=2, seed=5)
    group = f"g-{uuid.uuid4().hex[:8]}"
    first = KafkaProjector(
        ledger.settings,
        PostgresConsentView(pool),
        group_id=group,
        max_records=100,
        consumer_options=FAST_GROUP,
    )
    second_view = PostgresConsentView(pool)
    second = KafkaProjector(
        ledger.settings, second_view, group_id=group, max_records=100, consumer_options=FAST_GROUP
    )
    recorded = await append(ledger, events[:1000])
    async with running(second):
        first_task = asyncio.create_task(first.run())
        try:
            await _until(lambda: bool(first.assignment()) and bool(second.assignment()))
            assert not first.assignment() & second.assignment()
            taken_by_first = first.assignment()
            recorded += await append(ledger, events[1000:2500])
            await asyncio.sleep(0.2)  # both are mid-stream now
        finally:
            first_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(first_task, 30)
        recorded += await append(ledger, events[2500:])

        assert await wait_for(second_view, ConsistencyToken.after(recorded), timeout=60)
        assert taken_by_first <= second.assignment()

    await assert_projection_is_exact(second_view, ledger, recorded)


async def _until(condition: object, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_a_projector_killed_without_leaving_the_group_loses_and_doubles_nothing(
    ledger: KafkaLedger, pool: asyncpg.Pool, postgres_dsn: str
) -> None:
    """SIGKILL: no clean leave, no last commit. The survivor gets the partitions once
    the dead member's session expires, and resumes from the positions in PostgreSQL."""
    import signal
    import sys

    events = generate_events(3000, phones=300, brands=2, campaigns=2, seed=11)
    group = f"g-{uuid.uuid4().hex[:8]}"
    victim = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.integration.projector_process",
        ledger.settings.bootstrap_servers,
        ledger.settings.topic_prefix,
        group,
        postgres_dsn,
        stdout=asyncio.subprocess.PIPE,
    )
    survivor_view = PostgresConsentView(pool)
    survivor = KafkaProjector(
        ledger.settings, survivor_view, group_id=group, max_records=50, consumer_options=FAST_GROUP
    )
    try:
        assert victim.stdout is not None
        await asyncio.wait_for(victim.stdout.readline(), 60)
        async with running(survivor):
            # the group has split the 4 + 1 partitions: the victim holds some of them
            await _until(lambda: 0 < len(survivor.assignment()) < 5, timeout=60)
            recorded = await append(ledger, events[:2000])
            await asyncio.sleep(0.3)  # the victim is mid-stream on its partitions
            victim.send_signal(signal.SIGKILL)
            await victim.wait()
            recorded += await append(ledger, events[2000:])
            assert await wait_for(survivor_view, ConsistencyToken.after(recorded), timeout=90)
            assert len(survivor.assignment()) == 5
    finally:
        if victim.returncode is None:
            victim.kill()
            await victim.wait()
    await assert_projection_is_exact(survivor_view, ledger, recorded)
