"""The opt-out rate and campaign health count the opt-outs held for review, through
the real gRPC server: a carrier counts a provider's 21610 or a flagged reply the
day it happens, not the day a reviewer resolves it."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb

from ledger.ports import ConsistencyToken
from tests.e2e.harness import Clock, client, define, inbound, opt_in, sent, ts
from tests.e2e.test_lifecycle import ACME_NUMBER, ALERTS_NUMBER
from tests.e2e.test_review_holds import refused_at_provider

pytestmark = pytest.mark.asyncio(loop_scope="session")


def phone(i: int) -> str:
    return f"+1415555{7100 + i:04d}"


def resolution(number: str, candidate: str, kind: int, at) -> api.ResolveRevocationCandidateRequest:
    return api.ResolveRevocationCandidateRequest(
        request_id=f"r-{uuid.uuid4().hex}",
        phone=number,
        brand="acme",
        candidate_event_id=candidate,
        resolution=kind,
        occurred_at=ts(at),
        resolved_by="reviewer@acme",
    )


async def test_holds_awaiting_review_count_beside_the_opt_outs(serve):
    clock = Clock()
    t = clock.now
    runtime = await serve(
        clock=clock,
        campaigns=[
            define("acme", c, t - timedelta(days=60), [n])
            for c, n in (("promo", ACME_NUMBER), ("alerts", ALERTS_NUMBER))
        ],
    )
    tokens = []
    async with client(runtime.address, "acme-app") as c:
        for i in range(4):
            campaign = "alerts" if i == 3 else "promo"
            await c.RecordOptIn(opt_in(phone(i), "acme", campaign, t - timedelta(days=1)))
        messages = [
            sent(phone(i), "acme", "alerts" if i == 3 else "promo", t - timedelta(hours=1))
            for i in range(4)
        ]
        for m in messages:
            await c.RecordMessageSent(m)
        # 0: the provider says the person opted out there; held, never reviewed.
        held = await c.RecordDeliveryOutcome(
            refused_at_provider(messages[0], t - timedelta(minutes=50))
        )
        assert len(held.event_ids) == 2, held
        # 1 and 2: replies that read like a STOP; one resolved "revoked", one dismissed.
        # 3: such a reply from a number only alerts texted.
        flagged = {}
        for i in (1, 2, 3):
            w = await c.HandleInboundMessage(
                inbound(phone(i), ACME_NUMBER, "please stop texting me", t - timedelta(minutes=40))
            )
            assert w.intent == api.INBOUND_INTENT_REVOCATION_CANDIDATE, w
            flagged[i] = w.event_ids[-1]
    async with client(runtime.address) as reviewer:
        for i, kind in (
            (1, lpb.CANDIDATE_RESOLUTION_REVOKED),
            (2, lpb.CANDIDATE_RESOLUTION_DISMISSED),
        ):
            r = await reviewer.ResolveRevocationCandidate(
                resolution(phone(i), flagged[i], kind, t - timedelta(minutes=30))
            )
            tokens.append(r.consistency_token)
    fresh = ConsistencyToken.decode(tokens[0]).merge(ConsistencyToken.decode(tokens[1])).encode()

    async with client(runtime.address) as c:

        async def rate(campaign: str | None) -> tuple[int, int, int, bool]:
            request = api.GetOptOutRateRequest(brand="acme", at_least_as_fresh=fresh)
            if campaign is not None:
                request.campaign = campaign
            r = await c.GetOptOutRate(request)
            return r.messages_sent, r.opt_outs, r.opt_outs_pending_review, r.above_limit

        # The revoked one counts once, as an opt-out; the dismissed one not at all.
        assert await rate(None) == (4, 1, 2, True)
        assert await rate("promo") == (3, 1, 1, True)
        # No opt-out of alerts yet, but its texts drew a STOP awaiting review.
        assert await rate("alerts") == (1, 0, 1, True)

        health = await c.GetCampaignHealth(
            api.GetCampaignHealthRequest(brand="acme", at_least_as_fresh=fresh)
        )
        counts = {h.campaign: h.counts for h in health.campaigns}
        assert {
            name: (k.messages_sent, k.opt_outs, k.opt_outs_pending_review, k.opt_out_flagged)
            for name, k in counts.items()
        } == {"alerts": (1, 0, 1, True), "promo": (3, 1, 1, True)}
        assert health.flagged
