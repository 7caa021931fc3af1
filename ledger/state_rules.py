"""The US states' telemarketing rules beyond the federal floor, read from data.

The table is ``ledger/rules/us_state_rules.json``, shipped with the package and
read once, at first use: each row names a state, its statute, the date it is
applied from, its allowed hours by kind of day (weekdays, Saturday, Sunday, with
public holidays closed where the statute says so) and any cap on solicitations
per subject. ``ledger.policy`` applies every candidate state's rule on top of the
federal window and the campaign's own.

Public holidays come from the ``holidays`` package for the state (its "public"
category), plus the few the statutes name that the package leaves out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import date, time, timedelta
from functools import lru_cache
from importlib import resources
from typing import Any, NamedTuple

import holidays
from dateutil.easter import easter

from ledger.regions import ANY_US_STATE, STATE_ZONES

FEDERAL = "federal"
"""The ``rule`` of a decision made by the federal window (47 CFR 64.1200(c)(1))."""
CAMPAIGN = "campaign"
"""The ``rule`` of a decision made by the campaign's own narrower window."""

Hours = tuple[time, time]
"""[start, end) in local time."""


class StateCap(NamedTuple):
    limit: int
    window: timedelta
    per: str
    """What the statute counts per ("subject": one campaign is one subject)."""


class StateRule(NamedTuple):
    """One row of the table."""

    state: str
    name: str
    citation: str
    effective: date
    weekdays: Hours | None
    saturday: Hours | None
    sunday: Hours | None
    """None: closed all day."""
    holidays_closed: bool
    extra_holidays: tuple[str, ...]
    cap: StateCap | None
    confirmed: bool
    notes: str
    sources: tuple[str, ...]

    @property
    def rule(self) -> str:
        """The name a decision gives this rule: ``state:FL``."""
        return f"state:{self.state}"

    def hours_on(self, day: date) -> tuple[Hours | None, str]:
        """The hours allowed on ``day`` (None: closed) and what kind of day it is."""
        if self.holidays_closed:
            holiday = holiday_name(self.state, day, self.extra_holidays)
            if holiday is not None:
                return None, f"{holiday} (a public holiday)"
        weekday = day.weekday()
        if weekday == 6:
            return self.sunday, "Sunday"
        if weekday == 5:
            return self.saturday, "Saturday"
        return self.weekdays, day.strftime("%A")


class FederalRule(NamedTuple):
    citation: str
    effective: date
    hours: Hours


def _hours(raw: Any, where: str) -> Hours | None:
    if raw is None:
        return None
    if not (isinstance(raw, list) and len(raw) == 2):
        raise ValueError(f"{where}: hours must be [start, end] or null")
    start, end = time.fromisoformat(raw[0]), time.fromisoformat(raw[1])
    if not start < end:
        raise ValueError(f"{where}: start must be before end")
    return (start, end)


def _row(raw: Mapping[str, Any]) -> StateRule:
    state = raw["state"]
    if state not in STATE_ZONES:
        raise ValueError(f"{state!r} is not a USPS state code")
    hours = raw["hours"]
    cap = raw.get("cap")
    holiday_rule = raw.get("holidays", "none")
    if holiday_rule not in ("closed", "none"):
        raise ValueError(f"{state}: holidays must be 'closed' or 'none'")
    extra = tuple(raw.get("extra_holidays", ()))
    for name in extra:
        if name not in _EXTRA_HOLIDAYS:
            raise ValueError(f"{state}: unknown extra holiday {name!r}")
    if not raw["citation"].strip():
        raise ValueError(f"{state}: a rule needs its citation")
    return StateRule(
        state=state,
        name=raw["name"],
        citation=raw["citation"],
        effective=date.fromisoformat(raw["effective"]),
        weekdays=_hours(hours["weekdays"], f"{state}.weekdays"),
        saturday=_hours(hours["saturday"], f"{state}.saturday"),
        sunday=_hours(hours["sunday"], f"{state}.sunday"),
        holidays_closed=holiday_rule == "closed",
        extra_holidays=extra,
        cap=None
        if cap is None
        else StateCap(int(cap["limit"]), timedelta(hours=cap["window_hours"]), cap["per"]),
        confirmed=bool(raw["confirmed"]),
        notes=raw.get("notes", ""),
        sources=tuple(raw.get("sources", ())),
    )


