"""How fresh the read model is, and whether a read may trust it.

The projection lags the ledger by a little. A read that names a consistency token
waits (with a bound) until the projection has applied it. A read that names none
still must never allow a send after an acknowledged opt-out, so the guard keeps,
per partition, the ledger's end offset as last observed; a read waits until the
projection has applied at least that much of the phone's partition, and fails
closed when it cannot within the bound or when the observation itself is stale.
An opt-out acknowledged before the observation started therefore always counts.

The promise is that an opt-out acknowledged one refresh interval (50 ms by default)
before a question counts, and the guard enforces it rather than hopes for it: a
read uses only an observation that started at most one interval before the read
arrived. Under load the loop's observations come late and take long, so a read
that finds the last one older waits for the next, which all such readers share
(at most ``_MAX_IN_FLIGHT`` are under way at once), and fails closed when none
comes within the bound.

An instance's own writes need no observation: ``WatchedAppends`` hands the guard
each acknowledged write's position, and the instance's next read of that partition
waits for the projection to apply it. The interval's window is left only for writes
acknowledged by another instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ledger.events import LedgerEvent, Recorded
from ledger.ports import AppliedPositions, ConsistencyToken, EventLog, Stream, WrappedEventLog
from services.settings import FreshnessSettings

log = logging.getLogger(__name__)

_HASH_AT_MOST = 32
"""A read of more numbers than this waits for every partition, not just theirs: a
big batch touches nearly all of them anyway, and that is the stricter wait."""

_LOOK_PAUSE = 0.002
"""How long ``wait_until_applied`` pauses between its looks at the view's positions. A write
waits on it, so it is far shorter than the refresh interval; the looks are shared,
so however many writes wait, the ledger and the view are asked once per pause."""

_MAX_IN_FLIGHT = 2
"""Observations under way at once, at most. A reader that needs a newer one than
those under way waits for the newest to finish and asks again: when the broker or
the database hangs, readers do not pile up a request each on it."""


_UNAPPLIED_KEPT = 64
"""Observations the view has not caught up with that ``ready`` remembers, at most;
past it the newest one's ends are raised in place, keeping its older time (the
cautious side: not ready a little longer)."""


_EARLY = 1.5
"""The loop starts each observation this many times the last one's duration before
the previous one is a refresh interval old."""


def _retrieve(observation: asyncio.Future[Any]) -> None:
    """Take a shared observation's failure, which its waiters may all have left."""
    if not observation.cancelled():
        observation.exception()


@dataclass(frozen=True)
class FreshnessStatus:
    """The last observation, for metrics: when it was made (``time.monotonic``) and,
    per stream, how many events the ledger held that the view had not applied."""

    observed_at: float = float("-inf")
    lag: Mapping[Stream, int] = field(default_factory=dict)
    partition_lag: Mapping[Stream, Mapping[int, int]] = field(default_factory=dict)
    """``lag`` partition by partition."""
    caught_up: bool = field(init=False)
    """The view had applied every partition up to its end (no lag anywhere)."""

    def __post_init__(self) -> None:  # worked out once: every read asks
        object.__setattr__(self, "caught_up", not any(self.lag.values()))


class ViewAheadOfLedger(RuntimeError):
    """The view has applied positions past the ledger's end: it was built from
    another ledger, and no read may be answered from it."""

    def __init__(self, ahead: Mapping[tuple[Stream, int], tuple[int, int]]) -> None:
        where = ", ".join(
            f"{stream.value}:{p} applied to {position}, the ledger ends at {end}"
            for (stream, p), (position, end) in ahead.items()
        )
        super().__init__(
            f"the view is ahead of the ledger ({where}): it was built from other topics; "
            "run consent-ledger rebuild"
        )


def _ahead(
    applied: Mapping[Stream, Mapping[int, int]], ends: Mapping[Stream, Mapping[int, int]]
) -> dict[tuple[Stream, int], tuple[int, int]]:
    """Where ``applied`` is past ``ends``: (stream, partition) to (position, end)."""
    return {
        (stream, p): (position, ends.get(stream, {}).get(p, 0))
        for stream, positions in applied.items()
        for p, position in positions.items()
        if position > ends.get(stream, {}).get(p, 0)
    }


