"""A packet's tamper evidence: the proof that its events are in the ledger, unchanged,
at their offsets, against the ledger's signed checkpoints, which a reader checks
with the public keys alone (``services.proofs``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from services.checkpoints import PublicKey

STREAM = "subscribers"
"""The stream a number's events live on (``services.checkpoints.STREAMS``)."""


class Proving(Protocol):
    """``services.proofs.Proofs``: the bundle of some events with their checkpoints."""

    async def tamper_evidence(
        self,
        positions: Iterable[tuple[str, int, int]],
        withheld: Iterable[tuple[str, int, int]] = (),
    ) -> dict[str, Any]: ...


class PacketEvidence:
    def __init__(self, proofs: Proving, key: PublicKey) -> None:
        """``key``: the public half of the key this service signs checkpoints with
        now, given beside the proof (a reader trusts the keys its operator gives it,
        and an older checkpoint may be signed by a key since retired)."""
        self.proofs = proofs
        self.key = key

    async def of(
        self, positions: Iterable[tuple[int, int]], withheld: Iterable[tuple[int, int]] = ()
    ) -> dict[str, Any]:
        """The proof of the subscriber events at ``positions`` ((partition, offset)).
        Events newer than the last checkpoint are listed as ``uncovered``, for a
        packet made later to prove. Those also in ``withheld`` (facts under every
        brand, to a reader of some brands) are proven by their entry digest, not their
        stored bytes, which name what the reader's other reads leave out."""
        wanted = sorted(set(positions))
        bare = [(STREAM, p, o) for p, o in sorted(set(withheld))]
        proof = await self.proofs.tamper_evidence([(STREAM, p, o) for p, o in wanted], bare)
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
        if hidden := len(proof.get("withheld", [])):
            detail += (
                f"; {hidden} of them, under every brand, by its digest alone "
                "(bundle.withheld): its stored bytes may name another brand"
            )
        return {
            "status": status,
            "detail": detail + " (check with services.proofs.check_bundle and the public key)",
            "public_key": self.key.to_json(),
            "bundle": proof,
        }
