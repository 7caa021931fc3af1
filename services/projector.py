"""The projection loop: folds the ledger into the read model; rebuild; supervise.

``Projector`` follows any ``EventLog`` through the port (the in-memory and the local
PostgreSQL ledgers); the Kafka deployment's consumer-group projector is an adapter,
``services.adapters.kafka_projector.KafkaProjector``. Both resume from the positions
the view stored with its rows, never from a ledger's own bookkeeping: the view
commits its rows and its positions in one transaction, so a crash between a write
and anything after it replays a batch the view then skips, and nothing is lost or
applied twice. That is also why ``supervise`` may simply start a failed projector
again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from ledger.ports import ConsentView, EventLog, Stream

log = logging.getLogger(__name__)


async def supervise(
    run: Callable[[], Awaitable[None]],
    *,
    name: str,
    failed: Callable[[], None] = lambda: None,
    first_pause: float = 0.5,
    longest_pause: float = 30.0,
    healthy_after: float = 60.0,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> None:
    """Run ``run()`` until cancelled, and start it again whenever it fails.

    A projector fails when PostgreSQL or Kafka does, usually for a moment (a
    failover, a restart); left dead, it would leave every read failing closed
    until someone restarted the process. Each failure is logged with its cause
    and counted through ``failed``; the pause before the next start doubles from
    ``first_pause`` up to ``longest_pause``, and goes back to ``first_pause`` once a
    run has lasted ``healthy_after`` seconds. A run that returns is a failure too:
    a projector follows the ledger forever.
    """
    pause = first_pause
    while True:
        started = monotonic()
        try:
            await run()
            problem: BaseException = RuntimeError(f"{name} returned; it should run forever")
        except Exception as exc:  # cancellation is a BaseException: it ends the loop
            problem = exc
        failed()
        if monotonic() - started >= healthy_after:
            pause = first_pause
        log.error("%s failed; starting it again in %.1f s", name, pause, exc_info=problem)
        await sleep(pause)
        pause = min(pause * 2, longest_pause)


class Projector:
    """Folds ``ledger`` into ``view``, one task per stream, until cancelled."""

    def __init__(
        self,
        ledger: EventLog,
        view: ConsentView,
        *,
        streams: Iterable[Stream] = tuple(Stream),
        poll_timeout: float = 0.5,
    ) -> None:
        self._ledger = ledger
        self._view = view
        self._streams = tuple(streams)
        self._poll_timeout = poll_timeout

    async def run(self) -> None:
        """Follow every stream forever; an error in one stops all (let it restart)."""
        async with asyncio.TaskGroup() as tasks:
            for stream in self._streams:
                tasks.create_task(self.follow(stream), name=f"projector-{stream.value}")

    async def follow(self, stream: Stream) -> None:
        start = await self._view.positions(stream)
        async for batch in self._ledger.subscribe(stream, start, poll_timeout=self._poll_timeout):
            if batch:
                await self._view.apply(stream, batch)

    async def catch_up(self, *, batch_size: int = 5000) -> int:
        """Apply everything the ledger holds now and return; the number of events read."""
        count = 0
        for stream in self._streams:
            applied = await self._view.positions(stream)
            for partition, end in sorted((await self._ledger.end_offsets(stream)).items()):
                offset = applied.get(partition, 0)
                while offset < end:
                    batch = await self._ledger.read(
                        stream, partition, offset, min(batch_size, end - offset)
                    )
                    if not batch:
                        break
                    await self._view.apply(stream, batch)
                    count += len(batch)
                    offset = batch[-1].position.offset + 1
        return count


async def rebuild(ledger: EventLog, view: ConsentView, *, batch_size: int = 5000) -> int:
    """Empty the view and fold the whole ledger again from offset 0.

    Stop the projectors writing to ``view`` first. Returns the number of events read.
    """
    await view.reset()
    return await Projector(ledger, view).catch_up(batch_size=batch_size)
