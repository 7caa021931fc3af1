"""Only one process signs checkpoints at a time: the writer's turn is a PostgreSQL
advisory lock on a connection of its own, let go when that connection goes. And the
embedded default's checkpoints table keeps what it is given."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from services.adapters.postgres_audit import PostgresWriterLock

pytestmark = [pytest.mark.postgres, pytest.mark.asyncio(loop_scope="session")]


async def test_one_writer_at_a_time_and_the_next_takes_over(postgres_dsn):
    first = PostgresWriterLock(postgres_dsn, "consent-ledger checkpoints t")
    second = PostgresWriterLock(postgres_dsn, "consent-ledger checkpoints t")
    other = PostgresWriterLock(postgres_dsn, "consent-ledger checkpoints another-prefix")
    try:
        assert await first.held()
        assert not await second.held()
        assert await first.held()  # it keeps its turn, round after round
        assert await other.held()  # another ledger's writer is not held back
        await first.close()  # it steps down: the lock is free the moment close returns
        assert await second.held()
        assert not await first.held()
    finally:
        for lock in (first, second, other):
            await lock.close()


async def test_a_writer_that_died_gives_up_its_turn_once_the_server_notices(postgres_dsn):
    first = PostgresWriterLock(postgres_dsn, "consent-ledger checkpoints died")
    second = PostgresWriterLock(postgres_dsn, "consent-ledger checkpoints died")
    try:
        assert await first.held()
        assert first._conn is not None
        first._conn.terminate()  # a crash: no unlock, the socket just goes
        first._conn = None
        # The server frees the lock when its backend sees the socket closed, a moment
        # later; the next writer asks each round, so it takes over within a few rounds.
        for _ in range(200):
            if await second.held():
                break
            await asyncio.sleep(0.05)
        assert await second.held()
    finally:
        for lock in (first, second):
            await lock.close()


async def test_the_checkpoints_table_is_append_only_and_its_migration_runs_again(postgres_dsn):
    import asyncpg

    from ledger.chain import Chain
    from services.adapters.migrations import migrate
    from services.adapters.postgres_audit import PostgresCheckpoints

    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=2)
    try:
        await migrate(pool)
        store = PostgresCheckpoints(pool)
        c = Chain("subscribers", 0).cut(datetime(2026, 12, 2, tzinfo=UTC), "ed25519:t")
        await store.publish([c.with_signature(b"s")])
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await pool.execute("DELETE FROM ledger_checkpoints")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await pool.execute("UPDATE ledger_checkpoints SET key_id = 'x'")
        await pool.execute("DELETE FROM schema_migrations WHERE version = 12")
        assert "0012_ledger_checkpoints" in await migrate(pool)
        assert [x async for x in store.every()] == [c]
    finally:
        await pool.close()
