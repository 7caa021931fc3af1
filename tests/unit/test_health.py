"""Campaign health's counting rule (``ledger.health``), without any view."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.events import (
    CandidateResolution,
    DeliveryOutcome,
    DeliveryOutcomeReported,
    LedgerEvent,
    MessageKind,
    MessageSent,
)
from ledger.health import (
    ERROR_RATE_LIMIT,
    HealthCounts,
    HealthLimits,
    HealthReport,
    HealthTally,
    combine,
)
from tests.builders import BRAND, PHONE, at, flagged, record, resolved, revoked
from tests.builders import sent as a_send

START, END = at(0), at(days=1)
NUMBER_A, NUMBER_B = "+12125550100", "+12125550101"


def sent(
    when: datetime,
    campaign: str = "promo",
    *,
    number: str = NUMBER_A,
    phone: str = PHONE,
    kind: MessageKind = MessageKind.REGULAR,
    message_id: str = "",
) -> MessageSent:
    event = a_send(when, campaign, kind, phone=phone)
    return replace(event, from_number=number, message_id=message_id or event.message_id)


def outcome(
    message: MessageSent, result: DeliveryOutcome, when: datetime | None = None
) -> DeliveryOutcomeReported:
    return DeliveryOutcomeReported(
        event_id=uuid.uuid4(),
        occurred_at=when or message.occurred_at,
        phone=message.phone,
        brand=message.brand,
        message_id=message.message_id,
        campaign=message.campaign,
        outcome=result,
        error_code="" if result is DeliveryOutcome.DELIVERED else "30003",
    )


def health(events: list[LedgerEvent], campaign: str | None = None, **kw) -> HealthReport:
    return (
        HealthTally(BRAND, campaign, kw.get("start", START), kw.get("end", END))
        .feed_all(record(events))
        .report(kw.get("limits"))
    )


def counts_of(report: HealthReport, campaign: str = "promo", number: str | None = None):
    [c] = [c for c in report.campaigns if c.campaign == campaign]
    if number is None:
        return c.counts
    [s] = [s for s in c.senders if s.from_number == number]
    return s.counts


def phone(i: int) -> str:
    return f"+1415555{i:04d}"


def test_the_limits_are_the_provider_s_good_ranges() -> None:
    assert HealthLimits() == HealthLimits(opt_out=0.003, error=0.06)
    assert ERROR_RATE_LIMIT == 0.06


def test_an_error_rate_above_six_percent_is_flagged_and_at_it_is_not() -> None:
    limits = HealthLimits()
    assert not HealthCounts(100, 0, 6).error_flagged(limits)
    assert HealthCounts(100, 0, 7).error_flagged(limits)
    assert not HealthCounts(0, 0, 0).error_flagged(limits)


def test_an_opt_out_rate_above_three_in_a_thousand_is_flagged_and_at_it_is_not() -> None:
    limits = HealthLimits()
    assert not HealthCounts(1000, 3, 0).opt_out_flagged(limits)
    assert HealthCounts(1000, 4, 0).opt_out_flagged(limits)


def test_a_limit_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ValueError, match="error limit"):
        HealthLimits(error=6)


def test_delivery_errors_over_six_percent_flag_the_campaign_and_its_number() -> None:
    sends = [
        sent(at(i), number=NUMBER_A if i < 50 else NUMBER_B, phone=phone(i)) for i in range(100)
    ]
    # 7 failures, all from number A: 7 % of the campaign, 14 % of number A, none of B
    failures = [outcome(s, DeliveryOutcome.FAILED) for s in sends[:7]]
    delivered = [outcome(s, DeliveryOutcome.DELIVERED) for s in sends[7:]]
    report = health([*sends, *failures, *delivered])

    assert counts_of(report) == HealthCounts(100, 0, 7)
    assert counts_of(report).error_flagged(report.limits)
    assert counts_of(report, number=NUMBER_A) == HealthCounts(50, 0, 7)
    assert counts_of(report, number=NUMBER_B) == HealthCounts(50, 0, 0)
    assert not counts_of(report, number=NUMBER_B).error_flagged(report.limits)
    assert report.flagged


def test_six_failures_in_a_hundred_raise_no_flag() -> None:
    sends = [sent(at(i), phone=phone(i)) for i in range(100)]
    report = health([*sends, *(outcome(s, DeliveryOutcome.UNDELIVERABLE) for s in sends[:6])])
    assert counts_of(report).error_rate == 0.06
    assert not report.flagged


def test_the_latest_report_on_a_message_stands() -> None:
    message = sent(at(1))
    failed_then_delivered = [
        message,
        outcome(message, DeliveryOutcome.FAILED, at(2)),
        outcome(message, DeliveryOutcome.DELIVERED, at(3)),
    ]
    assert counts_of(health(failed_then_delivered)).delivery_errors == 0
    # reported in the other order, the later report (by its time) still wins
    late = [message, failed_then_delivered[2], failed_then_delivered[1]]
    assert counts_of(health(late)).delivery_errors == 0
    two_failures = [message, *(outcome(message, DeliveryOutcome.FAILED, at(m)) for m in (2, 3))]
    assert counts_of(health(two_failures)).delivery_errors == 1


def test_an_opt_out_is_attributed_to_the_message_that_preceded_it() -> None:
    first = sent(at(1), "promo", number=NUMBER_A)
    second = sent(at(2), "news", number=NUMBER_B)
    report = health([first, second, revoked(at(3), None)])  # STOPALL after the "news" text

    assert counts_of(report, "news", NUMBER_B).opt_outs == 1
    assert counts_of(report, "promo", NUMBER_A).opt_outs == 0


def test_an_opt_out_of_one_campaign_goes_to_that_campaign_s_latest_message() -> None:
    promo = sent(at(1), "promo", number=NUMBER_A)
    news = sent(at(2), "news", number=NUMBER_B)
    report = health([promo, news, revoked(at(3), "promo")])

    assert counts_of(report, "promo", NUMBER_A).opt_outs == 1
    assert counts_of(report, "news", NUMBER_B).opt_outs == 0


def test_a_send_recorded_after_the_stop_it_came_before_is_the_one_it_answers() -> None:
    # B's send went out before the STOP but was recorded after it (a batch, say).
    events = [sent(at(1), number=NUMBER_A), revoked(at(5)), sent(at(3), number=NUMBER_B)]
    report = health(events)
    assert counts_of(report, number=NUMBER_B).opt_outs == 1
    assert counts_of(report, number=NUMBER_A).opt_outs == 0


def test_a_send_after_the_stop_is_never_blamed_for_it() -> None:
    report = health([sent(at(1), number=NUMBER_A), sent(at(9), number=NUMBER_B), revoked(at(5))])
    assert counts_of(report, number=NUMBER_A).opt_outs == 1
    assert counts_of(report, number=NUMBER_B).opt_outs == 0


def test_a_stop_after_the_window_goes_to_a_message_after_it_when_there_is_one() -> None:
    inside, after = sent(at(1)), sent(END + timedelta(minutes=1))
    assert counts_of(health([inside, after, revoked(END + timedelta(minutes=2))])).opt_outs == 0
    assert counts_of(health([inside, revoked(END + timedelta(minutes=2))])).opt_outs == 1


def test_no_opt_out_is_attributed_to_the_reply_owed_to_a_keyword() -> None:
    regular = sent(at(1), number=NUMBER_A)
    help_reply = sent(at(2), number=NUMBER_B, kind=MessageKind.HELP_REPLY)
    report = health([regular, help_reply, revoked(at(3))])

    assert counts_of(report, number=NUMBER_A).opt_outs == 1
    assert counts_of(report, number=NUMBER_B) == HealthCounts(1, 0, 0)


def test_a_message_draws_one_opt_out_however_many_follow_it() -> None:
    report = health([sent(at(1)), revoked(at(2)), revoked(at(3), None)])
    assert counts_of(report) == HealthCounts(1, 1, 0)


def test_an_opt_out_with_no_message_before_it_is_counted_apart() -> None:
    report = health([revoked(at(1)), sent(at(2))])
    assert counts_of(report) == HealthCounts(1, 0, 0)
    assert report.unattributed_opt_outs == 1


def test_one_stop_recorded_twice_counts_once_and_two_stops_count_twice() -> None:
    """An export imported again under other import ids recorded each opt-out twice,
    and a number that opted out once counted as two opt-outs with no message before
    them; two STOPs at two times, or saying other words, are two."""
    again = [revoked(at(1), None), revoked(at(1), None)]
    assert health([*again, sent(at(2))]).unattributed_opt_outs == 1
    apart = [revoked(at(1), None), revoked(at(2), None), revoked(at(2), None, text="QUIT")]
    assert health([*apart, revoked(at(1), "promo")]).unattributed_opt_outs == 4
    other_number = revoked(at(1), None, phone=phone(2))
    assert health([*again, other_number]).unattributed_opt_outs == 2


def test_one_hold_recorded_twice_counts_once_until_each_is_resolved() -> None:
    first, second = flagged(at(1)), flagged(at(1))
    report = health([first, second])
    assert report.unattributed_opt_outs_pending_review == 1
    report = health([first, second, resolved(at(2), first, CandidateResolution.DISMISSED)])
    assert report.unattributed_opt_outs_pending_review == 1
    assert health([first, flagged(at(2))]).unattributed_opt_outs_pending_review == 2


def test_one_opt_out_in_a_thousand_messages_is_within_the_limit_and_four_are_not() -> None:
    sends = [sent(at(i / 100), phone=phone(i)) for i in range(1000)]
    three = health([*sends, *(revoked(at(20), phone=phone(i)) for i in range(3))])
    four = health([*sends, *(revoked(at(20), phone=phone(i)) for i in range(4))])

    assert counts_of(three).opt_out_rate == 0.003 and not three.flagged
    assert counts_of(four).opt_outs == 4 and four.flagged


def test_the_window_counts_sends_from_its_start_up_to_but_not_including_its_end() -> None:
    at_start = sent(START, phone=phone(1))
    before = sent(at(-1), phone=phone(2))
    at_end = sent(END, phone=phone(3))
    report = health([at_start, before, at_end])
    assert counts_of(report).messages_sent == 1


def test_an_opt_out_counts_in_the_window_of_the_message_it_is_attributed_to() -> None:
    before = sent(at(-1))
    stop_inside = revoked(at(5))
    # The message was sent before the window: neither it nor its opt-out count here.
    report = health([before, stop_inside, sent(at(6), phone=phone(1))])
    assert counts_of(report) == HealthCounts(1, 0, 0)
    assert report.unattributed_opt_outs == 0
    # In the window before, the message and its opt-out both count.
    earlier = health([before, stop_inside], start=at(-10), end=START)
    assert counts_of(earlier) == HealthCounts(1, 1, 0)


def test_a_later_message_of_the_window_takes_the_opt_out_from_an_earlier_one_outside() -> None:
    report = health([sent(at(-1)), sent(at(1)), revoked(at(2))])
    assert counts_of(report) == HealthCounts(1, 1, 0)


def test_one_campaign_s_report_leaves_the_others_out_but_attributes_as_the_brand_does() -> None:
    events = [sent(at(1), "promo"), sent(at(2), "news"), revoked(at(3), None)]
    report = health(events, campaign="promo")
    assert [c.campaign for c in report.campaigns] == ["promo"]
    assert counts_of(report) == HealthCounts(1, 0, 0)  # the STOPALL answered "news"


def test_other_brands_and_repeated_message_ids_are_not_counted() -> None:
    message = sent(at(1), message_id="SM1")
    other_brand = replace(sent(at(1), message_id="SM2"), brand="globex")
    again = replace(message, event_id=uuid.uuid4())
    assert counts_of(health([message, other_brand, again])).messages_sent == 1


def test_a_send_that_named_no_number_counts_under_none() -> None:
    report = health([sent(at(1), number="")])
    [campaign] = report.campaigns
    assert [s.from_number for s in campaign.senders] == [""]


_PHONES = [phone(i) for i in range(3)]
_CAMPAIGNS = ["promo", "news"]


@st.composite
def _histories(draw) -> list[LedgerEvent]:
    """A brand's events in ledger order: sends, opt-outs (of a campaign or brand-wide)
    and reports on earlier sends, at random minutes of two days."""
    out: list[LedgerEvent] = []
    sends: list[MessageSent] = []
    for _ in range(draw(st.integers(0, 40))):
        when = at(draw(st.integers(-600, 2400)))
        what = draw(st.sampled_from(["send", "send", "stop", "report"]))
        who = draw(st.sampled_from(_PHONES))
        if what == "send":
            kind = draw(st.sampled_from([MessageKind.REGULAR, MessageKind.HELP_REPLY]))
            number = draw(st.sampled_from([NUMBER_A, NUMBER_B]))
            message = sent(
                when, draw(st.sampled_from(_CAMPAIGNS)), number=number, phone=who, kind=kind
            )
            sends.append(message)
            out.append(message)
        elif what == "stop":
            out.append(revoked(when, draw(st.sampled_from([*_CAMPAIGNS, None])), phone=who))
        elif sends:
            result = draw(st.sampled_from(list(DeliveryOutcome)))
            out.append(outcome(draw(st.sampled_from(sends)), result, when))
    return out


def _rows(report: HealthReport) -> dict[tuple[str, str], HealthCounts]:
    return {(c.campaign, s.from_number): s.counts for c in report.campaigns for s in c.senders}


@settings(max_examples=200, deadline=None)
@given(_histories(), st.integers(-600, 2400))
def test_a_window_split_in_two_counts_what_the_whole_counts(events, minutes) -> None:
    # Everything is counted in the window of its message, and a message's opt-out
    # and outcome do not depend on the window: the halves add up to the whole.
    first, whole = at(-600), at(2401)
    middle = at(minutes)
    total = _rows(health(events, start=first, end=whole))
    halves: dict[tuple[str, str], HealthCounts] = {}
    for start, end in ((first, middle), (middle, whole)):
        if start < end:
            for key, counts in _rows(health(events, start=start, end=end)).items():
                halves[key] = halves.get(key, HealthCounts()) + counts
    assert halves == total


@settings(max_examples=200, deadline=None)
@given(_histories())
def test_no_rate_exceeds_one_and_a_campaign_alone_counts_as_in_the_brand(events) -> None:
    report = health(events, start=at(-600), end=at(2401))
    for c in report.campaigns:
        assert c.counts == sum((s.counts for s in c.senders), HealthCounts())
        for counts in (c.counts, *(s.counts for s in c.senders)):
            assert counts.opt_outs <= counts.messages_sent
            assert counts.delivery_errors <= counts.messages_sent
        [alone] = health(events, c.campaign, start=at(-600), end=at(2401)).campaigns
        assert alone == c


@settings(max_examples=200, deadline=None)
@given(_histories(), st.sampled_from([None, "promo"]))
def test_tallies_of_disjoint_numbers_combined_count_what_one_tally_counts(events, campaign) -> None:
    # What lets the service read a partition at a time: every count is of one
    # number's facts, so tallies of separate numbers add up to the whole.
    start, end = at(-600), at(2401)
    whole = health(events, campaign, start=start, end=end)
    parts = [
        health(
            [e for e in events if getattr(e, "phone", None) == p], campaign, start=start, end=end
        )
        for p in _PHONES
    ]
    combined = combine(BRAND, campaign, start, end, HealthLimits(), parts)
    assert combined.campaigns == whole.campaigns
    assert combined.unattributed_opt_outs == whole.unattributed_opt_outs
    assert combined.events_read == whole.events_read


def test_a_hold_awaiting_review_counts_beside_the_opt_outs_and_raises_the_flag() -> None:
    """A provider's 21610 or a reply that reads like a STOP is an opt-out a carrier
    counts already: the flag counts it before the review; the rate does not."""
    sends = [sent(at(i / 100), phone=phone(i)) for i in range(1000)]
    stops = [revoked(at(20), phone=phone(i)) for i in range(2)]
    holds = [flagged(at(20), phone=phone(i)) for i in range(3, 6)]
    answered = [flagged(at(20), phone=phone(i)) for i in range(6, 8)]
    reviews = [
        replace(
            resolved(at(21), answered[0], CandidateResolution.DISMISSED), phone=answered[0].phone
        ),
        replace(
            resolved(END + timedelta(days=1), answered[1], CandidateResolution.REVOKED),
            phone=answered[1].phone,
        ),
        revoked(END + timedelta(days=1), None, phone=answered[1].phone),
    ]
    report = health([*sends, *stops, *holds, *answered, *reviews])
    # the hold resolved "revoked" after the window counts once, as an opt-out of the
    # message it answers; the dismissed one not at all
    assert counts_of(report) == HealthCounts(1000, 3, 0, 3)
    assert counts_of(report).opt_out_rate == 0.003 and report.flagged
    assert not health([*sends, *stops, *answered, *reviews]).flagged


def test_a_message_that_drew_an_opt_out_and_a_hold_counts_once() -> None:
    report = health([sent(at(1)), flagged(at(2)), revoked(at(3), None)])
    assert counts_of(report) == HealthCounts(1, 1, 0, 0)
    report = health([sent(at(1)), flagged(at(2))])
    assert counts_of(report) == HealthCounts(1, 0, 0, 1)


def test_a_hold_with_no_message_before_it_is_counted_apart() -> None:
    other_brand = replace(flagged(at(1), phone=phone(2)), brand="globex")
    report = health([flagged(at(1)), sent(at(2)), other_brand])
    assert counts_of(report) == HealthCounts(1, 0, 0, 0)
    assert (report.unattributed_opt_outs, report.unattributed_opt_outs_pending_review) == (0, 1)
    both = combine(BRAND, None, START, END, report.limits, [report, report])
    assert both.unattributed_opt_outs_pending_review == 2
    assert counts_of(both) == HealthCounts(2, 0, 0, 0)
