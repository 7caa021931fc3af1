"""The replica's compact digests: every digest reads back equal, of the same types,
from a few dozen bytes; the index finds what was put and nothing else; what the
encoding cannot hold is kept another way and answered all the same."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.commands import (
    HELD_OPT_OUT,
    OPT_OUT_ERROR_CODES,
    HoldRefusedOptOut,
    RecordDeliveryOutcome,
    held_opt_out,
    provider_opt_out_hold,
    to_events,
)
from ledger.digest import Age, CampaignDigest, Digest, Located, Mark, Pending, digest_of
from ledger.events import DeliveryOutcome, DeliveryOutcomeReported
from ledger.state import SubscriberState, fold
from services.adapters import digest_replica
from services.adapters.digest_replica import CompactDigests, phone_key
from services.wire.compact_digest import Shapes, Unencodable, Unreadable
from services.wire.digest import decode_payload, encode_digest, payload_of
from tests.builders import BRAND, PHONE, at, flagged, granted, record, revoked
from tests.unit.test_properties import histories

ID = "0b6a4f2e-1c2d-5e3f-8a9b-0c1d2e3f4a5b"


def _same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (``True`` is not ``1``)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def test_digest_fields_are_the_ones_the_encoding_knows():
    # A field added to a digest must be added to the encoding: fail here, not in prod.
    assert Digest._fields == (
        "brand", "zones", "pending", "brand_revocation", "brand_resume", "age",
        "last_inbound", "confirmations", "campaigns", "regions", "located", "erased",
        "brand_revocation_said", "brand_resume_stated", "brand_revocation_asked",
        "brand_revocation_imported",
    )  # fmt: skip
    assert CampaignDigest._fields == (
        "grant", "tier", "revocation", "resume", "reconfirmation", "sent", "first_sent_at",
        "last_disclosed_at", "help_request", "help_reply", "opt_in_confirmation",
        "proof_missing", "last_inbound", "revocation_said", "grant_stated", "resume_stated",
        "revocation_imported", "answered_late", "conversed", "ended_elsewhere",
    )  # fmt: skip
    assert Mark._fields == ("at", "offset", "event_id")
    assert Pending._fields == (
        "event_id", "text", "due", "unattributed", "imported", "refused", "reused_id",
        "provider",
    )  # fmt: skip
    assert Age._fields == ("event_id", "verified_21_plus", "date_of_birth")
    assert Located._fields == ("state", "event_id")


@settings(max_examples=300, deadline=None)
@given(events=histories, flag=st.booleans())
def test_a_folded_digest_reads_back_equal_and_of_the_same_types(events, flag):
    if flag:
        events = [*events, flagged(at(1), "stop it")]
    digest = digest_of(fold(record(events)))
    shapes = Shapes()

    data = shapes.encode(digest)

    assert _same(shapes.decode(data), digest)
    assert shapes.size_at(data, 0) == len(data)
    # And again at an offset, after another digest, in a bytearray as the store has it.
    arena = bytearray(shapes.encode(digest_of(SubscriberState(phone="+12125551234"))))
    start = len(arena)
    arena += shapes.encode(digest)
    assert _same(shapes.decode(arena, start), digest)


@settings(max_examples=200, deadline=None)
@given(events=histories)
def test_a_stored_digest_added_untyped_reads_back_as_the_typed_one(events):
    digest = digest_of(fold(record(events)))
    payload = payload_of(encode_digest(digest))
    store = CompactDigests()

    assert store.add_stored("acme", "+14155550001", payload)
    store.seal()

    (found,) = store.get_many("acme", ["+14155550001"]).values()
    assert _same(found, decode_payload(payload))


def test_a_stored_digest_that_is_not_one_is_left_to_the_caller():
    store = CompactDigests()
    digest = _digest([granted(at(0))])
    assert not store.add_stored("acme", "+014155550001", payload_of(encode_digest(digest)))
    assert not store.add_stored("acme", "+14155550001", b"\x93\x01")  # three fields of 11
    assert not store.add_stored("acme", "+14155550001", b"\xc1")  # no MessagePack at all
    store.seal()
    assert store.size == 0 and store.get_many("acme", ["+14155550001"]) == {}


marks = st.builds(
    Mark,
    st.integers(-(2**63), 2**63 - 1),
    st.integers(0, 2**63 - 1),
    st.one_of(st.uuids().map(str), st.text(max_size=40)),
)
texts = st.text(max_size=20)
campaign_digests = st.builds(
    CampaignDigest,
    st.none() | marks,
    st.integers(0, 5),
    st.none() | marks,
    st.none() | marks,
    st.none() | marks,
    st.lists(marks, max_size=3).map(tuple),
    st.none() | st.integers(0, 2**62),
    st.none() | st.integers(0, 2**62),
    st.none() | marks,
    st.none() | marks,
    st.none() | marks,
    st.lists(texts, max_size=2).map(tuple),
    st.none() | marks,
    st.none() | marks,
    st.none() | st.integers(-(2**63), 2**63 - 1),
    st.none() | st.integers(-(2**63), 2**63 - 1),
    st.booleans(),
    st.lists(marks, max_size=2).map(tuple),
    st.lists(marks, max_size=2).map(tuple),
    st.lists(marks, max_size=2).map(tuple),
)
digests = st.builds(
    Digest,
    texts,
    st.lists(texts, max_size=2).map(tuple),
    st.lists(
        st.builds(
            Pending,
            st.uuids().map(str) | texts,
            texts,
            st.integers(0, 2**62),
            st.booleans(),
            st.booleans(),
            st.booleans(),
            st.booleans(),
        ),
        max_size=2,
    ).map(tuple),
    st.none() | marks,
    st.none() | marks,
    st.none() | st.builds(Age, st.uuids().map(str) | texts, st.booleans(), texts),
    st.none() | marks,
    st.lists(marks, max_size=3).map(tuple),
    st.dictionaries(texts, campaign_digests, max_size=3),
    st.lists(texts, max_size=2).map(tuple),
    st.none() | st.builds(Located, texts, st.uuids().map(str) | texts),
    st.none() | marks,
    st.none() | marks,
    st.none() | st.integers(-(2**63), 2**63 - 1),
    st.none() | st.integers(-(2**63), 2**63 - 1),
    st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(many=st.lists(digests, min_size=1, max_size=4))
def test_any_digest_reads_back_equal_among_others_of_other_shapes(many):
    shapes = Shapes()
    arena = bytearray()
    starts = []
    for digest in many:
        starts.append(len(arena))
        arena += shapes.encode(digest)
    for start, digest in zip(starts, many, strict=True):
        assert _same(shapes.decode(arena, start), digest)


def test_a_lone_grant_takes_32_bytes():
    digest = Digest(
        brand="acme",
        zones=("America/New_York",),
        campaigns={"promo": CampaignDigest(grant=Mark(1_790_000_000_000_000, 12, ID), tier=3)},
        regions=("NY",),
    )
    assert len(Shapes().encode(digest)) == 32


@pytest.mark.parametrize(
    "digest",
    [
        Digest(brand="acme", campaigns={"p": CampaignDigest(tier=True)}),  # a bool, not an int
        Digest(brand="acme", campaigns={"p": CampaignDigest(first_sent_at=2**64)}),
        Digest(brand="acme", zones=["America/New_York"]),  # type: ignore[arg-type]
        Digest(brand="acme", campaigns={"p": CampaignDigest(grant=Mark(1.5, 0, ID))}),  # type: ignore[arg-type]
    ],
)
def test_what_would_not_read_back_exactly_is_refused(digest):
    with pytest.raises(Unencodable):
        Shapes().encode(digest)


def test_bytes_that_are_no_digest_are_unreadable():
    shapes = Shapes()
    data = shapes.encode(digest_of(fold(record([granted(at(0))]))))
    with pytest.raises(Unreadable):
        shapes.decode(b"\x07\x00" + data[2:])  # no such shape
    with pytest.raises(Unreadable):
        shapes.decode(data[:10])  # cut short


def test_phone_keys_name_one_e164_number_each():
    assert phone_key("+14155552671") == 14155552671
    for odd in ("14155552671", "+014155552671", "+1_4155552671", "+1415555267\u0661", "+", "+1 415",
                "+-1", "+1234567890123456789"):  # fmt: skip
        assert phone_key(odd) == 0


def _digest(events: list[Any]) -> Digest:
    return digest_of(fold(record(events)))


def test_an_imported_opt_out_held_is_marked_apart_from_a_reply_at_no_cost_in_bytes():
    """Answers name what is held: an import's refused opt-out, or a reply. The mark
    is the candidate's own (no message it came from, not unattributed), so a
    rebuild digests it the same; both encodings give it back, and the replica's
    keeps it in the shape, not among each number's bytes."""
    hold = HoldRefusedOptOut("stop-7", PHONE, BRAND, "said")
    (held,) = held_opt_out(hold, "channel: is required", at(1))
    imported = _digest([granted(at(0)), held])
    reply = _digest([granted(at(0)), flagged(at(1))])

    assert [(p.imported, p.unattributed) for p in imported.pending] == [(True, False)]
    assert [(p.imported, p.unattributed) for p in reply.pending] == [(False, False)]
    assert _same(decode_payload(payload_of(encode_digest(imported))), imported)
    shapes = Shapes()
    for digest in (imported, reply):
        assert _same(shapes.decode(shapes.encode(digest)), digest)
    # The texts differ in length (each kept once in the table of strings, not here).
    assert len(shapes.encode(imported)) == len(shapes.encode(reply))


