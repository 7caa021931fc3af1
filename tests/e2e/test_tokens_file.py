"""The tokens file is read again when it changes: a token added works and a token
taken out stops working, without a restart (real PostgreSQL, real gRPC)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import consent_service_pb2_grpc as api_grpc

from services.grpc_api.auth import token_digest
from tests.e2e.harness import Clock, client, define, opt_in, running, service_settings

pytestmark = pytest.mark.asyncio(loop_scope="session")

CHECK = api.CanSendRequest(phone="+14155552671", brand="acme", campaign="promo")


async def status_for(address: str, token: str) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            await api_grpc.ConsentServiceStub(channel).CanSend(
                CHECK, metadata=[("authorization", f"Bearer {token}")], timeout=5
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


async def eventually(address: str, token: str, code: grpc.StatusCode) -> None:
    deadline = asyncio.get_running_loop().time() + 10
    while (now := await status_for(address, token)) != code:
        assert asyncio.get_running_loop().time() < deadline, f"{token}: still {now}"
        await asyncio.sleep(0.05)


def rewrite(path, text: str) -> None:
    staged = path.with_suffix(".new")
    staged.write_text(text)
    os.replace(staged, path)


async def watched_until_it_ends(app, got: list[str]) -> grpc.StatusCode:
    """Watch acme's changes as ``app`` until the stream ends, each change's number put
    in ``got``; the status it ended with."""
    stream = app.stub.WatchConsentChanges(
        api.WatchConsentChangesRequest(brand="acme", from_now=True),
        metadata=[("authorization", f"Bearer {app.token}")],
    )
    try:
        async for change in stream:
            got.append(change.event.event.phone)
    except grpc.aio.AioRpcError as ended:
        return ended.code()
    return grpc.StatusCode.OK


async def test_tokens_are_added_and_revoked_by_editing_the_file(tmp_path, postgres_dsn, caplog):
    settings = dataclasses.replace(
        service_settings(tmp_path, postgres_dsn, kafka=None), tokens_reload_interval=0.05
    )
    tokens = settings.tokens_file
    assert tokens is not None
    async with running(settings) as runtime:
        assert await status_for(runtime.address, "acme-secret") == grpc.StatusCode.OK
        assert await status_for(runtime.address, "rotated") == grpc.StatusCode.UNAUTHENTICATED

        entries = json.loads(tokens.read_text())["tokens"]
        for entry in entries:
            if entry["name"] == "acme-app":  # the same caller, a new secret
                entry["sha256"] = token_digest("rotated")
        rewrite(tokens, json.dumps({"tokens": entries}))
        await eventually(runtime.address, "rotated", grpc.StatusCode.OK)
        assert await status_for(runtime.address, "acme-secret") == grpc.StatusCode.UNAUTHENTICATED

        with caplog.at_level(logging.WARNING, logger="services.bootstrap"):
            rewrite(tokens, "{ not json")
            for _ in range(100):
                if "changed but cannot be used" in caplog.text:
                    break
                await asyncio.sleep(0.05)
        assert "changed but cannot be used" in caplog.text
        assert await status_for(runtime.address, "rotated") == grpc.StatusCode.OK  # kept


async def test_a_token_revoked_ends_its_open_watch_before_the_next_change(serve):
    """The watch checked its caller once, at its start: a token taken out of the file
    went on receiving every change of the brand (personal data opened), without end."""
    clock = Clock()
    campaign = define("acme", "promo", clock.now - timedelta(days=1), ["+12125550186"])
    runtime = await serve(clock=clock, campaigns=[campaign], tokens_reload_interval=0.05)
    tokens = runtime.settings.tokens_file
    assert tokens is not None
    got: list[str] = []
    async with client(runtime.address) as admin, client(runtime.address, "acme-app") as app:
        watching = asyncio.create_task(watched_until_it_ends(app, got))
        before = "+14155550186"
        await admin.RecordOptIn(opt_in(before, "acme", "promo", clock.now))
        deadline = asyncio.get_running_loop().time() + 20
        while before not in got:
            assert asyncio.get_running_loop().time() < deadline, "the watch got nothing"
            await asyncio.sleep(0.05)

        entries = json.loads(tokens.read_text())["tokens"]
        kept = [e for e in entries if e["name"] != "acme-app"]
        rewrite(tokens, json.dumps({"tokens": kept}))
        await eventually(runtime.address, "acme-secret", grpc.StatusCode.UNAUTHENTICATED)
        await admin.RecordOptIn(opt_in("+14155550187", "acme", "promo", clock.now))
        ended = await asyncio.wait_for(watching, 20)
    assert ended == grpc.StatusCode.UNAUTHENTICATED
    assert got == [before]


Entries = list[dict[str, object]]


def _without_acme_app(entries: Entries) -> tuple[Entries, grpc.StatusCode]:
    return [e for e in entries if e["name"] != "acme-app"], grpc.StatusCode.UNAUTHENTICATED


def _acme_app_for_globex(entries: Entries) -> tuple[Entries, grpc.StatusCode]:
    moved = [{**e, "brands": ["globex"]} if e["name"] == "acme-app" else e for e in entries]
    return moved, grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize("change", [_without_acme_app, _acme_app_for_globex])
async def test_a_token_revoked_ends_its_idle_watch_within_the_reload_period(serve, change):
    """Asked only before each message, a watch with nothing to send never asked: a
    revoked token kept its stream, and what it held, open until the brand's next change."""
    runtime = await serve(tokens_reload_interval=0.05)
    tokens = runtime.settings.tokens_file
    assert tokens is not None
    got: list[str] = []
    async with client(runtime.address, "acme-app") as app:
        watching = asyncio.create_task(watched_until_it_ends(app, got))
        deadline = asyncio.get_running_loop().time() + 20
        while runtime.metrics.watchers != 1:  # served, and idle: nothing is recorded
            assert asyncio.get_running_loop().time() < deadline, "the watch never opened"
            await asyncio.sleep(0.05)

        # A change that leaves the caller a reader of acme leaves its watch open.
        entries = json.loads(tokens.read_text())["tokens"]
        entries = [e for e in entries if e["name"] != "acme-checker"]
        rewrite(tokens, json.dumps({"tokens": entries}))
        await eventually(runtime.address, "acme-check-only", grpc.StatusCode.UNAUTHENTICATED)
        await asyncio.sleep(0.2)
        assert not watching.done() and runtime.metrics.watchers == 1

        changed, code = change(entries)
        rewrite(tokens, json.dumps({"tokens": changed}))
        ended = await asyncio.wait_for(watching, 5)
    assert ended == code
    assert got == []  # nothing is recorded: nothing to receive
    assert runtime.metrics.watchers == 0  # its call and its read of the view ended too


