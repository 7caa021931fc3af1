"""The ``SubjectKeys`` conformance suite against ``PostgresSubjectKeys`` on a real
PostgreSQL, and what the table keeps of a destroyed key."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio

from services.adapters.migrations import migrate
from services.adapters.postgres_keys import PostgresSubjectKeys
from tests.conformance.keys_suite import BRAND, PHONE, SubjectKeysSuite

pytestmark = pytest.mark.postgres


class TestPostgresSubjectKeys(SubjectKeysSuite):
    @pytest_asyncio.fixture(loop_scope="session")
    async def keys(self, postgres_dsn: str) -> AsyncIterator[PostgresSubjectKeys]:
        pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=8)
        try:
            await migrate(pool)
            yield PostgresSubjectKeys(pool)
        finally:
            await pool.close()


async def test_a_destroyed_key_leaves_no_secret_only_when(postgres_dsn: str) -> None:
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=2)
    try:
        await migrate(pool)
        keys = PostgresSubjectKeys(pool)
        key = await keys.current(PHONE, BRAND)
        await keys.destroy(PHONE, BRAND)

        row = await pool.fetchrow(
            "SELECT secret, destroyed_at FROM subject_keys WHERE key_id = $1::uuid", key.key_id
        )
    finally:
        await pool.close()

    assert row["secret"] is None
    assert row["destroyed_at"] is not None


async def test_keys_asked_for_at_once_are_made_in_one_statement(postgres_dsn: str) -> None:
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=8)
    try:
        await migrate(pool)
        keys = PostgresSubjectKeys(pool, timeout=5.0)
        phones = [f"+1415555{i:04}" for i in range(8)]
        made = await asyncio.gather(*(keys.current(p, BRAND) for p in [*phones, *phones]))

        assert made[:8] == made[8:] and len({k.key_id for k in made}) == 8
        # Rows one statement inserted share its transaction id.
        assert await pool.fetchval("SELECT count(DISTINCT xmin::text) FROM subject_keys") <= 2
        assert await keys.current(phones[0], BRAND) == made[0]
    finally:
        await pool.close()
