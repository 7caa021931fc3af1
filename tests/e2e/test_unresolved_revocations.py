"""Opt-outs that must not be lost or left in limbo, through the real gRPC server on the
real Kafka and PostgreSQL: a STOP to a number no campaign sends from, an opt-out
naming a campaign that is not defined, and a candidate left unresolved past the ten
business days of 47 CFR 64.1200(a)(10)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb

from ledger.commands import ResolveRevocationCandidate, to_events
from ledger.events import ANY_BRAND, CandidateResolution
from ledger.ports import ConsistencyToken
from services.bootstrap import Runtime
from tests.e2e.harness import (
    Clock,
    client,
    define,
    held_info,
    inbound,
    opt_in,
    opt_out,
    precondition_violations,
    ts,
)
from tests.e2e.test_lifecycle import ACME_NUMBER, GLOBEX_NUMBER, PHONE
from tests.e2e.test_metrics import sample, scrape

pytestmark = pytest.mark.asyncio(loop_scope="session")

UNOWNED = "+12125550199"
"""A number no campaign sends from."""


@pytest.fixture
async def service(serve):
    return await opted_in_everywhere(serve)


@pytest.fixture
async def metered(serve):
    """``service`` serving ``/metrics`` too: only for the test that scrapes it, as its
    server's stop waits out up to half a second of its loop."""
    return await opted_in_everywhere(serve, metrics_listen="127.0.0.1:0")


async def opted_in_everywhere(serve, **changes):
    """A service with acme's and globex's campaigns, where ``PHONE`` opted in to each,
    and its clock; ``changes`` to its settings."""
    clock = Clock()
    t = clock.now
    campaigns = [
        define("acme", "promo", t - timedelta(days=60), [ACME_NUMBER]),
        define("acme", "alerts", t - timedelta(days=60)),
        define("globex", "promo", t - timedelta(days=60), [GLOBEX_NUMBER]),
    ]
    runtime = await serve(clock=clock, campaigns=campaigns, **changes)
    async with client(runtime.address) as admin:
        for brand, campaign in (("acme", "promo"), ("acme", "alerts"), ("globex", "promo")):
            w = await admin.RecordOptIn(opt_in(PHONE, brand, campaign, t - timedelta(days=1)))
        assert await runtime.guard.wait_for_token(ConsistencyToken.decode(w.consistency_token))
    return runtime, clock


async def reasons(runtime: Runtime, token: str) -> dict[tuple[str, str], int]:
    """What CanSend answers for each campaign (asked by the operator, of every brand)."""
    found = {}
    async with client(runtime.address) as admin:
        for brand, campaign in (("acme", "promo"), ("acme", "alerts"), ("globex", "promo")):
            r = await admin.CanSend(
                api.CanSendRequest(
                    phone=PHONE, brand=brand, campaign=campaign, at_least_as_fresh=token
                )
            )
            found[brand, campaign] = r.reason
    return found


def resolve(brand: str, candidate: str, clock: Clock, resolution: int):
    return api.ResolveRevocationCandidateRequest(
        request_id=uuid.uuid4().hex,
        phone=PHONE,
        brand=brand,
        candidate_event_id=candidate,
        resolution=resolution,
        occurred_at=ts(clock.now),
    )


