"""``ImportConsents``' stream: chunks of records in, one answer per chunk out, in order.

Up to ``IN_FLIGHT`` chunks are worked on at once, so the next chunk is checked and
its import ids claimed while the one before waits for the ledger to acknowledge
its append; the answers still go out in the order the chunks came. A client that
sends no more than it has answers for, plus ``IN_FLIGHT``, keeps the server busy
without holding more than that in its memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from consent.v1 import consent_service_pb2 as api_pb2

from ledger.commands import HoldRefusedOptOut, RecordOptIn, RecordOptOut
from ledger.digest import informational_only
from ledger.errors import DomainError, InvalidRequest
from services.errors import NotConsistent, OutcomeUnknown
from services.grpc_api.admission import OpenStreams
from services.grpc_api.deadlines import MARGIN, MARGIN_AT_MOST
from services.metrics import ServiceMetrics
from services.usecases.imports import ChunkResult, Imports, Item
from services.wire.api import command_from_proto


async def _answered(
    work: asyncio.Future[ChunkResult],
    first: int,
    time_left: Callable[[], float | None],
    lease_s: float,
    dry_run: bool = False,
) -> ChunkResult:
    """``work``'s result, or ``OutcomeUnknown`` a margin before the caller's deadline
    (``services.grpc_api.deadlines``). A chunk may wait far longer than a caller
    does: for the turns to append its records that an import which died holds (up to
    ``lease_s``, ``CONSENT_IMPORT_APPEND_LEASE_S``), or for the ledger. Without this
    the caller saw only DEADLINE_EXCEEDED, with no word of why or of what to do; the
    chunks left are cancelled as when the caller hangs up (their turns given back).
    A dry run's chunk waits for the view alone and writes nothing, so its outcome is
    known: ``NotConsistent``, which says so."""
    remaining = time_left()
    if remaining is None:
        return await work
    budget = max(0.0, remaining - min(MARGIN_AT_MOST, MARGIN * remaining))
    done, _ = await asyncio.wait({work}, timeout=budget)
    if not done and dry_run:
        raise NotConsistent(
            "records",
            f"the message with record {first} was not checked within {budget:.3g} s, "
            "before the caller's deadline (the view slow or behind); a dry run writes "
            "nothing: run it again (with a longer deadline)",
        )
    if not done:
        raise OutcomeUnknown(
            f"the message with record {first} was not answered within {budget:.3g} s, "
            "before the caller's deadline: its records may be waiting for their turn to "
            "append, held by another import of them or, up to "
            f"{lease_s:g} s, by one that died, or for the ledger; run the import "
            "again (with a longer deadline), and what was recorded is skipped"
        )
    return work.result()


IN_FLIGHT = 4
"""Chunks worked on at once in one stream, and in all of one caller's streams."""

MAX_STREAMS = 16
"""Import streams one caller may have open at once. Its streams share ``IN_FLIGHT``
slots, so more import no faster, and each waiting for a slot holds its message read."""


class CallerImports:
    """What one service's import streams share, by caller: the slots their chunks are
    worked on in, and the count of those open. Each stream had slots of its own, so a
    caller with no rate limit that opened 100 streams had 400 chunks worked on at
    once, and every other caller's calls passed their deadlines for a minute."""

    def __init__(self) -> None:
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._open = OpenStreams(
            "import",
            MAX_STREAMS,
            f"its streams share {IN_FLIGHT} chunks worked on at once, so more import "
            "no faster: send the records through those",
        )

    @contextlib.contextmanager
    def opened(self, caller: str) -> Iterator[asyncio.Semaphore]:
        """A stream of ``caller``'s, open until the block ends, and its caller's slots;
        ``RateLimited`` when ``MAX_STREAMS`` of its are open already."""
        with self._open.opened(caller):
            yield self._slots.setdefault(caller, asyncio.Semaphore(IN_FLIGHT))


