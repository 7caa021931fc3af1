"""``PostgresAccessLog``: the ``AccessLog`` port in the append-only table
``audit_access`` (its migration, ``*_audit_access.sql``: triggers refuse UPDATE,
DELETE and TRUNCATE)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import asyncpg

from ledger.ports import AccessQuery, AccessRecord
from services.adapters.postgres_bounds import bounded

_INSERT = """
INSERT INTO audit_access (
    at, subject, via, action, brand, phone, campaign, request_id, detail,
    outcome, refusal_code, refusal
)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10, $11, $12)
RETURNING id
"""


class PostgresAccessLog:
    def __init__(self, pool: asyncpg.Pool, timeout: float | None = None) -> None:
        """``timeout``: seconds an append or a listing may take before it fails (the
        read it records then fails too)."""
        self._pool = pool
        self._timeout = timeout

    @bounded
    async def append(self, record: AccessRecord) -> int:
        # One autocommitted INSERT: once it returns, the record is committed (and,
        # with PostgreSQL's default synchronous_commit, on disk).
        found = await self._pool.fetchval(
            _INSERT,
            record.at,
            record.subject,
            record.via,
            record.action,
            record.brand,
            record.phone,
            record.campaign,
            record.request_id,
            json.dumps(dict(record.detail), sort_keys=True),
            record.outcome,
            record.refusal_code,
            record.refusal,
        )
        return int(found)

    @bounded
    async def list(self, query: AccessQuery) -> Sequence[AccessRecord]:
        where: list[str] = []
        args: list[Any] = []

        def condition(sql: str, value: Any) -> None:
            args.append(value)
            where.append(sql.format(f"${len(args)}"))

        if query.brands is not None:
            condition("brand = ANY({})", sorted(query.brands))
        if query.phone is not None:
            condition("phone = {}", query.phone)
        if query.subject is not None:
            condition("subject = {}", query.subject)
        if query.start is not None:
            condition("at >= {}", query.start)
        if query.end is not None:
            condition("at < {}", query.end)
        if query.before is not None:
            condition("id < {}", query.before)
        args.append(query.limit)
        rows = await self._pool.fetch(
            "SELECT id, at, subject, via, action, brand, phone, campaign, request_id,"
            " detail::text AS detail, outcome, refusal_code, refusal FROM audit_access"
            + (" WHERE " + " AND ".join(where) if where else "")
            + f" ORDER BY id DESC LIMIT ${len(args)}",
            *args,
            timeout=self._timeout,
        )
        return [
            AccessRecord(
                at=r["at"],
                subject=r["subject"],
                action=r["action"],
                brand=r["brand"],
                request_id=r["request_id"],
                via=r["via"],
                phone=r["phone"],
                campaign=r["campaign"],
                detail=json.loads(r["detail"]),
                id=r["id"],
                outcome=r["outcome"],
                refusal_code=r["refusal_code"],
                refusal=r["refusal"],
            )
            for r in rows
        ]
