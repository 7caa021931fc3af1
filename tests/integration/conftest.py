"""Fixtures the integration tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest_asyncio

from services.adapters.migrations import migrate


@pytest_asyncio.fixture(loop_scope="session")
async def pool(postgres_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the test's own fresh database, migrated by the project's runner."""
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=10)
    try:
        await migrate(pool)
        yield pool
    finally:
        await pool.close()
