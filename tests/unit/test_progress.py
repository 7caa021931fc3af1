"""The progress line and resume state shared by the long commands (``rebuild``,
``audit sweep``, ``export``, ``verify``)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from services.progress import (
    STOP_AFTER,
    Progress,
    ProgressLine,
    ResumeState,
    StopAfter,
    clock_text,
    wanted,
)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_without_a_total_the_line_says_the_events_and_the_rate_only() -> None:
    line = ProgressLine(io.StringIO(), "verify").line(Progress(12_345, None, 2_345, 2.0))

    assert line == "verify 12,345 events  1,172/s"
    assert Progress(12_345, None, 2_345, 2.0).left is None


def test_with_a_total_the_line_names_the_command_and_the_time_left() -> None:
    line = ProgressLine(io.StringIO(), "export").line(Progress(3_000, 4_000, 1_000, 10.0))

    assert line.startswith("export [" + "#" * 22 + "." * 8 + "]  75.0%")
    assert "3,000 of 4,000 events  100/s  00:10 left" in line


def test_the_time_left_of_a_known_share_comes_from_the_time_so_far() -> None:
    assert Progress(100, None, 100, 30.0, fraction=0.75).left == pytest.approx(10.0)
    assert Progress(0, 0, 0, 1.0).share == 1.0


def test_long_times_left_are_shown_in_hours() -> None:
    assert clock_text(59) == "00:59"
    assert clock_text(3 * 3600 + 65) == "3:01:05"


def test_progress_shows_on_a_terminal_or_when_asked() -> None:
    assert wanted(Terminal(), asked=False)
    assert not wanted(io.StringIO(), asked=False)
    assert wanted(io.StringIO(), asked=True)


def test_a_resumed_run_says_where_it_resumes_with_or_without_a_total() -> None:
    out = io.StringIO()
    ProgressLine(out, "verify")(Progress(700, None, 0, 0.0, resumed=True))

    assert out.getvalue().startswith("resuming an interrupted verify at 700 events\n")


def test_a_finding_printed_mid_line_starts_on_a_line_of_its_own() -> None:
    out = Terminal()
    show = ProgressLine(out, "sweep")
    show(Progress(1, None, 1, 1.0))
    show.interrupt()
    out.write("finding\n")

    assert out.getvalue().endswith("/s\nfinding\n")


def test_the_resume_state_is_replaced_whole_and_removed_at_the_end(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = ResumeState(path)
    assert state.load() is None
    state.save({"positions": {"subscribers/0": 10}})
    state.save({"positions": {"subscribers/0": 20}})

    assert json.loads(path.read_text()) == {"positions": {"subscribers/0": 20}}
    assert os.listdir(tmp_path) == ["state.json"]  # no temporary file left beside it
    assert ResumeState(path).load() == {"positions": {"subscribers/0": 20}}
    state.remove()
    assert not path.exists()


def test_the_resume_state_is_saved_at_intervals() -> None:
    now = [0.0]
    state = ResumeState(Path("unused"), every=2.0, clock=lambda: now[0])
    assert state.due()
    state.saved_at = 0.0
    now[0] = 1.0
    assert not state.due()
    now[0] = 2.5
    assert state.due()


def test_a_resume_state_that_is_not_an_object_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a resume state"):
        ResumeState(path).load()


def test_the_test_hook_interrupts_after_so_many_events() -> None:
    stop = StopAfter({STOP_AFTER: "3"})
    stop.tick(2)
    with pytest.raises(KeyboardInterrupt):
        stop.tick()
    StopAfter({}).tick(10**9)  # without the hook, never
