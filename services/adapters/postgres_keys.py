"""``SubjectKeys`` in PostgreSQL (``subject_keys``, migration 0015)."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Collection, Sequence

import asyncpg

from ledger.ports import SubjectKey, SubjectKeys
from services.adapters.coalescing import Coalesced
from services.adapters.postgres_bounds import bounded, bounded_bulk, fetch_bulk

_CURRENT = """
WITH made AS (
    INSERT INTO subject_keys (key_id, phone, brand, secret) VALUES ($1, $2, $3, $4)
    ON CONFLICT (phone, brand) WHERE secret IS NOT NULL DO NOTHING
    RETURNING key_id, secret
)
SELECT key_id, secret FROM made
UNION ALL
SELECT key_id, secret FROM subject_keys WHERE phone = $2 AND brand = $3 AND secret IS NOT NULL
LIMIT 1
"""
"""The live key, made if there is none, in one round trip: the insert's row when it
made one, else the row it ran into (the statement's snapshot does not see its own
insert, so the two never both answer)."""
_CURRENT_MANY = """
WITH wanted AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[])
        AS w(key_id, phone, brand, secret)
), made AS (
    INSERT INTO subject_keys (key_id, phone, brand, secret)
    SELECT key_id, phone, brand, secret FROM wanted
    ON CONFLICT (phone, brand) WHERE secret IS NOT NULL DO NOTHING
    RETURNING phone, brand, key_id, secret
)
SELECT phone, brand, key_id, secret FROM made
UNION ALL
SELECT k.phone, k.brand, k.key_id, k.secret
FROM subject_keys k JOIN wanted w ON k.phone = w.phone AND k.brand = w.brand
WHERE k.secret IS NOT NULL
"""
"""``_CURRENT`` for many subjects at once: the rows it made, and the live keys it ran
into (the snapshot sees none of the rows it made, so no subject answers twice)."""
_FIND = """
SELECT key_id, secret FROM subject_keys
WHERE phone = $1 AND brand = $2 AND secret IS NOT NULL
    AND ($3::uuid[] IS NULL OR key_id = ANY($3::uuid[]))
"""
_LIVE = """
SELECT key_id FROM subject_keys WHERE phone = $1 AND brand = $2 AND secret IS NOT NULL
"""
_DESTROY = """
UPDATE subject_keys SET secret = NULL, destroyed_at = now()
WHERE phone = $1 AND brand = $2 AND secret IS NOT NULL
    AND ($3::uuid[] IS NULL OR key_id = ANY($3::uuid[]))
"""


class PostgresSubjectKeys(SubjectKeys):
    def __init__(self, pool: asyncpg.Pool, timeout: float | None = None) -> None:
        """``timeout``: seconds a statement may take before it fails (and with it the
        write or read that needed the key)."""
        self.pool = pool
        self._timeout = timeout
        # Single writes in flight at once read or make their keys in one statement.
        self._currents = Coalesced(self._current_alone, self._currents_of, bound=timeout)

    @bounded
    async def current(self, phone: str, brand: str) -> SubjectKey:
        return await self._currents((phone, brand))

    async def _current_alone(self, subject: tuple[str, str]) -> SubjectKey:
        for _ in range(3):
            row = await self.pool.fetchrow(
                _CURRENT, uuid.uuid4(), *subject, secrets.token_bytes(32)
            )
            # None: another writer's key, committed after this statement's snapshot
            # was taken, stopped the insert; the next statement sees it.
            if row is not None:
                return SubjectKey(str(row["key_id"]), bytes(row["secret"]))
        raise RuntimeError("no live key could be made or read for the subject")

    async def _currents_of(self, subjects: Sequence[tuple[str, str]]) -> list[SubjectKey]:
        found = await self._made_or_read(subjects)
        return [found[s] for s in subjects]

    @bounded_bulk
    async def current_many(
        self, subjects: Collection[tuple[str, str]]
    ) -> dict[tuple[str, str], SubjectKey]:
        return await self._made_or_read(subjects)

    async def _made_or_read(
        self, subjects: Collection[tuple[str, str]]
    ) -> dict[tuple[str, str], SubjectKey]:
        # In one order, so that two imports making keys for the same subjects at once
        # wait for each other's rows in turn instead of deadlocking.
        wanted = sorted(set(subjects))
        found: dict[tuple[str, str], SubjectKey] = {}
        for _ in range(3):
            if not wanted:
                return found
            rows = await fetch_bulk(
                self.pool,
                self._timeout,
                _CURRENT_MANY,
                [uuid.uuid4() for _ in wanted],
                [phone for phone, _ in wanted],
                [brand for _, brand in wanted],
                [secrets.token_bytes(32) for _ in wanted],
            )
            for r in rows:
                found[(r["phone"], r["brand"])] = SubjectKey(str(r["key_id"]), bytes(r["secret"]))
            # Missing: another writer's key, committed after this statement's snapshot
            # was taken, stopped the insert; the next statement sees it.
            wanted = [s for s in wanted if s not in found]
        if wanted:
            raise RuntimeError("no live key could be made or read for some subjects")
        return found

    @bounded
    async def find(self, phone: str, brand: str, key_ids: Collection[str]) -> dict[str, bytes]:
        ids = []
        for key_id in key_ids:
            try:
                ids.append(uuid.UUID(key_id))
            except ValueError:
                continue  # not one of ours: no key
        if not ids:
            return {}
        rows = await self.pool.fetch(_FIND, phone, brand, ids)
        return {str(r["key_id"]): bytes(r["secret"]) for r in rows}

    @bounded
    async def live(self, phone: str, brand: str) -> list[str]:
        return [str(r["key_id"]) for r in await self.pool.fetch(_LIVE, phone, brand)]

    @bounded
    async def destroy(self, phone: str, brand: str, key_ids: Collection[str] | None = None) -> int:
        ids = None if key_ids is None else [uuid.UUID(k) for k in key_ids]
        if ids == []:
            return 0
        status: str = await self.pool.execute(_DESTROY, phone, brand, ids)
        return int(status.split()[-1])
