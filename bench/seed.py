"""Seed the read model with N subscribers through the real projection write path.

Every fact is a ``Recorded`` ledger event fed to ``PostgresConsentView.apply``, the
method the projector calls: one ``CampaignDefined`` for ``acme/promo``, one
``ConsentGranted`` per phone, and a ``ConsentRevoked`` for every tenth phone.
Positions are what ``KafkaLedger`` would give: the partition is Kafka's default
partitioner over the phone (``KafkaLedger.partition_for``), offsets count up per
partition in event order. ``fill_ledger`` then appends the same facts to the Kafka
topics through ``KafkaLedger``, so that the view's positions are the ledger's ends:
a service refuses to serve a view ahead of its ledger, and with no writes every read
is fresh, as in a steady state.

The fold and the encoding are Python and use one core, so several worker processes
apply disjoint sets of partitions at once (their position locks never meet).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from multiprocessing.pool import Pool
from typing import Any, TypeVar

import asyncpg
from aiokafka.partitioner import DefaultPartitioner

from bench.phones import phones as make_phones
from ledger.campaigns import CampaignPolicy, CampaignPurpose
from ledger.events import (
    CampaignDefined,
    CollectionMethod,
    ConsentGranted,
    ConsentProof,
    ConsentRevoked,
    ConsentTier,
    LedgerEvent,
    LedgerPosition,
    Recorded,
    RevocationChannel,
    SubscriberEvent,
    event_id_for,
)
from ledger.ports import Stream
from services.adapters.kafka_ledger import KafkaLedger
from services.adapters.migrations import migrate
from services.adapters.postgres_reread import mark_texts_read_to, mark_texts_read_under
from services.adapters.postgres_view import PostgresConsentView
from services.settings import KafkaLedgerSettings
from services.usecases.review import reading_rules
from tests.builders import proof

BRAND = "acme"
CAMPAIGN = "promo"
SENDER = "+12125550100"
REVOKE_EVERY = 10
APPLY_BATCH = 5000
FILL_CHUNK = 10_000


def reference_time() -> datetime:
    """The ``at`` every check asks about: a 19:00 UTC (noon to 15:00 across the chosen
    area codes, so quiet hours never decide) at least two hours ahead. Fixed per run,
    so every phase sees the same decisions. Ahead, not past: a check about a past
    moment is answered from the history (``CanSendAsOf``'s path), not the digests
    that serve a check about now."""
    now = datetime.now(UTC)
    t = now.replace(hour=19, minute=0, second=0, microsecond=0)
    return t if t - now >= timedelta(hours=2) else t + timedelta(days=1)


def campaign_event(at: datetime) -> Recorded:
    defined = at - timedelta(days=90)
    event = CampaignDefined(
        event_id=event_id_for("bench-campaign"),
        occurred_at=defined,
        brand=BRAND,
        campaign=CAMPAIGN,
        policy=CampaignPolicy(purpose=CampaignPurpose.PROMOTIONAL, sender_numbers=(SENDER,)),
    )
    return Recorded(event, LedgerPosition(0, 0), defined + timedelta(seconds=1))


def _proof(when: datetime, i: int) -> ConsentProof:
    return proof(
        when,
        name=f"Subscriber {i}",
        email=f"s{i}@example.com",
        postal_address="",
        form_url="https://acme.example/join?src=bench",
    )


def subscriber_events(i: int, phone: str, at: datetime) -> list[SubscriberEvent]:
    """The facts of the ``i``-th phone: a grant 1-20 days before ``at``, maybe an opt-out."""
    granted_at = at - timedelta(days=1 + i % 20, minutes=i % 600)
    events: list[SubscriberEvent] = [
        ConsentGranted(
            event_id=event_id_for(f"bench-grant-{phone}"),
            occurred_at=granted_at,
            phone=phone,
            brand=BRAND,
            campaign=CAMPAIGN,
            tier=ConsentTier.PROMOTIONAL,
            method=CollectionMethod.WEB_FORM,
            proof=_proof(granted_at, i),
        )
    ]
    if i % REVOKE_EVERY == REVOKE_EVERY - 1:
        events.append(
            ConsentRevoked(
                event_id=event_id_for(f"bench-stop-{phone}"),
                occurred_at=granted_at + timedelta(hours=6),
                phone=phone,
                brand=BRAND,
                campaign=CAMPAIGN,
                channel=RevocationChannel.KEYWORD,
                text="STOP",
            )
        )
    return events


def partition_of(phone: str, partitions: int) -> int:
    """Where ``KafkaLedger`` (Kafka's default partitioner) puts the phone's events."""
    p: int = DefaultPartitioner()(phone.encode(), list(range(partitions)), [])
    return p


@dataclass(frozen=True)
class Plan:
    count: int
    partitions: int
    at: datetime


def recorded_for(plan: Plan, mine: set[int] | None = None) -> list[Recorded]:
    """Every subscriber fact of the plan with its ledger position (only partitions in
    ``mine`` when given); ``recorded_at`` is one second after the fact."""
    offsets = [0] * plan.partitions
    out: list[Recorded] = []
    for i, phone in enumerate(make_phones(plan.count)):
        p = partition_of(phone, plan.partitions)
        for event in subscriber_events(i, phone, plan.at):
            offset = offsets[p]
            offsets[p] += 1
            if mine is None or p in mine:
                recorded_at = event.occurred_at + timedelta(seconds=1)
                out.append(Recorded(event, LedgerPosition(p, offset), recorded_at))
    return out


async def _apply_all(dsn: str, stream: Stream, batch: Sequence[Recorded]) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        view = PostgresConsentView(pool)
        for start in range(0, len(batch), APPLY_BATCH):
            await view.apply(stream, batch[start : start + APPLY_BATCH])
    finally:
        await pool.close()


def _worker(dsn: str, plan: Plan, mine: list[int]) -> int:
    records = recorded_for(plan, set(mine))
    asyncio.run(_apply_all(dsn, Stream.SUBSCRIBERS, records))
    return len(records)


T = TypeVar("T")


def _applied(pool: Pool, func: Callable[..., T], args: tuple[Any, ...]) -> asyncio.Future[T]:
    """``func(*args)`` in one of ``pool``'s processes, as a future of this loop."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Any, failed: bool) -> None:
        if done.done():  # cancelled meanwhile
            return
        if failed:
            done.set_exception(outcome)
        else:
            done.set_result(outcome)

    pool.apply_async(
        func,
        args,
        callback=lambda result: loop.call_soon_threadsafe(settle, result, False),
        error_callback=lambda exc: loop.call_soon_threadsafe(settle, exc, True),
    )
    return done


async def fill_ledger(settings: KafkaLedgerSettings, dsn: str, plan: Plan) -> float:
    """Append the plan's facts, in the order ``seed`` numbered them, to the topics
    ``settings`` names (made when missing), and check that their ends are the view's
    positions; answers the seconds it took. Streamed in chunks: a million facts as
    objects would not fit beside the seed."""
    started = time.perf_counter()
    ledger = KafkaLedger(settings)
    await ledger.ensure_topics()
    await ledger.start()
    try:
        await ledger.append([campaign_event(plan.at).event])
        chunk: list[LedgerEvent] = []
        for i, phone in enumerate(make_phones(plan.count)):
            chunk.extend(subscriber_events(i, phone, plan.at))
            if len(chunk) >= FILL_CHUNK:
                await ledger.append(chunk)
                chunk = []
        if chunk:
            await ledger.append(chunk)
        ends = await ledger.every_end_offset()
    finally:
        await ledger.close()
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        view = PostgresConsentView(pool)
        for stream in (Stream.CAMPAIGNS, Stream.SUBSCRIBERS):
            applied = await view.positions(stream)
            ledger_ends = {p: end for p, end in ends[stream].items() if end}
            if applied != ledger_ends:
                raise RuntimeError(
                    f"the {stream.value} topic's ends {ledger_ends} are not the view's "
                    f"positions {applied}: were the topics not empty?"
                )
    finally:
        await pool.close()
    return time.perf_counter() - started


@dataclass(frozen=True)
class SeedResult:
    subscribers: int
    events: int
    seconds: float
    workers: int
    vacuum_seconds: float = 0.0
    """Then ``VACUUM (ANALYZE)`` of the database, not counted in ``seconds``."""


async def mark_seed_read(dsn: str) -> None:
    """The seed records no texts: name the rules read and the ledger read up to what the
    view applied, so a bench server does not read millions of seeded facts again
    while it is measured."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        rows = await pool.fetch(
            "SELECT partition, next_offset FROM projection_offset WHERE stream = $1",
            Stream.SUBSCRIBERS.value,
        )
        rules = reading_rules()
        await mark_texts_read_to(pool, rules, {r["partition"]: r["next_offset"] for r in rows})
        await mark_texts_read_under(pool, rules)
    finally:
        await pool.close()


async def seed(dsn: str, plan: Plan, workers: int = 2) -> SeedResult:
    """Migrate, apply the campaign, then every subscriber fact from ``workers`` processes."""
    started = time.perf_counter()
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        await migrate(pool)
        await PostgresConsentView(pool).apply(Stream.CAMPAIGNS, [campaign_event(plan.at)])
    finally:
        await pool.close()
    shares = [list(range(w, plan.partitions, workers)) for w in range(workers)]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as procs:
        # Awaited through callbacks, not a thread blocked in ``get()``: a cancelled seed
        # (Ctrl-C) then leaves this block, which terminates the workers, and nothing
        # is left waiting on them when the bench stops its broker and database.
        counts = await asyncio.gather(
            *(_applied(procs, _worker, (dsn, plan, share)) for share in shares)
        )
    seconds = time.perf_counter() - started
    await mark_seed_read(dsn)
    # A steady state, as a service that has run for a while would see it: the tables
    # vacuumed and their statistics current, not an autovacuum pass over a million
    # fresh rows competing with the first phases for the same two cores.
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("VACUUM (ANALYZE)")
        with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
            await conn.execute("CHECKPOINT")  # and the seed's dirty pages written out
    finally:
        await conn.close()
    await asyncio.to_thread(os.sync)  # out of the kernel's cache too, before any timing
    vacuum = time.perf_counter() - started - seconds
    return SeedResult(plan.count, sum(counts) + 1, seconds, workers, vacuum)