def test_a_live_opt_out_held_is_marked_apart_from_an_import_at_no_cost_in_bytes():
    """A RecordOptOut or inbound STOP refused for its details and held is named as
    such (``Pending.refused``), told by its hold's own request id: a rebuild digests
    it the same, and the replica keeps the mark in the shape."""
    hold = HoldRefusedOptOut("r-7", PHONE, BRAND, "said", via=HELD_OPT_OUT)
    (held,) = held_opt_out(hold, "occurred_at: is in the future", at(1))
    live = _digest([granted(at(0)), held])
    (imported,) = held_opt_out(replace(hold, via=""), "channel: is required", at(1))
    other = _digest([granted(at(0)), imported])

    (reused,) = held_opt_out(replace(hold, reused_id=True), "request_id: used before", at(1))
    reused_live = _digest([granted(at(0)), reused])

    assert [(p.refused, p.imported, p.reused_id) for p in live.pending] == [(True, False, False)]
    assert [(p.refused, p.imported) for p in other.pending] == [(False, True)]
    assert [(p.refused, p.reused_id) for p in reused_live.pending] == [(True, True)]
    assert _same(decode_payload(payload_of(encode_digest(live))), live)
    shapes = Shapes()
    for digest in (live, other, reused_live):
        assert _same(shapes.decode(shapes.encode(digest)), digest)
    assert len(shapes.encode(live)) == len(shapes.encode(other)) == len(shapes.encode(reused_live))


