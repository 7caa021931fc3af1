"""The README's runbook quotes only measured figures, and names commands that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from services.cli import main as cli

ROOT = Path(__file__).resolve().parents[2]


def runbook() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"\n## Runbook\n(.*?)\n## ", text, re.DOTALL)
    assert match, "README lost its runbook"
    return match.group(1)


def latest_run() -> str:
    """BENCHMARKS.md's results: the newest run, the only one it keeps."""
    text = (ROOT / "BENCHMARKS.md").read_text()
    results = text.split("\n## Results\n", 1)[1]
    return results.split("\n## ", 1)[0]


@pytest.mark.parametrize(
    "figure",
    re.findall(r"\d[\d.,\u2013]* (?:MB|s)\b", runbook().split("**Sizing**", 1)[1])
    + re.findall(r"\d[\d.]* s after its start", runbook()),
)
def test_every_sizing_figure_is_measured(figure):
    number = figure.split(" ")[0]
    assert number in latest_run(), f"{figure} is not in BENCHMARKS.md's latest run"


def test_the_quoted_figures_are_there():
    text = runbook()
    for figure in ("172\u2013174 MB", "349 MB", "12.0 s", "92.7 s"):
        assert figure in text and figure.replace(" MB", "").replace(" s", "") in latest_run()


@pytest.mark.parametrize("command", ["rebuild", "token"])
def test_the_commands_it_names_exist(command, capsys):
    assert f"consent-ledger {command}" in runbook()
    with pytest.raises(SystemExit) as exited:
        cli.main([command, "--help"])
    assert exited.value.code == 0
