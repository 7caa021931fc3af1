"""The conformance suite of the ``ConsentView`` port, run against every adapter.

Subclass ``ConsentViewSuite`` and provide a ``view`` fixture (an empty view). Its
reads slice, ``DigestReadsSuite``, runs on its own against every speed layer that
wraps a view's ``DigestReads`` (with a ``reads`` fixture).
Also home of the event builders the projection tests share: ``recorded`` stamps
ledger positions the way a phone-keyed ledger would, and ``generate_events``
makes a large, varied ledger for rebuild and throughput tests.
"""

from __future__ import annotations

import asyncio
import random
import uuid
import zlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ledger.campaigns import CampaignPolicy, CampaignPurpose
from ledger.digest import Digest, digest_of
from ledger.events import (
    ANY_BRAND,
    BRAND_SETTINGS,
    AgeVerified,
    BrandPolicySet,
    CampaignDefined,
    CampaignPolicyChanged,
    CandidateResolution,
    ConsentGranted,
    ConsentReconfirmed,
    ConsentResumed,
    ConsentRevoked,
    ConsentTier,
    InboundMessageReceived,
    LedgerEvent,
    LedgerPosition,
    MessageKind,
    MessageSent,
    Recorded,
    RevocationCandidateFlagged,
    RevocationCandidateResolved,
    RevocationChannel,
    SubscriberEvent,
)
from ledger.opt_out_rate import SendingCounts, count_sending
from ledger.ports import (
    AppendTurn,
    Applied,
    CampaignReads,
    ConsentView,
    ConsistencyToken,
    DigestReads,
    MessageClaim,
    RequestClaim,
    RequestTaken,
    RequestUse,
    Stream,
)
from ledger.state import SubscriberState, fold, fold_campaign
from tests import builders
from tests.builders import _base, flagged, granted, revoked

T0 = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
PARTITIONS = 4


# The builders below put the phone and brand first, as the projection tests
# generate many of both; each is ``tests.builders``'s fact of the same name.


def grant(phone: str, brand: str, campaign: str, at: datetime, **kw: Any) -> ConsentGranted:
    return granted(
        at, campaign, phone=phone, brand=brand, tier=kw.get("tier", ConsentTier.PROMOTIONAL)
    )


def revoke(phone: str, brand: str, campaign: str | None, at: datetime) -> ConsentRevoked:
    return revoked(at, campaign, phone=phone, brand=brand, text="STOP" if campaign else "STOPALL")


def sent(
    phone: str, brand: str, campaign: str, at: datetime, kind: MessageKind = MessageKind.REGULAR
) -> MessageSent:
    return builders.sent(at, campaign, kind, phone=phone, brand=brand)


def flag(phone: str, brand: str, at: datetime) -> RevocationCandidateFlagged:
    """A reply flagged as a possible opt-out."""
    return flagged(at, "stop pls", phone=phone, brand=brand)


def define(
    brand: str, campaign: str, at: datetime, numbers: Sequence[str] = (), changed: bool = False
) -> LedgerEvent:
    cls = CampaignPolicyChanged if changed else CampaignDefined
    return cls(
        **_base(at),
        brand=brand,
        campaign=campaign,
        policy=CampaignPolicy(purpose=CampaignPurpose.PROMOTIONAL, sender_numbers=tuple(numbers)),
    )


def partition_of(event: LedgerEvent, partitions: int = PARTITIONS) -> int:
    """A stable key hash, as a keyed producer would choose: one phone, one partition."""
    key = event.phone if isinstance(event, SubscriberEvent) else f"{event.brand}/{event.campaign}"  # type: ignore[attr-defined]
    return zlib.crc32(key.encode()) % partitions


class Positions:
    """Stamps events with ledger positions, remembering each partition's next offset."""

    def __init__(self, partitions: int = PARTITIONS) -> None:
        self.partitions = partitions
        self.next: dict[tuple[Stream, int], int] = {}

    def record(
        self, events: Iterable[LedgerEvent], recorded_at: datetime | None = None
    ) -> list[Recorded]:
        out = []
        for event in events:
            stream, partition = Stream.of(event), partition_of(event, self.partitions)
            offset = self.next.get((stream, partition), 0)
            self.next[stream, partition] = offset + 1
            at = recorded_at or (event.occurred_at + timedelta(seconds=1))
            out.append(Recorded(event, LedgerPosition(partition, offset), at))
        return out

    def again(self, recorded: Recorded) -> Recorded:
        """The same fact appended a second time (a retry that reached the ledger twice)."""
        return self.record([recorded.event], recorded.recorded_at + timedelta(seconds=5))[0]


def expected_states(events: Iterable[Recorded]) -> dict[tuple[str, str], SubscriberState]:
    """What the fold says, keeping the first copy of each event id, in ledger order."""
    seen: set[uuid.UUID] = set()
    by_key: dict[tuple[str, str], list[Recorded]] = {}
    for r in sorted(events, key=lambda r: (r.position.partition, r.position.offset)):
        if not isinstance(r.event, SubscriberEvent) or r.event.event_id in seen:
            continue
        seen.add(r.event.event_id)
        by_key.setdefault((r.event.phone, r.event.brand), []).append(r)
    return {key: fold(rs) for key, rs in by_key.items()}


def generate_events(
    count: int, *, phones: int, brands: int, campaigns: int, seed: int = 7
) -> list[LedgerEvent]:
    """``count`` varied facts: campaigns first, then grants, opt-outs, sends, replies.

    A fifth of the facts arrive late (occurred_at well before their neighbours) so
    the fold's world-order rules are exercised, and some phones hear from several
    brands.
    """
    rng = random.Random(seed)
    uid = lambda: uuid.UUID(int=rng.getrandbits(128), version=4)  # noqa: E731
    brand_names = [f"brand-{b}" for b in range(brands)]
    campaign_names = [f"camp-{c}" for c in range(campaigns)]
    phone_numbers = [f"+1415555{n:04d}" for n in range(phones)]
    events: list[LedgerEvent] = []

    def base(at: datetime) -> dict[str, Any]:
        return {"event_id": uid(), "occurred_at": at}

    for b, brand in enumerate(brand_names):
        for c, campaign in enumerate(campaign_names):
            number = f"+1202555{b:02d}{c:02d}"
            events.append(
                CampaignDefined(
                    **base(T0 - timedelta(days=60)),
                    brand=brand,
                    campaign=campaign,
                    policy=CampaignPolicy(sender_numbers=(number,)),
                )
            )
    flagged: list[RevocationCandidateFlagged] = []
    clock = T0 - timedelta(days=40)
    while len(events) < count:
        clock += timedelta(seconds=rng.randint(1, 400))
        at = clock - timedelta(hours=rng.randint(1, 72)) if rng.random() < 0.2 else clock
        phone, brand = rng.choice(phone_numbers), rng.choice(brand_names)
        campaign = rng.choice(campaign_names)
        common = {"phone": phone, "brand": brand}
        roll = rng.random()
        event: LedgerEvent
        if roll < 0.30:
            event = replace_id(
                grant(phone, brand, campaign, at, tier=rng.choice(list(ConsentTier))), uid()
            )
        elif roll < 0.40:
            event = replace_id(
                revoke(phone, brand, campaign if rng.random() < 0.7 else None, at), uid()
            )
        elif roll < 0.70:
            event = MessageSent(
                **base(at),
                **common,
                campaign=campaign,
                message_id=f"m{len(events)}",
                kind=rng.choice(list(MessageKind)),
                included_opt_out_language=rng.random() < 0.5,
            )
        elif roll < 0.78:
            event = InboundMessageReceived(
                **base(at),
                **common,
                message_id=f"i{len(events)}",
                to_number="+12025550000",
                body="hi",
                campaign=campaign,
            )
        elif roll < 0.83:
            event = ConsentResumed(
                **base(at), **common, campaign=campaign if rng.random() < 0.5 else None
            )
        elif roll < 0.87:
            event = ConsentReconfirmed(
                **base(at), **common, campaign=campaign, channel=RevocationChannel.WEB
            )
        elif roll < 0.90:
            event = AgeVerified(**base(at), **common, method="id_scan", verified_21_plus=True)
        elif roll < 0.94 or not flagged:
            event = RevocationCandidateFlagged(
                **base(at), **common, inbound_message_id=f"i{len(events)}", text="please no more"
            )
            flagged.append(event)
        elif roll < 0.97:
            candidate = flagged.pop(rng.randrange(len(flagged)))
            event = RevocationCandidateResolved(
                **base(at),
                phone=candidate.phone,
                brand=candidate.brand,
                candidate_event_id=candidate.event_id,
                resolution=CandidateResolution.DISMISSED,
            )
        else:
            b, c = rng.randrange(brands), rng.randrange(campaigns)
            event = CampaignPolicyChanged(
                **base(at),
                brand=brand_names[b],
                campaign=campaign_names[c],
                policy=CampaignPolicy(
                    daily_cap=rng.randint(1, 5), sender_numbers=(f"+1202555{b:02d}{c:02d}",)
                ),
            )
        events.append(event)
    return events


def subscriber_events(count: int, **kw: Any) -> list[LedgerEvent]:
    """``generate_events`` without the campaign facts."""
    return [e for e in generate_events(count, **kw) if isinstance(e, SubscriberEvent)]


def replace_id(event: LedgerEvent, event_id: uuid.UUID) -> LedgerEvent:
    return replace(event, event_id=event_id)