def test_an_opt_out_the_provider_reported_is_marked_in_both_encodings():
    """A hold placed for a delivery outcome saying the recipient opted out at the
    provider (``Pending.provider``) reads back so from the projection's MessagePack
    and from the replica's shapes, or its answer would read as a flagged reply."""
    [reported] = to_events(
        RecordDeliveryOutcome(
            "d1", PHONE, BRAND, "SM1", DeliveryOutcome.FAILED, at(1), error_code="21610"
        ),
        at(2),
    )
    assert isinstance(reported, DeliveryOutcomeReported)
    hold = provider_opt_out_hold(reported, OPT_OUT_ERROR_CODES, at(2))
    assert hold is not None
    digest = _digest([granted(at(0)), hold])
    assert [(p.provider, p.imported, p.refused) for p in digest.pending] == [(True, False, False)]
    assert _same(decode_payload(payload_of(encode_digest(digest))), digest)
    shapes = Shapes()
    assert _same(shapes.decode(shapes.encode(digest)), digest)


def test_the_store_answers_what_was_put_and_leaves_out_the_rest():
    store = CompactDigests()
    granted_digest = _digest([granted(at(0))])
    revoked_digest = _digest([granted(at(0)), revoked(at(1))])
    phones = [f"+1415555{n:04d}" for n in range(2000)]
    for i, phone in enumerate(phones):  # enough for the index to grow several times
        store.put("acme", phone, granted_digest if i % 3 else revoked_digest)
    store.put("globex", phones[0], revoked_digest)

    found = store.get_many("acme", [*phones, "+12125550000", "not a phone"])

    assert len(found) == len(phones) == store.size - 1
    for i, phone in enumerate(phones):
        assert found[phone] == (granted_digest if i % 3 else revoked_digest)
    assert store.get_many("globex", phones) == {phones[0]: revoked_digest}
    assert store.get_many("initech", phones) == {}


def test_a_load_builds_each_index_once_at_its_size():
    store = CompactDigests()
    store.put("acme", "+14155550000", _digest([granted(at(0))]))  # one there before
    digest = _digest([granted(at(0))])
    phones = [f"+1415555{n:04d}" for n in range(1, 4001)]
    for phone in phones:
        store.add("acme", phone, digest)
    store.add("acme", "+014155550002", digest)  # no E.164 number: kept aside
    store.add("globex", phones[0], digest._replace(zones=["UTC"]))  # refused: kept aside
    store.seal()

    assert store.get_many("acme", phones) == dict.fromkeys(phones, digest)
    assert store.get_many("acme", ["+014155550002"]) == {"+014155550002": digest}
    assert store.get_many("globex", phones) == {phones[0]: digest._replace(zones=["UTC"])}
    assert store.size == 4003
    # Sized once for what it holds (filled to 60 %), not grown a third at a time:
    # acme's slots and globex's smallest index, 12 bytes a slot.
    assert store.stats()["index_bytes"] == (int(4001 / 0.6) + 1 + 8) * 12


