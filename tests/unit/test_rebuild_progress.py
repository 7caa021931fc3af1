"""What ``consent-ledger rebuild`` shows while it runs: share done, events, rate and
time left, redrawn on a terminal and a line now and then in a log."""

from __future__ import annotations

import io

import pytest

from services.cli import main as cli
from services.cli.rebuild import ProgressLine
from services.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_rate_and_time_left_come_from_this_runs_events() -> None:
    resumed = Progress(done=600, total=1000, read=100, seconds=2.0, resumed=True)

    assert resumed.rate == 50.0
    assert resumed.left == 8.0  # 400 left at 50 a second
    assert Progress(done=0, total=1000, read=0, seconds=0.0).left is None


def test_a_line_says_the_share_the_events_the_rate_and_the_time_left() -> None:
    line = ProgressLine(io.StringIO()).line(
        Progress(done=250_000, total=1_000_000, read=250_000, seconds=10.0)
    )

    assert "[#######.......................]" in line
    assert " 25.0%" in line
    assert "250,000 of 1,000,000 events" in line
    assert "25,000/s" in line
    assert "00:30 left" in line


def test_in_a_log_one_line_every_few_seconds_and_the_last_at_the_end() -> None:
    out, clock = io.StringIO(), Clock()
    show = ProgressLine(out, log_every=5.0, clock=clock)
    for second in range(12):
        clock.now = float(second)
        show(Progress(done=second * 10, total=110, read=second * 10, seconds=float(second)))
    show.end()

    lines = out.getvalue().splitlines()
    assert [line.split("]")[1].split("%")[0].strip() for line in lines] == [
        "0.0", "45.5", "90.9", "100.0",
    ]  # fmt: skip
    assert "\r" not in out.getvalue()


def test_on_a_terminal_the_line_is_redrawn_in_place() -> None:
    out, clock = Terminal(), Clock()
    show = ProgressLine(out, tty_every=0.2, clock=clock)
    for step in range(3):
        clock.now = step * 1.0
        show(Progress(done=step, total=2, read=step, seconds=step * 1.0))
    show.end()

    assert out.getvalue().count("\r") == 3
    assert out.getvalue().endswith("events  1/s  00:00 left\n")


def test_a_resumed_rebuild_says_where_it_resumes() -> None:
    out = io.StringIO()
    show = ProgressLine(out)
    show(Progress(done=400, total=1000, read=0, seconds=0.0, resumed=True))
    show(Progress(done=500, total=1000, read=100, seconds=1.0, resumed=True))

    assert out.getvalue().startswith("resuming an interrupted rebuild at 400 of 1,000 events\n")
    assert out.getvalue().count("resuming") == 1


def test_a_batch_size_below_one_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["rebuild", "--batch-size", "0"])
    assert "--batch-size must be 1 or more events" in capsys.readouterr().err
