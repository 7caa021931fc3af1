"""Signed checkpoints of the ledger's hash chain (``ledger.chain``): the signing key,
the public keys a verifier trusts, and the one process that writes them.

Keys are Ed25519 (``cryptography``). A key's id is ``ed25519:`` and the first 8
bytes of the SHA-256 of its raw 32-byte public key, in hex: derived, so an id can
never name another key. The private key is a PKCS#8 PEM file named by
``CONSENT_CHECKPOINT_KEY_FILE``; the public keys a verifier trusts are a keyring,
a JSON file ``{"keys": [{"key_id", "public_key" (base64 of the raw 32 bytes),
"status": "active" | "retired" | "revoked", "retired_at"?}]}``.

**One writer.** Every serving process runs a ``Checkpointer``, but only the one
holding a PostgreSQL advisory lock (on a connection of its own) writes; when it
dies, its connection and lock go, and another takes over at its next round. Should
two ever write at once (a writer cut off from PostgreSQL that has not noticed
yet), the duplicates are harmless: each checkpoint is a complete signed statement
about a range of offsets, checked on its own, so two about the same range agree
(or show that the ledger changed between them, which the verifier reports).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ledger.chain import Chain, Checkpoint
from ledger.ports import CheckpointStore, RecordSource, WriterLock

log = logging.getLogger(__name__)

STREAMS = ("subscribers", "campaigns")
"""The ledger's streams, by the names the chain and the checkpoints use
(``ledger.ports.Stream`` values)."""

MAX_RECORDS = 4096
"""The most records one checkpoint covers: its fingerprints stay at 32 KiB, and a
proof of one record carries at most this many links."""

REFRESH = timedelta(hours=1)
"""An idle partition gets a checkpoint of no new records this often: it says the
partition still ended there then, and keeps every partition's latest checkpoint
near the end of the checkpoint topic, where a new writer looks for it."""


def key_id_of(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).digest()[:8].hex()


class SigningKey:
    """The private key checkpoints are signed with."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public = private.public_key()
        self.key_id = key_id_of(self.public)

    def sign(self, checkpoint: Checkpoint) -> Checkpoint:
        if checkpoint.key_id != self.key_id:
            raise ValueError(f"checkpoint names key {checkpoint.key_id}, not {self.key_id}")
        return checkpoint.with_signature(self._private.sign(checkpoint.signed_bytes()))

    def public_entry(self) -> dict[str, Any]:
        """This key's keyring entry (active)."""
        return PublicKey(self.key_id, self.public).to_json()

    @staticmethod
    def load(path: Path) -> SigningKey:
        """``ValueError`` naming the file when it holds no Ed25519 private key."""
        try:
            private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path} holds no unencrypted PEM private key: {exc}") from exc
        if not isinstance(private, Ed25519PrivateKey):
            raise ValueError(f"{path} holds a {type(private).__name__}, not an Ed25519 key")
        return SigningKey(private)

    @staticmethod
    def generate(path: Path) -> SigningKey:
        """A new key, written to ``path`` (mode 0600); never overwrites a file."""
        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        return SigningKey(private)

    @staticmethod
    def load_or_generate(path: Path) -> SigningKey:
        """The embedded default's key: made once in the data directory."""
        try:
            return SigningKey.generate(path)
        except FileExistsError:
            return SigningKey.load(path)


ACTIVE, RETIRED, REVOKED = "active", "retired", "revoked"