class DigestReadsSuite:
    """What every ``DigestReads`` must answer: the view itself, and every speed layer
    that wraps one (``DigestReplica``). Subclasses provide ``view`` (an empty view,
    where the facts are applied) and ``reads`` (what is read; by default the view).
    Reads are made as the service makes them: positions first (the freshness
    guard's observation), then digests."""

    @pytest.fixture
    def view(self) -> ConsentView:
        raise NotImplementedError("subclasses provide an empty view")

    @pytest.fixture
    def reads(self, view: ConsentView) -> DigestReads:
        return view

    async def test_digests_leave_out_phones_with_no_fact_for_the_brand(
        self, view: ConsentView, reads: DigestReads
    ) -> None:
        pos = Positions()
        batch = pos.record(
            [
                grant("+14155550100", "acme", "deals", T0),
                revoke("+14155550100", "acme", None, T0 + timedelta(hours=1)),
                grant("+14155550101", "globex", "deals", T0),
            ]
        )
        await view.apply(Stream.SUBSCRIBERS, batch)

        digests = await _read(reads, "acme", ["+14155550100", "+14155550101", "+14155550199"])

        expected = expected_states(batch)
        assert digests == {"+14155550100": digest_of(expected["+14155550100", "acme"])}
        assert digests["+14155550100"].brand_revocation is not None

    async def test_a_phone_wide_stop_reaches_every_brands_digests(
        self, view: ConsentView, reads: DigestReads
    ) -> None:
        pos = Positions()
        known, unknown, other = "+14155550120", "+14155550121", "+14155550122"
        stops = [
            replace(flag(phone, ANY_BRAND, T0), text="STOP", unattributed=True, to_number="+1")
            for phone in (known, unknown)
        ]
        await view.apply(
            Stream.SUBSCRIBERS,
            pos.record(
                [grant(known, "acme", "deals", T0), grant(other, "acme", "deals", T0), *stops]
            ),
        )

        for brand in ("acme", "globex"):
            digests = await _read(reads, brand, [known, unknown, other])
            assert set(digests) == (
                {known, unknown, other} if brand == "acme" else {known, unknown}
            )
            for phone, stop in ((known, stops[0]), (unknown, stops[1])):
                assert [p.event_id for p in digests[phone].pending] == [str(stop.event_id)]
                assert digests[phone].pending[0].unattributed is True
            assert not digests.get(other, digest_of(SubscriberState())).pending
        acme = (await _read(reads, "acme", [known]))[known]
        assert acme.campaign("deals").grant is not None  # the brand's own facts are kept
        # Under the phone-wide key itself, its own digest and nothing added twice.
        wide = await _read(reads, ANY_BRAND, [known])
        assert len(wide[known].pending) == 1

        dismissed = RevocationCandidateResolved(
            **_base(T0 + timedelta(minutes=1)),
            phone=unknown,
            brand=ANY_BRAND,
            candidate_event_id=stops[1].event_id,
            resolution=CandidateResolution.DISMISSED,
        )
        await view.apply(Stream.SUBSCRIBERS, pos.record([dismissed]))
        assert await _read(reads, "globex", [unknown]) == {}

    async def test_positions_are_the_views_and_the_digests_follow_them(
        self, view: ConsentView, reads: DigestReads
    ) -> None:
        assert await reads.positions(Stream.SUBSCRIBERS) == {}
        first = [
            Recorded(grant("+14155550100", "acme", "deals", T0), LedgerPosition(0, 0), T0),
            Recorded(grant("+14155550101", "acme", "deals", T0), LedgerPosition(2, 7), T0),
        ]
        await view.apply(Stream.SUBSCRIBERS, first)
        await view.apply(
            Stream.CAMPAIGNS, [Recorded(define("acme", "deals", T0), LedgerPosition(1, 3), T0)]
        )

        assert await reads.positions(Stream.SUBSCRIBERS) == {0: 1, 2: 8}
        assert await reads.positions(Stream.CAMPAIGNS) == {1: 4}
        assert set(await reads.digests("acme", ["+14155550100", "+14155550101"])) == {
            "+14155550100",
            "+14155550101",
        }

        stop = revoke("+14155550100", "acme", "deals", T0 + timedelta(hours=1))
        await view.apply(Stream.SUBSCRIBERS, [Recorded(stop, LedgerPosition(0, 1), T0)])

        assert await reads.positions(Stream.SUBSCRIBERS) == {0: 2, 2: 8}
        after = (await reads.digests("acme", ["+14155550100"]))["+14155550100"]
        assert after.campaign("deals").revocation is not None

    async def test_a_generated_ledger_reads_exactly(
        self, view: ConsentView, reads: DigestReads
    ) -> None:
        pos = Positions()
        recorded = pos.record(generate_events(1500, phones=150, brands=3, campaigns=3))
        subscribers = [r for r in recorded if Stream.of(r.event) is Stream.SUBSCRIBERS]
        for start in range(0, len(subscribers), 400):
            await view.apply(Stream.SUBSCRIBERS, subscribers[start : start + 400])

        assert await reads.positions(Stream.SUBSCRIBERS) == await view.positions(Stream.SUBSCRIBERS)
        expected = expected_states(subscribers)
        for brand in sorted({b for _, b in expected}):
            phones = sorted(p for p, b in expected if b == brand)
            digests = await reads.digests(brand, [*phones, "+14155559999"])
            assert digests == {p: digest_of(expected[p, brand]) for p in phones}
            # A batch's read answers each number as reading it alone does.
            for phone in phones[:5]:
                assert await reads.digests(brand, [phone]) == {phone: digests[phone]}


async def _read(reads: DigestReads, brand: str, phones: Sequence[str]) -> dict[str, Digest]:
    """Digests as CanSend reads them: after an observation of the positions."""
    await reads.positions(Stream.SUBSCRIBERS)
    return await reads.digests(brand, phones)


class CampaignReadsSuite:
    """What every ``CampaignReads`` must answer: the view itself, and every speed layer
    that wraps one (``CampaignHistoryCache``). Subclasses provide ``view`` (an empty
    view, where the facts are applied) and ``reads`` (what is read; by default the
    view). Reads are made as the service makes them: after an observation of the
    view's positions (``observe``)."""

    @pytest.fixture
    def view(self) -> ConsentView:
        raise NotImplementedError("subclasses provide an empty view")

    @pytest.fixture
    def campaign_reads(self, view: ConsentView) -> CampaignReads:
        return view

    @staticmethod
    async def _observe(view: ConsentView, reads: CampaignReads) -> None:
        positions = await view.positions(Stream.CAMPAIGNS)
        reads.observe(ConsistencyToken({(Stream.CAMPAIGNS, p): o for p, o in positions.items()}))

    async def test_campaign_history_keeps_every_version(
        self, view: ConsentView, campaign_reads: CampaignReads
    ) -> None:
        pos = Positions()
        batch = pos.record(
            [
                define("acme", "deals", T0, ["+12025550100"]),
                define("acme", "news", T0, ["+12025550101"]),
                define("acme", "deals", T0 + timedelta(days=1), ["+12025550102"], changed=True),
            ]
        )
        await view.apply(Stream.CAMPAIGNS, batch[:2])
        await view.apply(Stream.CAMPAIGNS, batch[2:])
        await self._observe(view, campaign_reads)

        history = await campaign_reads.campaign_history("acme", "deals")
        assert history == fold_campaign([batch[0], batch[2]])
        current = history.current()
        assert current is not None and current.policy_version == 2
        assert await campaign_reads.campaign_history("acme", "unknown") == fold_campaign([])
        assert await view.positions(Stream.CAMPAIGNS) == {
            p: o + 1 for p, o in _last_offsets(batch).items()
        }

    async def test_a_change_is_read_once_its_positions_are_observed(
        self, view: ConsentView, campaign_reads: CampaignReads
    ) -> None:
        pos = Positions()
        first = pos.record([define("acme", "deals", T0), define("globex", "deals", T0)])
        await view.apply(Stream.CAMPAIGNS, first)
        await self._observe(view, campaign_reads)
        before = await campaign_reads.campaign_history("acme", "deals")
        assert before == fold_campaign([first[0]])

        change = pos.record([define("acme", "deals", T0 + timedelta(days=1), changed=True)])
        await view.apply(Stream.CAMPAIGNS, change)
        await self._observe(view, campaign_reads)

        after = await campaign_reads.campaign_history("acme", "deals")
        assert after == fold_campaign([first[0], change[0]])
        assert await campaign_reads.campaign_history("globex", "deals") == fold_campaign([first[1]])

    async def test_a_campaign_defined_after_a_read_of_it_is_found(
        self, view: ConsentView, campaign_reads: CampaignReads
    ) -> None:
        await self._observe(view, campaign_reads)
        assert (await campaign_reads.campaign_history("acme", "later")).versions == ()
        batch = Positions().record([define("acme", "later", T0)])
        await view.apply(Stream.CAMPAIGNS, batch)
        await self._observe(view, campaign_reads)
        assert await campaign_reads.campaign_history("acme", "later") == fold_campaign(batch)


PassTime = Callable[[float], Awaitable[None]]
"""Lets seconds pass on the clock that a view's append turns run on."""


