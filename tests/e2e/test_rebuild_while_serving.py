"""``consent-ledger rebuild`` while ``serve`` runs on the same database: the serving
process loads its digest replica afresh, and sets its heap up for serving again
as it did at its start (real PostgreSQL, the local ledger table)."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.e2e.harness import write_tokens

ROOT = Path(__file__).resolve().parents[2]
HEAP_LINE = "heap"  # settle_heap's log line: "heap: N MiB ..." or "heap left in small pages"


def test_a_rebuild_sets_the_serving_heap_up_again(tmp_path, postgres_dsn) -> None:
    env = {
        **os.environ,
        "CONSENT_LEDGER": "postgres",
        "CONSENT_POSTGRES_DSN": postgres_dsn,
        "CONSENT_AUTH_TOKENS_FILE": str(write_tokens(tmp_path / "tokens.json")),
        "CONSENT_DATA_DIR": str(tmp_path / "data"),
        "CONSENT_GRPC_LISTEN": "127.0.0.1:0",
    }
    serve = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "serve"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert serve.stdout is not None
    reader = threading.Thread(target=lambda: [lines.put(line) for line in serve.stdout or ()])
    reader.start()

    def wait_for(text: str, timeout: float = 60) -> list[str]:
        seen, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                if serve.poll() is not None:
                    break
                continue
            seen.append(line)
            if text in line:
                return seen
        pytest.fail(f"no {text!r} from serve; it said: {''.join(seen)}")

    try:
        started = wait_for("serving gRPC")  # after the start's own set-up of the heap
        rebuilt = subprocess.run(
            [sys.executable, "-m", "services.cli", "rebuild"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
        # The replica sees the rebuild's new epoch at its next refresh (every 50 ms).
        again = wait_for(HEAP_LINE)
        assert sum(HEAP_LINE in line for line in started) == 1
        assert HEAP_LINE in again[-1]
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(60)
        reader.join(10)
    assert serve.returncode == 0
