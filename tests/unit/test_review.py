"""The review queue (``services.usecases.review``): flagged replies nobody resolved,
in the order the view applied them."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import pytest

from ledger.events import (
    CandidateResolution,
    LedgerEvent,
    Recorded,
    RevocationCandidateResolved,
)
from ledger.ports import Stream
from services.adapters.memory_ledger import InMemoryLedger
from services.adapters.memory_view import InMemoryConsentView
from tests.builders import BRAND, PHONE, at
from tests.conformance.view_suite import flag
from tests.unit.usecase_harness import (
    AUDITOR,
    App,
    ledger_at_now,
    running,
    stop_task,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def applied_in_turn(app: App, events: Sequence[LedgerEvent]) -> list[Recorded]:
    """Append ``events`` to the ledger, then apply them to the view one at a time in
    the order given (the projector stopped), so the queue's order is the test's.
    Through the ledger, not to the view alone: the freshness guard fails reads
    closed on a view ahead of its ledger as soon as it looks again, which on a
    loaded machine it does between the write and the read."""
    recorded = await app.ledger.append(events)
    for r in recorded:
        await app.view.apply(Stream.SUBSCRIBERS, [r])
    return recorded


async def test_the_review_queue_pages_past_no_reply_applied_late():
    """A reply recorded before one already listed, from a partition the projector
    applied late, is on the next page: the queue is in the order replies were applied.
    (Ordered by recorded time, it had sorted before the page's last and been skipped.)"""

    # Each partition's records carry their own clock's time (Kafka's leaders'): the
    # reply applied second was stamped before the first.
    stamps = iter([at(2), at(1)])
    ledger = InMemoryLedger(partitions=4, clock=lambda: next(stamps))
    async with running(ledger=ledger) as (app, projector):
        await stop_task(projector)
        (later,) = await applied_in_turn(app, [flag(PHONE, BRAND, at(2))])
        (first,) = (await app.review.revocation_candidates(BRAND, reader=AUDITOR)).candidates
        assert first.candidate.event_id == str(later.event.event_id)

        # Another partition, which the projector reached late.
        (earlier,) = await applied_in_turn(app, [flag("+14155552672", BRAND, at(1))])
        assert earlier.position.partition != later.position.partition
        assert earlier.recorded_at < later.recorded_at
        (following,) = (
            await app.review.revocation_candidates(BRAND, after=first.position, reader=AUDITOR)
        ).candidates
        assert following.candidate.event_id == str(earlier.event.event_id)
        assert [
            q.candidate
            for q in (await app.review.revocation_candidates(BRAND, reader=AUDITOR)).candidates
        ] == [
            first.candidate,
            following.candidate,
        ]


class UnawareView(InMemoryConsentView):
    """A view that cannot tell which replies are resolved (rows from before the
    marker existed, say): it lists them all."""

    async def flagged(self, brand: str, after: int = 0, limit: int | None = None) -> list[Any]:
        queue = [f for f in self._tables.flagged.get(brand, []) if f.position > after]
        return queue[:limit]


@pytest.mark.parametrize("view_type", [InMemoryConsentView, UnawareView])
async def test_the_review_queue_reads_in_chunks_and_the_fold_decides(monkeypatch, view_type):
    monkeypatch.setattr("services.usecases.review.QUEUE_CHUNK", 2)
    replies = [flag(f"+1415555{2900 + i:04d}", BRAND, at(i)) for i in range(7)]
    resolutions = [
        RevocationCandidateResolved(
            event_id=uuid.uuid4(),
            occurred_at=at(10),
            phone=replies[i].phone,
            brand=BRAND,
            candidate_event_id=replies[i].event_id,
            resolution=CandidateResolution.DISMISSED,
        )
        for i in (0, 1, 2, 5)
    ]
    async with running(ledger=ledger_at_now(), view=view_type()) as (app, projector):
        await stop_task(projector)
        await applied_in_turn(app, [*replies, *resolutions])
        open_ = [str(replies[i].event_id) for i in (3, 4, 6)]

        everything = (await app.review.revocation_candidates(BRAND, reader=AUDITOR)).candidates
        assert [q.candidate.event_id for q in everything] == open_
        page = (await app.review.revocation_candidates(BRAND, limit=2, reader=AUDITOR)).candidates
        assert page == everything[:2]
        rest = (
            await app.review.revocation_candidates(
                BRAND, after=page[-1].position, limit=2, reader=AUDITOR
            )
        ).candidates
        assert rest == everything[2:]


async def test_a_page_of_the_review_queue_reads_only_as_many_replies_as_it_shows():
    asked: list[int | None] = []

    class CountingView(InMemoryConsentView):
        async def flagged(self, brand: str, after: int = 0, limit: int | None = None) -> Any:
            asked.append(limit)
            return await super().flagged(brand, after, limit)

    replies = [flag(f"+1415555{2950 + i:04d}", BRAND, at(i)) for i in range(30)]
    async with running(ledger=ledger_at_now(), view=CountingView()) as (app, projector):
        await stop_task(projector)
        await applied_in_turn(app, replies)
        page = (await app.review.revocation_candidates(BRAND, limit=11, reader=AUDITOR)).candidates
    assert [q.candidate.event_id for q in page] == [str(r.event_id) for r in replies[:11]]
    assert asked == [11]
