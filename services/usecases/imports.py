"""Bulk import: another platform's opt-ins (with their proof) and opt-outs, a chunk
of records at a time, each recorded once.

Every record is a ``RecordOptIn`` or ``RecordOptOut`` whose ``request_id`` is its
stable import id, and is checked as that write is (``services.usecases.writes``):
its fields, its campaign, the proof its campaign's rules require, its brand
against the caller. A record that fails is refused on its own, naming the field
and why; the others go on. An import id already recorded for the same record is
"already present" and writes nothing; for another record it is refused, as a
request id reused is.

A chunk costs a few round trips whatever its size: the request ids are claimed in
one statement (``ConsentView.claim_requests``), the facts already applied are found
in one (``known_events``), the turns to append the rest are taken in one
(``take_append_turns``), and the chunk's facts are appended in one call
(``EventLog.append``; two when another chunk's opt-outs must go first), which
seals their personal data under keys read or made for all their subjects in one
more (``SubjectKeys.current_many``). The opt-outs and holds go first, then by when
each record happened: an append cut short (it is not atomic on Kafka) must not
leave an opt-in without the opt-out after it. Of the chunks worked on at once, the
opt-ins wait for every one's opt-outs of their numbers. The fold needs no order, as it reads facts
in world order (``ledger.state``).

Imports at once, in one process or several sharing the view, append a record they
share once: the one holding its append turn appends it and counts it as imported;
another waits for that turn to end, and counts it as already present, or takes it
over, if the holder's append failed or it died, and appends it itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, TypeVar, cast

from ledger.campaigns import Campaign
from ledger.commands import (
    HELD_FOR_REVIEW,
    BrandsInUse,
    HoldRefusedOptOut,
    RecordOptIn,
    RecordOptOut,
    brand_meant_refused,
    brands_in_use,
    check_consent_after_opt_outs,
    check_required_proof,
    fingerprint_as_spelled,
    held_opt_out,
    held_words,
    request_fingerprint,
    to_events,
    unattributed_opt_out,
)
from ledger.errors import DomainError, InvalidRequest
from ledger.events import (
    MAX_CLOCK_SKEW,
    ConsentGranted,
    ConsentRevoked,
    LedgerEvent,
    Recorded,
    RevocationCandidateFlagged,
    SubscriberEvent,
    evolved,
)
from ledger.phone import forms_stored_before, to_e164
from ledger.ports import (
    TOO_LARGE,
    AppendTurn,
    Applied,
    CampaignReads,
    ConsentView,
    ConsistencyToken,
    EventTooLarge,
    LedgerUnavailable,
    RequestClaim,
    RequestUse,
    Stream,
)
from ledger.validation import Violations, is_name
from ledger.view_keys import stated_ahead_key
from services.errors import (
    FailedPrecondition,
    NotConsistent,
    PermissionDenied,
    ServiceError,
    StoreUnavailable,
)
from services.usecases.context import BEHIND, Context
from services.usecases.erased import erased_refusal, erasure_times
from services.usecases.requests import appended_again, brand_of, stored_before, unwritten
from services.usecases.writes import note_stated_ahead, opt_outs_placed_since, opt_outs_window

log = logging.getLogger(__name__)

MAX_CHUNK = 1000
"""Records one chunk may hold."""
REMEMBERED = 1_000_000
"""Records an import remembers the import ids of (some 110 bytes each, 110 MB at
most), to name the record that used an id first when a later one reuses it, and in
a dry run to answer later repeats: a stream past that is not held in memory
without end; its later chunks see repeats of the records beyond it only within
themselves, and a reuse of their ids is of "another request"."""
CATCH_UP_ROUNDS = 20
"""Freshness bounds (``CONSENT_FRESHNESS_WAIT_MS`` each) an import's first chunk waits
for the view to reach the ledger's end."""
APPEND_LEASE_S = 120.0
"""How long an import's turn to append a record lasts unless it ends it: past twice
the longest append a ledger waits for (40 s on Kafka), so a live holder keeps it; a
dead one's records wait that long for the next import. The default of
``CONSENT_IMPORT_APPEND_LEASE_S``."""
TURNS_KEPT_S = 86_400.0
"""How long append turns are kept after they end or run out: a turn ended appended
is needed only until the view applies its facts (seconds; minutes in an outage),
and a holder whose turn ran out may still say it appended within this. Imports
are what add turns, so they prune the old ones as they begin, at most once per
``PRUNE_INTERVAL_S`` in a process (``ConsentView.prune_append_turns``, ``TurnPruning``)."""
PRUNE_INTERVAL_S = 3600.0
"""How often one process prunes the old append turns at most
(``CONSENT_IMPORT_PRUNE_INTERVAL_S``; ``TurnPruning``)."""
TURN_POLL_S = (0.02, 0.5)
"""The first and the longest pause before asking again after a turn another import
holds."""
RETRY_S = 30.0
"""How long after a chunk's statement or append first failed for a passing reason
(``StoreUnavailable``: PostgreSQL over its bound, as on a loaded machine;
``LedgerUnavailable``) it is tried again, unless the caller's deadline comes first.
An append tried at 30 s ends by 70 s (40 s on Kafka), within the turn's lease."""
RETRY_PAUSE_S = (0.1, 2.0)
"""The first and the longest pause before trying a failed statement or append again."""
PASSING = (StoreUnavailable, LedgerUnavailable)
"""Failures that another try may get past."""
NOT_NOW = (ConnectionError, NotConsistent)
"""Failures of a chunk that say nothing of its records (the ledger or the view not
answering, or behind): the chunk is answered with each record not imported, to be
sent again, and the import goes on (``Imports.chunk``)."""

T = TypeVar("T")
Covered = Callable[[Sequence[Recorded], str], Awaitable[ConsistencyToken]]
"""Resolves the live holds that opt-outs appended cover, recorded by a caller named."""

ImportCommand = RecordOptIn | RecordOptOut


