"""One reading of every reply, through the real gRPC server on the real Kafka
ledger and PostgreSQL view: the texts a person sends record the same facts
however fast they come and whichever instance reads them, and a START resumes
only the campaign whose number it was sent to."""

from __future__ import annotations

import asyncio
import functools
import uuid
from datetime import datetime, timedelta
from typing import Any

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api

from ledger.ports import ConsistencyToken, Stream
from services.bootstrap import Runtime
from tests.e2e.harness import (
    Client,
    client,
    define,
    inbound,
    kafka_settings,
    noon_in_los_angeles,
    opt_in,
    sends_from,
    sent,
    service_settings,
)
from tests.e2e.test_appended_once import stored_in

pytestmark = pytest.mark.asyncio(loop_scope="session")

PROMO_NUMBER = "+12125550140"
ALERTS_NUMBER = "+12125550141"
NUMBERS = {"promo": PROMO_NUMBER, "alerts": ALERTS_NUMBER}


@pytest.fixture
async def instances(tmp_path, postgres_dsn, kafka_bootstrap):
    """Two instances on one Kafka ledger and one view (one projector group), each
    campaign of acme with a number of its own."""
    when = noon_in_los_angeles()
    prefix = f"inb-{uuid.uuid4().hex[:8]}."
    group = f"group-{uuid.uuid4().hex[:8]}"
    runtimes = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            settings = service_settings(
                tmp_path / name, postgres_dsn, kafka=kafka_settings(kafka_bootstrap, prefix),
                group=group,
            )  # fmt: skip
            runtime = Runtime(settings, clock=lambda: when)
            await runtime.start()
            runtimes.append(runtime)
        async with client(runtimes[0].address) as admin:
            for campaign, number in NUMBERS.items():
                w = await admin.DefineCampaign(
                    define("acme", campaign, when - timedelta(days=1), [number])
                )
        for runtime in runtimes:
            assert await runtime.guard.wait_for_token(ConsistencyToken.decode(w.consistency_token))
        yield runtimes, when
    finally:
        for runtime in runtimes:
            await runtime.stop()


SEQUENCE = [
    ("promo", "STOPALL"),
    ("promo", "START"),
    ("promo", "STOP"),
    ("alerts", "START"),
    ("alerts", "STOP"),
    ("promo", "START"),
    ("alerts", "STOPALL"),
    ("alerts", "UNSTOP"),
]


async def facts(c: Client, phone: str, token: str) -> list[tuple[str, str, str]]:
    """What the ledger recorded about ``phone``, without what differs between phones
    and requests (ids, message ids): each fact's type, campaign and text."""
    listed = await c.ListEvents(
        api.ListEventsRequest(phone=phone, brand="acme", page_size=1000, at_least_as_fresh=token)
    )
    out = []
    for recorded in listed.events:
        e = recorded.event
        said = e.inbound_message_received.body if e.HasField("inbound_message_received") else ""
        out.append((e.event_type, e.campaign, said))
    return out


async def standing(c: Client, phone: str, token: str) -> dict[str, tuple[bool, int]]:
    answers = {}
    for campaign in NUMBERS:
        r = await c.CanSend(
            api.CanSendRequest(
                phone=phone, brand="acme", campaign=campaign, at_least_as_fresh=token
            )
        )
        answers[campaign] = (r.allowed, r.reason)
    return answers


async def run(
    writers: list[Client], phone: str, when: datetime, *, slow: bool
) -> tuple[list[int], str]:
    """Opt ``phone`` in to both campaigns, then send ``SEQUENCE``, each text after the
    one before it was answered, alternating between ``writers``. Slow: each next
    write also waits until the view has applied the one before (a CanSend with its
    token). The replies owed and the last write's token."""
    token = ""

    async def settle() -> None:
        if slow:
            await standing(writers[0], phone, token)

    for i, campaign in enumerate(NUMBERS):
        w = await writers[i % len(writers)].RecordOptIn(
            opt_in(phone, "acme", campaign, when - timedelta(minutes=30))
        )
        token = w.consistency_token
        await settle()
    replies = []
    for i, (campaign, body) in enumerate(SEQUENCE):
        at = when - timedelta(minutes=20) + timedelta(seconds=i)
        r = await writers[i % len(writers)].HandleInboundMessage(
            inbound(phone, NUMBERS[campaign], body, at)
        )
        replies.append(r.reply)
        token = r.consistency_token
        await settle()
    return replies, token


