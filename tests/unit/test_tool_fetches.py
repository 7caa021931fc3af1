"""The tools ``make test`` builds with ``go install`` on a fresh machine (grpcurl,
kustomize): a fetch that fails once is tried again, not the end of the run."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy import tools

ROOT = Path(__file__).resolve().parents[2]

# A go that fails its first ``failures`` installs, as a reset connection to the
# module proxy does, then "builds" the binary into $GOBIN; it counts its runs.
FAKE_GO = """#!/bin/sh
runs=$(cat "$RUNS_FILE" 2>/dev/null || echo 0)
runs=$((runs + 1))
echo "$runs" > "$RUNS_FILE"
if [ "$runs" -le "$FAILURES" ]; then
  echo "go: read https://proxy.golang.org/...: connection reset by peer" >&2
  exit 1
fi
module=${2%@*}
case "$module" in */v[0-9]*) module=${module%/v*} ;; esac  # a major version's suffix
name=$(basename "$module")
printf '#!/bin/sh\\n' > "$GOBIN/$name"
chmod +x "$GOBIN/$name"
"""


@pytest.fixture
def fake_go(tmp_path: Path) -> Path:
    """A directory holding only the fake go and the commands the fetches need (so no
    grpcurl installed on this machine short-cuts the script)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    go = bin_dir / "go"
    go.write_text(FAKE_GO)
    go.chmod(0o755)
    for command in ("cat", "mkdir", "seq", "sleep", "basename", "chmod"):
        found = shutil.which(command)
        assert found, f"{command} is not installed"
        (bin_dir / command).symlink_to(found)
    return bin_dir


def _ensure_grpcurl(fake_go: Path, tmp_path: Path, failures: int) -> subprocess.CompletedProcess:
    env = {
        "PATH": str(fake_go),
        "HOME": str(tmp_path),
        "CONSENT_TOOLS_DIR": str(tmp_path / "tools"),
        "RUNS_FILE": str(tmp_path / "runs"),
        "FAILURES": str(failures),
        "ENSURE_RETRY_PAUSE_S": "0",
    }
    return subprocess.run(
        ["/bin/bash", str(ROOT / "scripts" / "ensure_grpcurl.sh")],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_ensure_grpcurl_tries_a_failed_go_install_again(fake_go: Path, tmp_path: Path) -> None:
    done = _ensure_grpcurl(fake_go, tmp_path, failures=2)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / "tools" / "bin" / "grpcurl")
    assert (tmp_path / "runs").read_text().strip() == "3"
    assert "attempt 1 of 3 failed" in done.stderr


def test_ensure_grpcurl_gives_up_after_three_failed_installs(fake_go: Path, tmp_path: Path) -> None:
    done = _ensure_grpcurl(fake_go, tmp_path, failures=5)
    assert done.returncode == 1
    assert done.stdout == ""
    assert (tmp_path / "runs").read_text().strip() == "3"
    assert "go install failed 3 times" in done.stderr


def test_kustomize_tries_a_failed_go_install_again(
    fake_go: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(fake_go))
    monkeypatch.setenv("CONSENT_LEDGER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RUNS_FILE", str(tmp_path / "runs"))
    monkeypatch.setenv("FAILURES", "2")
    monkeypatch.setattr(tools, "RETRY_PAUSE_S", 0.0)

    built = tools.kustomize()

    assert (
        built == tmp_path / "cache" / "tools" / f"kustomize-{tools.KUSTOMIZE_VERSION}" / "kustomize"
    )
    assert os.access(built, os.X_OK)
    assert (tmp_path / "runs").read_text().strip() == "3"


def test_kustomize_gives_up_after_three_failed_installs(
    fake_go: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(fake_go))
    monkeypatch.setenv("CONSENT_LEDGER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("RUNS_FILE", str(tmp_path / "runs"))
    monkeypatch.setenv("FAILURES", "5")
    monkeypatch.setattr(tools, "RETRY_PAUSE_S", 0.0)

    with pytest.raises(tools.ToolError, match="exited 1 3 times"):
        tools.kustomize()
    assert (tmp_path / "runs").read_text().strip() == "3"
