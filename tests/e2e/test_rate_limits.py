"""Per-caller rate limits through the real server (real PostgreSQL, real gRPC): a
caller over its limit is told RESOURCE_EXHAUSTED, when to retry and whose quota it
is, and every other caller goes on as before."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import consent_service_pb2_grpc as api_grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from services.grpc_api import servicer
from services.grpc_api.auth import token_digest
from services.grpc_api.imports import MAX_STREAMS
from services.settings import RateLimit
from tests.e2e.harness import define, now, running, service_settings, ts

pytestmark = pytest.mark.asyncio(loop_scope="session")

T = TypeVar("T")

CHECK = api.CanSendRequest(phone="+14155552671", brand="acme", campaign="promo")
ENTRIES = {
    # name: (token, what the tokens file says of its rate)
    "slow": ("slow-secret", {"rate": 2, "burst": 3}),
    "batcher": ("batcher-secret", {"rate": 1, "burst": 5}),
    "sender": ("sender-secret", {"rate": 1, "burst": 5}),
    "defaulted": ("defaulted-secret", {}),
    "ops": ("ops-secret", {"rate": "unlimited"}),
    "importer": ("importer-secret", {"rate": "unlimited"}),
    "watcher": ("watcher-secret", {"rate": "unlimited"}),
    "auditor": ("auditor-secret", {"rate": "unlimited"}),
    "sweeper": ("sweeper-secret", {"rate": "unlimited"}),
    "operator": ("operator-secret", {"rate": "unlimited"}),
}
SCOPES = {
    "sender": ["check", "write"],
    "importer": ["check", "write"],
    "watcher": ["audit"],
    "auditor": ["audit"],
    "sweeper": ["audit"],
    "operator": ["write", "admin"],
}


def tokens_file(tmp_path):
    path = tmp_path / "limited-tokens.json"
    entries = [
        {
            "name": name,
            "sha256": token_digest(token),
            "scopes": SCOPES.get(name, ["check"]),
            "brands": ["acme"],
            **rate,
        }
        for name, (token, rate) in ENTRIES.items()
    ]
    path.write_text(json.dumps({"tokens": entries}))
    return path


async def check(channel: grpc.aio.Channel, who: str, request=CHECK) -> grpc.aio.AioRpcError | None:
    stub = api_grpc.ConsentServiceStub(channel)
    method = stub.CanSendBatch if isinstance(request, api.CanSendBatchRequest) else stub.CanSend
    try:
        await method(request, metadata=[("authorization", f"Bearer {ENTRIES[who][0]}")], timeout=5)
    except grpc.aio.AioRpcError as refused:
        return refused
    return None


def retry_and_quota(refused: grpc.aio.AioRpcError) -> tuple[float, list[str]]:
    """The refusal's retry delay (seconds) and the subjects of its quota failure."""
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused
    status = rpc_status.from_call(refused)
    assert status is not None
    retry, quota = error_details_pb2.RetryInfo(), error_details_pb2.QuotaFailure()
    assert any(d.Unpack(retry) for d in status.details)
    assert any(d.Unpack(quota) for d in status.details)
    return retry.retry_delay.ToNanoseconds() / 1e9, [v.subject for v in quota.violations]


async def test_a_caller_over_its_rate_is_told_when_to_retry_and_others_are_unaffected(
    tmp_path, postgres_dsn
) -> None:
    settings = dataclasses.replace(
        service_settings(tmp_path, postgres_dsn, kafka=None),
        tokens_file=tokens_file(tmp_path),
        rate_limit=RateLimit(rate=1, burst=2),  # for "defaulted", which sets none of its own
    )
    async with running(settings) as runtime, grpc.aio.insecure_channel(runtime.address) as ch:
        assert [await check(ch, "slow") for _ in range(3)] == [None] * 3  # its burst
        refused = await check(ch, "slow")
        assert refused is not None
        delay, subjects = retry_and_quota(refused)
        assert 0 < delay <= 0.5  # two calls a second: one more within half a second
        assert subjects == ["caller:slow"]

        # Another caller is not held back by the one over its limit, and an unlimited
        # one is not held by the default either.
        others = await asyncio.gather(*(check(ch, "ops") for _ in range(200)))
        assert others == [None] * 200
        assert [await check(ch, "defaulted") for _ in range(2)] == [None, None]
        refused = await check(ch, "defaulted")
        assert refused is not None and retry_and_quota(refused)[1] == ["caller:defaulted"]

        await asyncio.sleep(delay)
        assert await check(ch, "slow") is None  # the retry, after the delay it was given


