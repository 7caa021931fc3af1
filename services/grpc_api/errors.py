"""Every error the service can raise, mapped to one gRPC status, in one place.

Bad input carries a ``google.rpc.BadRequest`` with the field and the reason;
a refused precondition a ``google.rpc.PreconditionFailure``. Nothing is written
when any of these is raised, because validation runs before the append.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from ledger.errors import DomainError, InvalidRequest
from ledger.ports import TOO_LARGE, EventTooLarge, LedgerUnavailable
from services.errors import (
    AccessNotRecorded,
    AlreadyExists,
    FailedPrecondition,
    MessageIdReused,
    NotConsistent,
    NotFound,
    OutcomeUnknown,
    PermissionDenied,
    RateLimited,
    Refused,
    ReusedIdHeldForReview,
    ServiceError,
    ShuttingDown,
    StoreUnavailable,
    Unauthenticated,
)
from services.wire.enums import WireFormatError

log = logging.getLogger(__name__)
R = TypeVar("R")


MAX_DESCRIPTION = 256
"""The most bytes (UTF-8) of one violation's description: a reason may quote what was
sent, and a quote of a 100,000-character field would not fit the trailers."""

MAX_DETAIL_BYTES = 3_072
"""The most bytes of violations one ``BadRequest`` lists; a last one counts those
left out (a request with 2,000 bad sender numbers hears of the first ones)."""

MAX_MESSAGE = 1_024
"""The most bytes (UTF-8) of a status message. The message and the details travel
as trailing metadata, which a gRPC client refuses whole above 16 KiB (and may refuse
above 8 KiB): a caller would get RESOURCE_EXHAUSTED instead of the field it got wrong."""


def _clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` bytes of UTF-8, marked when cut."""
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[: limit - 3].decode(errors="ignore") + "\u2026"


def _within_budget(
    violations: tuple[tuple[str, str], ...], budget: int = MAX_DETAIL_BYTES
) -> tuple[tuple[str, str], ...]:
    kept: list[tuple[str, str]] = []
    used = 0
    for i, (field, reason) in enumerate(violations):
        size = len(field.encode()) + len(reason.encode()) + 8
        if used + size > budget - 128 and i < len(violations) - 1:
            left_out = len(violations) - i
            kept.append(
                ("request", f"has {left_out} more bad fields, not listed; correct these and resend")
            )
            break
        kept.append((field, reason))
        used += size
    return tuple(kept)


def _status(code: int, message: str, *details: Any) -> grpc.Status:
    status = status_pb2.Status(code=code, message=_clip(message, MAX_MESSAGE))
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return rpc_status.to_status(status)


def refusal_of(exc: DomainError | EventTooLarge) -> DomainError:
    """``exc`` as the refusal of a request's details it is answered as: a fact the
    ledger refuses as too large is refused as a detail of the request is, and no
    retry gets past it either."""
    if isinstance(exc, EventTooLarge):
        return InvalidRequest("request", TOO_LARGE)
    return exc


def bad_request(
    field: str, reason: str, *details: Any, more: tuple[tuple[str, str], ...] = ()
) -> grpc.Status:
    """INVALID_ARGUMENT with one ``BadRequest`` holding the violation and ``more``
    (every bad field of the request), then any other ``details``."""
    violations = _within_budget(
        tuple((f, _clip(r, MAX_DESCRIPTION)) for f, r in ((field, reason), *more))
    )
    detail = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=f, description=r)
            for f, r in violations
        ]
    )
    return _status(
        code_pb2.INVALID_ARGUMENT,
        "; ".join(f"{f}: {r}" for f, r in violations),
        detail,
        *details,
    )


ERROR_DOMAIN = "consent-ledger"
"""``google.rpc.ErrorInfo.domain`` of the reasons this service gives."""


