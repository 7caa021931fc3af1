"""``export`` and ``verify``: the ledger's records as JSON Lines, and the verdict on
them against the signed checkpoints (``ledger.tamper`` does the comparing).

An export is JSON Lines, one object a line, each with a ``type``:

* ``export``: first, once: ``format`` (1) and ``exported_at``.
* ``range``: per partition exported, ``stream``, ``partition``, ``from`` and ``to``:
  the export holds every record of offsets ``[from, to)``.
* ``record``: ``stream``, ``partition``, ``offset``, ``recorded_at_us`` (the ledger's
  stamp, microseconds since the epoch), ``value`` (the record's bytes, base64) and,
  for people, ``recorded_at``, ``event_type`` and ``event_id`` (not trusted: only
  the bytes are checked).
* ``checkpoint``: a signed checkpoint (``checkpoint``, its JSON), for a verifier
  without access to the checkpoint topic.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from ledger.chain import ChainRecord, Checkpoint, micros
from ledger.ports import CheckpointStore, RecordSource
from ledger.tamper import REMOVED, Coverage, Finding, compare
from services.checkpoints import STREAMS, Keyring

EXPORT_FORMAT = 1
UNPROVEN = "unproven"
"""A record old enough to have been checkpointed that no trusted checkpoint covers."""
CHECKPOINT = "checkpoint"


def _time(us: int) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)).isoformat()


def _described(value: bytes) -> dict[str, str]:
    """The event's type and id, for a person reading the export."""
    from services.wire.codec import decode_event

    try:
        event = decode_event(value)
    except ValueError:
        return {"event_type": "(undecodable)"}
    return {"event_type": event.EVENT_TYPE, "event_id": str(event.event_id)}


@dataclass(frozen=True)
class Range:
    stream: str
    partition: int
    start: int
    stop: int


async def plan(
    source: RecordSource,
    checkpoints: list[Checkpoint],
    streams: Iterable[str],
    partitions: set[int] | None,
    start: int | None,
    stop: int | None,
) -> tuple[list[Range], list[str]]:
    """The ranges to export, and notes for the person asking. A ``start`` is moved
    back to where a checkpoint starts (or 0), so the export is chained from a
    signed head."""
    ranges: list[Range] = []
    notes: list[str] = []
    for stream in streams:
        for partition in await source.partitions(stream):
            if partitions is not None and partition not in partitions:
                continue
            end = await source.end_offset(stream, partition)
            last = end if stop is None else min(stop, end)
            first = 0
            if start:
                heads = [
                    c.start
                    for c in checkpoints
                    if (c.stream, c.partition) == (stream, partition) and c.start <= start
                ]
                first = max(heads, default=0)
                if first != start:
                    notes.append(
                        f"{stream}/{partition}: starting at offset {first}, where a "
                        f"checkpoint starts, not {start}, so the export is chained from "
                        "a signed head"
                    )
            ranges.append(Range(stream, partition, first, max(first, last)))
    return ranges, notes


