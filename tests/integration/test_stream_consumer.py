"""``services.consumer`` against a real broker: every event, in key order, at least once,
across a consumer restart and a broker restart; and the worked example's table."""

from __future__ import annotations

import asyncio
import itertools
import random
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from ledger.events import (
    ANY_BRAND,
    CandidateResolution,
    ConsentResumed,
    LedgerEvent,
    Recorded,
    RevocationCandidateFlagged,
    RevocationCandidateResolved,
    SubjectErased,
    evolved,
)
from ledger.ports import Stream
from services.adapters.kafka_ledger import KafkaLedger
from services.consumer import (
    StreamConsumer,
    StreamConsumerSettings,
    StreamEvent,
    UndecodableRecord,
)
from services.consumer.opt_out_table import OptOutTable, keep_in_sync
from services.settings import KafkaLedgerSettings
from tests.builders import T0, at, flagged, granted, resolved, revoked
from tests.conformance.ledger_suite import message_sent, new_phone
from tests.infra.kafka_broker import KafkaBroker
from tests.integration.test_ledger_kafka import settings_for_test, started_ledger

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[2]


def consumer_settings(ledger: KafkaLedgerSettings, **overrides: object) -> StreamConsumerSettings:
    base = StreamConsumerSettings(
        ledger.bootstrap_servers,
        group_id=f"test-group-{uuid.uuid4().hex[:8]}",
        topic_prefix=ledger.topic_prefix,
        streams=(Stream.SUBSCRIBERS,),
        poll_timeout_s=0.2,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


async def append_until_acknowledged(
    ledger: KafkaLedger, events: list[LedgerEvent]
) -> list[Recorded]:
    """What a client does: retry the same events (the same ids) until acknowledged, so
    an append written but not acknowledged is stored twice."""
    for _ in range(60):
        try:
            return await ledger.append(events)
        except ConnectionError:
            await asyncio.sleep(0.5)
    raise AssertionError("the ledger never acknowledged the append")


async def eventually(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_every_event_arrives_in_key_order_across_a_consumer_and_a_broker_restart(
    private_kafka_broker: KafkaBroker,
) -> None:
    ledger_settings = settings_for_test(private_kafka_broker.bootstrap_servers)
    settings = consumer_settings(ledger_settings, max_batch=7)
    phones = [new_phone() for _ in range(6)]
    rounds = 10
    sequence: dict[uuid.UUID, tuple[str, int]] = {}  # event id -> (phone, round)
    first_run: list[StreamEvent] = []
    second_run: list[StreamEvent] = []

    async with started_ledger(ledger_settings) as ledger:

        async def append_round(n: int) -> None:
            events: list[LedgerEvent] = [message_sent(phone, n) for phone in phones]
            sequence.update({e.event_id: (e.phone, n) for e in events})  # type: ignore[attr-defined]
            await append_until_acknowledged(ledger, events)

        for n in range(rounds // 2):
            await append_round(n)

        # The first consumer stops part-way; whatever it handled is committed.
        stop_first = asyncio.Event()

        async def handle_first(item: StreamEvent) -> None:
            first_run.append(item)
            if len(first_run) >= 10:
                stop_first.set()

        await asyncio.wait_for(StreamConsumer(settings).run(handle_first, stop=stop_first), 60)

        # A new consumer of the same group resumes, and the broker restarts under it.
        stop_second = asyncio.Event()

        async def handle_second(item: StreamEvent) -> None:
            second_run.append(item)

        second = asyncio.create_task(StreamConsumer(settings).run(handle_second, stop=stop_second))
        seen = lambda: {i.event_id for i in first_run + second_run}  # noqa: E731
        first_half = set(sequence)
        await eventually(lambda: first_half <= seen(), 60, "the first half of the events")
        await asyncio.to_thread(private_kafka_broker.restart)
        for n in range(rounds // 2, rounds):
            await append_round(n)
        await eventually(lambda: set(sequence) <= seen(), 90, "every event after the restart")
        stop_second.set()
        await asyncio.wait_for(second, 60)

    assert len(first_run) < len(sequence) // 2, "the first consumer should stop part-way"
    # A graceful stop committed everything handled: the second run started after it.
    assert not {i.event_id for i in first_run} & {i.event_id for i in second_run}
    # Every phone's events, duplicates dropped by event id, in the order appended.
    applied: set[uuid.UUID] = set()
    rounds_seen: dict[str, list[int]] = {phone: [] for phone in phones}
    for item in first_run + second_run:
        if item.event_id in applied:
            continue
        applied.add(item.event_id)
        phone, n = sequence[item.event_id]
        assert item.key == phone.encode()
        rounds_seen[phone].append(n)
    assert rounds_seen == {phone: list(range(rounds)) for phone in phones}


async def test_a_handler_that_fails_gets_the_same_event_again_after_a_restart(
    kafka_bootstrap: str,
) -> None:
    ledger_settings = settings_for_test(kafka_bootstrap, subscriber_partitions=1)
    settings = consumer_settings(ledger_settings)
    phone = new_phone()
    async with started_ledger(ledger_settings) as ledger:
        recorded = await ledger.append([message_sent(phone, n) for n in range(8)])
    ids = [r.event.event_id for r in recorded]
    handled: list[uuid.UUID] = []

    async def fail_on_the_fifth(item: StreamEvent) -> None:
        if item.event_id == ids[4]:
            raise RuntimeError("downstream database is down")
        handled.append(item.event_id)

    with pytest.raises(RuntimeError, match="downstream database is down"):
        await asyncio.wait_for(StreamConsumer(settings).run(fail_on_the_fifth), 60)
    assert handled == ids[:4]

    stop = asyncio.Event()
    again: list[uuid.UUID] = []

    async def handle(item: StreamEvent) -> None:
        again.append(item.event_id)
        if len(again) == 4:
            stop.set()

    await asyncio.wait_for(StreamConsumer(settings).run(handle, stop=stop), 60)
    assert again == ids[4:]  # the failed one first, nothing handled before it again


async def test_a_record_that_is_no_envelope_stops_the_consumer_at_its_position(
    kafka_bootstrap: str,
) -> None:
    ledger_settings = settings_for_test(kafka_bootstrap, subscriber_partitions=1)
    settings = consumer_settings(ledger_settings)
    async with started_ledger(ledger_settings) as ledger:
        (good,) = await ledger.append([message_sent(new_phone())])
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(
            ledger_settings.topic(Stream.SUBSCRIBERS), b"\xff not protobuf", key=b"x"
        )
    finally:
        await producer.stop()
    handled: list[uuid.UUID] = []

    async def handle(item: StreamEvent) -> None:
        handled.append(item.event_id)

    for _ in range(2):  # and again: it is never skipped
        with pytest.raises(UndecodableRecord) as stopped:
            await asyncio.wait_for(StreamConsumer(settings).run(handle), 60)
        assert (stopped.value.partition, stopped.value.offset) == (0, 1)
    assert handled == [good.event.event_id]  # the good record once: it was committed


async def wait_for_rows(db: Path, applied: int, timeout: float) -> None:
    def count() -> int:
        with sqlite3.connect(db) as conn:
            try:
                return int(conn.execute("SELECT count(*) FROM applied_events").fetchone()[0])
            except sqlite3.OperationalError:  # not created yet
                return 0

    await eventually(lambda: count() >= applied, timeout, f"{applied} applied events")


async def test_the_example_table_follows_opt_ins_and_opt_outs_and_ignores_copies(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    ledger_settings = settings_for_test(kafka_bootstrap)
    settings = consumer_settings(ledger_settings)
    ada, bob, cy, dee = new_phone(), new_phone(), new_phone(), new_phone()
    stop_promo = revoked(at(2), "promo", phone=ada)
    events: list[LedgerEvent] = [
        granted(T0, "promo", phone=ada),
        granted(at(1), "news", phone=ada),
        stop_promo,
        granted(T0, "promo", phone=bob),
        granted(at(1), "news", phone=bob),
        revoked(at(2), None, phone=bob),  # STOPALL
        granted(T0, "promo", phone=cy),
        revoked(at(1), None, phone=cy),
        ConsentResumed(event_id=uuid.uuid4(),
                       occurred_at=at(2), phone=cy, brand="acme", campaign=None),
        granted(at(3), "promo", phone=ada),  # Ada opts in again...
        stop_promo,  # ...and a retried append stores her old STOP a second time
        # Recorded late: an opt-out, then opt-ins from paper forms signed before it.
        revoked(at(5), "promo", phone=dee),
        revoked(at(6), None, phone=dee),
        granted(T0, "promo", phone=dee),
        granted(T0, "news", phone=dee),
        granted(at(7), "alerts", phone=dee),  # after the STOPALL: stands
    ]  # fmt: skip
    async with started_ledger(ledger_settings) as ledger:
        await ledger.append(events)
    table = OptOutTable(tmp_path / "status.sqlite")
    stop = asyncio.Event()
    syncing = asyncio.create_task(keep_in_sync(table, settings, stop))
    try:
        await wait_for_rows(tmp_path / "status.sqlite", len(events) - 1, 60)
        await asyncio.sleep(1)  # time for the copy to arrive, if it were to count
    finally:
        stop.set()
        await asyncio.wait_for(syncing, 30)

    # Her STOP to promo came after her opt-in to news: revoke-all ends that one too.
    assert table.status("acme", ada) == {"promo": True, "news": False}
    assert table.status("acme", bob) == {"promo": False, "news": False}
    assert table.status("acme", cy) == {"promo": True}
    assert table.status("acme", dee) == {"promo": False, "news": False, "alerts": True}
    assert table.status("globex", ada) == {}
    table.close()


async def test_the_example_runs_from_the_command_line_and_resumes_where_it_stopped(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    ledger_settings = settings_for_test(kafka_bootstrap)
    db, group = tmp_path / "opt_outs.sqlite", f"cli-{uuid.uuid4().hex[:8]}"
    phone = new_phone()

    async def run_example_until(applied: int, append: Callable[[], Awaitable[None]]) -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.consumer.opt_out_table",
            "--bootstrap", kafka_bootstrap, "--group", group, "--db", str(db),
            "--topic-prefix", ledger_settings.topic_prefix,
            cwd=ROOT, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            await append()
            await wait_for_rows(db, applied, 60)
        finally:
            process.terminate()
            _, stderr = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0, stderr.decode()

    async with started_ledger(ledger_settings) as ledger:

        async def opt_in() -> None:
            await ledger.append([granted(T0, "promo", phone=phone)])

        async def opt_out() -> None:
            await ledger.append([revoked(at(1), "promo", phone=phone)])

        await run_example_until(1, opt_in)
        await run_example_until(2, opt_out)

    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT brand, phone, campaign, opted_in FROM consent_status")
        assert rows.fetchall() == [("acme", phone, "promo", 0)]
    # Each run committed what it handled before it exited on SIGTERM.
    assert await committed(ledger_settings, group) == 2


async def committed(ledger_settings: KafkaLedgerSettings, group: str) -> int:
    """The sum of ``group``'s committed offsets over the subscriber topic."""
    topic = ledger_settings.topic(Stream.SUBSCRIBERS)
    consumer = AIOKafkaConsumer(bootstrap_servers=ledger_settings.bootstrap_servers,
                                group_id=group, enable_auto_commit=False)  # fmt: skip
    await consumer.start()
    try:
        partitions = range(ledger_settings.subscriber_partitions)
        offsets = [await consumer.committed(TopicPartition(topic, p)) for p in partitions]
    finally:
        await consumer.stop()
    return sum(offset or 0 for offset in offsets)


async def table_after(
    kafka_bootstrap: str, tmp_path: Path, events: list[LedgerEvent]
) -> OptOutTable:
    """The example's table once it applied ``events``, appended to a ledger of its own."""
    ledger_settings = settings_for_test(kafka_bootstrap)
    async with started_ledger(ledger_settings) as ledger:
        await ledger.append(events)
    db = tmp_path / f"status-{uuid.uuid4().hex[:8]}.sqlite"
    table = OptOutTable(db)
    stop = asyncio.Event()
    syncing = asyncio.create_task(keep_in_sync(table, consumer_settings(ledger_settings), stop))
    try:
        await wait_for_rows(db, len({e.event_id for e in events}), 60)
    finally:
        stop.set()
        await asyncio.wait_for(syncing, 30)
    return table


def resumed_at(when: datetime, phone: str, campaign: str | None) -> ConsentResumed:
    return ConsentResumed(
        event_id=uuid.uuid4(), occurred_at=when, phone=phone, brand="acme", campaign=campaign
    )


async def test_a_brand_wide_start_lifts_a_stopall_but_never_a_campaigns_own_stop(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    ada, bob = new_phone(), new_phone()
    table = await table_after(kafka_bootstrap, tmp_path, [
        granted(T0, "promo", phone=ada),
        revoked(at(1), "promo", phone=ada),  # STOP to promo's number
        resumed_at(at(2), ada, None),  # a brand-wide START (recorded by older versions)
        granted(T0, "promo", phone=bob),
        revoked(at(1), "promo", phone=bob),
        revoked(at(2), None, phone=bob),  # STOPALL
        resumed_at(at(3), bob, None),
    ])  # fmt: skip

    # CanSend: REVOKED for both; the START lifts only the STOPALL.
    assert table.status("acme", ada) == {"promo": False}
    assert table.status("acme", bob) == {"promo": False}
    table.close()


async def test_a_consent_of_a_request_that_reused_anothers_id_is_no_fact(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """The service's view skips the facts of a request whose id another request took
    first (a race can let one reach the ledger); the table must not read it as an
    opt-in CanSend denies for want of one."""
    ada = new_phone()
    first = evolved(granted(T0, "promo", phone=ada), request_id="r-1", request_fingerprint="a")
    again = evolved(granted(at(1), "news", phone=ada), request_id="r-1", request_fingerprint="a")
    reused = evolved(granted(at(2), "alerts", phone=ada), request_id="r-1", request_fingerprint="b")
    table = await table_after(kafka_bootstrap, tmp_path, [first, again, reused])
    assert table.status("acme", ada) == {"promo": True, "news": True}
    table.close()


def held(when: datetime, phone: str, brand: str = "acme") -> RevocationCandidateFlagged:
    """A reply held for review; under ``ANY_BRAND``, a STOP to a number no campaign owns."""
    return evolved(flagged(when, phone=phone, brand=brand), unattributed=brand == ANY_BRAND)


def decided(
    when: datetime, hold: RevocationCandidateFlagged, resolution: CandidateResolution
) -> RevocationCandidateResolved:
    return evolved(resolved(when, hold, resolution), phone=hold.phone, brand=hold.brand)


async def test_an_opt_out_held_for_review_stops_its_brand_and_one_under_any_brand_every_brand(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    ada, bob, cy, dee, eve = (new_phone() for _ in range(5))
    holds = {phone: held(at(1), phone) for phone in (ada, bob)}
    holds |= {phone: held(at(1), phone, ANY_BRAND) for phone in (cy, dee, eve)}
    table = await table_after(kafka_bootstrap, tmp_path, [
        *(granted(T0, "promo", phone=p) for p in (ada, bob, cy, dee, eve)),
        granted(T0, "promo", phone=cy, brand="globex"),
        *holds.values(),
        decided(at(2), holds[bob], CandidateResolution.DISMISSED),
        decided(at(2), holds[eve], CandidateResolution.DISMISSED),
        # "Revoked" under '*' opts out of no brand, so the hold stands (refused since;
        # such resolutions recorded before stay in the ledger).
        decided(at(2), holds[dee], CandidateResolution.REVOKED),
    ])  # fmt: skip

    assert table.status("acme", ada) == {"promo": False}  # REVOCATION_PENDING_REVIEW
    assert table.status("acme", bob) == {"promo": True}
    assert table.status("acme", cy) == table.status("globex", cy) == {"promo": False}
    assert table.status("acme", dee) == {"promo": False}
    assert table.status("acme", eve) == {"promo": True}
    table.close()


async def test_an_erasure_takes_every_consent_before_it(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    ada, bob, cy = new_phone(), new_phone(), new_phone()

    def erased(when: datetime, phone: str) -> SubjectErased:
        return SubjectErased(event_id=uuid.uuid4(), occurred_at=when, phone=phone, brand="acme")

    table = await table_after(kafka_bootstrap, tmp_path, [
        *(granted(T0, "promo", phone=p) for p in (ada, bob, cy)),
        *(erased(at(1), p) for p in (ada, bob, cy)),
        resumed_at(at(2), bob, "promo"),  # a START resumes no grant: the erasure took it
        granted(at(2), "promo", phone=cy),  # a fresh opt-in after the erasure counts
    ])  # fmt: skip

    assert table.status("acme", ada) == {"promo": False}  # SUBJECT_ERASED
    assert table.status("acme", bob) == {"promo": False}
    assert table.status("acme", cy) == {"promo": True}
    table.close()


async def test_an_opt_out_of_one_campaign_ends_the_brands_consents_given_before_it(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    ada, bob = new_phone(), new_phone()
    table = await table_after(kafka_bootstrap, tmp_path, [
        granted(T0, "promo", phone=ada),
        granted(at(1), "news", phone=ada),
        granted(at(3), "alerts", phone=ada),
        revoked(at(2), "promo", phone=ada),
        granted(T0, "promo", phone=bob),
        revoked(at(1), "news", phone=bob),  # a campaign bob never opted in to
    ])  # fmt: skip

    # CanSend from 2027-01-31 (before, for brands that chose it): REVOKED_BRAND_WIDE;
    # the opt-in after the STOP is the person's newer word.
    assert table.status("acme", ada) == {"promo": False, "news": False, "alerts": True}
    assert table.status("acme", bob) == {"promo": False}
    table.close()


def stated(event, seconds: float):
    """``event`` stamped ahead: placed where it is, saying ``seconds`` later."""
    return replace(event, stated_at=event.occurred_at + timedelta(seconds=seconds))


async def test_a_consent_outranks_an_opt_out_stamped_ahead_only_if_later_by_both_times(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """An opt-out stamped ahead is placed when recorded and keeps the time it said
    (``stated_at``); a consent stated before that time, recorded after it by an
    instance racing past the write's check, does not outrank it for CanSend. The
    table ordered by place alone and said "opted in" where CanSend denies."""
    ada, bob, cy, dee, eve = (new_phone() for _ in range(5))
    later = at(1) + timedelta(seconds=10)
    table = await table_after(kafka_bootstrap, tmp_path, [
        granted(T0, "promo", phone=ada),
        stated(revoked(at(1), "promo", phone=ada), 40),
        granted(later, "promo", phone=ada),  # stated before the opt-out's time
        granted(T0, "promo", phone=bob),
        stated(revoked(at(1), None, phone=bob), 40),  # STOPALL
        resumed_at(later, bob, "promo"),
        granted(T0, "promo", phone=cy),
        granted(T0, "news", phone=cy),
        stated(revoked(at(1), "news", phone=cy), 40),  # revoke-all ends promo too
        granted(later, "promo", phone=cy),
        # A START from a gateway whose clock runs ahead, as its STOP's: it lifts it.
        granted(T0, "promo", phone=dee),
        stated(revoked(at(1), "promo", phone=dee), 40),
        stated(resumed_at(later, dee, "promo"), 40),
        # An opt-in stamped ahead, later by both times; a START stated too early
        # takes nothing from it.
        granted(T0, "promo", phone=eve),
        stated(revoked(at(1), None, phone=eve), 40),
        stated(granted(later, "promo", phone=eve), 60),
        resumed_at(later + timedelta(seconds=10), eve, "promo"),
    ])  # fmt: skip

    assert table.status("acme", ada) == {"promo": False}
    assert table.status("acme", bob) == {"promo": False}
    assert table.status("acme", cy) == {"promo": False, "news": False}
    assert table.status("acme", dee) == {"promo": True}
    assert table.status("acme", eve) == {"promo": True}
    table.close()


async def test_facts_under_a_numbers_other_spelling_are_the_numbers(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    n = next(_suffixes)
    argentina = (f"+5491112344{n:03d}", f"+541112344{n:03d}")  # with the mobile 9; without
    gabon = (f"+24166441{n:03d}", f"+24106441{n:03d}")  # since 2019; its old number
    # An earlier version kept each spelling as written, so its facts are under both.
    table = await table_after(kafka_bootstrap, tmp_path, [
        granted(T0, "promo", phone=argentina[0]),
        revoked(at(1), "promo", phone=argentina[1]),
        granted(T0, "promo", phone=gabon[1]),
        held(at(1), gabon[0]),
    ])  # fmt: skip

    for kept, other in (argentina, gabon):
        assert table.status("acme", kept) == table.status("acme", other) == {"promo": False}
    table.close()


_suffixes = itertools.count(random.randrange(900))


KILLED_AFTER_A_WRITE = """
import functools, os, sys
from services.consumer import opt_out_table as example

# The member a kill leaves behind holds the group's next rebalance (the next run's
# join) until its session lapses: the broker's shortest session, not aiokafka's 10 s.
example.StreamConsumerSettings = functools.partial(
    example.StreamConsumerSettings,
    extra={"heartbeat_interval_ms": 300, "session_timeout_ms": 6000},
)

kill_after, applied = int(sys.argv[1]), 0
apply = example.OptOutTable.apply

def apply_then_die(self, item):
    global applied
    new = apply(self, item)
    applied += new
    if applied == kill_after:
        os._exit(9)  # the table's transaction is in; the offset commit never comes
    return new

example.OptOutTable.apply = apply_then_die
example.main(sys.argv[2:])
"""
"""The example, killed (no clean-up, no commit) right after its ``kill_after``-th
table write, on the shortest session the broker takes."""


async def test_the_example_killed_between_its_write_and_its_commit_ends_with_the_same_table(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    ledger_settings = settings_for_test(kafka_bootstrap)
    phones = [new_phone() for _ in range(4)]
    events: list[LedgerEvent] = []
    for n, phone in enumerate(phones):
        hold = held(at(3), phone, ANY_BRAND if n % 2 else "acme")
        events += [
            granted(T0, "promo", phone=phone),
            granted(at(1), "news", phone=phone),
            revoked(at(2), "news", phone=phone),
            granted(at(4), "news", phone=phone),
            hold,
            revoked(at(6), None, phone=phone) if n == 3 else granted(at(6), "alerts", phone=phone),
        ]
        if n < 2:
            events.append(decided(at(5), hold, CandidateResolution.DISMISSED))
    async with started_ledger(ledger_settings) as ledger:
        await ledger.append(events)
    facts = len(events)  # no copies: every record a committed offset covers was written

    async def run_example(db: Path, group: str, kill_after: int | None = None) -> None:
        code = ["-c", KILLED_AFTER_A_WRITE, str(kill_after)] if kill_after else []
        process = await asyncio.create_subprocess_exec(
            sys.executable, *(code or ["-m", "services.consumer.opt_out_table"]),
            "--bootstrap", kafka_bootstrap, "--group", group, "--db", str(db),
            "--topic-prefix", ledger_settings.topic_prefix,
            cwd=ROOT, stderr=subprocess.PIPE,
        )  # fmt: skip
        if kill_after:
            _, stderr = await asyncio.wait_for(process.communicate(), 60)
            assert process.returncode == 9, stderr.decode()
            return
        try:
            await wait_for_rows(db, facts, 60)
        finally:
            process.terminate()
            _, stderr = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0, stderr.decode()

    def written(db: Path) -> int:
        with sqlite3.connect(db) as conn:
            return int(conn.execute("SELECT count(*) FROM applied_events").fetchone()[0])

    def table(db: Path) -> list[tuple[str, str, str, int]]:
        with sqlite3.connect(db) as conn:
            return conn.execute("SELECT * FROM consent_status ORDER BY 1, 2, 3").fetchall()

    whole, group = tmp_path / "whole.sqlite", f"whole-{uuid.uuid4().hex[:8]}"
    await run_example(whole, group)
    # Killed after 5 facts written, then after 7 more, each time before it committed
    # the offsets of what it wrote: each restart reads those records again.
    killed, group = tmp_path / "killed.sqlite", f"killed-{uuid.uuid4().hex[:8]}"
    await run_example(killed, group, kill_after=5)
    assert written(killed) == 5 and await committed(ledger_settings, group) < 5
    await run_example(killed, group, kill_after=7)
    assert written(killed) == 12 and await committed(ledger_settings, group) < 12
    await run_example(killed, group)

    assert table(killed) == table(whole)
    assert {row[3] for row in table(whole)} == {0, 1}  # the table says something
