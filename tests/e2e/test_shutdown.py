"""Graceful shutdown: health turns NOT_SERVING first, in-flight calls finish."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.bootstrap import Runtime
from tests.e2e.harness import client, service_settings

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_shutdown_reports_not_serving_and_lets_in_flight_calls_finish(tmp_path, postgres_dsn):
    runtime = Runtime(service_settings(tmp_path, postgres_dsn, kafka=None))
    await runtime.start()
    assert runtime.usecases is not None
    checks = runtime.usecases.checks
    entered, release = asyncio.Event(), asyncio.Event()
    real = checks.can_send

    async def slow(*args, **kwargs):
        entered.set()
        await release.wait()
        return await real(*args, **kwargs)

    checks.can_send = slow  # type: ignore[method-assign]
    async with (
        client(runtime.address, "acme-app") as c,
        grpc.aio.insecure_channel(runtime.address) as channel,
    ):
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="consent.v1.ConsentService")
        )
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING

        in_flight = asyncio.create_task(
            c.CanSend(api.CanSendRequest(phone="+14155552671", brand="acme", campaign="promo"))
        )
        # Bounded: if CanSend stops going through ``Checks.can_send``, fail here, not at
        # the timeout.
        await asyncio.wait_for(entered.wait(), 10)
        stopping = asyncio.create_task(runtime.stop())
        update = await asyncio.wait_for(watch.read(), 5)
        assert update.status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert not in_flight.done()

        release.set()
        answer = await in_flight  # finished within the grace period, not cut off
        assert answer.reason == api.REASON_CAMPAIGN_UNKNOWN
        await stopping
