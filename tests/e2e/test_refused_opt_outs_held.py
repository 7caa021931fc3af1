"""A live opt-out refused for its details is held, not lost, through the real gRPC
server on the real Kafka and PostgreSQL: a RecordOptOut or an inbound STOP answered
INVALID_ARGUMENT (a gateway with its time zone wrong, a NUL in the text, a message
id left out...) wrote nothing, and CanSend went on allowing the number. Gateways do
not retry INVALID_ARGUMENT, so the number is now denied for the brand until someone
resolves the hold, and the refusal says so in its ErrorInfo."""

from __future__ import annotations

import asyncio
import functools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb
from google.protobuf import json_format

from ledger.packet import iso
from ledger.ports import ConsistencyToken, Stream
from services.adapters.kafka_ledger import KafkaLedger, topic_configs
from services.bootstrap import Runtime
from tests.e2e.harness import (
    Clock,
    already_recorded,
    client,
    define,
    held_info,
    inbound,
    kafka_settings,
    module_clock,
    opt_in,
    opt_out,
    sent,
    status_details,
    ts,
)
from tests.e2e.test_lifecycle import ACME_NUMBER
from tests.infra.topic_configs import altered

pytestmark = pytest.mark.asyncio(loop_scope="session")

DETAIL = "an opt-out refused for its details"
REUSED_DETAIL = "an opt-out refused for a request id used before"


def phone(i: int) -> str:
    return f"+1415555{4000 + i:04d}"


async def _promo(serve: Any, clock: Clock) -> tuple[Runtime, Clock]:
    campaign = define("acme", "promo", clock.now - timedelta(days=60), [ACME_NUMBER])
    return await serve(name="held", clock=clock, campaigns=[campaign]), clock


@pytest.fixture(scope="module")
async def service(module_serve):
    """acme's promo campaign sending from ACME_NUMBER; each test opts its numbers in,
    numbers no other test of the service uses, so one service serves them all."""
    return await _promo(module_serve, module_clock())


@pytest.fixture
async def own_service(serve):
    """``service`` for a test of its own: one that defines campaigns or moves the
    clock, which would change what the others find."""
    return await _promo(serve, Clock())


async def opted_in(runtime: Runtime, numbers: list[str], at: datetime) -> None:
    async with client(runtime.address) as admin:
        for number in numbers:
            w = await admin.RecordOptIn(opt_in(number, "acme", "promo", at - timedelta(days=1)))
    assert await runtime.guard.wait_for_token(ConsistencyToken.decode(w.consistency_token))


async def refused(call: Any, request: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(request)
    return caught.value


async def can_send(runtime: Runtime, number: str, fresh: str = "") -> api.CanSendResponse:
    async with client(runtime.address) as admin:
        return await admin.CanSend(
            api.CanSendRequest(
                phone=number, brand="acme", campaign="promo", at_least_as_fresh=fresh
            )
        )


async def candidates_of(runtime: Runtime, number: str, fresh: str) -> list[str]:
    async with client(runtime.address) as admin:
        page = await admin.ListRevocationCandidates(
            api.ListRevocationCandidatesRequest(brand="acme", at_least_as_fresh=fresh)
        )
    return [c.event.event_id for c in page.candidates if c.event.phone == number]


def opt_out_cases(now: datetime) -> dict[str, tuple[str, dict[str, Any]]]:
    """Each detail a RecordOptOut is refused for: the field named, and the change."""
    return {
        "ahead": ("occurred_at", {"occurred_at": ts(now + timedelta(hours=3))}),
        "before 2000": ("occurred_at", {"occurred_at": ts(datetime(1999, 12, 31, tzinfo=UTC))}),
        "no time": ("occurred_at", {"occurred_at": None}),
        "NUL in text": ("text", {"text": "STOP\0"}),
        "long text": ("text", {"text": "stop " * 4000}),
        "padded reply id": ("in_reply_to", {"in_reply_to": " SM123 "}),
        "padded request id": ("request_id", {"request_id": f" r-{uuid.uuid4().hex} "}),
        "no channel": ("channel", {"channel": 0}),
        "bad campaign": ("campaign", {"campaign": "Promo!"}),
    }  # fmt: skip


def changed(request: Any, change: dict[str, Any]) -> Any:
    """``request`` with each field of ``change`` set, or cleared where None."""
    for name, value in change.items():
        if value is None:
            request.ClearField(name)
        elif name == "occurred_at":
            request.occurred_at.CopyFrom(value)
        else:
            setattr(request, name, value)
    return request


async def test_a_record_opt_out_refused_for_a_detail_is_held_and_denies(service):
    """Before: INVALID_ARGUMENT, nothing written, CanSend allowed. Now the refusal
    names the field and says the number is held; CanSend denies, naming the hold."""
    runtime, clock = service
    cases = opt_out_cases(clock.now)
    numbers = {name: phone(i) for i, name in enumerate(cases)}
    await opted_in(runtime, list(numbers.values()), clock.now)
    async with client(runtime.address, "acme-app") as c:
        for name, (field, change) in cases.items():
            number = numbers[name]
            request = changed(opt_out(number, "acme", "promo", clock.now), change)
            err = await refused(c.RecordOptOut, request)
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, err)
            assert status_details(err)[0][0] == field, (name, status_details(err))
            info = held_info(err)
            assert info is not None, (name, err.details())
            assert "held for review" in err.details(), name
            answer = await can_send(runtime, number, info["consistency_token"])
            assert answer.reason == api.REASON_REVOCATION_PENDING_REVIEW, (name, answer)
            assert answer.detail.startswith(DETAIL), (name, answer.detail)
            assert list(answer.evidence_event_ids) == [info["candidate_event_id"]], (name, answer)
            if name == "no channel":  # said in the API's terms, the hold's words too
                unset = "is required and was not set: one of keyword, free_text, web, call, api"
                assert status_details(err)[0][1].startswith(unset), status_details(err)
                async with client(runtime.address) as admin:  # the review queue
                    queue = await admin.ListRevocationCandidates(
                        api.ListRevocationCandidatesRequest(
                            brand="acme", at_least_as_fresh=info["consistency_token"]
                        )
                    )
                (held,) = [
                    c for c in queue.candidates if c.event.event_id == info["candidate_event_id"]
                ]
                said = held.event.revocation_candidate_flagged.text
                assert f"channel: {unset}" in said, said


