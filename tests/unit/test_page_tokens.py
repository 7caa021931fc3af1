"""Page tokens of the review queue: what the service issues reads back, and
anything else is the caller's INVALID_ARGUMENT on page_token, never a failure
further in (a position PostgreSQL cannot hold would fail the query)."""

from __future__ import annotations

import base64

import pytest

from ledger.errors import InvalidRequest
from services.grpc_api.servicer import _queue_after, _queue_token


def _token(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


@pytest.mark.parametrize("position", [1, 17, 2**63 - 1])
def test_a_token_the_service_issued_reads_back_as_its_position(position: int) -> None:
    assert _queue_after(_queue_token(position)) == position


def test_no_token_is_the_start() -> None:
    assert _queue_after("") == 0


@pytest.mark.parametrize(
    "token",
    [
        _token("q:0"),
        _token("q:-3"),
        _token(f"q:{2**63}"),  # beyond a bigint
        _token("q:x"),
        _token("o:5"),  # ListEvents' kind of token
        _token("c:2026-03-02T15:00:00+00:00|9b2f"),  # ordered by recorded time, before
        "not base64 at all!",
        base64.urlsafe_b64encode(b"q:\xff").decode(),  # not UTF-8
    ],
)
def test_anything_else_is_invalid_argument_on_page_token(token: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        _queue_after(token)
    assert err.value.field == "page_token"
    assert "list from the start" in err.value.reason
