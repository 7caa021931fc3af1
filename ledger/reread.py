"""Texts the person sent, read again under the current rules (``ledger.keywords``).

A text is recorded with what it was read as when it came (``InboundMessageReceived``
``intent``, and the ``ConsentRevoked`` or ``RevocationCandidateFlagged`` recorded with
it), and the ledger never rewrites that: the keyword rules were fixed many times
since (a STOP in look-alike letters, a Hangul filler beside it), and a disguised
STOP recorded before such a fix stays a conversation. So every stored text that
the current rules read as stopping more than it was read then (``HOW_FAR``) is
held for review from its own time, as a flagged reply is: a
``RevocationCandidateFlagged`` appended now, which every reader of the ledger
already honours and a reviewer resolves. A text read then as stopping as much or
more is left as it was, whatever the current rules read: a reading never relaxes.

The fold cannot do it by itself: a text's words are sealed in the ledger
(``ledger.personal_data``), and only a reader holding the subject's key reads them.

Pure: the caller reads the ledger, opens the texts and appends the holds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

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

HOW_FAR = {Intent.REVOCATION_CANDIDATE: 1, Intent.OPT_OUT: 2, Intent.OPT_OUT_BRAND_WIDE: 3}
"""How far a reading stops sends: a reply held for review (its campaign's conversation,
and the brand's sends once overdue), one campaign, every campaign of the brand.
Any other reading stops nothing (0)."""
_HELD = 3
"""How far a text held for review stops, as stored: its hold is a person's to read,
and a reading that stops more adds nothing to it."""
_STORED = {
    Intent.OPT_OUT.value: HOW_FAR[Intent.OPT_OUT],
    Intent.OPT_OUT_BRAND_WIDE.value: HOW_FAR[Intent.OPT_OUT_BRAND_WIDE],
    Intent.REVOCATION_CANDIDATE.value: _HELD,
}
"""How far a text's stored ``intent`` stops; texts recorded before the intent was
kept have none, and the opt-out or hold recorded with them says it."""

Key = tuple[str, str, str]
"""A text by its subject and provider message id: (phone, brand, message id)."""


def relevant(event: LedgerEvent) -> bool:
    """Whether ``reread_holds`` reads ``event``: a text whose stored reading may stop
    less than the current rules read it, what says how far a text was read as
    stopping, and an erasure (which the caller needs to show erased texts as such
    when it opens them)."""
    if isinstance(event, InboundMessageReceived):
        return _STORED.get(event.intent, 0) < _HELD
    if isinstance(event, ConsentRevoked):
        return bool(event.in_reply_to)
    if isinstance(event, RevocationCandidateFlagged):
        return bool(event.inbound_message_id)
    return isinstance(event, SubjectErased)


def reread_holds(
    events: Iterable[LedgerEvent], *, recorded_by: str = ""
) -> list[RevocationCandidateFlagged]:
    """The holds owed to the texts among ``events`` (opened: their words readable, or
    ``ERASED``) that the current rules read as stopping more than they were read
    when stored: a conversation, a HELP or a START now read as an opt-out or held
    for review, an opt-out of one campaign now read as one of every campaign. How
    far a stored reading stops is the most any of the text's facts says
    (``stored_reading``): its ``intent``, and the opt-out or hold that names it, for
    texts recorded before the intent was kept, a STOP to a number no campaign sends
    from, and a text a hold of this module has already been placed on."""
    texts: dict[Key, InboundMessageReceived] = {}
    stored: dict[Key, int] = {}
    for event in events:
        if isinstance(event, InboundMessageReceived):
            texts.setdefault((event.phone, event.brand, event.message_id), event)
        found = stored_reading(event)
        if found is not None:
            key, far = found
            stored[key] = max(stored.get(key, 0), far)
    return [
        reread_hold(text, recorded_by=recorded_by)
        for key, text in texts.items()
        if reads_as(text.body) > stored.get(key, 0)
    ]


def stored_reading(event: LedgerEvent) -> tuple[Key, int] | None:
    """The text ``event`` says how far its stored reading stops, and how far: a text
    by its ``intent``, an opt-out that answers it (``in_reply_to``) by its scope, a
    hold that holds it (``inbound_message_id``) as held. The opt-out or hold is
    recorded after its text."""
    if isinstance(event, InboundMessageReceived):
        return (event.phone, event.brand, event.message_id), _STORED.get(event.intent, 0)
    if isinstance(event, ConsentRevoked) and event.in_reply_to:
        far = HOW_FAR[Intent.OPT_OUT_BRAND_WIDE if event.campaign is None else Intent.OPT_OUT]
        return (event.phone, event.brand, event.in_reply_to), far
    if isinstance(event, RevocationCandidateFlagged) and event.inbound_message_id:
        return (event.phone, event.brand, event.inbound_message_id), _HELD
    return None


def held_text(hold: RevocationCandidateFlagged) -> Key:
    """The text a hold of ``reread_holds`` holds."""
    return (hold.phone, hold.brand, hold.inbound_message_id)


def reads_as(words: str) -> int:
    """How far the current rules read ``words`` as stopping (``HOW_FAR``). Words that
    cannot be read (sealed without their key, erased) stop nothing: they stay as
    they were read."""
    if words in (SEALED, ERASED):
        return 0
    return HOW_FAR.get(classify(words), 0)


def reread_hold(
    text: InboundMessageReceived, *, recorded_by: str = ""
) -> RevocationCandidateFlagged:
    """The hold of ``text``, read again as stopping: at the text's own time, with its
    words and message id, as the reply would have been flagged when it came. Its ids
    digest the text, so a second placing is the first's retry."""
    return RevocationCandidateFlagged(
        **_ids(text.brand, f"{text.brand}\0{text.phone}\0{text.message_id}"),
        occurred_at=text.occurred_at,
        recorded_by=recorded_by,
        phone=text.phone,
        brand=text.brand,
        inbound_message_id=text.message_id,
        text=text.body,
        to_number=text.to_number,
    )


def held_for(hold: RevocationCandidateFlagged, brand: str) -> RevocationCandidateFlagged:
    """``hold`` (``reread_hold``'s) placed under ``brand`` too: another brand's campaign
    sent from the number the text reached when it was sent, and it answered that
    brand's messages. Its ids digest the text and ``brand``, so each brand is held
    once however often the text is read again, and they name no other brand."""
    said = f"{brand}\0{hold.brand}\0{hold.phone}\0{hold.inbound_message_id}"
    return replace(hold, brand=brand, **_ids(brand, said))


def _ids(brand: str, said: str) -> dict[str, Any]:
    """The ids of a hold under ``brand`` placed on the text ``said`` names."""
    digest = hashlib.sha256(said.encode()).hexdigest()[:32]
    request_id = f"{REREAD_PREFIX}{digest}"
    return {
        "event_id": event_id_for(request_id, 0, brand, digest),
        "request_id": request_id,
        "request_fingerprint": digest,
    }