async def test_a_number_without_its_plus_or_a_padded_brand_is_held_all_the_same(service):
    runtime, clock = service
    bare, padded = phone(20), phone(21)
    await opted_in(runtime, [bare, padded], clock.now)
    ahead = ts(clock.now + timedelta(hours=3))
    async with client(runtime.address, "acme-app") as c:
        no_plus = opt_out(bare.removeprefix("+"), "acme", "promo", clock.now)
        no_plus.occurred_at.CopyFrom(ahead)
        spelled = opt_out(padded, "ACME ", "promo", clock.now)
        for number, request in ((bare, no_plus), (padded, spelled)):
            err = await refused(c.RecordOptOut, request)
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            info = held_info(err)
            assert info is not None, err.details()
            answer = await can_send(runtime, number, info["consistency_token"])
            assert answer.reason == api.REASON_REVOCATION_PENDING_REVIEW, answer


async def test_a_brand_spelled_in_full_width_or_with_a_zero_width_space_is_held(service):
    """Pasted from a web page or typed with a phone's full-width keyboard, the brand
    is refused as a name, but it is acme the person asked to stop: refused and
    dropped, the number stayed allowed."""
    runtime, clock = service
    numbers = {
        "\uff41\uff43\uff4d\uff45": phone(24),
        "acme\u200b": phone(25),
        "acme\u3164": phone(95),  # a Hangul filler: blank, and no format character
    }
    await opted_in(runtime, list(numbers.values()), clock.now)
    async with client(runtime.address, "acme-app") as c:
        for brand, number in numbers.items():
            err = await refused(c.RecordOptOut, opt_out(number, brand, "promo", clock.now))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
            info = held_info(err)
            assert info is not None, (brand, err.details())
            answer = await can_send(runtime, number, info["consistency_token"])
            assert answer.reason == api.REASON_REVOCATION_PENDING_REVIEW, answer


async def test_a_brand_or_campaign_with_a_separator_after_it_is_no_name_of_its_own(service):
    """A brand "acme." was one of its own: an opt-out written under it was accepted
    and acme's number stayed allowed, and "promo-" could be defined beside "promo".
    Both are refused now, and the opt-out is held under the brand the person meant."""
    runtime, clock = service
    number = phone(94)
    await opted_in(runtime, [number], clock.now)
    async with client(runtime.address) as admin:
        err = await refused(admin.RecordOptOut, opt_out(number, "acme.", "promo", clock.now))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
        assert [f for f, _ in status_details(err)] == ["brand"], err.details()
        info = held_info(err)
        assert info is not None, err.details()
        answer = await can_send(runtime, number, info["consistency_token"])
        assert answer.reason == api.REASON_REVOCATION_PENDING_REVIEW, answer
        for name in ("promo-", "promo.", "promo_"):
            err = await refused(admin.DefineCampaign, define("acme", name, clock.now))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
            assert [f for f, _ in status_details(err)] == ["campaign"], err.details()


async def test_a_campaign_named_as_another_but_for_separators_is_not_defined(own_service):
    """A campaign "promo_" is no name now, but "spring_sale" is one, and was defined
    beside "spring-sale" as a campaign of its own (in PostgreSQL's view, as here);
    and a brand "acme_co" beside "acme-co"."""
    runtime, clock = own_service
    async with client(runtime.address) as admin:
        await admin.DefineCampaign(define("acme", "spring-sale", clock.now))
        err = await refused(admin.DefineCampaign, define("acme", "spring_sale", clock.now))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err
    assert "campaign: reads as campaign acme/spring-sale" in err.details(), err.details()
    async with client(runtime.address) as admin:
        await admin.DefineCampaign(define("acme-co", "promo", clock.now))
        err = await refused(admin.DefineCampaign, define("acme_co", "promo", clock.now))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err
    assert "brand: reads as brand 'acme-co'" in err.details(), err.details()


async def test_a_stop_from_a_number_written_without_its_country_code_is_held(service):
    """A US number written as at home, (415) 555-4022, is no number the service
    records (it names no country), but an opt-out from it is no less an opt-out: it
    was refused and dropped while the number, opted in as +14155554022, was allowed."""
    runtime, clock = service
    texted, recorded = phone(22), phone(23)
    await opted_in(runtime, [texted, recorded], clock.now)
    national = f"({texted[2:5]}) {texted[5:8]}-{texted[8:]}"
    async with client(runtime.address, "acme-app") as c:
        stop = inbound(national, ACME_NUMBER, "STOP", clock.now)
        record = opt_out(recorded[2:], "acme", "promo", clock.now)
        for number, err in (
            (texted, await refused(c.HandleInboundMessage, stop)),
            (recorded, await refused(c.RecordOptOut, record)),
        ):
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
            info = held_info(err)
            assert info is not None, err.details()
            answer = await can_send(runtime, number, info["consistency_token"])
            assert answer.reason == api.REASON_REVOCATION_PENDING_REVIEW, answer