async def test_the_same_texts_record_the_same_facts_however_fast_they_come(instances):
    (a, b), when = instances
    async with client(a.address, "acme-app") as ca, client(b.address, "acme-app") as cb:
        slow_phone, fast_phone, mixed_phone = "+14155552731", "+14155552732", "+14155552733"
        slow, slow_token = await run([ca], slow_phone, when, slow=True)
        fast, fast_token = await run([ca], fast_phone, when, slow=False)
        # Through two instances in turn: each reads what the other acknowledged.
        mixed, mixed_token = await run([ca, cb], mixed_phone, when, slow=False)

        expected = await facts(ca, slow_phone, slow_token)
        assert await facts(ca, fast_phone, fast_token) == expected
        assert await facts(cb, mixed_phone, mixed_token) == expected
        assert fast == slow and mixed == slow
        assert slow.count(api.REPLY_KIND_OPT_IN_CONFIRMATION) == 4
        final = await standing(ca, slow_phone, slow_token)
        assert await standing(ca, fast_phone, fast_token) == final
        assert await standing(cb, mixed_phone, mixed_token) == final
        # The last STOPALL, then UNSTOP to alerts' number: alerts is back, promo is not.
        assert final["alerts"][0] and not final["promo"][0]


async def test_a_start_after_stopall_resumes_only_the_campaign_it_was_sent_to(instances):
    (a, _), when = instances
    phone = "+14155552741"
    async with client(a.address, "acme-app") as c:
        for campaign in NUMBERS:
            await c.RecordOptIn(opt_in(phone, "acme", campaign, when - timedelta(minutes=30)))
        stop = await c.HandleInboundMessage(
            inbound(phone, ALERTS_NUMBER, "STOPALL", when - timedelta(minutes=9))
        )
        await standing(c, phone, stop.consistency_token)  # the START reads the STOPALL
        start = await c.HandleInboundMessage(
            inbound(phone, PROMO_NUMBER, "START", when - timedelta(minutes=8))
        )
        assert start.reply == api.REPLY_KIND_OPT_IN_CONFIRMATION and start.campaign == "promo"
        answers = await standing(c, phone, start.consistency_token)
        assert answers["promo"] == (True, api.REASON_CONSENT_ACTIVE)
        assert answers["alerts"] == (False, api.REASON_REVOKED_BRAND_WIDE)
        resumed = [f for f in await facts(c, phone, start.consistency_token) if "Resumed" in f[0]]
        assert resumed == [("ConsentResumed", "promo", "")]


async def test_a_start_with_no_consent_to_resume_owes_no_reply_and_allows_nothing(instances):
    """Nor does its retry on either instance, after an opt-in and a STOP gave it
    something to resume: the first answer stands."""
    (a, b), when = instances
    phone = "+14155552742"
    async with client(a.address, "acme-app") as c, client(b.address, "acme-app") as cb:
        await c.RecordOptIn(opt_in(phone, "acme", "alerts", when - timedelta(minutes=30)))
        text = inbound(phone, PROMO_NUMBER, "START", when - timedelta(minutes=8))
        start = await c.HandleInboundMessage(text)
        assert start.reply == api.REPLY_KIND_NONE and start.notes
        answers = await standing(c, phone, start.consistency_token)
        assert not answers["promo"][0] and answers["alerts"][0]

        await c.RecordOptIn(opt_in(phone, "acme", "promo", when - timedelta(minutes=7)))
        stop = await c.HandleInboundMessage(
            inbound(phone, PROMO_NUMBER, "STOP", when - timedelta(minutes=6))
        )
        await standing(cb, phone, stop.consistency_token)
        for caller in (c, cb):
            again = await caller.HandleInboundMessage(text)
            assert list(again.event_ids) == list(start.event_ids)
            assert again.reply == api.REPLY_KIND_NONE, again


