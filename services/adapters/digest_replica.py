"""What CanSend reads of the view, held in the process: ``DigestReplica``, every
digest of ``PostgresConsentView`` (stored compactly by ``CompactDigests``), and
``CampaignHistoryCache``, the campaigns' rules between campaign writes. Each wraps
one of the view's ports (``DigestReads``, ``CampaignReads``) and passes that
port's slice of the view's conformance suite, so the use cases do not know they
are there.

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

Updates leave dead bytes behind: the place of a digest that moved (another size),
shapes and reply texts no digest uses any more. Once they may be half of the
arena and tables (``COMPACT_AT``), refreshes compact the copy: each does at most
``compact_step`` (5 ms) of a ``Compaction`` that rebuilds it aside, taking the
refreshes' writes as it goes, and the compacted copy replaces the old in one
assignment. Meanwhile the process holds both, as during a reload.
"""

from __future__ import annotations

import asyncio
import logging
import time
from array import array
from collections import Counter
from collections.abc import Callable, Sequence

import asyncpg

from ledger.digest import Digest, with_phone_wide
from ledger.events import ANY_BRAND
from ledger.ports import (
    CampaignReads,
    ConsentView,
    ConsistencyToken,
    DigestReads,
    Stream,
    UnreadableDigests,
)
from ledger.state import CampaignHistory
from services.adapters.postgres_bounds import BULK_BOUND
from services.adapters.postgres_view import snapshot_unless_digest, stored_digest
from services.wire.compact_digest import Shapes, Unencodable, Unreadable
from services.wire.digest import FORMAT as DIGEST_FORMAT
from services.wire.digest import untyped_payload

log = logging.getLogger(__name__)

