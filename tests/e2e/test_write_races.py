"""An opt-in and an opt-out of one number, through the real gRPC server on the real
Kafka ledger and PostgreSQL: whatever order and timing they come in, once both are
acknowledged no check allows a send that the ledger's record cannot defend."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import uuid
from datetime import datetime, timedelta
from functools import partial

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb

from ledger.events import ConsentRevoked, InboundMessageReceived
from ledger.ports import ConsistencyToken, Stream
from ledger.view_keys import message_key
from services.adapters.kafka_ledger import KafkaLedger
from services.settings import FreshnessSettings
from services.usecases.writes import RESOLUTION_PREFIX
from tests.builders import proof_proto as proof
from tests.e2e.harness import (
    Clock,
    client,
    define,
    imported,
    inbound,
    kafka_settings,
    limit_subscriber_records,
    module_clock,
    opt_in,
    opt_out,
    sent,
    serving,
    ts,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

NUMBER = "+12125550177"
UNOWNED = "+12125550178"
"""A number no campaign sends from."""


@pytest.fixture(scope="module")
async def service(module_serve):
    """A service whose clock reads noon in Los Angeles (no quiet hours) an hour or
    more ahead (``module_clock``) until a test moves it, with acme's campaign "promo"
    sending from ``NUMBER``; one for the module: each test writes numbers of its own
    and moves the clock only forward, from where it finds it."""
    clock = module_clock()
    campaign = define("acme", "promo", clock.now - timedelta(days=1), [NUMBER])
    return await module_serve(name="races", clock=clock, campaigns=[campaign]), clock


@pytest.fixture(scope="module")
async def short_bound(module_serve):
    """``service`` with a freshness bound of a second, not five: for the tests that
    wait it out whole."""
    clock = module_clock()
    campaign = define("acme", "promo", clock.now - timedelta(days=1), [NUMBER])
    bound = FreshnessSettings(refresh_interval=0.05, wait_bound=1.0)
    runtime = await module_serve(name="bound", clock=clock, campaigns=[campaign], freshness=bound)
    return runtime, clock


def token(*writes) -> str:
    merged = ConsistencyToken.decode(writes[0].consistency_token)
    for w in writes[1:]:
        merged = merged.merge(ConsistencyToken.decode(w.consistency_token))
    return merged.encode()


async def allowed(c, phone: str, fresh: str) -> list[bool]:
    """The unary and the batch check's answers for ``phone``, at least as fresh as
    ``fresh``."""
    one = await c.CanSend(
        api.CanSendRequest(phone=phone, brand="acme", campaign="promo", at_least_as_fresh=fresh)
    )
    batch = await c.CanSendBatch(
        api.CanSendBatchRequest(
            brand="acme", campaign="promo", phones=[phone], at_least_as_fresh=fresh
        )
    )
    return [one.allowed, batch.decisions[0].allowed]


async def test_a_consent_stamped_ahead_of_the_clock_does_not_outrank_a_later_opt_out(service):
    """A client whose clock runs ahead records an opt-in (or a START) stamped minutes
    after now, within the skew allowed; the person opts out a second later, and that
    is acknowledged after the consent. The consent outranked the opt-out in world
    order, so every check allowed: the ledger itself shows the consent held before
    the opt-out came. A consent now takes its place when it was recorded."""
    runtime, clock = service
    when = clock.now
    ahead = when + timedelta(minutes=4)
    async with client(runtime.address, "acme-app") as c:
        phone = "+14155550171"
        granted = await c.RecordOptIn(opt_in(phone, "acme", "promo", ahead, proof=proof(ahead)))
        assert await allowed(c, phone, granted.consistency_token) == [True, True]
        stopped = await c.RecordOptOut(opt_out(phone, "acme", "promo", when + timedelta(seconds=1)))
        assert await allowed(c, phone, token(granted, stopped)) == [False, False]

        # The same through a START stamped ahead, after an earlier opt-out.
        phone = "+14155550172"
        hour_ago = when - timedelta(hours=1)
        first = await c.RecordOptIn(opt_in(phone, "acme", "promo", hour_ago))
        await c.RecordOptOut(opt_out(phone, "acme", "promo", hour_ago + timedelta(minutes=1)))
        resumed = await c.HandleInboundMessage(inbound(phone, NUMBER, "START", ahead))
        assert await allowed(c, phone, token(first, resumed)) == [True, True]
        stopped = await c.RecordOptOut(opt_out(phone, "acme", "promo", when + timedelta(seconds=1)))
        assert await allowed(c, phone, token(first, resumed, stopped)) == [False, False]


@pytest.mark.parametrize(
    "apart",
    [timedelta(0), timedelta(milliseconds=1)],
    ids=["the-same-instant", "the-opt-out-a-millisecond-later"],
)
async def test_an_opt_in_and_an_opt_out_sent_at_once_never_leave_a_number_allowed(service, apart):
    """Thirty numbers, each sent an opt-in and an opt-out at once (the opt-out at
    the same instant, or a millisecond after; of the campaign, of the whole brand,
    or a STOP texted to the campaign's number): whichever the ledger takes first,
    once both are acknowledged neither check allows any of them."""
    runtime, clock = service
    at = clock.now - timedelta(minutes=10)
    async with client(runtime.address, "acme-app") as c:
        stops = [
            lambda phone: c.RecordOptOut(opt_out(phone, "acme", "promo", at + apart)),
            lambda phone: c.RecordOptOut(opt_out(phone, "acme", None, at + apart)),
            lambda phone: c.HandleInboundMessage(inbound(phone, NUMBER, "STOP", at + apart)),
        ]

        async def race(i: int) -> tuple[str, list[bool]]:
            phone = f"+1415555{i:04d}"
            written = await asyncio.gather(
                c.RecordOptIn(opt_in(phone, "acme", "promo", at)), stops[i % 3](phone)
            )
            return phone, await allowed(c, phone, token(*written))

        first = 3000 if apart == timedelta(0) else 3100  # numbers of each case's own
        answers = await asyncio.gather(*(race(first + i) for i in range(30)))
    assert [(phone, a) for phone, a in answers if any(a)] == []


async def test_an_opt_out_texted_ahead_of_the_clock_is_confirmed_and_resumed_at_once(service):
    """A gateway whose clock runs ahead passes on a STOP: its one confirmation was
    refused ("the confirmation window ... has passed") until the STOP's time came,
    and a START the person texted a second later was outranked by it, leaving the
    number stopped. The text's facts now take their place when they are recorded."""
    runtime, clock = service
    when = clock.now
    async with client(runtime.address, "acme-app") as c:
        phone = "+14155550173"
        granted = await c.RecordOptIn(opt_in(phone, "acme", "promo", when - timedelta(hours=1)))
        stopped = await c.HandleInboundMessage(
            inbound(phone, NUMBER, "STOP", when + timedelta(minutes=2))
        )
        confirmation = await c.CanSend(
            api.CanSendRequest(
                phone=phone,
                brand="acme",
                campaign="promo",
                message_kind=lpb.MESSAGE_KIND_OPT_OUT_CONFIRMATION,
                at_least_as_fresh=token(granted, stopped),
            )
        )
        assert confirmation.allowed, confirmation.detail
        assert await allowed(c, phone, token(granted, stopped)) == [False, False]

        clock.now = when + timedelta(seconds=1)
        started = await c.HandleInboundMessage(
            inbound(phone, NUMBER, "START", when + timedelta(minutes=2, seconds=1))
        )
        assert await allowed(c, phone, token(granted, stopped, started)) == [True, True]


async def test_a_late_opt_in_stamped_ahead_does_not_undo_a_later_opt_out_stamped_ahead(service):
    """A client whose clock runs four minutes fast records a web form at its 12:04:00,
    delivered late, after the STOP it records at its 12:04:10 was acknowledged. By
    their own times the STOP is the later fact: a web form delivered late cannot undo
    an opt-out that happened after it. Both are stamped ahead of the service's clock,
    so each takes its place when recorded, and the opt-in, recorded second, outranked
    the STOP. It is refused on ``occurred_at`` instead; a consent stated after the
    STOP's own time is the person's consent after the STOP, as its time says."""
    runtime, clock = service
    async with client(runtime.address, "acme-app") as c:
        phone = "+14155550181"
        form = clock.now + timedelta(minutes=4)
        stopped = await c.RecordOptOut(
            opt_out(phone, "acme", "promo", form + timedelta(seconds=10))
        )
        clock.now += timedelta(seconds=1)  # the form comes a second after the STOP
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await c.RecordOptIn(opt_in(phone, "acme", "promo", form, proof=proof(form)))
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "occurred_at" in (refused.value.details() or "")
        assert await allowed(c, phone, token(stopped)) == [False, False]

        clock.now = form + timedelta(seconds=11)
        granted = await c.RecordOptIn(
            opt_in(phone, "acme", "promo", clock.now, proof=proof(clock.now))
        )
        assert await allowed(c, phone, token(stopped, granted)) == [True, True]


async def test_an_opt_in_stamped_ahead_long_after_an_opt_out_is_recorded(service):
    """Only an opt-out recorded within the clock skew can have said it came later."""
    runtime, clock = service
    async with client(runtime.address, "acme-app") as c:
        phone = "+14155550182"
        stopped = await c.RecordOptOut(opt_out(phone, "acme", "promo", clock.now))
        clock.now += timedelta(minutes=6)
        form = clock.now + timedelta(minutes=4)
        granted = await c.RecordOptIn(opt_in(phone, "acme", "promo", form, proof=proof(form)))
        assert await allowed(c, phone, token(stopped, granted)) == [True, True]


async def test_an_imported_opt_in_stamped_ahead_is_refused_after_an_opt_out_stamped_ahead(service):
    """The import checks its opt-ins as RecordOptIn does: the late web form of the first
    test, imported, is refused on ``occurred_at`` and the rest of the import goes on."""
    runtime, clock = service
    async with client(runtime.address, "acme-app") as c:
        phone, other = "+14155550183", "+14155550184"
        form = clock.now + timedelta(minutes=4)
        stopped = await c.RecordOptOut(
            opt_out(phone, "acme", "promo", form + timedelta(seconds=10))
        )
        clock.now += timedelta(seconds=1)
        earlier = clock.now - timedelta(minutes=1)
        late = opt_in(phone, "acme", "promo", form, "late-form", proof=proof(form))
        on_time = opt_in(other, "acme", "promo", earlier, "on-time", proof=proof(earlier))
        records = [api.ImportRecord(opt_in=late), api.ImportRecord(opt_in=on_time)]

        async def one():
            yield api.ImportConsentsRequest(records=records)

        stream = c.stub.ImportConsents(
            one(), metadata=[("authorization", f"Bearer {c.token}")], timeout=60
        )
        (answer,) = [a async for a in stream]
        assert answer.imported == 1
        (refusal,) = answer.refusals
        assert (refusal.request_id, refusal.code) == ("late-form", "INVALID_ARGUMENT")
        assert [v.field for v in refusal.violations] == ["occurred_at"]
        assert await allowed(c, phone, token(stopped)) == [False, False]


async def test_an_opt_in_stated_before_an_opt_out_stamped_ahead_cannot_outrank_it(service):
    """A client 40 s fast records an opt-out at its T+40 s; it takes its place at T.
    At T+25 s an opt-in stated T+20 s comes: not ahead, it took its place at T+20 s,
    after the opt-out, and every check allowed, though by the records' own times the
    opt-out is the person's later word. It is refused on ``occurred_at``, recorded a
    moment later or backfilled a week later, and the number stays denied; a consent
    stated after the opt-out's own time is recorded and allows."""
    runtime, clock = service
    t = clock.now
    async with client(runtime.address, "acme-app") as c:
        phone = "+14155550191"
        stopped = await c.RecordOptOut(opt_out(phone, "acme", "promo", t + timedelta(seconds=40)))
        between = t + timedelta(seconds=20)
        for now in (t + timedelta(seconds=25), t + timedelta(days=7)):
            clock.now = now
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await c.RecordOptIn(opt_in(phone, "acme", "promo", between, proof=proof(between)))
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            details = refused.value.details() or ""
            assert "occurred_at" in details
            assert (t + timedelta(seconds=40)).isoformat() in details
            assert await allowed(c, phone, token(stopped)) == [False, False]

        after = t + timedelta(seconds=41)
        granted = await c.RecordOptIn(opt_in(phone, "acme", "promo", after, proof=proof(after)))
        assert await allowed(c, phone, token(stopped, granted)) == [True, True]


async def test_a_start_texted_before_a_stop_stamped_ahead_cannot_outrank_it(service):
    """The same through texts: a gateway 40 s fast passes on a STOP at its T+40 s,
    placed at T; a START stated T+20 s, passed on at T+25 s by a gateway whose clock
    is right, resumed the consent after the STOP. It is refused on ``occurred_at``;
    a START stated after the STOP's own time resumes it."""
    runtime, clock = service
    t = clock.now
    async with client(runtime.address, "acme-app") as c:
        phone = "+14155550192"
        granted = await c.RecordOptIn(opt_in(phone, "acme", "promo", t - timedelta(hours=1)))
        stopped = await c.HandleInboundMessage(
            inbound(phone, NUMBER, "STOP", t + timedelta(seconds=40))
        )
        clock.now = t + timedelta(seconds=25)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await c.HandleInboundMessage(inbound(phone, NUMBER, "START", t + timedelta(seconds=20)))
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "occurred_at" in (refused.value.details() or "")
        assert await allowed(c, phone, token(granted, stopped)) == [False, False]

        clock.now = t + timedelta(minutes=1)
        started = await c.HandleInboundMessage(
            inbound(phone, NUMBER, "START", t + timedelta(seconds=41))
        )
        assert await allowed(c, phone, token(granted, stopped, started)) == [True, True]


async def test_an_imported_opt_in_stated_before_an_imported_opt_out_stamped_ahead_is_refused(
    service,
):
    """An import checks its opt-ins against the opt-outs imported before, as RecordOptIn
    does: an opt-out imported at T stamped T+40 s, then, in a later import, an opt-in
    stated T+20 s is refused on ``occurred_at`` and the rest of that import lands."""
    runtime, clock = service
    t = clock.now
    async with client(runtime.address, "acme-app") as c:
        phone, other = "+14155550193", "+14155550194"

        stop = opt_out(phone, "acme", "promo", t + timedelta(seconds=40), "stop-ahead")
        first = await imported(c, api.ImportRecord(opt_out=stop))
        assert (first.imported, list(first.refusals)) == (1, [])

        clock.now = t + timedelta(seconds=25)
        between = t + timedelta(seconds=20)
        late = opt_in(phone, "acme", "promo", between, "between", proof=proof(between))
        on_time = opt_in(other, "acme", "promo", between, "other", proof=proof(between))
        second = await imported(c, api.ImportRecord(opt_in=late), api.ImportRecord(opt_in=on_time))
        assert second.imported == 1
        (refusal,) = second.refusals
        assert (refusal.request_id, refusal.code) == ("between", "INVALID_ARGUMENT")
        assert [v.field for v in refusal.violations] == ["occurred_at"]
        fresh = token(first, second)
        assert await allowed(c, phone, fresh) == [False, False]
        assert await allowed(c, other, fresh) == [True, True]


@pytest.mark.parametrize("stop", ["texted", "recorded", "brand-wide"])
async def test_a_start_stamped_ahead_does_not_undo_a_later_opt_out_stamped_ahead(service, stop):
    """A gateway whose clock runs four minutes fast passes on a STOP at its 12:04:10
    (or a client records an opt-out so), and then, a second later, a START the person
    texted at its 12:03:00, delivered late. By their own times the STOP is the later
    fact; each is stamped ahead, so each took its place when recorded, and the START,
    recorded second, resumed the consent the STOP ended. It is refused on
    ``occurred_at`` as an opt-in would be; a START stated after the STOP's own time is
    the person's START after the STOP, as its time says, and its redelivery is that
    text again."""
    runtime, clock = service
    async with client(runtime.address, "acme-app") as c:
        phone = {"texted": "+14155550195", "recorded": "+14155550185"}.get(stop, "+14155550186")
        granted = await c.RecordOptIn(opt_in(phone, "acme", "promo", clock.now - timedelta(days=1)))
        ahead = clock.now + timedelta(minutes=4)
        if stop == "texted":
            stopped = await c.HandleInboundMessage(inbound(phone, NUMBER, "STOP", ahead))
        else:
            campaign = "promo" if stop == "recorded" else None
            stopped = await c.RecordOptOut(opt_out(phone, "acme", campaign, ahead))
        clock.now += timedelta(seconds=1)  # the START comes a second after the STOP
        late = inbound(phone, NUMBER, "START", ahead - timedelta(minutes=1))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await c.HandleInboundMessage(late)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "occurred_at" in (refused.value.details() or "")
        assert await allowed(c, phone, token(granted, stopped)) == [False, False]

        # The same text stated after the STOP's own time resumes.
        clock.now = ahead + timedelta(seconds=1)
        late.occurred_at.CopyFrom(ts(clock.now))
        resumed = await c.HandleInboundMessage(late)
        assert await allowed(c, phone, token(granted, stopped, resumed)) == [True, True]
        # The refused text left its message id free: the gateway's redelivery of the
        # one recorded is answered as that text, not recorded and confirmed again.
        late.request_id = uuid.uuid4().hex
        again = await c.HandleInboundMessage(late)
        assert list(again.event_ids) == list(resumed.event_ids)
        assert again.reply == api.REPLY_KIND_NONE


async def test_a_text_refused_for_a_used_request_id_leaves_its_message_id_free(service):
    """A gateway passes on a START under a request id another request used: refused
    ``ALREADY_EXISTS``, after the text took its message id for facts never written.
    Its delivery under a new request id was then read as a copy of a recording still
    on its way, held for the freshness bound and owing its own reply, and so was
    every redelivery after it. Now the refused text gives the message id up: the
    delivery recorded is that text, and its redelivery is answered as it."""
    runtime, clock = service
    async with client(runtime.address, "acme-app") as c:
        phone, used = "+14155550187", uuid.uuid4().hex
        await c.RecordOptIn(opt_in(phone, "acme", "promo", clock.now - timedelta(days=1), used))
        await c.RecordOptOut(opt_out(phone, "acme", "promo", clock.now - timedelta(hours=1)))
        text = inbound(phone, NUMBER, "START", clock.now, request_id=used)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await c.HandleInboundMessage(text)
        assert refused.value.code() is grpc.StatusCode.ALREADY_EXISTS
        assert "request_id" in (refused.value.details() or "")

        text.request_id = uuid.uuid4().hex
        first = await c.HandleInboundMessage(text)
        assert first.reply == api.REPLY_KIND_OPT_IN_CONFIRMATION
        text.request_id = uuid.uuid4().hex
        again = await c.HandleInboundMessage(text)
        assert list(again.event_ids) == list(first.event_ids)
        assert again.reply == api.REPLY_KIND_NONE


@pytest.mark.parametrize("ledger", ["kafka", "embedded"])
async def test_sends_whose_callers_gave_up_leave_their_message_ids_free(module_serve, ledger):
    """Sends and batches cancelled by their callers within their first milliseconds,
    while the view takes their ids, and never retried. The view took them all the
    same, and about two sends in five left a claim naming a send never written: the
    message sent again, corrected, under a new request id was refused
    MESSAGE_ID_REUSED for good. Now each message not recorded is recorded so, and
    one recorded is refused, as a message recorded is not changed."""
    clock = module_clock()
    campaign = define("acme", "promo", clock.now - timedelta(days=1), [])
    runtime = await module_serve(
        name=f"gave-up-{ledger}", clock=clock, campaigns=[campaign], on_kafka=ledger == "kafka"
    )
    rng, when = random.Random(21), clock.now - timedelta(hours=1)
    given: list[api.RecordMessageSentRequest] = []  # each message given up, as a send
    async with client(runtime.address, "acme-app") as c:

        async def give_up(i: int) -> None:
            phone = f"+1720555{i:04d}"
            single = sent(phone, "acme", "promo", when)
            messages = [sent(phone, "acme", "promo", when) for _ in range(3)]
            batch = api.RecordMessagesSentRequest(
                request_id=uuid.uuid4().hex,
                brand="acme",
                messages=[
                    api.SentMessage(
                        phone=m.phone, campaign="promo", message_id=m.message_id,
                        occurred_at=m.occurred_at, included_opt_out_language=True,
                        identified_sender=True,
                    )
                    for m in messages
                ],
            )  # fmt: skip
            rpc, request = (
                ("RecordMessagesSent", batch) if i % 3 == 0 else ("RecordMessageSent", single)
            )
            metadata = [("authorization", f"Bearer {c.token}")]
            call = getattr(c.stub, rpc)(request, metadata=metadata, timeout=30)
            await asyncio.sleep(rng.uniform(0, 0.02))
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await call
                return
            given.extend(messages if request is batch else [single])

        for start in range(0, 90, 6):
            await asyncio.gather(*(give_up(i) for i in range(start, start + 6)))
        await asyncio.sleep(1)  # what their callers left is done by now
        assert runtime.ledger is not None
        ends = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)
        fresh = ConsistencyToken({(Stream.SUBSCRIBERS, p): e for p, e in ends.items()}).encode()
        refused = []
        for send in given:
            listed = await c.ListEvents(
                api.ListEventsRequest(phone=send.phone, brand="acme", at_least_as_fresh=fresh)
            )
            recorded = any(
                e.event.message_sent.message_id == send.message_id for e in listed.events
            )
            send.request_id, send.included_opt_out_language = uuid.uuid4().hex, False
            try:
                await c.RecordMessageSent(send)
                assert not recorded, send.message_id
            except grpc.aio.AioRpcError as err:
                assert err.code() is grpc.StatusCode.ALREADY_EXISTS, err
                refused.append((send.message_id, recorded))
        assert len(given) > 30  # enough given up to tell
        assert all(recorded for _, recorded in refused), refused


