"""A request id names one request of one brand, and a provider message id one
message, through the real gRPC server on the real Kafka ledger and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb

from tests.e2e.harness import (
    TOKENS,
    Clock,
    already_recorded,
    client,
    define,
    held_info,
    inbound,
    opt_in,
    opt_out,
    sent,
    serving,
    ts,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

PHONE = "+14155552761"
NUMBER = "+12125550150"


@pytest.fixture
async def service(serve):
    clock = Clock()
    campaigns = [
        define("acme", "promo", clock.now - timedelta(days=1), [NUMBER]),
        define("globex", "promo", clock.now - timedelta(days=1)),
    ]
    return await serve(name="rid", clock=clock, campaigns=campaigns), clock.now


def bare(
    request_id: str, message_id: str, at: datetime, phone: str = PHONE, **changes: Any
) -> api.RecordMessageSentRequest:
    """Message ``message_id`` to promo with neither flag of what it carried set, so
    that a resend can differ in one."""
    changes = {"included_opt_out_language": False, "identified_sender": False, **changes}
    return sent(phone, "acme", "promo", at, request_id, message_id=message_id, **changes)


async def test_a_request_id_reused_for_any_other_request_is_refused_with_its_events(service):
    runtime, when = service
    async with (
        client(runtime.address, "acme-app") as c,
        client(runtime.address, "globex-app") as g,
        client(runtime.address) as admin,
    ):
        first = await c.RecordOptIn(opt_in(PHONE, "acme", "promo", when, request_id="r1"))
        # Each refused; an opt-out (the STOP as a RecordOptOut or an inbound text) is
        # held for review all the same, so that a client's bug loses no STOP.
        others = [
            (c.RecordOptOut(opt_out(PHONE, "acme", "promo", when, "r1")), True),
            (
                c.RecordOptIn(opt_in(PHONE, "acme", "promo", when - timedelta(seconds=1), "r1")),
                False,
            ),
            (c.RecordMessageSent(bare("r1", "SM-r1", when)), False),
            (
                admin.DefineCampaign(
                    api.DefineCampaignRequest(
                        request_id="r1",
                        brand="acme",
                        campaign="other",
                        occurred_at=ts(when),
                        policy=lpb.CampaignPolicy(),
                    )
                ),
                False,
            ),
            (
                c.HandleInboundMessage(
                    inbound(PHONE, NUMBER, "STOP", when, "r1", message_id="SM-in")
                ),
                True,
            ),
        ]
        holds = []
        for call, stop in others:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
            assert already_recorded(refused.value) == list(first.event_ids)
            held = held_info(refused.value)
            assert (held is not None) == stop, (stop, refused.value.details())
            if held is not None:
                holds.append(held["candidate_event_id"])
                fresh = held["consistency_token"]  # the phone's partition, past each hold
        retry = await c.RecordOptIn(opt_in(PHONE, "acme", "promo", when, request_id="r1"))
        assert list(retry.event_ids) == list(first.event_ids)
        # Another brand's "r1" is its own.
        await g.RecordOptIn(opt_in(PHONE, "globex", "promo", when, request_id="r1"))

        events = await c.ListEvents(
            api.ListEventsRequest(phone=PHONE, brand="acme", at_least_as_fresh=fresh)
        )
        assert [e.event.event_type for e in events.events] == [
            "ConsentGranted",
            "RevocationCandidateFlagged",
            "RevocationCandidateFlagged",
        ]
        assert events.events[0].event.request_id == "r1"
        assert [e.event.event_id for e in events.events[1:]] == holds
        answer = await c.CanSend(
            api.CanSendRequest(
                phone=PHONE, brand="acme", campaign="promo", at_least_as_fresh=fresh,
            )
        )  # fmt: skip
        assert answer.reason == api.REASON_REVOCATION_PENDING_REVIEW, answer


async def test_a_provider_message_id_recorded_already_is_the_same_message(service):
    runtime, when = service
    async with client(runtime.address, "acme-app") as c:
        await c.RecordOptIn(opt_in(PHONE, "acme", "promo", when - timedelta(hours=1)))
        at = when - timedelta(minutes=30)
        first = await c.RecordMessageSent(bare("s1", "SM-1", at))
        same = [
            bare("s1", "SM-1", at),  # a retry
            bare("s2", "SM-1", at),  # the same message under another request id
        ]
        for request in same:
            again = await c.RecordMessageSent(request)
            assert list(again.event_ids) == list(first.event_ids)
        # Saying something else of it: refused, the first send named (an OK would
        # tell the sender that what it sent now is what is recorded).
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.RecordMessageSent(
                bare("s3", "SM-1", at + timedelta(minutes=1), kind=lpb.MESSAGE_KIND_HELP_REPLY,
                     included_opt_out_language=True)
            )  # fmt: skip
        assert err.value.code() is grpc.StatusCode.ALREADY_EXISTS
        assert "another kind, occurred_at, included_opt_out_language" in err.value.details()
        other = await c.RecordMessageSent(bare("s4", "SM-2", at))
        rate = await c.GetOptOutRate(
            api.GetOptOutRateRequest(
                brand="acme", campaign="promo", at_least_as_fresh=other.consistency_token
            )
        )
        assert rate.messages_sent == 2
        events = await c.ListEvents(
            api.ListEventsRequest(
                phone=PHONE, brand="acme", at_least_as_fresh=other.consistency_token
            )
        )
        sends = [e.event for e in events.events if e.event.event_type == "MessageSent"]
        assert [e.message_sent.message_id for e in sends] == ["SM-1", "SM-2"]


async def test_a_request_id_is_kept_years_on_past_the_imports_pruning(serve, postgres_dsn):
    """``request_use`` promised no window: it was left out of the pruning that
    imports began doing (1c2b663), and the README said only that none was promised.
    The window is the database's life now, and ids are not pruned (the projection
    asks ``request_use`` which request's facts an id applies, and a rebuild keeps
    it). Six years on by the service's clock, after an import pruned the old append
    turns as it began, a retry is still answered as its request and another request
    under the id, or an import record, is still refused with the first's events."""
    clock = Clock()
    when = clock.now
    campaigns = [define("acme", "promo", when - timedelta(days=1))]
    runtime = await serve(name="rid-kept", clock=clock, campaigns=campaigns)
    phone = "+14155552762"
    async with client(runtime.address, "acme-app") as c:
        first = await c.RecordOptIn(opt_in(phone, "acme", "promo", when, request_id="kept-1"))
        db = await asyncpg.connect(postgres_dsn)
        try:
            await db.execute(
                "INSERT INTO append_turn (brand, request_id, holder, until, appended_at) VALUES"
                " ('acme', 'an-old-turn', gen_random_uuid(), NULL, now() - '2 days'::interval)"
            )
            clock.now = when + timedelta(days=6 * 366)

            record = api.ImportRecord(
                opt_in=opt_in("+14155552763", "acme", "promo", when, request_id="kept-import")
            )
            reused = api.ImportRecord(
                opt_in=opt_in(phone, "acme", "promo", when - timedelta(hours=1), "kept-1")
            )

            async def chunks():
                yield api.ImportConsentsRequest(records=[record, reused])

            stream = c.stub.ImportConsents(
                chunks(), metadata=[("authorization", f"Bearer {TOKENS['acme-app'][0]}")]
            )
            (answer,) = [a async for a in stream]

            assert answer.imported == 1, answer
            assert [(r.index, r.code) for r in answer.refusals] == [(1, "ALREADY_EXISTS")]
            turns = await db.fetchval("SELECT count(*) FROM append_turn WHERE request_id = $1",
                                      "an-old-turn")  # fmt: skip
            assert turns == 0  # the import pruned as it began
            kept = await db.fetchval(
                "SELECT count(*) FROM request_use WHERE brand = 'acme' AND request_id = 'kept-1'"
            )
            assert kept == 1
        finally:
            await db.close()
        retry = await c.RecordOptIn(opt_in(phone, "acme", "promo", when, request_id="kept-1"))
        assert list(retry.event_ids) == list(first.event_ids)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await c.RecordOptIn(
                opt_in(phone, "acme", "promo", when - timedelta(hours=1), request_id="kept-1")
            )
        assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert already_recorded(refused.value) == list(first.event_ids)


