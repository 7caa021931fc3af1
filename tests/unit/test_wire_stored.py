"""An event read as its ledger stored it keeps those bytes, and its copy is made from
them: ``encode_recorded`` gives the very bytes it gives for the event in memory,
and the bytes are kept only when encoding the event gives them back exactly."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from consent.v1 import ledger_pb2
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.events import (
    AgeVerified,
    ConsentGranted,
    InboundMessageReceived,
    LedgerEvent,
    LedgerPosition,
    Recorded,
    RevocationCandidateResolved,
    SubjectErased,
    SubscriberEvent,
)
from services.wire import codec
from tests.unit.test_wire_codec import EXAMPLES, AgeVerifiedV2, any_event, moments

AT = datetime(2025, 3, 14, 15, 9, 27, 123000, tzinfo=UTC)
POSITIONS = [
    LedgerPosition(0, 0),
    LedgerPosition(3, 1),
    LedgerPosition(11, 2**40 + 3),
    LedgerPosition(2**31 - 1, 2**63 - 1),
    LedgerPosition(-1, -5),  # not a ledger's, but encoded as protobuf encodes them
]
TIMES = [
    AT,
    datetime(1970, 1, 1, tzinfo=UTC),  # a Timestamp of zeros: no field at all
    datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),  # negative seconds
    AT.astimezone(timezone(timedelta(hours=-7))),
]


def stored(event: LedgerEvent, position: LedgerPosition = POSITIONS[1], at: datetime = AT):
    return codec.recorded_from_stored(codec.encode_event(event), position, at)


def in_memory(r: Recorded) -> Recorded:
    return Recorded(r.event, r.position, r.recorded_at, extra=dict(r.extra))


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("position", POSITIONS, ids=str)
@pytest.mark.parametrize("at", TIMES, ids=str)
def test_a_copy_from_the_stored_bytes_is_the_copy_encoded_from_the_event(
    event: LedgerEvent, position: LedgerPosition, at: datetime
) -> None:
    read = stored(event, position, at)

    assert read == Recorded(event, position, at)
    if isinstance(event, SubscriberEvent):
        assert read.envelope == codec.encode_event(event)
    else:  # a campaign's policy reads absent fields as defaults: always encoded
        assert read.envelope is None
    assert codec.encode_recorded(read) == codec.encode_recorded(in_memory(read))


@settings(max_examples=300, deadline=None)
@given(any_event, st.integers(0, 2**31 - 1), st.integers(0, 2**63 - 1), moments)
def test_any_event_copied_from_its_stored_bytes_is_encoded_alike(
    event: LedgerEvent, partition: int, offset: int, at: datetime
) -> None:
    read = stored(event, LedgerPosition(partition, offset), at)

    assert (read.envelope is not None) == isinstance(event, SubscriberEvent)
    assert codec.encode_recorded(read) == codec.encode_recorded(in_memory(read))


def test_extra_added_to_a_stored_event_is_encoded_with_it() -> None:
    read = stored(EXAMPLES[0])
    read.extra["producer"] = "api-1"  # the dict is the one mutable part of a Recorded

    assert codec.encode_recorded(read) == codec.encode_recorded(in_memory(read))
    assert codec.decode_recorded(codec.encode_recorded(read)).extra == {"producer": "api-1"}


def test_a_recorded_made_from_a_stored_one_never_keeps_its_bytes() -> None:
    read = stored(EXAMPLES[0])
    other = EXAMPLES[1]

    assert read.envelope is not None
    assert dataclasses.replace(read, event=other).envelope is None
    assert dataclasses.replace(read).envelope is None
    assert codec.encode_recorded(dataclasses.replace(read, event=other)) == codec.encode_recorded(
        Recorded(other, read.position, read.recorded_at)
    )


# --- what decoding loses is never kept --------------------------------------------


def envelope_of(event: LedgerEvent) -> ledger_pb2.EventEnvelope:
    return ledger_pb2.EventEnvelope.FromString(codec.encode_event(event))


def read_back(env: ledger_pb2.EventEnvelope | bytes) -> Recorded:
    data = env if isinstance(env, bytes) else env.SerializeToString(deterministic=True)
    return codec.recorded_from_stored(data, POSITIONS[1], AT)


GRANTED = dataclasses.replace(  # an id with letters, so that case can differ
    next(e for e in EXAMPLES if isinstance(e, ConsentGranted)),
    event_id=uuid.UUID("6fa459ea-ee8a-3ca4-894e-db77e160355e"),
)
RESOLVED = next(e for e in EXAMPLES if isinstance(e, RevocationCandidateResolved))
ERASED = next(e for e in EXAMPLES if isinstance(e, SubjectErased) and e.retained_until)
SEALED_INBOUND = next(
    e for e in EXAMPLES if isinstance(e, InboundMessageReceived) and e.sealed is not None
)


def _other_forms(text: str) -> list[str]:
    return [text.upper(), "{" + text + "}", text.replace("-", ""), "urn:uuid:" + text]


def lossy_envelopes() -> Iterator[tuple[str, ledger_pb2.EventEnvelope]]:
    """Envelopes that decode to an event whose encoding differs from them."""
    env = envelope_of(GRANTED)
    env.schema_version = 0  # written before versions: read as 1, written back as 1
    yield "unset schema_version", env
    for i, form in enumerate(_other_forms(str(GRANTED.event_id))):
        env = envelope_of(GRANTED)
        env.event_id = form
        yield f"event_id form {i}", env
    env = envelope_of(GRANTED)
    env.campaign = "another"  # a copy of the payload's, never read
    yield "envelope campaign", env
    env = envelope_of(GRANTED)
    env.occurred_at.nanos += 1
    yield "occurred_at nanoseconds", env
    env = envelope_of(GRANTED)
    env.consent_granted.proof.registered_at.nanos += 1
    yield "registered_at nanoseconds", env
    env = envelope_of(ERASED)
    env.subject_erased.retained_until.nanos += 999
    yield "retained_until nanoseconds", env
    for i, form in enumerate(_other_forms(str(RESOLVED.candidate_event_id))):
        env = envelope_of(RESOLVED)
        env.revocation_candidate_resolved.candidate_event_id = form
        yield f"candidate_event_id form {i}", env
    env = envelope_of(SEALED_INBOUND)
    env.inbound_message_received.body = "in the clear"  # reads as SEALED regardless
    yield "sealed field with text", env


@pytest.mark.parametrize("name,env", list(lossy_envelopes()), ids=lambda v: str(v)[:40])
def test_bytes_that_decoding_would_change_are_not_kept(
    name: str, env: ledger_pb2.EventEnvelope
) -> None:
    read = read_back(env)

    assert codec.encode_event(read.event) != env.SerializeToString(deterministic=True)
    assert read.envelope is None
    assert codec.encode_recorded(read) == codec.encode_recorded(in_memory(read))


def test_bytes_not_in_the_form_encoding_writes_are_not_kept() -> None:
    data = codec.encode_event(GRANTED)
    env = envelope_of(GRANTED)
    phone_field = ledger_pb2.EventEnvelope(phone=env.phone).SerializeToString()
    event_id_field = ledger_pb2.EventEnvelope(event_id=env.event_id).SerializeToString()
    for odd in (
        data + phone_field,  # a field twice (the last one counts)
        data.replace(event_id_field, b"") + event_id_field,  # out of order
    ):
        read = read_back(odd)

        assert read.event == GRANTED
        assert read.envelope is None


def test_an_event_with_a_field_this_code_does_not_know_is_refused() -> None:
    """A field a newer version added without raising its class's version: read
    without it, the fact would count as less than it says, and the view would keep
    it so."""
    unknown_field = b"\xc0\x3e\x01"  # field 1000
    in_payload = envelope_of(GRANTED)
    in_payload.consent_granted.MergeFromString(unknown_field)
    for odd in (codec.encode_event(GRANTED) + unknown_field, in_payload):
        with pytest.raises(codec.WireFormatError, match="does not know"):
            read_back(odd)


def test_a_view_copy_with_a_field_this_code_does_not_know_is_refused() -> None:
    """The same field in the view's copies (a campaign's rules, a snapshot's facts),
    written there by a newer instance's projector during a rolling upgrade: CanSend
    read a campaign's rules or a state without it, as less than they say."""
    unknown_field = b"\xc0\x3e\x01"  # field 1000
    written = codec.encode_recorded(Recorded(GRANTED, POSITIONS[1], AT))
    recorded = ledger_pb2.RecordedEvent.FromString(written)
    recorded.event.consent_granted.MergeFromString(unknown_field)
    copy = recorded.SerializeToString()
    snapshot = ledger_pb2.StateSnapshot(facts=[recorded]).SerializeToString()
    for read in (
        lambda: codec.decode_recorded(copy),
        lambda: codec.decode_recorded(written + unknown_field),
        lambda: codec.decode_snapshot(snapshot),
    ):
        with pytest.raises(codec.WireFormatError, match="does not know"):
            read()
    # What this code wrote reads back as ever.
    assert codec.decode_recorded(written).event == GRANTED
    assert codec.decode_snapshot(codec.join_snapshot([written]))[0].event == GRANTED


