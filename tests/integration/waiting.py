"""Waiting for a view to apply a token, by polling its positions: for tests.

The service itself waits through ``services.freshness.FreshnessGuard``, which
needs a running guard; a test that drives a projector and a view directly waits
with ``wait_for``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ledger.ports import ConsentView, ConsistencyToken, EventLog, Stream


async def wait_for(
    view: ConsentView,
    token: ConsistencyToken,
    timeout: float,
    *,
    interval: float = 0.02,
    clock: Callable[[], float] | None = None,
) -> bool:
    """True once ``view`` has applied everything ``token`` names; False after ``timeout``
    seconds of ``clock`` (the loop's unless given)."""
    now = clock or asyncio.get_running_loop().time
    deadline = now() + timeout
    wanted: dict[Stream, dict[int, int]] = {}
    for (stream, partition), offset in token.offsets.items():
        wanted.setdefault(stream, {})[partition] = offset
    while True:
        if await _has_applied(view, wanted):
            return True
        remaining = deadline - now()
        if remaining <= 0:
            return False
        await asyncio.sleep(min(interval, remaining))


async def _has_applied(view: ConsentView, wanted: dict[Stream, dict[int, int]]) -> bool:
    for stream, offsets in wanted.items():
        applied = await view.positions(stream)
        if any(applied.get(p, 0) < offset for p, offset in offsets.items()):
            return False
    return True


async def lag(view: ConsentView, ledger: EventLog, stream: Stream) -> dict[int, int]:
    """Per partition, how many events the ledger holds that the view has not applied."""
    applied = await view.positions(stream)
    ends = await ledger.end_offsets(stream)
    return {p: max(0, end - applied.get(p, 0)) for p, end in sorted(ends.items())}
