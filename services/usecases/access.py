"""Accountable access: every audit read is recorded before it is answered, and a
reader sees only its own brands.

Each audit use case takes the ``Reader`` (who asks, for which brands, under which
request id, through what) and calls ``Access.admit`` with what it is about to
read, before it reads: ``admit`` refuses another brand's read (``PermissionDenied``)
and writes the record to the ``AccessLog``; when the record cannot be written the
read is refused (``AccessNotRecorded``, UNAVAILABLE) and nothing is read. Every
entry point (the gRPC API, the console) goes through the use cases, so none can
read without leaving a record.

A call turned away before its read was admitted (another brand's, a token without
the audit scope, bad input, a campaign never defined) is recorded too, by the entry
point that answers it (``Access.refused``), with outcome ``refused``: the log says
who tried what, not only who read what. ``admitted`` tells the entry point whether
the call's read was admitted already, so that no call is recorded twice.
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial

from ledger.commands import check_name
from ledger.errors import DomainError, InvalidRequest
from ledger.phone import to_e164
from ledger.ports import AccessLog, AccessQuery, AccessRecord
from services.errors import AccessNotRecorded, PermissionDenied

log = logging.getLogger(__name__)

MAX_PAGE = 1001
"""The most records one listing reads: the API's largest page and one more, which
tells it whether there is a next page."""
_NOW: Callable[[], datetime] = partial(datetime.now, UTC)

MAX_SUBJECT = 128
"""The longest reader's name (a token's name is at most this long)."""

ADMITTED: ContextVar[bool] = ContextVar("audit_read_admitted", default=False)
"""Set in the call (the task) whose read ``Access.admit`` recorded: a refusal after
that (a view that cannot catch up) is no refusal of the read, which is on record."""

MAX_ASKED = 256
"""The most characters of a refused call's brand, number or campaign kept as asked:
a refusal of 100,000 characters of nonsense is on record without them."""


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
        self.observe_refusal: Callable[[AccessRecord], None] = lambda record: None
        """Told of each call refused before its read (counted for Prometheus too)."""

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
        ADMITTED.set(True)

    async def refused(
        self,
        subject: str,
        via: str,
        request_id: str,
        action: str,
        code: str,
        refusal: str,
        *,
        brand: str | None,
        phone: str | None = None,
        campaign: str | None = None,
    ) -> None:
        """Record that ``subject`` asked for the read ``action`` and was refused with
        ``code`` (a gRPC status name) and ``refusal`` before anything was read. The
        brand, number and campaign are kept as asked (they may be malformed), cut to
        ``MAX_ASKED`` characters and without control characters. A refusal that
        cannot be recorded is logged: the caller is refused either way."""
        record = AccessRecord(
            at=self.clock(),
            subject=subject,
            action=action,
            brand=_as_asked(brand),
            request_id=request_id,
            via=via,
            phone=_number_as_asked(phone),
            campaign=_as_asked(campaign),
            outcome="refused",
            refusal_code=code,
            refusal=_as_asked(refusal, 1024),
        )
        self.observe_refusal(record)
        try:
            await self.log.append(record)
        except Exception as exc:  # the answer is a refusal all the same
            log.warning("a refused audit call could not be recorded: %r", exc)

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
        if subject is not None and len(subject) > MAX_SUBJECT:
            raise InvalidRequest("subject", f"must be at most {MAX_SUBJECT} characters")
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


def _number_as_asked(phone: str | None) -> str | None:
    """A refused call's number in E.164 when it is one (so that listing by number
    finds the attempt with the reads), else as asked."""
    try:
        return to_e164(phone) if phone and len(phone) <= MAX_ASKED else _as_asked(phone)
    except DomainError:
        return _as_asked(phone)


def _as_asked(text: str | None, limit: int = MAX_ASKED) -> str | None:
    """``text`` as a caller sent it, safe to store and show: control characters (NUL
    among them, which PostgreSQL's text refuses) escaped, cut to ``limit``."""
    if not text:
        return None
    shown = "".join(
        c if unicodedata.category(c)[0] != "C" else f"\\x{ord(c):02x}" for c in text[: limit + 1]
    )
    return shown if len(shown) <= limit else shown[: limit - 1] + "\u2026"