async def test_a_stop_to_a_number_no_campaign_sends_from_denies_every_brand(service):
    runtime, clock = service
    async with client(runtime.address) as admin:
        before = await reasons(runtime, "")
        assert set(before.values()) == {api.REASON_CONSENT_ACTIVE}

        stop = await admin.HandleInboundMessage(inbound(PHONE, UNOWNED, "STOP", clock.now))
        assert stop.intent == api.INBOUND_INTENT_OPT_OUT and stop.brand == ""
        assert any(UNOWNED in note for note in stop.notes)
        after = await reasons(runtime, stop.consistency_token)
        assert set(after.values()) == {api.REASON_REVOKED_BRAND_WIDE}
        as_of = await admin.CanSendAsOf(
            api.CanSendAsOfRequest(phone=PHONE, brand="globex", campaign="promo", at=ts(clock.now))
        )
        assert as_of.reason == api.REASON_REVOKED_BRAND_WIDE  # CanSendAsOf agrees
        consent = await admin.GetConsent(
            api.GetConsentRequest(phone=PHONE, brand="globex", campaign="promo")
        )
        # It counts for every campaign until resolved, as CanSend says; it is still
        # listed as awaiting review.
        assert consent.state == api.CONSENT_STATE_REVOKED_BRAND_WIDE
        assert [c.event.brand for c in consent.pending_revocation_candidates] == ["*"]

        queue = await admin.ListRevocationCandidates(
            api.ListRevocationCandidatesRequest(brand="*", at_least_as_fresh=stop.consistency_token)
        )
        [kept] = queue.candidates
        flagged = kept.event.revocation_candidate_flagged
        assert flagged.unattributed and flagged.to_number == UNOWNED and flagged.text == "STOP"
        assert kept.event.phone == PHONE and kept.event.brand == "*"

        # A text that is no opt-out has nothing to keep: still refused.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await admin.HandleInboundMessage(
                inbound(PHONE, UNOWNED, "what are your hours?", clock.now)
            )
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

        # "Revoked" under "*" would revoke no brand and lift every brand's only denial:
        # refused, naming the way out; the STOP keeps denying every brand.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await admin.ResolveRevocationCandidate(
                resolve("*", kept.event.event_id, clock, lpb.CANDIDATE_RESOLUTION_REVOKED)
            )
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        [(field, why)] = precondition_violations(err.value)
        assert field == "resolution" and "RecordOptOut" in why
        assert set((await reasons(runtime, stop.consistency_token)).values()) == {
            api.REASON_REVOKED_BRAND_WIDE
        }

        # Someone who looked resolves it; the brands' sends go on.
        done = await admin.ResolveRevocationCandidate(
            resolve("*", kept.event.event_id, clock, lpb.CANDIDATE_RESOLUTION_DISMISSED)
        )
        assert set((await reasons(runtime, done.consistency_token)).values()) == {
            api.REASON_CONSENT_ACTIVE
        }

    async with client(runtime.address, "acme-app") as acme:
        # A brand's own caller may neither see nor resolve what concerns every brand.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await acme.ListRevocationCandidates(api.ListRevocationCandidatesRequest(brand="*"))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_revoked_resolution_under_every_brand_recorded_before_its_refusal_denies(
    service,
):
    # Before 34200de the service recorded a "revoked" of a STOP held under "*": its
    # ConsentRevoked is under no real brand. Written straight to the ledger here, as
    # that version wrote it, it must leave the STOP denying every brand and listed.
    runtime, clock = service
    assert runtime.ledger is not None
    async with client(runtime.address) as admin:
        stop = await admin.HandleInboundMessage(inbound(PHONE, UNOWNED, "STOP", clock.now))
        queue = await admin.ListRevocationCandidates(
            api.ListRevocationCandidatesRequest(brand="*", at_least_as_fresh=stop.consistency_token)
        )
        [kept] = queue.candidates
        old = ResolveRevocationCandidate(
            uuid.uuid4().hex,
            PHONE,
            ANY_BRAND,
            kept.event.event_id,
            CandidateResolution.REVOKED,
            clock.now,
        )
        recorded = await runtime.ledger.append(to_events(old, clock.now))
        token = ConsistencyToken.after(recorded).encode()

        assert set((await reasons(runtime, token)).values()) == {api.REASON_REVOKED_BRAND_WIDE}
        as_of = await admin.CanSendAsOf(
            api.CanSendAsOfRequest(
                phone=PHONE,
                brand="globex",
                campaign="promo",
                at=ts(clock.now + timedelta(seconds=1)),
                at_least_as_fresh=token,
            )
        )
        assert as_of.reason == api.REASON_REVOKED_BRAND_WIDE
        queue = await admin.ListRevocationCandidates(
            api.ListRevocationCandidatesRequest(brand="*", at_least_as_fresh=token)
        )
        assert [c.event.event_id for c in queue.candidates] == [kept.event.event_id]

        # The way out the refusal names still works: a dismissal lifts it.
        done = await admin.ResolveRevocationCandidate(
            resolve("*", kept.event.event_id, clock, lpb.CANDIDATE_RESOLUTION_DISMISSED)
        )
        assert set((await reasons(runtime, done.consistency_token)).values()) == {
            api.REASON_CONSENT_ACTIVE
        }


