"""The ``AccessLog`` conformance suite against ``PostgresAccessLog`` on a real
PostgreSQL, and the table's refusal of any change to what it holds."""

from __future__ import annotations

import asyncpg
import pytest

from ledger.ports import AccessQuery
from services.adapters.postgres_access import PostgresAccessLog
from tests.conformance.access_log_suite import AccessLogSuite, access

pytestmark = [pytest.mark.postgres, pytest.mark.asyncio(loop_scope="session")]


class TestPostgresAccessLog(AccessLogSuite):
    @pytest.fixture
    def access_log(self, pool: asyncpg.Pool) -> PostgresAccessLog:
        return PostgresAccessLog(pool, timeout=10)


@pytest.mark.parametrize(
    "change",
    [
        "UPDATE audit_access SET subject = 'someone else'",
        "DELETE FROM audit_access",
        "TRUNCATE audit_access",
    ],
)
async def test_an_access_record_cannot_be_changed_or_removed(
    pool: asyncpg.Pool, change: str
) -> None:
    log = PostgresAccessLog(pool)
    await log.append(access())
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await pool.execute(change)
    (kept,) = await log.list(AccessQuery(None))
    assert kept.subject == "auditor"