SPELLED = "+1 (415) 555-2761"  # PHONE as a person writes it


async def test_a_retry_that_spells_the_number_otherwise_is_the_same_request(service):
    """The same request id with the number in E.164 and then as ``+1 (415) ...``:
    one request. The fingerprint digested the spelling as sent, so the retry was
    refused as another request (ALREADY_EXISTS)."""
    runtime, when = service
    async with client(runtime.address, "acme-app") as c:
        first = await c.RecordOptIn(opt_in(PHONE, "acme", "promo", when, "rid-spelled-1"))
        again = await c.RecordOptIn(opt_in(SPELLED, "acme", "promo", when, "rid-spelled-1"))
        assert list(again.event_ids) == list(first.event_ids)
        one = bare("rid-spelled-2", "SMspelled2", when, phone=SPELLED)
        sent_first = await c.RecordMessageSent(one)
        sent_again = await c.RecordMessageSent(bare("rid-spelled-2", "SMspelled2", when))
        assert list(sent_again.event_ids) == list(sent_first.event_ids)
        batch = api.RecordMessagesSentRequest(
            request_id="rid-spelled-3",
            brand="acme",
            messages=[
                api.SentMessage(
                    phone=PHONE, campaign="promo", message_id="SMspelled3", occurred_at=ts(when)
                )
            ],
        )
        batch_first = await c.RecordMessagesSent(batch)
        batch.messages[0].phone = SPELLED
        batch_again = await c.RecordMessagesSent(batch)
        assert list(batch_again.event_ids) == list(batch_first.event_ids)