@dataclass(frozen=True)
class PublicKey:
    key_id: str
    key: Ed25519PublicKey
    status: str = ACTIVE
    retired_at: datetime | None = None
    """For a retired key: checkpoints it signed after this time are not trusted."""

    def to_json(self) -> dict[str, Any]:
        raw = self.key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        entry: dict[str, Any] = {
            "key_id": self.key_id,
            "public_key": base64.b64encode(raw).decode(),
            "status": self.status,
        }
        if self.retired_at is not None:
            entry["retired_at"] = self.retired_at.astimezone(UTC).isoformat()
        return entry

    @staticmethod
    def from_json(entry: Any) -> PublicKey:
        if not isinstance(entry, dict):
            raise ValueError("a keyring entry is a JSON object")
        try:
            raw = base64.b64decode(entry["public_key"], validate=True)
            key = Ed25519PublicKey.from_public_bytes(raw)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"keyring entry without a usable public_key: {exc}") from exc
        key_id = key_id_of(key)
        if entry.get("key_id") != key_id:
            raise ValueError(f"keyring entry {entry.get('key_id')!r}: its key's id is {key_id}")
        status = entry.get("status", ACTIVE)
        if status not in (ACTIVE, RETIRED, REVOKED):
            raise ValueError(f"keyring entry {key_id}: status {status!r} is not known")
        retired_at = None
        if "retired_at" in entry:
            retired_at = datetime.fromisoformat(entry["retired_at"])
            if retired_at.tzinfo is None:
                raise ValueError(f"keyring entry {key_id}: retired_at needs a time zone")
        return PublicKey(key_id, key, status, retired_at)


class Keyring:
    """The public keys a verifier trusts, by key id."""

    def __init__(self, keys: Iterable[PublicKey] = ()) -> None:
        self.keys = {k.key_id: k for k in keys}

    @staticmethod
    def load(path: Path) -> Keyring:
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not JSON: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise ValueError(f'{path} is not a keyring: {{"keys": [...]}} expected')
        return Keyring(PublicKey.from_json(entry) for entry in data["keys"])

    def save(self, path: Path) -> None:
        """Replace ``path`` in one step (a reader never sees half a keyring)."""
        text = json.dumps({"keys": [k.to_json() for k in self.keys.values()]}, indent=2) + "\n"
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(temp, path)

    def add(self, key: PublicKey) -> None:
        if key.key_id in self.keys and self.keys[key.key_id].status != ACTIVE:
            raise ValueError(f"{key.key_id} is {self.keys[key.key_id].status}; it stays so")
        self.keys[key.key_id] = key

    def retire(self, key_id: str, at: datetime) -> None:
        key = self._known(key_id)
        if key.status == REVOKED:
            raise ValueError(f"{key_id} is revoked; it stays so")
        self.keys[key_id] = replace(key, status=RETIRED, retired_at=at)

    def revoke(self, key_id: str) -> None:
        self.keys[key_id] = replace(self._known(key_id), status=REVOKED)

    def _known(self, key_id: str) -> PublicKey:
        if key_id not in self.keys:
            raise ValueError(f"{key_id} is not in the keyring")
        return self.keys[key_id]

    def distrust(self, checkpoint: Checkpoint) -> str | None:
        """Why ``checkpoint`` is not to be trusted, or None when its signature holds
        under a key this keyring trusts for its time."""
        key = self.keys.get(checkpoint.key_id)
        if key is None:
            return f"signed by {checkpoint.key_id}, a key the keyring does not have"
        if key.status == REVOKED:
            return f"signed by {key.key_id}, which is revoked"
        if key.retired_at is not None and checkpoint.time > key.retired_at:
            return (
                f"signed by {key.key_id} at {checkpoint.time:%Y-%m-%d %H:%M:%S}, after it was "
                f"retired at {key.retired_at:%Y-%m-%d %H:%M:%S}"
            )
        try:
            key.key.verify(checkpoint.signature, checkpoint.signed_bytes())
        except InvalidSignature:
            return f"its signature does not verify under {key.key_id}"
        return None


# -- the ports the writer and the verifier read through ------------------------------


