"""Tamper evidence: a hash chain over each partition's records, in ledger order, and
the checkpoints that commit to it.

Pure: ``hashlib`` and the standard library only. Signing and its keys live in
``services.checkpoints``; reading records and checkpoints in the adapters. The
exact bytes hashed are documented in ``protos/README.md`` ("Tamper evidence"), so
that anyone can check a ledger without this code:

* ``entry = SHA-256("consent-ledger/entry/v1" NUL || recorded_at_us || value)``:
  one record, what it says (``value``, the bytes the topic carries) and when the
  ledger recorded it (microseconds since the epoch, signed 64-bit big-endian).
* ``head(-1) = SHA-256("consent-ledger/genesis/v1" NUL || stream NUL || partition)``
* ``head(n) = SHA-256("consent-ledger/link/v1" NUL || head(n-1) || stream NUL ||
  partition || offset || entry(n))``: partition unsigned 32-bit, offset unsigned
  64-bit, both big-endian. The head after a partition's record at offset n commits
  to every record up to it, their order and their offsets.

A ``Checkpoint`` says: in ``stream``/``partition`` the head before offset
``start`` was ``prev_head`` and after offset ``end - 1`` it is ``head``; it lists
the first 8 bytes of each of those records' entries (``fingerprints``), which lets
a verifier say *which* record was altered, dropped, inserted or moved rather than
only that the chain breaks somewhere in the interval.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

FINGERPRINT_BYTES = 8
"""Of each record's entry digest, the first bytes a checkpoint lists. They locate a
tampered record; the chain's full 32-byte heads are what protect it."""

CHECKPOINT_FORMAT = 1
_CHECKPOINT_TAG = b"consent-ledger/checkpoint/v1\n"
_ENTRY_TAG = b"consent-ledger/entry/v1\x00"
_LINK_TAG = b"consent-ledger/link/v1\x00"
_GENESIS_TAG = b"consent-ledger/genesis/v1\x00"


@dataclass(frozen=True)
class ChainRecord:
    """One record of the ledger as stored: where it is, when the ledger recorded it
    and its exact bytes (the ``services.wire.codec`` envelope)."""

    stream: str
    partition: int
    offset: int
    recorded_at_us: int
    """The ledger's own time stamp (Kafka's LogAppendTime), microseconds since the epoch."""
    value: bytes

    def entry(self) -> bytes:
        return entry_digest(self.recorded_at_us, self.value)


def entry_digest(recorded_at_us: int, value: bytes) -> bytes:
    return hashlib.sha256(_ENTRY_TAG + struct.pack(">q", recorded_at_us) + value).digest()


def genesis(stream: str, partition: int) -> bytes:
    """The head before a partition's first record (offset 0)."""
    return hashlib.sha256(_GENESIS_TAG + _where(stream, partition)).digest()


def link(head: bytes, stream: str, partition: int, offset: int, entry: bytes) -> bytes:
    """The head after the record at ``offset`` whose entry digest is ``entry``."""
    return hashlib.sha256(
        _LINK_TAG + head + _where(stream, partition) + struct.pack(">Q", offset) + entry
    ).digest()


def _where(stream: str, partition: int) -> bytes:
    return stream.encode() + b"\x00" + struct.pack(">I", partition)


def fingerprint(entry: bytes) -> bytes:
    return entry[:FINGERPRINT_BYTES]


def micros(at: datetime) -> int:
    """``at`` as whole microseconds since the epoch (exactly: no float on the way)."""
    delta = at - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


