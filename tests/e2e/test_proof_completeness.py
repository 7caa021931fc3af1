"""Proof completeness, through the real gRPC server on the real Kafka ledger and
PostgreSQL: every answer about a grant says what its proof lacks of the provider's
template, and a campaign may require fields of it."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb

from tests.e2e.harness import (
    Clock,
    client,
    define,
    opt_in,
    proof,
    status_details,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

PHONE = "+14155552781"


@pytest.fixture
async def service(serve):
    clock = Clock()
    required = ["email", "postal_address", "screenshot_ref"]
    campaigns = [
        define("acme", "promo", clock.now - timedelta(days=1)),
        define("acme", "strict", clock.now - timedelta(days=1), required_proof_fields=required),
    ]
    return await serve(name="proof", clock=clock, campaigns=campaigns), clock.now


def thin_proof(when: datetime) -> lpb.ConsentProof:
    """A web form's proof with what the method needs, but no email or address."""
    return proof(when, email="", postal_address="")


async def test_every_answer_about_a_grant_names_what_its_proof_lacks(service):
    runtime, when = service
    async with client(runtime.address, "acme-app") as c:
        w = await c.RecordOptIn(opt_in(PHONE, "acme", "promo", when, proof=thin_proof(when)))
        consent = await c.GetConsent(
            api.GetConsentRequest(
                phone=PHONE, brand="acme", campaign="promo", at_least_as_fresh=w.consistency_token
            )
        )
        assert consent.state == api.CONSENT_STATE_ACTIVE
        assert list(consent.proof_missing_fields) == ["proof.email", "proof.postal_address"]
        answer = await c.CanSend(
            api.CanSendRequest(
                phone=PHONE, brand="acme", campaign="promo", at_least_as_fresh=w.consistency_token
            )
        )
        assert answer.allowed
        assert list(answer.proof_missing_fields) == ["proof.email", "proof.postal_address"]
        # A complete proof lacks nothing.
        other = "+14155552782"
        w = await c.RecordOptIn(opt_in(other, "acme", "promo", when))
        answer = await c.CanSend(
            api.CanSendRequest(
                phone=other, brand="acme", campaign="promo", at_least_as_fresh=w.consistency_token
            )
        )
        assert answer.allowed and not answer.proof_missing_fields


async def test_a_campaign_s_required_proof_fields_refuse_an_opt_in_without_them(service):
    runtime, when = service
    async with client(runtime.address, "acme-app") as c:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await c.RecordOptIn(opt_in(PHONE, "acme", "strict", when, proof=thin_proof(when)))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in status_details(refused.value)] == ["proof.email"]
        no_screenshot = proof(when)
        no_screenshot.ClearField("screenshot_ref")
        with pytest.raises(grpc.aio.AioRpcError) as refused:  # the method needs it too
            await c.RecordOptIn(opt_in(PHONE, "acme", "strict", when, proof=no_screenshot))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        w = await c.RecordOptIn(opt_in(PHONE, "acme", "strict", when))
        events = await c.ListEvents(
            api.ListEventsRequest(phone=PHONE, brand="acme", at_least_as_fresh=w.consistency_token)
        )
        assert [e.event.event_type for e in events.events] == ["ConsentGranted"]


async def test_an_unknown_required_proof_field_is_refused_at_definition(service):
    runtime, when = service
    async with client(runtime.address) as admin:
        for call, request in (
            (admin.DefineCampaign, define("acme", "fax", when, required_proof_fields=["fax"])),
            (
                admin.ChangeCampaignPolicy,
                api.ChangeCampaignPolicyRequest(
                    request_id=uuid.uuid4().hex, brand="acme", campaign="promo",
                    policy=lpb.CampaignPolicy(required_proof_fields=["email", "Email"]),
                    occurred_at=define("acme", "promo", when).occurred_at,
                ),
            ),
        ):  # fmt: skip
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(request)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            fields = [f for f, _ in status_details(refused.value)]
            assert fields[0].startswith("policy.required_proof_fields[")


@pytest.mark.parametrize("blank", ["   ", "\u200b", "\u3000", " \u2060\t", "N/A", "-"])
async def test_proof_fields_of_only_blanks_are_proof_left_out(service, blank):
    """A web-form opt-in whose name, IP address, URL, wording and screenshot are only
    spaces or invisible characters, or a placeholder, proves nothing: refused like one
    that leaves them empty, each field named, nothing written; and a strict
    campaign's required fields are not met by blanks either."""
    runtime, when = service
    empty = lpb.ConsentProof(
        registered_at=proof(when).registered_at,
        **dict.fromkeys(
            ["name", "ip_address", "form_url", "consent_text", "screenshot_ref"], blank
        ),
        screenshot_sha256=blank,
    )
    async with client(runtime.address) as c:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.RecordOptIn(opt_in(PHONE, "acme", "promo", when, proof=empty))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        named = {f for f, _ in status_details(err.value)}
        assert {"proof.name", "proof.ip_address", "proof.form_url"} <= named, named
        assert {"proof.consent_text", "proof.screenshot_ref", "proof.screenshot_sha256"} <= named
        strict = proof(when)
        strict.email, strict.postal_address = blank, blank
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.RecordOptIn(opt_in(PHONE, "acme", "strict", when, proof=strict))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "proof.email" in [f for f, _ in status_details(err.value)]
        state = await c.GetConsent(
            api.GetConsentRequest(phone=PHONE, brand="acme", campaign="promo")
        )
        assert not state.HasField("grant"), "a refused opt-in was written"


async def test_typed_proof_fields_that_do_not_parse_are_refused_with_the_reason(service):
    runtime, when = service
    bad = proof(when, ip_address="banana", form_url="acme.example/join")
    bad.screenshot_sha256 = "9f86d0..."
    async with client(runtime.address) as c:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.RecordOptIn(opt_in(PHONE, "acme", "promo", when, proof=bad))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        named = dict(status_details(err.value))
        assert "is not an IP address" in named["proof.ip_address"]
        assert "is not an absolute http(s) URL" in named["proof.form_url"]
        assert "is not a SHA-256" in named["proof.screenshot_sha256"]
        state = await c.GetConsent(
            api.GetConsentRequest(phone=PHONE, brand="acme", campaign="promo")
        )
        assert not state.HasField("grant"), "a refused opt-in was written"
