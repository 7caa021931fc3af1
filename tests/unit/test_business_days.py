"""The ten business days a revocation may take (47 CFR 64.1200(a)(10))."""

from datetime import UTC, date, datetime

import pytest

from ledger.deadlines import add_business_days, is_business_day, revocation_due


def test_weekends_are_not_business_days() -> None:
    assert not is_business_day(date(2026, 12, 5))  # Saturday
    assert not is_business_day(date(2026, 12, 6))  # Sunday
    assert is_business_day(date(2026, 12, 7))  # Monday


def test_thanksgiving_is_not_a_business_day_but_the_day_after_is() -> None:
    assert not is_business_day(date(2026, 11, 26))
    assert is_business_day(date(2026, 11, 27))


def test_a_holiday_on_a_saturday_is_observed_on_the_friday_before() -> None:
    assert not is_business_day(date(2026, 7, 3))  # July 4th 2026 is a Saturday
    assert not is_business_day(date(2027, 12, 24))  # Christmas 2027 is a Saturday


def test_ten_business_days_skip_weekends() -> None:
    # Monday 2026-12-07: two whole working weeks later is Monday 2026-12-21.
    assert add_business_days(date(2026, 12, 7), 10) == date(2026, 12, 21)


def test_ten_business_days_skip_thanksgiving() -> None:
    # Wednesday before Thanksgiving: Thursday is a holiday, Friday counts.
    assert add_business_days(date(2026, 11, 25), 1) == date(2026, 11, 27)
    assert add_business_days(date(2026, 11, 25), 10) == date(2026, 12, 10)


def test_ten_business_days_skip_christmas_and_new_year() -> None:
    # Friday 2026-12-18; Dec 25 and Jan 1 (both Fridays) are holidays.
    assert add_business_days(date(2026, 12, 18), 10) == date(2027, 1, 5)


def test_a_revocation_is_due_at_the_end_of_the_tenth_business_day_eastern() -> None:
    # Received 2026-11-25 at 23:30 in New York (04:30 UTC on the 26th): still the 25th there.
    due = revocation_due(datetime(2026, 11, 26, 4, 30, tzinfo=UTC))
    assert due == datetime(2026, 12, 11, 5, 0, tzinfo=UTC)  # midnight EST after Dec 10


def test_a_revocation_received_on_a_holiday_counts_from_the_next_business_day() -> None:
    due = revocation_due(datetime(2026, 11, 26, 15, 0, tzinfo=UTC))  # Thanksgiving
    assert due == datetime(2026, 12, 11, 5, 0, tzinfo=UTC)


def test_a_naive_time_is_refused() -> None:
    with pytest.raises(ValueError):
        revocation_due(datetime(2026, 11, 26, 15, 0))