COMPACT_AT = 0.5
"""A copy is compacted once this fraction of its arena and tables may be dead."""
COMPACT_FLOOR = 1 << 20
"""... and at least this many bytes: a small copy is not worth the work."""

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
        timeout: float | None = None,
        on_reload: Callable[[], None] | None = None,
        compact_step: float = 0.005,
        compact_floor: int = COMPACT_FLOOR,
        partition_for: Callable[[str], int | None] | None = None,
    ) -> None:
        """``on_reload`` is called after each load of the whole view but the first
        (after a rebuild): the new copy lives on memory allocated since the process
        set its heap up for serving (``services.tuning.settle_heap``).

        ``timeout`` is the bound ``pool``'s server puts on each statement
        (``read_pool``). Reading the whole view, or a change larger than a chunk,
        lifts it to ``BULK_BOUND`` times that: each fetch is a chunk of rows, and a
        busy server would cancel it, failing the service's start.

        ``compact_step`` bounds, in seconds, the compaction work each refresh does
        when the copy is due one (``CompactDigests.wants_compaction``, past
        ``compact_floor`` dead bytes).

        ``partition_for`` (the ledger's) names the partition of a number whose stored
        digest cannot be read, in the log line that says so."""
        self._pool = pool
        self._partition_for = partition_for
        self._timeout = timeout
        self._on_reload = on_reload
        self._view = view
        self._chunk = chunk
        self._digests = CompactDigests()
        self._positions: dict[int, int] = {}
        self._epoch: int | None = None
        self._lock = asyncio.Lock()
        self._compact_step = compact_step
        self._compact_floor = compact_floor
        self._compaction: Compaction | None = None
        self._unreadable: set[tuple[str, str]] = set()
        """The (brand, phone) entries whose stored digest could not be read: left out
        of a load, masking what the copy held before in a refresh, until the view's
        row is written again. ``digests`` fails closed for them alone."""
        self.loads = 0
        """How many times the whole view was read (for tests and metrics)."""
        self.compactions = 0
        """How many compacted copies took the place of the one before."""
        self.confirmed_at = float("-inf")
        """When (``time.monotonic``) a refresh last found the copy at the view's
        positions, or brought it there (for metrics: the replica's age)."""

    @property
    def size(self) -> int:
        """How many (phone, brand) digests the copy holds."""
        # One attribute read: a metrics scrape on another thread reads it safely.
        return self._digests.size

    @property
    def unreadable(self) -> int:
        """How many (phone, brand) entries of the view the copy could not read."""
        return len(self._unreadable)

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
        Raises ``UnreadableDigests`` for phones whose row the copy could not read, and
        ``Unreadable`` on bytes of its own it cannot decode: CanSend then fails closed."""
        digests = self._digests  # one copy for both lookups (no await in between anyway)
        found = digests.get_many(brand, phones)
        # STOPs whose brand is unknown: usually none at all, one lookup to say so.
        if brand != ANY_BRAND:
            for phone, phone_wide in digests.get_many(ANY_BRAND, phones).items():
                merged = with_phone_wide(found.get(phone), phone_wide)
                if merged is not None:
                    found[phone] = merged
        if self._unreadable:  # nearly always empty: a read costs this one test
            self._fail_unreadable(brand, phones, found)
        return found

    def _fail_unreadable(self, brand: str, phones: Sequence[str], found: dict[str, Digest]) -> None:
        unreadable = self._unreadable
        bad = [p for p in phones if (brand, p) in unreadable or (ANY_BRAND, p) in unreadable]
        if bad:
            for phone in bad:
                found.pop(phone, None)  # a digest held from before the row went bad
            raise UnreadableDigests(found, list(dict.fromkeys(bad)))

    async def refresh(self) -> None:
        """Bring the copy up to the view's positions now (or load it, the first time
        and after a rebuild)."""
        async with self._lock:
            # Most refreshes find nothing new: one statement says so.
            epoch, partitions, offsets = await self._pool.fetchrow(_EPOCH_AND_POSITIONS)
            if epoch != self._epoch or dict(zip(partitions, offsets, strict=True)) != dict(
                self._positions
            ):
                await self._catch_up()
            self.confirmed_at = time.monotonic()
            self._compact()

    def _compact(self) -> None:
        """A step of compaction, if the copy is due one: at most ``compact_step``
        seconds of the event loop, and the compacted copy swapped in, in one
        assignment, once it holds everything. A compaction that fails leaves the
        copy as it was, answering as before (``Unreadable`` bytes fail CanSend
        closed there, compacted or not)."""
        if self._compaction is None:
            if not self._digests.wants_compaction(self._compact_floor):
                return  # nearly always: a few additions
            self._compaction = Compaction(self._digests)
        try:
            compacted = self._compaction.step(self._compact_step)
        except (CompactionRefused, Unreadable):
            log.exception("the digest replica's compaction failed; the copy is kept as it is")
            self._compaction = None
            return
        if compacted is not None:
            self._digests, self._compaction = compacted, None
            self.compactions += 1

    async def _catch_up(self) -> None:
        async with (
            self._pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            epoch, partitions, offsets = await conn.fetchrow(_EPOCH_AND_POSITIONS)
            positions = dict(zip(partitions, offsets, strict=True))
            old = self._positions
            if epoch != self._epoch or any(positions.get(p, 0) < o for p, o in old.items()):
                await self._lift_bound(conn)
                fresh, unreadable = await self._read_all(conn)
                if self._compaction is not None:  # of the copy this one replaces
                    self._compaction.abandon()
                    self._compaction = None
                self._digests, self._positions, self._epoch = fresh, positions, epoch
                self._unreadable = unreadable
                self.loads += 1
                if self.loads > 1 and self._on_reload is not None:
                    self._on_reload()
                return
            moved = [
                (p, old.get(p, 0), o) for p, o in sorted(positions.items()) if o > old.get(p, 0)
            ]
            if moved:
                if sum(stop - first for _, first, stop in moved) > self._chunk:
                    await self._lift_bound(conn)
                rows = await conn.fetch(
                    _CHANGED_DIGESTS,
                    DIGEST_FORMAT,
                    [p for p, _, _ in moved],
                    [first for _, first, _ in moved],
                    [stop for _, _, stop in moved],
                )
                await self._make_room(rows)
                self._store(rows)
            self._positions = positions

    async def _lift_bound(self, conn: asyncpg.Connection) -> None:
        if self._timeout is not None:
            bound = max(1, round(self._timeout * BULK_BOUND * 1000))
            await conn.execute(f"SET LOCAL statement_timeout = {bound}")

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

    async def _read_all(
        self, conn: asyncpg.Connection
    ) -> tuple[CompactDigests, set[tuple[str, str]]]:
        """A copy of every digest, and the (brand, phone) entries it could not read."""
        digests = CompactDigests()
        unreadable: set[tuple[str, str]] = set()
        cursor = await conn.cursor(_ALL_DIGESTS, DIGEST_FORMAT)
        add, add_stored = digests.add, digests.add_stored
        while rows := await cursor.fetch(self._chunk):
            for brand, phone, data, snapshot in rows:
                # The query sends the snapshot only when the digest is not one in
                # this format: then the snapshot is digested.
                if snapshot is None and add_stored(brand, phone, data[1:]):
                    continue
                digest = self._read(unreadable, brand, phone, data, snapshot)
                if digest is not None:
                    add(brand, phone, digest)
        digests.seal()
        return digests, unreadable

    def _store(self, rows: Sequence[asyncpg.Record]) -> None:
        put, unreadable = self._digests.put, self._unreadable
        for brand, phone, data, snapshot in rows:
            # Without a digest in the row, or with one this code cannot read, the
            # snapshot comes too, and is digested. One unreadable masks what the copy
            # held, which is no longer the view's: not answered.
            digest = self._read(unreadable, brand, phone, data, snapshot)
            if digest is None:
                continue
            put(brand, phone, digest)
            if unreadable:
                unreadable.discard((brand, phone))  # written again, and readable

    def _read(
        self,
        unreadable: set[tuple[str, str]],
        brand: str,
        phone: str,
        data: bytes | None,
        snapshot: bytes | None,
    ) -> Digest | None:
        """The row's digest (``stored_digest``), or None, the entry added to
        ``unreadable``, when it cannot be read."""
        try:
            return stored_digest(phone, brand, data, snapshot)
        except Exception:
            self._note_unreadable(unreadable, brand, phone)
            return None

    def _note_unreadable(self, into: set[tuple[str, str]], brand: str, phone: str) -> None:
        """Add the entry to ``into``, logging it the first time this copy finds it so
        (a reload, or a rewrite still corrupt, says nothing more). Called in an
        ``except`` block: the log carries the cause. Above DEBUG the log masks the
        phone, as it masks every number."""
        entry = (brand, phone)
        if entry not in self._unreadable and entry not in into:
            partition = None if self._partition_for is None else self._partition_for(phone)
            log.error(
                "the stored digest of %s towards brand %s (partition %s) cannot be read: "
                "CanSend answers that number not allowed (REASON_INTERNAL_ERROR) until "
                "its row is written again (a new fact, or consent-ledger rebuild)",
                phone,
                brand,
                partition,
                exc_info=True,
            )
        into.add(entry)


class CampaignHistoryCache(CampaignReads):
    """Campaign rules kept in memory between campaign writes.

    Every check reads its campaign's rules; they change only when the campaign stream
    moves, which is rare. ``CampaignHistoryCache`` wraps the view's ``CampaignReads`` and
    answers from memory while the campaign stream's positions, as the freshness guard
    last observed them, stay the same. It passes the view's ``CampaignReadsSuite``.
    """

    def __init__(self, view: CampaignReads) -> None:
        self.view = view
        self._histories: dict[tuple[str, str], CampaignHistory] = {}
        self._seen: ConsistencyToken | None = None
        self._at: tuple[tuple[int, int], ...] | None = None
        self._generation = 0
        """Bumped when the cache is emptied: a read that began before must not store
        its answer."""

    def observe(self, seen: ConsistencyToken) -> None:
        if seen is self._seen:  # the guard keeps one token per observation
            return
        self._seen = seen
        at = tuple(sorted((p, o) for (s, p), o in seen.offsets.items() if s is Stream.CAMPAIGNS))
        if at != self._at:
            self._histories.clear()
            self._at = at
            self._generation += 1

    async def campaign_history(self, brand: str, campaign: str) -> CampaignHistory:
        history = self._histories.get((brand, campaign))
        if history is not None:
            return history
        generation = self._generation
        history = await self.view.campaign_history(brand, campaign)
        # Kept only if no newer observation emptied the cache meanwhile: a read that
        # began before it may predate the rules those positions include, and would be
        # served, stale, until the next campaign write. Nothing is kept before the
        # first observation, nor for a campaign not yet defined.
        if self._at is not None and history.versions and generation == self._generation:
            self._histories[(brand, campaign)] = history
        return history


# How the replica holds its digests: in few bytes each, found by the number.

_MIX = 0x9E3779B97F4A7C15
"""An odd 64-bit multiplier: consecutive numbers (a seeded block, a carrier's
range) land far apart instead of filling one run of slots."""
_FILL = 0.6
"""How full a table is made when it is built or grown."""
_GROW_AT = 0.8
"""A table this full is rebuilt larger (linear probing slows down beyond)."""
_ODD = 0
"""The slot that says: this entry's digest is in the dict of odd entries (a slot
holds where the digest starts, plus one)."""
_SLICE = 1 << 18
"""Slots a compaction's step adds to an index it is making: 3 MB, about a millisecond."""
_WIDE = 2**32 - 2
"""Slots up to here fit 4 bytes; an arena beyond makes every index use 8."""


