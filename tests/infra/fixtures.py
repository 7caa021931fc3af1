"""pytest plugin: real Kafka and PostgreSQL for the test suite.

Enable with ``pytest_plugins = ["tests.infra.fixtures"]`` in ``tests/conftest.py``.

Fixtures
  kafka_broker          session   started KafkaBroker (tmp dir); tests may restart() it,
                                   and a test that kill()s it must restart() it again
  kafka_bootstrap       session   "127.0.0.1:PORT" of kafka_broker, or the override
  private_kafka_broker  function  a broker of the test's own, for crash tests that must
                                   not disturb other tests (~4 s to start)
  postgres_server       session   started PostgresServer (tmp dir), or the override
  postgres_dsn          function  DSN of a fresh, empty database, dropped afterwards

Environment overrides (use servers you already run instead of starting ours):
  CONSENT_TEST_KAFKA_BOOTSTRAP   e.g. 127.0.0.1:9092
  CONSENT_TEST_POSTGRES_DSN      a superuser DSN (databases are created on it)
``python -m tests.infra up`` prints both and writes them to var/dev/env.

If a server cannot start, the fixture fails the test with the reason (InfraError's
message); it never skips: a suite that silently skips its integration tests is green
for the wrong reason.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.infra import InfraError
from tests.infra.kafka_broker import KafkaBroker
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
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(request: pytest.FixtureRequest) -> str:
    external = os.environ.get(ENV_KAFKA)
    if external:
        return external
    broker: KafkaBroker = request.getfixturevalue("kafka_broker")
    return broker.bootstrap_servers


@pytest.fixture
def private_kafka_broker(tmp_path: Path) -> Iterator[KafkaBroker]:
    broker = _start_broker(tmp_path / "kafka")
    yield broker
    broker.stop()


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
    except InfraError as exc:
        pytest.fail(str(exc), pytrace=False)
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


def _database_name(test_name: str) -> str:
    # Readable in pg_stat_activity when debugging, unique across parametrizations/reruns.
    slug = re.sub(r"[^a-z0-9]+", "_", test_name.lower()).strip("_")[:40]
    return f"t_{slug}_{uuid.uuid4().hex[:8]}"


@pytest_asyncio.fixture(loop_scope="session")
async def postgres_dsn(
    postgres_server: PostgresServer, request: pytest.FixtureRequest
) -> AsyncIterator[str]:
    name = _database_name(request.node.name)
    dsn = await postgres_server.create_database(name)
    yield dsn
    await postgres_server.drop_database(name)