@dataclass(frozen=True)
class ExportMark:
    """Where an export stands: its output holds whole lines up to here, so an
    interrupted export is carried on from a mark (``export(mark=...)``) after
    cutting its output back to ``size``."""

    index: int
    """The ranges before this one are written whole, their checkpoints too."""
    offset: int | None
    """The next offset of ``ranges[index]`` to write; None: its ``range`` line is not
    written yet."""
    records: int
    """Records written."""
    size: int
    """The output's length in bytes (every line is ASCII: ``json.dumps`` escapes)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "offset": self.offset,
            "records": self.records,
            "size": self.size,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ExportMark:
        offset = obj["offset"]
        return cls(
            int(obj["index"]),
            None if offset is None else int(offset),
            int(obj["records"]),
            int(obj["size"]),
        )


async def export(
    out: TextIO,
    source: RecordSource,
    ranges: list[Range],
    checkpoints: list[Checkpoint],
    now: datetime,
    *,
    mark: ExportMark | None = None,
    moved: Callable[[ExportMark], None] | None = None,
) -> int:
    """Write the export, from ``mark`` when it carries on an interrupted one; returns
    the number of records the export holds. ``moved`` is told of the mark after
    each record and each range written."""
    size = 0 if mark is None else mark.size

    def line(obj: dict[str, Any]) -> None:
        nonlocal size
        text = json.dumps(obj, sort_keys=True) + "\n"
        out.write(text)
        size += len(text)

    def tell(at: ExportMark) -> None:
        if moved is not None:
            moved(at)

    if mark is None:
        line({"type": "export", "format": EXPORT_FORMAT, "exported_at": now.isoformat()})
        mark = ExportMark(0, None, 0, size)
    count = mark.records
    for index in range(mark.index, len(ranges)):
        r = ranges[index]
        first = r.start
        if index == mark.index and mark.offset is not None:
            first = mark.offset
        else:
            line(
                {
                    "type": "range",
                    "stream": r.stream,
                    "partition": r.partition,
                    "from": r.start,
                    "to": r.stop,
                }
            )
        async for record in source.records(r.stream, r.partition, first, r.stop):
            line(
                {
                    "type": "record",
                    "stream": record.stream,
                    "partition": record.partition,
                    "offset": record.offset,
                    "recorded_at_us": record.recorded_at_us,
                    "recorded_at": _time(record.recorded_at_us),
                    "value": base64.b64encode(record.value).decode(),
                    **_described(record.value),
                }
            )
            count += 1
            tell(ExportMark(index, record.offset + 1, count, size))
        for c in checkpoints:
            if (c.stream, c.partition) == (r.stream, r.partition) and (
                c.start <= r.stop and c.end >= r.start
            ):
                line({"type": "checkpoint", "checkpoint": c.to_json()})
        tell(ExportMark(index + 1, None, count, size))
    return count


@dataclass
class Source:
    """Records to verify, per partition, with the range each claims to be whole."""

    records: dict[tuple[str, int], list[ChainRecord]] = field(default_factory=dict)
    ranges: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    checkpoints: list[Checkpoint | str] = field(default_factory=list)
    taken_at: datetime | None = None
    """When the records were read (an export's ``exported_at``)."""


def read_export(lines: Iterable[str], name: str) -> Source:
    """An export's lines; ``ValueError`` naming the line that is not one of its kind."""
    source = Source()
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        where = f"{name}:{number}"
        try:
            obj = json.loads(text)
            kind = obj["type"]
            if kind == "export":
                if obj.get("format") != EXPORT_FORMAT:
                    raise ValueError(f"export format {obj.get('format')!r} is not known")
                source.taken_at = datetime.fromisoformat(obj["exported_at"])
            elif kind == "range":
                key = (str(obj["stream"]), int(obj["partition"]))
                source.ranges[key] = (int(obj["from"]), int(obj["to"]))
                source.records.setdefault(key, [])
            elif kind == "record":
                record = ChainRecord(
                    str(obj["stream"]),
                    int(obj["partition"]),
                    int(obj["offset"]),
                    int(obj["recorded_at_us"]),
                    base64.b64decode(obj["value"], validate=True),
                )
                source.records.setdefault((record.stream, record.partition), []).append(record)
            elif kind == "checkpoint":
                try:
                    source.checkpoints.append(Checkpoint.from_json(obj["checkpoint"]))
                except ValueError as exc:
                    source.checkpoints.append(f"{where}: {exc}")
            else:
                raise ValueError(f"unknown type {kind!r}")
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}: not a line of an export: {exc}") from exc
    for key, records in source.records.items():
        if key not in source.ranges:
            offsets = [r.offset for r in records]
            source.ranges[key] = (min(offsets), max(offsets) + 1)
    return source


def read_checkpoints(lines: Iterable[str], name: str) -> Iterator[Checkpoint | str]:
    """Checkpoints, one JSON object a line (the checkpoint topic's values, or an
    export's ``checkpoint`` lines)."""
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
            if isinstance(obj, dict) and obj.get("type") == "checkpoint":
                obj = obj["checkpoint"]
            elif isinstance(obj, dict) and obj.get("type") in ("export", "range", "record"):
                continue
            yield Checkpoint.from_json(obj)
        except (ValueError, KeyError) as exc:
            yield f"{name}:{number}: {exc}"


async def read_ledger(
    source: RecordSource,
    streams: Iterable[str],
    now: datetime,
    *,
    skip: set[tuple[str, int]] | None = None,
    each: Callable[[], None] | None = None,
) -> AsyncIterator[tuple[tuple[str, int], tuple[int, int], list[ChainRecord]]]:
    """The live ledger, a partition at a time, from its first record to its end;
    the partitions in ``skip`` (judged by an interrupted run) are not read. ``each``
    is called after each record read."""
    for stream in streams:
        for partition in await source.partitions(stream):
            if skip is not None and (stream, partition) in skip:
                continue
            first_offset = getattr(source, "first_offset", None)
            first = 0 if first_offset is None else await first_offset(stream, partition)
            end = await source.end_offset(stream, partition)
            records = []
            async for record in source.records(stream, partition, first, end):
                records.append(record)
                if each is not None:
                    each()
            # A topic whose first records were deleted starts later: those count as removed.
            yield (stream, partition), (0, end), records


async def ledger_size(source: RecordSource, streams: Iterable[str]) -> int:
    """The offsets the live ledger's partitions end at, added up: a progress total."""
    total = 0
    for stream in streams:
        for partition in await source.partitions(stream):
            total += await source.end_offset(stream, partition)
    return total


