"""The ``EventLog`` port's conformance suite: every adapter passes these same tests.

Subclass ``LedgerSuite`` once per adapter and give the subclass a ``ledger`` fixture
that yields a fresh, empty ledger (and closes it). The class name does not start
with ``Test`` so pytest collects only the subclasses. An adapter that cannot honour
a test overrides it in its subclass with a comment saying why.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest

from ledger.campaigns import CampaignPolicy, CampaignPurpose, FrequencyCap, QuietHours
from ledger.events import (
    AgeVerified,
    CampaignDefined,
    CampaignPolicyChanged,
    CandidateResolution,
    CollectionMethod,
    ConsentGranted,
    ConsentReconfirmed,
    ConsentResumed,
    ConsentRevoked,
    ConsentTier,
    InboundMessageReceived,
    LedgerEvent,
    MessageSent,
    Recorded,
    RevocationCandidateFlagged,
    RevocationCandidateResolved,
    RevocationChannel,
    SubscriberEvent,
)
from ledger.ports import EventLog, Stream
from tests.builders import _base, proof, sent

BRAND = "acme"
OCCURRED = datetime(2026, 3, 2, 18, 0, tzinfo=UTC)
CLOCK_SKEW = timedelta(seconds=2)
"""How far the storage's clock may lag the test's when it stamps ``recorded_at``."""
DELIVERY_TIMEOUT = 30.0
"""Seconds a subscription gets to deliver what was appended (generous for a busy CI)."""

_phones = itertools.count(1000)


def new_phone() -> str:
    return f"+1415555{next(_phones) % 10000:04d}"


def message_sent(phone: str, n: int = 0, *, brand: str = BRAND) -> MessageSent:
    """The ``n``-th send to ``phone``, ``n`` seconds after ``OCCURRED``."""
    return sent(OCCURRED + timedelta(seconds=n), phone=phone, brand=brand)


def campaign_defined(campaign: str = "promo", *, brand: str = BRAND) -> CampaignDefined:
    return CampaignDefined(
        **_base(OCCURRED),
        brand=brand,
        campaign=campaign,
        policy=CampaignPolicy(
            purpose=CampaignPurpose.INFORMATIONAL,
            category="alcohol",
            reconfirm_interval=timedelta(days=180),
            quiet_hours=QuietHours(time(9, 0), time(20, 30)),
            daily_cap=3,
            frequency_caps=(FrequencyCap(10, timedelta(days=7)),),
            sender_numbers=("+12125551234",),
        ),
    )


def one_of_each_kind(phone: str) -> list[LedgerEvent]:
    """Every event type once, with optional fields filled, so a lossy encoding shows."""
    when = OCCURRED
    subject: dict[str, Any] = {"phone": phone, "brand": BRAND}
    flagged = RevocationCandidateFlagged(
        **_base(when), **subject, inbound_message_id="in-2", text="pls stop texting me"
    )
    return [
        campaign_defined(),
        ConsentGranted(
            **_base(when),
            **subject,
            campaign="promo",
            tier=ConsentTier.PROMOTIONAL,
            method=CollectionMethod.WEB_FORM,
            proof=proof(when, consent_text="Yes, text me offers. Reply STOP to cancel. \u2713"),
        ),
        AgeVerified(**_base(when), **subject, method="id-scan", date_of_birth="1990-04-01"),
        message_sent(phone, 1),
        InboundMessageReceived(
            **_base(when), **subject, message_id="in-1", to_number="+12125551234", body="hours?"
        ),
        flagged,
        RevocationCandidateResolved(
            **_base(when),
            **subject,
            candidate_event_id=flagged.event_id,
            resolution=CandidateResolution.DISMISSED,
            resolved_by="agent-7",
        ),
        ConsentRevoked(
            **_base(when), **subject, campaign=None, channel=RevocationChannel.KEYWORD, text="STOP"
        ),
        ConsentResumed(**_base(when), **subject, campaign=None, inbound_message_id="in-3"),
        ConsentReconfirmed(
            **_base(when), **subject, campaign="promo", channel=RevocationChannel.WEB, detail="yes"
        ),
        CampaignPolicyChanged(
            **_base(when + timedelta(days=1)),
            brand=BRAND,
            campaign="promo",
            policy=CampaignPolicy(daily_cap=1),
        ),
    ]


async def read_all(ledger: EventLog, stream: Stream, page: int = 100) -> dict[int, list[Recorded]]:
    """Every event of ``stream`` per partition, read page by page up to the end offsets."""
    ends = await ledger.end_offsets(stream)
    out: dict[int, list[Recorded]] = {}
    for partition in await ledger.partitions(stream):
        events: list[Recorded] = []
        while len(events) < ends.get(partition, 0):
            got = await ledger.read(stream, partition, len(events), page)
            assert got, f"read stopped at {len(events)} before end offset {ends[partition]}"
            events.extend(got)
        out[partition] = events
    return out


async def collect(
    subscription: AsyncIterator[list[Recorded]], count: int, timeout: float = DELIVERY_TIMEOUT
) -> list[Recorded]:
    """Batches from ``subscription`` until ``count`` events arrived (fails after ``timeout``)."""
    got: list[Recorded] = []

    async def fill() -> None:
        async for batch in subscription:
            got.extend(batch)
            if len(got) >= count:
                return

    try:
        await asyncio.wait_for(fill(), timeout)
    except TimeoutError:
        pytest.fail(f"subscription delivered {len(got)} of {count} events in {timeout}s")
    return got


def by_partition(recorded: Sequence[Recorded]) -> dict[int, list[Recorded]]:
    out: dict[int, list[Recorded]] = defaultdict(list)
    for r in recorded:
        out[r.position.partition].append(r)
    return dict(out)


def event_ids(recorded: Sequence[Recorded]) -> list[uuid.UUID]:
    return [r.event.event_id for r in recorded]


class LedgerSuite:
    """What every ``EventLog`` adapter promises. Subclasses provide ``ledger``."""

    @pytest.fixture
    def ledger(self) -> EventLog:
        raise NotImplementedError("a LedgerSuite subclass must define the `ledger` fixture")

    async def test_appended_events_come_back_equal_and_in_order(self, ledger: EventLog) -> None:
        events = one_of_each_kind(new_phone())

        recorded = await ledger.append(events)

        assert [r.event for r in recorded] == events
        for stream in Stream:
            stored = await read_all(ledger, stream)
            appended = [r for r in recorded if Stream.of(r.event) is stream]
            assert {p: rs for p, rs in stored.items() if rs} == by_partition(appended)

    async def test_read_returns_exactly_what_append_returned(self, ledger: EventLog) -> None:
        phone = new_phone()
        recorded = await ledger.append([message_sent(phone, n) for n in range(5)])

        partition = recorded[0].position.partition
        start = recorded[0].position.offset
        read = await ledger.read(Stream.SUBSCRIBERS, partition, start, limit=5)

        assert read == recorded  # event, position and recorded_at

    async def test_offsets_increase_by_one_within_each_partition(self, ledger: EventLog) -> None:
        phones = [new_phone() for _ in range(8)]
        await ledger.append([message_sent(p) for p in phones])
        recorded = await ledger.append([message_sent(p, n) for n in range(3) for p in phones])

        for partition, rs in by_partition(recorded).items():
            offsets = [r.position.offset for r in rs]
            assert offsets == list(range(offsets[0], offsets[0] + len(rs))), partition

    async def test_one_phones_events_stay_in_one_partition_in_append_order(
        self, ledger: EventLog
    ) -> None:
        phones = [new_phone() for _ in range(10)]
        first = await ledger.append([message_sent(p, n) for n in range(3) for p in phones])
        second = await ledger.append([message_sent(p, n) for n in range(3, 5) for p in phones])

        stored = await read_all(ledger, Stream.SUBSCRIBERS)
        for phone in phones:
            appended = [r for r in first + second if _phone(r) == phone]
            assert len({r.position.partition for r in appended}) == 1
            partition = appended[0].position.partition
            in_log = [r for r in stored[partition] if _phone(r) == phone]
            assert event_ids(in_log) == event_ids(appended)

    async def test_partition_for_names_the_partition_a_phones_events_go_to(
        self, ledger: EventLog
    ) -> None:
        phones = [new_phone() for _ in range(20)]

        recorded = await ledger.append([message_sent(p) for p in phones])

        assert [ledger.partition_for(p) for p in phones] == [r.position.partition for r in recorded]

    async def test_campaign_events_go_to_the_campaign_stream(self, ledger: EventLog) -> None:
        phone = new_phone()
        defined = [campaign_defined("spring"), campaign_defined("summer", brand="globex")]
        recorded = await ledger.append(
            [message_sent(phone), defined[0], message_sent(phone, 1), defined[1]]
        )

        campaigns = await read_all(ledger, Stream.CAMPAIGNS)
        subscribers = await read_all(ledger, Stream.SUBSCRIBERS)

        in_campaign_stream = [recorded[1], recorded[3]]
        assert {p: rs for p, rs in campaigns.items() if rs} == by_partition(in_campaign_stream)
        assert [r.event for rs in subscribers.values() for r in rs] == [
            recorded[0].event,
            recorded[2].event,
        ]

    async def test_end_offsets_advance_by_the_count_appended(self, ledger: EventLog) -> None:
        await ledger.append([message_sent(new_phone())])
        before = await ledger.end_offsets(Stream.SUBSCRIBERS)
        campaigns_before = await ledger.end_offsets(Stream.CAMPAIGNS)

        recorded = await ledger.append([message_sent(new_phone(), n) for n in range(7)])

        after = await ledger.end_offsets(Stream.SUBSCRIBERS)
        assert set(after) == set(await ledger.partitions(Stream.SUBSCRIBERS))
        appended_per_partition = {p: len(rs) for p, rs in by_partition(recorded).items()}
        assert {p: after[p] - before.get(p, 0) for p in after if after[p] != before.get(p, 0)} == (
            appended_per_partition
        )
        assert await ledger.end_offsets(Stream.CAMPAIGNS) == campaigns_before
        for r in recorded:  # the offset the next event gets is one past the last one
            assert r.position.offset < after[r.position.partition]

    async def test_every_end_offset_is_each_streams_end_offsets(self, ledger: EventLog) -> None:
        await ledger.append(
            [message_sent(new_phone(), n) for n in range(5)]
            + [campaign_defined(f"c-{uuid.uuid4().hex[:8]}")]
        )

        every = await ledger.every_end_offset()

        assert set(every) == set(Stream)
        for stream in Stream:
            assert set(every[stream]) == set(await ledger.partitions(stream))
            assert every[stream] == await ledger.end_offsets(stream)
        assert sum(every[Stream.SUBSCRIBERS].values()) >= 5
        assert sum(every[Stream.CAMPAIGNS].values()) >= 1

    async def test_appending_nothing_records_nothing(self, ledger: EventLog) -> None:
        before = await ledger.end_offsets(Stream.SUBSCRIBERS)

        assert await ledger.append([]) == []
        assert await ledger.end_offsets(Stream.SUBSCRIBERS) == before

    async def test_subscribe_delivers_events_from_the_given_offsets_on(
        self, ledger: EventLog
    ) -> None:
        phone = new_phone()
        await ledger.append([message_sent(phone, n) for n in range(3)])
        start = await ledger.end_offsets(Stream.SUBSCRIBERS)
        earlier = await ledger.append([message_sent(phone, n) for n in range(3, 5)])
        subscription = ledger.subscribe(Stream.SUBSCRIBERS, start, poll_timeout=0.1)
        try:
            first = await asyncio.wait_for(anext(subscription), DELIVERY_TIMEOUT)
            later = await ledger.append([message_sent(phone, n) for n in range(5, 8)])
            got = first + await collect(subscription, 5 - len(first))
        finally:
            await subscription.aclose()  # type: ignore[attr-defined]

        assert got == earlier + later

    async def test_subscribe_delivers_events_of_every_partition(self, ledger: EventLog) -> None:
        start = await ledger.end_offsets(Stream.SUBSCRIBERS)
        subscription = ledger.subscribe(Stream.SUBSCRIBERS, start, poll_timeout=0.1)
        try:
            await asyncio.wait_for(anext(subscription), DELIVERY_TIMEOUT)  # started and idle
            recorded = await ledger.append([message_sent(new_phone(), n) for n in range(30)])
            got = await collect(subscription, len(recorded))
        finally:
            await subscription.aclose()  # type: ignore[attr-defined]

        assert len(got) == len(recorded)
        assert by_partition(got) == by_partition(recorded)  # same events, same order each

    async def test_subscribe_reads_partitions_missing_from_start_from_the_first_event(
        self, ledger: EventLog
    ) -> None:
        recorded = await ledger.append([campaign_defined(f"c{n}") for n in range(3)])
        subscription = ledger.subscribe(Stream.CAMPAIGNS, {}, poll_timeout=0.1)
        try:
            got = await collect(subscription, 3)
        finally:
            await subscription.aclose()  # type: ignore[attr-defined]

        assert got == recorded

    async def test_subscribe_yields_an_empty_batch_when_idle(self, ledger: EventLog) -> None:
        start = await ledger.end_offsets(Stream.CAMPAIGNS)
        subscription = ledger.subscribe(Stream.CAMPAIGNS, start, poll_timeout=0.1)
        try:
            batch = await asyncio.wait_for(anext(subscription), DELIVERY_TIMEOUT)
        finally:
            await subscription.aclose()  # type: ignore[attr-defined]

        assert batch == []

    async def test_a_batch_of_500_appended_in_one_call_all_comes_back(
        self, ledger: EventLog
    ) -> None:
        phones = [new_phone() for _ in range(50)]
        events = [message_sent(p, n) for n in range(10) for p in phones]

        recorded = await ledger.append(events)

        assert [r.event for r in recorded] == events
        stored = await read_all(ledger, Stream.SUBSCRIBERS, page=137)
        assert sorted(event_ids([r for rs in stored.values() for r in rs])) == sorted(
            e.event_id for e in events
        )
        assert by_partition(recorded) == {p: rs for p, rs in stored.items() if rs}

    async def test_import_sized_batches_appended_at_once_keep_each_calls_order(
        self, ledger: EventLog
    ) -> None:
        # A bulk import appends chunks of hundreds of events, several at once: each
        # call's events come back in its order, and each phone's stay in the order
        # its calls gave them.
        phones = [new_phone() for _ in range(10)]
        calls = [
            [message_sent(p, 100 * c + n) for n in range(25) for p in phones] for c in range(4)
        ]

        results = await asyncio.gather(*(ledger.append(events) for events in calls))

        for events, recorded in zip(calls, results, strict=True):
            assert [r.event for r in recorded] == events
            for rs in by_partition(recorded).values():
                assert [r.position.offset for r in rs] == sorted(r.position.offset for r in rs)
        stored = await read_all(ledger, Stream.SUBSCRIBERS, page=1000)
        assert sum(len(rs) for rs in stored.values()) == 4 * 25 * 10

    async def test_many_large_appends_at_once_all_land_in_order(self, ledger: EventLog) -> None:
        """Eight calls of 1,000 sends at once (``RecordMessagesSent``'s largest): an
        adapter that merges appends must not merge them into one it cannot finish."""
        phones = [new_phone() for _ in range(8)]
        calls = [[message_sent(phone, n) for n in range(1000)] for phone in phones]

        results = await asyncio.gather(*(ledger.append(events) for events in calls))

        for events, recorded in zip(calls, results, strict=True):
            assert [r.event for r in recorded] == events
            assert len({r.position.partition for r in recorded}) == 1
            offsets = [r.position.offset for r in recorded]
            assert offsets == list(range(offsets[0], offsets[0] + 1000))

    async def test_concurrent_appends_never_share_an_offset_or_leave_a_gap(
        self, ledger: EventLog
    ) -> None:
        phone = new_phone()
        before = await ledger.end_offsets(Stream.SUBSCRIBERS)

        results = await asyncio.gather(
            *(ledger.append([message_sent(phone, 10 * i + n) for n in range(5)]) for i in range(8))
        )

        recorded = [r for rs in results for r in rs]
        (partition,) = {r.position.partition for r in recorded}
        offsets = sorted(r.position.offset for r in recorded)
        first = before.get(partition, 0)
        assert offsets == list(range(first, first + 40))
        for rs in results:  # each call's events stay together in the order given
            assert [r.position.offset for r in rs] == list(
                range(rs[0].position.offset, rs[0].position.offset + 5)
            )

    async def test_recorded_at_is_tz_aware_and_not_before_the_append_started(
        self, ledger: EventLog
    ) -> None:
        started = datetime.now(UTC)

        recorded = await ledger.append([message_sent(new_phone()), campaign_defined()])

        finished = datetime.now(UTC)
        for r in recorded:
            assert r.recorded_at.utcoffset() is not None
            assert started - CLOCK_SKEW <= r.recorded_at <= finished + CLOCK_SKEW

    async def test_reading_past_the_end_gives_nothing(self, ledger: EventLog) -> None:
        recorded = await ledger.append([message_sent(new_phone(), n) for n in range(2)])
        partition = recorded[0].position.partition
        end = (await ledger.end_offsets(Stream.SUBSCRIBERS))[partition]

        assert await ledger.read(Stream.SUBSCRIBERS, partition, end) == []
        assert await ledger.read(Stream.SUBSCRIBERS, partition, end + 100) == []

    async def test_read_honours_start_and_limit(self, ledger: EventLog) -> None:
        phone = new_phone()
        recorded = await ledger.append([message_sent(phone, n) for n in range(6)])
        partition, first = recorded[0].position.partition, recorded[0].position.offset

        page = await ledger.read(Stream.SUBSCRIBERS, partition, first + 1, limit=3)

        assert page == recorded[1:4]

    async def test_every_stream_has_partitions_numbered_from_zero(self, ledger: EventLog) -> None:
        for stream in Stream:
            partitions = await ledger.partitions(stream)
            assert partitions == list(range(len(partitions)))
            assert partitions


def _phone(recorded: Recorded) -> str:
    event = recorded.event
    assert isinstance(event, SubscriberEvent)
    return event.phone
