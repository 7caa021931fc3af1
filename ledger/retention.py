"""How long proof is kept, and when a subject's personal data may be erased.

Proof of opt-in is evidence in a suit over a text sent without consent. Such a
suit under the TCPA (47 U.S.C. § 227) must be brought within four years, the
federal catch-all limitation period (28 U.S.C. § 1658(a), applied to the TCPA
since 2012, e.g. *Giovanniello v. ALM Media*, 726 F.3d 106 (2d Cir. 2013)), and a
do-not-call request is honoured five years (47 CFR 64.1200(d)(6)). So by default
proof is kept five years after the last fact about a phone and brand: the
limitation period, plus a year's margin for a suit filed on its last day and
served late. ``Retention(years=...)`` sets another period
(``CONSENT_RETENTION_YEARS``).

An erasure (``ledger.events.SubjectErased``) is possible from the end of that
period, and never while a legal hold stands (``LegalHoldPlaced`` not yet
``LegalHoldReleased``). ``erasure_verdict`` says which, and from when.

Pure: the caller passes the subject's history and ``now``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from ledger.commands import check_fields, check_name, check_time, request_fingerprint
from ledger.errors import InvalidRequest
from ledger.events import (
    LegalHoldPlaced,
    LegalHoldReleased,
    Recorded,
    RevocationCandidateFlagged,
    SubjectErased,
    SubscriberEvent,
    event_id_for,
)
from ledger.phone import to_e164
from ledger.reread import REREAD_PREFIX
from ledger.validation import TEXT_LIMITS, Violations, check_identifier, text_problem

DEFAULT_RETENTION_YEARS = 5


def add_years(moment: datetime, years: int) -> datetime:
    """``moment`` ``years`` later on the calendar; 29 February becomes 28 February in a
    year without one (the period never ends later than a year of 365 days would)."""
    try:
        return moment.replace(year=moment.year + years)
    except ValueError:
        return moment.replace(year=moment.year + years, day=28)


@dataclass(frozen=True)
class Retention:
    """Proof is kept ``years`` after the last fact about a phone and brand."""

    years: int = DEFAULT_RETENTION_YEARS

    def __post_init__(self) -> None:
        if self.years < 1:
            raise ValueError("a retention period is at least one year")

    def ends(self, last_fact: datetime) -> datetime:
        return add_years(last_fact, self.years)


class Refusal(enum.Enum):
    """Why an erasure is not possible now (``ErasureVerdict.refusal``)."""

    RETENTION_PERIOD = "RETENTION_PERIOD"
    """The proof is still inside its retention period."""
    LEGAL_HOLD = "LEGAL_HOLD"
    """A legal hold stands on the subject's records."""


NOT_RECORDED = frozenset({SubjectErased, LegalHoldPlaced, LegalHoldReleased})
"""Facts about the records, not about the person: they do not restart the period."""


@dataclass(frozen=True)
class ErasureVerdict:
    """Whether the subject may be erased at ``now``, and if not why and from when."""

    last_fact: datetime | None
    """When the last fact about the subject happened or was recorded (None: none)."""
    retained_until: datetime | None
    """When the retention period ends (None: nothing is retained)."""
    holds: tuple[str, ...]
    """The legal holds standing, by id."""
    refusal: Refusal | None
    possible_from: datetime | None
    """The first moment an erasure is possible: the period's end, when that is what
    stands in the way. None when possible now, or when a hold stands (it is possible
    once every hold is released, and not before ``retained_until``)."""

    @property
    def allowed(self) -> bool:
        return self.refusal is None

    def explain(self) -> str:
        if self.refusal is Refusal.LEGAL_HOLD:
            until = (
                f"; and not before {self.retained_until.isoformat()}, when the retention"
                " period ends"
                if self.retained_until is not None
                else ""
            )
            return (
                f"a legal hold stands ({', '.join(self.holds)}): erasure is possible once"
                f" every hold is released{until}"
            )
        if self.refusal is Refusal.RETENTION_PERIOD:
            assert self.possible_from is not None and self.last_fact is not None
            return (
                f"the proof is kept until {self.possible_from.isoformat()} (the retention"
                f" period after the last fact, of {self.last_fact.isoformat()}):"
                f" erasure is possible from then"
            )
        return "erasure is possible"


def standing_holds(history: Iterable[Recorded]) -> tuple[str, ...]:
    """The ids of the legal holds placed and not released, in ledger order: a hold is
    released by a later ``LegalHoldReleased`` of its id (ledger order: a release
    acts on the hold it was written against). Facts from two partitions (a number's
    two spellings, ``services.usecases.spellings``) are taken in the order the fold
    takes them, by ``recorded_at``: partition numbers say nothing of time."""
    standing: dict[str, None] = {}
    ordered = sorted(history, key=lambda r: (r.position.partition, r.position.offset))
    if len({r.position.partition for r in ordered}) > 1:
        ordered.sort(key=lambda r: r.recorded_at)
    for r in ordered:
        e = r.event
        if isinstance(e, LegalHoldPlaced):
            standing[e.hold_id] = None
        elif isinstance(e, LegalHoldReleased):
            standing.pop(e.hold_id, None)
    return tuple(standing)


