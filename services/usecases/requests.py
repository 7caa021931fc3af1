"""Each request recorded once: a request id belongs to the first request that used it,
and a provider's message id to the first send recorded under it.

``replay`` finds a request recorded before (answered with its first result, nothing
written); ``append`` takes the request id for a new one, then appends.

A request answered as recorded before counts as this instance's own write, appended
or not (``found``): perhaps recorded through another instance a moment ago, it is in
the view but maybe not yet in what CanSend reads, and the instance's next read
without a token must wait for it as it would for its own append.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, TypeVar

from ledger.commands import fingerprint_as_spelled
from ledger.events import (
    CampaignEvent,
    LedgerEvent,
    MessageSent,
    Recorded,
    SubscriberEvent,
    content_differences,
    message_content,
    send_differences,
)
from ledger.ports import ConsistencyToken, EventTooLarge, RequestTaken, RequestUse, Stream
from services.errors import AlreadyExists, MessageIdReused, NotConsistent, refuse_every
from services.usecases.context import BEHIND, Context
from services.usecases.spellings import earlier_message_uses

log = logging.getLogger(__name__)

R = TypeVar("R")
K = TypeVar("K", bound=Hashable)


@dataclass
class _Turn:
    """A key's lock, and how many calls hold it or wait for it."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    holders: int = 0


class Turns(Generic[K]):
    """One call at a time for each key in this process. A key's lock is kept only
    while a call holds it or waits for it, so the keys of calls long done cost nothing."""

    def __init__(self) -> None:
        self._turns: dict[K, _Turn] = {}

    def __contains__(self, key: object) -> bool:
        """Whether a call holds ``key``'s turn or waits for it."""
        return key in self._turns

    def __bool__(self) -> bool:
        return bool(self._turns)

    @asynccontextmanager
    async def turn(self, key: K) -> AsyncIterator[None]:
        turn = self._turns.get(key)
        if turn is None:
            turn = self._turns[key] = _Turn()
        turn.holders += 1
        try:
            async with turn.lock:
                yield
        finally:
            turn.holders -= 1
            if not turn.holders:
                del self._turns[key]


class RequestTurns:
    """One attempt at a time of each request in this process. Copies of a request sent
    at once each found its id taken by their own request before the first copy's
    append was on its way (``EventLog.settled`` had nothing to wait for), so each
    appended its events again: in turn, each copy after the first is a retry that
    finds what the one before it stored."""

    def __init__(self) -> None:
        self._turns: Turns[tuple[str, str]] = Turns()

    async def one_at_a_time(
        self, brand: str, request_id: str, write: Callable[[], Awaitable[R]]
    ) -> R:
        """``write()`` once no other attempt of ``brand``'s ``request_id`` is running
        (made only then: one whose caller went away while it waited is never made)."""
        async with self._turns.turn((brand, request_id)):
            return await write()


@dataclass(frozen=True)
class WriteResult:
    event_ids: list[str]
    token: ConsistencyToken
    replayed: bool = False
    """True when the request id had been written before: nothing new was recorded."""


def found(ctx: Context, event_ids: list[str], recorded: Sequence[Recorded]) -> WriteResult:
    """The answer to a request recorded before, whose events are ``recorded``: read as
    this instance's own write (``FreshnessGuard.acknowledged``), so that its next
    check without a token waits until what CanSend reads holds them."""
    token = ConsistencyToken.after(recorded)
    ctx.guard.acknowledged(token)
    return WriteResult(event_ids, token, True)


def brand_of(event: LedgerEvent) -> str:
    return event.brand if isinstance(event, SubscriberEvent | CampaignEvent) else ""


def refuse_another_request(event: LedgerEvent, use: RequestUse) -> None:
    """``AlreadyExists`` unless ``use`` (the request id's first use) is ``event``'s own
    request."""
    if use.fingerprint != event.request_fingerprint:
        raise AlreadyExists(
            "request_id",
            f"{event.request_id!r} was used before for another request of"
            f" {brand_of(event)!r}; a new request needs a new id",
            event.request_id,
            use.event_ids,
        )


def refuse_another_message(
    sent: MessageSent, first: LedgerEvent, first_id: str, field: str = "message_id"
) -> None:
    """``MessageIdReused`` when ``sent`` says something else of its message than
    ``first``, the send recorded under its provider message id, did. Answered as that
    message, the sender would take what it sent now for what is recorded."""
    if not isinstance(first, MessageSent):
        return
    other = send_differences(first, sent)
    if other:
        raise MessageIdReused(
            field,
            f"{sent.message_id!r} was recorded before as sent to this number, with another"
            f" {', '.join(other)}; a message recorded is not changed by recording it"
            " again (another message needs another message id)",
            sent.message_id,
            [first_id],
        )


