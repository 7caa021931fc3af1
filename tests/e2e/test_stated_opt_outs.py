"""An opt-out stamped ahead of the service's clock keeps the time it said
(``ConsentRevoked.stated_at``), and a consent stated no later than that time that
would be placed after it is refused on ``occurred_at``: through the real gRPC
server, on the real Kafka ledger and on the embedded default's PostgreSQL ledger,
for every way an opt-out and a consent reach the ledger."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb
from google.protobuf import json_format

from ledger.events import ConsentRevoked
from tests.builders import proof_proto as proof
from tests.e2e.harness import (
    Clock,
    client,
    define,
    imported,
    inbound,
    module_clock,
    opt_in,
    opt_out,
    serving,
    ts,
)
from tests.e2e.test_write_races import NUMBER, allowed, token

pytestmark = pytest.mark.asyncio(loop_scope="session")


def campaigns(clock: Clock) -> list[api.DefineCampaignRequest]:
    """acme's "promo" (sending from ``NUMBER``) and "other"."""
    return [
        define("acme", "promo", clock.now - timedelta(days=1), [NUMBER]),
        define("acme", "other", clock.now - timedelta(days=1), ["+12125550178"]),
    ]


@pytest.fixture(scope="module", params=["kafka", "embedded"])
async def service(request, module_serve):
    """``campaigns`` on a clock the tests move, one service per ledger for the
    module: each test writes numbers of its own and moves the clock only forward,
    from where it finds it (``t = clock.now``)."""
    clock = module_clock()
    on_kafka = request.param == "kafka"
    runtime = await module_serve(
        on_kafka=on_kafka, name="stated", clock=clock, campaigns=campaigns(clock)
    )
    return runtime, clock


@pytest.fixture(params=["kafka", "embedded"])
async def own_service(request, tmp_path, postgres_dsn, kafka_bootstrap):
    """``service`` for a test of its own: one that changes the brand's policy, which
    would change what the others find."""
    clock = Clock()
    bootstrap = kafka_bootstrap if request.param == "kafka" else None
    async with serving(
        tmp_path, postgres_dsn, bootstrap, name="stated", clock=clock, campaigns=campaigns(clock)
    ) as runtime:
        yield runtime, clock


async def refused_on_occurred_at(call) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert "occurred_at" in (refused.value.details() or "")


async def denied_whatever_recorded(c, phone, call, *writes) -> None:
    """``call`` (a consent) may be refused or recorded (losing to the opt-out in the
    fold); either way ``phone`` stays denied."""
    try:
        writes = (*writes, await call)
    except grpc.aio.AioRpcError as e:
        assert e.code() is grpc.StatusCode.INVALID_ARGUMENT, e.details()
    assert await allowed(c, phone, token(*writes)) == [False, False]


async def test_a_stopall_stamped_ahead_refuses_an_opt_in_stated_before_it(service):
    runtime, clock = service
    t = clock.now
    async with client(runtime.address, "acme-app") as c:
        phone = "+14155550301"
        stopped = await c.RecordOptOut(opt_out(phone, "acme", None, t + timedelta(seconds=40)))
        clock.now = t + timedelta(seconds=25)
        between = t + timedelta(seconds=20)
        await refused_on_occurred_at(
            c.RecordOptIn(opt_in(phone, "acme", "promo", between, proof=proof(between)))
        )
        assert await allowed(c, phone, token(stopped)) == [False, False]


async def test_an_opt_out_of_another_campaign_under_revoke_all(own_service):
    """Under the brand's revoke-all setting an opt-out of "other" stamped ahead ends
    "promo" too: an opt-in of "promo" stated before it never allows."""
    runtime, clock = own_service
    t = clock.now
    async with client(runtime.address, "admin") as admin:
        await admin.SetBrandPolicy(
            api.SetBrandPolicyRequest(request_id=uuid.uuid4().hex, brand="acme", revoke_all=True)
        )
    async with client(runtime.address, "acme-app") as c:
        phone = "+14155550302"
        stopped = await c.RecordOptOut(opt_out(phone, "acme", "other", t + timedelta(seconds=40)))
        clock.now = t + timedelta(seconds=25)
        between = t + timedelta(seconds=20)
        late = c.RecordOptIn(opt_in(phone, "acme", "promo", between, proof=proof(between)))
        await denied_whatever_recorded(c, phone, late, stopped)


