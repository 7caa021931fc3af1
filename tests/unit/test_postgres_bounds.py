"""``bounded``: a statement a call waits on that fails because of the database's
state (a full disk, a refused connection, a shutdown) says so, as
``StoreUnavailable`` (UNAVAILABLE, STORE_UNAVAILABLE, retry), instead of passing for
an unreachable ledger; a failure of the statement itself stays what it is."""

from __future__ import annotations

import asyncpg
import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from services.adapters.postgres_bounds import bounded
from services.errors import StoreUnavailable
from services.grpc_api.errors import to_status


class _Store:
    _timeout: float | None = 1.0

    def __init__(self, failure: BaseException) -> None:
        self.failure = failure

    @bounded
    async def claim_messages(self) -> None:
        raise self.failure


def _reasons(status: grpc.Status) -> list[str]:
    raw = dict(status.trailing_metadata)["grpc-status-details-bin"]
    found = []
    for detail in status_pb2.Status.FromString(raw).details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            found.append(info.reason)
    return found


@pytest.mark.parametrize(
    "failure",
    [
        asyncpg.exceptions.DiskFullError('could not extend file "base/5/16658": No space left'),
        asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"),
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator"),
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
        ConnectionRefusedError(111, "Connection refused"),
    ],
)
async def test_a_database_that_cannot_do_the_work_now_is_store_unavailable(
    failure: BaseException,
) -> None:
    with pytest.raises(StoreUnavailable) as raised:
        await _Store(failure).claim_messages()
    assert "PostgreSQL failed in claim_messages" in str(raised.value)
    status = to_status(raised.value)
    assert status.code is grpc.StatusCode.UNAVAILABLE
    assert "ledger" not in status.details, "the broker was fine: the database failed"
    assert _reasons(status) == ["STORE_UNAVAILABLE"]


async def test_a_statement_s_own_failure_is_not_taken_for_an_outage() -> None:
    failure = asyncpg.exceptions.UndefinedColumnError('column "x" does not exist')
    with pytest.raises(asyncpg.exceptions.UndefinedColumnError):
        await _Store(failure).claim_messages()
