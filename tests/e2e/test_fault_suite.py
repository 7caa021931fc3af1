"""Faults a ledger must survive, on the real broker and database.

The projection database dropped entirely and rebuilt from the ledger answers as
it did before; a service killed (SIGKILL) during writes leaves, once started again,
a projection equal to the ledger and to a rebuild; a broker killed under a stream of
writes loses no
acknowledged write, and a write retried with its request_id is recorded once; in a
three-broker cluster, a partition leader killed under writes loses none either.
(``test_bounded_waits.py`` freezes and stops PostgreSQL under reads and writes.)"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from consent.v1 import consent_service_pb2 as api

from ledger.ports import ConsistencyToken, Stream
from services.adapters.kafka_ledger import KafkaLedger
from services.adapters.postgres_view import PROJECTION_TABLES, PostgresConsentView
from services.bootstrap import Runtime
from services.cli import rebuild
from services.cli.main import _parser
from services.settings import FreshnessSettings, Settings
from tests.e2e.harness import (
    client,
    define,
    kafka_service_env,
    kafka_settings,
    noon_in_los_angeles,
    now,
    opt_in,
    opt_out,
    service_settings,
)
from tests.infra import InfraError
from tests.infra.kafka_broker import KafkaBroker, KafkaCluster
from tests.infra.postgres_server import PostgresServer

pytestmark = pytest.mark.asyncio(loop_scope="session")

WHEN = noon_in_los_angeles()
CAMPAIGNS = ("promo", "news")
REBUILD = _parser().parse_args(["rebuild", "--quiet"])
"""`consent-ledger rebuild --quiet`, as the command line gives it."""


def _settings(tmp: Path, dsn: str, bootstrap: str, prefix: str) -> Settings:
    settings = service_settings(tmp, dsn, kafka=kafka_settings(bootstrap, prefix))
    return dataclasses.replace(
        settings, freshness=FreshnessSettings(refresh_interval=0.05, wait_bound=10)
    )


async def _applied(runtime: Runtime, tokens: list[str]) -> None:
    merged = ConsistencyToken({})
    for t in tokens:
        merged = merged.merge(ConsistencyToken.decode(t))
    deadline = time.monotonic() + 60
    while not await runtime.guard.wait_for_token(merged, 5):
        assert time.monotonic() < deadline, "the view never applied the writes"


async def _history(c: Any, phones: list[str]) -> list[str]:
    """A little of everything: grants, a campaign's STOP, a STOPALL, nothing at all."""
    tokens = []
    for i, phone in enumerate(phones):
        kind = i % 4
        if kind == 3:
            continue  # never opted in
        for campaign in CAMPAIGNS[: 1 if kind == 0 else 2]:
            w = await c.RecordOptIn(opt_in(phone, "acme", campaign, WHEN - timedelta(hours=2)))
            tokens.append(w.consistency_token)
        if kind in (1, 2):
            campaign = "promo" if kind == 1 else None  # None: STOPALL, every campaign
            w = await c.RecordOptOut(opt_out(phone, "acme", campaign, WHEN - timedelta(hours=1)))
            tokens.append(w.consistency_token)
    return tokens


async def _answers(c: Any, phones: list[str]) -> list[Any]:
    """Every answer about the numbers, less the consistency tokens (positions differ
    between a view built as writes came and one rebuilt at once)."""
    found: list[Any] = []
    for phone in phones:
        for campaign in CAMPAIGNS:
            answer = await c.CanSend(
                api.CanSendRequest(phone=phone, brand="acme", campaign=campaign)
            )
            answer.ClearField("consistency_token")
            consent = await c.GetConsent(
                api.GetConsentRequest(phone=phone, brand="acme", campaign=campaign)
            )
            consent.ClearField("consistency_token")
            found += [answer.SerializeToString(deterministic=True), consent.state]
        events = await c.ListEvents(api.ListEventsRequest(phone=phone, brand="acme"))
        found.append(sorted(e.event.event_id for e in events.events))
    return found


