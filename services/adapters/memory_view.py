"""``InMemoryConsentView``: the ``ConsentView`` port in plain dicts.

For unit tests and the embedded mode. It follows the same rules as the
PostgreSQL view (the conformance suite holds both to them): events at or before
the stored position are skipped, an event id seen before is stored and folded
once, and a batch lands completely or not at all.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import itertools
import math
import time
import uuid
from collections import ChainMap
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ledger.digest import Digest, digest_of, with_phone_wide
from ledger.events import (
    ANY_BRAND,
    BRAND_SETTINGS,
    CampaignEvent,
    ConsentRevoked,
    LedgerEvent,
    MessageSent,
    Recorded,
    RevocationCandidateFlagged,
    RevocationCandidateResolved,
    SubscriberEvent,
)
from ledger.opt_out_rate import SendingCounts, count_sending
from ledger.ports import (
    AppendTurn,
    ChangesPage,
    ConsentView,
    Flagged,
    MessageClaim,
    Offsets,
    RequestUse,
    Stream,
    page_of_changes,
    recorded_key,
    refuse_if_rebuilt,
)
from ledger.state import CampaignHistory, SubscriberState, apply, sender_number_holder

_REACH_EVERY_CAMPAIGN = (ConsentRevoked, RevocationCandidateFlagged, RevocationCandidateResolved)
"""What a watch of one campaign gets of the brand's other campaigns too."""
_HOLDS = (RevocationCandidateFlagged, RevocationCandidateResolved)
"""What a watch of a brand gets of brand "*": a hold of every brand's sends, and its end."""


@dataclass
class _Tables:
    positions: dict[Stream, dict[int, int]] = field(
        default_factory=lambda: {stream: {} for stream in Stream}
    )
    states: dict[tuple[str, str], SubscriberState] = field(default_factory=dict)
    campaigns: dict[tuple[str, str], CampaignHistory] = field(default_factory=dict)
    events: dict[uuid.UUID, Recorded] = field(default_factory=dict)
    by_phone: dict[str, list[Recorded]] = field(default_factory=dict)
    flagged: dict[str, list[Flagged]] = field(default_factory=dict)
    """Each brand's flagged replies, in the order they were applied."""
    resolved: set[str] = field(default_factory=set)
    """The ids of the flagged replies a resolution names."""
    messages: dict[tuple[str, str, str], str] = field(default_factory=dict)
    """The MessageSent that first recorded each (brand, phone, provider message id)."""
    by_brand: dict[str, dict[int, list[Recorded]]] = field(default_factory=dict)
    """Each brand's subscriber events per partition, in offset order (``changes``)."""


def _commit(*staged: ChainMap[Any, Any]) -> None:
    for chain in staged:
        chain.maps[1].update(chain.maps[0])


def _first_use(
    event: LedgerEvent,
    requests: ChainMap[tuple[str, str], RequestUse],
    messages: ChainMap[tuple[str, str, str], str],
) -> bool:
    """Whether ``event`` is a fact: no other request holds its request id, and no
    earlier ``MessageSent`` recorded its provider message id. Takes both for it if
    they are free (the rule of ``ConsentView.claim_request`` and ``message_use``)."""
    brand, event_id = getattr(event, "brand", ""), str(event.event_id)
    key = (brand, event.request_id)
    use = requests.get(key) if event.request_id else None
    if use is not None and use.fingerprint != event.request_fingerprint:
        return False
    sent = (brand, event.phone, event.message_id) if isinstance(event, MessageSent) else None
    if sent is not None:
        if messages.get(sent, event_id) != event_id:
            return False
        messages[sent] = event_id
    if event.request_id:
        if use is None:
            requests[key] = RequestUse(event.request_fingerprint, (event_id,))
        elif event_id not in use.event_ids:
            requests[key] = use._replace(event_ids=(*use.event_ids, event_id))
    return True


