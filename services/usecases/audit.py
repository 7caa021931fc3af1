"""What is on record: one number's consent (``GetConsent``), its events
(``ListEvents``), its proof of opt-in (``GetProofPacket``), a brand's opt-out rate
(``GetOptOutRate``), its campaigns' health (``GetCampaignHealth``) and its changes
as they are applied (``WatchConsentChanges``).

An audit read answers an error, not a decision: one the view cannot serve fresh
enough raises ``NotConsistent`` (UNAVAILABLE, retryable) rather than answer from
stale rows. Each answer carries the token of the view it was read from.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar

from ledger.commands import check_name, check_time
from ledger.digest import digest_of
from ledger.errors import InvalidRequest
from ledger.events import (
    ANY_BRAND,
    AgeVerified,
    ConsentGranted,
    ConsentReconfirmed,
    ConsentRevoked,
    LedgerEvent,
    Recorded,
    RevocationCandidateFlagged,
)
from ledger.health import HealthLimits, HealthReport
from ledger.opt_out_rate import DEFAULT_WINDOW, OptOutRate
from ledger.packet import Packet, assemble
from ledger.personal_data import PERSONAL_FIELDS, SEALED
from ledger.phone import forms_stored_before, to_e164
from ledger.policy import revokes_all
from ledger.ports import ConsistencyToken, Stream
from ledger.state import Fact
from ledger.status import ConsentState, consent_state, revocation_in_force
from ledger.sweep import Finding
from services import changes
from services.errors import campaign_not_found
from services.usecases import health, sweeps
from services.usecases.access import Reader
from services.usecases.context import Context
from services.usecases.health import HealthProgress
from services.usecases.spellings import earlier_history, in_ledger_order, state_as_one
from services.usecases.sweeps import SweepProgress

log = logging.getLogger(__name__)
T = TypeVar("T")
E = TypeVar("E", bound=LedgerEvent)
S = TypeVar("S", Recorded, Fact[Any])


@dataclass(frozen=True)
class Read(Generic[T]):
    """An answer read from the view, and how fresh the view was."""

    value: T
    token: ConsistencyToken


@dataclass(frozen=True)
class Consent:
    """A number's consent to one campaign of a brand, with the facts it stands on."""

    state: ConsentState
    token: ConsistencyToken
    now: datetime
    """When it was read: a pending candidate due by then is overdue, and counts as a
    revocation as CanSend answers at that moment."""
    grant: Fact[ConsentGranted] | None = None
    revocation: Fact[ConsentRevoked] | None = None
    """The opt-out that stands (the campaign's own, or the brand-wide one)."""
    reconfirmation: Fact[ConsentReconfirmed] | None = None
    age_verification: Fact[AgeVerified] | None = None
    location: Fact[Any] | None = None
    pending: tuple[Fact[RevocationCandidateFlagged], ...] = ()
    """Replies awaiting review that block sends: the brand's, then the number's STOPs
    whose brand was unknown (``ANY_BRAND``), which deny every brand's sends. One no
    defined campaign could take (``unattributed``) makes ``state`` REVOKED_BRAND_WIDE,
    as CanSend answers; it is listed here all the same, for it awaits review."""
    regions: tuple[str, ...] = ()
    proof_missing: tuple[str, ...] = ()
    """What the grant's proof lacks of the provider's template."""


def _kept_from(reader: Reader, event: Any) -> bool:
    """Whether some of ``event`` is kept from ``reader`` (``shown_to``): it is under
    every brand, and ``reader`` reads only some."""
    return reader.brands is not None and getattr(event, "brand", None) == ANY_BRAND


def shown_to(reader: Reader, recorded: S) -> S:
    """``recorded`` (opened) as ``reader`` is shown it. A fact kept under every brand
    (``ANY_BRAND``) reaches each brand's reads, and was perhaps recorded by another
    brand's caller, of words that answered another brand (a late STOP to a number
    that brand let go): its ``recorded_by`` names that caller and the words may name
    that brand, and its ``to_number`` is that brand's number then (or the caller's
    now), so only a reader of every brand, the operator who reviews it, is shown
    them; any other reads the words as sealed, as its change stream does, and no
    ``request_fingerprint``, which would confirm a guess at them."""
    event = recorded.event
    if not _kept_from(reader, event):
        return recorded
    hidden: dict[str, Any] = {
        name: ""
        for name in ("recorded_by", "request_fingerprint", "to_number")
        if getattr(event, name, "")
    }
    for name in PERSONAL_FIELDS.get(type(event), ()):
        if getattr(event, name):
            hidden[name] = SEALED
    if not hidden:
        return recorded
    return replace(recorded, event=replace(event, **hidden))


