"""The service recovers from a projector failure by itself (real Kafka, PostgreSQL and
gRPC): reads fail closed while the projector is down, then answer again."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ledger.policy import Reason
from ledger.ports import Stream
from services.adapters.postgres_view import PostgresConsentView
from services.wire import api as wire
from tests.e2e.harness import client, define, kafka_settings, opt_in, running, service_settings, ts

pytestmark = pytest.mark.asyncio(loop_scope="session")

PHONE = "+14155552671"  # Los Angeles


def afternoon_in_los_angeles() -> datetime:
    """The next 20:00 UTC at least ten minutes ahead, so quiet hours never decide. Ahead,
    not behind: a past moment is answered in hindsight, where the campaign and opt-in
    recorded now, after it, count against it."""
    now = datetime.now(UTC) + timedelta(minutes=10)
    moment = now.replace(hour=20, minute=0, second=0, microsecond=0)
    return moment if moment >= now else moment + timedelta(days=1)


async def test_a_failed_projector_is_started_again_and_the_failure_counted(
    tmp_path, postgres_dsn, kafka_bootstrap, monkeypatch
):
    base = service_settings(
        tmp_path,
        postgres_dsn,
        kafka=kafka_settings(kafka_bootstrap, f"rec-{uuid.uuid4().hex[:8]}."),
    )
    settings = dataclasses.replace(
        base, freshness=dataclasses.replace(base.freshness, wait_bound=0.3)
    )
    at = afternoon_in_los_angeles()
    real_apply = PostgresConsentView.apply
    failures: list[int] = []

    async def apply_failing_once(self, stream, batch, **options):  # the database goes away once
        if stream is Stream.SUBSCRIBERS and not failures:
            failures.append(len(batch))
            raise ConnectionResetError("the view's database went away")
        await real_apply(self, stream, batch, **options)

    async with running(settings) as runtime, client(runtime.address) as c:
        now = datetime.now(UTC)
        defined = await c.DefineCampaign(define("acme", "promo", now - timedelta(days=1)))
        # The opt-in's write checks the campaign against the view within the short bound
        # set above, so let the view apply the campaign first, however busy the machine.
        await applied(c, defined.consistency_token)
        monkeypatch.setattr(PostgresConsentView, "apply", apply_failing_once)
        w = await c.RecordOptIn(opt_in(PHONE, "acme", "promo", now - timedelta(minutes=5)))
        check = api.CanSendRequest(
            phone=PHONE,
            brand="acme",
            campaign="promo",
            at=ts(at),
            at_least_as_fresh=w.consistency_token,
        )
        answers = []
        deadline = asyncio.get_running_loop().time() + 30
        while asyncio.get_running_loop().time() < deadline:
            answer = await c.CanSend(check)
            answers.append(answer.reason)
            if answer.allowed:
                break
            await asyncio.sleep(0.1)
        assert failures == [1], "the failure was never injected"
        assert answer.allowed, f"never answered again: {answers[-3:]}"
        not_consistent = wire.REASONS.to_proto(Reason.NOT_CONSISTENT)
        assert set(answers[:-1]) <= {not_consistent}  # while down: fail closed, no guess
    # From a thread, as a scrape: a metric read on the loop waits on the loop.
    exposition = (await asyncio.to_thread(generate_latest, runtime.metrics.registry())).decode()
    counted = {
        s.name: s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
    }
    assert counted["consent_projector_failures_total"] == 1


async def applied(c, token: str, within: float = 30.0) -> None:
    """Wait until the view has applied ``token``: a read that asks for it is answered."""
    deadline = asyncio.get_running_loop().time() + within
    probe = api.GetConsentRequest(phone=PHONE, brand="acme", campaign="promo")
    probe.at_least_as_fresh = token
    while True:
        try:
            await c.GetConsent(probe)
            return
        except grpc.aio.AioRpcError as e:
            if e.code() is not grpc.StatusCode.UNAVAILABLE:
                raise
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"the view never applied {token}") from e
            await asyncio.sleep(0.1)
