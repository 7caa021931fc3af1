"""A packet's tamper evidence (``services.packets.evidence``): its events proven
against the ledger's signed checkpoints, checked with the public key alone."""

from __future__ import annotations

import json

from services.checkpoints import Keyring, PublicKey, SigningKey
from services.packets.evidence import PacketEvidence
from services.proofs import Proofs, check_bundle
from tests.unit.test_checkpoints import Clock, Ledger, key, writer

__all__ = ["key"]  # the fixture


class Indexed:
    """The fake ledger's stored checkpoints, found by the offsets they cover."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    async def covering(self, stream, partition, offset):  # type: ignore[no-untyped-def]
        return [
            c
            for c in self.ledger.stored
            if (c.stream, c.partition) == (stream, partition) and c.start <= offset < c.end
        ]


async def test_the_packets_events_are_proven_with_the_public_key_alone(
    key,
    tmp_path,
):
    ledger, clock = Ledger(), Clock()
    ledger.append("subscribers", 0, 6)
    await writer(ledger, key, clock).round()
    ledger.append("subscribers", 0, 1)  # not checkpointed yet
    evidence = PacketEvidence(Proofs(ledger, Indexed(ledger)), PublicKey(key.key_id, key.public))
    found = json.loads(json.dumps(await evidence.of([(0, 1), (0, 4), (0, 6)])))
    assert found["status"] == "partly_proven"
    assert found["bundle"]["uncovered"] == [{"stream": "subscribers", "partition": 0, "offset": 6}]
    public = Keyring([PublicKey.from_json(found["public_key"])])
    proven, problems = check_bundle(found["bundle"], public)
    assert problems == []
    assert sorted(r.offset for r in proven) == [1, 4]
    # Under a key the reader was not given, the same bundle proves nothing.
    other = SigningKey.generate(tmp_path / "other.pem")
    proven, problems = check_bundle(
        found["bundle"], Keyring([PublicKey(other.key_id, other.public)])
    )
    assert proven == [] and problems


async def test_events_no_checkpoint_covers_are_not_proven(key):
    ledger = Ledger()
    ledger.append("subscribers", 0, 3)
    evidence = PacketEvidence(Proofs(ledger, Indexed(ledger)), PublicKey(key.key_id, key.public))
    found = await evidence.of([(0, 1)])
    assert found["status"] == "not_proven"
    assert found["bundle"]["segments"] == []
