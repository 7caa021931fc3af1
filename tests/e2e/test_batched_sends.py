"""``RecordMessagesSent`` through the real gRPC server, on the real Kafka ledger and
PostgreSQL and on the embedded default's ledger (PostgreSQL): a thousand messages
recorded in one call, listed and swept as single sends are; a bad message, too many
messages and another brand's token refused with nothing written; a retried call
writing nothing twice."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections import Counter
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import grpc
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb
from google.protobuf.duration_pb2 import Duration
from google.protobuf.json_format import MessageToDict
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from ledger.ports import ConsistencyToken, Stream
from services.adapters.kafka_ledger import KafkaLedger, topic_configs
from services.bootstrap import Runtime
from tests.e2e.harness import (
    Clock,
    client,
    define,
    inbound,
    kafka_settings,
    limit_subscriber_records,
    opt_in,
    precondition_violations,
    sent,
    serving,
    status_details,
    ts,
)
from tests.e2e.test_readme import answers, run_after_walk_through
from tests.infra.topic_configs import altered

pytestmark = pytest.mark.asyncio(loop_scope="session")

CALL = 1_000
T = TypeVar("T")


@pytest.fixture(params=["kafka", "embedded"])
async def service(request, tmp_path, postgres_dsn, kafka_bootstrap):
    """A service on the Kafka ledger, or on the embedded default's PostgreSQL ledger,
    with acme's campaign "promo" defined a day before ``when``."""
    bootstrap = kafka_bootstrap if request.param == "kafka" else None
    when = datetime.now(UTC) - timedelta(hours=1)
    campaign = define("acme", "promo", when - timedelta(days=1))
    async with serving(
        tmp_path, postgres_dsn, bootstrap, name="sends", campaigns=[campaign]
    ) as runtime:
        yield runtime, when


async def applied(runtime: Runtime, token: str) -> bool:
    """Whether the view applies ``token`` within a few of the guard's bounds: a loaded
    machine projects slowly, not wrongly."""
    for _ in range(6):
        if await runtime.guard.wait_for_token(ConsistencyToken.decode(token)):
            return True
    return False


def phone(i: int) -> str:
    return f"+1415556{i:04d}"


def message(i: int, when: datetime, **changes) -> api.SentMessage:
    fields = dict(
        phone=phone(i),
        campaign="promo",
        message_id=f"SM-{i}",
        occurred_at=ts(when),
        included_opt_out_language=True,
        identified_sender=True,
        # The token DefineCampaign answered: one the service gave.
        relied_on=api.ReliedOnAnswer(
            consistency_token="campaigns:0:1", allowed=True, reason=api.REASON_CONSENT_ACTIVE
        ),
    )
    fields.update(changes)
    return api.SentMessage(**fields)


def alone(request_id: str, m: api.SentMessage) -> api.RecordMessageSentRequest:
    """``m`` as a single send."""
    return api.RecordMessageSentRequest(
        request_id=request_id, brand="acme", phone=m.phone, campaign=m.campaign,
        message_id=m.message_id, occurred_at=m.occurred_at, relied_on=m.relied_on,
        included_opt_out_language=m.included_opt_out_language,
        identified_sender=m.identified_sender,
    )  # fmt: skip


def call(request_id: str, messages: list[api.SentMessage]) -> api.RecordMessagesSentRequest:
    return api.RecordMessagesSentRequest(request_id=request_id, brand="acme", messages=messages)


async def ledger_size(runtime: Runtime) -> int:
    ends = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)
    return sum(ends.values())


async def sweep(
    c, start: datetime, end: datetime, token: str, campaign: str = "promo"
) -> list[api.SweepCampaignResponse]:
    request = api.SweepCampaignRequest(
        brand="acme",
        campaign=campaign,
        start_time=ts(start),
        end_time=ts(end),
        at_least_as_fresh=token,
    )
    items = c.stub.SweepCampaign(
        request, metadata=[("authorization", f"Bearer {c.token}")], timeout=120
    )
    return [item async for item in items]


async def test_a_thousand_messages_are_recorded_listed_and_swept_like_single_sends(service):
    runtime, when = service
    async with client(runtime.address, "acme-app") as c:
        before = await ledger_size(runtime)
        written = await c.RecordMessagesSent(
            call("batch-1", [message(i, when) for i in range(CALL)]), timeout=60
        )
        assert len(written.event_ids) == len(set(written.event_ids)) == CALL
        assert await ledger_size(runtime) == before + CALL
        # One more message to a number no batch names, sent alone, to set beside them.
        single = await c.RecordMessageSent(
            sent(
                phone(CALL),
                "acme",
                "promo",
                when,
                "single-1",
                message_id=f"SM-{CALL}",
                relied_on=message(0, when).relied_on,
            )
        )
        token = (
            ConsistencyToken.decode(written.consistency_token)
            .merge(ConsistencyToken.decode(single.consistency_token))
            .encode()
        )

        for i in (0, 517, CALL - 1):
            listed = await c.ListEvents(
                api.ListEventsRequest(phone=phone(i), brand="acme", at_least_as_fresh=token)
            )
            (event,) = [e.event for e in listed.events]
            assert event.event_type == "MessageSent" and event.event_id == written.event_ids[i]
            assert event.message_sent.message_id == f"SM-{i}"
            assert event.message_sent.relied_on.allowed

        answered = await sweep(c, when - timedelta(minutes=1), when + timedelta(minutes=1), token)
        findings = [item.finding for item in answered if item.HasField("finding")]
        last = [item.progress for item in answered if item.HasField("progress")][-1]
        assert last.sends_judged == CALL + 1 and last.done == 1
        by_phone = {f.phone: f for f in findings}
        assert len(by_phone) == CALL + 1  # none of these numbers opted in
        alone = by_phone[phone(CALL)]
        kinds = Counter(tuple(f.kinds) for f in findings)
        assert kinds == {tuple(alone.kinds): CALL + 1}
        assert api.SWEEP_FINDING_KIND_NO_CONSENT in alone.kinds
        assert {f.event_id for f in findings} == {*written.event_ids, single.event_ids[0]}


