"""Every wait is bounded on the server, on the real broker and database.

A frozen PostgreSQL (SIGSTOP: connections open, nothing answered) or one stopped
outright, and a broker that is down, must not keep a caller waiting until its own
deadline: the server answers first, fails closed for a check, and says what a
write's caller needs to know (UNAVAILABLE, retry with the same request_id)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from ledger.ports import ConsistencyToken
from services.bootstrap import Runtime
from services.settings import FreshnessSettings
from tests.e2e.harness import client, define, noon_in_los_angeles, opt_in, opt_out, serving
from tests.infra.kafka_broker import KafkaBroker
from tests.infra.postgres_server import PostgresServer, dsn_with_database

pytestmark = pytest.mark.asyncio(loop_scope="session")

DB_TIMEOUT = 1.0
WAIT_BOUND = 0.5
CLIENT_DEADLINE = 8.0
ANSWERED_WITHIN = DB_TIMEOUT + WAIT_BOUND + 1.5
"""The server's bounds and some slack for a loaded machine; far below the deadline."""
PHONES = [f"+1415555{3000 + i:04d}" for i in range(4)]


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL of this module's own, to freeze and stop without touching the
    suite's shared one."""
    folder = Path(tempfile.mkdtemp(prefix="consent-test-frozen-"))
    server = PostgresServer(folder)
    server.start()
    yield server
    _signal_all(server, signal.SIGCONT)
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


def _signal_all(server: PostgresServer, sig: signal.Signals) -> None:
    for p in server.family():
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, sig)


@contextlib.contextmanager
def frozen(server: PostgresServer) -> Iterator[None]:
    _signal_all(server, signal.SIGSTOP)
    try:
        yield
    finally:
        _signal_all(server, signal.SIGCONT)


