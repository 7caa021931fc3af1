"""The ports the domain needs from the outside world, in the domain's own terms.

Adapters are named for their technology and port (``KafkaLedger``,
``PostgresConsentView``); each passes the same conformance suite in
``tests/conformance``.
"""

from __future__ import annotations

import dataclasses
import enum
import heapq
import itertools
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple, Protocol, TypeVar

from ledger.events import CampaignEvent, LedgerEvent, Recorded, SubscriberEvent

if TYPE_CHECKING:
    # Named in the ports' signatures only. The digest and the state bring the policy's
    # data (phonenumbers' geocoder, holidays: most of a second), which a client of
    # the API that only reads a consistency token or a stream's name has no use for.
    from ledger.chain import ChainRecord, Checkpoint
    from ledger.digest import Digest
    from ledger.opt_out_rate import SendingCounts
    from ledger.state import CampaignHistory, SubscriberState


class Flagged(NamedTuple):
    """A reply flagged as a possible opt-out, as the review queue orders it."""

    position: int
    """Where the view put it in the queue: each flagged reply it applies gets a larger
    position than every one applied before it. Positions never go back, a rebuild
    included, so a reader that has seen position n finds every reply applied since
    above n, whenever it happened and whichever partition it came from."""
    event_id: str
    phone: str


class RequestUse(NamedTuple):
    """The request that first used a request id of a brand: what it said (its
    fingerprint, ``ledger.commands.request_fingerprint``) and the ids of the events
    it wrote. A later request with the same id that says anything else is not a
    retry of it, and none of its events is a fact."""

    fingerprint: str
    event_ids: tuple[str, ...]


class RequestTaken(NamedTuple):
    """What ``ConsentView.take_request`` found, in one step: the use of the request id
    that stands (None: none, the id left free for a copy of a message), whether
    this call took the id (False: a request took it before, perhaps this very one),
    and for a send, the applied ``MessageSent`` that first recorded its provider
    message id, if another did."""

    use: RequestUse | None
    taken: bool
    sent_as: str | None = None
    claimed_by: str | None = None
    """For a send: the event that claimed its message id first (this one's, when this
    call or an earlier attempt of it did). Another's, not yet ``sent_as``, leaves
    the request id free too: the caller lets the view catch up with the phone and
    asks again with ``past_claims``."""
    claimed_content: str | None = None
    """What the claiming send said of its message (``ledger.events.message_content``);
    None for a claim made before claims kept it."""


class MessageClaim(NamedTuple):
    """The send that holds a provider message id's claim (``ConsentView.claim_message``):
    its event, and what it said of the message (None: claimed before claims kept it)."""

    event_id: str
    content: str | None = None

    def refuses(self, event_id: str, content: str | None) -> bool:
        """Whether this claim refuses the send ``event_id`` saying ``content``: it is
        another send's, which said something else (as far as both are known)."""
        return (
            self.event_id != str(event_id)
            and None not in (self.content, content)
            and self.content != content
        )


class RequestClaim(NamedTuple):
    """One request's claim of its request id (``ConsentView.claim_requests``)."""

    brand: str
    request_id: str
    fingerprint: str
    event_ids: tuple[str, ...]


class AppendTurn(enum.Enum):
    """Where an import's turn to append a record's facts stands
    (``ConsentView.take_append_turns``)."""

    TAKEN = "taken"
    """This holder's now: it appends, then ends the turn."""
    APPENDED = "appended"
    """Another holder appended the facts: the record is present."""
    HELD = "held"
    """Another holder's, still running: it may be appending them right now."""


class Stream(enum.Enum):
    """The ledger's two streams: subscriber facts keyed by phone, and campaign rules."""

    SUBSCRIBERS = "subscribers"
    CAMPAIGNS = "campaigns"

    @staticmethod
    def of(event: LedgerEvent) -> Stream:
        if isinstance(event, SubscriberEvent):
            return Stream.SUBSCRIBERS
        if isinstance(event, CampaignEvent):
            return Stream.CAMPAIGNS
        raise TypeError(f"{type(event).__name__} belongs to no stream")


Offsets = Mapping[int, int]
"""Per partition, the offset of the next event to read (Kafka's convention)."""


class Applied(NamedTuple):
    """Where the ledger holds an event the view has applied (``known_events``)."""

    stream: Stream
    partition: int
    offset: int


