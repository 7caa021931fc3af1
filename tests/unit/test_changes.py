"""The change stream's loop (services.changes.watch) on the in-memory view."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from datetime import timedelta
from typing import Any

from ledger.events import Recorded
from ledger.ports import ChangesPage, ConsistencyToken, Offsets, Stream
from services import changes
from services.adapters.memory_view import InMemoryConsentView
from tests.conformance.view_suite import T0, Positions, grant, sent


class CountingView(InMemoryConsentView):
    def __init__(self) -> None:
        super().__init__()
        self.read = 0
        self.asked: list[dict[int, int]] = []

    async def changes(
        self,
        brand: str,
        after: Offsets,
        limit: int,
        *,
        campaign: str | None = None,
        types: Collection[str] | None = None,
    ) -> ChangesPage:
        self.asked.append(dict(after))
        page = await super().changes(brand, after, limit, campaign=campaign, types=types)
        self.read += len(page.events)
        return page


class Guard:
    """The freshness guard's applied token, as the view's positions."""

    def __init__(self, view: InMemoryConsentView) -> None:
        self.view = view

    def applied_token(self) -> ConsistencyToken:
        positions = self.view._tables.positions[Stream.SUBSCRIBERS]
        return ConsistencyToken({(Stream.SUBSCRIBERS, p): o for p, o in positions.items()})


def grants(pos: Positions, n: int, start: int = 0) -> list[Recorded]:
    return pos.record(
        grant(f"+1415555{i:04d}", "acme", "deals", T0 + timedelta(seconds=i))
        for i in range(start, start + n)
    )


async def test_a_page_is_read_only_once_the_last_was_taken() -> None:
    view, pos = CountingView(), Positions()
    await view.apply(Stream.SUBSCRIBERS, grants(pos, 250))
    stream = changes.watch(view, Guard(view), "acme", {}, page=100)  # type: ignore[arg-type]
    for _ in range(100):
        await anext(stream)
    assert view.read == 100  # however many wait, one page is held
    await anext(stream)
    assert view.read == 200
    await stream.aclose()


async def test_a_caught_up_watcher_follows_what_is_applied_next(monkeypatch: Any) -> None:
    monkeypatch.setattr(changes, "IDLE_POLL", 0.01)
    view, pos = CountingView(), Positions()
    first = grants(pos, 3)
    await view.apply(Stream.SUBSCRIBERS, first)
    stream = changes.watch(view, Guard(view), "acme", {})  # type: ignore[arg-type]
    got = [await anext(stream) for _ in range(3)]
    assert [r for r, _ in got] == sorted(first, key=lambda r: r.recorded_at)
    waiting = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    message = pos.record([sent("+14155550010", "acme", "deals", T0)])
    later = grants(pos, 1, start=10)  # the same number: after the message, one partition
    await view.apply(Stream.SUBSCRIBERS, [*message, *later])
    recorded, token = await asyncio.wait_for(waiting, 1)
    assert recorded == later[0]  # the message sent is no change of consent
    assert changes.resume_after(token)[recorded.position.partition] == recorded.position.offset + 1
    await stream.aclose()


async def test_a_caught_up_watcher_does_not_look_through_unwanted_events_again(
    monkeypatch: Any,
) -> None:
    monkeypatch.setattr(changes, "REQUERY", 0.01)
    monkeypatch.setattr(changes, "IDLE_POLL", 0.01)
    view, pos = CountingView(), Positions()
    number = "+14155550001"
    first = pos.record([grant(number, "acme", "deals", T0)])
    messages = pos.record(sent(number, "acme", "deals", T0) for _ in range(50))
    await view.apply(Stream.SUBSCRIBERS, [*first, *messages])
    stream = changes.watch(view, Guard(view), "acme", {})  # type: ignore[arg-type]
    recorded, token = await anext(stream)
    assert recorded == first[0]
    # the token of the page's last change is past the messages after it
    assert changes.resume_after(token) == await view.positions(Stream.SUBSCRIBERS)
    waiting = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.1)
    waiting.cancel()
    assert view.asked[-1] == await view.positions(Stream.SUBSCRIBERS)
