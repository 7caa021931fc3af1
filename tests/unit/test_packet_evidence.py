"""A packet's tamper evidence (``services.packets.evidence``): its events proven
against the service's signed checkpoints, checked with the public key alone."""

from __future__ import annotations

import json

from services.checkpoints import Keyring, PublicKey
from services.packets.evidence import PacketEvidence
from services.proofs import check_bundle
from tests.unit.test_checkpoints import Clock, Ledger, key, writer

__all__ = ["key"]  # the fixture


async def test_the_packets_events_are_proven_with_the_public_key_alone(key):
    ledger, clock = Ledger(), Clock()
    ledger.append("subscribers", 0, 6)
    await writer(ledger, key, clock).round()
    ledger.append("subscribers", 0, 1)  # not checkpointed yet
    evidence = PacketEvidence(ledger, ledger, PublicKey(key.key_id, key.public))
    found = json.loads(json.dumps(await evidence.of([(0, 1), (0, 4), (0, 6)])))
    assert found["status"] == "partly_proven"
    assert found["bundle"]["uncovered"] == [{"stream": "subscribers", "partition": 0, "offset": 6}]
    public = Keyring([PublicKey.from_json(found["public_key"])])
    proven, problems = check_bundle(found["bundle"], public)
    assert problems == []
    assert sorted(r.offset for r in proven) == [1, 4]


async def test_checkpoints_signed_by_another_key_prove_nothing(key, tmp_path):
    from services.checkpoints import SigningKey

    ledger, clock = Ledger(), Clock()
    ledger.append("subscribers", 0, 3)
    await writer(ledger, key, clock).round()
    other = SigningKey.generate(tmp_path / "other.pem")
    evidence = PacketEvidence(ledger, ledger, PublicKey(other.key_id, other.public))
    found = await evidence.of([(0, 1)])
    assert found["status"] == "not_proven"
    assert found["bundle"]["segments"] == []
