"""May we send? ``CanSend``, ``CanSendBatch`` and ``CanSendAsOf``.

A check reads the number's digest (through ``reads``: the in-memory replica of the
view) and the campaign's rules, once the view is fresh enough,
and asks the pure policy (``ledger.policy.Check``). It fails closed: a view it cannot
vouch for, a campaign it cannot find, a rule that fails, each answers "not allowed"
with its reason, never an error a caller could mistake for "allowed".
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from ledger.campaigns import Campaign
from ledger.commands import check_name, check_time
from ledger.digest import Digest, digest_of
from ledger.errors import InvalidPhoneNumber, InvalidRequest
from ledger.events import ANY_BRAND, MAX_CLOCK_SKEW, MessageKind, Recorded, SubscriberEvent
from ledger.phone import KEPT_FORMS, SPELT_TWO_WAYS, forms_stored_before, to_e164
from ledger.policy import (
    Check,
    Decision,
    Reason,
    as_one_number,
    decide_as_of,
    deny,
    digest_of_history,
    in_turn,
    note_allowed_late,
    with_sends_pending,
)
from ledger.ports import CampaignReads, ConsistencyToken, DigestReads, UnreadableDigests
from ledger.state import CampaignHistory, SubscriberState
from ledger.validation import Violations, check_not_too_early, is_name
from services.errors import NotConsistent, PermissionDenied
from services.usecases.access import Reader
from services.usecases.context import BEHIND, Context

log = logging.getLogger(__name__)

DEFAULT_FUTURE_HORIZON = timedelta(days=30)
"""How far ahead a CanSend may ask, provisionally (``CONSENT_CANSEND_FUTURE_HORIZON_DAYS``)."""

_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
NO_TOKEN = ConsistencyToken({})
"""The token of an answer read from no view (encoded: empty)."""


@dataclass(frozen=True)
class CheckResult:
    decision: Decision
    token: ConsistencyToken
    provisional: bool = False
    """The check was for a moment ahead of now: facts recorded until then may change it."""
    proof_missing: tuple[str, ...] = ()
    """What the proof of the campaign's grant lacks of the provider's template."""

    @classmethod
    def failed(cls, decision: Decision) -> CheckResult:
        """The answer of a check that could not be made: ``decision``, from no view."""
        return cls(decision, NO_TOKEN)


@dataclass(frozen=True)
class BatchResult:
    decisions: list[Decision]
    token: ConsistencyToken
    provisional: bool = False

    @classmethod
    def failed(cls, phones: Sequence[str], decision: Decision) -> BatchResult:
        """The answer of a batch that could not be made: ``decision`` for each number,
        and for an entry that is no number, why, still said in its place."""
        return cls(_placed([decision] * len(phones), invalid_entries(phones)), NO_TOKEN)


def _behind() -> Decision:
    return deny(Reason.NOT_CONSISTENT, BEHIND)


UNREADABLE = (
    "the number's stored state could not be read; it is answered not allowed until "
    "its record is written again"
)


def _unreadable() -> Decision:
    return deny(Reason.INTERNAL_ERROR, UNREADABLE)


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


def _repeated(numbers: Sequence[str]) -> dict[str, list[int]]:
    """The places of each number a batch names more than once."""
    places: dict[str, list[int]] = {}
    for i, number in enumerate(numbers):
        places.setdefault(number, []).append(i)
    return {number: found for number, found in places.items() if len(found) > 1}


def _entries(places: Sequence[int]) -> list[str]:
    """How an answer names a batch's entries at ``places``: as its errors name them."""
    return [f"phones[{i}]" for i in places]


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


