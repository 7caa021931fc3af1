"""The gRPC/protobuf contract: generated code is fresh, the API passes buf lint,
and nothing breaks the wire format of the last release."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RELEASED = sorted((ROOT / "protos" / "released").glob("consent-v1-*.binpb"))


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_generated_code_matches_the_protos():
    result = run("bash", "scripts/check_protos_fresh.sh")
    assert result.returncode == 0, result.stdout + result.stderr


def test_api_passes_buf_lint_and_keeps_the_released_wire_format():
    assert RELEASED, "no released API image to check breaking changes against"
    result = run("bash", "scripts/buf_check.sh", str(RELEASED[-1].relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "buf breaking" in result.stdout
