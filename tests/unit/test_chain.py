"""The hash chain, its checkpoints and what the verifier concludes from them
(``ledger.chain``, ``ledger.tamper``): every kind of tampering is caught, at its offset."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from ledger.chain import (
    Chain,
    ChainRecord,
    Checkpoint,
    check_proof,
    entry_digest,
    genesis,
    link,
    micros,
    prove,
)
from ledger.tamper import (
    ALTERED,
    FORKED,
    INSERTED,
    REMOVED,
    RENUMBERED,
    REORDERED,
    compare,
)

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def records(n: int, partition: int = 0, stream: str = "subscribers") -> list[ChainRecord]:
    return [
        ChainRecord(stream, partition, i, micros(T0) + i * 1000, f"event {i}".encode())
        for i in range(n)
    ]


def checkpoints(rs: list[ChainRecord], every: int) -> list[Checkpoint]:
    chain = Chain(rs[0].stream, rs[0].partition)
    cuts = []
    for r in rs:
        chain.add(r)
        if chain.offset % every == 0:
            cuts.append(chain.cut(T0, "ed25519:test"))
    return cuts


def kinds(findings):
    return [(f.kind, f.offset) for f in findings]


def test_the_documented_hashes_are_the_ones_computed():
    """protos/README.md spells the bytes out; a verifier written from it agrees."""
    r = ChainRecord("subscribers", 3, 7, 1_764_590_400_123_000, b"\x0a\x03abc")
    entry = hashlib.sha256(
        b"consent-ledger/entry/v1\x00" + struct.pack(">q", r.recorded_at_us) + r.value
    ).digest()
    first = hashlib.sha256(b"consent-ledger/genesis/v1\x00subscribers\x00\x00\x00\x00\x03").digest()
    head = hashlib.sha256(
        b"consent-ledger/link/v1\x00"
        + first
        + b"subscribers\x00\x00\x00\x00\x03"
        + (7).to_bytes(8, "big")
        + entry
    ).digest()
    assert r.entry() == entry == entry_digest(r.recorded_at_us, r.value)
    assert genesis("subscribers", 3) == first
    assert link(first, "subscribers", 3, 7, entry) == head


def test_micros_is_exact():
    assert micros(datetime(1970, 1, 1, 0, 0, 1, 1, tzinfo=UTC)) == 1_000_001
    assert micros(datetime(2026, 12, 1, 12, 0, 0, 999_999, tzinfo=UTC)) % 1_000_000 == 999_999


def test_a_chain_refuses_a_record_out_of_order():
    chain = Chain("subscribers", 0)
    rs = records(3)
    chain.add(rs[0])
    with pytest.raises(ValueError, match="expected offset 1"):
        chain.add(rs[2])


def test_heads_differ_by_partition_and_stream():
    assert genesis("subscribers", 0) != genesis("subscribers", 1) != genesis("campaigns", 0)


def test_a_checkpoint_round_trips_through_its_json():
    c = checkpoints(records(5), 5)[0].with_signature(b"s" * 64)
    assert Checkpoint.from_json(c.to_json()) == c
    assert Checkpoint.from_json(c.to_json()).signature == c.signature


@pytest.mark.parametrize(
    "change",
    [
        {"format": 2},
        {"end": 4},
        {"head": "00"},
        {"time": "2026-12-01T12:00:00Z"},
        {"extra": 1},
        {"partition": -1},
        {"start": True},
    ],
)
def test_a_malformed_checkpoint_is_refused(change):
    data = {**checkpoints(records(5), 5)[0].to_json(), **change}
    with pytest.raises(ValueError):
        Checkpoint.from_json(data)


def test_the_signed_bytes_cover_every_field():
    c = checkpoints(records(4), 4)[0]
    others = [
        replace(c, head=bytes(32)),
        replace(c, prev_head=bytes(32)),
        replace(c, time=T0.replace(second=1)),
        replace(c, key_id="ed25519:other"),
        replace(c, partition=1),
        replace(c, stream="campaigns"),
        replace(c, fingerprints=bytes(32)),
    ]
    assert len({o.signed_bytes() for o in others} | {c.signed_bytes()}) == len(others) + 1


def test_an_untouched_ledger_has_no_findings():
    rs = records(25)
    found, coverage = compare("subscribers", 0, rs, checkpoints(rs, 10), 0, 25)
    assert found == []
    assert coverage.covered_until == 20
    assert coverage.chained_from == 0
    assert coverage.uncovered == [20, 21, 22, 23, 24]


def test_an_altered_record_is_caught_at_its_offset():
    rs = records(30)
    cps = checkpoints(rs, 10)
    rs[13] = replace(rs[13], value=b"event 13, but opted in")
    found, _ = compare("subscribers", 0, rs, cps, 0, 30)
    assert kinds(found) == [(ALTERED, 13)]


def test_a_changed_recorded_time_is_an_alteration():
    rs = records(10)
    cps = checkpoints(rs, 10)
    rs[4] = replace(rs[4], recorded_at_us=rs[4].recorded_at_us - 86_400_000_000)
    assert kinds(compare("subscribers", 0, rs, cps, 0, 10)[0]) == [(ALTERED, 4)]


def test_a_removed_record_is_caught_at_its_offset():
    rs = records(30)
    cps = checkpoints(rs, 10)
    del rs[17]
    found, _ = compare("subscribers", 0, rs, cps, 0, 30)
    assert kinds(found) == [(REMOVED, 17)]


def test_a_removal_hidden_by_renumbering_is_still_caught_where_it_was():
    rs = records(30)
    cps = checkpoints(rs, 10)
    rs = rs[:17] + [replace(r, offset=r.offset - 1) for r in rs[18:]]
    found, _ = compare("subscribers", 0, rs, cps, 0, 29)
    assert (REMOVED, 17) in kinds(found)
    assert (RENUMBERED, 18) in kinds(found)
    assert len(found) == 2  # one line for the renumbered run, not one per record


def test_the_last_records_removed_are_caught():
    rs = records(20)
    cps = checkpoints(rs, 10)
    found, _ = compare("subscribers", 0, rs[:18], cps, 0, 20)
    assert kinds(found) == [(REMOVED, 18), (REMOVED, 19)]


def test_an_inserted_record_is_caught_where_it_was_put():
    rs = records(30)
    cps = checkpoints(rs, 10)
    forged = ChainRecord("subscribers", 0, 5, rs[5].recorded_at_us, b"a grant that never was")
    found, _ = compare("subscribers", 0, [*rs[:5], forged, *rs[5:]], cps, 0, 30)
    assert kinds(found) == [(INSERTED, 5)]


def test_an_insertion_with_every_later_offset_renumbered_is_caught():
    rs = records(30)
    cps = checkpoints(rs, 10)
    forged = ChainRecord("subscribers", 0, 5, rs[5].recorded_at_us, b"forged")
    tampered = rs[:5] + [forged] + [replace(r, offset=r.offset + 1) for r in rs[5:]]
    found, _ = compare("subscribers", 0, tampered, cps, 0, 31)
    assert (INSERTED, 5) in kinds(found)
    assert (RENUMBERED, 5) in kinds(found)


def test_swapped_records_are_caught_as_reordered():
    rs = records(30)
    cps = checkpoints(rs, 10)
    rs[21], rs[22] = rs[22], rs[21]
    found, _ = compare("subscribers", 0, rs, cps, 0, 30)
    assert REORDERED in {f.kind for f in found}
    assert {f.offset for f in found if f.kind == REORDERED} <= {21, 22}
    assert {f.kind for f in found} <= {REORDERED, RENUMBERED}


def test_swapped_records_with_their_offsets_swapped_back_are_caught():
    rs = records(30)
    cps = checkpoints(rs, 10)
    a, b = rs[21], rs[22]
    rs[21], rs[22] = replace(b, offset=21), replace(a, offset=22)
    found, _ = compare("subscribers", 0, rs, cps, 0, 30)
    assert REORDERED in {f.kind for f in found}
    assert {f.kind for f in found} <= {REORDERED, RENUMBERED}
    assert {f.offset for f in found} <= {21, 22}


def test_a_record_moved_far_is_caught_as_reordered():
    rs = records(40)
    cps = checkpoints(rs, 10)
    moved = rs.pop(3)
    rs.insert(30, moved)
    found, _ = compare("subscribers", 0, rs, cps, 0, 40)
    assert (REORDERED, 3) in kinds(found)
    assert {f.kind for f in found} <= {REORDERED, RENUMBERED}


def test_several_tamperings_are_each_named():
    rs = records(50)
    cps = checkpoints(rs, 10)
    rs[3] = replace(rs[3], value=b"changed")
    del rs[20]
    rs.insert(40, ChainRecord("subscribers", 0, 40, 0, b"extra"))
    found, _ = compare("subscribers", 0, rs, cps, 0, 50)
    assert kinds(found) == [(ALTERED, 3), (REMOVED, 20), (INSERTED, 41)]


def test_a_forgery_that_keeps_the_fingerprint_is_caught_by_the_chain():
    """The 8-byte fingerprints locate; the 32-byte heads protect. A record altered
    so that its fingerprint still matches is caught by the chain, between heads."""
    rs = records(30)
    cps = checkpoints(rs, 10)
    real = rs[15].entry()
    forged_entry = real[:8] + bytes(24)

    class Forged(ChainRecord):
        def entry(self) -> bytes:
            return forged_entry

    rs[15] = Forged(**rs[15].__dict__)
    found, _ = compare("subscribers", 0, rs, cps, 0, 30)
    assert kinds(found) == [(ALTERED, 10)]
    assert "between offsets 10 and 19" in found[0].detail


def test_checkpoints_that_disagree_are_a_fork():
    rs = records(20)
    cps = checkpoints(rs, 10)
    rewritten = list(rs)
    rewritten[12] = replace(rs[12], value=b"rewritten")
    later = Chain("subscribers", 0, 10, cps[0].head)
    for r in rewritten[10:]:
        later.add(r)
    fork = later.cut(T0, "ed25519:test")
    found, _ = compare("subscribers", 0, rs, [*cps, fork], 0, 20)
    assert (FORKED, 12) in kinds(found)


def test_an_export_that_starts_on_a_checkpoint_is_chained_from_its_signed_head():
    rs = records(30)
    cps = checkpoints(rs, 10)
    found, coverage = compare("subscribers", 0, rs[10:], cps, 10, 30)
    assert found == []
    assert coverage.chained_from == 10


def test_an_export_that_starts_inside_an_interval_is_checked_by_fingerprint_then_chained():
    rs = records(30)
    cps = checkpoints(rs, 10)
    found, coverage = compare("subscribers", 0, rs[14:], cps, 14, 30)
    assert found == [] and coverage.chained_from == 20
    tampered = rs[14:]
    tampered[1] = replace(tampered[1], value=b"x")
    assert kinds(compare("subscribers", 0, tampered, cps, 14, 30)[0]) == [(ALTERED, 15)]


def test_records_after_the_last_checkpoint_are_uncovered_not_findings():
    rs = records(12)
    cps = checkpoints(rs, 10)
    extra = ChainRecord("subscribers", 0, 12, 0, b"appended after")
    found, coverage = compare("subscribers", 0, [*rs, extra], cps, 0, 13)
    assert found == []
    assert coverage.uncovered == [10, 11, 12]


def test_a_proof_checks_the_wanted_records_with_the_checkpoint_alone():
    rs = records(25)
    cps = [c.with_signature(b"good") for c in checkpoints(rs, 10)]
    wanted = {3, 12, 22}
    segments, uncovered = prove(rs, lambda r: r.offset in wanted, cps)
    assert [s.checkpoint.start for s in segments] == [0, 10]
    assert [r.offset for r in uncovered] == [22]
    good = lambda c: c.signature == b"good"  # noqa: E731 - the public-key check's stand-in
    for segment in segments:
        assert check_proof(segment, good)
        proved = [x for x in segment.links if isinstance(x, ChainRecord)]
        assert {r.offset for r in proved} <= wanted
        bad = list(segment.links)
        i = bad.index(proved[0])
        bad[i] = replace(proved[0], value=b"altered")
        assert not check_proof(replace(segment, links=tuple(bad)), good)
        assert not check_proof(segment, lambda c: False)


def test_a_checkpoint_that_does_not_start_from_genesis_is_a_fork():
    rs = records(5)
    c = checkpoints(rs, 5)[0]
    found, _ = compare("subscribers", 0, rs, [replace(c, prev_head=bytes(32))], 0, 5)
    assert kinds(found) == [(FORKED, 0)]
    assert "genesis" in found[0].detail