@dataclass(frozen=True)
class ConsistencyToken:
    """ "At least as fresh as this write": per stream and partition, the next offset
    a reader must have applied to have seen the write."""

    offsets: Mapping[tuple[Stream, int], int]

    def merge(self, other: ConsistencyToken) -> ConsistencyToken:
        merged = dict(self.offsets)
        for key, offset in other.offsets.items():
            merged[key] = max(merged.get(key, 0), offset)
        return ConsistencyToken(merged)

    @staticmethod
    def through(applied: Collection[Applied]) -> ConsistencyToken:
        """``after`` for events known by where they are (``ConsentView.known_events``)."""
        offsets: dict[tuple[Stream, int], int] = {}
        for stream, partition, offset in applied:
            key = (stream, partition)
            offsets[key] = max(offsets.get(key, 0), offset + 1)
        return ConsistencyToken(offsets)

    @staticmethod
    def after(recorded: Sequence[Recorded]) -> ConsistencyToken:
        offsets: dict[tuple[Stream, int], int] = {}
        for r in recorded:
            key = (Stream.of(r.event), r.position.partition)
            offsets[key] = max(offsets.get(key, 0), r.position.offset + 1)
        return ConsistencyToken(offsets)

    def encode(self) -> str:
        encoded: str | None = self.__dict__.get("_encoded")
        if encoded is None:  # kept: the service answers many reads with one token
            encoded = ",".join(
                f"{stream.value}:{partition}:{offset}"
                for (stream, partition), offset in sorted(
                    self.offsets.items(), key=lambda kv: (kv[0][0].value, kv[0][1])
                )
            )
            object.__setattr__(self, "_encoded", encoded)
        return encoded

    @staticmethod
    def decode(text: str) -> ConsistencyToken:
        """Parse ``encode``'s output; raises ``ValueError`` on anything else."""
        offsets: dict[tuple[Stream, int], int] = {}
        for part in filter(None, text.split(",")):
            # Whole, and ASCII digits: int() also reads " 7", "+7", "7_0" and other scripts' digits.
            if _TOKEN_PART.fullmatch(part) is None:
                raise ValueError(f"not a consistency token part: {part!r}")
            stream, partition, offset = part.split(":")
            key = (Stream(stream), int(partition))
            if key in offsets:
                # ``encode`` names each partition once; read as either offset, a
                # token naming one twice could pass a check as the other.
                raise ValueError(f"names {stream}:{int(partition)} twice")
            offsets[key] = int(offset)
        return ConsistencyToken(offsets)


_TOKEN_PART = re.compile(r"(?:subscribers|campaigns):[0-9]{1,9}:[0-9]{1,19}")


T = TypeVar("T")


class ChangesPage(NamedTuple):
    """A page of a brand's changes (``ConsentView.changes``)."""

    events: list[Recorded]
    through: dict[int, int]
    """Per partition, where the next page starts once every event of this one is
    taken: after its last event there, or, where the page holds every wanted event
    the view had applied, at the view's position, past the events not wanted (a
    caught-up reader need not look through them again)."""


def page_of_changes(
    partitions: Mapping[int, Sequence[T]],
    positions: Mapping[int, int],
    after: Offsets,
    limit: int,
    key: Callable[[T], tuple[datetime, int, int]],
) -> tuple[list[T], dict[int, int]]:
    """The first ``limit`` items of the partitions' lists (each in offset order, at
    most ``limit`` long, read with the view's ``positions`` in one snapshot),
    interleaved by ``key`` (recorded time, partition, offset): of the lists' next
    items, the least comes first. Each list's order is kept, whatever its recorded
    times, so the page holds a prefix of every list. With it, ``ChangesPage.through``."""
    page = list(itertools.islice(heapq.merge(*partitions.values(), key=key), limit))
    taken: dict[int, int] = {}
    for item in page:
        _, partition, offset = key(item)
        taken[partition] = offset + 1
    through = dict(after)
    for partition, listed in partitions.items():
        last = taken.get(partition)
        if len(listed) < limit and (not listed or last == key(listed[-1])[2] + 1):
            through[partition] = max(positions.get(partition, 0), after.get(partition, 0))
        elif last is not None:
            through[partition] = last
    return page, through


def recorded_key(recorded: Recorded) -> tuple[datetime, int, int]:
    return (recorded.recorded_at, recorded.position.partition, recorded.position.offset)


class LedgerUnavailable(ConnectionError):
    """The ledger's storage did not acknowledge an append (or a read) in time."""


TOO_LARGE = "is too large to record as one ledger fact"
"""Why a request is refused whose fact the ledger refuses as too large
(``EventTooLarge``: on field ``request``, or on each message of a batched send)."""


