"""Who may import what, through the real gRPC server, on the real Kafka ledger and
PostgreSQL and on the embedded default's ledger (PostgreSQL): a record of a brand
the token may not write for is refused PERMISSION_DENIED, as its single write is,
whatever else is wrong with it, and nothing of it is written; a record under "*"
is refused, and held, as its single write is."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api

from ledger.ports import ConsistencyToken, Stream
from tests.e2e.harness import (
    client,
    define,
    held_info,
    imported,
    module_clock,
    opt_in,
    opt_out,
    status_details,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="module", params=["kafka", "embedded"])
async def service(request, module_serve):
    """A service with acme's campaign "promo" and globex's "deals" defined; one for
    the module's tests, each of which writes nothing or holds numbers of its own."""
    clock = module_clock()
    campaigns = [
        define("acme", "promo", clock.now - timedelta(days=1)),
        define("globex", "deals", clock.now - timedelta(days=1)),
    ]
    runtime = await module_serve(
        on_kafka=request.param == "kafka", name="tenancy", clock=clock, campaigns=campaigns
    )
    return runtime, clock


def numbers(*ends: int, who: str) -> list[str]:
    """Numbers of a test's own for each caller, so that one's holds are no other's."""
    shift = {"acme-app": 0, "admin": 100}[who]
    return [f"+1415555{end + shift:04d}" for end in ends]


async def test_another_brand_s_bad_records_are_refused_for_the_brand_first(service):
    """The import checked a record's fields before its brand: acme's token was told
    what to mend in globex's records (INVALID_ARGUMENT), where the single write, and
    the import's own contract, refuse them PERMISSION_DENIED."""
    runtime, clock = service
    phone = "+14155550340"
    no_channel = opt_out(phone, "globex", "deals", clock.now, channel=0)
    bad_phone = opt_in("not a number", "globex", "deals", clock.now)
    ahead = opt_in(phone, "globex", "deals", clock.now + timedelta(days=3))
    ends = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)
    async with client(runtime.address, "acme-app") as app, client(runtime.address) as admin:
        answer = await imported(
            app,
            api.ImportRecord(opt_out=no_channel),
            api.ImportRecord(opt_in=bad_phone),
            api.ImportRecord(opt_in=ahead),
        )
        listed = await admin.ListEvents(api.ListEventsRequest(phone=phone))

    refused = [(r.code, [v.field for v in r.violations]) for r in answer.refusals]
    assert refused == [("PERMISSION_DENIED", ["brand"])] * 3
    assert (answer.imported, answer.held_for_review) == (0, 0)
    assert list(listed.events) == []
    assert await runtime.ledger.end_offsets(Stream.SUBSCRIBERS) == ends


async def test_an_opt_out_under_a_spelling_of_the_caller_s_brand_is_still_held(service):
    """Refused for the brand first, an opt-out under "acme_" (which no campaign was
    defined for, and which reads as acme) is still refused on its brand and held
    under acme for a token of acme alone, not refused PERMISSION_DENIED."""
    runtime, clock = service
    phone = "+14155550341"
    async with client(runtime.address, "acme-app") as app:
        answer = await imported(
            app, api.ImportRecord(opt_out=opt_out(phone, "acme_", None, clock.now, channel=0))
        )
    (refusal,) = answer.refusals
    assert refusal.code == "INVALID_ARGUMENT" and refusal.held_for_review
    assert answer.held_for_review == 1


async def _refused(call, request) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(request)
    return caught.value


async def _held_under(runtime, admin, phone: str, token: str) -> set[str]:
    """The brands of acme's and globex's whose CanSend denies ``phone``, pending review."""
    denied = set()
    for brand, campaign in (("acme", "promo"), ("globex", "deals")):
        answer = await admin.CanSend(
            api.CanSendRequest(phone=phone, brand=brand, campaign=campaign, at_least_as_fresh=token)
        )
        if answer.reason == api.REASON_REVOCATION_PENDING_REVIEW:
            denied.add(brand)
    return denied


@pytest.mark.parametrize("who, held", [("acme-app", {"acme"}), ("admin", {"acme", "globex"})])
async def test_an_opt_out_under_every_brand_is_refused_and_held_alike_by_both_paths(
    service, who, held
):
    """Brand "*" is the key of the STOPs whose brand is unknown, no brand a write
    names: an opt-out under it is bad input, whoever asks, and may be the caller's.
    For a token of acme alone, the import refused it on ``brand`` and held it under
    acme, where RecordOptOut refused it PERMISSION_DENIED and held nothing, so the
    number went on being sent to. Both now refuse it on ``brand`` and hold it under
    the caller's brands (under "*", every brand, for a token of every brand)."""
    runtime, clock = service
    single, imported_one = numbers(342, 343, who=who)
    async with client(runtime.address, who) as app, client(runtime.address) as admin:
        err = await _refused(app.RecordOptOut, opt_out(single, "*", None, clock.now))
        answer = await imported(
            app, api.ImportRecord(opt_out=opt_out(imported_one, "*", None, clock.now))
        )
        info = held_info(err)
        (refusal,) = answer.refusals
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in status_details(err)] == ["brand"]
        assert (refusal.code, [v.field for v in refusal.violations]) == (
            "INVALID_ARGUMENT",
            ["brand"],
        )
        assert refusal.held_for_review and answer.held_for_review == 1
        assert info is not None
        assert info["held_brands"] == ("acme" if who == "acme-app" else "*")
        token = ConsistencyToken.decode(info["consistency_token"])
        token = token.merge(ConsistencyToken.decode(answer.consistency_token)).encode()
        assert await _held_under(runtime, admin, single, token) == held
        assert await _held_under(runtime, admin, imported_one, token) == held


