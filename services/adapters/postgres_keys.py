"""``SubjectKeys`` in PostgreSQL (``subject_keys``, migration 0015)."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Collection

import asyncpg

from ledger.ports import SubjectKey, SubjectKeys

_LIVE = (
    "SELECT key_id, secret FROM subject_keys WHERE phone = $1 AND brand = $2 AND secret IS NOT NULL"
)
_MAKE = """
INSERT INTO subject_keys (key_id, phone, brand, secret) VALUES ($1, $2, $3, $4)
ON CONFLICT (phone, brand) WHERE secret IS NOT NULL DO NOTHING
"""
_FIND = """
SELECT key_id, secret FROM subject_keys
WHERE phone = $1 AND brand = $2 AND key_id = ANY($3::uuid[]) AND secret IS NOT NULL
"""
_DESTROY = """
UPDATE subject_keys SET secret = NULL, destroyed_at = now()
WHERE phone = $1 AND brand = $2 AND secret IS NOT NULL
"""


class PostgresSubjectKeys(SubjectKeys):
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def current(self, phone: str, brand: str) -> SubjectKey:
        async with self.pool.acquire() as conn:
            for _ in range(2):  # made by another writer between the read and the insert
                row = await conn.fetchrow(_LIVE, phone, brand)
                if row is not None:
                    return SubjectKey(str(row["key_id"]), bytes(row["secret"]))
                await conn.execute(_MAKE, uuid.uuid4(), phone, brand, secrets.token_bytes(32))
            raise RuntimeError("a subject key was made and destroyed at once")  # pragma: no cover

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

    async def destroy(self, phone: str, brand: str) -> int:
        status: str = await self.pool.execute(_DESTROY, phone, brand)
        return int(status.split()[-1])
