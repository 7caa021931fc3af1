"""Compaction of the replica's compact digests: a compacted copy answers exactly what
its source answers, writes made while it is built reach it, the source answers
whole until the swap, and over a long run of updates the copy's bytes stay bounded
where they used to grow with every update."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.digest import CampaignDigest, Digest, Mark, Pending
from services.adapters.digest_replica import CompactDigests, Compaction, CompactionRefused
from services.wire.compact_digest import Unreadable
from tests.unit.test_compact_digests import _same, digests

BRANDS = ("acme", "globex")
PHONES = (
    *(f"+1415555{n:04d}" for n in range(12)),
    "+014155550001",  # no E.164 number: kept aside, as a Digest
)
ID = "0b6a4f2e-1c2d-5e3f-8a9b-0c1d2e3f4a5b"

writes = st.lists(
    st.tuples(st.sampled_from(BRANDS), st.sampled_from(PHONES), digests), min_size=1, max_size=30
)


def _answers(store: CompactDigests) -> dict[tuple[str, str], Digest]:
    return {
        (brand, phone): digest
        for brand in BRANDS
        for phone, digest in store.get_many(brand, PHONES).items()
    }


def _compacted(compaction: Compaction, budget: float = 0.0) -> CompactDigests:
    """Steps until done (a budget of 0 copies one run of entries a step)."""
    for _ in range(10_000):
        done = compaction.step(budget)
        if done is not None:
            return done
    raise AssertionError("the compaction never finished")


@settings(max_examples=100, deadline=None)
@given(before=writes, during=writes)
def test_a_compacted_copy_answers_what_its_source_answers(before, during):
    """Over generated digests (odd phones and digests the encoding refuses among
    them): the copy answers exactly, of the same types, what the source answers,
    including what was written between its steps; the source answers whole
    meanwhile."""
    store = CompactDigests()
    expected: dict[tuple[str, str], Digest] = {}
    for brand, phone, digest in before:
        store.put(brand, phone, digest)
        expected[brand, phone] = digest
    compaction = Compaction(store)
    serving, compacted, mirrored = store, None, False
    for brand, phone, digest in during:  # between steps, as refreshes would write
        if compacted is None:
            compacted = compaction.step(0.0)
            if compacted is not None:
                serving = compacted  # swapped in, as the replica does
        mirrored |= compacted is None
        serving.put(brand, phone, digest)
        expected[brand, phone] = digest
        assert _answers(serving).keys() == expected.keys()
    if compacted is None:
        compacted = _compacted(compaction)

    assert compacted is not store and compacted.size == len(expected)
    answers = _answers(compacted)
    assert answers.keys() == expected.keys()
    for key, digest in expected.items():
        assert _same(answers[key], digest)
    with pytest.raises(RuntimeError):  # over: it answers no second copy
        compaction.step(0.0)
    if not mirrored and serving is store:  # nothing written since it began: none dead
        assert compacted.stats()["free_bytes"] == compacted.dead_bytes == 0
        assert compacted.stats()["strings"] <= store.stats()["strings"]


def _sent_digest(day: int, sends: int, reply: str | None) -> Digest:
    grant = Mark(1_700_000_000_000_000, 7, ID)
    marks = tuple(Mark(day * 1000 + n, n, ID) for n in range(sends))
    campaigns = {
        "welcome": CampaignDigest(grant=grant, tier=1),
        f"daily-{day}": CampaignDigest(grant=grant, sent=marks, first_sent_at=day * 1000),
    }
    pending = () if reply is None else (Pending(ID, reply, day, False, False, False, False, False),)
    return Digest(brand="acme", pending=pending, campaigns=campaigns)


def _long_run(compact: bool) -> tuple[list[int], CompactDigests, int]:
    """A pod's updates: each day a new campaign name (new shapes), sends growing the
    day's marks (digests moving), one update in five leaving a reply with a text of
    its own (new strings), resolved at the number's next update. Upkeep as
    ``DigestReplica._compact`` gives it, every 50 updates (a few runs of work).
    Answers the copy's arena and tables bytes after each day, the copy, and how
    many compactions swapped in."""
    rng = random.Random(7)
    phones = [f"+1415555{n:04d}" for n in range(400)]
    sends = dict.fromkeys(phones, 0)
    store = CompactDigests()
    for phone in phones:
        store.put("acme", phone, _sent_digest(0, 0, None))
    compaction: Compaction | None = None
    compactions, held = 0, []
    for day in range(1, 41):
        sends = dict.fromkeys(phones, 0)
        for u in range(1_000):
            phone = rng.choice(phones)
            sends[phone] = min(sends[phone] + 1, 4)
            reply = f"day {day} reply {u}: who is this?" if u % 5 == 0 else None
            store.put("acme", phone, _sent_digest(day, sends[phone], reply))
            if compact and u % 50 == 0:
                if compaction is None and store.wants_compaction(floor=64 * 1024):
                    compaction = Compaction(store)
                # Budgets of 0: each step does one run of work (16 slots), so the
                # run does not depend on the machine's speed.
                for _ in range(4 if compaction is not None else 0):
                    done = compaction.step(0.0)
                    if done is not None:
                        store, compaction, compactions = done, None, compactions + 1
                        break
        stats = store.stats()
        held.append(stats["arena_bytes"] + stats["table_bytes"])
    return held, store, compactions


def test_the_copys_bytes_stay_bounded_over_a_long_run_of_updates():
    """Without compaction the arena's free places, the strings of resolved replies
    and the shapes of past days' campaigns stay for as long as the process runs;
    with it, the copy holds no more than about twice what is live (COMPACT_AT of a
    half) above the floor, day after day."""
    grown, uncompacted, _ = _long_run(compact=False)
    held, store, compactions = _long_run(compact=True)

    assert compactions >= 3
    assert _answers_of(store) == _answers_of(uncompacted)
    # Without: every day adds some 40 KB of strings and shapes, never given back.
    assert grown[-1] > 2 * grown[9]
    # With: the last 30 days hold no more than the bound set at day 10.
    live = _live_bytes(store)
    assert max(held[10:]) < 2 * live + 64 * 1024 + 40 * 1024
    assert max(held[10:]) < grown[-1] / 2


def _answers_of(store: CompactDigests) -> dict[str, Digest]:
    return store.get_many("acme", [f"+1415555{n:04d}" for n in range(400)])


def _live_bytes(store: CompactDigests) -> int:
    """The arena and tables bytes of a copy freshly compacted from ``store``."""
    fresh = _compacted(Compaction(store), 1.0)
    stats = fresh.stats()
    return stats["arena_bytes"] + stats["table_bytes"]


def test_a_compaction_is_refused_when_a_source_entry_is_unreadable():
    """Bytes that cannot be read back fail the compaction rather than be left out
    of the copy: the source stays in place (and fails CanSend closed there, as
    before), takes no more mirrored writes and is not compacted again."""
    store = CompactDigests()
    for n in range(10):
        store.put("acme", f"+1415555{n:04d}", _sent_digest(1, n % 3, None))
    store._arena[0:2] = b"\xff\xff"  # a shape that does not exist
    compaction = Compaction(store)

    with pytest.raises(Unreadable):
        _compacted(compaction)

    assert store._mirror is None and not store.compactable
    assert not store.wants_compaction(floor=0)


def test_a_copy_that_lost_an_entry_is_refused():
    store = CompactDigests()
    for n in range(10):
        store.put("acme", f"+1415555{n:04d}", _sent_digest(1, 1, None))
    compaction = Compaction(store)
    store.size += 1  # an entry the copy will not find: in doubt

    with pytest.raises(CompactionRefused):
        _compacted(compaction)
    assert store._mirror is None and not store.compactable


def test_one_compaction_at_a_time():
    store = CompactDigests()
    store.put("acme", "+14155550001", _sent_digest(1, 1, None))
    Compaction(store)
    with pytest.raises(RuntimeError):
        Compaction(store)
