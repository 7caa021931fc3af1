"""The review queue: replies flagged as possible opt-outs that nobody has resolved.

Each blocks sending to its number until someone resolves it
(``ResolveRevocationCandidate``), and is overdue ten business days after it was
flagged (``ledger.deadlines``).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import unicodedata
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import rapidfuzz

from ledger import keywords
from ledger.commands import check_name
from ledger.deadlines import revocation_due
from ledger.events import (
    ANY_BRAND,
    InboundMessageReceived,
    LedgerEvent,
    Recorded,
    RevocationCandidateFlagged,
)
from ledger.personal_data import ERASED, SEALED
from ledger.ports import ConsistencyToken, Stream
from ledger.reread import (
    Key,
    held_for,
    held_text,
    reads_as,
    relevant,
    reread_holds,
    stored_reading,
)
from ledger.state import Fact
from services.usecases.access import Reader
from services.usecases.context import Context
from services.usecases.requests import Turns, recorded_once
from services.usecases.spellings import state_as_one
from services.usecases.writes import brands_held_then

QUEUE_CHUNK = 500
"""Flagged replies read at a time, with their numbers' states, for the review queue."""
REREAD_CHUNK = 1000
"""Ledger records read at a time when stored texts are read again."""
REREAD_TURN = 8
"""Texts read again between two turns of the event loop."""
REREAD_BY = "service:reread"
"""Who the holds placed on texts read again are recorded by (``recorded_by``), and who
reads the texts in the access log."""
REREAD_WHY = "the keyword rules changed: stored texts read again under the current rules"


@dataclass(frozen=True)
class Queued:
    """A flagged reply awaiting review, at its place in the queue (``Flagged.position``)."""

    position: int
    candidate: Fact[RevocationCandidateFlagged]

    @property
    def due_at(self) -> datetime:
        """When it becomes overdue: ten business days after it was flagged."""
        return revocation_due(self.candidate.at)


@dataclass(frozen=True)
class ReviewPage:
    candidates: list[Queued]
    token: ConsistencyToken
    now: datetime
    """When the queue was read: a candidate due by then is overdue."""


@functools.cache
def reading_rules() -> str:
    """A name for the rules this code reads texts by (``ledger.keywords``): a digest of
    their source, of the Unicode data that folds and classes letters, and of the
    fuzzy matcher's version. Any change to them names other rules, which has the
    stored texts read again (``Review.reread_texts``): reading one again under
    unchanged rules only costs the read. Named once a process: the code it reads by
    is the code loaded, not the file as it may be rewritten under a running process."""
    said = b"\0".join(
        [
            Path(keywords.__file__).read_bytes(),
            unicodedata.unidata_version.encode(),
            rapidfuzz.__version__.encode(),
        ]
    )
    return hashlib.sha256(said).hexdigest()


@dataclass
class Reread:
    """What reading the stored texts again placed."""

    held: list[str]
    """The ids of the holds placed by this run (none for those placed before)."""
    token: ConsistencyToken
    """A read as fresh as this waits for every hold it placed or found placed."""
    reached: dict[int, int] = field(default_factory=dict)
    """How far it read: per partition of the subscriber stream, the next record to
    read, from where the next reading goes on (``since``)."""


Owed = dict[Key, tuple[RevocationCandidateFlagged, int, str | None, Recorded | None]]
"""The holds owed to the texts read so far, each with its text's chunk and campaign,
and the text as stored."""


def _owed_after(
    owed: Owed, events: list[LedgerEvent], chunk: int, stored: Mapping[Key, Recorded]
) -> None:
    """``owed`` (the holds owed to the texts read so far, each with its text's chunk
    and campaign, and the text as ``stored``) once ``events``, the next in ledger
    order, of the ``chunk``-th chunk, are read: an opt-out or hold that stops as much
    as its text now reads takes the text's hold away (it is recorded after its text),
    and the texts among them that read as stopping further add theirs."""
    for event in events:
        found = stored_reading(event)
        if found is not None:
            key, far = found
            owing = owed.get(key)
            if owing is not None and far >= reads_as(owing[0].text):
                del owed[key]
    campaigns = {
        (e.phone, e.brand, e.message_id): e.campaign
        for e in events
        if isinstance(e, InboundMessageReceived)
    }
    for hold in reread_holds(events, recorded_by=REREAD_BY):
        key = held_text(hold)
        owed[key] = (hold, chunk, campaigns.get(key), stored.get(key))


def _flagged(event: LedgerEvent) -> RevocationCandidateFlagged:
    assert isinstance(event, RevocationCandidateFlagged)
    return event


