"""The progress line of the long commands (``rebuild``, ``audit sweep``, ``export``,
``verify``) and the resume state they keep, in one place so that each shows the same
thing and resumes the same way.

``ProgressLine`` draws a ``Progress`` on standard error: redrawn in place on a
terminal, one line every few seconds in a log. ``ResumeState`` is a JSON file
replaced atomically (written beside, fsynced, renamed), so an interruption at any
moment leaves either the previous state or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO


@dataclass(frozen=True)
class Progress:
    """Where a long command stands."""

    done: int
    """Events done, those of an interrupted run that this one resumed included."""
    total: int | None
    """Events to do in all; None when it cannot be known before the end."""
    read: int
    """Events this run read (a resumed run's ``done`` includes the earlier run's)."""
    seconds: float
    """Since this run began."""
    resumed: bool = False
    """Whether this run resumed an interrupted one."""
    fraction: float | None = None
    """The share done when it is known otherwise than as ``done / total`` (a sweep
    knows the share of the ledger's offsets it has covered, not its events' total)."""
    note: str = ""
    """Shown at the end of the line (a sweep's findings so far)."""

    @property
    def share(self) -> float | None:
        """0 to 1; None when neither a total nor a fraction is known."""
        if self.fraction is not None:
            return self.fraction
        if self.total:
            return self.done / self.total
        return 1.0 if self.total == 0 else None

    @property
    def rate(self) -> float:
        """Events a second this run."""
        return self.read / self.seconds if self.seconds > 0 else 0.0

    @property
    def left(self) -> float | None:
        """Seconds to the end at this run's rate; None before it has one, or when the
        end cannot be known."""
        rate = self.rate
        if rate <= 0:
            return None
        if self.total is not None:
            return max(self.total - self.done, 0) / rate
        if self.fraction:
            return self.seconds * (1 - self.fraction) / self.fraction
        return None


def wanted(out: TextIO, asked: bool) -> bool:
    """Whether to show progress on ``out``: on a terminal, or when asked (--progress)."""
    return asked or out.isatty()


class ProgressLine:
    """Draws a ``Progress``: redrawn in place on a terminal (at most every
    ``tty_every`` seconds), else one line every ``log_every`` seconds (a pod's log)."""

    def __init__(
        self,
        out: TextIO,
        label: str = "rebuild",
        *,
        tty_every: float = 0.2,
        log_every: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.out = out
        self.label = label
        self.tty = out.isatty()
        self.every = tty_every if self.tty else log_every
        self.clock = clock
        self.last: Progress | None = None
        self.shown_at: float | None = None
        self.pending = False
        self.drawn = False

    def line(self, p: Progress) -> str:
        left = "--:--" if p.left is None else clock_text(p.left)
        note = f"  {p.note}" if p.note else ""
        share = p.share
        if share is None:
            return f"{self.label} {p.done:,} events  {p.rate:,.0f}/s{note}"
        width = 30
        filled = int(width * min(max(share, 0.0), 1.0))
        count = f"{p.done:,} events" if p.total is None else f"{p.done:,} of {p.total:,} events"
        return (
            f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {share:6.1%}  "
            f"{count}  {p.rate:,.0f}/s  {left} left{note}"
        )

    def __call__(self, p: Progress) -> None:
        if self.last is None and p.resumed:
            where = f"{p.done:,}" if p.total is None else f"{p.done:,} of {p.total:,}"
            self.out.write(f"resuming an interrupted {self.label} at {where} events\n")
        self.last = p
        now = self.clock()
        if self.shown_at is not None and now - self.shown_at < self.every:
            self.pending = True
            return
        self._show(p)
        self.shown_at = now

    def _show(self, p: Progress) -> None:
        self.pending = False
        if self.tty:
            self.out.write("\r" + self.line(p))
            self.drawn = True
        else:
            self.out.write(self.line(p) + "\n")
        self.out.flush()

    def end(self) -> None:
        """Show the last state if it was not shown, and end the line."""
        if self.last is None:
            return
        if self.pending:
            self._show(self.last)
        self.interrupt()

    def interrupt(self) -> None:
        """End a line drawn in place, so that other output starts on its own line."""
        if self.drawn:
            self.out.write("\n")
            self.out.flush()
            self.drawn = False
            self.shown_at = None


def clock_text(seconds: float) -> str:
    """``mm:ss``, or ``h:mm:ss`` from an hour."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class ResumeState:
    """A command's resume state: a JSON object in ``path``, replaced atomically;
    ``due`` says when ``every`` seconds have passed since the last save (the commands
    also save at each partition's end, and on Ctrl-C). Removed when done."""

    def __init__(
        self,
        path: Path,
        *,
        every: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.every = every
        self.clock = clock
        self.saved_at: float | None = None

    def load(self) -> dict[str, Any] | None:
        """The state saved by an interrupted run, or None when there is none."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        state = json.loads(text)
        if not isinstance(state, dict):
            raise ValueError(f"{self.path}: not a resume state")
        return state

    def due(self) -> bool:
        return self.saved_at is None or self.clock() - self.saved_at >= self.every

    def save(self, state: dict[str, Any]) -> None:
        """Replace the file with ``state``: a reader sees the old state or the new one."""
        temp = self.path.with_name(self.path.name + ".tmp")
        with open(temp, "w") as f:
            json.dump(state, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, self.path)
        self.saved_at = self.clock()

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


STOP_AFTER = "CONSENT_TEST_STOP_AFTER_EVENTS"
"""A test hook: the long audit commands act as if interrupted (Ctrl-C) once they
have read this many events (``import``: once the service has answered this many
records), so a test can interrupt one at a known point."""
CRASH = "CONSENT_TEST_CRASH"
"""With the hook above, ``1``: die at once instead (exit status 137, no cleanup,
nothing flushed), as a killed process does; the resume state is what was last
saved before."""


class StopAfter:
    """Counts events and raises ``KeyboardInterrupt`` (or dies) at the test hook's
    number."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        value = env.get(STOP_AFTER, "")
        self.limit = int(value) if value else None
        self.crash = env.get(CRASH, "") == "1"
        self.count = 0

    def tick(self, n: int = 1) -> None:
        self.count += n
        if self.limit is not None and self.count >= self.limit:
            if self.crash:
                os._exit(137)
            raise KeyboardInterrupt
