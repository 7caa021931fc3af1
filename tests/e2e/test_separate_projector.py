"""``serve`` with ``CONSENT_PROJECTOR=off`` beside a ``consent-ledger project``
process, on the real broker and database: writes become answerable through the
projector process alone, a dead projector makes reads that need its work fail
closed, and one started again catches up with nothing lost. The embedded default
(``CONSENT_PROJECTOR`` unset) stays one process that projects for itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.bootstrap import PROCESS_HEALTH, Runtime
from services.settings import FreshnessSettings, Settings
from tests.e2e.harness import (
    Client,
    client,
    define,
    kafka_ledger_env,
    kafka_settings,
    noon_in_los_angeles,
    opt_in,
    opt_out,
)
from tests.e2e.harness import service_settings as harness_settings

pytestmark = pytest.mark.asyncio(loop_scope="session")
ROOT = Path(__file__).resolve().parents[2]
CAUGHT_UP_WITHIN = 90.0
"""A bound for a restarted projector to rejoin its group and catch up, so that a
broken one fails the test instead of hanging it; not a speed claim."""


def serving_settings(tmp: Path, dsn: str, bootstrap: str | None, **changes: Any) -> Settings:
    kafka = kafka_settings(bootstrap, f"sep-{uuid.uuid4().hex[:8]}.") if bootstrap else None
    settings = harness_settings(tmp, dsn, kafka=kafka)
    # A read the dead projector cannot serve waits a second, not five, to fail closed.
    fresh = FreshnessSettings(refresh_interval=0.05, wait_bound=1.0)
    return dataclasses.replace(settings, freshness=fresh, **changes)


def projector_env(settings: Settings, **more: str) -> dict[str, str]:
    """The environment of a ``project`` process with ``settings``' ledger and view;
    ``more`` adds settings."""
    env = {
        **os.environ,
        "CONSENT_LEDGER": settings.ledger,
        "CONSENT_POSTGRES_DSN": settings.postgres_dsn or "",
        "CONSENT_PROJECTOR_GROUP": settings.projector_group,
        "CONSENT_HEALTH_LISTEN": "127.0.0.1:0",
        "CONSENT_METRICS_LISTEN": "127.0.0.1:0",
        **more,
    }
    env.pop("CONSENT_AUTH_TOKENS_FILE", None)  # it serves no API: it needs none
    if settings.kafka is not None:
        env |= kafka_ledger_env(settings.kafka)
    return env


@dataclasses.dataclass
class ProjectorProcess:
    proc: subprocess.Popen[str]
    health: str
    metrics: str

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=10) as answer:
            return str(answer.read().decode())

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)

    def stop(self) -> str:
        """SIGTERM, and what it printed; it must end cleanly."""
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, out
        return out


def start_projector(settings: Settings, **more: str) -> ProjectorProcess:
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "project"],
        cwd=ROOT,
        env=projector_env(settings, **more),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    seen, health, metrics = [], "", ""
    for line in proc.stdout:
        seen.append(line)
        if m := re.search(r"gRPC health checks \(plaintext\) on (\S+)", line):
            health = m.group(1)
        if m := re.search(r"Prometheus metrics on http://(\S+)/metrics", line):
            metrics = m.group(1)
        if health and metrics:
            assert any("consent-ledger projecting the ledger" in s for s in seen), seen
            return ProjectorProcess(proc, health, metrics)
    raise AssertionError(f"project exited with {proc.wait()} before projecting: {''.join(seen)}")


@contextmanager
def projector(settings: Settings, **more: str) -> Iterator[ProjectorProcess]:
    started = start_projector(settings, **more)
    try:
        yield started
    finally:
        if started.proc.poll() is None:
            started.kill()


@asynccontextmanager
async def serving(settings: Settings, when: datetime) -> AsyncIterator[Runtime]:
    runtime = Runtime(settings, clock=lambda: when)
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()


async def check(c: Client, phone: str, token: str = "") -> Any:
    return await c.CanSend(
        api.CanSendRequest(phone=phone, brand="acme", campaign="promo", at_least_as_fresh=token)
    )


async def eventually_answered(c: Client, phone: str, token: str) -> Any:
    """The check of ``phone`` with ``token`` once the view has applied it."""
    deadline = asyncio.get_running_loop().time() + CAUGHT_UP_WITHIN
    while True:
        answer = await check(c, phone, token)
        if answer.reason != api.REASON_NOT_CONSISTENT:
            return answer
        assert asyncio.get_running_loop().time() < deadline, "the projector never caught up"


async def health_of(address: str, service: str = "") -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service)
        )
        return int(answer.status)


def projects_in_process(runtime: Runtime) -> bool:
    return any(task.get_name() == "projector" for task in runtime._tasks)


async def test_writes_are_answered_through_a_separate_projector_which_fails_closed_and_catches_up(
    tmp_path, postgres_dsn, kafka_bootstrap
):
    when = noon_in_los_angeles()
    settings = serving_settings(tmp_path, postgres_dsn, kafka_bootstrap, projector="off")
    async with serving(settings, when) as service, client(service.address, "acme-app") as app:
        assert not projects_in_process(service)
        with projector(settings) as first:
            assert await health_of(first.health) == health_pb2.HealthCheckResponse.SERVING
            async with client(service.address) as admin:
                defined = await admin.DefineCampaign(define("acme", "promo", when - timedelta(1)))
            # Only the project process applies anything: the token is answered once it has.
            await eventually_answered(app, "+14155550000", defined.consistency_token)
            phone = "+14155552800"
            granted = await app.RecordOptIn(opt_in(phone, "acme", "promo", when))
            answer = await eventually_answered(app, phone, granted.consistency_token)
            assert answer.allowed, answer
            scraped = first.metrics_text()
            assert "consent_projection_lag_events" in scraped
            assert "consent_projector_failures_total 0.0" in scraped

            first.kill()  # as a crashed pod: no goodbye to its consumer group
        # With no projector, the STOP is acknowledged (the ledger has it) but the view
        # never sees it: the number must not be allowed, with its token or without.
        revoked = await app.RecordOptOut(
            opt_out(
                phone, "acme", "promo", when, channel=lpb.REVOCATION_CHANNEL_KEYWORD, text="STOP"
            )
        )
        while_down = {
            f"+1415555{2810 + i:04d}": (
                await app.RecordOptIn(opt_in(f"+1415555{2810 + i:04d}", "acme", "promo", when))
            ).consistency_token
            for i in range(20)
        }
        await asyncio.sleep(4 * settings.freshness.refresh_interval)
        for token in ("", revoked.consistency_token):
            stale = await check(app, phone, token)
            assert not stale.allowed and stale.reason == api.REASON_NOT_CONSISTENT, stale
        unseen = await check(app, "+14155552810", while_down["+14155552810"])
        assert not unseen.allowed and unseen.reason == api.REASON_NOT_CONSISTENT

        with projector(settings) as second:
            answer = await eventually_answered(app, phone, revoked.consistency_token)
            assert not answer.allowed and answer.reason == api.REASON_REVOKED, answer
            for number, token in while_down.items():  # nothing written meanwhile is lost
                answer = await eventually_answered(app, number, token)
                assert answer.allowed, (number, answer)
            assert not (await check(app, phone)).allowed  # and without a token too
            out = second.stop()
        assert "shutting down the projector" in out
        assert "Traceback" not in out


async def test_the_postgres_ledger_can_be_projected_by_a_separate_process_too(
    tmp_path, postgres_dsn
):
    when = noon_in_los_angeles()
    settings = serving_settings(tmp_path, postgres_dsn, None, projector="off")
    async with serving(settings, when) as service, client(service.address, "acme-app") as app:
        with projector(settings, CONSENT_GRPC_MAX_CONNECTION_IDLE_S="1") as separate:
            async with client(service.address) as admin:
                await admin.DefineCampaign(define("acme", "promo", when - timedelta(1)))
            granted = await app.RecordOptIn(opt_in("+14155552900", "acme", "promo", when))
            answer = await eventually_answered(app, "+14155552900", granted.consistency_token)
            assert answer.allowed, answer
            # Its health port, which takes no token, holds a connection to the
            # serving port's limits: one with no call is closed past the idle limit.
            async with grpc.aio.insecure_channel(separate.health) as channel:
                await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
                async with asyncio.timeout(5):
                    while channel.get_state() == grpc.ChannelConnectivity.READY:
                        await asyncio.sleep(0.05)
            separate.stop()


async def test_by_default_serve_projects_in_its_own_process(tmp_path, postgres_dsn):
    """What ``make run`` gets: no setting, no second process, writes answered."""
    when = noon_in_los_angeles()
    settings = serving_settings(tmp_path, postgres_dsn, None)
    assert settings.projector == "in-process"
    assert Settings.from_env({}, embedded=True).projector == "in-process"
    async with serving(settings, when) as service, client(service.address, "acme-app") as app:
        assert projects_in_process(service)
        async with client(service.address) as admin:
            await admin.DefineCampaign(define("acme", "promo", when - timedelta(1)))
        granted = await app.RecordOptIn(opt_in("+14155552901", "acme", "promo", when))
        answer = await check(app, "+14155552901", granted.consistency_token)
        assert answer.allowed, answer


async def test_a_projector_process_is_not_ready_while_its_failed_projector_waits(
    tmp_path, postgres_dsn
):
    """Its readiness follows the projector: NOT_SERVING from a failure (here the
    view's positions table gone) until a start that works; its liveness does not."""
    when = noon_in_los_angeles()
    settings = serving_settings(tmp_path, postgres_dsn, None, projector="off")
    async with serving(settings, when) as service, client(service.address, "acme-app") as app:
        with projector(settings) as separate:
            await eventually_health(separate.health, "", health_pb2.HealthCheckResponse.SERVING)
            async with client(service.address) as admin:
                await admin.DefineCampaign(define("acme", "promo", when - timedelta(1)))
            conn = await asyncpg.connect(postgres_dsn)
            try:
                await conn.execute("ALTER TABLE projection_offset RENAME TO projection_away")
                granted = await app.RecordOptIn(opt_in("+14155552902", "acme", "promo", when))
                await eventually_health(
                    separate.health, "", health_pb2.HealthCheckResponse.NOT_SERVING
                )
                assert await health_of(separate.health, PROCESS_HEALTH) == (
                    health_pb2.HealthCheckResponse.SERVING
                )
                failures = re.search(
                    r"^consent_projector_failures_total (\S+)$", separate.metrics_text(), re.M
                )
                assert failures is not None and float(failures.group(1)) >= 1
            finally:
                await conn.execute(
                    "ALTER TABLE IF EXISTS projection_away RENAME TO projection_offset"
                )
                await conn.close()
            await eventually_health(separate.health, "", health_pb2.HealthCheckResponse.SERVING)
            answer = await eventually_answered(app, "+14155552902", granted.consistency_token)
            assert answer.allowed, answer
            separate.stop()


async def eventually_health(address: str, service: str, wanted: int) -> None:
    deadline = asyncio.get_running_loop().time() + CAUGHT_UP_WITHIN
    while (status := await health_of(address, service)) != wanted:
        assert asyncio.get_running_loop().time() < deadline, f"health stayed {status}"
        await asyncio.sleep(0.1)