@pytest.mark.parametrize(
    "kept,other",
    [
        ("+5491112344101", "+541112344101"),
        ("+541112344102", "+5491112344102"),
        ("+24166441012", "+24106441012"),
    ],
)
async def test_an_opt_out_under_another_spelling_stamped_ahead(service, kept, other):
    runtime, clock = service
    t = clock.now
    async with client(runtime.address, "acme-app") as c:
        stopped = await c.RecordOptOut(opt_out(other, "acme", "promo", t + timedelta(seconds=40)))
        clock.now = t + timedelta(seconds=25)
        between = t + timedelta(seconds=20)
        late = c.RecordOptIn(opt_in(kept, "acme", "promo", between, proof=proof(between)))
        await denied_whatever_recorded(c, kept, late, stopped)
        assert await allowed(c, other, token(stopped)) == [False, False]


async def test_a_reviewers_revoked_stamped_ahead(service):
    """A reviewer's "revoked" stamped ahead keeps its time: an opt-in or a START
    stated before it, sent after it, never allows."""
    runtime, clock = service
    t = clock.now
    async with client(runtime.address, "acme-app") as c:
        phone = "+14155550303"
        granted = await c.RecordOptIn(opt_in(phone, "acme", "promo", t - timedelta(hours=1)))
        reply = await c.HandleInboundMessage(
            inbound(phone, NUMBER, "can you not message me", t - timedelta(minutes=5))
        )
        assert reply.intent == api.INBOUND_INTENT_REVOCATION_CANDIDATE
        events = await c.ListEvents(
            api.ListEventsRequest(
                phone=phone, brand="acme", at_least_as_fresh=reply.consistency_token
            )
        )
        (candidate,) = [
            e.event.event_id
            for e in events.events
            if e.event.event_type == "RevocationCandidateFlagged"
        ]
        stated = t + timedelta(seconds=40)
        revoked = await c.ResolveRevocationCandidate(
            api.ResolveRevocationCandidateRequest(
                request_id=uuid.uuid4().hex,
                phone=phone,
                brand="acme",
                candidate_event_id=candidate,
                resolution=lpb.CANDIDATE_RESOLUTION_REVOKED,
                occurred_at=ts(stated),
                resolved_by="reviewer",
            )
        )
        fresh = token(granted, reply, revoked)
        events = await c.ListEvents(
            api.ListEventsRequest(phone=phone, brand="acme", at_least_as_fresh=fresh)
        )
        (opted_out,) = [e for e in events.events if e.event.event_type == "ConsentRevoked"]
        assert opted_out.event.consent_revoked.stated_at == ts(stated)

        clock.now = t + timedelta(seconds=25)
        between = t + timedelta(seconds=20)
        await refused_on_occurred_at(
            c.RecordOptIn(opt_in(phone, "acme", "promo", between, proof=proof(between)))
        )
        await refused_on_occurred_at(
            c.HandleInboundMessage(inbound(phone, NUMBER, "START", between))
        )
        assert await allowed(c, phone, fresh) == [False, False]


@pytest.mark.parametrize("consent", ["opt-in", "START"])
async def test_an_imported_opt_out_stamped_ahead_then_a_live_consent(service, consent):
    runtime, clock = service
    t = clock.now
    async with client(runtime.address, "acme-app") as c:
        phone = "+14155550304" if consent == "opt-in" else "+14155550305"
        granted = await c.RecordOptIn(opt_in(phone, "acme", "promo", t - timedelta(hours=1)))
        first = await imported(
            c, api.ImportRecord(opt_out=opt_out(phone, "acme", "promo", t + timedelta(seconds=40)))
        )
        assert (first.imported, list(first.refusals)) == (1, [])
        clock.now = t + timedelta(seconds=25)
        between = t + timedelta(seconds=20)
        if consent == "opt-in":
            call = c.RecordOptIn(opt_in(phone, "acme", "promo", between, proof=proof(between)))
        else:
            call = c.HandleInboundMessage(inbound(phone, NUMBER, "START", between))
        await refused_on_occurred_at(call)
        assert await allowed(c, phone, token(granted, first)) == [False, False]