class RulesTable(NamedTuple):
    federal: FederalRule
    rules: tuple[StateRule, ...]
    """By state, then by the date each applies from. A state may have several rows
    (an amendment that adds a rule from a later date); every row in force applies."""

    @property
    def states(self) -> frozenset[str]:
        return frozenset(r.state for r in self.rules)


def parse_table(raw: Mapping[str, Any]) -> RulesTable:
    """The table in ``raw`` (the JSON document), checked: a bad row raises ``ValueError``."""
    fed = raw["federal"]
    federal_hours = _hours(fed["hours"]["weekdays"], "federal")
    assert federal_hours is not None
    rules: dict[tuple[str, date], StateRule] = {}
    for row in raw["states"]:
        rule = _row(row)
        if (rule.state, rule.effective) in rules:
            raise ValueError(f"{rule.state} has two rows from {rule.effective}")
        rules[rule.state, rule.effective] = rule
    return RulesTable(
        FederalRule(fed["citation"], date.fromisoformat(fed["effective"]), federal_hours),
        tuple(rules[key] for key in sorted(rules)),
    )


def table_document() -> dict[str, Any]:
    """The packaged table as the JSON document it is."""
    text = resources.files("ledger").joinpath("rules/us_state_rules.json").read_text("utf-8")
    document: dict[str, Any] = json.loads(text)
    return document


@lru_cache(maxsize=1)
def table() -> RulesTable:
    """The packaged table, read and checked once."""
    return parse_table(table_document())


def rules_for(regions: Iterable[str]) -> tuple[StateRule, ...]:
    """The rules of the candidate states, in state order; "anywhere in the US" is every
    state with a rule."""
    return _rules_for(tuple(regions))


@lru_cache(maxsize=4096)
def _rules_for(regions: tuple[str, ...]) -> tuple[StateRule, ...]:
    rules = table().rules
    if ANY_US_STATE in regions:
        return rules
    return tuple(r for r in rules if r.state in regions)


def rule_zones(rule: StateRule, zones: tuple[str, ...]) -> tuple[str, ...]:
    """The zones in which ``rule``'s hours are read: those of the recipient's zones that
    the state keeps, or, when none is (the state came from an address, not the
    number), every zone the state keeps."""
    kept = STATE_ZONES[rule.state]
    shared = tuple(z for z in zones if z in kept)
    return shared or kept


# --- holidays -----------------------------------------------------------------


def _easter(year: int) -> date:
    sunday: date = easter(year)
    return sunday


def _good_friday(year: int) -> date:
    return _easter(year) - timedelta(days=2)


def _mardi_gras(year: int) -> date:
    return _easter(year) - timedelta(days=47)


def _general_election_day(year: int) -> date:
    """The Tuesday after the first Monday of November."""
    first = date(year, 11, 1)
    monday = first + timedelta(days=(0 - first.weekday()) % 7)
    return monday + timedelta(days=1)


_EXTRA_HOLIDAYS = {
    "good_friday": ("Good Friday", _good_friday),
    "mardi_gras": ("Mardi Gras", _mardi_gras),
    "flag_day": ("Flag Day", lambda year: date(year, 6, 14)),
    "general_election_day": ("Election Day", _general_election_day),
}
"""Holidays a statute names that the holidays package does not list for the state."""


@lru_cache(maxsize=512)
def _public_holidays(state: str, year: int) -> Mapping[date, str]:
    found = holidays.country_holidays("US", subdiv=state, years=year)
    return {day: str(name) for day, name in found.items()}


def holiday_name(state: str, day: date, extra: tuple[str, ...] = ()) -> str | None:
    """The public holiday ``day`` is in ``state``, if it is one."""
    name = _public_holidays(state, day.year).get(day)
    if name is not None:
        return name
    for key in extra:
        label, when = _EXTRA_HOLIDAYS[key]
        if when(day.year) == day:
            return label
    return None
