"""A CanSend call on the use cases over the in-memory adapters, behind the real
servicer and interceptors, runs code only in the files of its reading path
(``tests/reading_path.py``); ``tests/e2e/test_cansend_reading_path.py`` traces
the service as it serves."""

from __future__ import annotations

import asyncio
import sys

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api_pb2
from consent.v1 import consent_service_pb2_grpc as api_grpc

from services.adapters.digest_replica import CampaignHistoryCache
from services.grpc_api.auth import TokenAuthenticator, token_digest
from services.grpc_api.server import GrpcServer
from services.grpc_api.servicer import ConsentServicer
from services.metrics import ServiceMetrics
from services.usecases import UseCases
from tests.builders import BRAND, PHONE
from tests.reading_path import IN_MEMORY_PATH, INTERCEPTORS, Trace, traced
from tests.unit.usecase_harness import NOW, define, ledger_at_now, opt_in, running

pytestmark = pytest.mark.asyncio(loop_scope="session")

TOKEN = "check-secret"


async def test_a_cansend_call_runs_code_only_in_its_reading_path():
    caller = {"name": "c", "sha256": token_digest(TOKEN), "scopes": ["check"], "brands": "*"}
    auth = TokenAuthenticator.from_data({"tokens": [caller]})
    async with running(ledger=ledger_at_now()) as (app, _):
        usecases = UseCases.build(
            app.ledger,
            app.view,
            app.guard,
            clock=lambda: NOW,
            campaigns=CampaignHistoryCache(app.view),
        )
        await usecases.writes.record(define())
        await usecases.writes.record(opt_in("opt-in-1"))
        server = GrpcServer(ConsentServicer(usecases, auth, ServiceMetrics()), "127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(server.address) as channel:
                stub = api_grpc.ConsentServiceStub(channel)
                request = api_pb2.CanSendRequest(phone=PHONE, brand=BRAND, campaign="promo")
                metadata = (("authorization", f"Bearer {TOKEN}"),)
                await stub.CanSend(request, metadata=metadata)  # imports and first reads
                answer, touched = await traced(lambda: stub.CanSend(request, metadata=metadata))
        finally:
            await server.stop(0)
    assert answer.allowed, answer  # the whole policy ran, not an early refusal
    assert touched - (IN_MEMORY_PATH | INTERCEPTORS) == set()
    # The trace saw the call from the edge to the domain.
    assert {
        "services/grpc_api/servicer.py",
        "services/usecases/checks.py",
        "services/adapters/memory_view.py",
        "ledger/policy.py",
    } <= touched


async def test_the_trace_sees_project_code_and_counts_only_the_calls_tasks():
    from ledger.phone import to_e164

    async def work() -> str:
        return to_e164("+14155552671")

    trace = Trace()
    sys.setprofile(trace)
    try:
        await asyncio.create_task(work())
    finally:
        sys.setprofile(None)
    assert "ledger/phone.py" in set().union(*trace.files.values())
    assert trace.of_the_call() == set()  # no task ran CanSend: none is the call's
