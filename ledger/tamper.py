"""What a verifier concludes from a partition's records and the checkpoints it trusts.

Pure: the records (from the topic, or an export) and the checkpoints whose
signatures the caller has checked go in; findings come out, each with where it is.
Two comparisons are made:

* Alignment: the checkpoints list each record's fingerprint (``ledger.chain``), in
  offset order. The records' own fingerprints are aligned with that list (a
  longest-matching-blocks diff), so a record that differs, is missing, is extra or
  is somewhere else is named at its offset, even when every later record's offset
  was renumbered to hide it.
* The chain: where alignment finds nothing, the chain is computed from a signed
  head and compared with every signed head after it, with SHA-256's full strength
  (a fingerprint is only 8 bytes).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field

from ledger.chain import ChainRecord, Checkpoint, fingerprint, genesis, link

ALTERED = "altered"
REMOVED = "removed"
INSERTED = "inserted"
REORDERED = "reordered"
RENUMBERED = "renumbered"
FORKED = "forked"
CHECKPOINT = "checkpoint"
"""A checkpoint that is not to be trusted (bad signature, unknown or revoked key)."""


@dataclass(frozen=True, order=True)
class Finding:
    stream: str
    partition: int
    offset: int
    """Where, in the ledger's offsets as the checkpoints recorded them."""
    kind: str
    detail: str

    def line(self) -> str:
        return f"{self.kind.upper()} {self.stream}/{self.partition}@{self.offset}: {self.detail}"


@dataclass
class Coverage:
    """What was checked of one partition."""

    stream: str
    partition: int
    start: int
    end: int
    """The range the source says it holds: ``[start, end)``."""
    records: int = 0
    covered_until: int | None = None
    """The end of the last trusted checkpoint in the range (None: no checkpoint)."""
    chained_from: int | None = None
    """Where the chain was anchored on a signed head (None: it could not be)."""
    uncovered: list[int] = field(default_factory=list)
    """Offsets of records that no trusted checkpoint covers yet."""


class _Truth:
    """What the trusted checkpoints of one partition say, offset by offset."""

    def __init__(self, stream: str, partition: int, checkpoints: Sequence[Checkpoint]):
        self.fingerprints: dict[int, bytes] = {}
        self.heads: dict[int, bytes] = {0: genesis(stream, partition)}
        self.sources: dict[int, Checkpoint] = {}
        self.findings: list[Finding] = []
        forks: set[tuple[int, int]] = set()

        def fork(offset: int, a: Checkpoint, b: Checkpoint) -> None:
            if (a.start, b.start) in forks:
                return
            forks.add((a.start, b.start))
            detail = (
                f"two signed checkpoints disagree about offset {offset} "
                f"([{a.start}, {a.end}) at {a.time:%Y-%m-%d %H:%M:%S} and "
                f"[{b.start}, {b.end}) at {b.time:%Y-%m-%d %H:%M:%S}): "
                "the ledger was rewritten between them"
            )
            if a is b:  # only the genesis head to disagree with
                detail = (
                    f"the signed checkpoint of [{b.start}, {b.end}) does not start from this "
                    "partition's genesis head: it chains another ledger's records"
                )
            self.findings.append(Finding(stream, partition, offset, FORKED, detail))

        for c in sorted(checkpoints, key=lambda c: (c.start, c.end, c.time)):
            # Fingerprints first: they name the offset where two checkpoints part.
            for offset in range(c.start, c.end):
                fp = c.fingerprint_at(offset)
                known = self.fingerprints.setdefault(offset, fp)
                if known != fp:
                    fork(offset, self.sources[offset], c)
                self.sources.setdefault(offset, c)
            for offset, head in ((c.start, c.prev_head), (c.end, c.head)):
                known = self.heads.setdefault(offset, head)
                if known != head:
                    fork(offset, self.sources.get(offset, c), c)


def compare(
    stream: str,
    partition: int,
    records: Sequence[ChainRecord],
    checkpoints: Sequence[Checkpoint],
    start: int,
    end: int,
) -> tuple[list[Finding], Coverage]:
    """Check ``records`` (one partition's, in the source's order, which claims to be
    every record of ``[start, end)``) against ``checkpoints`` (this partition's,
    their signatures already found good)."""
    truth = _Truth(stream, partition, checkpoints)
    findings = list(truth.findings)
    coverage = Coverage(stream, partition, start, end, records=len(records))
    expected = [o for o in sorted(truth.fingerprints) if start <= o < end]
    if expected:
        coverage.covered_until = expected[-1] + 1
    found = [r.entry() for r in records]
    aligned = _align(stream, partition, expected, truth, records, found)
    findings += aligned.findings
    coverage.uncovered = aligned.uncovered
    if not aligned.findings:
        chained, coverage.chained_from = _chain(stream, partition, records, found, truth, start)
        findings += chained
    return sorted(findings), coverage


