"""How far the stored texts were read again, per keyword rules (migration 0026), as
instances on two versions keep it during a rolling upgrade that changed the rules."""

from __future__ import annotations

import asyncpg
import pytest

from services.adapters.postgres_reread import mark_texts_read_to, texts_read_to

pytestmark = pytest.mark.postgres


async def test_each_rules_reading_reads_on_from_its_own_place(pool: asyncpg.Pool) -> None:
    """An instance on the older rules and one on the newer take turns reading every
    minute. Each forgot how far the other's rules got, so each turn read the whole
    ledger again from the start, every chunk on the access log, for as long as
    both versions ran. Each reads on from where its own rules' reading got."""
    await mark_texts_read_to(pool, "older rules", {0: 40, 1: 7})
    await mark_texts_read_to(pool, "newer rules", {0: 41, 1: 7})
    await mark_texts_read_to(pool, "older rules", {0: 39, 1: 9})  # never back
    assert await texts_read_to(pool, "older rules") == {0: 40, 1: 9}
    assert await texts_read_to(pool, "newer rules") == {0: 41, 1: 7}
    assert await texts_read_to(pool, "other rules") == {}
