"""What an auditor reads back agrees with what CanSend answered, on the real Kafka
ledger and PostgreSQL: CanSendAsOf for a moment, from what the ledger knew then,
gives the answer CanSend gave at that moment, whatever the writes before it."""

from __future__ import annotations

import uuid
from datetime import timedelta

from consent.v1 import consent_service_pb2 as api

from tests.e2e.harness import Clock, client, define, opt_in, ts

SENDER = "+12125550183"


async def test_an_age_verification_stamped_ahead_is_read_alike_now_and_as_of_now(serve) -> None:
    """An age verification stamped minutes ahead of the clock let CanSend allow an
    alcohol campaign at once, while CanSendAsOf for that same moment, known then,
    found no verification: the sweep would call the send it allowed unverified."""
    clock = Clock()
    now = clock.now
    wine = define("acme", "wine", now - timedelta(days=2), [SENDER], category="alcohol")
    service = await serve(name="agrees", clock=clock, campaigns=[wine])
    phone = "+14155550142"
    async with client(service.address) as admin:
        await admin.RecordOptIn(opt_in(phone, "acme", "wine", now - timedelta(hours=1)))
        w = await admin.RecordAgeVerification(
            api.RecordAgeVerificationRequest(
                request_id=uuid.uuid4().hex,
                phone=phone,
                brand="acme",
                method="id_scan",
                verified_21_plus=True,
                occurred_at=ts(now + timedelta(minutes=4)),
            )
        )
        asked = dict(phone=phone, brand="acme", campaign="wine")
        fresh = w.consistency_token
        live = await admin.CanSend(api.CanSendRequest(**asked, at_least_as_fresh=fresh))
        then = await admin.CanSendAsOf(
            api.CanSendAsOfRequest(**asked, at=ts(now), known_at=ts(now), at_least_as_fresh=fresh)
        )
    assert (then.allowed, then.reason) == (live.allowed, live.reason)
    assert live.allowed and live.reason == api.REASON_CONSENT_ACTIVE


async def test_a_brands_listing_holds_the_stop_that_denies_it_from_every_brand(serve) -> None:
    """A STOP to a number no campaign sends from is held under brand "*" and denies
    every brand's sends; CanSend names it as evidence, the proof packet lists it, yet
    ListEvents for the brand (the only listing a token of that brand may ask for) left
    it out: the auditor could not find the fact the answer rested on."""
    clock = Clock()
    now = clock.now
    promo = define("acme", "promo", now - timedelta(days=2), [SENDER])
    service = await serve(name="agrees", clock=clock, campaigns=[promo])
    phone = "+14155550143"
    async with client(service.address) as admin:
        await admin.RecordOptIn(opt_in(phone, "acme", "promo", now - timedelta(hours=1)))
        stop = await admin.HandleInboundMessage(
            api.HandleInboundMessageRequest(
                request_id=uuid.uuid4().hex,
                from_phone=phone,
                to_phone="+12125559999",  # no campaign sends from it
                body="STOP",
                message_id=f"SM{uuid.uuid4().hex[:12]}",
                occurred_at=ts(now - timedelta(minutes=1)),
            )
        )
        check = await admin.CanSend(
            api.CanSendRequest(
                phone=phone,
                brand="acme",
                campaign="promo",
                at_least_as_fresh=stop.consistency_token,
            )
        )
    assert not check.allowed and check.evidence_event_ids
    async with client(service.address, "acme-app") as acme:
        listed = await acme.ListEvents(
            api.ListEventsRequest(
                phone=phone, brand="acme", at_least_as_fresh=stop.consistency_token
            )
        )
    ids = [e.event.event_id for e in listed.events]
    assert set(check.evidence_event_ids) <= set(ids), ids
    assert set(stop.event_ids) <= set(ids)
    offsets = [(e.partition, e.offset) for e in listed.events]
    assert offsets == sorted(offsets)  # ledger order
