"""What PostgreSQL spends on a write's statements, statement by statement: its
backends' own CPU, read before and after each statement.

    python -m bench.view_statements [--subscribers N] [--batches N] [--batch B]
                                    [--big-batches N] [--big B]

On a fresh database (``bench.infra``; ``CONSENT_TEST_POSTGRES_DSN`` reuses a server)
seeded with N subscribers (``bench.seed``), one view on a pool of one connection and
a read pool of one (as ``read_pool`` makes it) does what single writes make the
service do: ``take_request`` once a write (opt-ins, opt-outs and sends in turn), then
``apply`` of B such writes as one batch, as 64 writes in flight make batches of tens
of events; then ``apply`` of batches of ``--big`` sends of one request, as a
``RecordMessagesSent`` call makes them. It prints the CPU of each statement per
call and per event, the totals per write and per event, and this process's CPU in
``apply``. A backend's CPU is read from ``/proc/<pid>/schedstat`` (nanoseconds), so
the server must run on this machine; other sessions' work is not counted, which
the whole-server figures of ``python -m bench`` do count.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from bench.infra import Infra
from bench.phones import phones as make_phones
from bench.seed import (
    APPLY_BATCH,
    BRAND,
    CAMPAIGN,
    Plan,
    campaign_event,
    partition_of,
    recorded_for,
)
from ledger.events import (
    CollectionMethod,
    ConsentGranted,
    ConsentRevoked,
    ConsentTier,
    LedgerPosition,
    MessageKind,
    MessageSent,
    Recorded,
    RevocationChannel,
    SubscriberEvent,
)
from ledger.ports import Stream
from services.adapters.migrations import migrate
from services.adapters.postgres_view import PostgresConsentView, read_pool
from tests.builders import proof

PARTITIONS = 12
Spent = collections.defaultdict[tuple[str, str], list[float]]


def backend_ns(pid: int) -> int:
    """CPU time a backend has spent so far, in nanoseconds."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


def count_statements(spent: Spent, phase: list[str]) -> Callable[[], None]:
    """Add each statement's backend CPU (µs) and count to ``spent`` under the phase
    named by ``phase[0]``, until the returned function is called."""
    conn = asyncpg.connection.Connection
    saved: dict[str, Any] = {}

    def wrap(name: str) -> None:
        original = saved[name] = getattr(conn, name)

        async def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
            pid = self.get_server_pid()
            before = backend_ns(pid)
            try:
                return await original(self, *args, **kwargs)
            finally:
                query = args[0] if args and isinstance(args[0], str) else name
                if name == "copy_records_to_table":
                    query = f"COPY {query}"
                entry = spent[phase[0], " ".join(query.split())[:72]]
                entry[0] += 1
                entry[1] += (backend_ns(pid) - before) / 1e3

        setattr(conn, name, timed)

    for name in (
        "execute",
        "executemany",
        "fetch",
        "fetchrow",
        "fetchval",
        "copy_records_to_table",
    ):
        wrap(name)

    def restore() -> None:
        for name, original in saved.items():
            setattr(conn, name, original)

    return restore


def _event(
    kind: int, i: int, phone: str, at: datetime, request: tuple[str, str]
) -> SubscriberEvent:
    common: dict[str, Any] = {
        "event_id": uuid.uuid4(),
        "occurred_at": at + timedelta(seconds=i),
        "phone": phone,
        "brand": BRAND,
        "request_id": request[0],
        "request_fingerprint": request[1],
    }
    if kind == 0:
        when = common["occurred_at"]
        return ConsentGranted(
            campaign=CAMPAIGN,
            tier=ConsentTier.PROMOTIONAL,
            method=CollectionMethod.WEB_FORM,
            proof=proof(when, name=f"S {i}", email=f"s{i}@example.com", postal_address=""),
            **common,
        )
    if kind == 1:
        return ConsentRevoked(
            campaign=CAMPAIGN, channel=RevocationChannel.KEYWORD, text="STOP", **common
        )
    return MessageSent(
        message_id=f"m-{uuid.uuid4().hex[:12]}",
        campaign=CAMPAIGN,
        kind=MessageKind.REGULAR,
        included_opt_out_language=True,
        identified_sender=True,
        **common,
    )


