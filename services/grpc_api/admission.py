"""What a call passes before its handler runs: who calls, at what rate, with what body.

grpc.aio decodes a request with its handler's deserializer before the handler
runs, and a body that does not decode fails there: grpc answers UNKNOWN and logs
a traceback, for anyone who can reach the port. ``Admission`` (a server
interceptor) hands each method its body as bytes instead, and in this order:

1. for the consent API, authenticates the caller from its metadata (or client
   certificate): UNAUTHENTICATED, and the body is never read;
2. takes the call from the caller's rate limit (``CallerLimits``, below):
   RESOURCE_EXHAUSTED with ``RetryInfo`` and ``QuotaFailure``;
3. decodes the body: INVALID_ARGUMENT (``BadRequest`` on ``request``) if it is
   not the method's message.

The health and reflection services take no token; their bodies are decoded the
same way. A refusal is counted in the metrics; a refused authentication or rate
is logged, and the log's repeat limit (``services.log_limits``) bounds how often.

Rate limits: a token bucket for each caller (``TokenBucket``). It holds up to
``burst`` calls and fills at ``rate`` calls a second. A call is admitted when the
bucket holds at least one whole call; it then takes its cost, which may be more
than one (a ``CanSendBatch`` costs its numbers) and may take the bucket below
zero: the calls after it wait until the bucket has filled back to one. So a limit
bounds the work a caller asks for, not only its calls, and a batch is never
refused for being larger than ``burst``. An import stream's messages wait their turn
in the bucket before they are read: its first, while the bucket is in debt (its
opening took its call), so streams opened at once do not each take a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator
from typing import Any, TypeAlias

import grpc

from services.errors import RateLimited, Unauthenticated
from services.grpc_api.auth import Principal
from services.grpc_api.errors import rate_limited, to_status, undecodable
from services.metrics import ServiceMetrics
from services.settings import RateLimit

log = logging.getLogger(__name__)

Context: TypeAlias = grpc.aio.ServicerContext
Authenticate: TypeAlias = Callable[[Context], Principal]

_COSTS: dict[str, Callable[[Any], int]] = {
    "CanSendBatch": lambda request: len(request.phones),
    "RecordMessagesSent": lambda request: len(request.messages),
    "ImportConsents": lambda request: len(request.records),
}
"""Methods that count as more than one call against a rate limit: a batch is as
many calls as it has numbers (or messages); each message of an import stream, as
many as it has records."""


class Admission(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(
        self,
        authenticate: Authenticate | None,
        authenticated: Collection[str] = (),
        limits: CallerLimits | None = None,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        """``authenticated``: the full names of the services whose callers must
        authenticate (with ``authenticate``, which raises ``Unauthenticated``)."""
        self._authenticate = authenticate
        self._authenticated = frozenset(authenticated)
        self._limits = limits or CallerLimits()
        self._metrics = metrics or ServiceMetrics()
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        """Each method's admitted handler, made at its first call: only methods the
        server has (an unknown name is UNIMPLEMENTED, and not kept)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = self._handlers.get(details.method)
        if handler is None:
            found = await continuation(details)
            if found is None:
                return None
            handler = self._handlers[details.method] = self._admitting(details.method, found)
        return handler

    def _admitting(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        service, _, name = method.lstrip("/").rpartition("/")
        decode = handler.request_deserializer
        behavior = (
            handler.unary_unary
            or handler.unary_stream
            or handler.stream_unary
            or handler.stream_stream
        )
        if decode is None or not (
            inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)
        ):
            return handler  # nothing to decode, or not this server's kind of handler
        message = getattr(getattr(decode, "__self__", None), "DESCRIPTOR", None)
        call = _Call(
            self,
            name,
            decode,
            message.full_name if message is not None else f"request of {method}",
            self._authenticate if service in self._authenticated else None,
            _COSTS.get(name) if service in self._authenticated else None,
        )
        serialize = handler.response_serializer
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(call.unary(behavior), None, serialize)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(call.unary(behavior), None, serialize)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(call.streaming(behavior), None, serialize)
        return grpc.stream_stream_rpc_method_handler(call.streaming(behavior), None, serialize)

    async def refuse(self, name: str, context: Context, exc: Exception) -> None:
        """Answer the call with ``exc``'s status: counted, and (limited) logged."""
        if isinstance(exc, Unauthenticated):
            log.warning("refused a call to %s from %s: %s", name, context.peer(), exc.reason)
            status = to_status(exc)
        elif isinstance(exc, RateLimited):
            log.warning("refused a call to %s: %s", name, exc.reason)
            status = rate_limited(exc)
        else:
            status = to_status(exc)
        self._metrics.failed(name, status.code.name)
        await context.abort_with_status(status)

    async def undecodable(self, name: str, message: str, context: Context) -> None:
        self._metrics.failed(name, grpc.StatusCode.INVALID_ARGUMENT.name)
        await context.abort_with_status(undecodable(message))


