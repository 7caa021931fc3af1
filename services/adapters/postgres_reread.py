"""Which keyword rules the stored texts were last read again under (migration 0025),
how far they were read under them (0026), and one instance at a time to read them:
``serve`` reads them again when its rules differ, and reads on from there
(``services.bootstrap``)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg

# Any fixed 64-bit number works; this one is "consent-ledger texts read again".
_LOCK_KEY = 0x436F6E73656E7402
_READ = "SELECT rules FROM texts_read_under"
_READ_TO = "SELECT partition, next_offset FROM texts_read_to WHERE rules = $1"
_MARK_TO = """
INSERT INTO texts_read_to (rules, partition, next_offset) VALUES ($1, $2, $3)
ON CONFLICT (rules, partition)
DO UPDATE SET next_offset = greatest(texts_read_to.next_offset, EXCLUDED.next_offset)
"""
_MARK = """
INSERT INTO texts_read_under (rules) VALUES ($1)
ON CONFLICT (only_row) DO UPDATE SET rules = EXCLUDED.rules, read_at = now()
"""


async def texts_read_under(pool: asyncpg.Pool) -> str | None:
    """The rules named by the last reading of every stored text that finished; None
    before the first."""
    rules: str | None = await pool.fetchval(_READ)
    return rules


async def mark_texts_read_under(pool: asyncpg.Pool, rules: str) -> None:
    await pool.execute(_MARK, rules)


async def texts_read_to(pool: asyncpg.Pool, rules: str) -> dict[int, int]:
    """How far the stored texts were read again under ``rules`` (migration 0026): per
    partition of the subscriber stream, the next record to read; none before."""
    rows = await pool.fetch(_READ_TO, rules)
    return {row["partition"]: row["next_offset"] for row in rows}


async def mark_texts_read_to(pool: asyncpg.Pool, rules: str, reached: dict[int, int]) -> None:
    """Note that the texts were read under ``rules`` up to ``reached`` (never back).
    How far other rules got is kept: during a rolling upgrade that changed the rules,
    an instance of each version reads every minute, each on from its own rules'
    place (forgotten, each turn read the whole ledger again); new rules have no
    place yet, so a change of rules reads from the start."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.executemany(_MARK_TO, [(rules, p, o) for p, o in sorted(reached.items())])


@contextlib.asynccontextmanager
async def reading_turn(pool: asyncpg.Pool) -> AsyncIterator[bool]:
    """Whether this instance has the turn to read the stored texts (a session advisory
    lock, held on one of ``pool``'s connections until the block ends): instances
    upgraded at once read the ledger once, not once each. False while another has it."""
    async with pool.acquire() as conn:
        held = await conn.fetchval("SELECT pg_try_advisory_lock($1)", _LOCK_KEY)
        try:
            yield bool(held)
        finally:
            if held:
                await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
