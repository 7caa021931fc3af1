"""What every use case reads through: the ledger, the view, the freshness guard and
the clock, with the waits that decide whether the view may answer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from typing import TypeGuard

from ledger.errors import InvalidRequest
from ledger.events import Recorded, ReliedAnswer, SubscriberEvent
from ledger.personal_data import ErasedUpTo, erased, erased_before, personal_data
from ledger.ports import CampaignReads, ConsentView, ConsistencyToken, EventLog, Stream
from services.errors import NotConsistent
from services.freshness import FreshnessGuard
from services.personal_data import PersonalData
from services.usecases.access import Access
from services.usecases.erased import ErasedHere

_LOOK_AT_THE_END = 5.0
"""Seconds to read the ledger's end offsets, to tell a token no write gave from one
the view has not applied yet."""

Clock = Callable[[], datetime]

BEHIND = (
    "the read model could not be shown fresh within CONSENT_FRESHNESS_WAIT_MS (it is"
    " behind the ledger, or the ledger or the database did not answer); try again"
)


utc_now: Clock = partial(datetime.now, UTC)
"""The service's clock: now, in UTC."""


@dataclass(frozen=True)
class Context:
    ledger: EventLog
    view: ConsentView
    guard: FreshnessGuard
    clock: Clock = utc_now
    access: Access = field(kw_only=True)
    """Where every audit read is admitted and recorded (``services.usecases.access``)."""
    personal: PersonalData | None = field(default=None, kw_only=True)
    """Opens the personal data an audit read shows (None: events are shown as stored)."""
    campaigns: CampaignReads | None = field(default=None, kw_only=True)
    """Where a write reads the campaigns' rules it checks against: CanSend's (the
    view's rules kept in memory until the campaign stream moves); None: the view."""
    erased_here: ErasedHere = field(default_factory=ErasedHere, kw_only=True)
    """The erasures this instance acknowledged that CanSend's digests may not show yet
    (``services.usecases.erased``)."""

    @property
    def rules(self) -> CampaignReads:
        return self.view if self.campaigns is None else self.campaigns

    async def opened(self, history: Sequence[Recorded]) -> list[Recorded]:
        """``history`` as a reader may see it: personal data opened where its key is,
        ``ERASED`` where it is gone (``PersonalData.open``)."""
        if self.personal is None:
            return list(history)
        shown = await self.personal.open(history)
        # A reader of single facts (GetConsent's, the review queue's, a watch's) has
        # no erasure among them, so it is looked up in the subject's state: facts
        # written in the clear before sealing existed have no key to destroy, and one
        # another instance took before its copy had the erasure is sealed under the
        # subject's new key (``ErasedUpTo.covers``).
        cut = erased_before(history)
        subjects: dict[str, set[str]] = {}
        for r in history:
            if _personal(e := r.event) and (e.phone, e.brand) not in cut:
                subjects.setdefault(e.brand, set()).add(e.phone)
        erasures: dict[tuple[str, str], ErasedUpTo] = {}
        for brand, phones in subjects.items():
            for phone, state in (await self.view.subscriber_states(brand, sorted(phones))).items():
                if (fact := state.erased) is not None:
                    erasures[(phone, brand)] = ErasedUpTo(fact.position.offset, fact.at)
        if not erasures:
            return shown
        return [
            replace(r, event=erased(e))
            if _personal(e := stored.event)
            and (up_to := erasures.get((e.phone, e.brand))) is not None
            and up_to.covers(stored)
            else r
            for stored, r in zip(history, shown, strict=True)
        ]

    async def require_fresh(
        self, phones: Sequence[str] | None, field: str, token: ConsistencyToken | None = None
    ) -> None:
        """Wait, as CanSend does, for the view to apply ``token`` (when given) and the
        phones' partitions (None: every partition of the view). A read that answers
        an error, not a decision, and that the view cannot serve fresh within the
        bound raises ``NotConsistent`` (UNAVAILABLE, retryable), on ``at_least_as_fresh``
        when the caller's token is what it lacks, else on ``field``, rather than
        answer from stale rows."""
        if token is not None and not await self.guard.wait_for_token(token):
            # A token past the ledger's end (or of a partition it lacks) will never be
            # applied: no write of this ledger gave it, and "retry" would be forever.
            # An end that cannot be read now is an outage: retryable, as asked.
            with contextlib.suppress(NotConsistent):
                await self.refuse_past_the_end(token, "at_least_as_fresh")
            raise NotConsistent("at_least_as_fresh", "the view has not applied the token yet")
        if phones is None:
            fresh = await self.guard.wait_for_all()
        else:
            fresh = await self.guard.wait_for_phones(phones)
        if not fresh:
            raise NotConsistent(field, BEHIND)

    async def refuse_past_the_end(self, token: ConsistencyToken, field: str) -> None:
        """Refuse a token that names an offset past the ledger's end, or a partition it
        lacks: no write or read of this ledger gave it, and a reader that starts there
        would skip every event of that partition until the ledger got there. Parts the
        view has applied need no look at the ledger; when the ledger's end cannot be
        read to check the others, ``NotConsistent`` (retryable)."""
        why = (await self.past_the_end([token], field))[0]
        if why is not None:
            raise InvalidRequest(field, why)

    async def refuse_relied_past_the_end(
        self, answers: Sequence[tuple[str, ReliedAnswer | None]]
    ) -> None:
        """Refuse the sends whose relied-on answer names a token past the ledger's end
        (``past_the_end``): the service never gave it, and the sweep would read the
        send as asked before it went out. ``answers`` are (field, answer) pairs; every
        such field is named, each token looked at once. When the ledger's end cannot
        be read, nothing is refused."""
        tokens: dict[str, ConsistencyToken] = {}
        for _, answer in answers:
            if answer is not None and answer.consistency_token not in tokens:
                tokens[answer.consistency_token] = ConsistencyToken.decode(answer.consistency_token)
        if not tokens:
            return
        field = answers[0][0]
        try:
            checked = await self.past_the_end(list(tokens.values()), field)
        except NotConsistent:
            # The ledger's end cannot be read now. These messages went out: refused,
            # they would go uncounted against caps and obligations, which is worse
            # than keeping a token not yet checked; only one known to be past the end
            # is refused.
            return
        whys = dict(zip(tokens, checked, strict=True))
        bad = [
            (f, why)
            for f, answer in answers
            if answer is not None and (why := whys[answer.consistency_token]) is not None
        ]
        if bad:
            raise InvalidRequest(*bad[0], *bad[1:])

    async def past_the_end(
        self, tokens: Sequence[ConsistencyToken], field: str
    ) -> list[str | None]:
        """For each of ``tokens``, why it is no token of this ledger (it names an
        offset past the ledger's end, or a partition it lacks), or None. The ledger's
        end is read once, and only when some token is ahead of what the view applied;
        when it cannot be read, ``NotConsistent`` on ``field`` (retryable)."""
        applied = self.guard.applied_token().offsets
        aheads = [
            {k: o for k, o in token.offsets.items() if k not in applied or o > applied[k]}
            for token in tokens
        ]
        if not any(aheads):
            return [None] * len(tokens)
        try:
            async with asyncio.timeout(_LOOK_AT_THE_END):
                ends = await self.guard.observe()
        except Exception as exc:
            raise NotConsistent(field, "the ledger's end could not be read to check it") from exc
        whys: list[str | None] = []
        for ahead in aheads:
            why = None
            for (stream, partition), offset in sorted(
                ahead.items(), key=lambda kv: (kv[0][0].value, kv[0][1])
            ):
                end = ends.get(stream, {}).get(partition)
                if end is None or offset > end:
                    why = (
                        f"names {stream.value}:{partition}:{offset}, past the ledger's end "
                        f"({'no such partition' if end is None else f'it ends at {end}'}): "
                        "not a token of this service"
                    )
                    break
            whys.append(why)
        return whys

    async def long_read(self, resume_at: ConsistencyToken | None, field: str) -> dict[int, int]:
        """Per subscriber partition of the ledger, the offset a long read (a sweep, a
        health read) goes up to: the view's positions now, 0 where it has applied
        nothing, so its token names every partition; or those of ``resume_at``, an
        interrupted read's token. One that lacks a partition (a write's token, a
        campaign's) would leave that partition unread and still end "done", so a
        clean sweep would say nothing of sends never judged: refused, on ``field``."""
        partitions = await self.ledger.partitions(Stream.SUBSCRIBERS)
        if resume_at is None:
            positions = await self.view.positions(Stream.SUBSCRIBERS)
            return {**{p: 0 for p in partitions}, **positions}
        named = {p: o for (s, p), o in resume_at.offsets.items() if s is Stream.SUBSCRIBERS}
        missing = [p for p in partitions if p not in named]
        if missing:
            raise InvalidRequest(
                field,
                f"names no offset for subscriber partition {', '.join(map(str, missing))}: "
                "not the token of an interrupted read, which names every partition "
                "(the others would go unread)",
            )
        return named

    async def require_caught_up(self, stream: Stream, field: str) -> None:
        """Let the view reach the ledger's end as it is now (``FreshnessGuard.wait_until_applied``),
        before an answer that must count every fact acknowledged so far ("not defined",
        "no campaign sends from", "not pending"); ``NotConsistent`` on ``field``
        (UNAVAILABLE, retryable) when it cannot within the bound."""
        if not await self.guard.wait_until_applied((stream,)):
            raise NotConsistent(field, BEHIND)

    async def campaign_known(self, brand: str, campaign: str) -> bool:
        """Whether the campaign is defined, counting a definition the ledger
        acknowledged a moment ago; ``NotConsistent`` on ``campaign`` when the view
        cannot catch up to tell, for "not defined" is an answer callers act on (a
        refused write is not retried, a redefinition would be written)."""
        if (await self.rules.campaign_history(brand, campaign)).versions:
            return True
        # Perhaps defined a moment ago: look at the ledger's end now, let the
        # projection reach it, and ask again before refusing.
        await self.require_caught_up(Stream.CAMPAIGNS, "campaign")
        return bool((await self.view.campaign_history(brand, campaign)).versions)


def _personal(event: object) -> TypeGuard[SubscriberEvent]:
    """Whether ``event`` holds personal data: sealed, or in the clear (written before
    sealing)."""
    return isinstance(event, SubscriberEvent) and (
        event.sealed is not None or bool(personal_data(event))
    )