async def test_a_dropped_projection_database_is_rebuilt_from_the_ledger_with_the_same_answers(
    tmp_path, postgres_server: PostgresServer, kafka_bootstrap
):
    prefix = f"drop-{uuid.uuid4().hex[:8]}."
    name = f"dropped_{uuid.uuid4().hex[:8]}"
    phones = [f"+1415555{4000 + i:04d}" for i in range(24)]
    dsn = await postgres_server.create_database(name)
    settings = _settings(tmp_path, dsn, kafka_bootstrap, prefix)
    runtime = Runtime(settings, clock=lambda: WHEN)
    await runtime.start()
    try:
        async with client(runtime.address) as c:
            tokens = []
            for campaign in CAMPAIGNS:
                w = await c.DefineCampaign(define("acme", campaign, WHEN - timedelta(days=1)))
                tokens.append(w.consistency_token)
            await _applied(runtime, tokens)
            await _applied(runtime, await _history(c, phones))
            before = await _answers(c, phones)
    finally:
        await runtime.stop()
    allowed = [api.CanSendResponse.FromString(a).allowed for a in before if isinstance(a, bytes)]
    assert any(allowed) and not all(allowed)  # a history worth comparing

    await postgres_server.drop_database(name)  # every table, the offsets with them
    dsn = await postgres_server.create_database(name)
    await rebuild.run(settings, REBUILD)  # what `consent-ledger rebuild` runs

    runtime = Runtime(dataclasses.replace(settings, postgres_dsn=dsn), clock=lambda: WHEN)
    await runtime.start()
    try:
        async with client(runtime.address) as c:
            after = await _answers(c, phones)
    finally:
        await runtime.stop()
    await postgres_server.drop_database(name)
    assert after == before


async def test_writes_through_a_killed_broker_lose_nothing_and_retries_record_once(
    tmp_path, postgres_dsn, private_kafka_broker: KafkaBroker
):
    """Opt-outs stream in while the broker is SIGKILLed and started again; each
    refused one is retried with its request_id until acknowledged. Every number
    ends with exactly one opt-out in its history, and the ledger holds no
    acknowledged opt-out twice in the view."""
    bootstrap = private_kafka_broker.bootstrap_servers
    settings = _settings(tmp_path, postgres_dsn, bootstrap, f"kill-{uuid.uuid4().hex[:8]}.")
    phones = [f"+1415555{5000 + i:04d}" for i in range(40)]
    runtime = Runtime(settings, clock=lambda: WHEN)
    await runtime.start()
    try:
        async with client(runtime.address, "acme-app") as c, client(runtime.address) as admin:
            w = await admin.DefineCampaign(define("acme", "promo", WHEN - timedelta(days=1)))
            await _applied(runtime, [w.consistency_token])
            granted = []
            for phone in phones:
                g = await c.RecordOptIn(opt_in(phone, "acme", "promo", WHEN - timedelta(hours=2)))
                granted.append(g.consistency_token)
            await _applied(runtime, granted)

            acked: dict[str, Any] = {}
            refused = 0

            async def write_all() -> None:
                nonlocal refused
                for i, phone in enumerate(phones):
                    # Brand-wide: straight to the ledger, no campaign to look up.
                    request = opt_out(phone, "acme", None, WHEN, request_id=f"kill-stop-{i}")
                    deadline = time.monotonic() + 90
                    while True:
                        try:
                            acked[phone] = await c.RecordOptOut(request, timeout=5)
                            break
                        except grpc.aio.AioRpcError as err:
                            assert err.code() is grpc.StatusCode.UNAVAILABLE, err
                            assert time.monotonic() < deadline, f"{phone} never acknowledged"
                            refused += 1
                            await asyncio.sleep(0.2)
                    await asyncio.sleep(0.05)

            async def kill_midway() -> None:
                while len(acked) < 10:
                    await asyncio.sleep(0.05)
                await asyncio.to_thread(private_kafka_broker.kill)
                await asyncio.sleep(1)
                await asyncio.to_thread(private_kafka_broker.start)

            await asyncio.wait_for(asyncio.gather(write_all(), kill_midway()), 240)
            await _applied(runtime, [a.consistency_token for a in acked.values()])
            for phone in phones:
                answer = await c.CanSend(
                    api.CanSendRequest(phone=phone, brand="acme", campaign="promo")
                )
                assert answer.reason == api.REASON_REVOKED_BRAND_WIDE, phone
                events = await c.ListEvents(api.ListEventsRequest(phone=phone, brand="acme"))
                stops = [
                    e.event.event_id
                    for e in events.events
                    if e.event.event_type == "ConsentRevoked"
                ]
                assert stops == list(acked[phone].event_ids), phone
    finally:
        await runtime.stop()
    assert refused > 0, "the kill refused no write: it proved nothing"