async def test_a_stop_from_a_mexican_mobile_with_its_old_1_is_held(service):
    """Mexico dropped the "1" after +52 from its mobile numbers in 2019, but a gateway
    or an old export may still write +52 1 55 ...: refused as no valid number, the
    STOP was dropped while the number, opted in as +52 55 ..., was allowed."""
    runtime, clock = service
    number = "+525512344096"
    await opted_in(runtime, [number], clock.now)
    async with client(runtime.address, "acme-app") as c:
        err = await refused(
            c.HandleInboundMessage, inbound("+5215512344096", ACME_NUMBER, "STOP", clock.now)
        )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    info = held_info(err)
    assert info is not None, err.details()
    answer = await can_send(runtime, number, info["consistency_token"])
    assert answer.reason == api.REASON_REVOCATION_PENDING_REVIEW, answer


async def test_a_stop_from_a_brazilian_mobile_without_its_9_is_held(service):
    """Brazil put a 9 before every mobile's eight digits by 2016, but an old export or
    contact may still write +55 11 8765 ...: refused as no valid number, the STOP was
    dropped while the number, opted in as +55 11 9 8765 ..., was allowed."""
    runtime, clock = service
    number = "+5511987654096"
    await opted_in(runtime, [number], clock.now)
    async with client(runtime.address, "acme-app") as c:
        err = await refused(
            c.HandleInboundMessage, inbound("+551187654096", ACME_NUMBER, "STOP", clock.now)
        )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    info = held_info(err)
    assert info is not None, err.details()
    answer = await can_send(runtime, number, info["consistency_token"])
    assert answer.reason == api.REASON_REVOCATION_PENDING_REVIEW, answer


async def test_ten_digits_that_read_two_ways_are_held_under_both_numbers(service):
    """(646) 555-4040 is a New York number without its country code and, read with a
    "+", +64 6555 4040 in New Zealand. Held under the foreign reading only, the STOP
    left the New York number, opted in as +16465554040, allowed. Each reading is
    held: a retry holds neither again, and the corrected opt-out of the US number
    resolves its own hold, leaving the other reading to a reviewer."""
    runtime, clock = service
    us, foreign, texted = "+16465554040", "+6465554040", "+16465554041"
    await opted_in(runtime, [us, texted], clock.now)
    record = opt_out("646 555 4040", "acme", None, clock.now)
    stop = inbound("(646) 555-4041", ACME_NUMBER, "STOP", clock.now)
    async with client(runtime.address, "acme-app") as c:
        infos = []
        for number, err in (
            (us, await refused(c.RecordOptOut, record)),
            (texted, await refused(c.HandleInboundMessage, stop)),
        ):
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
            info = held_info(err)
            assert info is not None, err.details()
            ids = info["candidate_event_ids"].split(",")
            assert len(set(ids)) == 2 and info["candidate_event_id"] == ids[0], info
            answer = await can_send(runtime, number, info["consistency_token"])
            assert answer.reason == api.REASON_REVOCATION_PENDING_REVIEW, answer
            infos.append(info)
        again = held_info(await refused(c.RecordOptOut, record))
        assert again is not None and again["candidate_event_ids"] == infos[0]["candidate_event_ids"]
        token = again["consistency_token"]
        held_us, held_foreign = (
            await candidates_of(runtime, us, token),
            await candidates_of(runtime, foreign, token),
        )
        assert sorted(held_us + held_foreign) == sorted(infos[0]["candidate_event_ids"].split(","))
        written = await c.RecordOptOut(opt_out(us, "acme", None, clock.now))
    answer = await can_send(runtime, us, written.consistency_token)
    assert answer.reason == api.REASON_REVOKED_BRAND_WIDE, answer
    async with client(runtime.address) as admin:
        history = await admin.ListEvents(
            api.ListEventsRequest(
                phone=us, brand="acme", at_least_as_fresh=written.consistency_token
            )
        )
    resolved = [
        e.event.revocation_candidate_resolved.candidate_event_id
        for e in history.events
        if e.event.event_type == "RevocationCandidateResolved"
    ]
    assert resolved == held_us
    assert await candidates_of(runtime, foreign, history.consistency_token) == held_foreign


async def test_a_retry_holds_once_and_a_corrected_retry_under_its_id_is_recorded(service):
    """The hold's id digests the request, not the client's request id: the same
    request again holds nothing new, and the corrected request under the same
    request id is the opt-out itself, not a request id reused."""
    runtime, clock = service
    number = phone(30)
    await opted_in(runtime, [number], clock.now)
    request_id = f"r-{uuid.uuid4().hex}"
    wrong = opt_out(number, "acme", "promo", clock.now + timedelta(hours=3), request_id)
    async with client(runtime.address, "acme-app") as c:
        first = held_info(await refused(c.RecordOptOut, wrong))
        again = held_info(await refused(c.RecordOptOut, wrong))
        assert first is not None and again is not None
        assert again["candidate_event_id"] == first["candidate_event_id"]
        assert await candidates_of(runtime, number, again["consistency_token"]) == [
            first["candidate_event_id"]
        ]
        right = opt_out(number, "acme", "promo", clock.now - timedelta(minutes=1), request_id)
        written = await c.RecordOptOut(right)
    assert written.event_ids and first["candidate_event_id"] not in written.event_ids
    # An opt-out of one campaign leaves the hold, which denies every campaign, to a
    # person (it is read first); the opt-out is recorded beside it.
    answer = await can_send(runtime, number, written.consistency_token)
    assert not answer.allowed, answer