async def test_a_retried_call_writes_nothing_twice(service):
    runtime, when = service
    async with client(runtime.address, "acme-app") as c:
        request = call("batch-retry", [message(i, when) for i in range(200)])
        first = await c.RecordMessagesSent(request)
        assert await applied(runtime, first.consistency_token)
        size = await ledger_size(runtime)
        again = await c.RecordMessagesSent(request)
        assert list(again.event_ids) == list(first.event_ids)
        assert await ledger_size(runtime) == size
        # The same messages under another request id are the same messages.
        other = await c.RecordMessagesSent(call("batch-retry-2", list(request.messages)))
        assert list(other.event_ids) == list(first.event_ids)
        assert await ledger_size(runtime) == size
        # The id reused for other messages is refused, naming the first call's events.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.RecordMessagesSent(call("batch-retry", [message(i, when) for i in range(201)]))
        assert err.value.code() is grpc.StatusCode.ALREADY_EXISTS
        assert await ledger_size(runtime) == size


def message_id_reused(err: grpc.aio.AioRpcError) -> tuple[str, dict[str, str]]:
    """An ``ALREADY_EXISTS`` for a message id: its message, and its ``ErrorInfo``'s
    metadata (the reason checked)."""
    assert err.code() is grpc.StatusCode.ALREADY_EXISTS, err
    status = rpc_status.from_call(err)
    for detail in status.details if status else []:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            assert info.reason == "MESSAGE_ID_REUSED" and info.domain == "consent-ledger"
            return err.details(), dict(info.metadata)
    raise AssertionError(f"no ErrorInfo in {err}")


async def test_a_message_id_again_saying_something_else_is_refused_not_answered_ok(service):
    """A provider message id recorded before, sent again under another request id
    with another time or flag, alone or in a batch, was answered OK with the first
    send's event id and nothing written: the sender took what it sent for what was
    recorded. Now that is ALREADY_EXISTS naming the first send's event, and within
    one call INVALID_ARGUMENT; the same message again is still answered as the
    first."""
    runtime, when = service
    async with client(runtime.address, "acme-app") as c:
        first = await c.RecordMessagesSent(call("first", [message(i, when) for i in range(3)]))
        assert await applied(runtime, first.consistency_token)
        size = await ledger_size(runtime)

        same = await c.RecordMessageSent(alone("alone-1", message(1, when)))
        assert list(same.event_ids) == [first.event_ids[1]]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            later = message(1, when, occurred_at=ts(when + timedelta(minutes=1)))
            await c.RecordMessageSent(alone("alone-2", later))
        text, info = message_id_reused(err.value)
        assert text.startswith("message_id: 'SM-1' was recorded before") and "occurred_at" in text
        assert info == {"message_id": "SM-1", "event_ids": first.event_ids[1]}

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.RecordMessagesSent(
                call("again", [message(7, when), message(2, when, identified_sender=False)])
            )
        text, info = message_id_reused(err.value)
        assert text.startswith("messages[1].message_id: 'SM-2' was recorded before"), text
        assert "identified_sender" in text and info["event_ids"] == first.event_ids[2]

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.RecordMessagesSent(
                call("twice", [message(8, when), message(8, when, campaign="other")])
            )
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert status_details(err.value) == [
            ("messages[1].message_id", "is messages[0]'s message id for this number, with"
             " another campaign"),
        ]  # fmt: skip
        assert await ledger_size(runtime) == size