async def test_a_batch_counts_as_many_calls_as_it_has_numbers(tmp_path, postgres_dsn) -> None:
    settings = dataclasses.replace(
        service_settings(tmp_path, postgres_dsn, kafka=None), tokens_file=tokens_file(tmp_path)
    )
    batch = api.CanSendBatchRequest(
        phones=[f"+1415555{i:04d}" for i in range(20)], brand="acme", campaign="promo"
    )
    async with running(settings) as runtime, grpc.aio.insecure_channel(runtime.address) as ch:
        assert await check(ch, "batcher", batch) is None  # admitted on a full bucket
        refused = await check(ch, "batcher")
        assert refused is not None
        delay, _ = retry_and_quota(refused)
        assert 14 < delay <= 16  # 5 - 20 = -15 calls in the bucket, at one a second


async def test_a_batch_of_sends_counts_as_many_calls_as_it_has_messages(
    tmp_path, postgres_dsn
) -> None:
    """The README's promise for ``RecordMessagesSent``, as for ``CanSendBatch``: a
    call of 20 messages takes 20 calls from the bucket, whatever it is answered (the
    campaign is not defined here), so the next call waits some 16 s."""
    settings = dataclasses.replace(
        service_settings(tmp_path, postgres_dsn, kafka=None), tokens_file=tokens_file(tmp_path)
    )
    sends = api.RecordMessagesSentRequest(
        request_id="sends-1",
        brand="acme",
        messages=[
            api.SentMessage(phone=f"+1415555{i:04d}", campaign="promo", message_id=f"SM-{i}")
            for i in range(20)
        ],
    )
    async with running(settings) as runtime, grpc.aio.insecure_channel(runtime.address) as ch:
        stub = api_grpc.ConsentServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as answered:
            await stub.RecordMessagesSent(
                sends, metadata=[("authorization", f"Bearer {ENTRIES['sender'][0]}")], timeout=5
            )
        assert answered.value.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED  # admitted
        refused = await check(ch, "sender")
        assert refused is not None
        delay, subjects = retry_and_quota(refused)
        assert 14 < delay <= 16 and subjects == ["caller:sender"]


async def given_back(opened: Callable[[str], Awaitable[T]], who: str) -> T:
    """``opened(who)`` once a stream of ``who``'s its client cancelled has given its
    place back: refused ``RESOURCE_EXHAUSTED`` until the server hears of the cancel,
    tried again for up to 5 s."""
    for _ in range(50):
        try:
            return await opened(who)
        except grpc.aio.AioRpcError as refused:
            assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused
            await asyncio.sleep(0.1)
    raise AssertionError(f"{who}'s cancelled stream did not give its place back in 5 s")


async def test_an_import_counts_as_many_calls_as_it_streams_records(tmp_path, postgres_dsn) -> None:
    """An ``ImportConsents`` stream, one call, is charged its records as a batch is:
    uncounted, a caller limited to a call a second imported thousands. Its 20
    records take 20 calls from the bucket, so the next call waits some 16 s."""
    settings = dataclasses.replace(
        service_settings(tmp_path, postgres_dsn, kafka=None), tokens_file=tokens_file(tmp_path)
    )
    records = [
        api.ImportRecord(
            opt_out=api.RecordOptOutRequest(
                request_id=f"out-{i}", phone=f"+1415555{i:04d}", brand="acme", campaign="promo"
            )
        )
        for i in range(20)
    ]
    async with running(settings) as runtime, grpc.aio.insecure_channel(runtime.address) as ch:
        stub = api_grpc.ConsentServiceStub(ch)
        stream = stub.ImportConsents(
            metadata=[("authorization", f"Bearer {ENTRIES['sender'][0]}")], timeout=10
        )
        await stream.write(api.ImportConsentsRequest(records=records, dry_run=True))
        await stream.done_writing()
        answers = [answer async for answer in stream]
        assert sum(len(a.refusals) + a.imported for a in answers) == 20  # admitted
        refused = await check(ch, "sender")
        assert refused is not None
        delay, subjects = retry_and_quota(refused)
        assert 14 < delay <= 16 and subjects == ["caller:sender"]


