"""``DigestReplica``: the digests of ``PostgresConsentView``, held in the process.

CanSend needs one thing per number: its digest (``ledger.digest``). Read from
PostgreSQL, that is a query per call (or per shared read), and the query costs
more CPU in the driver and the server than everything else the call does. The
replica keeps every stored digest in memory, as the encoded bytes of the row, by
brand and phone, and answers ``digests`` with dictionary lookups.

It is a copy of the view at known positions, never a cache that may be stale in
unknown ways:

* The first ``refresh`` reads the subscriber stream's applied positions and every
  digest in one REPEATABLE READ transaction, so the copy is the view exactly as it
  was at those positions.
* Each later ``refresh`` asks for the positions (one statement). When they moved,
  it reads, again in one snapshot, the positions and the digests of every
  (phone, brand) that an event applied between the copy's positions and those
  touched (the view's indexed copy of each event names them). It applies them and
  moves the positions in one step, with no ``await`` in between, so a reader
  never sees old digests with new positions.
* ``positions`` refreshes, then answers the copy's positions. The freshness
  guard (``services.freshness``) observes the replica as it would the view, so a
  read waits until the *copy* has reached the ledger end it observed, exactly as
  it waits for the view, and fails closed the same way.
* A rebuild empties the view and bumps ``projection_epoch`` (migration 0004), and
  positions that went backwards mean the same; either makes the next refresh load
  everything afresh, swapping the whole copy in at once.

Memory: the digests are held compactly (``CompactDigests``: a shape number and the
values that differ, in one ``bytearray``, found through an open-addressing index
keyed by the phone number as an integer), about 50 bytes per (phone, brand) where
a ``bytes`` object and a phone string in a dict took some 300 (docs/capacity.md).
A load after a rebuild builds the new copy while the old one still answers, so
until the swap the process holds both: about twice the usual size.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence

import asyncpg

from ledger.digest import Digest, with_phone_wide
from ledger.events import ANY_BRAND
from ledger.ports import ConsentView, DigestReads, Stream
from services.adapters.compact_digests import CompactDigests
from services.adapters.postgres_view import snapshot_unless_digest, stored_digest
from services.wire.digest import FORMAT as DIGEST_FORMAT

_SUBSCRIBERS = Stream.SUBSCRIBERS.value

_EPOCH_AND_POSITIONS = f"""
SELECT (SELECT epoch FROM projection_epoch) AS epoch,
       array(SELECT partition FROM projection_offset
             WHERE stream = '{_SUBSCRIBERS}' ORDER BY partition) AS partitions,
       array(SELECT next_offset FROM projection_offset
             WHERE stream = '{_SUBSCRIBERS}' ORDER BY partition) AS offsets
"""
_ROW = f"brand, phone, digest, {snapshot_unless_digest('$1')}"
_ALL_DIGESTS = f"SELECT {_ROW} FROM subscriber_state"
_CHANGED_DIGESTS = f"""
SELECT {_ROW}
FROM subscriber_state
JOIN (SELECT DISTINCT e.phone, e.brand
      FROM ledger_event_copy AS e
      JOIN unnest($2::integer[], $3::bigint[], $4::bigint[]) AS r(partition, first, stop)
        ON e.partition = r.partition AND e."offset" >= r.first AND e."offset" < r.stop
      WHERE e.stream = '{_SUBSCRIBERS}') AS changed USING (phone, brand)