class TurnPruning:
    """When this process last pruned the old append turns, shared by its imports:
    each asks as it begins, and at most one an interval prunes. The look reads the
    turns of the last day (some 0.45 s a million on PostgreSQL), which a client making
    many small imports would otherwise pay on each; turns are kept a day, so an
    interval of an hour leaves the table at most a few percent larger."""

    def __init__(
        self, interval_s: float = PRUNE_INTERVAL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last: float | None = None

    def due(self) -> bool:
        """Whether to prune now. True takes the interval at once, before any await:
        of imports beginning together, one prunes. One that fails is not retried
        before the interval is over (it is housekeeping; the import goes on)."""
        now = self._clock()
        if self._last is not None and now - self._last < self.interval_s:
            return False
        self._last = now
        return True


class Code:
    """Why a record was refused, as the gRPC status code its write alone would get."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNAVAILABLE = "UNAVAILABLE"
    """Not imported for now (the ledger or the view failed, or an opt-out it waited
    for did): the record is to be sent again, and one recorded meanwhile is found
    present."""


@dataclass(frozen=True)
class Refusal:
    """A record not imported: its place in the import, its import id, and each bad
    field with the reason (a record's every bad field at once, like a write's)."""

    index: int
    request_id: str
    code: str
    violations: tuple[tuple[str, str], ...]
    held: bool = False
    """An opt-out held for review all the same (in a dry run: that would be)."""


@dataclass(frozen=True)
class Item:
    """One record of a chunk: its place in the whole import, and its command, or the
    refusal of its fields that translating it met."""

    index: int
    command: ImportCommand | None
    error: DomainError | None = None
    request_id: str = ""
    held: HoldRefusedOptOut | None = None
    """For an opt-out whose translation was refused: what of it can be held for
    review (a record translated is held from its command)."""
    brand: str = ""
    """For a record whose translation was refused: the brand it names, as written, so
    that a brand the caller may not write for is refused as such."""


@dataclass
class ChunkResult:
    imported: int = 0
    """Records written (in a dry run: that would be)."""
    present: int = 0
    """Records recorded before (this import id, this record): nothing written."""
    refusals: list[Refusal] = field(default_factory=list)
    held: int = 0
    """Refused opt-outs held for review now (in a dry run: that would be); one held
    by an earlier run is not counted again."""
    unattributed: int = 0
    """Of the records imported or present, opt-outs naming a campaign not defined,
    kept for review (``unattributed_opt_out``; in a dry run: that would be)."""
    token: ConsistencyToken = field(default_factory=lambda: ConsistencyToken({}))


@dataclass
class _Planned:
    item: Item
    events: list[LedgerEvent]
    as_spelled: str | None = None
    """The fingerprint a version that digested numbers as spelled gave what the events
    record (``fingerprint_as_spelled``; None: the same as now): one recorded then took
    its id under it."""
    held_before: tuple[str, str, str] | None = None
    """For a hold of a record that version read: the (brand, id, fingerprint) it held
    the record under, its id digesting the record's fingerprint of then."""


def _refusal(item: Item, code: str, exc: DomainError | ServiceError) -> Refusal:
    violations = exc.violations if isinstance(exc, DomainError) else ((exc.field, exc.reason),)
    return Refusal(item.index, item.request_id, code, tuple(violations))


@dataclass
class _Claimed:
    """The records one chunk of this import set out to append, by (brand, import id);
    and once appended, the token after them."""

    keys: list[tuple[str, str]]
    token: ConsistencyToken | None = None


class Imports:
    """One import's records, a chunk at a time (``chunk``). Keeps what it learnt of
    each campaign until the campaigns in the view change; one instance per import."""

    def __init__(
        self,
        ctx: Context,
        *,
        authorize: Callable[[str], None] = lambda brand: None,
        own_brands: Callable[[], Sequence[str]] = lambda: (),
        recorded_by: str = "",
        lease_s: float = APPEND_LEASE_S,
        pruning: TurnPruning | None = None,
        retry_s: float = RETRY_S,
        time_left: Callable[[], float | None] = lambda: None,
        covered: Covered | None = None,
    ) -> None:
        """``authorize`` raises ``PermissionDenied`` for a brand the caller may not
        write for; ``own_brands`` are the brands it writes for (``ANY_BRAND``: every
        brand), under each of which a refused opt-out that names no brand that can be
        read is held (none: it is not); ``recorded_by`` (the caller's name) is
        stamped on every event; ``lease_s`` bounds each turn to append this import
        takes; ``pruning`` is the process's (None: one of this import's own, which
        prunes); ``retry_s`` bounds how long a statement or append that failed for a
        passing reason is tried again (``_retried``), and ``time_left`` gives the
        seconds to the caller's deadline (None: none), before which it stops;
        ``covered`` resolves the live holds the opt-outs appended cover
        (``Writes.resolve_holds_covered_by``; None: they are left to a reviewer)."""
        self._covered = covered
        self._retry_s = retry_s
        self._time_left = time_left
        self._began = ctx.clock()
        """When this import began: no chunk of it places an opt-out earlier."""
        # Every call of the view an import makes reads, or claims ids and takes turns
        # as this import, which a second try finds done: each is tried again.
        self.ctx = replace(
            ctx,
            view=cast(ConsentView, _Retrying(ctx.view, self._retried)),
            campaigns=None
            if ctx.campaigns is None
            else cast(CampaignReads, _Retrying(ctx.campaigns, self._retried)),
        )
        self._pruning = TurnPruning() if pruning is None else pruning
        self._holder = str(uuid.uuid4())
        """This import, as the holder of its turns to append (``_turns``)."""
        self.lease_s = lease_s
        self._authorize = authorize
        self._own_brands = own_brands
        self._recorded_by = recorded_by
        self._campaigns: dict[tuple[str, str], Campaign | None] = {}
        self._campaigns_at: tuple[tuple[int, int], ...] | None = None
        """The view's positions in the campaign stream ``_campaigns`` and ``_in_use``
        were read at."""
        self._in_use: BrandsInUse | None = None
        self._caught_up = False
        self._caught_up_at: datetime | None = None
        """The service's clock when this import began to catch the view up: every
        opt-out acknowledged before then is in the view once it has."""
        self._stated_ahead: dict[tuple[str, str], list[ConsentRevoked]] = {}
        """The opt-outs this import's chunks built that were stamped ahead (placed when
        checked, ``ConsentRevoked.stated_at``), by (brand, number): one of another
        chunk, or earlier in the same one, may not be in the view yet when an opt-in
        stated before it is checked (``_consents_after_opt_outs``)."""
        self._turn: asyncio.Future[None] | None = None
        """Done when the last chunk begun has taken its import ids (``chunk``)."""
        self._pruned = False
        """Whether this import has asked to prune the old append turns (``_turns``)."""
        self._claimed: list[_Claimed] = []
        self._denials: dict[asyncio.Future[bool], frozenset[str] | None] = {}
        """One for each chunk begun and not ended: whether it appended its opt-outs
        and holds (done when it did, or when it failed to; ``_after_denials_of_others``),
        with the numbers they are of (None: one could not be read, so any number)."""
        self._denials_failed: dict[tuple[str, str], str] = {}
        """The opt-outs and holds that chunks of this import failed to append, by number
        and import id, each with why: an opt-in of the number is not appended after
        (fail closed) until that very record is. Another opt-out of the number may be
        older or narrower (a campaign's), and would not deny what the failed one does."""
        self._denials_failed_any: str | None = None
        """Why, when a chunk failed to append an opt-out whose number could not be
        read: then no opt-in is appended after."""
        self._taken: dict[int, int] = {}
        """The records whose import ids this import took (in a dry run: would take),
        by the hash of (brand, import id): the hash of the record and its index, as
        ``_taken_as`` packs them. A later record reusing an id is refused naming the
        record that took it, which the user can find in their file. A dry run claims
        nothing, so a later chunk that repeats one would not see it otherwise (an
        import would count it as present, or refuse another record under the id).
        At most ``REMEMBERED`` of them."""
        self._erased: set[int] = set()
        """The places of the records refused for an erasure of their number
        (``_after_erasures``): an opt-out of them is not held for review, as the hold
        would store its words again."""
        self._unapplied: dict[tuple[str, str], str] = {}
        """The fingerprints of the records this import's chunks claimed to append
        that the view may not have applied yet. Another chunk (they are worked on
        at once) repeating one finds its claim but not its facts, as after a failed
        append, and would append it again; those the view has applied,
        ``known_events`` finds."""

    async def chunk(self, items: Sequence[Item], *, dry_run: bool = False) -> ChunkResult:
        """Check every record, then append the new ones in one call; with ``dry_run``,
        check only. A chunk the ledger or the view failed for (``NOT_NOW``) is
        answered with each record it did not append refused ``UNAVAILABLE``, saying
        why, to be sent again; the next chunks go on, less the opt-ins of the numbers
        of any opt-out it did not append. Other failures raise."""
        if len(items) > MAX_CHUNK:
            raise InvalidRequest("records", f"at most {MAX_CHUNK} records per message")
        # Chunks are checked at once but take their import ids in the order they came
        # (the turn is taken before any await): of two records under one id in two
        # chunks, the earlier chunk's is kept, however long each took to check.
        loop = asyncio.get_running_loop()
        before, turn = self._turn, loop.create_future()
        self._turn = turn
        # The chunk's time, read before any await too, so that the chunks' times
        # follow the order they came in (see ``_chunk``).
        now = self.ctx.clock()
        # Taken before any await too: a chunk started after this one finds it at once.
        denials: asyncio.Future[bool] = loop.create_future()
        self._denials[denials] = _denied_numbers(items)
        if not any(_may_deny(item) for item in items):
            denials.set_result(True)  # nothing to wait for: opt-ins go at once
        failure: BaseException | None = None
        try:
            return await self._chunk(items, dry_run, before, turn, denials, now)
        except NOT_NOW as exc:
            failure = exc
            first = items[0].index if items else 0
            log.warning("import: the message with record %d was not imported: %s", first, exc)
            return ChunkResult(refusals=[_not_now(item, str(exc), dry_run) for item in items])
        except BaseException as exc:
            failure = exc
            raise
        finally:
            _release(turn)
            numbers = self._denials.pop(denials)
            if not denials.done():
                # Noted before the chunks waiting for these opt-outs wake.
                self._note_denials_failed(items, numbers is None, failure)
                denials.set_result(False)

    def _note_denials_failed(
        self, items: Sequence[Item], unreadable: bool, failure: BaseException | None
    ) -> None:
        first = items[0].index if items else 0
        why = (
            f"the opt-outs of the message with record {first} of this import were not "
            f"recorded ({failure if failure is not None else 'it was cancelled'})"
        )
        if unreadable:
            self._denials_failed_any = self._denials_failed_any or why
        else:
            for key in _denied_records(items):
                self._denials_failed.setdefault(key, why)

    async def _chunk(
        self,
        items: Sequence[Item],
        dry_run: bool,
        before: asyncio.Future[None] | None,
        turn: asyncio.Future[None],
        denials: asyncio.Future[bool],
        now: datetime,
    ) -> ChunkResult:
        if not self._caught_up:
            await self._catch_up()
        result = ChunkResult()
        planned: list[_Planned] = []
        # One time for the chunk, ``now``: its records stamped ahead all take their
        # place then, so an opt-in stated before an opt-out of its chunk ties with it,
        # and at one instant the opt-out wins. Placed a moment later, it outranked it.
        # Read as the chunk came, not once it had waited for the view: an opt-in of a
        # later message read it before an opt-out of an earlier one (the first chunks
        # of an import wait together), was placed first, and was not refused, or was,
        # as the race fell.
        for item in items:
            try:
                events = await self._checked(item, now)
                planned.append(_Planned(item, events, fingerprint_as_spelled(item.command)))
            except DomainError as exc:
                result.refusals.append(_refusal(item, Code.INVALID_ARGUMENT, exc))
            except PermissionDenied as exc:
                result.refusals.append(_refusal(item, Code.PERMISSION_DENIED, exc))
            except FailedPrecondition as exc:
                result.refusals.append(_refusal(item, Code.FAILED_PRECONDITION, exc))
        planned = await self._after_erasures(planned, result)
        if before is not None and self._after_its_opt_outs(planned):
            # The earlier messages' opt-outs stamped ahead are noted as they are
            # checked (``_stated_ahead``): an opt-in that could be placed after one is
            # checked once they all are, as an opt-in of a later call is. Checked while
            # an earlier message still was, it was refused or not as the race fell,
            # and a dry run did not foretell which.
            await asyncio.shield(before)
        planned = await self._consents_after_opt_outs(planned, result)
        if before is not None:
            await asyncio.shield(before)
        new = await self._new(planned, result, dry_run)
        try:
            held = await self._held(items, result, dry_run)
        except BaseException:
            if not dry_run:  # the records' turns: another import may take them now
                await _quietly(
                    self.ctx.view.end_append_turns(_keys(new), self._holder, appended=False)
                )
            raise
        if dry_run:
            if not denials.done():
                denials.set_result(True)  # none to wait for: a dry run appends nothing
            result.imported = len(new)
            result.unattributed = _unattributed(planned, result)
            result.held = _records(held)
            result.refusals.sort(key=lambda r: r.index)
            return result
        self._found_recorded(planned, new, result)
        # Still this chunk's turn (released below): another chunk's _new sees these.
        # This chunk's own opt-outs go first: its opt-ins of their numbers may follow.
        barred = self._barred(new, result, _denied_phones([*new, *held]))
        if barred:
            new = [p for p in new if not any(p is b for b in barred)]
            await _quietly(
                self.ctx.view.end_append_turns(_keys(barred), self._holder, appended=False)
            )
        imported = len(new)
        # Appended with the chunk's records, in the one call.
        new += held
        claimed = _Claimed([_key(p) for p in new])
        self._claimed.append(claimed)
        self._unapplied.update((_key(p), p.events[0].request_fingerprint) for p in new)
        _release(turn)  # the next chunk may claim; the append need not wait for it
        # The opt-outs and holds first, then in the order of their own times. The
        # append is not atomic on Kafka: a process killed between two batches, or a
        # batch given up on, leaves a prefix recorded, which must allow nothing the
        # chunk denies (an opt-in without its opt-out after it). The fold reads world
        # order, and at one instant a revocation wins, so the ledger's order is free.
        new.sort(key=lambda p: (not _denies(p), p.events[0].occurred_at))
        # Across the chunks of this import worked on at once, too: an opt-in goes
        # only once every other chunk begun has appended its opt-outs, lest it allow
        # its number until the opt-out of the next message lands. A chunk that has to
        # wait appends its opt-outs and holds first, then its opt-ins. Only the chunks
        # with opt-outs of its opt-ins' numbers are waited for.
        opted_in = _opted_in_numbers(new)
        waits = self._denials_to_wait_for(denials, opted_in)
        first = [p for p in new if _denies(p)] if waits else new
        rest = new[len(first) :]
        appended: list[Recorded] = []
        first_appended = False
        unfit = 0  # records the ledger refused as too large
        try:
            await note_stated_ahead(self.ctx, [e for p in first for e in p.events])
            recorded, refused = await self._append_fitting(first, result, claimed)
            appended += recorded
            unfit += refused
            first_appended = True
            # Sent again and appended now: its number's opt-ins may follow.
            for key in _denied_phones(first):
                self._denials_failed.pop(key, None)
            if not denials.done():
                denials.set_result(True)
            if rest:
                # Waiting, it holds no turn to append: another import of the same
                # records may be waiting for one while holding what this one waits
                # for. The opt-outs' turns end appended; the opt-ins' are given back
                # and taken again, and any another import appended meanwhile is present.
                ending = [
                    self.ctx.view.end_append_turns(_keys(first), self._holder, appended=True),
                    self.ctx.view.end_append_turns(_keys(rest), self._holder, appended=False),
                ]
                for end in ending:
                    await _quietly(end)
                await self._after_denials_of_others(denials, opted_in)
                barred = self._barred(rest, result)
                if barred:  # their turns were given back above
                    rest = [p for p in rest if not any(p is b for b in barred)]
                    imported -= len(barred)
                    dropped = set(_keys(barred))
                    claimed.keys = [k for k in claimed.keys if k not in dropped]
                    for key in dropped:
                        self._unapplied.pop(key, None)
                taken = await self._turns(rest, result)
                imported -= len(rest) - len(taken)
                rest = taken
                recorded, refused = await self._append_fitting(rest, result, claimed)
                appended += recorded
                unfit += refused
        except BaseException as exc:
            # Not appended after all: a repeat of these records in a chunk still to
            # come must be appended, not counted as present; and another import
            # waiting for their turns takes them now rather than when they run out.
            # Of a chunk appended in two calls, the first may have gone.
            done = _keys(first) if first_appended else []
            failed = _keys(rest) if first_appended else claimed.keys
            claimed.keys = done
            if done:
                claimed.token = ConsistencyToken.after(appended)
            else:
                self._claimed.remove(claimed)
            for key in failed:
                self._unapplied.pop(key, None)
            await _quietly(self.ctx.view.end_append_turns(failed, self._holder, appended=False))
            if done:
                await _quietly(self.ctx.view.end_append_turns(done, self._holder, appended=True))
            if not (first_appended and isinstance(exc, NOT_NOW)):
                raise
            # The opt-outs and holds went: only the opt-ins are to be sent again.
            log.warning("import: %d opt-ins not imported: %s", len(rest), exc)
            result.refusals += (_not_now(p.item, str(exc)) for p in rest)
            result.imported = imported - len(rest) - unfit
            result.held += _records(held)
            result.unattributed = _unattributed(planned, result)
            result.token = result.token.merge(ConsistencyToken.after(appended))
            result.token = result.token.merge(await self._resolve_covered(appended))
            result.refusals.sort(key=lambda r: r.index)
            return result
        # Appended: the imports waiting for these turns count the records as present.
        # Should the store not hear it, the turns run out and the next to ask finds
        # the facts applied by then (``_turns`` looks again after a wait).
        await _quietly(self.ctx.view.end_append_turns(claimed.keys, self._holder, appended=True))
        result.imported = imported - unfit
        result.held += _records(held)
        result.unattributed = _unattributed(planned, result)
        claimed.token = ConsistencyToken.after(appended)
        result.token = result.token.merge(claimed.token)  # and the records found present
        result.token = result.token.merge(await self._resolve_covered(appended))
        result.refusals.sort(key=lambda r: r.index)
        return result

    async def _resolve_covered(self, appended: Sequence[Recorded]) -> ConsistencyToken:
        """The live holds the opt-outs of ``appended`` cover resolved, as a
        ``RecordOptOut`` of the same resolves them (``covered``); a token that covers
        what was written. One that cannot be written now is left to a reviewer: the
        hold denies meanwhile, and the import's records stand."""
        revocations = [r for r in appended if isinstance(r.event, ConsentRevoked)]
        if self._covered is None or not revocations:
            return ConsistencyToken({})
        try:
            return await self._covered(revocations, self._recorded_by)
        except NOT_NOW as exc:
            log.warning("import: a live hold its opt-outs cover was left for review: %s", exc)
            return ConsistencyToken({})

    async def _append_fitting(
        self,
        planned: Sequence[_Planned],
        result: ChunkResult,
        claimed: _Claimed,
        *,
        after_a_try: bool = False,
    ) -> tuple[list[Recorded], int]:
        """``_append`` of ``planned``, and how many records the ledger refused as too
        large (a topic's ``max.message.bytes`` below their facts): each is refused on
        its own in ``result``, as its single write is (``request``: ``TOO_LARGE``), an
        opt-out held for review, and the others are appended. Before, the refusal
        ended the whole stream, naming no record, and every run of the import ended
        there again. The opt-outs and holds still go before the opt-ins, the holds of
        the opt-outs refused among them; once a try may have written some, each
        append after it appends only what is not stored (``after_a_try``)."""
        try:
            return await self._append(planned, after_a_try=after_a_try), 0
        except EventTooLarge as exc:
            events = [e for p in planned for e in p.events]
            named = {events[i].event_id for i in exc.places}
            if len(planned) == 1 and unwritten(exc, events):
                named = {e.event_id for e in events}
            failure = exc
        held_before = {r.index for r in result.refusals}
        recorded: list[Recorded] = []
        refused = 0
        for group in ([p for p in planned if _denies(p)], [p for p in planned if not _denies(p)]):
            too_large: list[_Planned] = []
            if named:  # the ledger named them, and sent none of that try
                too_large = [p for p in group if any(e.event_id in named for e in p.events)]
                # A hold (its record refused already) is far below any limit.
                if any(p.item.index in held_before for p in too_large):
                    raise failure
                fits = [p for p in group if not any(p is t for t in too_large)]
                got, n = await self._append_fitting(fits, result, claimed, after_a_try=True)
                recorded, refused = recorded + got, refused + n
            else:  # refused as it came, perhaps after writing others: one at a time
                for p in group:
                    try:
                        recorded += await self._append([p], after_a_try=True)
                    except EventTooLarge as exc:
                        if p.item.index in held_before or not unwritten(exc, p.events):
                            raise
                        too_large.append(p)
            recorded += await self._refuse_too_large(too_large, result, claimed)
            refused += len(too_large)
        return recorded, refused

    async def _refuse_too_large(
        self, too_large: Sequence[_Planned], result: ChunkResult, claimed: _Claimed
    ) -> list[Recorded]:
        """Refuse ``too_large``, none of whose facts were written, in ``result``: their
        import ids and turns given up (kept, the record corrected under its id was
        refused as a reuse for good), the opt-outs held for review and the holds
        appended. Returns the holds as recorded."""
        if not too_large:
            return []
        keys = _keys(too_large)
        claimed.keys = [k for k in claimed.keys if k not in set(keys)]
        for key in keys:
            self._unapplied.pop(key, None)
        for p in too_large:
            first = p.events[0]
            ids = [str(e.event_id) for e in p.events]
            request = (first.request_id, first.request_fingerprint, ids)
            await self.ctx.view.release_claims(brand_of(first), request, [])
        await _quietly(self.ctx.view.end_append_turns(keys, self._holder, appended=False))
        found = ChunkResult(
            refusals=[
                _refusal(p.item, Code.INVALID_ARGUMENT, InvalidRequest("request", TOO_LARGE))
                for p in too_large
            ]
        )
        holds = await self._held([p.item for p in too_large], found, dry_run=False)
        try:
            recorded = await self._append(holds)
        except BaseException:
            await _quietly(
                self.ctx.view.end_append_turns(_keys(holds), self._holder, appended=False)
            )
            raise
        await _quietly(self.ctx.view.end_append_turns(_keys(holds), self._holder, appended=True))
        result.refusals += found.refusals
        result.held += _records(holds)
        result.token = result.token.merge(found.token)
        return recorded

    async def _append(
        self, planned: Sequence[_Planned], *, after_a_try: bool = False
    ) -> list[Recorded]:
        """Append ``planned``'s facts, tried again after a passing failure, and nothing
        after them until all are. A try cut short (acknowledged late) may have written
        some, or write them still: each try after the first appends only those not
        stored (``stored_before``), and fails again, to be tried again or answered
        ``UNAVAILABLE``, while that cannot be told. ``after_a_try``: an append of them
        before this one may have written some, so the first try is such a try too."""
        if not planned:
            return []
        events = [e for p in planned for e in p.events]
        tries = 1 if after_a_try else 0

        async def append() -> list[Recorded]:
            nonlocal tries
            tries += 1
            if tries == 1:
                return await self.ctx.ledger.append(events)
            try:
                stored = await stored_before(self.ctx, events, "records")
            except NotConsistent as exc:
                raise LedgerUnavailable(
                    "which events an earlier try appended is not known yet"
                ) from exc
            try:
                return await appended_again(self.ctx, events, stored)
            except EventTooLarge as exc:
                # Named among those appended again: named among ``events`` instead.
                again = [i for i, e in enumerate(events) if str(e.event_id) not in stored]
                raise EventTooLarge(str(exc), [again[i] for i in exc.places]) from exc

        return await self._retried(append, "append")

    async def _retried(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        """``call``'s result, tried again after a passing failure (``PASSING``), with
        pauses growing from ``RETRY_PAUSE_S``, until ``retry_s`` after the first try
        began, or half the time to the caller's deadline. On a loaded machine one
        PostgreSQL statement over its bound (1.5 s) failed a whole chunk, and with it
        every other chunk whose opt-ins waited for its opt-outs."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        pause, longest = RETRY_PAUSE_S
        while True:
            try:
                return await call()
            except PASSING as exc:
                left = self._time_left()
                if loop.time() + pause - began > self._retry_s or (
                    left is not None and pause > left / 2
                ):
                    raise
                log.info("import: %s failed, tried again in %.2g s: %s", what, pause, exc)
            await asyncio.sleep(pause * random.uniform(0.5, 1.0))
            pause = min(pause * 2, longest)

    def _denials_to_wait_for(
        self, mine: asyncio.Future[bool], opted_in: frozenset[str] | None
    ) -> list[asyncio.Future[bool]]:
        """The other chunks begun and not done appending opt-outs or holds of a number
        in ``opted_in`` (None: any number)."""
        return [
            d
            for d, numbers in self._denials.items()
            if d is not mine
            and not d.done()
            and (numbers is None or opted_in is None or not numbers.isdisjoint(opted_in))
        ]

    async def _after_denials_of_others(
        self, mine: asyncio.Future[bool], opted_in: frozenset[str] | None
    ) -> None:
        """Wait until every other chunk of this import begun so far (or while waiting)
        with opt-outs or holds of the numbers ``opted_in`` has appended them, or
        failed to (``_barred`` then tells which opt-ins may not follow)."""
        while waits := self._denials_to_wait_for(mine, opted_in):
            await asyncio.wait(waits)

    def _found_recorded(
        self, planned: Sequence[_Planned], new: Sequence[_Planned], result: ChunkResult
    ) -> None:
        """Let the opt-ins of a number go whose failed opt-out was sent again and
        found present: the append that failed had recorded it after all (the broker
        took it and went away before acknowledging), as the refusal said it may. Only
        one appended again let them go, so they stayed refused for the rest of the
        import. Should the opt-out be present only as another chunk's, still being
        appended, the opt-ins wait for that chunk, and are barred if it fails."""
        if not self._denials_failed:
            return
        refused = {r.index for r in result.refusals}
        present = [
            p
            for p in planned
            if _denies(p) and p.item.index not in refused and not any(p is n for n in new)
        ]
        for key in _denied_phones(present) - _denied_phones(new):
            self._denials_failed.pop(key, None)

    def _barred(
        self,
        planned: Sequence[_Planned],
        result: ChunkResult,
        own: Collection[tuple[str, str]] = (),
    ) -> list[_Planned]:
        """The opt-ins of ``planned`` of a number an opt-out of which this import
        failed to append and has not appended since (of any number, when one could
        not be read), each refused ``UNAVAILABLE`` in ``result``: appended, it would
        allow its number, which the opt-out denies, until that is sent again (fail
        closed). Opt-ins whose failed opt-outs are all among ``own`` (sent again
        ahead of them in their chunk, by number and import id) and every other
        record go on. Before, one such failure ended the whole import."""
        if not self._denials_failed and self._denials_failed_any is None:
            return []
        barred = []
        for p in planned:
            phones = {getattr(e, "phone", None) for e in p.events}
            if _denies(p):
                continue
            why = self._denials_failed_any or next(
                (
                    reason
                    for (number, request_id), reason in self._denials_failed.items()
                    if number in phones and (number, request_id) not in own
                ),
                None,
            )
            if why is None and None in phones:
                why = next(iter(self._denials_failed.values()))  # no number to tell by
            if why is not None:
                barred.append(p)
                result.refusals.append(
                    _not_now(p.item, f"{why}; this opt-in is not imported before them")
                )
        return barred

    async def _held(
        self, items: Sequence[Item], result: ChunkResult, dry_run: bool
    ) -> list[_Planned]:
        """Hold for review each refused opt-out whose number and brand can be read
        (for a brand the caller may write for): the service fails closed, so an
        opt-out refused for its details still denies its number, as one of an
        undefined campaign does, until a person resolves it. Each refusal says so.

        A hold goes through the records' own claims (``_new``) under an id of its own
        (``HoldRefusedOptOut.request_id``): a re-run finds it present, and a failed
        append leaves it to be appended again. The new holds are returned."""
        by_index = {item.index: item for item in items}
        holds: list[_Planned] = []
        now = self.ctx.clock()
        for refusal in result.refusals:
            if refusal.code == Code.PERMISSION_DENIED:
                continue  # not the caller's brand: not theirs to deny either
            if refusal.index in self._erased:
                continue  # erased: its words are not stored again, and it is denied anyway
            hold = _hold_of(by_index[refusal.index])
            if hold is None:
                continue
            field_name, reason = refusal.violations[0]
            refused = f"{field_name}: {reason}"
            why = ""
            each = [hold]
            in_use = await self._brands_in_use()
            # A brand no campaign was defined for that reads as one in use ("acme_co",
            # "ac\x00me"): held under each such brand the caller writes for, as a
            # RecordOptOut is (``Writes.hold_refused_opt_out``).
            meant = in_use.meant(hold.brand)
            mine = [b for b in meant if self._allows(b)]
            if meant and not mine:
                continue  # it means another's brand: not the caller's to deny
            if mine:
                each = [replace(hold, brand=b) for b in mine]
                why = f"its brand {hold.brand!r} is no brand in use"
            elif not is_name(hold.brand):
                # A brand left out, blank or unreadable: the opt-out was one of the
                # caller's brands', which one cannot be told, so it denies each.
                brands = list(self._own_brands())
                each = [replace(hold, brand=b, unread_brand=True) for b in brands]
                why = "it names no brand that can be read"
            try:
                for one in each:
                    self._authorize(one.brand)
                events_of = [
                    held_opt_out(one, held_words(refused, why, one.brand), now) for one in each
                ]
            except (DomainError, PermissionDenied):
                continue  # no number or brand to hold it under
            item = by_index[refusal.index]
            for one, events in zip(each, events_of, strict=True):
                if self._recorded_by:
                    events = [evolved(e, recorded_by=self._recorded_by) for e in events]
                spelled = fingerprint_as_spelled(one)
                holds.append(_Planned(item, events, spelled, _held_before(one, item)))
        if not holds:
            return []
        kept = {p.item.index for p in holds}
        # Another hold under a hold's id is only the same hold (its id digests the
        # record): what _new would refuse cannot arise, and is not told.
        found = ChunkResult()  # its counts are not told; the places of holds found are
        new = await self._new(await self._not_held_before(holds, result), found, dry_run)
        result.token = result.token.merge(found.token)
        note = f"would be {HELD_FOR_REVIEW}" if dry_run else HELD_FOR_REVIEW
        result.refusals = [_noted(r, note) if r.index in kept else r for r in result.refusals]
        return new

    async def _not_held_before(self, holds: list[_Planned], result: ChunkResult) -> list[_Planned]:
        """``holds`` less those a version that digested numbers as spelled made, under
        an id of their own (``_Planned.held_before``), and the view has applied: a
        re-run held each such record a second time, to be reviewed twice."""
        before = [(p, p.held_before) for p in holds if p.held_before is not None]
        if not before:
            return holds
        uses = await self.ctx.view.request_uses([(brand, id_) for _, (brand, id_, _) in before])
        found = [
            (p, use)
            for p, (brand, id_, fingerprint) in before
            if (use := uses.get((brand, id_))) is not None and use.fingerprint == fingerprint
        ]
        known = await self.ctx.view.known_events([i for _, use in found for i in use.event_ids])
        done = {id(p) for p, use in found if all(i in known for i in use.event_ids)}
        self._present(
            result, [known[i] for p, use in found if id(p) in done for i in use.event_ids]
        )
        return [p for p in holds if id(p) not in done]

    def _allows(self, brand: str) -> bool:
        try:
            self._authorize(brand)
        except PermissionDenied:
            return False
        return True

    async def _catch_up(self) -> None:
        """Let the view reach the ledger's end once per import: an earlier run's
        records may be in the ledger but not yet in the view, and a re-run must find
        them. A view still catching up (a projector that just joined its group) is
        given ``CATCH_UP_ROUNDS`` bounds before the import is refused as UNAVAILABLE."""
        self._caught_up_at = self.ctx.clock()
        for _ in range(CATCH_UP_ROUNDS):
            if await self.ctx.guard.wait_until_applied((Stream.SUBSCRIBERS,)):
                self._caught_up = True
                return
        raise NotConsistent("records", BEHIND)

    async def _checked(self, item: Item, now: datetime) -> list[LedgerEvent]:
        """The record's facts at ``now``, or the first refusal it meets (its fields,
        its brand for the caller, its campaign, the proof its campaign requires)."""
        cmd = item.command
        if cmd is None:
            await self._refuse_another_brand(item.brand, opt_out=item.held is not None)
            assert item.error is not None
            if item.held is not None and is_name(item.brand):
                await self._refuse_with_brand_meant(item.brand, item.error)
            raise item.error
        await self._refuse_another_brand(cmd.brand, opt_out=isinstance(cmd, RecordOptOut))
        try:
            events = to_events(cmd, now)  # every bad field at once
        except DomainError as exc:
            if isinstance(cmd, RecordOptOut):
                await self._refuse_with_brand_meant(cmd.brand, exc)
            raise
        if isinstance(cmd, RecordOptOut):
            await self._check_brand_meant(cmd.brand)
        self._authorize(cmd.brand)
        if isinstance(cmd, RecordOptOut):
            if cmd.campaign is not None and not await self._campaign_known(cmd.brand, cmd.campaign):
                # As RecordOptOut does: kept for review, denying meanwhile; refusing
                # it would lose the opt-out.
                events = unattributed_opt_out(cmd, now)
        else:
            rules = await self._campaign_rules(cmd.brand, cmd.campaign)
            if rules is None:
                raise FailedPrecondition("campaign", f"{cmd.brand}/{cmd.campaign} is not defined")
            check_required_proof(cmd, rules.policy)
        # Marked as imported: another platform received it and owed its one
        # confirmation, which this service must not allow a second time; so is the
        # candidate that keeps one naming a campaign not defined.
        events = [_marked_imported(e) for e in events]
        for event in events:
            if isinstance(event, ConsentRevoked) and event.stated_at is not None:
                self._stated_ahead.setdefault((event.brand, event.phone), []).append(event)
        if self._recorded_by:
            events = [evolved(e, recorded_by=self._recorded_by) for e in events]
        return events

    async def _after_erasures(self, planned: list[_Planned], result: ChunkResult) -> list[_Planned]:
        """``planned`` less the records dated at or before the latest erasure of their
        number's personal data towards their brand (``SubjectErased``), each refused
        FAILED_PRECONDITION on ``occurred_at`` in ``result``. A stale export imported
        again under new ids stored the name, the email and the texts erased all over
        again; its opt-ins allowed nothing, so refusing them loses no consent. Its
        opt-outs are not held for review either (``_held``): the number is denied
        until an opt-in dated after the erasure. The erasures are read from the
        numbers' digests, one read a brand for the chunk (a number whose digest
        cannot be read, from its history)."""
        by_brand: dict[str, set[str]] = {}
        for p in planned:
            phone = getattr(p.events[0], "phone", None)
            if p.item.command is not None and phone:
                by_brand.setdefault(brand_of(p.events[0]), set()).add(phone)
        erased: dict[tuple[str, str], datetime] = {}
        view = self.ctx.view
        for brand, phones in by_brand.items():
            times = await erasure_times(view, view, brand, sorted(phones))
            erased.update(((brand, phone), time) for phone, time in times.items())
        if not erased:
            return planned
        kept: list[_Planned] = []
        for p in planned:
            cmd = p.item.command
            key = (brand_of(p.events[0]), getattr(p.events[0], "phone", ""))
            at = erased.get(key)
            if cmd is None or at is None or cmd.occurred_at > at:
                kept.append(p)
                continue
            self._erased.add(p.item.index)
            refused = erased_refusal(key[0], at, "imported")
            result.refusals.append(_refusal(p.item, Code.FAILED_PRECONDITION, refused))
        return kept

    def _after_its_opt_outs(self, planned: Sequence[_Planned]) -> bool:
        """Whether an opt-in of ``planned`` could be placed after an opt-out this import
        placed when it was checked (one stamped ahead): only one stated after the
        import began, as such an opt-out is placed then or later."""
        return any(
            isinstance(p.events[0], ConsentGranted)
            and p.item.command is not None
            and p.item.command.occurred_at > self._began
            for p in planned
        )

    async def _consents_after_opt_outs(
        self, planned: list[_Planned], result: ChunkResult
    ) -> list[_Planned]:
        """``planned`` less the opt-ins refused, each with its refusal in ``result``,
        for an opt-out of the number that came after it by their own times but was
        placed before it (``check_consent_after_opt_outs``, as RecordOptIn checks).

        Only a number an opt-out stamped ahead was noted for (``note_stated_ahead``)
        can have one, and an opt-in itself stamped ahead doubts every recent opt-out:
        for those the opt-outs are read, for the chunk at once. The view is caught up
        first for such opt-ins placed after ``MAX_CLOCK_SKEW`` before this import
        caught it up, which may yield to an opt-out acknowledged since; a backfill's
        older ones need no wait. The opt-outs stamped ahead that this import built
        (``_stated_ahead``) count too: the view may not hold them yet."""
        consents = [(p, p.events[0]) for p in planned if isinstance(p.events[0], ConsentGranted)]
        if not consents:
            return planned
        now = self.ctx.clock()
        keys = sorted({(g.brand, stated_ahead_key(g.phone)) for _, g in consents})
        noted = await self.ctx.view.request_uses(keys)
        # The opt-ins to read opt-outs for: of a number an opt-out stamped ahead was
        # noted for, or themselves stamped ahead (they doubt every recent opt-out).
        read = [
            g
            for p, g in consents
            if (g.brand, stated_ahead_key(g.phone)) in noted
            or (p.item.command is not None and p.item.command.occurred_at > now)
        ]
        # An opt-out it could yield to was placed before it: one placed over
        # MAX_CLOCK_SKEW before the catch-up was acknowledged by then (appends time
        # out long before that, 40 s by default), so the view has it.
        caught_up = self._caught_up_at
        horizon = None if caught_up is None else caught_up - MAX_CLOCK_SKEW
        waits = {g.phone for g in read if horizon is None or g.occurred_at > horizon}
        if waits and not await self.ctx.guard.wait_until_applied_for(
            sorted({n for phone in waits for n in (phone, *forms_stored_before(phone))})
        ):
            raise NotConsistent("records", BEHIND)
        by_brand: dict[str, dict[str, datetime]] = {}
        for g in read:
            since = by_brand.setdefault(g.brand, {})
            at = opt_outs_window(g.occurred_at)
            since[g.phone] = min(at, since.get(g.phone, at))
        found = {
            (brand, phone): revoked
            for brand, since in by_brand.items()
            for phone, revoked in (await opt_outs_placed_since(self.ctx.view, brand, since)).items()
        }
        kept: list[_Planned] = []
        for p in planned:
            granted = p.events[0]
            cmd = p.item.command
            if isinstance(granted, ConsentGranted) and cmd is not None:
                key = (granted.brand, granted.phone)
                revoked = [*found.get(key, ()), *self._stated_ahead.get(key, ())]
                try:
                    check_consent_after_opt_outs(
                        revoked, cmd.occurred_at, granted.occurred_at, now, unstated_in_doubt=True
                    )
                except DomainError as exc:
                    result.refusals.append(_refusal(p.item, Code.INVALID_ARGUMENT, exc))
                    continue
            kept.append(p)
        return kept

    async def _refuse_another_brand(self, brand: str, *, opt_out: bool) -> None:
        """Refuse a record of a brand the caller may not write for before its fields
        are looked at, as the single write is (``GrpcServicer._writer``): a token of
        acme was told what to mend in globex's records, INVALID_ARGUMENT. A malformed
        brand is left to the field checks, and so is an opt-out under a spelling of
        one the caller writes for ("acme_"), which is held under it."""
        if not is_name(brand) or self._allows(brand):
            return
        if opt_out and any(self._allows(b) for b in (await self._brands_in_use()).meant(brand)):
            return
        self._authorize(brand)

    async def _refuse_with_brand_meant(self, brand: str, refused: DomainError) -> None:
        """Refuse an opt-out ``refused`` for its other fields on its brand as well, when
        ``_check_brand_meant`` refuses that: "ac-me" with a time ahead was refused on
        ``occurred_at`` alone, where RecordOptOut refuses it on both."""
        try:
            await self._check_brand_meant(brand)
        except DomainError as exc:
            found = Violations()
            found.add(exc)
            found.add(refused)
            found.raise_if_any()

    async def _check_brand_meant(self, brand: str) -> None:
        """As RecordOptOut does (``Writes.check_brand_meant``): an opt-out under
        "ac-me" while acme is in use, written, stopped nothing acme sends. Refused on
        brand, it is held under acme (``_held``), also for a token of acme alone,
        which "ac-me" was refused PERMISSION_DENIED and nothing held. One that means
        only another caller's brand is left to ``_authorize``, as before."""
        meant = (await self._brands_in_use()).meant(brand)
        if meant and (self._allows(brand) or any(self._allows(b) for b in meant)):
            raise brand_meant_refused(brand, meant)

    async def _brands_in_use(self) -> BrandsInUse:
        """The brands a campaign was defined for, each filed under how it reads
        (``ledger.commands.brands_meant``), read as the campaigns' rules are
        (``_campaigns_moved``)."""
        self._campaigns_moved()
        if self._in_use is None:
            at = self._campaigns_at
            in_use = brands_in_use(tuple(await self.ctx.view.brand_names()))
            if at == self._campaigns_at:  # else read while they moved on: not kept
                self._in_use = in_use
            return in_use
        return self._in_use

    async def _campaign_known(self, brand: str, campaign: str) -> bool:
        return await self._campaign_rules(brand, campaign) is not None

    async def _campaign_rules(self, brand: str, campaign: str) -> Campaign | None:
        """The campaign's rules as they stand, read once while the view's campaigns
        stay as they are (``_campaigns_moved``)."""
        self._campaigns_moved()
        key = (brand, campaign)
        if key not in self._campaigns:
            known = self._campaigns
            if await self.ctx.campaign_known(brand, campaign):
                history = await self.ctx.view.campaign_history(brand, campaign)
                known[key] = history.current()
            else:
                known[key] = None
            # Read while the campaigns moved on (another chunk emptied the dict): it
            # answers this record, and is not kept for the next.
            return known[key]
        return self._campaigns[key]

    def _campaigns_moved(self) -> None:
        """Forget what was read of the campaigns (their rules, the brands in use) once
        the view's positions in the campaign stream have moved. Kept for the import's
        length, a rule changed while a long import ran (a proof field required from a
        moment on) went unchecked on the rest of its records, and a brand defined
        meanwhile was not in use for them ("ac-me" opt-outs written, not held under
        it), where a single write would have refused them."""
        at = tuple(
            sorted(
                (partition, offset)
                for (stream, partition), offset in self.ctx.guard.applied_token().offsets.items()
                if stream is Stream.CAMPAIGNS
            )
        )
        if at != self._campaigns_at:
            self._campaigns, self._in_use, self._campaigns_at = {}, None, at

    async def _new(
        self, planned: list[_Planned], result: ChunkResult, dry_run: bool
    ) -> list[_Planned]:
        """The records not recorded before: an import id of this chunk seen earlier
        in it, or claimed before with every fact applied, is "already present" (the
        same record) or refused (another record under the id). In a dry run nothing
        is claimed."""
        first: dict[tuple[str, str], _Planned] = {}
        unique: list[_Planned] = []
        for p in planned:
            key = _key(p)
            earlier = first.get(key)
            if earlier is None:
                first[key] = p
                unique.append(p)
            elif earlier.events[0].request_fingerprint == p.events[0].request_fingerprint:
                result.present += 1
            else:
                result.refusals.append(_reused(p.item, earlier.item.index))
        if dry_run:
            unique = self._not_taken_in_dry_run(unique, result)
        if not unique:
            return []
        uses: list[RequestUse | None]
        if dry_run:
            keys = [_key(p) for p in unique]
            found = await self.ctx.view.request_uses(keys)
            uses = [found.get(k) for k in keys]
        else:
            claims = [
                RequestClaim(
                    *_key(p),
                    p.events[0].request_fingerprint,
                    tuple(str(e.event_id) for e in p.events),
                )
                for p in unique
            ]
            uses = list(await self.ctx.view.claim_requests(claims))
        ours: list[_Planned] = []
        spelled: list[tuple[_Planned, RequestUse]] = []
        for p, use in zip(unique, uses, strict=True):
            if use is None or use.fingerprint == p.events[0].request_fingerprint:
                ours.append(p)
            elif use.fingerprint == p.as_spelled:
                # Recorded by a version that digested its number as spelled (under
                # ids made from that): the same record, as a live retry is
                # (``recorded_as_spelled``), not another under its id.
                spelled.append((p, use))
            else:
                result.refusals.append(_reused(p.item, self._taken_by(p, use.fingerprint)))
        known = await self.ctx.view.known_events(
            [str(e.event_id) for p in ours for e in p.events]
            + [i for _, use in spelled for i in use.event_ids]
        )
        present: list[Applied] = []  # where the records found present are
        for p, use in spelled:
            if all(i in known for i in use.event_ids):
                result.present += 1
                present += (known[i] for i in use.event_ids)
            else:  # its facts never appended: nothing here can append them under its ids
                result.refusals.append(_reused(p.item, None))
        self._forget_applied()
        new: list[_Planned] = []
        for p in ours:
            if all(str(e.event_id) in known for e in p.events):
                result.present += 1
                present += (known[str(e.event_id)] for e in p.events)
            elif self._unapplied.get(_key(p)) == p.events[0].request_fingerprint:
                result.present += 1  # another chunk of this import appends it
            else:  # new, or claimed by a run whose append failed: (again) the same ids
                new.append(p)
        self._present(result, present)
        if not dry_run and new:
            new = await self._turns(new, result)
        if dry_run and new:
            new = await self._fitting_in_dry_run(new, result)
        refused = {refusal.index for refusal in result.refusals}
        self._remember([p for p in ours if p.item.index not in refused])
        return new

    async def _fitting_in_dry_run(self, new: list[_Planned], result: ChunkResult) -> list[_Planned]:
        """Of a dry run's new records, those the ledger would take: one it can tell
        it would refuse as too large (``EventLog.too_large``: the Kafka ledger knows
        its topics' limit) is refused as the import refuses it (``_refuse_too_large``),
        an opt-out to be held. The dry run said it would be imported."""
        places = set(await self.ctx.ledger.too_large([e for p in new for e in p.events]))
        if not places:
            return new
        fits: list[_Planned] = []
        at = 0
        for p in new:
            if places.isdisjoint(range(at, at + len(p.events))):
                fits.append(p)
            else:
                too_large = InvalidRequest("request", TOO_LARGE)
                result.refusals.append(_refusal(p.item, Code.INVALID_ARGUMENT, too_large))
            at += len(p.events)
        return fits

    def _remember(self, taken: list[_Planned]) -> None:
        """Note ``taken``, records whose import ids they hold (recorded before, or by
        this import; in a dry run: would be), in ``_taken``: a repeat keeps the first
        record's index; another record holds an id given up since (too large)."""
        for p in taken:
            key = hash(_key(p))
            earlier = self._taken.get(key)
            fingerprint = p.events[0].request_fingerprint
            if earlier is not None and earlier >> _INDEX_BITS == _fingerprint_hash(fingerprint):
                continue
            if earlier is not None or len(self._taken) < REMEMBERED:
                self._taken[key] = _taken_as(fingerprint, p.item.index)

    def _taken_by(self, p: _Planned, fingerprint: str) -> int | None:
        """The index of the record of this import that took ``p``'s import id, when the
        record that holds it, of ``fingerprint``, is one this import remembers."""
        earlier = self._taken.get(hash(_key(p)))
        if earlier is None or earlier >> _INDEX_BITS != _fingerprint_hash(fingerprint):
            return None
        return earlier & _INDEX_MASK

    async def _turns(self, new: list[_Planned], result: ChunkResult) -> list[_Planned]:
        """Those of ``new`` (claimed, facts not applied) whose turn to append this
        import takes. Another import holding one's turn may be appending it right
        now (two imports of one export at once): it is waited for, and then counted
        as present, or taken over when that import gave it up or let it run out.

        While it waits, this import holds no turns: the turns it took are given up
        and asked for again with the rest. Two imports each holding a turn the other
        waits for (after a third gave up the turns both wanted) would otherwise both
        wait until one's turns ran out. The pauses vary, so that two imports waiting
        for each other's records do not keep asking in step.

        Cancelled (the caller went away) or failed before it returns, it gives back
        every turn it asked for, once the statement asking has ended: one cancelled
        mid-way may still have taken them, which would hold a re-run up for the
        length of a turn."""
        if not self._pruned:
            self._pruned = True
            if self._pruning.due():
                await self._prune_turns()
        asked = _keys(new)
        taking: list[asyncio.Future[list[AppendTurn]]] = []
        try:
            return await self._take_turns(new, result, taking)
        except BaseException:
            await _quietly(self._give_back(asked, taking))
            raise

    async def _prune_turns(self) -> None:
        """Forget the turns of every import that ended or ran out ``TURNS_KEPT_S`` ago;
        housekeeping, so a failure is logged and the import goes on."""
        try:
            pruned = await self.ctx.view.prune_append_turns(TURNS_KEPT_S)
        except Exception:
            log.warning("import: old turns to append not pruned", exc_info=True)
        else:
            if pruned:
                log.info("import: pruned %d turns to append, ended over a day ago", pruned)

    async def _give_back(
        self, keys: list[tuple[str, str]], taking: list[asyncio.Future[list[AppendTurn]]]
    ) -> None:
        for take in taking:
            with contextlib.suppress(BaseException):
                await take
        await self.ctx.view.end_append_turns(keys, self._holder, appended=False)

    async def _take_turns(
        self,
        new: list[_Planned],
        result: ChunkResult,
        taking: list[asyncio.Future[list[AppendTurn]]],
    ) -> list[_Planned]:
        waited = False
        pause, longest = TURN_POLL_S
        elsewhere: list[_Planned] = []  # appended by another import
        while True:
            keys = [_key(p) for p in new]
            take = asyncio.ensure_future(
                self.ctx.view.take_append_turns(keys, self._holder, self.lease_s)
            )
            taking.append(take)
            turns = await asyncio.shield(take)  # cancelled, it ends first (``_give_back``)
            ours: list[_Planned] = []
            held: list[_Planned] = []
            for p, turn in zip(new, turns, strict=True):
                if turn is AppendTurn.TAKEN:
                    ours.append(p)
                elif turn is AppendTurn.APPENDED:
                    result.present += 1
                    elsewhere.append(p)
                else:
                    held.append(p)
            if not held:
                break
            if ours:
                await self.ctx.view.end_append_turns(_keys(ours), self._holder, appended=False)
            new, waited = ours + held, True
            await asyncio.sleep(pause * random.uniform(0.5, 1.5))
            pause = min(pause * 2, longest)
        if waited and ours:
            # A turn taken over from an import that died may cover facts it did
            # append and the view has applied since.
            known = await self.ctx.view.known_events(
                [str(e.event_id) for p in ours for e in p.events]
            )
            applied = [all(str(e.event_id) in known for e in p.events) for p in ours]
            if any(applied):
                keys = [_key(p) for p, done in zip(ours, applied, strict=True) if done]
                await self.ctx.view.end_append_turns(keys, self._holder, appended=True)
                result.present += len(keys)
                found = [p for p, done in zip(ours, applied, strict=True) if done]
                self._present(result, [known[str(e.event_id)] for p in found for e in p.events])
                ours = [p for p, done in zip(ours, applied, strict=True) if not done]
        await self._appended_elsewhere(elsewhere, result)
        return ours

    async def _appended_elsewhere(self, planned: list[_Planned], result: ChunkResult) -> None:
        """Note where the records are that another import appended (it ended their
        turns so), perhaps through another instance a moment ago, as for those found
        applied (``_present``). The view may not have applied them yet: it is let
        reach the ledger's end on their numbers first, and the chunk fails
        (UNAVAILABLE, to be sent again) when it cannot, rather than count as present
        records this instance's next check may not see."""
        if not planned:
            return
        phones = sorted(
            {e.phone for p in planned for e in p.events if isinstance(e, SubscriberEvent)}
        )
        if not await self.ctx.guard.wait_until_applied_for(phones):
            raise NotConsistent("records", BEHIND)
        known = await self.ctx.view.known_events(
            [str(e.event_id) for p in planned for e in p.events]
        )
        self._present(result, list(known.values()))

    def _present(self, result: ChunkResult, applied: Collection[Applied]) -> None:
        """Records answered as present (their facts applied, perhaps appended through
        another instance a moment ago) are read as this instance's own writes, as a
        single write found recorded before is (``requests.found``): its next check
        without a token waits until what CanSend reads holds them. The chunk's
        token covers them too."""
        if not applied:
            return
        token = ConsistencyToken.through(applied)
        self.ctx.guard.acknowledged(token)
        result.token = result.token.merge(token)

    def _not_taken_in_dry_run(self, unique: list[_Planned], result: ChunkResult) -> list[_Planned]:
        """A dry run's records less those an earlier chunk of it would import under
        the same import id: the same record is "already present", another refused,
        as the import would answer them."""
        left: list[_Planned] = []
        for p in unique:
            earlier = self._taken.get(hash(_key(p)))
            if earlier is None:
                left.append(p)
            elif earlier >> _INDEX_BITS == _fingerprint_hash(p.events[0].request_fingerprint):
                result.present += 1
            else:
                result.refusals.append(_reused(p.item, earlier & _INDEX_MASK))
        return left

    def _forget_applied(self) -> None:
        """Drop from ``_unapplied`` the chunks the view has applied: an import holds
        only what the projection has still to catch up on."""
        applied = self.ctx.guard.applied_token().offsets
        while self._claimed and (token := self._claimed[0].token) is not None:
            if any(applied.get(k, 0) < offset for k, offset in token.offsets.items()):
                break
            for key in self._claimed.pop(0).keys:
                self._unapplied.pop(key, None)


