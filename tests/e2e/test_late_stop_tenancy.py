"""A brand's token against another brand's facts through the late STOP's holds,
through a real gRPC client on the embedded default's PostgreSQL ledger (one case on
Kafka): a STOP sent while another brand's campaign texted from a number, delivered
after the number moved, is held for that brand (or under ``*``) and names it to no
one, and takes nothing of that brand's or of ``*``'s."""

from __future__ import annotations

import uuid
from datetime import timedelta

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb
from grpc_status import rpc_status

from tests.e2e.harness import Clock, client, define, inbound, sends_from, ts

pytestmark = pytest.mark.asyncio(loop_scope="session")

FIRST_NUMBER = "+12125550141"
SECOND_NUMBER = "+12125550142"
WORDS = "Stop texting me Initech"


def said(err: grpc.aio.AioRpcError) -> str:
    return f"{err.code()} {err.details()} {rpc_status.from_call(err)}"


@pytest.mark.parametrize("on_kafka", [False, True], ids=["embedded", "kafka"])
async def test_two_brands_late_stops_under_one_request_id_take_nothing_of_each_other(
    module_serve, on_kafka
):
    # acme's and globex's gateways each number their requests from 1: both deliver
    # late a STOP to a number a third brand let go, as request "1".
    clock = Clock()
    campaigns = [
        define("initech", "sale", clock.now - timedelta(days=1), [FIRST_NUMBER]),
        define("initech", "news", clock.now - timedelta(days=1), [SECOND_NUMBER]),
    ]
    runtime = await module_serve(on_kafka=on_kafka, clock=clock, campaigns=campaigns)
    sent = clock.now - timedelta(minutes=20)
    async with (
        client(runtime.address) as admin,
        client(runtime.address, "acme-app") as acme,
        client(runtime.address, "globex-app") as globex,
    ):
        for c in campaigns:
            await sends_from(admin, c, [], clock.now - timedelta(minutes=10))
        first = await globex.HandleInboundMessage(
            inbound("+14155550101", FIRST_NUMBER, "STOP", sent, request_id="1")
        )
        try:
            w = await acme.HandleInboundMessage(
                inbound("+14155550102", SECOND_NUMBER, "STOP", sent, request_id="1")
            )
        except grpc.aio.AioRpcError as err:
            pytest.fail(f"acme's STOP refused for globex's request id: {said(err)}")
        assert w.intent == api.INBOUND_INTENT_OPT_OUT
        assert set(w.event_ids).isdisjoint(first.event_ids)
        held = await admin.ListRevocationCandidates(
            api.ListRevocationCandidatesRequest(brand="*", at_least_as_fresh=w.consistency_token)
        )
        assert sorted(e.event.phone for e in held.candidates) == ["+14155550101", "+14155550102"]


