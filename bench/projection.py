"""The projection phase of ``make bench`` (``--projection-only`` runs it alone): how
fast one projector process applies events into PostgreSQL, and how long a rebuild
from a Kafka ledger takes.

1. **Apply.** The seed's facts (``bench.seed``: a grant per subscriber, an opt-out
   for every tenth), as a projector reads them from its ledger (decoded from their
   stored bytes, untimed), through ``PostgresConsentView.apply`` in batches of 5,000, from
   this one process, into an empty view: events a second, and this process's CPU
   per event (the fold, digests and encoding are Python), with the collector set
   as ``consent-ledger project`` and ``rebuild`` set it (``settle_collector``).
   **Baseline**, in the same run on the same server: a raw ``COPY`` of the same
   events' event-copy rows (payloads encoded beforehand) into a bare table with
   the same columns and no index or key, the most PostgreSQL takes of these rows.
2. **Rebuild.** The same facts appended to a Kafka ledger of their own (12
   partitions), then ``services.projector.rebuild`` from it into the view, as
   ``consent-ledger rebuild`` runs it: reads through ``KafkaLedger.read``. Its wall
   time, and this process's CPU per event (on a shared machine the steadier figure).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import asyncpg

from bench.infra import REPO_ROOT, Infra
from bench.seed import APPLY_BATCH, Plan, campaign_event, recorded_for, reference_time
from ledger.events import Recorded
from ledger.ports import Stream
from services.adapters.migrations import migrate
from services.adapters.postgres_view import PostgresConsentView, _event_row
from services.tuning import PROJECTION_YOUNG_THRESHOLD, settle_collector
from services.wire.codec import encode_event, encode_recorded, recorded_from_stored

GOAL_RATE = 50_000
GOAL_REBUILD_EVENTS = 1_000_000
GOAL_REBUILD_SECONDS = 30.0
PARTITIONS = 12
BARE_TABLE = """
CREATE TABLE bare_event_copy (
    seq integer, event_id uuid, stream text, partition integer, "offset" bigint,
    event_type text, phone text, brand text, campaign text, occurred_at timestamptz,
    recorded_at timestamptz, payload bytea)
"""


@dataclass
class ProjectionFigures:
    events: int
    apply_seconds: float
    apply_cpu_seconds: float
    copy_seconds: float
    rebuild_events: int
    rebuild_seconds: float
    append_seconds: float
    rebuild_cpu_seconds: float
    workers: int = 1
    """Processes of the second rebuild, ``consent-ledger rebuild --workers``; 1: none ran."""
    workers_seconds: float = 0.0
    workers_cpu_seconds: float = 0.0
    """The CPU of that command and its workers, PostgreSQL's not included."""

    @property
    def apply_rate(self) -> float:
        return self.events / self.apply_seconds

    @property
    def copy_rate(self) -> float:
        return self.events / self.copy_seconds

    @property
    def rebuild_rate(self) -> float:
        return self.rebuild_events / self.rebuild_seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "apply_events_per_s": self.apply_rate,
            "apply_cpu_us_per_event": self.apply_cpu_seconds / self.events * 1e6,
            "copy_events_per_s": self.copy_rate,
            "rebuild_events_per_s": self.rebuild_rate,
            "rebuild_cpu_us_per_event": self.rebuild_cpu_seconds / self.rebuild_events * 1e6,
        }


def plan_for(events: int) -> Plan:
    """A plan of about ``events`` facts: a subscriber has 1.1 on average."""
    return Plan(max(1, round(events / 1.1)), PARTITIONS, reference_time())


async def _apply(dsn: str, records: list[Recorded], at: Any) -> tuple[float, float]:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        await migrate(pool)
        view = PostgresConsentView(pool)
        await view.apply(Stream.CAMPAIGNS, [campaign_event(at)])
        wall = cpu = 0.0
        for start in range(0, len(records), APPLY_BATCH):
            batch = _as_read(records[start : start + APPLY_BATCH])
            wall, cpu = wall - time.perf_counter(), cpu - time.process_time()
            await view.apply(Stream.SUBSCRIBERS, batch)
            wall, cpu = wall + time.perf_counter(), cpu + time.process_time()
        return wall, cpu
    finally:
        await pool.close()


