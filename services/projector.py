"""The projection loop: folds the ledger into the read model; rebuild (with its
progress, resumed after an interruption); supervise.

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
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from ledger.events import Recorded
from ledger.ports import ConsentView, EventLog, Stream, ViewRebuilt, advance_known
from services.progress import Progress

log = logging.getLogger(__name__)


async def supervise(
    run: Callable[[], Awaitable[None]],
    *,
    name: str,
    failed: Callable[[], None] = lambda: None,
    running: Callable[[bool], Awaitable[None]] | None = None,
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
    a projector follows the ledger forever. ``running``, if given, is told True as
    each run starts and False as it fails, so that a health check can say NOT_SERVING
    while a failed run waits for its next start.
    """
    pause = first_pause
    while True:
        started = monotonic()
        if running is not None:
            await running(True)
        try:
            await run()
            problem: BaseException = RuntimeError(f"{name} returned; it should run forever")
        except Exception as exc:  # cancellation is a BaseException: it ends the loop
            problem = exc
        failed()
        if running is not None:
            await running(False)
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
        while True:
            start = await self._view.positions(stream)
            known = dict(start)
            batches = self._ledger.subscribe(stream, start, poll_timeout=self._poll_timeout)
            try:
                async for batch in batches:
                    if batch:
                        await self._view.apply(stream, batch, known=known)
                        advance_known(known, batch)
                return
            except ViewRebuilt:
                # A rebuild began beneath this follower: what it would apply next
                # lies past the rebuild's place, and the rebuild would skip the gap.
                log.info("the view was rebuilt: following the %s stream again", stream.value)
            finally:
                close = getattr(batches, "aclose", None)
                if close is not None:
                    await close()

    async def catch_up(
        self,
        *,
        batch_size: int = 5000,
        progress: Callable[[Progress], None] | None = None,
        resumed: bool = False,
        share: int = 0,
        shares: int = 1,
    ) -> int:
        """Apply everything the ledger holds now and return; the number of events read.

        ``progress`` is called before the first batch and after each: how far the
        view is along the ledger's offsets as they stood when this began. With
        ``shares`` above 1, only the partitions whose number leaves ``share`` when
        divided by ``shares``: that many processes catch up together, each on its
        own partitions, whose positions' locks never meet."""
        ends = {
            stream: {
                p: end
                for p, end in (await self._ledger.end_offsets(stream)).items()
                if p % shares == share
            }
            for stream in self._streams
        }
        applied = {stream: await self._view.positions(stream) for stream in self._streams}
        total = sum(sum(e.values()) for e in ends.values())
        done = sum(
            min(applied[stream].get(p, 0), end)
            for stream in self._streams
            for p, end in ends[stream].items()
        )
        began, count = time.monotonic(), 0

        def report() -> None:
            if progress is not None:
                progress(Progress(done, total, count, time.monotonic() - began, resumed))

        report()
        for stream in self._streams:
            for partition, end in sorted(ends[stream].items()):
                offset = applied[stream].get(partition, 0)

                def read(
                    start: int, stream: Stream = stream, p: int = partition, end: int = end
                ) -> asyncio.Future[list[Recorded]]:
                    return asyncio.ensure_future(
                        self._ledger.read(stream, p, start, min(batch_size, end - start))
                    )

                # One batch read ahead: the next is fetched and decoded while
                # PostgreSQL writes this one, instead of after it.
                pending = read(offset) if offset < end else None
                while pending is not None:
                    batch = await pending
                    if _cancel_swallowed():
                        await _abandon(pending)
                        raise asyncio.CancelledError
                    if not batch:
                        break
                    after = batch[-1].position.offset + 1
                    pending = read(after) if after < end else None
                    try:
                        await self._view.apply(stream, batch)
                    except BaseException:
                        await _abandon(pending)
                        raise
                    count += len(batch)
                    done += min(after, end) - offset  # offsets, not records: Kafka's skip some
                    offset = after
                    report()
        return count


def _cancel_swallowed() -> bool:
    """Whether this task was asked to stop while it waited for a read that finished
    anyway: Python 3.11's ``asyncio.wait_for`` (the Kafka read's bound) can return a
    result that lands with the cancellation and drop the cancellation, and Ctrl-C
    on a rebuild must still stop it."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _abandon(read: asyncio.Future[list[Recorded]] | None) -> None:
    """Cancel a read ahead whose batch will not be applied, and wait for it to end."""
    if read is None:
        return
    read.cancel()
    with contextlib.suppress(BaseException):
        await read


async def rebuild(
    ledger: EventLog,
    view: ConsentView,
    *,
    batch_size: int = 5000,
    progress: Callable[[Progress], None] | None = None,
) -> int:
    """Empty the view and fold the whole ledger again from offset 0; or, when an
    earlier rebuild of the view was interrupted, fold on from where it stopped
    (``ConsentView.begin_rebuild``): each batch commits its rows with its
    positions, so what the interrupted run committed is exactly what it applied.

    It may run while projectors write to ``view`` (they take turns per partition).
    Returns the number of events this run read; ``progress`` as ``catch_up``'s.
    """
    resumed = await view.begin_rebuild()
    if resumed:
        log.info("an earlier rebuild was interrupted: resuming from its stored positions")
    count = await Projector(ledger, view).catch_up(
        batch_size=batch_size, progress=progress, resumed=resumed
    )
    await view.finish_rebuild()
    return count
