"""Calls that arrive while a batch of them is in flight go together as the next batch.

A statement whose cost is mostly its round trip and its commit is cheaper sent for many
calls at once: a single write's two (``PostgresConsentView.take_request``, whose commit
waits on the WAL flush, and ``PostgresSubjectKeys.current``). ``Coalesced`` sends the
first call alone at once (no timer: an idle store answers as before) and gathers the
calls that arrive meanwhile into the next batch, so the batches grow with the load.
A batch that fails is run again call by call, so that one bad call fails alone. A batch
that outlasts its callers' own bound (a connection gone silent under it) is left to
finish on its own, and the calls after it go on without it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

A = TypeVar("A")
R = TypeVar("R")


class Coalesced(Generic[A, R]):
    def __init__(
        self,
        one: Callable[[A], Awaitable[R]],
        many: Callable[[Sequence[A]], Awaitable[list[R]]],
        bound: float | None = None,
    ) -> None:
        """``one`` answers a call alone; ``many`` answers a batch of two or more, each
        call's answer in the call's place, or raises (then each runs alone).
        ``bound``: seconds after which a batch's callers have given up waiting (their
        own bound), and the next batch is sent without waiting for it; None: never."""
        self._one = one
        self._many = many
        self._bound = bound
        self._waiting: list[tuple[A, asyncio.Future[R]]] = []
        self._sender: asyncio.Task[None] | None = None

    async def __call__(self, call: A) -> R:
        answer: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((call, answer))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send())
        # A caller that stops waiting (its own time bound) cancels only its answer:
        # the batch it is in goes on for the others.
        return await answer

    async def _send(self) -> None:
        batch: list[tuple[A, asyncio.Future[R]]] = []
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                if self._bound is None:
                    await self._answer(batch)
                else:
                    await self._answered_within_bound(batch)
        finally:
            self._sender = None
            for _, answer in batch + self._waiting:  # left unanswered only if cancelled
                answer.cancel()
            self._waiting = []

    async def _answered_within_bound(self, batch: list[tuple[A, asyncio.Future[R]]]) -> None:
        """Answer ``batch``, or, past the bound, fail its answers with ``TimeoutError``,
        leaving the batch to finish on its own: a statement stuck on
        a connection that answers nothing (for minutes, until the peer is found gone)
        held every later call of the process behind it, though its callers gave up."""
        answering = asyncio.ensure_future(self._answer(batch))
        try:
            done, _ = await asyncio.wait({answering}, timeout=self._bound)
        except asyncio.CancelledError:
            answering.cancel()
            raise
        if done:
            answering.result()
            return
        answering.add_done_callback(_retrieve)
        for _, answer in batch:
            if not answer.done():
                answer.set_exception(TimeoutError("the batch was not answered within its bound"))

    async def _answer(self, batch: list[tuple[A, asyncio.Future[R]]]) -> None:
        calls = [call for call, _ in batch]
        if len(batch) == 1:
            outcomes = [await self._alone(calls[0])]
        else:
            try:
                for (_, answer), result in zip(batch, await self._many(calls), strict=True):
                    _settle(answer, result)
                return
            except Exception:  # each alone says whose error it was, if any
                outcomes = await asyncio.gather(*(self._alone(c) for c in calls))
        for (_, answer), outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, Exception):
                if not answer.done():
                    answer.set_exception(outcome)
            else:
                _settle(answer, outcome)

    async def _alone(self, call: A) -> R | Exception:
        try:
            return await self._one(call)
        except Exception as error:
            return error


def _retrieve(answering: asyncio.Future[None]) -> None:
    """Take the outcome of a batch nobody waits for any more, so it is not logged."""
    if not answering.cancelled():
        answering.exception()


def _settle(answer: asyncio.Future[R], result: R) -> None:
    if not answer.done():
        answer.set_result(result)
