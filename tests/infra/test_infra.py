"""Tests of the real test infrastructure: if these fail, every integration test would lie."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.infra import InfraError
from tests.infra.kafka_broker import REPO_ROOT, KafkaBroker, ensure_jars, kafka_version
from tests.infra.postgres_server import PostgresServer

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


def _topic() -> str:
    return f"infra-{uuid.uuid4().hex[:12]}"


async def _create_topic(bootstrap: str, name: str, configs: dict[str, str] | None = None) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(name, num_partitions=1, replication_factor=1, topic_configs=configs or {})]
        )
    finally:
        await admin.close()


async def _produce(bootstrap: str, topic: str, value: bytes) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        meta = await producer.send_and_wait(topic, value, key=b"k")
    finally:
        await producer.stop()
    return int(meta.offset)


async def _read_all(bootstrap: str, topic: str, expected: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    values: list[bytes] = []
    try:
        async with asyncio.timeout(30):
            while len(values) < expected:
                msg = await consumer.getone()
                assert msg.value is not None
                values.append(msg.value)
    finally:
        await consumer.stop()
    return values


# -- Kafka ------------------------------------------------------------------------------


async def test_produce_and_consume_one_record(kafka_bootstrap: str) -> None:
    topic = _topic()
    await _create_topic(kafka_bootstrap, topic)
    offset = await _produce(kafka_bootstrap, topic, b"consent-granted")
    assert offset == 0
    assert await _read_all(kafka_bootstrap, topic, 1) == [b"consent-granted"]


async def test_topic_with_infinite_retention_reads_back(kafka_bootstrap: str) -> None:
    topic = _topic()
    await _create_topic(kafka_bootstrap, topic, {"retention.ms": "-1"})
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    [resource] = response.resources
    error_code, _msg, _type, name, entries = resource[:5]
    assert (error_code, name) == (0, topic)
    configs = {entry[0]: entry[1] for entry in entries}
    assert configs["retention.ms"] == "-1"


async def test_graceful_restart_keeps_records_and_address(
    private_kafka_broker: KafkaBroker,
) -> None:
    # Not the suite's shared broker: by now it holds every earlier test's partitions,
    # and a controlled shutdown and start of those took half a minute.
    broker = private_kafka_broker
    topic = _topic()
    before = broker.bootstrap_servers
    await _create_topic(before, topic)
    await _produce(before, topic, b"before-restart")

    # From a worker thread on purpose: the JVM must not die when that thread does.
    await asyncio.to_thread(broker.restart)

    assert broker.bootstrap_servers == before
    await _produce(before, topic, b"after-restart")
    assert await _read_all(before, topic, 2) == [b"before-restart", b"after-restart"]


async def test_sigkill_keeps_acknowledged_records(private_kafka_broker: KafkaBroker) -> None:
    broker = private_kafka_broker
    topic = _topic()
    await _create_topic(broker.bootstrap_servers, topic)
    await _produce(broker.bootstrap_servers, topic, b"acked")

    broker.kill()
    assert not broker.is_running()
    started = time.monotonic()
    broker.start()
    # Regression guard: with Kafka's default 9 s broker session the restarted broker is
    # refused registration until the killed incarnation expires.
    assert time.monotonic() - started < 20

    assert await _read_all(broker.bootstrap_servers, topic, 1) == [b"acked"]


def test_broker_log_goes_to_file_not_console(kafka_broker: KafkaBroker) -> None:
    # With the files log4j rolled it into (server.log.1, .2): a long suite's topic
    # deletions fill the first 20 MB, and the start's lines go with it.
    logs = kafka_broker.log_path.parent.glob(f"{kafka_broker.log_path.name}*")
    log = "".join(path.read_text() for path in logs)
    assert "Kafka Server started" in log
    assert f"Kafka version: {kafka_version()}" in log


# -- PostgreSQL -------------------------------------------------------------------------


async def test_create_database_gives_isolated_databases(postgres_server: PostgresServer) -> None:
    suffix = uuid.uuid4().hex[:8]
    dsn_a = await postgres_server.create_database(f"iso_a_{suffix}")
    dsn_b = await postgres_server.create_database(f"iso_b_{suffix}")
    try:
        a = await asyncpg.connect(dsn_a)
        b = await asyncpg.connect(dsn_b)
        try:
            await a.execute("CREATE TABLE consent (phone text PRIMARY KEY)")
            await a.execute("INSERT INTO consent VALUES ('+15550100')")
            assert await a.fetchval("SELECT current_database()") == f"iso_a_{suffix}"
            assert await b.fetchval("SELECT current_database()") == f"iso_b_{suffix}"
            assert await b.fetchval("SELECT to_regclass('public.consent')") is None
        finally:
            await a.close()
            await b.close()
        # Recreating by name gives an empty database again.
        dsn_a2 = await postgres_server.create_database(f"iso_a_{suffix}")
        a2 = await asyncpg.connect(dsn_a2)
        try:
            assert await a2.fetchval("SELECT to_regclass('public.consent')") is None
        finally:
            await a2.close()
    finally:
        await postgres_server.drop_database(f"iso_a_{suffix}")
        await postgres_server.drop_database(f"iso_b_{suffix}")


async def test_postgres_dsn_fixture_is_fresh_and_empty(postgres_dsn: str) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        name = await conn.fetchval("SELECT current_database()")
        tables = await conn.fetchval(
            "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', "
            "'information_schema')"
        )
    finally:
        await conn.close()
    assert name.startswith("t_test_postgres_dsn_fixture_is_fresh")
    assert tables == 0


# -- failures are loud and name the component --------------------------------------------


def test_broken_jars_dir_names_kafka(tmp_path: Path) -> None:
    junk = tmp_path / "jars"
    junk.mkdir()
    (junk / "not-kafka.jar").write_bytes(b"")
    with pytest.raises(InfraError, match=r"^Kafka jars: .* has no kafka_2\.13-"):
        KafkaBroker(tmp_path / "data", jars_dir=junk).start(timeout=10)


def test_jvm_that_cannot_load_kafka_reports_why(tmp_path: Path) -> None:
    jars = tmp_path / "jars"
    jars.mkdir()
    # Looks cached, but the "jar" is empty: the JVM starts and cannot find the classes.
    (jars / f"kafka_2.13-{kafka_version()}.jar").write_bytes(b"")
    with pytest.raises(InfraError) as info:
        KafkaBroker(tmp_path / "data", jars_dir=jars).start(timeout=10)
    message = str(info.value)
    assert message.startswith("Kafka broker could not start")
    assert "kafka.tools.StorageTool" in message
    assert "Could not find or load main class" in message


def test_missing_java_names_kafka(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ensure_jars()  # cached by the session broker: this must fail on java, not on mvn
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-jdk"))
    with pytest.raises(InfraError, match=r"^Kafka broker could not start: JAVA_HOME=.*bin/java"):
        KafkaBroker(tmp_path / "data").start(timeout=10)


def test_missing_mvn_names_kafka_jars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(InfraError, match=r"^Kafka jars: `mvn`.* not on PATH"):
        ensure_jars(tmp_path / "empty-cache")


def test_postgres_failure_names_postgres(tmp_path: Path) -> None:
    (tmp_path / "pgdata").write_text("a file where the cluster directory should be")
    with pytest.raises(InfraError, match=r"^PostgreSQL could not start: "):
        PostgresServer(tmp_path).start()


# -- no server outlives its owner ---------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"  # PID 1 here may never reap: a zombie has exited


def _wait_dead(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def test_servers_die_with_a_sigkilled_owner(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from tests.infra.kafka_broker import KafkaBroker
        from tests.infra.postgres_server import PostgresServer
        kafka = KafkaBroker(Path({str(tmp_path / "kafka")!r}))
        kafka.start()
        pg = PostgresServer(Path({str(tmp_path / "pg")!r}))
        pg.start()
        print(kafka.pid, pg.pid, flush=True)
        time.sleep(300)
        """
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    try:
        assert owner.stdout is not None
        line = owner.stdout.readline()
        assert line, "owner process exited before starting the servers"
        pids = [int(p) for p in line.split()]
        assert all(_alive(p) for p in pids)
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        assert _wait_dead(pids, timeout=30) == [], "servers outlived their SIGKILLed owner"
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()