async def test_a_text_refused_as_too_large_leaves_its_message_id_free(serve, kafka_bootstrap):
    """A text whose fact the topics refused as too large took its message id first,
    for facts never written. Once the topics took records that large, the gateway's
    redelivery was read as a copy of a recording still on its way (held for the
    freshness bound, owing its own reply), and so was every redelivery after it,
    each recorded again. Now the refused text gives the message id up, and its
    request id."""
    clock = Clock()
    settings = kafka_settings(kafka_bootstrap, f"large-texts-{uuid.uuid4().hex[:8]}.")
    await KafkaLedger(settings).ensure_topics()
    await limit_subscriber_records(settings, "2048")
    campaign = define("acme", "promo", clock.now - timedelta(days=1), [NUMBER])
    runtime = await serve(name="large-texts", clock=clock, campaigns=[campaign], kafka=settings)
    async with client(runtime.address, "acme-app") as c:
        text = inbound("+14155550188", NUMBER, "what are your hours? " + "x" * 3000, clock.now)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await c.HandleInboundMessage(text)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        # Nor does it keep its request id (it did, so the text changed under it was
        # ALREADY_EXISTS for good), as no write refused so does.
        changed = inbound(text.from_phone, NUMBER, "hours?", clock.now, text.request_id)
        assert len((await c.HandleInboundMessage(changed)).event_ids) == 1

        await limit_subscriber_records(settings, "1048588")
        text.request_id = uuid.uuid4().hex
        first = await c.HandleInboundMessage(text)
        text.request_id = uuid.uuid4().hex
        again = await c.HandleInboundMessage(text)
        assert list(again.event_ids) == list(first.event_ids)


