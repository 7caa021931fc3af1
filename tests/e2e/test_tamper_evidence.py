"""Tamper evidence end to end: a real service signs checkpoints of its ledger (Kafka,
and the embedded default's table), `consent-ledger export` and `verify` run as
commands and pass, and a tampered export is caught at the offsets tampered with."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import uuid
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api

from ledger.ports import Stream
from services.adapters.kafka_audit import KafkaCheckpoints
from services.adapters.postgres_audit import PostgresCheckpoints
from services.bootstrap import Runtime
from services.checkpoints import Keyring, PublicKey, SigningKey
from services.proofs import check_bundle
from tests.e2e.harness import (
    Clock,
    client,
    define,
    inbound,
    kafka_ledger_env,
    kafka_settings,
    now,
    opt_in,
    opt_out,
    running,
    service_settings,
    ts,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

PHONES = [f"+1415555{n:04d}" for n in range(12)]
FORMER_NUMBER = "+12125550143"


async def consent_ledger(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def write_history(address: str) -> None:
    at = now() - timedelta(hours=1)
    async with client(address) as c:

        async def write(rpc: str, request: Any) -> None:
            # UNAVAILABLE says "retry the same request": a just-started projector may
            # not have joined its group yet on a busy machine
            for _ in range(20):
                try:
                    await getattr(c, rpc)(request)
                    return
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                    await asyncio.sleep(0.5)
            raise AssertionError(f"{rpc} stayed UNAVAILABLE")

        await write("DefineCampaign", define("acme", "promo", at - timedelta(days=1)))
        for phone in PHONES:
            await write("RecordOptIn", opt_in(phone, "acme", "promo", at))
        for phone in PHONES[:4]:
            await write("RecordOptOut", opt_out(phone, "acme", "promo", at + timedelta(minutes=5)))


async def checkpointed(runtime: Runtime, store) -> int:  # type: ignore[no-untyped-def]
    """Wait until the checkpoints reach every partition's end; the ledger's size."""
    assert runtime.ledger is not None
    ends = await runtime.ledger.every_end_offset()
    want = {(s.value, p): end for s in Stream for p, end in ends[s].items()}
    for _ in range(200):
        reached: dict[tuple[str, int], int] = {}
        async for c in store.every():
            if not isinstance(c, str):
                where = (c.stream, c.partition)
                reached[where] = max(reached.get(where, 0), c.end)
        if all(reached.get(where, -1) >= end for where, end in want.items()):
            return sum(want.values())
        await asyncio.sleep(0.1)
    raise AssertionError(f"checkpoints reached {reached}, the ledger ends at {want}")


def keyring(tmp_path: Path, *keys: SigningKey) -> Path:
    path = tmp_path / "keys.json"
    Keyring(PublicKey(k.key_id, k.public) for k in keys).save(path)
    return path


def tamper(lines: list[str], how: str) -> tuple[list[str], str]:
    """The export's lines tampered with one way, and the finding expected: its kind
    and stream/partition@offset, as verify prints it."""
    records = [i for i, line in enumerate(lines) if json.loads(line)["type"] == "record"]
    subscriber = [i for i in records if json.loads(lines[i])["stream"] == "subscribers"]
    # a partition with at least three records
    by_partition: dict[int, list[int]] = {}
    for i in subscriber:
        by_partition.setdefault(json.loads(lines[i])["partition"], []).append(i)
    chosen = next(ixs for ixs in by_partition.values() if len(ixs) >= 3)
    i, j = chosen[1], chosen[2]
    first, second = json.loads(lines[i]), json.loads(lines[j])
    where = f"subscribers/{first['partition']}@{first['offset']}"
    out = list(lines)
    if how == "altered":
        value = bytearray(base64.b64decode(first["value"]))
        value[-1] ^= 0x01
        first["value"] = base64.b64encode(bytes(value)).decode()
        out[i] = json.dumps(first)
        return out, f"ALTERED {where}"
    if how == "removed":
        del out[i]
        return out, f"REMOVED {where}"
    if how == "inserted":
        forged = {**second, "value": base64.b64encode(b"\x0a\x02no").decode()}
        out.insert(i, json.dumps(forged))
        return out, f"INSERTED {where}"
    assert how == "reordered"
    out[i], out[j] = out[j], out[i]
    return out, "REORDERED subscribers/"
    # (which of the two is named as moved depends on the alignment; both are there)


@pytest.mark.parametrize("ledger", ["kafka", "postgres"])
async def test_checkpoints_are_signed_and_a_tampered_export_is_caught(
    tmp_path, postgres_dsn, kafka_bootstrap, ledger
):
    key = SigningKey.generate(tmp_path / "checkpoint-key.pem")
    keys = keyring(tmp_path, key)
    prefix = f"e2e-{uuid.uuid4().hex[:8]}."
    kafka = kafka_settings(kafka_bootstrap, prefix) if ledger == "kafka" else None
    settings = replace(
        service_settings(tmp_path, postgres_dsn, kafka=kafka),
        checkpoint_key_file=tmp_path / "checkpoint-key.pem",
        checkpoint_interval=0.5,
    )
    env = {"CONSENT_LEDGER": ledger, "CONSENT_POSTGRES_DSN": postgres_dsn}
    if kafka is not None:
        env |= kafka_ledger_env(kafka)
    async with running(settings) as runtime:
        await write_history(runtime.address)
        if kafka is not None:
            store = KafkaCheckpoints(kafka)
            await store.start(write=False)
        else:
            assert runtime.pool is not None
            store = PostgresCheckpoints(runtime.pool)
        try:
            size = await checkpointed(runtime, store)
            assert runtime.metrics.checkpoints_signed >= 2  # both streams, at least
        finally:
            if kafka is not None:
                await store.close()
        # a proof packet's tamper evidence: its events, proven with the public key alone
        assert runtime.ledger is not None
        ends = await runtime.ledger.every_end_offset()
        asked = [(s.value, p, end - 1) for s in Stream for p, end in ends[s].items() if end]
        # On Kafka a checkpoint reaches the topic (which ``checkpointed`` read) a
        # statement before its copy in PostgreSQL, where proofs find it.
        for _ in range(100):
            evidence = json.loads(json.dumps(await runtime.proofs.tamper_evidence(asked)))
            if not evidence["uncovered"]:
                break
            await asyncio.sleep(0.1)
        proven, problems = check_bundle(evidence, Keyring.load(keys))
        assert problems == [] and evidence["uncovered"] == []
        assert sorted((r.stream, r.partition, r.offset) for r in proven) == sorted(asked)
        export = tmp_path / "ledger.jsonl"
        code, out, err = await consent_ledger("export", "--output", str(export), env=env)
        assert code == 0, err
        assert f"exported {size} record(s)" in err
        code, out, err = await consent_ledger("verify", "--keys", str(keys), env=env)
        assert code == 0, out + err
        assert "verified: every checkpointed record is as it was signed" in out

    lines = export.read_text().splitlines()
    types = [json.loads(line)["type"] for line in lines]
    assert types[0] == "export" and "checkpoint" in types
    # the export stands alone: no ledger, no service, only the keys
    code, out, err = await consent_ledger(
        "verify", "--export", str(export), "--keys", str(keys), env={}
    )
    assert code == 0, out + err
    assert "checkpoints trusted: " in out and key.key_id in out

    for how in ("altered", "removed", "inserted", "reordered"):
        tampered, expected = tamper(lines, how)
        path = tmp_path / f"{how}.jsonl"
        path.write_text("\n".join(tampered) + "\n")
        code, out, err = await consent_ledger(
            "verify", "--export", str(path), "--keys", str(keys), env={}
        )
        assert code == 1, (how, out, err)
        assert expected in out, (how, out)
        assert "NOT VERIFIED" in out

    # checkpoints signed by a key the auditor does not trust are reported, not used
    stranger = keyring(tmp_path, SigningKey.generate(tmp_path / "other.pem"))
    code, out, _ = await consent_ledger(
        "verify", "--export", str(export), "--keys", str(stranger), env={}
    )
    assert code == 1
    assert f"signed by {key.key_id}, a key the keyring does not have" in out


async def test_a_rotated_key_takes_over_and_the_old_checkpoints_stay_verifiable(
    tmp_path, postgres_dsn
):
    """A real service restarted with a new key: the new key's checkpoints cover the
    whole ledger, the old key's stay trusted while it is retired (not after), and
    once it is revoked they are reported, while every record stays proven."""
    old = SigningKey.generate(tmp_path / "old.pem")
    new = SigningKey.generate(tmp_path / "new.pem")
    base = replace(service_settings(tmp_path, postgres_dsn, kafka=None), checkpoint_interval=0.3)
    env = {"CONSENT_LEDGER": "postgres", "CONSENT_POSTGRES_DSN": postgres_dsn}

    async def serve_once(key_file: Path, write: bool) -> None:
        async with running(replace(base, checkpoint_key_file=key_file)) as runtime:
            if write:
                await write_history(runtime.address)
            assert runtime.pool is not None
            await checkpointed(runtime, PostgresCheckpoints(runtime.pool))
            # by this key: wait for its own checkpoints to reach the end too
            for _ in range(100):
                if runtime.metrics.checkpoints_signed >= 2:
                    break
                await asyncio.sleep(0.1)
            assert runtime.metrics.checkpoints_signed >= 2

    await serve_once(tmp_path / "old.pem", write=True)
    switched = now()
    await serve_once(tmp_path / "new.pem", write=False)

    keys = tmp_path / "keys.json"
    keyring = Keyring([PublicKey(old.key_id, old.public), PublicKey(new.key_id, new.public)])
    keyring.retire(old.key_id, switched)
    keyring.save(keys)
    code, out, err = await consent_ledger("verify", "--keys", str(keys), "--json", env=env)
    assert code == 0, out + err
    trusted = json.loads(out)["trusted_checkpoints"]
    assert trusted[old.key_id] >= 2 and trusted[new.key_id] >= 2

    # the old key retired before it stopped signing: its later checkpoints are reported
    keyring.retire(old.key_id, switched - timedelta(hours=2))
    keyring.save(keys)
    code, out, _ = await consent_ledger("verify", "--keys", str(keys), "--json", env=env)
    found = json.loads(out)["findings"]
    assert code == 1 and found
    assert {f["kind"] for f in found} == {"checkpoint"}
    assert all("after it was retired" in f["detail"] for f in found)

    # revoked (it leaked): reported, yet no record is unproven, the new key covers all
    keyring.revoke(old.key_id)
    keyring.save(keys)
    code, out, _ = await consent_ledger("verify", "--keys", str(keys), "--json", env=env)
    found = json.loads(out)["findings"]
    assert code == 1
    assert {f["kind"] for f in found} == {"checkpoint"}
    assert all("which is revoked" in f["detail"] for f in found)


async def test_a_packet_proves_a_fact_under_every_brand_to_a_brand_without_its_bytes(
    module_serve, tmp_path
):
    # globex's gateway delivers late a STOP to a number initech let go: held under
    # "*", it is in acme's packet. Its stored bytes name globex's token and hold the
    # person's words and the number they texted, which acme's reads leave out: its
    # packet's proof must not hand them over, yet still place the event in the
    # signed ledger. The operator's packet carries the bytes as before.
    SigningKey.generate(tmp_path / "checkpoint-key.pem")
    clock = Clock()
    initech = define("initech", "sale", clock.now - timedelta(days=1), [FORMER_NUMBER])
    acme = define("acme", "promo", clock.now - timedelta(days=1))
    runtime = await module_serve(
        on_kafka=False,
        clock=clock,
        campaigns=[initech, acme],
        checkpoint_key_file=tmp_path / "checkpoint-key.pem",
        checkpoint_interval=0.2,
    )
    phone = "+14155550177"
    words = "Stop texting me Initech"
    async with (
        client(runtime.address) as admin,
        client(runtime.address, "acme-app") as acme_app,
        client(runtime.address, "globex-app") as globex_app,
    ):
        initech.policy.sender_numbers[:] = []
        await admin.ChangeCampaignPolicy(
            api.ChangeCampaignPolicyRequest(
                request_id=uuid.uuid4().hex, brand="initech", campaign="sale",
                policy=initech.policy, occurred_at=ts(clock.now - timedelta(minutes=10)),
            )
        )  # fmt: skip
        await acme_app.RecordOptIn(opt_in(phone, "acme", "promo", clock.now - timedelta(hours=1)))
        w = await globex_app.HandleInboundMessage(
            inbound(phone, FORMER_NUMBER, words, clock.now - timedelta(minutes=20))
        )
        listed = await acme_app.ListEvents(
            api.ListEventsRequest(phone=phone, brand="acme", at_least_as_fresh=w.consistency_token)
        )
        wide = {(e.partition, e.offset) for e in listed.events if e.event.brand == "*"}
        own = {(e.partition, e.offset) for e in listed.events if e.event.brand == "acme"}
        assert wide and own, listed

        async def packet(reader) -> dict[str, Any]:  # type: ignore[no-untyped-def]
            for _ in range(120):  # until a checkpoint covers every event
                answer = await reader.GetProofPacket(
                    api.GetProofPacketRequest(
                        phone=phone, brand="acme", at_least_as_fresh=w.consistency_token,
                        format=api.PACKET_FORMAT_JSON,
                    )
                )  # fmt: skip
                found: dict[str, Any] = json.loads(answer.document)
                if found["tamper_evidence"]["status"] == "proven":
                    return found
                await asyncio.sleep(0.1)
            raise AssertionError(f"never proven: {found['tamper_evidence']}")

        shown, operator = await packet(acme_app), await packet(admin)

    def carried(p: dict[str, Any]) -> dict[tuple[int, int], bytes]:
        proven, problems = check_bundle(
            p["tamper_evidence"]["bundle"],
            Keyring([PublicKey.from_json(p["tamper_evidence"]["public_key"])]),
        )
        assert problems == [], problems
        return {(r.partition, r.offset): r.value for r in proven}

    mine = carried(shown)
    assert set(mine) == own  # acme's own events, proven by their bytes
    for value in mine.values():
        assert b"globex" not in value and FORMER_NUMBER.encode() not in value
    text = json.dumps(shown)
    assert "globex" not in text and words not in text and FORMER_NUMBER not in text
    # The fact under "*" is still placed in the signed ledger: by its entry digest.
    withheld = shown["tamper_evidence"]["bundle"]["withheld"]
    assert {(w["partition"], w["offset"]) for w in withheld} == wide, withheld
    assert "every brand" in shown["tamper_evidence"]["detail"]
    # The operator's packet proves every event by its bytes, as before.
    theirs = carried(operator)
    assert set(theirs) == own | wide
    assert any(b"globex-app" in theirs[p] for p in wide)
    assert operator["tamper_evidence"]["bundle"].get("withheld", []) == []