"""


class DigestReplica(DigestReads):
    """``digests`` and ``positions`` of a ``PostgresConsentView``, from memory.

    ``view`` answers the campaign stream's positions (campaign reads go to
    PostgreSQL). ``pool`` is the caller's to close.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        view: ConsentView,
        *,
        chunk: int = 20_000,
        on_reload: Callable[[], None] | None = None,
    ) -> None:
        """``on_reload`` is called after each load of the whole view but the first
        (after a rebuild): the new copy lives on memory allocated since the process
        set its heap up for serving (``services.tuning.settle_heap``)."""
        self._pool = pool
        self._on_reload = on_reload
        self._view = view
        self._chunk = chunk
        self._digests = CompactDigests()
        self._positions: dict[int, int] = {}
        self._epoch: int | None = None
        self._lock = asyncio.Lock()
        self.loads = 0
        """How many times the whole view was read (for tests and metrics)."""
        self.confirmed_at = float("-inf")
        """When (``time.monotonic``) a refresh last found the copy at the view's
        positions, or brought it there (for metrics: the replica's age)."""

    @property
    def size(self) -> int:
        """How many (phone, brand) digests the copy holds."""
        # One attribute read: a metrics scrape on another thread reads it safely.
        return self._digests.size

    def stats(self) -> dict[str, int]:
        """Where the copy's bytes are (``CompactDigests.stats``)."""
        return self._digests.stats()

    async def positions(self, stream: Stream) -> dict[int, int]:
        """``ConsentView.positions`` of the copy: what its digests reflect."""
        if stream is not Stream.SUBSCRIBERS:
            return await self._view.positions(stream)
        await self.refresh()
        return dict(self._positions)

    async def digests(self, brand: str, phones: Sequence[str]) -> dict[str, Digest]:
        """``ConsentView.digests`` as of ``positions``: unknown phones are left out.
        Raises ``Unreadable`` on bytes it cannot decode: CanSend then fails closed."""
        found = self._digests.get_many(brand, phones)
        # STOPs whose brand is unknown: usually none at all, one lookup to say so.
        if brand != ANY_BRAND:
            for phone, phone_wide in self._digests.get_many(ANY_BRAND, phones).items():
                merged = with_phone_wide(found.get(phone), phone_wide)
                if merged is not None:
                    found[phone] = merged
        return found

    async def refresh(self) -> None:
        """Bring the copy up to the view's positions now (or load it, the first time
        and after a rebuild)."""
        async with self._lock:
            # Most refreshes find nothing new: one statement says so.
            epoch, partitions, offsets = await self._pool.fetchrow(_EPOCH_AND_POSITIONS)
            if epoch == self._epoch and dict(zip(partitions, offsets, strict=True)) == dict(
                self._positions
            ):
                self.confirmed_at = time.monotonic()
                return
            await self._catch_up()
            self.confirmed_at = time.monotonic()

    async def _catch_up(self) -> None:
        async with (
            self._pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            epoch, partitions, offsets = await conn.fetchrow(_EPOCH_AND_POSITIONS)
            positions = dict(zip(partitions, offsets, strict=True))
            old = self._positions
            if epoch != self._epoch or any(positions.get(p, 0) < o for p, o in old.items()):
                fresh = await self._read_all(conn)
                self._digests, self._positions, self._epoch = fresh, positions, epoch
                self.loads += 1
                if self.loads > 1 and self._on_reload is not None:
                    self._on_reload()
                return
            moved = [
                (p, old.get(p, 0), o) for p, o in sorted(positions.items()) if o > old.get(p, 0)
            ]
            if moved:
                rows = await conn.fetch(
                    _CHANGED_DIGESTS,
                    DIGEST_FORMAT,
                    [p for p, _, _ in moved],
                    [first for _, first, _ in moved],
                    [stop for _, _, stop in moved],
                )
                await self._make_room(rows)
                _store(self._digests.put, rows)
            self._positions = positions

    async def _make_room(self, rows: Sequence[asyncpg.Record]) -> None:
        """Grow, in a worker thread, each index that these rows would make ``put``
        grow in the event loop (seconds at millions of entries, unanswered). Reads
        go on meanwhile from the index as it is; the refresh's lock keeps writes
        out until the copy is in place."""
        for brand, more in Counter(row["brand"] for row in rows).items():
            if not self._digests.needs_room(brand, more):
                continue  # nearly always: one comparison, no thread
            grown = await asyncio.to_thread(self._digests.grown_index, brand, more)
            if grown is not None:
                self._digests.install(brand, grown)

    async def _read_all(self, conn: asyncpg.Connection) -> CompactDigests:
        digests = CompactDigests()
        cursor = await conn.cursor(_ALL_DIGESTS, DIGEST_FORMAT)
        add, add_stored = digests.add, digests.add_stored
        while rows := await cursor.fetch(self._chunk):
            for brand, phone, data, snapshot in rows:
                # The query sends the snapshot only when the digest is not one in
                # this format: then the snapshot is digested.
                if snapshot is None and add_stored(brand, phone, data[1:]):
                    continue
                add(brand, phone, stored_digest(phone, brand, data, snapshot))
        digests.seal()
        return digests


def _store(put: Callable[[str, str, Digest], None], rows: Sequence[asyncpg.Record]) -> None:
    for brand, phone, data, snapshot in rows:
        # Without a digest in the row, or with one this code cannot read, the
        # snapshot comes too, and is digested.
        put(brand, phone, stored_digest(phone, brand, data, snapshot))