def _as_read(records: list[Recorded]) -> list[Recorded]:
    """``records`` as a projector gets them from its ledger: decoded from the bytes
    stored, which they keep (``recorded_from_stored``). Untimed: reading is the
    rebuild's to measure."""
    return [recorded_from_stored(encode_event(r.event), r.position, r.recorded_at) for r in records]


async def _bare_copy(dsn: str, records: list[Recorded]) -> float:
    rows = [
        (seq, *_event_row(Stream.SUBSCRIBERS, r, encode_recorded(r)))
        for seq, r in enumerate(records)
    ]
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(BARE_TABLE)
        started = time.perf_counter()
        for start in range(0, len(rows), APPLY_BATCH):
            async with conn.transaction():
                await conn.copy_records_to_table(
                    "bare_event_copy", records=rows[start : start + APPLY_BATCH]
                )
        return time.perf_counter() - started
    finally:
        await conn.close()


async def _rebuild(
    infra: Infra, dsn: str, records: list[Recorded], at: Any, topic_prefix: str
) -> tuple[int, float, float, float]:
    from services.adapters.kafka_ledger import KafkaLedger
    from services.projector import rebuild
    from services.settings import KafkaLedgerSettings

    settings = KafkaLedgerSettings(
        bootstrap_servers=infra.bootstrap,
        topic_prefix=topic_prefix,
        subscriber_partitions=PARTITIONS,
        replication_factor=1,
        min_insync_replicas=1,
        append_timeout_s=120,
    )
    ledger = KafkaLedger(settings)
    await ledger.ensure_topics()
    await ledger.start()
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        await migrate(pool)
        started = time.perf_counter()
        await ledger.append([campaign_event(at).event])
        for start in range(0, len(records), 10_000):
            await ledger.append([r.event for r in records[start : start + 10_000]])
        appended = time.perf_counter() - started
        started, cpu = time.perf_counter(), time.process_time()
        count = await rebuild(ledger, PostgresConsentView(pool))
        return count, time.perf_counter() - started, appended, time.process_time() - cpu
    finally:
        await pool.close()
        await asyncio.wait_for(ledger.close(), 60)


async def _rebuild_in_workers(
    infra: Infra, dsn: str, topic_prefix: str, workers: int
) -> tuple[int, float, float]:
    """``consent-ledger rebuild --workers N`` of the same topics into a fresh view, as an
    operator runs it: its events, wall time, and the CPU of the command and its workers."""
    with tempfile.TemporaryDirectory(prefix="bench-rebuild-") as data_dir:
        env = {
            **os.environ,
            "CONSENT_LEDGER": "kafka",
            "CONSENT_KAFKA_BOOTSTRAP": infra.bootstrap,
            "CONSENT_KAFKA_TOPIC_PREFIX": topic_prefix,
            "CONSENT_KAFKA_PARTITIONS": str(PARTITIONS),
            "CONSENT_KAFKA_REPLICATION_FACTOR": "1",
            "CONSENT_KAFKA_MIN_INSYNC_REPLICAS": "1",
            "CONSENT_POSTGRES_DSN": dsn,
            "CONSENT_AUTH_TOKENS_FILE": str(infra.tokens_file()),
            "CONSENT_DATA_DIR": data_dir,
        }
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.cli", "rebuild", "--quiet", "--workers", str(workers),
            cwd=REPO_ROOT, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = re.search(r"rebuilt the projections from (\d+) ledger events", out.decode())
    if proc.returncode != 0 or done is None:
        raise RuntimeError(
            f"consent-ledger rebuild --workers {workers} failed ({proc.returncode}): "
            + err.decode()[-2000:]
        )
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return int(done.group(1)), seconds, cpu


