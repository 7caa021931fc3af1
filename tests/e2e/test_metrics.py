"""``/metrics``: the service's answers, errors and freshness, scraped over HTTP from a
running service (PostgreSQL ledger and view, real gRPC; Kafka for its producer)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import urllib.request
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from consent.v1 import consent_service_pb2 as api
from consent.v1 import consent_service_pb2_grpc as api_grpc
from prometheus_client.parser import text_string_to_metric_families

from ledger.ports import Stream
from services.adapters.kafka_ledger import topic_configs
from services.settings import KafkaLedgerSettings
from tests.e2e.harness import (
    client,
    define,
    kafka_service_settings,
    opt_in,
    opt_out,
    running,
    service_settings,
    ts,
)
from tests.infra.topic_configs import altered

pytestmark = pytest.mark.asyncio(loop_scope="session")

PHONE = "+14155552671"  # Los Angeles
OTHER = "+12125551234"
HELD = "+13125550142"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(address: str) -> Samples:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def decisions(samples: Samples, rpc: str, allowed: str, reason: str) -> float | None:
    return sample(
        samples, "consent_cansend_decisions_total", rpc=rpc, allowed=allowed, reason=reason
    )


def noon_in_los_angeles() -> datetime:
    """The latest 19:00 UTC at least a minute ago: quiet hours never decide."""
    now = datetime.now(UTC) - timedelta(minutes=1)
    moment = now.replace(hour=19, minute=0, second=0, microsecond=0)
    return moment if moment <= now else moment - timedelta(days=1)


async def test_metrics_count_answers_and_errors_and_show_a_stalled_projection(
    tmp_path, postgres_dsn
):
    base = service_settings(tmp_path, postgres_dsn, kafka=None)
    settings = dataclasses.replace(
        base,
        metrics_listen="127.0.0.1:0",
        freshness=dataclasses.replace(base.freshness, wait_bound=0.3),
    )
    # A moment not past, answered from the facts known now: a past one counts no fact
    # recorded after it for it, and these are recorded now.
    at = noon_in_los_angeles() + timedelta(days=1)
    recorded = datetime.now(UTC) - timedelta(minutes=1)
    async with running(settings) as runtime:
        assert runtime.metrics_address is not None
        async with client(runtime.address) as c:
            await c.DefineCampaign(define("acme", "promo", recorded - timedelta(days=1)))
            w = await c.RecordOptIn(opt_in(PHONE, "acme", "promo", recorded))
            one = await c.CanSend(
                api.CanSendRequest(
                    phone=PHONE,
                    brand="acme",
                    campaign="promo",
                    at=ts(at),
                    at_least_as_fresh=w.consistency_token,
                )
            )
            assert one.allowed
            many = await c.CanSendBatch(
                api.CanSendBatchRequest(
                    phones=[PHONE, OTHER, OTHER], brand="acme", campaign="promo", at=ts(at)
                )
            )
            assert [d.allowed for d in many.decisions] == [True, False, False]
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await c.RecordOptIn(opt_in("not a number", "acme", "promo", recorded))
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        async with client(runtime.address, "globex-app") as globex:
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await globex.CanSend(
                    api.CanSendRequest(phone=PHONE, brand="acme", campaign="promo")
                )
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        async with grpc.aio.insecure_channel(runtime.address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as anonymous:
                await api_grpc.ConsentServiceStub(channel).CanSendBatch(
                    api.CanSendBatchRequest(phones=[PHONE], brand="acme", campaign="promo")
                )
            assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED

        m = await asyncio.to_thread(scrape, runtime.metrics_address)
        assert decisions(m, "CanSend", "true", "consent_active") == 1
        assert decisions(m, "CanSendBatch", "true", "consent_active") == 1
        assert decisions(m, "CanSendBatch", "false", "no_consent") == 2
        assert decisions(m, "CanSend", "false", "not_consistent") is None
        assert sample(m, "consent_rpc_errors_total", rpc="CanSend", code="PERMISSION_DENIED") == 1
        assert (
            sample(m, "consent_rpc_errors_total", rpc="RecordOptIn", code="INVALID_ARGUMENT") == 1
        )
        assert (
            sample(m, "consent_rpc_errors_total", rpc="CanSendBatch", code="UNAUTHENTICATED") == 1
        )
        assert sample(m, "consent_projection_lag_events", stream="subscribers") == 0
        assert sample(m, "consent_projection_lag_events", stream="campaigns") == 0
        age = sample(m, "consent_freshness_observation_age_seconds")
        assert age is not None and 0 <= age < 2
        assert sample(m, "consent_replica_digests") == 1
        loads = sample(m, "consent_replica_loads_total")
        assert loads is not None and loads >= 1
        rss = sample(m, "process_resident_memory_bytes")
        assert rss is not None and rss > 0

        # Every call, by method and status code: counts and a latency histogram.
        svc = "consent.v1.ConsentService"

        def handled(method: str, code: str) -> float | None:
            return sample(
                m, "grpc_server_handled_total",
                grpc_service=svc, grpc_method=method, grpc_type="unary", grpc_code=code,
            )  # fmt: skip

        def timed(method: str, code: str, suffix: str = "count", **le: str) -> float | None:
            return sample(
                m, f"grpc_server_handling_seconds_{suffix}",
                grpc_service=svc, grpc_method=method, grpc_type="unary", grpc_code=code, **le,
            )  # fmt: skip

        assert handled("CanSend", "OK") == 1
        assert handled("CanSend", "PERMISSION_DENIED") == 1
        assert handled("CanSendBatch", "OK") == 1
        assert handled("CanSendBatch", "UNAUTHENTICATED") == 1
        assert handled("RecordOptIn", "OK") == 1
        assert handled("RecordOptIn", "INVALID_ARGUMENT") == 1
        assert handled("DefineCampaign", "OK") == 1
        started = sample(
            m, "grpc_server_started_total", grpc_service=svc, grpc_method="CanSend",
            grpc_type="unary",
        )  # fmt: skip
        assert started == 2
        assert timed("CanSend", "OK") == 1
        assert timed("CanSend", "OK", "bucket", le="+Inf") == 1
        spent = timed("CanSend", "OK", "sum")
        assert spent is not None and 0 < spent < 5
        assert timed("RecordOptIn", "INVALID_ARGUMENT") == 1
        # One append per accepted write (the campaign and the opt-in), timed.
        appends = sample(m, "consent_ledger_append_seconds_count", outcome="ok")
        assert appends == 2
        appended = sample(m, "consent_ledger_append_seconds_sum", outcome="ok")
        assert appended is not None and 0 < appended < 15
        # Lag per partition (every partition of the stream, none behind) and the
        # replica's age: confirmed at the last observation, well under a second ago.
        by_partition = {
            dict(labels)["partition"]: value
            for (name, labels), value in m.items()
            if name == "consent_projection_partition_lag_events"
            and dict(labels)["stream"] == "subscribers"
        }
        assert by_partition and set(by_partition.values()) == {0}
        replica_age = sample(m, "consent_replica_age_seconds")
        assert replica_age is not None and 0 <= replica_age < 2
        assert sample(m, "consent_revocation_candidates_unresolved") == 0

        # An opt-out of a campaign not defined is held for review, not refused: it
        # awaits review (and is not overdue) in the next scrape.
        async with client(runtime.address) as c:
            held = await c.RecordOptOut(opt_out(HELD, "acme", "nope", recorded))
            await c.CanSend(
                api.CanSendRequest(
                    phone=HELD, brand="acme", campaign="promo", at=ts(at),
                    at_least_as_fresh=held.consistency_token,
                )
            )  # fmt: skip
        m = await asyncio.to_thread(scrape, runtime.metrics_address)
        assert sample(m, "consent_revocation_candidates_unresolved") == 1
        assert sample(m, "consent_revocation_candidates_overdue") == 0

        # The projector stops; the ledger takes an opt-out the read model never sees.
        projector = next(t for t in runtime._tasks if t.get_name() == "projector")
        projector.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await projector
        async with client(runtime.address) as c:
            await c.RecordOptOut(opt_out(PHONE, "acme", None, datetime.now(UTC), "stop-1"))
            await runtime.guard.observe()
            stale = await c.CanSend(
                api.CanSendRequest(phone=PHONE, brand="acme", campaign="promo", at=ts(at))
            )
            assert not stale.allowed and stale.reason == api.REASON_NOT_CONSISTENT

        m = await asyncio.to_thread(scrape, runtime.metrics_address)
        assert sample(m, "consent_projection_lag_events", stream="subscribers") == 1
        lagging = [
            (dict(labels)["partition"], value)
            for (name, labels), value in m.items()
            if name == "consent_projection_partition_lag_events"
            and dict(labels)["stream"] == "subscribers"
            and value
        ]
        assert [value for _, value in lagging] == [1]  # the opt-out's partition alone
        assert decisions(m, "CanSend", "false", "not_consistent") == 1
        assert decisions(m, "CanSend", "true", "consent_active") == 1
    with pytest.raises(OSError):  # stopped with the service
        await asyncio.to_thread(scrape, runtime.metrics_address)


async def test_a_kafka_producer_renewed_after_a_refused_write_is_counted(
    tmp_path, postgres_dsn, kafka_bootstrap
):
    """A write the broker refused spends the producer (aiokafka issue #1017), so the
    next write sends with a new one; the scrape counts it, by producer."""
    base = kafka_service_settings(tmp_path, postgres_dsn, kafka_bootstrap)
    settings = dataclasses.replace(base, metrics_listen="127.0.0.1:0")
    kafka = settings.kafka
    assert kafka is not None
    at = noon_in_los_angeles()
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        async with running(settings) as runtime, client(runtime.address) as c:
            await c.DefineCampaign(define("acme", "promo", at - timedelta(days=1)))
            assert runtime.metrics_address is not None
            renewals = "consent_kafka_producer_renewals_total"
            m = await asyncio.to_thread(scrape, runtime.metrics_address)
            assert sample(m, renewals, producer="ledger") == 0

            await _subscriber_topic_limit(admin, kafka, {"max.message.bytes": "100"})
            with pytest.raises(grpc.aio.AioRpcError):
                await c.RecordOptIn(opt_in(PHONE, "acme", "promo", at - timedelta(minutes=5)))
            await _subscriber_topic_limit(admin, kafka, {})
            await c.RecordOptIn(opt_in(OTHER, "acme", "promo", at - timedelta(minutes=5)))
            await c.RecordOptIn(opt_in(PHONE, "acme", "promo", at - timedelta(minutes=5)))

            m = await asyncio.to_thread(scrape, runtime.metrics_address)
            # Two: the limit fell below the producer's batches, so the refused record
            # went again with a producer of smaller batches (4d53ef2); refused again,
            # too large on its own, it spent that one, and the next write made a third.
            assert sample(m, renewals, producer="ledger") == 2
            assert sample(m, renewals, producer="checkpoints") == 0
    finally:
        await admin.close()


async def _subscriber_topic_limit(
    admin: AIOKafkaAdminClient, kafka: KafkaLedgerSettings, changes: dict[str, str]
) -> None:
    """Altering a topic replaces its whole config set: a ledger topic's, with ``changes``."""
    topic = kafka.topic(Stream.SUBSCRIBERS)
    config = {**topic_configs(kafka), **changes}
    await altered(admin, topic, config)