async def test_a_live_opt_out_stamped_ahead_then_an_imported_opt_in(service):
    runtime, clock = service
    t = clock.now
    async with client(runtime.address, "acme-app") as c:
        phone = "+14155550306"
        stopped = await c.RecordOptOut(opt_out(phone, "acme", None, t + timedelta(seconds=40)))
        clock.now = t + timedelta(seconds=25)
        between = t + timedelta(seconds=20)
        record = opt_in(phone, "acme", "promo", between, "between", proof=proof(between))
        answer = await imported(c, api.ImportRecord(opt_in=record))
        assert answer.imported == 0
        (refusal,) = answer.refusals
        assert [v.field for v in refusal.violations] == ["occurred_at"]
        assert await allowed(c, phone, token(stopped, answer)) == [False, False]


async def test_an_opt_out_then_an_opt_in_in_later_messages_of_one_import(service):
    runtime, clock = service
    t = clock.now
    async with client(runtime.address, "acme-app") as c:
        phone = "+14155550310"
        between = t + timedelta(seconds=20)
        first_answered = asyncio.Event()

        async def messages():
            stop = opt_out(phone, "acme", None, t + timedelta(seconds=40))
            yield api.ImportConsentsRequest(records=[api.ImportRecord(opt_out=stop)])
            await first_answered.wait()
            clock.now = t + timedelta(seconds=25)
            late = opt_in(phone, "acme", "promo", between, proof=proof(between))
            yield api.ImportConsentsRequest(records=[api.ImportRecord(opt_in=late)])

        stream = c.stub.ImportConsents(
            messages(), metadata=[("authorization", f"Bearer {c.token}")], timeout=60
        )
        answers = []
        async for answer in stream:
            answers.append(answer)
            first_answered.set()
        assert [a.imported for a in answers] == [1, 0]
        assert [v.field for v in answers[1].refusals[0].violations] == ["occurred_at"]
        assert await allowed(c, phone, token(*answers)) == [False, False]


async def test_a_retry_of_a_refused_opt_in_stays_refused(service):
    """The same request id, sent again at once, a moment later and once the clock has
    passed the opt-out's time: the same request, refused each time."""
    runtime, clock = service
    t = clock.now
    async with client(runtime.address, "acme-app") as c:
        phone = "+14155550307"
        stopped = await c.RecordOptOut(opt_out(phone, "acme", "promo", t + timedelta(seconds=40)))
        between = t + timedelta(seconds=20)
        request = opt_in(phone, "acme", "promo", between, "retried", proof=proof(between))
        for now in (t + timedelta(seconds=25), t + timedelta(seconds=30), t + timedelta(days=1)):
            clock.now = now
            await refused_on_occurred_at(c.RecordOptIn(request))
        assert await allowed(c, phone, token(stopped)) == [False, False]


async def test_an_opt_out_stamped_at_the_skew_limit(service):
    """Five minutes ahead is kept; a consent stated at that very time loses (the
    revocation wins at the same instant), a microsecond after it allows."""
    runtime, clock = service
    t = clock.now
    async with client(runtime.address, "acme-app") as c:
        phone = "+14155550308"
        edge = t + timedelta(minutes=5)
        stopped = await c.RecordOptOut(opt_out(phone, "acme", "promo", edge))
        for now in (t + timedelta(seconds=1), edge):
            clock.now = now
            await refused_on_occurred_at(
                c.RecordOptIn(opt_in(phone, "acme", "promo", edge, proof=proof(edge)))
            )
        assert await allowed(c, phone, token(stopped)) == [False, False]
        after = edge + timedelta(microseconds=1)
        clock.now = after
        granted = await c.RecordOptIn(opt_in(phone, "acme", "promo", after, proof=proof(after)))
        assert await allowed(c, phone, token(stopped, granted)) == [True, True]


async def test_a_consent_stated_within_the_opt_outs_microsecond(service):
    """Times are kept to the microsecond: an opt-out at T+40 s + 999 ns and an opt-in
    at T+40 s + 500 ns are at one instant, where the revocation wins."""
    runtime, clock = service
    t = clock.now
    async with client(runtime.address, "acme-app") as c:
        phone = "+14155550311"
        stop = opt_out(phone, "acme", "promo", t + timedelta(seconds=40))
        stop.occurred_at.nanos = 999
        stopped = await c.RecordOptOut(stop)
        clock.now = t + timedelta(seconds=25)
        at = t + timedelta(seconds=40)
        late = opt_in(phone, "acme", "promo", at, proof=proof(at))
        late.occurred_at.nanos = 500
        await denied_whatever_recorded(c, phone, c.RecordOptIn(late), stopped)


