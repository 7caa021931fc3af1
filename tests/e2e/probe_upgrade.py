"""Upgrades from an older version, run beside it as a process of its own (a probe, not
part of the suite: run it by name, ``pytest tests/e2e/probe_upgrade.py -s``, with
OLD_ROOT a worktree of the older commit, for example ``git worktree add --detach
/tmp/old 73a1b61``).

A send claimed on the older version whose instance was SIGKILLed before its append:
the claims it made read as made at this version's migration (0028), so the message
sent again corrected is refused until they lapse, then recorded once, and the dead
request's own retry is refused. And a rolling update from a version before
``0bd94ad``: an opt-out this version imports into a partition the older version's
projector folds loses its import mark, so its confirmation is allowed until
``consent-ledger rebuild`` (README, "The projections", format 20)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from functools import partial
from pathlib import Path

import asyncpg
import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb

import tests.e2e.test_fault_suite as fault_suite
from tests.e2e.harness import (
    client,
    define,
    kafka_service_env,
    now,
    opt_in,
    opt_out,
    sent,
    streamed,
)
from tests.e2e.test_write_faults import PASSING, _signal, corrected, two_sends
from tests.infra.kafka_broker import KafkaBroker

pytestmark = pytest.mark.asyncio(loop_scope="session")
OLD = Path(os.environ.get("OLD_ROOT", "/nonexistent"))
NEW = Path(__file__).resolve().parents[2]


def _serve(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """test_fault_suite._serve with its cwd at the version's root: ``-m`` puts the cwd
    ahead of PYTHONPATH."""
    root, fault_suite.ROOT = fault_suite.ROOT, Path(env["PYTHONPATH"].split(":")[0])
    try:
        return fault_suite._serve(env, log)
    finally:
        fault_suite.ROOT = root


def on(root: Path, env: dict[str, str]) -> dict[str, str]:
    return {**env, "PYTHONPATH": f"{root}:{root}/protos/gen/python"}


async def test_claim_made_on_old_version_lapses_on_new(
    tmp_path: Path, postgres_dsn: str, private_kafka_broker: KafkaBroker
) -> None:
    if not (OLD / "services").is_dir():
        pytest.skip("OLD_ROOT names no worktree of the older version")
    broker = private_kafka_broker
    env = kafka_service_env(
        tmp_path,
        postgres_dsn,
        broker.bootstrap_servers,
        "up-dead",
        CONSENT_FRESHNESS_WAIT_MS="2000",
        CONSENT_KAFKA_APPEND_TIMEOUT_MS="4000",
        CONSENT_KAFKA_REQUEST_TIMEOUT_MS="3000",
    )
    lapse = 2 * (4 + 3 + 2)
    when = now()
    phones = [f"+1415557{7100 + i:04d}" for i in range(3)]
    tag = uuid.uuid4().hex[:8]
    ids = [f"UPDEAD-{tag}-{i}" for i in range(3)]
    single = sent(phones[0], "acme", "promo", when - timedelta(minutes=5), message_id=ids[0])

    batch = partial(two_sends, phones=phones, ids=ids, when=when)

    dead_batch = batch(f"dead-{tag}", True)
    proc, address = await asyncio.to_thread(_serve, on(OLD, env), tmp_path / "old.log")
    try:
        async with client(address) as admin:
            d = await admin.DefineCampaign(define("acme", "promo", when - timedelta(days=1)))
            await admin.CanSend(
                api.CanSendRequest(
                    phone=phones[0],
                    brand="acme",
                    campaign="promo",
                    at_least_as_fresh=d.consistency_token,
                )
            )
            pid = broker.pid
            assert pid is not None
            _signal([pid], signal.SIGSTOP)
            try:
                for call, request in (
                    (admin.RecordMessageSent, single),
                    (admin.RecordMessagesSent, dead_batch),
                ):
                    with pytest.raises(grpc.aio.AioRpcError) as hung:
                        await call(request, timeout=3)
                    assert hung.value.code() in PASSING
                db = await asyncpg.connect(postgres_dsn)
                claims = await db.fetchval(
                    "SELECT count(*) FROM message_claim WHERE message_id = ANY($1)", ids
                )
                await db.close()
                assert claims == 3, "the older version's sends did not claim their ids"
                proc.kill()
                await asyncio.to_thread(proc.wait)
                await asyncio.to_thread(broker.kill)
            finally:
                _signal([pid], signal.SIGCONT)
    except BaseException:
        proc.kill()
        raise
    await asyncio.to_thread(broker.start)
    done = await asyncio.to_thread(_cli, env, "migrate")
    assert done.returncode == 0, done.stderr
    assert "0028_message_claim_age" in done.stdout, "not migrated from the older version"
    migrated_at = time.monotonic()
    proc, address = await asyncio.to_thread(_serve, on(NEW, env), tmp_path / "new.log")
    try:
        async with client(address) as c:
            for call, request in (
                (c.RecordMessageSent, corrected(single)),
                (c.RecordMessagesSent, batch(uuid.uuid4().hex, False)),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as young:
                    await call(request, timeout=30)
                assert young.value.code() == grpc.StatusCode.ALREADY_EXISTS
                assert "lapses in" in (young.value.details() or "")
            await asyncio.sleep(max(0, migrated_at + lapse + 2 - time.monotonic()))
            one = await c.RecordMessageSent(corrected(single), timeout=30)
            many = await c.RecordMessagesSent(batch(uuid.uuid4().hex, False), timeout=30)
            for call, request in (
                (c.RecordMessageSent, single),
                (c.RecordMessagesSent, dead_batch),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as dead_retry:
                    await call(request, timeout=30)
                assert dead_retry.value.code() == grpc.StatusCode.ALREADY_EXISTS
                assert "recorded before" in (dead_retry.value.details() or "")
            tokens = [one.consistency_token, many.consistency_token, many.consistency_token]
            for phone, message_id, token in zip(phones, ids, tokens, strict=True):
                listed = await c.ListEvents(
                    api.ListEventsRequest(phone=phone, brand="acme", at_least_as_fresh=token)
                )
                sends = [
                    (
                        e.event.message_sent.message_id,
                        e.event.message_sent.included_opt_out_language,
                    )
                    for e in listed.events
                    if e.event.WhichOneof("payload") == "message_sent"
                ]
                assert sends == [(message_id, False)]
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 60)


async def test_an_old_projector_drops_the_import_mark_until_a_rebuild(
    tmp_path: Path, postgres_dsn: str, kafka_bootstrap: str
) -> None:
    if not (OLD / "services").is_dir():
        pytest.skip("OLD_ROOT names no worktree of the older version")
    env = kafka_service_env(tmp_path, postgres_dsn, kafka_bootstrap, "up-mark")
    when = now()
    phones = [f"+1415556{i:04d}" for i in range(16)]
    confirmation = lpb.MESSAGE_KIND_OPT_OUT_CONFIRMATION

    async def allowed(address: str, token: str = "") -> list[bool]:
        async with client(address) as c:
            return [
                (
                    await c.CanSend(
                        api.CanSendRequest(
                            phone=p, brand="acme", campaign="promo",
                            message_kind=confirmation, at_least_as_fresh=token,
                        )
                    )
                ).allowed
                for p in phones
            ]  # fmt: skip

    old, address = await asyncio.to_thread(_serve, on(OLD, env), tmp_path / "old.log")
    try:
        async with client(address) as c:
            await c.DefineCampaign(define("acme", "promo", when - timedelta(days=2)))
            for p in phones:
                await c.RecordOptIn(opt_in(p, "acme", "promo", when - timedelta(hours=1)))
        assert (await asyncio.to_thread(_cli, env, "migrate")).returncode == 0
        again = dict(env, CONSENT_DATA_DIR=str(tmp_path / "new"))
        (tmp_path / "new").mkdir()
        new, address = await asyncio.to_thread(_serve, on(NEW, again), tmp_path / "new.log")
        try:
            await asyncio.sleep(5)  # both projectors in the group
            async with client(address) as c:
                records = [
                    api.ImportRecord(
                        opt_out=opt_out(
                            p, "acme", "promo", now() - timedelta(minutes=1),
                            channel=lpb.REVOCATION_CHANNEL_KEYWORD,
                        )
                    )
                    for p in phones
                ]  # fmt: skip
                (answer,) = await streamed(c, [api.ImportConsentsRequest(records=records)])
                assert answer.imported == len(phones)
            during = await allowed(address, answer.consistency_token)
        finally:
            new.terminate()
            await asyncio.to_thread(new.wait, 60)
    finally:
        old.terminate()
        await asyncio.to_thread(old.wait, 60)
    print("confirmation allowed during the rolling update:", during)
    assert (await asyncio.to_thread(_cli, env, "rebuild", "--quiet")).returncode == 0
    new, address = await asyncio.to_thread(_serve, on(NEW, again), tmp_path / "rebuilt.log")
    try:
        assert not any(await allowed(address)), "a rebuild restores the import mark"
    finally:
        new.terminate()
        await asyncio.to_thread(new.wait, 60)


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``consent-ledger ARGS`` of this version."""
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        cwd=NEW, env={**os.environ, **on(NEW, env)},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