def test_an_index_grown_aside_holds_what_it_copied_and_room_for_more():
    store = CompactDigests()
    digest = _digest([granted(at(0))])
    phones = [f"+1415555{n:04d}" for n in range(10)]
    for phone in phones[:4]:  # an index of 8 slots, grown past 80 %
        store.put("acme", phone, digest)
    assert store.grown_index("acme", 2) is None  # room enough: nothing to do
    assert not store.needs_room("acme", 2) and store.needs_room("acme", 6)
    assert store.grown_index("initech", 100) is None  # no index to grow
    grown = store.grown_index("acme", 6)
    assert grown is not None
    before = store.stats()["index_bytes"]

    store.install("acme", grown)
    for phone in phones[4:]:
        store.put("acme", phone, digest)

    assert store.stats()["index_bytes"] > before
    assert store.get_many("acme", phones) == dict.fromkeys(phones, digest)


def test_an_index_copied_before_a_write_is_refused():
    store = CompactDigests()
    digest = _digest([granted(at(0))])
    for n in range(6):
        store.put("acme", f"+141555500{n:02d}", digest)
    grown = store.grown_index("acme", 10)
    assert grown is not None
    store.put("acme", "+14155550000", _digest([granted(at(0)), revoked(at(1))]))
    with pytest.raises(RuntimeError):
        store.install("acme", grown)


def test_a_rewritten_digest_replaces_the_old_and_its_place_is_reused():
    store = CompactDigests()
    short, long = _digest([granted(at(0))]), _digest([granted(at(0)), revoked(at(1))])
    store.put("acme", "+14155550001", short)
    store.put("acme", "+14155550001", long)  # another size: moved, the old place freed
    store.put("acme", "+14155550002", short)  # takes the freed place
    arena = store.stats()["arena_bytes"]
    later = _digest([granted(at(2)), revoked(at(3))])
    store.put("acme", "+14155550001", later)  # the same size: in place

    assert store.get_many("acme", ["+14155550001", "+14155550002"]) == {
        "+14155550001": later,
        "+14155550002": short,
    }
    assert (
        store.stats()["arena_bytes"]
        == arena
        == len(Shapes().encode(long)) + len(Shapes().encode(short))
    )
    assert store.size == 2


def test_what_the_encoding_refuses_and_odd_phones_are_kept_and_answered():
    store = CompactDigests()
    fine = _digest([granted(at(0))])
    refused = fine._replace(zones=["America/New_York"])  # a list: not kept compactly
    store.put("acme", "+14155550001", fine)
    store.put("acme", "+14155550001", refused)
    store.put("acme", "+014155550002", fine)  # no E.164 number: no integer key

    assert store.get_many("acme", ["+14155550001", "+014155550002"]) == {
        "+14155550001": refused,
        "+014155550002": fine,
    }
    store.put("acme", "+14155550001", fine)  # compact again
    assert store.get_many("acme", ["+14155550001"]) == {"+14155550001": fine}
    assert store.stats()["odd_entries"] == 1
    assert store.size == 2


def test_unreadable_bytes_fail_the_read_rather_than_answer():
    store = CompactDigests()
    store.put("acme", "+14155550001", _digest([granted(at(0))]))
    store._arena[0:2] = b"\xff\xff"  # a shape that does not exist
    with pytest.raises(Unreadable):
        store.get_many("acme", ["+14155550001"])


def test_the_digest_whose_place_widens_the_index_is_the_one_answered(monkeypatch):
    """Past 4 GiB of digests every index takes 8-byte slots. The digest whose place
    crossed that line was pointed at from the index it had looked up before the
    widening, which was then replaced: the widened one still pointed at the number's
    previous digest (there, an opt-out left out) or at nothing. Crossed here at a
    few bytes, as a replica of some 70 million numbers would at 4 GiB."""
    store = CompactDigests()
    granted_only = _digest([granted(at(0))])
    opted_out = _digest([granted(at(0)), revoked(at(1))])
    store.put("acme", "+14155550001", granted_only)
    monkeypatch.setattr(digest_replica, "_WIDE", store.stats()["arena_bytes"] + 1)
    store.put("acme", "+14155550001", opted_out)  # another size: placed past the line
    store.put("acme", "+14155550002", granted_only)  # a new number, after the widening

    assert store.get_many("acme", ["+14155550001", "+14155550002"]) == {
        "+14155550001": opted_out,
        "+14155550002": granted_only,
    }


def test_a_new_number_whose_place_widens_the_index_is_found(monkeypatch):
    store = CompactDigests()
    store.put("acme", "+14155550001", _digest([granted(at(0))]))
    monkeypatch.setattr(digest_replica, "_WIDE", store.stats()["arena_bytes"] + 1)
    opted_out = _digest([granted(at(0)), revoked(at(1))])
    store.put("acme", "+14155550003", opted_out)

    assert store.get_many("acme", ["+14155550003"]) == {"+14155550003": opted_out}
    assert store.size == 2
