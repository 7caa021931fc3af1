"""Accountable access: every audit read is recorded before it is answered, and a
reader sees only its own brands.

Each audit use case takes the ``Reader`` (who asks, for which brands, under which
request id, through what) and calls ``Access.admit`` with what it is about to
read, before it reads: ``admit`` refuses another brand's read (``PermissionDenied``)
and writes the record to the ``AccessLog``; when the record cannot be written the
read is refused (``AccessNotRecorded``, UNAVAILABLE) and nothing is read. Every
entry point (the gRPC API, the console) goes through the use cases, so none can
read without leaving a record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial

from ledger.commands import check_name
from ledger.errors import InvalidRequest
from ledger.phone import to_e164
from ledger.ports import AccessLog, AccessQuery, AccessRecord
from services.errors import AccessNotRecorded, PermissionDenied

log = logging.getLogger(__name__)

MAX_PAGE = 1001
"""The most records one listing reads: the API's largest page and one more, which
tells it whether there is a next page."""
_NOW: Callable[[], datetime] = partial(datetime.now, UTC)


@dataclass(frozen=True)
class Reader:
    """Who reads: the token's (or certificate's) name, the brands it may read (None:
    every brand), the call's request id, and what it came through."""

    subject: str
    brands: frozenset[str] | None
    request_id: str
    via: str = "grpc"

    def require_brand(self, brand: str | None) -> None:
        """``PermissionDenied`` unless this reader may read ``brand`` (None: every
        brand, which only a reader of every brand may)."""
        if self.brands is None:
            return
        if brand is None:
            raise PermissionDenied(
                "brand", f"{self.subject} may read only its own brands: name one"
            )
        if brand not in self.brands:
            raise PermissionDenied("brand", f"{self.subject} may not read brand {brand!r}")


class Access:
    def __init__(self, log: AccessLog, clock: Callable[[], datetime] = _NOW) -> None:
        self.log = log
        self.clock = clock
        self.observe: Callable[[AccessRecord, bool], None] = lambda record, written: None
        """Told of each read admitted: its record, and whether it was written (the
        service counts them for Prometheus)."""

    async def admit(
        self,
        reader: Reader,
        action: str,
        brand: str | None,
        *,
        phone: str | None = None,
        campaign: str | None = None,
        detail: Mapping[str, str | None] | None = None,
    ) -> None:
        """Let ``reader`` do the read ``action`` of ``brand`` (and ``phone``,
        ``campaign``), recording it first; refuse another brand's read
        (``PermissionDenied``), and any read whose record cannot be written
        (``AccessNotRecorded``)."""
        reader.require_brand(brand)
        record = AccessRecord(
            at=self.clock(),
            subject=reader.subject,
            action=action,
            brand=brand,
            request_id=reader.request_id,
            via=reader.via,
            phone=phone,
            campaign=campaign,
            detail={k: v for k, v in (detail or {}).items() if v is not None},
        )
        try:
            await self.log.append(record)
        except Exception as exc:  # whatever the cause, no record means no read
            self.observe(record, False)
            log.warning(
                "an audit read was refused: its access record could not be written: %r", exc
            )
            raise AccessNotRecorded(
                "access",
                "the read could not be recorded (every audit read is), so it was not "
                "answered; retry",
            ) from exc
        self.observe(record, True)

    async def list(
        self,
        reader: Reader,
        brand: str | None,
        *,
        phone: str | None = None,
        subject: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        before: int | None = None,
        limit: int = 100,
    ) -> Sequence[AccessRecord]:
        """The audit reads of ``brand`` (None: every brand's, for a reader of every
        brand), newest first, optionally of one number or one reader, in ``[start,
        end)``, below the id ``before``: a read itself, recorded first."""
        if brand is not None:
            check_name(brand, "brand")
        number = None if phone is None else to_e164(phone)
        if start is not None and end is not None and start >= end:
            raise InvalidRequest("start_time", "must be before end_time")
        if not 0 < limit <= MAX_PAGE:
            raise InvalidRequest("page_size", f"must be 1-{MAX_PAGE}")
        await self.admit(
            reader,
            "ListAuditAccess",
            brand,
            phone=number,
            detail={
                "subject": subject,
                "start_time": None if start is None else start.isoformat(),
                "end_time": None if end is None else end.isoformat(),
            },
        )
        return await self.log.list(
            AccessQuery(
                brands=None if brand is None else frozenset({brand}),
                phone=number,
                subject=subject,
                start=start,
                end=end,
                before=before,
                limit=limit,
            )
        )