@pytest.mark.parametrize("who", ["acme-app", "admin"])
async def test_an_opt_in_under_every_brand_is_bad_input_by_both_paths(service, who):
    """An opt-in under "*" was INVALID_ARGUMENT in an import and PERMISSION_DENIED
    as a single write for a token of acme alone: it names no brand, which is bad
    input whoever asks. Both refuse it on ``brand``, and nothing is written."""
    runtime, clock = service
    phone = "+14155550344"
    ends = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)
    async with client(runtime.address, who) as app:
        err = await _refused(app.RecordOptIn, opt_in(phone, "*", "promo", clock.now))
        answer = await imported(
            app, api.ImportRecord(opt_in=opt_in(phone, "*", "promo", clock.now))
        )
    (refusal,) = answer.refusals
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in status_details(err)] == ["brand"]
    assert (refusal.code, [v.field for v in refusal.violations]) == ("INVALID_ARGUMENT", ["brand"])
    assert (answer.imported, answer.held_for_review) == (0, 0)
    assert await runtime.ledger.end_offsets(Stream.SUBSCRIBERS) == ends


@pytest.mark.parametrize("who", ["acme-app", "admin"])
async def test_an_opt_out_under_a_spelling_of_a_brand_names_every_bad_field_both_ways(service, who):
    """An opt-out under "ac-me" (acme's) stamped hours ahead was refused on ``brand``
    alone by RecordOptOut for a token of acme and on ``occurred_at`` alone for one of
    every brand, and on ``occurred_at`` alone imported: each named a field of two,
    by who asked and by which path. Both name both, and hold it under acme."""
    runtime, clock = service
    single, imported_one = numbers(345, 346, who=who)
    ahead = clock.now + timedelta(hours=3)
    async with client(runtime.address, who) as app, client(runtime.address) as admin:
        err = await _refused(app.RecordOptOut, opt_out(single, "ac-me", None, ahead))
        answer = await imported(
            app, api.ImportRecord(opt_out=opt_out(imported_one, "ac-me", None, ahead))
        )
        info = held_info(err)
        assert info is not None and info["held_brands"] == "acme"
        token = ConsistencyToken.decode(info["consistency_token"])
        token = token.merge(ConsistencyToken.decode(answer.consistency_token)).encode()
        assert await _held_under(runtime, admin, single, token) == {"acme"}
        assert await _held_under(runtime, admin, imported_one, token) == {"acme"}
    (refusal,) = answer.refusals
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in status_details(err)] == ["brand", "occurred_at"]
    assert (refusal.code, [v.field for v in refusal.violations]) == (
        "INVALID_ARGUMENT",
        ["brand", "occurred_at"],
    )
    assert refusal.held_for_review


async def test_a_hold_under_each_of_the_caller_s_brands_names_to_each_no_other(service):
    """An opt-out naming no brand, from a token of acme and initech, is held under
    each, imported or written alike. Each hold's words said "held as ['acme',
    'initech']", so acme's own readers (its review queue, its events, the consent
    and the proof packet) learnt that initech holds the number too."""
    runtime, clock = service
    single, imported_one = "+14155550347", "+14155550348"
    async with (
        client(runtime.address, "acme-initech") as agency,
        client(runtime.address, "acme-app") as acme,
        client(runtime.address) as admin,
    ):
        err = await _refused(agency.RecordOptOut, opt_out(single, "", None, clock.now))
        answer = await imported(
            agency, api.ImportRecord(opt_out=opt_out(imported_one, "", None, clock.now))
        )
        info = held_info(err)
        assert info is not None and answer.held_for_review == 1
        token = ConsistencyToken.decode(info["consistency_token"])
        fresh = token.merge(ConsistencyToken.decode(answer.consistency_token)).encode()
        for phone in (single, imported_one):
            shown = [
                await acme.ListRevocationCandidates(
                    api.ListRevocationCandidatesRequest(brand="acme", at_least_as_fresh=fresh)
                ),
                await acme.ListEvents(
                    api.ListEventsRequest(phone=phone, brand="acme", at_least_as_fresh=fresh)
                ),
                await acme.GetConsent(
                    api.GetConsentRequest(
                        phone=phone, brand="acme", campaign="promo", at_least_as_fresh=fresh
                    )
                ),
                await acme.GetProofPacket(
                    api.GetProofPacketRequest(
                        phone=phone, brand="acme", campaign="promo", at_least_as_fresh=fresh
                    ),
                    timeout=60,
                ),
            ]
            assert phone in str(shown[0])
            for answer_shown in shown:
                # The caller's token name (recorded_by) is its own to show.
                words = str(answer_shown).replace("acme-initech", "")
                assert "initech" not in words, answer_shown
            # Held under initech all the same, as its operator sees.
            theirs = await admin.ListRevocationCandidates(
                api.ListRevocationCandidatesRequest(brand="initech", at_least_as_fresh=fresh)
            )
            assert phone in {c.event.phone for c in theirs.candidates}, theirs