def message_ids_named(err: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    """The (message id, description) of each ``ResourceInfo`` of an error."""
    status = rpc_status.from_call(err)
    named = []
    for detail in status.details if status else []:
        resource = error_details_pb2.ResourceInfo()
        if detail.Unpack(resource):
            assert resource.resource_type == "consent.v1.MessageId"
            named.append((resource.resource_name, resource.description))
    return named


async def test_a_batch_reusing_several_message_ids_is_refused_naming_every_one(service):
    """A batch whose messages reuse two message ids, each saying something else of
    its message, was refused naming only the first: the caller found the second on
    its next try. Now every one is named, in the call's order, recorded before or
    only claimed by another send; the first stays where clients read it."""
    runtime, when = service
    later = ts(when + timedelta(minutes=1))
    async with client(runtime.address, "acme-app") as c:
        first = [await c.RecordMessageSent(alone(f"one-{i}", message(i, when))) for i in (1, 2)]
        for answer in first:
            assert await applied(runtime, answer.consistency_token)
        # Claimed by a send on its way to the ledger, saying something else.
        claimed = [str(uuid.uuid4()) for _ in range(2)]
        for i, event_id in zip((4, 5), claimed, strict=True):
            await runtime.view.claim_message("acme", phone(i), f"SM-{i}", event_id, "{}")
        size = await ledger_size(runtime)
        for request_id, (a, b), ids in [
            ("reused", (1, 2), [first[0].event_ids[0], first[1].event_ids[0]]),
            ("claimed", (4, 5), claimed),
        ]:
            sends = [
                message(0, when),
                message(a, when, occurred_at=later),
                message(b, when, occurred_at=later),
            ]
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await c.RecordMessagesSent(call(request_id, sends))
            text, info = message_id_reused(err.value)
            assert info == {"message_id": f"SM-{a}", "event_ids": ids[0]}
            named = message_ids_named(err.value)
            assert [n for n, _ in named] == [f"SM-{a}", f"SM-{b}"]
            assert [d.rsplit(" ", 1)[1] for _, d in named] == ids
            said = re.findall(r"(messages\[\d+\]\.message_id): '(SM-\d+)' was (\w+) before", text)
            how = "recorded" if request_id == "reused" else "claimed"
            assert said == [
                ("messages[1].message_id", f"SM-{a}", how),
                ("messages[2].message_id", f"SM-{b}", how),
            ], text
            assert text.count("occurred_at") == 2, text
        assert await ledger_size(runtime) == size


async def test_two_sends_of_one_message_at_once_saying_different_things_are_not_both_ok(
    service,
):
    """Two sends of one provider message id at once, one minute apart in what they
    say: the later used to meet the first's claim before the first was readable, and
    was answered OK, then dropped by the projection. Now, of each pair, one is
    answered OK and is what the view holds; the other is ALREADY_EXISTS
    (``MESSAGE_ID_REUSED``) naming it. Singly and in batches."""
    runtime, when = service
    pairs = 12

    def said(i: int, k: int) -> api.SentMessage:
        return message(100 + i, when, occurred_at=ts(when + timedelta(minutes=k)))

    async with client(runtime.address, "acme-app") as c:

        async def send(i: int, k: int) -> str:
            try:
                if i % 2:
                    answer = await c.RecordMessagesSent(call(f"race-{i}-{k}", [said(i, k)]))
                else:
                    answer = await c.RecordMessageSent(alone(f"race-{i}-{k}", said(i, k)))
            except grpc.aio.AioRpcError as err:
                _, info = message_id_reused(err)
                return "refused:" + info["event_ids"]
            assert await applied(runtime, answer.consistency_token)
            return str(answer.event_ids[0])

        answers = await asyncio.gather(*(send(i, k) for i in range(pairs) for k in (0, 1)))
    for i in range(pairs):
        pair = answers[2 * i : 2 * i + 2]
        ok = [a for a in pair if not a.startswith("refused:")]
        assert len(ok) == 1, (i, pair)
        assert "refused:" + ok[0] in pair
        assert await runtime.view.message_use("acme", phone(100 + i), f"SM-{100 + i}") == ok[0]


async def test_a_bad_message_refuses_the_whole_call_naming_it_and_writes_nothing(service):
    runtime, when = service
    async with client(runtime.address, "acme-app") as c:
        size = await ledger_size(runtime)
        messages = [message(i, when) for i in range(10)]
        messages[3].phone = "+1 not a number"
        messages[7].ClearField("occurred_at")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.RecordMessagesSent(call("batch-bad", messages))
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        # By message, though the unset time is found first, as the request is read.
        assert [f for f, _ in status_details(err.value)] == [
            "messages[3].phone",
            "messages[7].occurred_at",
        ]
        # Every message naming an undefined campaign is named, not the first alone.
        messages = [message(i, when) for i in range(4)]
        messages[1].campaign = "nosuch"
        messages[2].campaign = "other"
        messages[3].campaign = "nosuch"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.RecordMessagesSent(call("batch-unknown", messages))
        assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert precondition_violations(err.value) == [
            ("messages[1].campaign", "acme/nosuch is not defined"),
            ("messages[2].campaign", "acme/other is not defined"),
            ("messages[3].campaign", "acme/nosuch is not defined"),
        ]
        assert await ledger_size(runtime) == size


async def test_a_time_days_ahead_is_named_beside_a_field_that_cannot_be_read(service):
    """A message stamped days ahead was named only when every other message could be
    read: beside one with its time unset (or an unknown kind) the refusal named that
    one alone, and the caller learned of the other on its next try. Every bad field
    is named at once, in a batch and alone, and nothing is written."""
    runtime, when = service
    ahead = ts(when + timedelta(days=3))
    async with client(runtime.address, "acme-app") as c:
        size = await ledger_size(runtime)
        messages = [message(i, when) for i in range(3)]
        messages[1].ClearField("occurred_at")
        messages[2].occurred_at.CopyFrom(ahead)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.RecordMessagesSent(call("batch-unread-and-ahead", messages))
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        named = dict(status_details(err.value))
        assert set(named) == {"messages[1].occurred_at", "messages[2].occurred_at"}, named
        assert "in the future" in named["messages[2].occurred_at"]
        single = alone("single-unread-and-ahead", message(3, when, occurred_at=ahead))
        single.kind = 77
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.RecordMessageSent(single)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert {f for f, _ in status_details(err.value)} == {"kind", "occurred_at"}
        assert await ledger_size(runtime) == size


async def loop_held_while(work: Awaitable[T], c: Any) -> tuple[T, float]:
    """``work``'s result and the longest the event loop was held while it ran. The
    service runs in this process, on this event loop: a moment the loop is held
    shows as a sleep that ends late, and another call answered late."""
    running = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    late = []
    while not running.done():
        started = loop.time()
        await asyncio.sleep(0.05)
        late.append(loop.time() - started - 0.05)
        if len(late) % 10 == 0:
            await c.CanSend(api.CanSendRequest(phone=phone(1), brand="acme", campaign="promo"))
    return await running, max(late, default=0.0)


async def dense_sends(runtime: Runtime, when: datetime, campaign: str, number: str, n: int) -> str:
    """``n`` sends to ``number`` a second apart from 40 minutes before ``when``, under
    ``campaign`` (defined here, capped at 5 a day), recorded in calls of a thousand;
    the token of the last call."""
    cap = lpb.FrequencyCap(limit=5, window=Duration(seconds=86400))
    async with client(runtime.address) as admin:
        defined = await admin.DefineCampaign(
            define("acme", campaign, when - timedelta(days=1), frequency_caps=[cap])
        )
    assert await applied(runtime, defined.consistency_token)
    start = when - timedelta(minutes=40)
    sends = [
        message(0, start + timedelta(seconds=i), phone=number, campaign=campaign,
                message_id=f"SM-{campaign}-{i}")
        for i in range(n)
    ]  # fmt: skip
    async with client(runtime.address, "acme-app") as c:
        await c.RecordOptIn(opt_in(number, "acme", campaign, start - timedelta(hours=1)))
        for first in range(0, n, CALL):
            part = sends[first : first + CALL]
            written = await c.RecordMessagesSent(call(f"{campaign}-{first}", part), timeout=60)
    assert await applied(runtime, written.consistency_token)
    return written.consistency_token


async def test_a_number_s_packet_of_many_sends_leaves_other_calls_answered(service):
    """A proof packet judges each send of the number against those before it, which
    for a few hundred sends in a day takes seconds of CPU: it was assembled on the
    event loop, and every other call of the instance (another brand's CanSend
    among them) waited until it was done. It is assembled off the loop now, as a
    PDF is drawn."""
    runtime, when = service
    number = phone(9000)
    token = await dense_sends(runtime, when, "dense", number, 300)
    async with client(runtime.address, "acme-app") as c:
        packet = c.GetProofPacket(
            api.GetProofPacketRequest(
                phone=number,
                brand="acme",
                campaign="dense",
                format=api.PACKET_FORMAT_JSON,
                at_least_as_fresh=token,
            ),
            timeout=600,
        )
        assembled, held = await loop_held_while(packet, c)
    assert len(assembled.packet["messages"]) == 300
    assert held < 1, f"the event loop was held {held:.1f} s"


async def test_a_sweep_of_a_number_s_many_sends_leaves_other_calls_answered(service):
    """A sweep judges each send with the sends its cap window keeps: 2,000 sends to
    one number in an hour took seconds, on the event loop, and every other call of
    the instance waited behind them. They are judged off the loop now."""
    runtime, when = service
    token = await dense_sends(runtime, when, "dense-sweep", phone(9001), 2000)
    async with client(runtime.address, "acme-app") as c:
        span = (when - timedelta(hours=2), when + timedelta(minutes=1))
        answers, held = await loop_held_while(sweep(c, *span, token, "dense-sweep"), c)
    last = answers[-1].progress
    assert (last.done, last.sends_judged) == (1.0, 2000), last
    assert last.findings == sum(a.HasField("finding") for a in answers) > 0
    assert held < 1, f"the event loop was held {held:.1f} s"


async def test_evidence_that_names_no_event_is_refused_by_field_and_writes_nothing(service):
    """A relied-on answer's evidence ids were kept as sent: a NUL, a right-to-left
    override or a word was written into the ledger for good, as the answer the sender
    relied on. They are the ids of the events the answer named, and nothing else is
    one: refused by field and place, alone and in a batch, with nothing written."""
    runtime, when = service
    evidence = "5614ccb1-9b4f-5a80-b524-39b0aaf5cae9"
    async with client(runtime.address, "acme-app") as c:
        size = await ledger_size(runtime)
        messages = [message(i, when) for i in range(3)]
        messages[1].relied_on.evidence_event_ids[:] = [evidence, evidence + "\x00"]
        messages[2].relied_on.evidence_event_ids[:] = ["\u202e" + evidence]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.RecordMessagesSent(call("batch-evidence", messages))
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in status_details(err.value)] == [
            "messages[1].relied_on.evidence_event_ids[1]",
            "messages[2].relied_on.evidence_event_ids[0]",
        ]
        single = alone("single-evidence", message(3, when))
        single.relied_on.evidence_event_ids[:] = ["e1"]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.RecordMessageSent(single)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in status_details(err.value)] == ["relied_on.evidence_event_ids[0]"]
        assert await ledger_size(runtime) == size