async def run_projection(
    args: argparse.Namespace, infra: Infra, say: Callable[[str], None]
) -> ProjectionFigures:
    plan = plan_for(args.projection_events)
    records = recorded_for(plan)
    # The collector as `consent-ledger project` and `rebuild` set it: without, its
    # full collections would also scan the million events made here as input, which
    # no projector holds.
    settle_collector(PROJECTION_YOUNG_THRESHOLD)
    say(f"\n== projection: {len(records):,} events ({plan.count:,} subscribers), one process")
    apply_s, cpu_s = await _apply(await infra.fresh_database(), records, plan.at)
    say(
        f"  apply through PostgresConsentView.apply: {len(records) / apply_s:,.0f} events/s "
        f"({apply_s:.1f} s; this process's CPU {cpu_s / len(records) * 1e6:,.0f} µs/event)"
    )
    copy_s = await _bare_copy(await infra.fresh_database(), records)
    say(
        "  baseline, raw COPY of the event rows into a bare table: "
        f"{len(records) / copy_s:,.0f} rows/s"
    )
    topic_prefix = f"{infra.prefix}projection-{uuid.uuid4().hex[:6]}."
    count, rebuild_s, append_s, rebuild_cpu_s = await _rebuild(
        infra, await infra.fresh_database(), records, plan.at, topic_prefix
    )
    say(
        f"  rebuild from Kafka of {count:,} events: {rebuild_s:.1f} s, "
        f"{count / rebuild_s:,.0f} events/s (this process's CPU {rebuild_cpu_s / count * 1e6:,.0f}"
        f" µs/event, reading included; appending them took {append_s:.1f} s)"
    )
    figures = ProjectionFigures(
        len(records), apply_s, cpu_s, copy_s, count, rebuild_s, append_s, rebuild_cpu_s
    )
    workers = args.rebuild_workers
    if workers > 1:
        done, figures.workers_seconds, figures.workers_cpu_seconds = await _rebuild_in_workers(
            infra, await infra.fresh_database(), topic_prefix, workers
        )
        if done != count:
            raise RuntimeError(f"rebuild --workers {workers} folded {done:,} of {count:,} events")
        figures.workers = workers
        say(
            f"  consent-ledger rebuild --workers {workers}: {figures.workers_seconds:.1f} s, "
            f"{count / figures.workers_seconds:,.0f} events/s (its processes' CPU "
            f"{figures.workers_cpu_seconds / count * 1e6:,.0f} µs/event)"
        )
    return figures


def projection_lines(f: ProjectionFigures) -> list[str]:
    """The table and the goals, as the bench prints them at the end."""
    ratio = f.apply_rate / f.copy_rate
    met = "met" if f.apply_rate >= GOAL_RATE else "NOT met"
    lines = [
        "| phase | events | events/s | baseline: raw COPY rows/s | / baseline |",
        "|---|---:|---:|---:|---:|",
        f"| apply, one process | {f.events:,} | {f.apply_rate:,.0f} | {f.copy_rate:,.0f} "
        f"| {ratio:.1%} |",
        f"| rebuild from Kafka | {f.rebuild_events:,} | {f.rebuild_rate:,.0f} | | |",
        *(
            [
                f"| rebuild, {f.workers} processes | {f.rebuild_events:,} "
                f"| {f.rebuild_events / f.workers_seconds:,.0f} | | |"
            ]
            if f.workers > 1
            else []
        ),
        "",
        f"goal projection >= {GOAL_RATE:,} events/s per process: {met} "
        f"({f.apply_rate:,.0f}/s; {f.apply_cpu_seconds / f.events * 1e6:,.0f} µs of this "
        "process's CPU per event)",
    ]
    fastest = min(f.rebuild_seconds, f.workers_seconds or f.rebuild_seconds)
    how = "one process" if fastest == f.rebuild_seconds else f"{f.workers} processes"
    if f.rebuild_events >= GOAL_REBUILD_EVENTS:
        met = "met" if fastest < GOAL_REBUILD_SECONDS else "NOT met"
        lines.append(
            f"goal rebuild of {GOAL_REBUILD_EVENTS:,} events < {GOAL_REBUILD_SECONDS:.0f} s: "
            f"{met} ({f.rebuild_events:,} events in {fastest:.1f} s, {how})"
        )
    else:
        at_rate = GOAL_REBUILD_EVENTS / f.rebuild_events * fastest
        lines.append(
            f"goal rebuild of {GOAL_REBUILD_EVENTS:,} events < {GOAL_REBUILD_SECONDS:.0f} s: "
            f"not measured (only {f.rebuild_events:,} events, in {fastest:.1f} s, {how}; "
            f"{at_rate:,.0f} s at that rate)"
        )
    lines.append(
        f"  (the rebuild: {f.rebuild_cpu_seconds / f.rebuild_events * 1e6:,.0f} µs of this "
        "process's CPU per event, reading from Kafka included"
        + (
            f"; with {f.workers} processes "
            f"{f.workers_cpu_seconds / f.rebuild_events * 1e6:,.0f} µs of theirs)"
            if f.workers > 1
            else ")"
        )
    )
    return lines