class InMemoryConsentView(ConsentView):
    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._tables = _Tables()
        self._monotonic = monotonic
        """The clock the append turns' leases run on; a test passes one it drives."""
        self._flagged_positions = 0
        """The last position given to a flagged reply; a reset keeps it (see ``Flagged``)."""
        self._campaign_turn = asyncio.Lock()
        self._requests: dict[tuple[str, str], RequestUse] = {}
        """Request ids by (brand, request id); a reset keeps them (``claim_request``)."""
        self._message_claims: dict[tuple[str, str, str], MessageClaim] = {}
        """Sends' claims of (brand, phone, message id); a reset keeps them too."""
        self._claimed_at: dict[tuple[str, str, str], float] = {}
        """When each of those claims was made (``self._monotonic``)."""
        self._append_turns: dict[tuple[str, str], tuple[str, float | None]] = {}
        """Imports' turns to append, by (brand, request id): the holder, and when
        the turn runs out (``self._monotonic``; None: appended). A reset keeps them."""
        self._appended_at: dict[tuple[str, str], float] = {}
        """When each turn ended appended (``self._monotonic``), for pruning."""

    async def apply(
        self, stream: Stream, batch: Sequence[Recorded], *, known: Mapping[int, int] | None = None
    ) -> None:
        for recorded in batch:
            if Stream.of(recorded.event) is not stream:
                raise ValueError(
                    f"{type(recorded.event).__name__} does not belong to {stream.value}"
                )
        base = self._tables
        refuse_if_rebuilt(stream, batch, base.positions[stream], known)
        # Stage every change in front of the tables and merge only at the end: an
        # exception half-way through a batch leaves the view as it was, like a
        # rolled-back transaction, without copying the whole view per batch.
        positions = ChainMap[int, int]({}, base.positions[stream])
        states = ChainMap[tuple[str, str], SubscriberState]({}, base.states)
        campaigns = ChainMap[tuple[str, str], CampaignHistory]({}, base.campaigns)
        events = ChainMap[uuid.UUID, Recorded]({}, base.events)
        by_phone = ChainMap[str, list[Recorded]]({}, base.by_phone)
        requests = ChainMap[tuple[str, str], RequestUse]({}, self._requests)
        messages = ChainMap[tuple[str, str, str], str]({}, base.messages)
        flagged: list[Recorded] = []
        resolved: list[str] = []
        added: list[Recorded] = []
        for recorded in batch:
            partition, offset = recorded.position.partition, recorded.position.offset
            if offset < positions.get(partition, 0):
                continue
            positions[partition] = offset + 1
            event = recorded.event
            if event.event_id in events:
                continue  # the same fact written twice (a retried append): fold it once
            if not _first_use(event, requests, messages):
                continue  # another request's id, or a message already recorded: no fact
            events[event.event_id] = recorded
            if isinstance(event, SubscriberEvent):
                key = (event.phone, event.brand)
                state = states.get(key) or SubscriberState(phone=event.phone, brand=event.brand)
                states[key] = apply(state, recorded)
                by_phone[event.phone] = [*by_phone.get(event.phone, []), recorded]
                added.append(recorded)
                if isinstance(event, RevocationCandidateFlagged):
                    flagged.append(recorded)
                elif isinstance(event, RevocationCandidateResolved) and event.lifts_hold:
                    resolved.append(str(event.candidate_event_id))
            elif isinstance(event, CampaignEvent):
                key = (event.brand, event.campaign)
                campaigns[key] = campaigns.get(key, CampaignHistory()).with_event(recorded)
        _commit(positions, states, campaigns, events, by_phone, requests, messages)
        base.resolved.update(resolved)
        for recorded in added:  # appended in place: a brand's lists grow long
            brand = recorded.event.brand  # type: ignore[attr-defined]
            lists = base.by_brand.setdefault(brand, {})
            lists.setdefault(recorded.position.partition, []).append(recorded)
        # A batch's replies become visible together; among them, recorded order.
        for recorded in sorted(flagged, key=lambda r: (r.recorded_at, r.event.event_id)):
            event = recorded.event
            assert isinstance(event, RevocationCandidateFlagged)
            self._flagged_positions += 1
            queue = base.flagged.setdefault(event.brand, [])
            queue.append(Flagged(self._flagged_positions, str(event.event_id), event.phone))

    async def positions(self, stream: Stream) -> dict[int, int]:
        return dict(self._tables.positions[stream])

    async def subscriber_states(
        self, brand: str, phones: Sequence[str]
    ) -> dict[str, SubscriberState]:
        states = self._tables.states
        return {
            phone: states.get((phone, brand)) or SubscriberState(phone=phone, brand=brand)
            for phone in phones
        }

    async def digests(self, brand: str, phones: Sequence[str]) -> dict[str, Digest]:
        states = self._tables.states
        found = {
            phone: digest_of(states[phone, brand]) for phone in phones if (phone, brand) in states
        }
        if brand != ANY_BRAND:
            for phone in phones:
                wide = states.get((phone, ANY_BRAND))
                if wide is not None:
                    merged = with_phone_wide(found.get(phone), digest_of(wide))
                    if merged is not None:
                        found[phone] = merged
        return found

    async def campaign_history(self, brand: str, campaign: str) -> CampaignHistory:
        history = self._tables.campaigns.get((brand, campaign), CampaignHistory())
        settings = self._tables.campaigns.get((brand, BRAND_SETTINGS))
        return history if settings is None else history.with_brand(settings)

    async def campaign_names(self, brand: str) -> list[str]:
        return sorted(c for b, c in self._tables.campaigns if b == brand and c != BRAND_SETTINGS)

    async def brand_names(self) -> list[str]:
        return sorted({b for b, _ in self._tables.campaigns})

    async def campaign_for_number(self, to_phone: str) -> tuple[str, str] | None:
        claims: dict[tuple[str, str], CampaignHistory] = {}
        for key, history in self._tables.campaigns.items():
            current = history.current()
            if current is not None and to_phone in current.policy.sender_numbers:
                claims[key] = history
        return sender_number_holder(claims, to_phone)

    async def history(self, phone: str, brand: str | None = None) -> list[Recorded]:
        events = self._tables.by_phone.get(phone, [])
        chosen = [
            r
            for r in events
            if brand is None or (isinstance(r.event, SubscriberEvent) and r.event.brand == brand)
        ]
        return sorted(chosen, key=lambda r: (r.position.partition, r.position.offset))

    async def find_event(self, event_id: str) -> Recorded | None:
        try:
            key = uuid.UUID(str(event_id))
        except ValueError:
            return None
        return self._tables.events.get(key)

    async def request_use(self, brand: str, request_id: str) -> RequestUse | None:
        return self._requests.get((brand, request_id))

    async def claim_request(
        self, brand: str, request_id: str, fingerprint: str, event_ids: Sequence[str]
    ) -> RequestUse:
        # Every writer that shares this view is in this process, and this has no await.
        return self._requests.setdefault(
            (brand, request_id), RequestUse(fingerprint, tuple(event_ids))
        )

    async def claim_message(
        self, brand: str, phone: str, message_id: str, event_id: str, content: str | None = None
    ) -> MessageClaim | None:
        key = (brand, phone, message_id)
        if key not in self._message_claims:
            self._message_claims[key] = MessageClaim(str(event_id), content)
        if self._message_claims[key].event_id == str(event_id):  # made, or made anew
            self._claimed_at[key] = self._monotonic()
        return self._message_claims[key]

    async def message_claim_ages(
        self, brand: str, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[MessageClaim, float]]:
        now = self._monotonic()
        return {
            (p, m): (claim, now - self._claimed_at[(brand, p, m)])
            for p, m in keys
            if (claim := self._message_claims.get((brand, p, m))) is not None
        }

    async def take_over_message_claims(
        self,
        brand: str,
        claims: Sequence[tuple[str, str, str, str, str | None]],
        older_than_s: float,
    ) -> set[tuple[str, str]]:
        # Every writer that shares this view is in this process, and this has no await.
        now, taken = self._monotonic(), set()
        for phone, message_id, dead, event_id, content in claims:
            key = (brand, phone, message_id)
            held = self._message_claims.get(key)
            if (
                held is None
                or held.event_id != str(dead)
                or self._claimed_at[key] > now - older_than_s
                or key in self._tables.messages
            ):
                continue
            self._message_claims[key] = MessageClaim(str(event_id), content)
            self._claimed_at[key] = now
            taken.add((phone, message_id))
        return taken

    async def claim_messages(
        self, brand: str, claims: Sequence[tuple[str, str, str, str | None]]
    ) -> dict[tuple[str, str], MessageClaim]:
        # All or none, as PostgreSQL's statement: a claim another send holds with
        # other content refuses the call, which must leave no claims behind.
        def refused(phone: str, message_id: str, event_id: str, content: str | None) -> bool:
            held = self._message_claims.get((brand, phone, message_id))
            return held is not None and held.refuses(event_id, content)

        if not any(refused(*claim) for claim in claims):
            for phone, message_id, event_id, content in claims:
                await self.claim_message(brand, phone, message_id, event_id, content)
        return {
            (p, m): claim
            for p, m, _, _ in claims
            if (claim := self._message_claims.get((brand, p, m))) is not None
        }

    async def release_claims(
        self,
        brand: str,
        request: tuple[str, str, Sequence[str]] | None,
        messages: Sequence[tuple[str, str, str]],
    ) -> None:
        if request is not None:
            request_id, fingerprint, event_ids = request
            ours = RequestUse(fingerprint, tuple(str(i) for i in event_ids))
            if self._requests.get((brand, request_id)) == ours:
                del self._requests[(brand, request_id)]
        for phone, message_id, event_id in messages:
            held = self._message_claims.get((brand, phone, message_id))
            if held is not None and held.event_id == str(event_id):
                del self._message_claims[(brand, phone, message_id)]
                del self._claimed_at[(brand, phone, message_id)]

    async def take_append_turns(
        self, keys: Sequence[tuple[str, str]], holder: str, lease_s: float
    ) -> list[AppendTurn]:
        # Every import that shares this view is in this process, and this has no await.
        now, turns = self._monotonic(), []
        for key in keys:
            held = self._append_turns.get(key)
            if held is None or (held[1] is not None and (held[0] == holder or held[1] <= now)):
                self._append_turns[key] = (holder, now + lease_s)
                turns.append(AppendTurn.TAKEN)
            else:
                turns.append(AppendTurn.APPENDED if held[1] is None else AppendTurn.HELD)
        return turns

    async def append_turn_holder(self, brand: str, request_id: str) -> str | None:
        held = self._append_turns.get((brand, request_id))
        if held is None or held[1] is None or held[1] <= self._monotonic():
            return None
        return held[0]

    async def end_append_turns(
        self, keys: Sequence[tuple[str, str]], holder: str, *, appended: bool
    ) -> None:
        for key in keys:
            held = self._append_turns.get(key)
            if held is not None and held[0] == holder and held[1] is not None:
                self._append_turns[key] = (holder, None if appended else -math.inf)
                if appended:
                    self._appended_at[key] = self._monotonic()

    async def prune_append_turns(self, kept_s: float) -> int:
        before = self._monotonic() - kept_s
        pruned = [
            key
            for key, (_, until) in self._append_turns.items()
            if (self._appended_at[key] if until is None else until) < before
        ]
        for key in pruned:
            del self._append_turns[key]
            self._appended_at.pop(key, None)
        return len(pruned)

    async def message_use(self, brand: str, phone: str, message_id: str) -> str | None:
        return self._tables.messages.get((brand, phone, message_id))

    async def flagged(self, brand: str, after: int = 0, limit: int | None = None) -> list[Flagged]:
        resolved = self._tables.resolved
        listed = (
            f
            for f in self._tables.flagged.get(brand, [])
            if f.position > after and f.event_id not in resolved
        )
        return list(itertools.islice(listed, limit))

    async def open_flagged_times(self) -> list[datetime]:
        tables = self._tables
        return [
            tables.events[uuid.UUID(f.event_id)].event.occurred_at
            for queue in tables.flagged.values()
            for f in queue
            if f.event_id not in tables.resolved
        ]

    async def changes(
        self,
        brand: str,
        after: Offsets,
        limit: int,
        *,
        campaign: str | None = None,
        types: Collection[str] | None = None,
    ) -> ChangesPage:
        def wanted(recorded: Recorded) -> bool:
            event = recorded.event
            named = getattr(event, "campaign", None)
            # Every opt-out of the brand reaches a campaign: under the revoke-all rule
            # an opt-out of any campaign ends this one's consent; and every hold and its
            # resolution, as a hold denies every campaign (as the SQL reads it).
            reaches = named is None or named == campaign or isinstance(event, _REACH_EVERY_CAMPAIGN)
            if getattr(event, "brand", None) == ANY_BRAND:
                # a hold of every brand's sends and its end; nothing else of brand "*"
                return isinstance(event, _HOLDS) and (types is None or event.EVENT_TYPE in types)
            return (campaign is None or reaches) and (types is None or event.EVENT_TYPE in types)

        def listed_from(lists: dict[int, list[Recorded]], partition: int) -> Iterator[Recorded]:
            events = lists.get(partition, [])
            start = bisect.bisect_left(
                events, after.get(partition, 0), key=lambda r: r.position.offset
            )
            return (events[i] for i in range(start, len(events)) if wanted(events[i]))

        positions = self._tables.positions[Stream.SUBSCRIBERS]
        mine = self._tables.by_brand.get(brand, {})
        every = self._tables.by_brand.get(ANY_BRAND, {})
        pages: dict[int, list[Recorded]] = {}
        for partition in sorted(positions):
            listed = heapq.merge(
                listed_from(mine, partition),
                listed_from(every, partition),
                key=lambda r: r.position.offset,
            )
            pages[partition] = list(itertools.islice(listed, limit))
        return ChangesPage(*page_of_changes(pages, positions, after, limit, recorded_key))

    async def sending_counts(
        self, brand: str, campaign: str | None, start: datetime, end: datetime
    ) -> SendingCounts:
        events = (r.event for r in self._tables.events.values())
        return count_sending(events, brand, campaign, start, end)

    @asynccontextmanager
    async def campaign_writes(self, wait: float) -> AsyncIterator[None]:
        # Every writer that shares this view is in this process.
        async with asyncio.timeout(wait):
            await self._campaign_turn.acquire()
        try:
            yield
        finally:
            self._campaign_turn.release()

    async def reset(self) -> None:
        """Forget everything, for a rebuild from offset 0."""
        self._tables = _Tables()