def error_info(err: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(err)
    reasons = []
    for detail in status.details if status else []:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            reasons.append(info.reason)
    return reasons


def retry_info(err: grpc.aio.AioRpcError) -> list[float]:
    status = rpc_status.from_call(err)
    delays = []
    for detail in status.details if status else []:
        retry = error_details_pb2.RetryInfo()
        if detail.Unpack(retry):
            delays.append(retry.retry_delay.ToTimedelta().total_seconds())
    return delays


@contextlib.asynccontextmanager
async def service(
    tmp_path: Path, dsn: str, bootstrap: str, **changes: Any
) -> AsyncIterator[Runtime]:
    """A service with a campaign, numbers opted in and the first opted out, all
    applied; its reads then wait for the view at most ``WAIT_BOUND``. ``changes`` to
    its settings."""
    when = noon_in_los_angeles()
    campaign = define("acme", "promo", when - timedelta(days=1))
    async with serving(
        tmp_path, dsn, bootstrap, name="bw", clock=lambda: when, campaigns=[campaign],
        postgres_timeout=DB_TIMEOUT, **changes,
    ) as runtime:  # fmt: skip
        async with client(runtime.address, "acme-app") as c:
            writes = [await c.RecordOptIn(opt_in(p, "acme", "promo", when)) for p in PHONES]
            writes.append(await c.RecordOptOut(opt_out(PHONES[0], "acme", "promo", when)))
        for w in writes:
            token = ConsistencyToken.decode(w.consistency_token)
            assert await runtime.guard.wait_for_token(token, 10)
        runtime.guard._settings = FreshnessSettings(refresh_interval=0.05, wait_bound=WAIT_BOUND)
        yield runtime


async def _timed(call: asyncio.Future | object) -> tuple[object, float]:
    started = time.monotonic()
    try:
        result = await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as err:
        result = err
    return result, time.monotonic() - started


async def _checks_fail_closed_within_the_bound(c, when_frozen: str) -> None:  # type: ignore[no-untyped-def]
    answers = await asyncio.gather(
        *(
            _timed(
                c.CanSend(
                    api.CanSendRequest(phone=phone, brand="acme", campaign="promo"),
                    timeout=CLIENT_DEADLINE,
                )
            )
            for phone in PHONES * 3
        )
    )
    for (answer, took), phone in zip(answers, PHONES * 3, strict=True):
        assert took < ANSWERED_WITHIN, f"CanSend {when_frozen} took {took:.1f} s"
        assert isinstance(answer, api.CanSendResponse), f"CanSend {when_frozen}: {answer}"
        if phone == PHONES[0]:
            assert not answer.allowed, "an acknowledged opt-out was not honoured"


async def test_a_frozen_or_stopped_database_answers_every_call_within_its_bound(
    tmp_path, private_postgres, kafka_bootstrap
):
    name = f"frozen_{uuid.uuid4().hex[:8]}"
    dsn = await private_postgres.create_database(name)
    assert dsn == dsn_with_database(private_postgres.dsn, name)
    async with (
        service(tmp_path, dsn, kafka_bootstrap) as runtime,
        client(runtime.address, "acme-app") as c,
    ):
        ok = await c.CanSend(api.CanSendRequest(phone=PHONES[1], brand="acme", campaign="promo"))
        assert ok.allowed

        with frozen(private_postgres):
            await asyncio.sleep(0.2)  # past the last observation's interval
            await _checks_fail_closed_within_the_bound(c, "while PostgreSQL is frozen")
            # A write's first look (was this request recorded?) reads the view.
            stop, took = await _timed(
                c.RecordOptOut(
                    opt_out(PHONES[1], "acme", "promo", noon_in_los_angeles()),
                    timeout=CLIENT_DEADLINE,
                )
            )
            assert took < ANSWERED_WITHIN, f"a write took {took:.1f} s"
            assert isinstance(stop, grpc.aio.AioRpcError), stop
            assert stop.code() is grpc.StatusCode.UNAVAILABLE
            audit, took = await _timed(
                c.GetConsent(
                    api.GetConsentRequest(phone=PHONES[2], brand="acme", campaign="promo"),
                    timeout=CLIENT_DEADLINE,
                )
            )
            assert took < ANSWERED_WITHIN, f"an audit read took {took:.1f} s"
            assert isinstance(audit, grpc.aio.AioRpcError), audit
            assert audit.code() is grpc.StatusCode.UNAVAILABLE

        # Thawed, it answers again; then stopped outright, still within the bound.
        await _eventually_allowed(c, PHONES[3])
        await asyncio.to_thread(private_postgres.halt)
        try:
            await _checks_fail_closed_within_the_bound(c, "while PostgreSQL is stopped")
        finally:
            await asyncio.to_thread(private_postgres.restart)
        await _eventually_allowed(c, PHONES[3])
        revoked = await c.CanSend(
            api.CanSendRequest(phone=PHONES[0], brand="acme", campaign="promo")
        )
        assert not revoked.allowed and revoked.reason == api.REASON_REVOKED
    await private_postgres.drop_database(name)


async def _eventually_allowed(c, phone: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 30
    while True:
        answer = await c.CanSend(api.CanSendRequest(phone=phone, brand="acme", campaign="promo"))
        if answer.allowed:
            return
        assert time.monotonic() < deadline, f"still {api.Reason.Name(answer.reason)}"
        await asyncio.sleep(0.2)


async def test_a_write_held_by_a_down_broker_is_answered_before_the_caller_s_deadline(
    tmp_path, postgres_dsn, private_kafka_broker: KafkaBroker
):
    """The answer says the outcome is unknown and how to retry; the retry with the
    same request_id, once the broker is back, records the opt-out once."""
    bootstrap = private_kafka_broker.bootstrap_servers
    async with (
        service(tmp_path, postgres_dsn, bootstrap) as runtime,
        client(runtime.address, "acme-app") as c,
    ):
        await asyncio.to_thread(private_kafka_broker.stop)
        # Brand-wide: no campaign to look up, so the write goes straight to the ledger.
        stop = opt_out(PHONES[1], "acme", None, noon_in_los_angeles(), request_id="stop-held")
        failed, took = await _timed(c.RecordOptOut(stop, timeout=3))
        assert isinstance(failed, grpc.aio.AioRpcError), failed
        assert failed.code() is grpc.StatusCode.UNAVAILABLE, failed  # not DEADLINE_EXCEEDED
        assert took < 3
        assert "retry with the same request_id" in (failed.details() or "")
        assert error_info(failed) == ["OUTCOME_UNKNOWN"]
        assert retry_info(failed) and retry_info(failed)[0] > 0

        await asyncio.to_thread(private_kafka_broker.start)
        deadline = time.monotonic() + 60
        while True:
            try:
                retried = await c.RecordOptOut(stop, timeout=15)
                break
            except grpc.aio.AioRpcError as err:
                assert err.code() is grpc.StatusCode.UNAVAILABLE, err
                assert time.monotonic() < deadline
                await asyncio.sleep(0.5)
        # The projector joins its group again after the broker's restart: meanwhile
        # reads fail closed, which is right; wait for it to catch up.
        applied = ConsistencyToken.decode(retried.consistency_token)
        while not await runtime.guard.wait_for_token(applied, 1):
            assert time.monotonic() < deadline, "the retried opt-out was never applied"
            await asyncio.sleep(0.2)
        answer = await c.CanSend(
            api.CanSendRequest(
                phone=PHONES[1],
                brand="acme",
                campaign="promo",
                at_least_as_fresh=retried.consistency_token,
            ),
            timeout=15,
        )
        assert not answer.allowed and answer.reason == api.REASON_REVOKED_BRAND_WIDE
        events = await c.ListEvents(
            api.ListEventsRequest(
                phone=PHONES[1], brand="acme", at_least_as_fresh=retried.consistency_token
            )
        )
        stops = [e.event.event_id for e in events.events if e.event.event_type == "ConsentRevoked"]
        assert stops == list(retried.event_ids)


async def test_a_check_whose_read_times_out_says_which_bound(
    tmp_path, private_postgres, kafka_bootstrap
):
    """The database freezes after the freshness guard's last look, so a check passes
    the guard and its own read (the campaign's rules, not yet cached) times out: it
    says no, and says why (PostgreSQL did not answer within
    CONSENT_POSTGRES_TIMEOUT_MS), not just "could not answer"."""
    name = f"frozen_{uuid.uuid4().hex[:8]}"
    dsn = await private_postgres.create_database(name)
    async with (
        service(tmp_path, dsn, kafka_bootstrap) as runtime,
        client(runtime.address, "acme-app") as c,
    ):
        # The last observation stays one a read may use while the database is frozen.
        runtime.guard._settings = FreshnessSettings(
            refresh_interval=600, wait_bound=WAIT_BOUND, max_observation_age=600
        )
        with frozen(private_postgres):
            one, took = await _timed(
                c.CanSend(
                    api.CanSendRequest(phone=PHONES[1], brand="acme", campaign="promo"),
                    timeout=CLIENT_DEADLINE,
                )
            )
            batch, _ = await _timed(
                c.CanSendBatch(
                    api.CanSendBatchRequest(
                        phones=[*PHONES, "not a number"], brand="acme", campaign="promo"
                    ),
                    timeout=CLIENT_DEADLINE,
                )
            )
            # With the guard's usual interval, the guard itself cannot look: it says so.
            runtime.guard._settings = FreshnessSettings(
                refresh_interval=0.05, wait_bound=WAIT_BOUND
            )
            behind, _ = await _timed(
                c.CanSend(
                    api.CanSendRequest(phone=PHONES[1], brand="acme", campaign="promo"),
                    timeout=CLIENT_DEADLINE,
                )
            )
            odd, _ = await _timed(
                c.CanSendBatch(
                    api.CanSendBatchRequest(
                        phones=[PHONES[1], "not a number", PHONES[0] + "\n"],
                        brand="acme",
                        campaign="promo",
                    ),
                    timeout=CLIENT_DEADLINE,
                )
            )
        # The entries that are no numbers say so in their places, whatever the store.
        assert isinstance(odd, api.CanSendBatchResponse), odd
        assert [d.reason for d in odd.decisions] == [
            api.REASON_NOT_CONSISTENT,
            api.REASON_INVALID_PHONE,
            api.REASON_INVALID_PHONE,
        ], odd
        assert isinstance(behind, api.CanSendResponse), behind
        assert behind.reason == api.REASON_NOT_CONSISTENT, behind
        assert "CONSENT_FRESHNESS_WAIT_MS" in behind.detail, behind.detail
        assert took < ANSWERED_WITHIN, f"CanSend took {took:.1f} s"
        assert isinstance(one, api.CanSendResponse), one
        assert isinstance(batch, api.CanSendBatchResponse), batch
        assert batch.decisions[-1].reason == api.REASON_INVALID_PHONE, batch
        for answer in [one, *batch.decisions[:-1]]:
            assert not answer.allowed and answer.reason == api.REASON_INTERNAL_ERROR, answer
            assert "did not answer" in answer.detail, answer.detail
            assert "CONSENT_POSTGRES_TIMEOUT_MS" in answer.detail, answer.detail
    await private_postgres.drop_database(name)


async def _health(address: str, service: str = "") -> str:
    async with grpc.aio.insecure_channel(address) as channel:
        answer = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=3
        )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))


