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
