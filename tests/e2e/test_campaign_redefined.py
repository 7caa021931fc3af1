"""A campaign whose rules change after a person consented, through the gRPC API: the
rules a send is judged by are those the ledger's latest word put in force, never
an older version that outlasts it, and a consent given to what the campaign sent
then does not carry over to another kind of content. On the embedded default's
ledger, and one case of each on Kafka's."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb

from ledger.ports import Stream
from services.bootstrap import Runtime
from tests.e2e.harness import (
    Clock,
    client,
    define,
    inbound,
    opt_in,
    precondition_violations,
    ts,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

INFO = lpb.CAMPAIGN_PURPOSE_INFORMATIONAL
PROMO = lpb.CAMPAIGN_PURPOSE_PROMOTIONAL


def change(name: str, at: datetime, **policy) -> api.ChangeCampaignPolicyRequest:
    return api.ChangeCampaignPolicyRequest(
        request_id=uuid.uuid4().hex,
        brand="acme",
        campaign=name,
        policy=lpb.CampaignPolicy(**policy),
        occurred_at=ts(at),
    )


def asked(phone: str, name: str, fresh: str, at: datetime | None = None) -> api.CanSendRequest:
    request = api.CanSendRequest(phone=phone, brand="acme", campaign=name, at_least_as_fresh=fresh)
    if at is not None:
        request.at.CopyFrom(ts(at))
    return request


CAMPAIGNS = ("ahead", "back", "gambling", "replies")


@pytest.fixture(scope="module", params=["embedded", "kafka"])
async def service(request, module_serve) -> tuple[Runtime, Clock]:
    clock = Clock()
    start = clock.now - timedelta(days=2)
    # Informational: no quiet hours; the clock stands at noon in Los Angeles anyway.
    runtime = await module_serve(
        on_kafka=request.param == "kafka",
        name="redefined",
        clock=clock,
        campaigns=[define("acme", name, start, purpose=INFO) for name in CAMPAIGNS],
    )
    return runtime, clock


async def test_a_change_stamped_ahead_does_not_outlast_one_recorded_after_it(service):
    """An admin whose clock runs four minutes ahead lifts the age gate; another puts it
    back a moment later. The gate recorded last must hold, then and four minutes on;
    the change stamped ahead took force when it was recorded, not at its stamp, so it
    does not come back into force over the one recorded after it."""
    runtime, clock = service
    phone = "+14155550921"
    async with client(runtime.address) as admin:
        await admin.ChangeCampaignPolicy(change("ahead", clock.now, purpose=INFO, age_gated=True))
        w = await admin.RecordOptIn(opt_in(phone, "acme", "ahead", clock.now - timedelta(hours=3)))
        gated = await admin.CanSend(asked(phone, "ahead", w.consistency_token))
        assert gated.reason == api.REASON_AGE_VERIFICATION_REQUIRED, gated
        await admin.ChangeCampaignPolicy(
            change("ahead", clock.now + timedelta(minutes=4), purpose=INFO)
        )
        w = await admin.ChangeCampaignPolicy(
            change("ahead", clock.now, purpose=INFO, age_gated=True)
        )
        for later in (timedelta(0), timedelta(minutes=10)):
            answer = await admin.CanSend(
                asked(phone, "ahead", w.consistency_token, clock.now + later)
            )
            assert answer.reason == api.REASON_AGE_VERIFICATION_REQUIRED, (later, answer)


async def test_a_change_dated_before_the_rules_in_force_is_refused(service):
    """The campaign was made informational an hour ago; a change dated two hours back
    making it promotional would be in force only until the hour-old one, so now an
    informational consent would still be allowed while the ledger's latest word says
    promotional. It is refused, naming the rules it would not outlast, and nothing is
    written; dated at or after them it takes force."""
    runtime, clock = service
    phone = "+14155550922"
    async with client(runtime.address) as admin:
        w = await admin.RecordOptIn(
            opt_in(
                phone, "acme", "back", clock.now - timedelta(hours=5),
                tier=lpb.CONSENT_TIER_INFORMATIONAL,
            )
        )  # fmt: skip
        hour_ago = clock.now - timedelta(hours=1)
        await admin.ChangeCampaignPolicy(change("back", hour_ago, purpose=INFO))
        before = await runtime.ledger.end_offsets(Stream.CAMPAIGNS)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await admin.ChangeCampaignPolicy(
                change("back", clock.now - timedelta(hours=2), purpose=PROMO)
            )
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value
        [(subject, description)] = precondition_violations(err.value)
        assert subject == "occurred_at", (subject, description)
        assert hour_ago.isoformat()[:19] in description, description
        assert await runtime.ledger.end_offsets(Stream.CAMPAIGNS) == before
        w = await admin.ChangeCampaignPolicy(change("back", hour_ago, purpose=PROMO))
        answer = await admin.CanSend(asked(phone, "back", w.consistency_token))
        assert answer.reason == api.REASON_CONSENT_TIER_INSUFFICIENT, answer


async def test_a_consent_does_not_carry_over_to_another_kind_of_content(service):
    """The person, verified 21 or older, agreed to the campaign's general messages;
    the campaign then became a gambling one. What they agreed to is not what it now
    sends (the provider's policy: consent is to messages of the type sent, for that
    use only), so every reading of a send now denies it until a new opt-in, while a
    send before the change is judged by the rules then, and allowed."""
    runtime, clock = service
    phone = "+14155550923"
    async with client(runtime.address) as admin:
        await admin.RecordAgeVerification(
            api.RecordAgeVerificationRequest(
                request_id=uuid.uuid4().hex, phone=phone, brand="acme", method="id_scan",
                occurred_at=ts(clock.now - timedelta(hours=4)), verified_21_plus=True,
            )
        )  # fmt: skip
        w = await admin.RecordOptIn(
            opt_in(phone, "acme", "gambling", clock.now - timedelta(hours=3))
        )
        assert (await admin.CanSend(asked(phone, "gambling", w.consistency_token))).allowed
        changed_at = clock.now - timedelta(hours=1)
        w = await admin.ChangeCampaignPolicy(
            change(
                "gambling", changed_at, purpose=INFO,
                content_category=lpb.CAMPAIGN_CATEGORY_GAMBLING,
            )
        )  # fmt: skip
        fresh = w.consistency_token
        single = await admin.CanSend(asked(phone, "gambling", fresh))
        (batch,) = (
            await admin.CanSendBatch(
                api.CanSendBatchRequest(
                    brand="acme", campaign="gambling", phones=[phone], at_least_as_fresh=fresh
                )
            )
        ).decisions
        for answer in (single, batch):
            assert not answer.allowed and answer.reason == api.REASON_NO_CONSENT, answer
            assert "gambling" in answer.detail, answer.detail
        # GetConsent shows no consent to what the campaign sends now, the grant still
        # shown: it said ACTIVE while every check denied.
        consent = await admin.GetConsent(
            api.GetConsentRequest(
                phone=phone, brand="acme", campaign="gambling", at_least_as_fresh=fresh
            )
        )
        assert consent.state == api.CONSENT_STATE_NEVER_GRANTED, consent
        assert consent.grant.event.event_id, consent
        then = await admin.CanSendAsOf(
            api.CanSendAsOfRequest(
                phone=phone, brand="acme", campaign="gambling",
                at=ts(changed_at - timedelta(minutes=10)), at_least_as_fresh=fresh,
            )
        )  # fmt: skip
        assert then.allowed and then.policy_version < single.policy_version, then
        w = await admin.RecordOptIn(
            opt_in(phone, "acme", "gambling", clock.now - timedelta(minutes=30))
        )
        assert (await admin.CanSend(asked(phone, "gambling", w.consistency_token))).allowed
        consent = await admin.GetConsent(
            api.GetConsentRequest(
                phone=phone, brand="acme", campaign="gambling",
                at_least_as_fresh=w.consistency_token,
            )
        )  # fmt: skip
        assert consent.state == api.CONSENT_STATE_ACTIVE, consent


async def test_a_reply_names_the_rules_it_was_allowed_by(service):
    """A reply to the person's HELP is allowed by the campaign's rules (the number
    texted is theirs, the reply window is theirs): the allow names those rules, as a
    consent's does, and their version."""
    runtime, clock = service
    phone, number = "+14155550925", "+12125550142"
    async with client(runtime.address) as admin:
        w = await admin.ChangeCampaignPolicy(
            change("replies", clock.now - timedelta(minutes=1), purpose=INFO,
                   sender_numbers=[number])
        )  # fmt: skip
        (rules,) = w.event_ids
        w = await admin.HandleInboundMessage(inbound(phone, number, "HELP", clock.now))
        answer = await admin.CanSend(
            api.CanSendRequest(
                phone=phone, brand="acme", campaign="replies",
                message_kind=lpb.MESSAGE_KIND_HELP_REPLY, at_least_as_fresh=w.consistency_token,
            )
        )  # fmt: skip
        assert answer.allowed and answer.reason == api.REASON_HELP_REPLY_ALLOWED, answer
        assert rules in answer.evidence_event_ids and answer.policy_version == 2, answer
