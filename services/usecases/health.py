"""Campaign health (``GetCampaignHealth``, ``StreamCampaignHealth``): ``ledger.health``
over a brand's events as the view applied them, a partition at a time and page by
page, so a brand of millions of messages is read in the memory of one partition's
window messages and numbers, never of its events, and the caller can be told how far
the read has come.

A partition at a time, because every fact ``ledger.health`` counts is about one
number, and a number's facts share a partition: once a partition is read, its tally
is reduced to its counts (a few per campaign and sending number) and let go. The
memory left grows with the window only as much as one partition's share of it.

Why a read over the view's copy of the events and not a projection of its own: the
rule attributes each opt-out to the message before it, per number, which a
projection would have to keep exactly as this does, in a table of its own, a
migration and a rebuild more; reading the events at the question costs one pass over
the brand's history (the compliance sweep's pass), which an auditor's question can
afford, and the answer is never older than the view.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import datetime

from ledger.events import Recorded
from ledger.health import HealthLimits, HealthReport, HealthTally, combine
from ledger.ports import ConsistencyToken, Stream
from services.usecases.context import Context

PAGE = 1000
"""Events read from the view at a time."""


@dataclass(frozen=True)
class HealthProgress:
    """How far a campaign health read has come."""

    events_read: int
    """The brand's events read so far."""
    done: float
    """The share of the view's applied events looked through, 0 to 1."""
    token: ConsistencyToken
    """The view read: its positions when the read began."""
    partitions_done: tuple[int, ...] = ()
    """The partitions read to the end, those skipped by a resumed read included."""
    partition: HealthReport | None = None
    """At a partition's end, its counts alone."""


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
    report, token = None, None
    async for item in campaign_health_stream(ctx, brand, campaign, start, end, limits):
        if isinstance(item, HealthReport):
            report = item
        else:
            token = item.token
    assert report is not None and token is not None, "the stream ends with its report"
    return report, token


async def campaign_health_stream(
    ctx: Context,
    brand: str,
    campaign: str | None,
    start: datetime,
    end: datetime,
    limits: HealthLimits,
    *,
    resume_at: ConsistencyToken | None = None,
    skip: frozenset[int] = frozenset(),
) -> AsyncGenerator[HealthProgress | HealthReport, None]:
    """``campaign_health`` as it goes: a ``HealthProgress`` first, after every page
    and every partition read (with that partition's counts), and the ``HealthReport``
    last. ``resume_at`` (an interrupted read's token) reads the same view, and the
    partitions in ``skip`` are not read: the report counts the others alone."""
    if resume_at is not None:
        await ctx.require_fresh(None, "resume_read_at", resume_at)
    target = await ctx.long_read(resume_at, "resume_read_at")
    read_at = ConsistencyToken({(Stream.SUBSCRIBERS, p): o for p, o in target.items()})
    total = sum(target.values())
    done = set(skip) & set(target)
    covered = sum(target[p] for p in done)
    events = 0
    reports: list[HealthReport] = []
    yield HealthProgress(0, covered / total if total else 1.0, read_at, tuple(sorted(done)))
    for partition in sorted(set(target) - done):
        tally = HealthTally(brand, campaign, start, end)
        # The other partitions are asked from where the view was when the read
        # began: only what was applied since comes back, and it is left out.
        after = {**{p: o for p, o in target.items() if p != partition}, partition: 0}
        while True:
            page = await ctx.view.changes(brand, after, PAGE)
            for recorded in page.events:
                if recorded.position.partition == partition and _within(recorded, target):
                    tally.feed(recorded)
            after.update(page.through)
            reached = min(after.get(partition, 0), target[partition])
            if reached >= target[partition] or len(page.events) < PAGE:
                break
            yield HealthProgress(
                events + tally.events_read,
                (covered + reached) / total,
                read_at,
                tuple(sorted(done)),
            )
        counted = tally.report(limits)
        reports.append(counted)
        events += tally.events_read
        covered += target[partition]
        done.add(partition)
        yield HealthProgress(
            events, covered / total if total else 1.0, read_at, tuple(sorted(done)), counted
        )
    yield combine(brand, campaign, start, end, limits, reports)


def _within(recorded: Recorded, target: dict[int, int]) -> bool:
    """Whether the view had applied ``recorded`` when the read began."""
    return recorded.position.offset < target.get(recorded.position.partition, 0)