class _Retrying:
    """An adapter (the view, the campaigns' reads) each of whose coroutine methods is
    tried again after a passing failure by ``retried`` (``Imports._retried``)."""

    def __init__(
        self, inner: object, retried: Callable[[Callable[[], Awaitable[Any]], str], Awaitable[Any]]
    ) -> None:
        self._inner = inner
        self._retried = retried

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._inner, name)
        if not inspect.iscoroutinefunction(found):
            return found

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await self._retried(lambda: found(*args, **kwargs), name)

        return call


async def _quietly(ending: Awaitable[None]) -> None:
    """Await ``ending`` (the end of turns to append) even in a cancelled chunk, and
    let it fail: a turn not ended runs out on its own."""
    try:
        await asyncio.shield(ending)
    except Exception:
        log.warning("import: turns to append not ended; they run out", exc_info=True)


def _release(turn: asyncio.Future[None]) -> None:
    if not turn.done():
        turn.set_result(None)


def _marked_imported(event: LedgerEvent) -> LedgerEvent:
    """``event`` as an import records it: an opt-out, and the candidate that keeps one
    naming a campaign not defined (``unattributed_opt_out``), marked as imported."""
    if isinstance(event, ConsentRevoked):
        return evolved(event, imported=True)
    if isinstance(event, RevocationCandidateFlagged) and event.unattributed:
        return evolved(event, from_import=True)
    return event


