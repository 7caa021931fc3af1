"""grpcurl for the tests, as ``scripts/ensure_grpcurl.sh`` provides it (built once
with ``go install`` and cached); a machine that can have none fails saying why."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def grpcurl() -> str:
    found = subprocess.run(
        ["bash", str(ROOT / "scripts" / "ensure_grpcurl.sh")],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if found.returncode != 0:
        raise RuntimeError(f"no grpcurl: {found.stderr.strip()}")
    return found.stdout.strip().splitlines()[-1]


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [grpcurl(), *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )
