"""A start that cannot succeed: it says what failed and which setting to look at, and
it stops what it had started (real PostgreSQL; Kafka where a broker is the point)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from services.bootstrap import Runtime, StartError
from services.settings import KafkaLedgerSettings
from tests.e2e.harness import service_settings, write_tokens

pytestmark = pytest.mark.asyncio(loop_scope="session")

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def taken_port() -> Iterator[str]:
    """A loopback address that something else is listening on."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield f"127.0.0.1:{taken.getsockname()[1]}"


def closed_port() -> str:
    """A loopback address that nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def bindable(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket() as probe:
        try:
            probe.bind((host, int(port)))
        except OSError:
            return False
    return True


async def test_a_grpc_address_in_use_stops_the_start_and_releases_what_had_started(
    tmp_path, postgres_dsn
):
    metrics = closed_port()  # served before gRPC binds: it must be let go again
    with taken_port() as grpc_address:
        settings = dataclasses.replace(
            service_settings(tmp_path, postgres_dsn, kafka=None),
            listen=grpc_address,
            metrics_listen=metrics,
        )
        runtime = Runtime(settings)
        refused = f"cannot serve gRPC on {grpc_address}: .*CONSENT_GRPC_LISTEN"
        with pytest.raises(StartError, match=refused):
            await runtime.start()
    assert runtime.server is None
    assert runtime.pool is not None and runtime.pool.is_closing()
    assert runtime.reads is not None and runtime.reads.is_closing()
    assert bindable(metrics), "the metrics server was left running"


async def test_a_metrics_port_in_use_stops_the_start_with_the_setting_named(tmp_path, postgres_dsn):
    with taken_port() as address:
        settings = service_settings(tmp_path, postgres_dsn, kafka=None)
        runtime = Runtime(dataclasses.replace(settings, metrics_listen=address))
        refused = f"cannot serve metrics on {address} .*CONSENT_METRICS_LISTEN"
        with pytest.raises(StartError, match=refused):
            await runtime.start()
    assert runtime.server is None  # gRPC never started serving
    assert runtime.pool is not None and runtime.pool.is_closing()


async def test_an_unreachable_kafka_stops_the_start_with_the_setting_named(tmp_path, postgres_dsn):
    kafka = KafkaLedgerSettings(
        bootstrap_servers=closed_port(), replication_factor=1, min_insync_replicas=1
    )
    runtime = Runtime(service_settings(tmp_path, postgres_dsn, kafka=kafka))
    refused = f"cannot use Kafka at {kafka.bootstrap_servers} \\(CONSENT_KAFKA_BOOTSTRAP\\)"
    with pytest.raises(StartError, match=refused):
        await runtime.start()
    assert runtime.ledger is None and runtime.server is None
    assert runtime.pool is not None and runtime.pool.is_closing()


async def test_an_unreachable_postgresql_stops_the_start_with_the_setting_named(tmp_path):
    dsn = f"postgresql://consent@{closed_port()}/consent"
    runtime = Runtime(service_settings(tmp_path, dsn, kafka=None))
    with pytest.raises(StartError, match=r"cannot use PostgreSQL \(CONSENT_POSTGRES_DSN\)"):
        await runtime.start()
    assert runtime.pool is None and runtime.server is None


async def test_the_command_line_says_why_it_cannot_start_without_a_traceback(tmp_path):
    env = {
        **os.environ,
        "CONSENT_KAFKA_BOOTSTRAP": closed_port(),
        "CONSENT_POSTGRES_DSN": f"postgresql://consent@{closed_port()}/consent",
        "CONSENT_AUTH_TOKENS_FILE": str(write_tokens(tmp_path / "tokens.json")),
        "CONSENT_DATA_DIR": str(tmp_path),
    }
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "services.cli", "serve"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert "consent-ledger: cannot start: cannot use PostgreSQL (CONSENT_POSTGRES_DSN)" in (
        done.stderr
    )
    assert "Traceback" not in done.stderr


async def test_the_removed_postgres_read_mode_is_refused_at_start(tmp_path):
    env = {
        **os.environ,
        "CONSENT_CANSEND_READS": "postgres",
        "CONSENT_AUTH_TOKENS_FILE": str(write_tokens(tmp_path / "tokens.json")),
        "CONSENT_DATA_DIR": str(tmp_path),
    }
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "services.cli", "serve", "--embedded"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "CONSENT_CANSEND_READS='postgres' is no longer supported" in done.stderr
    assert "Traceback" not in done.stderr
    # Refused before anything started: no database was made in the data directory.
    assert [p.name for p in tmp_path.iterdir()] == ["tokens.json"]


async def test_json_logs_are_one_object_per_line_the_failed_start_included(tmp_path):
    env = {
        **os.environ,
        "CONSENT_LOG_FORMAT": "json",
        "CONSENT_KAFKA_BOOTSTRAP": closed_port(),
        "CONSENT_POSTGRES_DSN": f"postgresql://consent@{closed_port()}/consent",
        "CONSENT_AUTH_TOKENS_FILE": str(write_tokens(tmp_path / "tokens.json")),
    }
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "services.cli", "-v", "serve"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    records = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]
    assert records, done.stderr
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    failed = records[-1]
    assert failed["level"] == "ERROR" and failed["logger"] == "consent-ledger"
    assert failed["message"].startswith("cannot start: cannot use PostgreSQL")
    traced = [r for r in records if r["message"] == "the start failed"]  # -v: the cause too
    assert traced and "ConnectionRefusedError" in traced[0]["exc_info"]


def _serve(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli", "serve", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _serving(proc: subprocess.Popen[str]) -> str:
    """The address ``proc`` serves on, once it says so."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if "serving gRPC on " in line:
            return line.split("serving gRPC on ", 1)[1].split()[0]
    raise AssertionError(f"the first instance exited with {proc.wait()} before serving")