def _unattributed(planned: Sequence[_Planned], result: ChunkResult) -> int:
    """Of ``planned`` not refused in ``result`` (imported or present), the opt-outs
    naming a campaign not defined: kept for review, denying every campaign."""
    refused = {r.index for r in result.refusals}
    return sum(
        1
        for p in planned
        if p.item.index not in refused
        and any(isinstance(e, RevocationCandidateFlagged) and e.unattributed for e in p.events)
    )


def _denies(p: _Planned) -> bool:
    """Whether the record is an opt-out, or an opt-out held for review."""
    return any(isinstance(e, ConsentRevoked | RevocationCandidateFlagged) for e in p.events)


def _may_deny(item: Item) -> bool:
    """Whether the record is an opt-out, or may be held as one (``_hold_of``)."""
    return isinstance(item.command, RecordOptOut) or (
        item.command is None and item.held is not None
    )


def _denied_numbers(items: Sequence[Item]) -> frozenset[str] | None:
    """The numbers, in E.164, of the records that are or may be held as opt-outs; None
    when one of them cannot be read (it may be any number)."""
    numbers = set()
    for item in items:
        if not _may_deny(item):
            continue
        source = item.command if item.command is not None else item.held
        phone = getattr(source, "phone", None)
        if not isinstance(phone, str):
            return None
        try:
            numbers.add(to_e164(phone))
        except DomainError:
            return None
    return frozenset(numbers)


