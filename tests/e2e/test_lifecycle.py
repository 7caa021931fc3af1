"""The full life of a number, through a real gRPC client, against the real Kafka
broker and the real PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from ledger.ports import ConsistencyToken, Stream
from services.bootstrap import Runtime
from services.grpc_api.server import MAX_REQUEST_BYTES
from tests.e2e.harness import (
    Clock,
    already_recorded,
    client,
    define,
    held_info,
    inbound,
    module_clock,
    opt_in,
    opt_out,
    precondition_violations,
    proof,
    sent,
    status_details,
    ts,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

PHONE = "+14155552671"  # Los Angeles
ACME_NUMBER = "+12125550100"
ALERTS_NUMBER = "+12125550101"
GLOBEX_NUMBER = "+13125550100"


def campaigns(clock: Clock) -> list[api.DefineCampaignRequest]:
    return [
        define(brand, campaign, clock.now - timedelta(days=60), [number])
        for brand, campaign, number in (
            ("acme", "promo", ACME_NUMBER),
            ("acme", "alerts", ALERTS_NUMBER),
            ("globex", "promo", GLOBEX_NUMBER),
        )
    ]


@pytest.fixture
async def service(serve):
    clock = Clock()
    return await serve(clock=clock, campaigns=campaigns(clock)), clock


@pytest.fixture(scope="module")
async def refusing(module_serve):
    """One service for every bad input: each is refused writing nothing, or its one
    hold, which the test counts from what it found before."""
    clock = module_clock()
    return await module_serve(name="refusing", clock=clock, campaigns=campaigns(clock)), clock


async def check(
    c,
    token: str = "",
    phone: str = PHONE,
    campaign: str = "promo",
    brand: str = "acme",
    kind: int = 0,
) -> api.CanSendResponse:
    return await c.CanSend(
        api.CanSendRequest(
            phone=phone, brand=brand, campaign=campaign, at_least_as_fresh=token, message_kind=kind
        )
    )


async def test_the_full_life_of_a_number(service):
    runtime, clock = service
    async with client(runtime.address, "acme-app") as c:
        t = clock.now
        # Before any consent: no.
        r = await check(c)
        assert not r.allowed and r.reason == api.REASON_NO_CONSENT

        # Opt-in, then the first message carries obligations.
        w = await c.RecordOptIn(opt_in(PHONE, "acme", "promo", t - timedelta(minutes=10)))
        r = await check(c, w.consistency_token)
        assert r.allowed and r.reason == api.REASON_CONSENT_ACTIVE
        assert {api.OBLIGATION_INCLUDE_OPT_OUT_LANGUAGE, api.OBLIGATION_IDENTIFY_SENDER} <= set(
            r.obligations
        )
        assert w.event_ids[0] in r.evidence_event_ids
        assert r.policy_version == 1

        w = await c.RecordMessageSent(
            sent(PHONE, "acme", "promo", t - timedelta(minutes=5), message_id="SM-first")
        )
        r = await check(c, w.consistency_token)
        assert r.allowed and api.OBLIGATION_INCLUDE_OPT_OUT_LANGUAGE not in r.obligations

        # STOP: the reply owed is the one confirmation, then nothing.
        stop = await c.HandleInboundMessage(
            inbound(PHONE, ACME_NUMBER, "Stop", t - timedelta(minutes=2))
        )
        assert stop.intent == api.INBOUND_INTENT_OPT_OUT
        assert stop.reply == api.REPLY_KIND_OPT_OUT_CONFIRMATION
        assert (stop.brand, stop.campaign) == ("acme", "promo")
        r = await check(c, stop.consistency_token)
        assert not r.allowed and r.reason == api.REASON_REVOKED
        confirm = lpb.MESSAGE_KIND_OPT_OUT_CONFIRMATION
        r = await check(c, stop.consistency_token, kind=confirm)
        assert r.allowed and api.OBLIGATION_NON_MARKETING_CONTENT_ONLY in r.obligations
        w = await c.RecordMessageSent(
            sent(
                PHONE,
                "acme",
                "promo",
                t - timedelta(minutes=1),
                message_id="SM-confirm",
                kind=confirm,
                included_opt_out_language=False,
                identified_sender=False,
            )
        )
        r = await check(c, w.consistency_token, kind=confirm)
        assert not r.allowed and r.reason == api.REASON_OPT_OUT_CONFIRMATION_NOT_ALLOWED

        # START with the prior consent resumes it.
        start = await c.HandleInboundMessage(
            inbound(PHONE, ACME_NUMBER, "START", t - timedelta(seconds=30))
        )
        assert start.intent == api.INBOUND_INTENT_OPT_IN
        r = await check(c, start.consistency_token)
        assert r.allowed

        # STOPALL ends every campaign of the brand.
        w = await c.RecordOptIn(opt_in(PHONE, "acme", "alerts", t - timedelta(seconds=20)))
        stopall = await c.HandleInboundMessage(
            inbound(PHONE, ALERTS_NUMBER, "STOPALL", t - timedelta(seconds=10))
        )
        for campaign in ("promo", "alerts"):
            r = await check(c, stopall.consistency_token, campaign=campaign)
            assert not r.allowed and r.reason == api.REASON_REVOKED_BRAND_WIDE

        # The auditor's view: every fact, and the decision as it stood before the STOP.
        events = await c.ListEvents(
            api.ListEventsRequest(
                phone=PHONE, brand="acme", at_least_as_fresh=stopall.consistency_token
            )
        )
        types = [e.event.event_type for e in events.events]
        assert types.count("ConsentGranted") == 2 and "ConsentResumed" in types
        # Each fact names the caller that recorded it, through Kafka and the projection.
        assert {e.event.recorded_by for e in events.events} == {"acme-app"}
        past = await c.CanSendAsOf(
            api.CanSendAsOfRequest(
                phone=PHONE, brand="acme", campaign="promo", at=ts(t - timedelta(minutes=3))
            )
        )
        assert past.allowed
        consent = await c.GetConsent(
            api.GetConsentRequest(phone=PHONE, brand="acme", campaign="promo")
        )
        assert consent.state == api.CONSENT_STATE_REVOKED_BRAND_WIDE
        assert consent.grant.event.consent_granted.proof.form_url.startswith("https://acme")
        assert consent.grant.event.recorded_by == "acme-app"


async def test_reconfirmation_after_a_silent_first_message_window(service):
    runtime, clock = service
    async with client(runtime.address, "acme-app") as c:
        old = clock.now - timedelta(days=45)
        w = await c.RecordOptIn(opt_in(PHONE, "acme", "promo", old))
        r = await check(c, w.consistency_token)
        assert r.allowed and api.OBLIGATION_RECONFIRM_IN_THIS_MESSAGE in r.obligations
        w = await c.RecordReconfirmation(
            api.RecordReconfirmationRequest(
                request_id=uuid.uuid4().hex,
                phone=PHONE,
                brand="acme",
                campaign="promo",
                channel=lpb.REVOCATION_CHANNEL_KEYWORD,
                occurred_at=ts(clock.now),
            )
        )
        r = await check(c, w.consistency_token)
        assert r.allowed and api.OBLIGATION_RECONFIRM_IN_THIS_MESSAGE not in r.obligations


async def test_a_second_brand_is_isolated_from_the_first(service):
    runtime, clock = service
    async with (
        client(runtime.address, "acme-app") as acme,
        client(runtime.address, "globex-app") as globex,
    ):
        w = await acme.RecordOptIn(opt_in(PHONE, "acme", "promo", clock.now))
        r = await check(globex, w.consistency_token, brand="globex")
        assert not r.allowed and r.reason == api.REASON_NO_CONSENT
        for call in (
            check(globex, brand="acme"),
            globex.RecordOptOut(opt_out(PHONE, "acme", None, clock.now, "x")),
            globex.ListEvents(api.ListEventsRequest(phone=PHONE, brand="acme")),
            globex.ListEvents(api.ListEventsRequest(phone=PHONE)),
            globex.HandleInboundMessage(inbound(PHONE, ACME_NUMBER, "STOP", None)),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() in (
                grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.INVALID_ARGUMENT,
            )
        with pytest.raises(grpc.aio.AioRpcError) as err:  # acme's number, globex's token
            await globex.HandleInboundMessage(inbound(PHONE, ACME_NUMBER, "hello", clock.now))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "acme" not in err.value.details()  # whose number it is stays unsaid
        r = await check(acme, w.consistency_token)
        assert r.allowed  # nothing globex tried reached acme's consent


async def test_an_opt_out_filed_under_one_campaign_that_says_stopall_ends_every_campaign(
    service,
):
    """A caller files the person's STOPALL under the campaign it came through: the
    words say every campaign of the brand, so the brand's other campaign denies too."""
    runtime, clock = service
    async with client(runtime.address, "acme-app") as c:
        for campaign in ("promo", "alerts"):
            await c.RecordOptIn(opt_in(PHONE, "acme", campaign, clock.now - timedelta(minutes=5)))
        w = await c.RecordOptOut(
            opt_out(PHONE, "acme", "promo", clock.now, text="StopAll",
                    channel=lpb.REVOCATION_CHANNEL_KEYWORD)
        )  # fmt: skip
        for campaign in ("promo", "alerts"):
            r = await check(c, w.consistency_token, campaign=campaign)
            assert not r.allowed and r.reason == api.REASON_REVOKED_BRAND_WIDE, (campaign, r)