def items_from_proto(
    records: Sequence[api_pb2.ImportRecord], first: int, now: datetime | None = None
) -> list[Item]:
    """Each record as the use case takes it: its command, or what refused its fields.
    ``now``, the service's time: a record refused for a field that cannot be read is
    refused for a time too far ahead as well, not only when sent again fixed."""
    items = []
    for index, record in enumerate(records, first):
        kind = record.WhichOneof("record")
        if kind is None:
            error = InvalidRequest("record", "holds neither opt_in nor opt_out")
            items.append(Item(index, None, error))
            continue
        message = getattr(record, kind)
        try:
            command = command_from_proto(message, now)
        except DomainError as exc:
            held = _hold(message) if kind == "opt_out" else None
            items.append(Item(index, None, exc, message.request_id, held, message.brand))
            continue
        assert isinstance(command, RecordOptIn | RecordOptOut)
        items.append(Item(index, command, None, message.request_id))
    return items


def _hold(message: api_pb2.RecordOptOutRequest) -> HoldRefusedOptOut:
    """What of an opt-out that cannot be read is held for review: its number, brand,
    campaign and time, under a digest of all else it said (the same on every run,
    and as before the time was held: a re-run of an import held then holds nothing
    new)."""
    rest = api_pb2.RecordOptOutRequest()
    rest.CopyFrom(message)
    rest.ClearField("occurred_at")
    said = hashlib.sha256(rest.SerializeToString(deterministic=True)).hexdigest()
    campaign = message.campaign if message.HasField("campaign") else None
    return HoldRefusedOptOut(
        message.request_id, message.phone, message.brand, said, campaign,
        occurred_at=own_time(message),
    )  # fmt: skip


def own_time(
    message: api_pb2.RecordOptOutRequest
    | api_pb2.HandleInboundMessageRequest
    | api_pb2.RecordDeliveryOutcomeRequest,
) -> datetime | None:
    """A refused opt-out's (or STOP's, or delivery outcome's) own time, where it is a
    time at all: its hold is placed there (``ledger.commands.held_opt_out``)."""
    if not message.HasField("occurred_at"):
        return None
    try:
        found: datetime = message.occurred_at.ToDatetime(tzinfo=UTC)
        return found
    except (ValueError, OverflowError):  # out of any range: the hold goes at its refusal
        return None


def _informational_only(items: Sequence[Item], result: ChunkResult) -> int:
    """The chunk's promotional opt-ins not given in writing that it did not refuse
    (imported or present): each allows informational campaigns only, and an import
    of them is told so when it imports them, not when their sends are denied."""
    refused = {refusal.index for refusal in result.refusals}
    return sum(
        isinstance(item.command, RecordOptIn)
        and item.index not in refused
        and informational_only(item.command.tier, item.command.method)
        for item in items
    )


def chunk_to_proto(
    result: ChunkResult, first: int, items: Sequence[Item] = ()
) -> api_pb2.ImportConsentsResponse:
    response = api_pb2.ImportConsentsResponse(
        imported=result.imported,
        already_present=result.present,
        consistency_token=result.token.encode(),
        first_index=first,
        held_for_review=sum(refusal.held for refusal in result.refusals),
        informational_only=_informational_only(items, result),
        held_unattributed=result.unattributed,
    )
    for refusal in result.refusals:
        response.refusals.add(
            index=refusal.index,
            request_id=refusal.request_id,
            code=refusal.code,
            violations=[
                api_pb2.ImportFieldViolation(field=f, description=d) for f, d in refusal.violations
            ],
            held_for_review=refusal.held,
        )
    return response


