"""State telemarketing rules through the real gRPC server, Kafka ledger and PostgreSQL
view: the recipient's state (area code or the opt-in's region) decides, and the
answer names the rule and its citation."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api

from tests.e2e.harness import (
    client,
    define,
    opt_in,
    proof,
    sent,
    status_details,
    ts,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

TEXAS = "+15125550100"  # Austin: Central time
FLORIDA = "+13055550123"  # Miami: Eastern time
FLORIDA_TOO = "+13055550124"
SENDER = "+12125550177"


class SundayMorning:
    """The service's clock: the next Sunday at 15:30 UTC, 09:30 or 10:30 in Austin
    (before Texas allows solicitations on a Sunday, at noon) and 10:30 or 11:30 in
    Miami (inside Florida's 8-20 and the federal 8-21). Ahead of the real clock, as
    the service's clock is of the broker's stamps."""

    def __init__(self) -> None:
        real = datetime.now(UTC)
        day = real.replace(hour=15, minute=30, second=0, microsecond=0)
        day += timedelta(days=(6 - day.weekday()) % 7)
        self.now = day if day > real else day + timedelta(days=7)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def service(serve):
    clock = SundayMorning()
    campaign = define("acme", "promo", clock.now - timedelta(days=60), [SENDER])
    return await serve(clock=clock, campaigns=[campaign]), clock


async def can_send(c, phone: str, token: str) -> api.CanSendResponse:
    return await c.CanSend(
        api.CanSendRequest(phone=phone, brand="acme", campaign="promo", at_least_as_fresh=token)
    )


async def test_sunday_morning_a_texas_number_is_denied_by_texas_law_named(service):
    runtime, clock = service
    t = clock.now
    async with client(runtime.address, "acme-app") as c:
        w = await c.RecordOptIn(opt_in(TEXAS, "acme", "promo", t - timedelta(minutes=10)))
        await c.RecordOptIn(opt_in(FLORIDA, "acme", "promo", t - timedelta(minutes=10)))
        w = await c.RecordOptIn(opt_in(FLORIDA_TOO, "acme", "promo", t - timedelta(minutes=10)))

        texas = await can_send(c, TEXAS, w.consistency_token)
        assert not texas.allowed and texas.reason == api.REASON_QUIET_HOURS
        assert texas.rule == "state:TX"
        assert "301.051" in texas.rule_citation and "Sunday" in texas.detail
        assert "301.051" in texas.detail

        florida = await can_send(c, FLORIDA, w.consistency_token)
        assert florida.allowed and florida.rule == ""

        batch = await c.CanSendBatch(
            api.CanSendBatchRequest(
                brand="acme",
                campaign="promo",
                phones=[TEXAS, FLORIDA],
                at_least_as_fresh=w.consistency_token,
            )
        )
        assert [(d.allowed, d.rule) for d in batch.decisions] == [(False, "state:TX"), (True, "")]
        assert "301.051" in batch.decisions[0].rule_citation

        # The same moment asked of the past answers the same, the rule named.
        as_of = await c.CanSendAsOf(
            api.CanSendAsOfRequest(
                phone=TEXAS,
                brand="acme",
                campaign="promo",
                at=ts(t),
                at_least_as_fresh=w.consistency_token,
            )
        )
        assert not as_of.allowed and as_of.rule == "state:TX"


async def test_the_state_given_with_the_opt_in_adds_its_rules_to_the_numbers(service):
    runtime, clock = service
    t = clock.now
    async with client(runtime.address, "acme-app") as c:
        given = proof(t - timedelta(minutes=10))
        given.region = "tx"
        w = await c.RecordOptIn(
            opt_in(FLORIDA, "acme", "promo", t - timedelta(minutes=10), proof=given)
        )
        r = await can_send(c, FLORIDA, w.consistency_token)
        assert not r.allowed and r.reason == api.REASON_QUIET_HOURS and r.rule == "state:TX"
        assert w.event_ids[0] in r.evidence_event_ids  # the opt-in that said Texas

        events = await c.ListEvents(
            api.ListEventsRequest(
                phone=FLORIDA, brand="acme", at_least_as_fresh=w.consistency_token
            )
        )
        grants = [
            e.event.consent_granted
            for e in events.events
            if e.event.WhichOneof("payload") == "consent_granted"
        ]
        assert [g.proof.region for g in grants] == ["TX"]


async def test_a_region_that_is_no_us_state_is_refused_and_nothing_is_written(service):
    runtime, clock = service
    t = clock.now
    async with client(runtime.address, "acme-app") as c:
        given = proof(t - timedelta(minutes=10))
        given.region = "XX"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.RecordOptIn(
                opt_in(FLORIDA, "acme", "promo", t - timedelta(minutes=10), proof=given)
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in status_details(err.value)] == ["proof.region"]
        r = await can_send(c, FLORIDA, "")
        assert not r.allowed and r.reason == api.REASON_NO_CONSENT


async def test_a_fourth_promotional_text_in_24_hours_to_florida_is_denied(service):
    runtime, clock = service
    t = clock.now
    async with client(runtime.address, "acme-app") as c:
        w = await c.RecordOptIn(opt_in(FLORIDA, "acme", "promo", t - timedelta(hours=5)))
        grant, sends = w.event_ids[0], []
        for hours in (3, 2, 1):
            w = await c.RecordMessageSent(
                sent(FLORIDA, "acme", "promo", t - timedelta(hours=hours), message_id=f"SM-{hours}")
            )
            sends.append(w.event_ids[0])
        r = await can_send(c, FLORIDA, w.consistency_token)
        assert not r.allowed and r.reason == api.REASON_FREQUENCY_CAP_REACHED
        assert r.rule == "state:FL" and "501.616" in r.rule_citation
        # The grant, then the oldest and the latest of the three sends (the count is in
        # the detail).
        assert [grant, sends[0], sends[-1]] == list(r.evidence_event_ids[:3])
        assert "3 of 3" in r.detail


async def test_a_state_given_after_the_opt_in_applies_from_then_on(service):
    runtime, clock = service
    t = clock.now
    async with client(runtime.address, "acme-app") as c:
        w = await c.RecordOptIn(opt_in(FLORIDA, "acme", "promo", t - timedelta(days=2)))
        assert (await can_send(c, FLORIDA, w.consistency_token)).allowed

        moved = await c.RecordSubscriberLocation(
            api.RecordSubscriberLocationRequest(
                request_id=uuid.uuid4().hex,
                phone=FLORIDA,
                brand="acme",
                region="tx",
                occurred_at=ts(t - timedelta(hours=1)),
                detail="billing address updated",
            )
        )
        r = await can_send(c, FLORIDA, moved.consistency_token)
        assert not r.allowed and r.reason == api.REASON_QUIET_HOURS and r.rule == "state:TX"
        assert moved.event_ids[0] in r.evidence_event_ids

        consent = await c.GetConsent(
            api.GetConsentRequest(
                phone=FLORIDA,
                brand="acme",
                campaign="promo",
                at_least_as_fresh=moved.consistency_token,
            )
        )
        assert list(consent.regions) == ["FL", "TX"]
        assert consent.location.event.event_id == moved.event_ids[0]
        assert consent.location.event.subscriber_located.region == "TX"

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.RecordSubscriberLocation(
                api.RecordSubscriberLocationRequest(
                    request_id=uuid.uuid4().hex,
                    phone=FLORIDA,
                    brand="acme",
                    region="Texas",
                    occurred_at=ts(t - timedelta(minutes=1)),
                )
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in status_details(err.value)] == ["region"]