async def test_a_stop_retried_after_its_number_moved_records_no_other_opt_out(instances):
    """Retried on the other instance after acme moved the number to alerts, a STOP
    sent to promo recorded an opt-out of alerts too, and was answered with one more
    event id: its retry answers the first answer's facts and records nothing."""
    (a, b), when = instances
    phone = "+14155552743"
    async with (
        client(a.address, "acme-app") as c,
        client(b.address, "acme-app") as cb,
        client(a.address) as admin,
    ):
        for campaign in NUMBERS:
            await c.RecordOptIn(opt_in(phone, "acme", campaign, when - timedelta(minutes=30)))
        text = inbound(phone, PROMO_NUMBER, "STOP", when - timedelta(minutes=8))
        stop = await c.HandleInboundMessage(text)
        day_before = when - timedelta(days=1)
        promo, alerts = define("acme", "promo", day_before), define("acme", "alerts", day_before)
        await sends_from(admin, promo, [], when - timedelta(minutes=5))
        await sends_from(admin, alerts, [ALERTS_NUMBER, PROMO_NUMBER], when - timedelta(minutes=4))
        for caller in (cb, c):
            again = await caller.HandleInboundMessage(text)
            assert list(again.event_ids) == list(stop.event_ids)
            assert (again.reply, again.campaign) == (stop.reply, "promo"), again
            answers = await standing(caller, phone, again.consistency_token)
            assert answers["alerts"][0] and not answers["promo"][0], answers


async def test_texts_of_one_phone_at_once_through_two_instances_record_every_fact(instances):
    """Neither text was answered before the other was sent, so either order is
    right; the facts are the same either way, and the world order of the texts
    (their occurred_at) decides what stands."""
    (a, b), when = instances
    async with client(a.address, "acme-app") as ca, client(b.address, "acme-app") as cb:
        for round_ in range(4):
            phone = f"+1415555275{round_}"
            w = await ca.RecordOptIn(opt_in(phone, "acme", "promo", when - timedelta(minutes=30)))
            await standing(ca, phone, w.consistency_token)
            stop_at, start_at = when - timedelta(minutes=9), when - timedelta(minutes=8)
            first, second = (ca, cb) if round_ % 2 else (cb, ca)
            stop, start = await asyncio.gather(
                first.HandleInboundMessage(inbound(phone, PROMO_NUMBER, "STOPALL", stop_at)),
                second.HandleInboundMessage(inbound(phone, PROMO_NUMBER, "START", start_at)),
            )
            token = ConsistencyToken.decode(stop.consistency_token).merge(
                ConsistencyToken.decode(start.consistency_token)
            )
            recorded = await facts(ca, phone, token.encode())
            assert sorted(recorded) == sorted(
                [
                    ("ConsentGranted", "promo", ""),
                    ("InboundMessageReceived", "promo", "STOPALL"),
                    ("ConsentRevoked", "", ""),
                    ("InboundMessageReceived", "promo", "START"),
                    ("ConsentResumed", "promo", ""),
                ]
            )
            answers = await standing(ca, phone, token.encode())
            assert answers["promo"] == (True, api.REASON_CONSENT_ACTIVE)