@pytest.fixture
def kafka_cluster(tmp_path) -> Any:
    cluster = KafkaCluster(tmp_path / "cluster")
    try:
        cluster.start()
    except InfraError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield cluster
    # Thrown away: a controlled shutdown of each node (leaders handed over) is waited
    # for by nothing.
    for node in cluster.nodes.values():
        node.kill()


async def _leaders(bootstrap: str, topic: str) -> dict[int, int]:
    """Partition: the node leading it."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return {p["partition"]: p["leader"] for p in described["partitions"]}


async def test_a_partition_leader_killed_in_a_three_broker_cluster_loses_no_acked_write(
    tmp_path, postgres_dsn, kafka_cluster: KafkaCluster
):
    """Replication factor 3, min.insync.replicas 2, unclean leader election off (the
    service refuses topics without them): the leader of the partitions most opt-outs
    go to is SIGKILLed midway; a new leader that has every acknowledged append takes
    over, and no acknowledged opt-out is lost."""
    bootstrap = kafka_cluster.bootstrap_servers
    kafka = dataclasses.replace(
        kafka_settings(bootstrap, f"ha-{uuid.uuid4().hex[:8]}."),
        replication_factor=3,
        min_insync_replicas=2,
    )
    settings = dataclasses.replace(
        service_settings(tmp_path, postgres_dsn, kafka=kafka),
        freshness=FreshnessSettings(refresh_interval=0.05, wait_bound=10),
    )
    phones = [f"+1415555{6000 + i:04d}" for i in range(30)]
    runtime = Runtime(settings, clock=lambda: WHEN)
    await runtime.start()
    try:
        leaders = await _leaders(bootstrap, kafka.topic(Stream.SUBSCRIBERS))
        victim = max(set(leaders.values()), key=list(leaders.values()).count)
        async with client(runtime.address, "acme-app") as c, client(runtime.address) as admin:
            w = await admin.DefineCampaign(define("acme", "promo", WHEN - timedelta(days=1)))
            await _applied(runtime, [w.consistency_token])
            acked: dict[str, Any] = {}

            async def write_all() -> None:
                for i, phone in enumerate(phones):
                    request = opt_out(phone, "acme", None, WHEN, request_id=f"ha-stop-{i}")
                    deadline = time.monotonic() + 90
                    while True:
                        try:
                            acked[phone] = await c.RecordOptOut(request, timeout=10)
                            break
                        except grpc.aio.AioRpcError as err:
                            assert err.code() is grpc.StatusCode.UNAVAILABLE, err
                            assert time.monotonic() < deadline, f"{phone} never acknowledged"
                            await asyncio.sleep(0.2)
                    await asyncio.sleep(0.05)

            async def kill_the_leader() -> None:
                while len(acked) < 8:
                    await asyncio.sleep(0.05)
                await asyncio.to_thread(kafka_cluster.nodes[victim].kill)

            await asyncio.wait_for(asyncio.gather(write_all(), kill_the_leader()), 240)
            after = await _leaders(bootstrap, kafka.topic(Stream.SUBSCRIBERS))
            assert victim not in after.values()  # every partition it led moved
            await _applied(runtime, [a.consistency_token for a in acked.values()])
            for phone in phones:
                answer = await c.CanSend(
                    api.CanSendRequest(phone=phone, brand="acme", campaign="promo")
                )
                assert answer.reason == api.REASON_REVOKED_BRAND_WIDE, phone
        stored = {
            str(r.event.event_id)
            for p in range(kafka.subscriber_partitions)
            for r in await runtime.ledger.read(Stream.SUBSCRIBERS, p, 0)
        }
        assert {i for a in acked.values() for i in a.event_ids} <= stored
    finally:
        await runtime.stop()


ROOT = Path(__file__).resolve().parents[2]


def _serve(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``consent-ledger serve`` in a process of its own, and the address it serves."""
    out = log.open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "serve"],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    out.close()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if "serving gRPC on " in text:
            return proc, text.rsplit("serving gRPC on ", 1)[1].split()[0]
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"the service did not start:\n{log.read_text(errors='replace')[-3000:]}")