async def test_a_request_recorded_as_spelled_before_e164_fingerprints_is_its_own_retry(
    service, monkeypatch
):
    """A request recorded by a version that digested the number as spelled holds its
    request id under that fingerprint, and its events under ids made from it. Its
    retry, spelled the same or in E.164, is that request: answered with those ids,
    nothing written."""
    from ledger import commands

    runtime, when = service
    async with client(runtime.address, "acme-app") as c:
        with monkeypatch.context() as old_version:
            old_version.setattr(commands, "request_fingerprint", commands._digest)
            first = await c.RecordOptIn(opt_in(SPELLED, "acme", "promo", when, "rid-old-1"))
            sent_first = await c.RecordMessageSent(bare("rid-old-2", "SMold2", when, phone=SPELLED))
        again = await c.RecordOptIn(opt_in(SPELLED, "acme", "promo", when, "rid-old-1"))
        assert list(again.event_ids) == list(first.event_ids)
        sent_again = await c.RecordMessageSent(bare("rid-old-2", "SMold2", when, phone=SPELLED))
    assert list(sent_again.event_ids) == list(sent_first.event_ids)


async def test_a_hold_recorded_as_spelled_before_e164_fingerprints_is_its_own_retry(
    service, monkeypatch
):
    """A refused opt-out held by a version that digested the number as spelled holds
    its hold's id under that fingerprint. Its retry was refused ALREADY_EXISTS,
    naming a request id the client never sent (the hold's), instead of being told,
    as the first time, that it is held."""
    from ledger import commands

    runtime, when = service
    stop = opt_out(SPELLED, "acme", "promo", when + timedelta(hours=3), "rid-old-held")
    async with client(runtime.address, "acme-app") as c:
        with monkeypatch.context() as old_version:
            old_version.setattr(commands, "request_fingerprint", commands._digest)
            with pytest.raises(grpc.aio.AioRpcError) as first:
                await c.RecordOptOut(stop)
        with pytest.raises(grpc.aio.AioRpcError) as again:
            await c.RecordOptOut(stop)
    assert first.value.code() == grpc.StatusCode.INVALID_ARGUMENT, first.value
    assert again.value.code() == grpc.StatusCode.INVALID_ARGUMENT, again.value.details()
    held, held_again = held_info(first.value), held_info(again.value)
    assert held is not None and held_again is not None, again.value.details()
    assert held_again["candidate_event_id"] == held["candidate_event_id"]


