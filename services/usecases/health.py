"""Campaign health (``GetCampaignHealth``): ``ledger.health`` over a brand's events
as the view applied them, page by page, so a brand of millions of messages is read
in the memory of its numbers' latest messages and its window's messages, never of
its events.

Why a read over the view's copy of the events and not a projection of its own: the
rule attributes each opt-out to the message before it, per number, which a
projection would have to keep exactly as this does, in a table of its own, a
migration and a rebuild more; reading the events at the question costs one pass over
the brand's history (the compliance sweep's pass), which an auditor's question can
afford, and the answer is never older than the view.
"""

from __future__ import annotations

from datetime import datetime

from ledger.events import Recorded
from ledger.health import HealthLimits, HealthReport, HealthTally
from ledger.ports import ConsistencyToken, Stream
from services.usecases.context import Context

PAGE = 1000
"""Events read from the view at a time."""


async def campaign_health(
    ctx: Context,
    brand: str,
    campaign: str | None,
    start: datetime,
    end: datetime,
    limits: HealthLimits,
) -> tuple[HealthReport, ConsistencyToken]:
    """The health of ``brand``'s campaigns (``campaign``: of that one) over ``[start,
    end)``, from what the view had applied when the read began, and that view's
    token. The caller has checked the request and the view's freshness."""
    target = await ctx.view.positions(Stream.SUBSCRIBERS)
    read_at = ConsistencyToken({(Stream.SUBSCRIBERS, p): o for p, o in target.items()})
    tally = HealthTally(brand, campaign, start, end)
    after: dict[int, int] = {}
    while True:
        page = await ctx.view.changes(brand, after, PAGE)
        for recorded in page.events:
            if _within(recorded, target):
                tally.feed(recorded)
        after.update(page.through)
        if all(after.get(p, 0) >= o for p, o in target.items()) or len(page.events) < PAGE:
            break
    return tally.report(limits), read_at


def _within(recorded: Recorded, target: dict[int, int]) -> bool:
    """Whether the view had applied ``recorded`` when the read began."""
    return recorded.position.offset < target.get(recorded.position.partition, 0)