def refuse_another_claim(
    sent: MessageSent,
    claimed_by: str,
    content: str | None,
    field: str = "message_id",
    lapses_in: float | None = None,
) -> None:
    """``MessageIdReused`` when ``sent`` says something else of its message than the
    send that claimed its provider message id first (``content``, that send's
    ``message_content``; None for a claim that did not keep it), recorded or not: of
    two sends at once, the later is refused rather than answered OK and dropped.
    ``lapses_in``: the seconds until the claim lapses should its send never be
    recorded (``take_over_lapsed_claims``), told to the sender."""
    other = [] if content is None else content_differences(content, sent)
    if other:
        lapse = (
            ""
            if lapses_in is None
            else f" (its claim lapses in {max(1, math.ceil(lapses_in))} s, and this send may"
            " be recorded then, should that send never be)"
        )
        raise MessageIdReused(
            field,
            f"{sent.message_id!r} was claimed before by another send to this number, with"
            f" another {', '.join(other)}{lapse}; a message recorded is not changed by"
            " recording it again (another message needs another message id)",
            sent.message_id,
            [claimed_by],
        )


def append_within_s(ctx: Context) -> float | None:
    """How soon after claiming its message ids (or making its earlier attempt's claims
    anew) an attempt must begin its append, or give it up (``too_late_to_append``):
    the longest the ledger's append may take, and the freshness bound (a batch waits
    up to it for a reply's exemption between the two). None when the ledger cannot
    bound its appends."""
    longest = ctx.ledger.longest_append_s
    return None if longest is None else longest + ctx.guard.wait_bound


def claim_lapse_s(ctx: Context) -> float | None:
    """How long ago a send must have claimed its message id for the claim to lapse
    when the view, caught up with the ledger, holds no send of the message: its
    append began within ``append_within_s`` of the claim, and took at most the
    longest an append may take, so it is stored by then or never will be; the
    freshness bound beside it. None when the ledger cannot bound its appends: its
    claims never lapse."""
    within = append_within_s(ctx)
    longest = ctx.ledger.longest_append_s
    if within is None or longest is None:
        return None
    return within + longest + ctx.guard.wait_bound


def too_late_to_append(ctx: Context, claimed: float) -> bool:
    """Whether an attempt that claimed its message ids at ``claimed`` (the event
    loop's clock, read before it asked) is past ``append_within_s``: appended now,
    its send might reach the ledger after its claims lapsed and another send of the
    message took them over, and both be answered OK."""
    within = append_within_s(ctx)
    return within is not None and asyncio.get_running_loop().time() - claimed > within


LATE_TO_APPEND = (
    "the message ids were claimed too long before the append could begin, which a send"
    " of the message under another request id may now take over; nothing was written:"
    " try again"
)


@dataclass(frozen=True)
class TakenOver:
    """What ``take_over_lapsed_claims`` did: the (phone, message id) claims it took
    over, or else, per claim still young, the seconds until it lapses."""

    taken: set[tuple[str, str]] = field(default_factory=set)
    lapses_in: dict[tuple[str, str], float] = field(default_factory=dict)


