"""The compliance sweep of a campaign (``SweepCampaign``): ``ledger.sweep`` over the
brand's events as the view applied them, page by page, so that a campaign of a
million messages streams through in the memory of its numbers' states.

The sweep reads what the view had applied when it began (its positions then) and
nothing after, and says how far it has come as it goes (``SweepProgress``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from datetime import datetime

from ledger.commands import check_name
from ledger.errors import InvalidRequest
from ledger.events import ANY_BRAND, Recorded
from ledger.ports import ConsistencyToken, Stream, UnreadableDigests
from ledger.sweep import Finding, Sweep
from services.errors import campaign_not_found
from services.usecases.context import Context

PAGE = 1000
"""Events read from the view at a time."""


@dataclass(frozen=True)
class SweepProgress:
    """How far a sweep has come."""

    events_read: int
    """The events of the brand (and of its numbers' unknown brand) read so far."""
    sends_judged: int
    findings: int
    done: float
    """The share of the view's applied events the sweep has looked through, 0 to 1."""
    token: ConsistencyToken
    """The view the sweep reads: its positions when the sweep began."""
    partitions_done: tuple[int, ...] = ()
    """The partitions swept to the end: every finding of them has been given."""


def check_range(start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
    """``[start, end)``, both given and time-zone aware, start first."""
    if start is None:
        raise InvalidRequest("start_time", "is required")
    if end is None:
        raise InvalidRequest("end_time", "is required")
    if start.tzinfo is None:
        raise InvalidRequest("start_time", "must carry a time zone")
    if end.tzinfo is None:
        raise InvalidRequest("end_time", "must carry a time zone")
    if start >= end:
        raise InvalidRequest("start_time", "must be before end_time")
    return start, end


async def sweep_campaign(
    ctx: Context,
    brand: str,
    campaign: str,
    start: datetime | None,
    end: datetime | None,
    token: ConsistencyToken | None = None,
    *,
    resume_at: ConsistencyToken | None = None,
    skip: frozenset[int] = frozenset(),
) -> AsyncGenerator[Finding | SweepProgress, None]:
    """Each finding of the sweep of ``campaign`` over ``[start, end)``, one per send
    with every reason (``ledger.sweep.Sweep.finish``), a partition's as it is
    finished; a ``SweepProgress`` first, after every page read and every partition
    finished, and last with ``done`` 1.0.

    The sweep goes a partition at a time: a number's events share a partition, so
    once one is finished no state of its numbers is needed again. That is what makes
    it resumable without saving the numbers' states: ``resume_at`` (the ``token`` of
    an interrupted sweep's progress) reads the same view, and the partitions in
    ``skip`` (its ``partitions_done``) are not read again.

    A campaign never defined is refused (``NotFound``), so a misspelt name
    cannot pass for a clean record; a view behind ``token`` is ``NotConsistent``."""
    check_name(brand, "brand")
    check_name(campaign, "campaign")
    start, end = check_range(start, end)
    await ctx.require_fresh(None, "brand", token)
    if resume_at is not None:
        await ctx.require_fresh(None, "brand", resume_at)
    if not await ctx.campaign_known(brand, campaign):
        raise campaign_not_found(brand, campaign)
    history = await ctx.view.campaign_history(brand, campaign)
    target = await ctx.long_read(resume_at, "resume_read_at")
    # The answers in hindsight are known as of now, as the proof packet's.
    now = ctx.clock()
    read_at = ConsistencyToken({(Stream.SUBSCRIBERS, p): o for p, o in target.items()})
    total = sum(target.values())
    done = set(skip) & set(target)
    found = events = judged = 0  # events and sends of the partitions finished
    covered = sum(target[p] for p in done)
    swept: Sweep | None = None

    def progress(share: float) -> SweepProgress:
        now_read = events + (swept.events_read if swept else 0)
        now_judged = judged + (swept.sends_judged if swept else 0)
        return SweepProgress(now_read, now_judged, found, share, read_at, tuple(sorted(done)))

    yield progress(covered / total if total else 0.0)  # the view read, before any finding
    for partition in sorted(set(target) - done):
        swept = Sweep(history, brand, campaign, start, end, now)
        # The other partitions are asked from where the view was when the sweep
        # began: only what was applied since comes back, and it is left out.
        others = {p: o for p, o in target.items() if p != partition}
        # The STOPs of numbers whose brand was unknown first: few, and each send is
        # judged only with those that the moment of the send knew (``ledger.sweep``).
        for key in (ANY_BRAND, brand):
            after: dict[int, int] = {**others, partition: 0}
            while True:
                page = await ctx.view.changes(key, after, PAGE)
                mine = [
                    r
                    for r in page.events
                    if r.position.partition == partition and _within(r, target)
                ]
                # Off the event loop, as a proof packet is assembled: one number's
                # thousands of sends in a cap window take seconds to judge, and every
                # other call of the instance waited behind them.
                await asyncio.to_thread(_feed, swept, mine)
                after.update(page.through)
                if after.get(partition, 0) >= target[partition] or len(page.events) < PAGE:
                    break
                if key == brand:
                    share = (covered + min(after.get(partition, 0), target[partition])) / total
                    yield progress(share)
        # The numbers a fact recorded late may have changed a send of are judged
        # again from their whole history as the view had it, as the packet judges,
        # and so are those with facts under another spelling, in another partition:
        # then each send's one finding, with every reason, is final.
        spelt = await _spelt_otherwise(ctx, brand, swept.other_spellings)
        histories = {}
        for phone in sorted(swept.to_review | spelt.keys()):
            facts = []
            for form in (phone, *spelt.get(phone, ())):
                facts += await ctx.view.history(form, brand)
                facts += await ctx.view.history(form, ANY_BRAND)
            histories[phone] = [r for r in facts if _within(r, target)]
        for finding in await asyncio.to_thread(swept.finish, histories):
            found += 1
            yield finding
        events, judged = events + swept.events_read, judged + swept.sends_judged
        swept = None
        covered += target[partition]
        done.add(partition)
        yield progress(covered / total if total else 1.0)
    yield progress(1.0)


def _feed(swept: Sweep, events: list[Recorded]) -> None:
    for recorded in events:
        swept.feed(recorded)


async def _spelt_otherwise(
    ctx: Context, brand: str, others: Mapping[str, tuple[str, ...]]
) -> dict[str, tuple[str, ...]]:
    """Those of ``others`` (a number's other spellings, ``Sweep.other_spellings``)
    under which the view holds facts towards ``brand``, or a STOP whose brand was
    unknown: read a page of spellings at a time, as a batch of checks reads them,
    so a campaign of numbers spelt two ways costs no read per number."""
    forms = sorted({form for spellings in others.values() for form in spellings})
    stored: set[str] = set()
    for i in range(0, len(forms), PAGE):
        page = forms[i : i + PAGE]
        try:
            stored.update(await ctx.view.digests(brand, page))
        except UnreadableDigests as exc:  # a row that cannot be read is a row all the same
            stored.update(exc.found, exc.phones)
        wide = await ctx.view.subscriber_states(ANY_BRAND, page)
        stored.update(form for form, state in wide.items() if state.candidates)
    return {
        phone: kept
        for phone, spellings in others.items()
        if (kept := tuple(form for form in spellings if form in stored))
    }


def _within(recorded: Recorded, target: dict[int, int]) -> bool:
    """Whether the view had applied ``recorded`` when the sweep began."""
    return recorded.position.offset < target.get(recorded.position.partition, 0)