def _denied_phones(planned: Sequence[_Planned]) -> set[tuple[str, str]]:
    """The numbers of the opt-outs and holds among ``planned``, each with the import id
    of its record (as ``_denied_records`` gives them)."""
    return {
        (e.phone, p.item.request_id)
        for p in planned
        for e in p.events
        if isinstance(e, ConsentRevoked | RevocationCandidateFlagged)
    }


def _denied_records(items: Sequence[Item]) -> set[tuple[str, str]]:
    """The numbers, in E.164, of the records of ``items`` that are or may be held as
    opt-outs, each with its import id; ``_denied_numbers`` tells whether one cannot
    be read."""
    records = set()
    for item in items:
        source = item.command if item.command is not None else item.held
        phone = getattr(source, "phone", None) if _may_deny(item) else None
        if isinstance(phone, str):
            with contextlib.suppress(DomainError):
                records.add((to_e164(phone), item.request_id))
    return records


def _opted_in_numbers(planned: Sequence[_Planned]) -> frozenset[str] | None:
    """The numbers of the facts that deny nothing; None when one names no number."""
    numbers = set()
    for p in planned:
        if _denies(p):
            continue
        for event in p.events:
            phone = getattr(event, "phone", None)
            if not phone:
                return None
            numbers.add(phone)
    return frozenset(numbers)


