"""Every call has a request id: the caller's ``x-request-id`` or a new one, sent back
in the initial metadata and on every log line of the call (real gRPC server)."""

from __future__ import annotations

import logging
import re

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import consent_service_pb2_grpc as api_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.log_context import LogContext
from tests.e2e.harness import TOKENS, running, service_settings

pytestmark = pytest.mark.asyncio(loop_scope="session")


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.addFilter(LogContext())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def lines():
    handler = Lines()
    logging.getLogger().addHandler(handler)
    yield handler
    logging.getLogger().removeHandler(handler)


def returned_id(call) -> str:
    return dict(call)["x-request-id"]


async def test_the_callers_id_is_returned_and_on_the_calls_log_lines(tmp_path, postgres_dsn, lines):
    request = api.CanSendRequest(phone="+14155552671", brand="acme", campaign="promo")
    async with (
        running(service_settings(tmp_path, postgres_dsn, kafka=None)) as runtime,
        grpc.aio.insecure_channel(runtime.address) as channel,
    ):
        stub = api_grpc.ConsentServiceStub(channel)
        # A bad token: the refusal is logged, inside the call.
        refused = stub.CanSend(
            request, metadata=[("authorization", "Bearer nope"), ("x-request-id", "trace-7")]
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await refused
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert returned_id(await refused.initial_metadata()) == "trace-7"

        # No id given: a new one, returned, and on the call's lines.
        anonymous = stub.CanSend(request, metadata=[("authorization", "Bearer nope")])
        with pytest.raises(grpc.aio.AioRpcError):
            await anonymous
        made = returned_id(await anonymous.initial_metadata())
        assert re.fullmatch(r"[0-9a-f]{32}", made)

        # An answered call, an id that cannot be used (it is replaced), health and
        # reflection streams: each has one.
        answered = stub.CanSend(
            request,
            metadata=[("authorization", f"Bearer {TOKENS['admin'][0]}"), ("x-request-id", "a b")],
        )
        await answered
        replaced = returned_id(await answered.initial_metadata())
        assert replaced != "a b" and re.fullmatch(r"[0-9a-f]{32}", replaced)
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), metadata=[("x-request-id", "probe-1")]
        )
        await health
        assert returned_id(await health.initial_metadata()) == "probe-1"
        stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
            metadata=[("x-request-id", "reflect-1")],
        )
        assert [r.list_services_response.service async for r in stream]
        assert returned_id(await stream.initial_metadata()) == "reflect-1"

    refusals = [r for r in lines.records if r.getMessage().startswith("refused a call")]
    assert [r.request_id for r in refusals] == ["trace-7", made]  # type: ignore[attr-defined]