async def test_a_corrected_retry_of_every_campaign_resolves_its_hold(service):
    """Before, a reviewer had to close the hold beside the client's corrected retry.
    An opt-out of every campaign of the brand covers it: the hold is resolved as
    revoked, naming that opt-out, and the number is opted out of the brand."""
    runtime, clock = service
    number = phone(32)
    await opted_in(runtime, [number], clock.now)
    wrong = opt_out(number, "acme", None, clock.now + timedelta(hours=3))
    async with client(runtime.address, "acme-app") as c:
        held = held_info(await refused(c.RecordOptOut, wrong))
        assert held is not None
        assert await runtime.guard.wait_for_token(
            ConsistencyToken.decode(held["consistency_token"])
        )
        written = await c.RecordOptOut(opt_out(number, "acme", None, clock.now))
    async with client(runtime.address) as admin:
        events = await admin.ListEvents(
            api.ListEventsRequest(
                phone=number, brand="acme", at_least_as_fresh=written.consistency_token
            )
        )
        (resolution,) = [
            e.event.revocation_candidate_resolved
            for e in events.events
            if e.event.event_type == "RevocationCandidateResolved"
        ]
        token = events.consistency_token
    assert resolution.candidate_event_id == held["candidate_event_id"]
    assert resolution.resolved_by == f"opt-out {written.event_ids[0]}"
    assert await candidates_of(runtime, number, token) == []
    answer = await can_send(runtime, number, token)
    assert answer.reason == api.REASON_REVOKED_BRAND_WIDE, answer


async def test_a_refused_opt_in_or_a_caller_of_another_brand_holds_nothing(service):
    runtime, clock = service
    opt_in_number, other, checker, spelled = phone(40), phone(41), phone(42), phone(43)
    await opted_in(runtime, [opt_in_number, other, checker, spelled], clock.now)
    ahead = clock.now + timedelta(hours=3)
    async with client(runtime.address, "acme-app") as c:
        err = await refused(c.RecordOptIn, opt_in(opt_in_number, "acme", "promo", ahead))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and held_info(err) is None
    async with client(runtime.address, "globex-app") as c:
        err = await refused(c.RecordOptOut, opt_out(other, "acme", "promo", ahead))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        # A brand spelled loosely is no way round the token's brands.
        err = await refused(c.RecordOptOut, opt_out(spelled, "ACME ", "promo", ahead))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and held_info(err) is None
        err = await refused(c.HandleInboundMessage, inbound(other, ACME_NUMBER, "STOP", ahead))
        assert held_info(err) is None, err
    async with client(runtime.address, "acme-checker") as c:
        err = await refused(c.RecordOptOut, opt_out(checker, "acme", "promo", ahead))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    async with client(runtime.address) as admin:  # everything above is in the view
        w = await admin.RecordOptIn(opt_in(phone(44), "acme", "promo", clock.now))
    for number in (opt_in_number, other, checker, spelled):
        answer = await can_send(runtime, number, w.consistency_token)
        assert answer.allowed, (number, answer)
    # The same refused opt-out from a caller that writes for acme is held: what held
    # nothing above was the caller, not the request.
    async with client(runtime.address, "acme-app") as c:
        err = await refused(c.RecordOptOut, opt_out(spelled, "ACME ", "promo", ahead))
        assert held_info(err) is not None, err.details()


def inbound_cases(now: datetime) -> dict[str, tuple[str, str, dict[str, Any]]]:
    """Each detail an inbound STOP is refused for: the body, the field named, and the
    change."""
    return {
        "ahead": ("STOP", "occurred_at", {"occurred_at": ts(now + timedelta(hours=3))}),
        "before 2000": ("STOP", "occurred_at", {"occurred_at": ts(datetime(1999, 1, 1, tzinfo=UTC))}),  # noqa: E501
        "no time": ("STOP", "occurred_at", {"occurred_at": None}),
        "NUL in body": ("STOP\0", "body", {}),
        "long body": ("STOP" + " " * 5000, "body", {}),
        "no message id": ("STOP", "message_id", {"message_id": ""}),
        "padded message id": ("STOPALL", "message_id", {"message_id": " SM1 "}),
        "long message id": ("stop", "message_id", {"message_id": "SM" + "1" * 300}),
        "reads like one": ("please stop texting me\0", "body", {}),
    }  # fmt: skip


async def test_an_inbound_stop_refused_for_a_detail_is_held_and_denies(service):
    """Before: INVALID_ARGUMENT and the STOP was lost. A time far ahead is held, not
    recorded at the time it came: the gateway is wrong about its times, and a
    person looks at what else it sent."""
    runtime, clock = service
    cases = inbound_cases(clock.now)
    numbers = {name: phone(50 + i) for i, name in enumerate(cases)}
    await opted_in(runtime, list(numbers.values()), clock.now)
    async with client(runtime.address, "acme-app") as c:
        for name, (body, field, change) in cases.items():
            number = numbers[name]
            request = changed(inbound(number, ACME_NUMBER, body, clock.now), change)
            err = await refused(c.HandleInboundMessage, request)
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, err)
            assert field in [f for f, _ in status_details(err)], (name, status_details(err))
            info = held_info(err)
            assert info is not None, (name, err.details())
            again = held_info(await refused(c.HandleInboundMessage, request))
            assert again == info or (
                again is not None and again["candidate_event_id"] == info["candidate_event_id"]
            ), name
            answer = await can_send(runtime, number, info["consistency_token"])
            assert answer.reason == api.REASON_REVOCATION_PENDING_REVIEW, (name, answer)
            assert answer.detail.startswith(DETAIL), (name, answer.detail)
            held = await candidates_of(runtime, number, again["consistency_token"])
            assert held == [info["candidate_event_id"]], (name, held)


async def test_an_inbound_text_refused_that_is_no_stop_holds_nothing(service):
    runtime, clock = service
    number = phone(70)
    await opted_in(runtime, [number], clock.now)
    async with client(runtime.address, "acme-app") as c:
        for body in ("see you at 5\0", "HELP\0", "START\0"):
            err = await refused(
                c.HandleInboundMessage, inbound(number, ACME_NUMBER, body, clock.now)
            )
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and held_info(err) is None
    async with client(runtime.address) as admin:
        w = await admin.RecordOptIn(opt_in(phone(71), "acme", "promo", clock.now))
    answer = await can_send(runtime, number, w.consistency_token)
    assert answer.allowed, answer
    async with client(runtime.address, "acme-app") as c:  # a STOP so refused is held
        err = await refused(
            c.HandleInboundMessage, inbound(number, ACME_NUMBER, "STOP\0", clock.now)
        )
        assert held_info(err) is not None, err.details()


