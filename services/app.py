"""The use cases: record facts, answer CanSend, serve auditors.

Entry points (gRPC, CLI) build a command from their input and call one method
here; this module knows the ports, never a technology.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Protocol

from ledger.campaigns import Campaign
from ledger.commands import (
    ChangeCampaignPolicy,
    Command,
    DefineCampaign,
    HandleInboundMessage,
    InboundOutcome,
    RecordMessageSent,
    RecordOptIn,
    RecordOptOut,
    check_inbound,
    check_name,
    check_required_proof,
    check_time,
    handle_inbound,
    handle_unowned_inbound,
    is_name,
    to_events,
    unattributed_opt_out,
)
from ledger.deadlines import revocation_due
from ledger.digest import Digest, digest_of
from ledger.errors import InvalidPhoneNumber, InvalidRequest
from ledger.events import (
    ANY_BRAND,
    CampaignDefined,
    CampaignEvent,
    CampaignPolicyChanged,
    ConsentGranted,
    LedgerEvent,
    MessageKind,
    MessageSent,
    Recorded,
    RevocationCandidateFlagged,
    RevocationCandidateResolved,
    SubscriberEvent,
)
from ledger.opt_out_rate import DEFAULT_WINDOW, OptOutRate
from ledger.phone import to_e164
from ledger.policy import Check, Decision, Reason, decide_as_of, deny, earns_exemption
from ledger.ports import ConsentView, ConsistencyToken, Ledger, RequestUse, Stream
from ledger.state import COUNTED_KINDS, CampaignHistory, Fact, SubscriberState
from ledger.validation import Violations, check_not_too_early
from services import changes
from services.errors import AlreadyExists, FailedPrecondition, NotConsistent
from services.freshness import FreshnessGuard
from services.read_batcher import ReadBatcher

log = logging.getLogger(__name__)
QUEUE_CHUNK = 500
"""Flagged replies read at a time, with their numbers' states, for the review queue."""
CAMPAIGN_TURN_WAIT = 10.0
"""Seconds a campaign write that lists sender numbers waits for its turn (another
instance's check and append, ``FreshnessSettings.wait_bound`` and the ledger's append
timeout at most, are what it waits for)."""

DEFAULT_FUTURE_HORIZON = timedelta(days=30)
"""How far ahead a CanSend may ask, provisionally (``CONSENT_CANSEND_FUTURE_HORIZON_DAYS``)."""

_BEHIND = (
    "the read model could not be shown fresh within CONSENT_FRESHNESS_WAIT_MS (it is"
    " behind the ledger, or the ledger or the database did not answer); try again"
)
Clock = Callable[[], datetime]
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class WriteResult:
    event_ids: list[str]
    token: ConsistencyToken
    replayed: bool = False
    """True when the request id had been written before: nothing new was recorded."""


@dataclass(frozen=True)
class InboundResult:
    write: WriteResult
    outcome: InboundOutcome


@dataclass(frozen=True)
class CheckResult:
    decision: Decision
    token: ConsistencyToken
    provisional: bool = False
    """The check was for a moment ahead of now: facts recorded until then may change it."""
    proof_missing: tuple[str, ...] = ()
    """What the proof of the campaign's grant lacks of the provider's template."""


@dataclass(frozen=True)
class BatchResult:
    decisions: list[Decision]
    token: ConsistencyToken
    provisional: bool = False


@dataclass(frozen=True)
class Queued:
    """A flagged reply awaiting review, at its place in the queue (``Flagged.position``)."""

    position: int
    candidate: Fact[RevocationCandidateFlagged]

    @property
    def due_at(self) -> datetime:
        """When it becomes overdue: ten business days after it was flagged."""
        return revocation_due(self.candidate.at)


@dataclass(frozen=True)
class ConsentSnapshot:
    state: SubscriberState
    grants: dict[str, ConsentGranted] = field(default_factory=dict)
    token: ConsistencyToken = field(default_factory=lambda: ConsistencyToken({}))
    phone_wide: list[Fact[RevocationCandidateFlagged]] = field(default_factory=list)
    """The number's pending STOPs whose brand was unknown (``ANY_BRAND``): they deny
    this brand's sends too."""


