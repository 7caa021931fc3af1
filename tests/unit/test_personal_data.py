"""Personal data sealed with each subject's key: what the ledger's bytes hold, what a
reader is shown before and after the key is destroyed, and old events in the clear."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import replace

import pytest
from consent.v1 import ledger_pb2

from ledger.events import CollectionMethod, ConsentGranted, LedgerPosition, Recorded, SubjectErased
from ledger.personal_data import ERASED, SEALED
from ledger.policy import Reason, decide
from ledger.ports import Stream, SubjectKey
from ledger.state import fold
from services.adapters.memory_access import InMemoryAccessLog
from services.adapters.memory_keys import InMemorySubjectKeys
from services.adapters.memory_ledger import InMemoryLedger
from services.adapters.memory_view import InMemoryConsentView
from services.freshness import FreshnessGuard
from services.personal_data import PersonalData
from services.settings import FreshnessSettings
from services.usecases.access import Access
from services.usecases.context import Context
from services.wire import codec
from tests.builders import (
    BRAND,
    PHONE,
    at,
    campaign,
    flagged,
    granted,
    inbound,
    record,
    revoked,
    sent,
)

PII = ("Ada Lovelace", "ada@example.com", "1 Main St, Springfield", "203.0.113.7")


@pytest.fixture
def personal() -> PersonalData:
    return PersonalData(InMemorySubjectKeys())


async def stored(personal: PersonalData, events: list) -> list[Recorded]:
    """``events`` sealed and through the wire format, as a reader gets them back."""
    sealed = await personal.seal(events)
    return record([codec.decode_event(codec.encode_event(e)) for e in sealed])


async def test_the_ledgers_bytes_hold_no_personal_data(personal: PersonalData) -> None:
    events = [granted(at(0)), inbound(at(1), "my name is Ada, stop it"), flagged(at(2))]

    data = b"".join(codec.encode_event(e) for e in await personal.seal(events))

    for text in (*PII, "my name is Ada", "please stop texting me"):
        assert text.encode() not in data
    # What is not personal stays readable to every consumer.
    assert b"https://acme.example/sms-signup" in data


async def test_events_sealed_alike_are_as_large_as_sealed() -> None:
    """A dry run's check of a record's size (``SealingEventLog.too_large``) seals it
    alike: as large as sealed, with no subject's key made for what is not written."""
    keys = InMemorySubjectKeys()
    personal = PersonalData(keys)
    events = [granted(at(0)), inbound(at(1), "stop it " * 300), flagged(at(2)), revoked(at(3))]

    alike = personal.sealed_alike(events)

    assert await keys.live(PHONE, BRAND) == []
    sealed = await personal.seal(events)
    assert [len(codec.encode_event(e)) for e in alike] == [
        len(codec.encode_event(e)) for e in sealed
    ]


async def test_a_sealed_proof_reads_as_given_and_opens_to_what_was_written(
    personal: PersonalData,
) -> None:
    grant = granted(at(0))

    (kept,) = await stored(personal, [grant])
    (shown,) = await personal.open([kept])

    assert isinstance(kept.event, ConsentGranted)
    assert kept.event.proof.name == SEALED
    assert kept.event.proof.template_missing(CollectionMethod.WEB_FORM) == []
    assert shown.event == grant
    assert shown.event.sealed is None


async def test_the_envelope_carries_the_seal_and_empty_fields() -> None:
    personal = PersonalData(InMemorySubjectKeys())
    (sealed,) = await personal.seal([inbound(at(0), "hello there")])

    env = ledger_pb2.EventEnvelope.FromString(codec.encode_event(sealed))

    assert env.inbound_message_received.body == ""
    assert list(env.sealed.fields) == ["body"]
    assert len(env.sealed.nonce) == 12


async def test_events_without_personal_data_are_stored_as_they_are(
    personal: PersonalData,
) -> None:
    events = [sent(at(0)), revoked(at(1), text="")]

    assert await personal.seal(events) == events
    assert all(e.sealed is None for e in await personal.seal(events))