async def take_over_lapsed_claims(
    ctx: Context, brand: str, refused: Sequence[tuple[MessageSent, str, str]]
) -> TakenOver:
    """Give ``refused``'s sends the claims that refused them when those claims named
    sends never written, so that a message whose send died between its claim and its
    append (its instance killed) can be sent again, corrected, under a new request
    id. Each of ``refused`` is a send, the event id of the other send whose claim
    (saying something else of the message) refused it, and the send's field.

    A claim is taken over only when every one is: made longer ago than
    ``claim_lapse_s``, and the view, caught up since then with the ledger's end on
    the phones' partitions, holds no send of its message: what the dead send
    appended would be there. The view takes them over in one statement, only from
    those very sends (of two taking one over at once, one does). Nothing is taken
    over while a claim is younger: the seconds until each lapses are answered.
    ``NotConsistent`` on the first send's field when the claims are old enough but
    the view cannot be shown caught up: whether their sends were recorded is in
    doubt, and a retry may find out."""
    lapse = claim_lapse_s(ctx)
    if lapse is None or not refused:
        return TakenOver()
    keys = [(sent.phone, sent.message_id) for sent, _, _ in refused]
    ages = await ctx.view.message_claim_ages(brand, keys)
    young: dict[tuple[str, str], float] = {}
    for key, (_, holder, _) in zip(keys, refused, strict=True):
        found = ages.get(key)
        if found is None or found[0].event_id != holder:
            return TakenOver()  # given up, or taken over, meanwhile: asked again, it answers
        if found[1] < lapse:
            young[key] = lapse - found[1]
    if young:
        return TakenOver(lapses_in=young)
    # The guard reads the ledger's end after this call began, so after every claim
    # lapsed: an append begun with one of them is in it, and so in the view.
    if not await ctx.guard.wait_until_applied_for(sorted({phone for phone, _ in keys})):
        raise NotConsistent(refused[0][2], claim_in_doubt(lapse))
    taken = await ctx.view.take_over_message_claims(
        brand,
        [
            (sent.phone, sent.message_id, holder, str(sent.event_id), message_content(sent))
            for sent, holder, _ in refused
        ],
        lapse,
    )
    if taken:
        # An instance died between a send's claims and its append: worth an operator's
        # look, which no answer gives (the new send is recorded as any other).
        log.warning(
            "%d send claim(s) of brand %s taken over: claimed over %g s ago by a send"
            " never written (its instance stopped before appending)",
            len(taken), brand, lapse,
        )  # fmt: skip
    return TakenOver(taken=taken)


def claim_in_doubt(lapse: float) -> str:
    return (
        f"the message id was claimed over {lapse:g} s ago by another send, saying"
        " something else of it, that the read model does not hold; but the read model"
        " could not be shown caught up with the ledger, so whether that send was"
        " recorded is in doubt; try again"
    )


async def as_recorded_after_take_over(
    ctx: Context, sent: Sequence[MessageSent], fields: Sequence[str]
) -> None:
    """Once ``sent``, sends that took over lapsed claims, are appended: refuse them as
    reuses (``refuse_another_message``) if a lapsed send reached the ledger first
    after all, as their retries would be (the view applies the first send of a
    message only). ``NotConsistent`` when the view cannot be shown to hold their
    messages: their retries answer."""
    if not sent:
        return
    if not await ctx.guard.wait_until_applied_for(sorted({s.phone for s in sent})):
        raise NotConsistent(fields[0], BEHIND)
    applied = await ctx.view.message_uses(sent[0].brand, [(s.phone, s.message_id) for s in sent])
    if len(applied) < len({(s.phone, s.message_id) for s in sent}):  # mid-rebuild
        raise NotConsistent(fields[0], BEHIND)
    others = {i for i in applied.values() if i not in {str(s.event_id) for s in sent}}
    first = await ctx.view.find_events(sorted(others)) if others else {}
    if len(first) < len(others):
        raise NotConsistent(fields[0], BEHIND)
    refused = []
    for one, where in zip(sent, fields, strict=True):
        event_id = applied[(one.phone, one.message_id)]
        if event_id in first:
            try:
                refuse_another_message(one, first[event_id].event, event_id, where)
            except MessageIdReused as exc:
                refused.append(exc)
    refuse_every(refused)


def _refuse_another_claim(
    sent: LedgerEvent, taken: RequestTaken, lapses_in: float | None = None
) -> None:
    """``refuse_another_claim`` for a send whose message id another send claimed."""
    if isinstance(sent, MessageSent) and taken.claimed_by is not None:
        refuse_another_claim(sent, taken.claimed_by, taken.claimed_content, lapses_in=lapses_in)


def _claim_refuses(sent: MessageSent, taken: RequestTaken) -> bool:
    """Whether the claim ``taken`` found refuses ``sent`` (``refuse_another_claim``)."""
    return (
        taken.claimed_by is not None
        and taken.claimed_content is not None
        and bool(content_differences(taken.claimed_content, sent))
    )


def unwritten(exc: EventTooLarge, events: Sequence[LedgerEvent]) -> bool:
    """Whether the ledger wrote none of ``events`` when it refused them as too large:
    it names the events it refused before sending any, and a refusal of the one
    event of an append is of all of it."""
    return bool(exc.places) or len(events) == 1