async def test_a_relied_on_token_past_the_ledger_s_end_is_refused_by_field(service):
    """A relied-on answer's token naming a partition the ledger lacks, or an offset
    past its end, was kept as sent: no answer of the service had it, and the sweep
    then read the send as one asked before it went out. Refused by field and place,
    alone and in a batch, with nothing written; a token the service gave is taken."""
    runtime, when = service
    async with client(runtime.address, "acme-app") as c:
        given = await c.RecordOptIn(opt_in(phone(0), "acme", "promo", when))
        size = await ledger_size(runtime)
        messages = [message(i, when) for i in range(4)]
        messages[1].relied_on.consistency_token = "subscribers:0:999999999"
        messages[3].relied_on.consistency_token = "campaigns:0:1,subscribers:99:1"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.RecordMessagesSent(call("batch-past-the-end", messages))
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        named = status_details(err.value)
        assert [f for f, _ in named] == [
            "messages[1].relied_on.consistency_token",
            "messages[3].relied_on.consistency_token",
        ]
        assert "past the ledger's end" in named[0][1] and "no such partition" in named[1][1]
        single = alone("single-past-the-end", messages[1])
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.RecordMessageSent(single)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in status_details(err.value)] == ["relied_on.consistency_token"]
        assert await ledger_size(runtime) == size
        # The same partition named twice, past its end first: read as the last part
        # alone, it passed.
        twice = alone("single-named-twice", messages[1])
        twice.relied_on.consistency_token = "subscribers:0:999999999,subscribers:0:0"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.RecordMessageSent(twice)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in status_details(err.value)] == ["relied_on.consistency_token"]
        assert await ledger_size(runtime) == size
        messages[1].relied_on.consistency_token = given.consistency_token
        messages[3].relied_on.consistency_token = given.consistency_token
        written = await c.RecordMessagesSent(call("batch-past-the-end-fixed", messages))
        assert len(written.event_ids) == 4


async def test_an_allowed_its_reason_denies_is_refused_not_kept_as_a_yes(service):
    """A send recorded as relying on an answer "allowed, revoked" was kept so, and the
    sweep, which reads allowed alone, did not list it as sent against a "no". The
    service never gives such an answer: refused by field, nothing written."""
    runtime, when = service
    async with client(runtime.address, "acme-app") as c:
        size = await ledger_size(runtime)
        messages = [message(i, when) for i in range(2)]
        messages[1].relied_on.reason = api.REASON_REVOKED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.RecordMessagesSent(call("batch-allowed-revoked", messages))
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in status_details(err.value)] == ["messages[1].relied_on.allowed"]
        single = alone("single-denied-active", message(2, when))
        single.relied_on.allowed = False
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.RecordMessageSent(single)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in status_details(err.value)] == ["relied_on.allowed"]
        assert await ledger_size(runtime) == size


async def test_more_than_a_thousand_messages_or_another_brand_is_refused(service):
    runtime, when = service
    over = call("batch-over", [message(i, when) for i in range(CALL + 1)])
    async with client(runtime.address, "acme-app") as c:
        size = await ledger_size(runtime)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.RecordMessagesSent(over)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in status_details(err.value)] == ["messages"]
    for who in ("globex-app", "acme-checker"):
        async with client(runtime.address, who) as c:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await c.RecordMessagesSent(call("batch-theirs", [message(0, when)]))
            assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert await ledger_size(runtime) == size


async def replies_at_once(
    runtime: Runtime, c, i: int, sender: str, campaign: str, text: str, kind: int
) -> tuple[str, ConsistencyToken]:
    """A campaign of ``sender`` capped at two a day, number ``i`` opted in to it and
    then texting ``text``, and three replies of ``kind`` recorded by separate calls at
    the same moment, each judged against a view without the others. Returns the
    number and a token as fresh as every reply."""
    now = datetime.now(UTC)
    number = phone(i)
    cap = lpb.FrequencyCap(limit=2, window=Duration(seconds=86400))
    async with client(runtime.address) as admin:
        await admin.DefineCampaign(define("acme", campaign, now, [sender], frequency_caps=[cap]))
    await c.RecordOptIn(opt_in(number, "acme", campaign, now - timedelta(minutes=3)))
    asked = await c.HandleInboundMessage(inbound(number, sender, text, now - timedelta(minutes=2)))
    assert await applied(runtime, asked.consistency_token)
    requests = []
    for n in range(3):
        m = message(i, now, campaign=campaign, message_id=f"SM-{campaign}-{n}")
        request = alone(f"{campaign}-{n}-{uuid.uuid4().hex[:8]}", m)
        request.kind = kind
        requests.append(request)
    written = await asyncio.gather(*(c.RecordMessageSent(r) for r in requests))
    token = ConsistencyToken.decode(written[0].consistency_token)
    for w in written[1:]:
        token = token.merge(ConsistencyToken.decode(w.consistency_token))
    return number, token