async def test_a_late_stop_held_under_every_brand_names_its_caller_to_no_other_brand(module_serve):
    # globex's gateway delivers late a STOP to a number initech let go: held under
    # "*", it denies acme's sends too, and acme's reads show the hold, but neither
    # whose gateway delivered it (the caller's token name, globex-app) nor the
    # person's words, which name the brand they answered.
    clock = Clock()
    campaigns = [
        define("initech", "sale", clock.now - timedelta(days=1), [FIRST_NUMBER]),
        define("acme", "promo", clock.now - timedelta(days=1)),
    ]
    runtime = await module_serve(on_kafka=False, clock=clock, campaigns=campaigns)
    phone = "+14155550103"
    async with (
        client(runtime.address) as admin,
        client(runtime.address, "acme-app") as acme,
        client(runtime.address, "globex-app") as globex,
    ):
        await sends_from(admin, campaigns[0], [], clock.now - timedelta(minutes=10))
        w = await globex.HandleInboundMessage(
            inbound(phone, FIRST_NUMBER, WORDS, clock.now - timedelta(minutes=20))
        )
        fresh = w.consistency_token
        ask = dict(phone=phone, brand="acme", at_least_as_fresh=fresh)
        shown = {
            "CanSend": await acme.CanSend(api.CanSendRequest(**ask, campaign="promo")),
            "GetConsent": await acme.GetConsent(api.GetConsentRequest(**ask, campaign="promo")),
            "ListEvents": await acme.ListEvents(api.ListEventsRequest(**ask)),
            "packet": await acme.GetProofPacket(
                api.GetProofPacketRequest(**ask, campaign="promo"), timeout=60
            ),
        }
        assert not shown["CanSend"].allowed  # the hold is every brand's
        wide = [e.event for e in shown["ListEvents"].events if e.event.brand == "*"]
        assert wide and all(e.request_fingerprint == "" for e in wide), wide
        for name, answer in shown.items():  # nor which number the person texted
            assert FIRST_NUMBER not in str(answer), (name, answer)
        call = acme.stub.WatchConsentChanges(
            api.WatchConsentChangesRequest(brand="acme"),
            metadata=[("authorization", f"Bearer {acme.token}")],
            timeout=30,
        )
        try:
            change = await call.read()
            assert change.event.event.phone == phone, change
            shown["WatchConsentChanges"] = change
        finally:
            call.cancel()
        for name, answer in shown.items():
            assert "globex" not in str(answer), (name, answer)
            assert "initech" not in str(answer).lower(), (name, answer)
        # The operator who reviews it is shown whose gateway it came through, and what
        # the person wrote.
        held = await admin.ListRevocationCandidates(
            api.ListRevocationCandidatesRequest(brand="*", at_least_as_fresh=fresh)
        )
        assert [
            (e.event.recorded_by, e.event.revocation_candidate_flagged.text)
            for e in held.candidates
        ] == [("globex-app", WORDS)]


async def test_a_brand_lists_and_resolves_no_hold_of_another_brand_nor_of_every_brand(
    module_serve,
):
    clock = Clock()
    runtime = await module_serve(on_kafka=False, clock=clock)
    theirs, everyones = "+14155550104", "+14155550105"
    async with (
        client(runtime.address) as admin,
        client(runtime.address, "acme-app") as acme,
        client(runtime.address, "globex-app") as globex,
    ):
        # STOPs to a number no campaign sends from: globex's under globex, the
        # operator's under "*".
        at = clock.now - timedelta(minutes=5)
        g = await globex.HandleInboundMessage(inbound(theirs, SECOND_NUMBER, "STOP", at))
        o = await admin.HandleInboundMessage(inbound(everyones, SECOND_NUMBER, "STOP", at))
        fresh = o.consistency_token
        holds = {}
        for brand, token in (("globex", g.consistency_token), ("*", fresh)):
            listed = await admin.ListRevocationCandidates(
                api.ListRevocationCandidatesRequest(brand=brand, at_least_as_fresh=token)
            )
            (holds[brand],) = listed.candidates
        for brand in ("globex", "*"):
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await acme.ListRevocationCandidates(
                    api.ListRevocationCandidatesRequest(brand=brand)
                )
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        made_up = str(uuid.uuid4())
        answers = {}
        for brand, hold in (("globex", holds["globex"]), ("*", holds["*"])):
            for under in (brand, "acme"):
                for candidate in (hold.event.event_id, made_up):
                    with pytest.raises(grpc.aio.AioRpcError) as refused:
                        await acme.ResolveRevocationCandidate(
                            api.ResolveRevocationCandidateRequest(
                                request_id=uuid.uuid4().hex, brand=under,
                                phone=hold.event.phone, candidate_event_id=candidate,
                                resolution=lpb.CANDIDATE_RESOLUTION_REVOKED,
                                resolved_by="acme's reviewer", occurred_at=ts(clock.now),
                            )
                        )  # fmt: skip
                    err = refused.value
                    answers[brand, under, candidate == made_up] = (
                        err.code(),
                        said(err).replace(candidate, "ID"),
                    )
        for brand in ("globex", "*"):
            assert answers[brand, brand, False][0] == grpc.StatusCode.PERMISSION_DENIED
            # Under acme's own brand, their hold's id is answered as a made-up one is.
            assert answers[brand, "acme", False] == answers[brand, "acme", True]
            assert "globex" not in answers[brand, "acme", False][1]
        for brand, token in (("globex", g.consistency_token), ("*", fresh)):
            listed = await admin.ListRevocationCandidates(
                api.ListRevocationCandidatesRequest(brand=brand, at_least_as_fresh=token)
            )
            assert [c.event.event_id for c in listed.candidates] == [holds[brand].event.event_id]