def test_an_event_upcast_from_an_older_version_is_encoded_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    v1 = next(e for e in EXAMPLES if isinstance(e, AgeVerified))
    monkeypatch.setitem(codec.EVENT_CLASSES, AgeVerified.EVENT_TYPE, AgeVerifiedV2)

    read = read_back(codec.encode_event(v1))

    assert type(read.event) is AgeVerifiedV2
    assert read.envelope is None
    assert codec.encode_recorded(read) == codec.encode_recorded(in_memory(read))


# Every field of every subscriber event's envelope set, one at a time, to values
# its encoder would and would not write: whatever decodes and is kept must be
# exactly what encoding the decoded event gives. A field added to the wire format
# whose decoding loses something fails here until ``_encodes_back`` checks it.

_INTS = (0, 1, 2, 3, 7, 1000, 999_999_999, 2**31 - 1)
_INT_TYPES = {
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_ENUM,
}


def _values(field: FieldDescriptor, current: Any) -> list[Any]:
    if field.type == FieldDescriptor.TYPE_STRING:
        text = current if isinstance(current, str) else ""
        return ["", "x", text.upper(), text + " ", "{" + text + "}"]
    if field.type == FieldDescriptor.TYPE_BOOL:
        return [False, True]
    if field.type == FieldDescriptor.TYPE_BYTES:
        return [b"", b"\x01"]
    if field.type in _INT_TYPES:
        return list(_INTS)
    raise AssertionError(f"no values for {field.full_name}")


