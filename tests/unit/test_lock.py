"""requirements.lock, which `make venv` and CI install from, agrees with
pyproject.toml's dependency list; and the packages ship their py.typed markers."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCKED_EXTRAS = ("dev", "speed", "embedded")
"""The extras `make venv` installs: the lock holds them all."""


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    for extra in LOCKED_EXTRAS:
        requirements += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return [r for r in requirements if r.marker is None or r.marker.evaluate()]


def locked(text: str | None = None) -> dict[str, tuple[Version, list[str], list[str]]]:
    """Each pinned package: its version, its hashes, and what it is there for."""
    text = (ROOT / "requirements.lock").read_text() if text is None else text
    pins: dict[str, tuple[Version, list[str], list[str]]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        first = block.split("\n", 1)[0]
        match = re.match(r"([A-Za-z0-9._-]+)==(\S+)", first)
        if match is None:
            continue
        hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", block)
        _, _, after = block.partition("# via")
        via = [line.strip().lstrip("#").strip() for line in after.splitlines()]
        pins[canonicalize_name(match[1])] = (Version(match[2]), hashes, [v for v in via if v])
    return pins


def mismatches(requirements: list[Requirement], pins: dict) -> list[str]:
    problems = []
    for requirement in requirements:
        pin = pins.get(canonicalize_name(requirement.name))
        if pin is None:
            problems.append(f"{requirement.name} is not in requirements.lock")
        elif not requirement.specifier.contains(pin[0], prereleases=True):
            problems.append(f"{requirement.name}=={pin[0]} does not satisfy {requirement}")
    direct = {canonicalize_name(r.name) for r in requirements}
    for name, (_, _, via) in pins.items():
        if any(v.startswith("consent-ledger") for v in via) and name not in direct:
            problems.append(f"{name} is locked for consent-ledger but not declared any more")
    return problems


def test_every_declared_dependency_is_pinned_within_its_range():
    assert mismatches(declared(), locked()) == []


def test_every_pin_carries_hashes():
    pins = locked()
    assert len(pins) > 20
    assert [name for name, (_, hashes, _) in pins.items() if not hashes] == []


def test_the_check_catches_a_lock_that_fell_behind():
    """What the two tests above would say of a stale lock."""
    stale = (
        "grpcio==1.60.0 \\\n    --hash=sha256:"
        + "0" * 64
        + "\n    # via consent-ledger (pyproject.toml)\n"
        "left-over==1.0 \\\n    --hash=sha256:"
        + "1" * 64
        + "\n    # via consent-ledger (pyproject.toml)\n"
    )
    problems = mismatches([Requirement("grpcio>=1.85.1"), Requirement("msgpack>=1")], locked(stale))
    assert problems == [
        "grpcio==1.60.0 does not satisfy grpcio>=1.85.1",
        "msgpack is not in requirements.lock",
        "left-over is locked for consent-ledger but not declared any more",
    ]


def test_the_installed_versions_are_the_locked_ones():
    """`make venv` installed from the lock: what runs the tests is what CI pins."""
    from importlib.metadata import version

    pins = locked()
    differ = [
        f"{r.name}: installed {version(r.name)}, locked {pins[canonicalize_name(r.name)][0]}"
        for r in declared()
        if Version(version(r.name)) != pins[canonicalize_name(r.name)][0]
    ]
    assert differ == []


@pytest.mark.timeout(300)
def test_the_wheel_ships_py_typed(tmp_path):
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--quiet", "--wheel-dir", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("consent_ledger-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"ledger/py.typed", "services/py.typed"} <= names
