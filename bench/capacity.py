"""``python -m bench.capacity``: what N subscribers cost on this machine, store by store.

    python -m bench.capacity [--subscribers N] [--seed copy|view] [--duration S]
                             [--kafka-sample N] [--skip-service]

1. Kafka and PostgreSQL as ``make bench`` starts them (``bench.infra``).
2. Seed N subscribers of the bench's shape (``bench.seed``: one opt-in each, every
   tenth opted out). ``--seed view`` applies them through ``PostgresConsentView.apply``,
   as ``make bench`` does. ``--seed copy`` (the default; the projection path would
   take hours for ten million here) COPYs only what CanSend reads, each
   subscriber's digest in ``subscriber_state`` (with an empty snapshot) and the
   applied positions, the digests made from folded ones (``_copy_worker``). The
   view's other tables stay empty then.
3. PostgreSQL: each table's size on disk, indexes and TOAST included, per subscriber.
4. Kafka: the records of ``--kafka-sample`` subscribers, encoded as ``KafkaLedger``
   encodes them, appended with its producer settings to a topic of their own; the
   partitions' log segments on the broker's disk, per subscriber.
5. The replica, in a process of its own (``--probe``): resident memory (VmRSS)
   before and after ``DigestReplica`` loads the view, and how long that takes; then
   the same for the layout it replaced (a dict of the stored digests' bytes by brand
   and phone), for comparison in the same run.
6. The service (one uvloop process, ``bench.server``): from launch to serving, its
   resident memory, then CanSend at concurrency 1 and 32 and 1,000-number batches,
   each beside the echo baseline of the same run, as ``make bench`` measures them.

Figures go to ``var/bench/capacity-*.json``; docs/capacity.md reads them.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from bench.cpu import rss_bytes
from bench.infra import REPO_ROOT, Infra, ServerGroup
from bench.phones import phones as make_phones
from bench.seed import (
    BRAND,
    CAMPAIGN,
    REVOKE_EVERY,
    Plan,
    campaign_event,
    fill_ledger,
    mark_seed_read,
    partition_of,
    reference_time,
    seed,
    subscriber_events,
)
from bench.server import kafka_settings
from ledger.events import LedgerPosition, Recorded
from ledger.ports import Stream
from services.adapters.postgres_view import PROJECTION_TABLES

PARTITIONS = 12
COPY_CHUNK = 20_000
TABLES = (*PROJECTION_TABLES, "request_use", "ledger_stored_events")
"""The view's tables, and the tables of request ids and of the embedded ledger (empty
here, the ledger being Kafka: listed so that a run on another ledger shows it)."""


def say(text: str) -> None:
    print(text, flush=True)


# ---- seeding with COPY -------------------------------------------------------------


def _subscribers(plan: Plan, mine: set[int]) -> Iterator[tuple[int, str, list[Recorded]]]:
    """Each phone of the plan in ``mine``'s partitions, with its facts at the
    positions ``bench.seed.recorded_for`` gives them."""
    offsets = [0] * plan.partitions
    for i, phone in enumerate(make_phones(plan.count)):
        p = partition_of(phone, plan.partitions)
        facts = []
        for event in subscriber_events(i, phone, plan.at):
            position = LedgerPosition(p, offsets[p])
            offsets[p] += 1
            facts.append(Recorded(event, position, event.occurred_at + timedelta(seconds=1)))
        if p in mine:
            yield i, phone, facts


def _copy_worker(dsn: str, plan: Plan, mine: list[int]) -> tuple[int, dict[int, int]]:
    """COPY the ``subscriber_state`` rows of ``mine``'s partitions; answers how many,
    and each partition's next offset.

    Folding ten million histories would take hours on a shared machine, and the
    bench's subscribers differ only in their number, times, offsets and event ids.
    So one history per block of numbers (``bench.phones``: a number's time zones and
    regions follow its area code and exchange) and outcome is folded and digested,
    and each subscriber's digest is that one with its own grant's and opt-out's
    marks, worked out as ``bench.seed.subscriber_events`` makes the facts. One in
    1,000 is made from its facts, folded whole, and compared. A number's partition is
    Kafka's default partitioner's, as ``KafkaLedger`` gives it, so that the same facts
    appended to the topics (``fill_ledger``) land at the view's positions. The
    snapshot column is left empty: CanSend reads the digest, and PostgreSQL's sizes
    are measured with ``--seed view``."""
    from ledger.digest import Digest, Mark, digest_of, micros
    from ledger.events import event_id_for
    from ledger.state import SubscriberState, fold
    from services.wire.digest import encode_digest

    columns = ("phone", "brand", "snapshot", "last_offset", "updated_at", "digest")
    templates: dict[tuple[str, bool], Digest] = {}
    partitions, wanted = plan.partitions, set(mine)
    second = timedelta(seconds=1)

    def facts_of(i: int, phone: str, p: int, first: int) -> list[Recorded]:
        return [
            Recorded(e, LedgerPosition(p, first + n), e.occurred_at + second)
            for n, e in enumerate(subscriber_events(i, phone, plan.at))
        ]

    def row(i: int, phone: str, p: int, first: int) -> tuple[object, ...]:
        revoked = i % REVOKE_EVERY == REVOKE_EVERY - 1
        granted_at = plan.at - timedelta(days=1 + i % 20, minutes=i % 600)
        grant = Mark(micros(granted_at), first, str(event_id_for(f"bench-grant-{phone}")))
        stop = None
        last_at = granted_at
        if revoked:
            last_at = granted_at + timedelta(hours=6)
            stop = Mark(micros(last_at), first + 1, str(event_id_for(f"bench-stop-{phone}")))
        template = templates.get((phone[:8], revoked))
        if template is None:
            facts = facts_of(i, phone, p, first)
            template = digest_of(fold(facts, SubscriberState(phone=phone, brand=BRAND)))
            templates[phone[:8], revoked] = template
        campaign = template.campaigns[CAMPAIGN]._replace(grant=grant, revocation=stop)
        digest = template._replace(campaigns={CAMPAIGN: campaign})
        if i % 1000 == 0:
            facts = facts_of(i, phone, p, first)
            if digest_of(fold(facts, SubscriberState(phone=phone, brand=BRAND))) != digest:
                raise AssertionError(f"the digest made for {phone} is not its fold's")
        last = first + revoked
        return (phone, BRAND, b"", last, last_at + second, encode_digest(digest))

    async def run() -> tuple[int, dict[int, int]]:
        conn = await asyncpg.connect(dsn)
        offsets = [0] * partitions
        rows: list[tuple[object, ...]] = []
        count = 0
        try:
            for i, phone in enumerate(make_phones(plan.count)):
                p = partition_of(phone, partitions)
                first = offsets[p]
                offsets[p] += 2 if i % REVOKE_EVERY == REVOKE_EVERY - 1 else 1
                if p not in wanted:
                    continue
                rows.append(row(i, phone, p, first))
                if len(rows) >= COPY_CHUNK:
                    await conn.copy_records_to_table(
                        "subscriber_state", records=rows, columns=columns
                    )
                    count += len(rows)
                    rows = []
            if rows:
                await conn.copy_records_to_table("subscriber_state", records=rows, columns=columns)
                count += len(rows)
        finally:
            await conn.close()
        return count, {p: offsets[p] for p in mine}

    return asyncio.run(run())


async def copy_seed(dsn: str, plan: Plan, workers: int) -> float:
    """``--seed copy``: the campaign through the view, the subscribers' rows with COPY,
    the positions; then VACUUM (ANALYZE). Answers the seconds it took."""
    from services.adapters.migrations import migrate
    from services.adapters.postgres_view import PostgresConsentView

    started = time.perf_counter()
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        await migrate(pool)
        await PostgresConsentView(pool).apply(Stream.CAMPAIGNS, [campaign_event(plan.at)])
    finally:
        await pool.close()
    shares = [list(range(w, plan.partitions, workers)) for w in range(workers)]
    ctx = multiprocessing.get_context("spawn")
    loop = asyncio.get_running_loop()
    with ctx.Pool(workers) as procs:
        pending = [procs.apply_async(_copy_worker, (dsn, plan, share)) for share in shares]
        results = await loop.run_in_executor(None, lambda: [r.get() for r in pending])
    ends = {p: end for _, share in results for p, end in share.items()}
    conn = await asyncpg.connect(dsn)
    try:
        await conn.executemany(
            "INSERT INTO projection_offset (stream, partition, next_offset) VALUES ($1, $2, $3) "
            "ON CONFLICT (stream, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset",
            [(Stream.SUBSCRIBERS.value, p, end) for p, end in sorted(ends.items())],
        )
    finally:
        await conn.close()
    await mark_seed_read(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("VACUUM (ANALYZE)")
    finally:
        await conn.close()
    return time.perf_counter() - started


# ---- what each store holds ---------------------------------------------------------


async def postgres_sizes(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        sizes = {}
        for table in TABLES:
            size = await conn.fetchval("SELECT pg_total_relation_size(to_regclass($1))", table)
            sizes[table] = int(size or 0)
        return sizes
    finally:
        await conn.close()


async def kafka_bytes(infra: Infra, plan: Plan, sample: int) -> dict[str, float]:
    """Append ``sample`` subscribers' records as ``KafkaLedger`` would, and read the
    log segments' size on the broker's disk."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from services.adapters.kafka_ledger import _key, producer_options, record_headers
    from services.settings import KafkaLedgerSettings
    from services.wire.codec import encode_event

    assert infra.kafka is not None
    topic = f"{infra.prefix}capacity-sample"
    admin = AIOKafkaAdminClient(bootstrap_servers=infra.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()
    settings = KafkaLedgerSettings(bootstrap_servers=infra.bootstrap, topic_prefix=infra.prefix)
    producer = AIOKafkaProducer(**producer_options(settings))
    await producer.start()
    records = 0
    value_bytes = 0
    try:
        sent = []
        small = Plan(sample, plan.partitions, plan.at)
        for _, _, facts in _subscribers(small, set(range(plan.partitions))):
            for fact in facts:
                value = encode_event(fact.event)
                value_bytes += len(value)
                records += 1
                sent.append(
                    await producer.send(
                        topic, value, key=_key(fact.event), headers=record_headers(fact.event)
                    )
                )
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    await asyncio.sleep(2)  # the broker writes its segments as they come; let it settle
    logs = [f for f in infra.kafka.data_dir.rglob("*.log") if f.parent.name.startswith(f"{topic}-")]
    on_disk = sum(f.stat().st_size for f in logs)
    return {
        "subscribers": sample,
        "records": records,
        "value_bytes_per_record": value_bytes / records,
        "log_bytes": on_disk,
        "log_bytes_per_record": on_disk / records,
        "log_bytes_per_subscriber": on_disk / sample,
    }


# ---- the replica, in a process of its own --------------------------------------------


def _rss() -> int:
    return rss_bytes([os.getpid()])


async def _probe(dsn: str, layout: str) -> dict[str, object]:
    from services.adapters.digest_replica import DigestReplica
    from services.adapters.postgres_view import PostgresConsentView

    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        view = PostgresConsentView(pool)
        await view.positions(Stream.SUBSCRIBERS)  # the connection and its caches warm
        gc.collect()
        before = _rss()
        started = time.perf_counter()
        cpu = time.process_time()
        figures: dict[str, object] = {}
        if layout == "compact":
            replica = DigestReplica(pool, view)
            await replica.refresh()
            entries = replica.size
            figures["stats"] = replica.stats()
            keep: object = replica
        else:  # the layout before: the stored digest's bytes, by brand and phone
            held: dict[str, dict[str, bytes]] = {}
            async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
                cursor = await conn.cursor("SELECT brand, phone, digest FROM subscriber_state")
                while rows := await cursor.fetch(20_000):
                    for brand, phone, data in rows:
                        held.setdefault(brand, {})[phone] = data[1:]
            entries = sum(map(len, held.values()))
            keep = held
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu
        gc.collect()
        after = _rss()
        del keep
        figures.update(
            {
                "layout": layout,
                "entries": entries,
                "load_seconds": seconds,
                "load_cpu_seconds": cpu,
                "rss_before": before,
                "rss_after": after,
                "bytes_per_entry": (after - before) / max(entries, 1),
            }
        )
        return figures
    finally:
        await pool.close()


def probe(dsn: str, layout: str) -> dict[str, object]:
    """``_probe`` in a fresh interpreter, so that nothing else is in its heap."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.capacity", "--probe", layout, "--dsn", dsn],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    figures: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


# ---- the service ---------------------------------------------------------------------


def service(
    args: argparse.Namespace, infra: Infra, plan: Plan, phones: list[str]
) -> dict[str, object]:
    from bench.__main__ import (
        CANSEND,
        CANSEND_BATCH,
        HEADER,
        Row,
        build_requests,
        loader,
        measure,
        verify_answers,
    )
    from bench.server import ECHO_BATCH, ECHO_UNARY

    unary, batches = build_requests(phones, plan.at, random.Random(20240601))
    consent_args = [
        "--dsn", infra.dsn, "--kafka", infra.bootstrap, "--prefix", infra.prefix,
        "--partitions", str(PARTITIONS), "--tokens", str(infra.tokens_file()),
    ]  # fmt: skip
    phases = [
        ("CanSend", 1, ECHO_UNARY, CANSEND, unary, 1),
        ("CanSend", 32, ECHO_UNARY, CANSEND, unary, 1),
        ("CanSendBatch x1000", args.batch_concurrency, ECHO_BATCH, CANSEND_BATCH, batches, 1000),
    ]
    load = loader(args)
    rows: list[Row] = []
    echo_results = []
    echo = ServerGroup("echo", "uvloop", 1, [])
    echo.start()
    try:
        for phase, conc, method, _, reqs, _ in phases:
            echo_results.append(
                measure(load(echo.address, method, reqs, conc), f"echo {phase}", echo)
            )
    finally:
        echo.stop()
    svc = ServerGroup("consent", "uvloop", 1, consent_args)
    svc.start(timeout=3600)
    try:
        rss = rss_bytes(p.pid for p in svc.procs)
        say(f"  service ready in {svc.start_seconds:.1f} s, RSS {rss / 2**20:,.0f} MB")
        reasons = asyncio.run(verify_answers(svc.address, phones, plan.at))
        say(f"  answers checked: {reasons}")
        for (phase, conc, _, method, reqs, per_call), base in zip(
            phases, echo_results, strict=True
        ):
            result, cpu, pg, busy = measure(load(svc.address, method, reqs, conc), phase, svc)
            rows.append(
                Row("1 process, uvloop", phase, conc, base[0], result, per_call, base[1], cpu, pg,
                    base_busy=base[3], svc_busy=busy)
            )  # fmt: skip
        rss_after = rss_bytes(p.pid for p in svc.procs)
    finally:
        svc.stop()
    say("\n" + HEADER)
    for row in rows:
        say(row.line())
    return {
        "ready_seconds": svc.start_seconds,
        "rss_ready": rss,
        "rss_after_phases": rss_after,
        "rows": [
            {
                "phase": r.phase,
                "concurrency": r.concurrency,
                "echo_calls_per_s": r.base.qps,
                "calls_per_s": r.svc.qps,
                "checks_per_s": r.svc.qps * r.per_call,
                "ratio_to_echo": r.svc.qps / r.base.qps if r.base.qps else None,
                "p50_ms": r.svc.percentile(0.5) * 1000,
                "p99_ms": r.svc.percentile(0.99) * 1000,
                "server_cpu_us_per_call": r.svc_cpu,
            }
            for r in rows
        ],
    }


# ---- the run -------------------------------------------------------------------------


async def main_async(args: argparse.Namespace, path: Path) -> dict[str, object]:
    """The run; ``path`` gets the figures so far after each step."""
    infra = Infra()
    figures: dict[str, object] = {"args": vars(args)}

    def save() -> None:
        path.write_text(json.dumps(figures, indent=2, default=str))

    try:
        await infra.start()
        plan = Plan(args.subscribers, PARTITIONS, reference_time())
        say(f"seeding {plan.count:,} subscribers ({args.seed}) ...")
        if args.seed == "copy":
            seconds = await copy_seed(infra.dsn, plan, args.seed_workers)
        else:
            seeded = await seed(infra.dsn, plan, workers=args.seed_workers)
            seconds = seeded.seconds + seeded.vacuum_seconds
        figures["seed_seconds"] = seconds
        say(f"  seeded in {seconds:.0f} s")
        save()
        sizes = await postgres_sizes(infra.dsn)
        figures["postgres_bytes"] = sizes
        for table, size in sizes.items():
            say(
                f"  PostgreSQL {table}: {size / 2**20:,.1f} MB, "
                f"{size / plan.count:,.1f} B/subscriber"
            )
        if infra.kafka is not None and args.kafka_sample:
            kafka = await kafka_bytes(infra, plan, args.kafka_sample)
            figures["kafka"] = kafka
            say(
                f"  Kafka: {kafka['records']:,} records of {kafka['subscribers']:,} subscribers, "
                f"{kafka['log_bytes_per_record']:,.0f} B/record on disk "
                f"({kafka['value_bytes_per_record']:,.0f} B of value), "
                f"{kafka['log_bytes_per_subscriber']:,.0f} B/subscriber"
            )
        for layout in ("compact", "dict"):
            found = await asyncio.to_thread(probe, infra.dsn, layout)
            figures[f"replica_{layout}"] = found
            say(
                f"  replica ({layout}): {found['entries']:,} entries loaded in "
                f"{found['load_seconds']:.1f} s ({found['load_cpu_seconds']:.1f} s of CPU); "
                f"RSS {found['rss_before'] / 2**20:,.0f} -> "  # type: ignore[operator]
                f"{found['rss_after'] / 2**20:,.0f} MB: {found['bytes_per_entry']:,.1f} B/entry"  # type: ignore[operator]
            )
            if "stats" in found:
                say(f"    {found['stats']}")
            save()
        if not args.skip_service:
            # The service refuses a view ahead of its ledger: the topics get the facts too.
            settings = kafka_settings(infra.bootstrap, infra.prefix, PARTITIONS)
            figures["fill_seconds"] = await fill_ledger(settings, infra.dsn, plan)
            say(f"  the same events appended to Kafka in {figures['fill_seconds']:.0f} s")
            phones = make_phones(plan.count)
            figures["service"] = await asyncio.to_thread(service, args, infra, plan, phones)
            save()
        return figures
    finally:
        await infra.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.capacity",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--subscribers", type=int, default=1_000_000)
    parser.add_argument("--seed", choices=("copy", "view"), default="copy")
    parser.add_argument("--seed-workers", type=int, default=2)
    parser.add_argument("--kafka-sample", type=int, default=100_000)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per phase")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--batch-concurrency", type=int, default=4)
    parser.add_argument("--skip-service", action="store_true")
    parser.add_argument("--probe", choices=("compact", "dict"), help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        print(json.dumps(asyncio.run(_probe(args.dsn, args.probe))), flush=True)
        return 0
    if args.subscribers < 1100:
        parser.error("--subscribers must be at least 1100 (a batch samples 1,000 of them)")
    say(f"consent-ledger capacity, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {args.subscribers:,}")
    out = REPO_ROOT / "var" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"capacity-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    say(f"figures go to {path.relative_to(REPO_ROOT)}")
    asyncio.run(main_async(args, path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