class CountingKeys(InMemorySubjectKeys):
    """Counts the key store's calls: each is a round trip on PostgreSQL."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    async def current(self, phone: str, brand: str) -> SubjectKey:
        self.calls.append("current")
        return await super().current(phone, brand)

    async def current_many(
        self, subjects: Collection[tuple[str, str]]
    ) -> dict[tuple[str, str], SubjectKey]:
        self.calls.append("current_many")
        return {s: await InMemorySubjectKeys.current(self, *s) for s in subjects}


async def test_a_chunk_of_many_subjects_asks_the_key_store_once() -> None:
    keys = CountingKeys()
    personal = PersonalData(keys)
    phones = [f"+1415555{i:04d}" for i in range(200)]
    events = [granted(at(i), phone=p) for i, p in enumerate(phones)] + [granted(at(300))]

    sealed = await personal.seal(events)

    assert keys.calls == ["current_many"]
    assert [e.event_id for e in sealed] == [e.event_id for e in events]
    for event, phone in zip(sealed, phones, strict=False):
        assert event.sealed is not None
        assert event.sealed.key_id == (await keys.current(phone, BRAND)).key_id
    opened = await personal.open(record(sealed))
    assert [r.event for r in opened] == events


async def test_a_single_writes_subject_is_asked_for_on_its_own() -> None:
    """One subject keeps the single statement, and the single write's time bound."""
    keys = CountingKeys()

    sealed = await PersonalData(keys).seal([granted(at(0)), inbound(at(1), "stop it")])

    assert keys.calls == ["current"]
    assert all(e.sealed is not None for e in sealed)


async def test_destroying_the_key_shows_every_field_erased_and_keeps_the_rest(
    personal: PersonalData,
) -> None:
    history = await stored(personal, [granted(at(0)), revoked(at(1), text="STOP it now")])
    await personal.keys.destroy(PHONE, BRAND)

    grant, revocation = (r.event for r in await personal.open(history))

    assert isinstance(grant, ConsentGranted)
    assert grant.proof.name == grant.proof.email == grant.proof.ip_address == ERASED
    assert grant.proof.form_url == "https://acme.example/sms-signup?utm=spring"
    assert revocation.text == ERASED  # type: ignore[attr-defined]
    assert revocation.campaign == "promo"  # type: ignore[attr-defined]


async def test_a_seal_moved_to_another_event_does_not_open(personal: PersonalData) -> None:
    first, second = await personal.seal([granted(at(0)), granted(at(1))])
    moved = replace(second, sealed=first.sealed)

    (shown,) = await personal.open(record([moved]))

    assert shown.event.proof.name == ERASED  # type: ignore[attr-defined]


async def test_old_events_in_the_clear_still_read_and_are_hidden_after_an_erasure(
    personal: PersonalData,
) -> None:
    """An event written before sealing (schema version 1, personal data in the clear)
    is upcast on read; once its subject is erased it is shown erased too."""
    old = granted(at(0))
    env = codec.event_to_proto(old)
    env.schema_version = 1
    (legacy,) = record([codec.decode_event(env.SerializeToString())])
    erasure = SubjectErased(event_id=uuid.uuid4(), occurred_at=at(5), phone=PHONE, brand=BRAND)
    later = Recorded(erasure, LedgerPosition(0, 1), at(5))

    (before,) = await personal.open([legacy])
    after, _ = await personal.open([legacy, later])

    assert before.event == old
    assert after.event.proof.name == ERASED  # type: ignore[attr-defined]


