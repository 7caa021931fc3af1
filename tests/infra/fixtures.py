"""pytest plugin: real Kafka and PostgreSQL for the test suite.

Enable with ``pytest_plugins = ["tests.infra.fixtures"]`` in ``tests/conftest.py``.

Fixtures
  kafka_broker          session   started KafkaBroker (tmp dir); tests may restart() it,
                                   and a test that kill()s it must restart() it again
  kafka_bootstrap       session   "127.0.0.1:PORT" of kafka_broker, or the override
  private_kafka_broker  function  a broker no other test uses at the time, for crash
                                   tests that must not disturb the others: one the crash
                                   tests take turns with, handed over serving and with
                                   the earlier tests' topics deleted
  postgres_server       session   started PostgresServer (tmp dir), or the override
  postgres_dsn          function  DSN of a fresh, empty database, dropped afterwards
  migrated_database     session   name of a database the project's migrations were run
                                   on once, to copy (``create_database(template=...)``)

Environment overrides (use servers you already run instead of starting ours):
  CONSENT_TEST_KAFKA_BOOTSTRAP   e.g. 127.0.0.1:9092
  CONSENT_TEST_POSTGRES_DSN      a superuser DSN (databases are created on it)
``python -m tests.infra up`` prints both and writes them to var/dev/env.

If a server cannot start, the fixture fails the test with the reason (InfraError's
message); it never skips: a suite that silently skips its integration tests is green
for the wrong reason.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import re
import shutil
import signal
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiokafka.admin import AIOKafkaAdminClient

from tests.infra import InfraError
from tests.infra.kafka_broker import KafkaBroker, probe_metadata
from tests.infra.postgres_server import PostgresServer

ENV_KAFKA = "CONSENT_TEST_KAFKA_BOOTSTRAP"
ENV_POSTGRES = "CONSENT_TEST_POSTGRES_DSN"


def _start_broker(data_dir: Path) -> KafkaBroker:
    broker = KafkaBroker(data_dir)
    try:
        broker.start()
    except InfraError as exc:
        pytest.fail(str(exc), pytrace=False)
    return broker


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    if os.environ.get(ENV_KAFKA):
        pytest.fail(
            f"this test needs a Kafka broker it can stop/restart, but {ENV_KAFKA} is set "
            "(an external broker); unset it to let tests.infra start one",
            pytrace=False,
        )
    broker = _start_broker(tmp_path_factory.mktemp("kafka"))
    _SESSION_BROKERS.append(broker)
    yield broker
    _SESSION_BROKERS.remove(broker)
    broker.stop()


_SESSION_BROKERS: list[KafkaBroker] = []
"""``kafka_broker`` while it serves: every topic on it is one this session's tests made."""


@pytest.fixture(scope="module", autouse=True)
def _topics_deleted_after_the_module() -> Iterator[None]:
    """The topics a module's tests made on ``kafka_broker``, deleted once they are
    done: no later test reads them, and each service's start lists every topic on
    the broker, which took longer the further the suite went (thousands of them by
    its end). Not on an external broker, which may hold topics of others."""
    yield
    for broker in _SESSION_BROKERS:
        with concurrent.futures.ThreadPoolExecutor(1) as thread:
            thread.submit(asyncio.run, _delete_topics(broker.bootstrap_servers)).result()


async def _delete_topics(bootstrap: str) -> None:
    """Delete every topic but Kafka's own (``__consumer_offsets``); a broker a test
    left unreachable keeps them."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(admin.start(), 15)
        try:
            topics = [t for t in await admin.list_topics() if not t.startswith("__")]
            if topics:
                await admin.delete_topics(topics, timeout_ms=30_000)
        finally:
            await admin.close()


@pytest.fixture(scope="session")
def kafka_bootstrap(request: pytest.FixtureRequest) -> str:
    external = os.environ.get(ENV_KAFKA)
    if external:
        return external
    broker: KafkaBroker = request.getfixturevalue("kafka_broker")
    return broker.bootstrap_servers


@pytest.fixture(scope="session")
def _crash_kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """The broker the crash tests take turns with (``private_kafka_broker``)."""
    broker = _start_broker(tmp_path_factory.mktemp("private-kafka"))
    yield broker
    broker.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def private_kafka_broker(_crash_kafka_broker: KafkaBroker) -> AsyncIterator[KafkaBroker]:
    """A broker no other test is using, running and holding no topic of an earlier
    test: the crash tests take turns with one, since a fresh one per test (storage
    formatted, a JVM started and stopped) cost several seconds each."""
    broker = _crash_kafka_broker
    try:
        await asyncio.to_thread(_serving_again, broker)
    except InfraError as exc:
        pytest.fail(str(exc), pytrace=False)
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    await admin.start()
    try:
        earlier = [t for t in await admin.list_topics() if not t.startswith("__")]
        if earlier:
            await admin.delete_topics(earlier)
    finally:
        await admin.close()
    yield broker


def _serving_again(broker: KafkaBroker) -> None:
    """``broker`` as a test left it (paused, stopped, killed or fine), serving."""
    pid = broker.pid
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        host, port = broker.bootstrap_servers.rsplit(":", 1)
        if probe_metadata(host, int(port), timeout=5):
            return
        broker.kill()
    broker.start()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    external = os.environ.get(ENV_POSTGRES)
    if external:
        yield PostgresServer.external(external)
        return
    # Not under pytest's base temp: PostgreSQL runs as an unprivileged user when we are
    # root, and every new pytest session (a second run beside this one, say) resets
    # the base temp's root to mode 0700, which would lock the running server out of
    # its own data directory.
    folder = Path(tempfile.mkdtemp(prefix="consent-test-postgres-"))
    server = PostgresServer(folder)
    try:
        server.start()
        _without_flushes(server)
    except InfraError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


def _without_flushes(server: PostgresServer) -> None:
    """The suite's server writes without waiting for the disk: each test's DROP
    DATABASE forces a checkpoint, and its CREATE DATABASE and commits each wait for
    an fsync. Only a crash of the machine loses writes then; a test that kills
    PostgreSQL still finds every commit, written to the kernel (synchronous_commit
    stays on)."""
    server.configure({"fsync": "off", "full_page_writes": "off"})


def database_name(test_name: str) -> str:
    # Readable in pg_stat_activity when debugging, unique across parametrizations/reruns.
    slug = re.sub(r"[^a-z0-9]+", "_", test_name.lower()).strip("_")[:40]
    return f"t_{slug}_{uuid.uuid4().hex[:8]}"


@pytest_asyncio.fixture(loop_scope="session")
async def postgres_dsn(
    postgres_server: PostgresServer, request: pytest.FixtureRequest
) -> AsyncIterator[str]:
    name = database_name(request.node.name)
    dsn = await postgres_server.create_database(name)
    yield dsn
    await postgres_server.drop_database(name)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def migrated_database(postgres_server: PostgresServer) -> AsyncIterator[str]:
    """The name of a database migrated once, for tests that need a migrated one of
    their own: a copy of it is made sooner than the migrations run on an empty one.
    Nothing connects to it after, as ``CREATE DATABASE ... TEMPLATE`` requires."""
    import asyncpg

    from services.adapters.migrations import migrate

    name = database_name("migrated")
    conn = await asyncpg.connect(await postgres_server.create_database(name))
    try:
        await migrate(conn)
    finally:
        await conn.close()
    yield name
    await postgres_server.drop_database(name)
