"""``to_status``: the one mapping from an exception to what a caller sees, and
which of them say "retry"."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from ledger.errors import InvalidRequest
from ledger.ports import EventTooLarge, LedgerUnavailable
from services.errors import (
    AlreadyExists,
    MessageIdReused,
    OutcomeUnknown,
    RateLimited,
    ReusedIdHeldForReview,
    StoreUnavailable,
)
from services.grpc_api.errors import to_status

RETRY = "the ledger could not be reached; retry with the same request_id"


def field_violations(status: grpc.Status) -> list[tuple[str, str]]:
    raw = dict(status.trailing_metadata)["grpc-status-details-bin"]
    found = []
    for detail in status_pb2.Status.FromString(raw).details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            found += [(v.field, v.description) for v in bad.field_violations]
    return found


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionResetError(),
        TimeoutError(),
        RuntimeError("KafkaLedger is not started"),
    ],
)
def test_an_outage_says_retry(exc) -> None:
    status = to_status(exc)
    assert (status.code, status.details) == (grpc.StatusCode.UNAVAILABLE, RETRY)


@pytest.mark.parametrize(
    "exc",
    [
        OverflowError("Python int too large to convert to C int"),
        ValueError("a bug"),
        TypeError("a bug"),
        KeyError("a bug"),
    ],
)
def test_a_bug_is_internal_not_a_retry_that_would_fail_forever(exc) -> None:
    status = to_status(exc)
    assert status.code is grpc.StatusCode.INTERNAL
    assert "retry" not in status.details


def test_an_event_too_large_for_the_ledger_is_bad_input_not_a_retry() -> None:
    status = to_status(EventTooLarge("a ConsentGranted of 2,000,000 bytes"))
    assert status.code is grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(status) == [("request", "is too large to record as one ledger fact")]


def test_bad_input_names_its_field() -> None:
    status = to_status(InvalidRequest("body", "must be at most 4,096 characters, got 5,000"))
    assert status.code is grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(status) == [("body", "must be at most 4,096 characters, got 5,000")]


def test_a_caller_over_its_rate_is_told_when_to_retry_and_whose_quota_it_is() -> None:
    status = to_status(RateLimited("checkout", "checkout is over its rate limit", 0.25))
    assert status.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "retry in 0.25 s" in status.details
    raw = dict(status.trailing_metadata)["grpc-status-details-bin"]
    retry, quota = error_details_pb2.RetryInfo(), error_details_pb2.QuotaFailure()
    details = status_pb2.Status.FromString(raw).details
    assert details[0].Unpack(retry) and details[1].Unpack(quota)
    assert retry.retry_delay.ToNanoseconds() == 250_000_000
    assert [(v.subject, v.description) for v in quota.violations] == [
        ("caller:checkout", "checkout is over its rate limit")
    ]


def test_a_reused_request_id_is_already_exists_naming_the_first_request_s_events() -> None:
    ids = ["3156e1cb-0000-5000-8000-000000000001", "3156e1cb-0000-5000-8000-000000000002"]
    status = to_status(AlreadyExists("request_id", "used before", "r1", ids))
    assert status.code is grpc.StatusCode.ALREADY_EXISTS
    raw = dict(status.trailing_metadata)["grpc-status-details-bin"]
    info, resource = error_details_pb2.ErrorInfo(), error_details_pb2.ResourceInfo()
    details = status_pb2.Status.FromString(raw).details
    assert details[0].Unpack(info) and details[1].Unpack(resource)
    assert (info.reason, info.domain) == ("REQUEST_ID_REUSED", "consent-ledger")
    assert dict(info.metadata) == {"request_id": "r1", "event_ids": ",".join(ids)}
    assert resource.resource_name == "r1" and ids[1] in resource.description


def test_an_opt_out_held_under_a_reused_request_id_says_so_beside_the_first_events() -> None:
    ids = ["3156e1cb-0000-5000-8000-000000000001"]
    refused = AlreadyExists("request_id", "used before", "r1", ids)
    status = to_status(ReusedIdHeldForReview(refused, ["3156e1cb-held"], "tok", ["acme"]))
    assert status.code is grpc.StatusCode.ALREADY_EXISTS
    assert status.details.startswith("request_id: used before; held for review")
    raw = dict(status.trailing_metadata)["grpc-status-details-bin"]
    found = status_pb2.Status.FromString(raw).details
    first, resource, held = (
        error_details_pb2.ErrorInfo(),
        error_details_pb2.ResourceInfo(),
        error_details_pb2.ErrorInfo(),
    )
    assert found[0].Unpack(first) and found[1].Unpack(resource) and found[2].Unpack(held)
    assert dict(first.metadata) == {"request_id": "r1", "event_ids": ids[0]}
    assert (held.reason, held.domain) == ("OPT_OUT_HELD_FOR_REVIEW", "consent-ledger")
    assert dict(held.metadata) == {
        "field": "request_id",
        "candidate_event_id": "3156e1cb-held",
        "candidate_event_ids": "3156e1cb-held",
        "consistency_token": "tok",
        "held_brands": "acme",
    }


def test_a_reused_request_id_of_a_thousand_events_lists_the_first_and_counts_them() -> None:
    ids = [f"3156e1cb-0000-5000-8000-{i:012d}" for i in range(1_000)]
    status = to_status(AlreadyExists("request_id", "used before", "b1", ids))
    raw = dict(status.trailing_metadata)["grpc-status-details-bin"]
    assert len(raw) < 4_096  # within a client's default 8 KiB of trailers, with room
    info, resource = error_details_pb2.ErrorInfo(), error_details_pb2.ResourceInfo()
    found = status_pb2.Status.FromString(raw).details
    assert found[0].Unpack(info) and found[1].Unpack(resource)
    assert info.metadata["event_ids"].split(",") == ids[:20]
    assert info.metadata["event_count"] == "1000"
    assert resource.description.endswith("and 980 more")


def test_a_batch_reusing_a_thousand_message_ids_names_them_within_the_trailers() -> None:
    """Every reused message id of a batch is named, in its order, the first where
    clients read it (the ``ErrorInfo``, the first ``ResourceInfo``), as many as fit."""
    reused = [
        MessageIdReused(
            f"messages[{i}].message_id",
            f"{'M' * 250}{i:04d} was recorded before with another occurred_at",
            f"{'M' * 250}{i:04d}",
            [f"3156e1cb-0000-5000-8000-{i:012d}"],
        )
        for i in range(1_000)
    ]
    status = to_status(MessageIdReused(*vars_of(reused[0]), more=reused[1:]))
    assert status.code is grpc.StatusCode.ALREADY_EXISTS
    raw = dict(status.trailing_metadata)["grpc-status-details-bin"]
    assert len(raw) < 4_096  # within a client's default 8 KiB of trailers, with room
    found = status_pb2.Status.FromString(raw).details
    info = error_details_pb2.ErrorInfo()
    assert found[0].Unpack(info)
    assert dict(info.metadata) == {
        "message_id": reused[0].message_id,
        "event_ids": reused[0].event_ids[0],
    }
    names = []
    for detail in found[1:]:
        resource = error_details_pb2.ResourceInfo()
        assert detail.Unpack(resource)
        names.append(resource.resource_name)
    assert len(names) > 1 and names == [r.message_id for r in reused[: len(names)]]
    assert status.details.startswith("messages[0].message_id: ")
    assert "; messages[1].message_id: " in status.details
    assert status.details.endswith("more bad fields, not listed; correct these and resend")


def vars_of(exc: MessageIdReused) -> tuple[str, str, str, tuple[str, ...]]:
    return exc.field, exc.reason, exc.message_id, exc.event_ids


def details(status: grpc.Status) -> tuple[list[str], list[float]]:
    """The ``ErrorInfo`` reasons and ``RetryInfo`` delays (seconds) of a status."""
    raw = dict(status.trailing_metadata)["grpc-status-details-bin"]
    reasons, delays = [], []
    for detail in status_pb2.Status.FromString(raw).details:
        info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            reasons.append(info.reason)
        elif detail.Unpack(retry):
            delays.append(retry.retry_delay.ToTimedelta().total_seconds())
    return reasons, delays


@pytest.mark.parametrize(
    "exc",
    [OutcomeUnknown("not acknowledged within 2.7 s"), LedgerUnavailable("broker down")],
)
def test_a_write_not_acknowledged_in_time_says_its_outcome_is_unknown_and_how_to_retry(
    exc,
) -> None:
    status = to_status(exc)
    assert status.code is grpc.StatusCode.UNAVAILABLE
    assert status.details.startswith("outcome unknown")
    assert "retry with the same request_id" in status.details
    assert details(status) == (["OUTCOME_UNKNOWN"], [1.0])


def test_a_database_that_does_not_answer_in_time_is_unavailable_with_its_reason() -> None:
    status = to_status(StoreUnavailable("PostgreSQL did not answer find_event within 1.5 s"))
    assert status.code is grpc.StatusCode.UNAVAILABLE
    assert "find_event within 1.5 s" in status.details
    assert details(status) == (["STORE_UNAVAILABLE"], [1.0])