@dataclass
class _Aligned:
    findings: list[Finding] = field(default_factory=list)
    uncovered: list[int] = field(default_factory=list)


def _align(
    stream: str,
    partition: int,
    expected: list[int],
    truth: _Truth,
    records: Sequence[ChainRecord],
    found: list[bytes],
) -> _Aligned:
    out = _Aligned()

    def finding(offset: int, kind: str, detail: str) -> None:
        out.findings.append(Finding(stream, partition, offset, kind, detail))

    want = [truth.fingerprints[o] for o in expected]
    have = [fingerprint(e) for e in found]
    matcher = difflib.SequenceMatcher(None, want, have, autojunk=False)
    missing: list[int] = []  # indexes into expected
    extra: list[tuple[int, int]] = []  # (index into records, index into expected it precedes)
    replaced: list[tuple[list[int], list[int]]] = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            for i, j in zip(range(i1, i2), range(j1, j2), strict=True):
                if records[j].offset != expected[i]:
                    finding(
                        expected[i],
                        RENUMBERED,
                        f"the record of offset {expected[i]} is there, but says offset "
                        f"{records[j].offset}" + _from_here(i2 - i1, i - i1),
                    )
                    break
        elif tag == "delete":
            missing += range(i1, i2)
        elif tag == "insert":
            extra += [(j, i1) for j in range(j1, j2)]
        else:
            replaced.append((list(range(i1, i2)), list(range(j1, j2))))
    # A record missing in one place and extra in another has moved.
    gone = {want[i]: i for i in missing} | {want[i]: i for t, _ in replaced for i in t}
    moved: set[int] = set()
    moved_to: set[int] = set()
    for j in [j for j, _ in extra] + [j for _, s in replaced for j in s]:
        i = gone.pop(have[j], -1)
        if i < 0:
            continue
        moved.add(i)
        moved_to.add(j)
        finding(
            expected[i],
            REORDERED,
            f"the record of offset {expected[i]} is found out of order, as record "
            f"{j + 1} of the source" + _after(records, j),
        )
    for t, s in replaced:
        t = [i for i in t if i not in moved]
        s = [j for j in s if j not in moved_to]
        for i, j in zip(t, s, strict=False):
            finding(
                expected[i],
                ALTERED,
                "its bytes or its recorded time differ from what the checkpoint recorded "
                f"(fingerprint {want[i].hex()}, found {have[j].hex()})",
            )
        missing += t[len(s) :]
        extra += [(j, t[-1] + 1 if t else 0) for j in s[len(t) :]]
    for i in missing:
        if i not in moved:
            finding(expected[i], REMOVED, "the checkpoint lists it; the source does not have it")
    covered = set(expected)
    claimed = [r.offset for r in records]
    for j, before in extra:
        if j in moved_to:
            continue
        offset = records[j].offset
        if (before >= len(expected) or offset not in covered) and claimed.count(offset) == 1:
            out.uncovered.append(offset)  # after every checkpoint, or between: not yet signed
            continue
        at = expected[before] if before < len(expected) else expected[-1] + 1
        finding(
            at,
            INSERTED,
            f"a record no checkpoint lists (saying offset {offset}) comes before offset {at}",
        )
    return out


def _from_here(length: int, index: int) -> str:
    rest = length - index - 1
    return f", and so do the {rest} records after it in this run" if rest else ""


def _after(records: Sequence[ChainRecord], j: int) -> str:
    return f", after the record saying offset {records[j - 1].offset}" if j else ", first"


def _chain(
    stream: str,
    partition: int,
    records: Sequence[ChainRecord],
    found: list[bytes],
    truth: _Truth,
    start: int,
) -> tuple[list[Finding], int | None]:
    """The chain, from the first signed head in the range, against every signed head
    after it; where the source skips past a signed head (uncovered records) it is
    anchored again on the next. Records before the first head were checked by
    fingerprint only. Returns the findings and where the chain was first anchored."""
    findings: list[Finding] = []
    head: bytes | None = None
    anchor = expect = -1
    first: int | None = None

    def broken(until: int) -> None:
        findings.append(
            Finding(
                stream,
                partition,
                anchor,
                ALTERED,
                f"between offsets {anchor} and {until} the chain does not reach the signed "
                "head, though every fingerprint agrees: a record there was altered to "
                "match its 8-byte fingerprint",
            )
        )

    for record, entry in zip(records, found, strict=True):
        offset = record.offset
        signed = truth.heads.get(offset) if offset >= start else None
        if head is None or offset != expect:
            if signed is None:
                head = None
                continue
            head, anchor = signed, offset
            first = offset if first is None else first
        elif signed is not None:
            if signed != head:
                broken(offset - 1)
                head = signed
            anchor = offset
        head = link(head, stream, partition, offset, entry)
        expect = offset + 1
    signed = truth.heads.get(expect)
    if head is not None and signed is not None and signed != head:
        broken(expect - 1)
    return findings, first
