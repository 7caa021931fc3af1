"""The opt-out rate's arithmetic and the counting rule, without any view."""

from __future__ import annotations

from datetime import timedelta

from ledger.opt_out_rate import OPT_OUT_RATE_LIMIT, OptOutRate, SendingCounts, count_sending
from tests.conformance.view_suite import T0, grant, revoke, sent


def rate(sent_: int, opt_outs: int) -> OptOutRate:
    return OptOutRate("acme", None, T0, T0 + timedelta(days=30), SendingCounts(sent_, opt_outs))


def test_the_rate_is_opt_outs_per_message_sent() -> None:
    assert rate(2000, 5).rate == 0.0025
    assert rate(0, 0).rate is None


def test_the_limit_is_the_policy_s_three_in_a_thousand() -> None:
    assert OPT_OUT_RATE_LIMIT == 0.003
    assert not rate(1000, 3).above_limit  # at the limit is not above it
    assert rate(1000, 4).above_limit
    assert not rate(0, 0).above_limit


def test_opt_outs_with_no_message_sent_count_as_above_the_limit() -> None:
    assert rate(0, 1).above_limit


def test_only_sends_and_revocations_of_the_brand_count() -> None:
    phone = "+14155550100"
    events = [
        grant(phone, "acme", "deals", T0),
        sent(phone, "acme", "deals", T0),
        sent(phone, "acme", "deals", T0),
        revoke(phone, "acme", "deals", T0),
        revoke("+14155550101", "globex", "deals", T0),
    ]
    end = T0 + timedelta(days=1)
    assert count_sending(events, "acme", None, T0, end) == SendingCounts(2, 1)
    assert count_sending(events, "acme", "deals", T0, end) == SendingCounts(2, 1)
    assert count_sending(events, "acme", "news", T0, end) == SendingCounts(0, 0)
    assert count_sending(events, "acme", None, end, end + timedelta(days=1)) == SendingCounts(0, 0)
