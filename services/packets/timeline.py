"""The consent timeline as a picture: one layout, drawn as SVG in the HTML page and
with the PDF's own lines and circles, so both show the same thing.

Points are placed in order, evenly, in rows (a confirmation a minute after a STOP
and a message a month later are both legible that way); the time is written under
each. The line between two points is coloured by where the fold of the facts up to
the latest consent fact leaves consent (``ledger.packet``, as GetConsent reads it):
none yet, active, opted out, or an opt-out under review. Long runs
of ordinary messages are drawn as one point that counts them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PER_ROW = 8
MAX_POINTS = 48
WIDTH = 1000
"""The picture's width in its own units; the SVG's pixels, scaled to the PDF's page."""
ROW_HEIGHT = 110
BOTTOM = 45
"""Below the last row's line: room for its times."""
TOP = 40
LEFT, RIGHT = 20, 980
FIRST_X, STEP = 70, 122
"""More points than this and runs of ordinary messages are merged into one."""

STYLE = {
    # kind: (letter in the circle, colour, legend)
    "grant": ("G", "#2e7d32", "opt-in (grant)"),
    "message": ("M", "#1565c0", "message sent"),
    "stop": ("S", "#c62828", "opt-out (STOP)"),
    "confirmation": ("C", "#ef6c00", "confirmation sent"),
    "resume": ("R", "#00897b", "resumed (START)"),
    "reconfirmation": ("K", "#558b2f", "reconfirmed"),
    "reply": ("T", "#616161", "text received"),
    "flag": ("?", "#f9a825", "reply flagged as opt-out"),
    "resolution": ("!", "#6a1b9a", "flag resolved"),
}
STATE_COLOURS = {
    "none": ("#bdbdbd", "no consent yet"),
    "active": ("#66bb6a", "consent active"),
    "revoked": ("#e57373", "opted out"),
    "review": ("#ffd54f", "opt-out under review"),
}


@dataclass(frozen=True)
class Mark:
    row: int
    column: int
    kind: str
    letter: str
    colour: str
    label: str
    when: str
    """The time, as ``YYYY-MM-DD HH:MM`` UTC."""
    state_after: str
    """The consent state the line after this point shows."""

    @property
    def x(self) -> int:
        return FIRST_X + self.column * STEP

    @property
    def y(self) -> int:
        return TOP + self.row * ROW_HEIGHT


@dataclass(frozen=True)
class Segment:
    x1: int
    x2: int
    y: int
    colour: str


@dataclass(frozen=True)
class Layout:
    marks: tuple[Mark, ...]
    rows: int
    per_row: int

    @property
    def legend(self) -> list[tuple[str, str, str]]:
        """(letter, colour, meaning) of each kind of point the picture shows."""
        shown = {m.kind for m in self.marks}
        return [(s[0], s[1], s[2]) for kind, s in STYLE.items() if kind in shown]

    @property
    def states(self) -> list[tuple[str, str]]:
        return list(STATE_COLOURS.values())

    @property
    def height(self) -> int:
        return TOP + (max(self.rows, 1) - 1) * ROW_HEIGHT + BOTTOM

    @property
    def segments(self) -> list[Segment]:
        """The line through the points, each stretch coloured by the state before it."""
        found = []
        before = "none"
        for i, m in enumerate(self.marks):
            start = LEFT if m.column == 0 else self.marks[i - 1].x
            found.append(Segment(start, m.x, m.y, state_colour(before)))
            before = m.state_after
            last_in_row = i + 1 == len(self.marks) or self.marks[i + 1].row != m.row
            if last_in_row:
                found.append(Segment(m.x, RIGHT, m.y, state_colour(before)))
        return found


def _when(at: str) -> str:
    return at[:16].replace("T", " ")


def _merged(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs of two or more ordinary messages as one point, when there are too many."""
    if len(points) <= MAX_POINTS:
        return points
    out: list[dict[str, Any]] = []
    run: list[dict[str, Any]] = []

    def flush() -> None:
        if len(run) == 1:
            out.append(run[0])
        elif run:
            out.append({**run[0], "label": f"{len(run)} messages", "until": run[-1]["at"]})
        run.clear()

    for p in points:
        if p["kind"] == "message":
            run.append(p)
        else:
            flush()
            out.append(p)
    flush()
    return out


def layout(timeline: list[dict[str, Any]]) -> Layout:
    state = "none"
    marks = []
    for i, p in enumerate(_merged(timeline)):
        kind = p["kind"]
        # Where the fold of the facts leaves consent (``ledger.packet``), not the
        # point's kind: an opt-in at the instant of an opt-out, or after a hold,
        # leaves it denied. A message or a text leaves it as it was.
        state = p.get("state") or state
        letter, colour, _ = STYLE.get(kind, ("·", "#000000", kind))
        when = _when(p["at"]) + (f" to {_when(p['until'])}" if "until" in p else "")
        marks.append(Mark(i // PER_ROW, i % PER_ROW, kind, letter, colour, p["label"], when, state))
    rows = (len(marks) + PER_ROW - 1) // PER_ROW
    return Layout(tuple(marks), rows, PER_ROW)


def state_colour(state: str) -> str:
    return STATE_COLOURS[state][0]