async def test_help_replies_recorded_at_once_in_separate_calls_count_but_the_first(service):
    """Three RecordMessageSent calls of one HELP's reply at the same moment were each
    judged against a view without the others, and all escaped the caps: CanSend then
    allowed a regular message over a cap of two a day. The ledger's order decides:
    the first reply is owed, the other two count, and the cap is reached."""
    runtime, _ = service
    async with client(runtime.address, "acme-app") as c:
        number, token = await replies_at_once(
            runtime, c, 9001, "+12125550178", "capped2", "HELP", lpb.MESSAGE_KIND_HELP_REPLY
        )
        answer = await c.CanSend(
            api.CanSendRequest(
                phone=number, brand="acme", campaign="capped2", at_least_as_fresh=token.encode()
            )
        )
    assert not answer.allowed, answer
    assert answer.reason == api.REASON_FREQUENCY_CAP_REACHED, answer
    assert answer.detail.startswith("2 of 2 messages"), answer  # the two not owed


async def test_a_reply_owed_once_and_sent_twice_in_one_call_counts_the_second(service):
    """One HELP earns one reply that escapes the caps; a second reply to it, later in
    the same call, counts as it would sent alone, so a cap it fills denies."""
    runtime, _ = service
    now = datetime.now(UTC)
    number, sender = phone(9000), "+12125550177"
    cap = lpb.FrequencyCap(limit=2, window=Duration(seconds=86400))
    async with client(runtime.address) as admin:
        await admin.DefineCampaign(define("acme", "capped", now, [sender], frequency_caps=[cap]))
    async with client(runtime.address, "acme-app") as c:
        await c.RecordOptIn(opt_in(number, "acme", "capped", now - timedelta(minutes=2)))
        await c.HandleInboundMessage(inbound(number, sender, "HELP", now - timedelta(minutes=1)))
        help_reply = dict(campaign="capped", kind=lpb.MESSAGE_KIND_HELP_REPLY)
        replies = [message(9000, now, message_id=f"SM-help-{i}", **help_reply) for i in range(3)]
        written = await c.RecordMessagesSent(call("batch-help-replies", replies))
        listed = await c.ListEvents(
            api.ListEventsRequest(
                phone=number, brand="acme", at_least_as_fresh=written.consistency_token
            )
        )
        sent = [e.event.message_sent for e in listed.events if e.event.event_type == "MessageSent"]
        assert [m.exempt for m in sent] == [True, False, False]
        answer = await c.CanSend(
            api.CanSendRequest(
                phone=number, brand="acme", campaign="capped",
                at_least_as_fresh=written.consistency_token,
            )
        )  # fmt: skip
        assert not answer.allowed
        assert answer.reason == api.REASON_FREQUENCY_CAP_REACHED


async def define_two_a_day(runtime: Runtime, name: str, since: datetime) -> None:
    """acme's informational campaign ``name`` (no quiet hours at night) with a cap of
    two messages a day, defined from ``since``."""
    cap = lpb.FrequencyCap(limit=2, window=Duration(seconds=86400))
    async with client(runtime.address) as admin:
        await admin.DefineCampaign(
            define(
                "acme",
                name,
                since,
                purpose=lpb.CAMPAIGN_PURPOSE_INFORMATIONAL,
                frequency_caps=[cap],
            )
        )


async def test_checks_at_a_cap_s_edge_reserve_nothing_and_the_sweep_finds_the_send_over_it(
    service,
):
    """README's sending policy, caps: a check reserves nothing. Two checks at once,
    one send below a cap of two, are both allowed; the two sends they allowed,
    recorded, pass the cap; CanSend then denies, and the sweep finds the second as
    over the cap. A batch naming the number twice asks about both sends at once:
    its second entry counts the first, and is denied."""
    runtime, _ = service
    now = datetime.now(UTC)
    number = phone(9301)
    await define_two_a_day(runtime, "edge", now - timedelta(days=1))
    async with client(runtime.address, "acme-app") as c:
        granted = await c.RecordOptIn(opt_in(number, "acme", "edge", now - timedelta(hours=2)))
        first = await c.RecordMessageSent(
            alone(
                "edge-0",
                message(9301, now - timedelta(hours=1), campaign="edge", message_id="SM-edge-0"),
            )
        )
        token = (
            ConsistencyToken.decode(granted.consistency_token)
            .merge(ConsistencyToken.decode(first.consistency_token))
            .encode()
        )
        asked = api.CanSendRequest(
            phone=number, brand="acme", campaign="edge", at_least_as_fresh=token
        )
        answers = await asyncio.gather(c.CanSend(asked), c.CanSend(asked))
        batch = await c.CanSendBatch(
            api.CanSendBatchRequest(
                phones=[number, number], brand="acme", campaign="edge", at_least_as_fresh=token
            )
        )
        assert [a.allowed for a in answers] == [True, True], answers
        assert [d.allowed for d in batch.decisions] == [True, False], batch
        denied = batch.decisions[1]
        assert denied.reason == api.REASON_FREQUENCY_CAP_REACHED, denied
        assert denied.detail.startswith("2 of 2 messages") and "phones[0]," in denied.detail

        def relied_on(a: api.CanSendResponse) -> api.ReliedOnAnswer:
            return api.ReliedOnAnswer(
                consistency_token=a.consistency_token,
                allowed=a.allowed,
                reason=a.reason,
                evidence_event_ids=a.evidence_event_ids,
            )

        sends = [
            message(
                9301,
                now - timedelta(minutes=2 - k),
                campaign="edge",
                message_id=f"SM-edge-{k + 1}",
                relied_on=relied_on(a),
            )
            for k, a in enumerate(answers)
        ]
        sent = await c.RecordMessagesSent(call("edge-sends", sends))
        after = await c.CanSend(
            api.CanSendRequest(
                phone=number, brand="acme", campaign="edge",
                at_least_as_fresh=sent.consistency_token,
            )
        )  # fmt: skip
        assert not after.allowed and after.reason == api.REASON_FREQUENCY_CAP_REACHED, after
        assert after.detail.startswith("3 of 2 messages"), after
        request = api.SweepCampaignRequest(
            brand="acme",
            campaign="edge",
            start_time=ts(now - timedelta(days=1)),
            end_time=ts(now),
            at_least_as_fresh=sent.consistency_token,
        )
        items = c.stub.SweepCampaign(
            request, metadata=[("authorization", f"Bearer {c.token}")], timeout=120
        )
        findings = [item.finding async for item in items if item.HasField("finding")]
    over = [f.event_id for f in findings if api.SWEEP_FINDING_KIND_OVER_CAP in f.kinds]
    assert over == [sent.event_ids[1]], findings


