"""Recording facts: the write RPCs and inbound texts, checked, then appended once.

``Writes.record`` validates a request into events, answers a retry with its first
result (``services.usecases.requests``), checks what the view must confirm (the
campaign exists, the proof its rules require, a sender number free, a candidate
pending) and appends. ``Writes.handle_inbound`` reads an inbound text against its
campaign and the number's state, one text of a phone at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
from collections.abc import AsyncIterator, Callable, Collection, Coroutine, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, NamedTuple, TypeVar

from ledger.commands import (
    HELD_INBOUND,
    HELD_INTENTS,
    HELD_OPT_OUT,
    OPT_OUT_ERROR_CODES,
    REPLY_CONTENT,
    ChangeCampaignPolicy,
    Command,
    DefineCampaign,
    HandleInboundMessage,
    HoldRefusedOptOut,
    InboundOutcome,
    RecordDeliveryOutcome,
    RecordMessageSent,
    RecordOptIn,
    RecordOptOut,
    RecordReconfirmation,
    RecordSubscriberLocation,
    RefusedOutcome,
    ReplyKind,
    ResolveRevocationCandidate,
    brand_meant_refused,
    brands_in_use,
    check_consent_after_opt_outs,
    check_inbound,
    check_required_proof,
    consent_time,
    covered_hold_resolved,
    covers,
    handle_inbound,
    handle_unowned_inbound,
    held_intent,
    held_opt_out,
    held_words,
    hold_keyed,
    name_read,
    provider_opt_out_hold,
    refused_outcome_hold,
    request_fingerprint,
    revoked_after_held,
    to_events,
    unattributed_opt_out,
)
from ledger.digest import Digest, digest_of, micros
from ledger.errors import DomainError, InvalidRequest
from ledger.events import (
    ANY_BRAND,
    MAX_CLOCK_SKEW,
    CampaignDefined,
    CampaignPolicyChanged,
    CandidateResolution,
    ConsentGranted,
    ConsentResumed,
    ConsentRevoked,
    DeliveryOutcomeReported,
    InboundMessageReceived,
    LedgerEvent,
    MessageSent,
    Recorded,
    RevocationCandidateFlagged,
    RevocationCandidateResolved,
    SubscriberEvent,
)
from ledger.phone import forms_stored_before, to_e164
from ledger.policy import earns_exemption, revokes_all
from ledger.ports import (
    AppendTurn,
    ConsentView,
    ConsistencyToken,
    DigestReads,
    EventTooLarge,
    RequestClaim,
    RequestUse,
    Stream,
)
from ledger.state import COUNTED_KINDS, CampaignHistory, Fact, SubscriberState
from ledger.validation import is_name
from ledger.view_keys import (
    LATE_HOLD_PREFIX,
    READ_AS_PREFIX,
    REPLY_TOLD,
    message_key,
    read_as,
    reply_key,
    stated_ahead_key,
)
from services.errors import (
    AlreadyExists,
    FailedPrecondition,
    HeldForReview,
    MessageIdReused,
    NotConsistent,
    OutcomeUnknown,
    PermissionDenied,
    PreconditionHeldForReview,
    Refused,
    ReusedIdHeldForReview,
)
from services.usecases.context import BEHIND, Context
from services.usecases.erased import erased_refusal, erased_since
from services.usecases.requests import (
    RequestTurns,
    Turns,
    WriteResult,
    append,
    as_it_lands,
    brand_of,
    found,
    landing_wait_s,
    recorded_as_spelled,
    recorded_once,
    replay,
    taken_then_appended,
    unwritten,
)
from services.usecases.spellings import earlier_history, earlier_message_uses, state_as_one

R = TypeVar("R")

CAMPAIGN_TURN_WAIT = 10.0
"""Seconds a campaign write that lists sender numbers waits for its turn (another
instance's check and append, ``FreshnessSettings.wait_bound`` and the ledger's append
timeout at most, are what it waits for)."""


@dataclass(frozen=True)
class InboundResult:
    write: WriteResult
    outcome: InboundOutcome
    owed: InboundOutcome | None = None
    """The answer that says a reply is owed, given instead of ``outcome`` only when
    this delivery takes the text's reply (``Writes._reply_once``); None: ``outcome``
    stands as it is."""


def _stamped(events: Sequence[LedgerEvent], recorded_by: str) -> list[LedgerEvent]:
    """``events``, each with ``recorded_by`` set (as they are when it is empty)."""
    return [replace(e, recorded_by=recorded_by) for e in events] if recorded_by else list(events)


def _telling(events: list[LedgerEvent], reply: ReplyKind) -> list[LedgerEvent]:
    """An inbound text's facts, its record (the first) keeping the reply it is owed
    (``InboundMessageReceived.reply``): the view's key of what its first answer told
    (``Writes._reply_once``) is not in the ledger, so a rebuild from it loses that."""
    if not events or not isinstance(events[0], InboundMessageReceived):
        return events
    return [replace(events[0], reply=reply.value), *events[1:]]


class _TakenBefore(NamedTuple):
    """Who took an inbound text's message id before (``Writes._message_claimed``): the
    event ids of that text, and the key's fingerprint and event ids as held."""

    event_ids: list[str]
    fingerprint: str
    held: Sequence[str]


def _listed(history: CampaignHistory, to: str, at: datetime) -> bool:
    """Whether the campaign of ``history`` sent from ``to`` at ``at``, by its rules then."""
    rules = history.as_of(at)
    return rules is not None and to in rules.policy.sender_numbers


def _text_time(occurred_at: datetime | None, now: datetime) -> datetime | None:
    """A text's own time as consent reads it; None when it has none (``handle_inbound``
    refuses it)."""
    if occurred_at is None or occurred_at.tzinfo is None:
        return None
    return consent_time(occurred_at, now)


def _unlisted_then(
    holder: CampaignHistory, to: str, occurred_at: datetime | None, now: datetime
) -> datetime | None:
    """A text's own time (``_text_time``) when ``holder``, the campaign holding ``to``
    now, did not send from it then: the number moved after the text was sent. None
    when it did, or when the text has no time."""
    at = _text_time(occurred_at, now)
    return None if at is None or _listed(holder, to, at) else at


async def brands_held_then(
    view: ConsentView,
    holder: CampaignHistory | None,
    to: str,
    occurred_at: datetime | None,
    now: datetime,
    authorize: Callable[[str], None],
    held: Sequence[str] = (),
) -> list[str]:
    """Where to hold a STOP for the other brands whose campaigns listed ``to`` at
    the text's own time, when ``holder`` did not: the number passed from one brand
    to another after the text was sent, and it answered that brand's messages.
    Under that brand for a caller that may write for it, else under ``ANY_BRAND``,
    which an operator reviews: the caller must not write, nor learn, its facts.
    With no ``holder`` (no campaign sends from ``to`` now), the STOP is kept under
    each of ``held`` already, and any other brand that listed it then is held."""
    if holder is None:
        at = _text_time(occurred_at, now)
        mine = set(held)
    else:
        at = _unlisted_then(holder, to, occurred_at, now)
        current = holder.current()
        mine = set() if current is None else {current.brand}
    if at is None or not mine or ANY_BRAND in mine:
        return []  # no time, or kept for every brand already
    keys: list[str] = []
    for brand in await brands_listing(view, to, at, but=mine):
        key = brand if _allows(authorize, brand) else ANY_BRAND
        if key not in keys:
            keys.append(key)
    return keys


async def brands_listing(
    view: ConsentView, to: str, at: datetime, but: Collection[str] = ()
) -> list[str]:
    """The brands, but ``but`` and ``ANY_BRAND``, whose campaigns sent from ``to`` at
    ``at``."""
    brands: list[str] = []
    for brand in await view.brand_names():
        if brand in but or brand == ANY_BRAND:
            continue
        for name in await view.campaign_names(brand):
            if _listed(await view.campaign_history(brand, name), to, at):
                brands.append(brand)
                break
    return brands


def late_hold_request_id(cmd: HandleInboundMessage, sent_for: str) -> str:
    """The request id of the hold a late STOP places under another brand, or under
    ``*``: the caller's own id there would be taken among that brand's (or every
    caller's) ids, so a write of theirs under it was refused, naming the hold to them,
    and their use of it refused this STOP, naming theirs to the caller. It digests the
    brands the caller sent it for with the request, so a retry holds it once."""
    said = f"{sent_for}\0{cmd.request_id}\0{request_fingerprint(cmd)}"
    return f"{LATE_HOLD_PREFIX}{hashlib.sha256(said.encode()).hexdigest()[:32]}"


def _lists_numbers(event: LedgerEvent) -> bool:
    return isinstance(event, CampaignDefined | CampaignPolicyChanged) and bool(
        event.policy.sender_numbers
    )


RESOLUTION_PREFIX = "candidate-resolution-"
"""Starts the key under which a revocation candidate's resolution is taken among its
brand's request ids (``Writes._claim_resolution``): one resolution per candidate."""

RESOLUTION_LEASE_S = 120.0
"""How long a resolution's turn to append lasts (``Writes._claim_resolution``) unless
it ends it: past twice the longest append a ledger waits for (40 s on Kafka), so a
live attempt keeps the candidate; an attempt killed before its append leaves it to
be taken over by another resolution once this has passed."""

CANDIDATE_RESOLVED = "CANDIDATE_ALREADY_RESOLVED"
"""The ``ErrorInfo`` reason of a resolution refused because another won the candidate."""


def _reply_told(fingerprint: str) -> ReplyKind | None:
    """The reply the first answer of a text told (``REPLY_TOLD``), None if not kept."""
    try:
        return ReplyKind(fingerprint.removeprefix(REPLY_TOLD))
    except ValueError:
        return None


def _reply_said(told: ReplyKind | None) -> str:
    return "no reply owed" if told is ReplyKind.NONE else "the reply owed"


def _anyone(brand: str) -> None:
    """Lets any caller act: a STOP to a number no campaign sends from is kept for the
    caller's own brand, or every brand, whoever sent it (``Writes.handle_inbound``)."""


def _allows(authorize: Callable[[str], None], brand: str) -> bool:
    try:
        authorize(brand)
    except PermissionDenied:
        return False
    return True


def _resolved_before(
    candidate: str, winner: str, won: RevocationCandidateResolved | None
) -> Refused:
    """The refusal of a resolution of ``candidate`` that another resolution (event
    ``winner``, ``won`` once the view holds it) took first: FAILED_PRECONDITION
    naming it, with ``CANDIDATE_RESOLVED`` for a client to branch on."""
    metadata = {"candidate_event_id": candidate, "event_id": winner}
    if won is not None:
        metadata |= {"resolution": won.resolution.value, "resolved_by": won.resolved_by}
        how = f"as {won.resolution.value}" + (f" by {won.resolved_by!r}" if won.resolved_by else "")
        reason = f"was resolved {how} (event {winner}) before this resolution; it stands"
    else:  # claimed, not in the ledger yet: on its way, or its append failed
        # "Read it again" sent a reviewer to a resolution that may never come: say
        # that it is not recorded, that the number stays denied, and what records it.
        metadata["recorded"] = "false"
        reason = (
            f"was taken by another resolution (event {winner}) that is not in the ledger:"
            " its append failed or is under way. The candidate stays pending and the"
            " number denied until that request, retried unchanged (its request_id and"
            " fields), is recorded, or, if it never is, until its attempt's lease runs"
            f" out ({RESOLUTION_LEASE_S:g} s at most) and another resolution may take the"
            " candidate over; this resolution is refused"
        )
    return Refused("candidate_event_id", reason, CANDIDATE_RESOLVED, metadata)


