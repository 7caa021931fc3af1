"""Only one process signs checkpoints at a time: the writer's turn is a PostgreSQL
advisory lock on a connection of its own, let go when that connection goes."""

from __future__ import annotations

import pytest

from services.checkpoints import PostgresWriterLock

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
        await first.close()  # the process went: its connection, and the lock, with it
        assert await second.held()
        assert not await first.held()
    finally:
        for lock in (first, second, other):
            await lock.close()
