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