async def test_a_text_redelivered_to_either_instance_is_recorded_once(instances):
    """A gateway redelivers a text under a new request id, perhaps to another
    instance: it was recorded again and owed its reply again. The message id names
    the text: the same words again answer the first one's facts and owe nothing;
    other words are refused naming message_id, but a STOP under it is recorded."""
    (a, b), when = instances
    phone = "+14155557310"
    async with client(a.address, "acme-app") as ca, client(b.address, "acme-app") as cb:
        await ca.RecordOptIn(opt_in(phone, "acme", "promo", when - timedelta(minutes=30)))
        help_ = inbound(phone, PROMO_NUMBER, "HELP", when - timedelta(minutes=5))
        first = await ca.HandleInboundMessage(help_)
        assert first.reply == api.REPLY_KIND_HELP
        for c in (ca, cb):
            again = api.HandleInboundMessageRequest()
            again.CopyFrom(help_)
            again.request_id = uuid.uuid4().hex
            answer = await c.HandleInboundMessage(again)
            assert list(answer.event_ids) == list(first.event_ids), answer
            assert answer.reply == api.REPLY_KIND_NONE, answer
        other = api.HandleInboundMessageRequest()
        other.CopyFrom(help_)
        other.request_id, other.body = uuid.uuid4().hex, "thanks"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await cb.HandleInboundMessage(other)
        assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert "message_id" in refused.value.details()
        other.request_id, other.body = uuid.uuid4().hex, "STOP"
        stop = await cb.HandleInboundMessage(other)
        assert stop.reply == api.REPLY_KIND_OPT_OUT_CONFIRMATION
        events = await ca.ListEvents(
            api.ListEventsRequest(
                phone=phone, brand="acme", at_least_as_fresh=stop.consistency_token
            )
        )
    received = [e for e in events.events if e.event.event_type == "InboundMessageReceived"]
    assert len(received) == 2  # the HELP once, and the STOP


OWED_ONCE = [
    ("STOP", api.REPLY_KIND_OPT_OUT_CONFIRMATION),
    ("HELP", api.REPLY_KIND_HELP),
    ("START", api.REPLY_KIND_OPT_IN_CONFIRMATION),
]


@pytest.mark.parametrize("through", [2, 1])
async def test_a_text_delivered_many_times_at_once_owes_its_reply_once(instances, through):
    """A gateway delivers one text (one provider message id, the same words) six
    times at once, under six request ids, alternating between two instances (or all
    to one). Copies that found the message id taken by a text not yet in the view
    were recorded again, the lesser harm, and each said its reply was owed again: a
    gateway trusting the answers sent two confirmations of one STOP. One answer
    owes the reply; every other copy, and every retry of one, answers the text
    recorded first with no reply owed, as it did."""
    (a, b), when = instances
    async with client(a.address, "acme-app") as ca, client(b.address, "acme-app") as cb:
        writers = [ca, cb][:through]
        for n, (body, owed) in enumerate(OWED_ONCE):
            phone = f"+141555573{through}{n}"
            w = await ca.RecordOptIn(opt_in(phone, "acme", "promo", when - timedelta(minutes=30)))
            token = w.consistency_token
            if body == "START":  # a START owes its confirmation when it resumes a consent
                stop = inbound(phone, PROMO_NUMBER, "STOP", when - timedelta(minutes=9))
                token = (await ca.HandleInboundMessage(stop)).consistency_token
            await standing(ca, phone, token)  # every instance reads the setup
            await standing(cb, phone, token)
            text = inbound(phone, PROMO_NUMBER, body, when - timedelta(minutes=5))
            copies = []
            for k in range(6):
                copy = api.HandleInboundMessageRequest()
                copy.CopyFrom(text)
                copy.request_id = f"{text.request_id}-{k}"
                copies.append(copy)
            deliveries = [(writers[k % len(writers)], copy) for k, copy in enumerate(copies)]
            first = await asyncio.gather(*(w.HandleInboundMessage(r) for w, r in deliveries))
            again = await asyncio.gather(*(w.HandleInboundMessage(r) for w, r in deliveries))
            replies = [r.reply for r in first]
            assert replies.count(owed) == 1, (body, replies)
            assert set(replies) == {owed, api.REPLY_KIND_NONE}, (body, replies)
            assert [r.reply for r in again] == replies, body
            [owing] = [list(r.event_ids) for r in first if r.reply == owed]
            assert all(list(r.event_ids) == owing for r in (*first, *again)), body
            if body == "STOP":  # the opt-out stands, however its copies were answered
                token = functools.reduce(
                    ConsistencyToken.merge,
                    (ConsistencyToken.decode(r.consistency_token) for r in first),
                )
                assert not (await standing(cb, phone, token.encode()))["promo"][0]


UNOWNED_NUMBER = "+12125550199"


