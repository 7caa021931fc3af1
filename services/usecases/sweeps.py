"""The compliance sweep of a campaign (``SweepCampaign``): ``ledger.sweep`` over the
brand's events as the view applied them, page by page, so that a campaign of a
million messages streams through in the memory of its numbers' states.

The sweep reads what the view had applied when it began (its positions then) and
nothing after, and says how far it has come as it goes (``SweepProgress``).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import datetime

from ledger.commands import check_name
from ledger.errors import InvalidRequest
from ledger.events import ANY_BRAND, Recorded
from ledger.ports import ConsistencyToken, Stream
from ledger.sweep import Finding, Sweep
from services.errors import FailedPrecondition
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
) -> AsyncGenerator[Finding | SweepProgress, None]:
    """Each finding of the sweep of ``campaign`` over ``[start, end)`` as it is found;
    a ``SweepProgress`` first, after every page read, and last with ``done`` 1.0.

    A campaign never defined is refused (``FailedPrecondition``), so a misspelt name
    cannot pass for a clean record; a view behind ``token`` is ``NotConsistent``."""
    check_name(brand, "brand")
    check_name(campaign, "campaign")
    start, end = check_range(start, end)
    await ctx.require_fresh(None, "brand", token)
    if not await ctx.campaign_known(brand, campaign):
        raise FailedPrecondition("campaign", f"{brand}/{campaign} is not defined")
    history = await ctx.view.campaign_history(brand, campaign)
    target = await ctx.view.positions(Stream.SUBSCRIBERS)
    read_at = ConsistencyToken({(Stream.SUBSCRIBERS, p): o for p, o in target.items()})
    total = sum(target.values())
    swept = Sweep(history, brand, campaign, start, end)
    found = 0
    yield SweepProgress(0, 0, 0, 0.0, read_at)  # the view read, before any finding
    # The STOPs of numbers whose brand was unknown first: few, and each send is
    # judged only with those that the moment of the send knew (``ledger.sweep``).
    for key in (ANY_BRAND, brand):
        after: dict[int, int] = {}
        while True:
            page = await ctx.view.changes(key, after, PAGE)
            for recorded in page.events:
                if _within(recorded, target):
                    finding = swept.feed(recorded)
                    if finding is not None:
                        found += 1
                        yield finding
            after.update(page.through)
            if all(after.get(p, 0) >= o for p, o in target.items()) or len(page.events) < PAGE:
                break
            if key == brand:
                covered = sum(min(after.get(p, 0), o) for p, o in target.items())
                done = covered / total if total else 0.0
                yield SweepProgress(swept.events_read, swept.sends_judged, found, done, read_at)
    yield SweepProgress(swept.events_read, swept.sends_judged, found, 1.0, read_at)


def _within(recorded: Recorded, target: dict[int, int]) -> bool:
    """Whether the view had applied ``recorded`` when the sweep began."""
    return recorded.position.offset < target.get(recorded.position.partition, 0)