async def test_another_brands_sender_number_is_refused_and_its_stop_stays_with_it(service):
    runtime, clock = service
    t = clock.now
    async with client(runtime.address, "acme-app") as acme:
        granted = await acme.RecordOptIn(opt_in(PHONE, "acme", "promo", t - timedelta(minutes=10)))
        assert (await check(acme, granted.consistency_token)).allowed
    campaign_events = await runtime.ledger.end_offsets(Stream.CAMPAIGNS)
    async with client(runtime.address, "globex-admin") as globex:
        claim_it = api.ChangeCampaignPolicyRequest(
            request_id=uuid.uuid4().hex,
            brand="globex",
            campaign="promo",
            occurred_at=ts(t - timedelta(seconds=1)),
            policy=lpb.CampaignPolicy(sender_numbers=[GLOBEX_NUMBER, ACME_NUMBER]),
        )
        for call, field in (
            (globex.DefineCampaign(define("globex", "deals", t, [ACME_NUMBER])), "[0]"),
            (globex.ChangeCampaignPolicy(claim_it), "[1]"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            [(subject, description)] = precondition_violations(err.value)
            assert subject == f"policy.sender_numbers{field}" and "in use" in description
            assert "acme" not in f"{err.value.details()} {description}"  # whose, is not said
    assert await runtime.ledger.end_offsets(Stream.CAMPAIGNS) == campaign_events

    async with client(runtime.address, "acme-app") as acme:
        stop = await acme.HandleInboundMessage(
            inbound(PHONE, ACME_NUMBER, "STOP", t - timedelta(minutes=1))
        )
        assert (stop.brand, stop.campaign) == ("acme", "promo")
        r = await check(acme, stop.consistency_token)
        assert not r.allowed and r.reason == api.REASON_REVOKED


async def test_a_retried_write_records_nothing_twice(service):
    runtime, clock = service
    async with client(runtime.address, "acme-app") as c:
        request = opt_in(PHONE, "acme", "promo", clock.now, request_id="retry-me")
        first = await c.RecordOptIn(request)
        second = await c.RecordOptIn(request)
        assert list(first.event_ids) == list(second.event_ids)
    async with client(runtime.address) as admin:  # the same request from another caller
        third = await admin.RecordOptIn(request)
        assert list(third.event_ids) == list(first.event_ids)
        events = await admin.ListEvents(
            api.ListEventsRequest(
                phone=PHONE, brand="acme", at_least_as_fresh=third.consistency_token
            )
        )
        assert [e.event.event_type for e in events.events] == ["ConsentGranted"]
        assert events.events[0].event.recorded_by == "acme-app"  # the first caller's


async def test_a_request_id_names_one_request_of_one_brand(service):
    runtime, clock = service
    async with (
        client(runtime.address, "acme-app") as acme,
        client(runtime.address, "globex-app") as globex,
    ):
        a = await acme.RecordOptIn(opt_in(PHONE, "acme", "promo", clock.now, request_id="r1"))
        await globex.RecordOptIn(opt_in(PHONE, "globex", "promo", clock.now))
        stop = await globex.RecordOptOut(  # globex's own "r1": a new fact, not acme's retry
            opt_out(PHONE, "globex", "promo", clock.now, "r1")
        )
        assert list(stop.event_ids) != list(a.event_ids)
        r = await check(globex, stop.consistency_token, brand="globex")
        assert not r.allowed and r.reason == api.REASON_REVOKED
        # acme reuses "r1" for a STOP: no retry of its opt-in, and refused; the STOP is
        # held for review, not lost, so the number is denied meanwhile.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await acme.RecordOptOut(
                opt_out(PHONE, "acme", "promo", clock.now + timedelta(seconds=1), "r1")
            )
        assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert already_recorded(refused.value) == list(a.event_ids)
        held = held_info(refused.value)
        assert held is not None, refused.value.details()
        r = await check(acme, held["consistency_token"])
        assert not r.allowed and r.reason == api.REASON_REVOCATION_PENDING_REVIEW, r
        retry = await acme.RecordOptIn(opt_in(PHONE, "acme", "promo", clock.now, request_id="r1"))
        assert list(retry.event_ids) == list(a.event_ids)  # the unchanged retry still is one


BAD_WRITES = [
    ("RecordOptIn", lambda t: opt_in("+1555", "acme", "promo", t), "phone"),
    (
        "RecordOptIn",
        lambda t: opt_in(PHONE, "acme", "promo", t, source=lpb.LIST_SOURCE_PURCHASED),
        "source",
    ),
    (
        "RecordOptIn",
        lambda t: opt_in(PHONE, "acme", "promo", t, proof=lpb.ConsentProof(registered_at=ts(t))),
        "proof.",
    ),
    (
        "RecordOptIn",
        lambda t: opt_in(PHONE, "acme", "promo", t + timedelta(hours=1)),
        "occurred_at",
    ),
    ("RecordOptIn", lambda t: opt_in(PHONE, "acme", "promo", t, request_id=""), "request_id"),
    (
        "RecordOptOut",
        lambda t: api.RecordOptOutRequest(
            request_id="a",
            phone="nope",
            brand="acme",
            channel=lpb.REVOCATION_CHANNEL_API,
            occurred_at=ts(t),
        ),
        "phone",
    ),
    (
        "RecordReconfirmation",
        lambda t: api.RecordReconfirmationRequest(
            request_id="b", phone=PHONE, brand="acme", campaign="promo", occurred_at=ts(t)
        ),
        "channel",
    ),
    (
        "RecordMessageSent",
        lambda t: api.RecordMessageSentRequest(
            request_id="c", phone=PHONE, brand="acme", campaign="promo", occurred_at=ts(t)
        ),
        "message_id",
    ),
    (
        "RecordAgeVerification",
        lambda t: api.RecordAgeVerificationRequest(
            request_id="d", phone=PHONE, brand="acme", method="id", occurred_at=ts(t)
        ),
        "date_of_birth",
    ),
    (
        "HandleInboundMessage",
        lambda t: inbound("x", ACME_NUMBER, "STOP", t, "e", message_id="m"),
        "from_phone",
    ),
    (
        "ResolveRevocationCandidate",
        lambda t: api.ResolveRevocationCandidateRequest(
            request_id="f",
            phone=PHONE,
            brand="acme",
            candidate_event_id="not-a-uuid",
            resolution=lpb.CANDIDATE_RESOLUTION_DISMISSED,
            occurred_at=ts(t),
        ),
        "candidate_event_id",
    ),
    (
        "DefineCampaign",
        lambda t: api.DefineCampaignRequest(
            request_id="g", brand="acme", campaign="late", occurred_at=ts(t)
        ),
        "policy",
    ),
    (
        "ChangeCampaignPolicy",
        lambda t: api.ChangeCampaignPolicyRequest(
            request_id="h",
            brand="acme",
            campaign="promo",
            occurred_at=ts(t),
            policy=lpb.CampaignPolicy(daily_cap=0),
        ),
        "policy.daily_cap",
    ),
    (  # protobuf's ToTimedelta overflowed: the edge said UNAVAILABLE, "retry"
        "DefineCampaign",
        lambda t: define("acme", "late", t, first_message_window=Duration(seconds=2**62)),
        "policy.first_message_window",
    ),
    (  # a ten-year window allowed an opt-out "confirmation" 200 days after the STOP
        "DefineCampaign",
        lambda t: define(
            "acme", "late", t, opt_out_confirmation_window=Duration(seconds=10 * 365 * 86400)
        ),
        "policy.opt_out_confirmation_window",
    ),
    (  # a ten-year window let a consent unused for 300 days be texted, unreconfirmed
        "DefineCampaign",
        lambda t: define(
            "acme", "late", t, first_message_window=Duration(seconds=10 * 365 * 86400)
        ),
        "policy.first_message_window",
    ),
    (
        "HandleInboundMessage",
        lambda t: inbound(PHONE, ACME_NUMBER, "STOP" + "!" * 4_096, t, "i", message_id="m"),
        "body",
    ),
    (
        "RecordOptIn",
        lambda t: opt_in(
            PHONE, "acme", "promo", t, proof=lpb.ConsentProof(**_proof_fields(t), name="A" * 257)
        ),
        "proof.name",
    ),
    (
        "RecordOptOut",
        lambda t: api.RecordOptOutRequest(
            request_id="a",
            phone=PHONE,
            brand="acme",
            channel=lpb.REVOCATION_CHANNEL_WEB,
            occurred_at=ts(t),
            text="x" * 16_385,
        ),
        "text",
    ),
]


def _proof_fields(t: datetime) -> dict[str, object]:
    given = proof(t)
    return {f.name: v for f, v in given.ListFields() if f.name != "name"}


@pytest.mark.parametrize(
    ("rpc", "build", "field"), BAD_WRITES, ids=[f"{r}-{f}" for r, _, f in BAD_WRITES]
)
async def test_bad_input_is_refused_with_the_field_and_nothing_is_written(
    refusing, rpc, build, field
):
    runtime, clock = refusing

    async def written(stream: Stream) -> int:
        return sum((await runtime.ledger.end_offsets(stream)).values())

    async with client(runtime.address, "admin") as c:
        before = await c.ListEvents(api.ListEventsRequest(phone=PHONE))
        subscribers = await written(Stream.SUBSCRIBERS)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await getattr(c, rpc)(build(clock.now))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        fields = [f for f, _ in status_details(err.value)]  # every bad field, in one answer
        assert any(f.startswith(field) for f in fields), fields
        # An opt-out or a STOP refused is held for review, its one fact, where its
        # number can be read; else nothing is written.
        held = rpc in ("RecordOptOut", "HandleInboundMessage") and "phone" not in field
        assert "OPT_OUT_HELD_FOR_REVIEW" in str(err.value.trailing_metadata()) or not held
        assert await written(Stream.SUBSCRIBERS) == subscribers + held
        assert await written(Stream.CAMPAIGNS) == 3
        after = await c.ListEvents(api.ListEventsRequest(phone=PHONE))
        assert len(after.events) == len(before.events) + held


async def test_a_request_over_the_server_s_limit_is_refused_whole_and_nothing_is_written(
    service,
):
    runtime, clock = service
    async with client(runtime.address, "admin") as c:
        # 16 MB used to be read, and a fact over Kafka's 1 MiB then failed as "retry".
        oversized = opt_in(PHONE, "acme", "promo", clock.now)
        oversized.proof.consent_text = "x" * (MAX_REQUEST_BYTES + 1)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.RecordOptIn(oversized)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert sum((await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)).values()) == 0
        # A batch of a thousand numbers is well inside it.
        phones = [f"+1 (415) 555-{n:04d}" for n in range(1000)]
        batch = await c.CanSendBatch(
            api.CanSendBatchRequest(brand="acme", campaign="promo", phones=phones)
        )
        assert len(batch.decisions) == 1000