@pytest.mark.parametrize("to", [PROMO_NUMBER, UNOWNED_NUMBER], ids=["owned", "unowned"])
@pytest.mark.parametrize("apart_ms", [0, 2])
async def test_a_text_delivered_to_two_instances_at_once_is_recorded_once(instances, apart_ms, to):
    """A gateway delivers a STOP to one instance and, a moment later (its answer slow
    to come), to the other under a new request id. The second found the message id
    taken by a text whose append was still on its way through the first, and
    recorded it again, in nearly every try: two opt-outs for one STOP, or (to a
    number no campaign sends from) two holds to review. It now waits for that text
    and answers as it, recording nothing."""
    (a, b), when = instances
    async with client(a.address, "acme-app") as ca, client(b.address, "acme-app") as cb:
        for n in range(6):
            phone = f"+14155574{int(to == PROMO_NUMBER)}{apart_ms}{n}"
            w = await ca.RecordOptIn(opt_in(phone, "acme", "promo", when - timedelta(minutes=30)))
            await standing(ca, phone, w.consistency_token)  # every instance reads the setup
            await standing(cb, phone, w.consistency_token)
            text = inbound(phone, to, "STOP", when - timedelta(minutes=5))
            copy = api.HandleInboundMessageRequest()
            copy.CopyFrom(text)
            copy.request_id = f"{text.request_id}-again"
            first = asyncio.ensure_future(ca.HandleInboundMessage(text))
            await asyncio.sleep(apart_ms / 1000)
            answers = await asyncio.gather(first, cb.HandleInboundMessage(copy))
            assert list(answers[0].event_ids) == list(answers[1].event_ids), answers
            replies = sorted(r.reply for r in answers)
            if to == PROMO_NUMBER:
                owed = [api.REPLY_KIND_OPT_OUT_CONFIRMATION, api.REPLY_KIND_NONE]
                assert replies == sorted(owed), replies
            token = functools.reduce(
                ConsistencyToken.merge,
                (ConsistencyToken.decode(r.consistency_token) for r in answers),
            )
            recorded = [kind for kind, _, _ in await facts(ca, phone, token.encode())]
            assert recorded.count("InboundMessageReceived") == 1, (n, recorded)
            assert recorded.count("ConsentRevoked") == int(to == PROMO_NUMBER), (n, recorded)


async def test_one_request_sent_to_two_instances_at_once_is_stored_once(instances):
    """A client sends one request (the same request id and fields) to both instances
    at once, a retry on a timeout racing its first try. The later found the request
    id taken by the other but its events not in the view, the other's append still
    on its way: it appended them again, and the topic held them twice (the view
    applied them once), in about half the tries of an opt-in and most of a STOP's.
    Each is stored once."""
    (a, b), when = instances
    async with client(a.address, "acme-app") as ca, client(b.address, "acme-app") as cb:
        for n in range(8):
            phone = f"+141555742{n}0"
            w = await ca.RecordOptIn(opt_in(phone, "acme", "promo", when - timedelta(minutes=30)))
            await standing(ca, phone, w.consistency_token)  # every instance reads the setup
            await standing(cb, phone, w.consistency_token)
            again = opt_in(phone, "acme", "alerts", when - timedelta(minutes=10))
            text = inbound(phone, PROMO_NUMBER, "STOP", when - timedelta(minutes=5))
            for rpc, request in (("RecordOptIn", again), ("HandleInboundMessage", text)):
                first, second = (ca, cb) if n % 2 else (cb, ca)
                answers = await asyncio.gather(
                    getattr(first, rpc)(request), getattr(second, rpc)(request)
                )
                assert list(answers[0].event_ids) == list(answers[1].event_ids), answers
    counts = await stored_in(a, Stream.SUBSCRIBERS)
    assert {i: k for i, k in counts.items() if k > 1} == {}


