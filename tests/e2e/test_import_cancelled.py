"""An import stream the client cancels after some answers, on the Kafka ledger and on
the embedded default's PostgreSQL ledger: every record an answer acknowledged is in
the ledger once, every other is there once or not at all, CanSend allows no number
whose opt-out the ledger holds, and the import sent again completes it, writing
each record once."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from consent.v1 import consent_service_pb2 as api

from ledger.events import ConsentGranted, ConsentRevoked
from ledger.ports import ConsistencyToken, Stream
from services.bootstrap import Runtime
from tests.e2e.harness import Client, Clock, client, define, opt_in, opt_out, serving

pytestmark = pytest.mark.asyncio(loop_scope="session")

NUMBERS = 900
CHUNK = 150


def records(when) -> tuple[list[str], list[api.ImportRecord]]:
    """Each number opted in; every third opted out (brand-wide) a day later, its
    opt-out beside its opt-in, so the chunks mix both."""
    phones = [f"+1303555{i:04d}" for i in range(NUMBERS)]
    out: list[api.ImportRecord] = []
    for i, phone in enumerate(phones):
        at = when - timedelta(days=2)
        out.append(api.ImportRecord(opt_in=opt_in(phone, "acme", "promo", at, f"in-{i}")))
        if i % 3 == 0:
            later = when - timedelta(days=1)
            out.append(api.ImportRecord(opt_out=opt_out(phone, "acme", None, later, f"out-{i}")))
    return phones, out


def request_id(record: api.ImportRecord) -> str:
    kind = record.WhichOneof("record")
    assert kind is not None
    return str(getattr(record, kind).request_id)


async def in_ledger(runtime: Runtime) -> tuple[Counter[str], set[str], set[str], str]:
    """Events per import id, the numbers opted in and out, and a token of the end."""
    assert runtime.ledger is not None
    ends = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)
    per_id: Counter[str] = Counter()
    granted, revoked = set(), set()
    for partition, end in ends.items():
        for r in await runtime.ledger.read(Stream.SUBSCRIBERS, partition, 0, end + 1):
            per_id[r.event.request_id] += 1
            if isinstance(r.event, ConsentGranted):
                granted.add(r.event.phone)
            elif isinstance(r.event, ConsentRevoked):
                revoked.add(r.event.phone)
    token = ConsistencyToken({(Stream.SUBSCRIBERS, p): end for p, end in ends.items()})
    return per_id, granted, revoked, token.encode()


async def settled(runtime: Runtime) -> Counter[str]:
    """``in_ledger``'s events per import id once the cancelled stream's chunks still in
    flight are done: the service finishes a chunk it began after its caller has gone,
    so the ledger is read again until two reads half a second apart agree."""
    per_id, *_ = await in_ledger(runtime)
    for _ in range(40):
        await asyncio.sleep(0.5)
        again, *_ = await in_ledger(runtime)
        if again == per_id:
            return per_id
        per_id = again
    raise AssertionError("the ledger was still growing 20 s after the import was cancelled")


async def answers_agree(app: Client, phones: list[str], runtime: Runtime) -> None:
    _, granted, revoked, token = await in_ledger(runtime)
    batch = await app.CanSendBatch(
        api.CanSendBatchRequest(
            brand="acme", campaign="promo", phones=phones, at_least_as_fresh=token
        )
    )
    for d in batch.decisions:
        assert d.allowed == (d.phone in granted and d.phone not in revoked), d


@pytest.mark.parametrize("ledger", ["kafka", "postgres"])
async def test_an_import_cancelled_after_some_answers_keeps_them_and_completes_once_again(
    ledger, tmp_path, postgres_dsn, kafka_bootstrap
):
    clock = Clock()
    phones, sent = records(clock.now)
    campaign = define("acme", "promo", clock.now - timedelta(days=30))
    bootstrap = kafka_bootstrap if ledger == "kafka" else None
    async with (
        serving(tmp_path, postgres_dsn, bootstrap, clock=clock, campaigns=[campaign]) as runtime,
        client(runtime.address, "acme-app") as app,
    ):

        async def chunks() -> AsyncIterator[api.ImportConsentsRequest]:
            for start in range(0, len(sent), CHUNK):
                yield api.ImportConsentsRequest(records=sent[start : start + CHUNK])

        metadata = [("authorization", f"Bearer {app.token}")]
        call = app.stub.ImportConsents(chunks(), metadata=metadata, timeout=60)
        acknowledged: list[api.ImportConsentsResponse] = []
        async for answer in call:
            acknowledged.append(answer)
            if len(acknowledged) == 2:
                call.cancel()  # the client goes away with the rest in flight
                break
        assert not any(a.refusals for a in acknowledged)
        per_id = await settled(runtime)
        first = len(acknowledged) * CHUNK
        assert all(per_id[request_id(r)] == 1 for r in sent[:first])
        assert set(per_id.values()) <= {1}
        await answers_agree(app, phones, runtime)

        again = app.stub.ImportConsents(chunks(), metadata=metadata, timeout=60)
        answers = [a async for a in again]
        assert not any(a.refusals for a in answers)
        assert sum(a.imported + a.already_present for a in answers) == len(sent)
        assert sum(a.already_present for a in answers) == sum(per_id.values())
        per_id, _, _, _ = await in_ledger(runtime)
        assert per_id == Counter({request_id(r): 1 for r in sent})
        await answers_agree(app, phones, runtime)
