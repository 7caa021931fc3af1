"""A connection that goes silent (its peer answers nothing, as after a network
partition) under one of the statements that single writes in flight share: that
statement's callers fail within the bound, and the calls after it are answered on
other connections. Backends of a PostgreSQL of the module's own are stopped."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from services.adapters.migrations import migrate
from services.adapters.postgres_bounds import close_pool
from services.adapters.postgres_keys import PostgresSubjectKeys
from services.adapters.postgres_view import PostgresConsentView, read_pool
from services.errors import StoreUnavailable
from tests.infra.postgres_server import PostgresServer

pytestmark = pytest.mark.postgres

TIMEOUT = 1.0


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL of this module's own, whose backends a test stops."""
    folder = Path(tempfile.mkdtemp(prefix="consent-test-silent-"))
    server = PostgresServer(folder)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest_asyncio.fixture(loop_scope="session")
async def reads(private_postgres: PostgresServer) -> AsyncIterator[asyncpg.Pool]:
    """A migrated database's read pool, with the service's statement bound."""
    name = f"silent_{uuid.uuid4().hex[:8]}"
    dsn = await private_postgres.create_database(name)
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    pool = await read_pool(dsn, min_size=2, max_size=4, timeout=TIMEOUT)
    try:
        yield pool
    finally:
        pool.terminate()
        await private_postgres.drop_database(name)


@contextlib.asynccontextmanager
async def next_connection_silent(pool: asyncpg.Pool) -> AsyncIterator[None]:
    """Stop the backend of the connection the pool hands out next (the one released
    last), until the block ends."""
    async with pool.acquire() as conn:
        pid = conn.get_server_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def test_a_take_stuck_on_a_silent_connection_holds_up_no_later_take(
    reads: asyncpg.Pool,
) -> None:
    view = PostgresConsentView(reads, reads=reads, timeout=TIMEOUT)
    assert (await view.take_request("acme", "r0", "fp", [str(uuid.uuid4())])).taken
    async with next_connection_silent(reads):
        with pytest.raises(StoreUnavailable):
            await view.take_request("acme", "r1", "fp", [str(uuid.uuid4())])
        later = [
            await view.take_request("acme", f"r{i}", "fp", [str(uuid.uuid4())]) for i in (2, 3)
        ]
        assert all(t.taken for t in later)


async def test_a_key_stuck_on_a_silent_connection_holds_up_no_later_key(
    reads: asyncpg.Pool,
) -> None:
    keys = PostgresSubjectKeys(reads, timeout=TIMEOUT)
    await keys.current("+14155550100", "acme")
    async with next_connection_silent(reads):
        with pytest.raises(StoreUnavailable):
            await keys.current("+14155550101", "acme")
        later = [await keys.current(f"+1415555010{i}", "acme") for i in (2, 3)]
        assert len({k.key_id for k in later}) == 2


async def test_a_pool_whose_connection_awaits_a_silent_server_still_closes(
    reads: asyncpg.Pool,
) -> None:
    """``Pool.close()`` waits, with no bound, for each connection to be given back
    and to say goodbye; one whose server answers nothing (frozen, or owing the
    acknowledgement of a cancel it will never send) held a service told to stop
    forever. ``close_pool`` drops what is left after its bound."""
    pool = await read_pool(reads._connect_args[0], min_size=1, max_size=1, timeout=TIMEOUT)
    async with next_connection_silent(pool):
        stuck = asyncio.ensure_future(pool.fetchval("SELECT 1"))
        done, _ = await asyncio.wait({stuck}, timeout=0.5)
        assert not done  # the connection waits for its frozen server
        await asyncio.wait_for(close_pool(pool, within=0.5), 20)
        with pytest.raises(asyncpg.ConnectionDoesNotExistError):
            await stuck
    with pytest.raises(asyncpg.InterfaceError):
        await pool.fetchval("SELECT 1")