async def test_cli_up_status_down(tmp_path: Path) -> None:
    async def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "tests.infra", *args, "--state-dir", str(tmp_path)],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip

    pids: list[int | None] = []
    up = await cli("up")
    try:
        assert up.returncode == 0, up.stderr
        env = dict(line.split("=", 1) for line in up.stdout.splitlines())
        assert env["KAFKA_BOOTSTRAP"].startswith("127.0.0.1:")
        assert env["POSTGRES_DSN"].startswith("postgresql://")
        assert env["CONSENT_KAFKA_BOOTSTRAP"] == env["KAFKA_BOOTSTRAP"]
        assert env["CONSENT_POSTGRES_DSN"] == env["POSTGRES_DSN"]
        assert (tmp_path / "env").read_text().splitlines() == up.stdout.splitlines()
        await _serve_from_the_env_file(tmp_path / "env")

        # The `up` process has exited; both servers must still be serving.
        status = await cli("status")
        assert status.returncode == 0, status.stdout + status.stderr
        pids = [KafkaBroker(tmp_path / "kafka").pid, PostgresServer(tmp_path / "postgres").pid]
        assert None not in pids
        topic = _topic()
        await _create_topic(env["KAFKA_BOOTSTRAP"], topic)
        await _produce(env["KAFKA_BOOTSTRAP"], topic, b"dev")
        conn = await asyncpg.connect(env["POSTGRES_DSN"])
        try:
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()
    finally:
        down = await cli("down")
    assert down.returncode == 0, down.stderr
    assert _wait_dead([p for p in pids if p is not None], timeout=5) == []
    assert (await cli("status")).returncode == 1
    assert not (tmp_path / "env").exists()