async def test_an_unknown_campaign_is_a_failed_precondition(service):
    runtime, clock = service
    async with client(runtime.address, "acme-app") as c:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.RecordOptIn(opt_in(PHONE, "acme", "nosuch", clock.now))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        r = await check(c, campaign="nosuch")
        assert not r.allowed and r.reason == api.REASON_CAMPAIGN_UNKNOWN
        with pytest.raises(grpc.aio.AioRpcError) as err:  # not "never granted"
            await c.GetConsent(api.GetConsentRequest(phone=PHONE, brand="acme", campaign="nosuch"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert err.value.details() == "campaign: acme/nosuch is not defined"
        for name in ("", "NOT A NAME!"):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await c.GetConsent(api.GetConsentRequest(phone=PHONE, brand="acme", campaign=name))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert [f for f, _ in status_details(err.value)] == ["campaign"]


async def test_calls_without_valid_credentials_are_refused(service):
    runtime, clock = service
    request = api.CanSendRequest(phone=PHONE, brand="acme", campaign="promo")
    async with grpc.aio.insecure_channel(runtime.address) as channel:
        from consent.v1 import consent_service_pb2_grpc as api_grpc

        stub = api_grpc.ConsentServiceStub(channel)
        for metadata in ([], [("authorization", "Bearer wrong")], [("authorization", "Basic x")]):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.CanSend(request, metadata=metadata)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # Every method, those added later too: none answers without a caller.
        api_service = api.DESCRIPTOR.services_by_name["ConsentService"]
        for method in api_service.methods:
            call = channel.unary_unary(
                f"/{api_service.full_name}/{method.name}",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=lambda b: b,
            )
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(getattr(api, method.input_type.name)())
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, method.name
        assert len(api_service.methods) >= 15  # the loop above did run over the API
    async with client(runtime.address, "acme-checker") as checker:
        assert (await check(checker)).reason == api.REASON_NO_CONSENT
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await checker.RecordOptIn(opt_in(PHONE, "acme", "promo", clock.now))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    async with client(runtime.address, "acme-app") as app:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await app.DefineCampaign(define("acme", "new", clock.now))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_policy_change_applies_to_the_next_check(service):
    runtime, clock = service
    async with client(runtime.address, "admin") as c:
        w = await c.RecordOptIn(opt_in(PHONE, "acme", "promo", clock.now))
        r = await check(c, w.consistency_token)
        assert r.allowed and r.policy_version == 1
        changed = await c.ChangeCampaignPolicy(
            api.ChangeCampaignPolicyRequest(
                request_id=uuid.uuid4().hex,
                brand="acme",
                campaign="promo",
                occurred_at=ts(clock.now - timedelta(seconds=1)),
                policy=lpb.CampaignPolicy(sender_numbers=[ACME_NUMBER], age_gated=True),
            )
        )
        r = await check(c, changed.consistency_token)
        assert not r.allowed and r.reason == api.REASON_AGE_VERIFICATION_REQUIRED
        assert r.policy_version == 2


async def test_a_batch_answers_in_request_order_and_a_non_number_in_its_place(service):
    runtime, clock = service
    async with client(runtime.address, "acme-app") as c:
        w = await c.RecordOptIn(opt_in(PHONE, "acme", "promo", clock.now))
        phones = ["+1 (415) 555-2671", "+12125551234", PHONE]
        batch = await c.CanSendBatch(
            api.CanSendBatchRequest(
                brand="acme", campaign="promo", phones=phones, at_least_as_fresh=w.consistency_token
            )
        )
        assert [d.phone for d in batch.decisions] == phones
        assert [d.allowed for d in batch.decisions] == [True, False, True]
        assert batch.decisions[1].reason == api.REASON_NO_CONSENT
        for bad in ("+15551234567", "not a number", "+1415555\u200b2671"):
            # One bad entry no longer fails the other 999: it is answered in its place.
            batch = await c.CanSendBatch(
                api.CanSendBatchRequest(brand="acme", campaign="promo", phones=[PHONE, bad])
            )
            assert [d.phone for d in batch.decisions] == [PHONE, bad]
            assert [d.allowed for d in batch.decisions] == [True, False]
            assert batch.decisions[1].reason == api.REASON_INVALID_PHONE
            assert "E.164, for example +14155552671" in batch.decisions[1].detail
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await c.CanSend(api.CanSendRequest(brand="acme", campaign="promo", phone=bad))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert status_details(err.value)[0][0] == "phone"
        # A bad brand or campaign still fails the whole batch, every bad field named.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.CanSendBatch(
                api.CanSendBatchRequest(brand="acme", campaign="promo\n", phones=[PHONE, "x"])
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in status_details(err.value)] == ["campaign"]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.CanSend(
                api.CanSendRequest(
                    brand="acme", campaign="Promo", phone="nope", at_least_as_fresh="bogus"
                )
            )
        assert sorted(f for f, _ in status_details(err.value)) == [
            "at_least_as_fresh",
            "campaign",
            "phone",
        ]


async def test_a_retried_campaign_definition_is_not_a_redefinition(service):
    runtime, clock = service
    async with client(runtime.address, "admin") as c:
        request = define("acme", "spring", clock.now)
        first = await c.DefineCampaign(request)
        assert await runtime.guard.wait_for_token(ConsistencyToken.decode(first.consistency_token))
        again = await c.DefineCampaign(request)
        assert list(again.event_ids) == list(first.event_ids)
        other = define("acme", "spring", clock.now)  # a new request for the same campaign
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.DefineCampaign(other)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_the_opt_out_rate_counts_sends_and_opt_outs_per_campaign_and_brand(service):
    runtime, clock = service
    t = clock.now
    other = "+14155552672"
    async with client(runtime.address, "acme-app") as c:
        for phone in (PHONE, other):
            await c.RecordOptIn(opt_in(phone, "acme", "promo", t - timedelta(hours=2)))
        for i, (phone, campaign) in enumerate(
            [(PHONE, "promo"), (other, "promo"), (PHONE, "promo"), (other, "alerts")]
        ):
            await c.RecordMessageSent(
                sent(
                    phone,
                    "acme",
                    campaign,
                    t - timedelta(hours=1, minutes=i),
                    f"sent-{i}",
                    message_id=f"SM-{i}",
                    included_opt_out_language=False,
                    identified_sender=False,
                )
            )
        await c.HandleInboundMessage(inbound(PHONE, ACME_NUMBER, "STOP", t - timedelta(minutes=30)))
        stopall = await c.RecordOptOut(
            opt_out(
                other,
                "acme",
                None,
                t - timedelta(minutes=20),
                "stopall",
                channel=lpb.REVOCATION_CHANNEL_KEYWORD,
            )
        )
        fresh = stopall.consistency_token

        promo = await c.GetOptOutRate(
            api.GetOptOutRateRequest(brand="acme", campaign="promo", at_least_as_fresh=fresh)
        )
        assert (promo.messages_sent, promo.opt_outs) == (3, 2)
        assert promo.opt_out_rate == pytest.approx(2 / 3) and promo.above_limit
        assert promo.limit == pytest.approx(0.003)
        assert promo.end_time.ToDatetime(UTC) == t
        assert promo.start_time.ToDatetime(UTC) == t - timedelta(days=30)
        alerts = await c.GetOptOutRate(api.GetOptOutRateRequest(brand="acme", campaign="alerts"))
        assert (alerts.messages_sent, alerts.opt_outs) == (
            1,
            1,
        )  # the STOPALL counts: alerts texted that number
        brand = await c.GetOptOutRate(api.GetOptOutRateRequest(brand="acme"))
        assert (brand.messages_sent, brand.opt_outs) == (4, 2)
        earlier = await c.GetOptOutRate(
            api.GetOptOutRateRequest(brand="acme", end_time=ts(t - timedelta(minutes=45)))
        )
        assert (earlier.messages_sent, earlier.opt_outs) == (4, 0)
        assert not earlier.above_limit and earlier.opt_out_rate == 0

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.GetOptOutRate(api.GetOptOutRateRequest(brand="acme", campaign="nosuch"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.GetOptOutRate(
                api.GetOptOutRateRequest(brand="acme", start_time=ts(t), end_time=ts(t))
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert status_details(err.value)[0][0] == "start_time"
        # A time datetime cannot hold is the caller's error, not the service's.
        year_one = Timestamp(seconds=-62135596800 + 86400)
        beyond = Timestamp(seconds=253402300800 + 86400)
        for call, field in (
            (
                c.GetOptOutRate(api.GetOptOutRateRequest(brand="acme", end_time=year_one)),
                "end_time",
            ),
            (
                c.GetOptOutRate(api.GetOptOutRateRequest(brand="acme", start_time=beyond)),
                "start_time",
            ),
            (
                c.CanSend(
                    api.CanSendRequest(phone=PHONE, brand="acme", campaign="promo", at=beyond)
                ),
                "at",
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, field
            assert status_details(err.value)[0][0] == field

    empty = await _rate_as("globex-app", runtime, "globex")
    assert (empty.messages_sent, empty.opt_outs, empty.HasField("opt_out_rate")) == (0, 0, False)
    for who in ("globex-app", "acme-checker"):  # another brand; no audit scope
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _rate_as(who, runtime, "acme")
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def _rate_as(who: str, runtime: Runtime, brand: str) -> api.GetOptOutRateResponse:
    async with client(runtime.address, who) as c:
        return await c.GetOptOutRate(api.GetOptOutRateRequest(brand=brand))


async def test_flagged_replies_wait_in_a_queue_until_resolved(service):
    runtime, clock = service
    t = clock.now
    other = "+14155552672"
    async with client(runtime.address, "acme-app") as c:
        flagged = []
        for minutes, phone in ((20, other), (10, PHONE)):  # the other number replies first
            request = inbound(
                phone, ACME_NUMBER, "please stop texting me", t - timedelta(minutes=minutes)
            )
            w = await c.HandleInboundMessage(request)
            assert w.intent == api.INBOUND_INTENT_REVOCATION_CANDIDATE
            flagged.append(w)
        fresh = flagged[-1].consistency_token

        first = await c.ListRevocationCandidates(
            api.ListRevocationCandidatesRequest(brand="acme", page_size=1, at_least_as_fresh=fresh)
        )
        (oldest,) = first.candidates
        assert (oldest.event.phone, oldest.event.event_type) == (
            other,
            "RevocationCandidateFlagged",
        )
        assert first.next_page_token

        # A reply recorded late (it happened before both) joins the end of the queue.
        third = "+14155552673"
        await c.HandleInboundMessage(
            inbound(third, ACME_NUMBER, "wrong number", t - timedelta(hours=1))
        )
        dismiss = api.ResolveRevocationCandidateRequest(
            request_id="resolve-1",
            phone=other,
            brand="acme",
            candidate_event_id=oldest.event.event_id,
            resolution=lpb.CANDIDATE_RESOLUTION_DISMISSED,
            occurred_at=ts(t - timedelta(minutes=5)),
            resolved_by="reviewer@acme",
        )
        # Dismissing lifts the block on the number: a write token (a gateway's) may not.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.ResolveRevocationCandidate(dismiss)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "admin" in (err.value.details() or "")
        async with client(runtime.address, "admin") as reviewer:
            resolved = await reviewer.ResolveRevocationCandidate(dismiss)
        # The next page starts after the last candidate given, not at a count, so
        # neither the one resolved nor the one recorded in between skips any.
        second = await c.ListRevocationCandidates(
            api.ListRevocationCandidatesRequest(
                brand="acme",
                page_size=2,
                page_token=first.next_page_token,
                at_least_as_fresh=resolved.consistency_token,
            )
        )
        assert [e.event.phone for e in second.candidates] == [PHONE, third]
        assert second.next_page_token == ""
        everything = await c.ListRevocationCandidates(
            api.ListRevocationCandidatesRequest(brand="acme")
        )
        assert [e.event.phone for e in everything.candidates] == [PHONE, third]

        for candidate, phone in (
            ("00000000-0000-0000-0000-000000000001", PHONE),  # made up
            (everything.candidates[0].event.event_id, third),  # another number's
            (oldest.event.event_id, other),  # resolved already
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await c.ResolveRevocationCandidate(
                    api.ResolveRevocationCandidateRequest(
                        request_id=uuid.uuid4().hex,
                        phone=phone,
                        brand="acme",
                        candidate_event_id=candidate,
                        resolution=lpb.CANDIDATE_RESOLUTION_REVOKED,
                        occurred_at=ts(t),
                    )
                )
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert [s for s, _ in precondition_violations(refused.value)] == ["candidate_event_id"]
        # Resolving one as an opt-out only narrows what may be sent: the write scope may.
        revoked = await c.ResolveRevocationCandidate(
            api.ResolveRevocationCandidateRequest(
                request_id="resolve-2",
                phone=PHONE,
                brand="acme",
                candidate_event_id=everything.candidates[0].event.event_id,
                resolution=lpb.CANDIDATE_RESOLUTION_REVOKED,
                occurred_at=ts(t),
                resolved_by="reviewer@acme",
            )
        )
        left = await c.ListRevocationCandidates(
            api.ListRevocationCandidatesRequest(
                brand="acme", at_least_as_fresh=revoked.consistency_token
            )
        )
        assert [e.event.phone for e in left.candidates] == [third]

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.ListRevocationCandidates(
                api.ListRevocationCandidatesRequest(brand="acme", page_token="bm90LW91cnM=")
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert status_details(err.value)[0][0] == "page_token"
    async with client(runtime.address, "globex-app") as globex:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await globex.ListRevocationCandidates(api.ListRevocationCandidatesRequest(brand="acme"))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        mine = await globex.ListRevocationCandidates(
            api.ListRevocationCandidatesRequest(brand="globex")
        )
        assert list(mine.candidates) == []