class EventTooLarge(ValueError):
    """The ledger's storage refuses an event as larger than one record may be.

    Unlike ``LedgerUnavailable`` this is no passing failure: the same event would be
    refused again, so the request must not be retried as it is. ``places`` are those
    of the events too large in the append, when it refused them before sending any
    (empty when the storage refused one as it came)."""

    def __init__(self, message: str, places: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.places = tuple(places)


class EventLog(ABC):
    """The append-only ledger of facts.

    Appends are unconditional (no read-modify-write, no expected version): events
    are facts and the fold decides what a late or contradictory one means.
    """

    @abstractmethod
    async def append(self, events: Sequence[LedgerEvent]) -> list[Recorded]:
        """Durably append ``events`` in order and return them as recorded.

        Returns only after the storage has acknowledged every event; when storage
        does not acknowledge in time it raises ``LedgerUnavailable``, and the caller
        must treat the write as not done (and may retry: the event ids make a retry
        harmless to readers). An event the storage cannot hold in one record raises
        ``EventTooLarge``, which a retry would meet again.
        """

    async def too_large(self, events: Sequence[LedgerEvent]) -> list[int]:
        """The places in ``events`` of those ``append`` would refuse as too large
        (``EventTooLarge``), as far as the ledger can tell without writing or asking
        its storage: what a dry run refuses beside what the write would. A ledger with
        no limit of its own below any event's size knows of none."""
        return []

    def record_limit(self) -> int | None:
        """The bytes a record may have, as far as the ledger knows now; None: it has
        no limit of its own (``too_large`` knows of none)."""
        return None

    @property
    def longest_append_s(self) -> float | None:
        """The longest an append may stay on its way to storage, counted from when it
        began: past it, its events are stored or never will be (a process killed
        mid-append included). None: the ledger cannot bound it."""
        return None

    @abstractmethod
    async def read(
        self, stream: Stream, partition: int, start: int, limit: int = 1000
    ) -> list[Recorded]:
        """Up to ``limit`` events of one partition from offset ``start`` on."""

    @abstractmethod
    async def partitions(self, stream: Stream) -> list[int]:
        """The partition numbers of ``stream``."""

    @abstractmethod
    async def end_offsets(self, stream: Stream) -> dict[int, int]:
        """Per partition, the offset the next appended event will get."""

    async def every_end_offset(self) -> dict[Stream, dict[int, int]]:
        """``end_offsets`` of every stream. The freshness guard asks for them many
        times a second; an adapter that can answer for all streams in one request
        to its storage does so."""
        return {stream: await self.end_offsets(stream) for stream in Stream}

    @abstractmethod
    def subscribe(
        self, stream: Stream, start: Offsets, *, poll_timeout: float = 0.5
    ) -> AsyncIterator[list[Recorded]]:
        """Batches of new events from ``start`` on, forever; an empty batch when idle.

        A partition missing from ``start`` is read from offset 0 (a fresh view
        subscribes with ``{}``).
        """

    def partition_for(self, phone: str) -> int | None:
        """The partition a phone's subscriber events go to, when the adapter can tell.

        Readers use it to wait only for the partition that matters; ``None`` makes
        them wait for every partition, which is slower but equally safe.
        """
        return None

    @property
    def stores_events_once(self) -> bool:
        """Whether ``append`` stores no event whose id the ledger holds already (and
        answers it where it is stored): then an append tried again after an unknown
        outcome may simply be appended again. Elsewhere the caller must first find
        which of its events are stored (``settled``, then the view)."""
        return False

    async def settled(self) -> None:  # noqa: B027 - optional hook
        """Return once no event of an append this process began before the call is
        still on its way to storage (each stored or given up on): only then does a
        look at what is stored tell whether an append that failed wrote its events.
        Raises ``LedgerUnavailable`` when that is not so within the storage's bound."""

    async def close(self) -> None:  # noqa: B027 - optional hook, most adapters need it
        """Release connections; flush anything buffered."""


class WrappedEventLog(EventLog):
    """An ``EventLog`` that hands every call to ``wrapped``: the base of wrappers that
    change one thing (how appends are timed, what they seal) and nothing else."""

    def __init__(self, wrapped: EventLog) -> None:
        self._ledger = wrapped

    async def append(self, events: Sequence[LedgerEvent]) -> list[Recorded]:
        return await self._ledger.append(events)

    async def too_large(self, events: Sequence[LedgerEvent]) -> list[int]:
        return await self._ledger.too_large(events)

    def record_limit(self) -> int | None:
        return self._ledger.record_limit()

    async def read(
        self, stream: Stream, partition: int, start: int, limit: int = 1000
    ) -> list[Recorded]:
        return await self._ledger.read(stream, partition, start, limit)

    async def partitions(self, stream: Stream) -> list[int]:
        return await self._ledger.partitions(stream)

    async def end_offsets(self, stream: Stream) -> dict[int, int]:
        return await self._ledger.end_offsets(stream)

    async def every_end_offset(self) -> dict[Stream, dict[int, int]]:
        return await self._ledger.every_end_offset()

    def subscribe(
        self, stream: Stream, start: Offsets, *, poll_timeout: float = 0.5
    ) -> AsyncIterator[list[Recorded]]:
        return self._ledger.subscribe(stream, start, poll_timeout=poll_timeout)

    def partition_for(self, phone: str) -> int | None:
        return self._ledger.partition_for(phone)

    @property
    def stores_events_once(self) -> bool:
        return self._ledger.stores_events_once

    @property
    def longest_append_s(self) -> float | None:
        return self._ledger.longest_append_s

    async def settled(self) -> None:
        await self._ledger.settled()

    async def close(self) -> None:
        await self._ledger.close()


class AppliedPositions(Protocol):
    """How far a copy of the ledger has applied it: what the freshness guard watches
    and what a replica compares with the view. ``ConsentView`` is one; an in-memory
    copy of the view's digests (``DigestReplica``) is another."""

    async def positions(self, stream: Stream) -> dict[int, int]:
        """Per partition, the offset of the next event not yet applied."""
        ...


class ReplicaStats(Protocol):
    """What monitoring reads off an in-memory replica of the view."""

    @property
    def size(self) -> int:
        """How many entries it holds."""
        ...

    @property
    def loads(self) -> int:
        """How many times it has read the whole view."""
        ...

    @property
    def confirmed_at(self) -> float:
        """When (``time.monotonic``) its positions were last confirmed current."""
        ...

    @property
    def unreadable(self) -> int:
        """How many of the view's entries it could not read (each answered "no")."""
        ...


class ViewRebuilt(Exception):
    """A partition's stored position went back below what an applier knew it at: a
    rebuild emptied the view beneath it. Folding on from the applier's own place
    would leave a gap the rebuild then skips as applied; the applier reads the
    stored positions again and follows on from there."""


def refuse_if_rebuilt(
    stream: Stream,
    batch: Sequence[Recorded],
    stored: Mapping[int, int],
    known: Mapping[int, int] | None,
) -> None:
    """``ViewRebuilt`` when a partition of ``batch`` is ``stored`` below the position
    its applier ``known`` it at (``ConsentView.apply``'s check); None: no check."""
    if known is None:
        return
    partitions = sorted({r.position.partition for r in batch})
    behind = [p for p in partitions if stored.get(p, 0) < known.get(p, 0)]
    if behind:
        raise ViewRebuilt(f"{stream.value} partitions {behind} were emptied by a rebuild")


def advance_known(known: dict[int, int], batch: Sequence[Recorded]) -> None:
    """Raise a follower's ``known`` positions past ``batch``, once the view applied it."""
    for recorded in batch:
        p, offset = recorded.position.partition, recorded.position.offset
        known[p] = max(known.get(p, 0), offset + 1)


class UnreadableDigests(Exception):
    """``DigestReads.digests`` found a stored digest it cannot read for some of the
    phones asked about. ``found`` is what it answers for the others; ``phones`` are
    those it cannot answer for, which a check answers "not allowed" (fail closed for
    them alone: one corrupt row must not stop every other number's answer)."""

    def __init__(self, found: dict[str, Digest], phones: Sequence[str]) -> None:
        super().__init__(f"the stored digests of {len(phones)} numbers cannot be read")
        self.found = found
        self.phones = tuple(phones)


class DigestReads(ABC):
    """What CanSend reads of the view: digests, and the positions they reflect.

    ``ConsentView`` is one. A speed layer in front of a view (``DigestReplica``, an
    in-memory copy) is another: it wraps the view, answers the same questions with
    the same answers, and passes the same slice of the view's conformance suite
    (``DigestReadsSuite``), so the use cases never know it is there.
    """

    @abstractmethod
    async def positions(self, stream: Stream) -> dict[int, int]:
        """Per partition, the offset of the next event not applied. Once it has
        answered, ``digests`` reflect at least those positions (the freshness guard
        relies on that)."""

    @abstractmethod
    async def digests(self, brand: str, phones: Sequence[str]) -> dict[str, Digest]:
        """What the policy reads (``ledger.digest``) about each phone the view has a
        fact for towards ``brand``; phones it knows nothing about are left out.

        Each carries the pending candidates recorded for its phone under
        ``ledger.events.ANY_BRAND`` too (``ledger.digest.with_phone_wide``): a STOP
        whose brand is unknown concerns every brand, so every brand's check reads it.

        Raises ``UnreadableDigests`` when a phone's stored digest, or its phone-wide
        one, cannot be read: the others are answered in it."""

    async def readable_digests(
        self, brand: str, phones: Sequence[str]
    ) -> tuple[dict[str, Digest], frozenset[str]]:
        """``digests``, and beside them the phones whose stored digest cannot be read
        (``UnreadableDigests``), for callers that go on for the others."""
        try:
            return await self.digests(brand, phones), frozenset()
        except UnreadableDigests as exc:
            return exc.found, frozenset(exc.phones)


class CampaignReads(ABC):
    """What a check reads of a campaign: its rules, every version of them.

    ``ConsentView`` is one. A speed layer in front of a view (``CampaignHistoryCache``)
    is another, and passes the same slice of the view's conformance suite
    (``CampaignReadsSuite``).
    """

    @abstractmethod
    async def campaign_history(self, brand: str, campaign: str) -> CampaignHistory:
        """Every definition and change of the campaign (empty if never defined)."""

    def observe(self, seen: ConsistencyToken) -> None:  # noqa: B027 (a no-op by design)
        """The view was seen at ``seen`` (the freshness guard's observation). Later
        answers reflect at least those positions. A view always answers from what it
        has applied, so this is for speed layers that answer from memory."""


class ConsentView(DigestReads, CampaignReads):
    """The read model the policy reads, built by folding the ledger.

    ``apply`` stores the folded rows and the consumed positions in one atomic
    step, skipping anything at or before the stored position, so replaying a batch
    changes nothing.
    """

    @abstractmethod
    async def apply(
        self, stream: Stream, batch: Sequence[Recorded], *, known: Mapping[int, int] | None = None
    ) -> None:
        """Fold ``batch`` (ledger order) into the view and advance the positions.

        ``known``: a follower's positions, per partition, as it last saw them stored
        (read before following, raised by each batch it applied). A partition stored
        below its known position was emptied beneath the follower by a rebuild: the
        batch is refused with ``ViewRebuilt``, nothing applied."""

    @abstractmethod
    async def subscriber_states(
        self, brand: str, phones: Sequence[str]
    ) -> dict[str, SubscriberState]:
        """The folded state of each phone towards ``brand`` (an empty state if unknown)."""

    @abstractmethod
    async def campaign_for_number(self, to_phone: str) -> tuple[str, str] | None:
        """The (brand, campaign) that sends from ``to_phone``, by the current rules;
        of several that list it, the one ``ledger.state.sender_number_holder`` names."""

    async def campaign_names(self, brand: str) -> list[str]:
        """Every campaign of ``brand`` ever defined, by name (its own settings left
        out). Not abstract, so a test's stand-in view need not have it; a view that
        lacks it refuses the definition that asks (fail closed)."""
        raise NotImplementedError

    async def brand_names(self) -> list[str]:
        """Every brand a campaign was ever defined for (or its settings set), by
        name; like ``campaign_names``, not abstract."""
        raise NotImplementedError

    @abstractmethod
    async def history(self, phone: str, brand: str | None = None) -> list[Recorded]:
        """Every applied event of ``phone`` (optionally one brand's), ledger order."""

    @abstractmethod
    async def find_event(self, event_id: str) -> Recorded | None:
        """The applied event with this id, if the view has it (for idempotent writes)."""

    @abstractmethod
    async def request_use(self, brand: str, request_id: str) -> RequestUse | None:
        """The request that first used ``request_id`` of ``brand``: the one that took
        it with ``claim_request``, or else the first the view applied. None when
        neither happened (or the id was used before requests were recorded)."""

    @abstractmethod
    async def claim_request(
        self, brand: str, request_id: str, fingerprint: str, event_ids: Sequence[str]
    ) -> RequestUse:
        """Take ``request_id`` of ``brand`` for the request with ``fingerprint`` and
        ``event_ids``, unless a request took it before; the use that stands either
        way. Atomic and durable among every writer that shares the view, in any
        process, and kept by a rebuild: of two requests claiming one id at once,
        one gets it and the other is told. The view's fold keeps to it: an event
        whose request id another fingerprint holds is not applied."""

    async def take_request(
        self,
        brand: str,
        request_id: str,
        fingerprint: str,
        event_ids: Sequence[str],
        message: tuple[str, str] | None = None,
        *,
        content: str | None = None,
        past_claims: bool = False,
    ) -> RequestTaken:
        """``claim_request``, telling whether this call took the id, and for a send
        (``message``: its phone and provider message id) ``message_use`` with it: a
        message the view has recorded under another event leaves the id free, as
        that send is answered, not written. A send also claims its message id for
        its event and ``content`` (``claim_message``); one another send claimed first
        leaves the request id free as well, unless ``past_claims`` (asked again once
        the view has caught up with the phone: ``message_use`` then decides alone).

        Adapters answer in one round trip; this default asks in turn. (Two attempts
        of one request at once may both be told they took it; they append the same
        facts, which the view applies once.)"""
        sent_as = claim = None
        other_claim = False
        before = await self.request_use(brand, request_id)
        if message is not None:
            sent_as = await self.message_use(brand, *message)
            # A send whose request id another request holds is refused: no claim.
            ours = before is None or before.fingerprint == fingerprint
            if ours and (sent_as is None or sent_as in event_ids):
                claim = await self.claim_message(brand, *message, event_ids[0], content)
                other_claim = claim is None or claim.event_id not in event_ids
        claimed_by, claimed_content = claim or (None, None)
        if (
            before is not None
            or (sent_as is not None and sent_as not in event_ids)
            or (other_claim and not past_claims)
            or (claim is not None and claim.refuses(event_ids[0], content))
        ):
            return RequestTaken(before, False, sent_as, claimed_by, claimed_content)
        use = await self.claim_request(brand, request_id, fingerprint, event_ids)
        taken = use == RequestUse(fingerprint, tuple(str(i) for i in event_ids))
        return RequestTaken(use, taken, sent_as, claimed_by, claimed_content)

    async def claim_message(
        self, brand: str, phone: str, message_id: str, event_id: str, content: str | None = None
    ) -> MessageClaim | None:
        """Claim provider message ``message_id`` to ``phone`` for ``brand`` for the send
        ``event_id``, which says ``content`` of it, unless a send claimed it before; the
        claim that stands either way. A claim spares the first send of a message a
        wait, and lets a copy that says something else of it be refused before the
        first can be read; ``message_use``, which the projection keeps, decides which
        send is the message. A claim that is already ``event_id``'s is made anew (its
        age, ``message_claim_ages``, starts again): an attempt of that send is about to
        append. None: this view keeps no claims, and every send waits."""
        return None

    async def claim_messages(
        self, brand: str, claims: Sequence[tuple[str, str, str, str | None]]
    ) -> dict[tuple[str, str], MessageClaim]:
        """``claim_message`` of each (phone, message id, event id, content) in
        ``claims``, for a batch of sends: the claim that stands for each, by (phone,
        message id); a pair missing from the answer reads as claimed by another send.
        Adapters claim in one round trip; this default claims one at a time."""
        held: dict[tuple[str, str], MessageClaim] = {}
        for phone, message_id, event_id, content in claims:
            holder = await self.claim_message(brand, phone, message_id, event_id, content)
            if holder is not None:
                held[(phone, message_id)] = holder
        return held

    async def release_claims(
        self,
        brand: str,
        request: tuple[str, str, Sequence[str]] | None,
        messages: Sequence[tuple[str, str, str]],
    ) -> None:
        """Give up the claims a request made whose events the ledger refused, none of
        them written (``EventTooLarge``): ``request`` (its request id, fingerprint
        and event ids) and each (phone, message id, event id) of ``messages``, each
        only while it is still this request's, so that the request's corrected
        retry is not refused as a reuse. Nothing but a claim made by the refused
        request itself is ever given up: no fact was applied under it; or a text's
        message id whose facts did not reach the view within the freshness bound,
        which the copy recorded instead takes over (``Writes``). This default keeps
        no claims."""

    async def message_claim_ages(
        self, brand: str, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[MessageClaim, float]]:
        """The claim that stands for each (phone, message id) of ``keys`` and the
        seconds since it was made, by the view's own clock (which every instance
        sharing it reads alike). This default keeps no claims."""
        return {}

    async def take_over_message_claims(
        self,
        brand: str,
        claims: Sequence[tuple[str, str, str, str, str | None]],
        older_than_s: float,
    ) -> set[tuple[str, str]]:
        """Give each claim of ``claims`` (phone, message id, the event id holding it,
        the event id taking it, what that send says of the message) to the send
        taking it, only while the claim is still held by that event, was made more
        than ``older_than_s`` seconds ago, and no send of the message is applied:
        one statement, so of two sends taking one claim over at once exactly one
        does. The (phone, message id) pairs taken over. This default keeps no claims."""
        return set()

    async def request_uses(
        self, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], RequestUse]:
        """``request_use`` of each (brand, request id) in ``keys``, those in use only.
        A bulk import asks this of a thousand records at once: adapters answer in
        one round trip; this default asks one at a time."""
        found: dict[tuple[str, str], RequestUse] = {}
        for brand, request_id in keys:
            use = await self.request_use(brand, request_id)
            if use is not None:
                found[(brand, request_id)] = use
        return found

    async def claim_requests(self, claims: Sequence[RequestClaim]) -> list[RequestUse]:
        """``claim_request`` of each claim, answered in order, with its guarantees
        for each (a claim of an id that an earlier claim of the same call took is
        answered with that earlier claim's use). Adapters claim in one round trip;
        this default claims one at a time."""
        return [
            await self.claim_request(c.brand, c.request_id, c.fingerprint, c.event_ids)
            for c in claims
        ]

    async def take_append_turns(
        self, keys: Sequence[tuple[str, str]], holder: str, lease_s: float
    ) -> list[AppendTurn]:
        """Take for ``holder`` (a UUID naming one import) the turn to append the facts
        of each (brand, request id) in ``keys``, answered in order: of imports
        sharing the view that claimed the same record (``claim_requests``, the same
        fingerprint) and find its facts not applied, one appends them and the
        others are told. A turn is this holder's until it ends it
        (``end_append_turns``) or ``lease_s`` seconds pass: a holder that died
        before saying whether it appended leaves its turns to be taken again then.
        Atomic among every writer that shares the view, in any process, and kept by
        a rebuild. This default keeps no turns: every caller appends (the facts are
        the same, under the same ids, and the view applies them once)."""
        return [AppendTurn.TAKEN for _ in keys]

    async def append_turn_holder(self, brand: str, request_id: str) -> str | None:
        """Who holds the turn of (``brand``, ``request_id``) now (``take_append_turns``'s
        ``holder``), while it runs; None when no turn of it is running. This default
        keeps no turns."""
        return None

    async def end_append_turns(
        self, keys: Sequence[tuple[str, str]], holder: str, *, appended: bool
    ) -> None:
        """End ``holder``'s turns of ``keys``: ``appended`` (its append was
        acknowledged; the others are told the record is there), or given up (it
        failed: the next to ask takes the turn and appends). A turn another holder
        took meanwhile is left to it."""

    async def prune_append_turns(self, kept_s: float) -> int:
        """Forget the append turns that ended, or ran out, more than ``kept_s`` seconds
        ago, and say how many. A turn ended appended tells the imports sharing its
        record that the facts are on the ledger only until the view applies them
        (then they find them applied and ask for no turn); one given up or run out is
        as good as none. This default keeps no turns."""
        return 0

    async def known_events(self, event_ids: Sequence[str]) -> dict[str, Applied]:
        """Which of ``event_ids`` the view has applied, each with where the ledger
        holds it (``find_event`` of each, in one round trip where the adapter can): a
        record answered as present is answered as of its facts' places."""
        found = {}
        for i in event_ids:
            recorded = await self.find_event(i)
            if recorded is not None:
                where = recorded.position
                found[i] = Applied(Stream.of(recorded.event), where.partition, where.offset)
        return found

    @abstractmethod
    async def message_use(self, brand: str, phone: str, message_id: str) -> str | None:
        """The id of the applied ``MessageSent`` that first recorded provider message
        ``message_id`` to ``phone`` for ``brand``; a later ``MessageSent`` with that
        message id is the same message and is not applied again."""

    async def message_uses(
        self, brand: str, sends: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], str]:
        """``message_use`` for many (phone, message id) pairs of ``brand`` at once: of
        each pair recorded, the id of its first ``MessageSent``. One pass through the
        single lookup here; an adapter that can ask once (one query) does."""
        found: dict[tuple[str, str], str] = {}
        for phone, message_id in dict.fromkeys(sends):
            event_id = await self.message_use(brand, phone, message_id)
            if event_id is not None:
                found[(phone, message_id)] = event_id
        return found

    async def find_events(self, event_ids: Sequence[str]) -> dict[str, Recorded]:
        """``find_event`` for many ids at once: each applied event among them, by id."""
        found: dict[str, Recorded] = {}
        for event_id in dict.fromkeys(event_ids):
            recorded = await self.find_event(event_id)
            if recorded is not None:
                found[event_id] = recorded
        return found

    @abstractmethod
    async def flagged(self, brand: str, after: int = 0, limit: int | None = None) -> list[Flagged]:
        """The replies flagged as possible opt-outs towards ``brand`` with a position
        above ``after``, in the order of their positions, at most ``limit``: where
        the pending candidates are to be found, and the order the review queue lists
        them in. A reply whose resolution the view has applied is left out; one it
        cannot tell about may be listed (the fold of its number says for certain)."""

    @abstractmethod
    async def open_flagged_times(self) -> list[datetime]:
        """When each flagged reply of every brand that the view does not know to be
        resolved happened: what the overdue gauge counts (cheaply: the view keeps
        the unresolved ones apart). Like ``flagged``, it may include a reply whose
        resolution it cannot tell about."""

    @abstractmethod
    async def changes(
        self,
        brand: str,
        after: Offsets,
        limit: int,
        *,
        campaign: str | None = None,
        types: Collection[str] | None = None,
    ) -> ChangesPage:
        """The applied subscriber events of ``brand`` from ``after`` on (per
        partition, the offset of the first one wanted; 0 for a partition it does
        not name), at most ``limit``: the change stream's next page, and where the
        page after it starts (``ChangesPage.through``).

        With ``campaign``, only the events that name it or name no campaign (a
        brand-wide revocation, an age verification); with ``types``, only events
        of those ``EVENT_TYPE`` names.

        Each partition's events come in offset order and the page holds a prefix
        of each, so a reader that goes on, per partition, after the last offset it
        was given misses none and gets none twice. The partitions are interleaved
        by ``page_of_changes``. Only what the view has applied is listed, and the
        view applies each partition in offset order, so a page never skips an
        event that a later page would list."""

    @abstractmethod
    async def sending_counts(
        self, brand: str, campaign: str | None, start: datetime, end: datetime
    ) -> SendingCounts:
        """Messages sent and numbers opted out in ``[start, end)`` of world time, as
        ``ledger.opt_out_rate.count_sending`` counts them over the applied events."""

    @abstractmethod
    def campaign_writes(self, wait: float) -> AbstractAsyncContextManager[None]:
        """A turn for one campaign write among all writers that share this view, in
        any process. Hold it while the write is checked against the view and
        appended. The next writer then checks after this write was acknowledged.
        Otherwise two claims of one sender number could both see it free.

        A holder that dies gives up its turn. Raises ``TimeoutError`` if the turn
        does not come within ``wait`` seconds."""

    @abstractmethod
    async def reset(self) -> None:
        """Empty the view and its positions, for a rebuild from offset 0. Stop the
        projectors writing to it first."""

    async def begin_rebuild(self) -> bool:
        """Begin a rebuild: ``reset`` the view and mark it rebuilding, in one step.
        Unless a rebuild begun before never finished (it was interrupted): then the
        view is left as it is, so that folding on from its stored positions resumes
        that rebuild. True when it resumes. A view that keeps nothing past its
        process (in memory) has nothing to resume: this default resets it."""
        await self.reset()
        return False

    async def finish_rebuild(self) -> None:
        """Mark the rebuild ``begin_rebuild`` began as done: the next one starts over."""

    async def close(self) -> None:
        """Wait for in-flight writes to commit or roll back, then release connections."""