async def _run(args: argparse.Namespace) -> None:
    infra = Infra()
    await infra.start()
    try:
        dsn = await infra.fresh_database()
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
        reads = await read_pool(dsn, min_size=1, max_size=1)
        try:
            await migrate(pool)
            await _measure(args, pool, reads)
        finally:
            await reads.close()
            await pool.close()
    finally:
        await infra.stop()


async def _measure(args: argparse.Namespace, pool: asyncpg.Pool, reads: asyncpg.Pool) -> None:
    view = PostgresConsentView(pool, reads=reads)
    at = datetime.now(UTC).replace(microsecond=0)
    await view.apply(Stream.CAMPAIGNS, [campaign_event(at)])
    seeded = recorded_for(Plan(args.subscribers, PARTITIONS, at))
    for start in range(0, len(seeded), APPLY_BATCH):
        await view.apply(Stream.SUBSCRIBERS, seeded[start : start + APPLY_BATCH])
    next_offset = dict(
        await pool.fetch(
            "SELECT partition, next_offset FROM projection_offset WHERE stream = 'subscribers'"
        )
    )
    await pool.execute("CHECKPOINT")

    def recorded(event: SubscriberEvent) -> Recorded:
        p = partition_of(event.phone, PARTITIONS)
        offset = next_offset.get(p, 0)
        next_offset[p] = offset + 1
        return Recorded(event, LedgerPosition(p, offset), event.occurred_at + timedelta(seconds=1))

    phones = make_phones(args.subscribers + args.batches * args.batch)
    spent: Spent = collections.defaultdict(lambda: [0, 0.0])
    phase = ["single"]
    python = {"single": 0.0, "big": 0.0}
    restore = count_statements(spent, phase)
    try:
        i = 0
        for _ in range(args.batches):
            batch = []
            for _ in range(args.batch):
                kind = i % 3  # a new subscriber's opt-in, or a seeded one's opt-out or send
                phone = phones[args.subscribers + i] if kind == 0 else phones[i % args.subscribers]
                request = (f"r-{uuid.uuid4().hex}", uuid.uuid4().hex[:16])
                event = _event(kind, i, phone, at, request)
                message = (phone, event.message_id) if isinstance(event, MessageSent) else None
                await view.take_request(BRAND, *request, [str(event.event_id)], message)
                batch.append(recorded(event))
                i += 1
            batch.sort(key=lambda r: (r.position.partition, r.position.offset))
            started = time.process_time()
            await view.apply(Stream.SUBSCRIBERS, batch)
            python["single"] += time.process_time() - started
        phase[0] = "big"
        for _ in range(args.big_batches):
            request = (f"rb-{uuid.uuid4().hex}", uuid.uuid4().hex[:16])
            events = [_event(2, i + j, phones[(i + j) % args.subscribers], at, request)
                      for j in range(args.big)]  # fmt: skip
            i += args.big
            phase[0] = "claim"
            await view.claim_request(BRAND, *request, [str(e.event_id) for e in events])
            phase[0] = "big"
            batch = sorted(
                (recorded(e) for e in events),
                key=lambda r: (r.position.partition, r.position.offset),
            )
            started = time.process_time()
            await view.apply(Stream.SUBSCRIBERS, batch)
            python["big"] += time.process_time() - started
    finally:
        restore()
    counts = {"single": args.batches * args.batch, "big": args.big_batches * args.big}
    for name, label in (("single", "single writes"), ("big", f"batches of {args.big} sends")):
        rows = sorted(
            ((q, n, us) for (ph, q), (n, us) in spent.items() if ph == name), key=lambda r: -r[2]
        )
        events = counts[name]
        print(f"== {label}: {events} events; PostgreSQL CPU by statement")
        print(f"  {'calls':>7} {'µs/call':>9} {'µs/event':>9}  statement")
        for query, n, us in rows:
            print(f"  {n:7.0f} {us / n:9.1f} {us / events:9.1f}  {query}")
        total = sum(us for _, _, us in rows) / events
        mine = python[name] / events * 1e6
        print(f"  total {total:.1f} µs an event; this process in apply {mine:.1f} µs an event")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=20_000)
    parser.add_argument("--batches", type=int, default=150)
    parser.add_argument("--batch", type=int, default=30)
    parser.add_argument("--big-batches", type=int, default=6)
    parser.add_argument("--big", type=int, default=1000)
    asyncio.run(_run(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