async def test_a_caller_with_as_many_import_streams_open_as_it_may_is_refused_one_more(
    tmp_path, postgres_dsn
) -> None:
    """A caller's import streams share the chunks worked on at once, so more streams
    import no faster; unbounded, a caller with no rate limit could hold any number of
    them open, each with a message read. One past ``MAX_STREAMS`` is refused, with when
    to retry and whose quota it is; another caller is not; and once one ends, or its
    client cancels it, the caller may open another."""
    settings = dataclasses.replace(
        service_settings(tmp_path, postgres_dsn, kafka=None), tokens_file=tokens_file(tmp_path)
    )
    record = api.ImportRecord(
        opt_out=api.RecordOptOutRequest(
            request_id="out-1", phone="+14155550100", brand="acme", campaign="promo"
        )
    )
    chunk = api.ImportConsentsRequest(records=[record], dry_run=True)

    async with running(settings) as runtime, grpc.aio.insecure_channel(runtime.address) as ch:
        stub = api_grpc.ConsentServiceStub(ch)

        async def opened(who: str) -> grpc.aio.StreamStreamCall:
            """A stream whose first message is answered (so open on the server), or
            the refusal that ended it."""
            stream = stub.ImportConsents(
                metadata=[("authorization", f"Bearer {ENTRIES[who][0]}")], timeout=20
            )
            await stream.write(chunk)
            assert (await stream.read()).first_index == 0
            return stream

        async def ended(stream: grpc.aio.StreamStreamCall) -> None:
            await stream.done_writing()
            assert await stream.read() is grpc.aio.EOF

        held = [await opened("importer") for _ in range(MAX_STREAMS)]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await opened("importer")
        delay, subjects = retry_and_quota(refused.value)
        assert 0 < delay <= 1 and subjects == ["caller:importer"]
        assert f"{MAX_STREAMS} import streams" in (refused.value.details() or "")

        await ended(await opened("sender"))  # another caller's
        await ended(held.pop())
        held.append(await opened("importer"))
        # One its client cancels is given back too, once the server hears of it.
        held.pop().cancel()
        held.append(await given_back(opened, "importer"))
        assert len(held) == MAX_STREAMS
        for stream in held:
            await ended(stream)


async def test_a_caller_with_as_many_watches_open_as_it_may_is_refused_one_more(
    tmp_path, postgres_dsn, monkeypatch
) -> None:
    """Each open ``WatchConsentChanges`` reads the view again whenever it moves, and a
    stream is one call however long it runs: unbounded, one caller's thousand
    watches read the view a thousand times a write. One past ``MAX_WATCHES`` (three
    here) is refused, with when to retry and whose quota it is; another caller is
    not; and once one is cancelled, the caller may open another."""
    monkeypatch.setattr(servicer, "MAX_WATCHES", 3)
    settings = dataclasses.replace(
        service_settings(tmp_path, postgres_dsn, kafka=None), tokens_file=tokens_file(tmp_path)
    )
    request = api.WatchConsentChangesRequest(brand="acme", from_now=True)

    async with running(settings) as runtime, grpc.aio.insecure_channel(runtime.address) as ch:
        stub = api_grpc.ConsentServiceStub(ch)

        async def opened(who: str) -> grpc.aio.UnaryStreamCall:
            """A watch the server serves (idle: nothing changes), or the refusal."""
            before = runtime.metrics.watchers
            watch = stub.WatchConsentChanges(
                request, metadata=[("authorization", f"Bearer {ENTRIES[who][0]}")], timeout=20
            )
            for _ in range(200):
                if runtime.metrics.watchers > before:
                    return watch
                if watch.done():
                    await watch.read()  # raises the refusal
                await asyncio.sleep(0.01)
            raise AssertionError(f"{who}'s watch neither served nor refused in 2 s")

        held = [await opened("watcher") for _ in range(3)]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await opened("watcher")
        delay, subjects = retry_and_quota(refused.value)
        assert 0 < delay <= 1 and subjects == ["caller:watcher"]
        assert "3 WatchConsentChanges streams" in (refused.value.details() or "")

        held.append(await opened("auditor"))  # another caller's
        held.pop(0).cancel()
        for _ in range(200):  # the server ends the cancelled watch
            if runtime.metrics.watchers == 3:
                break
            await asyncio.sleep(0.01)
        held.append(await given_back(opened, "watcher"))
        assert runtime.metrics.watchers == 4  # three of its own, one the auditor's
        for watch in held:
            watch.cancel()


