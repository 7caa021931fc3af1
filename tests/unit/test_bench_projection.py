"""The projection phase's summary (``bench.projection.projection_lines``): each figure
beside its baseline, and the CPU per event of both phases, the steadier figures on a
shared machine."""

from __future__ import annotations

from bench.projection import ProjectionFigures, projection_lines


def test_the_summary_gives_both_phases_cpu_per_event() -> None:
    figures = ProjectionFigures(
        events=200_000,
        apply_seconds=40.0,
        apply_cpu_seconds=20.0,
        copy_seconds=2.0,
        rebuild_events=200_001,
        rebuild_seconds=50.0,
        append_seconds=10.0,
        rebuild_cpu_seconds=25.0,
    )
    text = "\n".join(projection_lines(figures))
    assert "| apply, one process | 200,000 | 5,000 | 100,000 | 5.0% |" in text
    assert "(5,000/s; 100 µs of this process's CPU per event)" in text
    assert "the rebuild: 125 µs of this process's CPU per event" in text
    assert figures.as_dict()["rebuild_cpu_us_per_event"] == 25.0 / 200_001 * 1e6


def test_a_rebuild_in_processes_is_printed_and_decides_the_goal() -> None:
    figures = ProjectionFigures(
        events=1_000_000,
        apply_seconds=100.0,
        apply_cpu_seconds=50.0,
        copy_seconds=5.0,
        rebuild_events=1_000_001,
        rebuild_seconds=90.0,
        append_seconds=25.0,
        rebuild_cpu_seconds=72.0,
        workers=2,
        workers_seconds=25.0,
        workers_cpu_seconds=80.0,
    )
    text = "\n".join(projection_lines(figures))
    assert "| rebuild, 2 processes | 1,000,001 | 40,000 | | |" in text
    assert (
        "goal rebuild of 1,000,000 events < 30 s: met (1,000,001 events in 25.0 s, 2 processes)"
        in text
    )
    assert "with 2 processes 80 µs of theirs" in text
    figures.workers_seconds = 95.0
    text = "\n".join(projection_lines(figures))
    assert "NOT met (1,000,001 events in 90.0 s, one process)" in text


def test_without_a_rebuild_in_processes_only_one_is_printed() -> None:
    figures = ProjectionFigures(200_000, 40.0, 20.0, 2.0, 200_001, 50.0, 10.0, 25.0)
    text = "\n".join(projection_lines(figures))
    assert "processes |" not in text
    assert "not measured (only 200,001 events, in 50.0 s, one process; 250 s at that rate)" in text
