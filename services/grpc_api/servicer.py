"""The ConsentService servicer: proto in, one use case, proto out.

Each method authenticates, checks the caller's scope and brand, translates the
request with ``services.wire.api``, calls the use case (``services.usecases``) and
translates back. Errors leave through ``translate_errors`` (one mapping for the
whole API). The exception is the family of CanSend queries (``_fail_closed``): an
internal failure there answers "not allowed" with ``REASON_INTERNAL_ERROR``, never
an error a caller could mistake for a missing rule. They parse every wire field of
the request before the call, so a ``WireFormatError`` during it comes from stored
data this code cannot decode (a row from a newer writer, during a rolling upgrade,
say): such a failure too, not the caller's INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import grpc
from consent.v1 import consent_service_pb2 as api_pb2
from consent.v1 import consent_service_pb2_grpc as api_grpc
from consent.v1 import ledger_pb2
from google.protobuf.message import Message

from ledger.commands import (
    HELD_OPT_OUT,
    HandleInboundMessage,
    HoldRefusedOptOut,
    RecordMessagesSent,
    RecordOptIn,
    RecordOptOut,
    RefusedOutcome,
    check_name,
)
from ledger.deadlines import revocation_due
from ledger.digest import informational_only
from ledger.errors import DomainError, InvalidRequest
from ledger.events import ANY_BRAND, MessageKind
from ledger.phone import to_e164
from ledger.policy import Decision, Reason, deny
from ledger.ports import ConsistencyToken, EventTooLarge, Stream
from ledger.retention import PlaceLegalHold, ReleaseLegalHold, RequestErasure
from ledger.state import exemptions_not_granted
from ledger.validation import Violations, is_name
from services import packets
from services.errors import (
    AlreadyExists,
    FailedPrecondition,
    PermissionDenied,
    ServiceError,
    ShuttingDown,
    StoreUnavailable,
    Unauthenticated,
)
from services.grpc_api import imports as imports_api
from services.grpc_api.admission import OpenStreams
from services.grpc_api.auth import Principal, Scope, TokenAuthenticator
from services.grpc_api.deadlines import within, write_budget
from services.grpc_api.errors import (
    refusal_of,
    to_status,
    translate_errors,
    translate_stream_errors,
)
from services.log_context import REQUEST_ID
from services.metrics import ServiceMetrics
from services.usecases import UseCases, sweeps
from services.usecases.access import ADMITTED, Reader
from services.usecases.checks import BatchResult, CheckResult, check_target
from services.usecases.health import HealthProgress
from services.usecases.sweeps import SweepProgress
from services.wire import api, codec
from services.wire.enums import WireFormatError

log = logging.getLogger(__name__)

MAX_BATCH = 1000

MAX_WATCHES = 100
"""``WatchConsentChanges`` streams one caller may have open at once: each reads the
view again whenever the view moves, so a thousand watches of one caller read it a
thousand times a write."""

MAX_LONG_READS = 4
"""``SweepCampaign`` and ``StreamCampaignHealth`` streams one caller may have open
at once, together: each walks the brand's events page by page, on one of the
view's connections while it reads, so one caller's long reads started by the
hundred took the connections, and every other brand's calls past their
deadlines."""

_ABORTING: set[asyncio.Future[None]] = set()
"""Statuses being sent to streams ended from outside (``_while_reader``): held here,
as asyncio keeps only weak references to tasks, until the client has them."""


def _aborted(aborting: asyncio.Future[None]) -> None:
    """Let go of a status sent; its ``AbortError`` is how gRPC's abort returns."""
    _ABORTING.discard(aborting)
    if not aborting.cancelled():
        aborting.exception()


DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
R = TypeVar("R")


_NUMBER_FIELDS = ("phone", "from_phone", "to_phone")


def _digest(request: Message) -> str:
    """A digest of everything a refused request said, for its hold's id: a retry of it
    holds it once, another request holds another. Its numbers are digested in E.164
    where they read as numbers, as a request's fingerprint digests them: a retry
    spelling one otherwise (``+1 (415) 555-2671``) is the same request, held once."""
    said = type(request)()
    said.CopyFrom(request)
    for name in _NUMBER_FIELDS:
        if name in said.DESCRIPTOR.fields_by_name:
            with contextlib.suppress(DomainError):  # unreadable: held as sent, if at all
                setattr(said, name, to_e164(getattr(said, name), field=name))
    return _digest_as_sent(said)


def _digest_as_sent(request: Message) -> str:
    """``_digest`` with the numbers as spelled: what a hold's id digested before."""
    return hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()[:32]


def _earlier_digest(request: Message) -> str | None:
    """The digest a hold of ``request`` had before its numbers were digested in E.164
    (``_digest_as_sent``), when that differs from ``_digest``; else None."""
    as_sent = _digest_as_sent(request)
    return None if as_sent == _digest(request) else as_sent


def _token(text: str) -> ConsistencyToken | None:
    if not text:
        return None
    try:
        return ConsistencyToken.decode(text)
    except ValueError as exc:
        raise InvalidRequest("at_least_as_fresh", "is not a consistency token") from exc


def _sweep_resume_at(text: str) -> ConsistencyToken | None:
    if not text:
        return None
    try:
        return ConsistencyToken.decode(text)
    except ValueError as exc:
        raise InvalidRequest("resume_read_at", "is not a consistency token") from exc


def _sweep_skip(
    request: api_pb2.SweepCampaignRequest | api_pb2.StreamCampaignHealthRequest,
) -> None:
    """The partitions an interrupted sweep finished are of the read it resumes: none
    without that read, and only partitions that read has."""
    done = list(request.resume_partitions_done)
    if not done:
        return
    resume_at = _sweep_resume_at(request.resume_read_at)
    if resume_at is None:
        raise InvalidRequest(
            "resume_partitions_done", "needs resume_read_at, the read they were swept in"
        )
    known = {p for (stream, p) in resume_at.offsets if stream is Stream.SUBSCRIBERS}
    for partition in done:
        if partition not in known:
            raise InvalidRequest(
                "resume_partitions_done", f"partition {partition} is not in resume_read_at"
            )


def _check_fields(
    request: api_pb2.CanSendRequest | api_pb2.CanSendBatchRequest, phone: str | None
) -> tuple[datetime | None, MessageKind, ConsistencyToken | None]:
    """A check's moment, message kind and token; when one cannot be read, every bad
    field of the request (brand, campaign, a single check's phone) in one refusal."""
    batch = isinstance(request, api_pb2.CanSendBatchRequest)
    try:
        if batch and len(request.phones) > MAX_BATCH:
            raise InvalidRequest("phones", f"at most {MAX_BATCH} numbers per batch")
        at = api.optional_time(request, "at")
        return (
            at,
            api.message_kind_from_proto(request.message_kind),
            _token(request.at_least_as_fresh),
        )
    except DomainError as exc:
        found = Violations()
        found.add(exc)
        found.check(api.optional_time, request, "at")
        found.check(api.message_kind_from_proto, request.message_kind)
        found.check(_token, request.at_least_as_fresh)
        check_target(request.brand, request.campaign, phone, found=found)
        raise AssertionError("check_target raises what was found") from exc