async def first_facts(
    ctx: Context, use: RequestUse, events: Sequence[LedgerEvent]
) -> WriteResult | None:
    """The answer to a retry whose facts, read from the world as it is now, are not
    the ones its first attempt recorded (``use``): those, once the view holds them
    all, and nothing written. A STOP retried after its number moved to another
    campaign of the brand recorded an opt-out of that campaign too, which the person
    never sent it. None when the facts are the same, or some of the first attempt's
    are not in the view even once it has caught up on the phones (then as before:
    ``stored_before``)."""
    if not use.event_ids or set(use.event_ids) == {str(e.event_id) for e in events}:
        return None
    first = list(use.event_ids)
    known = await ctx.view.find_events(first)
    if len(known) < len(set(first)):
        # Its first attempt may be in the ledger, not yet in the view.
        phones = sorted({e.phone for e in events if isinstance(e, SubscriberEvent)})
        if phones and await ctx.guard.wait_until_applied_for(phones):
            known = await ctx.view.find_events(first)
    if len(known) < len(set(first)):
        return None
    return found(ctx, first, [known[i] for i in first])


async def replay(ctx: Context, events: Sequence[LedgerEvent]) -> WriteResult | None:
    """The earlier result when every event was already recorded (a retried request).

    Request ids are the brand's: the first request that used one holds it
    (``ConsentView.request_use``), and another request under the same id is
    refused with ``AlreadyExists``, naming the first one's events. A miss while
    the view has not applied an earlier attempt (its outcome unknown) first finds
    out whether it was stored (``stored_before``): what was is answered, not
    appended again. A ``MessageSent``
    whose provider message id is recorded already is that message: the answer is
    the first one's event, and nothing is written; unless it says something else of
    the message, which is refused (``refuse_another_message``)."""
    return (await _replayed(ctx, events))[0]


async def _replayed(
    ctx: Context, events: Sequence[LedgerEvent]
) -> tuple[WriteResult | None, dict[str, Recorded], RequestUse | None]:
    """``replay``'s answer, those of ``events`` an earlier attempt stored when it
    stored only some (for ``append`` to leave out), and the request id's use as found."""
    first = events[0]
    use = await ctx.view.request_use(brand_of(first), first.request_id)
    known: dict[str, Recorded] = {}
    if use is not None:
        refuse_another_request(first, use)
        ids = [str(e.event_id) for e in events]
        if (earlier := await first_facts(ctx, use, events)) is not None:
            return earlier, known, use
        known = await stored_or_landing(ctx, events)
        if all(i in known for i in ids):
            return found(ctx, ids, [known[i] for i in ids]), known, use
    if isinstance(first, MessageSent):
        return await _same_message(ctx, first), known, use
    return None, known, use


async def recorded_as_spelled(
    ctx: Context, cmd: Any, events: Sequence[LedgerEvent]
) -> WriteResult | None:
    """The earlier result of ``cmd`` when it was recorded before its numbers were
    fingerprinted in E.164: its request id is held under the fingerprint of its
    spelling as sent (``fingerprint_as_spelled``), and its events under ids made from
    that. Such a retry is that request, answered with the ids first recorded; nothing
    is written. ``NotConsistent`` while the view has not applied them all."""
    as_spelled = fingerprint_as_spelled(cmd)
    if as_spelled is None:
        return None
    use = await ctx.view.request_use(brand_of(events[0]), cmd.request_id)
    if use is None or use.fingerprint != as_spelled:
        return None
    known = await ctx.view.find_events(use.event_ids)
    if len(known) < len(set(use.event_ids)):
        # Its first attempt may be in the ledger, not yet in the view.
        phones = sorted({p for e in events if (p := getattr(e, "phone", None))})
        if await ctx.guard.wait_until_applied_for(phones):
            known = await ctx.view.find_events(use.event_ids)
    if len(known) < len(set(use.event_ids)):
        raise NotConsistent("request_id", BEHIND)
    return found(ctx, list(use.event_ids), list(known.values()))


async def _same_message(ctx: Context, sent: MessageSent) -> WriteResult | None:
    original = await ctx.view.message_use(sent.brand, sent.phone, sent.message_id)
    if original is None and await ctx.guard.wait_until_applied_for([sent.phone]):
        # Perhaps recorded a moment ago: count every send acknowledged for the
        # phone. (A view that cannot get there in time is no reason to refuse the
        # write: the projection still applies one MessageSent per message id.)
        original = await ctx.view.message_use(sent.brand, sent.phone, sent.message_id)
    if original is None or original == str(sent.event_id):
        return None
    recorded = await ctx.view.find_event(original)
    if recorded is None:  # the view reads them in one transaction: only mid-rebuild
        raise NotConsistent("message_id", BEHIND)
    refuse_another_message(sent, recorded.event, original)
    return found(ctx, [original], [recorded])


