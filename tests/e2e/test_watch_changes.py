"""WatchConsentChanges through the real server, on the real broker and database.

A watcher that disconnects and resumes from the last token it got receives every
change of its brand exactly once, each number's in ledger order; another brand's
changes never reach it, and another brand's token cannot watch. A watcher that
stops reading holds the server back rather than letting it buffer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import consent_service_pb2_grpc as api_grpc

from ledger.ports import ConsistencyToken
from services.bootstrap import Runtime
from tests.e2e.harness import (
    TOKENS,
    client,
    define,
    held_info,
    inbound,
    kafka_settings,
    now,
    opt_in,
    opt_out,
    sent,
    service_settings,
    status_details,
    ts,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

WATCH = "/consent.v1.ConsentService/WatchConsentChanges"


@pytest.fixture
async def runtime(serve) -> Runtime:
    at = now() - timedelta(days=1)
    campaigns = [define(b, c, at) for b in ("acme", "globex") for c in ("promo", "news")]
    return await serve(name="watch", campaigns=campaigns)


def watch(
    channel: grpc.aio.Channel, who: str = "acme-app", **fields: Any
) -> grpc.aio.UnaryStreamCall:
    stub = api_grpc.ConsentServiceStub(channel)
    request = api.WatchConsentChangesRequest(**{"brand": "acme", **fields})
    return stub.WatchConsentChanges(
        request, metadata=[("authorization", f"Bearer {TOKENS[who][0]}")], timeout=60
    )


async def take(
    call: grpc.aio.UnaryStreamCall, n: int, wait: float = 20
) -> list[api.WatchConsentChangesResponse]:
    """The next ``n`` changes of the stream, or fail after ``wait`` seconds."""
    got = []
    async with asyncio.timeout(wait):
        while len(got) < n:
            change = await call.read()
            assert change is not grpc.aio.EOF, "the stream ended"
            got.append(change)
    return got


class Watcher:
    """Reads a stream into a queue as it comes, so that a test can wait for changes
    with a timeout (a timed-out ``read`` would cancel the whole call)."""

    def __init__(self, call: grpc.aio.UnaryStreamCall) -> None:
        self.call = call
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            async for change in self.call:
                await self.queue.put(change)
        except BaseException as exc:  # handed to the test, which raises it
            await self.queue.put(exc)

    async def take(self, n: int, wait: float = 20) -> list[api.WatchConsentChangesResponse]:
        got = []
        async with asyncio.timeout(wait):
            while len(got) < n:
                item = await self.queue.get()
                if isinstance(item, BaseException):
                    raise item
                got.append(item)
        return got

    async def nothing_more(self, wait: float = 1.0) -> None:
        """The stream sends nothing within ``wait`` seconds (and stays open)."""
        await asyncio.sleep(wait)
        assert self.queue.empty(), f"an unexpected change: {self.queue.get_nowait()}"

    def close(self) -> None:
        self.call.cancel()
        self.task.cancel()


def phone(n: int) -> str:
    return f"+1415555{n:04d}"


async def writes(admin: Any, brand: str, phones: Sequence[str], rounds: int) -> list[list[str]]:
    """Per round, per phone: an opt-in to promo, then (odd rounds) an opt-out of it,
    and a message sent (no change of consent). The ids of the changes, in order."""
    at = now() - timedelta(hours=1)
    ids: list[list[str]] = []
    for r in range(rounds):
        when = at + timedelta(minutes=r)

        async def one(p: str, r: int, when: datetime) -> list[str]:
            done = list((await admin.RecordOptIn(opt_in(p, brand, "promo", when))).event_ids)
            await admin.RecordMessageSent(sent(p, brand, "promo", when + timedelta(seconds=10)))
            if r % 2:
                out = await admin.RecordOptOut(
                    opt_out(p, brand, "promo", when + timedelta(seconds=20))
                )
                done += out.event_ids
            return done

        ids.append(
            [i for found in await asyncio.gather(*(one(p, r, when) for p in phones)) for i in found]
        )
    return ids


def by_phone(changes: Sequence[api.WatchConsentChangesResponse]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for c in changes:
        out.setdefault(c.event.event.phone, []).append(c.event.event.event_id)
    return out


def in_ledger_order(changes: Sequence[api.WatchConsentChangesResponse]) -> bool:
    """Each partition's changes come in offset order (so each number's do)."""
    last: dict[int, int] = {}
    for c in changes:
        if c.event.offset <= last.get(c.event.partition, -1):
            return False
        last[c.event.partition] = c.event.offset
    return True


async def test_a_watcher_that_resumes_gets_every_change_once_in_order(runtime):
    phones = [phone(100 + n) for n in range(12)]
    async with client(runtime.address) as admin:
        first = await writes(admin, "acme", phones, 4)
        await writes(admin, "globex", phones[:4], 2)  # never seen by acme's watcher
        async with grpc.aio.insecure_channel(runtime.address) as channel:
            call = watch(channel)
            before = await take(call, 25)
            call.cancel()  # the client goes away mid-way
        later = await writes(admin, "acme", phones, 2)
        async with grpc.aio.insecure_channel(runtime.address) as channel:
            watcher = Watcher(watch(channel, resume_token=before[-1].resume_token))
            expected = [i for r in first + later for i in r]
            after = await watcher.take(len(expected) - len(before))
            await watcher.nothing_more()
            # and it follows what comes next, as it comes
            live = await admin.RecordOptOut(opt_out(phones[0], "acme", None, now()))
            (followed,) = await watcher.take(1)
            watcher.close()

    got = before + after
    ids = [c.event.event.event_id for c in got]
    assert len(ids) == len(set(ids)), "a change came twice"
    assert set(ids) == set(expected)
    assert followed.event.event.event_id == live.event_ids[0]
    assert followed.event.event.event_type == "ConsentRevoked"
    assert not followed.event.event.campaign  # every campaign of the brand
    assert {c.event.event.brand for c in got} == {"acme"}
    assert {c.event.event.event_type for c in got} == {"ConsentGranted", "ConsentRevoked"}
    assert in_ledger_order(got)
    # each number's changes in the order they were written: grant, then the opt-out
    written = {p: [] for p in phones}
    for r in first + later:
        for i in r:
            written[next(c.event.event.phone for c in got if c.event.event.event_id == i)].append(i)
    assert by_phone(got) == written
    # each token resumes after its change: from the 10th, the 11th on come again
    async with grpc.aio.insecure_channel(runtime.address) as channel:
        call = watch(channel, resume_token=got[9].resume_token)
        again = await take(call, len(got) - 10)
        call.cancel()
    assert sorted(c.event.event.event_id for c in again) == sorted(ids[10:])


async def test_a_watch_of_one_campaign_gets_the_opt_outs_of_the_others(runtime):
    """Under the revoke-all rule (a brand's setting, or every brand's from 2027-01-31)
    a STOP to news ends promo's consent too, and CanSend denies promo; a watcher of
    promo alone never heard of it and kept the number opted in."""
    p = phone(300)
    at = now() - timedelta(hours=1)
    async with client(runtime.address) as admin:
        start = await admin.RecordOptIn(opt_in(p, "acme", "promo", at))
        await admin.RecordOptIn(opt_in(p, "acme", "news", at))
        await admin.SetBrandPolicy(
            api.SetBrandPolicyRequest(request_id=uuid.uuid4().hex, brand="acme", revoke_all=True)
        )
        stop = await admin.RecordOptOut(opt_out(p, "acme", "news", now()))
        check = await admin.CanSend(
            api.CanSendRequest(
                phone=p, brand="acme", campaign="promo", at_least_as_fresh=stop.consistency_token
            )
        )
    assert check.reason == api.REASON_REVOKED_BRAND_WIDE
    async with grpc.aio.insecure_channel(runtime.address) as channel:
        watcher = Watcher(watch(channel, campaign="promo", resume_token=start.consistency_token))
        (change,) = await watcher.take(1)
        await watcher.nothing_more(0.5)  # not the opt-in to news
        watcher.close()
    assert change.event.event.event_id == stop.event_ids[0]
    assert change.event.event.campaign == "news"


async def test_a_watch_of_one_campaign_gets_a_hold_of_another(runtime):
    """An opt-out of news refused for a detail is held for review under news, and the
    hold denies promo too; a watcher of promo alone never heard of it and kept the
    number opted in, where CanSend said no."""
    p = phone(310)
    at = now() - timedelta(hours=1)
    async with client(runtime.address) as admin:
        start = await admin.RecordOptIn(opt_in(p, "acme", "promo", at))
        await admin.RecordOptIn(opt_in(p, "acme", "news", at))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await admin.RecordOptOut(opt_out(p, "acme", "news", now(), text="STOP\0"))
        held = held_info(caught.value)
        assert held is not None
        check = await admin.CanSend(
            api.CanSendRequest(
                phone=p,
                brand="acme",
                campaign="promo",
                at_least_as_fresh=held["consistency_token"],
            )
        )
    assert check.reason == api.REASON_REVOCATION_PENDING_REVIEW
    async with grpc.aio.insecure_channel(runtime.address) as channel:
        watcher = Watcher(watch(channel, campaign="promo", resume_token=start.consistency_token))
        (change,) = await watcher.take(1)
        await watcher.nothing_more(0.5)  # not the opt-in to news
        watcher.close()
    assert change.event.event.event_id == held["candidate_event_id"]
    assert change.event.event.campaign == "news"


async def test_every_brands_watch_gets_a_stop_to_a_number_no_campaign_sends_from(runtime):
    """A STOP to a number no campaign sends from is held under brand "*": it denies
    every brand's sends to the phone until resolved, yet no brand's watcher heard of
    it, and kept the number opted in where CanSend said no. Each brand's watch now
    gets the hold, what the person wrote left sealed, and nothing else of "*"."""
    p = phone(320)
    at = now() - timedelta(hours=1)
    async with client(runtime.address) as admin:
        start = await admin.RecordOptIn(opt_in(p, "acme", "promo", at))
        stop = await admin.HandleInboundMessage(inbound(p, "+12125559999", "STOP", now()))
        check = await admin.CanSend(
            api.CanSendRequest(
                phone=p, brand="acme", campaign="promo", at_least_as_fresh=stop.consistency_token
            )
        )
    assert not check.allowed
    (hold,) = check.evidence_event_ids
    async with grpc.aio.insecure_channel(runtime.address) as channel:
        watchers = [
            Watcher(watch(channel, who, resume_token=start.consistency_token, **fields))
            for who, fields in [
                ("acme-app", {"campaign": "promo"}),
                ("acme-app", {"include_messages": True}),
                ("globex-app", {"brand": "globex"}),
            ]
        ]
        for watcher in watchers:
            (change,) = await watcher.take(1)
            await watcher.nothing_more(0.5)  # not the text itself
            watcher.close()
            assert change.event.event.event_id == hold
            assert change.event.event.event_type == "RevocationCandidateFlagged"
            assert change.event.event.brand == "*"
            assert not change.event.event.revocation_candidate_flagged.text
            assert "text" in change.event.event.sealed.fields


async def test_the_filters_choose_what_comes(runtime):
    p = phone(200)
    at = now() - timedelta(hours=1)
    async with client(runtime.address) as admin:
        start = await admin.RecordOptIn(opt_in(phone(201), "acme", "news", at))
        promo = await admin.RecordOptIn(opt_in(p, "acme", "promo", at))
        news = await admin.RecordOptIn(opt_in(p, "acme", "news", at))
        everything = await admin.RecordOptOut(opt_out(p, "acme", None, at + timedelta(minutes=1)))
        age = await admin.RecordAgeVerification(
            api.RecordAgeVerificationRequest(
                request_id=uuid.uuid4().hex,
                phone=p,
                brand="acme",
                method="id_scan",
                verified_21_plus=True,
                occurred_at=ts(at),
            )
        )
        message = await admin.RecordMessageSent(
            sent(p, "acme", "promo", at + timedelta(seconds=5), message_id="SM-filters")
        )
    after_start = start.consistency_token  # a write's token: start after that write
    async with grpc.aio.insecure_channel(runtime.address) as channel:
        watchers = {
            "promo": Watcher(watch(channel, campaign="promo", resume_token=after_start)),
            "all": Watcher(watch(channel, include_messages=True, resume_token=after_start)),
        }
        got = {k: await w.take({"promo": 3, "all": 5}[k]) for k, w in watchers.items()}
        for w in watchers.values():
            await w.nothing_more(0.5)
            w.close()
    ids = {k: {c.event.event.event_id for c in v} for k, v in got.items()}
    assert ids["promo"] == {*promo.event_ids, *everything.event_ids, *age.event_ids}
    assert ids["all"] == {
        *promo.event_ids,
        *news.event_ids,
        *everything.event_ids,
        *age.event_ids,
        *message.event_ids,
    }


async def test_from_now_starts_after_what_the_view_has_applied(runtime):
    async with client(runtime.address) as admin:
        old = await admin.RecordOptIn(opt_in(phone(300), "acme", "promo", now()))
        assert await runtime.guard.wait_for_token(ConsistencyToken.decode(old.consistency_token))
        async with grpc.aio.insecure_channel(runtime.address) as channel:
            watcher = Watcher(watch(channel, from_now=True))
            await watcher.nothing_more(0.5)
            new = await admin.RecordOptIn(opt_in(phone(301), "acme", "promo", now()))
            (change,) = await watcher.take(1)
            watcher.close()
    assert list(new.event_ids) == [change.event.event.event_id]
    # its token is a consistency token: a read with it sees the change
    async with client(runtime.address, "acme-app") as acme:
        read = await acme.ListEvents(
            api.ListEventsRequest(
                phone=phone(301), brand="acme", at_least_as_fresh=change.resume_token
            )
        )
    assert [e.event.event_id for e in read.events] == list(new.event_ids)


async def refused(call: grpc.aio.UnaryStreamCall) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await take(call, 1)
    return caught.value


async def test_a_watch_is_scoped_and_checked_like_every_read(runtime):
    async with client(runtime.address) as admin:
        await admin.RecordOptIn(opt_in(phone(400), "acme", "promo", now()))
    async with grpc.aio.insecure_channel(runtime.address) as channel:
        err = await refused(watch(channel, "globex-app"))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        err = await refused(watch(channel, "acme-checker"))  # no audit scope
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        stub = api_grpc.ConsentServiceStub(channel)
        err = await refused(stub.WatchConsentChanges(api.WatchConsentChangesRequest(brand="acme")))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        for fields, field in [
            ({"resume_token": "not-a-token"}, "resume_token"),
            ({"resume_token": "subscribers:0:-1"}, "resume_token"),
            ({"resume_token": "ledger:0:1"}, "resume_token"),
            ({"resume_token": "subscribers:0:1", "from_now": True}, "from_now"),
            ({"brand": "acme\n"}, "brand"),
            ({"brand": ""}, "brand"),
            ({"campaign": "promo\x00"}, "campaign"),
        ]:
            err = await refused(watch(channel, "admin", **fields))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, fields
            assert field in [f for f, _ in status_details(err)], fields
        raw = channel.unary_stream(WATCH, request_serializer=None, response_deserializer=None)
        call = raw(b"\xff\xff\xff", metadata=[("authorization", f"Bearer {TOKENS['admin'][0]}")])
        err = await refused(call)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        # a brand's own token works, and sees only its brand
        (change,) = await take(watch(channel), 1)
        assert change.event.event.brand == "acme"
    assert runtime.metrics.watchers == 0 or await _no_watchers(runtime)


async def test_a_token_past_the_ledgers_end_is_refused_not_followed(runtime):
    """A token of another ledger (another cluster, a topic prefix, a typo) that names
    an offset the ledger has not reached was taken as it was: the stream started
    there, and every change of that partition until the ledger got there, a STOP
    among them, never came. It is refused, naming the field; so is a partition the
    ledger lacks. A write's own token, ahead of the view for a moment, still works."""
    p = phone(600)
    async with client(runtime.address) as admin:
        written = await admin.RecordOptIn(opt_in(p, "acme", "promo", now() - timedelta(hours=1)))
    ((_, partition),) = [
        key for key in ConsistencyToken.decode(written.consistency_token).offsets
        if key[0].value == "subscribers"
    ]  # fmt: skip
    async with grpc.aio.insecure_channel(runtime.address) as channel:
        for token in [
            f"subscribers:{partition}:1000",
            "subscribers:4:0",
            "subscribers:0:0,campaigns:0:900",
        ]:
            call = watch(channel, resume_token=token)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async with asyncio.timeout(5):
                    await call.read()
            err = caught.value
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (token, err)
            assert [f for f, _ in status_details(err)] == ["resume_token"], token
            assert "past the ledger's end" in err.details(), err.details()
        watcher = Watcher(watch(channel, resume_token=written.consistency_token))
        async with client(runtime.address) as admin:
            stop = await admin.RecordOptOut(opt_out(p, "acme", "promo", now()))
        (change,) = await watcher.take(1)
        watcher.close()
    assert change.event.event.event_id == stop.event_ids[0]