def counted_from(r: Recorded) -> datetime:
    """When ``r``, a fact about the person, starts the period: the later of when it
    happened and when it was recorded (a fact recorded late is evidence from then on).
    A hold placed on a text read again (``ledger.reread``) is the service's reading of
    a text it had recorded, placed at the text's time: no new fact about the person, it
    counts from that time, as the do-not-call request it may be counts from when it was
    made (47 CFR 64.1200(d)(6)); from its record, the data of a text read again years
    on was kept that much longer than the policy says."""
    e = r.event
    if isinstance(e, RevocationCandidateFlagged) and e.request_id.startswith(REREAD_PREFIX):
        return e.occurred_at
    return max(e.occurred_at, r.recorded_at)


def erasure_verdict(
    history: Iterable[Recorded], retention: Retention, now: datetime
) -> ErasureVerdict:
    """May the subject whose facts are ``history`` (one phone towards one brand) be
    erased at ``now``? The period runs from the later of when its last fact happened
    and when it was recorded: a fact recorded late is evidence from then on."""
    facts = list(history)
    about_person = [
        r
        for r in facts
        if isinstance(r.event, SubscriberEvent) and type(r.event) not in NOT_RECORDED
    ]
    last = max((counted_from(r) for r in about_person), default=None)
    retained_until = retention.ends(last) if last is not None else None
    holds = standing_holds(facts)
    if holds:
        refusal: Refusal | None = Refusal.LEGAL_HOLD
        possible_from = None
    elif retained_until is not None and now < retained_until:
        refusal, possible_from = Refusal.RETENTION_PERIOD, retained_until
    else:
        refusal, possible_from = None, None
    return ErasureVerdict(last, retained_until, holds, refusal, possible_from)


# --- requests ------------------------------------------------------------------


@dataclass(frozen=True)
class RequestErasure:
    """Erase the personal data of ``phone`` towards ``brand``."""

    request_id: str
    phone: str
    brand: str
    reference: str = ""


@dataclass(frozen=True)
class PlaceLegalHold:
    request_id: str
    phone: str
    brand: str
    hold_id: str
    reason: str = ""
    occurred_at: datetime | None = None


@dataclass(frozen=True)
class ReleaseLegalHold:
    request_id: str
    phone: str
    brand: str
    hold_id: str
    occurred_at: datetime | None = None


def checked(cmd: Any, now: datetime) -> dict[str, Any]:
    """The fields every fact of these requests shares; ``InvalidRequest`` (or the first
    bad field's own error) naming every bad field of the request, in one refusal."""
    found = Violations()
    check_fields(
        {f.name: getattr(cmd, f.name) for f in fields(cmd) if f.name != "occurred_at"},
        now,
        found,
    )
    if getattr(cmd, "hold_id", None) == "":
        found.add(InvalidRequest("hold_id", "is required"))
    elif isinstance(cmd, PlaceLegalHold) and _fits_as_text(cmd.hold_id):
        # Its release names it again, so it must be an exact id: no space at an end,
        # nothing invisible. Only a new hold is held to that; a release still names
        # a hold placed before ids were checked, however it was spelt.
        found.check(check_identifier, cmd.hold_id, "hold_id")
    found.raise_if_any()
    fingerprint = request_fingerprint(cmd)
    return {
        "event_id": event_id_for(cmd.request_id, 0, cmd.brand, fingerprint),
        "occurred_at": now,
        "request_id": cmd.request_id,
        "request_fingerprint": fingerprint,
        "phone": to_e164(cmd.phone),
        "brand": cmd.brand,
    }


def _fits_as_text(hold_id: str) -> bool:
    """Whether ``hold_id`` passed the free-text checks, so that a refusal names one
    problem of it, not two."""
    return len(hold_id) <= TEXT_LIMITS["hold_id"] and text_problem(hold_id, "hold_id") is None


def erasure_event(
    cmd: RequestErasure, now: datetime, verdict: ErasureVerdict, requested_by: str
) -> SubjectErased:
    """The fact of an erasure the verdict allows (``verdict.allowed``)."""
    if not verdict.allowed:
        raise ValueError("an erasure the verdict refuses is not recorded")
    return SubjectErased(
        **checked(cmd, now),
        requested_by=requested_by,
        reference=cmd.reference,
        retained_until=verdict.retained_until,
    )


def hold_event(cmd: PlaceLegalHold | ReleaseLegalHold, now: datetime, by: str) -> SubscriberEvent:
    """The fact a hold request records, at ``now`` (or the ``occurred_at`` it gives)."""
    base = checked(cmd, now)
    if cmd.occurred_at is not None:
        base["occurred_at"] = check_time(cmd.occurred_at, now)
    if isinstance(cmd, PlaceLegalHold):
        return LegalHoldPlaced(**base, hold_id=cmd.hold_id, reason=cmd.reason, placed_by=by)
    return LegalHoldReleased(**base, hold_id=cmd.hold_id, released_by=by)


def check_subject(phone: str, brand: str) -> tuple[str, str]:
    """The subject of a read, or the refusal naming each bad field."""
    found = Violations()
    number = found.check(to_e164, phone, field="phone")
    found.check(check_name, brand, "brand")
    found.raise_if_any()
    assert number is not None
    return number, brand
