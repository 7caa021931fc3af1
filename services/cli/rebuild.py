"""``consent-ledger rebuild``: re-fold the projections from the ledger, with a progress
line on standard error (share done, events, rate, time left). Interrupted (Ctrl-C, a
killed pod), the same command run again resumes where it stopped
(``services.projector.rebuild``). With ``--workers N``, N processes fold the
partitions between them (the fold is Python: one core each)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TextIO

from ledger.ports import Stream
from services.progress import Progress, ProgressLine
from services.tuning import PROJECTION_YOUNG_THRESHOLD, settle_collector

if TYPE_CHECKING:
    from services.settings import Settings

INTERRUPTED = (
    "rebuild interrupted; what it applied is kept: run `consent-ledger rebuild` again to resume it"
)


def add_parser(command: Any, embedded_help: str) -> None:
    rebuild = command("rebuild", "re-fold the projections from the ledger")
    rebuild.add_argument("--embedded", action="store_true", help=embedded_help)
    rebuild.add_argument(
        "--batch-size",
        type=int,
        default=5000,
        metavar="EVENTS",
        help="events applied per transaction (5000); an interrupted rebuild keeps every "
        "batch it committed, and the next `rebuild` resumes after them",
    )
    rebuild.add_argument("--quiet", action="store_true", help="no progress line on standard error")
    rebuild.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="processes that fold the ledger's partitions between them (1); the fold "
        "takes one core each, so up to the cores free and the subscriber partitions",
    )


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse option values the parser cannot (``parser.error`` exits 2)."""
    if args.batch_size < 1:
        parser.error("--batch-size must be 1 or more events")
    if args.workers < 1:
        parser.error("--workers must be 1 or more")


class Stopped(Exception):
    """The rebuild was stopped by SIGTERM; what it applied is kept."""


async def run(settings: Settings, args: argparse.Namespace) -> None:
    """What ``consent-ledger rebuild`` runs, with its parsed arguments."""
    async with _stopped_by_sigterm():
        await refold(
            settings,
            batch_size=args.batch_size,
            out=None if args.quiet else sys.stderr,
            workers=args.workers,
        )