async def test_every_reader_shows_the_time_an_opt_out_stamped_ahead_said(service):
    """GetConsent and ListEvents give ``stated_at``; the proof packet gave only the
    time the opt-out took its place, so an auditor could not see that it said a
    later one, which is what refuses a consent stated between the two."""
    runtime, clock = service
    t = clock.now
    async with client(runtime.address, "acme-app") as c:
        phone = "+14155550309"
        granted = await c.RecordOptIn(opt_in(phone, "acme", "promo", t - timedelta(hours=1)))
        stated = t + timedelta(seconds=40)
        stopped = await c.RecordOptOut(opt_out(phone, "acme", "promo", stated))
        fresh = token(granted, stopped)
        consent = await c.GetConsent(
            api.GetConsentRequest(
                phone=phone, brand="acme", campaign="promo", at_least_as_fresh=fresh
            )
        )
        assert consent.revocation.event.consent_revoked.stated_at == ts(stated)
        events = await c.ListEvents(
            api.ListEventsRequest(phone=phone, brand="acme", at_least_as_fresh=fresh)
        )
        (revoked,) = [e for e in events.events if e.event.event_type == "ConsentRevoked"]
        assert revoked.event.consent_revoked.stated_at == ts(stated)

        packet = await c.GetProofPacket(
            api.GetProofPacketRequest(
                phone=phone,
                brand="acme",
                campaign="promo",
                format=api.PACKET_FORMAT_HTML,
                at_least_as_fresh=fresh,
            )
        )
        (opted_out,) = json_format.MessageToDict(packet.packet)["opt_outs"]
        said = stated.isoformat().replace("+00:00", "Z")
        assert opted_out["stated_at"] == said
        assert opted_out["event"]["occurred_at"] == t.isoformat().replace("+00:00", "Z")
        assert said in opted_out["handling"]
        assert said in packet.document.decode()


async def held_ahead(c, phone, held, said):
    """Hold an opt-out stamped ``said`` (ahead): a RecordOptOut naming an undefined
    campaign, or a reply read as a possible revocation. Returns the write's answer and
    the candidate's event id."""
    if held == "reply":
        flagged = await c.HandleInboundMessage(
            inbound(phone, NUMBER, "can you not message me", said)
        )
    else:
        flagged = await c.RecordOptOut(opt_out(phone, "acme", "nope", said))
    events = await c.ListEvents(
        api.ListEventsRequest(
            phone=phone, brand="acme", at_least_as_fresh=flagged.consistency_token
        )
    )
    (candidate,) = [
        e.event.event_id
        for e in events.events
        if e.event.event_type == "RevocationCandidateFlagged"
    ]
    return flagged, candidate


def revoke(phone, candidate, at):
    return api.ResolveRevocationCandidateRequest(
        request_id=uuid.uuid4().hex,
        phone=phone,
        brand="acme",
        candidate_event_id=candidate,
        resolution=lpb.CANDIDATE_RESOLUTION_REVOKED,
        occurred_at=ts(at),
        resolved_by="reviewer",
    )


@pytest.mark.parametrize("held", ["unknown campaign", "reply"])
async def test_a_held_opt_out_stamped_ahead_revoked_then_an_opt_in_stated_before_it(service, held):
    """A RecordOptOut naming no defined campaign (or a reply that reads like an opt-out)
    stamped T+40 s at T is held, placed at T. A reviewer's "revoked" at T+10 s made a
    ConsentRevoked at T+10 s with no stated time, and an opt-in stated T+20 s, sent at
    T+25 s, was recorded and every check allowed, though by the records' own times the
    opt-out is the later word. The candidate keeps the time it said, and the
    revocation takes effect no earlier."""
    runtime, clock = service
    t = clock.now
    async with client(runtime.address, "acme-app") as c:
        phone = "+14155550421" if held == "reply" else "+14155550422"
        granted = await c.RecordOptIn(opt_in(phone, "acme", "promo", t - timedelta(hours=1)))
        flagged, candidate = await held_ahead(c, phone, held, t + timedelta(seconds=40))
        clock.now = t + timedelta(seconds=10)
        revoked = await c.ResolveRevocationCandidate(revoke(phone, candidate, clock.now))
        clock.now = t + timedelta(seconds=25)
        between = t + timedelta(seconds=20)
        late = c.RecordOptIn(opt_in(phone, "acme", "promo", between, proof=proof(between)))
        await denied_whatever_recorded(c, phone, late, granted, flagged, revoked)


