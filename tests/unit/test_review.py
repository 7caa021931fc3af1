"""The review queue (``services.usecases.review``): flagged replies nobody resolved,
in the order the view applied them."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import pytest

from ledger.events import (
    CandidateResolution,
    LedgerPosition,
    Recorded,
    RevocationCandidateResolved,
)
from ledger.ports import Stream
from services.adapters.memory_view import InMemoryConsentView
from tests.builders import BRAND, PHONE, at
from tests.conformance.view_suite import Positions, flag
from tests.unit.usecase_harness import (
    AUDITOR,
    running,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_the_review_queue_pages_past_no_reply_applied_late():
    """A reply recorded before one already listed, from a partition the projector
    applied late, is on the next page: the queue is in the order replies were applied.
    (Ordered by recorded time, it had sorted before the page's last and been skipped.)"""

    def flagged(phone: str, partition: int, recorded_at: datetime) -> Recorded:
        return Recorded(flag(phone, BRAND, recorded_at), LedgerPosition(partition, 0), recorded_at)

    async with running() as (app, _):
        later, earlier = flagged(PHONE, 0, at(2)), flagged("+14155552672", 1, at(1))
        await app.view.apply(Stream.SUBSCRIBERS, [later])
        (first,) = (await app.review.revocation_candidates(BRAND, reader=AUDITOR)).candidates
        assert first.candidate.event_id == str(later.event.event_id)

        await app.view.apply(Stream.SUBSCRIBERS, [earlier])  # its partition was behind
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
    pos = Positions(partitions=4)
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
    async with running(view=view_type()) as (app, _):
        for batch in (replies, resolutions):
            for recorded in pos.record(batch):
                await app.view.apply(Stream.SUBSCRIBERS, [recorded])
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
    async with running(view=CountingView()) as (app, _):
        await app.view.apply(Stream.SUBSCRIBERS, Positions(partitions=4).record(replies))
        page = (await app.review.revocation_candidates(BRAND, limit=11, reader=AUDITOR)).candidates
    assert [q.candidate.event_id for q in page] == [str(r.event_id) for r in replies[:11]]
    assert asked == [11]