class ConsentViewSuite(DigestReadsSuite, CampaignReadsSuite):
    """Every ``ConsentView`` adapter must pass these, and the reads above. Subclasses
    provide ``view``, and ``pass_time`` for the leases: the tests drive the clock
    rather than sleep, so that a slow machine neither runs a lease out early nor
    keeps a turn past its time."""

    @pytest.fixture
    def pass_time(self) -> PassTime:
        raise NotImplementedError("the adapter's suite lets time pass on its view's clock")

    async def test_applying_a_batch_gives_the_fold_of_its_events(self, view: ConsentView) -> None:
        pos = Positions()
        batch = pos.record(
            [
                grant("+14155550100", "acme", "deals", T0),
                grant("+14155550100", "acme", "news", T0 + timedelta(minutes=1)),
                sent("+14155550100", "acme", "deals", T0 + timedelta(minutes=2)),
                revoke("+14155550100", "acme", "deals", T0 + timedelta(minutes=3)),
                grant("+14155550100", "globex", "deals", T0),
                grant("+14155550101", "acme", "deals", T0),
                revoke("+14155550101", "acme", None, T0 + timedelta(hours=1)),
            ]
        )
        await view.apply(Stream.SUBSCRIBERS, batch)

        for (phone, brand), state in expected_states(batch).items():
            assert (await view.subscriber_states(brand, [phone]))[phone] == state

    async def test_an_unknown_phone_reads_as_an_empty_state(self, view: ConsentView) -> None:
        states = await view.subscriber_states("acme", ["+14155550199"])

        assert states == {"+14155550199": SubscriberState(phone="+14155550199", brand="acme")}

    async def test_a_late_fact_folds_by_world_time_not_arrival(self, view: ConsentView) -> None:
        pos = Positions()
        stop = revoke("+14155550100", "acme", "deals", T0 + timedelta(hours=1))
        late_grant = grant("+14155550100", "acme", "deals", T0)
        batch = pos.record([stop, late_grant])

        await view.apply(Stream.SUBSCRIBERS, batch)

        state = (await view.subscriber_states("acme", ["+14155550100"]))["+14155550100"]
        assert state == fold(batch)

    async def test_applying_the_same_batch_twice_changes_nothing(self, view: ConsentView) -> None:
        pos = Positions()
        batch = pos.record(subscriber_events(300, phones=40, brands=2, campaigns=2))
        await view.apply(Stream.SUBSCRIBERS, batch)
        phones = sorted({r.event.phone for r in batch})  # type: ignore[attr-defined]
        before = [await view.subscriber_states(b, phones) for b in ("brand-0", "brand-1")]
        positions = await view.positions(Stream.SUBSCRIBERS)
        history = await view.history(phones[0])

        await view.apply(Stream.SUBSCRIBERS, batch)

        assert [await view.subscriber_states(b, phones) for b in ("brand-0", "brand-1")] == before
        assert await view.positions(Stream.SUBSCRIBERS) == positions
        assert await view.history(phones[0]) == history

    async def test_a_batch_split_in_two_gives_the_same_state_as_one(
        self, view: ConsentView
    ) -> None:
        pos = Positions()
        batch = pos.record(subscriber_events(300, phones=40, brands=2, campaigns=2))
        # The second half overlaps the first: a re-delivery after a crash looks like this.
        await view.apply(Stream.SUBSCRIBERS, batch[:180])
        await view.apply(Stream.SUBSCRIBERS, batch[120:])

        for (phone, brand), state in expected_states(batch).items():
            assert (await view.subscriber_states(brand, [phone]))[phone] == state

    async def test_positions_advance_per_partition(self, view: ConsentView) -> None:
        assert await view.positions(Stream.SUBSCRIBERS) == {}
        batch = [
            Recorded(grant("+14155550100", "acme", "deals", T0), LedgerPosition(0, 0), T0),
            Recorded(grant("+14155550101", "acme", "deals", T0), LedgerPosition(2, 7), T0),
            Recorded(grant("+14155550100", "acme", "news", T0), LedgerPosition(0, 1), T0),
        ]

        await view.apply(Stream.SUBSCRIBERS, batch)

        assert await view.positions(Stream.SUBSCRIBERS) == {0: 2, 2: 8}
        assert await view.positions(Stream.CAMPAIGNS) == {}

    async def test_events_before_the_stored_position_are_skipped(self, view: ConsentView) -> None:
        first = Recorded(grant("+14155550100", "acme", "deals", T0), LedgerPosition(0, 5), T0)
        await view.apply(Stream.SUBSCRIBERS, [first])
        stale = Recorded(
            revoke("+14155550100", "acme", "deals", T0 + timedelta(hours=1)),
            LedgerPosition(0, 3),
            T0,
        )

        await view.apply(Stream.SUBSCRIBERS, [stale])

        state = (await view.subscriber_states("acme", ["+14155550100"]))["+14155550100"]
        assert state == fold([first])
        assert await view.positions(Stream.SUBSCRIBERS) == {0: 6}

    async def test_a_duplicate_event_id_is_stored_and_folded_once(self, view: ConsentView) -> None:
        pos = Positions()
        original = pos.record([grant("+14155550100", "acme", "deals", T0)])[0]
        duplicate = pos.again(original)
        # Folded twice, the later copy would replace the grant's position and recorded_at.
        await view.apply(Stream.SUBSCRIBERS, [original])
        await view.apply(Stream.SUBSCRIBERS, [duplicate])

        state = (await view.subscriber_states("acme", ["+14155550100"]))["+14155550100"]
        assert state == fold([original])
        assert await view.history("+14155550100") == [original]
        assert await view.find_event(str(original.event.event_id)) == original
        assert await view.positions(Stream.SUBSCRIBERS) == {
            duplicate.position.partition: duplicate.position.offset + 1
        }

    async def test_a_duplicate_inside_one_batch_is_folded_once(self, view: ConsentView) -> None:
        pos = Positions()
        original = pos.record([grant("+14155550100", "acme", "deals", T0)])[0]
        batch = [original, pos.again(original)]

        await view.apply(Stream.SUBSCRIBERS, batch)

        state = (await view.subscriber_states("acme", ["+14155550100"]))["+14155550100"]
        assert state == fold([original])
        assert await view.history("+14155550100") == [original]

    async def test_a_batch_with_a_bad_event_applies_nothing(self, view: ConsentView) -> None:
        pos = Positions()
        good = pos.record([grant("+14155550100", "acme", "deals", T0)])
        foreign = pos.record([define("acme", "deals", T0)])

        with pytest.raises(ValueError):
            await view.apply(Stream.SUBSCRIBERS, [*good, *foreign])

        assert await view.positions(Stream.SUBSCRIBERS) == {}
        assert await view.history("+14155550100") == []

    async def test_history_is_in_ledger_order_and_filters_by_brand(self, view: ConsentView) -> None:
        pos = Positions()
        phone = "+14155550100"
        batch = pos.record(
            [
                grant(phone, "acme", "deals", T0 + timedelta(hours=2)),
                grant(phone, "globex", "deals", T0),
                sent(phone, "acme", "deals", T0 + timedelta(hours=3)),
                revoke(phone, "acme", None, T0 + timedelta(hours=1)),
                grant("+14155550101", "acme", "deals", T0),
            ]
        )
        await view.apply(Stream.SUBSCRIBERS, batch[:2])
        await view.apply(Stream.SUBSCRIBERS, batch[2:])

        assert await view.history(phone) == batch[:4]
        assert await view.history(phone, "acme") == [batch[0], batch[2], batch[3]]
        assert await view.history(phone, "initech") == []
        assert await view.history("+14155550199") == []

    async def test_find_event_returns_the_recorded_event(self, view: ConsentView) -> None:
        pos = Positions()
        batch = pos.record(
            [grant("+14155550100", "acme", "deals", T0), revoke("+14155550100", "acme", None, T0)]
        )
        campaign = pos.record([define("acme", "deals", T0, ["+12025550100"])])
        await view.apply(Stream.SUBSCRIBERS, batch)
        await view.apply(Stream.CAMPAIGNS, campaign)

        assert await view.find_event(str(batch[1].event.event_id)) == batch[1]
        assert await view.find_event(str(campaign[0].event.event_id)) == campaign[0]
        assert await view.find_event(str(uuid.uuid4())) is None
        assert await view.find_event("not-a-uuid") is None

    async def test_find_events_returns_each_recorded_event_found_by_id(
        self, view: ConsentView
    ) -> None:
        pos = Positions()
        batch = pos.record(
            [grant("+14155550100", "acme", "deals", T0), sent("+14155550101", "acme", "deals", T0)]
        )
        await view.apply(Stream.SUBSCRIBERS, batch)
        ids = [str(r.event.event_id) for r in batch]

        found = await view.find_events([ids[1], str(uuid.uuid4()), "not-a-uuid", ids[0], ids[1]])
        assert found == {ids[0]: batch[0], ids[1]: batch[1]}
        assert await view.find_events([]) == {}

    async def test_flagged_replies_queue_in_the_order_applied_and_never_go_back(
        self, view: ConsentView
    ) -> None:
        a, b, c, d, e = (f"+1415555010{i}" for i in range(5))
        pos = Positions()
        batch = [
            flag(c, "acme", T0 + timedelta(hours=1)),
            flag(a, "acme", T0),
            flag(b, "globex", T0),
            grant(d, "acme", "deals", T0),
        ]
        await view.apply(Stream.SUBSCRIBERS, pos.record(batch))

        # A batch's replies become visible together, in recorded order among them.
        acme = await view.flagged("acme")
        assert [(f.event_id, f.phone) for f in acme] == [
            (str(batch[1].event_id), a),
            (str(batch[0].event_id), c),
        ]
        assert acme[0].position < acme[1].position
        assert [f.phone for f in await view.flagged("globex")] == [b]
        assert await view.flagged("initech") == []

        # A reply that happened and was recorded before all of them, from a partition
        # applied late, queues after them: a reader that has seen acme[1] finds it.
        day_before = T0 - timedelta(days=1)
        late = pos.record([flag(e, "acme", day_before)], recorded_at=day_before)
        await view.apply(Stream.SUBSCRIBERS, late)
        queue = await view.flagged("acme")
        assert [f.phone for f in queue] == [a, c, e]
        assert queue[:2] == acme and queue[2].position > acme[1].position
        assert await view.flagged("acme", after=acme[1].position) == queue[2:]
        assert await view.flagged("acme", after=queue[2].position) == []

        # A batch applied again, or the same fact appended twice, takes no new place.
        await view.apply(Stream.SUBSCRIBERS, late)
        await view.apply(Stream.SUBSCRIBERS, [pos.again(late[0])])
        assert await view.flagged("acme") == queue

        # A rebuild places the replies again, above every place given before it.
        await view.reset()
        assert await view.flagged("acme") == []
        await view.apply(Stream.SUBSCRIBERS, late)
        (rebuilt,) = await view.flagged("acme")
        assert rebuilt.event_id == queue[2].event_id
        assert rebuilt.position > queue[2].position

    async def test_resolved_replies_are_left_out_and_a_limit_is_kept(
        self, view: ConsentView
    ) -> None:
        pos = Positions()
        phones = [f"+1415555011{i}" for i in range(5)]
        replies = [flag(phone, "acme", T0 + timedelta(seconds=i)) for i, phone in enumerate(phones)]
        await view.apply(Stream.SUBSCRIBERS, pos.record(replies[:3]))

        def resolve(reply: RevocationCandidateFlagged) -> RevocationCandidateResolved:
            return RevocationCandidateResolved(
                **_base(T0 + timedelta(minutes=1)),
                phone=reply.phone,
                brand="acme",
                candidate_event_id=reply.event_id,
                resolution=CandidateResolution.DISMISSED,
            )

        # One resolved in a later batch; one resolved in the batch that flags it.
        await view.apply(Stream.SUBSCRIBERS, pos.record([resolve(replies[1])]))
        await view.apply(Stream.SUBSCRIBERS, pos.record([*replies[3:], resolve(replies[4])]))

        listed = await view.flagged("acme")
        assert [f.phone for f in listed] == [phones[0], phones[2], phones[3]]
        assert await view.flagged("acme", limit=2) == listed[:2]
        assert await view.flagged("acme", after=listed[0].position, limit=1) == listed[1:2]
        assert await view.flagged("acme", limit=0) == []

    async def test_a_phone_wide_stop_waits_in_the_queue_until_resolved(
        self, view: ConsentView
    ) -> None:
        pos = Positions()
        stops = [
            replace(flag(phone, ANY_BRAND, T0), text="STOP", unattributed=True, to_number="+1")
            for phone in ("+14155550120", "+14155550121")
        ]
        await view.apply(Stream.SUBSCRIBERS, pos.record(stops))
        dismissed = RevocationCandidateResolved(
            **_base(T0 + timedelta(minutes=1)),
            phone="+14155550121",
            brand=ANY_BRAND,
            candidate_event_id=stops[1].event_id,
            resolution=CandidateResolution.DISMISSED,
        )
        await view.apply(Stream.SUBSCRIBERS, pos.record([dismissed]))

        assert [f.phone for f in await view.flagged(ANY_BRAND)] == ["+14155550120"]

    async def test_open_flagged_times_are_every_brands_unresolved_replies(
        self, view: ConsentView
    ) -> None:
        pos = Positions()
        replies = [
            flag("+14155550130", "acme", T0),
            flag("+14155550131", "globex", T0 + timedelta(hours=1)),
            flag("+14155550132", ANY_BRAND, T0 + timedelta(hours=2)),
        ]
        done = RevocationCandidateResolved(
            **_base(T0 + timedelta(hours=3)),
            phone=replies[0].phone,
            brand="acme",
            candidate_event_id=replies[0].event_id,
            resolution=CandidateResolution.DISMISSED,
        )
        await view.apply(Stream.SUBSCRIBERS, pos.record(replies))
        assert sorted(await view.open_flagged_times()) == [r.occurred_at for r in replies]
        await view.apply(Stream.SUBSCRIBERS, pos.record([done]))
        assert sorted(await view.open_flagged_times()) == [r.occurred_at for r in replies[1:]]

    async def test_sending_counts_count_sends_and_distinct_opted_out_numbers(
        self, view: ConsentView
    ) -> None:
        pos = Positions()
        a, b, c, d, e, f = (f"+1415555010{i}" for i in range(6))
        start, end = T0, T0 + timedelta(days=10)
        inside = start + timedelta(days=1)
        batch = pos.record(
            [
                sent(a, "acme", "deals", start),  # the window includes its start
                sent(b, "acme", "deals", inside),
                sent(c, "acme", "deals", inside, MessageKind.OPT_OUT_CONFIRMATION),
                sent(a, "acme", "deals", start - timedelta(microseconds=1)),  # before
                sent(a, "acme", "deals", end),  # and excludes its end
                sent(a, "acme", "news", inside),
                sent(b, "acme", "news", inside),
                sent(a, "globex", "deals", inside),
                sent(f, "acme", "news", inside),
                revoke(a, "acme", "deals", inside),
                revoke(a, "acme", "deals", inside + timedelta(hours=1)),  # a number counts once
                # STOPALL: for the campaigns that texted the number in the window
                revoke(b, "acme", None, inside),
                revoke(f, "acme", None, inside),
                revoke(c, "acme", "news", inside),
                revoke(d, "acme", "deals", start - timedelta(seconds=1)),  # before
                revoke(e, "globex", "deals", inside),
            ]
        )
        await view.apply(Stream.SUBSCRIBERS, [*batch, pos.again(batch[1])])

        assert await view.sending_counts("acme", "deals", start, end) == SendingCounts(3, 2)
        assert await view.sending_counts("acme", "news", start, end) == SendingCounts(3, 3)
        assert await view.sending_counts("acme", None, start, end) == SendingCounts(6, 4)
        assert await view.sending_counts("acme", "other", start, end) == SendingCounts(0, 0)
        assert await view.sending_counts("globex", None, start, end) == SendingCounts(1, 1)
        assert await view.sending_counts("initech", None, start, end) == SendingCounts(0, 0)
        before = start - timedelta(days=1)
        assert await view.sending_counts("acme", "deals", before, start) == SendingCounts(1, 1)

    async def test_sending_counts_count_holds_still_pending_beside_the_opt_outs(
        self, view: ConsentView
    ) -> None:
        pos = Positions()
        a, b, c, d, e, f, g = (f"+1415555020{i}" for i in range(7))
        start, end = T0, T0 + timedelta(days=10)
        inside = start + timedelta(days=1)
        later = end + timedelta(days=1)  # a review after the window still decides
        holds = {p: flag(p, "acme", inside) for p in (a, b, c, d, e)}
        held_twice = flag(a, "acme", inside + timedelta(hours=1))
        events: list[LedgerEvent] = [
            *(sent(p, "acme", "deals", inside) for p in (a, b, c, d, f)),
            sent(e, "acme", "news", inside),
            *holds.values(),
            held_twice,  # a number counts once
            # dismissed: nowhere
            replace(builders.resolved(later, holds[b], CandidateResolution.DISMISSED), phone=b),
            # revoked: once, as the opt-out the resolution records
            replace(builders.resolved(inside, holds[c], CandidateResolution.REVOKED), phone=c),
            revoke(c, "acme", None, inside + timedelta(hours=2)),
            revoke(d, "acme", "deals", inside),  # an opt-out already, not pending besides
            flag(f, "acme", start - timedelta(seconds=1)),  # before the window
            replace(flag(g, ANY_BRAND, inside), unattributed=True),  # no brand's
            flag(g, "globex", inside),
        ]
        await view.apply(Stream.SUBSCRIBERS, pos.record(events))

        # a and e pending; for deals, e's brand-wide hold does not count: deals
        # never texted e
        assert await view.sending_counts("acme", None, start, end) == SendingCounts(6, 2, 2)
        assert await view.sending_counts("acme", "deals", start, end) == SendingCounts(5, 2, 1)
        assert await view.sending_counts("acme", "news", start, end) == SendingCounts(1, 0, 1)
        assert await view.sending_counts("globex", None, start, end) == SendingCounts(0, 0, 1)
        expected = count_sending(events, "acme", "deals", start, end)
        assert expected == SendingCounts(5, 2, 1)

    async def test_sending_counts_match_the_rule_over_a_generated_ledger(
        self, view: ConsentView
    ) -> None:
        pos = Positions()
        recorded = pos.record(generate_events(1500, phones=150, brands=3, campaigns=3))
        subscribers = [r for r in recorded if Stream.of(r.event) is Stream.SUBSCRIBERS]
        await view.apply(Stream.SUBSCRIBERS, subscribers)
        events = [r.event for r in subscribers]
        first = min(e.occurred_at for e in events)
        last = max(e.occurred_at for e in events)
        middle = first + (last - first) / 2
        windows = [(first, last + timedelta(seconds=1)), (first, middle), (middle, last)]
        for brand in ("brand-0", "brand-1", "brand-2"):
            for campaign in (None, "camp-0", "camp-1", "camp-2"):
                for start, end in windows:
                    expected = count_sending(events, brand, campaign, start, end)
                    assert await view.sending_counts(brand, campaign, start, end) == expected
        whole = count_sending(events, "brand-0", None, *windows[0])
        assert whole.messages_sent > 0 and whole.opt_outs > 0  # the ledger has both
        assert whole.opt_outs_pending_review > 0  # and holds no review resolved

    async def test_a_brand_setting_comes_with_every_campaign_of_the_brand(
        self, view: ConsentView
    ) -> None:
        pos = Positions()
        setting = BrandPolicySet(
            **_base(T0 + timedelta(hours=1)),
            brand="acme",
            campaign=BRAND_SETTINGS,
            revoke_all=True,
        )
        batch = pos.record(
            [
                define("acme", "deals", T0, ["+12025550100"]),
                define("acme", "news", T0),
                define("globex", "deals", T0),
                setting,
            ]
        )
        await view.apply(Stream.CAMPAIGNS, batch)

        for name in ("deals", "news"):
            history = await view.campaign_history("acme", name)
            assert history.brand_settings == fold_campaign([batch[3]]).brand_settings
            rules = history.as_of(T0 + timedelta(hours=2))
            assert rules is not None and rules.revoke_all_since == setting.occurred_at
            assert [r.event for r in history.facts()][-1] == setting
        other = await view.campaign_history("globex", "deals")
        assert other.brand_settings == ()
        # The setting is no campaign: it claims no number and defines nothing.
        assert (await view.campaign_history("acme", "unknown")).versions == ()
        assert await view.campaign_for_number("+12025550100") == ("acme", "deals")
        # Nor is it a campaign's name, which a new campaign's is checked against.
        assert await view.campaign_names("acme") == ["deals", "news"]
        assert await view.campaign_names("globex") == ["deals"]
        assert await view.campaign_names("initech") == []
        assert await view.brand_names() == ["acme", "globex"]

    async def test_sender_numbers_follow_the_current_rules(self, view: ConsentView) -> None:
        pos = Positions()
        await view.apply(
            Stream.CAMPAIGNS,
            pos.record(
                [
                    define("acme", "deals", T0, ["+12025550100", "+12025550101"]),
                    define("globex", "alerts", T0, ["+12025550200"]),
                ]
            ),
        )
        assert await view.campaign_for_number("+12025550100") == ("acme", "deals")
        assert await view.campaign_for_number("+12025550200") == ("globex", "alerts")
        assert await view.campaign_for_number("+12025550999") is None

        await view.apply(
            Stream.CAMPAIGNS,
            pos.record(
                [
                    define("acme", "deals", T0 + timedelta(days=1), ["+12025550101"], changed=True),
                ]
            ),
        )

        assert await view.campaign_for_number("+12025550100") is None
        assert await view.campaign_for_number("+12025550101") == ("acme", "deals")

    # Two campaigns listing one number: a definition that raced another, or data from
    # before DefineCampaign refused a held number. The campaign stream is one
    # partition, as in every ledger, so positions are ledger order.

    async def test_a_number_two_campaigns_claim_stays_with_the_earlier_claim(
        self, view: ConsentView
    ) -> None:
        pos, number = Positions(partitions=1), "+12025550100"
        await view.apply(Stream.CAMPAIGNS, pos.record([define("acme", "deals", T0, [number])]))
        await view.apply(
            Stream.CAMPAIGNS,
            pos.record(
                [
                    define("globex", "promo", T0 + timedelta(days=1), [number]),
                    define("initech", "news", T0 - timedelta(days=1), [number]),  # backdated
                ]
            ),
        )

        assert await view.campaign_for_number(number) == ("acme", "deals")

    async def test_policy_changes_that_keep_a_number_keep_the_earlier_claim(
        self, view: ConsentView
    ) -> None:
        pos, number = Positions(partitions=1), "+12025550100"
        day = timedelta(days=1)
        await view.apply(
            Stream.CAMPAIGNS,
            pos.record(
                [
                    define("acme", "deals", T0, [number]),
                    define("globex", "promo", T0 + day, [number]),
                    define("acme", "deals", T0 + 2 * day, [number, "+12025550101"], changed=True),
                    # Recorded last but dated before the rules in force: never in force.
                    define("acme", "deals", T0 - day, [], changed=True),
                ]
            ),
        )
        await view.apply(
            Stream.CAMPAIGNS,
            pos.record([define("globex", "promo", T0 + 3 * day, [number], changed=True)]),
        )

        assert await view.campaign_for_number(number) == ("acme", "deals")

    async def test_a_number_given_up_goes_to_the_claim_that_remains_for_good(
        self, view: ConsentView
    ) -> None:
        pos, number = Positions(partitions=1), "+12025550100"
        day = timedelta(days=1)
        await view.apply(
            Stream.CAMPAIGNS,
            pos.record(
                [
                    define("acme", "deals", T0, [number]),
                    define("globex", "promo", T0 + day, [number]),
                    define("acme", "deals", T0 + 2 * day, ["+12025550101"], changed=True),
                ]
            ),
        )
        assert await view.campaign_for_number(number) == ("globex", "promo")

        # Listing it again is a new claim, later than the one that now holds it.
        await view.apply(
            Stream.CAMPAIGNS,
            pos.record([define("acme", "deals", T0 + 3 * day, [number], changed=True)]),
        )
        assert await view.campaign_for_number(number) == ("globex", "promo")
        assert await view.campaign_for_number("+12025550101") is None

    async def test_campaign_writes_take_turns(self, view: ConsentView) -> None:
        order: list[str] = []
        first_in, release_first = asyncio.Event(), asyncio.Event()

        async def first() -> None:
            async with view.campaign_writes(5.0):
                order.append("first in")
                first_in.set()
                await release_first.wait()
                order.append("first out")

        async def second() -> None:
            async with view.campaign_writes(5.0):
                order.append("second in")

        tasks = [asyncio.create_task(first())]
        try:
            await asyncio.wait_for(first_in.wait(), 5)
            with pytest.raises(TimeoutError):
                async with view.campaign_writes(0.1):
                    order.append("a turn taken while another holds it")
            tasks.append(asyncio.create_task(second()))
            await asyncio.sleep(0.1)
            assert order == ["first in"]
            release_first.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 5)
            assert order == ["first in", "first out", "second in"]
        finally:  # a failed assertion must not leave a turn held past the test
            release_first.set()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def test_a_writer_that_fails_gives_its_turn_up(self, view: ConsentView) -> None:
        with pytest.raises(RuntimeError, match="the append failed"):
            async with view.campaign_writes(1.0):
                raise RuntimeError("the append failed")
        async with view.campaign_writes(1.0):
            pass

    async def test_a_generated_ledger_folds_exactly(self, view: ConsentView) -> None:
        pos = Positions()
        recorded = pos.record(generate_events(1500, phones=150, brands=3, campaigns=3))
        subscribers = [r for r in recorded if Stream.of(r.event) is Stream.SUBSCRIBERS]
        campaigns = [r for r in recorded if Stream.of(r.event) is Stream.CAMPAIGNS]
        for start in range(0, len(subscribers), 400):
            await view.apply(Stream.SUBSCRIBERS, subscribers[start : start + 400])
        await view.apply(Stream.CAMPAIGNS, campaigns)

        expected = expected_states(subscribers)
        for brand in sorted({b for _, b in expected}):
            phones = sorted(p for p, b in expected if b == brand)
            states = await view.subscriber_states(brand, phones)
            assert states == {p: expected[p, brand] for p in phones}
        assert await view.positions(Stream.SUBSCRIBERS) == {
            p: o + 1 for p, o in _last_offsets(subscribers).items()
        }

    async def test_an_event_of_another_request_under_a_held_id_is_no_fact(
        self, view: ConsentView
    ) -> None:
        phone = "+14155550100"
        pos = Positions()
        first = of_request(grant(phone, "acme", "deals", T0), "r1", "fp-a")
        other = of_request(revoke(phone, "acme", "deals", T0 + timedelta(hours=1)), "r1", "fp-b")
        same = of_request(revoke(phone, "acme", "news", T0), "r1", "fp-a")  # its second fact
        globex = of_request(grant(phone, "globex", "deals", T0), "r1", "fp-c")  # its own ids
        batch = pos.record([first, other])
        await view.apply(Stream.SUBSCRIBERS, batch)
        later = pos.record([other, same, globex])  # a retry of "other": still no fact
        await view.apply(Stream.SUBSCRIBERS, later)

        kept = [batch[0], later[1]]
        assert await view.history(phone, "acme") == kept
        assert (await view.subscriber_states("acme", [phone]))[phone] == fold(kept)
        assert await view.find_event(str(other.event_id)) is None
        assert await view.request_use("acme", "r1") == RequestUse(
            "fp-a", (str(first.event_id), str(same.event_id))
        )
        assert await view.request_use("globex", "r1") == RequestUse("fp-c", (str(globex.event_id),))
        assert await view.request_use("acme", "r2") is None

    async def test_a_claimed_request_id_holds_against_later_claims_and_the_fold(
        self, view: ConsentView
    ) -> None:
        phone = "+14155550100"
        ids = [str(uuid.uuid4()) for _ in range(3)]
        claims = await asyncio.gather(
            *(view.claim_request("acme", "r1", f"fp-{i}", [i]) for i in ids)
        )
        assert len(set(claims)) == 1
        held = claims[0]
        assert held.event_ids[0] in ids and held.fingerprint == f"fp-{held.event_ids[0]}"
        assert await view.request_use("acme", "r1") == held
        loser = of_request(grant(phone, "acme", "deals", T0), "r1", "fp-other")
        await view.apply(Stream.SUBSCRIBERS, Positions().record([loser]))
        assert await view.history(phone) == []
        await view.reset()  # a rebuild keeps which request holds each id
        assert await view.request_use("acme", "r1") == held

    async def test_bulk_claims_answer_each_claim_with_the_use_that_stands(
        self, view: ConsentView
    ) -> None:
        held = await view.claim_request("acme", "r0", "fp-0", [str(uuid.uuid4())])
        mine = [str(uuid.uuid4()) for _ in range(3)]
        claims = [
            RequestClaim("acme", "r0", "fp-x", (mine[0],)),  # taken before: not ours
            RequestClaim("acme", "r1", "fp-1", (mine[1], mine[2])),
            RequestClaim("globex", "r0", "fp-g", (mine[0],)),  # another brand's own id
            RequestClaim("acme", "r1", "fp-dup", (str(uuid.uuid4()),)),  # r1 again: the first
        ]
        uses = await view.claim_requests(claims)
        assert uses == [
            held,
            RequestUse("fp-1", (mine[1], mine[2])),
            RequestUse("fp-g", (mine[0],)),
            RequestUse("fp-1", (mine[1], mine[2])),
        ]
        assert await view.request_use("acme", "r1") == RequestUse("fp-1", (mine[1], mine[2]))
        assert await view.request_uses([("acme", "r1"), ("acme", "r9"), ("globex", "r0")]) == {
            ("acme", "r1"): RequestUse("fp-1", (mine[1], mine[2])),
            ("globex", "r0"): RequestUse("fp-g", (mine[0],)),
        }
        assert await view.claim_requests([]) == []
        assert await view.request_uses([]) == {}

    async def test_of_imports_taking_one_records_append_turn_one_holds_it_until_it_ends(
        self, view: ConsentView
    ) -> None:
        a, b, keys = str(uuid.uuid4()), str(uuid.uuid4()), [("acme", "r1"), ("acme", "r2")]
        takes = await asyncio.gather(
            view.take_append_turns(keys, a, 60), view.take_append_turns(keys, b, 60)
        )
        assert sorted(takes, key=lambda t: t[0].value) == [
            [AppendTurn.HELD, AppendTurn.HELD],
            [AppendTurn.TAKEN, AppendTurn.TAKEN],
        ]
        first, second = (a, b) if takes[0][0] is AppendTurn.TAKEN else (b, a)
        assert await view.append_turn_holder("acme", "r1") == first
        assert await view.append_turn_holder("acme", "r9") is None
        # Its holder may ask again (a chunk sent again); another brand's id is its own.
        assert await view.take_append_turns([keys[0], ("globex", "r1")], first, 60) == [
            AppendTurn.TAKEN,
            AppendTurn.TAKEN,
        ]
        await view.end_append_turns(keys[:1], second, appended=True)  # not its turn
        assert await view.take_append_turns(keys, second, 60) == [AppendTurn.HELD] * 2
        await view.end_append_turns(keys[:1], first, appended=True)
        await view.end_append_turns(keys[1:], first, appended=False)  # its append failed
        assert [await view.append_turn_holder(*k) for k in keys] == [None, None]  # ended
        assert await view.take_append_turns(keys, second, 60) == [
            AppendTurn.APPENDED,
            AppendTurn.TAKEN,
        ]
        assert await view.take_append_turns(keys, first, 60) == [
            AppendTurn.APPENDED,
            AppendTurn.HELD,
        ]
        await view.reset()  # a rebuild keeps the turns
        assert await view.take_append_turns(keys, str(uuid.uuid4()), 60) == [
            AppendTurn.APPENDED,
            AppendTurn.HELD,
        ]
        assert await view.take_append_turns([], first, 60) == []

    async def test_an_append_turn_not_ended_runs_out_and_is_taken_again(
        self, view: ConsentView, pass_time: PassTime
    ) -> None:
        dead, next_one, keys = str(uuid.uuid4()), str(uuid.uuid4()), [("acme", "r1")]
        assert await view.take_append_turns(keys, dead, 60) == [AppendTurn.TAKEN]
        assert await view.take_append_turns(keys, next_one, 60) == [AppendTurn.HELD]
        # An adapter on the database's clock runs in real time too: 10 s to spare.
        await pass_time(50)
        assert await view.take_append_turns(keys, next_one, 60) == [AppendTurn.HELD]
        assert await view.append_turn_holder(*keys[0]) == dead
        await pass_time(10)
        assert await view.append_turn_holder(*keys[0]) is None  # run out
        assert await view.take_append_turns(keys, next_one, 60) == [AppendTurn.TAKEN]
        await view.end_append_turns(keys, dead, appended=True)  # too late: not its turn now
        assert await view.take_append_turns(keys, dead, 60) == [AppendTurn.HELD]

    async def test_append_turns_ended_or_run_out_are_pruned_once_kept_long_enough(
        self, view: ConsentView, pass_time: PassTime
    ) -> None:
        """A turn ended appended tells the imports sharing its record it is there,
        until pruned; one given up is as good as none at once; a live one is kept."""
        holder, dead, other = (str(uuid.uuid4()) for _ in range(3))
        appended, given_up, live, ran_out = (("acme", f"r-{uuid.uuid4()}") for _ in range(4))
        await view.take_append_turns([appended, given_up, live], holder, 600)
        await view.take_append_turns([ran_out], dead, 20)
        await view.end_append_turns([appended], holder, appended=True)
        await view.end_append_turns([given_up], holder, appended=False)

        assert await view.prune_append_turns(60) == 1  # the one given up
        assert await view.take_append_turns([appended, live], other, 600) == [
            AppendTurn.APPENDED,
            AppendTurn.HELD,
        ]
        await pass_time(50)  # "appended" ended 50 s ago, "ran_out" ran out 30 s ago
        assert await view.prune_append_turns(60) == 0
        await pass_time(40)  # 90 s and 70 s: both kept long enough; "live" has 510 s left
        assert await view.prune_append_turns(60) == 2
        await view.end_append_turns([ran_out], dead, appended=True)  # too late: forgotten

        assert await view.take_append_turns([appended, live, ran_out], other, 60) == [
            AppendTurn.TAKEN,  # forgotten: its facts are long applied, or appended again
            AppendTurn.HELD,
            AppendTurn.TAKEN,
        ]

    async def test_taking_a_request_id_says_whether_this_call_took_it(
        self, view: ConsentView
    ) -> None:
        mine = [str(uuid.uuid4()) for _ in range(2)]
        takes = await asyncio.gather(
            *(view.take_request("acme", "r1", f"fp-{i}", [i]) for i in mine)
        )
        assert sorted(t.taken for t in takes) == [False, True]
        winner = next(t for t in takes if t.taken)
        assert {t.use for t in takes} == {winner.use}
        assert await view.request_use("acme", "r1") == winner.use
        again = await view.take_request("acme", "r1", winner.use.fingerprint, mine)
        assert again == RequestTaken(winner.use, False, None)
        assert await view.take_request("globex", "r1", "fp-g", mine[:1]) == RequestTaken(
            RequestUse("fp-g", (mine[0],)), True, None
        )

    async def test_taking_a_request_id_for_a_copy_of_a_message_leaves_it_free(
        self, view: ConsentView
    ) -> None:
        phone = "+14155550100"
        first = of_request(sent(phone, "acme", "deals", T0), "s1", "fp-1")
        await view.apply(Stream.SUBSCRIBERS, Positions().record([first]))
        copy = str(uuid.uuid4())
        taken = await view.take_request("acme", "s2", "fp-2", [copy], (phone, first.message_id))
        assert taken == RequestTaken(None, False, str(first.event_id))
        assert await view.request_use("acme", "s2") is None
        # The first's own retry, and a new message, take their ids as usual.
        retry = await view.take_request(
            "acme", "s1", "fp-1", [str(first.event_id)], (phone, first.message_id)
        )
        assert retry == RequestTaken(
            RequestUse("fp-1", (str(first.event_id),)),
            False,
            str(first.event_id),
            str(first.event_id),
        )
        new = await view.take_request("acme", "s3", "fp-3", [copy], (phone, "SM-new"))
        assert new == RequestTaken(RequestUse("fp-3", (copy,)), True, None, copy)

    async def test_a_message_id_claimed_by_another_send_leaves_the_request_id_free(
        self, view: ConsentView
    ) -> None:
        phone, a, b = "+14155550100", str(uuid.uuid4()), str(uuid.uuid4())
        first = await view.take_request("acme", "s1", "fp-1", [a], (phone, "SM-1"))
        assert first == RequestTaken(RequestUse("fp-1", (a,)), True, None, a)
        copy = await view.take_request("acme", "s2", "fp-2", [b], (phone, "SM-1"))
        assert copy == RequestTaken(None, False, None, a)
        assert await view.request_use("acme", "s2") is None
        # Asked again past the claims (the view caught up and has no first use):
        # the copy is written, and the projection applies one of the two.
        again = await view.take_request(
            "acme", "s2", "fp-2", [b], (phone, "SM-1"), past_claims=True
        )
        assert again == RequestTaken(RequestUse("fp-2", (b,)), True, None, a)
        assert await view.take_request("globex", "s1", "fp-g", [b], (phone, "SM-1")) == (
            RequestTaken(RequestUse("fp-g", (b,)), True, None, b)
        )

    async def test_a_batch_claims_each_message_once_and_a_single_send_finds_it(
        self, view: ConsentView
    ) -> None:
        phone, a, b, c = "+14155550100", *(str(uuid.uuid4()) for _ in range(3))
        held = await view.claim_messages(
            "acme", [(phone, "SM-1", a, "said-1"), (phone, "SM-2", b, "said-2")]
        )
        assert held == {
            (phone, "SM-1"): MessageClaim(a, "said-1"),
            (phone, "SM-2"): MessageClaim(b, "said-2"),
        }
        # A second batch holding one of them is told whose the claim is.
        again = await view.claim_messages(
            "acme", [(phone, "SM-2", c, "said-2"), (phone, "SM-3", c, "said-3")]
        )
        assert again == {
            (phone, "SM-2"): MessageClaim(b, "said-2"),
            (phone, "SM-3"): MessageClaim(c, "said-3"),
        }
        # A single send of a batch's message finds the batch's claim, so it waits.
        copy = await view.take_request("acme", "s9", "fp-9", [c], (phone, "SM-1"))
        assert copy == RequestTaken(None, False, None, a, "said-1")
        assert await view.claim_messages("globex", [(phone, "SM-1", c, None)]) == {
            (phone, "SM-1"): MessageClaim(c, None)
        }
        assert await view.claim_messages("acme", []) == {}

    async def test_a_lapsed_message_claim_is_taken_over_once_from_its_holder(
        self, view: ConsentView
    ) -> None:
        phone, dead, b, c = "+14155550100", *(str(uuid.uuid4()) for _ in range(3))
        await view.claim_messages("acme", [(phone, "SM-1", dead, "said-dead")])
        key = (phone, "SM-1")
        ages = await view.message_claim_ages("acme", [key, (phone, "SM-9")])
        assert list(ages) == [key] and ages[key][0] == MessageClaim(dead, "said-dead")
        assert 0 <= ages[key][1] < 60
        # Younger than asked: kept.
        young = await view.take_over_message_claims(
            "acme", [(phone, "SM-1", dead, b, "said-b")], 3600
        )
        assert young == set()
        # Two senders taking it over at once: exactly one does.
        won = await asyncio.gather(
            view.take_over_message_claims("acme", [(phone, "SM-1", dead, b, "said-b")], 0),
            view.take_over_message_claims("acme", [(phone, "SM-1", dead, c, "said-c")], 0),
        )
        assert sorted(len(w) for w in won) == [0, 1]
        winner, content = (b, "said-b") if won[0] else (c, "said-c")
        held, age = (await view.message_claim_ages("acme", [key]))[key]
        assert held == MessageClaim(winner, content) and age < 60
        # Only from the send that held it: the winner's claim is its own now.
        assert (
            await view.take_over_message_claims(
                "acme", [(phone, "SM-1", dead, dead, "said-dead")], 0
            )
            == set()
        )
        assert await view.claim_messages("acme", [(phone, "SM-1", dead, "said-dead")]) == {
            key: MessageClaim(winner, content)
        }

    @pytest.mark.parametrize("how", ["take_request", "claim_messages"])
    async def test_a_claim_made_again_by_its_own_send_ages_anew(
        self, view: ConsentView, how: str
    ) -> None:
        phone, a, b = "+14155550100", str(uuid.uuid4()), str(uuid.uuid4())
        await view.take_request("acme", "s1", "fp-1", [a], (phone, "SM-1"), content="said-a")
        await asyncio.sleep(0.3)
        if how == "take_request":  # the request's retry
            await view.take_request("acme", "s1", "fp-1", [a], (phone, "SM-1"), content="said-a")
        else:
            await view.claim_messages("acme", [(phone, "SM-1", a, "said-a")])
        taken = await view.take_over_message_claims("acme", [(phone, "SM-1", a, b, "said-b")], 0.25)
        assert taken == set()

    async def test_a_batch_meeting_a_claim_with_other_content_claims_none(
        self, view: ConsentView
    ) -> None:
        phone, a, b = "+14155550100", str(uuid.uuid4()), str(uuid.uuid4())
        await view.claim_messages("acme", [(phone, "SM-2", a, "said-2")])
        held = await view.claim_messages(
            "acme", [(phone, "SM-1", b, "said-1"), (phone, "SM-2", b, "said-other")]
        )
        # The caller refuses the batch for SM-2, so SM-1 must not stay claimed by it.
        assert held == {(phone, "SM-2"): MessageClaim(a, "said-2")}
        later = str(uuid.uuid4())
        assert await view.claim_messages("acme", [(phone, "SM-1", later, "said-x")]) == {
            (phone, "SM-1"): MessageClaim(later, "said-x")
        }
        # A claim kept from before claims kept content (None) blocks no batch.
        await view.claim_messages("acme", [(phone, "SM-4", a, None)])
        held = await view.claim_messages(
            "acme", [(phone, "SM-4", b, "said-4"), (phone, "SM-5", b, "said-5")]
        )
        assert held == {
            (phone, "SM-4"): MessageClaim(a, None),
            (phone, "SM-5"): MessageClaim(b, "said-5"),
        }

    async def test_a_refused_request_gives_up_its_own_claims_only(self, view: ConsentView) -> None:
        phone, a, b, c = "+14155550100", *(str(uuid.uuid4()) for _ in range(3))
        await view.claim_request("acme", "r1", "fp-1", [a, b])
        await view.claim_messages("acme", [(phone, "SM-1", a, "said-1"), (phone, "SM-2", b, "x")])
        await view.claim_request("acme", "r2", "fp-2", [c])
        await view.claim_message("acme", phone, "SM-3", c, "said-3")
        # Claims another request holds, or another brand's, stay even when named.
        await view.release_claims("acme", ("r2", "fp-1", [a, b]), [(phone, "SM-3", a)])
        await view.release_claims("globex", ("r1", "fp-1", [a, b]), [(phone, "SM-1", a)])
        assert await view.request_use("acme", "r2") == RequestUse("fp-2", (c,))
        assert await view.request_use("acme", "r1") == RequestUse("fp-1", (a, b))
        assert await view.claim_message("acme", phone, "SM-1", c, "y") == MessageClaim(a, "said-1")
        assert await view.claim_message("acme", phone, "SM-3", a, "y") == MessageClaim(c, "said-3")
        # Given up, its ids are free for the corrected request.
        await view.release_claims(
            "acme", ("r1", "fp-1", [a, b]), [(phone, "SM-1", a), (phone, "SM-2", b)]
        )
        assert await view.request_use("acme", "r1") is None
        held = await view.claim_messages("acme", [(phone, "SM-1", c, "y"), (phone, "SM-2", c, "z")])
        assert held == {
            (phone, "SM-1"): MessageClaim(c, "y"),
            (phone, "SM-2"): MessageClaim(c, "z"),
        }
        await view.release_claims("acme", None, [(phone, "SM-3", c)])
        assert await view.claim_message("acme", phone, "SM-3", a, "w") == MessageClaim(a, "w")

    async def test_a_message_claimed_with_other_content_blocks_the_request_id(
        self, view: ConsentView
    ) -> None:
        phone, a, b, c = "+14155550100", *(str(uuid.uuid4()) for _ in range(3))
        first = await view.take_request(
            "acme", "s1", "fp-1", [a], (phone, "SM-1"), content="said-1"
        )
        assert first == RequestTaken(RequestUse("fp-1", (a,)), True, None, a, "said-1")
        # Another content is told the claim's, and takes no request id, even past
        # the claims: that send is refused, and its retry must be refused again.
        for past_claims in (False, True):
            other = await view.take_request(
                "acme",
                "s2",
                "fp-2",
                [b],
                (phone, "SM-1"),
                content="said-other",
                past_claims=past_claims,
            )
            assert other == RequestTaken(None, False, None, a, "said-1")
        assert await view.request_use("acme", "s2") is None
        # The same content past the claims is written, as before.
        same = await view.take_request(
            "acme", "s3", "fp-3", [c], (phone, "SM-1"), content="said-1", past_claims=True
        )
        assert same == RequestTaken(RequestUse("fp-3", (c,)), True, None, a, "said-1")

    async def test_a_send_refused_for_its_request_id_claims_no_message_id(
        self, view: ConsentView
    ) -> None:
        phone, a, b, c = "+14155550100", *(str(uuid.uuid4()) for _ in range(3))
        await view.claim_request("acme", "s1", "fp-1", [a])
        refused = await view.take_request(
            "acme", "s1", "fp-other", [b], (phone, "SM-1"), content="said-1"
        )
        assert refused.use == RequestUse("fp-1", (a,)) and not refused.taken
        assert refused.claimed_by is None
        # The message id is free for the send that is recorded, whatever it says.
        later = await view.take_request(
            "acme", "s2", "fp-2", [c], (phone, "SM-1"), content="said-2"
        )
        assert later == RequestTaken(RequestUse("fp-2", (c,)), True, None, c, "said-2")

    async def test_known_events_names_the_applied_ones_only(self, view: ConsentView) -> None:
        """Each with where the ledger holds it: an import's record found present is
        answered as of its facts' places."""
        pos = Positions()
        pos.record([grant("+14155550100", "acme", "deals", T0)])  # the next is at offset 1
        applied = grant("+14155550100", "acme", "deals", T0 + timedelta(minutes=1))
        [recorded] = pos.record([applied])
        await view.apply(Stream.SUBSCRIBERS, [recorded])
        missing = str(uuid.uuid4())
        found = await view.known_events([str(applied.event_id), missing, "not-an-id"])
        where = Applied(Stream.SUBSCRIBERS, recorded.position.partition, 1)
        assert found == {str(applied.event_id): where}
        assert await view.known_events([]) == {}

    async def test_a_second_send_of_one_provider_message_id_is_no_fact(
        self, view: ConsentView
    ) -> None:
        a, b = "+14155550100", "+14155550101"
        pos = Positions()
        first = sent(a, "acme", "deals", T0)
        again = replace(
            sent(a, "acme", "news", T0 + timedelta(minutes=1)), message_id=first.message_id
        )
        elsewhere = replace(sent(b, "acme", "deals", T0), message_id=first.message_id)
        batch = pos.record([first, again, elsewhere])
        await view.apply(Stream.SUBSCRIBERS, batch[:2])
        await view.apply(Stream.SUBSCRIBERS, [*batch[2:], *pos.record([again])])

        assert await view.history(a) == [batch[0]]
        assert await view.message_use("acme", a, first.message_id) == str(first.event_id)
        assert await view.message_use("acme", b, first.message_id) == str(elsewhere.event_id)
        assert await view.message_use("globex", a, first.message_id) is None
        window = (T0, T0 + timedelta(days=1))
        assert await view.sending_counts("acme", None, *window) == SendingCounts(2, 0)

    async def test_message_uses_answer_the_first_send_of_each_pair_of_the_brand(
        self, view: ConsentView
    ) -> None:
        a, b = "+14155550100", "+14155550101"
        first, other = sent(a, "acme", "deals", T0), sent(b, "acme", "deals", T0)
        again = replace(sent(a, "acme", "news", T0), message_id=first.message_id)
        theirs = replace(sent(a, "globex", "deals", T0), message_id="SM-globex")
        await view.apply(Stream.SUBSCRIBERS, Positions().record([first, other, again, theirs]))

        asked = [(a, first.message_id), (b, other.message_id), (b, first.message_id)]
        assert await view.message_uses("acme", [*asked, (a, "SM-globex"), asked[0]]) == {
            (a, first.message_id): str(first.event_id),
            (b, other.message_id): str(other.event_id),
        }
        assert await view.message_uses("globex", [(a, "SM-globex")]) == {
            (a, "SM-globex"): str(theirs.event_id)
        }
        assert await view.message_uses("acme", []) == {}

    # ---- the change stream (changes) ------------------------------------------------------

    async def test_changes_page_through_a_brand_exactly_once_in_offset_order(
        self, view: ConsentView
    ) -> None:
        pos = Positions()
        recorded = pos.record(generate_events(1200, phones=120, brands=3, campaigns=3))
        subscribers = [r for r in recorded if Stream.of(r.event) is Stream.SUBSCRIBERS]
        retried = [pos.again(r) for r in subscribers[:40:7]]  # kept at their first place
        for start in range(0, len(subscribers), 300):
            await view.apply(Stream.SUBSCRIBERS, subscribers[start : start + 300])
        await view.apply(Stream.SUBSCRIBERS, retried)
        await view.apply(Stream.CAMPAIGNS, [r for r in recorded if r not in subscribers])

        consent = {"ConsentGranted", "ConsentRevoked", "AgeVerified"}
        for brand, campaign, types in [
            ("brand-0", None, None),
            ("brand-1", "camp-2", None),
            ("brand-2", None, consent),
            ("brand-2", "camp-0", consent),
        ]:
            got = await _read_changes(view, brand, 37, campaign=campaign, types=types)
            assert len(got) == len({r.event.event_id for r in got}), "an event came twice"
            assert _by_partition(got) == _by_partition(_wanted(subscribers, brand, campaign, types))
        nobody = await view.changes("brand-9", {}, 10)
        assert nobody == ([], await view.positions(Stream.SUBSCRIBERS))

    async def test_changes_applied_between_pages_follow_without_a_gap(
        self, view: ConsentView
    ) -> None:
        pos = Positions()
        phones = [f"+1415555{n:04d}" for n in range(30)]
        events = [
            grant(phone, "acme", "deals", T0 + timedelta(minutes=i))
            for i in range(4)
            for phone in phones
        ]
        recorded = pos.record(events)
        after: dict[int, int] = {}
        got: list[Recorded] = []
        for start in range(0, len(recorded), 25):
            await view.apply(Stream.SUBSCRIBERS, recorded[start : start + 25])
            page = (await view.changes("acme", after, 10)).events
            got.extend(page)
            for r in page:
                after[r.position.partition] = r.position.offset + 1
        while page := (await view.changes("acme", after, 10)).events:
            got.extend(page)
            for r in page:
                after[r.position.partition] = r.position.offset + 1
        assert _by_partition(got) == _by_partition(recorded)
        assert after == await view.positions(Stream.SUBSCRIBERS)

    async def test_changes_interleave_partitions_by_recorded_time_keeping_offset_order(
        self, view: ConsentView
    ) -> None:
        a, b = "+14155550100", "+14155550101"
        pos = Positions()
        assert partition_of(grant(a, "x", "y", T0)) != partition_of(grant(b, "x", "y", T0))
        late = pos.record([grant(a, "acme", "deals", T0)], T0 + timedelta(hours=2))
        early = pos.record([revoke(a, "acme", "deals", T0)], T0)  # recorded "before" late
        other = pos.record([grant(b, "acme", "deals", T0)], T0 + timedelta(hours=1))
        await view.apply(Stream.SUBSCRIBERS, [*late, *early, *other])
        # a's partition keeps offset order; b's event, recorded before a's first, leads
        assert (await view.changes("acme", {}, 10)).events == [*other, *late, *early]
        assert (await view.changes("acme", {}, 2)).events == [*other, *late]
        skip_a = {late[0].position.partition: late[0].position.offset + 1}
        assert (await view.changes("acme", skip_a, 10)).events == [*early, *other]

    async def test_a_watch_of_one_campaign_gets_a_hold_of_another_and_its_resolution(
        self, view: ConsentView
    ) -> None:
        """A held opt-out names the campaign it was sent for, yet denies every campaign
        of the brand until resolved: a watcher of another campaign must see it."""
        phone = "+14155550100"
        pos = Positions()
        hold = replace(flagged(T0, phone=phone, brand="acme"), campaign="news")
        done = replace(
            builders.resolved(T0, hold, CandidateResolution.DISMISSED), phone=phone, brand="acme"
        )
        listed = pos.record(
            [grant(phone, "acme", "deals", T0), grant(phone, "acme", "news", T0), hold, done]
        )
        await view.apply(Stream.SUBSCRIBERS, listed)
        got = (await view.changes("acme", {}, 10, campaign="deals")).events
        assert [r.event.EVENT_TYPE for r in got] == [
            "ConsentGranted", "RevocationCandidateFlagged", "RevocationCandidateResolved"
        ]  # fmt: skip

    async def test_a_watch_of_a_brand_gets_the_holds_of_every_brand(
        self, view: ConsentView
    ) -> None:
        """A STOP to a number no campaign sends from is held under brand "*" and denies
        every brand's sends to its phone until resolved: every brand's watch gets the
        hold and its resolution, and nothing else of brand "*"."""
        phone = "+14155550100"
        pos = Positions()
        text = replace(builders.inbound(T0, "STOP"), phone=phone, brand=ANY_BRAND)
        hold = replace(flagged(T0, "STOP", phone=phone, brand=ANY_BRAND), unattributed=True)
        done = replace(
            builders.resolved(T0, hold, CandidateResolution.DISMISSED), phone=phone, brand=ANY_BRAND
        )
        listed = pos.record([grant(phone, "acme", "deals", T0), text, hold, done])
        await view.apply(Stream.SUBSCRIBERS, listed)
        for campaign in (None, "deals"):
            got = (await view.changes("acme", {}, 10, campaign=campaign)).events
            assert [r.event.event_id for r in got] == [
                listed[0].event.event_id, hold.event_id, done.event_id
            ], campaign  # fmt: skip
        only = {"RevocationCandidateResolved"}
        got = (await view.changes("globex", {}, 10, types=only)).events
        assert [r.event.event_id for r in got] == [done.event_id]

    async def test_changes_leave_out_other_brands_and_are_emptied_by_a_reset(
        self, view: ConsentView
    ) -> None:
        phone = "+14155550100"
        pos = Positions()
        mine = pos.record([grant(phone, "acme", "deals", T0)])
        theirs = pos.record([grant(phone, "globex", "deals", T0)])
        await view.apply(Stream.SUBSCRIBERS, [*mine, *theirs])
        assert (await view.changes("acme", {}, 10)).events == mine
        assert (await view.changes("globex", {}, 10)).events == theirs
        await view.reset()
        assert (await view.changes("acme", {}, 10)).events == []