def _records(planned: Sequence[_Planned]) -> int:
    """The records ``planned`` holds: one held under several brands counts once."""
    return len({p.item.index for p in planned})


_INDEX_BITS = 40
_INDEX_MASK = (1 << _INDEX_BITS) - 1


def _fingerprint_hash(fingerprint: str) -> int:
    return hash(fingerprint) & 0xFFFF_FFFF_FFFF_FFFF


def _taken_as(fingerprint: str, index: int) -> int:
    """A record's fingerprint and index as one integer (``Imports._taken``): one
    object an entry rather than a tuple of two, for a million of them."""
    return _fingerprint_hash(fingerprint) << _INDEX_BITS | (index & _INDEX_MASK)


def _key(p: _Planned) -> tuple[str, str]:
    return (brand_of(p.events[0]), p.events[0].request_id)


def _keys(planned: Sequence[_Planned]) -> list[tuple[str, str]]:
    return [_key(p) for p in planned]


def _hold_of(item: Item) -> HoldRefusedOptOut | None:
    """What of a refused record an opt-out hold keeps, or None for an opt-in."""
    cmd = item.command
    if isinstance(cmd, RecordOptOut):
        return HoldRefusedOptOut(
            cmd.request_id,
            cmd.phone,
            cmd.brand,
            request_fingerprint(cmd),
            cmd.campaign,
            occurred_at=cmd.occurred_at,
        )
    return item.held if cmd is None else None


