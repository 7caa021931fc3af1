"""A bound on how fast one kind of log line can fill the disk.

Anyone who reaches the port can make the service log: a refused token, a bug a
request triggers. ``RepeatLimiter`` stands in front of the process's log handler
and lets through at most ``limit`` lines of one kind (one logging statement of
the code) per ``interval`` seconds; the rest of that interval's lines of the kind
are counted, and then one line says how many were not written. That line comes
with the kind's next line, with any line once its interval is over, or when the
process exits.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

_TEMPLATE = 200
"""How much of a suppressed line's template its summary quotes."""


@dataclass(slots=True)
class _Window:
    start: float
    count: int = 0
    suppressed: int = 0
    name: str = ""
    level: int = logging.INFO
    template: str = ""


class RepeatLimiter(logging.Handler):
    """Hands records to ``target``, at most ``limit`` of one kind per ``interval``."""

    def __init__(
        self,
        target: logging.Handler,
        limit: int,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.target = target
        self._limit = limit
        self._interval = interval
        self._clock = clock
        self._windows: dict[tuple[str, int], _Window] = {}
        self._next_sweep = clock() + interval

    def emit(self, record: logging.LogRecord) -> None:
        # ``handle`` holds this handler's lock: one record at a time, from any thread.
        now = self._clock()
        if now >= self._next_sweep:
            self._sweep(now)
        kind = (record.pathname, record.lineno)
        window = self._windows.get(kind)
        if window is not None and now - window.start >= self._interval:
            self._summarize(kind, window, now)
            window = None
        if window is None:
            window = self._windows[kind] = _Window(now)
        window.count += 1
        if window.count <= self._limit:
            self.target.handle(record)
            return
        window.suppressed += 1
        if window.suppressed == 1:
            window.name, window.level = record.name, record.levelno
            window.template = str(record.msg)[:_TEMPLATE]

    def _sweep(self, now: float) -> None:
        """Summarize every kind whose interval is over, and forget it."""
        self._next_sweep = now + self._interval
        for kind, window in list(self._windows.items()):
            if now - window.start >= self._interval:
                self._summarize(kind, window, now)
                del self._windows[kind]

    def _summarize(self, kind: tuple[str, int], window: _Window, now: float) -> None:
        if not window.suppressed:
            return
        # The lines were held back within the interval, however late this is written.
        elapsed = min(now - window.start, self._interval)
        summary = logging.LogRecord(
            window.name,
            window.level,
            kind[0],
            kind[1],
            "suppressed %d similar lines in %.0f s (at most %d are written per %g s): %s",
            (window.suppressed, elapsed, self._limit, self._interval, window.template),
            None,
        )
        summary.suppressed = window.suppressed  # a field of its own in JSON logs
        window.suppressed = 0
        self.target.handle(summary)

    def flush(self) -> None:
        self.target.flush()

    def close(self) -> None:
        """Write what is still counted: ``logging.shutdown`` closes this handler, at exit,
        before the one it writes to (which it made first)."""
        self.acquire()
        try:
            now = self._clock()
            for kind, window in self._windows.items():
                self._summarize(kind, window, now)
            self._windows.clear()
        finally:
            self.release()
        super().close()


def limited(handler: logging.Handler, limit: int, interval: float) -> logging.Handler:
    """``handler`` behind a ``RepeatLimiter``; ``handler`` itself for ``limit`` 0."""
    return RepeatLimiter(handler, limit, interval) if limit else handler