def _refused(exc: DomainError) -> grpc.Status:
    """Bad input, with a reason a client can branch on (``google.rpc.ErrorInfo``, the
    field in its metadata) after the field when the domain gives one."""
    more = exc.violations[1:]  # every other bad field of the request, in the same answer
    if not exc.error_reason:
        return bad_request(exc.field, exc.reason, more=more)
    info = error_details_pb2.ErrorInfo(
        reason=exc.error_reason, domain=ERROR_DOMAIN, metadata={"field": exc.field, **exc.metadata}
    )
    return bad_request(exc.field, exc.reason, info, more=more)


REQUEST_ID_REUSED = "REQUEST_ID_REUSED"
LISTED_EVENT_IDS = 20
"""How many of the first request's event ids a ``REQUEST_ID_REUSED`` refusal lists."""


def already_exists(exc: AlreadyExists) -> grpc.Status:
    """A request id used before for another request: the first request's event ids in
    an ``ErrorInfo`` (reason ``REQUEST_ID_REUSED``; metadata ``request_id`` and
    ``event_ids``, comma-separated) and in a ``ResourceInfo`` naming the request id;
    for an opt-out held for review all the same, a second ``ErrorInfo`` saying so.

    Past ``LISTED_EVENT_IDS`` ids (a ``RecordMessagesSent`` of 1,000 messages) only
    the first are listed, with ``event_count`` saying how many there are: 1,000 ids
    would not fit a gRPC client's trailer limit, and the call would fail unread."""
    listed = exc.event_ids[:LISTED_EVENT_IDS]
    ids = ",".join(listed)
    metadata = {"request_id": exc.request_id, "event_ids": ids}
    described = ids
    if len(exc.event_ids) > len(listed):
        metadata["event_count"] = str(len(exc.event_ids))
        described = f"{ids} and {len(exc.event_ids) - len(listed):,} more"
    info = error_details_pb2.ErrorInfo(
        reason=REQUEST_ID_REUSED, domain=ERROR_DOMAIN, metadata=metadata
    )
    resource = error_details_pb2.ResourceInfo(
        resource_type="consent.v1.RequestId",
        resource_name=exc.request_id,
        description=f"first used for the request that recorded events {described}",
    )
    details: list[Any] = [info, resource]
    if isinstance(exc, ReusedIdHeldForReview):  # an opt-out held all the same: say so
        held = error_details_pb2.ErrorInfo(
            reason=exc.error_reason,
            domain=ERROR_DOMAIN,
            metadata={"field": exc.field, **exc.metadata},
        )
        details.append(held)
    return _status(code_pb2.ALREADY_EXISTS, f"{exc.field}: {exc.reason}", *details)


MESSAGE_ID_REUSED = "MESSAGE_ID_REUSED"
MESSAGE_IDS_BYTES = 2_048
"""The most bytes of ``ResourceInfo``s a ``MESSAGE_ID_REUSED`` refusal of a batch names
its message ids in (the first one always): a message id may be 256 bytes, and the
details travel in the trailers with the message."""


def message_id_reused(exc: MessageIdReused) -> grpc.Status:
    """A provider message id recorded before, sent again saying something else of the
    message: the first send's event id in an ``ErrorInfo`` (reason
    ``MESSAGE_ID_REUSED``; metadata ``message_id`` and ``event_ids``) and in a
    ``ResourceInfo`` naming the message id.

    A batch that reuses several is refused naming every one, in the call's order: the
    message lists each field and its reason (as a ``FailedPrecondition`` lists every
    undefined campaign; past ``MAX_MESSAGE``, the rest counted), and a
    ``ResourceInfo`` follows for each message id, as many as ``MESSAGE_IDS_BYTES``
    hold. The ``ErrorInfo`` and the first ``ResourceInfo`` stay the first message's, where
    clients read them."""
    ids = ",".join(exc.event_ids)
    info = error_details_pb2.ErrorInfo(
        reason=MESSAGE_ID_REUSED,
        domain=ERROR_DOMAIN,
        metadata={"message_id": exc.message_id, "event_ids": ids},
    )
    if not exc.more:
        return _status(code_pb2.ALREADY_EXISTS, f"{exc.field}: {exc.reason}", info, _sent_as(exc))
    # Within the message's budget, so that what is left out is counted: a batch may
    # reuse a thousand message ids.
    listed = _within_budget(
        tuple((m.field, _clip(m.reason, MAX_DESCRIPTION)) for m in (exc, *exc.more)),
        MAX_MESSAGE,
    )
    resources = [_sent_as(exc)]
    used = resources[0].ByteSize()
    for reused in exc.more:
        resource = _sent_as(reused)
        used += resource.ByteSize()
        if used > MESSAGE_IDS_BYTES:
            break
        resources.append(resource)
    message = "; ".join(f"{f}: {r}" for f, r in listed)
    return _status(code_pb2.ALREADY_EXISTS, message, info, *resources)