@contextlib.asynccontextmanager
async def _stopped_by_sigterm() -> AsyncIterator[None]:
    """Turn SIGTERM into a cancellation of the running rebuild, raised as ``Stopped``.

    A ``KeyboardInterrupt`` raised by a Python signal handler lands wherever the
    interpreter is, possibly inside the database driver's callback, which can leave a
    connection that the cleanup then waits on forever. The loop's own handler runs
    between callbacks, so the rebuild unwinds as a cancelled task does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    before = signal.getsignal(signal.SIGTERM)
    stopped = False

    def stop() -> None:
        nonlocal stopped
        stopped = True
        task.cancel()

    loop.add_signal_handler(signal.SIGTERM, stop)
    try:
        yield
    except asyncio.CancelledError:
        if not stopped:
            raise
        raise Stopped from None
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, before)  # the loop's removal leaves SIG_DFL


async def refold(
    settings: Settings, *, batch_size: int, out: TextIO | None, workers: int = 1
) -> None:
    """Rebuild the view of ``settings`` from its ledger; progress to ``out`` (None:
    quiet), ``workers`` processes. Prints what it did on standard output."""
    import asyncpg

    from services.adapters.migrations import migrate
    from services.adapters.postgres_bounds import close_pool
    from services.adapters.postgres_view import PostgresConsentView
    from services.bootstrap import Runtime, start_embedded_postgres
    from services.projector import rebuild

    runtime = Runtime(settings)
    settle_collector(PROJECTION_YOUNG_THRESHOLD)  # the fold is all small objects
    dsn = settings.postgres_dsn or start_embedded_postgres(settings.data_dir)[0]
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    runtime.pool = pool
    progress = None if out is None else ProgressLine(out)
    try:
        await migrate(pool)
        ledger = await runtime._build_ledger(dsn)
        try:
            view = PostgresConsentView(pool)
            if workers > 1:
                count = await _rebuild_in_processes(
                    settings, dsn, ledger, view, batch_size, workers, progress
                )
            else:
                count = await rebuild(ledger, view, batch_size=batch_size, progress=progress)
        finally:
            if progress is not None:
                progress.end()
            await ledger.close()
        resumed = progress is not None and progress.last is not None and progress.last.resumed
        note = " (resumed: the events before them were applied by the interrupted run)"
        print(f"rebuilt the projections from {count} ledger events" + (note if resumed else ""))
    finally:
        await close_pool(pool)


async def _rebuild_in_processes(
    settings: Settings,
    dsn: str,
    ledger: Any,
    view: Any,
    batch_size: int,
    workers: int,
    progress: Callable[[Progress], None] | None,
    poll: float = 0.5,
) -> int:
    """``services.projector.rebuild`` with ``workers`` processes, each catching up its
    share of the partitions; the progress is read from the positions they commit."""
    resumed = await view.begin_rebuild()
    ends = {stream: await ledger.end_offsets(stream) for stream in Stream}
    total = sum(sum(e.values()) for e in ends.values())

    async def applied() -> int:
        done = 0
        for stream in Stream:
            positions = await view.positions(stream)
            done += sum(min(positions.get(p, 0), end) for p, end in ends[stream].items())
        return done

    first = await applied()
    began = time.monotonic()
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_worker,
            args=(settings, dsn, batch_size, share, workers, results, os.getpid()),
            name=f"rebuild-{share}",
            daemon=True,
        )
        for share in range(workers)
    ]
    try:
        for proc in procs:
            proc.start()
        while True:
            done = await applied()
            if progress is not None:
                progress(Progress(done, total, done - first, time.monotonic() - began, resumed))
            if not any(proc.is_alive() for proc in procs):
                break
            await asyncio.sleep(poll)
        failed = [proc for proc in procs if proc.exitcode != 0]
        if failed:
            raise RuntimeError(
                f"rebuild worker {failed[0].name} failed (exit code {failed[0].exitcode}); "
                "what it applied is kept: run `consent-ledger rebuild` again to resume"
            )
        count = sum(int(results.get(timeout=10)) for _ in procs)
    finally:
        for proc in procs:
            if proc.is_alive():
                # SIGKILL, not SIGTERM: a stopped or stuck worker must not hold the
                # rebuild's end; its batch under way rolls back with its positions.
                proc.kill()
            proc.join()
    await view.finish_rebuild()
    return count


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with(parent: int) -> None:
    """Have the kernel kill this process when ``parent`` ends, however it ends.

    A rebuild stopped by SIGTERM or SIGKILL runs no ``finally``: its workers would
    otherwise write on unseen, under a rebuild run again and past the operator who
    stopped it. A batch cut off is rolled back with its positions, as for a killed
    rebuild."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # it ended before the line above took effect
        os._exit(1)


def _worker(
    settings: Settings,
    dsn: str,
    batch_size: int,
    share: int,
    shares: int,
    results: Any,
    parent: int,
) -> None:
    _die_with(parent)
    results.put(asyncio.run(_catch_up_share(settings, dsn, batch_size, share, shares)))


async def _catch_up_share(
    settings: Settings, dsn: str, batch_size: int, share: int, shares: int
) -> int:
    import asyncpg

    from services.adapters.postgres_bounds import close_pool
    from services.adapters.postgres_view import PostgresConsentView
    from services.bootstrap import Runtime
    from services.projector import Projector

    runtime = Runtime(settings)
    settle_collector(PROJECTION_YOUNG_THRESHOLD)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    runtime.pool = pool
    try:
        ledger = await runtime._build_ledger(dsn)
        try:
            return await Projector(ledger, PostgresConsentView(pool)).catch_up(
                batch_size=batch_size, share=share, shares=shares
            )
        finally:
            await ledger.close()
    finally:
        await close_pool(pool)