@pytest.mark.parametrize(
    "rpc, apart",
    [("RecordMessageSent", 0.1), ("RecordMessagesSent", 0.1), ("RecordMessagesSent", 0)],
)
async def test_one_send_sent_to_two_instances_at_once_is_stored_once(instances, rpc, apart):
    """One send (the same request id and fields), alone or as a batch of one, sent to
    both instances at once, the first instance's append slow to land. The later
    found the request id taken by the other and looked once: a send's claims allowed
    it no wait before its append, so it appended the send again and the topic held
    it twice (a single send in about 1 try in 160). A batch sent to both at the same
    moment was stored twice in every try: each found the request id free, and the
    one whose take found it held by the other appended all the same. Each now looks
    for the other's append as it lands, then claims its message anew before
    appending."""
    (a, b), when = instances
    assert a.usecases is not None
    ledger = a.usecases.writes.ctx.ledger
    append = ledger.append
    slow = f"slow-{uuid.uuid4().hex}"

    async def slow_to_land(events):
        if any(getattr(e, "request_id", "") == slow for e in events):
            await asyncio.sleep(0.3)  # well within a second's look
        return await append(events)

    async with client(a.address, "acme-app") as ca, client(b.address, "acme-app") as cb:
        phone = f"+1415555743{int(rpc == 'RecordMessagesSent') + int(not apart)}"
        w = await ca.RecordOptIn(opt_in(phone, "acme", "promo", when - timedelta(minutes=30)))
        await standing(ca, phone, w.consistency_token)
        await standing(cb, phone, w.consistency_token)
        one = sent(phone, "acme", "promo", when - timedelta(minutes=5), request_id=slow)
        request: Any = one
        if rpc == "RecordMessagesSent":
            message = api.SentMessage(
                phone=phone, campaign="promo", message_id=one.message_id,
                occurred_at=one.occurred_at, included_opt_out_language=True,
                identified_sender=True,
            )  # fmt: skip
            request = api.RecordMessagesSentRequest(
                request_id=slow, brand="acme", messages=[message]
            )
        ledger.append = slow_to_land
        try:
            first = asyncio.ensure_future(getattr(ca, rpc)(request))
            await asyncio.sleep(apart)  # its claims are taken; its append is on its way
            second = await getattr(cb, rpc)(request)
            answered = await first
        finally:
            ledger.append = append
    assert list(answered.event_ids) == list(second.event_ids)
    counts = await stored_in(a, Stream.SUBSCRIBERS)
    assert [counts[i] for i in answered.event_ids] == [1]


async def test_a_copy_of_a_text_whose_first_delivery_died_is_recorded_within_a_second(
    instances,
):
    """A gateway delivers a STOP to one instance, which dies between taking the
    text's message id and appending it, then to the other under a new request id.
    The copy waited the whole freshness bound (5 s here, 10 s in the fault suite)
    for the first delivery's facts, which never come, before recording its own, and
    missed its caller's deadline. It now looks for them a second at most, as a
    request's retry does, then records the STOP and owes its confirmation."""
    (a, b), when = instances
    assert a.usecases is not None
    ledger = a.usecases.writes.ctx.ledger
    append = ledger.append
    died = asyncio.Event()
    phone = "+14155557440"
    text = inbound(phone, PROMO_NUMBER, "STOP", when - timedelta(minutes=5))

    async def never_lands(events):
        if any(getattr(e, "request_id", "") == text.request_id for e in events):
            await died.wait()
            raise ConnectionError("the instance died before its append")
        return await append(events)

    async with client(a.address, "acme-app") as ca, client(b.address, "acme-app") as cb:
        w = await ca.RecordOptIn(opt_in(phone, "acme", "promo", when - timedelta(minutes=30)))
        await standing(ca, phone, w.consistency_token)
        await standing(cb, phone, w.consistency_token)
        copy = api.HandleInboundMessageRequest()
        copy.CopyFrom(text)
        copy.request_id = f"{text.request_id}-again"
        ledger.append = never_lands
        try:
            first = asyncio.ensure_future(ca.HandleInboundMessage(text))
            await asyncio.sleep(0.2)  # its message id is taken; its append never comes
            started = asyncio.get_running_loop().time()
            answered = await cb.HandleInboundMessage(copy)
            took = asyncio.get_running_loop().time() - started
            died.set()
            with pytest.raises(grpc.aio.AioRpcError):
                await first
        finally:
            ledger.append = append
        assert took < 2.5, took
        assert answered.reply == api.REPLY_KIND_OPT_OUT_CONFIRMATION
        assert not (await standing(cb, phone, answered.consistency_token))["promo"][0]