def _sent_as(exc: MessageIdReused) -> error_details_pb2.ResourceInfo:
    """The ``ResourceInfo`` naming ``exc``'s message id and the send that holds it."""
    return error_details_pb2.ResourceInfo(
        resource_type="consent.v1.MessageId",
        resource_name=exc.message_id,
        description=f"recorded as sent by event {','.join(exc.event_ids)}",
    )


def undecodable(message: str) -> grpc.Status:
    """A request body that is not a ``message`` (its full protobuf name)."""
    return bad_request("request", f"is not a {message} in the protobuf wire format")


def rate_limited(exc: RateLimited) -> grpc.Status:
    """RESOURCE_EXHAUSTED, with when to retry (``google.rpc.RetryInfo``) and whose
    quota it is (``google.rpc.QuotaFailure``)."""
    retry = error_details_pb2.RetryInfo()
    retry.retry_delay.FromNanoseconds(max(1_000_000, round(exc.retry_after * 1e9)))
    quota = error_details_pb2.QuotaFailure(
        violations=[
            error_details_pb2.QuotaFailure.Violation(
                subject=f"caller:{exc.caller}", description=exc.reason
            )
        ]
    )
    message = f"{exc.reason}; retry in {exc.retry_after:.3g} s"
    return _status(code_pb2.RESOURCE_EXHAUSTED, message, retry, quota)


def to_status(exc: BaseException) -> grpc.Status:
    """The one mapping from an exception to what the caller sees."""
    if isinstance(exc, DomainError):
        return _refused(exc)
    if isinstance(exc, WireFormatError):
        return bad_request(exc.field, exc.reason)
    if isinstance(exc, NotFound):
        info = error_details_pb2.ErrorInfo(
            reason="NOT_FOUND", domain=ERROR_DOMAIN, metadata={"field": exc.field}
        )
        resource = error_details_pb2.ResourceInfo(
            resource_type=exc.resource_type,
            resource_name=_clip(exc.resource_name, MAX_DESCRIPTION),
            description=_clip(exc.reason, MAX_DESCRIPTION),
        )
        return _status(code_pb2.NOT_FOUND, f"{exc.field}: {exc.reason}", info, resource)
    if isinstance(exc, FailedPrecondition):
        violations = _within_budget(
            tuple((f, _clip(r, MAX_DESCRIPTION)) for f, r in exc.violations)
        )
        detail = error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(
                    type="CONSENT_LEDGER", subject=f, description=r
                )
                for f, r in violations
            ]
        )
        if not isinstance(exc, Refused):
            message = "; ".join(f"{f}: {r}" for f, r in violations)
            return _status(code_pb2.FAILED_PRECONDITION, message, detail)
        info = error_details_pb2.ErrorInfo(
            reason=exc.error_reason,
            domain=ERROR_DOMAIN,
            metadata={"field": exc.field, **exc.metadata},
        )
        return _status(code_pb2.FAILED_PRECONDITION, f"{exc.field}: {exc.reason}", detail, info)
    if isinstance(exc, MessageIdReused):
        return message_id_reused(exc)
    if isinstance(exc, AlreadyExists):
        return already_exists(exc)
    if isinstance(exc, Unauthenticated):
        return _status(code_pb2.UNAUTHENTICATED, exc.reason)
    if isinstance(exc, PermissionDenied):
        return _status(code_pb2.PERMISSION_DENIED, exc.reason)
    if isinstance(exc, RateLimited):
        return rate_limited(exc)
    if isinstance(exc, ShuttingDown):
        return _unavailable("SHUTTING_DOWN", f"{exc.field}: {exc.reason}")
    if isinstance(exc, NotConsistent):
        return _status(code_pb2.UNAVAILABLE, f"{exc.field}: {exc.reason}")
    if isinstance(exc, AccessNotRecorded):
        return _unavailable("ACCESS_NOT_RECORDED", f"{exc.field}: {exc.reason}")
    if isinstance(exc, ServiceError):
        return _status(code_pb2.INTERNAL, exc.reason)
    if isinstance(exc, EventTooLarge):  # the limits of TEXT_LIMITS should never let one by
        return bad_request("request", TOO_LARGE)
    if isinstance(exc, OutcomeUnknown | LedgerUnavailable):
        return _unavailable(
            "OUTCOME_UNKNOWN",
            "outcome unknown: the write may or may not be recorded; retry with the same "
            f"request_id, which records nothing twice ({exc})",
        )
    if isinstance(exc, StoreUnavailable):
        return _unavailable("STORE_UNAVAILABLE", f"{exc}; retry (a write with the same request_id)")
    if isinstance(exc, _DETERMINISTIC):
        # A bug, not an outage: the same request would fail the same way, so "retry"
        # would have a client retry forever. (Logged with its traceback.)
        return _status(
            code_pb2.INTERNAL, "the service could not handle this request; it was logged"
        )
    # The ledger or the database is unreachable. A write may still have been
    # recorded; the same request_id makes the retry safe either way.
    return _status(
        code_pb2.UNAVAILABLE, "the ledger could not be reached; retry with the same request_id"
    )