# -- tamper evidence (services.checkpoints) ------------------------------------------


class RecordSource(Protocol):
    """The ledger's records exactly as stored (the chain hashes their bytes)."""

    async def partitions(self, stream: str) -> list[int]: ...

    async def end_offset(self, stream: str, partition: int) -> int: ...

    def records(
        self, stream: str, partition: int, start: int, stop: int
    ) -> AsyncIterator[ChainRecord]:
        """The records of offsets ``[start, stop)``, in offset order."""
        ...


class CheckpointStore(Protocol):
    """Where checkpoints are kept: the checkpoint topic, or the embedded default's table."""

    async def publish(self, checkpoints: Sequence[Checkpoint]) -> None: ...

    async def latest(
        self, key_id: str, wanted: set[tuple[str, int]]
    ) -> dict[tuple[str, int], Checkpoint]:
        """Of each wanted (stream, partition), the checkpoint signed by ``key_id`` that
        reaches furthest; partitions it has none for are left out."""
        ...

    def every(self) -> AsyncIterator[Checkpoint | str]:
        """Every checkpoint stored, in the order stored; a record that is no
        checkpoint comes as a description of what is wrong with it."""
        ...


class Covering(Protocol):
    async def covering(self, stream: str, partition: int, offset: int) -> list[Checkpoint]:
        """The stored checkpoints whose range holds ``offset`` of the partition."""
        ...


