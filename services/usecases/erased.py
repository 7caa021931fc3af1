"""Whether a number's personal data towards a brand was erased, and when: what a
write dated at or before that time would store again.

An erasure destroys the key that sealed the subject's personal data; a write dated
no later than it (a stale export imported again, a gateway's late retry under a new
request id) would store the name, the email or the words erased all over again,
readable in ListEvents, the proof packet and the audit export. Such a write is
refused (``erased_refusal``); one dated after the erasure is written as before.

For a single write the time is read from the digests CanSend reads (``erased_since``
on ``DigestReads``: in the service the in-process replica, so the check adds no
PostgreSQL round trip), and from the erasures this instance acknowledged that the
replica may not have applied yet (``ErasedHere``): an erasure answered here always
refuses a write begun after it, one answered by another instance once the replica
has applied it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from ledger.digest import from_micros
from ledger.events import SubjectErased
from ledger.ports import ConsentView, ConsistencyToken, DigestReads
from services.errors import FailedPrecondition


class ErasedHere:
    """The erasures this instance acknowledged, by (brand, phone): their time and the
    token of their append, kept until what CanSend reads has applied them (then
    their digests say as much)."""

    def __init__(self) -> None:
        self._erased: dict[tuple[str, str], tuple[datetime, ConsistencyToken]] = {}

    def note(
        self, brand: str, phones: Iterable[str], at: datetime, token: ConsistencyToken
    ) -> None:
        """Note an erasure of ``phones`` towards ``brand`` at ``at``, appended up to
        ``token``, before it is answered."""
        for phone in phones:
            earlier = self._erased.get((brand, phone))
            if earlier is None or earlier[0] <= at:
                self._erased[(brand, phone)] = (at, token)

    def at(self, brand: str, phone: str, applied: ConsistencyToken) -> datetime | None:
        """The time of the latest erasure of ``phone`` towards ``brand`` noted here
        that a view at ``applied`` may not have applied; those it has are forgotten."""
        if not self._erased:
            return None  # nearly always: one test per write
        self._forget_applied(applied)
        noted = self._erased.get((brand, phone))
        return None if noted is None else noted[0]

    def _forget_applied(self, applied: ConsistencyToken) -> None:
        done = [
            key
            for key, (_, token) in self._erased.items()
            if all(applied.offsets.get(k, 0) >= offset for k, offset in token.offsets.items())
        ]
        for key in done:
            del self._erased[key]


async def erasure_times(
    reads: DigestReads, view: ConsentView, brand: str, phones: Sequence[str]
) -> dict[str, datetime]:
    """For each of ``phones`` whose personal data towards ``brand`` was erased, the
    latest erasure's time: from ``reads``' digests, and from the history in ``view``
    for a number whose digest cannot be read."""
    found: dict[str, datetime] = {}
    digests, unread = await reads.readable_digests(brand, phones)
    for phone, digest in digests.items():
        if digest.erased is not None:
            found[phone] = from_micros(digest.erased.at)
    for phone in unread:
        times = [
            r.event.occurred_at
            for r in await view.history(phone, brand)
            if isinstance(r.event, SubjectErased)
        ]
        if times:
            found[phone] = max(times)
    return found


async def erased_since(
    reads: DigestReads,
    view: ConsentView,
    here: ErasedHere,
    applied: ConsistencyToken,
    brand: str,
    phones: Sequence[str],
) -> dict[str, datetime]:
    """``erasure_times``, with ``here``'s notes of erasures ``reads`` may not have
    applied yet. ``applied``: how far ``reads`` has applied the ledger
    (``FreshnessGuard.applied_token``)."""
    found = await erasure_times(reads, view, brand, phones)
    for phone in phones:
        noted = here.at(brand, phone, applied)
        if noted is not None and (phone not in found or found[phone] < noted):
            found[phone] = noted
    return found


def erased_refusal(brand: str, at: datetime, done: str = "imported") -> FailedPrecondition:
    """The refusal of a record dated at or before ``at``, when the number's personal
    data towards ``brand`` was erased; ``done``: what the record would have been
    ("imported", "recorded")."""
    reason = (
        f"the personal data of this number for {brand!r} was erased at "
        f"{at.isoformat()}, and this record is dated no later: what was erased "
        f"is not {done} again; a consent given since needs a time after it"
    )
    return FailedPrecondition("occurred_at", reason)