class FreshnessGuard:
    def __init__(
        self,
        ledger: EventLog,
        view: AppliedPositions,
        settings: FreshnessSettings,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ledger = ledger
        self._view = view
        self._settings = settings
        self._monotonic = monotonic
        self._ends: dict[Stream, dict[int, int]] = {}
        self._applied: dict[Stream, dict[int, int]] = {}
        self._applied_token = ConsistencyToken({})
        self.status = FreshnessStatus()
        """The last observation's time and lag; replaced whole at each observation, so
        another thread (a metrics scrape) reads one observation."""
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._next_look: asyncio.Future[None] | None = None
        self._latest: tuple[float, asyncio.Future[dict[Stream, dict[int, int]]]] | None = None
        """The observation started last: when, and its outcome (shared by its waiters)."""
        self._in_flight = 0
        self._written: dict[tuple[Stream, int], int] = {}
        """Positions this instance's acknowledged writes reached that the view had not
        applied at the last observation; emptied as observations find them applied."""
        self._unapplied: deque[tuple[float, dict[Stream, dict[int, int]]]] = deque()
        """Observations whose ends the view had not applied when last looked: when each
        started, and its ends, oldest first (for ``ready``)."""
        self._start_ends: dict[int, int] | None = None
        """The subscriber partitions' ends at the first observation, until the view has
        applied them all (``applied_since_start_for``); then None for good."""
        self._started = False

    @property
    def wait_bound(self) -> float:
        """Seconds a wait for the view gives up after (``CONSENT_FRESHNESS_WAIT_MS``)."""
        return self._settings.wait_bound

    async def start(self) -> None:
        await self.observe()
        self._task = asyncio.create_task(self._loop(), name="freshness-guard")

    async def stop(self) -> None:
        if self._next_look is not None:
            self._next_look.cancel()
        if self._latest is not None:
            self._latest[1].cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def observe(self) -> dict[Stream, dict[int, int]]:
        """Read the ledger's end offsets and the view's positions now; return the ends."""
        return await asyncio.shield(self._observation())

    def _observation(self) -> asyncio.Future[dict[Stream, dict[int, int]]]:
        """Start an observation that every caller waiting for one may share."""
        started = self._monotonic()
        observation = asyncio.ensure_future(self._observe(started))
        observation.add_done_callback(_retrieve)
        self._in_flight += 1
        observation.add_done_callback(self._landed)
        self._latest = (started, observation)
        return observation

    def _landed(self, _: object) -> None:
        self._in_flight -= 1

    async def _observe(self, started: float) -> dict[Stream, dict[int, int]]:
        # ``started`` is taken before the ledger is asked: an observation's time is
        # never later than what it saw. Not bounded here: the replica loads the whole
        # view inside one (at start, after a rebuild), which may take long; readers
        # stop waiting for it at their own bound, and at most ``_MAX_IN_FLIGHT`` wait.
        ends = await self._ledger.every_end_offset()
        # After the ends, so that what was applied meanwhile counts; the streams side
        # by side, as each wait on a busy loop makes the observation older.
        streams = list(Stream)
        found = await asyncio.gather(*(self._view.positions(s) for s in streams))
        applied = dict(zip(streams, found, strict=True))
        if _ahead(applied, ends):
            # Applied after the ends were read, or a view of another ledger (topics
            # deleted and made again, another prefix or cluster), whose positions
            # would pass this ledger's facts below them as applied: the ends read
            # again tell the two apart.
            ends = await self._ledger.every_end_offset()
            ahead = _ahead(applied, ends)
            if ahead:
                raise ViewAheadOfLedger(ahead)
        if started < self.status.observed_at:
            return ends  # a later one landed first; its ends are newer, keep them
        self._ends, self._applied = ends, applied
        if not self._started:
            self._started = True
            self._start_ends = dict(ends.get(Stream.SUBSCRIBERS, {}))
        if self._start_ends is not None and self._reached_start(self._start_ends):
            self._start_ends = None
        if self._written:  # a write the view has applied needs no note any more
            self._written = {
                key: offset
                for key, offset in self._written.items()
                if offset > applied.get(key[0], {}).get(key[1], 0)
            }
        partition_lag = {
            stream: {
                p: max(0, offset - applied.get(stream, {}).get(p, 0))
                for p, offset in partitions.items()
            }
            for stream, partitions in ends.items()
        }
        lag = {stream: sum(lags.values()) for stream, lags in partition_lag.items()}
        self.status = FreshnessStatus(started, lag, partition_lag)
        self._note_unapplied(started, ends, applied)
        self._applied_token = ConsistencyToken(
            {
                (stream, p): offset
                for stream, positions in applied.items()
                for p, offset in positions.items()
            }
        )
        self._changed.set()
        self._changed = asyncio.Event()
        return ends

    def _note_unapplied(
        self,
        started: float,
        ends: dict[Stream, dict[int, int]],
        applied: dict[Stream, dict[int, int]],
    ) -> None:
        def reached(wanted: dict[Stream, dict[int, int]]) -> bool:
            return all(
                offset <= applied.get(stream, {}).get(p, 0)
                for stream, partitions in wanted.items()
                for p, offset in partitions.items()
            )

        while self._unapplied and reached(self._unapplied[0][1]):
            self._unapplied.popleft()
        if self.status.caught_up:
            return
        if len(self._unapplied) < _UNAPPLIED_KEPT:
            self._unapplied.append((started, ends))
        else:
            self._unapplied[-1] = (self._unapplied[-1][0], ends)

    def ready(self) -> str | None:
        """None while a read arriving now can be answered from the view; otherwise
        why not: the last observation of the ledger is too old (the broker or the
        database unreachable), or the view has not applied what an observation
        found longer ago than a read waits (no projector advances it). The
        readiness probe's answer: CanSend would fail closed for the numbers behind."""
        now = self._monotonic()
        age = now - self.status.observed_at
        if age > self._settings.max_observation_age:
            return (
                "the ledger's end was last observed "
                + ("never" if age == float("inf") else f"{age:.1f} s ago")
                + f" (over {self._settings.max_observation_age:g} s): CanSend fails closed"
            )
        if self._unapplied:
            behind = now - self._unapplied[0][0]
            if behind > self._settings.wait_bound:
                return (
                    f"the view has not applied what the ledger held {behind:.1f} s ago "
                    f"(over CONSENT_FRESHNESS_WAIT_MS, {self._settings.wait_bound * 1000:g} "
                    "ms): CanSend fails closed for the numbers behind"
                )
        return None

    async def _loop(self) -> None:
        interval = self._settings.refresh_interval
        took = 0.0
        while True:
            latest = self._latest
            if latest is None or self._monotonic() - latest[0] >= interval - _EARLY * took:
                self._observation()
                latest = self._latest
                assert latest is not None
            # else a reader started one a moment ago: it is this round's
            started, observation = latest
            try:
                await asyncio.shield(observation)
            except Exception:  # the guard must survive a broker blip; reads fail closed meanwhile
                log.warning("freshness observation failed", exc_info=True)
            took = self._monotonic() - started
            # The next starts early enough to land before this one is an interval old,
            # so that reads rarely wait for one (under load, observations take long).
            await asyncio.sleep(max(0.0, started + interval - _EARLY * took - self._monotonic()))

    async def _observed_since(self, since: float, deadline: float) -> bool:
        """True once an observation that started at or after ``since`` has landed;
        False when none does by ``deadline`` (``time.monotonic``) or one fails."""
        while self.status.observed_at < since:
            latest = self._latest
            if (
                latest is not None
                and not latest[1].done()
                and (latest[0] >= since or self._in_flight >= _MAX_IN_FLIGHT)
            ):
                observation = latest[1]  # shared; if too old, ask again once it lands
            else:
                observation = self._observation()
            remaining = deadline - self._monotonic()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(asyncio.shield(observation), remaining)
            except Exception:  # timed out, or the ledger or the view unreachable: fail closed
                return self.status.observed_at >= since
        return True

    def _behind(self, needed: dict[tuple[Stream, int], int]) -> dict[tuple[Stream, int], int]:
        return {
            key: offset
            for key, offset in needed.items()
            if self._applied.get(key[0], {}).get(key[1], 0) < offset
        }

    async def _wait(self, needed: dict[tuple[Stream, int], int], deadline: float) -> bool:
        look_soon: bool | None = None
        while True:
            if self._monotonic() - self.status.observed_at > self._settings.max_observation_age:
                return False
            behind = self._behind(needed)
            if not behind:
                return True
            remaining = deadline - self._monotonic()
            if remaining <= 0:
                return False
            if look_soon is None:
                # Waiting for a write of this instance: its projection takes
                # milliseconds, so look again soon rather than wait for the loop's
                # next round.
                look_soon = any(key in self._written for key in behind)
            with contextlib.suppress(TimeoutError):
                if look_soon:
                    await asyncio.wait_for(self._look_again(), remaining)
                else:
                    await asyncio.wait_for(self._changed.wait(), remaining)

    def _with_written(self, needed: dict[tuple[Stream, int], int]) -> dict[tuple[Stream, int], int]:
        """``needed`` raised to the positions of this instance's own writes not yet
        applied, on the same partitions."""
        if not self._written:
            return needed
        return {key: max(offset, self._written.get(key, 0)) for key, offset in needed.items()}

    def appended(self, recorded: Sequence[Recorded]) -> None:
        """Note this instance's acknowledged write: a read after it (without a
        token) waits for the projection to apply it, as it would after the next
        observation, but from the moment of the acknowledgement."""
        self.acknowledged(ConsistencyToken.after(recorded))

    def acknowledged(self, token: ConsistencyToken) -> None:
        """``appended`` for a write this instance answered as recorded, whoever
        appended it: a retry, or a message sent before, found in the view (perhaps
        through another instance a moment ago). The view has it, but what CanSend
        reads (the replica) may not yet, and the last observation may predate it."""
        for key, offset in token.offsets.items():
            if offset > self._written.get(key, 0):
                self._written[key] = offset

    async def _recent(self) -> tuple[FreshnessStatus, float] | None:
        """The observation a read arriving now may use (one started at most a refresh
        interval before now, waited for if need be) and the read's deadline; None when
        there is none within the bound: the read fails closed."""
        arrived = self._monotonic()
        deadline = arrived + self._settings.wait_bound
        since = arrived - self._settings.refresh_interval
        if self.status.observed_at < since and not await self._observed_since(since, deadline):
            return None
        return self.status, deadline

    async def wait_for_token(self, token: ConsistencyToken, timeout: float | None = None) -> bool:
        """True once the view has applied everything the token names."""
        deadline = self._monotonic() + (timeout or self._settings.wait_bound)
        return await self._wait(dict(token.offsets), deadline)

    async def wait_for_phones(
        self, phones: Sequence[str], token: ConsistencyToken | None = None
    ) -> bool:
        """True once the view has applied ``token`` (when given, as ``wait_for_token``),
        then the phones' partitions up to their ends as observed since one refresh
        interval before the call, and the campaign stream up to its end."""
        if token is not None and not await self.wait_for_token(token):
            return False
        recent = await self._recent()
        if recent is None:
            return False
        status, deadline = recent
        if status.caught_up and not self._written:
            return True  # every partition is, so the phones' partitions are too
        ends = self._ends.get(Stream.SUBSCRIBERS, {})
        partitions: set[int | None] = set(ends)
        if len(phones) <= _HASH_AT_MOST:
            partitions = {self._ledger.partition_for(p) for p in phones}
            if None in partitions:
                partitions = set(ends)
        needed = {(Stream.SUBSCRIBERS, p): ends.get(p, 0) for p in partitions if p is not None}
        for p, offset in self._ends.get(Stream.CAMPAIGNS, {}).items():
            needed[(Stream.CAMPAIGNS, p)] = offset
        return await self._wait(self._with_written(needed), deadline)

    async def wait_for_all(self) -> bool:
        """True once the view has applied every partition of every stream up to its
        end as observed since one refresh interval before the call: for a read that
        spans the whole view (a brand's numbers)."""
        recent = await self._recent()
        if recent is None:
            return False
        needed = {
            (stream, p): offset for stream, ends in self._ends.items() for p, offset in ends.items()
        }
        return await self._wait(self._with_written(needed), recent[1])

    async def wait_until_applied(self, streams: Collection[Stream] = tuple(Stream)) -> bool:
        """True once the view has applied every partition of ``streams`` up to the
        ledger's end as this call observes it, within the bound: a decision that must
        count every fact acknowledged before it (a request id's earlier use, a campaign
        defined or a number claimed a moment ago) waits for this, not for the last
        observation.

        It waits for ends read by an observation that started after it arrived (one
        it shares with the calls arriving with it; one that started earlier may miss
        a write acknowledged just before the call), and looks at
        the view's progress every ``_LOOK_PAUSE`` rather than every refresh
        interval: a write that follows another by a moment waits for that one's
        projection, which takes milliseconds, not for the guard's next round."""
        return await self._wait_until(
            lambda ends: {
                (stream, p): offset
                for stream in streams
                for p, offset in ends.get(stream, {}).items()
            }
        )

    async def wait_until_applied_for(self, phones: Sequence[str]) -> bool:
        """``wait_until_applied`` for the subscriber partitions of ``phones``: a decision about
        these numbers that must count every write acknowledged for them so far (an
        inbound text read after the STOP before it was answered). Every subscriber
        partition when the ledger cannot say where a phone lives."""
        partitions = {self._ledger.partition_for(p) for p in phones}
        if None in partitions:
            return await self.wait_until_applied((Stream.SUBSCRIBERS,))

        def needed(ends: dict[Stream, dict[int, int]]) -> dict[tuple[Stream, int], int]:
            subscribers = ends.get(Stream.SUBSCRIBERS, {})
            return {
                (Stream.SUBSCRIBERS, p): subscribers.get(p, 0) for p in partitions if p is not None
            }

        return await self._wait_until(needed)

    async def _wait_until(
        self,
        select: Callable[[dict[Stream, dict[int, int]]], dict[tuple[Stream, int], int]],
    ) -> bool:
        arrived = self._monotonic()
        deadline = arrived + self._settings.wait_bound
        try:  # the bound holds for the looks too: a hung broker is "not caught up"
            # Any observation that started after this call arrived read ends that count
            # every write acknowledged before it: concurrent calls share one.
            if not await self._observed_since(arrived, deadline):
                return False
            needed = select(self._ends)
            while self._behind(needed):
                remaining = deadline - self._monotonic()
                if remaining <= 0:
                    return False
                await asyncio.wait_for(self._look_again(), remaining)
        except TimeoutError:
            return False
        except Exception:  # the ledger or the view unreachable: fail closed, as a wait does
            log.warning("catching up with the ledger failed", exc_info=True)
            return False
        return True

    async def _look_again(self) -> None:
        """After a short pause, observe once for every caller waiting meanwhile."""
        if self._next_look is None or self._next_look.done():
            self._next_look = asyncio.ensure_future(self._pause_and_observe())
        await asyncio.shield(self._next_look)

    async def _pause_and_observe(self) -> None:
        await asyncio.sleep(_LOOK_PAUSE)
        try:
            await self.observe()
        except Exception:  # as in the loop: the waiters time out and fail closed
            log.warning("freshness observation failed", exc_info=True)

    def applied_since_start_for(self, phones: Sequence[str]) -> bool:
        """Whether, at the last observation, the view had applied the subscriber
        partitions of ``phones`` (every one when the ledger cannot say) up to their ends
        as this process first observed them. A view filled again from the ledger (its
        database lost) lacks what its writers noted beside their appends until it has:
        a note's absence says nothing before then."""
        start = self._start_ends
        if start is None:
            return self._started
        partitions = {self._ledger.partition_for(p) for p in phones}
        if None not in partitions:
            start = {p: start.get(p, 0) for p in partitions if p is not None}
        return self._reached_start(start)

    def _reached_start(self, start: Mapping[int, int]) -> bool:
        applied = self._applied.get(Stream.SUBSCRIBERS, {})
        return all(offset <= applied.get(p, 0) for p, offset in start.items())

    def applied_token(self) -> ConsistencyToken:
        """The freshness the view had at the last observation."""
        return self._applied_token


class WatchedAppends(WrappedEventLog):
    """A ledger whose acknowledged appends the freshness guard is told of at once
    (``FreshnessGuard.appended``); every other method is the wrapped ledger's."""

    def __init__(self, ledger: EventLog, guard: FreshnessGuard) -> None:
        super().__init__(ledger)
        self._guard = guard

    async def append(self, events: Sequence[LedgerEvent]) -> list[Recorded]:
        recorded = await self._ledger.append(events)
        self._guard.appended(recorded)
        return recorded
