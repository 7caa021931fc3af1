"""`consent-ledger export` and `verify` of a real Kafka ledger, interrupted partway
(the test hook acts as Ctrl-C after so many records) and run again: the second run
carries on from the resume state, reads fewer records than the whole ledger, and
ends with what an uninterrupted run gives."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from services.adapters.kafka_audit import KafkaCheckpoints
from services.progress import CRASH, STOP_AFTER
from tests.e2e.harness import (
    client,
    kafka_ledger_env,
    kafka_settings,
    now,
    opt_in,
    running,
    service_settings,
)
from tests.e2e.test_tamper_evidence import checkpointed, consent_ledger, keyring, write_history

pytestmark = pytest.mark.asyncio(loop_scope="session")


def read_by_this_run(err: str) -> int:
    """The records a resumed run says it read itself."""
    for line in err.splitlines():
        if "read by this run" in line:
            return int(line.split(": ")[-1].split(" ")[0])
        if "checked by this one" in line:
            return int(line.split(", ")[-1].split(" ")[0])
    raise AssertionError(f"the rerun did not say it resumed: {err}")


async def test_an_interrupted_export_and_verify_carry_on_to_the_same_result(
    tmp_path, postgres_dsn, kafka_bootstrap
):
    from services.checkpoints import SigningKey

    key = SigningKey.generate(tmp_path / "checkpoint-key.pem")
    keys = keyring(tmp_path, key)
    prefix = f"e2e-{uuid.uuid4().hex[:8]}."
    kafka = kafka_settings(kafka_bootstrap, prefix)
    settings = replace(
        service_settings(tmp_path, postgres_dsn, kafka=kafka),
        checkpoint_key_file=tmp_path / "checkpoint-key.pem",
        checkpoint_interval=0.5,
    )
    env = {"CONSENT_POSTGRES_DSN": postgres_dsn, **kafka_ledger_env(kafka)}
    async with running(settings) as runtime:
        await write_history(runtime.address)
        async with client(runtime.address) as c:
            at = now() - timedelta(minutes=30)
            for n in range(60):
                await c.RecordOptIn(opt_in(f"+1415666{n:04d}", "acme", "promo", at))
        store = KafkaCheckpoints(kafka)
        await store.start(write=False)
        try:
            size = await checkpointed(runtime, store)
        finally:
            await store.close()

    # -- export: uninterrupted, then interrupted halfway and run again ----------------
    whole = tmp_path / "whole.jsonl"
    code, _, err = await consent_ledger("export", "--output", str(whole), env=env)
    assert code == 0, err
    export = tmp_path / "ledger.jsonl"
    state = Path(f"{export}.resume")
    half = size // 2
    code, _, err = await consent_ledger(
        "export", "--output", str(export), "--progress", env=env | {STOP_AFTER: str(half)}
    )
    assert code == 130, err
    assert "export interrupted; run the same command again" in err
    assert state.exists()
    assert json.loads(state.read_text())["mark"]["records"] == half
    code, _, err = await consent_ledger("export", "--output", str(export), "--progress", env=env)
    assert code == 0, err
    assert "resuming an interrupted export at" in err and "left" in err
    assert f"exported {size} record(s)" in err
    assert read_by_this_run(err) == size - half
    assert not state.exists()
    # the same lines, but for the export's own time (each run stamps its own)
    got, want = export.read_text().splitlines(), whole.read_text().splitlines()
    assert json.loads(got[0])["type"] == "export"
    assert got[1:] == want[1:]

    # -- export: a crash (no cleanup, nothing flushed) -----------------------------
    per_range: list[int] = []
    for text in want:
        kind = json.loads(text)["type"]
        if kind == "range":
            per_range.append(0)
        elif kind == "record":
            per_range[-1] += 1
    first = next(i for i, n in enumerate(per_range) if n)
    saved_at = sum(per_range[: first + 1])  # the state is saved at each partition's end
    assert saved_at < size, per_range
    crashed = tmp_path / "crashed.jsonl"
    code, _, err = await consent_ledger(
        "export",
        "--output",
        str(crashed),
        env=env | {STOP_AFTER: str(saved_at + 1), CRASH: "1"},
    )
    assert code == 137, err
    mark = json.loads(Path(f"{crashed}.resume").read_text())["mark"]
    assert mark["records"] == saved_at and mark["offset"] is None
    code, _, err = await consent_ledger("export", "--output", str(crashed), env=env)
    assert code == 0, err
    assert read_by_this_run(err) == size - saved_at
    assert crashed.read_text().splitlines()[1:] == want[1:]

    # -- verify of the live ledger ----------------------------------------------------
    code, plain, err = await consent_ledger("verify", "--keys", str(keys), "--json", env=env)
    assert code == 0, plain + err
    verdict = json.loads(plain)
    counts = [p["records"] for p in verdict["partitions"]]
    # interrupt inside the second partition that holds records: the first is judged
    nonempty = [i for i, n in enumerate(counts) if n]
    assert len(nonempty) >= 2, counts
    before = sum(counts[: nonempty[1]])
    resume = tmp_path / "verify.resume"
    args = ("verify", "--keys", str(keys), "--json", "--resume", str(resume))
    code, out, err = await consent_ledger(*args, env=env | {STOP_AFTER: str(before + 1)})
    assert code == 130, out + err
    assert resume.exists()
    code, out, err = await consent_ledger(*args, env=env)
    assert code == 0, out + err
    assert json.loads(out) == verdict
    assert read_by_this_run(err) == size - before  # the first partitions were not read
    assert not resume.exists()

    # -- verify of an export: the partitions judged are not judged again --------------
    code, plain, _ = await consent_ledger(
        "verify", "--export", str(export), "--keys", str(keys), "--json", env={}
    )
    assert code == 0
    # an export's partitions are judged in the order of their names
    ordered = sorted(verdict["partitions"], key=lambda p: (p["stream"], p["partition"]))
    first = next(p["records"] for p in ordered if p["records"])
    args = ("verify", "--export", str(export), "--keys", str(keys), "--json")
    code, out, err = await consent_ledger(*args, env={STOP_AFTER: str(first + 1)})
    assert code == 130, out + err
    assert Path(f"{export}.verify-resume").exists()
    code, out, err = await consent_ledger(*args, "--progress", env={})
    assert code == 0, out + err
    assert json.loads(out) == json.loads(plain)
    assert read_by_this_run(err) == size - first
