"""A packet's tamper evidence: the proof that its events are in the ledger, unchanged,
at their offsets, checked against the checkpoints this service signed with the
public key alone (``services.proofs``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ledger.chain import Checkpoint
from services.checkpoints import CheckpointStore, Keyring, PublicKey, RecordSource
from services.proofs import bundle

STREAM = "subscribers"
"""The stream a number's events live on (``services.checkpoints.STREAMS``)."""


class PacketEvidence:
    def __init__(self, records: RecordSource, store: CheckpointStore, key: PublicKey) -> None:
        """``key``: the public half of the key this service signs checkpoints with."""
        self.records = records
        self.store = store
        self.key = key
        self.keyring = Keyring([key])

    async def of(self, positions: Iterable[tuple[int, int]]) -> dict[str, Any]:
        """The proof of the subscriber events at ``positions`` ((partition, offset)),
        with the public key that checks it. Checkpoints come from the store, each one
        whose signature holds under the key; events newer than the last checkpoint
        are listed as ``uncovered``, for a packet made later to prove."""
        wanted = sorted(set(positions))
        partitions = {p for p, _ in wanted}
        trusted: list[Checkpoint] = []
        async for c in self.store.every():
            if (
                isinstance(c, Checkpoint)
                and c.stream == STREAM
                and c.partition in partitions
                and self.keyring.distrust(c) is None
            ):
                trusted.append(c)
        proof = await bundle(self.records, trusted, [(STREAM, p, o) for p, o in wanted])
        left = len(proof["uncovered"])
        if not wanted:
            status, detail = "nothing_to_prove", "the packet lists no event"
        elif left == 0:
            status = "proven"
            detail = f"every event ({len(wanted)}) is covered by a signed checkpoint"
        elif left == len(wanted):
            status = "not_proven"
            detail = "no signed checkpoint covers these events yet"
        else:
            status = "partly_proven"
            detail = (
                f"{len(wanted) - left} of {len(wanted)} events are covered by a signed "
                f"checkpoint; {left} are newer than the last one"
            )
        return {
            "status": status,
            "detail": detail + " (check with services.proofs.check_bundle and the public key)",
            "public_key": self.key.to_json(),
            "bundle": proof,
        }