def _stopped(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


def _refused(env: dict[str, str], *args: str) -> str:
    """What a second instance prints when it refuses to start (it must, with status 1)."""
    proc = _serve(env, *args)
    try:
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            _stopped(proc)
    assert proc.returncode == 1, out
    assert "Traceback" not in out
    return out


async def test_a_second_instance_on_the_same_data_directory_refuses_to_start(tmp_path):
    # The embedded PostgreSQL under it was found running and used: two services on
    # one database, and nothing said so.
    data = tmp_path / "data"
    env = {"CONSENT_DATA_DIR": str(data), "CONSENT_GRPC_LISTEN": "127.0.0.1:0"}
    env["CONSENT_METRICS_LISTEN"] = "127.0.0.1:0"
    first = _serve(env, "--embedded")
    try:
        await asyncio.to_thread(_serving, first)
        out = await asyncio.to_thread(_refused, env, "--embedded")
        assert "consent-ledger: cannot start: the data directory" in out
        assert f"{data} (CONSENT_DATA_DIR) is in use by another consent-ledger" in out
        assert f"(process {first.pid})" in out
        assert first.poll() is None, "the first instance must keep serving"
    finally:
        await asyncio.to_thread(_stopped, first)
    # Once the first is gone, the directory is free again.
    again = _serve(env, "--embedded")
    try:
        await asyncio.to_thread(_serving, again)
    finally:
        await asyncio.to_thread(_stopped, again)


async def test_a_second_instance_on_the_same_port_refuses_to_start_unless_sharing_is_asked(
    tmp_path, postgres_dsn
):
    address = closed_port()
    env = {
        "CONSENT_LEDGER": "postgres",
        "CONSENT_POSTGRES_DSN": postgres_dsn,
        "CONSENT_AUTH_TOKENS_FILE": str(write_tokens(tmp_path / "tokens.json")),
        "CONSENT_DATA_DIR": str(tmp_path),
        "CONSENT_GRPC_LISTEN": address,
    }
    first = _serve(env)
    try:
        assert await asyncio.to_thread(_serving, first) == address
        out = await asyncio.to_thread(_refused, env)
        assert f"cannot start: cannot serve gRPC on {address}: the address is in use" in out
        assert "CONSENT_GRPC_REUSE_PORT=true" in out
        # Sharing asked for by one alone is no sharing: the kernel wants both to ask.
        out = await asyncio.to_thread(_refused, {**env, "CONSENT_GRPC_REUSE_PORT": "true"})
        assert f"cannot serve gRPC on {address}" in out
    finally:
        await asyncio.to_thread(_stopped, first)
    shared = {**env, "CONSENT_GRPC_REUSE_PORT": "true"}
    first, second = _serve(shared), None
    try:
        assert await asyncio.to_thread(_serving, first) == address
        second = _serve(shared)
        assert await asyncio.to_thread(_serving, second) == address
    finally:
        for proc in (first, second):
            if proc is not None:
                await asyncio.to_thread(_stopped, proc)