def phone_key(phone: str) -> int:
    """The E.164 ``phone``'s digits as an integer, or 0 when it is no such number
    (the integer then would not name it alone: ``+01`` and ``+1``, ``+1_0`` and
    ``+10``)."""
    digits = phone[1:]
    if (
        phone[:1] == "+"
        and phone.isascii()
        and digits.isdigit()
        and digits[:1] != "0"
        and len(digits) <= 18
    ):
        return int(digits)
    return 0


class _Index:
    """One brand's table: ``keys[i]`` a phone's key (0: empty), ``slots[i]`` where its
    digest starts in the arena plus one (``_ODD``, 0: in the dict of odd entries)."""

    __slots__ = ("cap", "count", "keys", "slots")

    def __init__(self, expected: int, typecode: str) -> None:
        self.cap = self.capacity(expected)
        self.count = 0
        self.keys = array("q", bytes(8 * self.cap))
        self.slots = array(typecode, bytes(array(typecode).itemsize * self.cap))

    @staticmethod
    def capacity(expected: int) -> int:
        """The slots a table for ``expected`` entries is made with."""
        return max(8, int(expected / _FILL) + 1)

    @classmethod
    def empty(cls, typecode: str) -> _Index:
        """A table of no slots, for ``extend`` to make (nothing may be put before)."""
        index = cls.__new__(cls)
        index.cap = index.count = 0
        index.keys, index.slots = array("q"), array(typecode)
        return index

    def extend(self, more: int) -> None:
        """``more`` empty slots at the end (of an empty table: as the slots move)."""
        self.keys.frombytes(bytes(8 * more))
        self.slots.frombytes(bytes(self.slots.itemsize * more))
        self.cap += more

    def find(self, key: int) -> int:
        """``key``'s slot, or -1 when it has none."""
        keys, cap = self.keys, self.cap
        i = key * _MIX % cap
        while True:
            k = keys[i]
            if k == key:
                return self.slots[i]
            if k == 0:
                return -1
            i += 1
            if i == cap:
                i = 0

    def put(self, key: int, position: int) -> int:
        """Point ``key`` at ``position``; answers where it pointed before, or -1."""
        keys, cap = self.keys, self.cap
        i = key * _MIX % cap
        while True:
            k = keys[i]
            if k == key:
                old = self.slots[i]
                self.slots[i] = position
                return old
            if k == 0:
                keys[i] = key
                self.slots[i] = position
                self.count += 1
                return -1
            i += 1
            if i == cap:
                i = 0

    def resized(self, expected: int) -> _Index:
        """A copy with room for ``expected`` entries at ``_FILL``."""
        bigger = _Index(max(expected, self.count), self.slots.typecode)
        for k, p in zip(self.keys, self.slots, strict=True):
            if k:
                bigger.put(k, p)
        return bigger

    def widened(self) -> _Index:
        wide = _Index.__new__(_Index)
        wide.cap, wide.count, wide.keys = self.cap, self.count, self.keys
        wide.slots = array("Q", self.slots)
        return wide

    @property
    def nbytes(self) -> int:
        return self.cap * (self.keys.itemsize + self.slots.itemsize)