class WriterLock(Protocol):
    async def held(self) -> bool:
        """Whether this process is the writer now (taking the turn if it is free)."""
        ...

    async def close(self) -> None: ...


# -- accountable access -----------------------------------------------------------------


@dataclass(frozen=True)
class AccessRecord:
    """One audit read, as it was asked: who, through what, which read, of which brand,
    number and campaign, under which request id, and when, and whether it was let
    through or refused. ``id`` is given by the log (increasing in the order records
    were written); None before it is written."""

    at: datetime
    subject: str
    """The name of the token (or certificate) that read."""
    action: str
    """The read, by its API name (``GetProofPacket``, ``ListEvents``, ...)."""
    brand: str | None
    """None: every brand (an operator's read across brands)."""
    request_id: str
    via: str = "grpc"
    """What the reader came through: ``grpc``, ``console``."""
    phone: str | None = None
    campaign: str | None = None
    detail: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """The read's other parameters (a time range, a format, a moment asked about)."""
    id: int | None = None
    outcome: str = "admitted"
    """``admitted``: let through, recorded before it read anything; ``refused``:
    turned away before it read anything (another brand, a scope it lacks, bad input,
    a campaign never defined), with ``refusal_code`` and ``refusal``."""
    refusal_code: str | None = None
    """The refusal's gRPC status name (``PERMISSION_DENIED``, ``INVALID_ARGUMENT``,
    ``NOT_FOUND``)."""
    refusal: str | None = None
    """What the caller was told: the field and the reason."""