async def _sent_as_spelled_before(ctx: Context, sent: MessageSent) -> WriteResult | None:
    """``_same_message`` for a send an earlier version recorded under the number's
    other spelling (``earlier_message_uses``): that message, answered with its event
    and nothing written, or refused if ``sent`` says something else of it."""
    key = (sent.phone, sent.message_id)
    original = (await earlier_message_uses(ctx.view, sent.brand, [key])).get(key)
    if original is None:
        return None
    use = await ctx.view.request_use(sent.brand, sent.request_id)
    if use is not None:
        refuse_another_request(sent, use)
    recorded = await ctx.view.find_event(original)
    if recorded is None:  # the view reads them in one transaction: only mid-rebuild
        raise NotConsistent("message_id", BEHIND)
    refuse_another_message(sent, recorded.event, original)
    return found(ctx, [original], [recorded])


async def stored_before(
    ctx: Context, events: Sequence[LedgerEvent], field: str = "request_id"
) -> dict[str, Recorded]:
    """Those of ``events`` that an earlier attempt (its outcome unknown: acknowledged
    late, or its caller gone) stored, by event id, so that only the others are
    appended again (``appended_again``).

    The view's are found at once. For the rest, a ledger that stores an event id
    once (``EventLog.stores_events_once``, the embedded default's) is asked nothing:
    appending them again stores none twice. On Kafka, whose idempotent producer
    covers only its own retries, the view is asked again once no append of this
    process is on its way (``EventLog.settled``: a try answered with a timeout may
    still be written until then) and it has applied the ledger to its end on their
    partitions. ``NotConsistent`` on ``field`` when it cannot get there in time:
    appended blind, they could be stored twice."""
    if not events:
        return {}
    ids = sorted({str(e.event_id) for e in events})
    known = await ctx.view.find_events(ids)
    if len(known) == len(ids) or ctx.ledger.stores_events_once:
        return known
    await ctx.ledger.settled()
    if not await _applied_for(ctx, events):
        raise NotConsistent(field, BEHIND)
    return await ctx.view.find_events(ids)


async def _applied_for(ctx: Context, events: Sequence[LedgerEvent]) -> bool:
    """Whether the view has applied the ledger to its end, as of now, where ``events``
    would be: their phones' partitions, and the campaigns' stream for a campaign's."""
    phones = sorted({e.phone for e in events if isinstance(e, SubscriberEvent)})
    caught_up = not phones or await ctx.guard.wait_until_applied_for(phones)
    if caught_up and any(isinstance(e, CampaignEvent) for e in events):
        caught_up = await ctx.guard.wait_until_applied((Stream.CAMPAIGNS,))
    return caught_up


LANDING_WAIT_S = 1.0
"""The longest ``stored_or_landing`` looks for another attempt's events, if the
freshness bound is longer: an append on its way lands within milliseconds, while
a retry after its instance was killed (no append to come) waits this out before
its own, which a longer bound (10 s) made miss the caller's deadline."""