async def test_a_caller_with_as_many_long_reads_open_as_it_may_is_refused_one_more(
    tmp_path, postgres_dsn, monkeypatch
) -> None:
    """Each open ``SweepCampaign`` or ``StreamCampaignHealth`` walks the brand's events
    on one of the view's connections, and a stream is one call however long it runs:
    unbounded, one caller's hundreds of them took the connections and other brands'
    calls passed their deadlines. One past ``MAX_LONG_READS`` (two here) of either
    is refused, with when to retry and whose quota it is; another caller is not; and
    a sweep gives its place back however it ends: read to its end, cancelled, past
    its deadline, or its connection closed, each while the server waits for the
    client to read on."""
    monkeypatch.setattr(servicer, "MAX_LONG_READS", 2)
    settings = dataclasses.replace(
        service_settings(tmp_path, postgres_dsn, kafka=None), tokens_file=tokens_file(tmp_path)
    )
    at = now() - timedelta(days=1)
    # A thousand sends with no consent, a finding each: some 200 KB of answers, past
    # the client's window, so a sweep its client does not read stays open.
    sends = api.RecordMessagesSentRequest(
        request_id=uuid.uuid4().hex,
        brand="acme",
        messages=[
            api.SentMessage(
                phone=f"+1415555{i:04d}", campaign="promo", message_id=f"SM{i}", occurred_at=ts(at)
            )
            for i in range(1000)
        ],
    )
    request = api.SweepCampaignRequest(
        brand="acme", campaign="promo", start_time=ts(at - timedelta(days=1)), end_time=ts(now())
    )
    # No growing of the window as answers come fast: it stays at HTTP/2's 64 KB.
    window = [("grpc.http2.bdp_probe", 0)]

    async with (
        running(settings) as runtime,
        grpc.aio.insecure_channel(runtime.address, options=window) as ch,
    ):
        stub = api_grpc.ConsentServiceStub(ch)
        operator = [("authorization", f"Bearer {ENTRIES['operator'][0]}")]
        await stub.DefineCampaign(
            define("acme", "promo", at - timedelta(days=1)), metadata=operator
        )
        await stub.RecordMessagesSent(sends, metadata=operator, timeout=30)

        async def opened(
            who: str, channel: grpc.aio.Channel = ch, timeout: float = 20
        ) -> grpc.aio.UnaryStreamCall:
            """A sweep the server serves (its first answer read), or the refusal."""
            sweep = api_grpc.ConsentServiceStub(channel).SweepCampaign(
                request, metadata=[("authorization", f"Bearer {ENTRIES[who][0]}")], timeout=timeout
            )
            assert (await sweep.read()).HasField("progress")
            return sweep

        held = [await opened("sweeper") for _ in range(2)]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await opened("sweeper")
        delay, subjects = retry_and_quota(refused.value)
        assert 0 < delay <= 1 and subjects == ["caller:sweeper"]
        assert "2 SweepCampaign or StreamCampaignHealth streams" in (refused.value.details() or "")
        health = api.StreamCampaignHealthRequest(
            brand="acme", start_time=request.start_time, end_time=request.end_time
        )
        sweeper = [("authorization", f"Bearer {ENTRIES['sweeper'][0]}")]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            _ = [answer async for answer in stub.StreamCampaignHealth(health, metadata=sweeper)]
        assert retry_and_quota(refused.value)[1] == ["caller:sweeper"]
        held.append(await opened("auditor"))  # another caller's

        # Read to its end.
        done, answers = held.pop(0), 1
        while await done.read() is not grpc.aio.EOF:
            answers += 1
        assert answers > 1000
        answered = [answer async for answer in stub.StreamCampaignHealth(health, metadata=sweeper)]
        assert answered[-1].health.campaigns[0].counts.messages_sent == 1000
        held.insert(0, await opened("sweeper"))
        # Cancelled.
        held.pop(0).cancel()
        held.insert(0, await given_back(opened, "sweeper"))
        # Past its deadline.
        held.pop(0).cancel()
        held.insert(0, await given_back(lambda who: opened(who, timeout=2), "sweeper"))
        held.insert(0, await given_back(opened, "sweeper"))  # once that one's deadline passed
        # Its connection closed.
        held.pop(0).cancel()
        async with grpc.aio.insecure_channel(runtime.address, options=window) as other:
            await given_back(lambda who: opened(who, other), "sweeper")
        held.insert(0, await given_back(opened, "sweeper"))
        for sweep in held:
            sweep.cancel()