@dataclass(frozen=True)
class AccessQuery:
    """Which access records to list, newest first."""

    brands: frozenset[str] | None
    """Only these brands' records; None: every record, those of every brand included."""
    phone: str | None = None
    subject: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    """``[start, end)`` of ``at``."""
    before: int | None = None
    """Only records with an ``id`` below this (the next page)."""
    limit: int = 100


class AccessLog(Protocol):
    """Where audit reads are recorded, append-only: a record once written is never
    changed or removed."""

    async def append(self, record: AccessRecord) -> int:
        """Write ``record`` durably and return its id; raise when it cannot (the read
        it records must then not be answered)."""
        ...

    async def list(self, query: AccessQuery) -> Sequence[AccessRecord]:
        """The records ``query`` selects, newest (highest id) first."""
        ...


# -- personal data (ledger.personal_data, services.personal_data) --------------------


@dataclass(frozen=True)
class SubjectKey:
    """One key of a subject (a phone towards a brand): its id and its secret."""

    key_id: str
    secret: bytes


class SubjectKeys(ABC):
    """The keys that seal each subject's personal data, kept outside the ledger.

    A subject has at most one live key at a time; destroying it erases every event
    it sealed. A subject whose keys were destroyed gets a new key when something new
    is sealed for it (a fresh opt-in after an erasure), which opens only what came
    after. Secrets are 32 random bytes (AES-256)."""

    @abstractmethod
    async def current(self, phone: str, brand: str) -> SubjectKey:
        """The subject's live key, made now if it has none: of two callers at once,
        both get the same one."""

    async def current_many(
        self, subjects: Collection[tuple[str, str]]
    ) -> dict[tuple[str, str], SubjectKey]:
        """``current`` for each ``(phone, brand)`` of ``subjects``, by subject. An
        adapter with round trips overrides it to make a bulk import's thousand new
        subjects' keys in one; this one asks for them one by one."""
        return {s: await self.current(*s) for s in dict.fromkeys(subjects)}

    @abstractmethod
    async def find(self, phone: str, brand: str, key_ids: Collection[str]) -> dict[str, bytes]:
        """The secrets of those of ``key_ids`` that are the subject's and not destroyed."""

    @abstractmethod
    async def live(self, phone: str, brand: str) -> list[str]:
        """The ids of the subject's live keys (none made)."""

    @abstractmethod
    async def destroy(self, phone: str, brand: str, key_ids: Collection[str] | None = None) -> int:
        """Destroy those of ``key_ids`` (None: all) that are the subject's live keys;
        how many there were. A key made since they were listed (for a fresh opt-in
        after an erasure) stays. Destroyed keys are never returned again, and their
        ids are never reused."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the adapter holds."""
