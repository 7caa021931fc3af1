"""What an auditor sees of a past moment: ``CanSendAsOf`` with ``known_at`` answers
from the facts the ledger had recorded by then, so an opt-out dated before that
moment but recorded after it (imported today, held for review, reported late)
leaves that answer as it was, while the answer as known now (no ``known_at``)
counts it. On the real Kafka ledger and on the embedded default's."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta

import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb

from ledger.ports import ConsistencyToken
from tests.e2e.harness import client, define, imported, opt_in, opt_out, serving, ts

pytestmark = pytest.mark.asyncio(loop_scope="session")

NUMBERS = ("+14155550191", "+14155550192", "+14155550193")


@pytest.fixture(params=["kafka", "embedded"])
async def service(request, tmp_path, postgres_dsn, kafka_bootstrap):
    # Informational: quiet hours do not apply, so the moment of day the test runs at
    # (the real clock's, which the ledger's recorded times follow) does not matter.
    campaigns = [
        define(
            "acme",
            "notices",
            datetime.now(UTC) - timedelta(days=1),
            purpose=lpb.CAMPAIGN_PURPOSE_INFORMATIONAL,
        )
    ]
    bootstrap = kafka_bootstrap if request.param == "kafka" else None
    async with AsyncExitStack() as stack:
        yield await stack.enter_async_context(
            serving(tmp_path, postgres_dsn, bootstrap, name="then", campaigns=campaigns)
        )


async def test_an_opt_out_recorded_later_leaves_what_was_known_then_unchanged(service):
    now = datetime.now(UTC)
    async with client(service.address, "acme-app") as c:
        token = None
        for number in NUMBERS:
            w = await c.RecordOptIn(opt_in(number, "acme", "notices", now - timedelta(hours=1)))
            after = ConsistencyToken.decode(w.consistency_token)
            token = after if token is None else token.merge(after)
        assert token is not None
        listed = await c.ListEvents(
            api.ListEventsRequest(phone=NUMBERS[-1], brand="acme", at_least_as_fresh=token.encode())
        )
        # The moment the auditor asks about: when the last opt-in was recorded.
        then = max(e.recorded_at.ToDatetime(UTC) for e in listed.events)
        await asyncio.sleep(0.05)  # what follows is recorded after that moment

        dated = now - timedelta(minutes=30)  # each opt-out says it came before then
        done = await imported(
            c,
            api.ImportRecord(opt_out=opt_out(NUMBERS[0], "acme", "notices", dated)),
            # Refused (no channel) and held for review from its own time.
            api.ImportRecord(opt_out=opt_out(NUMBERS[1], "acme", "notices", dated, channel=0)),
        )
        assert (done.imported, done.held_for_review) == (1, 1)
        late = await c.RecordOptOut(opt_out(NUMBERS[2], "acme", "notices", dated))
        token = token.merge(ConsistencyToken.decode(done.consistency_token))
        fresh = token.merge(ConsistencyToken.decode(late.consistency_token)).encode()

        for number, reason in zip(
            NUMBERS,
            (api.REASON_REVOKED, api.REASON_REVOCATION_PENDING_REVIEW, api.REASON_REVOKED),
            strict=True,
        ):
            asked = dict(phone=number, brand="acme", campaign="notices", at=ts(then))
            known_then = await c.CanSendAsOf(
                api.CanSendAsOfRequest(**asked, known_at=ts(then), at_least_as_fresh=fresh)
            )
            assert known_then.allowed, (number, known_then.detail)
            assert known_then.reason == api.REASON_CONSENT_ACTIVE
            known_now = await c.CanSendAsOf(
                api.CanSendAsOfRequest(**asked, at_least_as_fresh=fresh)
            )
            assert (known_now.allowed, known_now.reason) == (False, reason), number