class Evidence(Protocol):
    """What proves a packet's events against the ledger's signed checkpoints
    (``services.packets.evidence.PacketEvidence``)."""

    async def of(
        self, positions: Iterable[tuple[int, int]], withheld: Iterable[tuple[int, int]] = ()
    ) -> dict[str, Any]:
        """The proof of the subscriber events at (partition, offset) ``positions``;
        those also in ``withheld`` by their digest, without their stored bytes."""
        ...


class Audit:
    def __init__(
        self,
        ctx: Context,
        evidence: Evidence | None = None,
        health_limits: HealthLimits | None = None,
    ) -> None:
        """``evidence``: None when the service signs no checkpoints; ``health_limits``:
        the rates campaign health flags (by default the provider's)."""
        self.ctx = ctx
        self.evidence = evidence
        self.health_limits = health_limits or HealthLimits()

    async def get_consent(
        self,
        phone: str,
        brand: str,
        campaign: str,
        token: ConsistencyToken | None = None,
        *,
        reader: Reader,
    ) -> Consent:
        """The number's consent to ``campaign`` of ``brand``: a campaign never defined
        is refused, so a misspelt name cannot pass for "never granted"."""
        number = to_e164(phone)
        check_name(brand, "brand")
        check_name(campaign, "campaign")
        await self.ctx.access.admit(reader, "GetConsent", brand, phone=number, campaign=campaign)
        await self.ctx.require_fresh([number, *forms_stored_before(number)], "phone", token)
        if not await self.ctx.campaign_known(brand, campaign):
            raise campaign_not_found(brand, campaign)
        # Facts an earlier version kept under the number's other spelling count, as
        # CanSend counts them, each shown under the spelling it was recorded under.
        mine = await state_as_one(self.ctx.view, number, brand)
        anyone = await state_as_one(self.ctx.view, number, ANY_BRAND)
        state, wide = mine.state, anyone.state
        digest = digest_of(state)
        pending = (*state.pending_candidates(), *wide.pending_candidates())
        cc = state.campaign(campaign)
        # Under the revoke-all rule a STOP to a sibling campaign ends this one too:
        # read without it, the consent showed ACTIVE while CanSend denied.
        now = self.ctx.clock()
        rules = (await self.ctx.view.campaign_history(brand, campaign)).as_of(now)
        revoke_all = rules is not None and revokes_all(rules, now)
        in_force = revocation_in_force(state, digest, campaign, revoke_all=revoke_all)
        # What an auditor is shown: each fact's personal data opened (or ERASED).
        grant, revocation, reconfirmation, location, *held = await self._shown(
            mine.as_recorded(cc.grant),
            mine.as_recorded(in_force),
            mine.as_recorded(cc.reconfirmation),
            mine.as_recorded(state.location),
            *map(mine.as_recorded, state.pending_candidates()),
            *map(anyone.as_recorded, wide.pending_candidates()),
        )
        return Consent(
            consent_state(
                digest,
                campaign,
                pending_review=bool(pending),
                # An opt-out no defined campaign could take counts for every campaign
                # until resolved: CanSend answers REVOKED_BRAND_WIDE, and so must this.
                unattributed=any(c.event.unattributed for c in pending),
                revoke_all=revoke_all,
                # A consent to content the campaign no longer sends allows nothing.
                content_since=None if rules is None else rules.content_since,
            ),
            self.ctx.guard.applied_token(),
            now,
            grant=grant,
            revocation=revocation,
            reconfirmation=reconfirmation,
            age_verification=mine.as_recorded(state.age),
            location=location,
            pending=tuple(shown_to(reader, f) for f in held if f is not None),
            regions=digest.regions,
            proof_missing=(
                ()
                if grant is None
                else tuple(grant.event.proof.template_missing(grant.event.method))
            ),
        )

    async def _shown(self, *facts: Fact[Any] | None) -> list[Fact[Any] | None]:
        """``facts`` with their personal data opened, or ``ERASED`` where it is gone:
        opened at once, so the subjects' erasures are looked up once (``Context.opened``)."""
        given = [f for f in facts if f is not None]
        opened = iter(await self.ctx.opened([f.as_recorded() for f in given]))
        return [
            None if f is None else Fact(next(opened).event, f.position, f.recorded_at)
            for f in facts
        ]

    async def history(
        self,
        phone: str,
        brand: str | None,
        token: ConsistencyToken | None = None,
        *,
        reader: Reader,
    ) -> Read[list[Recorded]]:
        """The number's events (towards ``brand`` and its STOPs whose brand was unknown,
        as the proof packet reads them; or every brand's), in ledger order."""
        number = to_e164(phone)
        if brand is not None:
            check_name(brand, "brand")
        await self.ctx.access.admit(reader, "ListEvents", brand, phone=number)
        await self.ctx.require_fresh([number, *forms_stored_before(number)], "phone", token)
        token_read = self.ctx.guard.applied_token()
        view = self.ctx.view
        facts = await view.history(number, brand)
        # Facts an earlier version kept under the number's other spelling count for
        # CanSend: its auditor must find them here, under the spelling they were
        # recorded under.
        earlier = await earlier_history(view, number, brand)
        if brand is not None:
            # A STOP whose brand was unknown (``ANY_BRAND``) denies this brand's sends
            # too, and CanSend names it: the brand's auditor must find it here.
            facts += await view.history(number, ANY_BRAND)
            earlier += await earlier_history(view, number, ANY_BRAND)
        opened = await self.ctx.opened(in_ledger_order(facts, earlier))
        return Read([shown_to(reader, r) for r in opened], token_read)

    async def proof_packet(
        self,
        phone: str,
        brand: str,
        campaign: str | None = None,
        token: ConsistencyToken | None = None,
        *,
        reader: Reader,
        document: str | None = None,
    ) -> Read[Packet]:
        """The proof-of-opt-in packet of ``phone`` for ``brand`` (``campaign``: only
        what bears on it): ``ledger.packet.assemble`` of the number's facts towards
        the brand, its STOPs whose brand was unknown, and the rules of every campaign
        they name. A campaign never defined is refused, so a misspelt name cannot
        pass for "no opt-in". ``document``: the format the packet is to be given in,
        for the access record."""
        number = to_e164(phone)
        check_name(brand, "brand")
        if campaign is not None:
            check_name(campaign, "campaign")
        await self.ctx.access.admit(
            reader,
            "GetProofPacket",
            brand,
            phone=number,
            campaign=campaign,
            detail={"format": document},
        )
        earlier = forms_stored_before(number)
        await self.ctx.require_fresh([number, *earlier], "phone", token)
        read_at = self.ctx.guard.applied_token()
        if campaign is not None and not await self.ctx.campaign_known(brand, campaign):
            raise campaign_not_found(brand, campaign)
        view = self.ctx.view
        # STOPs whose brand was unknown concern every brand (``ledger.events.ANY_BRAND``),
        # and facts kept under the number's earlier spelling count as CanSend counts them.
        facts = await self.ctx.opened(
            [
                *await view.history(number, brand),
                *await view.history(number, ANY_BRAND),
                *await earlier_history(view, number, brand),
                *await earlier_history(view, number, ANY_BRAND),
            ]
        )
        # The stored bytes of a fact under every brand hold what ``shown_to`` leaves
        # out: a reader of some brands has it proven by its digest instead.
        withheld = [
            (r.position.partition, r.position.offset) for r in facts if _kept_from(reader, r.event)
        ]
        facts = [shown_to(reader, r) for r in facts]
        named = {campaign} if campaign is not None else set()
        named |= {c for r in facts if isinstance(c := getattr(r.event, "campaign", None), str)}
        rules: dict[str, Recorded] = {}
        for name in sorted(named):
            for r in (await view.campaign_history(brand, name)).facts():
                rules.setdefault(str(r.event.event_id), r)
        # Off the event loop, as a PDF is drawn: each send is judged with the sends its
        # cap window keeps, seconds of CPU for a number sent thousands in a day, and
        # every other call of the instance waited behind it.
        packet = await asyncio.to_thread(
            assemble,
            [*facts, *rules.values()],
            number,
            brand,
            campaign,
            self.ctx.clock(),
            earlier=earlier,
        )
        if self.evidence is not None:
            packet = replace(packet, tamper_evidence=await self._evidence(packet, withheld))
        return Read(packet, read_at)

    async def _evidence(self, packet: Packet, withheld: list[tuple[int, int]]) -> dict[str, Any]:
        """The proof of the packet's events (those at ``withheld`` by digest alone); a
        packet is still given when the checkpoints cannot be read, saying so."""
        assert self.evidence is not None
        try:
            return await self.evidence.of(
                ((e.partition, e.offset) for e in packet.events), withheld
            )
        except Exception as exc:  # the proof is an addition: its failure must not hide the rest
            log.warning("the packet's tamper evidence could not be read: %r", exc)
            return {"status": "unavailable", "detail": f"the checkpoints could not be read: {exc}"}

    async def opt_out_rate(
        self,
        brand: str,
        campaign: str | None,
        start: datetime | None = None,
        end: datetime | None = None,
        token: ConsistencyToken | None = None,
        *,
        reader: Reader,
    ) -> Read[OptOutRate]:
        """The brand's (or the campaign's) opt-out rate over ``[start, end)``: by
        default the 30 days up to now. A campaign never defined is refused, so a
        misspelt name cannot pass for a clean record."""
        start, end = await self._brand_window(
            brand, campaign, start, end, token, reader, "GetOptOutRate"
        )
        counts = await self.ctx.view.sending_counts(brand, campaign, start, end)
        return Read(OptOutRate(brand, campaign, start, end, counts), self.ctx.guard.applied_token())

    async def campaign_health(
        self,
        brand: str,
        campaign: str | None,
        start: datetime | None = None,
        end: datetime | None = None,
        token: ConsistencyToken | None = None,
        *,
        reader: Reader,
    ) -> Read[HealthReport]:
        """The opt-out and error rates of the brand's campaigns (or of one), per
        campaign and per sending number, over ``[start, end)``: by default the 30
        days up to now (``ledger.health``). A campaign never defined is refused, so
        a misspelt name cannot pass for a healthy one."""
        start, end = await self._brand_window(
            brand, campaign, start, end, token, reader, "GetCampaignHealth"
        )
        report, read_at = await health.campaign_health(
            self.ctx, brand, campaign, start, end, self.health_limits
        )
        return Read(report, read_at)

    async def campaign_health_stream(
        self,
        brand: str,
        campaign: str | None,
        start: datetime | None = None,
        end: datetime | None = None,
        token: ConsistencyToken | None = None,
        *,
        reader: Reader,
        resume_at: ConsistencyToken | None = None,
        skip: frozenset[int] = frozenset(),
    ) -> AsyncGenerator[HealthProgress | HealthReport, None]:
        """``campaign_health`` as it goes: how far the read has come
        (``services.usecases.health.HealthProgress``), then the report. Recorded as
        one read, before it reads."""
        start, end = await self._brand_window(
            brand, campaign, start, end, token, reader, "StreamCampaignHealth"
        )
        found = health.campaign_health_stream(
            self.ctx,
            brand,
            campaign,
            start,
            end,
            self.health_limits,
            resume_at=resume_at,
            skip=skip,
        )
        try:
            async for item in found:
                yield item
        finally:
            await found.aclose()

    async def _brand_window(
        self,
        brand: str,
        campaign: str | None,
        start: datetime | None,
        end: datetime | None,
        token: ConsistencyToken | None,
        reader: Reader,
        action: str,
    ) -> tuple[datetime, datetime]:
        """``[start, end)`` checked (by default the 30 days up to now), once the read
        ``action`` is admitted for ``reader`` and recorded, and the view has caught up
        for the whole brand and the campaign, if named, is defined."""
        check_name(brand, "brand")
        if campaign is not None:
            check_name(campaign, "campaign")
        now = self.ctx.clock()
        end = now if end is None else check_time(end, now, "end_time")
        if start is None:
            if end < datetime.min.replace(tzinfo=UTC) + DEFAULT_WINDOW:
                raise InvalidRequest("end_time", "is too early for the default window")
            start = end - DEFAULT_WINDOW
        elif start.tzinfo is None:
            raise InvalidRequest("start_time", "must carry a time zone")
        if start >= end:
            raise InvalidRequest("start_time", "must be before end_time")
        await self.ctx.access.admit(
            reader,
            action,
            brand,
            campaign=campaign,
            detail={"start_time": start.isoformat(), "end_time": end.isoformat()},
        )
        await self.ctx.require_fresh(None, "brand", token)
        if campaign is not None and not await self.ctx.campaign_known(brand, campaign):
            raise campaign_not_found(brand, campaign)
        return start, end

    async def watch_changes(
        self,
        brand: str,
        after: ConsistencyToken | None,
        *,
        from_now: bool = False,
        campaign: str | None = None,
        messages: bool = False,
        stopping: asyncio.Event | None = None,
        reader: Reader,
    ) -> AsyncGenerator[tuple[Recorded, ConsistencyToken], None]:
        """``services.changes.watch`` of ``brand``: after ``after``, after what the view
        has applied now (``from_now``), or else from its first change; until
        ``stopping`` is set."""
        check_name(brand, "brand")
        if campaign is not None:
            check_name(campaign, "campaign")
        if after is not None:  # bad input: refused before the read, and recorded so
            await self.ctx.refuse_past_the_end(after, "resume_token")
        await self.ctx.access.admit(
            reader,
            "WatchConsentChanges",
            brand,
            campaign=campaign,
            detail={"resume_token": None if after is None else after.encode()},
        )
        # A misspelt campaign would watch nothing, forever: refused as the reads are.
        if campaign is not None and not await self.ctx.campaign_known(brand, campaign):
            raise campaign_not_found(brand, campaign)
        if from_now:
            start = await self.ctx.view.positions(Stream.SUBSCRIBERS)
        else:
            start = changes.resume_after(after) if after is not None else {}
        types = changes.CONSENT_CHANGES | changes.MESSAGES if messages else changes.CONSENT_CHANGES
        async for recorded, token in changes.watch(
            self.ctx.view,
            self.ctx.guard,
            brand,
            start,
            campaign=campaign,
            types=types,
            stopping=stopping,
            shown=self._watched,
        ):
            yield shown_to(reader, recorded), token

    async def _watched(self, page: Sequence[Recorded]) -> list[Recorded]:
        """A page of a watch shown opened, as ListEvents shows it (and erased where its
        subject was, written in the clear before sealing too), in one ``opened``: the
        subjects' keys and erasures read once a page. A hold of brand "*" (a STOP to a
        number no campaign sends from) stays sealed: what the person wrote, perhaps to
        another brand, is not every brand's to read, only that it holds them."""
        mine = [r for r in page if getattr(r.event, "brand", None) != ANY_BRAND]
        opened = iter(await self.ctx.opened(mine) if mine else ())
        return [r if getattr(r.event, "brand", None) == ANY_BRAND else next(opened) for r in page]

    async def sweep(
        self,
        brand: str,
        campaign: str,
        start: datetime | None,
        end: datetime | None,
        token: ConsistencyToken | None = None,
        *,
        reader: Reader,
        resume_at: ConsistencyToken | None = None,
        skip: frozenset[int] = frozenset(),
    ) -> AsyncGenerator[Finding | SweepProgress, None]:
        """The compliance sweep of ``campaign`` over ``[start, end)``
        (``services.usecases.sweeps.sweep_campaign``), recorded before it reads."""
        check_name(brand, "brand")
        check_name(campaign, "campaign")
        start, end = sweeps.check_range(start, end)
        await self.ctx.access.admit(
            reader,
            "SweepCampaign",
            brand,
            campaign=campaign,
            detail={"start_time": start.isoformat(), "end_time": end.isoformat()},
        )
        found = sweeps.sweep_campaign(
            self.ctx, brand, campaign, start, end, token, resume_at=resume_at, skip=skip
        )
        try:
            async for item in found:
                yield item
        finally:
            await found.aclose()