async def test_a_fresh_opt_in_after_erasure_is_sealed_with_a_new_key_and_opens(
    personal: PersonalData,
) -> None:
    (old,) = await stored(personal, [granted(at(0))])
    await personal.keys.destroy(PHONE, BRAND)
    (new,) = await stored(personal, [granted(at(10))])
    new = replace(new, position=LedgerPosition(0, 1))

    shown_old, shown_new = await personal.open([old, new])

    assert shown_old.event.proof.name == ERASED  # type: ignore[attr-defined]
    assert shown_new.event.proof.name == "Ada Lovelace"  # type: ignore[attr-defined]


async def test_a_fact_written_after_its_erasure_but_dated_no_later_is_shown_erased(
    personal: PersonalData,
) -> None:
    """Writes so dated are refused; one another instance took before its copy of the
    view had the erasure is written under the subject's new key, and still must not
    show what was erased. One dated after the erasure opens."""
    (old,) = await stored(personal, [granted(at(0))])
    await personal.keys.destroy(PHONE, BRAND)
    erasure = SubjectErased(event_id=uuid.uuid4(), occurred_at=at(5), phone=PHONE, brand=BRAND)
    late, dated_at_it, fresh = await stored(
        personal, [granted(at(1)), revoked(at(5), text="STOP it now"), granted(at(6))]
    )
    history = [
        old,
        Recorded(erasure, LedgerPosition(0, 1), at(5)),
        replace(late, position=LedgerPosition(0, 2)),
        replace(dated_at_it, position=LedgerPosition(0, 3)),
        replace(fresh, position=LedgerPosition(0, 4)),
    ]

    shown = [r.event for r in await personal.open(history)]

    assert shown[0].proof.name == ERASED  # type: ignore[attr-defined]
    assert shown[2].proof.name == shown[2].proof.email == ERASED  # type: ignore[attr-defined]
    assert shown[3].text == ERASED  # type: ignore[attr-defined]
    assert shown[4].proof.name == "Ada Lovelace"  # type: ignore[attr-defined]


async def test_a_single_late_fact_is_shown_erased_by_its_subjects_state(
    personal: PersonalData,
) -> None:
    """A reader of single facts (GetConsent's, a watch's) has no erasure among them:
    a fact another instance took after the erasure but dated no later, sealed under
    the subject's new key, is shown erased by the erasure in the subject's state. One
    dated after the erasure opens."""
    (old,) = await stored(personal, [granted(at(0))])
    await personal.keys.destroy(PHONE, BRAND)
    erasure = SubjectErased(event_id=uuid.uuid4(), occurred_at=at(5), phone=PHONE, brand=BRAND)
    view = InMemoryConsentView()
    await view.apply(Stream.SUBSCRIBERS, [old, Recorded(erasure, LedgerPosition(0, 1), at(5))])
    ledger = InMemoryLedger()
    ctx = Context(
        ledger,
        view,
        FreshnessGuard(ledger, view, FreshnessSettings()),
        access=Access(InMemoryAccessLog()),
        personal=personal,
    )
    late, fresh = await stored(personal, [granted(at(1)), granted(at(6))])

    (shown_late,) = await ctx.opened([replace(late, position=LedgerPosition(0, 2))])
    (shown_fresh,) = await ctx.opened([replace(fresh, position=LedgerPosition(0, 3))])

    assert shown_late.event.proof.name == shown_late.event.proof.email == ERASED  # type: ignore[attr-defined]
    assert shown_fresh.event.proof.name == "Ada Lovelace"  # type: ignore[attr-defined]


def test_an_answer_about_a_sealed_reply_does_not_quote_it() -> None:
    sealed = record([granted(at(0)), replace(flagged(at(1)), text=SEALED)])
    plain = record([granted(at(0)), flagged(at(1), "please stop texting me")])

    hidden = decide(fold(sealed), campaign(), at(2))
    shown = decide(fold(plain), campaign(), at(2))

    assert hidden.reason is shown.reason is Reason.REVOCATION_PENDING_REVIEW
    assert hidden.detail == "reply reads like an opt-out and awaits review"
    assert "'please stop texting me'" in shown.detail