@pytest.mark.parametrize("change", [_without_acme_app, _acme_app_for_globex])
async def test_an_open_import_writes_nothing_once_its_token_is_revoked(serve, change):
    """The import checked its caller once, at its start: a token taken out of the
    file, or moved off the brand, went on importing opt-ins for the brand for as
    long as its stream stayed open."""
    clock = Clock()
    campaign = define("acme", "promo", clock.now - timedelta(days=1), ["+12125550186"])
    runtime = await serve(clock=clock, campaigns=[campaign], tokens_reload_interval=0.05)
    tokens = runtime.settings.tokens_file
    assert tokens is not None
    chunks: asyncio.Queue[api.ImportConsentsRequest | None] = asyncio.Queue()

    async def sent() -> AsyncIterator[api.ImportConsentsRequest]:
        while (chunk := await chunks.get()) is not None:
            yield chunk

    def chunk(phone: str) -> api.ImportConsentsRequest:
        record = api.ImportRecord(opt_in=opt_in(phone, "acme", "promo", clock.now))
        return api.ImportConsentsRequest(records=[record])

    before, after = "+14155550191", "+14155550192"
    async with client(runtime.address, "acme-app") as app, client(runtime.address) as admin:
        stream = app.stub.ImportConsents(
            sent(), metadata=[("authorization", f"Bearer {app.token}")], timeout=20
        )
        await chunks.put(chunk(before))
        # Written before its answer is read: wait for it in the ledger itself.
        deadline = asyncio.get_running_loop().time() + 20
        while not (await admin.ListEvents(api.ListEventsRequest(phone=before))).events:
            assert asyncio.get_running_loop().time() < deadline, "the first chunk was not written"
            await asyncio.sleep(0.05)

        changed, code = change(json.loads(tokens.read_text())["tokens"])
        rewrite(tokens, json.dumps({"tokens": changed}))
        await eventually(runtime.address, "acme-secret", code)
        await chunks.put(chunk(after))
        await chunks.put(None)
        answers, ended = [], grpc.StatusCode.OK
        try:
            while (answer := await stream.read()) is not grpc.aio.EOF:
                answers.append(answer)
        except grpc.aio.AioRpcError as exc:
            ended = exc.code()
        written = await admin.ListEvents(api.ListEventsRequest(phone=after, brand="acme"))
    assert answers[0].imported == 1
    later = [(a.imported, [r.code for r in a.refusals]) for a in answers[1:]]
    assert ended == code or later == [(0, [code.name])]
    assert all(imported == 0 for imported, _ in later)
    assert list(written.events) == []


async def test_a_watch_whose_client_stopped_reading_ends_unauthenticated(serve):
    """A stream whose client stopped reading waits in gRPC's send, where its task was
    cancelled when the token was revoked, and no status was sent: the client, reading
    again, got what was sent before and then waited for an end that never came."""
    clock = Clock()
    campaign = define("acme", "promo", clock.now - timedelta(days=1))
    runtime = await serve(clock=clock, campaigns=[campaign], tokens_reload_interval=0.05)
    tokens = runtime.settings.tokens_file
    assert tokens is not None
    async with client(runtime.address) as admin:
        for start in range(0, 600, 10):  # more than the windows and buffers between them
            await asyncio.gather(
                *(
                    admin.RecordOptIn(opt_in(f"+1415556{i:04d}", "acme", "promo", clock.now))
                    for i in range(start, start + 10)
                )
            )
    small_window = [("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)]
    async with grpc.aio.insecure_channel(runtime.address, options=small_window) as channel:
        stream = api_grpc.ConsentServiceStub(channel).WatchConsentChanges(
            api.WatchConsentChangesRequest(brand="acme"),  # from the ledger's start
            metadata=[("authorization", "Bearer acme-secret")],
        )
        first = await asyncio.wait_for(stream.read(), 20)  # then reads nothing more
        assert first.event.event.brand == "acme"
        await asyncio.sleep(1)
        assert runtime.metrics.watchers == 1
        entries = json.loads(tokens.read_text())["tokens"]
        rewrite(tokens, json.dumps({"tokens": [e for e in entries if e["name"] != "acme-app"]}))
        await eventually(runtime.address, "acme-secret", grpc.StatusCode.UNAUTHENTICATED)
        await asyncio.sleep(0.5)
        received = 1
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            while True:
                try:
                    got = await asyncio.wait_for(stream.read(), 20)
                except TimeoutError:
                    pytest.fail(f"no status came after {received} changes")
                if got is grpc.aio.EOF:
                    break
                received += 1
    assert received < 600, "the server sent everything: it never waited for the client"
    assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED, (received, ended.value)
    assert runtime.metrics.watchers == 0