async def _health_becomes(address: str, wanted: str, within: float) -> float:
    """Seconds until the readiness status ("") is ``wanted``; the liveness status
    stays SERVING all along."""
    started = time.monotonic()
    while (status := await _health(address)) != wanted:
        assert await _health(address, "liveness") == "SERVING"
        assert time.monotonic() - started < within, f"readiness still {status}"
        await asyncio.sleep(0.1)
    assert await _health(address, "liveness") == "SERVING"
    return time.monotonic() - started


async def test_readiness_is_false_while_checks_fail_closed_and_liveness_stays_true(
    tmp_path, private_postgres, private_kafka_broker: KafkaBroker
):
    """The readiness probe ("" on the health port) must say what CanSend can do: while
    the broker is frozen, or the database is, checks fail closed, so an instance that
    answers SERVING keeps taking traffic it can only refuse. The liveness probe
    ("liveness") stays SERVING: an outage is no reason to restart the process."""
    name = f"ready_{uuid.uuid4().hex[:8]}"
    dsn = await private_postgres.create_database(name)
    broker = private_kafka_broker
    async with (
        service(tmp_path, dsn, broker.bootstrap_servers, health_listen="127.0.0.1:0") as runtime,
        client(runtime.address, "acme-app") as c,
    ):
        health = runtime.server.health_address
        assert health is not None
        await _health_becomes(health, "SERVING", 10)
        assert await _health(health, "consent.v1.ConsentService") == "SERVING"

        pid = broker.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            # An observation older than 2 s is not trusted; the status follows it.
            await _health_becomes(health, "NOT_SERVING", 6)
            assert await _health(health, "consent.v1.ConsentService") == "NOT_SERVING"
            check = await c.CanSend(
                api.CanSendRequest(phone=PHONES[1], brand="acme", campaign="promo")
            )
            assert not check.allowed and check.reason == api.REASON_NOT_CONSISTENT
        finally:
            os.kill(pid, signal.SIGCONT)
        await _health_becomes(health, "SERVING", 30)
        await _eventually_allowed(c, PHONES[1])

        with frozen(private_postgres):
            await _health_becomes(health, "NOT_SERVING", 6)
        await _health_becomes(health, "SERVING", 30)
        await _eventually_allowed(c, PHONES[1])
    await private_postgres.drop_database(name)