@dataclass
class _Turn:
    """A phone's inbound texts' lock, and how many calls hold it or wait for it."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    holders: int = 0


class DigestReads(Protocol):
    async def digests(self, brand: str, phones: Sequence[str]) -> dict[str, Digest]: ...


def _stamped(events: Sequence[LedgerEvent], recorded_by: str) -> list[LedgerEvent]:
    """``events``, each with ``recorded_by`` set (as they are when it is empty)."""
    return [replace(e, recorded_by=recorded_by) for e in events] if recorded_by else list(events)


def _lists_numbers(event: LedgerEvent) -> bool:
    return isinstance(event, CampaignDefined | CampaignPolicyChanged) and bool(
        event.policy.sender_numbers
    )


def _brand_of(event: LedgerEvent) -> str:
    return event.brand if isinstance(event, SubscriberEvent | CampaignEvent) else ""


def _refuse_another_request(event: LedgerEvent, use: RequestUse) -> None:
    """``AlreadyExists`` unless ``use`` (the request id's first use) is ``event``'s own
    request."""
    if use.fingerprint != event.request_fingerprint:
        raise AlreadyExists(
            "request_id",
            f"{event.request_id!r} was used before for another request of"
            f" {_brand_of(event)!r}; a new request needs a new id",
            event.request_id,
            use.event_ids,
        )


def _retrieve(write: asyncio.Future[WriteResult]) -> None:
    """Take the outcome of a write whose caller went away, so it is not logged as lost."""
    if not write.cancelled():
        write.exception()


def _behind() -> Decision:
    return deny(Reason.NOT_CONSISTENT, _BEHIND)


def _invalid_phone(exc: InvalidPhoneNumber) -> Decision:
    """A batch's answer for an entry that is no phone number: not allowed, said in
    its own place, so the rest of the batch is still answered."""
    return deny(Reason.INVALID_PHONE, f"not a phone number: {exc.reason}")


def invalid_entries(phones: Sequence[str]) -> dict[int, Decision]:
    """The answers for a batch's entries that are no phone numbers, by place: an entry
    says why it is refused even when the others cannot be answered."""
    invalid: dict[int, Decision] = {}
    for i, phone in enumerate(phones):
        if _E164.fullmatch(phone) is None:
            try:
                to_e164(phone, field=f"phones[{i}]")
            except InvalidPhoneNumber as exc:
                invalid[i] = _invalid_phone(exc)
    return invalid


def _placed(decisions: list[Decision], invalid: dict[int, Decision]) -> list[Decision]:
    """``decisions`` with the answers for entries that are no numbers in their places."""
    for i, decision in invalid.items():
        decisions[i] = decision
    return decisions


def check_target(
    brand: str,
    campaign: str,
    phone: str | None = None,
    when: Callable[[], object] | None = None,
    found: Violations | None = None,
) -> None:
    """Refuse, in one ``DomainError``, every one of a check's brand, campaign, phone
    (None: a batch's, answered each in its place) and moment (``when`` raises for a
    bad one) that is bad, with those already in ``found``."""
    found = Violations() if found is None else found
    found.check(check_name, brand, "brand")
    found.check(check_name, campaign, "campaign")
    if phone is not None:
        found.check(to_e164, phone, field="phone")
    if when is not None:
        found.check(when)
    found.raise_if_any()


def _undefined(brand: str, campaign: str) -> Decision:
    return deny(Reason.CAMPAIGN_UNKNOWN, f"campaign {brand}/{campaign} is not defined")


class ConsentApp:
    def __init__(
        self,
        ledger: Ledger,
        view: ConsentView,
        guard: FreshnessGuard,
        clock: Clock = utc_now,
        *,
        reads: DigestReads | None = None,
        future_horizon: timedelta = DEFAULT_FUTURE_HORIZON,
    ) -> None:
        """``reads`` answers CanSend's digests: a ``DigestReplica`` that ``guard``
        watches, or by default the view itself, through a ``ReadBatcher``;
        ``future_horizon`` is how far ahead a check may ask (provisionally)."""
        self.future_horizon = future_horizon
        self.ledger = ledger
        self.view = view
        self.guard = guard
        self.clock = clock
        self.reads: DigestReads = ReadBatcher(view) if reads is None else reads
        # Campaign histories, valid while the campaign stream's applied positions (as
        # the guard last observed them) stay the same: any campaign write moves them.
        self._histories: dict[tuple[str, str], CampaignHistory] = {}
        self._histories_at: tuple[tuple[int, int], ...] | None = None
        self._histories_token: ConsistencyToken | None = None
        self._histories_generation = 0
        """Bumped at each reset: a read that began before one must not store its answer."""
        self._campaign_writes = asyncio.Lock()
        self._inbound_turns: dict[str, _Turn] = {}

    # ---- writes -------------------------------------------------------------------------

    async def record(self, cmd: Command, *, recorded_by: str = "") -> WriteResult:
        """Validate, then append. A retry of a request the view has applied records
        nothing new; one it has not applied yet appends the same facts again, under the
        same ids, which the projection stores once.

        ``recorded_by`` (the caller's name) is stamped on every event written."""
        events = _stamped(to_events(cmd, self.clock()), recorded_by)
        replay = await self._replay(events)
        if replay is not None:  # checked first: a retried DefineCampaign is not a redefinition
            return replay
        if isinstance(cmd, RecordMessageSent):
            events = await self._with_exemption(events)
        if (
            isinstance(cmd, RecordOptOut)
            and cmd.campaign is not None
            and not await self._campaign_known(cmd.brand, cmd.campaign)
        ):
            # Refused, the opt-out would be lost: kept for review, denying meanwhile.
            kept = _stamped(unattributed_opt_out(cmd, self.clock()), recorded_by)
            return await self._replay(kept) or await self._append(kept)
        if isinstance(cmd, DefineCampaign | ChangeCampaignPolicy):
            # A caller that goes away (a deadline) does not end the write half-way:
            # it runs on, holding its turn until the append is acknowledged or fails.
            write = asyncio.ensure_future(self._campaign_write(cmd, events))
            write.add_done_callback(_retrieve)
            return await asyncio.shield(write)
        return await self._checked_append(cmd, events)

    async def _with_exemption(self, events: list[LedgerEvent]) -> list[LedgerEvent]:
        """A send of a kind that may escape the caps (a reply owed to a STOP, HELP or
        START, a conversation reply), with whether it earned that when it was sent
        (``ledger.policy.earns_exemption``), read as fresh as CanSend reads: one that
        did not, or whose facts cannot be read fresh, counts like any other message."""
        sent = events[0]
        if not isinstance(sent, MessageSent) or sent.kind in COUNTED_KINDS:
            return events
        exempt = False
        if await self.guard.wait_for_phones([sent.phone]):
            history = await self.view.campaign_history(sent.brand, sent.campaign)
            rules = history.as_of(sent.occurred_at)
            if rules is not None:
                state = (await self.view.subscriber_states(sent.brand, [sent.phone]))[sent.phone]
                exempt = earns_exemption(digest_of(state), rules, sent.occurred_at, sent.kind)
        return [replace(sent, exempt=exempt), *events[1:]]

    async def _campaign_write(self, cmd: Command, events: list[LedgerEvent]) -> WriteResult:
        # One campaign write at a time in this process. One that lists sender numbers
        # also waits for its turn among every instance sharing the view: the second
        # of two claims of one number then checks after the first was appended, and
        # is refused.
        async with self._campaign_writes:
            if not _lists_numbers(events[0]):
                return await self._checked_append(cmd, events)
            async with self._campaign_turn():
                return await self._checked_append(cmd, events)

    @asynccontextmanager
    async def _campaign_turn(self) -> AsyncIterator[None]:
        """The view's turn for campaign writes; UNAVAILABLE (retryable) if it does not
        come within ``CAMPAIGN_TURN_WAIT``."""
        async with AsyncExitStack() as stack:
            try:
                await stack.enter_async_context(self.view.campaign_writes(CAMPAIGN_TURN_WAIT))
            except TimeoutError:
                raise NotConsistent(
                    "policy.sender_numbers", "another campaign write is in progress; retry"
                ) from None
            yield

    async def _checked_append(self, cmd: Command, events: list[LedgerEvent]) -> WriteResult:
        try:
            await self._check_campaign_exists(cmd)
            await self._check_required_proof(cmd)
            await self._check_sender_numbers(events)
            await self._check_candidate_pending(events)
        except FailedPrecondition:
            # The check caught the view up with the ledger, and with it perhaps the
            # first attempt of this very request: then this is a retry after all.
            replay = await self._replay(events)
            if replay is None:
                raise
            return replay
        return await self._append(events)

    async def handle_inbound(
        self,
        cmd: HandleInboundMessage,
        authorize: Callable[[str], None] = lambda brand: None,
        *,
        recorded_by: str = "",
        unowned_brand: str = ANY_BRAND,
    ) -> InboundResult:
        """``authorize`` is called with the brand the receiving number belongs to,
        before anything is written (a caller may act for some brands only);
        ``recorded_by`` is stamped on every event written.

        A STOP to a number no campaign sends from is recorded for ``unowned_brand``
        (the caller's one brand, or ``ANY_BRAND``: every brand) and denies until
        resolved; any other text to such a number is refused, as nothing needs it."""
        check_inbound(cmd, self.clock())  # every bad field at once, before any lookup
        to = to_e164(cmd.to_phone, field="to_phone")
        sender = to_e164(cmd.from_phone, field="from_phone")
        async with self._inbound_turn(sender):
            return await self._handle_inbound(
                cmd, to, sender, authorize, recorded_by, unowned_brand
            )

    @asynccontextmanager
    async def _inbound_turn(self, phone: str) -> AsyncIterator[None]:
        """One inbound text of a phone at a time in this process: the next reads the
        state after the one before it was appended. (Across instances the facts an
        inbound text records do not depend on the state read, so two at once through
        two instances record what they would one after the other; only the replies
        owed are read from the state.)"""
        turn = self._inbound_turns.get(phone)
        if turn is None:
            turn = self._inbound_turns[phone] = _Turn()
        turn.holders += 1
        try:
            async with turn.lock:
                yield
        finally:
            turn.holders -= 1
            if not turn.holders:
                del self._inbound_turns[phone]

    async def _handle_inbound(
        self,
        cmd: HandleInboundMessage,
        to: str,
        sender: str,
        authorize: Callable[[str], None],
        recorded_by: str,
        unowned_brand: str = ANY_BRAND,
    ) -> InboundResult:
        # Gateways do not retry FAILED_PRECONDITION: a STOP refused for a view that
        # was merely behind would be lost. Behind answers UNAVAILABLE, which they retry.
        # The reading counts every write acknowledged for the phone before this text
        # came (the ledger's end now, not as last observed): a START sent the moment
        # its STOP was acknowledged is read after that STOP.
        if not await self.guard.catch_up_phones([sender]):
            raise NotConsistent("from_phone", _BEHIND)
        # The phone's partition is there; the campaign rules as of that look too.
        await self._require_fresh([sender], "to_phone")
        owner = await self.view.campaign_for_number(to)
        if owner is None:  # perhaps claimed a moment ago: count every claim acknowledged
            await self._require_caught_up(Stream.CAMPAIGNS, "to_phone")
            owner = await self.view.campaign_for_number(to)
        if owner is None:
            kept = handle_unowned_inbound(cmd, unowned_brand, self.clock())
            if kept is None:
                raise FailedPrecondition("to_phone", f"no campaign sends from {to}")
            events = _stamped(kept.events, recorded_by)
            written = await self._replay(events) or await self._append(events)
            return InboundResult(written, kept)
        brand, name = owner
        authorize(brand)
        campaign = (await self.view.campaign_history(brand, name)).current()
        if campaign is None:  # the lookup and the history come from one projection
            raise FailedPrecondition("to_phone", f"campaign {brand}/{name} has no rules")
        states = await self.view.subscriber_states(brand, [sender])
        outcome = handle_inbound(cmd, campaign, states[sender], self.clock())
        events = _stamped(outcome.events, recorded_by)
        written = await self._replay(events) or await self._append(events)
        return InboundResult(written, outcome)

    async def _replay(self, events: Sequence[LedgerEvent]) -> WriteResult | None:
        """The earlier result when every event was already recorded (a retried request).

        Request ids are the brand's: the first request that used one holds it
        (``ConsentView.request_use``), and another request under the same id is
        refused with ``AlreadyExists``, naming the first one's events. A miss while
        the projection lags behind an earlier attempt appends the same facts again,
        under the same ids, and the projection stores them once. A ``MessageSent``
        whose provider message id is recorded already is that message, whatever
        else it says: the answer is the first one's event, and nothing is written."""
        first = events[0]
        use = await self.view.request_use(_brand_of(first), first.request_id)
        if use is not None:
            _refuse_another_request(first, use)
            ids = [str(e.event_id) for e in events]
            known = [await self.view.find_event(i) for i in ids]
            if all(k is not None for k in known):
                return WriteResult(ids, ConsistencyToken.after([k for k in known if k]), True)
        if isinstance(first, MessageSent):
            return await self._same_message(first)
        return None

    async def _same_message(self, sent: MessageSent) -> WriteResult | None:
        original = await self.view.message_use(sent.brand, sent.phone, sent.message_id)
        if original is None and await self.guard.catch_up_phones([sent.phone]):
            # Perhaps recorded a moment ago: count every send acknowledged for the
            # phone. (A view that cannot get there in time is no reason to refuse the
            # write: the projection still applies one MessageSent per message id.)
            original = await self.view.message_use(sent.brand, sent.phone, sent.message_id)
        if original is None or original == str(sent.event_id):
            return None
        recorded = await self.view.find_event(original)
        if recorded is None:  # the view reads them in one transaction: only mid-rebuild
            raise NotConsistent("message_id", _BEHIND)
        return WriteResult([original], ConsistencyToken.after([recorded]), True)

    async def _append(self, events: Sequence[LedgerEvent]) -> WriteResult:
        """Append a request ``_replay`` did not find (new, or a retry the view has not
        applied yet: the same ids again, which the projection stores once), once its
        request id is taken for it: of two requests under one id at once, through
        any instances sharing the view, the second is refused and appends nothing."""
        first, ids = events[0], [str(e.event_id) for e in events]
        use = await self.view.claim_request(
            _brand_of(first), first.request_id, first.request_fingerprint, ids
        )
        _refuse_another_request(first, use)
        recorded = await self.ledger.append(events)
        return WriteResult(ids, ConsistencyToken.after(recorded))

    async def _check_campaign_exists(self, cmd: Command) -> None:
        campaign = getattr(cmd, "campaign", None)
        if isinstance(cmd, DefineCampaign):
            if await self._campaign_known(cmd.brand, cmd.campaign):
                raise FailedPrecondition("campaign", "already defined; use ChangeCampaignPolicy")
            return
        if campaign is None:  # brand-wide facts (STOPALL, age) need no campaign
            return
        if not await self._campaign_known(cmd.brand, campaign):
            raise FailedPrecondition("campaign", f"{cmd.brand}/{campaign} is not defined")

    async def _check_required_proof(self, cmd: Command) -> None:
        """An opt-in must carry the proof fields its campaign's current rules require
        (``INVALID_ARGUMENT`` naming the first missing one, nothing written)."""
        if not isinstance(cmd, RecordOptIn):
            return
        rules = (await self.view.campaign_history(cmd.brand, cmd.campaign)).current()
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
        await self._require_caught_up(Stream.CAMPAIGNS, "policy.sender_numbers")
        for i, number in enumerate(numbers):
            holder = await self.view.campaign_for_number(number)
            if holder is None or holder == (event.brand, event.campaign):
                continue
            field, (brand, campaign) = f"policy.sender_numbers[{i}]", holder
            if brand != event.brand:  # which brand, let alone which campaign, is not said
                raise FailedPrecondition(field, f"{number} is in use by another brand's campaign")
            raise FailedPrecondition(field, f"{number} is in use by campaign {brand}/{campaign}")

    async def _check_candidate_pending(self, events: Sequence[LedgerEvent]) -> None:
        """A resolution must name a candidate still pending for its phone and brand.
        One that names a made-up id, another number's candidate or one already
        resolved would be recorded and answered OK while the real candidate kept
        blocking sends. (A retry of a resolution is answered by ``_replay``: at once
        when the view has applied the first attempt, else after this check, having
        caught the view up, finds the candidate resolved.)

        Read as fresh as a write's checks are: a reply flagged a moment ago counts."""
        event = events[0]
        if not isinstance(event, RevocationCandidateResolved):
            return
        await self._require_caught_up(Stream.SUBSCRIBERS, "candidate_event_id")
        state = (await self.view.subscriber_states(event.brand, [event.phone]))[event.phone]
        pending = {c.event_id for c in state.pending_candidates()}
        if str(event.candidate_event_id) not in pending:
            raise FailedPrecondition(
                "candidate_event_id",
                f"is not a pending revocation candidate of {event.phone} for {event.brand}",
            )

    async def _campaign_known(self, brand: str, campaign: str) -> bool:
        """Whether the campaign is defined, counting a definition the ledger
        acknowledged a moment ago; ``NotConsistent`` on ``campaign`` when the view
        cannot catch up to tell, for "not defined" is an answer callers act on (a
        refused write is not retried, a redefinition would be written)."""
        if (await self.view.campaign_history(brand, campaign)).versions:
            return True
        # Perhaps defined a moment ago: look at the ledger's end now, let the
        # projection reach it, and ask again before refusing.
        await self._require_caught_up(Stream.CAMPAIGNS, "campaign")
        return bool((await self.view.campaign_history(brand, campaign)).versions)

    # ---- queries ------------------------------------------------------------------------

    async def can_send(
        self,
        phone: str,
        brand: str,
        campaign: str,
        *,
        at: datetime | None = None,
        kind: MessageKind = MessageKind.REGULAR,
        token: ConsistencyToken | None = None,
    ) -> CheckResult:
        """``can_send_batch`` for one number, with the number's errors on ``phone``.

        The steps and the answers are the batch's; this path only skips the batch's
        lists and sets, which are most of a single check's own cost."""
        canonical = _E164.fullmatch(phone) is not None
        if not (canonical and is_name(brand) and is_name(campaign)):
            check_target(brand, campaign, phone, lambda: self._when(at))
        number = phone if canonical else to_e164(phone, field="phone")
        when, provisional, past = self._when(at)
        if past:
            return await self.can_send_as_of(number, brand, campaign, when, kind=kind, token=token)
        fresh = await self._fresh([number], token)
        read_at = self.guard.applied_token()
        if not fresh:
            return CheckResult(_behind(), read_at)
        digest = (await self.reads.digests(brand, [number])).get(number)
        if digest is None and canonical:
            # Raises INVALID_ARGUMENT for a number that is not one. One that only looks
            # canonical ("+4402071234567", a trunk 0 kept) is stored under its normal
            # form: look that up, as the batch does, after waiting for its partition.
            normal = to_e164(phone, field="phone")
            if normal != number:
                number = normal
                if not await self._fresh([number], None):
                    return CheckResult(_behind(), read_at)
                digest = (await self.reads.digests(brand, [number])).get(number)
        if digest is None:
            digest = digest_of(SubscriberState(phone=number, brand=brand))
        try:
            rules = await self._rules(brand, campaign, when, read_at)
        except NotConsistent:
            return CheckResult(_behind(), read_at)
        if rules is None:
            return CheckResult(_undefined(brand, campaign), read_at, provisional)
        decision = self._decide(Check(rules, when, kind), digest)
        missing = digest.campaign(campaign).proof_missing
        return CheckResult(decision, read_at, provisional, missing)

    async def can_send_batch(
        self,
        phones: Sequence[str],
        brand: str,
        campaign: str,
        *,
        at: datetime | None = None,
        kind: MessageKind = MessageKind.REGULAR,
        token: ConsistencyToken | None = None,
    ) -> BatchResult:
        """Decide for every phone, in order. A phone that is not a valid number raises
        ``REASON_INVALID_PHONE`` in its own place, and the others are answered; a bad
        brand or campaign refuses the whole batch. A query writes nothing either way."""
        if not (is_name(brand) and is_name(campaign)):
            check_target(brand, campaign, None, lambda: self._when(at))
        # The view's keys are numbers validated and normalised when they were written,
        # so each phone is first looked up as written; only those not found are parsed
        # (and a phone that is not a number is refused even if others were found).
        # Waiting for the partitions of phones as written may wait for a partition a
        # non-canonical one does not need; those parsed are waited for below.
        when, provisional, past = self._when(at)
        if past:
            return await self._batch_as_of(phones, brand, campaign, when, kind, token)
        fresh = await self._fresh(phones, token)
        read_at = self.guard.applied_token()
        if not fresh:
            return BatchResult(_placed([_behind()] * len(phones), invalid_entries(phones)), read_at)
        # PostgreSQL text holds no NUL: an entry with one is no number (answered in its
        # place below), and looked up it would fail the query it shares with others.
        lookup = [p for p in phones if "\x00" not in p] if "\x00" in "".join(phones) else phones
        digests = await self.reads.digests(brand, lookup)
        numbers = list(phones)
        unknown = [i for i, p in enumerate(phones) if p not in digests]
        invalid: dict[int, Decision] = {}
        if unknown:
            for i in unknown:
                try:
                    numbers[i] = to_e164(phones[i], field=f"phones[{i}]")
                except InvalidPhoneNumber as exc:  # answered in its place, below
                    invalid[i] = _invalid_phone(exc)
            missing = sorted({numbers[i] for i in unknown} - set(phones) - digests.keys())
            if missing:
                if not await self._fresh(missing, None):
                    return BatchResult(_placed([_behind()] * len(numbers), invalid), read_at)
                digests.update(await self.reads.digests(brand, missing))
            for i in unknown:  # no fact about the number towards this brand
                n = numbers[i]
                if n not in digests:
                    digests[n] = digest_of(SubscriberState(phone=n, brand=brand))
        try:
            rules = await self._rules(brand, campaign, when, read_at)
        except NotConsistent:
            return BatchResult(_placed([_behind()] * len(numbers), invalid), read_at)
        if rules is None:
            undefined = [_undefined(brand, campaign)] * len(numbers)
            return BatchResult(_placed(undefined, invalid), read_at)
        check = Check(rules, when, kind)
        try:
            decisions = [check(digests[n]) for n in numbers]
        except Exception:  # find the numbers it failed for, and answer those alone "no"
            decisions = [self._decide(check, digests[n]) for n in numbers]
        return BatchResult(_placed(decisions, invalid), read_at, provisional)

    def _when(self, at: datetime | None) -> tuple[datetime, bool, bool]:
        """The moment a check is for (now, or ``at``), whether its answer is only
        provisional, and whether it is past. A moment ahead of now, up to
        ``future_horizon``, is answered from the facts known now, which those
        recorded until then may change. A moment before now is answered as
        ``can_send_as_of`` answers it: facts that happened after it must not decide."""
        now = self.clock()
        if at is None:
            return now, False, False
        if at.tzinfo is None:
            raise InvalidRequest("at", "must carry a time zone")
        check_not_too_early(at, "at")
        if at - now > self.future_horizon:
            raise InvalidRequest(
                "at",
                f"is more than {self.future_horizon / timedelta(days=1):g} days ahead "
                "(CONSENT_CANSEND_FUTURE_HORIZON_DAYS); nothing that far ahead is answered",
            )
        return at, at > now, at < now

    async def _batch_as_of(
        self,
        phones: Sequence[str],
        brand: str,
        campaign: str,
        at: datetime,
        kind: MessageKind,
        token: ConsistencyToken | None,
    ) -> BatchResult:
        """A batch for a moment before now: each number as ``can_send_as_of`` answers
        it, from its history (a query per distinct number, unlike a batch for now)."""
        answers: dict[str, Decision] = {}
        numbers: list[str] = []
        for i, phone in enumerate(phones):
            try:
                numbers.append(to_e164(phone, field=f"phones[{i}]"))
            except InvalidPhoneNumber as exc:  # answered in its place
                numbers.append(phone)
                answers[phone] = _invalid_phone(exc)
        read_at = self.guard.applied_token()
        for number in dict.fromkeys(numbers):
            if number in answers:
                continue
            result = await self.can_send_as_of(number, brand, campaign, at, kind=kind, token=token)
            answers[number], read_at = result.decision, result.token
        return BatchResult([answers[n] for n in numbers], read_at)

    async def _rules(
        self, brand: str, campaign: str, when: datetime, read_at: ConsistencyToken
    ) -> Campaign | None:
        """The campaign's rules in force at ``when``; None if it is not defined, and
        ``NotConsistent`` when the view cannot catch up to tell."""
        rules = (await self._history(brand, campaign, read_at)).as_of(when)
        if rules is None and await self._campaign_known(brand, campaign):
            rules = (await self.view.campaign_history(brand, campaign)).as_of(when)
        return rules

    async def _history(
        self, brand: str, campaign: str, read_at: ConsistencyToken
    ) -> CampaignHistory:
        if read_at is not self._histories_token:  # the guard keeps one token per observation
            self._histories_token = read_at
            at = tuple(
                sorted((p, o) for (s, p), o in read_at.offsets.items() if s is Stream.CAMPAIGNS)
            )
            if at != self._histories_at:
                self._histories.clear()
                self._histories_at = at
                self._histories_generation += 1
        history = self._histories.get((brand, campaign))
        if history is None:
            generation = self._histories_generation
            history = await self.view.campaign_history(brand, campaign)
            # Kept only if no newer observation reset the cache meanwhile: a read that
            # began before it may predate the rules those positions include, and would
            # be served, stale, until the next campaign write.
            if history.versions and generation == self._histories_generation:
                self._histories[(brand, campaign)] = history
        return history

    @staticmethod
    def _decide(check: Check, digest: Digest) -> Decision:
        try:
            return check(digest)
        except Exception:  # fail closed: a bug in one rule must never read as "allowed"
            log.exception("decide failed for a phone; answering not allowed")
            return deny(Reason.INTERNAL_ERROR, "the policy could not be evaluated")

    async def _fresh(self, phones: Sequence[str], token: ConsistencyToken | None) -> bool:
        if token is not None and not await self.guard.wait_for_token(token):
            return False
        return await self.guard.wait_for_phones(phones)

    async def _require_caught_up(self, stream: Stream, field: str) -> None:
        """Let the view reach the ledger's end as it is now (``FreshnessGuard.catch_up``),
        before an answer that must count every fact acknowledged so far ("not defined",
        "no campaign sends from", "not pending"); ``NotConsistent`` on ``field``
        (UNAVAILABLE, retryable) when it cannot within the bound."""
        if not await self.guard.catch_up((stream,)):
            raise NotConsistent(field, _BEHIND)

    async def _require_fresh(self, phones: list[str] | None, field: str) -> None:
        """Wait, as CanSend does, for the phones' partitions (None: the whole view) to
        reach the ledger's end as last observed; an audit read answers an error, not a
        decision, so one the view cannot serve fresh within the bound raises
        ``NotConsistent`` (UNAVAILABLE, retryable) rather than answer from stale rows."""
        if phones is None:
            fresh = await self.guard.wait_for_all()
        else:
            fresh = await self.guard.wait_for_phones(phones)
        if not fresh:
            raise NotConsistent(field, _BEHIND)

    async def get_consent(self, phone: str, brand: str, campaign: str) -> ConsentSnapshot:
        """The number's state towards the brand, asked about ``campaign``: a campaign
        never defined is refused, so a misspelt name cannot pass for "never granted"."""
        number = to_e164(phone)
        check_name(brand, "brand")
        check_name(campaign, "campaign")
        await self._require_fresh([number], "phone")
        if not await self._campaign_known(brand, campaign):
            raise FailedPrecondition("campaign", f"{brand}/{campaign} is not defined")
        state = (await self.view.subscriber_states(brand, [number]))[number]
        grants = {name: c.grant.event for name, c in state.campaigns.items() if c.grant}
        wide = (await self.view.subscriber_states(ANY_BRAND, [number]))[number]
        return ConsentSnapshot(state, grants, self.guard.applied_token(), wide.pending_candidates())

    async def history(self, phone: str, brand: str | None) -> list[Recorded]:
        number = to_e164(phone)
        if brand is not None:
            check_name(brand, "brand")
        await self._require_fresh([number], "phone")
        return await self.view.history(number, brand)

    async def revocation_candidates(
        self,
        brand: str,
        after: int = 0,
        limit: int | None = None,
        *,
        overdue_only: bool = False,
    ) -> list[Queued]:
        """The brand's replies flagged as possible opt-outs that nobody has resolved,
        each with its place in the review queue, above ``after``, at most ``limit``.
        Each blocks sending to its number until someone resolves it
        (``ResolveRevocationCandidate``).

        The queue is in the order the view applied the replies (``Flagged``), not the
        order they happened or were recorded in: a reply from a partition applied late
        joins the end, so a reviewer paging from ``after`` skips none. Pending is what
        the fold says, as ``GetConsent`` reports it for one number. The view leaves
        out the replies it knows are resolved, and the rest are read in chunks until
        ``limit`` are found: the cost grows with the candidates asked for.

        ``overdue_only`` keeps those whose ten business days have passed; ``brand``
        ``ANY_BRAND`` lists the STOPs whose brand is unknown."""
        if brand != ANY_BRAND:
            check_name(brand, "brand")
        now = self.clock()
        await self._require_fresh(None, "brand")
        pending: list[Queued] = []
        while limit is None or len(pending) < limit:
            # The view lists few resolved replies (only those it cannot tell about),
            # so asking for as many as are still wanted is mostly enough.
            size = QUEUE_CHUNK if limit is None else min(QUEUE_CHUNK, limit - len(pending))
            flagged = await self.view.flagged(brand, after, size)
            places = {f.event_id: f.position for f in flagged}
            states = await self.view.subscriber_states(brand, sorted({f.phone for f in flagged}))
            # A reply applied after ``flagged`` was read has no place yet; the next
            # read finds it above every place given here.
            found = [
                Queued(places[c.event_id], c)
                for state in states.values()
                for c in state.pending_candidates()
                if c.event_id in places and not (overdue_only and revocation_due(c.at) > now)
            ]
            pending += sorted(found, key=lambda q: q.position)
            if len(flagged) < size:
                break
            after = flagged[-1].position
        return pending[:limit]

    async def overdue_candidates(self) -> int:
        """How many flagged replies of every brand are past their ten business days
        unresolved (a reply flagged before migration 0008 may count until a rebuild
        marks it resolved)."""
        now = self.clock()
        return sum(1 for t in await self.view.open_flagged_times() if revocation_due(t) <= now)

    async def opt_out_rate(
        self,
        brand: str,
        campaign: str | None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> OptOutRate:
        """The brand's (or the campaign's) opt-out rate over ``[start, end)``: by
        default the 30 days up to now. A campaign never defined is refused, so a
        misspelt name cannot pass for a clean record."""
        check_name(brand, "brand")
        if campaign is not None:
            check_name(campaign, "campaign")
        now = self.clock()
        end = now if end is None else check_time(end, now, "end_time")
        if start is None:
            if end < datetime.min.replace(tzinfo=UTC) + DEFAULT_WINDOW:
                raise InvalidRequest("end_time", "is too early for the default window")
            start = end - DEFAULT_WINDOW
        elif start.tzinfo is None:
            raise InvalidRequest("start_time", "must carry a time zone")
        if start >= end:
            raise InvalidRequest("start_time", "must be before end_time")
        await self._require_fresh(None, "brand")
        if campaign is not None and not await self._campaign_known(brand, campaign):
            raise FailedPrecondition("campaign", f"{brand}/{campaign} is not defined")
        counts = await self.view.sending_counts(brand, campaign, start, end)
        return OptOutRate(brand, campaign, start, end, counts)

    async def can_send_as_of(
        self,
        phone: str,
        brand: str,
        campaign: str,
        at: datetime,
        known_at: datetime | None = None,
        *,
        kind: MessageKind = MessageKind.REGULAR,
        token: ConsistencyToken | None = None,
    ) -> CheckResult:
        """What CanSend would have answered at ``at``, from what the ledger knew at
        ``known_at`` (by default now). Neither may be ahead of now by more than the
        clock skew allowed: the ledger cannot know the future, so such an answer would
        only be a guess. The view is read as fresh as ``can_send`` reads it, and fails
        closed the same way (``REASON_NOT_CONSISTENT`` while it is behind)."""
        number = to_e164(phone)
        check_name(brand, "brand")
        check_name(campaign, "campaign")
        now = self.clock()
        t_world = check_time(at, now, "at")
        t_known = now if known_at is None else check_time(known_at, now, "known_at")
        fresh = await self._fresh([number], token)
        read_at = self.guard.applied_token()
        if not fresh:
            return CheckResult(_behind(), read_at)
        subscriber = [
            r
            for r in await self.view.history(number, brand)
            if isinstance(r.event, SubscriberEvent)
        ]
        # STOPs whose brand was unknown concern every brand (``ledger.events.ANY_BRAND``).
        subscriber += await self.view.history(number, ANY_BRAND)
        history: CampaignHistory = await self.view.campaign_history(brand, campaign)
        campaign_events = history.facts()
        decision = decide_as_of([*campaign_events, *subscriber], campaign, t_world, t_known, kind)
        return CheckResult(decision, read_at)

    async def watch_changes(
        self,
        brand: str,
        after: ConsistencyToken | None,
        *,
        from_now: bool = False,
        campaign: str | None = None,
        messages: bool = False,
        stopping: asyncio.Event | None = None,
    ) -> AsyncGenerator[tuple[Recorded, ConsistencyToken], None]:
        """``services.changes.watch`` of ``brand``: after ``after``, after what the view
        has applied now (``from_now``), or else from its first change; until
        ``stopping`` is set."""
        check_name(brand, "brand")
        if campaign is not None:
            check_name(campaign, "campaign")
        if from_now:
            start = await self.view.positions(Stream.SUBSCRIBERS)
        else:
            start = changes.resume_after(after) if after is not None else {}
        types = changes.CONSENT_CHANGES | changes.MESSAGES if messages else changes.CONSENT_CHANGES
        async for change in changes.watch(
            self.view, self.guard, brand, start, campaign=campaign, types=types, stopping=stopping
        ):
            yield change