@pytest.mark.parametrize("to", [NUMBER, UNOWNED], ids=["owned", "unowned"])
async def test_a_text_whose_message_id_a_dead_instance_took_is_recorded_once(short_bound, to):
    """An instance takes a STOP's provider message id and is killed before its append:
    the id stays taken for facts never written, through every restart. The gateway's
    delivery under a new request id is recorded (to a campaign's number once the
    freshness bound has passed, owing the one confirmation; to a number no campaign
    sends from, held for review); each later redelivery was recorded again, told to
    confirm again (a text after the STOP) or held again (one more hold to dismiss).
    Now the delivery recorded takes the message id over, and a redelivery is
    answered as it: no reply owed, nothing held again."""
    runtime, clock = short_bound
    async with client(runtime.address, "acme-app") as c:
        phone = "+14155550188" if to == NUMBER else "+14155550189"
        await c.RecordOptIn(opt_in(phone, "acme", "promo", clock.now - timedelta(days=1)))
        text = inbound(phone, to, "STOP", clock.now)
        # What the killed instance left: the message id taken for facts never written.
        key, digest = message_key(
            InboundMessageReceived(
                event_id=uuid.uuid4(),
                occurred_at=clock.now,
                phone=phone,
                brand="acme",
                message_id=text.message_id,
                to_number=to,
                body=text.body,
            )
        )
        assert runtime.usecases is not None
        view = runtime.usecases.writes.ctx.view
        await view.claim_request("acme", key, digest, [str(uuid.uuid4())])

        text.request_id = uuid.uuid4().hex
        first = await c.HandleInboundMessage(text)
        if to == NUMBER:
            assert first.reply == api.REPLY_KIND_OPT_OUT_CONFIRMATION
        text.request_id = uuid.uuid4().hex
        again = await c.HandleInboundMessage(text)
        assert list(again.event_ids) == list(first.event_ids)
        assert again.reply == api.REPLY_KIND_NONE