async def _caught_up(ledger: KafkaLedger, view: PostgresConsentView) -> None:
    deadline = time.monotonic() + 60
    while True:
        ends = await ledger.every_end_offset()
        applied = {s: await view.positions(s) for s in Stream}
        if all(
            applied[s].get(p, 0) >= end
            for s, partitions in ends.items()
            for p, end in partitions.items()
        ):
            return
        assert time.monotonic() < deadline, f"the view never caught up: {applied} < {ends}"
        await asyncio.sleep(0.2)


async def test_a_service_killed_during_writes_leaves_a_projection_equal_to_the_ledger(
    tmp_path, postgres_dsn, kafka_bootstrap
):
    """SIGKILL mid-stream: after a restart the view holds exactly the ledger's facts
    (the writes cut off are retried with their request ids), and a ``rebuild`` from
    the ledger gives the very same rows."""
    env = kafka_service_env(
        tmp_path, postgres_dsn, kafka_bootstrap, "svc-kill", CONSENT_FRESHNESS_WAIT_MS="10000"
    )
    prefix = env["CONSENT_KAFKA_TOPIC_PREFIX"]
    log = tmp_path / "serve.log"
    phones = [f"+1415555{7000 + i:04d}" for i in range(200)]
    when = now()  # the service's own clock, this time
    requests = {
        phone: opt_in(phone, "acme", "promo", when - timedelta(hours=1), request_id=f"k-{i}")
        for i, phone in enumerate(phones)
    }
    acked: set[str] = set()
    kafka = kafka_settings(kafka_bootstrap, prefix)
    ledger = KafkaLedger(kafka)
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=2)
    view = PostgresConsentView(pool)
    try:
        proc, address = await asyncio.to_thread(_serve, env, log)
        try:
            async with client(address) as admin:
                await admin.DefineCampaign(define("acme", "promo", when - timedelta(days=1)))
            killed = asyncio.Event()

            async def writer(mine: list[str]) -> None:
                async with client(address) as c:
                    for phone in mine:
                        try:
                            await c.RecordOptIn(requests[phone], timeout=10)
                        except grpc.aio.AioRpcError:
                            if killed.is_set():
                                return
                            raise
                        acked.add(phone)

            async def kill_midway() -> None:
                while len(acked) < 40:
                    await asyncio.sleep(0.01)
                proc.kill()
                killed.set()

            await asyncio.wait_for(
                asyncio.gather(*(writer(phones[i::4]) for i in range(4)), kill_midway()), 120
            )
            proc.wait()
            assert 40 <= len(acked) < len(phones), "the kill did not land mid-stream"

            proc, address = await asyncio.to_thread(_serve, env, tmp_path / "serve-again.log")
            async with client(address) as c:
                for phone in phones:  # the cut-off writes again, unchanged
                    if phone not in acked:
                        await c.RecordOptIn(requests[phone], timeout=20)
            await ledger.start()
            await _caught_up(ledger, view)  # the restarted service's projector
        finally:
            proc.terminate()
            await asyncio.to_thread(proc.wait, 60)
        in_ledger = {
            str(r.event.event_id)
            for s in Stream
            for p in range(kafka.partition_count(s))
            for r in await ledger.read(s, p, 0, 10_000)
        }
        copies = {str(row[0]) for row in await view.table_dump("ledger_event_copy")}
        assert copies == in_ledger
        states = {row[0] for row in await view.table_dump("subscriber_state")}
        assert states == set(phones)
        incremental = {t: await view.table_dump(t) for t in PROJECTION_TABLES}

        settings = Settings.from_env({**env, "CONSENT_GRPC_LISTEN": "127.0.0.1:0"})
        await rebuild.run(settings, REBUILD)
        assert {t: await view.table_dump(t) for t in PROJECTION_TABLES} == incremental
    finally:
        await pool.close()
        await ledger.close()