@pytest.mark.parametrize("via", ["opt-out", "STOP"])
async def test_a_refused_opt_out_retried_spelling_the_number_otherwise_is_held_once(service, via):
    """An opt-out (or a STOP) refused for a detail is held for review; its retry, the
    number spelt otherwise, is the same request. The hold's id digested the request
    as sent, spelling and all, so the retry held it a second time: two candidates for
    a reviewer to resolve, and answers naming different ones."""
    runtime, when = service
    phone = "+14155552762"
    spellings = ["+1 (415) 555-2762", phone, "+1.415.555.2762"]
    late = when + timedelta(hours=3)  # more than the skew allowed ahead: refused
    if via == "opt-out":
        first = opt_out(spellings[0], "acme", "promo", late, "rid-held-spelt")
    else:
        first = inbound(spellings[0], NUMBER, "STOP", late, "rid-held-spelt-stop")
    candidates = []
    async with client(runtime.address, "acme-app") as c:
        call = c.RecordOptOut if via == "opt-out" else c.HandleInboundMessage
        for spelt in spellings:
            request = type(first)()
            request.CopyFrom(first)
            if via == "opt-out":
                request.phone = spelt
            else:
                request.from_phone = spelt
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(request)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value
            held = held_info(refused.value)
            assert held is not None, refused.value.details()
            candidates.append(held["candidate_event_id"])
        listed = await c.ListEvents(
            api.ListEventsRequest(
                phone=phone, brand="acme", at_least_as_fresh=held["consistency_token"]
            )
        )
    assert len(set(candidates)) == 1, candidates
    flagged = [e for e in listed.events if e.event.event_type == "RevocationCandidateFlagged"]
    assert [e.event.event_id for e in flagged] == candidates[:1]


async def test_a_hold_recorded_before_numbers_were_digested_in_e164_is_its_own_retry(
    service, monkeypatch
):
    """A refused opt-out held by a version whose hold ids digested the number as
    spelt is held once still: its retry spelt the same names it. (One spelt otherwise
    cannot tell which spelling it was held under, and is held again: denying, as the
    first hold does.)"""
    from services.grpc_api import servicer

    runtime, when = service
    spelt = "+1 (415) 555-2763"
    stop = opt_out(spelt, "acme", "promo", when + timedelta(hours=3), "rid-held-before")
    async with client(runtime.address, "acme-app") as c:
        with monkeypatch.context() as old_version:
            old_version.setattr(servicer, "_digest", servicer._digest_as_sent)
            with pytest.raises(grpc.aio.AioRpcError) as first:
                await c.RecordOptOut(stop)
        candidates = [held_info(first.value)["candidate_event_id"]]
        with pytest.raises(grpc.aio.AioRpcError) as again:
            await c.RecordOptOut(stop)
        candidates.append(held_info(again.value)["candidate_event_id"])
    assert candidates[1] == candidates[0]


@pytest.mark.parametrize("ledger", ["kafka", "embedded"])
async def test_one_message_recorded_at_once_under_two_request_ids_is_answered_as_one(
    tmp_path, postgres_dsn, kafka_bootstrap, ledger
):
    """A sender records one message twice at once (two workers, two request ids).
    Both copies reached the ledger and the view applied the first; the other was
    answered with its own event id, which no reader ever shows, and its retry with
    the first's: one request answered two ways. Each copy, and each retry, is now
    answered with the send the view applied."""
    clock = Clock()
    campaign = define("acme", "promo", clock.now - timedelta(days=1), [NUMBER])
    bootstrap = kafka_bootstrap if ledger == "kafka" else None
    async with (
        serving(
            tmp_path, postgres_dsn, bootstrap, name="rid-twice", clock=clock, campaigns=[campaign]
        ) as runtime,
        client(runtime.address, "acme-app") as c,
    ):
        at = clock.now - timedelta(minutes=30)
        await c.RecordOptIn(opt_in(PHONE, "acme", "promo", at - timedelta(hours=1)))
        answers = []
        for n in range(5):
            copies = [bare(f"twice-{n}-{k}", f"SM-twice-{n}", at) for k in range(4)]
            first = await asyncio.gather(*(c.RecordMessageSent(r) for r in copies))
            again = await asyncio.gather(*(c.RecordMessageSent(r) for r in copies))
            answers.append([tuple(w.event_ids) for w in (*first, *again)])
        events = await c.ListEvents(
            api.ListEventsRequest(
                phone=PHONE, brand="acme", at_least_as_fresh=again[-1].consistency_token
            )
        )
    listed = [(e.event.event_id,) for e in events.events if e.event.event_type == "MessageSent"]
    assert [set(a) for a in answers] == [{one} for one in listed]
