"""``migrate --check``: what an init container runs to wait for the migrate Job
(deploy/k8s). It changes nothing, names what is missing, and with ``--wait`` holds
until ``migrate`` has run. Real PostgreSQL and Kafka, through the command line."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import pytest

from services.adapters.migrations import discover, pending
from tests.e2e.harness import write_tokens

pytestmark = pytest.mark.asyncio(loop_scope="session")

ROOT = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path, dsn: str, bootstrap: str) -> dict[str, str]:
    return {
        **os.environ,
        "CONSENT_LEDGER": "kafka",
        "CONSENT_KAFKA_BOOTSTRAP": bootstrap,
        "CONSENT_KAFKA_TOPIC_PREFIX": f"check-{uuid.uuid4().hex[:8]}.",
        "CONSENT_KAFKA_PARTITIONS": "2",
        "CONSENT_KAFKA_REPLICATION_FACTOR": "1",
        "CONSENT_KAFKA_MIN_INSYNC_REPLICAS": "1",
        "CONSENT_POSTGRES_DSN": dsn,
        "CONSENT_AUTH_TOKENS_FILE": str(write_tokens(tmp_path / "tokens.json")),
    }


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "migrate", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def _pending(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return await pending(conn)
    finally:
        await conn.close()


async def test_check_names_what_is_missing_and_changes_nothing(
    tmp_path, empty_postgres_dsn, kafka_bootstrap
):
    env = _env(tmp_path, empty_postgres_dsn, kafka_bootstrap)
    prefix = env["CONSENT_KAFKA_TOPIC_PREFIX"]

    done = await asyncio.to_thread(_cli, env, "--check")

    assert done.returncode == 1, done.stderr
    first = discover()[0].name
    assert f"migration {first} is not applied" in done.stderr
    assert f"{prefix}consent.subscriber-events.v1: does not exist" in done.stderr
    assert "Traceback" not in done.stderr
    assert await _pending(empty_postgres_dsn) == [m.name for m in discover()]  # nothing applied
    again = await asyncio.to_thread(_cli, env, "--check")  # and no topic was created
    assert f"{prefix}consent.campaign-events.v1: does not exist" in again.stderr


async def test_check_passes_once_migrate_has_run(tmp_path, empty_postgres_dsn, kafka_bootstrap):
    env = _env(tmp_path, empty_postgres_dsn, kafka_bootstrap)

    migrated = await asyncio.to_thread(_cli, env)
    done = await asyncio.to_thread(_cli, env, "--check")

    assert migrated.returncode == 0, migrated.stderr
    assert done.returncode == 0, done.stderr
    assert "schema and topics are in place" in done.stdout
    assert await _pending(empty_postgres_dsn) == []


async def test_check_with_wait_holds_until_migrate_has_run(
    tmp_path, empty_postgres_dsn, kafka_bootstrap
):
    env = _env(tmp_path, empty_postgres_dsn, kafka_bootstrap)
    waiting = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "migrate", "--check", "--wait", "90"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    said: list[str] = []

    def until_waiting() -> None:
        assert waiting.stderr is not None
        for line in waiting.stderr:
            said.append(line)
            if "waiting for migrate" in line:
                return

    try:
        # Once it has said it waits, it must still be running: it did not give up.
        await asyncio.wait_for(asyncio.to_thread(until_waiting), 60)
        assert waiting.poll() is None, (said, waiting.communicate())
        started = time.monotonic()
        migrated = await asyncio.to_thread(_cli, env)
        assert migrated.returncode == 0, migrated.stderr
        out, err = await asyncio.to_thread(waiting.communicate, timeout=60)
        err = "".join(said) + err
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    assert waiting.returncode == 0, err
    assert "schema and topics are in place" in out
    assert "waiting for migrate" in err
    assert time.monotonic() - started < 60


async def test_check_with_a_short_wait_gives_up_naming_the_setting(
    tmp_path, empty_postgres_dsn, kafka_bootstrap
):
    env = _env(tmp_path, empty_postgres_dsn, kafka_bootstrap)
    started = time.monotonic()
    done = await asyncio.to_thread(_cli, env, "--check", "--wait", "3")
    assert done.returncode == 1
    assert "not migrated (run `consent-ledger migrate`), checked for 3 s" in done.stderr
    assert 2 <= time.monotonic() - started < 60
