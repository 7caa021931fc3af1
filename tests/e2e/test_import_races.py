"""Two bulk imports of overlapping records at once, through two service instances
sharing one Kafka ledger and one PostgreSQL, or through the one instance of the
embedded default's PostgreSQL ledger (``--embedded`` keeps one process): each
record's facts reach the ledger once, and exactly one of the imports counts a
record as imported, the other as already present. A record whose append turn was
taken by an import that then died is written by the next."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import grpc
import pytest
from consent.v1 import consent_service_pb2 as api

from ledger.commands import RecordOptIn, to_events
from ledger.ports import Stream
from services.bootstrap import Runtime
from services.wire.api import command_from_proto
from tests.e2e.harness import client, define, kafka_settings, opt_in, running, service_settings

pytestmark = pytest.mark.asyncio(loop_scope="session")

CHUNK = 500


def records(first: int, last: int, at: datetime) -> list[api.ImportRecord]:
    return [
        api.ImportRecord(opt_in=opt_in(f"+1303555{i:04d}", "acme", "promo", at, f"race-{i}"))
        for i in range(first, last)
    ]


async def imported(runtime: Runtime, sent: list[api.ImportRecord]) -> tuple[int, int]:
    """(imported, already present) over the import's answers; no record refused."""

    async def chunks() -> AsyncIterator[api.ImportConsentsRequest]:
        for start in range(0, len(sent), CHUNK):
            yield api.ImportConsentsRequest(records=sent[start : start + CHUNK])

    async with client(runtime.address, "acme-app") as c:
        stream = c.stub.ImportConsents(
            chunks(), metadata=[("authorization", f"Bearer {c.token}")], timeout=180
        )
        answers = [a async for a in stream]
    assert not any(a.refusals for a in answers), answers
    return sum(a.imported for a in answers), sum(a.already_present for a in answers)


async def two_instances(tmp_path: Path, dsn: str, kafka_bootstrap: str | None):
    prefix, group = f"irace-{uuid.uuid4().hex[:8]}.", f"proj-{uuid.uuid4().hex[:8]}"
    made = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        kafka = kafka_settings(kafka_bootstrap, prefix) if kafka_bootstrap else None
        settings = service_settings(tmp_path / name, dsn, kafka=kafka, group=group)
        # Both instances' projections apply 6,000 records at once: under load (two
        # test workers) a view fell more than the usual 5 s behind, and a chunk was
        # refused "try again". What is tested is that each record is written once.
        patient = replace(settings.freshness, wait_bound=30.0)
        made.append(replace(settings, freshness=patient))
    return made


@pytest.mark.parametrize("ledger", ["kafka", "postgres"])
async def test_two_imports_of_overlapping_records_at_once_write_each_once(
    ledger, tmp_path, postgres_dsn, kafka_bootstrap
):
    """Before: both imports claimed the shared ids, neither found the other's facts
    applied yet, and both appended them: the ledger held the overlap twice and both
    summaries counted it as imported."""
    first, second = await two_instances(
        tmp_path, postgres_dsn, kafka_bootstrap if ledger == "kafka" else None
    )
    at = datetime.now(UTC) - timedelta(days=3)
    async with running(first) as a, AsyncExitStack() as stack:
        b = a if ledger == "postgres" else await stack.enter_async_context(running(second))
        async with client(a.address) as admin:
            await admin.DefineCampaign(define("acme", "promo", at - timedelta(days=60)))
        assert a.ledger is not None
        before = sum((await a.ledger.end_offsets(Stream.SUBSCRIBERS)).values())
        # 0-2999 through one instance, 1000-3999 through the other: 2,000 shared.
        (imported_a, present_a), (imported_b, present_b) = await asyncio.gather(
            imported(a, records(0, 3000, at)), imported(b, records(1000, 4000, at))
        )
        after = sum((await a.ledger.end_offsets(Stream.SUBSCRIBERS)).values())

    assert after - before == 4000  # one ConsentGranted a record
    assert imported_a + imported_b == 4000
    assert present_a + present_b == 2000
    assert imported_a + present_a == 3000 and imported_b + present_b == 3000


