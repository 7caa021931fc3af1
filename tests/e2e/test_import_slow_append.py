"""An import message whose insert into the PostgreSQL ledger (the embedded
default's) takes longer than the ledger waits for it, but is stored in the end:
the import tries the append again (``services/usecases/imports.py``), and the
ledger stores each event once all the same (its unique index on the event id,
migration 0023), answering the tries with the rows of the first."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import timedelta

import asyncpg
import pytest
from consent.v1 import consent_service_pb2 as api

from ledger.ports import Stream
from services.adapters.postgres_ledger import TABLE, PostgresLedger
from tests.e2e.harness import Clock, client, define, imported, opt_out, serving

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def the_next_insert_slow(dsn: str, seconds: float) -> None:
    tag = uuid.uuid4().hex[:8]
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(
            f"""
            CREATE SEQUENCE slow_{tag};
            CREATE FUNCTION slow_{tag}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF nextval('slow_{tag}') = 1 THEN PERFORM pg_sleep({seconds}); END IF;
              RETURN NULL;
            END $$;
            CREATE TRIGGER slow_{tag} BEFORE INSERT ON {TABLE}
              FOR EACH STATEMENT EXECUTE FUNCTION slow_{tag}();
            """
        )
    finally:
        await connection.close()


async def every_try_ended(ledger: PostgresLedger) -> None:
    """Until the ledger's writer has inserted (or failed) every append it was given,
    the first one, still sleeping in its insert, included."""
    async with asyncio.timeout(30):
        while ledger._waiting or (ledger._writer is not None and not ledger._writer.done()):
            await asyncio.sleep(0.05)


async def test_an_insert_slower_than_the_ledger_waits_is_not_appended_twice(tmp_path, postgres_dsn):
    clock = Clock()
    when = clock.now
    campaign = define("acme", "promo", when - timedelta(days=30))
    async with serving(tmp_path, postgres_dsn, None, clock=clock, campaigns=[campaign]) as runtime:
        runtime.ledger._append_timeout_s = 1  # 30 s in production; the insert takes 2.5
        phones = [f"+1303558{i:04d}" for i in range(50)]
        records = [
            api.ImportRecord(opt_out=opt_out(p, "acme", None, when - timedelta(days=1), f"s-{p}"))
            for p in phones
        ]
        await the_next_insert_slow(postgres_dsn, 2.5)
        async with client(runtime.address, "acme-app") as app:
            answer = await imported(app, *records)
        assert answer.imported == len(records)
        await every_try_ended(runtime.ledger)
        stored = Counter(
            str(r.event.event_id) for r in await runtime.ledger.read(Stream.SUBSCRIBERS, 0, 0, 1000)
        )
        assert len(stored) == len(records)
        assert set(stored.values()) == {1}, Counter(stored.values())
