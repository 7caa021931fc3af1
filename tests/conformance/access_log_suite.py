"""The ``AccessLog`` conformance suite: every adapter records and lists audit reads
alike. Subclass it with an ``access_log`` fixture."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ledger.ports import AccessLog, AccessQuery, AccessRecord

pytestmark = pytest.mark.asyncio(loop_scope="session")

T0 = datetime(2026, 12, 2, 9, 30, 0, 123000, tzinfo=UTC)


def access(
    at: datetime = T0, brand: str | None = "acme", subject: str = "auditor", **more: object
) -> AccessRecord:
    return AccessRecord(at, subject, "ListEvents", brand, "req-1", **more)  # type: ignore[arg-type]


class AccessLogSuite:
    async def test_a_record_comes_back_as_written_with_a_growing_id(
        self, access_log: AccessLog
    ) -> None:
        first = await access_log.append(access())
        written = access(
            T0 + timedelta(seconds=1),
            phone="+14155552671",
            campaign="promo",
            via="console",
            detail={"format": "pdf", "at": "2026-01-01T00:00:00+00:00"},
        )
        second = await access_log.append(written)
        assert second > first
        (found, _) = await access_log.list(AccessQuery(None))
        assert found.id == second
        assert (found.at, found.subject, found.action, found.brand) == (
            written.at,
            "auditor",
            "ListEvents",
            "acme",
        )
        assert (found.phone, found.campaign, found.via, found.request_id) == (
            "+14155552671",
            "promo",
            "console",
            "req-1",
        )
        assert dict(found.detail) == {"format": "pdf", "at": "2026-01-01T00:00:00+00:00"}

    async def test_records_are_listed_newest_first_by_brand(self, access_log: AccessLog) -> None:
        for brand in ("acme", "globex", None, "acme"):
            await access_log.append(access(brand=brand))
        acme = await access_log.list(AccessQuery(frozenset({"acme"})))
        both = await access_log.list(AccessQuery(frozenset({"acme", "globex"})))
        everything = await access_log.list(AccessQuery(None))
        assert [r.brand for r in acme] == ["acme", "acme"]
        assert [r.brand for r in both] == ["acme", "globex", "acme"]
        assert [r.brand for r in everything] == ["acme", None, "globex", "acme"]
        ids = [r.id for r in everything]
        assert ids == sorted(ids, reverse=True)  # type: ignore[type-var]

    async def test_records_are_selected_by_number_reader_time_and_page(
        self, access_log: AccessLog
    ) -> None:
        for i in range(5):
            await access_log.append(
                access(
                    T0 + timedelta(minutes=i),
                    subject="a" if i % 2 else "b",
                    phone="+14155552671" if i < 3 else "+14155552672",
                )
            )
        every = AccessQuery(None)
        assert len(await access_log.list(every)) == 5

        def ask(**changes: object) -> AccessQuery:
            return AccessQuery(None, **changes)  # type: ignore[arg-type]

        by_phone = await access_log.list(ask(phone="+14155552672"))
        by_subject = await access_log.list(ask(subject="a"))
        in_range = await access_log.list(
            ask(start=T0 + timedelta(minutes=1), end=T0 + timedelta(minutes=3))
        )
        page = await access_log.list(ask(limit=2))
        next_page = await access_log.list(ask(limit=2, before=page[-1].id))
        assert [r.at for r in by_phone] == [T0 + timedelta(minutes=i) for i in (4, 3)]
        assert [r.subject for r in by_subject] == ["a", "a"]
        assert [r.at for r in in_range] == [T0 + timedelta(minutes=i) for i in (2, 1)]
        assert [r.at for r in page + next_page] == [T0 + timedelta(minutes=i) for i in (4, 3, 2, 1)]

    async def test_a_refusal_comes_back_with_its_outcome(self, access_log: AccessLog) -> None:
        await access_log.append(access())
        await access_log.append(
            access(
                brand="globex",
                outcome="refused",
                refusal_code="PERMISSION_DENIED",
                refusal="brand: auditor may not read brand 'globex'",
            )
        )
        refused, admitted = await access_log.list(AccessQuery(None))
        assert (refused.outcome, refused.refusal_code, refused.refusal) == (
            "refused",
            "PERMISSION_DENIED",
            "brand: auditor may not read brand 'globex'",
        )
        assert (admitted.outcome, admitted.refusal_code, admitted.refusal) == (
            "admitted",
            None,
            None,
        )