async def test_a_candidate_a_dead_resolution_kept_is_resolved_by_another_once_its_turn_ends(
    service,
):
    """An instance took a candidate for a resolution (its turn and its claim, in
    PostgreSQL) and was killed before appending: another reviewer's resolution is
    refused while that attempt's turn lasts (it may still append), and recorded,
    alone, once the turn has run out with nothing in the ledger."""
    runtime, clock = service
    assert runtime.usecases is not None
    view = runtime.usecases.writes.ctx.view
    phone = "+14155550190"
    async with client(runtime.address, "acme-app") as c:
        await c.RecordOptIn(opt_in(phone, "acme", "promo", clock.now - timedelta(days=1)))
        reply = inbound(phone, NUMBER, "please stop texting me", clock.now)
        candidate = (await c.HandleInboundMessage(reply)).event_ids[1]

        def resolution(reviewer: str) -> api.ResolveRevocationCandidateRequest:
            return api.ResolveRevocationCandidateRequest(
                request_id=f"r-{uuid.uuid4().hex}",
                phone=phone,
                brand="acme",
                candidate_event_id=candidate,
                resolution=lpb.CANDIDATE_RESOLUTION_DISMISSED,
                occurred_at=ts(clock.now),
                resolved_by=reviewer,
            )

        # What the killed instance left: its turn, lasting, and the candidate taken.
        said = f"{phone}\0{candidate}"
        key = f"{RESOLUTION_PREFIX}{hashlib.sha256(said.encode()).hexdigest()[:32]}"
        dead = str(uuid.uuid4())
        await view.take_append_turns([("acme", key)], dead, 60.0)
        await view.claim_request("acme", key, "dead-fingerprint", [dead])
    async with client(runtime.address) as reviewer:
        with pytest.raises(grpc.aio.AioRpcError) as live:
            await reviewer.ResolveRevocationCandidate(resolution("bob"))
        assert live.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert dead in (live.value.details() or "")

        await view.take_append_turns([("acme", key)], dead, 0.0)  # its turn runs out
        done = await reviewer.ResolveRevocationCandidate(resolution("carol"))
        with pytest.raises(grpc.aio.AioRpcError) as after:
            await reviewer.ResolveRevocationCandidate(resolution("dave"))
        assert done.event_ids[0] in (after.value.details() or "")
        history = await reviewer.ListEvents(
            api.ListEventsRequest(
                phone=phone, brand="acme", at_least_as_fresh=done.consistency_token
            )
        )
    resolved = [
        e.event.revocation_candidate_resolved.resolved_by
        for e in history.events
        if e.event.event_type == "RevocationCandidateResolved"
    ]
    assert resolved == ["carol"]


