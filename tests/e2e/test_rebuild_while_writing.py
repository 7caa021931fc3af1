"""``consent-ledger rebuild`` while the service serves and takes writes (the README
says it may): a fact the service's projector applies while the rebuild is partway
must not make the rebuild skip the facts before it. The projector followed on from
its own place, past the rebuild's, and stored its position there; the rebuild then
took every event below it as applied and left it out, opt-ins and opt-outs alike
(an auditor's listing missing them, and an opt-in written afterwards, backdated
before a lost opt-out, allowed). The facts written during the rebuild here are
opt-outs refused for their details, held for review: they are appended at once,
however far the view is behind, where most writes wait for the view."""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api

from tests.e2e.harness import (
    Clock,
    client,
    define,
    defined,
    held_info,
    kafka_service_settings,
    opt_in,
    opt_out,
    running,
    service_settings,
)
from tests.e2e.test_rebuild_answers_alike import finished, rebuild
from tests.e2e.test_rebuild_resume import applied

pytestmark = pytest.mark.asyncio(loop_scope="session")

PHONES = [f"+1415555{2300 + i:04d}" for i in range(200)]


@pytest.mark.parametrize("ledger", ["kafka", "postgres"])
async def test_a_write_during_a_rebuild_leaves_no_fact_behind(
    tmp_path: Path, postgres_dsn: str, kafka_bootstrap: str, ledger: str
) -> None:
    clock = Clock()
    now = clock.now
    if ledger == "kafka":
        settings = kafka_service_settings(tmp_path, postgres_dsn, kafka_bootstrap)
    else:
        settings = service_settings(tmp_path, postgres_dsn, kafka=None)
    promo = define("acme", "promo", now - timedelta(days=2), ["+12125550491"])
    async with running(settings, clock) as runtime, client(runtime.address) as c:
        await defined(runtime, [promo])
        for phone in PHONES:  # each opted in, then out
            await c.RecordOptIn(opt_in(phone, "acme", "promo", now - timedelta(hours=3)))
        await asyncio.gather(
            *(c.RecordOptOut(opt_out(p, "acme", "promo", now - timedelta(hours=2))) for p in PHONES)
        )
        total = 1 + 2 * len(PHONES)  # the campaign, and each number's two facts
        while await applied(settings.postgres_dsn) < total:  # all of them in the view
            await asyncio.sleep(0.05)

        # A rebuild of one event a batch, held still partway.
        process = rebuild(settings, "--batch-size", "1")
        deadline = time.monotonic() + 120
        while await applied(settings.postgres_dsn) not in range(5, total):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the rebuild applied nothing in 120 s"
            await asyncio.sleep(0.005)
        process.send_signal(signal.SIGSTOP)
        assert await applied(settings.postgres_dsn) < total
        # Meanwhile each number's opt-out, refused for its missing channel: held
        # for review, appended at once however far the view is behind.
        writes = [
            asyncio.ensure_future(
                c.RecordOptOut(opt_out(p, "acme", "promo", now - timedelta(hours=1), channel=0))
            )
            for p in PHONES
        ]
        await asyncio.sleep(0.5)
        process.send_signal(signal.SIGCONT)
        for write in writes:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await write
            assert held_info(refused.value) is not None, refused.value.details()
        await finished(process)

    async with running(settings, clock) as runtime, client(runtime.address) as c:
        kept = {}
        for phone in PHONES:
            listed = await c.ListEvents(api.ListEventsRequest(phone=phone, brand="acme"))
            kept[phone] = sorted(e.event.event_type for e in listed.events)
    lost = [p for p, types in kept.items() if len(types) != 3]
    assert not lost, f"facts left out by the rebuild: {[(p, kept[p]) for p in lost[:3]]}"
