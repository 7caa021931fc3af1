"""The interceptors that wrap each method's handler once (``WrappingInterceptor``:
a server's methods are fixed, and wrapping costs more than a lookup, so each
wrapped handler is kept by method name). Admission (authentication, rate limits,
sizes) is ``services.grpc_api.admission``.

``CallIds``: a request id for every call, the caller's ``x-request-id`` when it
gives a usable one, else a new one; set in ``services.log_context.REQUEST_ID``
while the call runs (so every log line of the call carries it) and sent back to
the caller in the call's initial metadata, under the same key, before anything
else happens. It names the call, for logs; it is not the ``request_id`` field of a
write, which makes retries idempotent.

``RpcMetrics``: started and handled counts by status code, and handling time, of
every method, under the names of go-grpc-prometheus (``grpc_server_*``), which
dashboards for gRPC services already read. Written on prometheus_client's own
``Counter`` and ``Histogram``: none of the gRPC instrumentation libraries works
with grpc.aio servers today (py-grpc-prometheus wraps only synchronous servers;
OpenTelemetry's gRPC instrumentation records traces, not metrics;
grpcio-observability leaves out the server metrics of grpc.aio).
"""

from __future__ import annotations

import asyncio
import inspect
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from services.log_context import REQUEST_ID
from services.metrics import ServiceMetrics


class WrappingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Serves each method with ``_wrap(details, handler)``, made at its first call
    (only for methods the server has: an unknown one is not kept)."""

    def __init__(self) -> None:
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        cached = self._handlers.get(details.method)
        if cached is not None:
            return cached
        handler = await continuation(details)
        if handler is None:
            return None
        wrapped = self._handlers[details.method] = self._wrap(details, handler)
        return wrapped

    def _wrap(
        self, details: grpc.HandlerCallDetails, handler: grpc.RpcMethodHandler
    ) -> grpc.RpcMethodHandler:
        raise NotImplementedError


KEY = "x-request-id"
_USABLE = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
"""What a caller's id may be: what tracing systems and load balancers generate,
nothing that could forge a log line or field, and short."""


def call_id(metadata: Any) -> str:
    """The caller's ``x-request-id`` if usable, else a new random one."""
    for key, value in metadata or ():
        if key == KEY and isinstance(value, str) and _USABLE.fullmatch(value):
            return value
    return uuid.uuid4().hex


class CallIds(WrappingInterceptor):
    """The outermost interceptor: the id is set before authentication and rate
    limiting, so their log lines carry it too."""

    def _wrap(
        self, details: grpc.HandlerCallDetails, handler: grpc.RpcMethodHandler
    ) -> grpc.RpcMethodHandler:
        kind = (
            ("stream" if handler.request_streaming else "unary")
            + "_"
            + ("stream" if handler.response_streaming else "unary")
        )
        behavior = getattr(handler, kind)
        # A streaming answer is an async generator, or a coroutine that writes
        if inspect.isasyncgenfunction(behavior):
            wrapped: Any = _streaming(behavior)
        elif inspect.iscoroutinefunction(behavior):
            wrapped = _unary(behavior)
        else:
            return handler  # not this server's kind of handler
        make = getattr(grpc, f"{kind}_rpc_method_handler")
        return make(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


async def _start(context: grpc.aio.ServicerContext) -> Any:
    rid = call_id(context.invocation_metadata())
    await context.send_initial_metadata(((KEY, rid),))
    return REQUEST_ID.set(rid)


def _unary(behavior: Any) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    async def called(request: Any, context: grpc.aio.ServicerContext) -> Any:
        token = await _start(context)
        try:
            return await behavior(request, context)
        finally:
            REQUEST_ID.reset(token)

    return called


def _streaming(behavior: Any) -> Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]:
    async def called(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        # Not reset after: gRPC runs each call in a task of its own, whose context
        # ends with it. A call cancelled while gRPC sends a reply leaves this
        # generator at its yield, and asyncio closes it later from another task, in
        # whose context a reset raised ValueError ("Task exception was never
        # retrieved").
        await _start(context)
        async for reply in behavior(request, context):
            yield reply

    return called


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
