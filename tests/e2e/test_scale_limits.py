"""The limits of what the service stores (the digest the replica holds, the view,
the ledger's envelope) through a real gRPC client on the real Kafka broker and
PostgreSQL: a number's facts at the edges of what is kept must give the answers
the policy gives, never a quieter one."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb
from google.protobuf.duration_pb2 import Duration

from tests.e2e.harness import Clock, client, define, opt_in, ts

pytestmark = pytest.mark.asyncio(loop_scope="session")

PHONE = "+14155552671"  # Los Angeles


def sent(phone: str, at, campaign: str = "monthly") -> api.SentMessage:
    return api.SentMessage(
        phone=phone,
        campaign=campaign,
        message_id=f"SM{uuid.uuid4().hex[:12]}",
        occurred_at=ts(at),
        included_opt_out_language=True,
        identified_sender=True,
    )


async def test_a_send_stamped_ahead_keeps_the_month_old_send_a_monthly_cap_counts(serve):
    """A cap of two a month (31 days, the longest window there is): a send a minute
    inside the window, then one stamped four minutes ahead of the service's clock (a
    sender's clock ahead, within the accepted skew). Both count, so the cap is
    reached. The fold kept sends only back to 31 days before its newest, which
    dropped the first, and CanSend allowed a third."""
    clock = Clock()
    cap = lpb.FrequencyCap(limit=2, window=Duration(seconds=31 * 86400))
    campaign = define("acme", "monthly", clock.now - timedelta(days=60), frequency_caps=[cap])
    runtime = await serve(clock=clock, campaigns=[campaign])
    month = timedelta(days=31)
    async with client(runtime.address) as c:
        await c.RecordOptIn(opt_in(PHONE, "acme", "monthly", clock.now - timedelta(days=40)))
        first = sent(PHONE, clock.now - month + timedelta(minutes=1))
        ahead = sent(PHONE, clock.now + timedelta(minutes=4))
        w = await c.RecordMessagesSent(
            api.RecordMessagesSentRequest(
                request_id=uuid.uuid4().hex, brand="acme", messages=[first, ahead]
            )
        )
        answer = await c.CanSend(
            api.CanSendRequest(
                phone=PHONE,
                brand="acme",
                campaign="monthly",
                at_least_as_fresh=w.consistency_token,
            )
        )
    assert not answer.allowed, answer
    assert answer.reason == api.REASON_FREQUENCY_CAP_REACHED
    assert set(w.event_ids) <= set(answer.evidence_event_ids)