class _Call:
    """One method's admission steps, around its handler."""

    def __init__(
        self,
        admission: Admission,
        name: str,
        decode: Callable[[bytes], Any],
        message: str,
        authenticate: Authenticate | None,
        cost: Callable[[Any], int] | None,
    ) -> None:
        self._admission = admission
        self._name = name
        self._decode = decode
        self._message = message
        self._authenticate = authenticate
        self._cost = cost

    async def admit(self, context: Context) -> Principal | None:
        """The caller, once authenticated and within its rate; None for a service
        that takes no token. Refused calls end here (``abort`` raises)."""
        if self._authenticate is None:
            return None
        admission = self._admission
        try:
            principal = self._authenticate(context)
        except Unauthenticated as exc:
            await admission.refuse(self._name, context, exc)
            raise
        wait = admission._limits.admit(principal.name, principal.rate_limit)
        if wait:
            limit = principal.rate_limit or admission._limits.default
            assert limit is not None
            reason = (
                f"{principal.name} is over its rate limit of {limit.rate:g} calls a second "
                f"(burst {limit.burst})"
            )
            await admission.refuse(self._name, context, RateLimited(principal.name, reason, wait))
        return principal

    async def decoded(self, raw: bytes, context: Context) -> Any:
        try:
            return self._decode(raw)
        except Exception:  # protobuf's DecodeError, or whatever a decoder raises
            await self._admission.undecodable(self._name, self._message, context)
            raise

    def unary(self, behavior: Any) -> Callable[[bytes, Context], Any]:
        if inspect.isasyncgenfunction(behavior):

            async def streamed(raw: bytes, context: Context) -> AsyncIterator[Any]:
                await self.admit(context)
                async for reply in behavior(await self.decoded(raw, context), context):
                    yield reply

            return streamed

        async def answered(raw: bytes, context: Context) -> Any:
            principal = await self.admit(context)
            request = await self.decoded(raw, context)
            if self._cost is not None and principal is not None:
                self._admission._limits.charge(principal.name, self._cost(request) - 1)
            return await behavior(request, context)

        return answered

    def streaming(self, behavior: Any) -> Callable[[AsyncIterator[bytes], Context], Any]:
        async def requests(
            raws: AsyncIterator[bytes], context: Context, principal: Principal | None
        ) -> AsyncIterator[Any]:
            cost = self._cost
            # The call the stream's opening took stands for its first message, which
            # still waits while the bucket is in debt: streams opened at once were
            # each admitted before any message was charged, and a caller limited to
            # 200 calls a second had 30 messages of 1,000 records taken at once.
            call = 0.0
            async for raw in raws:
                if cost is not None and principal is not None:
                    await self._turn_of(principal, call)
                request = await self.decoded(raw, context)
                if cost is not None and principal is not None:
                    self._admission._limits.charge(principal.name, cost(request) - 1)
                call = 1.0
                yield request

        if inspect.isasyncgenfunction(behavior):

            async def streamed(raws: AsyncIterator[bytes], context: Context) -> AsyncIterator[Any]:
                principal = await self.admit(context)
                async for reply in behavior(requests(raws, context, principal), context):
                    yield reply

            return streamed

        async def answered(raws: AsyncIterator[bytes], context: Context) -> Any:
            principal = await self.admit(context)
            return await behavior(requests(raws, context, principal), context)

        return answered

    async def _turn_of(self, principal: Principal, call: float = 1.0) -> None:
        """Wait until ``principal``'s bucket admits one more message of a stream, and
        take it (``call``: what it takes then; 0, the stream's first, whose call its
        opening took). A stream over the limit is slowed to it, not refused: refused,
        an import would stop part way, with the work it asked for already done."""
        limits = self._admission._limits
        while wait := limits.admit(principal.name, principal.rate_limit, call):
            await asyncio.sleep(wait)


class TokenBucket:
    __slots__ = ("_stamp", "_tokens", "limit")

    def __init__(self, limit: RateLimit, now: float) -> None:
        self.limit = limit
        self._tokens = float(limit.burst)
        self._stamp = now

    def take(self, now: float, call: float = 1.0) -> float:
        """Admit one call (0.0) and take ``call`` from the bucket, or answer how many
        seconds until the bucket will hold that again (``call`` 0: until it is out
        of debt)."""
        limit = self.limit
        tokens = min(limit.burst, self._tokens + (now - self._stamp) * limit.rate)
        self._stamp = now
        if tokens >= call:
            self._tokens = tokens - call
            return 0.0
        self._tokens = tokens
        return (call - tokens) / limit.rate

    def charge(self, cost: float) -> None:
        """Take ``cost`` more from the bucket (the rest of an admitted call's cost)."""
        self._tokens -= cost


class CallerLimits:
    """Every caller's bucket, by the caller's name. A caller without a limit of its
    own has ``default`` (None: no limit)."""

    def __init__(
        self, default: RateLimit | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.default = default
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def admit(self, caller: str, own: RateLimit | None, call: float = 1.0) -> float:
        """0.0 when ``caller`` may make a call now (and ``call`` is counted), else the
        seconds it should wait before it tries again."""
        limit = own if own is not None else self.default
        if limit is None or limit.unlimited:
            return 0.0
        bucket = self._buckets.get(caller)
        if bucket is None or bucket.limit != limit:  # new, or changed in the tokens file
            bucket = self._buckets[caller] = TokenBucket(limit, self._clock())
        return bucket.take(self._clock(), call)

    def charge(self, caller: str, cost: float) -> None:
        """Count ``cost`` more calls of an admitted call of ``caller``'s."""
        bucket = self._buckets.get(caller)
        if bucket is not None and cost > 0:
            bucket.charge(cost)


class OpenStreams:
    """How many streams of one kind each caller has open, at most ``most``: a stream
    is one call however long it runs, so a caller's rate limit does not bound what
    its open streams hold."""

    def __init__(self, kind: str, most: int, why: str) -> None:
        self.kind, self.most, self._why = kind, most, why
        self._open: Counter[str] = Counter()

    @contextlib.contextmanager
    def opened(self, caller: str) -> Iterator[None]:
        """A stream of ``caller``'s, open until the block ends; ``RateLimited`` when
        ``most`` of its are open already."""
        if self._open[caller] >= self.most:
            raise RateLimited(
                caller,
                f"{self.most} {self.kind} streams of this caller are open, the most at "
                f"once ({self._why}): open this one when one ends",
                retry_after=1.0,
            )
        self._open[caller] += 1
        try:
            yield
        finally:
            self._open[caller] -= 1
            if not self._open[caller]:
                del self._open[caller]
