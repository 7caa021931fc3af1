"""ReadBatcher: concurrent reads share queries, and each gets only its own answer."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from ledger.digest import Digest
from ledger.ports import Stream
from services.adapters.memory_view import InMemoryConsentView
from services.read_batcher import ReadBatcher
from tests.conformance.view_suite import T0, Positions, grant

PHONES = [f"+1415555{n:04d}" for n in range(100, 140)]


class RecordingView(InMemoryConsentView):
    """Records each digests query; can hold queries until released, or fail them."""

    def __init__(self) -> None:
        super().__init__()
        self.queries: list[tuple[str, list[str]]] = []
        self.gate: asyncio.Event | None = None
        self.error: Exception | None = None

    async def digests(self, brand: str, phones: Sequence[str]) -> dict[str, Digest]:
        self.queries.append((brand, list(phones)))
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return await super().digests(brand, phones)


@pytest.fixture
async def view() -> RecordingView:
    view = RecordingView()
    pos = Positions()
    await view.apply(
        Stream.SUBSCRIBERS,
        pos.record(
            [grant(p, "acme", "deals", T0) for p in PHONES[:30]]
            + [grant(p, "globex", "deals", T0) for p in PHONES[20:]]
        ),
    )
    return view


async def test_an_idle_batcher_reads_at_once(view):
    batcher = ReadBatcher(view)

    answer = await batcher.digests("acme", [PHONES[0]])

    assert view.queries == [("acme", [PHONES[0]])]
    assert answer == await InMemoryConsentView.digests(view, "acme", [PHONES[0]])


async def test_reads_that_wait_share_one_query_and_get_their_own_answers(view):
    batcher = ReadBatcher(view, max_in_flight=2)
    view.gate = asyncio.Event()
    asked = [[p] for p in PHONES[:10]] + [[PHONES[35]]]  # the last is unknown to acme
    reads = [asyncio.ensure_future(batcher.digests("acme", phones)) for phones in asked]
    await asyncio.sleep(0.01)
    view.gate.set()

    answers = await asyncio.gather(*reads)

    assert (
        view.queries
        == [
            ("acme", [PHONES[0]]),  # the two slots
            ("acme", [PHONES[1]]),
            ("acme", sorted([*PHONES[2:10], PHONES[35]])),  # everything that waited, at once
        ]
    )
    assert [sorted(a) for a in answers] == [[p] for p in PHONES[:10]] + [[]]
    expected = await InMemoryConsentView.digests(view, "acme", PHONES[:10])
    assert {p: d for a in answers for p, d in a.items()} == expected


async def test_reads_asked_while_every_slot_is_busy_wait_and_go_together(view):
    batcher = ReadBatcher(view, max_in_flight=1)
    view.gate = asyncio.Event()
    first = asyncio.ensure_future(batcher.digests("acme", [PHONES[0]]))
    await asyncio.sleep(0.01)
    assert view.queries == [("acme", [PHONES[0]])]  # in flight, holding the only slot

    later = [asyncio.ensure_future(batcher.digests("acme", [p])) for p in PHONES[1:6]]
    await asyncio.sleep(0.01)
    assert len(view.queries) == 1  # nothing else starts while the slot is taken
    view.gate.set()
    await asyncio.gather(first, *later)

    assert view.queries == [("acme", [PHONES[0]]), ("acme", sorted(PHONES[1:6]))]
    assert [list(f.result()) for f in later] == [[p] for p in PHONES[1:6]]


async def test_brands_never_share_a_query(view):
    batcher = ReadBatcher(view)

    acme, globex = await asyncio.gather(
        batcher.digests("acme", [PHONES[25]]), batcher.digests("globex", [PHONES[25]])
    )

    assert sorted(view.queries) == [("acme", [PHONES[25]]), ("globex", [PHONES[25]])]
    assert acme[PHONES[25]].brand == "acme" and globex[PHONES[25]].brand == "globex"


async def test_a_failed_query_fails_every_read_that_shared_it(view):
    batcher = ReadBatcher(view, max_in_flight=1)
    view.gate = asyncio.Event()
    view.error = RuntimeError("the database fell over")
    reads = [asyncio.ensure_future(batcher.digests("acme", [p])) for p in PHONES[:4]]
    await asyncio.sleep(0.01)
    view.gate.set()

    results: list[Any] = await asyncio.gather(*reads, return_exceptions=True)

    assert len(view.queries) == 2  # the one in the slot, then the three that waited
    assert [type(r) for r in results] == [RuntimeError] * 4
    view.gate = None
    view.error = None
    assert list(await batcher.digests("acme", [PHONES[0]])) == [PHONES[0]]  # and it recovers


async def test_a_caller_that_gives_up_does_not_spoil_the_others(view):
    batcher = ReadBatcher(view, max_in_flight=1)
    view.gate = asyncio.Event()
    reads = [asyncio.ensure_future(batcher.digests("acme", [p])) for p in PHONES[:3]]
    await asyncio.sleep(0.01)
    reads[1].cancel()  # waiting to share a query with reads[2]
    view.gate.set()

    results = await asyncio.gather(*reads, return_exceptions=True)

    assert isinstance(results[1], asyncio.CancelledError)
    assert list(results[0]) == [PHONES[0]] and list(results[2]) == [PHONES[2]]
    assert len(view.queries) == 2


async def test_a_big_read_goes_straight_to_the_view(view):
    batcher = ReadBatcher(view, bypass_at=5)
    view.gate = asyncio.Event()
    small = asyncio.ensure_future(batcher.digests("acme", [PHONES[0]]))
    await asyncio.sleep(0.01)
    view.gate.set()

    big = await batcher.digests("acme", PHONES[:8])
    await small

    assert ("acme", PHONES[:8]) in view.queries  # alone, as asked
    assert sorted(big) == PHONES[:8]
    assert len(view.queries) == 2
