"""A request id for every call: the caller's ``x-request-id`` when it gives a usable
one, else a new one; set in ``services.log_context.REQUEST_ID`` while the call runs
(so every log line of the call carries it) and sent back to the caller in the
call's initial metadata, under the same key, before anything else happens.

It names the call, for logs; it is not the ``request_id`` field of a write, which
makes retries idempotent."""

from __future__ import annotations

import inspect
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from services.grpc_api.wrapping import WrappingInterceptor
from services.log_context import REQUEST_ID

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
        token = await _start(context)
        try:
            async for reply in behavior(request, context):
                yield reply
        finally:
            REQUEST_ID.reset(token)

    return called