async def test_a_stop_to_an_unowned_number_from_a_one_brand_caller_is_that_brands(service):
    runtime, clock = service
    async with client(runtime.address, "acme-app") as acme:
        stop = await acme.HandleInboundMessage(inbound(PHONE, UNOWNED, "stop all", clock.now))
        assert stop.brand == "acme"
        found = await reasons(runtime, stop.consistency_token)
        assert found["acme", "promo"] == found["acme", "alerts"] == api.REASON_REVOKED_BRAND_WIDE
        queue = await acme.ListRevocationCandidates(
            api.ListRevocationCandidatesRequest(brand="acme")
        )
        assert [c.event.revocation_candidate_flagged.to_number for c in queue.candidates] == [
            UNOWNED
        ]
    async with client(runtime.address, "globex-app") as globex:
        r = await globex.CanSend(
            api.CanSendRequest(
                phone=PHONE,
                brand="globex",
                campaign="promo",
                at_least_as_fresh=stop.consistency_token,
            )
        )
        assert r.allowed  # another tenant's caller cannot stop globex's messages


@pytest.mark.parametrize("refused", [False, True])
async def test_a_stop_to_an_unowned_number_from_a_caller_of_some_brands_is_theirs(service, refused):
    """A caller of two brands had its STOP to a number no campaign sends from kept
    under "*": it denied every brand's sends to the number, globex's too, until an
    operator of every brand dismissed it, and globex's auditors read its text. It is
    kept under each of the caller's brands instead, whether it was recorded or
    refused for a detail (no time) and held."""
    runtime, clock = service
    async with client(runtime.address, "acme-initech") as caller:
        text = inbound(PHONE, UNOWNED, "stop all", None if refused else clock.now)
        if refused:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await caller.HandleInboundMessage(text)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            held = held_info(err.value)
            assert held is not None
            token, ids = held["consistency_token"], held["candidate_event_ids"].split(",")
        else:
            stop = await caller.HandleInboundMessage(text)
            token, ids = stop.consistency_token, list(stop.event_ids)
            assert stop.brand == ""
        found = await reasons(runtime, token)
        assert found["acme", "promo"] != api.REASON_CONSENT_ACTIVE
        assert found["acme", "alerts"] != api.REASON_CONSENT_ACTIVE
        assert found["globex", "promo"] == api.REASON_CONSENT_ACTIVE
        for brand in ("acme", "initech"):
            queue = await caller.ListRevocationCandidates(
                api.ListRevocationCandidatesRequest(brand=brand, at_least_as_fresh=token)
            )
            assert [c.event.event_id for c in queue.candidates if c.event.event_id in ids]
    async with client(runtime.address) as admin:
        queue = await admin.ListRevocationCandidates(
            api.ListRevocationCandidatesRequest(brand="*", at_least_as_fresh=token)
        )
        assert not queue.candidates
        events = await admin.ListEvents(
            api.ListEventsRequest(phone=PHONE, brand="globex", at_least_as_fresh=token)
        )
        assert all(e.event.recorded_by != "acme-initech" for e in events.events)


async def test_an_opt_out_naming_an_undefined_campaign_is_kept_and_denies_the_brand(service):
    runtime, clock = service
    async with client(runtime.address, "acme-app") as acme:
        request = opt_out(PHONE, "acme", "winter-sale", clock.now, text="no more please")
        w = await acme.RecordOptOut(request)
        found = await reasons(runtime, w.consistency_token)
        assert found["acme", "promo"] == found["acme", "alerts"] == api.REASON_REVOKED_BRAND_WIDE
        assert found["globex", "promo"] == api.REASON_CONSENT_ACTIVE
        again = await acme.RecordOptOut(request)  # a retry is the same fact
        assert list(again.event_ids) == list(w.event_ids)

        queue = await acme.ListRevocationCandidates(
            api.ListRevocationCandidatesRequest(brand="acme")
        )
        [kept] = queue.candidates
        assert kept.event.event_id == w.event_ids[0]
        flagged = kept.event.revocation_candidate_flagged
        assert flagged.unattributed and flagged.campaign == "winter-sale"
        assert flagged.text == "no more please"

        # Resolved as a revocation: a brand-wide opt-out stands in its place.
        done = await acme.ResolveRevocationCandidate(
            resolve("acme", w.event_ids[0], clock, lpb.CANDIDATE_RESOLUTION_REVOKED)
        )
        found = await reasons(runtime, done.consistency_token)
        assert found["acme", "promo"] == api.REASON_REVOKED_BRAND_WIDE
        queue = await acme.ListRevocationCandidates(
            api.ListRevocationCandidatesRequest(brand="acme")
        )
        assert not queue.candidates


