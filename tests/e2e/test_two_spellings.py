"""An Argentine mobile written with and without its 9 is one person, through the real
gRPC server on the real Kafka and PostgreSQL. +54 11 1234 5678 and +54 9 11 1234 5678
are one line (the 9 is dialled from abroad to reach a mobile), and ``phonenumbers``
takes both for valid numbers: kept as two, an opt-out under one left the other allowed.
Facts a version before this one stored under the form without the 9 count too."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from consent.v1 import consent_service_pb2 as api

import ledger.phone
from ledger.ports import ConsistencyToken
from services.bootstrap import Runtime
from tests.e2e.harness import Clock, client, define, inbound, opt_in, opt_out, ts
from tests.e2e.test_lifecycle import ACME_NUMBER

pytestmark = pytest.mark.asyncio(loop_scope="session")

WITH_9 = "+5491112344101"
WITHOUT_9 = "+541112344101"


@pytest.fixture
async def service(serve):
    clock = Clock()
    campaign = define("acme", "promo", clock.now - timedelta(days=60), [ACME_NUMBER])
    return await serve(name="spellings", clock=clock, campaigns=[campaign]), clock


@pytest.fixture
def before_one_form(monkeypatch) -> Iterator[None]:
    """The service as a version before this one: each spelling kept as written."""
    ledger.phone._e164.cache_clear()
    monkeypatch.setattr(ledger.phone, "_with_mobile_token", lambda parsed: None)
    yield
    monkeypatch.undo()
    ledger.phone._e164.cache_clear()


async def applied(runtime: Runtime, token: str) -> str:
    assert await runtime.guard.wait_for_token(ConsistencyToken.decode(token))
    return token


async def answers(runtime: Runtime, clock: Clock, token: str) -> dict[str, object]:
    """What every check says of each spelling: CanSend, CanSendAsOf, CanSendBatch."""
    async with client(runtime.address) as admin:
        out: dict[str, object] = {}
        for number in (WITH_9, WITHOUT_9):
            one = await admin.CanSend(
                api.CanSendRequest(
                    phone=number, brand="acme", campaign="promo", at_least_as_fresh=token
                )
            )
            out[f"CanSend {number}"] = (one.allowed, one.reason)
            past = await admin.CanSendAsOf(
                api.CanSendAsOfRequest(
                    phone=number,
                    brand="acme",
                    campaign="promo",
                    at=ts(clock.now),
                    at_least_as_fresh=token,
                )
            )
            out[f"CanSendAsOf {number}"] = past.allowed
        batch = await admin.CanSendBatch(
            api.CanSendBatchRequest(
                brand="acme", campaign="promo", phones=[WITH_9, WITHOUT_9], at_least_as_fresh=token
            )
        )
        out["CanSendBatch"] = [d.allowed for d in batch.decisions]
    return out


async def test_a_stop_from_the_form_without_the_9_stops_the_form_with_it(service):
    runtime, clock = service
    async with client(runtime.address) as admin:
        await admin.RecordOptIn(opt_in(WITH_9, "acme", "promo", clock.now - timedelta(days=1)))
        w = await admin.HandleInboundMessage(
            inbound(WITHOUT_9, ACME_NUMBER, "STOP", clock.now - timedelta(minutes=1))
        )
    token = await applied(runtime, w.consistency_token)
    found = await answers(runtime, clock, token)
    assert found == {
        f"CanSend {WITH_9}": (False, api.REASON_REVOKED),
        f"CanSendAsOf {WITH_9}": False,
        f"CanSend {WITHOUT_9}": (False, api.REASON_REVOKED),
        f"CanSendAsOf {WITHOUT_9}": False,
        "CanSendBatch": [False, False],
    }, found


async def test_an_opt_out_of_the_form_with_the_9_stops_the_form_without_it(service):
    runtime, clock = service
    async with client(runtime.address) as admin:
        await admin.RecordOptIn(opt_in(WITHOUT_9, "acme", "promo", clock.now - timedelta(days=1)))
        w = await admin.RecordOptOut(
            opt_out(WITH_9, "acme", None, clock.now - timedelta(minutes=1))
        )
        got = await admin.GetConsent(
            api.GetConsentRequest(
                phone=WITHOUT_9,
                brand="acme",
                campaign="promo",
                at_least_as_fresh=w.consistency_token,
            )
        )
    token = await applied(runtime, w.consistency_token)
    found = await answers(runtime, clock, token)
    assert found[f"CanSend {WITHOUT_9}"] == (False, api.REASON_REVOKED_BRAND_WIDE), found
    assert found[f"CanSendAsOf {WITHOUT_9}"] is False, found
    assert found["CanSendBatch"] == [False, False], found
    assert got.HasField("grant") and got.HasField("revocation"), got


async def test_an_opt_out_stored_under_the_old_spelling_still_stops_the_number(
    service, before_one_form, monkeypatch
):
    """An opt-in written with the 9 and a STOP a gateway handed on without it, both
    recorded by a version that kept them apart: after the upgrade the number is
    still stopped, under either spelling, in every check."""
    runtime, clock = service
    async with client(runtime.address) as admin:
        await admin.RecordOptIn(opt_in(WITH_9, "acme", "promo", clock.now - timedelta(days=1)))
        w = await admin.HandleInboundMessage(
            inbound(WITHOUT_9, ACME_NUMBER, "STOP", clock.now - timedelta(minutes=2))
        )
    token = await applied(runtime, w.consistency_token)
    monkeypatch.undo()  # the upgrade
    ledger.phone._e164.cache_clear()
    found = await answers(runtime, clock, token)
    assert found[f"CanSend {WITH_9}"] == (False, api.REASON_REVOKED), found
    assert found[f"CanSend {WITHOUT_9}"] == (False, api.REASON_REVOKED), found
    assert found["CanSendBatch"] == [False, False], found
    assert found[f"CanSendAsOf {WITH_9}"] is False, found


async def test_an_opt_in_stored_under_the_old_spelling_stands_until_a_stop(
    service, before_one_form, monkeypatch
):
    """Kept apart before, an opt-in written without the 9 is still the person's
    consent after the upgrade (under either spelling), and a STOP now ends it."""
    runtime, clock = service
    async with client(runtime.address) as admin:
        w = await admin.RecordOptIn(
            opt_in(WITHOUT_9, "acme", "promo", clock.now - timedelta(days=1))
        )
        await applied(runtime, w.consistency_token)
        monkeypatch.undo()  # the upgrade
        ledger.phone._e164.cache_clear()
        before = await answers(runtime, clock, w.consistency_token)
        w = await admin.HandleInboundMessage(
            inbound(WITH_9, ACME_NUMBER, "STOP", clock.now - timedelta(minutes=1))
        )
    token = await applied(runtime, w.consistency_token)
    after = await answers(runtime, clock, token)
    assert before["CanSendBatch"] == [True, True], before
    assert after["CanSendBatch"] == [False, False], after
    assert after[f"CanSend {WITHOUT_9}"] == (False, api.REASON_REVOKED), after