def _brand_window(
    request: api_pb2.GetOptOutRateRequest
    | api_pb2.GetCampaignHealthRequest
    | api_pb2.StreamCampaignHealthRequest,
) -> tuple[str | None, datetime | None, datetime | None, ConsistencyToken | None]:
    """A brand's read over a window: its campaign (None: every campaign), start and
    end times, and the freshness asked for, each refused by field when malformed."""
    campaign = request.campaign if request.HasField("campaign") else None
    _refuse_bad_fields(
        lambda: api.optional_time(request, "start_time"),
        lambda: api.optional_time(request, "end_time"),
        lambda: _token(request.at_least_as_fresh),
        *_target(None, request.brand, campaign),
    )
    return (
        campaign,
        api.optional_time(request, "start_time"),
        api.optional_time(request, "end_time"),
        _token(request.at_least_as_fresh),
    )


def _refuse_bad_fields(*checks: Callable[[], object]) -> None:
    """Run every check of a request's fields, then refuse in one ``DomainError`` (one
    ``BadRequest``) every field that failed; the calls that follow read them again."""
    found = Violations()
    for check in checks:
        found.check(check)
    found.raise_if_any()


def _target(
    phone: str | None, brand: str | None, campaign: str | None = None
) -> list[Callable[[], object]]:
    """The checks of a read's number, brand and campaign (None: not in the request)."""
    checks: list[Callable[[], object]] = []
    if phone is not None:
        checks.append(lambda: to_e164(phone))
    if brand is not None:
        checks.append(lambda: check_name(brand, "brand"))
    if campaign is not None:
        checks.append(lambda: check_name(campaign, "campaign"))
    return checks


async def _fail_closed(what: str, answer: Awaitable[R], failed: Callable[[Decision], R]) -> R:
    """``answer``; or, when it fails for any reason other than the request's own
    errors, ``failed`` of a "not allowed" (``REASON_INTERNAL_ERROR``). A timed-out
    query is an outage, said as such (which store, which bound) and logged in a
    line; anything else is a bug, logged with its traceback."""
    try:
        return await answer
    except (DomainError, ServiceError):  # the request's own errors
        raise
    except Exception as exc:
        if isinstance(exc, StoreUnavailable):
            log.warning("%s failed; answering not allowed: %s", what, exc)
            return failed(deny(Reason.INTERNAL_ERROR, f"{exc}; not allowed"))
        log.exception("%s failed; answering not allowed", what)
        return failed(deny(Reason.INTERNAL_ERROR, "the service could not answer; not allowed"))


REFUSALS = (DomainError, WireFormatError, PermissionDenied, FailedPrecondition)
"""What turns an audit call away before its read: bad input, another brand or a scope
the caller lacks, a campaign never defined."""


def accountable(handler: Any) -> Any:
    """An audit RPC whose refusals are recorded as its reads are: a call refused
    before its read was admitted (``services.usecases.access.ADMITTED``) is written
    to the access log with outcome ``refused``, the status and what the caller was
    told, then refused as it would be. A caller no token names is refused unrecorded:
    there is no one to record, and anyone could fill the log so."""
    if inspect.isasyncgenfunction(handler):

        @functools.wraps(handler)
        async def stream(self: ConsentServicer, request: Any, context: Any) -> Any:
            ADMITTED.set(False)
            try:
                async for reply in handler(self, request, context):
                    yield reply
            except REFUSALS as exc:
                await self._refused(handler.__name__, request, context, exc)
                raise

        return stream

    @functools.wraps(handler)
    async def unary(self: ConsentServicer, request: Any, context: Any) -> Any:
        ADMITTED.set(False)
        try:
            return await handler(self, request, context)
        except REFUSALS as exc:
            await self._refused(handler.__name__, request, context, exc)
            raise

    return unary