async def _read_changes(
    view: ConsentView, brand: str, limit: int, **filters: Any
) -> list[Recorded]:
    """Every change of ``brand``, page by page, each resumed after the last given."""
    after: dict[int, int] = {}
    got: list[Recorded] = []
    while True:
        page = await view.changes(brand, after, limit, **filters)
        assert len(page.events) <= limit
        got.extend(page.events)
        for r in page.events:
            assert r.position.offset >= after.get(r.position.partition, 0)
        after = page.through
        if not page.events:
            break
    # the last page looked through every partition to the view's position
    assert after == await view.positions(Stream.SUBSCRIBERS)
    return got


def _wanted(
    events: Iterable[Recorded], brand: str, campaign: str | None, types: Any
) -> list[Recorded]:
    """What ``changes`` lists: the first copy of each fact of ``brand`` that passes the filters."""
    seen: set[uuid.UUID] = set()
    out = []
    for r in sorted(events, key=lambda r: (r.position.partition, r.position.offset)):
        event = r.event
        if event.event_id in seen or getattr(event, "brand", None) != brand:
            continue
        seen.add(event.event_id)
        named = getattr(event, "campaign", None)
        # an opt-out reaches every campaign (revoke-all), a hold denies every campaign
        reaches = event.EVENT_TYPE in (
            "ConsentRevoked",
            "RevocationCandidateFlagged",
            "RevocationCandidateResolved",
        )
        if campaign is not None and named is not None and named != campaign and not reaches:
            continue
        if types is not None and event.EVENT_TYPE not in types:
            continue
        out.append(r)
    return out


def _by_partition(events: Iterable[Recorded]) -> dict[int, list[Recorded]]:
    """The events of each partition, in the order given."""
    out: dict[int, list[Recorded]] = {}
    for r in events:
        out.setdefault(r.position.partition, []).append(r)
    return out


def of_request(event: LedgerEvent, request_id: str, fingerprint: str) -> LedgerEvent:
    return replace(event, request_id=request_id, request_fingerprint=fingerprint)


def _last_offsets(batch: Iterable[Recorded]) -> dict[int, int]:
    last: dict[int, int] = {}
    for r in batch:
        last[r.position.partition] = max(last.get(r.position.partition, -1), r.position.offset)
    return last
