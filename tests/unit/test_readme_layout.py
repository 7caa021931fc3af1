"""The README's "Layout" is the tree as it is: every path it names exists, and every
top-level module of ``ledger/`` and ``services/`` is named there."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CONTINUATION = 10
"""A line indented this far or more goes on with the description above it; names
are indented by two spaces per level."""

NOT_MODULES = {"__init__.py", "__pycache__", "py.typed"}


def layout_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = re.search(r"\n## Layout\n(.*?)\n## ", text, re.DOTALL)
    assert section, "README lost its Layout section"
    block = re.search(r"```\n(.*?)```", section.group(1), re.DOTALL)
    assert block, "README's Layout has no tree"
    return block.group(1)


def named_paths(block: str) -> list[str]:
    """Each path the tree names, its folders' names joined in front."""
    paths: list[str] = []
    folders: list[tuple[int, str]] = []  # (indent, path) of the folders still open
    for line in block.splitlines():
        indent = len(line) - len(line.lstrip(" "))
        if not line.strip() or indent >= CONTINUATION:
            continue
        while folders and folders[-1][0] >= indent:
            folders.pop()
        path = (folders[-1][1] if folders else "") + line.split()[0]
        paths.append(path)
        if path.endswith("/"):
            folders.append((indent, path))
    return paths


def test_the_parser_joins_folders_and_skips_descriptions() -> None:
    block = (
        "ledger/       the domain\n"
        "  events.py   facts\n"
        "  rules/      data\n"
        "    x.json    one file, described over\n"
        "              two lines\n"
        "Dockerfile    the image\n"
    )
    assert named_paths(block) == [
        "ledger/",
        "ledger/events.py",
        "ledger/rules/",
        "ledger/rules/x.json",
        "Dockerfile",
    ]


@pytest.mark.parametrize("path", named_paths(layout_block()))
def test_every_path_the_layout_names_exists(path: str) -> None:
    found = ROOT / path
    assert found.is_dir() if path.endswith("/") else found.is_file(), (
        f"README's Layout names {path}, which is not in the tree"
    )


@pytest.mark.parametrize("package", ["ledger", "services"])
def test_every_top_level_module_is_named(package: str) -> None:
    named = set(named_paths(layout_block()))
    modules = {
        f"{package}/{child.name}/" if child.is_dir() else f"{package}/{child.name}"
        for child in (ROOT / package).iterdir()
        if child.name not in NOT_MODULES and not child.name.startswith(".")
    }
    missing = sorted(modules - named)
    assert not missing, f"README's Layout does not name {missing}"
