"""``ledger.events.evolved``: what ``dataclasses.replace`` gives, without ``__init__``."""

from __future__ import annotations

import dataclasses
from zoneinfo import ZoneInfo

import pytest

from ledger.events import (
    EVENT_TYPES,
    ConsentProof,
    MessageKind,
    ReliedAnswer,
    Sealed,
    evolved,
    message_content,
    message_contents,
)
from tests.builders import at, granted, sent


@pytest.mark.parametrize("cls", [*EVENT_TYPES.values(), ConsentProof, ReliedAnswer])
def test_no_event_class_checks_anything_after_its_fields_are_set(cls: type) -> None:
    # evolved copies the fields rather than call __init__; a __post_init__ would be skipped.
    assert not hasattr(cls, "__post_init__")


def test_an_event_evolved_is_the_event_replace_gives_down_to_its_provenance() -> None:
    event = granted()
    seal = Sealed("key-1", b"n" * 12, b"ciphertext", ("proof.name",))
    proof = evolved(event.proof, name="[sealed]")
    changed = evolved(event, proof=proof, sealed=seal, recorded_by="importer")
    expected = dataclasses.replace(
        event,
        proof=dataclasses.replace(event.proof, name="[sealed]"),
        sealed=seal,
        recorded_by="importer",
    )
    assert type(changed) is type(expected)
    assert vars(changed) == vars(expected)  # compare=False fields included
    assert changed == expected and hash(changed.proof) == hash(expected.proof)
    assert event.recorded_by == "" and event.proof.name != "[sealed]"  # the original stays


def test_evolving_a_field_an_event_does_not_have_is_refused() -> None:
    with pytest.raises(TypeError, match="'text'"):
        evolved(sent(at(0)), text="STOP")


def test_a_calls_message_contents_are_each_sends_own() -> None:
    # Written once for sends that say the same of their messages; each send that says
    # something else of its message (a field, an instant, an answer) has its own.
    relied = ReliedAnswer("subscribers:3:1042", True, "consent_active", ())
    first = sent(at(1))
    same_moment = evolved(first, occurred_at=at(1).astimezone(ZoneInfo("America/New_York")))
    sends = [
        first,
        evolved(first, phone="+12125551234", message_id="other"),
        same_moment,
        evolved(first, occurred_at=at(2)),
        evolved(first, campaign="other"),
        evolved(first, identified_sender=False),
        evolved(first, relied_on=relied),
        evolved(first, relied_on=dataclasses.replace(relied, evidence=("x",))),
        evolved(first, from_number="+12125551234"),
        evolved(first, kind=MessageKind.HELP_REPLY),
    ]
    contents = message_contents(sends)
    assert contents == [message_content(s) for s in sends]
    assert contents[0] == contents[1] == contents[2]
    assert len(set(contents)) == len(sends) - 2
