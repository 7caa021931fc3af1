"""Sealing and opening the personal data in events (``ledger.personal_data``).

``SealingEventLog`` wraps the ledger: every event appended through it that holds
personal data holds it sealed, AES-256-GCM under its subject's key
(``ledger.ports.SubjectKeys``), so the ledger, its copies in the view and every
stream consumer see only ciphertext. ``PersonalData.open`` gives an auditor's read
its personal data back, or ``ERASED`` where the key is gone or the subject was
erased after the event (legacy events written in the clear included).
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Sequence
from dataclasses import replace

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ledger.events import LedgerEvent, Recorded, Sealed, SubscriberEvent
from ledger.personal_data import (
    associated_data,
    erased,
    erased_before,
    opened,
    personal_data,
    sealed_as,
    subject_of,
)
from ledger.ports import EventLog, SubjectKey, SubjectKeys, WrappedEventLog

log = logging.getLogger(__name__)

NONCE_BYTES = 12

_PLAINTEXT = json.JSONEncoder(sort_keys=True).encode
"""``json.dumps(values, sort_keys=True)``, the same text, with one encoder for every
event rather than one made per call."""


class PersonalData:
    """Seals events for the ledger and opens them for a reader, with one key store."""

    def __init__(self, keys: SubjectKeys) -> None:
        self.keys = keys

    async def seal(self, events: Sequence[LedgerEvent]) -> list[LedgerEvent]:
        """``events`` as the ledger should hold them: personal data sealed."""
        out = list(events)
        to_seal = _to_seal(out)
        if not to_seal:
            return out
        # Every subject's key in one call: an import's chunk names a thousand. A single
        # write's one subject keeps the single statement and its tighter time bound.
        subjects = {subject for _, _, subject, _ in to_seal}
        if len(subjects) == 1:
            (only,) = subjects
            held = {only: await self.keys.current(*only)}
        else:
            held = await self.keys.current_many(subjects)
        return _sealed(out, to_seal, held)

    def sealed_alike(self, events: Sequence[LedgerEvent]) -> list[LedgerEvent]:
        """``events`` as large as ``seal`` makes them, for a check of their size: sealed
        under a key id of a real one's size, with ciphertext of the size it would have
        (zeros), no subject's key read or made and nothing encrypted."""
        out = list(events)
        for i, event, _, values in _to_seal(out):
            # AES-GCM's ciphertext is its plaintext and a 16-byte tag: its size is
            # known without encrypting.
            size = len(_PLAINTEXT(values).encode()) + _TAG_BYTES
            stand_in = Sealed(_STAND_IN_ID, bytes(NONCE_BYTES), bytes(size), tuple(values))
            out[i] = sealed_as(event, stand_in)
        return out

    async def open(self, history: Sequence[Recorded]) -> list[Recorded]:
        """``history`` with its personal data readable where its key still is, and
        ``ERASED`` where it is not, or where its subject was erased after it."""
        cut = erased_before(history)
        wanted: dict[tuple[str, str], set[str]] = {}
        for r in history:
            e = r.event
            if e.sealed is not None and isinstance(e, SubscriberEvent):
                wanted.setdefault((e.phone, e.brand), set()).add(e.sealed.key_id)
        secrets = {s: await self.keys.find(*s, ids) for s, ids in wanted.items()}
        out: list[Recorded] = []
        for r in history:
            e = r.event
            subject = subject_of(e)
            if subject is None:
                out.append(r)
            elif subject in cut and cut[subject].covers(r):
                out.append(replace(r, event=erased(e)))
            elif e.sealed is not None:
                out.append(replace(r, event=self._opened(e, secrets[subject])))
            else:
                out.append(r)
        return out

    @staticmethod
    def _opened(event: LedgerEvent, secrets: dict[str, bytes]) -> LedgerEvent:
        sealed = event.sealed
        assert sealed is not None and isinstance(event, SubscriberEvent)
        secret = secrets.get(sealed.key_id)
        if secret is None:
            return erased(event)
        try:
            plaintext = AESGCM(secret).decrypt(
                sealed.nonce, sealed.ciphertext, associated_data(event, sealed.key_id)
            )
        except InvalidTag:
            # Not this event's seal (moved from another event, or altered): what it
            # says cannot be shown, and the tamper verifier says where it changed.
            log.warning("the personal data of event %s does not open", event.event_id)
            return erased(event)
        values = json.loads(plaintext)
        return opened(event, {f: str(values.get(f, "")) for f in sealed.fields})


_STAND_IN_ID = str(uuid.UUID(int=0))
"""The key id ``PersonalData.sealed_alike`` seals under: a UUID's text, as a real one."""
_TAG_BYTES = 16

_ToSeal = list[tuple[int, SubscriberEvent, tuple[str, str], dict[str, str]]]


def _to_seal(events: list[LedgerEvent]) -> _ToSeal:
    """The events of ``events`` with personal data not sealed yet: each with its
    place, its subject and the values to seal."""
    to_seal: _ToSeal = []
    for i, event in enumerate(events):
        subject = subject_of(event)
        values = personal_data(event) if subject is not None else {}
        if subject is not None and values and event.sealed is None:
            assert isinstance(event, SubscriberEvent)
            to_seal.append((i, event, subject, values))
    return to_seal


def _sealed(
    out: list[LedgerEvent], to_seal: _ToSeal, held: dict[tuple[str, str], SubjectKey]
) -> list[LedgerEvent]:
    """``out`` with each event of ``to_seal`` sealed under its subject's key in ``held``."""
    for i, event, subject, values in to_seal:
        key = held[subject]
        nonce = os.urandom(NONCE_BYTES)
        plaintext = _PLAINTEXT(values).encode()
        ciphertext = AESGCM(key.secret).encrypt(
            nonce, plaintext, associated_data(event, key.key_id)
        )
        out[i] = sealed_as(event, Sealed(key.key_id, nonce, ciphertext, tuple(values)))
    return out


class SealingEventLog(WrappedEventLog):
    """A ledger whose appends seal their events' personal data first; every other
    method is the wrapped ledger's (what it reads back stays sealed)."""

    def __init__(self, ledger: EventLog, personal: PersonalData) -> None:
        super().__init__(ledger)
        self._personal = personal

    async def append(self, events: Sequence[LedgerEvent]) -> list[Recorded]:
        return await self._ledger.append(await self._personal.seal(events))

    async def too_large(self, events: Sequence[LedgerEvent]) -> list[int]:
        """The wrapped ledger's answer for ``events`` sealed alike
        (``PersonalData.sealed_alike``): as large as appended, no key read or made.
        A ledger with no limit is not asked: sealing costs as much as the check."""
        if self._ledger.record_limit() is None:
            return []
        return await self._ledger.too_large(self._personal.sealed_alike(events))
