"""What one write costs in round trips: PostgreSQL statements and Kafka requests per
``RecordOptIn``, ``RecordOptOut`` and ``RecordMessageSent``, by statement.

    python -m bench.write_trips [--writes N] [--concurrency C] [--ledger kafka|postgres]

Runs the service (``Runtime``, as ``bench.server`` configures it) in this process on
Kafka and PostgreSQL from ``tests.infra`` (or ``CONSENT_TEST_KAFKA_BOOTSTRAP`` /
``CONSENT_TEST_POSTGRES_DSN``), counts every statement asyncpg sends and every request
aiokafka sends while ``N`` writes of each kind run ``C`` at a time, waits until the
projector has applied them, and prints the counts per write, with the code that
sent each (the first frame in ``services/``). Counts, not times: the figures do not
depend on the machine's load, except how many writes one projector batch or one
freshness observation happens to serve.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import traceback
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from aiokafka.conn import AIOKafkaConnection

from bench.infra import Infra
from bench.phones import phones as make_phones
from bench.writes import METADATA, check_service, phases

Counts = collections.Counter[tuple[str, str]]


def _where() -> str:
    """The innermost frame of the service's own code that led here."""
    for frame in reversed(traceback.extract_stack(limit=40)[:-2]):
        if "/services/" in frame.filename:
            return f"{Path(frame.filename).name}:{frame.name}"
    return "?"


def _statement(query: str) -> str:
    return " ".join(query.split())[:70]


def count_round_trips(counts: Counts) -> Callable[[], None]:
    """Count asyncpg's statements and aiokafka's requests into ``counts`` until the
    returned function is called."""
    conn = asyncpg.connection.Connection
    saved: dict[str, Any] = {}

    def wrap(name: str, describe: Callable[..., str]) -> None:
        original = saved[name] = getattr(conn, name)

        async def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
            counts[(f"pg {describe(*args, **kwargs)}", _where())] += 1
            return await original(self, *args, **kwargs)

        setattr(conn, name, counted)

    for name in ("execute", "executemany", "fetch", "fetchrow", "fetchval"):
        wrap(name, lambda query, *a, **k: _statement(query))
    wrap("copy_records_to_table", lambda table, *a, **k: f"COPY {table}")
    send = AIOKafkaConnection.send

    def counted_send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        counts[(f"kafka {type(request).__name__}", _where())] += 1
        return send(self, request, *args, **kwargs)

    AIOKafkaConnection.send = counted_send

    def restore() -> None:
        for name, original in saved.items():
            setattr(conn, name, original)
        AIOKafkaConnection.send = send

    return restore


async def _service(infra: Infra, ledger: str, tokens: Path) -> Any:
    from services.bootstrap import Runtime
    from services.settings import FreshnessSettings, KafkaLedgerSettings, Settings

    prefix = f"{infra.prefix}trips-{uuid.uuid4().hex[:6]}."
    kafka = KafkaLedgerSettings(
        bootstrap_servers=infra.bootstrap,
        topic_prefix=prefix,
        subscriber_partitions=12,
        replication_factor=1,
        min_insync_replicas=1,
    )
    settings = Settings(
        listen="127.0.0.1:0",
        ledger=ledger,
        kafka=kafka if ledger == "kafka" else None,
        postgres_dsn=await infra.fresh_database(),
        data_dir=tokens.parent,
        tokens_file=tokens,
        freshness=FreshnessSettings(),
        shutdown_grace=1,
        projector_group=f"{prefix}projector",
    )
    runtime = Runtime(settings)
    await runtime.start()
    return runtime


async def _idle(counts: Counts, quiet: float = 1.0, limit: float = 60.0) -> None:
    """Until nothing but the background's observations ran for ``quiet`` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    while loop.time() < end:
        before = sum(n for (what, where), n in counts.items() if "apply" in where)
        await asyncio.sleep(quiet)
        if sum(n for (what, where), n in counts.items() if "apply" in where) == before:
            return


async def _run(args: argparse.Namespace) -> None:
    infra = Infra()
    await infra.start()
    try:
        tokens = infra.tokens_file()
        runtime = await _service(infra, args.ledger, tokens)
        try:
            at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
            await check_service(runtime.address, at)
            phones = make_phones(args.writes)
            for phase in phases(phones, at)[:3]:
                await _measure(runtime.address, phase, args, sys.stdout.write)
        finally:
            await runtime.stop()
    finally:
        await infra.stop()


async def _measure(
    address: str, phase: Any, args: argparse.Namespace, say: Callable[[str], Any]
) -> None:
    counts: Counts = collections.Counter()
    background: Counts = collections.Counter()
    restore = count_round_trips(background)
    await asyncio.sleep(args.quiet)  # the background's trips in as long, with no writes
    restore()
    requests = list(phase.messages[: args.writes])
    while len(requests) < args.writes:  # phase.messages holds at most RAW_RECORDS
        m = type(phase.messages[0])()
        m.ParseFromString(phase.requests[len(requests) % len(phase.requests)])
        requests.append(m)
    for m in requests:
        for name in ("request_id", "message_id"):
            if name in m.DESCRIPTOR.fields_by_name:
                setattr(m, name, uuid.uuid4().hex)
    loop = asyncio.get_running_loop()
    restore = count_round_trips(counts)
    began = loop.time()
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            call = channel.unary_unary(
                phase.method,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=lambda b: b,
            )
            queue = collections.deque(requests)

            async def worker() -> None:
                while queue:
                    await call(queue.popleft(), metadata=METADATA, timeout=60)

            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        took = loop.time() - began
        await _idle(counts)
    finally:
        restore()
    n = len(requests)
    say(f"\n== {phase.name}: {n} writes, {args.concurrency} in flight, {took:.1f} s; per write:\n")
    totals: collections.Counter[str] = collections.Counter()
    for (what, where), k in sorted(counts.items(), key=lambda kv: -kv[1]):
        totals[what.split()[0]] += k
        say(f"  {k / n:7.3f}  {what:<80} {where}\n")
    kinds = sorted(totals)
    idle: collections.Counter[str] = collections.Counter()
    for (what, _), k in background.items():
        idle[what.split()[0]] += k
    say(
        "  total per write: "
        + ", ".join(f"{kind} {totals[kind] / n:.2f}" for kind in kinds)
        + "\n  background (no writes) per second: "
        + ", ".join(f"{kind} {idle[kind] / args.quiet:.1f}" for kind in kinds)
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.write_trips")
    parser.add_argument("--writes", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--ledger", choices=["kafka", "postgres"], default="kafka")
    parser.add_argument(
        "--quiet", type=float, default=2.0, help="seconds of no writes counted as background"
    )
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    asyncio.run(_run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