def _resolution_kept(cmd: ResolveRevocationCandidate) -> str:
    """What a reviewer whose resolution's append failed is told: the candidate is
    kept for this very request, so only its retry unchanged can record it."""
    return (
        f"candidate {cmd.candidate_event_id} is kept for this resolution (request_id"
        f" {cmd.request_id!r}) until it is recorded: retry it unchanged, same request_id"
        " and fields; meanwhile the candidate stays pending, the number stays denied,"
        f" and any other resolution of it is refused for {RESOLUTION_LEASE_S:g} s at"
        " most, after which another resolution may take it over"
    )


def _resolution_key(resolution: RevocationCandidateResolved) -> str:
    """The key under which ``resolution`` takes its candidate (``RESOLUTION_PREFIX``)."""
    said = f"{resolution.phone}\0{resolution.candidate_event_id}"
    return f"{RESOLUTION_PREFIX}{hashlib.sha256(said.encode()).hexdigest()[:32]}"


_PERSONAL = (RecordOptIn, RecordOptOut, RecordReconfirmation, RecordSubscriberLocation)
"""The commands whose facts may hold a subject's personal data (a proof, a text, a
detail): refused when dated at or before its erasure (``Writes._check_not_erased``)."""


def _retrieve(write: asyncio.Future[Any]) -> None:
    """Take the outcome of a write whose caller went away, so it is not logged as lost."""
    if not write.cancelled():
        write.exception()


async def opt_outs_placed_since(
    view: ConsentView, brand: str, since: Mapping[str, datetime]
) -> dict[str, list[ConsentRevoked]]:
    """For each number of ``since``, its opt-outs towards ``brand`` (brand-wide and of
    every campaign, under its earlier spellings too) placed at or after its time
    there; a number with none is left out.

    The digests tell, in one read, which numbers have a latest opt-out that recent;
    only those numbers' histories are read, for an opt-out placed before the latest
    may have stated a later time than it."""
    plain = [phone for phone in since if not forms_stored_before(phone)]
    # The numbers whose stored digests cannot be read have their histories read.
    digests, unread = await view.readable_digests(brand, plain) if plain else ({}, frozenset())
    found: dict[str, list[ConsentRevoked]] = {}
    for phone, at in since.items():
        if phone in digests and not _opt_out_placed_since(digests[phone], at):
            continue
        if phone in plain and phone not in digests and phone not in unread:
            continue  # no fact of the number towards the brand
        history = [*await view.history(phone, brand), *await earlier_history(view, phone, brand)]
        revoked = [
            r.event
            for r in history
            if isinstance(r.event, ConsentRevoked) and r.event.occurred_at >= at
        ]
        if revoked:
            found[phone] = revoked
    return found


def _opt_out_placed_since(digest: Digest, at: datetime) -> bool:
    since = micros(at)
    marks = [digest.brand_revocation, *(c.revocation for c in digest.campaigns.values())]
    return any(m is not None and m.at >= since for m in marks)


def opt_outs_window(placed: datetime) -> datetime:
    """How far back from a consent's place an opt-out may lie and still outrank it by
    its own time: one stated later took its place when recorded, at most
    ``MAX_CLOCK_SKEW`` before the time it said (``check_consent_after_opt_outs``)."""
    return placed - MAX_CLOCK_SKEW


async def note_stated_ahead(ctx: Context, events: Sequence[LedgerEvent]) -> None:
    """Note, before ``events`` are appended, each number an opt-out among them stamped
    ahead is of, in the view's shared request ids (written at once; the projection
    notes it again only when the view lost it, ``ledger.view_keys``): a consent of
    that number then waits for the view to apply it (``check_not_before_an_opt_out``),
    and every other consent need not wait."""
    claims = [
        RequestClaim(e.brand, stated_ahead_key(e.phone), e.request_fingerprint, (str(e.event_id),))
        for e in events
        if isinstance(e, ConsentRevoked) and e.stated_at is not None
    ]
    if claims:
        await ctx.view.claim_requests(claims)


async def check_not_before_an_opt_out(
    ctx: Context, consent: SubscriberEvent, stated: datetime, *, unstated_in_doubt: bool = False
) -> None:
    """Refuse ``consent`` (an opt-in or a START, stated at ``stated`` and placed at its
    ``occurred_at``) when an opt-out of its number towards its brand came after it by
    their own times but was placed before it (``check_consent_after_opt_outs``).

    Only a number an opt-out stamped ahead was noted for (``note_stated_ahead``,
    before it was appended) can have one, and with ``unstated_in_doubt`` a consent
    itself stamped ahead doubts every recent opt-out: for those the view is read as
    fresh as a write's checks are, counting an opt-out acknowledged a moment ago.
    Any other consent reads nothing more than the note: waiting for the projection
    on every opt-in failed them UNAVAILABLE under load. A view filled again from the
    ledger gets its notes back only as it applies their opt-outs: until it has
    applied what the ledger held when this process started, a missing note is
    doubted too (an opt-in stated before an opt-out stamped ahead was recorded)."""
    phone = consent.phone
    phones = [phone, *forms_stored_before(phone)]
    doubted = unstated_in_doubt and stated > ctx.clock()
    if (
        not doubted
        and ctx.guard.applied_since_start_for(phones)
        and await ctx.view.request_use(consent.brand, stated_ahead_key(phone)) is None
    ):
        return
    if not await ctx.guard.wait_until_applied_for(phones):
        raise NotConsistent("occurred_at", BEHIND)
    since = {phone: opt_outs_window(consent.occurred_at)}
    found = await opt_outs_placed_since(ctx.view, consent.brand, since)
    check_consent_after_opt_outs(
        found.get(phone, ()),
        stated,
        consent.occurred_at,
        ctx.clock(),
        unstated_in_doubt=unstated_in_doubt,
    )