@pytest.mark.parametrize("on_kafka", [False, True], ids=["embedded", "kafka"])
async def test_a_late_stop_held_for_a_brand_takes_no_message_id_of_its_texts(
    module_serve, on_kafka
):
    # A gateway of acme and initech delivers late a STOP to a number acme let go to
    # initech; it is held under acme too. acme's own gateway, on another provider
    # whose message ids happen to be the same, then hands on the person's START to
    # acme's number: it was refused ALREADY_EXISTS, as if the held STOP had been a
    # text of acme's under that message id.
    clock = Clock()
    acme_number = "+12125550143"
    campaigns = [
        define("acme", "promo", clock.now - timedelta(days=1), [FIRST_NUMBER, acme_number]),
        define("initech", "sale", clock.now - timedelta(days=1)),
    ]
    runtime = await module_serve(on_kafka=on_kafka, clock=clock, campaigns=campaigns)
    phone = "+14155550106"
    moved = clock.now - timedelta(minutes=10)
    async with (
        client(runtime.address) as admin,
        client(runtime.address, "acme-initech") as both,
        client(runtime.address, "acme-app") as acme,
    ):
        await sends_from(admin, campaigns[0], [acme_number], moved)
        await sends_from(admin, campaigns[1], [FIRST_NUMBER], moved)
        stop = inbound(phone, FIRST_NUMBER, "STOP", moved - timedelta(minutes=5), message_id="SM1")
        late = await both.HandleInboundMessage(stop)
        assert late.brand == "initech"
        # Its gateway's redelivery, under a request id of its own, is held once still.
        stop.request_id = uuid.uuid4().hex
        again = await both.HandleInboundMessage(stop)
        held = await admin.ListRevocationCandidates(
            api.ListRevocationCandidatesRequest(
                brand="acme", at_least_as_fresh=again.consistency_token
            )
        )
        assert [c.event.phone for c in held.candidates] == [phone]
        try:
            answer = await acme.HandleInboundMessage(
                inbound(phone, acme_number, "START", clock.now, message_id="SM1")
            )
        except grpc.aio.AioRpcError as err:
            pytest.fail(f"acme's START refused for initech's text: {said(err)}")
        assert (answer.brand, answer.intent) == ("acme", api.INBOUND_INTENT_OPT_IN)


async def test_a_stop_retried_after_its_number_passed_to_another_brand_is_answered(module_serve):
    # acme's gateway lost the answer to a STOP to acme's number; by its retry acme had
    # let the number go and globex claimed it. The retry was refused PERMISSION_DENIED
    # (the number is globex's), where the first was recorded and answered OK.
    clock = Clock()
    campaigns = [
        define("acme", "promo", clock.now - timedelta(days=1), [FIRST_NUMBER]),
        define("globex", "deals", clock.now - timedelta(days=1)),
    ]
    runtime = await module_serve(on_kafka=False, clock=clock, campaigns=campaigns)
    text = inbound("+14155550104", FIRST_NUMBER, "STOP", clock.now - timedelta(minutes=20))
    async with client(runtime.address) as admin, client(runtime.address, "acme-app") as acme:
        first = await acme.HandleInboundMessage(text)
        assert first.reply == api.REPLY_KIND_OPT_OUT_CONFIRMATION
        acme_promo, globex_deals = campaigns
        await sends_from(admin, acme_promo, [], clock.now - timedelta(minutes=10))
        await sends_from(admin, globex_deals, [FIRST_NUMBER], clock.now - timedelta(minutes=9))
        try:
            again = await acme.HandleInboundMessage(text)
        except grpc.aio.AioRpcError as err:
            pytest.fail(f"the retry of a STOP recorded OK was refused: {said(err)}")
        assert list(again.event_ids) == list(first.event_ids)
        assert (again.reply, again.brand, again.campaign) == (first.reply, "acme", "promo")