class Chain:
    """A partition's head as records are added in ledger order."""

    def __init__(self, stream: str, partition: int, offset: int = 0, head: bytes | None = None):
        if offset < 0:
            raise ValueError("offset must not be negative")
        if head is None:
            if offset != 0:
                raise ValueError("a chain that does not start at offset 0 needs the head there")
            head = genesis(stream, partition)
        self.stream, self.partition = stream, partition
        self.offset = offset
        """The offset the next record must have."""
        self.head = head
        self.entries: list[bytes] = []
        """The entry digests added since the chain was made (or last ``cut``)."""
        self._cut_offset, self._cut_head = offset, head

    def add(self, record: ChainRecord) -> bytes:
        if (record.stream, record.partition) != (self.stream, self.partition):
            raise ValueError(f"{record.stream}/{record.partition} is not this chain's partition")
        if record.offset != self.offset:
            raise ValueError(f"expected offset {self.offset}, got {record.offset}")
        entry = record.entry()
        self.head = link(self.head, self.stream, self.partition, record.offset, entry)
        self.entries.append(entry)
        self.offset += 1
        return self.head

    def cut(self, time: datetime, key_id: str) -> Checkpoint:
        """The (unsigned) checkpoint of what was added since the last cut, and a new
        interval from here."""
        checkpoint = Checkpoint(
            stream=self.stream,
            partition=self.partition,
            start=self._cut_offset,
            end=self.offset,
            prev_head=self._cut_head,
            head=self.head,
            time=time,
            key_id=key_id,
            fingerprints=b"".join(fingerprint(e) for e in self.entries),
        )
        self.entries = []
        self._cut_offset, self._cut_head = self.offset, self.head
        return checkpoint


