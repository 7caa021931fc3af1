"""``consent-ledger rebuild`` of a real Kafka ledger into a real PostgreSQL, stopped
with Ctrl-C partway and run again (with two worker processes): the second run says
it resumes, reads only what the first had not applied, and the tables equal those
of a clean rebuild."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from ledger.ports import Stream
from services.adapters.kafka_ledger import KafkaLedger
from services.adapters.postgres_view import PROJECTION_TABLES, PostgresConsentView
from services.cli.rebuild import INTERRUPTED
from services.projector import rebuild
from services.settings import KafkaLedgerSettings
from tests.conformance.view_suite import generate_events
from tests.e2e.harness import ctrl_c_as_at_a_terminal, kafka_ledger_env, write_tokens
from tests.integration.test_ledger_kafka import settings_for_test

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]
EVENTS = 4000
BATCH = 40  # small batches: a hundred commits, so Ctrl-C lands partway


async def applied(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return await applied_on(conn)
    finally:
        await conn.close()


async def applied_on(conn: asyncpg.Connection) -> int:
    try:
        found = await conn.fetchval("SELECT coalesce(sum(next_offset), 0) FROM projection_offset")
        return int(found)
    except asyncpg.UndefinedTableError:
        return 0


def ledger_settings(bootstrap: str) -> KafkaLedgerSettings:
    """A ledger of topics of its own, four partitions, for a rebuild to read."""
    return settings_for_test(bootstrap, subscriber_partitions=4)


def rebuild_env(settings: KafkaLedgerSettings, dsn: str, tmp_path: Path) -> dict[str, str]:
    """The environment of a ``consent-ledger rebuild`` of ``settings``' ledger into ``dsn``."""
    return {
        **os.environ,
        **kafka_ledger_env(settings),
        "CONSENT_POSTGRES_DSN": dsn,
        "CONSENT_AUTH_TOKENS_FILE": str(write_tokens(tmp_path / "tokens.json")),
        "CONSENT_DATA_DIR": str(tmp_path / "data"),
    }


def rebuild_command(env: dict[str, str], *options: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli", "rebuild", "--batch-size", str(BATCH), *options],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=ctrl_c_as_at_a_terminal,
    )


async def test_an_interrupted_rebuild_resumes_where_it_stopped(
    tmp_path: Path, kafka_bootstrap: str, postgres_dsn: str
) -> None:
    settings = ledger_settings(kafka_bootstrap)
    ledger = KafkaLedger(settings)
    await ledger.ensure_topics()
    await ledger.start()
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=4)
    try:
        events = generate_events(EVENTS, phones=400, brands=3, campaigns=2, seed=31)
        for start in range(0, len(events), 500):
            await ledger.append(events[start : start + 500])
        total = 0
        for stream in Stream:
            total += sum((await ledger.end_offsets(stream)).values())
        assert total == EVENTS
        env = rebuild_env(settings, postgres_dsn, tmp_path)

        first = rebuild_command(env)
        deadline = time.monotonic() + 120
        watch = await asyncpg.connect(postgres_dsn)  # one connection: each look is quick
        try:
            while await applied_on(watch) == 0:
                assert first.poll() is None, first.communicate()
                assert time.monotonic() < deadline, "the rebuild applied nothing in 120 s"
                await asyncio.sleep(0.01)
        finally:
            await watch.close()
        # Hold the process still while Ctrl-C is sent: on a busy machine it could
        # otherwise apply every batch in the moment between the look and the signal.
        first.send_signal(signal.SIGSTOP)
        first.send_signal(signal.SIGINT)
        first.send_signal(signal.SIGCONT)
        out, err = first.communicate(timeout=60)
        assert first.returncode == 130, out + err
        assert INTERRUPTED in err
        assert "rebuild [" in err  # the progress line
        stopped_at = await applied(postgres_dsn)
        assert 0 < stopped_at < total

        second = rebuild_command(env, "--workers", "2")
        out, err = second.communicate(timeout=300)
        assert second.returncode == 0, out + err
        assert f"resuming an interrupted rebuild at {stopped_at:,} of {total:,} events" in err
        assert f"{total:,} of {total:,} events" in err
        # Only what the first run had not applied was read again.
        assert f"rebuilt the projections from {total - stopped_at} ledger events" in out
        view = PostgresConsentView(pool)
        resumed = {table: await view.table_dump(table) for table in PROJECTION_TABLES}

        # A clean rebuild (the resumed one finished: this one starts over) gives the same.
        assert await rebuild(ledger, view) == total
        clean = {table: await view.table_dump(table) for table in PROJECTION_TABLES}
        assert len(clean["ledger_event_copy"]) == EVENTS
        for table in PROJECTION_TABLES:
            assert resumed[table] == clean[table], table
    finally:
        await pool.close()
        await asyncio.wait_for(ledger.close(), 30)
