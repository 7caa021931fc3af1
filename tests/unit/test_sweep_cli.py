"""``consent-ledger audit sweep``: its progress line and its options."""

from __future__ import annotations

import io

import pytest

from services.cli import _parser
from services.sweep_cli import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_progress_line_gives_the_share_the_rate_and_the_time_left():
    clock = Clock()
    progress = Progress(io.StringIO(), clock)
    clock.now += 10
    line = progress.line(0.25, 50_000, 3)
    assert "25.0%" in line and "50,000 events" in line and "5,000/s" in line
    assert "00:30 left" in line and "3 found" in line
    assert line.startswith("[" + "#" * 7 + "." * 23 + "]")
    assert "--:-- left" in Progress(io.StringIO(), clock).line(0.0, 0, 0)


def test_the_range_is_read_as_iso_times_and_a_bare_one_as_utc():
    args = _parser().parse_args(
        [
            "audit",
            "sweep",
            "--brand",
            "acme",
            "--campaign",
            "promo",
            "--from",
            "2026-11-01",
            "--to",
            "2026-12-01T00:00:00+01:00",
        ]
    )
    assert args.start.isoformat() == "2026-11-01T00:00:00+00:00"
    assert args.end.utcoffset().total_seconds() == 3600
    with pytest.raises(SystemExit):
        _parser().parse_args(
            [
                "audit",
                "sweep",
                "--brand",
                "acme",
                "--campaign",
                "promo",
                "--from",
                "soon",
                "--to",
                "2026-12-01",
            ]
        )
