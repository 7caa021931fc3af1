"""Fixtures the end-to-end tests share."""

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest

from services.bootstrap import Runtime
from tests.e2e.harness import serving
from tests.infra.fixtures import database_name
from tests.infra.postgres_server import PostgresServer


@pytest.fixture
async def postgres_dsn(
    postgres_server: PostgresServer, migrated_database: str, request: pytest.FixtureRequest
) -> AsyncIterator[str]:
    """DSN of a fresh database of the test's own, dropped afterwards: migrated, a copy
    of ``migrated_database``, since a service's start migrating each afresh took
    longer than the copy (a restarted service finds its database migrated too).
    ``migrate`` on an empty one is ``empty_postgres_dsn``'s."""
    name = database_name(request.node.name)
    dsn = await postgres_server.create_database(name, template=migrated_database)
    yield dsn
    await postgres_server.drop_database(name)


@pytest.fixture
async def empty_postgres_dsn(
    postgres_server: PostgresServer, request: pytest.FixtureRequest
) -> AsyncIterator[str]:
    """DSN of a fresh, empty database of the test's own, dropped afterwards: for what
    a first start or ``migrate`` does to one."""
    name = database_name(request.node.name)
    dsn = await postgres_server.create_database(name)
    yield dsn
    await postgres_server.drop_database(name)


@pytest.fixture
async def serve(
    tmp_path, postgres_dsn, kafka_bootstrap
) -> AsyncIterator[Callable[..., Awaitable[Runtime]]]:
    """Starts a service on the suite's broker and database: ``await serve(name=...,
    clock=..., campaigns=[...], console_listen=...)`` takes ``harness.serving``'s
    parameters. Each service it started is stopped after the test."""
    async with AsyncExitStack() as started:

        async def serve(**parameters: Any) -> Runtime:
            return await started.enter_async_context(
                serving(tmp_path, postgres_dsn, kafka_bootstrap, **parameters)
            )

        yield serve


@pytest.fixture(scope="module")
async def module_serve(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    postgres_server: PostgresServer,
    migrated_database: str,
    kafka_bootstrap: str,
) -> AsyncIterator[Callable[..., Awaitable[Runtime]]]:
    """``serve`` for the module: each service it starts, on a database and in a
    folder of its own, runs until the module's last test. For tests that write only
    facts of their own numbers, or compare what they find with what they found
    before, so one service (its database, topics and start) serves them all; a test
    that needs a ledger of its own asks for ``serve``. ``on_kafka=False`` starts one
    on the embedded default's PostgreSQL ledger."""
    module = request.module.__name__.rsplit(".", 1)[-1]
    databases: list[str] = []
    try:
        async with AsyncExitStack() as started:

            async def serve(*, on_kafka: bool = True, **parameters: Any) -> Runtime:
                databases.append(database_name(module))
                dsn = await postgres_server.create_database(databases[-1], migrated_database)
                tmp = tmp_path_factory.mktemp(module)
                bootstrap = kafka_bootstrap if on_kafka else None
                return await started.enter_async_context(serving(tmp, dsn, bootstrap, **parameters))

            yield serve
    finally:
        for name in databases:
            await postgres_server.drop_database(name)