class Review:
    def __init__(self, ctx: Context, subjects: Turns[tuple[str, str]] | None = None) -> None:
        """``subjects``: the subjects' turns an erasure takes (``Erasure``), so a hold
        placed on a text read again and an erasure of its number go one at a time."""
        self.ctx = ctx
        self._subjects: Turns[tuple[str, str]] = Turns() if subjects is None else subjects

    async def revocation_candidates(
        self,
        brand: str,
        after: int = 0,
        limit: int | None = None,
        *,
        overdue_only: bool = False,
        token: ConsistencyToken | None = None,
        reader: Reader,
    ) -> ReviewPage:
        """The brand's unresolved flagged replies, each with its place in the review
        queue, above ``after``, at most ``limit``.

        The queue is in the order the view applied the replies (``Flagged``), not the
        order they happened or were recorded in: a reply from a partition applied late
        joins the end, so a reviewer paging from ``after`` skips none. Pending is what
        the fold says, as ``GetConsent`` reports it for one number. The view leaves
        out the replies it knows are resolved, and the rest are read in chunks until
        ``limit`` are found: the cost grows with the candidates asked for.

        ``overdue_only`` keeps those whose ten business days have passed; ``brand``
        ``ANY_BRAND`` lists the STOPs whose brand is unknown."""
        if brand != ANY_BRAND:
            check_name(brand, "brand")
        # The STOPs whose brand is unknown are every brand's: an operator's to list.
        await self.ctx.access.admit(
            reader,
            "ListRevocationCandidates",
            None if brand == ANY_BRAND else brand,
            detail={"overdue_only": "true" if overdue_only else None},
        )
        now = self.ctx.clock()
        await self.ctx.require_fresh(None, "brand", token)
        pending: list[Queued] = []
        while limit is None or len(pending) < limit:
            # The view lists few resolved replies (only those it cannot tell about),
            # so asking for as many as are still wanted is mostly enough.
            size = QUEUE_CHUNK if limit is None else min(QUEUE_CHUNK, limit - len(pending))
            flagged = await self.ctx.view.flagged(brand, after, size)
            places = {f.event_id: f.position for f in flagged}
            phones = sorted({f.phone for f in flagged})
            states = await self.ctx.view.subscriber_states(brand, phones)
            # A reply applied after ``flagged`` was read has no place yet; the next
            # read finds it above every place given here.
            found = [
                Queued(places[c.event_id], c)
                for state in states.values()
                for c in state.pending_candidates()
                if c.event_id in places and not (overdue_only and revocation_due(c.at) > now)
            ]
            pending += sorted(found, key=lambda q: q.position)
            if len(flagged) < size:
                break
            after = flagged[-1].position
        shown = pending[:limit]
        # The reviewer reads what the person wrote: opened, or ERASED where it is gone.
        opened = await self.ctx.opened([q.candidate.as_recorded() for q in shown])
        shown = [
            Queued(
                q.position, Fact(_flagged(o.event), q.candidate.position, q.candidate.recorded_at)
            )
            for q, o in zip(shown, opened, strict=True)
        ]
        return ReviewPage(shown, self.ctx.guard.applied_token(), now)

    async def reread_texts(
        self, since: Mapping[int, int] | None = None, why: str = REREAD_WHY
    ) -> Reread:
        """Read every text the ledger holds again under the current keyword rules, and
        hold for review, from its own time, each that reads as an opt-out or a
        possible one now where its stored reading stopped nothing
        (``ledger.reread``), and under each other brand whose campaign sent from the
        number the text reached when it was sent (``_held_then_too``). Placing one
        again stores it once, so several instances may run this at once.

        Reads the subscriber stream from its start, a chunk at a time, opening the
        texts' words as an auditor's read does (words erased stay unread), in turns
        with the calls the process serves, and placing each hold once the reading is
        past its text. ``since`` (a former reading's ``reached``) reads on from where
        that one got, per partition: the texts recorded since, as by an instance of an
        older version during a rolling upgrade.

        The texts are personal data: each chunk's opening is recorded in the access log
        first, as an audit read is (``ReadTextsAgain``, by ``REREAD_BY`` via
        ``service``, saying which records and ``why``); a chunk whose record cannot be
        written is not opened (``AccessNotRecorded``), and the reading stops there."""
        ledger, placed = self.ctx.ledger, Reread([], ConsistencyToken({}))
        reader = Reader(REREAD_BY, None, f"reread-{uuid.uuid4().hex}", via="service")
        for partition in await ledger.partitions(Stream.SUBSCRIBERS):
            end = (await ledger.end_offsets(Stream.SUBSCRIBERS)).get(partition, 0)
            # The holds owed so far, each with the chunk its text came in: an opt-out
            # or hold recorded after its text (in the same append, a few records on)
            # that stops as much takes the text's away, so a hold is placed once the
            # reading is a chunk past its text.
            owed: Owed = {}
            offset, chunk = (since or {}).get(partition, 0), 0
            if offset > end:  # another ledger's position: reading on from it reads nothing
                offset = 0
            while offset < end:
                batch = await ledger.read(Stream.SUBSCRIBERS, partition, offset, REREAD_CHUNK)
                if not batch:
                    break
                offset, chunk = batch[-1].position.offset + 1, chunk + 1
                kept = [r for r in batch if relevant(r.event)]
                # Recorded whenever anything is opened: a hold or an opt-out carries the
                # person's words too.
                if kept:
                    await self.ctx.access.admit(
                        reader,
                        "ReadTextsAgain",
                        None,
                        detail={
                            "stream": Stream.SUBSCRIBERS.value,
                            "partition": str(partition),
                            "from_offset": str(batch[0].position.offset),
                            "to_offset": str(batch[-1].position.offset),
                            "texts": str(
                                sum(isinstance(r.event, InboundMessageReceived) for r in kept)
                            ),
                            "why": why,
                        },
                    )
                # Opened chunk by chunk: a text whose subject is erased in a later
                # chunk reads erased all the same (``Context.opened`` asks the view).
                events = [r.event for r in await self.ctx.opened(kept)] if kept else []
                texts = {
                    (e.phone, e.brand, e.message_id): r
                    for r in kept
                    if isinstance(e := r.event, InboundMessageReceived)
                }
                for start in range(0, len(events), REREAD_TURN):
                    _owed_after(owed, events[start : start + REREAD_TURN], chunk, texts)
                    # Reading a text takes what reading it when it came took: in
                    # turns with the calls the process serves, not a chunk at once.
                    await asyncio.sleep(0)
                due = [key for key, (_, came, _, _) in owed.items() if came < chunk]
                await self._place([owed.pop(key) for key in due], placed)
            await self._place(list(owed.values()), placed)
            placed.reached[partition] = offset
        return placed

    async def _place(
        self,
        owed: list[tuple[RevocationCandidateFlagged, int, str | None, Recorded | None]],
        placed: Reread,
    ) -> None:
        """Append each hold of ``owed`` once, noting it in ``placed``: first under each
        other brand whose campaign sent from the number the text reached when it was
        sent (``_held_then_too``), as a late STOP is held, so a failure between leaves
        the next reading to place them all.

        A text whose subject was erased since it was read is held without its words
        (``ERASED``): appended after the erasure, the hold would be sealed with a key
        made since, and the erased words readable again. It still holds: the reading
        found it stopping, and doubt denies. The look and the appends take the
        subject's turn, so an erasure on this instance does not come between them.
        A text stored in the clear (before sealing) has no key to destroy, and only the
        view's erasure hides it: when the view cannot show every fact of its number
        recorded so far, it is held without its words too."""
        for hold, _, campaign, text in owed:
            async with self._subjects.turn((hold.phone, hold.brand)):
                if text is not None and hold.text not in (SEALED, ERASED):
                    seen = text.event.sealed is not None
                    if not seen:
                        seen = await self.ctx.guard.wait_until_applied_for([hold.phone])
                    (now,) = await self.ctx.opened([text])
                    if not seen or (
                        isinstance(now.event, InboundMessageReceived)
                        and now.event.body in (SEALED, ERASED)
                    ):
                        hold = replace(hold, text=ERASED)
                held = await self._held_then_too(hold, campaign)
                for one in (*(held_for(hold, key) for key in held), hold):
                    result = await recorded_once(self.ctx, [one])
                    placed.token = placed.token.merge(result.token)
                    if not result.replayed:
                        placed.held += result.event_ids

    async def _held_then_too(
        self, hold: RevocationCandidateFlagged, campaign: str | None
    ) -> list[str]:
        """The other brands a text held under its own brand (``hold``, recorded under
        ``campaign``) is held for too, as a late STOP is (``brands_held_then``): the
        service writes for every brand, so each under its own. Those the view shows
        holding the text already are left out: a STOP the late-STOP path held for
        them when it came, and now read as stopping more."""
        if not hold.to_number:
            return []
        view = self.ctx.view
        holder = None if campaign is None else await view.campaign_history(hold.brand, campaign)
        keys = await brands_held_then(
            view, holder, hold.to_number, hold.occurred_at, self.ctx.clock(),
            lambda brand: None, (hold.brand,),
        )  # fmt: skip
        if keys:
            # A hold the late-STOP path placed may be in the ledger and not yet in the
            # view, and its brand held twice: the view catches up on the number first.
            # If it cannot in time, a second hold denies as the first does.
            await self.ctx.guard.wait_until_applied_for([hold.phone])
        return [
            key
            for key in keys
            if not any(
                c.event.inbound_message_id == hold.inbound_message_id
                for c in (await state_as_one(view, hold.phone, key)).state.candidates.values()
            )
        ]

    async def open_candidates(self) -> tuple[int, int]:
        """How many flagged replies and held opt-outs of every brand await review, and
        how many of those are past their ten business days (a reply flagged before
        migration 0008 may count until a rebuild marks it resolved)."""
        now = self.ctx.clock()
        times = await self.ctx.view.open_flagged_times()
        return len(times), sum(1 for t in times if revocation_due(t) <= now)
