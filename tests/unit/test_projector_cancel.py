"""A rebuild stops when it is asked to (Ctrl-C cancels its task), even when the read
it was waiting on finished anyway and dropped the cancellation, as Python 3.11's
``asyncio.wait_for`` can."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from ledger.ports import Recorded, Stream
from services.adapters.memory_ledger import InMemoryLedger
from services.adapters.memory_view import InMemoryConsentView
from services.projector import Projector
from tests.conformance.view_suite import generate_events

pytestmark = pytest.mark.asyncio(loop_scope="session")


class SwallowingLedger(InMemoryLedger):
    """Each read waits for ``release``; a cancellation that lands meanwhile is
    dropped and the batch returned, as if both arrived together."""

    def __init__(self) -> None:
        super().__init__(partitions=1)
        self.reading = asyncio.Event()
        self.release = asyncio.Event()

    async def read(
        self, stream: Stream, partition: int, start: int, limit: int = 1000
    ) -> list[Recorded]:
        batch = await super().read(stream, partition, start, limit)
        self.reading.set()
        with contextlib.suppress(asyncio.CancelledError):  # the cancellation is lost
            await self.release.wait()
        return batch


async def test_a_cancellation_a_read_dropped_still_stops_the_catch_up():
    ledger = SwallowingLedger()
    await ledger.append(generate_events(50, phones=5, brands=1, campaigns=1, seed=3))
    view = InMemoryConsentView()
    task = asyncio.create_task(Projector(ledger, view).catch_up(batch_size=10))
    await ledger.reading.wait()
    task.cancel()
    ledger.release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    for stream in Stream:  # not one batch applied after the request to stop
        assert sum((await view.positions(stream)).values()) == 0
