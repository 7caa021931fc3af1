"""Fixtures the integration tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio

from services.adapters.migrations import migrate
from tests.infra.fixtures import database_name
from tests.infra.postgres_server import PostgresServer


@pytest_asyncio.fixture(loop_scope="session")
async def postgres_dsn(
    postgres_server: PostgresServer, migrated_database: str, request: pytest.FixtureRequest
) -> AsyncIterator[str]:
    """DSN of a fresh database of the test's own, dropped afterwards: empty, or for a
    test on ``pool`` a copy of ``migrated_database``, made sooner than the migrations
    run on an empty one."""
    name = database_name(request.node.name)
    template = migrated_database if "pool" in request.fixturenames else "template0"
    dsn = await postgres_server.create_database(name, template)
    yield dsn
    await postgres_server.drop_database(name)


@pytest_asyncio.fixture(loop_scope="session")
async def pool(postgres_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the test's own fresh database, migrated by the project's runner."""
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=10)
    try:
        await migrate(pool)
        yield pool
    finally:
        await pool.close()
