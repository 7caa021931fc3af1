"""An import message whose append the PostgreSQL ledger (the embedded default's)
cuts short, on the real database: its first insert, which holds opt-outs, fails
each time the service tries it, as a statement timeout would. The message's
opt-outs go first, so what is stored of it must be a prefix that allows nothing
the message denies: the later inserts, its opt-ins alone, were stored all the
same, and allowed the numbers whose opt-outs were lost. The import sent again
writes each record once."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta

import asyncpg
import grpc
import pytest
from consent.v1 import consent_service_pb2 as api

from ledger.ports import ConsistencyToken, Stream
from services.adapters.postgres_ledger import TABLE
from services.bootstrap import Runtime
from tests.e2e.harness import Client, Clock, client, define, imported, opt_in, opt_out, serving

pytestmark = pytest.mark.asyncio(loop_scope="session")

N = 300
"""Numbers, each opted in and later out: their 600 events fill more than one insert."""


@asynccontextmanager
async def inserts_of_opt_outs_failing(dsn: str) -> AsyncIterator[None]:
    """Every insert into the ledger's table that holds an event other than an
    opt-in fails while it lasts (the database, not the service, refuses it), as
    a statement timeout would fail a larger insert."""
    tag = uuid.uuid4().hex[:8]
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(
            f"""
            CREATE FUNCTION cut_{tag}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF NEW.topic NOT LIKE '%ConsentGranted%' THEN
                RAISE EXCEPTION 'the statement timed out (a test fault)';
              END IF;
              RETURN NEW;
            END $$;
            CREATE TRIGGER cut_{tag} BEFORE INSERT ON {TABLE}
              FOR EACH ROW EXECUTE FUNCTION cut_{tag}();
            """
        )
        yield
    finally:
        await connection.execute(f"DROP TRIGGER cut_{tag} ON {TABLE}")
        await connection.close()


async def test_an_append_cut_short_leaves_no_opt_in_without_its_later_opt_out(
    tmp_path, postgres_dsn
):
    clock = Clock()
    when = clock.now
    campaign = define("acme", "promo", when - timedelta(days=30))
    async with serving(tmp_path, postgres_dsn, None, clock=clock, campaigns=[campaign]) as runtime:
        await cut_and_imported_again(runtime, when, postgres_dsn)


async def cut_and_imported_again(runtime: Runtime, when: datetime, dsn: str) -> None:
    phones = [f"+1303557{i:04d}" for i in range(N)]
    records = [
        api.ImportRecord(opt_in=opt_in(p, "acme", "promo", when - timedelta(days=2), f"in-{p}"))
        for p in phones
    ] + [
        api.ImportRecord(opt_out=opt_out(p, "acme", None, when - timedelta(days=1), f"out-{p}"))
        for p in phones
    ]
    async with client(runtime.address, "acme-app") as app:
        async with inserts_of_opt_outs_failing(dsn):
            # A deadline that ends the service's tries again soon (at half of it).
            answers, failure = await sent(app, records, deadline=6)
        assert failure is not None or not sum(a.imported for a in answers), answers

        # What the ledger holds of the message, applied: not one number allowed.
        ends = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)
        stored = ConsistencyToken({(Stream.SUBSCRIBERS, p): end for p, end in ends.items()})
        batch = await app.CanSendBatch(
            api.CanSendBatchRequest(
                brand="acme", campaign="promo", phones=phones, at_least_as_fresh=stored.encode()
            )
        )
        assert [d.phone for d in batch.decisions if d.allowed] == []

        again = await imported(app, *records)  # the client sends it again, unchanged
        assert again.imported + again.already_present == len(records)
        assert not again.refusals
        batch = await app.CanSendBatch(
            api.CanSendBatchRequest(
                brand="acme",
                campaign="promo",
                phones=phones,
                at_least_as_fresh=again.consistency_token,
            )
        )
        assert {d.reason for d in batch.decisions} == {api.REASON_REVOKED_BRAND_WIDE}
    events = [
        r.event.event_id
        for p in ends
        for r in await runtime.ledger.read(Stream.SUBSCRIBERS, p, 0, 10 * N)
    ]
    assert len(events) == len(records) and set(Counter(events).values()) == {1}


async def sent(
    app: Client, records: list[api.ImportRecord], deadline: float
) -> tuple[list[api.ImportConsentsResponse], grpc.aio.AioRpcError | None]:
    """The answers to an import of ``records`` in one message, and how it ended."""

    async def one() -> AsyncIterator[api.ImportConsentsRequest]:
        yield api.ImportConsentsRequest(records=records)

    call = app.stub.ImportConsents(
        one(), metadata=[("authorization", f"Bearer {app.token}")], timeout=deadline
    )
    answers: list[api.ImportConsentsResponse] = []
    try:
        async for answer in call:
            answers.append(answer)
    except grpc.aio.AioRpcError as err:
        return answers, err
    return answers, None
