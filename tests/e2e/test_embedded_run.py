"""``make run``: the embedded default, started exactly as the Makefile starts it,
answered with a real gRPC client, stopped with SIGTERM and started again."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import consent_service_pb2_grpc as api_grpc
from consent.v1 import ledger_pb2 as lpb
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.e2e.harness import Client, define, opt_in

pytestmark = pytest.mark.asyncio(loop_scope="session")
ROOT = Path(__file__).resolve().parents[2]


def start(data_dir: Path) -> tuple[subprocess.Popen[str], str, str, str]:
    env = {
        **os.environ,
        "CONSENT_DATA_DIR": str(data_dir),
        "CONSENT_GRPC_LISTEN": "127.0.0.1:0",
        "CONSENT_METRICS_LISTEN": "127.0.0.1:0",
    }
    env.pop("CONSENT_POSTGRES_DSN", None)
    # The test process turns gRPC's fork handlers off for itself (tests/conftest.py);
    # the service must do so on its own, which the "fork() handlers" check below sees.
    env.pop("GRPC_ENABLE_FORK_SUPPORT", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "serve", "--embedded"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    address = token = metrics = ""
    assert proc.stdout is not None
    for line in proc.stdout:
        if m := re.search(r"serving gRPC on (\S+)", line):
            address = m.group(1)
        if m := re.search(r"Prometheus metrics on (\S+)", line):
            metrics = m.group(1)
        if m := re.search(r"local admin token .*: (\S+)", line):
            token = m.group(1)
        if address and token:
            return proc, address, token, metrics
    raise AssertionError(f"the service exited with {proc.wait()} before serving")


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    return out


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """Outside pytest's base temp, for the reason ``tests.infra.fixtures`` gives."""
    folder = Path(tempfile.mkdtemp(prefix="consent-test-embedded-"))
    yield folder / "data"
    shutil.rmtree(folder, ignore_errors=True)


async def test_make_run_serves_health_reflection_and_the_api_and_keeps_data(data_dir):
    proc, address, token, metrics = await asyncio.to_thread(start, data_dir)
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            answer = await health.Check(
                health_pb2.HealthCheckRequest(service="consent.v1.ConsentService")
            )
            assert answer.status == health_pb2.HealthCheckResponse.SERVING

            reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
            replies = reflect.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
            names = [s.name async for r in replies for s in r.list_services_response.service]
            assert "consent.v1.ConsentService" in names
            # What `grpcurl describe` asks for: the file of a service, a method, a
            # message and an enum; and a clear "not found" for a name that is none.
            symbols = [
                "consent.v1.ConsentService",
                "consent.v1.ConsentService.CanSend",
                "consent.v1.CanSendRequest",
                "consent.v1.Reason",
                "consent.v1.ConsentService.NoSuchMethod",
            ]
            replies = reflect.ServerReflectionInfo(
                iter(
                    [
                        reflection_pb2.ServerReflectionRequest(file_containing_symbol=s)
                        for s in symbols
                    ]
                )
            )
            found = [r async for r in replies]
            files = [
                descriptor_pb2.FileDescriptorProto.FromString(
                    r.file_descriptor_response.file_descriptor_proto[0]
                ).name
                for r in found[:4]
            ]
            assert files == ["consent/v1/consent_service.proto"] * 4
            assert found[4].error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]

            c = Client(api_grpc.ConsentServiceStub(channel), token)
            now = datetime.now(UTC)
            await c.DefineCampaign(
                define(
                    "acme",
                    "receipts",
                    now - timedelta(days=1),
                    purpose=lpb.CAMPAIGN_PURPOSE_INFORMATIONAL,
                )
            )
            w = await c.RecordOptIn(
                opt_in(
                    "+14155552671",
                    "acme",
                    "receipts",
                    now - timedelta(minutes=1),
                    request_id="keep-me",
                )
            )
            r = await c.CanSend(
                api.CanSendRequest(
                    phone="+14155552671",
                    brand="acme",
                    campaign="receipts",
                    at_least_as_fresh=w.consistency_token,
                )
            )
            assert r.allowed, r
        with urllib.request.urlopen(metrics, timeout=10) as scraped:
            text = scraped.read().decode()
        assert re.search(r'consent_cansend_decisions_total\{.*rpc="CanSend".*\} 1\.0', text)
    finally:
        out = await asyncio.to_thread(stop, proc)
    assert "shutting down" in out
    assert "fork() handlers" not in out  # gRPC's warning when pg_ctl forks at shutdown

    rebuilt = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "services.cli", "rebuild", "--embedded"],
        cwd=ROOT,
        env={**os.environ, "CONSENT_DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert "rebuilt the projections from 2 ledger events" in rebuilt.stdout

    proc, address, token2, _ = await asyncio.to_thread(start, data_dir)
    try:
        assert token2 == token  # the local token is kept with the data
        async with grpc.aio.insecure_channel(address) as channel:
            c = Client(api_grpc.ConsentServiceStub(channel), token)
            events = await c.ListEvents(api.ListEventsRequest(phone="+14155552671"))
            assert [e.event.event_type for e in events.events] == ["ConsentGranted"]
    finally:
        await asyncio.to_thread(stop, proc)
