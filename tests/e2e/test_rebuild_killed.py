"""``consent-ledger rebuild --workers 2`` of a Kafka ledger holding every kind of
event, ended partway by SIGTERM or SIGKILL (a stopped pod, an OOM kill): its
worker processes end with it rather than write on unseen, and the rebuild run
again ends with the tables the incremental projection wrote."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from services.adapters.kafka_ledger import KafkaLedger
from services.adapters.postgres_view import PROJECTION_TABLES, PostgresConsentView
from services.cli.main import INTERRUPTED as INTERRUPTED_CODE
from services.cli.rebuild import INTERRUPTED
from services.projector import Projector
from tests.e2e.test_rebuild_resume import applied, ledger_settings, rebuild_env
from tests.integration.test_projection_every_kind import every_kind

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]


def workers_of(pid: int) -> list[int]:
    """The rebuild's worker processes (not multiprocessing's resource tracker)."""
    found = []
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for child in map(int, children):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"multiprocessing.spawn" in cmdline and b"resource_tracker" not in cmdline:
            found.append(child)
    return found


def running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
async def test_a_killed_rebuild_takes_its_workers_with_it_and_resumes_equal(
    tmp_path: Path, kafka_bootstrap: str, postgres_dsn: str, sig: signal.Signals
) -> None:
    settings = ledger_settings(kafka_bootstrap)
    ledger = KafkaLedger(settings)
    await ledger.ensure_topics()
    await ledger.start()
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=4)
    from services.adapters.migrations import migrate

    await migrate(pool)
    left: list[int] = []
    first: subprocess.Popen[bytes] | None = None
    try:
        events, _, _ = await every_kind()
        await ledger.append(events)
        view = PostgresConsentView(pool)
        await Projector(ledger, view).catch_up(batch_size=150)
        incremental = {table: await view.table_dump(table) for table in PROJECTION_TABLES}
        env = rebuild_env(settings, postgres_dsn, tmp_path)
        command = [sys.executable, "-m", "services.cli", "rebuild", "--quiet", "--workers", "2"]
        first = subprocess.Popen(
            [*command, "--batch-size", "5"],
            cwd=ROOT,
            env=env,
            # Not pipes: a worker outliving the command would hold them open.
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / "first.err").open("w"),
        )
        deadline = time.monotonic() + 120
        workers: list[int] = []
        while len(workers) < 2 or await applied(postgres_dsn) in (0, len(events)):
            assert first.poll() is None, (tmp_path / "first.err").read_text()
            assert time.monotonic() < deadline, "the rebuild's workers applied nothing in 120 s"
            workers = workers_of(first.pid)
            await asyncio.sleep(0.01)
        left = workers
        # The workers held still, so they cannot finish before the signal lands.
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        first.send_signal(sig)
        first.wait(timeout=60)
        if sig == signal.SIGTERM:  # a stopped pod: said as for Ctrl-C
            assert first.returncode == INTERRUPTED_CODE
            assert INTERRUPTED in (tmp_path / "first.err").read_text()
        deadline = time.monotonic() + 30
        while any(map(running, workers)) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not any(map(running, workers)), "the rebuild's workers outlived it"
        stopped_at = await applied(postgres_dsn)
        assert 0 < stopped_at < len(events)

        second = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        assert second.returncode == 0, second.stdout + second.stderr
        for table in PROJECTION_TABLES:
            assert await view.table_dump(table) == incremental[table], table
    finally:
        if first is not None and first.poll() is None:
            first.kill()
            first.wait()
        for pid in left:  # the workers this test started, should they still run
            if running(pid):
                os.kill(pid, signal.SIGKILL)
        await pool.close()
        await asyncio.wait_for(ledger.close(), 30)
