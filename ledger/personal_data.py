"""What in an event is personal data, and how an event looks sealed, opened or erased.

An opt-in's proof names a person (name, email, postal address, IP address, how
they were signed up) and their own texts say what they wrote. That data is kept
apart from the rest of the fact: the service encrypts it with a key of the
event's subject, one phone number towards one brand, held outside the ledger
(``ledger.ports.SubjectKeys``; the cipher is ``services.personal_data``'s). The
ledger and its copies hold the ciphertext, so destroying the key erases the data
everywhere at once, while every event and the hash chain over its bytes stay as
they were: the ledger stays append-only and verifiable.

What is not sealed, and why: the consent wording, form URL and screenshot
reference and hashes (the same for everyone who used the form, and what an
auditor needs after an erasure), a state code (coarse, and the policy reads it
for quiet hours), and an age verification's date of birth: the age gate reads it
on every check (a person becomes 21 on a day), so it cannot sit behind a key the
check does not hold. After an erasure the fold stops reading it (``ledger.state``).

Pure: field names and string rewriting only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, NamedTuple

from ledger.events import (
    ConsentGranted,
    ConsentReconfirmed,
    ConsentRevoked,
    InboundMessageReceived,
    LedgerEvent,
    Recorded,
    RevocationCandidateFlagged,
    Sealed,
    SubjectErased,
    SubscriberEvent,
    SubscriberLocated,
    evolved,
)

SEALED = "[sealed]"
"""What a sealed field shows until it is opened: never empty, so a check of "was it
given" (``ConsentProof.template_missing``) reads a sealed field as given."""
ERASED = "[erased]"
"""What a field shows once its subject's key is destroyed, or the subject erased."""

PERSONAL_FIELDS: Mapping[type[LedgerEvent], tuple[str, ...]] = {
    ConsentGranted: (
        "proof.name",
        "proof.email",
        "proof.postal_address",
        "proof.ip_address",
        "proof.collection_detail",
    ),
    ConsentRevoked: ("text",),
    ConsentReconfirmed: ("detail",),
    InboundMessageReceived: ("body",),
    RevocationCandidateFlagged: ("text",),
    SubscriberLocated: ("detail",),
}
"""Per event class, the fields (``proof.name`` is a field of the proof) that hold
personal data. A class not named here holds none."""


def _get(event: Any, path: str) -> str:
    for part in path.split("."):
        event = getattr(event, part)
    value: str = event
    return value


def personal_data(event: LedgerEvent) -> dict[str, str]:
    """The personal data ``event`` holds in the clear, by field (empty fields left out)."""
    return {
        path: value
        for path in PERSONAL_FIELDS.get(type(event), ())
        if (value := _get(event, path)) and value not in (SEALED, ERASED)
    }


def with_fields(event: LedgerEvent, values: Mapping[str, str], **also: Any) -> LedgerEvent:
    """``event`` with each field of ``values`` set to its value, and each of ``also``
    (one ``replace`` per object changed: sealing runs on every opt-in written)."""
    top: dict[str, Any] = dict(also)
    nested: dict[str, dict[str, str]] = {}
    for path, value in values.items():
        head, _, rest = path.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            top[head] = value
    for head, inner in nested.items():
        top[head] = evolved(getattr(event, head), **inner)
    return evolved(event, **top) if top else event


def sealed_as(event: LedgerEvent, sealed: Sealed) -> LedgerEvent:
    """``event`` as stored: ``SEALED`` in each field ``sealed`` holds."""
    return with_fields(event, dict.fromkeys(sealed.fields, SEALED), sealed=sealed)


def opened(event: LedgerEvent, values: Mapping[str, str]) -> LedgerEvent:
    """A sealed ``event`` with its personal data back (``values`` decrypted)."""
    return with_fields(event, values, sealed=None)


def erased(event: LedgerEvent) -> LedgerEvent:
    """``event`` with ``ERASED`` in every field of personal data it had, sealed or not."""
    names = event.sealed.fields if event.sealed is not None else tuple(personal_data(event))
    return with_fields(event, dict.fromkeys(names, ERASED), sealed=None)


def associated_data(event: SubscriberEvent, key_id: str) -> bytes:
    """What a seal binds its ciphertext to: the event's id, type and subject, and the
    key. A ciphertext moved to another event, subject or key does not open."""
    parts = (
        "consent-ledger/personal-data/v1",
        str(event.event_id),
        type(event).EVENT_TYPE,
        event.phone,
        event.brand,
        key_id,
    )
    return "\x00".join(parts).encode()


def subject_of(event: LedgerEvent) -> tuple[str, str] | None:
    """The (phone, brand) whose key seals ``event``'s personal data; None for an event
    that holds none."""
    if isinstance(event, SubscriberEvent) and type(event) in PERSONAL_FIELDS:
        return event.phone, event.brand
    return None


class ErasedUpTo(NamedTuple):
    """A subject's latest erasure as a reader applies it (``erased_before``)."""

    offset: int
    """The ledger offset of its latest ``SubjectErased``."""
    at: datetime
    """The latest erasure's time."""

    def covers(self, r: Recorded) -> bool:
        """Whether ``r`` (of the subject) is shown erased: recorded before the erasure,
        or dated no later than it. Writes so dated are refused, but one another
        instance took before its copy had the erasure would show what was erased."""
        return r.position.offset < self.offset or r.event.occurred_at <= self.at


def erased_before(history: Iterable[Recorded]) -> dict[tuple[str, str], ErasedUpTo]:
    """Per subject (phone, brand) with a ``SubjectErased`` in ``history``, what of its
    events is shown erased (``ErasedUpTo.covers``), sealed or written in the clear
    before sealing existed (one phone lives in one partition, so offsets order a
    subject's events)."""
    latest: dict[tuple[str, str], ErasedUpTo] = {}
    for r in history:
        e = r.event
        if isinstance(e, SubjectErased):
            key = (e.phone, e.brand)
            seen = latest.get(key)
            if seen is None:
                latest[key] = ErasedUpTo(r.position.offset, e.occurred_at)
            else:
                latest[key] = ErasedUpTo(
                    max(seen.offset, r.position.offset), max(seen.at, e.occurred_at)
                )
    return latest
