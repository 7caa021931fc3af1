"""``tests/unit/test_readers_parity.py``'s histories on the PostgreSQL view, read as
the service reads it (CanSend's digests from a ``DigestReplica``): every reader
agrees there too, and answers exactly as on the in-memory view."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator

import asyncpg
import pytest

from ledger.ports import ConsentView, DigestReads
from services.adapters.digest_replica import DigestReplica
from services.adapters.migrations import migrate
from services.adapters.postgres_view import PostgresConsentView
from tests.infra.fixtures import database_name
from tests.infra.postgres_server import PostgresServer
from tests.unit.test_readers_parity import history

pytestmark = [pytest.mark.postgres, pytest.mark.asyncio(loop_scope="session")]

SEEDS = range(2)


async def test_every_reader_answers_alike_on_postgres_as_in_memory(
    postgres_server: PostgresServer,
) -> None:
    names: list[str] = []

    @contextlib.asynccontextmanager
    async def on_postgres() -> AsyncIterator[tuple[ConsentView, DigestReads]]:
        names.append(database_name("readers_parity"))
        dsn = await postgres_server.create_database(names[-1])
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=10)
        try:
            await migrate(pool)
            view = PostgresConsentView(pool)
            yield view, DigestReplica(pool, view)
        finally:
            await pool.close()
            await postgres_server.drop_database(names[-1])

    seen: Counter[str] = Counter()
    for seed in SEEDS:
        for batched in (False, True):
            in_memory = await history(seed, batched, Counter())
            on_pg = await history(seed, batched, seen, on_postgres)
            differ = {
                k: (in_memory.get(k), on_pg.get(k))
                for k in in_memory.keys() | on_pg.keys()
                if in_memory.get(k) != on_pg.get(k)
            }
            assert not differ, (seed, batched, differ)
    assert seen["send as told asked"] and seen["step revocation_pending_review"], seen