async def test_an_opt_out_under_a_request_id_used_before_is_held_and_denies(service):
    """Before: ALREADY_EXISTS, nothing written, CanSend allowed: the STOP was lost to
    a client's bug. Now the refusal still names what the id recorded, and says the
    number is held; CanSend denies; the same request again holds once."""
    runtime, clock = service
    number, spare = phone(80), phone(81)
    await opted_in(runtime, [spare], clock.now)
    request_id = f"r-{uuid.uuid4().hex}"
    async with client(runtime.address, "acme-app") as c:
        first = await c.RecordOptIn(opt_in(number, "acme", "promo", clock.now, request_id))
        stop = opt_out(number, "acme", "promo", clock.now, request_id)
        err = await refused(c.RecordOptOut, stop)
        assert err.code() == grpc.StatusCode.ALREADY_EXISTS, err
        assert already_recorded(err) == list(first.event_ids)
        assert "held for review" in err.details()
        info = held_info(err)
        assert info is not None and info["field"] == "request_id", err.details()
        answer = await can_send(runtime, number, info["consistency_token"])
        assert answer.reason == api.REASON_REVOCATION_PENDING_REVIEW, answer
        assert answer.detail.startswith(REUSED_DETAIL), answer.detail
        assert list(answer.evidence_event_ids) == [info["candidate_event_id"]], answer
        again = await refused(c.RecordOptOut, stop)
        assert again.code() == grpc.StatusCode.ALREADY_EXISTS
        assert held_info(again) is not None
        assert held_info(again)["candidate_event_id"] == info["candidate_event_id"]
        assert await candidates_of(runtime, number, info["consistency_token"]) == [
            info["candidate_event_id"]
        ]
        # The id's own request, retried, is answered as before and holds nothing.
        retry = await c.RecordOptIn(opt_in(number, "acme", "promo", clock.now, request_id))
        assert list(retry.event_ids) == list(first.event_ids)
        # An opt-in under the id an opt-out took is refused and holds nothing.
        taken = f"r-{uuid.uuid4().hex}"
        await c.RecordOptOut(opt_out(spare, "acme", "promo", clock.now, taken))
        err = await refused(c.RecordOptIn, opt_in(spare, "acme", "promo", clock.now, taken))
        assert err.code() == grpc.StatusCode.ALREADY_EXISTS and held_info(err) is None
    async with client(runtime.address) as admin:
        events = await admin.ListEvents(
            api.ListEventsRequest(
                phone=number, brand="acme", at_least_as_fresh=retry.consistency_token
            )
        )
        kinds = [e.event.event_type for e in events.events]
        assert kinds == ["ConsentGranted", "RevocationCandidateFlagged"], kinds
        w = await admin.RecordOptIn(opt_in(phone(82), "acme", "promo", clock.now))
    assert await candidates_of(runtime, spare, w.consistency_token) == []


async def test_an_opt_out_under_an_id_used_before_by_a_caller_of_another_brand_holds_nothing(
    service,
):
    runtime, clock = service
    number = phone(83)  # opted in by acme under the id
    request_id = f"r-{uuid.uuid4().hex}"
    async with client(runtime.address, "acme-app") as c:
        await c.RecordOptIn(opt_in(number, "acme", "promo", clock.now, request_id))
    async with client(runtime.address, "globex-app") as g:
        err = await refused(g.RecordOptOut, opt_out(number, "acme", "promo", clock.now, request_id))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED, err
        err = await refused(
            g.HandleInboundMessage,
            inbound(number, ACME_NUMBER, "STOP", clock.now, request_id),
        )
        assert held_info(err) is None, err
    async with client(runtime.address) as admin:
        w = await admin.RecordOptIn(opt_in(phone(84), "acme", "promo", clock.now))
    answer = await can_send(runtime, number, w.consistency_token)
    assert answer.allowed, answer


async def test_an_inbound_stop_under_a_request_id_used_before_is_held_and_denies(service):
    runtime, clock = service
    number, chatty = phone(85), phone(86)
    request_id = f"r-{uuid.uuid4().hex}"
    async with client(runtime.address, "acme-app") as c:
        first = await c.RecordOptIn(opt_in(number, "acme", "promo", clock.now, request_id))
        await c.RecordOptIn(opt_in(chatty, "acme", "promo", clock.now, f"{request_id}-2"))
        stop = inbound(number, ACME_NUMBER, "STOP", clock.now, request_id)
        err = await refused(c.HandleInboundMessage, stop)
        assert err.code() == grpc.StatusCode.ALREADY_EXISTS, err
        assert already_recorded(err) == list(first.event_ids)
        info = held_info(err)
        assert info is not None, err.details()
        answer = await can_send(runtime, number, info["consistency_token"])
        assert answer.reason == api.REASON_REVOCATION_PENDING_REVIEW, answer
        again = held_info(await refused(c.HandleInboundMessage, stop))
        assert again is not None and again["candidate_event_id"] == info["candidate_event_id"]
        # A text that is no STOP under a reused id holds nothing.
        hello = inbound(chatty, ACME_NUMBER, "see you at 5", clock.now, f"{request_id}-2")
        err = await refused(c.HandleInboundMessage, hello)
        assert err.code() == grpc.StatusCode.ALREADY_EXISTS and held_info(err) is None
    async with client(runtime.address) as admin:
        w = await admin.RecordOptIn(opt_in(phone(87), "acme", "promo", clock.now))
    assert (await can_send(runtime, chatty, w.consistency_token)).allowed


async def resolutions_of(runtime: Runtime, number: str, fresh: str) -> list[Any]:
    async with client(runtime.address) as admin:
        events = await admin.ListEvents(
            api.ListEventsRequest(phone=number, brand="acme", at_least_as_fresh=fresh)
        )
    return [
        (e.event.revocation_candidate_resolved, events.consistency_token)
        for e in events.events
        if e.event.event_type == "RevocationCandidateResolved"
    ]


