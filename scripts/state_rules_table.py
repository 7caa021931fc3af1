"""Print the README's table of enforced state rules from ledger/rules/us_state_rules.json.

    .venv/bin/python scripts/state_rules_table.py

The README holds its output between the ``state-rules`` markers, and a unit test
fails when the two differ, so the README never lists a rule the data does not hold.
"""

from __future__ import annotations

from ledger.state_rules import Hours, StateRule, table


def _hours(hours: Hours | None) -> str:
    return "closed" if hours is None else f"{hours[0]:%H:%M}-{hours[1]:%H:%M}"


def _row(rule: StateRule) -> str:
    cap = (
        ""
        if rule.cap is None
        else f"{rule.cap.limit} per {rule.cap.window.total_seconds() / 3600:g} h per {rule.cap.per}"
    )
    holidays = "closed" + (f" (+ {', '.join(rule.extra_holidays)})" if rule.extra_holidays else "")
    cells = [
        f"{rule.name} ({rule.state})",
        _hours(rule.weekdays),
        _hours(rule.saturday),
        _hours(rule.sunday),
        holidays if rule.holidays_closed else "",
        cap,
        f"{rule.effective:%Y-%m-%d}",
        "yes" if rule.confirmed else "no",
        rule.citation.split(": ")[0],
    ]
    return "| " + " | ".join(cells) + " |"


def table_markdown() -> str:
    rules = table()
    header = [
        "| State | Mon-Fri | Saturday | Sunday | Holidays | Cap (promotional) | From "
        "| Confirmed | Citation |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    federal = rules.federal
    header.append(
        f"| Federal floor (every number) | {_hours(federal.hours)} | {_hours(federal.hours)} "
        f"| {_hours(federal.hours)} |  |  | {federal.effective:%Y-%m-%d} | yes "
        f"| {federal.citation.split(': ')[0]} |"
    )
    return "\n".join([*header, *(_row(r) for r in rules.rules)])


if __name__ == "__main__":
    print(table_markdown())