async def test_a_resolution_stamped_before_its_reply_is_refused_and_the_reply_denies(service):
    # A "revoked" stamped before the opt-in it ends left that opt-in standing: the
    # reply was resolved, the number allowed. A decision cannot precede its reply.
    runtime, clock = service
    async with client(runtime.address, "acme-app") as acme:
        replied_at = clock.now - timedelta(hours=1)
        reply = await acme.HandleInboundMessage(
            inbound(PHONE, ACME_NUMBER, "please stop texting me", replied_at)
        )
        [candidate] = (
            await acme.ListRevocationCandidates(
                api.ListRevocationCandidatesRequest(
                    brand="acme", at_least_as_fresh=reply.consistency_token
                )
            )
        ).candidates
        early = resolve("acme", candidate.event.event_id, clock, lpb.CANDIDATE_RESOLUTION_REVOKED)
        early.occurred_at.CopyFrom(ts(clock.now - timedelta(days=2)))  # before the opt-in
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await acme.ResolveRevocationCandidate(early)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert [s for s, _ in precondition_violations(err.value)] == ["occurred_at"]
        found = await reasons(runtime, reply.consistency_token)
        assert found["acme", "promo"] == api.REASON_REVOCATION_PENDING_REVIEW

    async with client(runtime.address) as admin:  # a dismissal likewise
        dismissal = resolve(
            "acme", candidate.event.event_id, clock, lpb.CANDIDATE_RESOLUTION_DISMISSED
        )
        dismissal.occurred_at.CopyFrom(ts(replied_at - timedelta(microseconds=1)))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await admin.ResolveRevocationCandidate(dismissal)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        as_of = await admin.CanSendAsOf(
            api.CanSendAsOfRequest(phone=PHONE, brand="acme", campaign="promo", at=ts(replied_at))
        )
        assert as_of.reason == api.REASON_REVOCATION_PENDING_REVIEW

        # Stamped at the reply or after it, the resolution is recorded.
        at_reply = resolve(
            "acme", candidate.event.event_id, clock, lpb.CANDIDATE_RESOLUTION_REVOKED
        )
        at_reply.occurred_at.CopyFrom(ts(replied_at))
        done = await admin.ResolveRevocationCandidate(at_reply)
        found = await reasons(runtime, done.consistency_token)
        assert found["acme", "promo"] == found["acme", "alerts"] == api.REASON_REVOKED_BRAND_WIDE