class Writes:
    def __init__(
        self,
        ctx: Context,
        reads: DigestReads | None = None,
        opt_out_error_codes: frozenset[str] = OPT_OUT_ERROR_CODES,
    ) -> None:
        """``reads`` answers CanSend's digests (the view by default): a brand-wide
        opt-out looks there for a held opt-out it covers. ``opt_out_error_codes``: the
        delivery outcomes' error codes that say the recipient opted out at the
        provider (``CONSENT_OPT_OUT_ERROR_CODES``)."""
        self.ctx = ctx
        self.opt_out_error_codes = opt_out_error_codes
        self.reads: DigestReads = ctx.view if reads is None else reads
        self._campaign_writes = asyncio.Lock()
        self._inbound_turns: Turns[str] = Turns()
        self._requests = RequestTurns()
        self.resolution_lease_s = RESOLUTION_LEASE_S

    async def record(self, cmd: Command, *, recorded_by: str = "") -> WriteResult:
        """``_record``, answering a resolution's event ids with the resolution's first,
        as before its ConsentRevoked was appended ahead of it."""
        # Answered as recorded, it is read as this instance's own write, appended (the
        # guard watches the ledger) or found (``requests.found``).
        phone = self._turn_for(cmd)
        write = self._requests.one_at_a_time(
            getattr(cmd, "brand", ""),
            cmd.request_id,
            lambda: self._record(cmd, recorded_by=recorded_by),
        )
        written = await (write if phone is None else self._in_turn(phone, write))
        if isinstance(cmd, ResolveRevocationCandidate) and len(written.event_ids) > 1:
            ids = written.event_ids
            return replace(written, event_ids=[ids[-1], *ids[:-1]])
        return written

    async def _record(self, cmd: Command, *, recorded_by: str = "") -> WriteResult:
        """Validate, then append. A retry of a request the view has applied records
        nothing new; one it has not applied yet appends the same facts again, under the
        same ids, which the projection stores once.

        ``recorded_by`` (the caller's name) is stamped on every event written."""
        events = _stamped(to_events(cmd, self.ctx.clock()), recorded_by)
        if (spelled := await recorded_as_spelled(self.ctx, cmd, events)) is not None:
            return spelled
        if isinstance(cmd, DefineCampaign | ChangeCampaignPolicy):
            earlier = await replay(self.ctx, events)
            if earlier is not None:  # checked first: a retried definition is no redefinition
                return earlier
            # A caller that goes away (a deadline) does not end the write half-way:
            # it runs on, holding its turn until the append is acknowledged or fails.
            write = asyncio.ensure_future(self._campaign_write(cmd, events))
            write.add_done_callback(_retrieve)
            return await asyncio.shield(write)
        # The checks first, then the request id taken and the events appended in one
        # look at the view (most checks read memory): a write that fails its checks
        # is answered as recorded when it is a retry of one that passed them.
        try:
            if isinstance(cmd, _PERSONAL):
                subject = events[0]
                assert isinstance(subject, SubscriberEvent)
                await self._check_not_erased(subject.brand, [subject.phone], cmd.occurred_at)
            if isinstance(cmd, RecordMessageSent):
                sent = events[0]
                assert isinstance(sent, MessageSent)
                await self.ctx.refuse_relied_past_the_end(
                    [("relied_on.consistency_token", sent.relied_on)]
                )
                events = await self._with_exemption(events)
            if isinstance(cmd, RecordDeliveryOutcome):
                events = await self._with_provider_hold(await self._with_send(events))
            if isinstance(cmd, RecordOptOut) and not (
                cmd.campaign is not None and await self.ctx.campaign_known(cmd.brand, cmd.campaign)
            ):
                await self._check_brand_meant(cmd.brand)
                if cmd.campaign is not None:
                    # Refused, the opt-out would be lost: kept for review, denying meanwhile.
                    kept = _stamped(unattributed_opt_out(cmd, self.ctx.clock()), recorded_by)
                    return await recorded_once(self.ctx, kept)
            events = await self._check(cmd, events)
            await self._claim_resolution(events)
        except (DomainError, FailedPrecondition, NotConsistent):
            earlier = await replay(self.ctx, events)
            if earlier is None:
                raise
            return earlier
        try:
            await note_stated_ahead(self.ctx, events)
            written = await taken_then_appended(self.ctx, events)
        except (ConnectionError, TimeoutError) as exc:
            if isinstance(cmd, ResolveRevocationCandidate):
                raise OutcomeUnknown(_resolution_kept(cmd)) from exc
            raise
        await self._resolution_appended(events)
        revoked = events[0]
        # A "revoked" resolution's events begin with a ConsentRevoked too: only an
        # opt-out's resolves covered holds.
        if isinstance(cmd, RecordOptOut) and isinstance(revoked, ConsentRevoked):
            # A retry of the opt-out too: it resolves what an earlier attempt may not have.
            phone, brand = revoked.phone, revoked.brand
            digests, unread = await self.reads.readable_digests(brand, [phone])
            written = await self._resolve_holds_covered(
                revoked, written, recorded_by, digests.get(phone), phone in unread
            )
        return written

    async def _check_not_erased(self, brand: str, phones: Sequence[str], at: datetime) -> None:
        """Refuse a write dated ``at`` of ``phones`` towards ``brand`` (FAILED_PRECONDITION
        on ``occurred_at``, as an import's record is) when the personal data of one
        was erased then or later: it would store what was erased again. Read from
        CanSend's digests (memory, in the service) and the erasures acknowledged here."""
        erased = await erased_since(
            self.reads,
            self.ctx.view,
            self.ctx.erased_here,
            self.ctx.guard.applied_token(),
            brand,
            phones,
        )
        for when in erased.values():
            if at <= when:
                raise erased_refusal(brand, when, "recorded")

    async def resolve_holds_covered_by(
        self, recorded: Sequence[Recorded], recorded_by: str = ""
    ) -> ConsistencyToken:
        """Resolve the live holds that the opt-outs among ``recorded`` (an import's,
        just appended) cover, as the same opt-out by ``RecordOptOut`` does: imported,
        it left the hold denying for a reviewer, and the number was read
        ``REVOCATION_PENDING_REVIEW`` (and an opt-in after it refused) where the
        write's read ``REVOKED_BRAND_WIDE``. One read of the digests per brand finds
        the few numbers with a hold. Returns a token that covers the resolutions."""
        token = ConsistencyToken({})
        by_brand: dict[str, list[tuple[ConsentRevoked, Recorded]]] = {}
        for r in recorded:
            if isinstance(r.event, ConsentRevoked):
                by_brand.setdefault(r.event.brand, []).append((r.event, r))
        for brand, revocations in by_brand.items():
            # An unreadable number's whole state is read instead (``unread``).
            phones = sorted({e.phone for e, _ in revocations})
            digests, unread = await self.reads.readable_digests(brand, phones)
            for revoked, r in revocations:
                written = WriteResult([str(revoked.event_id)], ConsistencyToken.after([r]))
                done = await self._resolve_holds_covered(
                    revoked,
                    written,
                    recorded_by,
                    digests.get(revoked.phone),
                    revoked.phone in unread,
                )
                token = token.merge(done.token)
        return token

    async def _resolve_holds_covered(
        self,
        revoked: ConsentRevoked,
        written: WriteResult,
        recorded_by: str,
        digest: Digest | None,
        unread: bool = False,
    ) -> WriteResult:
        """``_resolve_covered_holds`` for the opt-out ``revoked`` just recorded
        (``written``), when ``digest`` (its number's, towards its brand) holds a live
        hold, or the number has another spelling one may be kept under, or its stored
        digest could not be read (``unread``: it may hold one)."""
        phone, brand = revoked.phone, revoked.brand
        spelt_before = forms_stored_before(phone)
        if not (spelt_before or unread) and not (
            digest is not None
            and any(p.refused or (p.imported and not p.unattributed) for p in digest.pending)
        ):
            return written
        # A hold an earlier version kept under the number's other spelling denies the
        # number too (CanSend folds it in): this opt-out covers it.
        state = (await state_as_one(self.ctx.view, phone, brand)).state
        every = revoked.campaign is not None and await self._revokes_all(revoked)
        return await self._resolve_covered_holds(
            revoked, state, written, recorded_by, every_campaign=every
        )

    async def _revokes_all(self, revoked: ConsentRevoked) -> bool:
        """Whether ``revoked``, an opt-out of one campaign, revokes every campaign of
        its brand under the campaign's rules at its time (``ledger.policy.revokes_all``)."""
        assert revoked.campaign is not None
        history = await self.ctx.rules.campaign_history(revoked.brand, revoked.campaign)
        rules = history.as_of(revoked.occurred_at)
        return rules is not None and revokes_all(rules, revoked.occurred_at)

    async def _resolve_covered_holds(
        self,
        revoked: ConsentRevoked,
        state: SubscriberState,
        written: WriteResult,
        recorded_by: str,
        *,
        every_campaign: bool = False,
    ) -> WriteResult:
        """Resolve each live opt-out held for review in ``state`` that ``revoked``, an
        opt-out just recorded (``written``), covers (``ledger.commands.covers``):
        typically the client's corrected retry of the refused request, or the gateway's
        of a refused STOP, which otherwise left the hold for a reviewer to close
        (``covered_hold_resolved`` says why that is safe).

        Only holds before the opt-out in ledger order, which every view and a rebuild
        share: a hold recorded after it is a later STOP's, which this one does not
        answer (a retry of the opt-out, reading a newer state, would otherwise resolve
        it). A hold not applied when ``state`` was read stays for a reviewer. Returns
        ``written`` with a token that covers the resolutions written, if any."""
        ends = written.token.offsets
        token = written.token
        for held in state.pending_candidates():
            if not covers(revoked, held.event, every_campaign=every_campaign):
                continue
            where = (Stream.SUBSCRIBERS, held.position.partition)
            # A hold of a partition the opt-out was not written to is one an earlier
            # version kept under the number's other spelling: before it, as the
            # checks fold them (every write goes under the spelling kept now).
            if where in ends and held.position.offset >= ends[where]:
                continue
            resolved = _stamped(
                covered_hold_resolved(revoked, held.event, self.ctx.clock()), recorded_by
            )
            # AlreadyExists: an earlier attempt's, which resolves it; Refused: a
            # reviewer's resolution came first, and stands.
            with contextlib.suppress(AlreadyExists, Refused):
                await self._claim_resolution(resolved)
                done = await recorded_once(self.ctx, resolved)
                await self._resolution_appended(resolved)
                token = token.merge(done.token)  # a read at the answer's token sees it
        return replace(written, token=token)

    async def _claim_resolution(self, events: Sequence[LedgerEvent]) -> None:
        """Take the candidate a resolution (``events``) resolves for it, among every
        instance sharing the view, or refuse it (``Refused``, FAILED_PRECONDITION)
        naming the resolution that took it first.

        Two reviewers resolving one candidate at once both found it pending, and both
        were told OK while only one decision could stand (a "revoked" beside a
        "dismissed" revokes). The candidate is taken in the view's shared request ids
        (``claim_request``, under a key of its own) before the append: the first
        resolution keeps it and its retries pass; any other is refused. A resolution
        whose append failed keeps the candidate for its own retry, the hold denying
        meanwhile.

        Each attempt first takes the turn to append under the same key
        (``take_append_turns``, the resolution's event id holding it) for
        ``resolution_lease_s``, ended once appended. An attempt killed before its
        append kept the candidate for good: no other reviewer could resolve the
        hold. Once its turn has run out and its resolution is not in the ledger,
        another resolution takes the candidate over (``_take_resolution_over``);
        while the turn lasts the attempt may still append, and is never overtaken."""
        resolution = events[-1]  # a "revoked" has its ConsentRevoked first
        if not isinstance(resolution, RevocationCandidateResolved):
            return
        key = _resolution_key(resolution)
        # The resolution's id first: a refusal names the winner by the first.
        ids = [str(resolution.event_id), *(str(e.event_id) for e in events[:-1])]
        (turn,) = await self.ctx.view.take_append_turns(
            [(resolution.brand, key)], str(resolution.event_id), self.resolution_lease_s
        )
        use = await self.ctx.view.claim_request(
            resolution.brand, key, resolution.request_fingerprint, ids
        )
        if set(use.event_ids) & set(ids):  # taken for this resolution, or its retry
            if turn is not AppendTurn.HELD:
                return
            # Another resolution holds the turn, so it is the one recorded: it takes
            # the candidate over from this one, whose turn ran out, or whose claim
            # came first while that one held the turn. Appended now, both would stand.
            # The holder is named as the resolution that won, as below.
            holder = await self.ctx.view.append_turn_holder(resolution.brand, key)
            metadata = {"candidate_event_id": str(resolution.candidate_event_id)}
            if holder is not None:
                metadata["event_id"] = holder
            raise Refused(
                "candidate_event_id",
                "another resolution of this candidate is being recorded, and takes it"
                " over from this one; this resolution is refused",
                CANDIDATE_RESOLVED,
                metadata,
            )
        await self.ctx.guard.wait_until_applied_for([resolution.phone])
        winner = use.event_ids[0]
        found = await self.ctx.view.find_events(list(use.event_ids))
        if turn is AppendTurn.TAKEN and not found:
            # The attempt that took the candidate is gone and its facts never came.
            await self._take_resolution_over(resolution, key, ids, use)
            return
        won = found[winner].event if winner in found else None
        raise _resolved_before(
            str(resolution.candidate_event_id),
            winner,
            won if isinstance(won, RevocationCandidateResolved) else None,
        )

    async def _take_resolution_over(
        self, resolution: RevocationCandidateResolved, key: str, ids: list[str], dead: RequestUse
    ) -> None:
        """Give the candidate that ``dead`` took, by an attempt whose turn ran out and
        whose facts are not in the ledger, to this resolution (``ids``), which holds
        the turn now: no attempt of ``dead`` may append, and no other resolution
        claims while this one holds it. Refused if another took it meanwhile."""
        brand = resolution.brand
        await self.ctx.view.release_claims(brand, (key, dead.fingerprint, dead.event_ids), [])
        use = await self.ctx.view.claim_request(brand, key, resolution.request_fingerprint, ids)
        if not set(use.event_ids) & set(ids):
            raise _resolved_before(str(resolution.candidate_event_id), use.event_ids[0], None)

    async def _resolution_appended(self, events: Sequence[LedgerEvent]) -> None:
        """End the turn ``_claim_resolution`` took for a resolution, now appended: no
        other resolution takes its candidate over, however long it waits."""
        resolution = events[-1]
        if isinstance(resolution, RevocationCandidateResolved):
            await self.ctx.view.end_append_turns(
                [(resolution.brand, _resolution_key(resolution))],
                str(resolution.event_id),
                appended=True,
            )

    async def _brands_meant(self, brand: str, *, catch_up: bool = True) -> list[str]:
        """The brands in use that ``brand``, no brand in use, may be a spelling of
        (``ledger.commands.brands_meant``); ``catch_up`` first counts a campaign the
        ledger acknowledged a moment ago (``NotConsistent`` on ``brand`` when the view
        cannot get there)."""
        in_use = await self.ctx.view.brand_names()
        if brand not in in_use and catch_up:
            await self.ctx.require_caught_up(Stream.CAMPAIGNS, "brand")
            in_use = await self.ctx.view.brand_names()
        # Read afresh each time, the list is filed by how each brand reads once for as
        # long as it stays the same (``brands_in_use``).
        return brands_in_use(tuple(in_use)).meant(brand)

    async def check_brand_meant(self, brand: str, authorize: Callable[[str], None]) -> None:
        """``_check_brand_meant`` for an opt-out under a brand ``authorize`` refuses
        that reads as one in use it allows: a token of acme alone writing "ac-me" was
        refused PERMISSION_DENIED and nothing held, though the person meant acme and
        the caller writes for it. Refused on brand, as for a token of every brand, it
        is held under acme. One that means only another caller's brand, or that the
        caller writes for, is left to the write's own checks."""
        if not is_name(brand) or _allows(authorize, brand):
            return
        meant = await self._brands_meant(brand)
        if any(_allows(authorize, b) for b in meant):
            raise brand_meant_refused(brand, meant)

    async def brand_meant_refusal(
        self, brand: str, authorize: Callable[[str], None]
    ) -> DomainError | None:
        """The refusal on ``brand`` that an opt-out under it meets once its other fields
        pass (``check_brand_meant`` for a caller ``authorize`` refuses, or
        ``_check_brand_meant`` for one it allows), or None: so that an opt-out refused
        for those fields names its brand too, as an import's does."""
        if not is_name(brand):
            return None
        meant = await self._brands_meant(brand, catch_up=False)
        if meant and (_allows(authorize, brand) or any(_allows(authorize, b) for b in meant)):
            return brand_meant_refused(brand, meant)
        return None

    def check_fields(self, cmd: Command) -> None:
        """Refuse every bad field of ``cmd`` at this moment (a time too far ahead
        included, which its translation does not check), as ``record`` would."""
        to_events(cmd, self.ctx.clock())

    async def _check_brand_meant(self, brand: str) -> None:
        """Refuse an opt-out under a brand no campaign was defined for that reads as
        one in use ("acme_co" for "acme-co"). An operator's token acts for every brand,
        so such an opt-out was recorded under its own name and stopped nothing the
        brand meant sends; refused, it is held under that brand
        (``hold_refused_opt_out``)."""
        meant = await self._brands_meant(brand)
        if meant:
            raise brand_meant_refused(brand, meant)

    async def hold_refused_opt_out(
        self,
        hold: HoldRefusedOptOut,
        refused: DomainError | AlreadyExists,
        authorize: Callable[[str], None],
        *,
        recorded_by: str = "",
        brands: Sequence[str] = (),
        held_before_as: str | None = None,
        also: Sequence[str] = (),
    ) -> None:
        """Hold for review a live opt-out ``refused`` for its details, whose number and
        brand can be read, for a brand ``authorize`` lets the caller act for (under
        each brand in use it reads as, for a brand no campaign was defined for; under
        each of ``brands`` instead, when given: the caller's, for one that names no
        brand that can be read nor reads as one in use, or an inbound STOP's to an
        unowned number), and raise
        ``HeldForReview``; return, holding nothing, when there is nothing to hold it
        under (the caller then raises ``refused``).

        A gateway does not retry INVALID_ARGUMENT and a wrong allow costs a lawsuit per
        text: refused and dropped, the STOP was lost while CanSend allowed. Held, the
        number is denied for the brand (``REASON_REVOCATION_PENDING_REVIEW``) until
        someone resolves it, as an import's refused opt-out is. The hold's id digests
        the request (``HoldRefusedOptOut.request_id``): a retry holds it once, and the
        client's request id stays free for its corrected retry. ``held_before_as`` is
        the digest a hold of the request had before its numbers were digested in
        E.164 (``hold.record`` now), when that differs: a hold kept under it is this
        one, not held again. ``also`` names more brands (or ``ANY_BRAND``) to hold it
        under, chosen for the caller and named to it by nothing in the refusal: those
        whose campaigns sent from the number a late STOP reached when it was sent.

        An opt-out refused for its request id, used before for another request (a
        client's bug, which no retry mends), is held too and raises
        ``ReusedIdHeldForReview``; a provider message id reused is no opt-out's."""
        if isinstance(refused, MessageIdReused):
            return
        if isinstance(refused, AlreadyExists):
            field_name, reason = refused.field, refused.reason
            hold = replace(hold, reused_id=True)
        else:
            (field_name, reason), *_ = refused.violations
        # Under a brand no campaign was defined for that reads as one in use ("acme_co",
        # "ac\x00me"), the hold would deny nothing the person meant: it is held under
        # each brand it may mean that the caller writes for. Only a brand that reads as
        # none in use falls back to ``brands``: held under "*" instead, "ac\x00me"
        # denied every brand until an operator dismissed it.
        unread = bool(brands) and hold.via == HELD_OPT_OUT and not is_name(hold.brand)
        meant = []
        if unread or not brands:
            meant = await self._brands_meant(hold.brand, catch_up=False)
        mine = [b for b in meant if _allows(authorize, b)]
        if meant and not mine:
            return  # it means another's brand: not the caller's to deny
        refusal = f"{field_name}: {reason}"
        why = ""
        if mine:
            holds = [replace(hold, brand=b) for b in mine]
            if field_name != "brand" or unread:
                why = f"its brand {hold.brand!r} is no brand in use"
        elif brands:
            holds = [replace(hold, brand=b, unread_brand=unread) for b in brands]
            if unread:
                why = "it names no brand that can be read"
        else:
            holds = [hold]
        try:
            for each in holds:
                authorize(each.brand)
            held = [
                held_opt_out(each, held_words(refusal, why, each.brand), self.ctx.clock())
                for each in holds
            ]
            hidden = [replace(hold, brand=b, campaign=None) for b in also]
            hidden_held = [held_opt_out(each, refusal, self.ctx.clock()) for each in hidden]
        except (DomainError, PermissionDenied):
            return  # no number or brand to hold it under, or not the caller's brand
        # Those the answer does not name first, as an accepted STOP's: a failure after
        # them leaves the caller to retry, which holds each once.
        tokens = [
            (await recorded_once(self.ctx, _stamped(e, recorded_by))).token for e in hidden_held
        ]
        results = []
        for each, events in zip(holds, held, strict=True):
            events = _stamped(events, recorded_by)
            # Held by a version that digested the number as spelled, the hold's id is
            # taken under that fingerprint: this is its retry, not another request.
            earlier = await recorded_as_spelled(self.ctx, hold_keyed(each), events)
            if earlier is None and held_before_as is not None:
                before = replace(each, record=held_before_as)
                words = held_words(refusal, why, each.brand)
                kept = _stamped(held_opt_out(before, words, self.ctx.clock()), recorded_by)
                earlier = await recorded_as_spelled(self.ctx, hold_keyed(before), kept)
                taken = await self.ctx.view.request_use(brand_of(kept[0]), kept[0].request_id)
                if earlier is None and taken is not None:
                    # Held so before: answered as that hold (appended again under its
                    # ids when the view has not applied it yet, which stores it once).
                    earlier = await recorded_once(self.ctx, kept)
            results.append(earlier or await recorded_once(self.ctx, events))
        written = replace(
            results[0],
            event_ids=[i for r in results for i in r.event_ids],
            token=functools.reduce(ConsistencyToken.merge, [*tokens, *(r.token for r in results)]),
        )
        under = [each.brand for each in holds]
        if isinstance(refused, AlreadyExists):
            raise ReusedIdHeldForReview(refused, written.event_ids, written.token.encode(), under)
        raise HeldForReview(refused, written.event_ids, written.token.encode(), under)

    async def hold_refused_inbound(
        self,
        request_id: str,
        from_phone: str,
        to_phone: str,
        body: str,
        record: str,
        refused: DomainError | AlreadyExists,
        authorize: Callable[[str], None],
        *,
        recorded_by: str = "",
        unowned_brands: Sequence[str] = (ANY_BRAND,),
        held_before_as: str | None = None,
        occurred_at: datetime | None = None,
    ) -> None:
        """``hold_refused_opt_out`` for an inbound text refused for a detail (a time far
        ahead or missing, a NUL, a text or message id too long, none; or its request
        id used before for another request) that reads as an
        opt-out or like one (``HELD_INTENTS``): held under the brand of the campaign
        that sends from the number it reached (which ``authorize`` must allow), or,
        with none or that number unreadable, under each of ``unowned_brands``, as a
        STOP to a number no campaign sends from is kept.

        The fields are the request's as sent; ``record`` digests the whole of it, and
        ``occurred_at`` is its time where that is one (the hold is placed there).

        Any refused text to a number of a brand ``authorize`` refuses, a STOP or not,
        is refused for that brand first (``PermissionDenied``), as the same text
        without its faults is: a token of acme was told what to mend in a text to
        globex's number (INVALID_ARGUMENT on ``body``), and so that it was some
        brand's, where a clean one says only that it may not act for it."""
        brand, campaign = unowned_brands[0], None
        owner = None
        try:
            to = to_e164(to_phone, field="to_phone")
        except DomainError:
            to = None
        if to is not None:
            owner = await self.ctx.view.campaign_for_number(to)
            if owner is None:  # perhaps claimed a moment ago: count every claim acknowledged
                await self.ctx.require_caught_up(Stream.CAMPAIGNS, "to_phone")
                owner = await self.ctx.view.campaign_for_number(to)
        if owner is not None:
            authorize(owner[0])
        if held_intent(body) not in HELD_INTENTS:
            return
        brands: Sequence[str] = ()
        also: list[str] = []
        now = self.ctx.clock()
        if owner is not None and to is not None:
            brand, campaign = owner
            # Sent while another brand's campaign texted from the number, and delivered
            # after it moved, the STOP is held for that brand too, as when accepted.
            history = await self.ctx.view.campaign_history(brand, campaign)
            also = await brands_held_then(self.ctx.view, history, to, occurred_at, now, authorize)
        else:
            if to is not None:
                also = await brands_held_then(
                    self.ctx.view, None, to, occurred_at, now, authorize, unowned_brands
                )
            authorize, brands = _anyone, unowned_brands
        hold = HoldRefusedOptOut(
            request_id, from_phone, brand, record, campaign,
            via=HELD_INBOUND, occurred_at=occurred_at,
        )  # fmt: skip
        await self.hold_refused_opt_out(
            hold,
            refused,
            authorize,
            recorded_by=recorded_by,
            brands=brands,
            held_before_as=held_before_as,
            also=also,
        )

    async def _with_exemption(self, events: list[LedgerEvent]) -> list[LedgerEvent]:
        """A send of a kind that may escape the caps (a reply owed to a STOP, HELP or
        START, a conversation reply), with whether it earned that when it was sent
        (``ledger.policy.earns_exemption``), read as fresh as CanSend reads: one that
        did not, or whose facts cannot be read fresh, counts like any other message."""
        sent = events[0]
        if not isinstance(sent, MessageSent) or sent.kind in COUNTED_KINDS:
            return events
        exempt = False
        if await self.ctx.guard.wait_for_phones([sent.phone, *forms_stored_before(sent.phone)]):
            history = await self.ctx.rules.campaign_history(sent.brand, sent.campaign)
            rules = history.as_of(sent.occurred_at)
            if rules is not None:
                # A HELP or a conversation an earlier version kept under the number's
                # other spelling earns its reply too, as CanSend reads it.
                state = (await state_as_one(self.ctx.view, sent.phone, sent.brand)).state
                exempt = earns_exemption(digest_of(state), rules, sent.occurred_at, sent.kind)
        return [replace(sent, exempt=exempt), *events[1:]]

    async def _with_send(self, events: list[LedgerEvent]) -> list[LedgerEvent]:
        """A delivery outcome with the campaign of the send it reports on. A message
        not recorded as sent to the number for the brand is refused, once the view
        has caught up with every write acknowledged for the phone: an outcome that
        no send explains would count towards no campaign's error rate."""
        reported = events[0]
        assert isinstance(reported, DeliveryOutcomeReported)
        view = self.ctx.view
        original = await view.message_use(reported.brand, reported.phone, reported.message_id)
        if original is None:  # perhaps recorded a moment ago
            if not await self.ctx.guard.wait_until_applied_for([reported.phone]):
                raise NotConsistent("message_id", BEHIND)
            original = await view.message_use(reported.brand, reported.phone, reported.message_id)
        if original is None:  # recorded by an earlier version under the other spelling?
            key = (reported.phone, reported.message_id)
            original = (await earlier_message_uses(view, reported.brand, [key])).get(key)
        sent = None if original is None else await view.find_event(original)
        if sent is None or not isinstance(sent.event, MessageSent):
            raise FailedPrecondition(
                "message_id",
                f"no message {reported.message_id!r} was recorded as sent to this number"
                f" for {reported.brand!r} (RecordMessageSent first)",
            )
        # An outcome cannot come before its message went out; a few minutes are
        # allowed for the provider's clock and the sender's to differ.
        if reported.occurred_at < sent.event.occurred_at - MAX_CLOCK_SKEW:
            raise InvalidRequest(
                "occurred_at",
                f"is before message {reported.message_id!r} was sent"
                f" ({sent.event.occurred_at.isoformat()})",
            )
        return [replace(reported, campaign=sent.event.campaign), *events[1:]]

    async def _with_provider_hold(self, events: list[LedgerEvent]) -> list[LedgerEvent]:
        """A delivery outcome with the hold its error code places when it says the
        recipient opted out at the provider (``provider_opt_out_hold``), appended with
        it in one write: the outcome is never recorded without its hold.

        Held whatever other such hold of the number is pending: each report is
        evidence of its own, and a reviewer who dismissed an earlier one (a provider's
        glitch) lifted the denial while this one still said the person opted out.
        This very hold, pending, is kept, so a retry writes the same events."""
        reported = events[0]
        assert isinstance(reported, DeliveryOutcomeReported)
        hold = provider_opt_out_hold(reported, self.opt_out_error_codes, self.ctx.clock())
        if hold is None:
            return events
        held = [c.event for c in await self._provider_holds(reported.phone, reported.brand, hold)]
        # Placed already when an outcome of the message was refused (no send recorded
        # yet): written again as it was, under its id, which the view stores once.
        return [*events, *(held or [hold])]

    async def _provider_holds(
        self, phone: str, brand: str, hold: RevocationCandidateFlagged
    ) -> list[Fact[RevocationCandidateFlagged]]:
        """``hold``, a hold a provider's report places on ``phone`` for ``brand``, as
        the view has it when it is pending there already (placed by an earlier attempt
        of the same message's report), else none."""
        state = (await state_as_one(self.ctx.view, phone, brand)).state
        return [c for c in state.pending_candidates() if c.event.event_id == hold.event_id]

    async def hold_refused_outcome(
        self,
        said: RefusedOutcome,
        refused: DomainError | FailedPrecondition | AlreadyExists,
        authorize: Callable[[str], None],
    ) -> None:
        """Hold for review the number of a delivery outcome ``refused`` for a detail
        whose error code says the recipient opted out at the provider
        (``refused_outcome_hold``), for a brand ``authorize`` lets the caller write
        for, and raise the refusal saying so (``HeldForReview``,
        ``PreconditionHeldForReview`` or ``ReusedIdHeldForReview``); return, holding
        nothing, for any other outcome (the caller then raises ``refused``).

        Twilio answers 21610 when asked to send, so the message never went out and
        the sender often recorded no send: refused, the person's opt-out was lost and
        CanSend kept allowing. While this very hold is pending (a retry) none is
        added: the answer names that one."""
        if isinstance(refused, MessageIdReused):
            return
        if isinstance(refused, AlreadyExists | FailedPrecondition):
            why = f"{refused.field}: {refused.reason}"
        else:
            why = "; ".join(f"{f}: {r}" for f, r in refused.violations)
        hold = refused_outcome_hold(said, self.opt_out_error_codes, why, self.ctx.clock())
        if hold is None:
            return
        try:
            authorize(hold.brand)
        except PermissionDenied:
            return
        await self.ctx.guard.wait_until_applied_for([hold.phone])
        pending = await self._provider_holds(hold.phone, hold.brand, hold)
        if pending:
            kept = pending[0]
            recorded = Recorded(kept.event, kept.position, kept.recorded_at)
            written = found(self.ctx, [str(kept.event.event_id)], [recorded])
        else:
            written = await recorded_once(self.ctx, [hold])
        ids, token, under = written.event_ids, written.token.encode(), [hold.brand]
        if isinstance(refused, AlreadyExists):
            raise ReusedIdHeldForReview(refused, ids, token, under)
        if isinstance(refused, FailedPrecondition):
            raise PreconditionHeldForReview(refused, ids, token, under)
        raise HeldForReview(refused, ids, token, under)

    async def _campaign_write(self, cmd: Command, events: list[LedgerEvent]) -> WriteResult:
        # One campaign write at a time in this process, and each waits for its turn
        # among every instance sharing the view: the second of two claims of one
        # number then checks after the first was appended, and is refused, as is the
        # second of two definitions of one campaign, or a change dated before one
        # recorded a moment ago.
        async with self._campaign_writes, self._campaign_turn(events[0]):
            return await self._checked_append(cmd, events)

    @asynccontextmanager
    async def _campaign_turn(self, event: LedgerEvent) -> AsyncIterator[None]:
        """The view's turn for campaign writes; UNAVAILABLE (retryable) if it does not
        come within ``CAMPAIGN_TURN_WAIT``."""
        async with AsyncExitStack() as stack:
            try:
                await stack.enter_async_context(self.ctx.view.campaign_writes(CAMPAIGN_TURN_WAIT))
            except TimeoutError:
                field = "policy.sender_numbers" if _lists_numbers(event) else "campaign"
                raise NotConsistent(field, "another campaign write is in progress; retry") from None
            yield

    async def _check(self, cmd: Command, events: list[LedgerEvent]) -> list[LedgerEvent]:
        """Refuse ``events`` (``cmd``'s) when a check fails; else ``events``, with a
        "revoked" resolution's revocation placed no earlier than the candidate it
        resolves (``_check_candidate_pending``)."""
        await self._check_campaign_exists(cmd)
        if isinstance(cmd, ChangeCampaignPolicy):
            await self._check_not_before_rules_in_force(cmd, events[0].occurred_at)
        await self._check_required_proof(cmd)
        if isinstance(cmd, RecordOptIn):
            granted = events[0]
            assert isinstance(granted, ConsentGranted)
            await check_not_before_an_opt_out(
                self.ctx, granted, cmd.occurred_at, unstated_in_doubt=True
            )
        await self._check_sender_numbers(events)
        return await self._check_candidate_pending(events)

    async def _checked_append(self, cmd: Command, events: list[LedgerEvent]) -> WriteResult:
        try:
            events = await self._check(cmd, events)
        except FailedPrecondition:
            # The check caught the view up with the ledger, and with it perhaps the
            # first attempt of this very request: then this is a retry after all.
            earlier = await replay(self.ctx, events)
            if earlier is None:
                raise
            return earlier
        return await append(self.ctx, events)

    async def handle_inbound(
        self,
        cmd: HandleInboundMessage,
        authorize: Callable[[str], None] = lambda brand: None,
        *,
        recorded_by: str = "",
        unowned_brands: Sequence[str] = (ANY_BRAND,),
    ) -> InboundResult:
        """``authorize`` is called with the brand the receiving number belongs to,
        before anything is written (a caller may act for some brands only);
        ``recorded_by`` is stamped on every event written.

        A STOP to a number no campaign sends from is recorded for each of
        ``unowned_brands`` (the caller's brands, or ``ANY_BRAND``: every brand) and
        denies until resolved; any other text to such a number is refused, as nothing
        needs it."""
        check_inbound(cmd, self.ctx.clock())  # every bad field at once, before any lookup
        to = to_e164(cmd.to_phone, field="to_phone")
        sender = to_e164(cmd.from_phone, field="from_phone")
        # A redelivery found is read as this instance's own write too, as in ``record``.
        result = await self._in_turn(
            sender, self._handle_inbound(cmd, to, sender, authorize, recorded_by, unowned_brands)
        )
        # Taken here, with the caller still waiting, not in the turn, which runs on
        # after a deadline answered "outcome unknown": that answer told no reply.
        return await self._reply_once(result)

    async def _reply_once(self, result: InboundResult) -> InboundResult:
        """``result``, saying its reply is owed only when this delivery is the first
        answered to take the text's reply, by its event ids: a retry of the request
        that took it says so again, any other delivery does not.

        The text's first recording takes it as it answers. A redelivery under a new
        request id was answered "no reply owed" whenever that recording was in the
        view, though its own answer may have been "outcome unknown" (a deadline passed
        while the broker was slow), which tells a gateway nothing: the confirmation
        of that STOP was then never sent. Such a redelivery now takes the reply, and
        is told it is owed, when no delivery's answer took it before.

        The reply is read from the state the text came to, so the first answer keeps
        what it told, "none" too (``REPLY_TOLD``): a START with nothing to resume,
        retried after an opt-in and a STOP, was told a confirmation was owed, and a
        STOP's retry was told "none" once a hold stood."""
        owed = result.owed
        if owed is None:
            return result
        received = owed.events[0] if owed.events else None
        if not isinstance(received, InboundMessageReceived):
            return replace(result, owed=None)
        key = reply_key(received)
        ids = [str(e.event_id) for e in owed.events]
        # The reply the text was first recorded owing, when kept: the view's key of it
        # is lost when the view is rebuilt from the ledger.
        kept = await self._reply_recorded(result.write) or owed.reply
        use = await self.ctx.view.claim_request(received.brand, key, REPLY_TOLD + kept.value, ids)
        told = _reply_told(use.fingerprint)
        if set(use.event_ids) & set(ids):  # this answer took it, or its request's did
            if told is not None and told is not owed.reply:
                note = (
                    f"message {received.message_id!r} was answered first with"
                    f" {_reply_said(told)}: its retry is told the same"
                )
                first = replace(
                    owed, reply=told, required_content=REPLY_CONTENT[told], notes=[note]
                )
                return InboundResult(result.write, first)
            if owed.reply is ReplyKind.NONE:
                return replace(result, owed=None)
            return InboundResult(result.write, owed)
        if result.outcome.reply is ReplyKind.NONE:
            return replace(result, owed=None)
        note = (
            f"message {received.message_id!r} was answered before with"
            f" {_reply_said(told)}: no reply owed again"
        )
        again = replace(owed, reply=ReplyKind.NONE, required_content=(), notes=[note])
        return InboundResult(result.write, again)

    async def _reply_recorded(self, write: WriteResult) -> ReplyKind | None:
        """The reply the text ``write`` answers with was owed when first recorded
        (``InboundMessageReceived.reply``), when it was recorded before (a retry or a
        redelivery) and kept it; None otherwise. A retry once the view lost what the
        first answer told (dropped and rebuilt from the ledger) was told the reply read
        from the state since: a START with nothing to resume, after an opt-in and a
        STOP, a confirmation it was not owed."""
        if not write.replayed or not write.event_ids:
            return None
        text = await self.ctx.view.find_events(write.event_ids[:1])
        recorded = text.get(write.event_ids[0])
        if recorded is None or not isinstance(recorded.event, InboundMessageReceived):
            return None
        try:
            return ReplyKind(recorded.event.reply) if recorded.event.reply else None
        except ValueError:  # a kind a newer version keeps: read from the state, as before
            return None

    async def _in_turn(self, phone: str, write: Coroutine[Any, Any, R]) -> R:
        """``write`` in ``phone``'s turn (``_inbound_turn``), run to its end even when
        its caller goes away (a deadline answered "outcome unknown"): its records may
        still reach the ledger, so the turn is held until the append is acknowledged
        or fails. Given up with the caller, the turn let the next write of the number
        be checked without them: an opt-in stated before an opt-out stamped ahead took
        its place after it and outranked it."""

        async def in_turn() -> R:
            async with self._inbound_turn(phone):
                return await write

        running = asyncio.ensure_future(in_turn())
        running.add_done_callback(_retrieve)
        return await asyncio.shield(running)

    def _turn_for(self, cmd: Command) -> str | None:
        """The phone whose turn (``_in_turn``) a write takes: an opt-out's, held from
        its checks until its append is acknowledged, and an opt-in's while the turn is
        held or awaited: an opt-in checked while an opt-out stamped ahead beside it was
        being noted and appended (``note_stated_ahead``) missed it
        (``check_not_before_an_opt_out``), then took its place after it and
        outranked it. A resolution of a revocation candidate takes it as an opt-out
        does: a "revoked" one appends an opt-out that may be stamped ahead (the time
        the held words said, ``revoked_after_held``).

        An opt-in that finds no turn reads the clock (``_record`` does first, with no
        wait between) before any opt-out that comes later does, so it is placed
        before that opt-out and loses to it: opt-ins of a number need not wait for
        each other."""
        if isinstance(cmd, RecordOptOut | RecordOptIn | ResolveRevocationCandidate):
            with contextlib.suppress(DomainError):  # else refused by the write's checks
                phone = to_e164(cmd.phone)
                if not isinstance(cmd, RecordOptIn) or phone in self._inbound_turns:
                    return phone
        return None

    def _inbound_turn(self, phone: str) -> AbstractAsyncContextManager[None]:
        """One inbound text of a phone at a time in this process (and one opt-out or
        opt-in: ``_turn_for``): the next reads the state after the one before it was
        appended. (Across instances the facts an inbound text records do not depend
        on the state read, so two at once through two instances record what they
        would one after the other; only the replies owed are read from the state.)"""
        return self._inbound_turns.turn(phone)

    async def _held_then(
        self, holder: CampaignHistory, to: str, occurred_at: datetime | None, now: datetime
    ) -> list[str]:
        """The brand's other campaigns whose rules listed ``to`` at a text's own time,
        when ``holder``, the campaign holding it now, did not: the number moved after
        the text was sent (a gateway delivering late), and a STOP in it answered them."""
        at = _unlisted_then(holder, to, occurred_at, now)
        current = holder.current()
        if at is None or current is None:
            return []
        brand, name = current.brand, current.campaign
        view = self.ctx.view
        return [
            other
            for other in await view.campaign_names(brand)
            if other != name and _listed(await view.campaign_history(brand, other), to, at)
        ]

    async def _kept_for_review(
        self,
        cmd: HandleInboundMessage,
        brand: str,
        recorded_by: str,
        now: datetime,
        *,
        sent_for: str | None = None,
    ) -> InboundResult | None:
        """A STOP (or a reply like one) kept as a hold under ``brand``, once however
        often it is delivered; None for any other text. ``sent_for`` names the brands
        the caller sent it for when ``brand`` is another's (a late STOP's hold): the
        hold then takes a request id of its own (``late_hold_request_id``)."""
        kept = handle_unowned_inbound(cmd, brand, now)
        if kept is not None and sent_for is not None:
            cmd = replace(cmd, request_id=late_hold_request_id(cmd, sent_for))
            kept = handle_unowned_inbound(cmd, brand, now)
        if kept is None:
            return None
        events = _telling(_stamped(kept.events, recorded_by), kept.reply)
        if sent_for is not None and brand != ANY_BRAND:
            # A late STOP dated no later than the sender's erasure towards the other
            # brand would keep its words there again: not held (that brand denies the
            # number anyway until a fresh opt-in, which is dated after the erasure).
            subject = events[0]
            assert isinstance(subject, SubscriberEvent)
            try:
                await self._check_not_erased(brand, [subject.phone], cmd.occurred_at)
            except FailedPrecondition:
                return None
        late = sent_for or ""
        claimed = await self._message_claimed(events, late)
        received = events[0]
        assert isinstance(received, InboundMessageReceived)
        earlier = None if claimed is None else await self._once_there(received.phone, claimed, kept)
        if earlier is not None:
            return earlier
        written = await self._text_recorded(events, late)
        if claimed is not None:  # held again: its redeliveries are answered as this one
            await self._take_message_id_over(events, claimed, late)
        # Its answer keeps its reply, none, as an owned text's does (``_reply_once``):
        # retried once the number was claimed, a held STOP was told a confirmation
        # was owed, and one confirmed, retried once the number was let go, none.
        return InboundResult(written, kept, owed=kept)

    async def _handle_inbound(
        self,
        cmd: HandleInboundMessage,
        to: str,
        sender: str,
        authorize: Callable[[str], None],
        recorded_by: str,
        unowned_brands: Sequence[str] = (ANY_BRAND,),
    ) -> InboundResult:
        # Gateways do not retry FAILED_PRECONDITION: a STOP refused for a view that
        # was merely behind would be lost. Behind answers UNAVAILABLE, which they retry.
        # The reading counts every write acknowledged for the phone before this text
        # came (the ledger's end now, not as last observed): a START sent the moment
        # its STOP was acknowledged is read after that STOP.
        if not await self.ctx.guard.wait_until_applied_for([sender, *forms_stored_before(sender)]):
            raise NotConsistent("from_phone", BEHIND)
        # The phone's partition is there; the campaign rules as of that look too.
        await self.ctx.require_fresh([sender], "to_phone")
        owner = await self.ctx.view.campaign_for_number(to)
        if owner is None:  # perhaps claimed a moment ago: count every claim acknowledged
            await self.ctx.require_caught_up(Stream.CAMPAIGNS, "to_phone")
            owner = await self.ctx.view.campaign_for_number(to)
        if owner is None:
            return await self._unowned_inbound(
                cmd, to, sender, unowned_brands, recorded_by, authorize
            )
        brand, name = owner
        try:
            authorize(brand)
        except PermissionDenied:
            # The number another brand's now: a retry of a text the caller's brand
            # recorded before it moved is answered as first recorded, not refused.
            earlier = await self._recorded_before_it_moved(cmd, sender, unowned_brands)
            if earlier is None:
                raise
            return earlier
        history = await self.ctx.view.campaign_history(brand, name)
        campaign = history.current()
        if campaign is None:  # the lookup and the history come from one projection
            raise FailedPrecondition("to_phone", f"campaign {brand}/{name} has no rules")
        # The facts an earlier version kept under the sender's other spelling are the
        # sender's (CanSend folds them in): a START resumes an opt-in kept there, and
        # this STOP covers a hold kept there.
        state = (await state_as_one(self.ctx.view, sender, brand)).state
        now = self.ctx.clock()
        if _unlisted_then(history, to, cmd.occurred_at, now) is not None:
            # Sent before the campaign claimed the number: the retry of a text held
            # then for the caller, or recorded by another of its brands that sent from
            # the number then, is answered as first recorded, not recorded again.
            then = await self._brands_listing_then(to, cmd.occurred_at, now, but=brand)
            mine = [b for b in then if ANY_BRAND in unowned_brands or b in unowned_brands]
            earlier = await self._recorded_before_it_moved(cmd, sender, [*unowned_brands, *mine])
            if earlier is not None:
                return earlier
        held_then = await self._held_then(history, to, cmd.occurred_at, now)
        outcome = await self._unless_held_everywhere(
            sender, handle_inbound(cmd, campaign, state, now, held_then)
        )
        # A STOP sent while another brand's campaign texted from the number is held
        # for that brand too (its campaign cannot be told from here without naming
        # it to the caller), first: a failure after it leaves the caller to retry.
        holds: list[InboundResult] = []
        if outcome.intent in HELD_INTENTS:
            for key in await brands_held_then(
                self.ctx.view, history, to, cmd.occurred_at, now, authorize
            ):
                hold = await self._kept_for_review(cmd, key, recorded_by, now, sent_for=brand)
                if hold is not None:
                    holds.append(hold)
        events = _telling(_stamped(outcome.events, recorded_by), outcome.reply)
        if state.erased is not None and cmd.occurred_at <= state.erased.at:
            # Dated no later than the erasure of the sender's personal data towards
            # the brand, the text would store its words there again: refused, nothing
            # of it written for the brand (the holds of others stand), unless it is a
            # retry of one recorded before.
            earlier_write = await replay(self.ctx, events)
            if earlier_write is None:
                raise erased_refusal(brand, state.erased.at, "recorded")
            return InboundResult(earlier_write, outcome, owed=outcome)
        claimed = await self._message_claimed(events)
        earlier = None if claimed is None else await self._once_there(sender, claimed, outcome)
        if earlier is not None:
            return earlier
        resumed = next((e for e in events if isinstance(e, ConsentResumed)), None)
        if resumed is not None:
            # A START lifts an opt-out as an opt-in does; the sender's partition was
            # caught up with above, so this reads what the state did.
            try:
                await check_not_before_an_opt_out(self.ctx, resumed, cmd.occurred_at)
            except DomainError:
                earlier_write = await replay(self.ctx, events)  # this request's retry
                if earlier_write is None:
                    await self._release_message_id(events)
                    raise
                return InboundResult(earlier_write, outcome, owed=outcome)
        await note_stated_ahead(self.ctx, events)
        written = await self._text_recorded(events)
        if holds:  # a read after the answer's token finds the holds too
            tokens = (written.token, *(h.write.token for h in holds))
            written = replace(written, token=functools.reduce(ConsistencyToken.merge, tokens))
        revoked = next((e for e in events if isinstance(e, ConsentRevoked)), None)
        if revoked is not None:
            # A STOP that covers a refused STOP's hold resolves it, as a RecordOptOut
            # does: read from the state before the STOP, so in ledger order. The rules
            # at the STOP's time decide, the brand's revoke-all setting among them (the
            # current version's rules, as of when they were defined, may predate it).
            every = revoked.campaign is not None and await self._revokes_all(revoked)
            written = await self._resolve_covered_holds(
                revoked, state, written, recorded_by, every_campaign=every
            )
        if claimed is not None:
            # A copy of a text another delivery took the message id for, recorded too
            # as that one did not reach the view within the bound (``_once_there``).
            # Should it have landed since, it owes the reply: this copy answers as the
            # redelivery it is, as its retry does, so a gateway trusting the answers
            # sends one confirmation. One look: the bound was waited out already.
            # Its facts stand either way.
            earlier = await self._once_applied(
                sender, claimed, outcome, written.token, patience=0.0
            )
            if earlier is not None:
                return earlier
            await self._take_message_id_over(events, claimed)
        return InboundResult(written, outcome, owed=outcome)

    async def _brands_listing_then(
        self, to: str, occurred_at: datetime | None, now: datetime, *, but: str = ""
    ) -> list[str]:
        """The brands but ``but`` whose campaigns sent from ``to`` at a text's own time."""
        at = _text_time(occurred_at, now)
        return [] if at is None else await brands_listing(self.ctx.view, to, at, but=(but,))

    async def _recorded_before_it_moved(
        self, cmd: HandleInboundMessage, sender: str, brands: Sequence[str]
    ) -> InboundResult | None:
        """The first answer to ``cmd``, a text whose number passed to another brand or
        campaign since (its caller may not write for it now, or it was held under
        every brand then), when it was recorded before under one of ``brands``, read
        again from its facts: its event ids, and the reply its first answer told
        (``_reply_once``). None when none did."""
        fingerprint = request_fingerprint(cmd)
        now = self.ctx.clock()
        for brand in brands:
            use = await self.ctx.view.request_use(brand, cmd.request_id)
            if use is None or use.fingerprint != fingerprint:
                continue
            ids = list(use.event_ids)
            known = await self.ctx.view.find_events(ids)
            received = known[ids[0]].event if ids and ids[0] in known else None
            if len(known) < len(set(ids)) or not isinstance(received, InboundMessageReceived):
                continue
            outcome = None
            if received.campaign is not None:  # recorded for the campaign it reached
                history = await self.ctx.view.campaign_history(brand, received.campaign)
                rules = history.as_of(received.occurred_at) or history.current()
                state = (await state_as_one(self.ctx.view, sender, brand)).state
                outcome = None if rules is None else handle_inbound(cmd, rules, state, now)
            if outcome is None or [str(e.event_id) for e in outcome.events] != ids:
                outcome = handle_unowned_inbound(cmd, brand, now)  # held, not owned
            if outcome is None or [str(e.event_id) for e in outcome.events] != ids:
                continue
            return InboundResult(found(self.ctx, ids, [known[i] for i in ids]), outcome, outcome)
        return None

    async def _unless_held_everywhere(self, sender: str, outcome: InboundOutcome) -> InboundOutcome:
        """``outcome`` saying no START confirmation is owed while a STOP whose brand
        was unknown (``ANY_BRAND``) is pending for ``sender``: CanSend denies the
        confirmation then (``ledger.policy``), as for a hold of the brand, which
        ``ledger.commands`` reads from the brand's state. The facts are the same."""
        if outcome.reply is not ReplyKind.OPT_IN_CONFIRMATION:
            return outcome
        phone_wide = (await state_as_one(self.ctx.view, sender, ANY_BRAND)).state
        if not phone_wide.pending_candidates():
            return outcome
        note = "an opt-out held for review stands, which a START does not lift: no reply owed"
        return replace(
            outcome, reply=ReplyKind.NONE, required_content=(), notes=[*outcome.notes, note]
        )

    async def _unowned_inbound(
        self,
        cmd: HandleInboundMessage,
        to: str,
        sender: str,
        brands: Sequence[str],
        recorded_by: str,
        authorize: Callable[[str], None] = lambda brand: None,
    ) -> InboundResult:
        """A STOP (or a reply like one) to a number no campaign sends from, kept under
        each of ``brands``: a caller of some brands can tell only that it was one of
        theirs, and must neither deny nor show it to any other brand. Each brand's is
        recorded as a request of its own, so a retry records what a failure left out.
        Sent while a campaign of another brand listed the number, it is held for that
        brand too (``brands_held_then``), first, and named to the caller by nothing
        but the answer's token."""
        now = self.ctx.clock()
        # The retry of a text a campaign of the caller's recorded before letting the
        # number go is answered as first recorded, not held.
        then = await self._brands_listing_then(to, cmd.occurred_at, now)
        mine = [b for b in then if ANY_BRAND in brands or b in brands]
        earlier = await self._recorded_before_it_moved(cmd, sender, mine) if mine else None
        if earlier is not None:
            return earlier
        hidden = []
        for key in await brands_held_then(
            self.ctx.view, None, to, cmd.occurred_at, now, authorize, brands
        ):
            sent_for = ",".join(brands)
            hold = await self._kept_for_review(cmd, key, recorded_by, now, sent_for=sent_for)
            if hold is not None:
                hidden.append(hold.write.token)
        kept_for: list[str] = []
        refusal: FailedPrecondition | None = None
        for brand in brands:
            if brand == ANY_BRAND:
                kept_for.append(brand)  # no erasure is of every brand
                continue
            try:
                await self._check_not_erased(brand, [sender], cmd.occurred_at)
            except FailedPrecondition as refused:
                # Dated no later than the erasure: its words are not kept under the
                # brand again, unless it is a retry of one kept before, answered so.
                # The caller's other brands keep theirs (their opt-out is not lost);
                # refused when no brand is left.
                held = handle_unowned_inbound(cmd, brand, now)
                events = [] if held is None else _stamped(held.events, recorded_by)
                if not events or await replay(self.ctx, events) is None:
                    refusal = refusal or refused
                    continue
            kept_for.append(brand)
        if refusal is not None and not kept_for:
            raise refusal
        brands = kept_for
        results = []
        for brand in brands:
            kept = await self._kept_for_review(cmd, brand, recorded_by, now)
            if kept is None:
                # A HELP or a conversation its campaign recorded before letting the
                # number go: its retry is answered as first recorded, not refused.
                earlier = await self._recorded_before_it_moved(cmd, sender, brands)
                if earlier is not None:
                    return earlier
                raise FailedPrecondition("to_phone", f"no campaign sends from {to}")
            results.append(kept)
        tokens = [*hidden, *(r.write.token for r in results)]
        if len(results) == 1:
            only = results[0]
            token = functools.reduce(ConsistencyToken.merge, tokens)
            return replace(only, write=replace(only.write, token=token))
        first = results[0]
        write = replace(
            first.write,
            event_ids=[i for r in results for i in r.write.event_ids],
            token=functools.reduce(ConsistencyToken.merge, tokens),
            replayed=all(r.write.replayed for r in results),
        )
        notes = [
            f"no campaign sends from {to}: recorded for review, and sends of brands "
            f"{', '.join(brands)} to {sender} are denied until it is resolved"
        ]
        return InboundResult(write, replace(first.outcome, brand="", notes=notes))

    async def _message_claimed(
        self, events: list[LedgerEvent], sent_for: str = ""
    ) -> _TakenBefore | None:
        """The take of the text that took the provider message id of ``events``
        (an inbound text's facts) for the phone and brand before, with the same words
        to the same number: this text again. None when the id is taken now for this
        text, or was by this request (a retry), or by other words while these read as
        a STOP or like one: a STOP is never lost, so it is recorded as the text it is.
        Other words under a taken message id are refused (``MessageIdReused``).

        Gateways redeliver a text under a new request id: each was recorded again,
        and each answer said a confirmation or help reply was owed again. The
        message id is taken in the view's shared request ids (``claim_request``,
        under a key of its own, ``message_key``'s for ``sent_for``) with a digest of
        the words and the number they reached. A view filled again from the ledger
        took the key with what the text's record holds in the clear (``read_as``): the
        words are sealed there, so a text under the id that reads as that one did, to
        the same number, is taken for it again."""
        received = events[0]
        assert isinstance(received, InboundMessageReceived)
        key, digest = message_key(received, sent_for)
        ids = [str(e.event_id) for e in events]
        use = await self.ctx.view.claim_request(received.brand, key, digest, ids)
        if set(use.event_ids) & set(ids):  # taken for this text, or this request's retry
            return None
        if use.fingerprint not in (digest, read_as(received)):
            if held_intent(received.body) in HELD_INTENTS:
                return None
            raise MessageIdReused(
                "message_id",
                f"{received.message_id!r} was recorded before for another text from this"
                " number; a gateway's new text needs a new message id",
                received.message_id,
                use.event_ids,
            )
        if use.fingerprint.startswith(READ_AS_PREFIX):
            return _TakenBefore(await self._text_facts(use.event_ids), *use)
        return _TakenBefore(list(use.event_ids), *use)

    async def _text_facts(self, held: Sequence[str]) -> list[str]:
        """The event ids of the text whose record alone a message key a view took
        names (``read_as``): those its request id holds, the record among them. Just
        ``held`` while the record is not in the view."""
        known = await self.ctx.view.find_events(held[:1])
        record = known.get(held[0]) if held else None
        if record is None:
            return list(held)
        use = await self.ctx.view.request_use(brand_of(record.event), record.event.request_id)
        return list(use.event_ids) if use is not None and held[0] in use.event_ids else list(held)

    async def _text_recorded(self, events: list[LedgerEvent], sent_for: str = "") -> WriteResult:
        """``recorded_once`` of an inbound text's facts, giving up the message id
        ``_message_claimed`` took for them when none of them can be written: their
        request id is another request's (``AlreadyExists``), or the ledger refused
        them whole as too large, as it would any attempt of theirs (and then their
        request id too, when this attempt took it, as any write refused so does)."""
        try:
            return await recorded_once(self.ctx, events, free_if_too_large=True)
        except AlreadyExists:
            await self._release_message_id(events, sent_for=sent_for)
            raise
        except EventTooLarge as exc:
            ids = [str(e.event_id) for e in events]
            # None stored by an earlier attempt either (it found them, or they would
            # have been too large then too): appended whole, all were refused.
            if unwritten(exc, events) and not await self.ctx.view.find_events(ids):
                await self._release_message_id(events, refused_whole=True, sent_for=sent_for)
            raise

    async def _release_message_id(
        self, events: list[LedgerEvent], *, refused_whole: bool = False, sent_for: str = ""
    ) -> None:
        """Give up the message id ``_message_claimed`` took for ``events``, refused
        before any was written, while it is still theirs and no attempt of their
        request took its request id (one may be appending them; under another
        request's, none can), unless the ledger refused them whole (``refused_whole``:
        so it does every attempt). Kept, it would name facts never written: the
        corrected text waited out its look for them, and each redelivery
        of that text was recorded and confirmed again."""
        received = events[0]
        assert isinstance(received, InboundMessageReceived)
        if not refused_whole:
            use = await self.ctx.view.request_use(received.brand, received.request_id)
            if use is not None and use.fingerprint == received.request_fingerprint:
                return
        key, digest = message_key(received, sent_for)
        ids = [str(e.event_id) for e in events]
        await self.ctx.view.release_claims(received.brand, (key, digest, ids), [])

    async def _take_message_id_over(
        self, events: list[LedgerEvent], claimed: _TakenBefore, sent_for: str = ""
    ) -> None:
        """Give the message id of ``events``, a copy recorded because the text that
        took the id (``claimed``) was not in the view (past ``landing_wait_s``, for
        a copy owing its own reply), to this copy. An instance killed between taking
        the id and its append leaves it naming facts never written, through every
        restart: each later redelivery was recorded again and owed the reply again
        (a second confirmation after a STOP) or held again. Should that first
        recording still land, both stand, as they did."""
        received = events[0]
        assert isinstance(received, InboundMessageReceived)
        key, digest = message_key(received, sent_for)
        ids = [str(e.event_id) for e in events]
        held = (key, claimed.fingerprint, claimed.held)
        await self.ctx.view.release_claims(received.brand, held, [])
        await self.ctx.view.claim_request(received.brand, key, digest, ids)

    async def _redelivered(
        self,
        taken: _TakenBefore,
        outcome: InboundOutcome,
        written: ConsistencyToken | None = None,
    ) -> InboundResult | None:
        """The answer to a text again whose first recording ``taken`` names
        (``_message_claimed``): the first one's facts and no reply owed, nothing
        recorded (or, with ``written``, the token of this copy's own append, which the
        answer's token covers too). None while the first is not in the view (its
        append failed, or another instance's is still in flight): it does not stand
        for this one, which is recorded, a text twice being the lesser harm."""
        claimed = taken.event_ids
        known = await self.ctx.view.find_events(claimed)
        if len(known) != len(claimed):
            return None
        first = found(self.ctx, claimed, [known[i] for i in claimed])
        if written is not None:
            first = replace(first, token=first.token.merge(written))
        received = outcome.events[0]
        assert isinstance(received, InboundMessageReceived)
        note = (
            f"message {received.message_id!r} was recorded before: a redelivery, nothing"
            " recorded again and no reply owed again"
        )
        if written is not None:
            note = (
                f"message {received.message_id!r} was being recorded at once by another"
                " delivery, which owes the reply: recorded again, and no reply owed again"
            )
        again = replace(outcome, events=[], reply=ReplyKind.NONE, required_content=(), notes=[note])
        if written is not None:  # a copy: the recording it copies owes the reply
            return InboundResult(first, again)
        if taken.fingerprint.startswith(READ_AS_PREFIX):
            # The view was filled again from the ledger, which keeps no word of what
            # the first answer told: it is taken to have told the reply, as nearly
            # every first answer does, rather than have a gateway send it twice.
            return InboundResult(first, again)
        # A redelivery: owed here if no answer took the reply (``_reply_once``).
        told = (
            f"message {received.message_id!r} was recorded before: a redelivery, nothing"
            " recorded again; no answer said the reply was owed, so it is owed here"
        )
        return InboundResult(first, again, owed=replace(outcome, notes=[told]))

    async def _once_there(
        self, phone: str, claimed: _TakenBefore, outcome: InboundOutcome
    ) -> InboundResult | None:
        """``_redelivered``, waiting (``_once_applied``) for the text that took the
        message id when the view does not have it yet: delivered at once to two
        instances under two request ids, a text was recorded by both (two opt-outs
        counted for one STOP), its append on its way through the other instance when
        this one looked. Only a copy whose text does not come within
        ``landing_wait_s`` is recorded (its append failed, or its instance was
        killed): an append on its way lands within milliseconds, and waited out to
        the freshness bound (10 s) the copy missed its caller's deadline, as a
        request's retry did (``LANDING_WAIT_S``)."""
        earlier = await self._redelivered(claimed, outcome)
        if earlier is not None:
            return earlier
        return await self._once_applied(phone, claimed, outcome, patience=landing_wait_s(self.ctx))

    async def _once_applied(
        self,
        phone: str,
        claimed: _TakenBefore,
        outcome: InboundOutcome,
        written: ConsistencyToken | None = None,
        *,
        patience: float,
    ) -> InboundResult | None:
        """``_redelivered`` once the view has the text that took the message id,
        looked at again as the ledger grows: that text's append may be acknowledged
        after this copy's. None when the view cannot get there within ``patience``
        seconds (at least one look is made): that
        append failed, or the view is behind, and the copy then owes its own reply,
        the lesser harm."""
        earlier, caught_up = await as_it_lands(
            functools.partial(self.ctx.guard.wait_until_applied_for, [phone]),
            functools.partial(self._redelivered, claimed, outcome, written),
            lambda earlier: earlier is not None,
            patience,
            None,
        )
        return earlier if caught_up else None

    async def _check_campaign_exists(self, cmd: Command) -> None:
        campaign = getattr(cmd, "campaign", None)
        if isinstance(cmd, DefineCampaign):
            if await self.ctx.campaign_known(cmd.brand, cmd.campaign):
                raise FailedPrecondition("campaign", "already defined; use ChangeCampaignPolicy")
            await self._check_name_free(cmd.brand, cmd.campaign)
            return
        if campaign is None:  # brand-wide facts (STOPALL, age) need no campaign
            return
        if not await self.ctx.campaign_known(cmd.brand, campaign):
            raise FailedPrecondition("campaign", f"{cmd.brand}/{campaign} is not defined")

    async def _check_not_before_rules_in_force(
        self, cmd: ChangeCampaignPolicy, at: datetime
    ) -> None:
        """Refuse a change dated before the campaign's latest rules: it would be in
        force only until them, so the rules now would not be the ones the ledger's
        latest word gave (a gate put back, dated back, would not be back). The view is
        caught up with the ledger's campaigns first, so the latest rules are known."""
        await self.ctx.require_caught_up(Stream.CAMPAIGNS, "occurred_at")
        history = await self.ctx.view.campaign_history(cmd.brand, cmd.campaign)
        latest = max((f.at for f in history.versions), default=None)
        if latest is not None and at < latest:
            raise FailedPrecondition(
                "occurred_at",
                f"the campaign's rules from {latest.isoformat()} are in force after it:"
                " a change dated before them would not be in force now; date it at or"
                " after them",
            )

    async def _check_name_free(self, brand: str, campaign: str) -> None:
        """A new campaign may not be named as one of the brand's own is, but for its
        separators: "spring_sale" (or "springsale") beside "spring-sale" was a campaign
        of its own, and an opt-out a client wrote under the one stopped nothing sent
        under the other; nor may a new brand be named so. ``campaign_known`` has caught the view up
        with the ledger's campaigns."""
        read = name_read(campaign)
        campaigns = await self.ctx.view.campaign_names(brand)
        for other in campaigns:
            if other != campaign and name_read(other) == read:
                raise FailedPrecondition(
                    "campaign",
                    f"reads as campaign {brand}/{other}, which is defined: a new"
                    " campaign's name must differ from it by more than '.', '_' or '-'",
                )
        if campaigns:
            return
        # The brand's first campaign: "acme_co" beside "acme-co" would be a brand of
        # its own, and so would every opt-out a client wrote under it.
        for other in await self.ctx.view.brand_names():
            if other != brand and name_read(other) == name_read(brand):
                raise FailedPrecondition(
                    "brand",
                    f"reads as brand {other!r}, which is in use: a new brand's name"
                    " must differ from it by more than '.', '_' or '-'",
                )

    async def _check_required_proof(self, cmd: Command) -> None:
        """An opt-in must carry the proof fields its campaign's current rules require
        (``INVALID_ARGUMENT`` naming the first missing one, nothing written)."""
        if not isinstance(cmd, RecordOptIn):
            return
        rules = (await self.ctx.rules.campaign_history(cmd.brand, cmd.campaign)).current()
        if rules is not None:
            check_required_proof(cmd, rules.policy)

    async def _check_sender_numbers(self, events: Sequence[LedgerEvent]) -> None:
        """A sender number belongs to one campaign at a time: refuse a campaign's
        rules that list a number another campaign holds (a campaign keeps its own).

        The view must have every campaign fact the ledger acknowledged before this
        check, or a number claimed a moment ago would pass for free: like
        ``_campaign_known``, look at the ledger's end now and let the projection reach
        it. Here "free" is the answer that writes, so a view that cannot catch up in
        time refuses rather than guesses.

        No check here could see a claim appended between this look at the ledger's
        end and this append: the ledger's appends are unconditional. So ``record``
        runs this check and the append inside the view's turn for campaign writes
        (``ConsentView.campaign_writes``), which every instance sharing the view
        takes: the second of two claims looks at the ledger's end after the first
        was appended, and waits for the view to apply it.

        Should two claims still both be written (instances on separate views of one
        ledger), the views agree on the holder (``sender_number_holder``): the claim
        the ledger recorded first keeps the number, the later campaign never
        receives a reply to it, and its next policy change is refused until it
        drops the number.
        """
        event = events[0]
        if not isinstance(event, CampaignDefined | CampaignPolicyChanged):
            return
        numbers = event.policy.sender_numbers
        if not numbers:
            return
        await self.ctx.require_caught_up(Stream.CAMPAIGNS, "policy.sender_numbers")
        for i, number in enumerate(numbers):
            holder = await self.ctx.view.campaign_for_number(number)
            if holder is None or holder == (event.brand, event.campaign):
                continue
            field, (brand, campaign) = f"policy.sender_numbers[{i}]", holder
            if brand != event.brand:  # which brand, let alone which campaign, is not said
                raise FailedPrecondition(field, f"{number} is in use by another brand's campaign")
            raise FailedPrecondition(field, f"{number} is in use by campaign {brand}/{campaign}")

    async def _check_candidate_pending(self, events: list[LedgerEvent]) -> list[LedgerEvent]:
        """A resolution must name a candidate still pending for its phone and brand.
        One that names a made-up id, another number's candidate or one already
        resolved would be recorded and answered OK while the real candidate kept
        blocking sends. One stamped before the reply it resolves is refused too, and a
        "revoked" under ANY_BRAND (it would revoke no brand). (A retry
        of a resolution is answered by ``_replay``: at once when the view has applied
        the first attempt, else after this check, having caught the view up, finds
        the candidate resolved.)

        Read as fresh as a write's checks are: a reply flagged a moment ago counts.

        Returns ``events``, a "revoked" one's ConsentRevoked taking effect no earlier
        than the words the candidate holds (``revoked_after_held``)."""
        event = events[-1]  # a "revoked" has its ConsentRevoked first
        if not isinstance(event, RevocationCandidateResolved):
            return events
        # A "revoked" under ANY_BRAND records a ConsentRevoked for no real brand: the
        # hold it lifts was every brand's only denial, so each would allow again.
        if event.brand == ANY_BRAND and event.resolution is CandidateResolution.REVOKED:
            raise FailedPrecondition(
                "resolution",
                "cannot be revoked for a STOP whose brand was unknown: it would opt out of "
                "no brand and let every brand send; record RecordOptOut for each brand it "
                "concerns, then resolve it as dismissed with resolved_by naming those opt-outs",
            )
        await self.ctx.require_caught_up(Stream.SUBSCRIBERS, "candidate_event_id")
        # A hold an earlier version kept under the number's other spelling denies the
        # number (CanSend folds it in), so it is resolved under the number as read.
        state = (await state_as_one(self.ctx.view, event.phone, event.brand)).state
        pending = {c.event_id: c for c in state.pending_candidates()}
        candidate = pending.get(str(event.candidate_event_id))
        resolved = state.resolutions.get(str(event.candidate_event_id))
        if candidate is None and resolved is not None:
            # Resolved since the reviewer read it: say by whom, as a race lost says.
            raise _resolved_before(str(event.candidate_event_id), resolved.event_id, resolved.event)
        if candidate is None:
            raise FailedPrecondition(
                "candidate_event_id",
                f"is not a pending revocation candidate of {event.phone} for {event.brand}",
            )
        # Stamped before its reply, a "revoked" fell before the opt-in it was to end
        # (which then stood), and a dismissal unmade the hold in hindsight.
        if event.occurred_at < candidate.at:
            raise FailedPrecondition(
                "occurred_at",
                f"is before the reply it resolves ({candidate.at.isoformat()}): a decision "
                "comes after what it decides",
            )
        return revoked_after_held(events, candidate.event, self.ctx.clock())