class CompactDigests:
    """A map of (brand, phone) to digest, compact in memory. ``get_many`` answers
    what ``put`` stored; nothing is ever removed (the replica replaces the whole
    ``CompactDigests`` when it loads the view afresh, or compacts it).

    The replica (``DigestReplica``) keeps a digest per (phone, brand) for as long as the
    process runs. As Python objects (a ``bytes`` and a phone string per entry, in a
    dict) that was about 300 bytes each; here it is about 50 at a million subscribers:

    * **The digests** are encoded by ``services.wire.compact_digest`` (a shape number
      and the values that differ: a lone grant is 32 bytes) and laid end to end in one
      ``bytearray``. A digest rewritten at the same size is rewritten in place; one of
      another size goes elsewhere, and its old place is reused by the next digest of
      that size (a free list per size). Places of sizes no longer written, and shapes
      and strings no digest uses any more, are reclaimed only by a ``Compaction``,
      which ``wants_compaction`` says is due.
    * **The index** is one open-addressing table per brand (linear probing): the phone
      number as an integer (its E.164 digits) in one ``array('q')``, where its digest
      starts in another, slots left empty holding 0. That is 12 bytes a slot, filled
      to 60-80 % (sized for what a load reads, grown by a third when 80 % full).
    * What this cannot hold (a phone that is no E.164 number, a digest the encoding
      refuses) is kept as a ``Digest`` object in a plain dict: never expected, so never
      costly, and answered all the same.

    Not safe for use from several threads; the replica uses it from the event loop.
    """

    def __init__(self) -> None:
        self._shapes = Shapes()
        self._arena = bytearray()
        self._indexes: dict[str, _Index] = {}
        self._free: dict[int, list[int]] = {}
        self._odd: dict[str, dict[str, Digest]] = {}
        self._typecode = "I"
        self._loading: dict[str, tuple[array[int], array[int]]] = {}
        self._writes = 0
        self._free_bytes = 0
        self._tables_at = 0
        """``Shapes.nbytes`` when this copy was built: what grew since may be dead."""
        self._mirror: CompactDigests | None = None
        """The compacted copy being built (``Compaction``), which every ``put`` reaches too."""
        self.compactable = True
        """False once a compaction of this copy was refused: it is not tried again."""
        self.compacting = False
        """Whether a ``Compaction`` of this copy is under way."""
        self.size = 0
        """How many (brand, phone) entries there are."""

    def put(self, brand: str, phone: str, digest: Digest) -> None:
        """Store ``digest`` for ``phone`` towards ``brand``, replacing any before."""
        self._writes += 1
        if self._mirror is not None:
            self._mirror.put(brand, phone, digest)
        key = phone_key(phone)
        if key == 0:
            phones = self._odd.setdefault(brand, {})
            self.size += phone not in phones
            phones[phone] = digest
            return
        index = self._indexes.get(brand)
        if index is None:
            index = self._indexes[brand] = _Index(1, self._typecode)
        elif index.count + 1 > index.cap * _GROW_AT:
            index = self._indexes[brand] = index.resized(index.count + 1)
        try:
            data: bytes | None = self._shapes.encode(digest)
        except Unencodable:
            data = None
        old = index.find(key)  # the position + 1, _ODD, or -1 when new
        if old == _ODD:
            del self._odd[brand][phone]
        elif old > 0:
            size = self._shapes.size_at(self._arena, old - 1)
            if data is not None and size == len(data):
                self._arena[old - 1 : old - 1 + size] = data
                return
            self._free.setdefault(size, []).append(old - 1)
            self._free_bytes += size
        if data is None:
            self._odd.setdefault(brand, {})[phone] = digest
            slot = _ODD
        else:
            slot = self._place(data) + 1
            # Placed past 4 GiB, it widens every index into a new one: this one too.
            index = self._indexes[brand]
        if index.put(key, slot) == -1:
            self.size += 1

    def _place(self, data: bytes) -> int:
        free = self._free.get(len(data))
        if free:
            position = free.pop()
            self._free_bytes -= len(data)
            self._arena[position : position + len(data)] = data
            return position
        position = len(self._arena)
        if position + len(data) > _WIDE and self._typecode == "I":
            self._typecode = "Q"
            self._indexes = {b: i.widened() for b, i in self._indexes.items()}
        self._arena += data
        return position

    def needs_room(self, brand: str, more: int) -> bool:
        """Whether putting ``more`` new entries would make ``put`` grow ``brand``'s index."""
        index = self._indexes.get(brand)
        return index is not None and index.count + more > index.cap * _GROW_AT

    def grown_index(self, brand: str, more: int) -> tuple[_Index, int] | None:
        """A larger copy of ``brand``'s index, with room for ``more`` entries beyond
        those it holds, if putting them would make ``put`` grow it; else None.

        ``put`` would rebuild it in place, in the caller's thread: some 8 s at ten
        million entries. This only reads the index, so it may run in a worker
        thread while the event loop keeps reading it; ``install`` then puts the
        copy in place."""
        if not self.needs_room(brand, more):
            return None
        writes = self._writes
        return self._indexes[brand].resized(self._indexes[brand].count + more), writes

    def install(self, brand: str, grown: tuple[_Index, int]) -> None:
        """Use the index ``grown_index`` made, which must have seen every write."""
        index, writes = grown
        if writes != self._writes:
            raise RuntimeError("the digests changed while their index was copied")
        self._indexes[brand] = index

    def add(self, brand: str, phone: str, digest: Digest) -> None:
        """``put`` for a copy being loaded, where each (brand, phone) comes once: the
        index entries wait in plain arrays until ``seal`` builds each brand's index
        at its size. (Grown a third at a time on the way to millions, an index would
        be rebuilt dozens of times.) Nothing may be read before ``seal``."""
        key = phone_key(phone)
        if key == 0:
            self.put(brand, phone, digest)
            return
        try:
            slot = self._place(self._shapes.encode(digest)) + 1
        except Unencodable:
            self._odd.setdefault(brand, {})[phone] = digest
            slot = _ODD
        keys, slots = self._loading.setdefault(brand, (array("q"), array("Q")))
        keys.append(key)
        slots.append(slot)
        self.size += 1

    def add_stored(self, brand: str, phone: str, payload: bytes) -> bool:
        """``add`` of a digest as stored (``services.wire.digest``, after its version
        byte), read without building its named tuples first: half a load's work.
        False, with nothing added, when it is not one to keep this way; the caller
        then reads it as usual and ``add``s it."""
        key = phone_key(phone)
        if key == 0:
            return False
        try:
            data = self._shapes.encode(untyped_payload(payload))
        except (Unencodable, ValueError, TypeError):  # msgpack's errors are ValueErrors
            return False
        keys, slots = self._loading.setdefault(brand, (array("q"), array("Q")))
        keys.append(key)
        slots.append(self._place(data) + 1)
        self.size += 1
        return True

    def seal(self) -> None:
        """Build the indexes of what ``add`` added."""
        for brand, (keys, slots) in self._loading.items():
            index = self._indexes.get(brand)
            if index is None:
                index = _Index(len(keys), self._typecode)
            else:
                index = index.resized(index.count + len(keys))
            for key, slot in zip(keys, slots, strict=True):
                index.put(key, slot)
            self._indexes[brand] = index
        self._loading = {}
        self._tables_at = self._shapes.nbytes

    def get_many(self, brand: str, phones: Sequence[str]) -> dict[str, Digest]:
        """The digests of those ``phones`` that have one towards ``brand``.

        Raises ``Unreadable`` when stored bytes cannot be read back (the caller
        fails closed)."""
        found: dict[str, Digest] = {}
        index = self._indexes.get(brand)
        if index is not None:
            keys, slots, cap = index.keys, index.slots, index.cap
            data = self._arena
            decode = self._shapes.decode
            for phone in phones:
                digits = phone[1:]
                if not (
                    phone[:1] == "+"
                    and phone.isascii()
                    and digits.isdigit()
                    and digits[:1] != "0"
                    and len(digits) <= 18
                ):
                    continue
                key = int(digits)
                # ``_Index.find``, inline: this loop is most of what a batch costs here.
                i = key * _MIX % cap
                while True:
                    k = keys[i]
                    if k == key:
                        slot = slots[i]
                        if slot != _ODD:
                            found[phone] = decode(data, slot - 1)
                        break
                    if k == 0:
                        break
                    i += 1
                    if i == cap:
                        i = 0
        odd = self._odd.get(brand)
        if odd:
            for phone in phones:
                digest = odd.get(phone)
                if digest is not None:
                    found[phone] = digest
        return found

    def brands(self) -> set[str]:
        return set(self._indexes) | set(self._odd)

    @property
    def nbytes(self) -> int:
        """The bytes of the arena and the indexes (what grows with the entries)."""
        return len(self._arena) + sum(i.nbytes for i in self._indexes.values())

    @property
    def dead_bytes(self) -> int:
        """What a compaction may reclaim, at most: the arena's free places, and the
        shapes and strings made since this copy was built (some may still be used)."""
        return self._free_bytes + max(0, self._shapes.nbytes - self._tables_at)

    def wants_compaction(self, floor: int = COMPACT_FLOOR) -> bool:
        """Whether ``dead_bytes`` passed ``COMPACT_AT`` of the arena and the tables
        together (and ``floor``). Compacting then costs a copy of the live entries
        for at least as many bytes freed, so its work is bounded by the updates'."""
        dead = self.dead_bytes
        return (
            self.compactable
            and not self.compacting
            and dead >= floor
            and dead > COMPACT_AT * (len(self._arena) + self._shapes.nbytes)
        )

    def stats(self) -> dict[str, int]:
        """For the bench and the capacity plan: where the bytes are."""
        digest_shapes, campaign_shapes, strings = self._shapes.counts
        return {
            "entries": self.size,
            "arena_bytes": len(self._arena),
            "free_bytes": self._free_bytes,
            "table_bytes": self._shapes.nbytes,
            "dead_bytes": self.dead_bytes,
            "index_bytes": sum(i.nbytes for i in self._indexes.values()),
            "odd_entries": sum(map(len, self._odd.values())),
            "digest_shapes": digest_shapes,
            "campaign_shapes": campaign_shapes,
            "strings": strings,
        }