# The generated base is untyped to mypy (generated code is excluded from checks).
class ConsentServicer(api_grpc.ConsentServiceServicer):  # type: ignore[misc]
    def __init__(
        self,
        usecases: UseCases,
        auth: TokenAuthenticator,
        metrics: ServiceMetrics | None = None,
        *,
        write_timeout: float = 10.0,
    ) -> None:
        """``write_timeout``: seconds a write may wait at most (``write_budget``)."""
        self.usecases = usecases
        self.auth = auth
        self.metrics = metrics or ServiceMetrics()
        self.write_timeout = write_timeout
        self.stopping = asyncio.Event()
        """Set when the server stops: change streams end, UNAVAILABLE, at once rather
        than at the end of the grace period, and their clients resume elsewhere."""
        self._imports = imports_api.CallerImports()
        self._watches = OpenStreams(
            "WatchConsentChanges",
            MAX_WATCHES,
            "each reads the view again whenever it moves: watch a brand's campaigns "
            "in one stream, or resume one that ended",
        )
        self._long_reads = OpenStreams(
            "SweepCampaign or StreamCampaignHealth",
            MAX_LONG_READS,
            "each walks the brand's events on one of the view's connections: read "
            "the campaigns in turn, or resume one that ended",
        )

    def authenticate(self, context: grpc.aio.ServicerContext) -> Principal:
        """The caller, by its bearer token or client certificate; ``Unauthenticated``
        if it is no one the tokens file names."""
        return self.auth.authenticate(
            context.invocation_metadata() or (), lambda: _certificate_names(context)
        )

    def _caller(
        self, context: grpc.aio.ServicerContext, scope: Scope, brand: str | None = None
    ) -> Principal:
        """The caller, with ``scope``, held to ``brand`` when it is a name. An empty or
        malformed brand is bad input, whoever asks, as for the writes (``_writer``):
        the request's field checks refuse it (INVALID_ARGUMENT naming it), which they
        do before anything is read. So is "*", which no check names: a token of acme
        alone was told PERMISSION_DENIED for it, an admin's INVALID_ARGUMENT."""
        principal = self.authenticate(context)
        if brand is not None and not is_name(brand):
            brand = None
        principal.require(scope, brand)
        return principal

    def _reader(
        self,
        context: grpc.aio.ServicerContext,
        brand: str | None = None,
        *,
        any_brand: bool = False,
    ) -> Reader:
        """The caller as an auditor of ``brand``: the audit use cases record each of
        its reads (``services.usecases.access``) and hold it to its brands.

        A brand left empty or malformed is bad input, whoever asks (a format says
        nothing of any brand's records): it is left to the request's field checks,
        which refuse it (INVALID_ARGUMENT) with every other bad field; the use cases
        would refuse it too, and ``Access.admit`` would not let it read. Only a
        well-formed brand is held to the caller's here (PERMISSION_DENIED), or "*"
        with ``any_brand``, the one read that may name it (the STOPs whose brand was
        unknown, ``ListRevocationCandidates``); to every other read it is bad input
        too, as to the writes (``_writer``).

        An audit stream asks again before each message it sends: the tokens file is
        followed, and a token revoked (or its audit scope or the brand taken from
        it) while a stream is open would otherwise go on receiving, a watch without
        end. It then ends UNAUTHENTICATED or PERMISSION_DENIED, sending nothing more;
        ``_while_reader`` asks as well when the file is read again, for a stream with
        nothing to send."""
        principal = self.authenticate(context)
        principal.require(Scope.AUDIT)
        if brand is None or is_name(brand) or (any_brand and brand == ANY_BRAND):
            principal.require(Scope.AUDIT, brand)
        return principal.reader(REQUEST_ID.get() or "-")

    @contextlib.asynccontextmanager
    async def _while_reader(
        self, context: grpc.aio.ServicerContext, rpc: str, brand: str
    ) -> AsyncIterator[None]:
        """End the audit stream ``rpc`` it wraps, UNAUTHENTICATED or PERMISSION_DENIED,
        once the tokens file is read again and its caller is no longer a reader of
        ``brand``.

        Asking before each message alone lets an idle watch of a revoked token stay
        open, holding its call and its read of the view, until the next change. This
        asks when the file is taken instead, so nothing is added per message. The
        status is sent from here, then the stream's task cancelled: one waiting for
        its next item ends quietly; one waiting in gRPC's send for a client that
        stopped reading is cancelled there, where it sent no status, and the client,
        reading again, waited without end for one (or saw CANCELLED). Sent first, the
        status follows the messages already sent, whenever the client reads them."""
        stream = asyncio.current_task()
        assert stream is not None, "a stream is served in a task"
        refused: list[Unauthenticated | PermissionDenied] = []

        async def follow() -> None:
            while True:
                await self.auth.changed()
                try:
                    self._reader(context, brand)
                except (Unauthenticated, PermissionDenied) as exc:
                    refused.append(exc)
                    status = to_status(exc)
                    self.metrics.failed(rpc, status.code.name)
                    aborting = asyncio.ensure_future(context.abort_with_status(status))
                    _ABORTING.add(aborting)
                    aborting.add_done_callback(_aborted)
                    await asyncio.sleep(0)  # its status is on its way before the cancel
                    stream.cancel()
                    return

        following = asyncio.create_task(follow(), name="stream-caller")
        try:
            yield
        except asyncio.CancelledError:
            if not refused:
                raise
            stream.uncancel()  # ends, as aborted: its status is sent already
        finally:
            following.cancel()

    def _retention_caller(
        self, context: grpc.aio.ServicerContext, scope: Scope, brand: str
    ) -> Principal:
        """The caller of an erasure or a hold, with ``scope``, held to ``brand`` when it
        is a well-formed name; an empty or malformed one is bad input, whoever asks,
        and the request's checks refuse it (INVALID_ARGUMENT) before anything is read
        or written."""
        principal = self.authenticate(context)
        principal.require(scope, brand if is_name(brand) else None)
        return principal

    def _writer(
        self,
        context: grpc.aio.ServicerContext,
        scope: Scope,
        brand: str,
        *,
        any_brand: bool = False,
    ) -> Principal:
        """The caller of a write for ``brand``, with ``scope``, held to ``brand`` when it
        is a name (or "*", with ``any_brand``: a write that may name it, resolving a
        STOP whose brand was unknown). An empty or malformed one is bad input, whoever
        asks: the write's field checks refuse it (INVALID_ARGUMENT, with every other
        bad field) before anything is written, where PERMISSION_DENIED would send the
        caller of a token for some brands to look at its token rather than at the
        request. So is "*" where no write may name it: an opt-out under it from a token
        of acme alone was PERMISSION_DENIED and held nothing, where its import is
        refused on ``brand`` and held under acme, whose it may be."""
        principal = self.authenticate(context)
        named = is_name(brand) or (any_brand and brand == ANY_BRAND)
        principal.require(scope, brand if named else None)
        return principal

    async def _refused(
        self, rpc: str, request: Any, context: grpc.aio.ServicerContext, exc: Exception
    ) -> None:
        """Record the audit call ``rpc`` refused with ``exc``, unless its read was
        admitted (and so recorded) before, or no token names its caller. A batch's
        refusal is recorded once for each number it asked about, as its admitted read
        is (``Checks._batch_as_of``): recorded with no number, listing by number
        missed it."""
        if ADMITTED.get():
            return
        try:
            principal = self.authenticate(context)
        except Unauthenticated:
            return
        status = to_status(exc)
        phones = getattr(request, "phones", None)
        asked = list(dict.fromkeys(phones)) if phones else [getattr(request, "phone", None)]
        for phone in asked:
            await self.usecases.access.refused(
                principal.name,
                "grpc",
                REQUEST_ID.get() or "-",
                rpc,
                status.code.name,
                status.details,
                brand=getattr(request, "brand", None),
                phone=phone,
                campaign=getattr(request, "campaign", None),
            )

    # ---- CanSend and friends: fail closed ----------------------------------------------

    @staticmethod
    def _moment_reader(principal: Principal) -> Reader | None:
        """The caller as an auditor, for a check that names a moment (one before now
        is an audit read: ``Checks._admit_past``); None without the audit scope. A
        check of now reads no history, is not recorded, and makes no reader."""
        if Scope.AUDIT not in principal.scopes:
            return None
        return principal.reader(REQUEST_ID.get() or "-")

    async def _at_moment(
        self, rpc: str, request: Any, context: grpc.aio.ServicerContext, answer: Awaitable[R]
    ) -> R:
        """``answer`` of a check that names a moment; one for a past moment refused
        for want of the audit scope is recorded as a refused audit read first, as
        ``accountable`` records the audit calls' refusals."""
        ADMITTED.set(False)
        try:
            return await answer
        except PermissionDenied as exc:
            if exc.field == "at":
                await self._refused(rpc, request, context, exc)
            raise

    @translate_errors
    async def CanSend(
        self, request: api_pb2.CanSendRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.CanSendResponse:
        principal = self._caller(context, Scope.CHECK, request.brand)
        at, kind, token = _check_fields(request, request.phone)
        answer = _fail_closed(
            "CanSend",
            self.usecases.checks.can_send(
                request.phone,
                request.brand,
                request.campaign,
                at=at,
                kind=kind,
                token=token,
                reader=None if at is None else self._moment_reader(principal),
            ),
            CheckResult.failed,
        )
        if at is not None:
            answer = self._at_moment("CanSend", request, context, answer)
        result = await answer
        self.metrics.decided("CanSend", result.decision)
        response = api.decision_to_proto(result.decision, result.token.encode())
        response.provisional = result.provisional
        response.proof_missing_fields.extend(result.proof_missing)
        return response

    @translate_errors
    async def CanSendBatch(
        self, request: api_pb2.CanSendBatchRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.CanSendBatchResponse:
        principal = self._caller(context, Scope.CHECK, request.brand)
        at, kind, token = _check_fields(request, None)
        phones: Sequence[str] = list(request.phones)
        answer = _fail_closed(
            "CanSendBatch",
            self.usecases.checks.can_send_batch(
                phones,
                request.brand,
                request.campaign,
                at=at,
                kind=kind,
                token=token,
                reader=None if at is None else self._moment_reader(principal),
            ),
            lambda failed: BatchResult.failed(phones, failed),
        )
        if at is not None:
            answer = self._at_moment("CanSendBatch", request, context, answer)
        result = await answer
        self.metrics.decided_all("CanSendBatch", result.decisions)
        response = api.batch_to_proto(phones, result.decisions, result.token.encode())
        response.provisional = result.provisional
        return response

    @translate_errors
    @accountable
    async def CanSendAsOf(
        self, request: api_pb2.CanSendAsOfRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.CanSendAsOfResponse:
        reader = self._reader(context, request.brand)
        _refuse_bad_fields(
            lambda: api.required_time(request, "at"),
            lambda: api.optional_time(request, "known_at"),
            lambda: api.message_kind_from_proto(request.message_kind),
            lambda: _token(request.at_least_as_fresh),
            *_target(request.phone, request.brand, request.campaign),
        )
        result = await _fail_closed(
            "CanSendAsOf",
            self.usecases.checks.can_send_as_of(
                request.phone,
                request.brand,
                request.campaign,
                api.required_time(request, "at"),
                api.optional_time(request, "known_at"),
                kind=api.message_kind_from_proto(request.message_kind),
                token=_token(request.at_least_as_fresh),
                reader=reader,
            ),
            CheckResult.failed,
        )
        return api.decision_to_as_of_proto(result.decision, result.token.encode())

    # ---- audit and review: errors, not decisions ----------------------------------------

    @translate_errors
    @accountable
    async def GetConsent(
        self, request: api_pb2.GetConsentRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.GetConsentResponse:
        reader = self._reader(context, request.brand)
        _refuse_bad_fields(
            lambda: _token(request.at_least_as_fresh),
            *_target(request.phone, request.brand, request.campaign),
        )
        consent = await self.usecases.audit.get_consent(
            request.phone,
            request.brand,
            request.campaign,
            _token(request.at_least_as_fresh),
            reader=reader,
        )
        response = api_pb2.GetConsentResponse(
            state=api.CONSENT_STATES.to_proto(consent.state),
            consistency_token=consent.token.encode(),
            pending_revocation_candidates=[
                codec.recorded_to_proto(c.as_recorded()) for c in consent.pending
            ],
            # Past its deadline a pending candidate counts as a revocation for CanSend
            # (REVOCATION_OVERDUE); the state alone reads as if it only awaited review.
            pending_deadlines=[
                api.candidate_deadline_to_proto(c.event_id, revocation_due(c.at), consent.now)
                for c in consent.pending
            ],
            regions=consent.regions,
            proof_missing_fields=consent.proof_missing,
        )
        for name, fact in (
            ("grant", consent.grant),
            ("revocation", consent.revocation),
            ("reconfirmation", consent.reconfirmation),
            ("age_verification", consent.age_verification),
            ("location", consent.location),
        ):
            if fact is not None:
                getattr(response, name).CopyFrom(codec.recorded_to_proto(fact.as_recorded()))
        return response

    @translate_errors
    @accountable
    async def ListEvents(
        self, request: api_pb2.ListEventsRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.ListEventsResponse:
        brand = request.brand if request.HasField("brand") else None
        reader = self._reader(context, brand)
        if brand is None and reader.brands is not None:
            raise InvalidRequest("brand", "is required for a token limited to some brands")
        listing = _listing(request.phone, brand)
        _refuse_bad_fields(
            lambda: _page_size(request.page_size),
            lambda: _page_start(request.page_token, listing),
            lambda: _token(request.at_least_as_fresh),
            *_target(request.phone, brand),
        )
        size = _page_size(request.page_size)
        start = _page_start(request.page_token, listing)
        history = await self.usecases.audit.history(
            request.phone, brand, _token(request.at_least_as_fresh), reader=reader
        )
        events = history.value
        more = start + size < len(events)
        page = events[start : start + size]
        # Judged over the whole history, which a page's replies depend on.
        counted = exemptions_not_granted(events) if page else set()
        return api_pb2.ListEventsResponse(
            events=[codec.recorded_to_proto(r) for r in page],
            next_page_token=_page_token(start + size, listing) if more else "",
            consistency_token=history.token.encode(),
            exemption_not_granted=[
                str(r.event.event_id) for r in page if str(r.event.event_id) in counted
            ],
        )

    @translate_errors
    @accountable
    async def ListRevocationCandidates(
        self, request: api_pb2.ListRevocationCandidatesRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.ListRevocationCandidatesResponse:
        reader = self._reader(context, request.brand, any_brand=True)
        listing = _queue(request.brand, request.overdue_only)
        _refuse_bad_fields(
            lambda: _page_size(request.page_size),
            lambda: _queue_after(request.page_token, listing),
            lambda: _token(request.at_least_as_fresh),
            # "*": the STOPs whose brand is unknown (ANY_BRAND), for an operator's token.
            *_target(None, None if request.brand == ANY_BRAND else request.brand),
        )
        size = _page_size(request.page_size)
        queue = await self.usecases.review.revocation_candidates(
            request.brand,
            _queue_after(request.page_token, listing),
            size + 1,
            overdue_only=request.overdue_only,
            token=_token(request.at_least_as_fresh),
            reader=reader,
        )
        page = queue.candidates[:size]
        more = len(queue.candidates) > size
        return api_pb2.ListRevocationCandidatesResponse(
            candidates=[codec.recorded_to_proto(q.candidate.as_recorded()) for q in page],
            next_page_token=_queue_token(page[-1].position, listing) if more else "",
            consistency_token=queue.token.encode(),
            deadlines=[
                api.candidate_deadline_to_proto(q.candidate.event_id, q.due_at, queue.now)
                for q in page
            ],
        )

    @translate_stream_errors
    @accountable
    async def WatchConsentChanges(
        self, request: api_pb2.WatchConsentChangesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api_pb2.WatchConsentChangesResponse]:
        reader = self._reader(context, request.brand)
        campaign = request.campaign or None
        _refuse_bad_fields(
            lambda: _resume_token(request.resume_token),
            lambda: _start_once(request),
            *_target(None, request.brand, campaign),
        )
        with self._watches.opened(reader.subject):
            changes = self.usecases.audit.watch_changes(
                request.brand,
                _resume_token(request.resume_token),
                from_now=request.from_now,
                campaign=campaign,
                messages=request.include_messages,
                stopping=self.stopping,
                reader=reader,
            )
            self.metrics.watchers += 1
            try:
                async with self._while_reader(context, "WatchConsentChanges", request.brand):
                    async for recorded, token in changes:
                        self._reader(context, request.brand)  # still one (_reader's docstring)
                        # Each yield returns once gRPC has taken the message, which waits
                        # for room in the client's flow-control window: the back-pressure.
                        self.metrics.changes_streamed += 1
                        yield api_pb2.WatchConsentChangesResponse(
                            event=codec.recorded_to_proto(recorded), resume_token=token.encode()
                        )
            finally:
                self.metrics.watchers -= 1
                await changes.aclose()  # its read of the view ends with the call
        raise ShuttingDown(
            "resume_token", "the server is stopping; watch again with the last resume_token"
        )

    @translate_stream_errors
    @accountable
    async def SweepCampaign(
        self, request: api_pb2.SweepCampaignRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api_pb2.SweepCampaignResponse]:
        reader = self._reader(context, request.brand)
        _refuse_bad_fields(
            lambda: sweeps.check_range(
                api.optional_time(request, "start_time"), api.optional_time(request, "end_time")
            ),
            lambda: _token(request.at_least_as_fresh),
            lambda: _sweep_resume_at(request.resume_read_at),
            lambda: _sweep_skip(request),
            *_target(None, request.brand, request.campaign),
        )
        with self._long_reads.opened(reader.subject):
            found = self.usecases.audit.sweep(
                request.brand,
                request.campaign,
                api.optional_time(request, "start_time"),
                api.optional_time(request, "end_time"),
                _token(request.at_least_as_fresh),
                reader=reader,
                resume_at=_sweep_resume_at(request.resume_read_at),
                skip=frozenset(request.resume_partitions_done),
            )
            token = ""
            try:
                async with self._while_reader(context, "SweepCampaign", request.brand):
                    async for item in found:
                        self._reader(context, request.brand)  # still one (_reader's docstring)
                        if isinstance(item, SweepProgress):
                            token = item.token.encode()
                            yield api.sweep_progress_to_proto(
                                item.events_read,
                                item.sends_judged,
                                item.findings,
                                item.done,
                                token,
                                item.partitions_done,
                            )
                        else:
                            yield api.sweep_finding_to_proto(item, token)
            finally:
                await found.aclose()  # its read of the view ends with the call

    @translate_errors
    @accountable
    async def GetOptOutRate(
        self, request: api_pb2.GetOptOutRateRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.GetOptOutRateResponse:
        reader = self._reader(context, request.brand)
        rate = await self.usecases.audit.opt_out_rate(
            request.brand, *_brand_window(request), reader=reader
        )
        return api.opt_out_rate_to_proto(rate.value, rate.token.encode())

    @translate_errors
    @accountable
    async def GetCampaignHealth(
        self, request: api_pb2.GetCampaignHealthRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.GetCampaignHealthResponse:
        reader = self._reader(context, request.brand)
        health = await self.usecases.audit.campaign_health(
            request.brand, *_brand_window(request), reader=reader
        )
        self.metrics.health_flagged(health.value)
        return api.campaign_health_to_proto(health.value, health.token.encode())

    @translate_stream_errors
    @accountable
    async def StreamCampaignHealth(
        self, request: api_pb2.StreamCampaignHealthRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api_pb2.StreamCampaignHealthResponse]:
        reader = self._reader(context, request.brand)
        _refuse_bad_fields(
            lambda: _sweep_resume_at(request.resume_read_at),
            lambda: _sweep_skip(request),
        )
        window = _brand_window(request)
        with self._long_reads.opened(reader.subject):
            found = self.usecases.audit.campaign_health_stream(
                request.brand,
                *window,
                reader=reader,
                resume_at=_sweep_resume_at(request.resume_read_at),
                skip=frozenset(request.resume_partitions_done),
            )
            token = ""
            try:
                async with self._while_reader(context, "StreamCampaignHealth", request.brand):
                    async for item in found:
                        self._reader(context, request.brand)  # still one (_reader's docstring)
                        if isinstance(item, HealthProgress):
                            token = item.token.encode()
                            progress = api_pb2.CampaignHealthProgress(
                                events_read=item.events_read,
                                done=item.done,
                                partitions_done=item.partitions_done,
                            )
                            if item.partition is not None:
                                progress.partition.CopyFrom(
                                    api.campaign_health_to_proto(item.partition, token)
                                )
                            yield api_pb2.StreamCampaignHealthResponse(
                                progress=progress, consistency_token=token
                            )
                        else:
                            self.metrics.health_flagged(item)
                            yield api_pb2.StreamCampaignHealthResponse(
                                health=api.campaign_health_to_proto(item, token),
                                consistency_token=token,
                            )
            finally:
                await found.aclose()  # its read of the view ends with the call

    @translate_errors
    @accountable
    async def GetProofPacket(
        self, request: api_pb2.GetProofPacketRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.GetProofPacketResponse:
        reader = self._reader(context, request.brand)
        campaign = request.campaign if request.HasField("campaign") else None
        _refuse_bad_fields(
            lambda: api.packet_format_from_proto(request.format),
            lambda: _token(request.at_least_as_fresh),
            *_target(request.phone, request.brand, campaign),
        )
        fmt = api.packet_format_from_proto(request.format)
        packet = await self.usecases.audit.proof_packet(
            request.phone,
            request.brand,
            campaign,
            _token(request.at_least_as_fresh),
            reader=reader,
            document=None if fmt is None else fmt.value,
        )
        document = packets.to_document(packet.value, consistency_token=packet.token.encode())
        # A PDF takes a moment to draw: off the event loop, which serves other calls.
        rendered = b"" if fmt is None else await asyncio.to_thread(packets.render, document, fmt)
        return api.packet_to_proto(document, rendered, fmt)

    @translate_errors
    @accountable
    async def ListAuditAccess(
        self, request: api_pb2.ListAuditAccessRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.ListAuditAccessResponse:
        brand = request.brand if request.HasField("brand") else None
        reader = self._reader(context, brand)
        phone = request.phone or None
        listing = _accesses(request)
        _refuse_bad_fields(
            lambda: _page_size(request.page_size),
            lambda: _access_before(request.page_token, listing),
            lambda: api.optional_time(request, "start_time"),
            lambda: api.optional_time(request, "end_time"),
            *_target(phone, brand),
        )
        size = _page_size(request.page_size)
        found = await self.usecases.access.list(
            reader,
            brand,
            phone=phone,
            subject=request.subject or None,
            start=api.optional_time(request, "start_time"),
            end=api.optional_time(request, "end_time"),
            before=_access_before(request.page_token, listing) or None,
            limit=size + 1,
        )
        page = found[:size]
        last = page[-1].id if page else None
        return api_pb2.ListAuditAccessResponse(
            accesses=[api.access_to_proto(r) for r in page],
            next_page_token=_encode_token(listing, last) if len(found) > size and last else "",
        )

    # ---- retention ---------------------------------------------------------------------

    @translate_errors
    async def RequestErasure(
        self, request: api_pb2.RequestErasureRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.RequestErasureResponse:
        principal = self._retention_caller(context, Scope.ADMIN, request.brand)
        command = RequestErasure(
            request.request_id, request.phone, request.brand, request.reference
        )
        erased = await within(
            write_budget(context, self.write_timeout),
            self.usecases.erasure.erase(command, requested_by=principal.name),
        )
        response = api_pb2.RequestErasureResponse(
            event_id=erased.event_id,
            consistency_token=erased.token.encode(),
            keys_destroyed=erased.keys_destroyed,
        )
        if erased.retained_until is not None:
            response.retained_until.CopyFrom(codec.timestamp_to_proto(erased.retained_until))
        return response

    @translate_errors
    async def PlaceLegalHold(
        self, request: api_pb2.PlaceLegalHoldRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.PlaceLegalHoldResponse:
        principal = self._retention_caller(context, Scope.AUDIT, request.brand)
        command = PlaceLegalHold(
            request.request_id, request.phone, request.brand, request.hold_id, request.reason
        )
        written = await within(
            write_budget(context, self.write_timeout),
            self.usecases.erasure.hold(command, by=principal.name),
        )
        return api_pb2.PlaceLegalHoldResponse(
            event_ids=written.event_ids, consistency_token=written.token.encode()
        )

    @translate_errors
    async def ReleaseLegalHold(
        self, request: api_pb2.ReleaseLegalHoldRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.ReleaseLegalHoldResponse:
        principal = self._retention_caller(context, Scope.ADMIN, request.brand)
        command = ReleaseLegalHold(
            request.request_id, request.phone, request.brand, request.hold_id
        )
        written = await within(
            write_budget(context, self.write_timeout),
            self.usecases.erasure.hold(command, by=principal.name),
        )
        return api_pb2.ReleaseLegalHoldResponse(
            event_ids=written.event_ids, consistency_token=written.token.encode()
        )

    # ---- writes ------------------------------------------------------------------------

    async def _record(
        self,
        request: Any,
        context: grpc.aio.ServicerContext,
        response: Callable[..., R],
        scope: Scope = Scope.WRITE,
        *,
        any_brand: bool = False,
    ) -> R:
        """Every plain write: authorize for the request's brand (``_writer``), translate,
        record, and answer with the ``response`` type's event ids and token."""
        principal = self._writer(context, scope, request.brand, any_brand=any_brand)
        command = api.command_from_proto(request, self.usecases.writes.ctx.clock())
        assert not isinstance(command, HandleInboundMessage)
        budget = write_budget(context, self.write_timeout)
        written = await within(
            budget, self.usecases.writes.record(command, recorded_by=principal.name)
        )
        return response(event_ids=written.event_ids, consistency_token=written.token.encode())

    @translate_errors
    async def RecordOptIn(
        self, request: api_pb2.RecordOptInRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.RecordOptInResponse:
        answer = await self._record(request, context, api_pb2.RecordOptInResponse)
        # A promotional opt-in not given in writing allows no promotional campaign: its
        # writer hears it now, not from the first send denied.
        command = api.command_from_proto(request)
        assert isinstance(command, RecordOptIn)
        answer.informational_only = informational_only(command.tier, command.method)
        return answer

    @translate_errors
    async def RecordOptOut(
        self, request: api_pb2.RecordOptOutRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.RecordOptOutResponse:
        writer = self.authenticate(context)

        def authorize(brand: str) -> None:
            writer.require(Scope.WRITE, brand)

        try:
            # Under "ac-me", a brand the caller may not write for, meaning acme, which
            # it writes for: refused on brand, and held under acme, not refused
            # PERMISSION_DENIED with nothing held.
            await within(
                write_budget(context, self.write_timeout),
                self.usecases.writes.check_brand_meant(request.brand, authorize),
            )
            return await self._record(request, context, api_pb2.RecordOptOutResponse)
        # Refused for its details, or for a request id used before for another
        # request (a client's bug no retry mends), or as too large by the ledger (a
        # topic's own limit, which no retry gets past either): held when it can be read.
        except (DomainError, AlreadyExists, EventTooLarge) as exc:
            refused = exc
            if isinstance(exc, DomainError):
                refused = await within(
                    write_budget(context, self.write_timeout),
                    self._every_bad_field(request, exc, authorize),
                )
            await self._hold_opt_out(request, context, refused)
            if refused is exc:
                raise
            raise refused from exc

    async def _every_bad_field(
        self,
        request: api_pb2.RecordOptOutRequest,
        refused: DomainError,
        authorize: Callable[[str], None],
    ) -> DomainError:
        """``refused`` with every other bad field of the opt-out: its brand, under one
        that reads as a brand in use ("ac-me"), is refused before its other fields for
        a caller that may not write for it, and after them for one that may, so "ac-me"
        with a time ahead was refused on brand alone or on occurred_at alone, by who
        asked, where an import names both."""
        found = Violations()
        if all(name != "brand" for name, _ in refused.violations):
            meant = await self.usecases.writes.brand_meant_refusal(request.brand, authorize)
            if meant is not None:
                found.add(meant)
        found.add(refused)
        command = found.check(api.command_from_proto, request)
        if isinstance(command, RecordOptOut):
            found.check(self.usecases.writes.check_fields, command)
        try:
            found.raise_if_any()
        except DomainError as every:
            return every
        return refused

    async def _hold_opt_out(
        self,
        request: api_pb2.RecordOptOutRequest,
        context: grpc.aio.ServicerContext,
        exc: DomainError | AlreadyExists | EventTooLarge,
    ) -> None:
        """Hold an opt-out refused ``exc`` for review when its number and brand can be
        read (``Writes.hold_refused_opt_out``, which raises ``HeldForReview``)."""
        principal = self.authenticate(context)
        campaign = request.campaign if request.HasField("campaign") else None
        hold = HoldRefusedOptOut(
            request.request_id,
            request.phone,
            request.brand,
            _digest(request),
            campaign,
            via=HELD_OPT_OUT,
            occurred_at=imports_api.own_time(request),
        )
        # A brand left out, blank or unreadable ("Acme!") names none to hold it
        # under: it was one of the caller's, so it is held under each of them.
        unread = () if is_name(hold.brand) else principal.own_brands
        await within(
            write_budget(context, self.write_timeout),
            self.usecases.writes.hold_refused_opt_out(
                hold,
                exc if isinstance(exc, AlreadyExists) else refusal_of(exc),
                lambda brand: principal.require(Scope.WRITE, brand),
                recorded_by=principal.name,
                brands=unread,
                held_before_as=_earlier_digest(request),
            ),
        )

    @translate_errors
    async def RecordReconfirmation(
        self, request: api_pb2.RecordReconfirmationRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.RecordReconfirmationResponse:
        return await self._record(request, context, api_pb2.RecordReconfirmationResponse)

    @translate_errors
    async def RecordMessageSent(
        self, request: api_pb2.RecordMessageSentRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.RecordMessageSentResponse:
        return await self._record(request, context, api_pb2.RecordMessageSentResponse)

    @translate_errors
    async def RecordDeliveryOutcome(
        self, request: api_pb2.RecordDeliveryOutcomeRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.RecordDeliveryOutcomeResponse:
        try:
            return await self._record(request, context, api_pb2.RecordDeliveryOutcomeResponse)
        # Refused (no send recorded, a bad field), an outcome saying the person opted
        # out at the provider still holds the number: the STOP is otherwise lost.
        except (DomainError, FailedPrecondition, AlreadyExists) as exc:
            principal = self.authenticate(context)
            said = RefusedOutcome(
                request.phone,
                request.brand,
                request.message_id,
                request.error_code,
                imports_api.own_time(request),
                principal.name,
            )
            await within(
                write_budget(context, self.write_timeout),
                self.usecases.writes.hold_refused_outcome(
                    said, exc, lambda brand: principal.require(Scope.WRITE, brand)
                ),
            )
            raise

    @translate_errors
    async def RecordMessagesSent(
        self, request: api_pb2.RecordMessagesSentRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.RecordMessagesSentResponse:
        principal = self._writer(context, Scope.WRITE, request.brand)
        command = api.command_from_proto(request, self.usecases.sends.ctx.clock())
        assert isinstance(command, RecordMessagesSent)
        budget = write_budget(context, self.write_timeout)
        written = await within(
            budget, self.usecases.sends.record(command, recorded_by=principal.name)
        )
        return api_pb2.RecordMessagesSentResponse(
            event_ids=written.event_ids, consistency_token=written.token.encode()
        )

    @translate_errors
    async def RecordAgeVerification(
        self, request: api_pb2.RecordAgeVerificationRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.RecordAgeVerificationResponse:
        return await self._record(request, context, api_pb2.RecordAgeVerificationResponse)

    @translate_errors
    async def RecordSubscriberLocation(
        self, request: api_pb2.RecordSubscriberLocationRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.RecordSubscriberLocationResponse:
        return await self._record(request, context, api_pb2.RecordSubscriberLocationResponse)

    @translate_errors
    async def DefineCampaign(
        self, request: api_pb2.DefineCampaignRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.DefineCampaignResponse:
        return await self._record(request, context, api_pb2.DefineCampaignResponse, Scope.ADMIN)

    @translate_errors
    async def ChangeCampaignPolicy(
        self, request: api_pb2.ChangeCampaignPolicyRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.ChangeCampaignPolicyResponse:
        return await self._record(
            request, context, api_pb2.ChangeCampaignPolicyResponse, Scope.ADMIN
        )

    @translate_errors
    async def SetBrandPolicy(
        self, request: api_pb2.SetBrandPolicyRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.SetBrandPolicyResponse:
        # Putting revoke-all in force early only narrows what may be sent (it cannot be
        # turned off), as resolving a candidate as revoked does: the brand's write scope.
        return await self._record(request, context, api_pb2.SetBrandPolicyResponse)

    @translate_errors
    async def ResolveRevocationCandidate(
        self, request: api_pb2.ResolveRevocationCandidateRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.ResolveRevocationCandidateResponse:
        # Resolving a flagged reply as an opt-out only narrows what may be sent, as any
        # write may. Anything else (dismissing it) lifts the block the review holds on
        # the number: a reviewer's judgement, so the admin scope, not a gateway's write.
        revoked = request.resolution == ledger_pb2.CANDIDATE_RESOLUTION_REVOKED
        return await self._record(
            request,
            context,
            api_pb2.ResolveRevocationCandidateResponse,
            Scope.WRITE if revoked else Scope.ADMIN,
            any_brand=True,  # "*": the STOPs whose brand was unknown, an operator's
        )

    @translate_errors
    async def HandleInboundMessage(
        self, request: api_pb2.HandleInboundMessageRequest, context: grpc.aio.ServicerContext
    ) -> api_pb2.HandleInboundMessageResponse:
        principal = self._caller(context, Scope.WRITE)

        def authorize(brand: str) -> None:
            # The brand comes from the receiving number, not from the caller: a refusal
            # must not tell a caller of another brand whose number it is.
            if principal.brands is not None and brand not in principal.brands:
                raise PermissionDenied(
                    "to_phone", f"{principal.name} may not act for the brand of this number"
                )

        # A STOP to a number no campaign sends from is kept under each of the caller's
        # brands: it can be none other's. A caller of every brand cannot tell which it
        # meant, and it concerns all.
        unowned = principal.own_brands
        try:
            command = api.command_from_proto(request)
            assert isinstance(command, HandleInboundMessage)
            result = await within(
                write_budget(context, self.write_timeout),
                self.usecases.writes.handle_inbound(
                    command, authorize=authorize, recorded_by=principal.name, unowned_brands=unowned
                ),
            )
        # Refused for a detail, a request id used before for another request or as
        # too large by the ledger: a STOP is held when it can be read.
        except (DomainError, AlreadyExists, EventTooLarge) as exc:
            await within(
                write_budget(context, self.write_timeout),
                self.usecases.writes.hold_refused_inbound(
                    request.request_id,
                    request.from_phone,
                    request.to_phone,
                    request.body,
                    _digest(request),
                    exc if isinstance(exc, AlreadyExists) else refusal_of(exc),
                    authorize,
                    recorded_by=principal.name,
                    unowned_brands=unowned,
                    held_before_as=_earlier_digest(request),
                    occurred_at=imports_api.own_time(request),
                ),
            )
            raise
        return api.inbound_outcome_to_proto(
            result.outcome, result.write.event_ids, result.write.token.encode()
        )

    @translate_stream_errors
    async def ImportConsents(
        self,
        requests: AsyncIterator[api_pb2.ImportConsentsRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[api_pb2.ImportConsentsResponse]:
        principal = self._caller(context, Scope.WRITE)

        def authorize(brand: str) -> None:
            # Each record asks the tokens file as it stands, not as it stood when the
            # stream opened: a token revoked, or moved off the brand, while its import
            # is open writes nothing more (UNAUTHENTICATED ends the stream; a brand or
            # scope taken away refuses each record, PERMISSION_DENIED). Held to the
            # brand as written: a refused opt-out's may be malformed, and is held
            # only under a brand the caller may write for.
            self.authenticate(context).require(Scope.WRITE, brand)

        imports = self.usecases.start_import(
            authorize=authorize,
            own_brands=lambda: self.authenticate(context).own_brands,
            recorded_by=principal.name,
            time_left=context.time_remaining,
        )
        with self._imports.opened(principal.name) as slots:
            answers = imports_api.answer_chunks(
                imports, requests, context.time_remaining, self.metrics, shared=slots
            )
            async for answer in answers:
                yield answer


def _certificate_names(context: grpc.aio.ServicerContext) -> list[str]:
    """The names in the caller's client certificate, verified in the TLS handshake
    (none without mutual TLS): its subject alternative names, then its common name."""
    auth = context.auth_context()
    return [
        name.decode()
        for key in ("x509_subject_alternative_name", "x509_common_name")
        for name in auth.get(key, ())
    ]


def _resume_token(text: str) -> ConsistencyToken | None:
    if not text:
        return None
    try:
        return ConsistencyToken.decode(text)
    except ValueError as exc:
        raise InvalidRequest(
            "resume_token", "is not a resume token or consistency token of this service"
        ) from exc


def _start_once(request: api_pb2.WatchConsentChangesRequest) -> None:
    if request.from_now and request.resume_token:
        raise InvalidRequest("from_now", "give resume_token or from_now, not both")


def _page_size(requested: int) -> int:
    size = requested or DEFAULT_PAGE_SIZE
    if not 0 < size <= MAX_PAGE_SIZE:
        raise InvalidRequest("page_size", f"must be between 1 and {MAX_PAGE_SIZE}")
    return size


_BIGINT = 2**63
"""Positions are PostgreSQL bigints: a larger number is no token of ours."""
_NOT_ISSUED = "is not a token this service issued"


def _encode_token(kind: str, number: int) -> str:
    """A page token: the kind of place it names and the place, opaque to callers."""
    return base64.urlsafe_b64encode(f"{kind}:{number}".encode()).decode()


def _token_number(token: str, kind: str, valid: Callable[[int], bool], reason: str) -> int:
    """The place a page token of ``kind`` names, 0 (the start) for no token; for any
    other text, INVALID_ARGUMENT on ``page_token`` with ``reason``."""
    if not token:
        return 0
    try:
        found, _, value = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        number = int(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest("page_token", reason) from exc
    # Only the very text issued: the decoder skips characters outside base64's
    # alphabet and int() reads spaces, signs and "_", so other texts named places too.
    if found != kind or not valid(number) or _encode_token(kind, number) != token:
        raise InvalidRequest("page_token", reason)
    return number


def _kind(letter: str, *listing: object) -> str:
    """A page token's kind for one listing: ``letter`` (which call) and a digest of
    what the listing is, so that a token is read only by the listing that issued it."""
    return letter + hashlib.sha256(repr(listing).encode()).hexdigest()[:16]


def _queue(brand: str, overdue_only: bool) -> str:
    """The kind of the review queue's page tokens for one listing: every brand's
    candidates share the queue's positions, so a token read for another brand (or
    the overdue ones alone) skipped that listing's candidates before its place."""
    return _kind("q", brand, overdue_only)


def _queue_token(position: int, listing: str) -> str:
    """A page token that names the queue position of the last candidate given, not a
    count: the queue shrinks as candidates are resolved, grows at its end as replies
    are applied, and the next page must skip none."""
    return _encode_token(listing, position)


def _queue_after(token: str, listing: str) -> int:
    """The position a page token of ``listing`` names; 0 (the start) for no token. A
    token of another listing, or of the versions before listings were told apart
    ("q:") or that ordered the queue by recorded time ("c:"), is refused like any
    other text: its reader lists from the start again."""
    return _token_number(
        token, listing, lambda n: 0 < n < _BIGINT, f"{_NOT_ISSUED}; list from the start"
    )


def _accesses(request: api_pb2.ListAuditAccessRequest) -> str:
    """The kind of ListAuditAccess' page tokens for one listing (its brand, number,
    reader and window): a token names an access id, and read for another listing it
    skipped that listing's reads newer than the id."""
    phone = request.phone
    with contextlib.suppress(DomainError):  # refused as the phone, by name
        phone = to_e164(phone)
    return _kind(
        "a",
        request.brand if request.HasField("brand") else None,
        phone,
        request.subject,
        request.start_time.SerializeToString() if request.HasField("start_time") else None,
        request.end_time.SerializeToString() if request.HasField("end_time") else None,
    )


def _access_before(token: str, listing: str) -> int:
    """The id below which the next page of ``listing``'s access records starts; 0:
    the newest."""
    return _token_number(
        token, listing, lambda n: 0 < n < _BIGINT, f"{_NOT_ISSUED} for this listing"
    )


def _listing(phone: str, brand: str | None) -> str:
    """The kind of ListEvents' page tokens for one number and brand: a token names
    an offset into the listing that issued it, and read against another number's
    or brand's it paged that one short, with no error."""
    with contextlib.suppress(DomainError):  # refused as the phone, by name
        phone = to_e164(phone)
    return _kind("o", phone, brand)


def _page_token(offset: int, listing: str) -> str:
    return _encode_token(listing, offset)


def _page_start(token: str, listing: str) -> int:
    return _token_number(
        token, listing, lambda n: n >= 0, f"{_NOT_ISSUED} for this phone and brand"
    )
