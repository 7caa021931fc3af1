"""Many CanSend calls in flight, few reads: concurrent digest reads share a query.

Each unary CanSend needs the digest of one number. Under load, dozens are in
flight at once, and one PostgreSQL round trip per call costs more (in the
driver, the server and the context switches between them) than the check
itself. ``ReadBatcher`` keeps at most ``max_in_flight`` reads going. A read asked
for while a slot is free and no other waits starts at once; one asked for while
every slot is busy waits for the next free slot, and goes with every other read
that waited with it, as one query per brand. When the service is idle a read waits for
nothing, and when it is busy reads merge, so the database work per call shrinks
as the load grows.

A failed query fails every read that shared it (the service then answers "not
allowed"). A caller that gives up (a cancelled call) is skipped; the others get
their answers. Reads of ``bypass_at`` numbers or more (CanSendBatch) are one
query already and go straight to the view.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from ledger.digest import Digest
from ledger.ports import ConsentView, DigestReads, Stream

Waiter = tuple[Sequence[str], "asyncio.Future[dict[str, Digest]]"]


class ReadBatcher(DigestReads):
    def __init__(self, view: ConsentView, *, max_in_flight: int = 2, bypass_at: int = 64) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.view = view
        self.max_in_flight = max_in_flight
        self.bypass_at = bypass_at
        self._waiting: dict[str, list[Waiter]] = {}
        self._in_flight = 0
        self._scheduled = False
        self._reads: set[asyncio.Task[None]] = set()  # strong references while they run

    async def positions(self, stream: Stream) -> dict[int, int]:
        return await self.view.positions(stream)

    async def digests(self, brand: str, phones: Sequence[str]) -> dict[str, Digest]:
        """``ConsentView.digests``, sharing a query with concurrent reads when it can."""
        if len(phones) >= self.bypass_at:
            return await self.view.digests(brand, phones)
        if self._in_flight < self.max_in_flight and not self._waiting:
            # A free slot and nobody waiting: read now, in this task (no hand-over).
            self._in_flight += 1
            try:
                return await self.view.digests(brand, phones)
            finally:
                self._read_done(None)
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[dict[str, Digest]] = loop.create_future()
        self._waiting.setdefault(brand, []).append((phones, answer))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._start_reads)
        return await answer

    def _start_reads(self) -> None:
        self._scheduled = False
        while self._waiting and self._in_flight < self.max_in_flight:
            brand = next(iter(self._waiting))
            waiters = self._waiting.pop(brand)
            self._in_flight += 1
            read = asyncio.ensure_future(self._read(brand, waiters))
            self._reads.add(read)
            read.add_done_callback(self._read_done)

    def _read_done(self, read: asyncio.Task[None] | None) -> None:
        if read is not None:
            self._reads.discard(read)
        self._in_flight -= 1
        if self._waiting and not self._scheduled:
            self._start_reads()

    async def _read(self, brand: str, waiters: list[Waiter]) -> None:
        phones = sorted({phone for asked, _ in waiters for phone in asked})
        try:
            found = await self.view.digests(brand, phones)
        except asyncio.CancelledError:
            for _, answer in waiters:
                answer.cancel()
            raise
        except Exception as exc:
            for _, answer in waiters:
                if not answer.done():
                    answer.set_exception(exc)
            return
        for asked, answer in waiters:
            if not answer.done():  # its caller may have given up
                answer.set_result({phone: found[phone] for phone in asked if phone in found})