async def _no_watchers(runtime: Runtime) -> bool:
    async with asyncio.timeout(5):
        while runtime.metrics.watchers:
            await asyncio.sleep(0.05)
    return True


async def test_a_watcher_that_stops_reading_holds_the_server_back(runtime):
    """The server hands gRPC a change only when the client's flow-control window has
    room: while the client does not read, what the server has taken from the view
    stays far below what was written, and nothing is lost once it reads again."""
    count = 2000
    phones = [phone(1000 + n) for n in range(count)]
    at = now() - timedelta(hours=1)
    # no window growth by bandwidth probing: the client's window stays 64 KiB
    options = [("grpc.http2.bdp_probe", 0)]
    async with (
        client(runtime.address) as admin,
        grpc.aio.insecure_channel(runtime.address, options=options) as channel,
    ):
        first = await admin.RecordOptIn(opt_in(phone(999), "acme", "promo", at))
        call = watch(channel)
        await take(call, 1)
        streamed = runtime.metrics.changes_streamed
        written: list[str] = []
        for start in range(0, count, 100):
            done = await asyncio.gather(
                *(
                    admin.RecordOptIn(opt_in(p, "acme", "promo", at))
                    for p in phones[start : start + 100]
                )
            )
            written += [i for d in done for i in d.event_ids]
        last = ConsistencyToken.decode(done[-1].consistency_token)
        assert await runtime.guard.wait_for_token(last, timeout=30)
        await asyncio.sleep(2)  # time enough for a server that does not wait to send all
        held = runtime.metrics.changes_streamed - streamed
        assert held < count / 4, f"the server took {held} of {count} changes unread"
        got = await take(call, count, wait=60)
        call.cancel()
    ids = [c.event.event.event_id for c in got]
    assert len(ids) == len(set(ids)) and set(ids) == set(written)
    assert in_ledger_order(got)
    assert first.event_ids[0] not in ids