async def test_a_gateways_corrected_stop_of_the_brand_resolves_its_hold(service):
    """Before, only a RecordOptOut resolved a refused STOP's hold: the gateway's
    corrected STOPALL under the same message id, or a later one, was recorded beside
    it and the hold waited for a reviewer. A STOP of the brand now resolves it as
    revoked, naming its own opt-out; a STOP of one campaign leaves it to a reviewer."""
    runtime, clock = service
    corrected, later, scoped = phone(90), phone(91), phone(92)
    await opted_in(runtime, [corrected, later, scoped], clock.now)
    async with client(runtime.address, "acme-app") as c:
        holds = {}
        for number, body in ((corrected, "STOPALL"), (later, "STOPALL"), (scoped, "STOP")):
            wrong = inbound(number, ACME_NUMBER, f"{body}\0", clock.now)
            holds[number] = held_info(await refused(c.HandleInboundMessage, wrong))
            assert holds[number] is not None, number
            assert await runtime.guard.wait_for_token(
                ConsistencyToken.decode(holds[number]["consistency_token"])
            )
            again = inbound(number, ACME_NUMBER, body, clock.now)
            if number == corrected:  # the same text, mended, under its message id
                again.message_id = wrong.message_id
            answer = await c.HandleInboundMessage(again)
            assert answer.intent in (
                api.INBOUND_INTENT_OPT_OUT,
                api.INBOUND_INTENT_OPT_OUT_BRAND_WIDE,
            ), answer
            holds[number]["stop"] = answer
    for number in (corrected, later):
        stop = holds[number]["stop"]
        ((resolution, token),) = await resolutions_of(runtime, number, stop.consistency_token)
        assert resolution.candidate_event_id == holds[number]["candidate_event_id"]
        assert resolution.resolution == lpb.CANDIDATE_RESOLUTION_REVOKED, resolution
        assert resolution.resolved_by == f"opt-out {stop.event_ids[1]}", resolution
        assert await candidates_of(runtime, number, stop.consistency_token) == []
        answer = await can_send(runtime, number, token)
        assert answer.reason == api.REASON_REVOKED_BRAND_WIDE, answer
    stop = holds[scoped]["stop"]
    assert await resolutions_of(runtime, scoped, stop.consistency_token) == []
    held = await candidates_of(runtime, scoped, stop.consistency_token)
    assert held == [holds[scoped]["candidate_event_id"]]


async def test_a_stop_of_one_campaign_under_revoke_all_resolves_its_hold(own_service):
    """Under the revoke-all rule a STOP to one campaign revokes every campaign of the
    brand: it covers the hold as a STOP of the brand does."""
    runtime, clock = own_service
    number, club_number = phone(93), "+14155550987"
    async with client(runtime.address) as admin:
        await admin.DefineCampaign(
            define("acme", "club", clock.now - timedelta(days=60), [club_number], revoke_all=True)
        )
        w = await admin.RecordOptIn(opt_in(number, "acme", "club", clock.now - timedelta(days=1)))
    assert await runtime.guard.wait_for_token(ConsistencyToken.decode(w.consistency_token))
    async with client(runtime.address, "acme-app") as c:
        wrong = inbound(number, club_number, "STOP\0", clock.now)
        info = held_info(await refused(c.HandleInboundMessage, wrong))
        assert info is not None
        assert await runtime.guard.wait_for_token(
            ConsistencyToken.decode(info["consistency_token"])
        )
        again = inbound(number, club_number, "STOP", clock.now, message_id=wrong.message_id)
        stop = await c.HandleInboundMessage(again)
    ((resolution, _),) = await resolutions_of(runtime, number, stop.consistency_token)
    assert resolution.candidate_event_id == info["candidate_event_id"]
    assert resolution.resolved_by == f"opt-out {stop.event_ids[1]}", resolution
    assert await candidates_of(runtime, number, stop.consistency_token) == []


async def test_an_operators_opt_out_under_a_misspelled_brand_is_held_under_the_brand(serve):
    """An operator's token acts for every brand, so an opt-out under "acme_co" (no
    brand) was accepted and kept under that name alone, while CanSend for acme-co,
    the brand it reads as, went on allowing. Now it is refused on ``brand`` and held
    under every brand in use it may mean, denying each until someone resolves it."""
    clock = Clock()
    campaign = define("acme-co", "promo", clock.now - timedelta(days=60))
    runtime = await serve(name="held-spelled", clock=clock, campaigns=[campaign])
    one, every = phone(96), phone(97)
    async with client(runtime.address) as admin:
        for number in (one, every):
            w = await admin.RecordOptIn(opt_in(number, "acme-co", "promo", clock.now))
        assert await runtime.guard.wait_for_token(ConsistencyToken.decode(w.consistency_token))
        for number, brand, named in ((one, "acme_co", "promo"), (every, "acmeco", None)):
            err = await refused(admin.RecordOptOut, opt_out(number, brand, named, clock.now))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (brand, err)
            assert [f for f, _ in status_details(err)] == ["brand"], err.details()
            assert "'acme-co'" in err.details(), err.details()
            info = held_info(err)
            assert info is not None, err.details()
            answer = await admin.CanSend(
                api.CanSendRequest(
                    phone=number,
                    brand="acme-co",
                    campaign="promo",
                    at_least_as_fresh=info["consistency_token"],
                )
            )
            assert answer.reason == api.REASON_REVOCATION_PENDING_REVIEW, (brand, answer)
            assert list(answer.evidence_event_ids) == [info["candidate_event_id"]], answer


