"""How long a sender has to honour a revocation: ten US federal business days.

47 CFR 64.1200(a)(10), as adopted by the FCC's 2024 TCPA Consent Order (FCC 24-24,
CG Docket No. 02-278), requires a revocation to be honoured "within a reasonable
time not to exceed ten business days of receipt". Business days are counted as
the federal government counts them: Monday to Friday, less the federal holidays
of 5 U.S.C. 6103 on the days they are observed (the ``holidays`` package's US
calendar, which follows that statute). The day of receipt is not counted, and the
days are those of the Eastern time zone, where the Commission sits: a revocation
received on a Wednesday is due by the end of the second Wednesday after it, a
federal holiday in between adding a day.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import holidays

REVOCATION_BUSINESS_DAYS = 10
"""Business days a sender has to honour a revocation (47 CFR 64.1200(a)(10))."""
BUSINESS_DAY_ZONE = ZoneInfo("America/New_York")
"""Whose calendar days are counted: the Commission's, in Washington, D.C."""

_FEDERAL = holidays.country_holidays("US")
"""The federal holidays (no subdivision: the federal calendar), with their observed
days; the library fills in a year the first time a date in it is asked about."""
_DAY = timedelta(days=1)


def is_business_day(day: date) -> bool:
    """Monday to Friday, and not a federal holiday (or the day one is observed on)."""
    return day.weekday() < 5 and day not in _FEDERAL


def add_business_days(day: date, count: int) -> date:
    """The ``count``-th business day after ``day`` (``day`` itself is not counted)."""
    if count < 0:
        raise ValueError("count must not be negative")
    while count:
        day += _DAY
        if is_business_day(day):
            count -= 1
    return day


def revocation_due(received: datetime) -> datetime:
    """The moment a revocation received at ``received`` becomes overdue: midnight
    (Eastern) at the end of the tenth business day after the day it was received."""
    if received.tzinfo is None:
        raise ValueError("received must be timezone-aware")
    day = received.astimezone(BUSINESS_DAY_ZONE).date()
    last = add_business_days(day, REVOCATION_BUSINESS_DAYS)
    return datetime.combine(last + _DAY, time(0), tzinfo=BUSINESS_DAY_ZONE)