async def test_a_call_s_messages_newest_first_still_show_the_one_over_the_cap(service):
    """Three messages to one number within a day, under a cap of two, in one call
    newest first: they went to the ledger in the call's order, so the sweep judged
    each against only the messages ahead of it in the ledger, all of which went out
    after it, and found none over the cap; the proof packet said each was allowed
    when sent. Now the call's messages go to the ledger in the order they went out,
    and the newest is the one over the cap, to the sweep and the packet alike."""
    runtime, _ = service
    now = datetime.now(UTC)
    number = phone(9401)
    await define_two_a_day(runtime, "newest", now - timedelta(days=1))
    async with client(runtime.address, "acme-app") as c:
        granted = await c.RecordOptIn(opt_in(number, "acme", "newest", now - timedelta(hours=4)))
        sends = [
            message(9401, now - timedelta(hours=h), campaign="newest", message_id=f"SM-new-{h}")
            for h in (1, 2, 3)
        ]
        sent = await c.RecordMessagesSent(call("newest-first", sends))
        token = (
            ConsistencyToken.decode(granted.consistency_token)
            .merge(ConsistencyToken.decode(sent.consistency_token))
            .encode()
        )
        request = api.SweepCampaignRequest(
            brand="acme",
            campaign="newest",
            start_time=ts(now - timedelta(days=1)),
            end_time=ts(now),
            at_least_as_fresh=token,
        )
        items = c.stub.SweepCampaign(
            request, metadata=[("authorization", f"Bearer {c.token}")], timeout=120
        )
        findings = [item.finding async for item in items if item.HasField("finding")]
        packet = await c.GetProofPacket(
            api.GetProofPacketRequest(phone=number, brand="acme", at_least_as_fresh=token)
        )
        listed = await c.ListEvents(
            api.ListEventsRequest(phone=number, brand="acme", at_least_as_fresh=token)
        )
    over = [f.message_id for f in findings if api.SWEEP_FINDING_KIND_OVER_CAP in f.kinds]
    assert over == ["SM-new-1"], findings
    when_sent = {
        m["message_id"]: m["decision"]["allowed"] for m in MessageToDict(packet.packet)["messages"]
    }
    assert when_sent == {"SM-new-1": False, "SM-new-2": True, "SM-new-3": True}
    # The ledger holds them oldest first; the answer still follows the call's order.
    sent_in_ledger = [
        (e.event.message_sent.message_id, e.event.event_id)
        for e in listed.events
        if e.event.event_type == "MessageSent"
    ]
    assert [m for m, _ in sent_in_ledger] == ["SM-new-3", "SM-new-2", "SM-new-1"]
    ids = dict(sent_in_ledger)
    assert [ids[m.message_id] for m in sends] == list(sent.event_ids)


async def test_sends_recorded_newest_first_by_separate_calls_show_the_one_over_the_cap(
    service,
):
    """Three messages to one number within a day, under a cap of two, each recorded by
    its own call, newest first. Each was judged against only what was recorded before
    it, so the sweep found none over the cap, while CanSend denied from then on and
    the proof packet marked the newest "not allowed in hindsight". Now the sweep finds
    the newest over the cap in world order, in hindsight, as the packet does."""
    runtime, _ = service
    now = datetime.now(UTC)
    number = phone(9402)
    await define_two_a_day(runtime, "info", now - timedelta(days=2))
    async with client(runtime.address, "acme-app") as c:
        granted = await c.RecordOptIn(opt_in(number, "acme", "info", now - timedelta(days=1)))
        token = ConsistencyToken.decode(granted.consistency_token)
        for h, name in ((1, "L"), (2, "M"), (3, "E")):
            m = message(9402, now - timedelta(hours=h), campaign="info", message_id=f"SM-{name}")
            sent = await c.RecordMessageSent(alone(f"separate-{name}", m))
            token = token.merge(ConsistencyToken.decode(sent.consistency_token))
        fresh = token.encode()
        asked = dict(phone=number, brand="acme", campaign="info", at_least_as_fresh=fresh)
        live = await c.CanSend(api.CanSendRequest(**asked))
        then = await c.CanSendAsOf(api.CanSendAsOfRequest(**asked, at=ts(now)))
        request = api.SweepCampaignRequest(
            brand="acme",
            campaign="info",
            start_time=ts(now - timedelta(days=1)),
            end_time=ts(now),
            at_least_as_fresh=fresh,
        )
        items = c.stub.SweepCampaign(
            request, metadata=[("authorization", f"Bearer {c.token}")], timeout=120
        )
        findings = [item.finding async for item in items if item.HasField("finding")]
        packet = await c.GetProofPacket(
            api.GetProofPacketRequest(phone=number, brand="acme", at_least_as_fresh=fresh)
        )
    assert not live.allowed and live.reason == api.REASON_FREQUENCY_CAP_REACHED
    assert not then.allowed and then.reason == api.REASON_FREQUENCY_CAP_REACHED
    hindsight = {m["message_id"]: m["hindsight"] for m in MessageToDict(packet.packet)["messages"]}
    assert [m for m, h in hindsight.items() if h is not None] == ["SM-L"]
    assert hindsight["SM-L"]["reason"] == "frequency_cap_reached"
    (found,) = findings
    assert found.message_id == "SM-L" and list(found.kinds) == [api.SWEEP_FINDING_KIND_OVER_CAP]
    assert found.hindsight and not found.allowed
    assert found.reason == api.REASON_FREQUENCY_CAP_REACHED


async def test_the_readme_batched_send_runs_as_written(tmp_path, postgres_dsn):
    """README's "Recording many messages sent" block, after the "Calling the API"
    walk-through it follows, with grpcurl, against a real service."""
    done = await run_after_walk_through("readme-sends", tmp_path, postgres_dsn)
    assert done.returncode == 0, done.stdout + done.stderr
    written = answers(done.stdout)[1][-1]
    assert len(written["eventIds"]) == len(set(written["eventIds"])) == 2
    assert written["consistencyToken"].startswith("subscribers:0:")  # one partition


