"""The base of the interceptors that wrap each method's handler once: the call ids
and the per-RPC metrics. Wrapping a handler costs more than a lookup, and a
server's methods are fixed, so each wrapped handler is kept by method name."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc


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