class Ticking(Clock):
    """A clock that moves on a millisecond each time it is read, as a real one moves
    on between two records of an import: the one read later is placed later."""

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


@pytest.mark.parametrize(
    "layout", ["opt-out-first", "opt-in-first", "two-messages", "two-messages-opt-in-first"]
)
async def test_an_imported_opt_in_stamped_ahead_with_its_opt_out_stamped_ahead(serve, layout):
    """An export from a platform whose clock runs four minutes fast holds a number's web
    form at its 12:03:00 and its STOP at its 12:04:00: by their own times the STOP is
    the later fact. Both are stamped ahead, so each took its place when checked, and
    the opt-in, checked after the opt-out (the next record, or the next message worked
    on at once), outranked it: the number was allowed. However the two are laid out,
    with a clock that moves on between records, the number stays denied."""
    clock = Ticking()
    campaign = define("acme", "promo", clock.now - timedelta(days=1), [NUMBER])
    runtime = await serve(name="races-import", clock=clock, campaigns=[campaign])
    async with client(runtime.address, "acme-app") as c:
        phone = "+14155550196"
        granted = await c.RecordOptIn(opt_in(phone, "acme", "promo", clock.now - timedelta(days=1)))
        form = clock.now + timedelta(minutes=3)
        late = api.ImportRecord(opt_in=opt_in(phone, "acme", "promo", form, "form"))
        stop = api.ImportRecord(
            opt_out=opt_out(phone, "acme", "promo", form + timedelta(minutes=1))
        )
        messages = {
            "opt-out-first": [[stop, late]],
            "opt-in-first": [[late, stop]],
            "two-messages": [[stop], [late]],
            "two-messages-opt-in-first": [[late], [stop]],
        }[layout]

        async def sent():
            for records in messages:
                yield api.ImportConsentsRequest(records=records)

        stream = c.stub.ImportConsents(
            sent(), metadata=[("authorization", f"Bearer {c.token}")], timeout=60
        )
        answers = [a async for a in stream]
        refusals = [
            (r.request_id, [v.field for v in r.violations]) for a in answers for r in a.refusals
        ]
        written = [a for a in answers if a.consistency_token]
        # In one message both take the message's one time and the opt-out wins the tie;
        # in two, the opt-in checked after the opt-out's message is refused on
        # ``occurred_at`` (``_consents_after_opt_outs``). Either way the opt-out is
        # imported and the number is denied.
        assert refusals in ([], [("form", ["occurred_at"])])
        assert sum(a.imported for a in answers) == 2 - len(refusals)
        assert await allowed(c, phone, token(granted, *written)) == [False, False]