async def test_opt_out_confirmations_recorded_at_once_count_but_the_first(service):
    """An opt-out earns one confirmation. Three RecordMessageSent calls of it at the
    same moment were each judged exempt against a view without the others, and all
    escaped the caps: after the person's START, CanSend allowed a regular message
    over a cap of two a day. In ledger order the first is owed and the others count."""
    runtime, _ = service
    sender = "+12125550179"
    async with client(runtime.address, "acme-app") as c:
        number, token = await replies_at_once(
            runtime, c, 9101, sender, "capped3", "STOP", lpb.MESSAGE_KIND_OPT_OUT_CONFIRMATION
        )
        start = await c.HandleInboundMessage(
            inbound(number, sender, "START", datetime.now(UTC) - timedelta(seconds=30))
        )
        token = token.merge(ConsistencyToken.decode(start.consistency_token))
        answer = await c.CanSend(
            api.CanSendRequest(
                phone=number, brand="acme", campaign="capped3", at_least_as_fresh=token.encode()
            )
        )
    assert answer.reason == api.REASON_FREQUENCY_CAP_REACHED, answer
    assert answer.detail.startswith("2 of 2 messages"), answer  # the two not owed


async def test_the_history_names_the_replies_recorded_exempt_that_count(service):
    """Replies recorded at once were each judged exempt at the write, and ListEvents
    showed every one as exempt while the fold counted all but the first: an auditor
    read three sends that escaped the caps where CanSend counted two. The history
    now names those that count, so exactly one reads as having escaped."""
    runtime, _ = service
    async with client(runtime.address, "acme-app") as c:
        number, token = await replies_at_once(
            runtime, c, 9201, "+12125550181", "capped4", "HELP", lpb.MESSAGE_KIND_HELP_REPLY
        )
    async with client(runtime.address) as admin:
        listed = await admin.ListEvents(
            api.ListEventsRequest(phone=number, brand="acme", at_least_as_fresh=token.encode())
        )
        answer = await admin.CanSend(
            api.CanSendRequest(
                phone=number, brand="acme", campaign="capped4", at_least_as_fresh=token.encode()
            )
        )
    sends = [e.event for e in listed.events if e.event.event_type == "MessageSent"]
    marked = {e.event_id for e in sends if e.message_sent.exempt}
    not_granted = set(listed.exemption_not_granted)
    assert not_granted <= marked, (not_granted, marked)
    assert len(marked - not_granted) == 1, (marked, not_granted)  # the one owed
    assert answer.detail.startswith("2 of 2 messages"), answer  # the other two count


def three_minutes_to_midnight_in_los_angeles() -> datetime:
    """The next 23:57 in Los Angeles at least ten minutes ahead of the real clock, in
    UTC: ahead, so the broker's stamps are known by the service's now."""
    zone = ZoneInfo("America/Los_Angeles")
    local = datetime.now(zone).replace(hour=23, minute=57, second=0, microsecond=0)
    if local <= datetime.now(zone) + timedelta(minutes=10):
        local += timedelta(days=1)
    return local.astimezone(UTC)


@pytest.mark.parametrize("ledger", ["kafka", "embedded"])
async def test_a_send_stamped_ahead_into_tomorrow_counts_towards_today_s_cap(
    ledger, tmp_path, postgres_dsn, kafka_bootstrap
):
    """README's sending policy, caps: a send stamped a little after now (a sender's
    clock ahead) counts. At 23:57 in Los Angeles a send stamped four minutes ahead
    bears tomorrow's date, and the daily cap of one counted it on no day but
    tomorrow: CanSend allowed a second message that night. It is recorded, so it
    went out by now, today: every check denies."""
    clock = Clock(three_minutes_to_midnight_in_los_angeles())
    now = clock.now
    campaign = define(
        "acme", "nightly", now - timedelta(days=1), daily_cap=1,
        purpose=lpb.CAMPAIGN_PURPOSE_INFORMATIONAL,  # no quiet hours at night
    )  # fmt: skip
    bootstrap = kafka_bootstrap if ledger == "kafka" else None
    async with (
        serving(
            tmp_path, postgres_dsn, bootstrap, name="ahead", clock=clock, campaigns=[campaign]
        ) as runtime,
        client(runtime.address, "acme-app") as c,
    ):
        number = phone(9501)
        granted = await c.RecordOptIn(opt_in(number, "acme", "nightly", now - timedelta(hours=2)))
        ahead = message(9501, now + timedelta(minutes=4), campaign="nightly", message_id="SM-ahead")
        sent = await c.RecordMessagesSent(call("ahead-of-midnight", [ahead]))
        token = (
            ConsistencyToken.decode(granted.consistency_token)
            .merge(ConsistencyToken.decode(sent.consistency_token))
            .encode()
        )
        asked = dict(phone=number, brand="acme", campaign="nightly", at_least_as_fresh=token)
        live = await c.CanSend(api.CanSendRequest(**asked))
        batch = await c.CanSendBatch(
            api.CanSendBatchRequest(
                phones=[number], brand="acme", campaign="nightly", at_least_as_fresh=token
            )
        )
        then = await c.CanSendAsOf(api.CanSendAsOfRequest(**asked, at=ts(now)))
    for answer in (live, batch.decisions[0], then):
        assert not answer.allowed, answer
        assert answer.reason == api.REASON_DAILY_CAP_REACHED, answer


async def topics_limited(kafka_bootstrap: str, prefix: str, to: str):
    """Kafka settings under ``prefix`` whose subscriber topic takes records of at most
    ``to`` bytes."""
    settings = kafka_settings(kafka_bootstrap, f"{prefix}-{uuid.uuid4().hex[:8]}.")
    await KafkaLedger(settings).ensure_topics()
    await limit_subscriber_records(settings, to)
    return settings


