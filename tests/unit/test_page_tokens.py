"""Page tokens of the review queue: what the service issues reads back for its
listing, and anything else (another brand's token included) is the caller's
INVALID_ARGUMENT on page_token, never a failure further in (a position PostgreSQL
cannot hold would fail the query)."""

from __future__ import annotations

import base64

import pytest

from ledger.errors import InvalidRequest
from services.grpc_api.servicer import _queue, _queue_after, _queue_token

ACME = _queue("acme", False)


def _token(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


@pytest.mark.parametrize("position", [1, 17, 2**63 - 1])
def test_a_token_the_service_issued_reads_back_as_its_position(position: int) -> None:
    assert _queue_after(_queue_token(position, ACME), ACME) == position


def test_no_token_is_the_start() -> None:
    assert _queue_after("", ACME) == 0


@pytest.mark.parametrize(
    "token",
    [
        _token("q:5"),  # before listings were told apart
        _queue_token(5, _queue("globex", False)),  # another brand's
        _queue_token(5, _queue("acme", True)),  # the overdue ones alone
        _token(f"{ACME}:0"),
        _token(f"{ACME}:-3"),
        _token(f"{ACME}:{2**63}"),  # beyond a bigint
        _token(f"{ACME}:x"),
        _token("o:5"),  # ListEvents' kind of token
        _token("c:2026-03-02T15:00:00+00:00|9b2f"),  # ordered by recorded time, before
        "not base64 at all!",
        base64.urlsafe_b64encode(ACME.encode() + b":\xff").decode(),  # not UTF-8
    ],
)
def test_anything_else_is_invalid_argument_on_page_token(token: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        _queue_after(token, ACME)
    assert err.value.field == "page_token"
    assert "list from the start" in err.value.reason
