"""``InMemoryAccessLog``: the ``AccessLog`` port in a list, for unit tests and the
use cases' default when nothing durable is given (``services.bootstrap`` always
gives ``PostgresAccessLog``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ledger.ports import AccessQuery, AccessRecord


class InMemoryAccessLog:
    def __init__(self) -> None:
        self.records: list[AccessRecord] = []

    async def append(self, record: AccessRecord) -> int:
        written = dataclasses.replace(record, id=len(self.records) + 1)
        self.records.append(written)
        return len(self.records)

    async def list(self, query: AccessQuery) -> Sequence[AccessRecord]:
        found = []
        for record in reversed(self.records):
            assert record.id is not None
            if query.before is not None and record.id >= query.before:
                continue
            if query.brands is not None and record.brand not in query.brands:
                continue
            if query.phone is not None and record.phone != query.phone:
                continue
            if query.subject is not None and record.subject != query.subject:
                continue
            if query.start is not None and record.at < query.start:
                continue
            if query.end is not None and record.at >= query.end:
                continue
            found.append(record)
            if len(found) == query.limit:
                break
        return found
