"""Signing keys, the keyring and key rotation, the checkpoint writer, and export and
verify through their own code (``services.checkpoints``, ``services.ledger_audit``)."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from ledger.chain import ChainRecord, Checkpoint, entry_digest, micros
from services.checkpoints import (
    Checkpointer,
    Keyring,
    PublicKey,
    SigningKey,
)
from services.ledger_audit import UNPROVEN, Verifier, export, plan, read_export

T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


class Ledger:
    """A ``RecordSource`` in memory, and a ``CheckpointStore``."""

    def __init__(self, partitions: int = 2) -> None:
        self.logs: dict[tuple[str, int], list[ChainRecord]] = {
            ("subscribers", p): [] for p in range(partitions)
        } | {("campaigns", 0): []}
        self.stored: list[Checkpoint] = []
        self.fail_publish = False

    def append(self, stream: str, partition: int, n: int = 1) -> None:
        log = self.logs[(stream, partition)]
        for _ in range(n):
            offset = len(log)
            log.append(
                ChainRecord(
                    stream,
                    partition,
                    offset,
                    micros(T0) + offset,
                    f"{stream}/{partition}@{offset}".encode(),
                )
            )

    async def partitions(self, stream: str) -> list[int]:
        return sorted(p for s, p in self.logs if s == stream)

    async def end_offset(self, stream: str, partition: int) -> int:
        return len(self.logs[(stream, partition)])

    async def records(
        self, stream: str, partition: int, start: int, stop: int
    ) -> AsyncIterator[ChainRecord]:
        for record in self.logs[(stream, partition)][start:stop]:
            yield record

    async def publish(self, checkpoints: Sequence[Checkpoint]) -> None:
        if self.fail_publish:
            raise ConnectionError("the checkpoint topic is gone")
        self.stored += checkpoints

    async def latest(self, key_id: str, wanted: set[tuple[str, int]]):  # type: ignore[no-untyped-def]
        found: dict[tuple[str, int], Checkpoint] = {}
        for c in self.stored:
            where = (c.stream, c.partition)
            if c.key_id == key_id and where in wanted and c.end >= found.get(where, c).end:
                found[where] = c
        return found

    async def every(self) -> AsyncIterator[Checkpoint | str]:
        for c in self.stored:
            yield c


class Always:
    async def held(self) -> bool:
        return True

    async def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def writer(ledger: Ledger, key: SigningKey, clock: Clock, **options) -> Checkpointer:  # type: ignore[no-untyped-def]
    return Checkpointer(ledger, ledger, key, Always(), clock, 1.0, **options)


@pytest.fixture
def key(tmp_path) -> SigningKey:
    return SigningKey.generate(tmp_path / "key.pem")


def ring(*keys: SigningKey) -> Keyring:
    return Keyring(PublicKey(k.key_id, k.public) for k in keys)


async def verdict(ledger: Ledger, keyring: Keyring, now: datetime = T0):  # type: ignore[no-untyped-def]
    verifier = Verifier(keyring, timedelta(minutes=10))
    verifier.add_checkpoints(ledger.stored)
    for where, log in sorted(ledger.logs.items()):
        verifier.judge(where, (0, len(log)), log, now)
    return verifier.verdict()


# -- keys -----------------------------------------------------------------------------


def test_a_key_file_is_private_and_never_overwritten(tmp_path):
    path = tmp_path / "key.pem"
    key = SigningKey.generate(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert SigningKey.load(path).key_id == key.key_id
    with pytest.raises(FileExistsError):
        SigningKey.generate(path)
    assert SigningKey.load_or_generate(path).key_id == key.key_id


def test_a_key_id_is_derived_from_the_public_key(tmp_path):
    a, b = SigningKey.generate(tmp_path / "a"), SigningKey.generate(tmp_path / "b")
    assert a.key_id != b.key_id and a.key_id.startswith("ed25519:") and len(a.key_id) == 24
    entry = a.public_entry()
    assert PublicKey.from_json(entry).key_id == a.key_id
    with pytest.raises(ValueError, match="its key's id is"):
        PublicKey.from_json({**entry, "key_id": b.key_id})


def test_a_file_without_an_ed25519_key_is_refused_naming_it(tmp_path):
    path = tmp_path / "not-a-key.pem"
    path.write_text("hello")
    with pytest.raises(ValueError, match=r"not-a-key\.pem"):
        SigningKey.load(path)


def test_the_keyring_round_trips_through_its_file(tmp_path, key):
    keyring = ring(key)
    keyring.retire(key.key_id, T0)
    keyring.save(tmp_path / "keys.json")
    loaded = Keyring.load(tmp_path / "keys.json")
    assert loaded.keys[key.key_id].status == "retired"
    assert loaded.keys[key.key_id].retired_at == T0


def test_a_signed_checkpoint_is_trusted_and_any_change_is_not(key):
    ledger = Ledger(1)
    ledger.append("subscribers", 0, 3)
    chain_key = key
    c = chain_key.sign(
        Checkpoint("subscribers", 0, 0, 0, bytes(32), bytes(32), T0, key.key_id, b"")
    )
    keyring = ring(key)
    assert keyring.distrust(c) is None
    assert "does not verify" in (keyring.distrust(replace(c, head=b"\x01" * 32)) or "")
    assert "does not verify" in (keyring.distrust(replace(c, time=T0 + timedelta(1))) or "")


async def test_rotation_old_checkpoints_stay_verifiable_and_the_new_key_takes_over(tmp_path):
    old = SigningKey.generate(tmp_path / "old.pem")
    new = SigningKey.generate(tmp_path / "new.pem")
    ledger, clock = Ledger(), Clock()
    ledger.append("subscribers", 0, 5)
    await writer(ledger, old, clock).round()
    clock.now += timedelta(hours=2)
    ledger.append("subscribers", 0, 2)
    # the new key's writer does not build on the old key's checkpoints: it chains
    # the whole ledger again, so nothing depends on the old key any more
    fresh = await writer(ledger, new, clock).round()
    assert {(c.key_id, c.start) for c in fresh} == {(new.key_id, 0)}
    keyring = ring(old, new)
    keyring.retire(old.key_id, T0 + timedelta(hours=1))
    result = await verdict(ledger, keyring, clock.now)
    assert result.findings == []
    assert result.trusted == {old.key_id: 3, new.key_id: 3}


async def test_a_checkpoint_signed_after_its_key_was_retired_is_reported(tmp_path):
    old = SigningKey.generate(tmp_path / "old.pem")
    ledger, clock = Ledger(1), Clock()
    ledger.append("subscribers", 0, 2)
    clock.now = T0 + timedelta(days=1)
    await writer(ledger, old, clock).round()
    keyring = ring(old)
    keyring.retire(old.key_id, T0)
    result = await verdict(ledger, keyring, clock.now)
    assert {f.kind for f in result.findings} >= {"checkpoint"}
    assert any("after it was retired" in f.detail for f in result.findings)


async def test_checkpoints_of_a_revoked_or_unknown_key_are_reported_and_not_used(tmp_path):
    stolen = SigningKey.generate(tmp_path / "stolen.pem")
    ledger, clock = Ledger(1), Clock()
    ledger.append("subscribers", 0, 3)
    await writer(ledger, stolen, clock).round()
    revoked = ring(stolen)
    revoked.revoke(stolen.key_id)
    for keyring, why in ((revoked, "which is revoked"), (Keyring(), "does not have")):
        result = await verdict(ledger, keyring, T0 + timedelta(hours=1))
        assert result.trusted == {}
        assert any(f.kind == "checkpoint" and why in f.detail for f in result.findings)
        # and with no trusted checkpoint, the records are unproven
        assert any(f.kind == UNPROVEN for f in result.findings)


def test_a_revoked_key_stays_revoked(key):
    keyring = ring(key)
    keyring.revoke(key.key_id)
    with pytest.raises(ValueError, match="revoked"):
        keyring.add(PublicKey(key.key_id, key.public))


# -- the writer -----------------------------------------------------------------------


async def test_the_writer_covers_only_what_is_new_and_resumes_from_its_checkpoints(key):
    ledger, clock = Ledger(), Clock()
    ledger.append("subscribers", 0, 3)
    first = await writer(ledger, key, clock).round()
    assert {(c.stream, c.partition, c.start, c.end) for c in first} == {
        ("subscribers", 0, 0, 3),
        ("subscribers", 1, 0, 0),
        ("campaigns", 0, 0, 0),
    }
    ledger.append("subscribers", 1, 2)
    clock.now += timedelta(minutes=1)
    again = await writer(ledger, key, clock).round()  # a new process resumes
    assert [(c.stream, c.partition, c.start, c.end) for c in again] == [("subscribers", 1, 0, 2)]
    assert again[0].prev_head == first[1].head or again[0].prev_head == next(
        c.head for c in first if c.partition == 1 and c.stream == "subscribers"
    )
    assert (await verdict(ledger, ring(key), clock.now)).findings == []


async def test_an_idle_partition_is_checkpointed_again_after_an_hour(key):
    ledger, clock = Ledger(1), Clock()
    w = writer(ledger, key, clock)
    await w.round()
    clock.now += timedelta(minutes=59)
    assert await w.round() == []
    clock.now += timedelta(minutes=2)
    assert len(await w.round()) == 2


async def test_a_long_run_of_records_is_split_into_checkpoints_of_at_most_max_records(key):
    ledger, clock = Ledger(1), Clock()
    ledger.append("subscribers", 0, 25)
    counted: list[int] = []
    cuts = await writer(ledger, key, clock, max_records=10, signed=counted.append).round()
    assert sum(counted) == len(cuts) == 4  # and the campaigns' empty partition
    assert [(c.start, c.end) for c in cuts if c.stream == "subscribers"] == [
        (0, 10),
        (10, 20),
        (20, 25),
    ]


async def test_a_failed_publish_leaves_no_gap(key):
    ledger, clock = Ledger(1), Clock()
    ledger.append("subscribers", 0, 2)
    w = writer(ledger, key, clock)
    await w.round()
    ledger.append("subscribers", 0, 3)
    ledger.fail_publish = True
    with pytest.raises(ConnectionError):
        await w.round()
    ledger.fail_publish = False
    clock.now += timedelta(minutes=1)
    await w.round()
    subscribers = [(c.start, c.end) for c in ledger.stored if c.stream == "subscribers"]
    assert subscribers == [(0, 2), (2, 5)]


async def test_the_writer_does_nothing_while_another_holds_the_turn(key):
    class Never(Always):
        async def held(self) -> bool:
            return False

    ledger = Ledger(1)
    ledger.append("subscribers", 0, 2)
    w = Checkpointer(ledger, ledger, key, Never(), Clock(), 0.01)
    import asyncio

    task = asyncio.create_task(w.run())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ledger.stored == []


# -- export and verify ----------------------------------------------------------------


async def test_an_export_round_trips_and_verifies_with_the_keys_alone(key):
    ledger, clock = Ledger(), Clock()
    ledger.append("subscribers", 0, 4)
    ledger.append("subscribers", 1, 2)
    ledger.append("campaigns", 0, 1)
    await writer(ledger, key, clock).round()
    ranges, _ = await plan(ledger, ledger.stored, ("subscribers", "campaigns"), None, None, None)
    out = io.StringIO()
    assert await export(out, ledger, ranges, ledger.stored, T0) == 7
    source = read_export(out.getvalue().splitlines(), "export")
    assert source.records == {k: v for k, v in ledger.logs.items()}
    verifier = Verifier(ring(key), timedelta(minutes=10))
    verifier.add_checkpoints(source.checkpoints)
    for where, records in source.records.items():
        verifier.judge(where, source.ranges[where], records, source.taken_at or T0)
    assert verifier.verdict().findings == []


async def test_an_export_from_an_offset_starts_where_a_checkpoint_does(key):
    ledger, clock = Ledger(1), Clock()
    ledger.append("subscribers", 0, 4)
    await writer(ledger, key, clock).round()
    ledger.append("subscribers", 0, 4)
    clock.now += timedelta(minutes=1)
    await writer(ledger, key, clock).round()
    ranges, notes = await plan(ledger, ledger.stored, ("subscribers",), {0}, 6, None)
    assert [(r.start, r.stop) for r in ranges] == [(4, 8)]
    assert "starting at offset 4" in notes[0]


def test_a_line_that_is_not_an_export_line_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"x\.jsonl:2"):
        read_export(
            ['{"type": "export", "format": 1, "exported_at": "2026-12-02T12:00:00+00:00"}', "{}"],
            "x.jsonl",
        )


async def test_recent_uncovered_records_are_no_finding_old_ones_are_unproven(key):
    ledger, clock = Ledger(1), Clock()
    ledger.append("subscribers", 0, 2)
    await writer(ledger, key, clock).round()
    ledger.append("subscribers", 0, 1)  # recorded at T0 (+2 us), after the checkpoint
    assert (await verdict(ledger, ring(key), T0 + timedelta(minutes=5))).findings == []
    late = await verdict(ledger, ring(key), T0 + timedelta(hours=1))
    assert [(f.kind, f.offset) for f in late.findings] == [(UNPROVEN, 2)]


def test_a_checkpoint_json_that_is_not_one_is_a_finding(key):
    verifier = Verifier(ring(key), timedelta(minutes=10))
    verifier.add_checkpoints(["topic/0@5 is not a checkpoint: not JSON"])
    assert [f.kind for f in verifier.verdict().findings] == ["checkpoint"]
    assert json.dumps  # the finding carries the reason as text


# -- proof bundles (the hook for proof packets) ---------------------------------------


async def test_a_proof_bundle_is_checked_with_the_public_key_alone(key, tmp_path):
    from services.proofs import bundle, check_bundle

    ledger, clock = Ledger(), Clock()
    ledger.append("subscribers", 0, 6)
    ledger.append("subscribers", 1, 3)
    await writer(ledger, key, clock, max_records=4).round()
    ledger.append("subscribers", 0, 1)  # not checkpointed yet
    asked = [
        ("subscribers", 0, 1),
        ("subscribers", 0, 5),
        ("subscribers", 1, 2),
        ("subscribers", 0, 6),
    ]
    proof = json.loads(json.dumps(await bundle(ledger, ledger.stored, asked)))
    assert proof["uncovered"] == [{"stream": "subscribers", "partition": 0, "offset": 6}]

    # a verifier with nothing but the JSON and the public key
    public_only = Keyring.load(_saved(tmp_path, ring(key)))
    proven, problems = check_bundle(proof, public_only)
    assert problems == []
    assert sorted((r.partition, r.offset) for r in proven) == [(0, 1), (0, 5), (1, 2)]
    assert all(r.value == ledger.logs[("subscribers", r.partition)][r.offset].value for r in proven)

    forged = json.loads(json.dumps(proof))
    link = next(x for x in forged["segments"][0]["links"] if "value" in x)
    link["value"] = "ZmFrZQ=="  # "fake"
    assert check_bundle(forged, public_only)[1]
    stranger = ring(SigningKey.generate(tmp_path / "other.pem"))
    _, problems = check_bundle(proof, stranger)
    assert problems and "does not have" in problems[0]


async def test_a_withheld_event_is_proven_by_its_digest_without_its_bytes(key, tmp_path):
    from services.proofs import bundle, check_bundle

    ledger, clock = Ledger(), Clock()
    ledger.append("subscribers", 0, 4)
    await writer(ledger, key, clock).round()
    asked = [("subscribers", 0, 1), ("subscribers", 0, 2)]
    proof = json.loads(
        json.dumps(await bundle(ledger, ledger.stored, asked, [("subscribers", 0, 2)]))
    )
    stored = ledger.logs[("subscribers", 0)][2]
    assert base64.b64encode(stored.value).decode() not in json.dumps(proof)
    entry = entry_digest(stored.recorded_at_us, stored.value).hex()
    assert proof["withheld"] == [
        {"stream": "subscribers", "partition": 0, "offset": 2, "entry": entry}
    ]
    assert proof["uncovered"] == []
    public_only = Keyring.load(_saved(tmp_path, ring(key)))
    proven, problems = check_bundle(proof, public_only)
    assert problems == [] and [(r.partition, r.offset) for r in proven] == [(0, 1)]
    # a digest the signed chain does not place there is a problem
    forged = json.loads(json.dumps(proof))
    forged["withheld"][0]["entry"] = "00" * 32
    assert "withheld 0" in check_bundle(forged, public_only)[1][0]


def _saved(tmp_path, keyring: Keyring):  # type: ignore[no-untyped-def]
    path = tmp_path / "public.json"
    keyring.save(path)
    return path


# -- settings and the command line ----------------------------------------------------


def test_the_checkpoint_settings_are_read_and_a_blank_key_file_refused():
    from services.settings import Settings, SettingsError

    env = {"CONSENT_POSTGRES_DSN": "postgresql://x", "CONSENT_AUTH_TOKENS_FILE": "t.json"}
    base = {**env, "CONSENT_LEDGER": "postgres"}
    assert Settings.from_env(base).checkpoint_key_file is None
    assert Settings.from_env(base).checkpoint_interval == 60
    chosen = Settings.from_env(
        {**base, "CONSENT_CHECKPOINT_KEY_FILE": "/k.pem", "CONSENT_CHECKPOINT_INTERVAL_S": "5"}
    )
    assert (str(chosen.checkpoint_key_file), chosen.checkpoint_interval) == ("/k.pem", 5)
    with pytest.raises(SettingsError, match="CONSENT_CHECKPOINT_KEY_FILE"):
        Settings.from_env({**base, "CONSENT_CHECKPOINT_KEY_FILE": " "})
    with pytest.raises(SettingsError, match="CONSENT_CHECKPOINT_INTERVAL_S"):
        Settings.from_env({**base, "CONSENT_CHECKPOINT_INTERVAL_S": "0"})


@pytest.mark.parametrize("command", ["verify", "export", "keys"])
def test_the_help_reads_like_a_manual_page(command, capsys):
    from services.cli.main import main

    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert "exit status:" in text
    if command == "verify":
        for word in ("ALTERED", "REMOVED", "INSERTED", "REORDERED", "CHECKPOINT", "UNPROVEN"):
            assert word in text


def test_keys_new_public_retire_and_revoke_through_the_command_line(tmp_path, capsys):
    from services.cli.main import main

    key_file, keyring = tmp_path / "k.pem", tmp_path / "keys.json"
    assert main(["keys", "new", str(key_file)]) == 0
    key_id = json.loads(capsys.readouterr().out)["keys"][0]["key_id"]
    assert main(["keys", "new", str(key_file)]) == 1  # never overwrites
    assert main(["keys", "public", str(key_file), "--keyring", str(keyring)]) == 0
    assert Keyring.load(keyring).keys[key_id].status == "active"
    at = "2027-01-01T00:00:00+00:00"
    assert main(["keys", "retire", key_id, "--keyring", str(keyring), "--at", at]) == 0
    assert Keyring.load(keyring).keys[key_id].retired_at == datetime(2027, 1, 1, tzinfo=UTC)
    assert main(["keys", "revoke", key_id, "--keyring", str(keyring)]) == 0
    assert Keyring.load(keyring).keys[key_id].status == "revoked"
    assert main(["keys", "retire", key_id, "--keyring", str(keyring)]) == 1  # stays revoked
    assert main(["keys", "revoke", "ed25519:0000000000000000", "--keyring", str(keyring)]) == 1


def test_verify_of_an_unreadable_export_is_a_usage_error(tmp_path, capsys):
    from services.cli.main import main

    Keyring().save(tmp_path / "keys.json")
    (tmp_path / "bad.jsonl").write_text("not json\n")
    code = main(
        ["verify", "--export", str(tmp_path / "bad.jsonl"), "--keys", str(tmp_path / "keys.json")]
    )
    assert code == 2
    assert "bad.jsonl:1" in capsys.readouterr().err


async def _exported(key: SigningKey, tmp_path) -> tuple[Ledger, list[str]]:  # type: ignore[no-untyped-def]
    ledger, clock = Ledger(), Clock()
    ledger.append("subscribers", 0, 3)
    ledger.append("subscribers", 1, 2)
    await writer(ledger, key, clock).round()
    ranges, _ = await plan(ledger, ledger.stored, ("subscribers", "campaigns"), None, None, None)
    out = io.StringIO()
    await export(out, ledger, ranges, ledger.stored, T0)
    ring(key).save(tmp_path / "keys.json")
    return ledger, out.getvalue().splitlines()


async def test_a_partition_taken_out_of_an_export_is_reported(key, tmp_path):
    _, lines = await _exported(key, tmp_path)
    kept = [
        line
        for line in lines
        if not (
            json.loads(line)["type"] in ("range", "record")
            and json.loads(line).get("partition") == 1
            and json.loads(line).get("stream") == "subscribers"
        )
    ]
    (tmp_path / "cut.jsonl").write_text("\n".join(kept) + "\n")
    (tmp_path / "whole.jsonl").write_text("\n".join(lines) + "\n")
    import asyncio

    # the command runs its own event loop: in a thread of its own here
    assert await asyncio.to_thread(_verify_file, tmp_path, "whole.jsonl") == (0, [])
    code, found = await asyncio.to_thread(_verify_file, tmp_path, "cut.jsonl")
    assert code == 1
    assert [(f["kind"], f["stream"], f["partition"], f["offset"]) for f in found] == [
        ("removed", "subscribers", 1, 0)
    ]


def _verify_file(tmp_path, name: str) -> tuple[int, list[dict]]:  # type: ignore[no-untyped-def]
    import contextlib

    from services.cli.main import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(
            [
                "verify",
                "--export",
                str(tmp_path / name),
                "--keys",
                str(tmp_path / "keys.json"),
                "--json",
            ]
        )
    return code, json.loads(out.getvalue())["findings"]


async def test_a_checkpoint_not_copied_to_the_index_is_still_published(key):
    from services.checkpoints import IndexedCheckpoints

    class Broken:
        async def publish(self, checkpoints: Sequence[Checkpoint]) -> None:
            raise OSError("PostgreSQL is gone")

    ledger, clock = Ledger(1), Clock()
    ledger.append("subscribers", 0, 2)
    store = IndexedCheckpoints(ledger, Broken())
    published = await Checkpointer(ledger, store, key, Always(), clock, 1.0).round()
    assert ledger.stored == published and len(published) == 2