class IndexedCheckpoints:
    """A ``CheckpointStore`` (the checkpoint topic) with a copy of each checkpoint in
    an index that finds those covering an event (``PostgresCheckpoints``). The store
    is the record; a copy that fails is logged, and a proof then lacks that one."""

    def __init__(self, store: CheckpointStore, index: Any) -> None:
        self.store, self.index = store, index

    async def publish(self, checkpoints: Sequence[Checkpoint]) -> None:
        await self.store.publish(checkpoints)
        try:
            await self.index.publish(checkpoints)
        except Exception as exc:  # the record is published; the copy is only a help
            log.warning("checkpoints: published, but not indexed for proofs: %s", exc)

    async def latest(
        self, key_id: str, wanted: set[tuple[str, int]]
    ) -> dict[tuple[str, int], Checkpoint]:
        return await self.store.latest(key_id, wanted)

    def every(self) -> AsyncIterator[Checkpoint | str]:
        return self.store.every()

    async def covering(self, stream: str, partition: int, offset: int) -> list[Checkpoint]:
        found: list[Checkpoint] = await self.index.covering(stream, partition, offset)
        return found


class Checkpointer:
    """Extends each partition's chain with the records appended since its last
    checkpoint and publishes a signed checkpoint of them, every ``interval``.

    It resumes from the latest checkpoint signed with its own key; a partition
    without one (a new ledger, or a new key after a rotation) is chained from its
    first record, so a new key's checkpoints cover the whole ledger and a revoked
    old key leaves nothing unproven."""

    def __init__(
        self,
        source: RecordSource,
        store: CheckpointStore,
        key: SigningKey,
        lock: WriterLock,
        clock: Callable[[], datetime],
        interval: float,
        *,
        max_records: int = MAX_RECORDS,
        refresh: timedelta = REFRESH,
        signed: Callable[[int], None] = lambda n: None,
    ) -> None:
        self.source, self.store, self.key, self.lock = source, store, key, lock
        self.clock, self.interval = clock, interval
        self.max_records, self.refresh = max_records, refresh
        self._signed = signed
        """Told how many checkpoints were stored (the metrics count them)."""
        self._chains: dict[tuple[str, int], tuple[Chain, datetime | None]] = {}

    async def run(self) -> None:
        try:
            while True:
                if await self.lock.held():
                    await self.round()
                else:
                    self._chains.clear()  # another writer moves the chains on meanwhile
                await asyncio.sleep(self.interval)
        finally:
            await self.lock.close()

    async def round(self) -> list[Checkpoint]:
        """One pass over every partition; returns what was published."""
        now = self.clock()
        wanted = {(s, p) for s in STREAMS for p in await self.source.partitions(s)}
        missing = wanted - self._chains.keys()
        if missing:
            found = await self.store.latest(self.key.key_id, missing)
            for where in missing:
                c = found.get(where)
                chain = Chain(*where) if c is None else Chain(*where, offset=c.end, head=c.head)
                self._chains[where] = (chain, None if c is None else c.time)
        published: list[Checkpoint] = []
        for where in sorted(wanted):
            try:
                published += await self._extend(where, now)
            except BaseException:
                self._chains.pop(where, None)  # resume from what was published
                raise
        if published:
            log.debug("checkpoints: %d published", len(published))
        return published

    async def _extend(self, where: tuple[str, int], now: datetime) -> list[Checkpoint]:
        chain, last = self._chains[where]
        end = await self.source.end_offset(*where)
        if end < chain.offset:
            log.error(
                "checkpoints: %s/%d ends at %d, but was checkpointed up to %d: the ledger "
                "lost records (run consent-ledger verify)",
                *where,
                end,
                chain.offset,
            )
            return []
        if end == chain.offset and last is not None and now - last < self.refresh:
            return []
        published: list[Checkpoint] = []
        async for record in self.source.records(*where, chain.offset, end):
            chain.add(record)
            if len(chain.entries) >= self.max_records:
                published.append(await self._publish(chain, now))
        if chain.entries or not published:
            published.append(await self._publish(chain, now))
        self._chains[where] = (chain, now)
        return published

    async def _publish(self, chain: Chain, now: datetime) -> Checkpoint:
        checkpoint = self.key.sign(chain.cut(now, self.key.key_id))
        await self.store.publish([checkpoint])
        self._signed(1)
        return checkpoint