async def test_an_overdue_candidate_denies_and_is_listed_and_counted(metered):
    runtime, clock = metered
    assert runtime.metrics_address is not None
    # Received on a Wednesday, so that ten business days span two weekends whatever
    # day the suite runs: from a Saturday they end 13 days later.
    clock.now += timedelta(days=(2 - clock.now.weekday()) % 7)
    async with client(runtime.address, "acme-app") as acme:
        reply = await acme.HandleInboundMessage(
            inbound(PHONE, ACME_NUMBER, "please stop texting me", clock.now)
        )
        assert reply.intent == api.INBOUND_INTENT_REVOCATION_CANDIDATE
        found = await reasons(runtime, reply.consistency_token)
        assert found["acme", "promo"] == api.REASON_REVOCATION_PENDING_REVIEW
        overdue_only = api.ListRevocationCandidatesRequest(brand="acme", overdue_only=True)
        assert not (await acme.ListRevocationCandidates(overdue_only)).candidates
        listed = await acme.ListRevocationCandidates(
            api.ListRevocationCandidatesRequest(brand="acme")
        )
        [deadline] = listed.deadlines
        assert not deadline.overdue
        assert deadline.candidate_event_id == listed.candidates[0].event.event_id
        due = deadline.due_at.ToDatetime().replace(tzinfo=clock.now.tzinfo)
        assert timedelta(days=14) <= due - clock.now <= timedelta(days=17)  # 10 business days
        samples = await asyncio.to_thread(scrape, runtime.metrics_address)
        assert sample(samples, "consent_revocation_candidates_overdue") == 0

        clock.now = due + timedelta(hours=15)  # noon in Los Angeles: nobody looked in time
        found = await reasons(runtime, "")
        assert found["acme", "promo"] == found["acme", "alerts"] == api.REASON_REVOCATION_OVERDUE
        late = await acme.ListRevocationCandidates(overdue_only)
        assert [c.event.event_id for c in late.candidates] == [
            c.event.event_id for c in listed.candidates
        ]
        assert late.deadlines[0].overdue
        samples = await asyncio.to_thread(scrape, runtime.metrics_address)
        assert sample(samples, "consent_revocation_candidates_overdue") == 1

    async with client(runtime.address) as admin:  # dismissing takes the admin scope
        done = await admin.ResolveRevocationCandidate(
            resolve(
                "acme",
                listed.candidates[0].event.event_id,
                clock,
                lpb.CANDIDATE_RESOLUTION_DISMISSED,
            )
        )
        found = await reasons(runtime, done.consistency_token)
        assert found["acme", "promo"] == api.REASON_CONSENT_ACTIVE
        samples = await asyncio.to_thread(scrape, runtime.metrics_address)
        assert sample(samples, "consent_revocation_candidates_overdue") == 0


REVOKE_ALL_AT = datetime(2027, 1, 31, 5, 0, tzinfo=UTC)
"""The revoke-all rule's effective date (ledger.policy.REVOKE_ALL_EFFECTIVE)."""


async def test_a_stop_to_one_campaign_stops_them_all_from_the_revoke_all_date(service):
    runtime, clock = service
    clock.now = REVOKE_ALL_AT - timedelta(days=3, hours=-15)  # noon in Los Angeles, before
    async with client(runtime.address) as admin:
        early = define("acme", "early", clock.now - timedelta(days=1), revoke_all=True)
        await admin.DefineCampaign(early)
        w = await admin.RecordOptIn(opt_in(PHONE, "acme", "early", clock.now - timedelta(hours=1)))
        stopped_at = clock.now
        stop = await admin.HandleInboundMessage(inbound(PHONE, ACME_NUMBER, "STOP", clock.now))
        assert stop.brand == "acme" and stop.campaign == "promo"

        async def reason(campaign: str, token: str = "") -> int:
            r = await admin.CanSend(
                api.CanSendRequest(
                    phone=PHONE, brand="acme", campaign=campaign, at_least_as_fresh=token
                )
            )
            return r.reason

        # Before the date: the STOP is promo's alone, unless a campaign chose otherwise.
        assert await reason("promo", stop.consistency_token) == api.REASON_REVOKED
        assert await reason("alerts") == api.REASON_CONSENT_ACTIVE
        assert await reason("early", w.consistency_token) == api.REASON_REVOKED_BRAND_WIDE

        clock.now = REVOKE_ALL_AT + timedelta(hours=15)  # noon in Los Angeles, after
        answer = await admin.CanSend(
            api.CanSendRequest(phone=PHONE, brand="acme", campaign="alerts")
        )
        assert answer.reason == api.REASON_REVOKED_BRAND_WIDE and "revoke-all" in answer.detail
        assert list(answer.evidence_event_ids) == [stop.event_ids[1]]
        assert await reason("promo") == api.REASON_REVOKED
        other_brand = await admin.CanSend(
            api.CanSendRequest(phone=PHONE, brand="globex", campaign="promo")
        )
        assert other_brand.allowed  # a sender's own campaigns only

        # A moment before the date is answered by the rule of that moment.
        then = await admin.CanSendAsOf(
            api.CanSendAsOfRequest(
                phone=PHONE,
                brand="acme",
                campaign="alerts",
                at=ts(stopped_at + timedelta(hours=1)),
            )
        )
        assert then.allowed

        # New consent to a campaign after the STOP is the person's newer word for it.
        again = await admin.RecordOptIn(opt_in(PHONE, "acme", "alerts", clock.now))
        assert await reason("alerts", again.consistency_token) == api.REASON_CONSENT_ACTIVE
