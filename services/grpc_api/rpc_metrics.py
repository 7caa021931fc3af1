"""Per-call metrics of every gRPC method: started and handled counts by status code,
and handling time, under the names of go-grpc-prometheus (``grpc_server_*``), which
dashboards for gRPC services already read.

Written here on prometheus_client's own ``Counter`` and ``Histogram``: none of the
gRPC instrumentation libraries works with grpc.aio servers today
(py-grpc-prometheus wraps only synchronous servers; OpenTelemetry's gRPC
instrumentation records traces, not metrics; grpcio-observability leaves out the
server metrics of grpc.aio).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from services.grpc_api.wrapping import WrappingInterceptor
from services.metrics import ServiceMetrics

_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _code(context: grpc.aio.ServicerContext, failed: BaseException | None) -> str:
    """The status the call ended with: what the handler (or an abort) set, else OK,
    or UNKNOWN for an error that set none, CANCELLED for a cancelled call."""
    if isinstance(failed, asyncio.CancelledError):
        return "CANCELLED"
    code: Any = context.code()
    if isinstance(code, int):
        code = _CODES.get(code)
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    return "OK" if failed is None else "UNKNOWN"


class RpcMetrics(WrappingInterceptor):
    def __init__(self, metrics: ServiceMetrics) -> None:
        super().__init__()
        self._metrics = metrics

    def _wrap(
        self, details: grpc.HandlerCallDetails, handler: grpc.RpcMethodHandler
    ) -> grpc.RpcMethodHandler:
        service, _, method = details.method.lstrip("/").rpartition("/")
        kind = (
            ("stream" if handler.request_streaming else "unary")
            + "_"
            + ("stream" if handler.response_streaming else "unary")
        )
        behavior = getattr(handler, kind)
        grpc_type = {
            "unary_unary": "unary",
            "unary_stream": "server_stream",
            "stream_unary": "client_stream",
            "stream_stream": "bidi_stream",
        }[kind]
        labels = (service, method, grpc_type)
        if inspect.isasyncgenfunction(behavior):
            wrapped: Any = self._streaming(behavior, labels)
        elif inspect.iscoroutinefunction(behavior):
            wrapped = self._unary(behavior, labels)
        else:
            return handler
        make = getattr(grpc, f"{kind}_rpc_method_handler")
        return make(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _unary(self, behavior: Any, labels: tuple[str, str, str]) -> Any:
        metrics = self._metrics

        async def called(request: Any, context: grpc.aio.ServicerContext) -> Any:
            metrics.rpc_started(*labels)
            started, failed = time.perf_counter(), None
            try:
                return await behavior(request, context)
            except BaseException as exc:
                failed = exc
                raise
            finally:
                metrics.rpc_handled(*labels, _code(context, failed), time.perf_counter() - started)

        return called

    def _streaming(self, behavior: Any, labels: tuple[str, str, str]) -> Any:
        metrics = self._metrics

        async def called(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            metrics.rpc_started(*labels)
            started, failed = time.perf_counter(), None
            try:
                async for reply in behavior(request, context):
                    yield reply
            except BaseException as exc:
                failed = exc
                raise
            finally:
                metrics.rpc_handled(*labels, _code(context, failed), time.perf_counter() - started)

        return called