@pytest.mark.parametrize("held", ["unknown campaign", "reply"])
async def test_a_held_opt_out_stamped_ahead_revoked_dated_before_an_opt_in_after_it(service, held):
    """The same hold (stamped T+40 s, placed at T); an opt-in stated T+20 s is recorded
    at T+25 s; then a "revoked" recorded at T+60 s but dated T+1 s was placed before
    the opt-in, which stood: allowed. The revocation takes effect no earlier than the
    opt-out's own time (T+40 s), after the opt-in: denied."""
    runtime, clock = service
    t = clock.now
    async with client(runtime.address, "acme-app") as c:
        phone = "+14155550423" if held == "reply" else "+14155550424"
        granted = await c.RecordOptIn(opt_in(phone, "acme", "promo", t - timedelta(hours=1)))
        flagged, candidate = await held_ahead(c, phone, held, t + timedelta(seconds=40))
        clock.now = t + timedelta(seconds=25)
        between = t + timedelta(seconds=20)
        consented = await c.RecordOptIn(
            opt_in(phone, "acme", "promo", between, proof=proof(between))
        )
        clock.now = t + timedelta(seconds=60)
        revoked = await c.ResolveRevocationCandidate(
            revoke(phone, candidate, t + timedelta(seconds=1))
        )
        assert await allowed(c, phone, token(granted, flagged, consented, revoked)) == [
            False,
            False,
        ]


@pytest.mark.parametrize("held", ["unknown campaign", "reply"])
async def test_an_opt_in_sent_while_a_held_opt_out_s_revocation_is_appended(service, held):
    """The hold stamped T+40 s, placed at T; a reviewer's "revoked" at T+10 s is slow
    to be acknowledged, and an opt-in stated T+20 s comes meanwhile. It was checked
    while the revocation was on its way to the ledger (a resolution took no turn of
    the number) and recorded, answered OK, though by the records' own times the
    opt-out is the later word (the fold lets it outrank nothing, but the client was
    told it stood). A "revoked" resolution now takes the number's turn, as an
    opt-out does, until its append ends: the opt-in is checked after it, refused."""
    runtime, clock = service
    t = clock.now
    appends = runtime.usecases.writes.ctx.ledger
    append = appends.append
    appending, acknowledged = asyncio.Event(), asyncio.Event()

    async def slow_to_acknowledge(events):
        if any(isinstance(e, ConsentRevoked) for e in events) and not acknowledged.is_set():
            appending.set()
            await acknowledged.wait()
        return await append(events)

    async with client(runtime.address, "acme-app") as c:
        phone = "+14155550425" if held == "reply" else "+14155550426"
        granted = await c.RecordOptIn(opt_in(phone, "acme", "promo", t - timedelta(hours=1)))
        flagged, candidate = await held_ahead(c, phone, held, t + timedelta(seconds=40))
        clock.now = t + timedelta(seconds=10)
        appends.append = slow_to_acknowledge
        try:
            revoking = asyncio.ensure_future(
                c.ResolveRevocationCandidate(revoke(phone, candidate, clock.now))
            )
            await asyncio.wait_for(appending.wait(), 60)  # the revocation on its way
            clock.now = t + timedelta(seconds=25)
            between = t + timedelta(seconds=20)
            late = asyncio.ensure_future(
                c.RecordOptIn(opt_in(phone, "acme", "promo", between, proof=proof(between)))
            )
            await asyncio.wait({late}, timeout=3)  # time to be checked, if it may
            acknowledged.set()
            revoked = await revoking
        finally:
            appends.append = append  # the service goes on serving the module's tests
            acknowledged.set()
        await refused_on_occurred_at(late)
        assert await allowed(c, phone, token(granted, flagged, revoked)) == [False, False]