async def test_a_consent_stamped_ahead_sent_with_a_later_opt_out_never_allows(serve):
    """A client whose clock runs three minutes fast sends a number's opt-in (or its
    gateway a START) and, at once, its opt-out stamped a minute after it, through one
    instance: by their own times the opt-out is the later fact. The opt-in's check
    looked for the number's opt-outs before the opt-out being appended beside it was
    in the ledger, and then took its place after it: the number was allowed. Writes
    of one number that such a check reads or answers now take turns in the process,
    so each is checked after the one before it is recorded."""
    clock = Ticking()
    campaign = define("acme", "promo", clock.now - timedelta(days=1), [NUMBER])
    runtime = await serve(name="races-at-once", clock=clock, campaigns=[campaign])
    async with client(runtime.address, "acme-app") as c:

        async def race(i: int) -> tuple[str, list[bool]]:
            phone = f"+1415557{i:04d}"
            granted = await c.RecordOptIn(
                opt_in(phone, "acme", "promo", clock.now - timedelta(days=1))
            )
            ahead = clock.now + timedelta(minutes=3)
            if i % 2:
                consent = c.HandleInboundMessage(inbound(phone, NUMBER, "START", ahead))
            else:
                consent = c.RecordOptIn(opt_in(phone, "acme", "promo", ahead, proof=proof(ahead)))
            stop = c.RecordOptOut(opt_out(phone, "acme", "promo", ahead + timedelta(minutes=1)))
            written = await asyncio.gather(stop, consent, return_exceptions=True)
            for w in written:
                if isinstance(w, grpc.aio.AioRpcError):  # the consent, refused so
                    assert w.code() is grpc.StatusCode.INVALID_ARGUMENT, w
                    assert "occurred_at" in (w.details() or "")
            recorded = [granted, *(w for w in written if not isinstance(w, BaseException))]
            return phone, await allowed(c, phone, token(*recorded))

        answers = [await race(i) for i in range(24)]
    assert [(phone, a) for phone, a in answers if any(a)] == []


