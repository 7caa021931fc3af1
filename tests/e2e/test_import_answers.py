"""``ImportConsents`` answers each chunk as soon as it is appended (real Kafka, real
PostgreSQL): a client that waits for a chunk's answer before sending the next is
not kept waiting for a chunk it has not sent."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import consent_service_pb2_grpc as api_grpc
from consent.v1 import ledger_pb2 as lpb

from ledger.ports import ConsistencyToken
from tests.e2e.harness import Clock, client, define, opt_in, opt_out, streamed, ts

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_chunk_is_answered_before_the_next_is_sent(serve):
    """Each chunk was answered only once the next chunk came or the stream ended: a
    client that sent one chunk and waited for its answer stalled to its deadline."""
    clock = Clock()
    runtime = await serve(
        clock=clock, campaigns=[define("acme", "promo", clock.now - timedelta(days=1))]
    )
    chunks: asyncio.Queue[api.ImportConsentsRequest | None] = asyncio.Queue()

    async def sent() -> AsyncIterator[api.ImportConsentsRequest]:
        while (chunk := await chunks.get()) is not None:
            yield chunk

    def chunk(*phones: str) -> api.ImportConsentsRequest:
        return api.ImportConsentsRequest(
            records=[
                api.ImportRecord(opt_in=opt_in(p, "acme", "promo", clock.now, f"answer-{p}"))
                for p in phones
            ]
        )

    async with client(runtime.address, "acme-app") as app:
        stream = app.stub.ImportConsents(
            sent(), metadata=[("authorization", f"Bearer {app.token}")], timeout=8
        )
        started = asyncio.get_running_loop().time()
        await chunks.put(chunk("+14155550161", "+14155550162"))
        first = await stream.read()
        await chunks.put(chunk("+14155550162", "+14155550163"))
        second = await stream.read()
        await chunks.put(None)
        assert await stream.read() is grpc.aio.EOF
        took = asyncio.get_running_loop().time() - started
    assert (first.first_index, first.imported, first.already_present) == (0, 2, 0)
    assert (second.first_index, second.imported, second.already_present) == (2, 1, 1)
    assert took < 6, f"the import took {took:.1f} s of its 8 s deadline"


async def test_an_import_cancelled_by_its_deadline_logs_no_error(serve, caplog):
    """A stream whose deadline passed while the service sent it an answer was left
    by gRPC at that answer; asyncio closed it later from a task of its own, where
    restoring the call's request id raised "was created in a different Context"
    ("Task exception was never retrieved" in the log)."""
    clock = Clock()
    runtime = await serve(
        clock=clock, campaigns=[define("acme", "promo", clock.now - timedelta(days=1))]
    )
    # Records refused one by one make long answers; a client with a small window
    # that reads none keeps the service waiting in its send when the deadline comes.
    refused = [
        api.ImportRecord(opt_in=opt_in(f"not a phone {i}", "acme", "promo", clock.now, f"x-{i}"))
        for i in range(1000)
    ]

    async def sent() -> AsyncIterator[api.ImportConsentsRequest]:
        for _ in range(4):
            yield api.ImportConsentsRequest(records=refused)
        await asyncio.sleep(30)  # the stream stays open until its deadline

    small_window = [("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)]
    for _ in range(3):
        async with grpc.aio.insecure_channel(runtime.address, options=small_window) as channel:
            stream = api_grpc.ConsentServiceStub(channel).ImportConsents(
                sent(), metadata=[("authorization", "Bearer acme-secret")], timeout=1.5
            )
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await stream.code()  # reads nothing until the deadline ended the call
                async for _ in stream:
                    pass
            assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    for _ in range(10):  # time for asyncio to close what gRPC left
        gc.collect()
        await asyncio.sleep(0.1)
    said = [r.getMessage() + str(r.exc_info and r.exc_info[1]) for r in caplog.records]
    assert not [s for s in said if "different Context" in s or "never retrieved" in s]


async def test_a_rule_changed_while_an_import_runs_applies_to_its_later_records(serve):
    """A campaign's rules read once for the import's length: a proof field required
    from a moment on (ChangeCampaignPolicy) went unchecked on the records an open
    import sent after it, while RecordOptIn refused the same record. A later message
    is checked against the rules as they stand, as the single write is."""
    clock = Clock()
    runtime = await serve(
        clock=clock, campaigns=[define("acme", "promo", clock.now - timedelta(days=1))]
    )
    assert runtime.guard is not None
    chunks: asyncio.Queue[api.ImportConsentsRequest | None] = asyncio.Queue()

    async def sent() -> AsyncIterator[api.ImportConsentsRequest]:
        while (chunk := await chunks.get()) is not None:
            yield chunk

    def without_email(phone: str) -> api.ImportConsentsRequest:
        record = opt_in(phone, "acme", "promo", clock.now - timedelta(hours=1), f"rule-{phone}")
        record.proof.email = ""
        return api.ImportConsentsRequest(records=[api.ImportRecord(opt_in=record)])

    async with client(runtime.address, "acme-app") as app, client(runtime.address) as admin:
        stream = app.stub.ImportConsents(
            sent(), metadata=[("authorization", f"Bearer {app.token}")], timeout=30
        )
        await chunks.put(without_email("+14155550171"))
        before = await stream.read()
        changed = await admin.ChangeCampaignPolicy(
            api.ChangeCampaignPolicyRequest(
                request_id="rule-email",
                brand="acme",
                campaign="promo",
                policy=lpb.CampaignPolicy(required_proof_fields=["email"]),
                occurred_at=ts(clock.now - timedelta(seconds=1)),
            )
        )
        token = ConsistencyToken.decode(changed.consistency_token)
        assert await runtime.guard.wait_for_token(token, timeout=30)
        with pytest.raises(grpc.aio.AioRpcError) as single:
            await app.RecordOptIn(without_email("+14155550172").records[0].opt_in)
        await chunks.put(without_email("+14155550173"))
        after = await stream.read()
        await chunks.put(None)
        assert await stream.read() is grpc.aio.EOF

    assert before.imported == 1 and not before.refusals
    assert single.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert after.imported == 0, after
    [refusal] = after.refusals
    assert refusal.code == "INVALID_ARGUMENT"
    assert [v.field for v in refusal.violations] == ["proof.email"], refusal


async def test_a_brand_defined_while_an_import_runs_holds_its_misspelled_opt_outs(serve):
    """An import read the brands in use once: "ac-me" opt-outs sent after acme's
    first campaign was defined were written under "ac-me" by a token of every brand,
    and stopped nothing acme sends, while the same opt-in went in under acme. They
    are refused on brand and held under acme, as RecordOptOut does."""
    clock = Clock()
    runtime = await serve(
        clock=clock, campaigns=[define("globex", "news", clock.now - timedelta(days=1))]
    )
    assert runtime.guard is not None
    chunks: asyncio.Queue[api.ImportConsentsRequest | None] = asyncio.Queue()

    async def sent() -> AsyncIterator[api.ImportConsentsRequest]:
        while (chunk := await chunks.get()) is not None:
            yield chunk

    number, at = "+14155550181", clock.now - timedelta(days=2)
    async with client(runtime.address) as admin:
        stream = admin.stub.ImportConsents(
            sent(), metadata=[("authorization", f"Bearer {admin.token}")], timeout=30
        )
        stop = opt_out("+14155550180", "globex", None, at, "brands-0")
        await chunks.put(api.ImportConsentsRequest(records=[api.ImportRecord(opt_out=stop)]))
        before = await stream.read()
        defined = await admin.DefineCampaign(define("acme", "promo", clock.now - timedelta(days=9)))
        token = ConsistencyToken.decode(defined.consistency_token)
        assert await runtime.guard.wait_for_token(token, timeout=30)
        records = [
            api.ImportRecord(opt_in=opt_in(number, "acme", "promo", at, "brands-1")),
            api.ImportRecord(
                opt_out=opt_out(number, "ac-me", None, at + timedelta(hours=1), "brands-2")
            ),
        ]
        await chunks.put(api.ImportConsentsRequest(records=records))
        after = await stream.read()
        await chunks.put(None)
        assert await stream.read() is grpc.aio.EOF
        decision = await admin.CanSend(
            api.CanSendRequest(
                phone=number,
                brand="acme",
                campaign="promo",
                at_least_as_fresh=after.consistency_token,
            )
        )

    assert before.imported == 1, before
    assert after.imported == 1, after
    [refusal] = after.refusals
    assert refusal.held_for_review and refusal.violations[0].field == "brand", refusal
    assert not decision.allowed, decision


async def test_a_message_whose_opt_outs_failed_fails_only_them_and_their_numbers_opt_ins(
    serve, monkeypatch
):
    """A message whose append failed (past its retries) ended the whole stream,
    and with it every message worked on beside it: an import of a hundred thousand
    records under load stopped within seconds, to be run again whole. The failed
    message is answered now, each record not imported, saying why; an opt-in of
    one of its opt-outs' numbers in a later message is not imported either (it
    would allow the number), and every other record of the stream is."""
    clock = Clock()
    runtime = await serve(
        clock=clock, campaigns=[define("acme", "promo", clock.now - timedelta(days=1))]
    )
    ledger = runtime.ledger
    assert ledger is not None
    append = ledger.append
    stopped, other, third = "+14155550171", "+14155550172", "+14155550173"
    opted_in_at = clock.now - timedelta(days=2)

    async def opt_outs_failing(events):  # type: ignore[no-untyped-def]
        if any(getattr(e, "phone", "") == stopped for e in events):
            raise ConnectionError("the broker went away")
        return await append(events)

    def message(*records: api.ImportRecord) -> api.ImportConsentsRequest:
        return api.ImportConsentsRequest(records=records)

    messages = [
        message(api.ImportRecord(opt_in=opt_in(other, "acme", "promo", opted_in_at, "f-1"))),
        message(api.ImportRecord(opt_out=opt_out(stopped, "acme", None, clock.now, "f-2"))),
        message(
            api.ImportRecord(opt_in=opt_in(stopped, "acme", "promo", opted_in_at, "f-3")),
            api.ImportRecord(opt_in=opt_in(third, "acme", "promo", opted_in_at, "f-4")),
        ),
    ]

    monkeypatch.setattr(ledger, "append", opt_outs_failing)
    async with client(runtime.address, "acme-app") as app:
        answers = await streamed(app, messages)
        monkeypatch.setattr(ledger, "append", append)

        assert [(a.first_index, a.imported) for a in answers] == [(0, 1), (1, 0), (2, 1)]
        refused = {(r.index, r.code, r.violations[0].field) for a in answers for r in a.refusals}
        assert refused == {(1, "UNAVAILABLE", "record"), (2, "UNAVAILABLE", "record")}
        said = answers[2].refusals[0].violations[0].description
        assert "opt-outs of the message with record 1" in said, said
        assert "the broker went away" in said and "send it again" in said, said
        token = ConsistencyToken({})
        for a in answers:
            token = token.merge(ConsistencyToken.decode(a.consistency_token))
        batch = await app.stub.CanSendBatch(
            api.CanSendBatchRequest(
                brand="acme", campaign="promo", phones=[stopped, other, third],
                at=ts(clock.now), at_least_as_fresh=token.encode(),
            ),
            metadata=[("authorization", f"Bearer {app.token}")],
        )  # fmt: skip
        allowed = {d.phone: d.allowed for d in batch.decisions}
        assert allowed == {stopped: False, other: True, third: True}

        # Sent again, the records not imported are, once, and the others are present.
        answers = await streamed(app, messages)
    assert [(a.imported, a.already_present, len(a.refusals)) for a in answers] == [
        (0, 1, 0),
        (1, 0, 0),
        (1, 1, 0),
    ]


async def test_an_older_opt_out_of_its_number_lets_no_opt_in_overtake_a_failed_one(
    serve, monkeypatch
):
    """An opt-out that failed to append held back its number's opt-ins only until
    some opt-out of that number was appended: one older than the opt-in, in the
    opt-in's own message, let the opt-in through, and CanSend allowed the number the
    failed opt-out denies. Only that opt-out itself, sent again, lets them go."""
    clock = Clock()
    runtime = await serve(
        clock=clock, campaigns=[define("acme", "promo", clock.now - timedelta(days=1))]
    )
    ledger = runtime.ledger
    assert ledger is not None
    append = ledger.append
    stopped = "+14155550181"
    opted_in_at = clock.now - timedelta(days=2)

    async def failing_once(events):  # type: ignore[no-untyped-def]
        if any(getattr(e, "request_id", "") == "g-1" for e in events):
            raise ConnectionError("the broker went away")
        return await append(events)

    messages = [
        api.ImportConsentsRequest(
            records=[api.ImportRecord(opt_out=opt_out(stopped, "acme", None, clock.now, "g-1"))]
        ),
        api.ImportConsentsRequest(
            records=[
                api.ImportRecord(
                    opt_out=opt_out(
                        "+1 (415) 555-0181", "acme", None, opted_in_at - timedelta(days=1), "g-2"
                    )
                ),
                api.ImportRecord(opt_in=opt_in(stopped, "acme", "promo", opted_in_at, "g-3")),
            ]
        ),
    ]

    monkeypatch.setattr(ledger, "append", failing_once)
    async with client(runtime.address, "acme-app") as app:
        answers = await streamed(app, messages)
        monkeypatch.setattr(ledger, "append", append)

        refused = {(r.index, r.code, r.violations[0].field) for a in answers for r in a.refusals}
        assert refused == {(0, "UNAVAILABLE", "record"), (2, "UNAVAILABLE", "record")}
        token = ConsistencyToken({})
        for a in answers:
            token = token.merge(ConsistencyToken.decode(a.consistency_token))
        batch = await app.stub.CanSendBatch(
            api.CanSendBatchRequest(
                brand="acme", campaign="promo", phones=[stopped],
                at=ts(clock.now), at_least_as_fresh=token.encode(),
            ),
            metadata=[("authorization", f"Bearer {app.token}")],
        )  # fmt: skip
        assert not batch.decisions[0].allowed, batch

        # Sent again, the failed opt-out goes, and the opt-in after it.
        answers = await streamed(app, messages)
    assert [(a.imported, a.already_present, len(a.refusals)) for a in answers] == [
        (1, 0, 0),
        (1, 1, 0),
    ]