async def test_a_stopping_server_ends_its_streams_at_once_to_be_resumed(
    tmp_path, postgres_dsn, kafka_bootstrap
):
    """A watcher would hold a stopping server for its whole grace period; the server
    ends the stream at once, UNAVAILABLE, and the client resumes from its token."""
    prefix = f"watch-{uuid.uuid4().hex[:8]}."
    settings = service_settings(
        tmp_path, postgres_dsn, kafka=kafka_settings(kafka_bootstrap, prefix)
    )
    settings = dataclasses.replace(settings, shutdown_grace=20)
    runtime = Runtime(settings)
    await runtime.start()
    stopped: float | None = None
    try:
        async with client(runtime.address) as admin:
            w = await admin.DefineCampaign(define("acme", "promo", now() - timedelta(days=1)))
            token = ConsistencyToken.decode(w.consistency_token)
            assert await runtime.guard.wait_for_token(token, timeout=30)
            await admin.RecordOptIn(opt_in(phone(500), "acme", "promo", now()))
        async with grpc.aio.insecure_channel(runtime.address) as channel:
            watcher = Watcher(watch(channel))
            await watcher.take(1)
            started = time.monotonic()
            await runtime.stop()
            stopped = time.monotonic() - started
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await watcher.take(1)
    finally:
        if stopped is None:
            await runtime.stop()
    assert stopped < 5, f"the stop took {stopped:.1f} s of its 20 s grace"
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "resume_token" in (ended.value.details() or "")