async def test_a_send_refused_as_too_large_leaves_its_ids_free_for_its_correction(
    serve, kafka_bootstrap
):
    """A send whose fact the topics refused as too large (a hundred evidence ids) was
    answered INVALID_ARGUMENT, but kept its message id's claim and its request id:
    the same message sent again with a smaller ``relied_on``, under another request
    id or the same, was ALREADY_EXISTS for good. Now a call refused so, alone or
    batched, leaves nothing behind, and its correction is recorded."""
    clock = Clock()
    settings = await topics_limited(kafka_bootstrap, "refused-sends", "2048")
    campaign = define("acme", "promo", clock.now - timedelta(days=1))
    runtime = await serve(name="refused-sends", clock=clock, campaigns=[campaign], kafka=settings)
    large = api.ReliedOnAnswer(
        consistency_token="campaigns:0:1",
        allowed=True,
        reason=api.REASON_CONSENT_ACTIVE,
        evidence_event_ids=[str(uuid.uuid4()) for _ in range(100)],
    )
    async with client(runtime.address, "acme-app") as c:
        for request_id, again, i in [
            ("alone-large", "alone-small", 9701),
            ("alone-2", "alone-2", 9702),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await c.RecordMessageSent(alone(request_id, message(i, clock.now, relied_on=large)))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            written = await c.RecordMessageSent(alone(again, message(i, clock.now)))
            assert len(written.event_ids) == 1
        for request_id, again, i in [
            ("batch-large", "batch-small", 9703),
            ("batch-2", "batch-2", 9705),
        ]:
            sends = [message(i, clock.now), message(i + 1, clock.now, relied_on=large)]
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await c.RecordMessagesSent(call(request_id, sends))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert [f for f, _ in status_details(refused.value)] == ["messages[1]"]
            smaller = [sends[0], message(i + 1, clock.now)]
            written = await c.RecordMessagesSent(call(again, smaller))
            assert len(set(written.event_ids)) == 2
    assert await ledger_size(runtime) == 6


async def test_a_message_too_large_for_the_topics_writes_none_of_the_call(serve, kafka_bootstrap):
    """A topic whose ``max.message.bytes`` is below one message's fact (its answer's
    hundred evidence ids): the broker refused that record alone, after the others of
    the call were written, and the call was answered INVALID_ARGUMENT on
    ``request``, as if nothing were. Now the call names the message and writes
    nothing; with the limit raised, the same call records every message."""
    clock = Clock()
    settings = kafka_settings(kafka_bootstrap, f"large-sends-{uuid.uuid4().hex[:8]}.")
    await KafkaLedger(settings).ensure_topics()
    topic = settings.topic(Stream.SUBSCRIBERS)

    async def limit_records(to: str) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            limit = {**topic_configs(settings), "max.message.bytes": to}
            await altered(admin, topic, limit)
        finally:
            await admin.close()

    await limit_records("2048")
    campaign = define("acme", "promo", clock.now - timedelta(days=1))
    runtime = await serve(name="large-sends", clock=clock, campaigns=[campaign], kafka=settings)
    evidence = [str(uuid.uuid4()) for _ in range(100)]
    large = api.ReliedOnAnswer(
        consistency_token="campaigns:0:1",
        allowed=True,
        reason=api.REASON_CONSENT_ACTIVE,
        evidence_event_ids=evidence,
    )
    sends = [
        message(9601, clock.now),
        message(9602, clock.now, relied_on=large),
        message(9603, clock.now),
    ]
    async with client(runtime.address, "acme-app") as c:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await c.RecordMessagesSent(call("too-large", sends))
        assert await ledger_size(runtime) == 0
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in status_details(refused.value)] == ["messages[1]"]
        await limit_records("1048588")
        written = await c.RecordMessagesSent(call("too-large", sends))
    assert len(set(written.event_ids)) == 3
    assert await ledger_size(runtime) == 3


async def test_a_copy_appended_behind_the_send_that_claimed_it_is_answered_as_that_send(
    service,
):
    """Two calls record one message at once under two request ids: the first claims
    its message id, and the second, finding the claim before the first is in the
    ledger, appends a copy, which reaches the ledger behind the first. The view
    applies the first; the copy's call was answered with its own event id, which
    no reader shows, and its retry with the first's: one call answered two ways.
    It is now answered with the send the view applied, as a single send is."""
    runtime, when = service
    ledger = runtime.usecases.sends.ctx.ledger
    append = ledger.append
    holding, first_may_go, first_gone = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def first_ahead_of_the_copy(events):
        if events[0].request_id == "claims-first":
            holding.set()
            await first_may_go.wait()
            try:
                return await append(events)
            finally:
                first_gone.set()
        first_may_go.set()  # the copy, checked against a view without the first
        await first_gone.wait()
        return await append(events)

    sends = [message(9701, when), message(9702, when)]
    ledger.append = first_ahead_of_the_copy
    async with client(runtime.address, "acme-app") as c:
        first = asyncio.ensure_future(c.RecordMessagesSent(call("claims-first", sends[:1])))
        await holding.wait()
        copy = await c.RecordMessagesSent(call("copies-it", sends))
        ledger.append = append
        claimed = await first
        again = await c.RecordMessagesSent(call("copies-it", sends))
        listed = await c.ListEvents(
            api.ListEventsRequest(
                phone=phone(9701), brand="acme", at_least_as_fresh=again.consistency_token
            )
        )
    (applied,) = [e.event.event_id for e in listed.events if e.event.event_type == "MessageSent"]
    assert list(claimed.event_ids) == [applied]
    assert copy.event_ids[0] == applied, (list(copy.event_ids), applied)
    assert list(again.event_ids) == list(copy.event_ids)


async def test_a_call_that_lost_its_request_id_leaves_its_message_ids_free(serve, monkeypatch):
    """A call claims its messages' ids, then finds its request id taken a moment before
    by another request (ALREADY_EXISTS): it kept the claims for sends never written.
    The corrected send of one of those messages under a new request id was then
    refused as saying something else of a message claimed before, and the same
    messages again met claims of sends never coming. Now the call gives up the
    claims it still holds, and both are recorded."""
    clock = Clock()
    campaign = define("acme", "promo", clock.now - timedelta(days=1))
    runtime = await serve(name="lost-id", clock=clock, campaigns=[campaign])
    view = runtime.usecases.sends.ctx.view
    claim_messages = view.claim_messages
    async with client(runtime.address, "acme-app") as c:

        async def then_another_takes_its_id(brand, claims):
            held = await claim_messages(brand, claims)
            # Between the call's two claims, an opt-in under its request id.
            taken = opt_in(phone(9801), "acme", "promo", clock.now, request_id="lost")
            await c.RecordOptIn(taken)
            return held

        monkeypatch.setattr(view, "claim_messages", then_another_takes_its_id)
        sends = [message(9801, clock.now), message(9802, clock.now)]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await c.RecordMessagesSent(call("lost", sends))
        assert refused.value.code() is grpc.StatusCode.ALREADY_EXISTS
        assert "request_id" in (refused.value.details() or "")
        monkeypatch.setattr(view, "claim_messages", claim_messages)
        size = await ledger_size(runtime)

        corrected = message(9801, clock.now, identified_sender=False)
        one = await c.RecordMessageSent(alone("corrected", corrected))
        both = await c.RecordMessagesSent(call("again", [corrected, sends[1]]))
        assert both.event_ids[0] == one.event_ids[0]
    assert await ledger_size(runtime) == size + 2
