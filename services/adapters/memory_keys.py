"""``SubjectKeys`` in a dict: for tests and tools that keep nothing."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Collection

from ledger.ports import SubjectKey, SubjectKeys


class InMemorySubjectKeys(SubjectKeys):
    def __init__(self) -> None:
        self._live: dict[tuple[str, str], SubjectKey] = {}
        self._destroyed: set[str] = set()

    async def current(self, phone: str, brand: str) -> SubjectKey:
        key = self._live.get((phone, brand))
        if key is None:
            key = SubjectKey(str(uuid.uuid4()), secrets.token_bytes(32))
            self._live[(phone, brand)] = key
        return key

    async def find(self, phone: str, brand: str, key_ids: Collection[str]) -> dict[str, bytes]:
        key = self._live.get((phone, brand))
        return {key.key_id: key.secret} if key is not None and key.key_id in key_ids else {}

    async def live(self, phone: str, brand: str) -> list[str]:
        key = self._live.get((phone, brand))
        return [] if key is None else [key.key_id]

    async def destroy(self, phone: str, brand: str, key_ids: Collection[str] | None = None) -> int:
        key = self._live.get((phone, brand))
        if key is None or (key_ids is not None and key.key_id not in key_ids):
            return 0
        del self._live[(phone, brand)]
        self._destroyed.add(key.key_id)
        return 1