async def test_an_opt_out_the_ledger_refuses_as_too_large_is_held_and_denies(
    serve, kafka_bootstrap
):
    """A topic whose ``max.message.bytes`` is below a fact at its text limits: the
    broker refuses the opt-out, INVALID_ARGUMENT on ``request`` (no retry gets past
    it), and nothing was held, so CanSend went on allowing the number; so was a STOP
    texted at the length of a text."""
    clock = Clock()
    settings = kafka_settings(kafka_bootstrap, f"large-{uuid.uuid4().hex[:8]}.")
    await KafkaLedger(settings).ensure_topics()
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        limit = {**topic_configs(settings), "max.message.bytes": "4096"}
        topic = settings.topic(Stream.SUBSCRIBERS)
        await altered(admin, topic, limit)
    finally:
        await admin.close()
    campaign = define("acme", "promo", clock.now - timedelta(days=60), [ACME_NUMBER])
    runtime = await serve(name="large", clock=clock, campaigns=[campaign], kafka=settings)
    numbers = [phone(40), phone(41)]
    await opted_in(runtime, numbers, clock.now)
    async with client(runtime.address, "acme-app") as c:
        request = opt_out(numbers[0], "acme", "promo", clock.now, text="stop " * 2000)
        by_api = await refused(c.RecordOptOut, request)
        words = "STOP " + "stop texting me " * 250
        text = inbound(numbers[1], ACME_NUMBER, words, clock.now)
        by_text = await refused(c.HandleInboundMessage, text)
    for number, err in zip(numbers, [by_api, by_text], strict=True):
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
        assert status_details(err)[0][0] == "request", status_details(err)
        info = held_info(err)
        assert info is not None, err.details()
        answer = await can_send(runtime, number, info["consistency_token"])
        assert answer.reason == api.REASON_REVOCATION_PENDING_REVIEW, answer


async def test_opt_outs_at_once_are_recorded_after_the_record_limit_is_lowered(
    serve, kafka_bootstrap
):
    """The topics' ``max.message.bytes`` was read only at start. Lowered under the
    running service, opt-outs made at once went as batches above it and each was
    refused as too large: held for review rather than recorded, and any other write
    so refused lost. Now each is recorded once, and one too large alone still held."""
    clock = Clock()
    settings = kafka_settings(kafka_bootstrap, f"lowered-{uuid.uuid4().hex[:8]}.")
    campaign = define("acme", "promo", clock.now - timedelta(days=60), [ACME_NUMBER])
    runtime = await serve(name="lowered", clock=clock, campaigns=[campaign], kafka=settings)
    numbers = [phone(100 + i) for i in range(64)]
    await opted_in(runtime, numbers, clock.now)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        limit = {**topic_configs(settings), "max.message.bytes": "4096"}
        topic = settings.topic(Stream.SUBSCRIBERS)
        await altered(admin, topic, limit)
    finally:
        await admin.close()
    async with client(runtime.address, "acme-app") as c:
        requests = [opt_out(n, "acme", "promo", clock.now, text="STOP") for n in numbers]
        answers = await asyncio.gather(
            *(c.RecordOptOut(r) for r in requests), return_exceptions=True
        )
        large = opt_out(phone(99), "acme", "promo", clock.now, text="stop " * 2000)
        too_large = await refused(c.RecordOptOut, large)
    assert [a for a in answers if isinstance(a, BaseException)] == []
    assert too_large.code() == grpc.StatusCode.INVALID_ARGUMENT, too_large
    assert held_info(too_large) is not None, too_large.details()
    tokens = [ConsistencyToken.decode(a.consistency_token) for a in answers]
    fresh = functools.reduce(ConsistencyToken.merge, tokens).encode()
    for number in numbers:
        answer = await can_send(runtime, number, fresh)
        assert answer.reason == api.REASON_REVOKED, (number, answer)
    assert runtime.ledger is not None
    written = sum((await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)).values())
    assert written == 64 + 64 + 1  # the opt-ins, each opt-out once, and the hold


async def test_a_hold_past_its_deadline_is_overdue_in_every_audit_read(own_service):
    """Past its ten business days a hold counts as a revocation: CanSend answers
    REVOCATION_OVERDUE, but the proof packet still read "blocks every send ... (due
    <date>)" and GetConsent gave no deadline, as if it only awaited review."""
    runtime, clock = own_service
    number = phone(90)
    await opted_in(runtime, [number], clock.now)
    async with client(runtime.address, "acme-app") as c:
        err = await refused(c.RecordOptOut, opt_out(number, "acme", "promo", clock.now, channel=0))
    info = held_info(err)
    assert info is not None, err.details()
    fresh, held = info["consistency_token"], info["candidate_event_id"]
    asked = dict(phone=number, brand="acme", at_least_as_fresh=fresh)

    async def audit_reads() -> tuple[Any, Any, Any, Any]:
        async with client(runtime.address) as admin:
            packet = await admin.GetProofPacket(api.GetProofPacketRequest(**asked))
            consent = await admin.GetConsent(api.GetConsentRequest(**asked, campaign="promo"))
            queue = await admin.ListRevocationCandidates(
                api.ListRevocationCandidatesRequest(brand="acme", at_least_as_fresh=fresh)
            )
        [hold] = json_format.MessageToDict(packet.packet)["opt_outs"]
        [listed] = [d for d in queue.deadlines if d.candidate_event_id == held]
        return await can_send(runtime, number, fresh), hold, consent, listed

    answer, hold, consent, listed = await audit_reads()
    assert answer.reason == api.REASON_REVOCATION_PENDING_REVIEW, answer
    assert not hold["overdue"] and "overdue" not in hold["handling"], hold
    [deadline] = consent.pending_deadlines
    assert deadline.candidate_event_id == held and not deadline.overdue, consent
    assert not listed.overdue and listed.due_at == deadline.due_at, listed

    clock.now += timedelta(days=20)
    answer, hold, consent, listed = await audit_reads()
    assert answer.reason == api.REASON_REVOCATION_OVERDUE, answer
    assert list(answer.evidence_event_ids) == [held], answer
    due = deadline.due_at.ToDatetime(UTC)
    assert hold["overdue"] and hold["due"] == iso(due), hold
    assert hold["handling"].startswith(f"overdue since {iso(due)}"), hold["handling"]
    assert "counts as a revocation" in hold["handling"], hold["handling"]
    assert consent.state == api.CONSENT_STATE_PENDING_REVIEW, consent
    [deadline] = consent.pending_deadlines
    assert deadline.candidate_event_id == held and deadline.overdue, consent
    assert listed.overdue and listed.due_at == deadline.due_at, listed


