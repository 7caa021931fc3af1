"""``pending``: the migrations not applied yet, read without changing anything."""

from __future__ import annotations

import asyncpg

from services.adapters.migrations import discover, migrate, pending


async def test_pending_is_every_migration_on_an_empty_database_and_none_after(postgres_dsn):
    conn = await asyncpg.connect(postgres_dsn)
    try:
        assert await pending(conn) == [m.name for m in discover()]
        assert not await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
        await migrate(conn)
        assert await pending(conn) == []
        last = discover()[-1]
        await conn.execute("DELETE FROM schema_migrations WHERE version = $1", last.version)
        assert await pending(conn) == [last.name]
    finally:
        await conn.close()
