"""The freshness promise under load, on the real broker and database.

The README promises that a read without a consistency token never allows a send
after an opt-out acknowledged at least one refresh interval (50 ms) earlier. Under
a few thousand calls a second the guard's look at the ledger's end comes late and
takes long, so the promise holds only if reads enforce it: here client processes
load the server with CanSend while another writes opt-outs, and every read sent a
refresh interval or more after its number's opt-out was acknowledged must say no.
The opt-outs go to the instance that is read, which knows of its own writes at
once: every read sent after the acknowledgement must say no.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import time
import uuid
from collections import Counter
from datetime import timedelta

import pytest
from consent.v1 import consent_service_pb2 as api

from ledger.ports import ConsistencyToken
from services.bootstrap import Runtime
from tests.e2e import load_clients
from tests.e2e.harness import (
    TOKENS,
    client,
    define,
    kafka_settings,
    noon_in_los_angeles,
    opt_in,
    service_settings,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

REFRESH = 0.05
NUMBERS = 60
SPACING = 0.1  # an opt-out every 100 ms: 6 s of load
READERS = 2
TASKS = 24  # concurrent callers in each reader process


async def test_no_read_allows_a_send_a_refresh_interval_after_an_acked_opt_out(
    tmp_path, postgres_dsn, kafka_bootstrap
):
    when = noon_in_los_angeles()
    settings = service_settings(
        tmp_path,
        postgres_dsn,
        kafka=kafka_settings(kafka_bootstrap, f"load-{uuid.uuid4().hex[:8]}."),
    )
    assert settings.freshness.refresh_interval == REFRESH
    runtime = Runtime(settings, clock=lambda: when)
    await runtime.start()
    try:
        async with client(runtime.address) as admin:
            campaign = define("acme", "promo", when - timedelta(days=1))
            written = [await admin.DefineCampaign(campaign)]
            for i in range(NUMBERS):
                written.append(
                    await admin.RecordOptIn(
                        opt_in(load_clients.phone(i), "acme", "promo", when - timedelta(hours=1))
                    )
                )
        token = ConsistencyToken({})
        for w in written:
            token = token.merge(ConsistencyToken.decode(w.consistency_token))
        assert await runtime.guard.wait_for_token(token, 10)

        spawn = multiprocessing.get_context("spawn")
        start = time.monotonic() + 3  # the clients' start-up (imports) comes first
        secret = TOKENS["acme-app"][0]
        outs = [tmp_path / f"reads-{n}.json" for n in range(READERS)]
        acked_out = tmp_path / "acked.json"
        processes = [
            spawn.Process(
                target=load_clients.read,
                args=(runtime.address, secret, NUMBERS, start, SPACING, TASKS, str(out)),
            )
            for out in outs
        ]
        processes.append(
            spawn.Process(
                target=load_clients.opt_out,
                args=(
                    runtime.address,
                    secret,
                    NUMBERS,
                    start,
                    SPACING,
                    when.timestamp(),
                    str(acked_out),
                ),
            )
        )
        for p in processes:
            p.start()
        while any(p.is_alive() for p in processes):  # the server runs on this loop
            await asyncio.sleep(0.1)
        assert [p.exitcode for p in processes] == [0] * len(processes)
    finally:
        await runtime.stop()

    acked = {int(i): t for i, t in json.loads(acked_out.read_text()).items()}
    reads_seen = [r for out in outs for r in json.loads(out.read_text())]
    late = [
        (sent, i, allowed, reason) for sent, i, allowed, reason, _ in reads_seen if sent >= acked[i]
    ]
    allowed_late = [
        (round((sent - acked[i]) * 1000, 1), i) for sent, i, allowed, _ in late if allowed
    ]
    duration = max(s for s, *_ in reads_seen) - min(s for s, *_ in reads_seen)
    reasons = Counter(api.Reason.Name(r[3]) for r in reads_seen)
    took = sorted(r[4] for r in reads_seen)
    print("p50 p90 p99", [round(took[int(len(took) * q)] * 1000, 1) for q in (0.5, 0.9, 0.99)])
    print(f"{len(reads_seen)} reads in {duration:.1f} s, {len(late)} after ack; {reasons}")
    assert allowed_late == []
    # Not vacuous: the load was real, the numbers were allowed before their opt-outs,
    # and many reads came after an opt-out's acknowledgement.
    assert len(reads_seen) / duration > 200
    assert sum(1 for r in reads_seen if r[2]) > 500
    assert len(late) > 500
