"""The ``ConsentView`` conformance suite against ``PostgresConsentView`` on a real
PostgreSQL (a fresh database per test, migrated by the project's own runner)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from services.adapters.migrations import discover, migrate
from services.adapters.postgres_view import PostgresConsentView
from tests.conformance.view_suite import ConsentViewSuite

pytestmark = pytest.mark.postgres


class TestPostgresConsentView(ConsentViewSuite):
    @pytest_asyncio.fixture(loop_scope="session")
    async def view(self, postgres_dsn: str) -> AsyncIterator[PostgresConsentView]:
        pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=4)
        try:
            await migrate(pool)
            yield PostgresConsentView(pool)
        finally:
            await pool.close()


async def test_migrate_applies_each_file_once_in_version_order(postgres_dsn: str) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        first = await migrate(conn)
        second = await migrate(conn)
        recorded = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
    finally:
        await conn.close()

    expected = [m.name for m in discover()]
    assert first == expected and "0002_projections" in first
    assert second == []
    assert [r["name"] for r in recorded] == expected


async def test_two_processes_migrating_at_once_apply_each_file_once(postgres_dsn: str) -> None:
    conns = [await asyncpg.connect(postgres_dsn) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
        count = await conns[0].fetchval("SELECT count(*) FROM schema_migrations")
    finally:
        for c in conns:
            await c.close()

    applied = [name for result in results for name in result]
    assert sorted(applied) == sorted(m.name for m in discover())
    assert count == len(discover())


async def test_a_failing_migration_leaves_nothing_and_stops_the_rest(
    postgres_dsn: str, tmp_path: Path
) -> None:
    (tmp_path / "0001_good.sql").write_text("CREATE TABLE good (id int);")
    (tmp_path / "0002_bad.sql").write_text("CREATE TABLE half (id int); SELECT 1/0;")
    (tmp_path / "0003_later.sql").write_text("CREATE TABLE later (id int);")
    conn = await asyncpg.connect(postgres_dsn)
    try:
        with pytest.raises(asyncpg.DivisionByZeroError):
            await migrate(conn, tmp_path)
        tables = {
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
        versions = await conn.fetch("SELECT version FROM schema_migrations")
    finally:
        await conn.close()

    assert "good" in tables and "half" not in tables and "later" not in tables
    assert [r["version"] for r in versions] == [1]