@dataclass
class Verdict:
    findings: list[Finding]
    coverage: list[Coverage]
    trusted: dict[str, int]
    """Checkpoints trusted, per key id."""

    def summary(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for f in self.findings:
            counts[f.kind] = counts.get(f.kind, 0) + 1
        return counts


@dataclass(frozen=True)
class Judged:
    """One partition's judgement: what a resumed ``verify`` need not redo."""

    where: tuple[str, int]
    findings: list[Finding]
    coverage: Coverage

    def to_json(self) -> dict[str, Any]:
        return {
            "where": list(self.where),
            "findings": [dataclasses.astuple(f) for f in self.findings],
            "coverage": dataclasses.asdict(self.coverage),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Judged:
        stream, partition = obj["where"]
        return cls(
            (str(stream), int(partition)),
            [Finding(str(s), int(p), int(o), str(k), str(d)) for s, p, o, k, d in obj["findings"]],
            Coverage(**obj["coverage"]),
        )


class Verifier:
    """Collects the checkpoints, sorts out those not to be trusted, then judges each
    partition's records."""

    def __init__(self, keyring: Keyring, grace: timedelta) -> None:
        self.keyring = keyring
        self.grace = grace
        self.trusted: dict[tuple[str, int], list[Checkpoint]] = {}
        self.findings: list[Finding] = []
        self.coverage: list[Coverage] = []
        self.by_key: dict[str, int] = {}

    def add_checkpoints(self, checkpoints: Iterable[Checkpoint | str]) -> None:
        seen: set[bytes] = set()
        for c in checkpoints:
            if isinstance(c, str):
                self.findings.append(Finding("-", 0, 0, CHECKPOINT, c))
                continue
            if c.signature in seen:  # the same checkpoint from two places
                continue
            seen.add(c.signature)
            problem = self.keyring.distrust(c)
            if problem is not None:
                self.findings.append(
                    Finding(
                        c.stream,
                        c.partition,
                        c.start,
                        CHECKPOINT,
                        f"the checkpoint of offsets [{c.start}, {c.end}) made "
                        f"{c.time:%Y-%m-%d %H:%M:%S} is not trusted: {problem}",
                    )
                )
                continue
            self.trusted.setdefault((c.stream, c.partition), []).append(c)
            self.by_key[c.key_id] = self.by_key.get(c.key_id, 0) + 1

    def judge(
        self,
        where: tuple[str, int],
        span: tuple[int, int],
        records: list[ChainRecord],
        taken_at: datetime,
    ) -> Judged:
        """Judge one partition; what it found, to keep in a resume state."""
        before = len(self.findings)
        self._judge(where, span, records, taken_at)
        return Judged(where, self.findings[before:], self.coverage[-1])

    def restore(self, judged: Judged) -> None:
        """Take the judgement of a partition made by an interrupted run."""
        self.findings += judged.findings
        self.coverage.append(judged.coverage)

    def _judge(
        self,
        where: tuple[str, int],
        span: tuple[int, int],
        records: list[ChainRecord],
        taken_at: datetime,
    ) -> None:
        stream, partition = where
        findings, coverage = compare(stream, partition, records, self.trusted.get(where, []), *span)
        self.findings += findings
        self.coverage.append(coverage)
        limit = micros(taken_at - self.grace)
        uncovered = set(coverage.uncovered)
        old = [r for r in records if r.offset in uncovered and r.recorded_at_us < limit]
        if old:
            self.findings.append(
                Finding(
                    stream,
                    partition,
                    old[0].offset,
                    UNPROVEN,
                    f"{len(old)} record(s) from offset {old[0].offset}, recorded more than "
                    f"{self.grace.total_seconds():g} s before the records were read, are "
                    "covered by no trusted checkpoint: their checkpoints are missing",
                )
            )

    def missing(self, exported: Iterable[Checkpoint], judged: set[tuple[str, int]]) -> None:
        """An export carries the checkpoints of the partitions it holds: one of them
        that covers records of a partition the export does not hold had that
        partition taken out."""
        for c in exported:
            where = (c.stream, c.partition)
            if where in judged or c.end == c.start:
                continue
            if c not in self.trusted.get(where, []):
                continue
            judged.add(where)
            self.findings.append(
                Finding(
                    *where,
                    c.start,
                    REMOVED,
                    f"the export's checkpoints cover offsets from {c.start} of this partition, "
                    "but the export holds none of it",
                )
            )

    def verdict(self) -> Verdict:
        return Verdict(sorted(self.findings), self.coverage, dict(self.by_key))


def describe(coverage: Coverage) -> str:
    c = coverage
    text = f"{c.stream}/{c.partition}: offsets [{c.start}, {c.end}), {c.records} record(s)"
    if c.covered_until is None:
        return text + "; no trusted checkpoint covers any of them"
    text += f"; signed through offset {c.covered_until - 1}"
    if c.chained_from is not None:
        text += f", chained from offset {c.chained_from}"
    if c.uncovered:
        text += f"; {len(c.uncovered)} after the last checkpoint, not yet covered"
    return text


def all_streams(chosen: str) -> tuple[str, ...]:
    return STREAMS if chosen == "all" else (chosen,)


async def stored_checkpoints(store: CheckpointStore) -> list[Checkpoint | str]:
    return [c async for c in store.every()]