async def test_a_live_opt_out_held_takes_its_place_at_its_own_time(service):
    """A live opt-out or STOP refused for a detail but whose own time reads (in the
    past, as a backfill or a late gateway sends it) was held at the moment it was
    refused. CanSendAsOf of a send between the two, asked with all the ledger knows,
    answered allowed for a number whose opt-out was on record by then, and so did the
    proof packet and the sweep: the hold now goes at the opt-out's own time, as an
    import's does."""
    runtime, clock = service
    said, before, between = (clock.now - timedelta(hours=h) for h in (2, 3, 1))
    record, text = phone(100), phone(101)
    await opted_in(runtime, [record, text], clock.now)
    async with client(runtime.address, "acme-app") as c:
        wrote = opt_out(record, "acme", "promo", said, channel=0)
        texted = inbound(text, ACME_NUMBER, "STOP", said, message_id="")
        held = [
            held_info(await refused(c.RecordOptOut, wrote)),
            held_info(await refused(c.HandleInboundMessage, texted)),
        ]
    async with client(runtime.address) as admin:
        for number, info in zip((record, text), held, strict=True):
            assert info is not None, number
            for at, allowed in ((before, True), (between, False)):
                answer = await admin.CanSendAsOf(
                    api.CanSendAsOfRequest(
                        phone=number,
                        brand="acme",
                        campaign="promo",
                        at=ts(at),
                        at_least_as_fresh=info["consistency_token"],
                    )
                )
                assert answer.allowed is allowed, (number, at, answer)
            assert answer.reason == api.REASON_REVOCATION_PENDING_REVIEW, answer
            assert list(answer.evidence_event_ids) == [info["candidate_event_id"]], answer


async def test_an_outcome_saying_the_person_opted_out_at_the_provider_holds_the_number(service):
    """Twilio's 21610 means the person replied STOP to the sender: a STOP the gateway
    lost. The outcome and its hold are written in one call and CanSend denies until a
    reviewer resolves it; another error code, or a retry, changes nothing. Twilio
    answers it when asked to send, so the sender often recorded no send: that outcome
    is refused, and the number held all the same."""
    runtime, clock = service
    number, unsent = phone(60), phone(61)
    await opted_in(runtime, [number, unsent], clock.now)
    message = sent(number, "acme", "promo", clock.now - timedelta(minutes=10))

    def outcome(code: str, to: str = number) -> api.RecordDeliveryOutcomeRequest:
        return api.RecordDeliveryOutcomeRequest(
            request_id=f"d-{uuid.uuid4().hex}",
            phone=to,
            brand="acme",
            message_id=message.message_id,
            outcome=lpb.DELIVERY_OUTCOME_FAILED,
            error_code=code,
            occurred_at=ts(clock.now - timedelta(minutes=9)),
        )

    async with client(runtime.address, "acme-app") as c:
        await c.RecordMessageSent(message)
        other = await c.RecordDeliveryOutcome(outcome("30003"))
        assert len(other.event_ids) == 1
        assert (await can_send(runtime, number, other.consistency_token)).allowed
        stop = outcome("21610")
        written = await c.RecordDeliveryOutcome(stop)
        assert len(written.event_ids) == 2, written  # the outcome and its hold
        hold = written.event_ids[1]
        answer = await can_send(runtime, number, written.consistency_token)
        assert answer.reason == api.REASON_REVOCATION_PENDING_REVIEW, answer
        assert answer.detail.startswith("an opt-out the SMS provider reported"), answer.detail
        assert list(answer.evidence_event_ids) == [hold], answer
        again = await c.RecordDeliveryOutcome(stop)
        assert list(again.event_ids) == list(written.event_ids)
        assert await candidates_of(runtime, number, again.consistency_token) == [hold]
        # No send recorded to this number: refused, and held for a 21610 alone.
        err = await refused(c.RecordDeliveryOutcome, outcome("30003", unsent))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and held_info(err) is None
        assert (await can_send(runtime, unsent)).allowed
        not_sent = outcome("21610", unsent)
        err = await refused(c.RecordDeliveryOutcome, not_sent)
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err
        info = held_info(err)
        assert info is not None and "held for review" in err.details(), err.details()
        answer = await can_send(runtime, unsent, info["consistency_token"])
        assert answer.reason == api.REASON_REVOCATION_PENDING_REVIEW, answer
        assert list(answer.evidence_event_ids) == [info["candidate_event_id"]], answer
        retried = held_info(await refused(c.RecordDeliveryOutcome, not_sent))
        assert retried is not None
        held = await candidates_of(runtime, unsent, retried["consistency_token"])
        assert held == [info["candidate_event_id"]]
    async with client(runtime.address) as admin:
        resolved = await admin.ResolveRevocationCandidate(
            api.ResolveRevocationCandidateRequest(
                request_id=f"r-{uuid.uuid4().hex}",
                phone=number,
                brand="acme",
                candidate_event_id=hold,
                resolution=lpb.CANDIDATE_RESOLUTION_DISMISSED,
                occurred_at=ts(clock.now),
                resolved_by="reviewer: the provider's opt-out was a test number",
            )
        )
    answer = await can_send(runtime, number, resolved.consistency_token)
    assert answer.allowed, answer