def _held_before(hold: HoldRefusedOptOut, item: Item) -> tuple[str, str, str] | None:
    """The (brand, id, fingerprint) a version that digested numbers as spelled held
    ``item``'s record under, when its id differs from ``hold``'s: a record read whole
    names its hold by its fingerprint (``_hold_of``), which changed; one that could
    not be read, by the message as sent, which did not."""
    if item.command is None:
        return None
    spelled = fingerprint_as_spelled(item.command)
    if spelled is None:
        return None
    then = replace(hold, record=spelled)
    return (then.brand, then.request_id, fingerprint_as_spelled(then) or request_fingerprint(then))


def _noted(refusal: Refusal, note: str) -> Refusal:
    """``refusal`` held for review, with ``note`` on its first reason, the one a
    summary shows."""
    (field_name, reason), *rest = refusal.violations
    return Refusal(
        refusal.index,
        refusal.request_id,
        refusal.code,
        ((field_name, f"{reason}; {note}"), *rest),
        held=True,
    )


def _not_now(item: Item, why: str, dry_run: bool = False) -> Refusal:
    """``item`` not imported for a passing failure, ``why``: it may have been recorded
    all the same (an append cut short), and a record sent again is found present. A
    dry run's was not checked, and nothing of it written: no word of a record."""
    said = (
        f"not checked: {why}; a dry run writes nothing: run it again"
        if dry_run
        else f"not imported: {why}; send it again (a record recorded is found present)"
    )
    return Refusal(item.index, item.request_id, Code.UNAVAILABLE, (("record", said),))


def _reused(item: Item, earlier: int | None) -> Refusal:
    where = f"record {earlier} of this import" if earlier is not None else "another request"
    return Refusal(
        item.index,
        item.request_id,
        Code.ALREADY_EXISTS,
        (("request_id", f"was used before by {where}; a new record needs a new id"),),
    )