@pytest.mark.parametrize("via", ["api", "texts"])
@pytest.mark.parametrize("ledger", ["kafka", "embedded"])
async def test_an_opt_out_whose_caller_gave_up_still_outranks_a_consent_sent_after(
    tmp_path, postgres_dsn, kafka_bootstrap, ledger, via
):
    """A client 4 min fast sends an opt-out (or its gateway a STOP) at its T+4 min;
    the broker is slow to acknowledge it, so the service answers "outcome unknown"
    before the caller's deadline, the record still on its way. An opt-in (a START)
    stated T+3 min, before it, then came: it was checked while the opt-out was not
    yet in the ledger, since the opt-out's turn ended with its caller's wait, and
    was recorded, answered OK, though by their times the opt-out is the later word
    (the fold lets it outrank nothing, but the client was told it stood). An opt-out
    now keeps the number's turn until its append ends: the consent is checked after
    it and refused, as one sent beside it in one process is."""
    clock = Clock()
    t = clock.now
    campaign = define("acme", "promo", t - timedelta(days=1), [NUMBER])
    bootstrap = kafka_bootstrap if ledger == "kafka" else None
    async with serving(
        tmp_path, postgres_dsn, bootstrap, name="races-gave-up", clock=clock, campaigns=[campaign]
    ) as runtime:
        assert runtime.usecases is not None
        appends = runtime.usecases.writes.ctx.ledger
        append = appends.append
        acknowledged = asyncio.Event()

        async def slow_to_acknowledge(events):
            if not any(isinstance(e, ConsentRevoked) for e in events) or acknowledged.is_set():
                return await append(events)

            async def later():
                await acknowledged.wait()
                return await append(events)

            # Handed to the producer, the records go on whether or not anyone waits.
            return await asyncio.shield(asyncio.ensure_future(later()))

        async with client(runtime.address, "acme-app") as c:
            phone = "+14155550193"
            hour_ago = t - timedelta(hours=1)
            written = [await c.RecordOptIn(opt_in(phone, "acme", "promo", hour_ago))]
            before, ahead = t + timedelta(minutes=3), t + timedelta(minutes=4)
            if via == "api":
                stop = partial(c.RecordOptOut, opt_out(phone, "acme", "promo", ahead))
                consent = partial(
                    c.RecordOptIn, opt_in(phone, "acme", "promo", before, proof=proof(before))
                )
            else:  # a START resumes only what an opt-out ended
                earlier = opt_out(phone, "acme", "promo", hour_ago + timedelta(minutes=1))
                written.append(await c.RecordOptOut(earlier))
                stop = partial(c.HandleInboundMessage, inbound(phone, NUMBER, "STOP", ahead))
                consent = partial(c.HandleInboundMessage, inbound(phone, NUMBER, "START", before))

            appends.append = slow_to_acknowledge
            with pytest.raises(grpc.aio.AioRpcError) as gave_up:
                await stop(timeout=1)
            assert gave_up.value.code() is grpc.StatusCode.UNAVAILABLE

            clock.now = t + timedelta(seconds=1)
            sent_after = asyncio.ensure_future(consent())
            await asyncio.wait({sent_after}, timeout=3)  # time to be checked, if it may
            acknowledged.set()
            written.append(await stop())  # the retry
            with pytest.raises(grpc.aio.AioRpcError) as refused:  # the opt-out is later
                await sent_after
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT, refused.value
            assert "occurred_at" in (refused.value.details() or "")
            assert await allowed(c, phone, token(*written)) == [False, False]


