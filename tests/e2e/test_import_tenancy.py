"""Who may import what, through the real gRPC server, on the real Kafka ledger and
PostgreSQL and on the embedded default's ledger (PostgreSQL): a record of a brand
the token may not write for is refused PERMISSION_DENIED, as its single write is,
whatever else is wrong with it, and nothing of it is written."""

from __future__ import annotations

from datetime import timedelta

import pytest
from consent.v1 import consent_service_pb2 as api

from ledger.ports import Stream
from tests.e2e.harness import Clock, client, define, imported, opt_in, opt_out, serving

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(params=["kafka", "embedded"])
async def service(request, tmp_path, postgres_dsn, kafka_bootstrap):
    """A service with acme's campaign "promo" and globex's "deals" defined."""
    clock = Clock()
    campaigns = [
        define("acme", "promo", clock.now - timedelta(days=1)),
        define("globex", "deals", clock.now - timedelta(days=1)),
    ]
    bootstrap = kafka_bootstrap if request.param == "kafka" else None
    async with serving(
        tmp_path, postgres_dsn, bootstrap, name="tenancy", clock=clock, campaigns=campaigns
    ) as runtime:
        yield runtime, clock


async def test_another_brand_s_bad_records_are_refused_for_the_brand_first(service):
    """The import checked a record's fields before its brand: acme's token was told
    what to mend in globex's records (INVALID_ARGUMENT), where the single write, and
    the import's own contract, refuse them PERMISSION_DENIED."""
    runtime, clock = service
    phone = "+14155550340"
    no_channel = opt_out(phone, "globex", "deals", clock.now, channel=0)
    bad_phone = opt_in("not a number", "globex", "deals", clock.now)
    ahead = opt_in(phone, "globex", "deals", clock.now + timedelta(days=3))
    ends = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)
    async with client(runtime.address, "acme-app") as app, client(runtime.address) as admin:
        answer = await imported(
            app,
            api.ImportRecord(opt_out=no_channel),
            api.ImportRecord(opt_in=bad_phone),
            api.ImportRecord(opt_in=ahead),
        )
        listed = await admin.ListEvents(api.ListEventsRequest(phone=phone))

    refused = [(r.code, [v.field for v in r.violations]) for r in answer.refusals]
    assert refused == [("PERMISSION_DENIED", ["brand"])] * 3
    assert (answer.imported, answer.held_for_review) == (0, 0)
    assert list(listed.events) == []
    assert await runtime.ledger.end_offsets(Stream.SUBSCRIBERS) == ends


async def test_an_opt_out_under_a_spelling_of_the_caller_s_brand_is_still_held(service):
    """Refused for the brand first, an opt-out under "acme_" (which no campaign was
    defined for, and which reads as acme) is still refused on its brand and held
    under acme for a token of acme alone, not refused PERMISSION_DENIED."""
    runtime, clock = service
    phone = "+14155550341"
    async with client(runtime.address, "acme-app") as app:
        answer = await imported(
            app, api.ImportRecord(opt_out=opt_out(phone, "acme_", None, clock.now, channel=0))
        )
    (refusal,) = answer.refusals
    assert refusal.code == "INVALID_ARGUMENT" and refusal.held_for_review
    assert answer.held_for_review == 1
