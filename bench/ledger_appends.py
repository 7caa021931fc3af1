"""The embedded ledger's append rate: ``python -m bench.ledger_appends``.

Appends one ``MessageSent`` per call from ``--in-flight`` concurrent tasks for
``--duration`` seconds through the embedded default's ``EventLog`` adapter, on a
PostgreSQL started by ``tests.infra`` (or ``CONSENT_TEST_POSTGRES_DSN``'s), and
prints appends a second and latency percentiles. The write path above the ledger
(gRPC, validation, the view's checks) is not in it: this is the ledger's share.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from ledger.events import MessageKind, MessageSent, event_id_for
from ledger.ports import EventLog
from services.adapters.migrations import migrate
from tests.infra.postgres_server import PostgresServer, create_database


def _event(n: int) -> MessageSent:
    return MessageSent(
        event_id=event_id_for(f"bench-append-{uuid.uuid4()}"),
        occurred_at=datetime.now(UTC),
        phone=f"+1415555{n % 10000:04d}",
        brand="acme",
        message_id=f"m-{n}",
        campaign="promo",
        kind=MessageKind.REGULAR,
    )


async def _run(ledger: EventLog, in_flight: int, duration: float) -> list[float]:
    latencies: list[float] = []
    deadline = time.perf_counter() + duration
    counter = iter(range(1 << 62))

    async def writer() -> None:
        while (start := time.perf_counter()) < deadline:
            await ledger.append([_event(next(counter))])
            latencies.append(time.perf_counter() - start)

    await asyncio.gather(*(writer() for _ in range(in_flight)))
    return latencies


async def _main(args: argparse.Namespace) -> None:
    from services.adapters.postgres_ledger import PostgresLedger

    folder: Path | None = None
    server: PostgresServer | None = None
    admin = os.environ.get("CONSENT_TEST_POSTGRES_DSN")
    if admin is None:
        folder = Path(tempfile.mkdtemp(prefix="consent-bench-appends-"))
        server = PostgresServer(folder)
        server.start()
        admin = server.dsn
    try:
        dsn = await create_database(admin, f"bench_appends_{uuid.uuid4().hex[:8]}")
        pool = await asyncpg.create_pool(dsn, min_size=2, max_size=10)
        await migrate(pool)
        ledger = await PostgresLedger.open(pool, dsn)
        try:
            await _run(ledger, args.in_flight, args.warmup)
            latencies = sorted(await _run(ledger, args.in_flight, args.duration))
        finally:
            await ledger.close()
            await pool.close()
        q = statistics.quantiles(latencies, n=100)
        print(
            f"{len(latencies) / args.duration:,.0f} appends/s at {args.in_flight} in flight; "
            f"p50 {q[49] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms"
        )
    finally:
        if server is not None:
            server.stop()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