async def as_it_lands(
    caught_up: Callable[[], Awaitable[bool]],
    look: Callable[[], Awaitable[R]],
    done: Callable[[R], bool],
    within_s: float,
    seen: R,
) -> tuple[R, bool]:
    """``look()`` each time the view has caught up with the ledger (``caught_up()``,
    a wait of its own), until what it finds is ``done`` or ``within_s`` seconds have
    passed: for what another attempt or instance appends a moment after this one
    asked, which the view may not hold at one look. What the last look found
    (``seen`` when none was made) and whether the view last caught up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while await caught_up():
        seen = await look()
        if done(seen) or loop.time() >= deadline:
            return seen, True
    return seen, False


def landing_wait_s(ctx: Context) -> float:
    """How long to look for an append on its way: the freshness bound,
    ``LANDING_WAIT_S`` at most."""
    return min(ctx.guard.wait_bound, LANDING_WAIT_S)


async def stored_or_landing(ctx: Context, events: Sequence[LedgerEvent]) -> dict[str, Recorded]:
    """``stored_before`` for a request whose id an attempt took before this one, and,
    while some of its events are missing on a ledger that may store them twice, those
    looked for again as the ledger grows (``landing_wait_s``): the attempt may be
    another instance's, its append still on its way (``EventLog.settled`` waits only
    for this process's), and appended at once the events were stored twice. Past the
    bound that attempt is taken to have failed, and they are appended."""
    stored = await stored_before(ctx, events)
    ids = {str(e.event_id) for e in events}
    if ids <= stored.keys() or ctx.ledger.stores_events_once:
        return stored
    stored, _ = await as_it_lands(
        partial(_applied_for, ctx, events),
        partial(ctx.view.find_events, sorted(ids)),
        lambda found: ids <= found.keys(),
        landing_wait_s(ctx),
        stored,
    )
    return stored


async def appended_again(
    ctx: Context, events: Sequence[LedgerEvent], stored: dict[str, Recorded]
) -> list[Recorded]:
    """``events`` as recorded: those in ``stored`` (``stored_before``) where they are,
    the others appended, in order."""
    missing = [e for e in events if str(e.event_id) not in stored]
    recorded = await ctx.ledger.append(missing) if missing else []
    found = {**stored, **{str(r.event.event_id): r for r in recorded}}
    return [found[str(e.event_id)] for e in events]


async def use_standing(
    ctx: Context,
    taken: RequestTaken,
    brand: str,
    request_id: str,
    fingerprint: str,
    ids: Sequence[str],
) -> RequestUse:
    """The use of ``request_id`` that stands after ``take_request`` asked with no
    message (``taken``): with none, the id is always held, by this request or
    another, and a view that says otherwise is asked with ``claim_request``."""
    return taken.use or await ctx.view.claim_request(brand, request_id, fingerprint, ids)


async def append(
    ctx: Context, events: Sequence[LedgerEvent], stored: dict[str, Recorded] | None = None
) -> WriteResult:
    """Append a request ``replay`` did not find (new, or a retry whose earlier attempt
    stored none of it, or only ``stored``: ``stored_before``), once its request id
    is taken for it: of two requests under one id at once, through any instances
    sharing the view, the second is refused and appends nothing. ``stored`` None:
    ``replay`` found the id free. Another attempt of the request that took it since
    (through another instance, its append perhaps still on its way) is then looked
    for first (``stored_or_landing``), and answered if found: appended at once, the
    request was stored twice."""
    first, ids = events[0], [str(e.event_id) for e in events]
    taken = await ctx.view.take_request(
        brand_of(first), first.request_id, first.request_fingerprint, ids
    )
    use = await use_standing(
        ctx, taken, brand_of(first), first.request_id, first.request_fingerprint, ids
    )
    refuse_another_request(first, use)
    if not taken.taken and stored is None:
        stored = await stored_or_landing(ctx, events)
        if all(i in stored for i in ids):
            return found(ctx, ids, [stored[i] for i in ids])
    recorded = await appended_again(ctx, events, stored or {})
    return WriteResult(ids, ConsistencyToken.after(recorded))


async def taken_then_appended(ctx: Context, events: Sequence[LedgerEvent]) -> WriteResult:
    """``replay`` and ``append`` in one look at the view, for a request whose checks
    passed: the request id is taken (``ConsentView.take_request``) and the events
    appended; or, when a request took the id before, refused if it was another, and
    answered with its result if the view has applied it (a retry), or once it lands
    (``stored_or_landing``: another instance's attempt may be appending it; a send
    then takes its ids again, its claims made anew, before its own append). A send
    claims its provider message id in the same look; when another send claimed it
    first, the view is let reach what was acknowledged for the phone (as ``replay``
    does) and asked again, so that the same message recorded a moment ago is
    answered as that message. (Batched sends claim their messages' ids the same
    way, in one statement: ``Sends``.)"""
    first, ids = events[0], [str(e.event_id) for e in events]
    message = content = None
    if isinstance(first, MessageSent):
        message, content = (first.phone, first.message_id), message_content(first)
    take = partial(
        ctx.view.take_request,
        brand_of(first),
        first.request_id,
        first.request_fingerprint,
        ids,
        message,
        content=content,
    )
    if isinstance(first, MessageSent):
        earlier = await _sent_as_spelled_before(ctx, first)
        if earlier is not None:
            return earlier
    loop = asyncio.get_running_loop()
    asked = loop.time()  # before the claim: its age in the view counts from later
    taken = await unless_gone(take(), partial(_give_up_if_taken, ctx, first, ids, message))
    if taken.use is not None:
        refuse_another_request(first, taken.use)
    copy = taken.sent_as is None and taken.claimed_by not in ids
    took_over = past = False
    if isinstance(first, MessageSent) and copy and _claim_refuses(first, taken):
        # Another send's claim says something else of the message: refused, unless
        # that send provably was never written (its instance died before appending).
        assert taken.claimed_by is not None and message is not None
        over = await take_over_lapsed_claims(
            ctx, first.brand, [(first, taken.claimed_by, "message_id")]
        )
        if not over.taken:
            _refuse_another_claim(first, taken, over.lapses_in.get(message))
        took_over = True
        asked = loop.time()
        taken = await unless_gone(take(), partial(_give_up_if_taken, ctx, first, ids, message))
        if taken.use is not None and taken.use.fingerprint != first.request_fingerprint:
            await ctx.view.release_claims(first.brand, None, [(*message, ids[0])])
            refuse_another_request(first, taken.use)
        copy = taken.sent_as is None and taken.claimed_by not in ids
    if message is not None and copy:
        _refuse_another_claim(first, taken)
        # Another send claimed the message id first, saying the same of it, perhaps a
        # moment ago: count every send acknowledged for the phone, then the view's
        # first use decides. (A view that cannot get there in time is no reason to
        # refuse the write: the projection still applies one MessageSent per message
        # id.)
        await claimed_sends_applied(ctx, brand_of(first), [message])
        asked = loop.time()
        past = True
        taken = await unless_gone(
            take(past_claims=True), partial(_give_up_if_taken, ctx, first, ids, message)
        )
        if taken.use is not None:
            refuse_another_request(first, taken.use)
        if taken.sent_as is None and taken.claimed_by not in ids:
            _refuse_another_claim(first, taken)
    stored: dict[str, Recorded] = {}  # what an earlier attempt of it stored
    if not taken.taken:
        if taken.use is not None:  # this very request before: recorded, if stored
            if (earlier := await first_facts(ctx, taken.use, events)) is not None:
                return earlier
            stored = await stored_or_landing(ctx, events)
            if all(i in stored for i in ids):
                return found(ctx, ids, [stored[i] for i in ids])
            if message is not None and not ctx.ledger.stores_events_once:
                # The look may have outlasted what this take's claims allow before the
                # append (``append_within_s``): taken again, they are made anew.
                asked = loop.time()
                again = await unless_gone(
                    take(past_claims=past), partial(_give_up_if_taken, ctx, first, ids, message)
                )
                taken, stored = await _still_ours(ctx, first, events, again)
                if all(i in stored for i in ids):
                    return found(ctx, ids, [stored[i] for i in ids])
        if taken.sent_as is not None and taken.sent_as not in ids:
            original = await ctx.view.find_event(taken.sent_as)
            if original is None:  # the view reads them in one transaction: only mid-rebuild
                raise NotConsistent("message_id", BEHIND)
            if isinstance(first, MessageSent):
                refuse_another_message(first, original.event, taken.sent_as)
            return found(ctx, [taken.sent_as], [original])
    if message is not None and taken.claimed_by in ids and too_late_to_append(ctx, asked):
        if taken.taken:
            await _give_up_claims(ctx, first, ids, message)
        raise NotConsistent("message_id", LATE_TO_APPEND)
    try:
        recorded = await appended_again(ctx, events, stored)
    except EventTooLarge as exc:
        if taken.taken and unwritten(exc, events):
            # Refused whole, the request leaves no claim behind: kept, its request id
            # and message id would refuse its corrected retry as a reuse for good.
            await _give_up_claims(ctx, first, ids, message)
        raise
    written = WriteResult(ids, ConsistencyToken.after(recorded))
    if took_over and isinstance(first, MessageSent):
        await as_recorded_after_take_over(ctx, [first], ["message_id"])
    if copy and isinstance(first, MessageSent):
        return await _as_the_send_applied(ctx, first, written)
    return written


async def _still_ours(
    ctx: Context, first: LedgerEvent, events: Sequence[LedgerEvent], again: RequestTaken
) -> tuple[RequestTaken, dict[str, Recorded]]:
    """What a send whose earlier attempt held its ids, none of its event found, makes
    of taking them again after its look (``again``): the take, and its event if it
    landed meanwhile. ``AlreadyExists`` if another request holds the request id now;
    ``NotConsistent`` (its claims given up if this take made them) if another send
    claims the message now, that earlier attempt having given it up: its retry
    decides as any send's does."""
    ids = [str(e.event_id) for e in events]
    if again.use is not None:
        refuse_another_request(first, again.use)
    if again.sent_as is not None and again.sent_as in ids:
        stored = await ctx.view.find_events(ids)
        if len(stored) < len(ids):  # the view reads them in one transaction: mid-rebuild
            raise NotConsistent("message_id", BEHIND)
        return again, stored
    if again.claimed_by is not None and again.claimed_by not in ids and again.sent_as is None:
        if again.taken:
            assert isinstance(first, MessageSent)
            await _give_up_claims(ctx, first, ids, (first.phone, first.message_id))
        raise NotConsistent("message_id", CLAIMED_SINCE)
    return again, {}