async def test_a_record_whose_turn_an_import_took_and_never_ended_is_written_by_the_next(
    tmp_path, postgres_dsn, kafka_bootstrap
):
    """An import that took the turn to append records and died before appending (or
    before saying it had) leaves its turns to run out; the next import of those
    records waits for them and writes them, once."""
    (settings, _) = await two_instances(tmp_path, postgres_dsn, kafka_bootstrap)
    at = datetime.now(UTC) - timedelta(days=3)
    sent = records(0, 20, at)
    async with running(settings) as runtime:
        async with client(runtime.address) as admin:
            await admin.DefineCampaign(define("acme", "promo", at - timedelta(days=60)))
        assert runtime.ledger is not None
        before = sum((await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)).values())
        # What a dead import leaves: its claims of the ids, and its turns, still
        # running for two seconds, with nothing appended.
        dead = uuid.uuid4()
        conn = await asyncpg.connect(postgres_dsn)
        try:
            for record in sent[:10]:
                cmd = command_from_proto(record.opt_in)
                assert isinstance(cmd, RecordOptIn)
                event = to_events(cmd, datetime.now(UTC))[0]
                await conn.execute(
                    "INSERT INTO request_use VALUES ($1, $2, $3, $4)",
                    "acme", cmd.request_id, event.request_fingerprint, [event.event_id],
                )  # fmt: skip
                await conn.execute(
                    "INSERT INTO append_turn VALUES ($1, $2, $3, now() + interval '2 s')",
                    "acme", cmd.request_id, dead,
                )  # fmt: skip
        finally:
            await conn.close()

        assert await imported(runtime, sent) == (20, 0)
        after = sum((await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)).values())
        assert after - before == 20
        assert await imported(runtime, sent) == (0, 20)


async def test_an_import_held_up_by_a_dead_import_s_turns_says_why_before_the_deadline(
    tmp_path, postgres_dsn, kafka_bootstrap
):
    """The turns of an import that died hold its records up for two minutes; an
    import of them run again with a shorter deadline must hear why from the server
    (UNAVAILABLE, OUTCOME_UNKNOWN, what to do) before its deadline, not
    DEADLINE_EXCEEDED with no word; and, run again once the turns ran out, it
    writes them once."""
    (settings, _) = await two_instances(tmp_path, postgres_dsn, kafka_bootstrap)
    at = datetime.now(UTC) - timedelta(days=3)
    sent = [
        api.ImportRecord(opt_in=opt_in(f"+1303556{i:04d}", "acme", "promo", at, f"held-{i}"))
        for i in range(10)
    ]
    async with running(settings) as runtime:
        async with client(runtime.address) as admin:
            await admin.DefineCampaign(define("acme", "promo", at - timedelta(days=60)))
        conn = await asyncpg.connect(postgres_dsn)
        # What a dead import leaves: its claims, and its turns, running for 5 s, past
        # the 3 s deadline of the import below with room to spare.
        try:
            for record in sent:
                cmd = command_from_proto(record.opt_in)
                assert isinstance(cmd, RecordOptIn)
                event = to_events(cmd, datetime.now(UTC))[0]
                await conn.execute(
                    "INSERT INTO request_use VALUES ($1, $2, $3, $4)",
                    "acme", cmd.request_id, event.request_fingerprint, [event.event_id],
                )  # fmt: skip
                await conn.execute(
                    "INSERT INTO append_turn VALUES ($1, $2, $3, now() + interval '5 s')",
                    "acme", cmd.request_id, uuid.uuid4(),
                )  # fmt: skip
        finally:
            await conn.close()

        async def one_chunk() -> AsyncIterator[api.ImportConsentsRequest]:
            yield api.ImportConsentsRequest(records=sent)

        async with client(runtime.address, "acme-app") as c:
            started = asyncio.get_running_loop().time()
            stream = c.stub.ImportConsents(
                one_chunk(), metadata=[("authorization", f"Bearer {c.token}")], timeout=3
            )
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                _ = [a async for a in stream]
            took = asyncio.get_running_loop().time() - started
        assert failed.value.code() is grpc.StatusCode.UNAVAILABLE, failed.value
        assert took < 3
        details = failed.value.details() or ""
        assert "outcome unknown" in details and "turn to append" in details, details
        assert "run the import again" in details, details

        # Until the dead import's turns run out, by the database's clock they run on;
        # a fixed wait of their length would wait out the 3 s spent on the deadline again.
        conn = await asyncpg.connect(postgres_dsn)
        try:
            left = await conn.fetchval(
                "SELECT extract(epoch FROM max(until) - now()) FROM append_turn"
                " WHERE request_id = ANY($1::text[])",
                [r.opt_in.request_id for r in sent],
            )
        finally:
            await conn.close()
        assert left is not None, "the dead import's turns are gone"
        await asyncio.sleep(float(left) + 0.1)
        assert await imported(runtime, sent) == (10, 0)
        assert await imported(runtime, sent) == (0, 10)