class CompactionRefused(RuntimeError):
    """A compacted copy that may not equal its source: the source is kept."""


class Compaction:
    """A compacted copy of ``source``, built a bounded step at a time while the
    source goes on answering and taking writes.

    The copy has its own ``Shapes`` and an arena holding only live digests, packed
    end to end: each entry of the source is read back and put into it, so free
    places, and shapes and strings that no digest uses any more, are left behind.

    The first steps make the copy's empty indexes, a slice at a time (at ten million
    entries one is 200 MB: some 0.3 s made at once). Then every ``put`` to the
    source reaches the copy too (the source's mirror), so an entry copied before a
    write is rewritten with it, and one copied after it reads the written digest: at
    the end the copy holds what the source holds. ``step`` answers it only then; the
    caller puts it in the source's place in one assignment, so a reader sees the one
    copy or the other, never half of a compaction.

    Everything runs in the caller's thread (the event loop): no step shares its
    data with another thread, and each is bounded by its ``budget``.
    """

    def __init__(self, source: CompactDigests) -> None:
        if source.compacting:
            raise RuntimeError("the digests are being compacted already")
        source.compacting = True
        self.source = source
        self.target = CompactDigests()
        # Each index sized for its brand's entries now, as a load sizes it, so that
        # the copy does not rebuild one a third at a time in some step.
        self._sizes = [(b, _Index.capacity(i.count)) for b, i in source._indexes.items()]
        self._todo: list[tuple[str, _Index]] = []
        self._at = 0
        self._odd: list[tuple[str, str]] = []
        self._over = False

    def step(self, budget: float) -> CompactDigests | None:
        """Work for about ``budget`` seconds; the compacted copy once every entry is
        in it, else None. ``CompactionRefused`` (the source detached, and not
        compacted again) when the copy would not equal the source; ``Unreadable``
        from a source entry that cannot be read, likewise."""
        if self._over:
            raise RuntimeError("this compaction is over")
        try:
            return self._step(time.perf_counter() + budget)
        except BaseException:
            self.abandon()
            raise

    def _step(self, deadline: float) -> CompactDigests | None:
        source, target = self.source, self.target
        while self._sizes:
            brand, cap = self._sizes[-1]
            index = target._indexes.get(brand)
            if index is None:
                index = target._indexes[brand] = _Index.empty(target._typecode)
            index.extend(min(_SLICE, cap - index.cap))
            if index.cap == cap:
                self._sizes.pop()
            if time.perf_counter() > deadline:
                return None
        if source._mirror is None:
            # Copying starts: from here on every write reaches the copy. The
            # indexes as they are now: an entry added later is mirrored, and one
            # that is here stays in these arrays if its brand's index is regrown.
            source._mirror = target
            self._todo = list(source._indexes.items())
            self._odd = [(b, phone) for b, phones in source._odd.items() for phone in phones]
        put = target.put
        while self._todo:
            brand, index = self._todo[-1]
            keys, cap, at = index.keys, index.cap, self._at
            while at < cap:
                stop = min(cap, at + 16)
                for key in keys[at:stop]:
                    if key:
                        phone = f"+{key}"
                        # The digest the source answers now: the one written last.
                        for digest in source.get_many(brand, (phone,)).values():
                            put(brand, phone, digest)
                at = stop
                if time.perf_counter() > deadline:
                    self._at = at
                    return None
            self._todo.pop()
            self._at = 0
        while self._odd:
            brand, phone = self._odd.pop()
            for digest in source.get_many(brand, (phone,)).values():
                put(brand, phone, digest)
            if self._odd and len(self._odd) % 16 == 0 and time.perf_counter() > deadline:
                return None
        return self._finished()

    def _finished(self) -> CompactDigests:
        source, target = self.source, self.target
        if target.size != source.size:
            raise CompactionRefused(
                f"the compacted copy holds {target.size} entries where its source holds "
                f"{source.size}"
            )
        source._mirror = None
        source.compacting = False
        self._over = True
        target._tables_at = target._shapes.nbytes
        return target

    def abandon(self) -> None:
        """Stop: the source takes no more mirrored writes, and is not compacted again."""
        self._over = True
        self.source._mirror = None
        self.source.compactable = False


__all__ = ["CompactDigests", "Compaction", "CompactionRefused", "Unreadable", "phone_key"]
