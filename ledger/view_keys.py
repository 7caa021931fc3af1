"""Keys writes take among a brand's request ids that a view applying the ledger takes
again where they are free: a view dropped and filled again from the ledger lost what
only writes took there, and what the writes relied on them for with it.

An inbound text's provider message id, and the reply its first answer told: a write
takes both as it records the text; a view takes the message key from what the text's
record holds in the clear (its words are sealed there).

An opt-out stamped ahead of the clock notes its number (``stated_ahead_key``), so a
consent of the number stated before it is checked against it; every other consent
reads no more than that the note is absent.
"""

from __future__ import annotations

import hashlib

from ledger.events import InboundMessageReceived

INBOUND_PREFIX = "inbound-message-"
"""Starts the key under which an inbound text's provider message id is taken among a
brand's request ids (``Writes._redelivered``): no client's request id is one."""

REPLY_PREFIX = "inbound-reply-"
"""Starts the key under which the reply an inbound text owes is taken among a brand's
request ids (``Writes._reply_once``): told to one delivery of the text."""

REPLY_TOLD = "reply:"
"""Starts the fingerprint of a text's reply key, the reply its first answer told
after it (``reply:none``). Keys taken before it was kept read ``reply``: the first
answer said a reply was owed, of a kind not kept."""

READ_AS_PREFIX = "read-as:"
"""Starts the fingerprint of a message key a view took from the ledger (``read_as``),
which no digest of a text's words (``message_key``) does."""

STATED_AHEAD_PREFIX = "opt-out-stated-ahead-"
"""Starts the key under which an opt-out stamped ahead notes its number among its
brand's request ids (``note_stated_ahead``): no client's request id is one."""

LATE_HOLD_PREFIX = "late-stop-"
"""Starts the request id of a late STOP's hold under another brand or ``*``."""


def message_key(received: InboundMessageReceived, sent_for: str = "") -> tuple[str, str]:
    """The key an inbound text's provider message id is taken under among its brand's
    request ids, and the digest of its words and the number they reached. A late
    STOP's hold under another brand (``sent_for`` names the brands it was sent for)
    takes a key of its own: message ids are each provider's, so the brand's own texts
    may carry the same one, and the hold must refuse none of them."""
    said = f"{received.phone}\0{received.message_id}"
    if sent_for:
        said = f"{said}\0{sent_for}"
    key = f"{INBOUND_PREFIX}{hashlib.sha256(said.encode()).hexdigest()[:32]}"
    content = f"{received.to_number}\0{received.body}"
    return key, hashlib.sha256(content.encode()).hexdigest()[:32]


def reply_key(received: InboundMessageReceived) -> str:
    """The key the reply an inbound text owes is taken under among its brand's request
    ids: the words too, for a STOP under a message id a HELP took is a text of its own."""
    said = f"{received.phone}\0{received.message_id}\0{received.to_number}\0{received.body}"
    return f"{REPLY_PREFIX}{hashlib.sha256(said.encode()).hexdigest()[:32]}"


def read_as(received: InboundMessageReceived) -> str:
    """The fingerprint a view gives the message key of a text it applies when the key
    is free (``restorable_key``): the number the text reached and how it read, not its
    words, which the ledger holds sealed (``ledger.personal_data``). A text again under
    that message id with the same fingerprint is taken for a redelivery of it."""
    said = f"{received.to_number}\0{received.intent}"
    return f"{READ_AS_PREFIX}{hashlib.sha256(said.encode()).hexdigest()[:32]}"


def restorable_key(received: InboundMessageReceived) -> tuple[str, str] | None:
    """The message key a view applying ``received`` takes when it is free, and its
    fingerprint (``read_as``): a view dropped and filled again from the ledger lost
    the keys writes took, and then recorded a gateway's redelivery of a text again.
    None for a late STOP's hold, whose key names the brands it was sent for, which
    its record does not keep, and for a text recorded before its reading was kept."""
    if not received.request_id or received.request_id.startswith(LATE_HOLD_PREFIX):
        return None
    if not received.intent:
        return None
    return message_key(received)[0], read_as(received)


def stated_ahead_key(phone: str) -> str:
    """The key an opt-out stamped ahead (``ConsentRevoked.stated_at`` kept) notes its
    number under among its brand's request ids."""
    return f"{STATED_AHEAD_PREFIX}{hashlib.sha256(phone.encode()).hexdigest()[:32]}"
