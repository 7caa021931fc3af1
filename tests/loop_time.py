"""Running a test on an event loop whose clock is its own: loop time moves only
when every task waits, and then straight to the next timer.

A test that bounds waits and sleeps in loop time then means the same on any
machine: a loaded one makes the run slower, never a bound run out early. Code
under test reads this clock through ``asyncio.get_running_loop().time`` (inject
it where the code takes a ``monotonic``).

The standard loop does all of it but the jump; only the clock and the wait for
I/O are replaced. Tests that need real I/O (a broker, a database) do not belong
here: their peers answer in real time, which this clock does not count.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable, Coroutine
from typing import Any

_TICK = 1e-9


class _LoopTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self.now = 0.0
        super().__init__(selector=_JumpingSelector(self))

    def time(self) -> float:
        # Each reading a nanosecond after the last, as on a real clock: two readings
        # with work between them (a write acknowledged) are never the same instant.
        self.now += _TICK
        return self.now


class _JumpingSelector(selectors.DefaultSelector):
    """Answers what is ready at once; when nothing is and the loop would wait for
    its next timer, moves the loop's clock to that timer instead of waiting."""

    def __init__(self, loop: _LoopTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:  # no timer at all: only real I/O (a thread's wake-up) can come
            return super().select(None)
        self._loop.now += timeout
        return []


def in_loop_time(
    test: Callable[[], Coroutine[Any, Any, None]],
) -> Callable[[], None]:
    """``test`` (an async test without fixtures) run on a loop of its own, in loop time."""

    def run() -> None:
        with asyncio.Runner(loop_factory=_LoopTimeLoop) as runner:
            runner.run(test())

    # Named as the test, but no ``__wrapped__``: pytest-asyncio must see a plain test.
    run.__name__, run.__qualname__, run.__doc__ = test.__name__, test.__qualname__, test.__doc__
    return run
