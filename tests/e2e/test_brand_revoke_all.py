"""A brand puts the FCC's revoke-all rule (47 CFR 64.1200(a)(10)) in force for all its
campaigns before the rule's date (SetBrandPolicy), through the real gRPC server on
the real Kafka and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import timedelta

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb
from google.protobuf import json_format

from tests.e2e.harness import client, inbound, status_details, ts
from tests.e2e.test_lifecycle import ACME_NUMBER, PHONE
from tests.e2e.test_unresolved_revocations import REVOKE_ALL_AT, service

pytestmark = pytest.mark.asyncio(loop_scope="session")

__all__ = ["service"]  # the fixture: acme/promo, acme/alerts, globex/promo, all opted in


def brand_policy(
    brand: str, revoke_all: bool = True, request_id: str = ""
) -> api.SetBrandPolicyRequest:
    return api.SetBrandPolicyRequest(
        request_id=request_id or uuid.uuid4().hex, brand=brand, revoke_all=revoke_all
    )


async def test_a_brand_may_put_revoke_all_in_force_for_all_its_campaigns(service):
    runtime, clock = service
    assert clock.now < REVOKE_ALL_AT  # the rule is not yet in force for every brand
    async with client(runtime.address, "acme-app") as acme, client(runtime.address) as admin:

        async def check(
            campaign: str,
            token: str = "",
            kind: int = lpb.MESSAGE_KIND_REGULAR,
            brand: str = "acme",
        ) -> api.CanSendResponse:
            request = api.CanSendRequest(
                phone=PHONE,
                brand=brand,
                campaign=campaign,
                message_kind=kind,
                at_least_as_fresh=token,
            )
            return await (acme if brand == "acme" else admin).CanSend(request)

        # Without the setting, before the date: a STOP to promo leaves alerts allowed.
        stopped_at = clock.now
        stop = await acme.HandleInboundMessage(inbound(PHONE, ACME_NUMBER, "STOP", clock.now))
        assert stop.campaign == "promo"
        assert (await check("promo", stop.consistency_token)).reason == api.REASON_REVOKED
        assert (await check("alerts")).reason == api.REASON_CONSENT_ACTIVE

        # The brand's own write token sets it (it only narrows what may be sent).
        clock.now += timedelta(minutes=1)
        set_at = clock.now
        request = brand_policy("acme")
        written = await acme.SetBrandPolicy(request)
        assert len(written.event_ids) == 1
        retried = await acme.SetBrandPolicy(request)
        assert list(retried.event_ids) == list(written.event_ids)  # a retry, the same fact

        after = await check("alerts", written.consistency_token)
        assert not after.allowed and after.reason == api.REASON_REVOKED_BRAND_WIDE
        assert "revoke-all" in after.detail
        assert list(after.evidence_event_ids) == [stop.event_ids[1]]
        # The auditor's view of alerts says so too, naming the STOP to promo: it
        # said ACTIVE, with no opt-out, while CanSend denied.
        consent = await acme.GetConsent(
            api.GetConsentRequest(phone=PHONE, brand="acme", campaign="alerts")
        )
        assert consent.state == api.CONSENT_STATE_REVOKED_BRAND_WIDE
        assert consent.revocation.event.event_id == stop.event_ids[1]
        # ... but the one confirmation of the STOP to promo stays allowed.
        confirm = await check("promo", kind=lpb.MESSAGE_KIND_OPT_OUT_CONFIRMATION)
        assert confirm.allowed, confirm.detail
        # Another brand's campaigns are another sender's.
        assert (await check("promo", brand="globex")).allowed

        # An audit of a moment before the setting answers by the rules of then.
        clock.now += timedelta(minutes=10)

        async def as_of(at) -> api.CanSendAsOfResponse:
            return await acme.CanSendAsOf(
                api.CanSendAsOfRequest(phone=PHONE, brand="acme", campaign="alerts", at=ts(at))
            )

        before_setting = await as_of(stopped_at + timedelta(seconds=30))
        assert before_setting.allowed, before_setting.detail
        since_setting = await as_of(set_at + timedelta(minutes=1))
        assert since_setting.reason == api.REASON_REVOKED_BRAND_WIDE


async def test_only_the_brand_may_set_it_and_only_on(service):
    runtime, clock = service
    async with (
        client(runtime.address, "globex-app") as globex,
        client(runtime.address, "acme-checker") as checker,
        client(runtime.address, "acme-app") as acme,
    ):
        # Another brand's token, and the brand's own token without the write scope.
        for caller in (globex, checker):
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await caller.SetBrandPolicy(brand_policy("acme"))
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED

        for request, field in (
            (brand_policy("acme", revoke_all=False), "revoke_all"),
            (brand_policy("acme", request_id="bad id\n"), "request_id"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await acme.SetBrandPolicy(request)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert field in [f for f, _ in status_details(refused.value)]

        # Nothing was written: a STOP to acme's promo still leaves alerts allowed.
        async with client(runtime.address) as admin:
            with pytest.raises(grpc.aio.AioRpcError) as bad_brand:
                await admin.SetBrandPolicy(brand_policy("no such brand!"))
            assert bad_brand.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "brand" in [f for f, _ in status_details(bad_brand.value)]
            stop = await acme.HandleInboundMessage(inbound(PHONE, ACME_NUMBER, "STOP", clock.now))
            r = await acme.CanSend(
                api.CanSendRequest(
                    phone=PHONE,
                    brand="acme",
                    campaign="alerts",
                    at_least_as_fresh=stop.consistency_token,
                )
            )
            assert r.reason == api.REASON_CONSENT_ACTIVE


async def test_a_start_after_a_stop_under_revoke_all_resumes_its_campaign_alone(service):
    """Under the brand's revoke-all, a STOP to promo stops alerts too; a START to
    promo's number then allowed alerts again, where after a STOPALL it never does."""
    runtime, clock = service
    async with client(runtime.address, "acme-app") as acme:
        await acme.SetBrandPolicy(brand_policy("acme"))
        clock.now += timedelta(minutes=1)
        stop = await acme.HandleInboundMessage(inbound(PHONE, ACME_NUMBER, "STOP", clock.now))
        clock.now += timedelta(minutes=10)
        start = await acme.HandleInboundMessage(inbound(PHONE, ACME_NUMBER, "START", clock.now))
        assert start.campaign == "promo"

        async def check(campaign: str) -> api.CanSendResponse:
            return await acme.CanSend(
                api.CanSendRequest(
                    phone=PHONE,
                    brand="acme",
                    campaign=campaign,
                    at_least_as_fresh=start.consistency_token,
                )
            )

        assert (await check("promo")).allowed
        alerts = await check("alerts")
        assert not alerts.allowed and alerts.reason == api.REASON_REVOKED_BRAND_WIDE
        assert list(alerts.evidence_event_ids) == [stop.event_ids[1]]


async def test_the_proof_packet_names_every_campaign_a_stop_revoked(service):
    """Under the revoke-all rule a STOP to promo revoked alerts too (CanSend denied
    it), but the proof packet's opt-out named promo alone, and alerts' packet left
    the STOP out: an auditor could not see what it revoked."""
    runtime, clock = service
    async with client(runtime.address, "acme-app") as acme:
        stop = await acme.HandleInboundMessage(inbound(PHONE, ACME_NUMBER, "STOP", clock.now))
        clock.now += timedelta(minutes=1)
        written = await acme.SetBrandPolicy(brand_policy("acme"))
        for campaign in ("", "alerts"):
            request = api.GetProofPacketRequest(
                phone=PHONE, brand="acme", at_least_as_fresh=written.consistency_token
            )
            if campaign:
                request.campaign = campaign
            packet = json_format.MessageToDict((await acme.GetProofPacket(request)).packet)
            [opt_out] = packet["opt_outs"]
            assert opt_out["event"]["event_id"] == stop.event_ids[1], (campaign, opt_out)
            assert opt_out["scope"].startswith("promo, and under the revoke-all rule"), opt_out
            assert "in force for: alerts" in opt_out["scope"], opt_out
