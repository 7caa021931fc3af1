"""A broker stopped and started again under a running service (real Kafka,
PostgreSQL and gRPC): within seconds of the broker coming back, every partition
takes writes again and CanSend answers from the view once more."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from datetime import timedelta
from typing import Any

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api

from services.bootstrap import Runtime
from services.settings import FreshnessSettings
from tests.e2e.harness import (
    client,
    define,
    kafka_settings,
    noon_in_los_angeles,
    opt_in,
    opt_out,
    service_settings,
)
from tests.infra.kafka_broker import KafkaBroker

pytestmark = pytest.mark.asyncio(loop_scope="session")

WHEN = noon_in_los_angeles()
PARTITIONS = 4
RECOVERY_BOUND_S = 15.0
"""Measured 0.6-2.1 s on a busy 2-core machine. Before the producer was renewed
after a failed batch, some partition never took a write again."""


def _phones_by_partition(runtime: Runtime, start: int) -> dict[int, str]:
    """One number per subscriber partition, numbered from ``start``."""
    found: dict[int, str] = {}
    n = start
    while len(found) < PARTITIONS:
        phone = f"+1415555{n:04d}"
        partition = runtime.ledger.partition_for(phone)  # type: ignore[union-attr]
        found.setdefault(partition, phone)
        n += 1
    return found


async def _until(what: str, attempt: Any, deadline: float) -> float:
    """Call ``attempt()`` until it returns True; the moment it did."""
    while True:
        with contextlib.suppress(grpc.aio.AioRpcError):
            if await attempt():
                return time.monotonic()
        assert time.monotonic() < deadline, f"{what}: not within {RECOVERY_BOUND_S} s"
        await asyncio.sleep(0.05)


async def test_every_partition_takes_writes_and_reads_answer_soon_after_a_broker_restart(
    tmp_path, postgres_dsn, private_kafka_broker: KafkaBroker
):
    """Writes keep coming while the broker stops cleanly and stays down longer than
    a request's timeout, so that batches queued for a partition with no leader
    expire. The producer spends a sequence number on each; aiokafka's idempotent
    producer then had every later write to that partition refused by the broker
    (OutOfOrderSequenceNumber), for as long as the process ran."""
    kafka = dataclasses.replace(
        kafka_settings(
            private_kafka_broker.bootstrap_servers,
            f"restart-{uuid.uuid4().hex[:8]}.",
            partitions=PARTITIONS,
        ),
        request_timeout_s=2,
        append_timeout_s=3,
    )
    settings = dataclasses.replace(
        service_settings(tmp_path, postgres_dsn, kafka=kafka),
        freshness=FreshnessSettings(refresh_interval=0.05, wait_bound=2),
    )
    runtime = Runtime(settings, clock=lambda: WHEN)
    await runtime.start()
    try:
        async with client(runtime.address, "acme-app") as c, client(runtime.address) as admin:
            await admin.DefineCampaign(define("acme", "promo", WHEN - timedelta(days=1)))
            before = _phones_by_partition(runtime, 1000)
            for phone in before.values():
                await _until(
                    "an opt-in before the restart",
                    lambda phone=phone: _opted_in(c, phone),
                    time.monotonic() + 30,
                )
            down = asyncio.Event()
            refused = 0

            async def keep_writing() -> None:
                """Opt-outs to every partition while the broker stops and is away."""
                nonlocal refused
                n = 2000
                while not down.is_set():
                    n += 1
                    # Brand-wide opt-outs go straight to the ledger (no campaign to
                    # look up in a view that cannot be shown fresh meanwhile).
                    stop = opt_out(f"+1415556{n % 10000:04d}", "acme", None, WHEN)
                    try:
                        await c.RecordOptOut(stop, timeout=4)
                    except grpc.aio.AioRpcError as err:
                        refused += "not acknowledged" in (err.details() or "")

            writing = [asyncio.create_task(keep_writing()) for _ in range(4)]
            await asyncio.to_thread(private_kafka_broker.stop)
            await asyncio.sleep(2 * kafka.request_timeout_s + 1)  # queued batches expire
            down.set()
            await asyncio.gather(*writing)
            assert refused > 0, "no write failed while the broker was away: it proved nothing"

            await asyncio.to_thread(private_kafka_broker.start)
            back = time.monotonic()
            deadline = back + RECOVERY_BOUND_S
            after = _phones_by_partition(runtime, 3000)
            written = await asyncio.gather(
                *(
                    _until(
                        f"a write to partition {p}",
                        lambda phone=phone: _written(c, phone),
                        deadline,
                    )
                    for p, phone in after.items()
                ),
                *(
                    _until(
                        f"CanSend for a number opted in before, on partition {p}",
                        lambda phone=phone: _allowed(c, phone),
                        deadline,
                    )
                    for p, phone in before.items()
                ),
            )
            assert max(written) - back < RECOVERY_BOUND_S
    finally:
        await runtime.stop()


def _opt_in(phone: str) -> api.RecordOptInRequest:
    return opt_in(phone, "acme", "promo", WHEN - timedelta(hours=2))


async def _opted_in(c: Any, phone: str) -> bool:
    await c.RecordOptIn(_opt_in(phone), timeout=5)
    return await _allowed(c, phone)


async def _written(c: Any, phone: str) -> bool:
    """A new opt-in acknowledged, and then read back through its token."""
    w = await c.RecordOptIn(_opt_in(phone), timeout=2)
    answer = await c.CanSend(
        api.CanSendRequest(
            phone=phone, brand="acme", campaign="promo", at_least_as_fresh=w.consistency_token
        ),
        timeout=2,
    )
    return bool(answer.allowed)


async def _allowed(c: Any, phone: str) -> bool:
    answer = await c.CanSend(
        api.CanSendRequest(phone=phone, brand="acme", campaign="promo"), timeout=2
    )
    return bool(answer.allowed)