async def test_an_opt_out_is_confirmed_once_by_a_sender_whose_clock_runs_behind(service):
    """A STOP from a gateway whose clock runs ahead takes its place when recorded; the
    sender of its confirmation, whose clock runs 20 seconds behind, records the send
    stamped before that place. The confirmation was counted as one sent before the
    STOP, and CanSend allowed a second: one recorded after the opt-out answers it."""
    runtime, clock = service
    when = clock.now
    async with client(runtime.address, "acme-app") as c:
        phone = "+14155550174"
        granted = await c.RecordOptIn(opt_in(phone, "acme", "promo", when - timedelta(hours=1)))
        stopped = await c.HandleInboundMessage(
            inbound(phone, NUMBER, "STOP", when + timedelta(minutes=2))
        )
        clock.now = when + timedelta(seconds=2)
        confirmed = await c.RecordMessageSent(
            sent(
                phone,
                "acme",
                "promo",
                clock.now - timedelta(seconds=20),
                kind=lpb.MESSAGE_KIND_OPT_OUT_CONFIRMATION,
                included_opt_out_language=False,
                from_number=NUMBER,
            )
        )
        again = await c.CanSend(
            api.CanSendRequest(
                phone=phone,
                brand="acme",
                campaign="promo",
                message_kind=lpb.MESSAGE_KIND_OPT_OUT_CONFIRMATION,
                at_least_as_fresh=token(granted, stopped, confirmed),
            )
        )
    assert not again.allowed
    assert again.reason == api.REASON_OPT_OUT_CONFIRMATION_NOT_ALLOWED


@pytest.mark.parametrize(
    ("text", "kind"),
    [("HELP", lpb.MESSAGE_KIND_HELP_REPLY), ("START", lpb.MESSAGE_KIND_OPT_IN_CONFIRMATION)],
)
async def test_a_reply_recorded_stamped_before_its_text_answers_it(service, text, kind):
    """The same for the one reply a HELP or a START earns: texted from a gateway whose
    clock runs ahead, answered by a sender whose clock runs behind."""
    runtime, clock = service
    when = clock.now
    async with client(runtime.address, "acme-app") as c:
        phone = "+14155550175" if text == "HELP" else "+14155550176"
        writes = [await c.RecordOptIn(opt_in(phone, "acme", "promo", when - timedelta(hours=1)))]
        if text == "START":
            writes.append(await c.HandleInboundMessage(inbound(phone, NUMBER, "STOP", when)))
            clock.now = when = when + timedelta(seconds=1)
        writes.append(
            await c.HandleInboundMessage(inbound(phone, NUMBER, text, when + timedelta(minutes=2)))
        )
        clock.now = when + timedelta(seconds=2)
        writes.append(
            await c.RecordMessageSent(
                sent(
                    phone,
                    "acme",
                    "promo",
                    clock.now - timedelta(seconds=20),
                    kind=kind,
                    from_number=NUMBER,
                )
            )
        )
        again = await c.CanSend(
            api.CanSendRequest(
                phone=phone,
                brand="acme",
                campaign="promo",
                message_kind=kind,
                at_least_as_fresh=token(*writes),
            )
        )
    assert not again.allowed
    assert again.reason == api.REASON_REPLY_NOT_OWED


@pytest.mark.parametrize("first", ["single", "batch"])
async def test_a_send_slow_to_land_and_its_copy_answer_alike(service, first):
    """A RecordMessageSent and a RecordMessagesSent naming the same message (the same
    content, two request ids) at once: the one that claims the message id first is
    slow to be acknowledged. The other found the claim with nothing in the view
    after one look, appended its copy, and the ledger took the copy first; only the
    copy is a fact (one MessageSent per message id), so the slow send was answered
    with an event id no reader shows, and its retry with the copy's. The copy now
    waits, up to the freshness bound, for the claimed send to land: every answer
    and every retry names the one send recorded."""
    runtime, clock = service
    assert runtime.usecases is not None
    appends = runtime.usecases.writes.ctx.ledger
    append = appends.append
    slow = f"slow-{uuid.uuid4().hex}"

    async def slow_to_acknowledge(events):
        if any(getattr(e, "request_id", "") == slow for e in events):
            await asyncio.sleep(1)  # well within the freshness bound
        return await append(events)

    phone = "+14155550197" if first == "single" else "+14155550198"
    when = clock.now - timedelta(minutes=5)
    async with client(runtime.address, "acme-app") as c:
        granted = await c.RecordOptIn(opt_in(phone, "acme", "promo", when - timedelta(days=1)))
        single = sent(phone, "acme", "promo", when, from_number=NUMBER)
        message = api.SentMessage(
            phone=phone,
            campaign="promo",
            message_id=single.message_id,
            occurred_at=single.occurred_at,
            included_opt_out_language=True,
            identified_sender=True,
            from_number=NUMBER,
        )
        batch = api.RecordMessagesSentRequest(brand="acme", messages=[message])
        batch.request_id = uuid.uuid4().hex
        calls = [partial(c.RecordMessageSent, single), partial(c.RecordMessagesSent, batch)]
        if first == "single":
            single.request_id = slow
        else:
            batch.request_id = slow
            calls.reverse()
        appends.append = slow_to_acknowledge
        try:
            claimed = asyncio.ensure_future(calls[0]())
            await asyncio.sleep(0.3)  # its claim is taken; its append is on its way
            copy = await calls[1]()
            answered = await claimed
        finally:
            appends.append = append
        history = await c.ListEvents(
            api.ListEventsRequest(
                phone=phone, brand="acme", at_least_as_fresh=token(granted, answered, copy)
            )
        )
        retries = [await call() for call in calls]
    recorded = [e.event.event_id for e in history.events if e.event.event_type == "MessageSent"]
    assert len(recorded) == 1
    answers = [answered, copy, *retries]
    assert [list(a.event_ids) for a in answers] == [recorded] * 4
