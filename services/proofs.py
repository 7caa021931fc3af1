"""The hook for proof packets: what shows, with a public key alone, that some of the
ledger's events are in it, unchanged, at their offsets.

``bundle`` gathers, for each event asked about, the checkpoint that covers it and the
chain's links from that checkpoint's signed ``prev_head`` through the event to its
signed ``head`` (``ledger.chain.prove``): the event's own bytes, and only the entry
digests of its neighbours. ``check_bundle`` needs nothing but that JSON and the
keyring. An event no checkpoint covers yet is named, to be proven by a later one.
An event whose bytes the reader may not see (``withheld``) is proven by its entry
digest alone, listed under ``withheld``: the signed chain places that digest at its
offset, and whoever holds the bytes can show they are the ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from ledger.chain import ChainRecord, Checkpoint, ProofSegment, check_proof, prove
from ledger.ports import Covering, RecordSource
from services.checkpoints import Keyring

BUNDLE_FORMAT = 1


async def bundle(
    source: RecordSource,
    checkpoints: Iterable[Checkpoint],
    positions: Iterable[tuple[str, int, int]],
    withheld: Iterable[tuple[str, int, int]] = (),
) -> dict[str, Any]:
    """The proof of the events at ``positions`` ((stream, partition, offset)), against
    ``checkpoints`` (trusted ones: the caller's keyring has sorted them out); those
    also in ``withheld`` by their entry digest, not their bytes."""
    wanted: dict[tuple[str, int], set[int]] = {}
    for stream, partition, offset in positions:
        wanted.setdefault((stream, partition), set()).add(offset)
    bare = set(withheld)
    digests: list[dict[str, Any]] = []
    by_partition: dict[tuple[str, int], list[Checkpoint]] = {}
    for c in checkpoints:
        by_partition.setdefault((c.stream, c.partition), []).append(c)
    segments: list[dict[str, Any]] = []
    uncovered: list[dict[str, Any]] = []
    for where, offsets in sorted(wanted.items()):
        held = [
            c
            for c in by_partition.get(where, [])
            if c.end > c.start and any(c.start <= o < c.end for o in offsets)
        ]
        start = min((c.start for c in held), default=min(offsets))
        stop = max((c.end for c in held), default=start)
        records = [r async for r in source.records(*where, start, stop)]
        hidden = {o for o in offsets if (*where, o) in bare}
        proven, _ = prove(records, _at(offsets), held, _at(hidden))
        segments += [s.to_json() for s in proven]
        reached = {r.offset for s in proven for r in s.links if isinstance(r, ChainRecord)}
        for s in proven:
            for o in sorted(hidden & set(range(s.checkpoint.start, s.checkpoint.end))):
                entry = s.links[o - s.checkpoint.start]
                assert isinstance(entry, bytes)
                digests.append(
                    {"stream": where[0], "partition": where[1], "offset": o, "entry": entry.hex()}
                )
                reached.add(o)
        uncovered += [
            {"stream": where[0], "partition": where[1], "offset": o}
            for o in sorted(offsets - reached)
        ]
    return {
        "format": BUNDLE_FORMAT,
        "segments": segments,
        "uncovered": uncovered,
        "withheld": digests,
    }


class Proofs:
    """What a proof packet calls: the bundle for its events, with the checkpoints that
    cover them found in the store's index (``Runtime.proofs``)."""

    def __init__(self, source: RecordSource, checkpoints: Covering) -> None:
        self.source, self.checkpoints = source, checkpoints

    async def tamper_evidence(
        self,
        positions: Iterable[tuple[str, int, int]],
        withheld: Iterable[tuple[str, int, int]] = (),
    ) -> dict[str, Any]:
        """``bundle`` of the events at ``positions`` ((stream, partition, offset)), with
        every stored checkpoint that covers one; ``check_bundle`` and the public keys
        check it (and say which checkpoints to trust). Those in ``withheld`` are
        proven by their entry digest, without their bytes."""
        asked = sorted(set(positions))
        found: dict[bytes, Checkpoint] = {}
        for stream, partition, offset in asked:
            for c in await self.checkpoints.covering(stream, partition, offset):
                found.setdefault(c.signature, c)
        return await bundle(self.source, list(found.values()), asked, withheld)


def _at(offsets: set[int]) -> Callable[[ChainRecord], bool]:
    return lambda record: record.offset in offsets


def check_bundle(data: Any, keyring: Keyring) -> tuple[list[ChainRecord], list[str]]:
    """The records ``data`` proves, and what is wrong with it (nothing: every
    segment holds under a key the keyring trusts, and each ``withheld`` digest is
    the one a segment that holds places at its offset)."""
    proven: list[ChainRecord] = []
    problems: list[str] = []
    placed: dict[tuple[str, int, int], str] = {}
    if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
        return [], ["not a proof bundle of a known format"]
    for i, item in enumerate(data.get("segments", [])):
        try:
            segment = ProofSegment.from_json(item)
        except (KeyError, TypeError, ValueError) as exc:
            problems.append(f"segment {i}: {exc}")
            continue
        distrust: list[str] = []

        def trusted(c: Checkpoint, distrust: list[str] = distrust) -> bool:
            why = keyring.distrust(c)
            if why is not None:
                distrust.append(why)
            return why is None

        if check_proof(segment, trusted):
            proven += [r for r in segment.links if isinstance(r, ChainRecord)]
            c = segment.checkpoint
            for o, link in enumerate(segment.links, start=c.start):
                if isinstance(link, bytes):
                    placed[(c.stream, c.partition, o)] = link.hex()
        else:
            c = segment.checkpoint
            reason = distrust[0] if distrust else "its links do not lead to the signed head"
            problems.append(
                f"segment {i} ({c.stream}/{c.partition} [{c.start}, {c.end})): {reason}"
            )
    for i, item in enumerate(data.get("withheld", [])):
        try:
            where = (str(item["stream"]), int(item["partition"]), int(item["offset"]))
            entry = str(item["entry"])
        except (KeyError, TypeError, ValueError) as exc:
            problems.append(f"withheld {i}: {exc}")
            continue
        if placed.get(where) != entry:
            problems.append(
                f"withheld {i} ({where[0]}/{where[1]}@{where[2]}): no segment that holds "
                "places its entry digest there"
            )
    return proven, problems