async def _serve_from_the_env_file(env_file: Path) -> None:
    """The README's second command: the service, with nothing but the env file loaded
    (its own ports moved to free ones), serves health and answers an authenticated
    call with the dev token."""
    import grpc
    from consent.v1 import consent_service_pb2 as api
    from consent.v1 import consent_service_pb2_grpc as api_grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    clean = {k: v for k, v in os.environ.items() if not k.startswith("CONSENT_")}
    script = (
        'set -a; . "$1"; set +a; export CONSENT_GRPC_LISTEN=127.0.0.1:0 '
        'CONSENT_METRICS_LISTEN=127.0.0.1:0; exec "$2" -m services.cli serve'
    )
    proc = subprocess.Popen(
        ["sh", "-c", script, "sh", str(env_file), sys.executable],
        cwd=REPO_ROOT, env=clean, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        seen: list[str] = []
        while not seen or "serving gRPC on" not in seen[-1]:
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 120)
            assert line, "the service exited:\n" + "".join(seen)
            seen.append(line)
        address = line.split(" on ", 1)[1].split()[0]
        token = dict(line.split("=", 1) for line in env_file.read_text().splitlines())[
            "CONSENT_DEV_TOKEN"
        ]
        async with grpc.aio.insecure_channel(address) as channel:
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="consent.v1.ConsentService"), timeout=20
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            answer = await api_grpc.ConsentServiceStub(channel).CanSend(
                api.CanSendRequest(phone="+14155552671", brand="acme", campaign="promo"),
                metadata=[("authorization", f"Bearer {token}")],
                timeout=20,
            )
        assert not answer.allowed
        assert api.Reason.Name(answer.reason) == "REASON_CAMPAIGN_UNKNOWN"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