async def answer_chunks(
    imports: Imports,
    requests: AsyncIterator[api_pb2.ImportConsentsRequest],
    time_left: Callable[[], float | None] = lambda: None,
    metrics: ServiceMetrics | None = None,
    shared: asyncio.Semaphore | None = None,
) -> AsyncIterator[api_pb2.ImportConsentsResponse]:
    """One answer per request, in order, each as soon as its chunk is appended; the
    first request's ``dry_run`` holds for all. A later request asking for a dry run
    of an import that writes ends the stream (INVALID_ARGUMENT, once the requests
    before it are answered), its records unread: written, they would be what it
    asked not to happen. ``time_left``: the seconds until the caller's deadline (None:
    none); a chunk not answered a margin before it ends the stream UNAVAILABLE,
    saying why (``_answered``). ``metrics`` counts each answered chunk's records, and
    its refusals by record type (a dry run's are left out: it writes nothing).
    ``shared`` bounds the chunks worked on at once across the caller's streams: each
    chunk takes it from before its records are read until its work ends."""
    # The requests are read in a task of their own: read here, between answers, a
    # chunk was answered only when the next came or the stream ended, and a client
    # that waited for each answer before sending more stalled to its deadline.
    started: asyncio.Queue[
        tuple[int, list[Item], list[str], asyncio.Future[ChunkResult]] | None
    ] = asyncio.Queue()
    room = asyncio.Semaphore(IN_FLIGHT)
    slots = asyncio.Semaphore(IN_FLIGHT) if shared is None else shared
    working: list[asyncio.Future[ChunkResult]] = []
    dry_runs: list[bool] = []  # the first request's dry_run, once read

    async def read() -> None:
        index = 0
        dry_run: bool | None = None
        async for request in requests:
            if dry_run is None:
                dry_run = request.dry_run
                dry_runs.append(dry_run)
            elif request.dry_run and not dry_run:
                raise InvalidRequest(
                    "dry_run",
                    "is set on a later message of an import that writes (the first "
                    "message decides): a dry run is an import of its own; nothing of "
                    "this message was written",
                )
            await room.acquire()
            await slots.acquire()
            work = None
            try:
                work = start(request, index, dry_run)
                index += len(request.records)
            finally:
                if work is None:
                    slots.release()
                else:  # done, failed, or cancelled with the stream
                    work.add_done_callback(lambda _: slots.release())
            # A client may send no more for minutes without closing: the message and
            # its records, megabytes of them, are not kept while it waits.
            del request

    def start(
        request: api_pb2.ImportConsentsRequest, index: int, dry_run: bool
    ) -> asyncio.Future[ChunkResult]:
        """Start ``request``'s chunk at record ``index`` (one item per record)."""
        items = items_from_proto(request.records, index, imports.ctx.clock())
        kinds = [record.WhichOneof("record") or "none" for record in request.records]
        work = asyncio.ensure_future(imports.chunk(items, dry_run=dry_run))
        working.append(work)
        started.put_nowait((index, items, kinds, work))
        return work

    async def answer_to(
        first: int, items: list[Item], kinds: list[str], work: asyncio.Future[ChunkResult]
    ) -> api_pb2.ImportConsentsResponse:
        result = await _answered(work, first, time_left, imports.lease_s, dry_run=dry_runs[0])
        working.remove(work)
        room.release()
        if metrics is not None and not dry_runs[0]:
            refusals = [(kinds[r.index - first], r.code, r.held) for r in result.refusals]
            metrics.imported(result.imported, result.present, refusals)
        return chunk_to_proto(result, first, items)

    reader = asyncio.ensure_future(read())
    # The end of the requests (or what ended them) comes after every chunk started.
    reader.add_done_callback(lambda _: started.put_nowait(None))
    try:
        while (entry := await started.get()) is not None:
            answer = await answer_to(*entry)
            # Nothing of the chunk is kept while the client reads its answer, or
            # sends no more for minutes: only the answer, until it is sent.
            del entry
            yield answer
            del answer
        await reader
    finally:
        reader.cancel()
        for work in working:
            work.cancel()
        tasks: list[asyncio.Future[Any]] = [reader, *working]
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