def _mutations(msg: Message, depth: int = 0) -> Iterator[Any]:
    """Functions that each change one field of (a copy of) ``msg``."""
    oneofs = {o.name: msg.WhichOneof(o.name) for o in msg.DESCRIPTOR.oneofs}
    for field in msg.DESCRIPTOR.fields:
        name = field.name
        oneof = field.containing_oneof
        if oneof is not None and oneofs.get(oneof.name) not in (None, name):
            continue  # another payload than the type's: refused by decoding
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.is_repeated or depth >= 4:
                continue
            yield lambda m, n=name: m.ClearField(n)
            for inner in _mutations(getattr(msg, name), depth + 1):
                yield lambda m, n=name, f=inner: f(getattr(m, n))
            continue
        current = getattr(msg, name)
        if field.is_repeated:
            yield lambda m, n=name: m.ClearField(n)
            for value in _values(field, current[0] if current else ""):
                yield lambda m, n=name, v=value: getattr(m, n).append(v)
            continue
        for value in _values(field, current):
            yield lambda m, n=name, v=value: setattr(m, n, v)


@pytest.mark.parametrize(
    "event",
    [e for e in EXAMPLES if isinstance(e, SubscriberEvent)],
    ids=lambda e: type(e).__name__,
)
def test_bytes_are_kept_only_when_encoding_the_event_gives_them_back(
    event: LedgerEvent,
) -> None:
    base = envelope_of(dataclasses.replace(event, request_id="r", request_fingerprint="f"))
    kept = declined = 0
    for mutate in _mutations(base):
        env = ledger_pb2.EventEnvelope()
        env.CopyFrom(base)
        mutate(env)
        data = env.SerializeToString(deterministic=True)
        try:
            read = read_back(data)
        except ValueError:
            continue  # refused by decoding: never a copy at all
        if read.envelope is None:
            declined += 1
        else:
            kept += 1
            assert read.envelope == data
            assert codec.encode_event(read.event) == data, env
    assert kept and declined
