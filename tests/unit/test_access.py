"""Accountable access (``services.usecases.access``): every audit read is recorded
before it is answered, a reader reads only its own brands, and a read whose record
cannot be written is refused, unread."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest

from ledger.errors import InvalidRequest
from ledger.ports import AccessQuery, AccessRecord
from services.adapters.memory_access import InMemoryAccessLog
from services.errors import AccessNotRecorded, PermissionDenied
from services.usecases.access import MAX_ASKED, Access, Reader
from tests.builders import BRAND, PHONE, at
from tests.unit.usecase_harness import NOW, App, define, opt_in, running

pytestmark = pytest.mark.asyncio(loop_scope="session")

ACME = Reader("acme-auditor", frozenset({BRAND}), "req-1")
GLOBEX = Reader("globex-auditor", frozenset({"globex"}), "req-2")
OPERATOR = Reader("operator", None, "req-3", via="console")


async def _drain(stream: Any) -> list[Any]:
    return [item async for item in stream]


async def _first(stream: Any) -> None:
    """Start a stream (its read is admitted before its first item), then end it."""
    try:
        await anext(stream)
    finally:
        await stream.aclose()


Read = Callable[[App, Reader], Awaitable[object]]
READS: dict[str, tuple[Read, dict[str, Any]]] = {
    "GetConsent": (
        lambda app, r: app.audit.get_consent(PHONE, BRAND, "promo", reader=r),
        {"phone": PHONE, "campaign": "promo"},
    ),
    "ListEvents": (
        lambda app, r: app.audit.history(PHONE, BRAND, reader=r),
        {"phone": PHONE},
    ),
    "GetProofPacket": (
        lambda app, r: app.audit.proof_packet(PHONE, BRAND, "promo", reader=r, document="pdf"),
        {"phone": PHONE, "campaign": "promo", "detail": {"format": "pdf"}},
    ),
    "GetOptOutRate": (
        lambda app, r: app.audit.opt_out_rate(BRAND, "promo", at(0), NOW, reader=r),
        {
            "campaign": "promo",
            "detail": {"start_time": at(0).isoformat(), "end_time": NOW.isoformat()},
        },
    ),
    "GetCampaignHealth": (
        lambda app, r: app.audit.campaign_health(BRAND, "promo", at(0), NOW, reader=r),
        {
            "campaign": "promo",
            "detail": {"start_time": at(0).isoformat(), "end_time": NOW.isoformat()},
        },
    ),
    "CanSendAsOf": (
        lambda app, r: app.checks.can_send_as_of(PHONE, BRAND, "promo", at(1), reader=r),
        {"phone": PHONE, "campaign": "promo"},
    ),
    "ListRevocationCandidates": (
        lambda app, r: app.review.revocation_candidates(BRAND, reader=r),
        {},
    ),
    "SweepCampaign": (
        lambda app, r: _drain(app.audit.sweep(BRAND, "promo", at(0), NOW, reader=r)),
        {"campaign": "promo"},
    ),
    "WatchConsentChanges": (
        lambda app, r: _first(app.audit.watch_changes(BRAND, None, reader=r)),
        {},
    ),
}


def _log(app: App) -> InMemoryAccessLog:
    log = app.audit.ctx.access.log
    assert isinstance(log, InMemoryAccessLog)
    return log


@pytest.mark.parametrize("action", sorted(READS))
async def test_every_audit_read_is_recorded_with_who_what_and_when(action: str) -> None:
    read, expected = READS[action]
    async with running() as (app, _):
        await app.writes.record(define())
        granted = await app.writes.record(opt_in("r1"))
        assert await app.guard.wait_for_token(granted.token)
        await read(app, ACME)
        (record,) = _log(app).records
    assert record.subject == "acme-auditor" and record.request_id == "req-1"
    assert (record.action, record.brand, record.via, record.at) == (action, BRAND, "grpc", NOW)
    assert record.phone == expected.get("phone")
    assert record.campaign == expected.get("campaign")
    for key, value in expected.get("detail", {}).items():
        assert record.detail[key] == value


@pytest.mark.parametrize("action", sorted(READS))
async def test_another_brands_read_is_refused_and_leaves_no_record(action: str) -> None:
    read, _ = READS[action]
    async with running() as (app, _):
        await app.writes.record(define())
        with pytest.raises(PermissionDenied) as err:
            await read(app, GLOBEX)
        assert _log(app).records == []
    assert err.value.field == "brand" and "globex-auditor" in err.value.reason


class _Broken(InMemoryAccessLog):
    async def append(self, record: AccessRecord) -> int:
        raise ConnectionError("the database is gone")


@pytest.mark.parametrize("action", sorted(READS))
async def test_a_read_whose_record_cannot_be_written_is_refused_before_it_reads(
    action: str,
) -> None:
    read, _ = READS[action]
    async with running() as (app, _):
        await app.writes.record(define())
        app.audit.ctx.access.log = _Broken()
        view = app.audit.ctx.view
        touched: list[str] = []
        for name in ("history", "subscriber_states", "campaign_history", "sending_counts"):
            real = getattr(view, name)

            def spy(*args: Any, _name: str = name, _real: Any = real, **kw: Any) -> Any:
                touched.append(_name)
                return _real(*args, **kw)

            setattr(view, name, spy)
        with pytest.raises(AccessNotRecorded) as err:
            await read(app, ACME)
    assert err.value.field == "access"
    assert touched == []  # nothing was read


async def test_a_read_across_every_brand_is_for_a_reader_of_every_brand_only() -> None:
    async with running() as (app, _):
        await app.writes.record(define())
        with pytest.raises(PermissionDenied):
            await app.audit.history(PHONE, None, reader=ACME)
        await app.audit.history(PHONE, None, reader=OPERATOR)
        (record,) = _log(app).records
    assert (record.brand, record.subject, record.via) == (None, "operator", "console")


async def test_listing_the_access_records_is_itself_recorded_and_sees_only_its_brands() -> None:
    async with running() as (app, _):
        await app.writes.record(define())
        await app.audit.history(PHONE, BRAND, reader=ACME)
        await app.audit.history(PHONE, "globex", reader=GLOBEX)
        await app.audit.history(PHONE, None, reader=OPERATOR)
        listed = await app.access.list(ACME, BRAND)
        with pytest.raises(PermissionDenied):
            await app.access.list(ACME, "globex")
        with pytest.raises(PermissionDenied):
            await app.access.list(ACME, None)  # every brand's: an operator's list
        everything = await app.access.list(OPERATOR, None)
    # newest first, its own listing at the top
    assert [(r.action, r.subject) for r in listed] == [
        ("ListAuditAccess", "acme-auditor"),
        ("ListEvents", "acme-auditor"),
    ]
    assert [r.brand for r in everything] == [None, BRAND, None, "globex", BRAND]


async def test_access_records_are_listed_by_number_reader_time_and_page() -> None:
    async with running() as (app, _):
        await app.writes.record(define())
        for _ in range(3):
            await app.audit.history(PHONE, BRAND, reader=ACME)
        await app.audit.history("+14155550199", BRAND, reader=ACME)
        by_number = await app.access.list(OPERATOR, BRAND, phone=PHONE)
        by_reader = await app.access.list(OPERATOR, BRAND, subject="nobody")
        first = await app.access.list(OPERATOR, BRAND, limit=2)
        rest = await app.access.list(OPERATOR, BRAND, before=first[-1].id, limit=10)
        later = await app.access.list(OPERATOR, BRAND, start=NOW + timedelta(seconds=1))
        with pytest.raises(InvalidRequest):
            await app.access.list(OPERATOR, BRAND, start=NOW, end=NOW)
        with pytest.raises(InvalidRequest):
            await app.access.list(OPERATOR, BRAND, limit=0)
    assert len(by_number) == 4  # three reads, and the list of them (of that number)
    assert by_reader == []
    # four reads, then three listings: the third's page is itself and the second
    assert [r.id for r in first] == [7, 6]
    assert [r.id for r in rest] == [5, 4, 3, 2, 1]  # its own record (8) is above the page
    assert later == []


async def test_memory_log_selects_as_asked() -> None:
    log = InMemoryAccessLog()
    for brand in ("a", "b", "a"):
        await log.append(AccessRecord(NOW, "x", "ListEvents", brand, "req"))
    found = await log.list(AccessQuery(frozenset({"a"})))
    assert [r.id for r in found] == [3, 1]


async def test_each_read_is_told_to_the_observer_recorded_or_not() -> None:
    seen: list[tuple[str, bool]] = []
    async with running() as (app, _):
        await app.writes.record(define())
        app.access.observe = lambda record, written: seen.append((record.action, written))
        await app.audit.history(PHONE, BRAND, reader=ACME)
        app.access.log = _Broken()
        with pytest.raises(AccessNotRecorded):
            await app.audit.history(PHONE, BRAND, reader=ACME)
        with pytest.raises(PermissionDenied):
            await app.audit.history(PHONE, "globex", reader=ACME)
    assert seen == [("ListEvents", True), ("ListEvents", False)]


async def test_a_refusal_is_recorded_as_asked_made_safe_to_store() -> None:
    log = InMemoryAccessLog()
    access = Access(log, clock=lambda: NOW)
    await access.refused(
        "globex-auditor",
        "grpc",
        "req-9",
        "GetProofPacket",
        "INVALID_ARGUMENT",
        "phone: is not a phone number",
        brand=BRAND,
        phone="12\x00" + "9" * 10_000,
        campaign="",
    )
    (record,) = log.records
    assert (record.outcome, record.refusal_code, record.refusal) == (
        "refused",
        "INVALID_ARGUMENT",
        "phone: is not a phone number",
    )
    assert (record.subject, record.action, record.brand, record.campaign) == (
        "globex-auditor",
        "GetProofPacket",
        BRAND,
        None,
    )
    assert record.phone is not None and record.phone.startswith("12\\x0099")
    assert len(record.phone) == MAX_ASKED and record.phone.endswith("\u2026")


async def test_a_refused_number_is_kept_in_e164_when_it_is_one() -> None:
    log = InMemoryAccessLog()
    access = Access(log, clock=lambda: NOW)
    for asked in ("+1 415 555 2671", "(415) 555-2671"):
        await access.refused(
            "globex-auditor", "grpc", "r", "ListEvents", "PERMISSION_DENIED", "no",
            brand=BRAND, phone=asked,
        )  # fmt: skip
    assert [r.phone for r in log.records] == ["+14155552671", "(415) 555-2671"]


async def test_a_refusal_that_cannot_be_recorded_is_still_a_refusal() -> None:
    access = Access(_Broken(), clock=lambda: NOW)
    await access.refused(  # logged, not raised: the caller is refused either way
        "x", "grpc", "req", "ListEvents", "PERMISSION_DENIED", "no", brand=BRAND
    )


async def test_the_cli_shows_a_refused_attempt_as_refused() -> None:
    from consent.v1 import consent_service_pb2 as api_pb2

    from services.cli.audit import access as access_cli

    refused = access_cli.record(
        api_pb2.AuditAccess(
            id=7,
            subject="globex-auditor",
            via="grpc",
            action="GetProofPacket",
            brand=BRAND,
            phone=PHONE,
            request_id="req-9",
            outcome="refused",
            refusal_code="PERMISSION_DENIED",
            refusal="globex-auditor may not act for brand 'acme'",
        )
    )
    admitted = access_cli.record(
        api_pb2.AuditAccess(id=8, subject="a", via="grpc", action="ListEvents", brand=BRAND)
    )
    assert (refused["outcome"], refused["refusal_code"]) == ("refused", "PERMISSION_DENIED")
    assert access_cli.text(refused).endswith(
        "  REFUSED PERMISSION_DENIED: globex-auditor may not act for brand 'acme'"
    )
    # A record of a service older than the outcome field reads as admitted.
    assert admitted["outcome"] == "admitted" and "REFUSED" not in access_cli.text(admitted)