def _time_text(at: datetime) -> str:
    if at.tzinfo is None:
        raise ValueError("a checkpoint's time must be timezone-aware")
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement about one partition's chain over offsets ``[start, end)``."""

    stream: str
    partition: int
    start: int
    end: int
    prev_head: bytes
    head: bytes
    time: datetime
    """When it was made (the writer's clock)."""
    key_id: str
    fingerprints: bytes
    signature: bytes = field(default=b"", compare=False)

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.end:
            raise ValueError(f"checkpoint range [{self.start}, {self.end}) is not a range")
        if len(self.fingerprints) != (self.end - self.start) * FINGERPRINT_BYTES:
            raise ValueError(
                f"checkpoint of {self.end - self.start} records lists "
                f"{len(self.fingerprints) / FINGERPRINT_BYTES:g} fingerprints"
            )
        if len(self.prev_head) != 32 or len(self.head) != 32:
            raise ValueError("checkpoint heads must be 32-byte SHA-256 digests")

    def body(self) -> dict[str, Any]:
        """Every field but the signature, as the JSON a checkpoint record carries."""
        return {
            "format": CHECKPOINT_FORMAT,
            "stream": self.stream,
            "partition": self.partition,
            "start": self.start,
            "end": self.end,
            "prev_head": self.prev_head.hex(),
            "head": self.head.hex(),
            "time": _time_text(self.time),
            "key_id": self.key_id,
            "fingerprints": base64.b64encode(self.fingerprints).decode(),
        }

    def signed_bytes(self) -> bytes:
        """What the signature is over: a tag line, then ``body`` as canonical JSON
        (keys sorted, no spaces, ASCII)."""
        return (
            _CHECKPOINT_TAG
            + json.dumps(
                self.body(), sort_keys=True, separators=(",", ":"), ensure_ascii=True
            ).encode()
        )

    def to_json(self) -> dict[str, Any]:
        return {**self.body(), "signature": base64.b64encode(self.signature).decode()}

    def fingerprint_at(self, offset: int) -> bytes:
        i = (offset - self.start) * FINGERPRINT_BYTES
        return self.fingerprints[i : i + FINGERPRINT_BYTES]

    def with_signature(self, signature: bytes) -> Checkpoint:
        return replace(self, signature=signature)

    @staticmethod
    def from_json(data: Any) -> Checkpoint:
        """A checkpoint record's JSON; ``ValueError`` naming what is wrong."""
        if not isinstance(data, dict):
            raise ValueError("a checkpoint is a JSON object")
        if data.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint format {data.get('format')!r} is not known")
        try:
            time = datetime.strptime(data["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
            checkpoint = Checkpoint(
                stream=_text(data, "stream"),
                partition=_count(data, "partition"),
                start=_count(data, "start"),
                end=_count(data, "end"),
                prev_head=bytes.fromhex(_text(data, "prev_head")),
                head=bytes.fromhex(_text(data, "head")),
                time=time,
                key_id=_text(data, "key_id"),
                fingerprints=base64.b64decode(_text(data, "fingerprints"), validate=True),
                signature=base64.b64decode(_text(data, "signature"), validate=True),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a checkpoint: {exc}") from exc
        if checkpoint.body() != {k: v for k, v in data.items() if k != "signature"}:
            raise ValueError("not a checkpoint: it has fields or spellings this version lacks")
        return checkpoint


def _text(data: dict[str, Any], name: str) -> str:
    value = data[name]
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string")
    return value


def _count(data: dict[str, Any], name: str) -> int:
    value = data[name]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError(f"{name} must be a whole number, 0 or more")
    return value


# -- proofs: what a proof packet carries to check its events with the public key alone


@dataclass(frozen=True)
class ProofSegment:
    """The links from a checkpoint's ``prev_head`` to its ``head``: for each offset of
    its range, the record itself when it is one of the events to prove, else only its
    entry digest. With the checkpoint's signature, the records are proven to be in
    the ledger at their offsets, unchanged, with the public key alone."""

    checkpoint: Checkpoint
    links: tuple[ChainRecord | bytes, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint.to_json(),
            "links": [
                {
                    "offset": r.offset,
                    "recorded_at_us": r.recorded_at_us,
                    "value": base64.b64encode(r.value).decode(),
                }
                if isinstance(r, ChainRecord)
                else {"entry": r.hex()}
                for r in self.links
            ],
        }

    @staticmethod
    def from_json(data: Any) -> ProofSegment:
        checkpoint = Checkpoint.from_json(data["checkpoint"])
        links: list[ChainRecord | bytes] = []
        for i, item in enumerate(data["links"]):
            if "entry" in item:
                links.append(bytes.fromhex(item["entry"]))
            else:
                links.append(
                    ChainRecord(
                        checkpoint.stream,
                        checkpoint.partition,
                        checkpoint.start + i,
                        int(item["recorded_at_us"]),
                        base64.b64decode(item["value"], validate=True),
                    )
                )
        return ProofSegment(checkpoint, tuple(links))


def prove(
    records: Iterable[ChainRecord],
    wanted: Callable[[ChainRecord], bool],
    checkpoints: Sequence[Checkpoint],
    bare: Callable[[ChainRecord], bool] = lambda r: False,
) -> tuple[list[ProofSegment], list[ChainRecord]]:
    """The proof of the ``wanted`` records among ``records`` (one partition's, in
    ledger order, covering every checkpoint that holds a wanted one): per checkpoint
    that covers a wanted record, a ``ProofSegment``. Also returns the wanted records
    no checkpoint covers yet (they need a later one). A wanted record ``bare`` picks
    is proven by its entry digest alone: its bytes are not the reader's to see."""
    covering = sorted(checkpoints, key=lambda c: (c.start, -c.end))
    segments: list[ProofSegment] = []
    uncovered: list[ChainRecord] = []
    by_offset = {r.offset: r for r in records}
    done_until = -1
    for record in sorted((r for r in by_offset.values() if wanted(r)), key=lambda r: r.offset):
        if record.offset < done_until:
            continue
        holder = next((c for c in covering if c.start <= record.offset < c.end), None)
        if holder is None:
            uncovered.append(record)
            continue
        links: list[ChainRecord | bytes] = []
        for offset in range(holder.start, holder.end):
            r = by_offset[offset]
            links.append(r if wanted(r) and not bare(r) else r.entry())
        segments.append(ProofSegment(holder, tuple(links)))
        done_until = holder.end
    return segments, uncovered


def check_proof(segment: ProofSegment, signature_valid: Callable[[Checkpoint], bool]) -> bool:
    """Whether ``segment``'s records are proven: its checkpoint's signature holds
    (``signature_valid``, the caller's public-key check) and its links lead from the
    checkpoint's ``prev_head`` to its ``head``."""
    c = segment.checkpoint
    if len(segment.links) != c.end - c.start or not signature_valid(c):
        return False
    head = c.prev_head
    for offset, item in enumerate(segment.links, start=c.start):
        if isinstance(item, ChainRecord):
            if (item.stream, item.partition, item.offset) != (c.stream, c.partition, offset):
                return False
            entry = item.entry()
        else:
            entry = item
        if fingerprint(entry) != c.fingerprint_at(offset):
            return False
        head = link(head, c.stream, c.partition, offset, entry)
    return head == c.head
