"""Texts the person sent, read again under the current rules (``ledger.keywords``).

A text is recorded with what it was read as when it came (``InboundMessageReceived``
``intent``, and the ``ConsentRevoked`` or ``RevocationCandidateFlagged`` recorded with
it), and the ledger never rewrites that: the keyword rules were fixed many times
since (a STOP in look-alike letters, a Hangul filler beside it), and a disguised
STOP recorded before such a fix stays a conversation. So every stored text that
read as no opt-out then and reads as one, or as a possible one, now is held for
review from its own time, as a flagged reply is: a ``RevocationCandidateFlagged``
appended now, which every reader of the ledger already honours and a reviewer
resolves. A text read then as an opt-out or flagged is left as it was, whatever
the current rules read: a reading never relaxes.

The fold cannot do it by itself: a text's words are sealed in the ledger
(``ledger.personal_data``), and only a reader holding the subject's key reads them.

Pure: the caller reads the ledger, opens the texts and appends the holds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from ledger.events import (
    ConsentRevoked,
    InboundMessageReceived,
    LedgerEvent,
    RevocationCandidateFlagged,
    SubjectErased,
    event_id_for,
)
from ledger.keywords import Intent, classify
from ledger.personal_data import ERASED, SEALED

REREAD_PREFIX = "reread-"
"""The request id of a hold placed on a text read again: the service's, derived from
the text (``reread_hold``), so placing it again stores it once."""

STOPPING = frozenset({Intent.OPT_OUT, Intent.OPT_OUT_BRAND_WIDE, Intent.REVOCATION_CANDIDATE})
"""Readings that stop sends: an opt-out, or a reply held for review."""
_STOPPED = frozenset(i.value for i in STOPPING)

Key = tuple[str, str, str]
"""A text by its subject and provider message id: (phone, brand, message id)."""


def relevant(event: LedgerEvent) -> bool:
    """Whether ``reread_holds`` reads ``event``: a text whose stored reading stops
    nothing, what says a text was read as stopping, and an erasure (which the caller
    needs to show erased texts as such when it opens them)."""
    if isinstance(event, InboundMessageReceived):
        return event.intent not in _STOPPED
    if isinstance(event, ConsentRevoked):
        return bool(event.in_reply_to)
    if isinstance(event, RevocationCandidateFlagged):
        return bool(event.inbound_message_id)
    return isinstance(event, SubjectErased)


def reread_holds(
    events: Iterable[LedgerEvent], *, recorded_by: str = ""
) -> list[RevocationCandidateFlagged]:
    """The holds owed to the texts among ``events`` (opened: their words readable, or
    ``ERASED``) that the current rules read as stopping where their stored reading
    did not. A text's stored reading stops when its ``intent`` says so or when an
    opt-out or a hold names it (``stopped_text``): texts recorded before the intent
    was kept, a STOP to a number no campaign sends from, and a text a hold of this
    module has already been placed on."""
    texts: dict[Key, InboundMessageReceived] = {}
    stopped: set[Key] = set()
    for event in events:
        if isinstance(event, InboundMessageReceived):
            texts.setdefault((event.phone, event.brand, event.message_id), event)
        key = stopped_text(event)
        if key is not None:
            stopped.add(key)
    return [
        reread_hold(text, recorded_by=recorded_by)
        for key, text in texts.items()
        if key not in stopped and reads_stricter(text)
    ]


def stopped_text(event: LedgerEvent) -> Key | None:
    """The text ``event`` says was read as stopping, if any: a text whose intent says
    so, or the text an opt-out answers (``in_reply_to``) or a hold holds
    (``inbound_message_id``). Either is recorded after its text."""
    if isinstance(event, InboundMessageReceived):
        return (event.phone, event.brand, event.message_id) if event.intent in _STOPPED else None
    if isinstance(event, ConsentRevoked) and event.in_reply_to:
        return (event.phone, event.brand, event.in_reply_to)
    if isinstance(event, RevocationCandidateFlagged) and event.inbound_message_id:
        return (event.phone, event.brand, event.inbound_message_id)
    return None


def held_text(hold: RevocationCandidateFlagged) -> Key:
    """The text a hold of ``reread_holds`` holds."""
    return (hold.phone, hold.brand, hold.inbound_message_id)


def reads_stricter(text: InboundMessageReceived) -> bool:
    """Whether the current rules read ``text`` as stopping and its stored intent did
    not. Words that cannot be read (sealed without its key, erased) stay as read."""
    if text.intent in _STOPPED or text.body in (SEALED, ERASED):
        return False
    return classify(text.body) in STOPPING


def reread_hold(
    text: InboundMessageReceived, *, recorded_by: str = ""
) -> RevocationCandidateFlagged:
    """The hold of ``text``, read again as stopping: at the text's own time, with its
    words and message id, as the reply would have been flagged when it came. Its ids
    digest the text, so a second placing is the first's retry."""
    said = f"{text.brand}\0{text.phone}\0{text.message_id}"
    digest = hashlib.sha256(said.encode()).hexdigest()[:32]
    request_id = f"{REREAD_PREFIX}{digest}"
    return RevocationCandidateFlagged(
        event_id=event_id_for(request_id, 0, text.brand, digest),
        occurred_at=text.occurred_at,
        request_id=request_id,
        request_fingerprint=digest,
        recorded_by=recorded_by,
        phone=text.phone,
        brand=text.brand,
        inbound_message_id=text.message_id,
        text=text.body,
        to_number=text.to_number,
    )