class Checks:
    def __init__(
        self,
        ctx: Context,
        reads: DigestReads | None = None,
        future_horizon: timedelta = DEFAULT_FUTURE_HORIZON,
        campaigns: CampaignReads | None = None,
    ) -> None:
        """``reads`` answers CanSend's digests: a ``DigestReplica`` that the guard
        watches, or by default the view itself; ``future_horizon`` is how far ahead a
        check may ask (provisionally); ``campaigns`` answers the campaigns' rules (a
        ``CampaignHistoryCache`` in front of the view, or by default the view)."""
        self.ctx = ctx
        self.reads: DigestReads = ctx.view if reads is None else reads
        self.future_horizon = future_horizon
        self.campaigns: CampaignReads = ctx.view if campaigns is None else campaigns

    async def can_send(
        self,
        phone: str,
        brand: str,
        campaign: str,
        *,
        at: datetime | None = None,
        kind: MessageKind = MessageKind.REGULAR,
        token: ConsistencyToken | None = None,
        reader: Reader | None = None,
    ) -> CheckResult:
        """``can_send_batch`` for one number, with the number's errors on ``phone``.

        The steps and the answers are the batch's; this path only skips the batch's
        lists and sets, which are most of a single check's own cost."""
        # A number of a mobile-token country may be written without its token (+54 11
        # ...), and is kept under the form with it: such a number is read, not looked up.
        canonical = _E164.fullmatch(phone) is not None and not phone.startswith(SPELT_TWO_WAYS)
        if not (canonical and is_name(brand) and is_name(campaign)):
            check_target(brand, campaign, phone, lambda: self._when(at))
        number = phone if canonical else to_e164(phone, field="phone")
        when, provisional, past = self._when(at)
        if past:
            await self._admit_past(reader, "CanSend", brand, number, campaign, when)
            return await self._as_of(number, brand, campaign, when, kind=kind, token=token)
        earlier = forms_stored_before(number) if number.startswith(KEPT_FORMS) else ()
        fresh = await self.ctx.guard.wait_for_phones([number, *earlier], token)
        read_at = self.ctx.guard.applied_token()
        if not fresh:
            await self._refuse_foreign(token)
            return CheckResult(_behind(), read_at)
        try:
            digest = (await self.reads.digests(brand, [number])).get(number)
            if digest is None and canonical:
                # Raises INVALID_ARGUMENT for a number that is not one. One that only
                # looks canonical ("+4402071234567", a trunk 0 kept) is stored under its
                # normal form: look that up, as the batch does, after waiting for its
                # partition.
                normal = to_e164(phone, field="phone")
                if normal != number:
                    number = normal
                    if not await self.ctx.guard.wait_for_phones([number], None):
                        return CheckResult(_behind(), read_at)
                    digest = (await self.reads.digests(brand, [number])).get(number)
            if earlier and await self.reads.digests(brand, earlier):
                digest = await self._as_one(number, earlier, brand)
        except UnreadableDigests:  # this number's own record: others are answered
            return CheckResult(_unreadable(), read_at)
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
        reader: Reader | None = None,
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
            return await self._batch_as_of(phones, brand, campaign, when, kind, token, reader)
        fresh = await self.ctx.guard.wait_for_phones(phones, token)
        read_at = self.ctx.guard.applied_token()
        if not fresh:
            await self._refuse_foreign(token)
            return BatchResult(_placed([_behind()] * len(phones), invalid_entries(phones)), read_at)
        # PostgreSQL text holds no NUL: an entry with one is no number (answered in its
        # place below), and looked up it would fail the query it shares with others.
        joined = "".join(phones)
        lookup = [p for p in phones if "\x00" not in p] if "\x00" in joined else phones
        # The numbers whose stored digests cannot be read are answered "no", below.
        digests, unread = await self.reads.readable_digests(brand, lookup)
        unreadable = set(unread)
        numbers = list(phones)
        if any(country in joined for country in SPELT_TWO_WAYS):
            # Kept under the form with the mobile token: read, whether found or not.
            unknown = [
                i for i, p in enumerate(phones) if p not in digests or p.startswith(SPELT_TWO_WAYS)
            ]
        else:
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
                if not await self.ctx.guard.wait_for_phones(missing, None):
                    return BatchResult(_placed([_behind()] * len(numbers), invalid), read_at)
                found, unread = await self.reads.readable_digests(brand, missing)
                digests.update(found)
                unreadable |= unread
            two_forms = {
                n: f for n in {numbers[i] for i in unknown} if (f := forms_stored_before(n))
            }
            if two_forms:
                earlier = sorted({f for forms in two_forms.values() for f in forms})
                if not await self.ctx.guard.wait_for_phones(earlier, None):
                    return BatchResult(_placed([_behind()] * len(numbers), invalid), read_at)
                stored, unread = await self.reads.readable_digests(brand, earlier)
                unreadable |= unread
                for n, forms in two_forms.items():
                    if any(f in unreadable for f in forms):
                        unreadable.add(n)  # facts under a spelling it cannot read
                    elif any(f in stored for f in forms):
                        digests[n] = await self._as_one(n, forms, brand)
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
        if unreadable:
            denied = _unreadable()
            decisions = [
                denied if n in unreadable else d for n, d in zip(numbers, decisions, strict=True)
            ]
        decisions = _placed(decisions, invalid)
        if len(set(numbers)) < len(numbers):
            for n, places in _repeated(numbers).items():
                if decisions[places[0]].allowed:  # else every entry is denied alike
                    self._in_turn(check, digests[n], decisions, places)
        return BatchResult(decisions, read_at, provisional)

    def _in_turn(
        self, check: Check, digest: Digest, decisions: list[Decision], places: Sequence[int]
    ) -> None:
        """Answer in ``decisions`` the entries at ``places``, which name the number of
        ``digest`` (its first answered), in turn (``ledger.policy.in_turn``): each
        as if those allowed before it had been sent at the check's moment."""
        first, campaign = decisions[places[0]], check.campaign.campaign

        def decide(pending: int) -> Decision:
            if not pending:
                return first
            sent = with_sends_pending(digest, campaign, check.kind, check.now, pending)
            return self._decide(check, sent)

        for i, decision in zip(places, in_turn(decide, _entries(places)), strict=True):
            decisions[i] = decision

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
        reader: Reader,
    ) -> CheckResult:
        """What CanSend would have answered at ``at``, from what the ledger knew at
        ``known_at`` (by default now): an audit read, admitted and recorded for
        ``reader`` (``services.usecases.access``) before it reads, then ``_as_of``."""
        number = to_e164(phone)
        check_name(brand, "brand")
        check_name(campaign, "campaign")
        now = self.ctx.clock()
        t_world = check_time(at, now, "at")
        t_known = now if known_at is None else check_time(known_at, now, "known_at")
        await self.ctx.access.admit(
            reader,
            "CanSendAsOf",
            brand,
            phone=number,
            campaign=campaign,
            detail={"at": t_world.isoformat(), "known_at": t_known.isoformat()},
        )
        # Without known_at, left unset: the answer in hindsight (``_as_of``).
        known = None if known_at is None else t_known
        return await self._as_of(number, brand, campaign, t_world, known, kind=kind, token=token)

    async def _as_of(
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
        ``known_at`` (by default now): ``_as_of_each`` of one entry."""
        (decision,), read_at = await self._as_of_each(
            phone, brand, campaign, at, known_at, kind=kind, token=token, entries=("phone",)
        )
        return CheckResult(decision, read_at)

    async def _as_of_each(
        self,
        phone: str,
        brand: str,
        campaign: str,
        at: datetime,
        known_at: datetime | None = None,
        *,
        kind: MessageKind,
        token: ConsistencyToken | None,
        entries: Sequence[str],
    ) -> tuple[list[Decision], ConsistencyToken]:
        """What CanSend would have answered at ``at``, from what the ledger knew at
        ``known_at`` (by default now), for each of a request's ``entries`` naming the
        number, in turn (``ledger.policy.in_turn``: each as if those allowed before it
        had been sent at ``at``), and the token read at. Neither moment may be ahead of
        now by more than the clock skew allowed: the ledger cannot know the future, so
        such an answer would only be a guess. The view is read as fresh as
        ``can_send`` reads it, and fails closed the same way (``REASON_NOT_CONSISTENT``
        while it is behind)."""
        number = to_e164(phone)
        check_name(brand, "brand")
        check_name(campaign, "campaign")
        now = self.ctx.clock()
        t_world = check_time(at, now, "at")
        t_known = now if known_at is None else check_time(known_at, now, "known_at")
        earlier = forms_stored_before(number)
        fresh = await self.ctx.guard.wait_for_phones([number, *earlier], token)
        read_at = self.ctx.guard.applied_token()
        if not fresh:
            await self._refuse_foreign(token)
            return [_behind()] * len(entries), read_at
        subscriber = await self._history_as_one(number, earlier, brand)
        history: CampaignHistory = await self.ctx.view.campaign_history(brand, campaign)
        campaign_events = history.facts()
        # Asked without ``known_at``, it is the answer in hindsight: what was recorded
        # past the clock skew after the moment counts against it, never for it.
        allowing_by = None if known_at is not None else t_world + MAX_CLOCK_SKEW
        facts = [*campaign_events, *subscriber]
        skew = t_world + MAX_CLOCK_SKEW

        def decide(pending: int) -> Decision:
            decision = decide_as_of(
                facts, campaign, t_world, t_known, kind, allowing_by, pending=pending
            )
            if known_at is not None:
                # Read as known then, an allow may rest on facts recorded after the
                # moment (an imported history): the answer says which.
                decision = note_allowed_late(
                    decision, facts, campaign, t_world, t_known, kind, skew, pending=pending
                )
            return decision

        return in_turn(decide, entries), read_at

    async def _subscriber_history(self, number: str, brand: str) -> list[Recorded]:
        """The number's subscriber facts towards ``brand``, and its STOPs whose brand was
        unknown, which concern every brand (``ledger.events.ANY_BRAND``)."""
        subscriber = [
            r
            for r in await self.ctx.view.history(number, brand)
            if isinstance(r.event, SubscriberEvent)
        ]
        return subscriber + await self.ctx.view.history(number, ANY_BRAND)

    async def _history_as_one(
        self, number: str, earlier: Sequence[str], brand: str
    ) -> list[Recorded]:
        """``_subscriber_history`` of ``number`` with that of its ``earlier`` spellings
        (``ledger.phone.forms_stored_before``), each fact as if recorded under ``number``
        (``ledger.policy.as_one_number``); the number's own, as the view keeps them, when
        it has none."""
        history = await self._subscriber_history(number, brand)
        if not earlier:
            return history
        for form in earlier:
            history += await self._subscriber_history(form, brand)
        return as_one_number(history, number)

    async def _as_one(self, number: str, earlier: Sequence[str], brand: str) -> Digest:
        """The digest of ``number`` towards ``brand`` with the facts stored under its
        ``earlier`` spellings (``ledger.phone.forms_stored_before``), by a version that
        kept +54 11 ... apart from +54 9 11 ...: folded together from the view's copies,
        as if every one had been recorded under ``number``, so an opt-out, a hold or a
        send counted under either spelling counts for the one person. The ledger keeps
        them where they are (a rebuild folds each spelling apart again, and this read
        puts them together the same way); only a number with facts under an earlier
        spelling is read so."""
        history = await self._history_as_one(number, earlier, brand)
        return digest_of_history(history, number, brand)

    async def _admit_past(
        self,
        reader: Reader | None,
        action: str,
        brand: str,
        number: str,
        campaign: str,
        at: datetime,
    ) -> None:
        """Admit and record a check for a past moment as the audit read it is: it
        answers from the number's history what CanSendAsOf answers, so it needs the
        audit scope and goes on the access log. ``reader`` is None for a caller
        without that scope: a check-only token read past decisions unrecorded, and a
        sender whose clock ran behind got "allowed" for a moment before a STOP."""
        if reader is None:
            raise PermissionDenied(
                "at",
                f"{at.isoformat()} is before now: what was allowed at a past moment is an "
                "audit read, which needs the audit scope for the brand (CanSendAsOf); "
                "leave at empty to ask about a send now",
            )
        await self.ctx.access.admit(
            reader, action, brand, phone=number, campaign=campaign, detail={"at": at.isoformat()}
        )

    def _when(self, at: datetime | None) -> tuple[datetime, bool, bool]:
        """The moment a check is for (now, or ``at``), whether its answer is only
        provisional, and whether it is past. A moment ahead of now, up to
        ``future_horizon``, is answered from the facts known now, which those
        recorded until then may change. A moment before now is answered as
        ``can_send_as_of`` answers it: facts that happened after it must not decide,
        except one within the clock skew allowed, which is a sender's own clock running
        behind the service's: that is a send now, answered from every fact known now."""
        now = self.ctx.clock()
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
        if timedelta(0) <= now - at <= MAX_CLOCK_SKEW:
            return now, False, False
        return at, at > now, at < now

    async def _batch_as_of(
        self,
        phones: Sequence[str],
        brand: str,
        campaign: str,
        at: datetime,
        kind: MessageKind,
        token: ConsistencyToken | None,
        reader: Reader | None,
    ) -> BatchResult:
        """A batch for a moment before now: each number as ``can_send_as_of`` answers
        it, from its history (a query per distinct number, unlike a batch for now),
        each read admitted and recorded for ``reader`` first (``_admit_past``); a
        number named more than once is answered in turn, as a batch for now is."""
        invalid: dict[str, Decision] = {}
        places: dict[str, list[int]] = {}
        for i, phone in enumerate(phones):
            try:
                number = to_e164(phone, field=f"phones[{i}]")
            except InvalidPhoneNumber as exc:  # answered in its place
                number = phone
                invalid[phone] = _invalid_phone(exc)
            places.setdefault(number, []).append(i)
        decisions: list[Decision] = [_behind()] * len(phones)
        read_at = self.ctx.guard.applied_token()
        for number, found in places.items():
            if number in invalid:
                answers = [invalid[number]] * len(found)
            else:
                await self._admit_past(reader, "CanSendBatch", brand, number, campaign, at)
                answers, read_at = await self._as_of_each(
                    number, brand, campaign, at, kind=kind, token=token, entries=_entries(found)
                )
            for i, decision in zip(found, answers, strict=True):
                decisions[i] = decision
        return BatchResult(decisions, read_at)

    async def _refuse_foreign(self, token: ConsistencyToken | None) -> None:
        """When the view did not apply ``token`` within the bound: refuse it on
        ``at_least_as_fresh`` if it is past the ledger's end (no write of this ledger
        gave it, so no retry would be answered), as the audit reads do. A token the
        ledger holds, or an end that cannot be read now, leaves NOT_CONSISTENT."""
        if token is not None:
            with contextlib.suppress(NotConsistent):
                await self.ctx.refuse_past_the_end(token, "at_least_as_fresh")

    async def _rules(
        self, brand: str, campaign: str, when: datetime, read_at: ConsistencyToken
    ) -> Campaign | None:
        """The campaign's rules in force at ``when``; None if it is not defined, and
        ``NotConsistent`` when the view cannot catch up to tell."""
        rules = (await self._history(brand, campaign, read_at)).as_of(when)
        if rules is None and await self.ctx.campaign_known(brand, campaign):
            rules = (await self.ctx.view.campaign_history(brand, campaign)).as_of(when)
        return rules

    async def _history(
        self, brand: str, campaign: str, read_at: ConsistencyToken
    ) -> CampaignHistory:
        self.campaigns.observe(read_at)
        return await self.campaigns.campaign_history(brand, campaign)

    @staticmethod
    def _decide(check: Check, digest: Digest) -> Decision:
        try:
            return check(digest)
        except Exception:  # fail closed: a bug in one rule must never read as "allowed"
            log.exception("decide failed for a phone; answering not allowed")
            return deny(Reason.INTERNAL_ERROR, "the policy could not be evaluated")