RETRY_AFTER = duration_pb2.Duration(seconds=1)
"""The ``google.rpc.RetryInfo`` delay of an UNAVAILABLE this service gives."""


def _unavailable(reason: str, message: str) -> grpc.Status:
    """UNAVAILABLE with a reason a client can branch on and a delay to retry after."""
    info = error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN)
    retry = error_details_pb2.RetryInfo(retry_delay=RETRY_AFTER)
    return _status(code_pb2.UNAVAILABLE, message, info, retry)


_DETERMINISTIC = (ArithmeticError, LookupError, TypeError, ValueError)
"""Exceptions that no outage raises: the ledger's and the database's failures are
``ConnectionError``/``OSError``, timeouts, asyncpg's and aiokafka's own errors."""


Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[R]]


def translate_errors(handler: Handler[R]) -> Handler[R]:
    """Wrap a servicer method so every exception leaves as a proper gRPC status,
    counted in the servicer's ``metrics`` under the method's name."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        try:
            return await handler(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            if not isinstance(exc, DomainError | ServiceError | WireFormatError):
                log.exception("%s failed", handler.__name__)
            status = to_status(exc)
            self.metrics.failed(handler.__name__, status.code.name)
            await context.abort_with_status(status)
            raise AssertionError("abort_with_status returns only by raising") from exc

    return wrapper


StreamHandler = Callable[[Any, Any, grpc.aio.ServicerContext], AsyncIterator[R]]


def translate_stream_errors(handler: StreamHandler[R]) -> StreamHandler[R]:
    """``translate_errors`` for a server-streaming method (an async generator): an
    exception before or between its messages ends the stream with its status."""

    @functools.wraps(handler)
    async def wrapper(
        self: Any, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[R]:
        try:
            async for reply in handler(self, request, context):
                yield reply
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            if not isinstance(exc, DomainError | ServiceError | WireFormatError):
                log.exception("%s failed", handler.__name__)
            status = to_status(exc)
            self.metrics.failed(handler.__name__, status.code.name)
            await context.abort_with_status(status)
            raise AssertionError("abort_with_status returns only by raising") from exc

    return wrapper