CLAIMED_SINCE = (
    "another send claimed the message id while this request looked for its earlier"
    " attempt, which gave it up; nothing was written: try again"
)


async def unless_gone(work: Awaitable[R], undo: Callable[[R], Awaitable[None]]) -> R:
    """``work``'s result (a claim in the view). A caller that goes away meanwhile (a
    deadline, a cancel) does not stop it: the view's statement runs on and takes what
    it takes, so its result is awaited and handed to ``undo`` to give that up before
    the cancellation goes on. Kept, a message id so taken named a send never written,
    and a corrected send of the message under another request id was refused as a
    reuse for good."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await undo(await task)
        raise


async def _give_up_if_taken(
    ctx: Context,
    first: LedgerEvent,
    ids: list[str],
    message: tuple[str, str] | None,
    taken: RequestTaken,
) -> None:
    if taken.taken:
        await _give_up_claims(ctx, first, ids, message)


async def _give_up_claims(
    ctx: Context, first: LedgerEvent, ids: list[str], message: tuple[str, str] | None
) -> None:
    """Free the request id and message id a request took, none of its events written."""
    sent = [(message[0], message[1], ids[0])] if message is not None else []
    await ctx.view.release_claims(
        brand_of(first), (first.request_id, first.request_fingerprint, ids), sent
    )


async def claimed_sends_applied(ctx: Context, brand: str, sends: Sequence[tuple[str, str]]) -> bool:
    """Wait until the view holds a send of each of ``sends`` (phone, provider message
    id), which other requests claimed first, looking again as the ledger grows, up
    to the freshness bound; whether the view got as far as the ledger's end.

    One look was not enough: a claim's own append still on its way, the copy was
    appended, the ledger took it first and the view kept it alone (one MessageSent
    per message id), so the claim's send was answered with an event no reader shows
    and its retry with the copy's. Past the bound (the claim's append failed, or its
    instance is gone) the copy is recorded all the same."""
    phones = sorted({phone for phone, _ in sends})
    none: dict[tuple[str, str], str] = {}
    _, caught_up = await as_it_lands(
        partial(ctx.guard.wait_until_applied_for, phones),
        partial(ctx.view.message_uses, brand, sends),
        lambda applied: len(applied) == len(set(sends)),
        ctx.guard.wait_bound,
        none,
    )
    return caught_up


async def _as_the_send_applied(
    ctx: Context, sent: MessageSent, written: WriteResult
) -> WriteResult:
    """``written``, a copy of a message another send claimed first and both appended
    at once, answered as the one send of the message the view applies (the first in
    the ledger; the other is not applied): answered with its own id, never read
    anywhere, and its retry with the applied one's, one request was answered two
    ways. ``written`` itself when the view cannot get there in time."""
    if not await ctx.guard.wait_until_applied_for([sent.phone]):
        return written
    applied = await ctx.view.message_use(sent.brand, sent.phone, sent.message_id)
    if applied is None or applied in written.event_ids:
        return written
    recorded = await ctx.view.find_event(applied)
    if recorded is None:
        return written
    # A send that took the claim over from a dead one said something else: refused,
    # as this copy's retry is.
    refuse_another_message(sent, recorded.event, applied)
    return found(ctx, [applied], [recorded])


async def recorded_once(
    ctx: Context, events: Sequence[LedgerEvent], *, free_if_too_large: bool = False
) -> WriteResult:
    """The earlier result of a retried request, or else the events appended (those
    its earlier attempt did not store). With ``free_if_too_large``, a request whose
    id no attempt held before this one gives it up again when the ledger refuses all
    of its events as too large, as ``taken_then_appended`` does: kept, the request
    corrected under it was refused as a reuse for good."""
    earlier, stored, use = await _replayed(ctx, events)
    if earlier is not None:
        return earlier
    try:
        return await append(ctx, events, None if use is None else stored)
    except EventTooLarge as exc:
        if free_if_too_large and use is None and unwritten(exc, events):
            first, ids = events[0], [str(e.event_id) for e in events]
            request = (first.request_id, first.request_fingerprint, ids)
            await ctx.view.release_claims(brand_of(first), request, [])
        raise
