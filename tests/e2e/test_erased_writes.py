"""Single writes dated at or before an erasure, through the API, on real Kafka and on
the embedded default. After RequestErasure, an opt-in, an opt-out, a reconfirmation,
a location or a text under a new request id, dated no later than the erasure, stored
the name, the email and the words erased all over again, readable in ListEvents and
the proof packet (a STOP's in its hold for review too). Each is now refused as an
imported record is (FAILED_PRECONDITION, ``occurred_at``, naming the erasure's time),
nothing of it written and no opt-out held; a retry of a write recorded before the
erasure is answered as recorded; writes dated after it are written, and a fresh
opt-in allows again."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb

from ledger.retention import add_years
from tests.e2e.harness import (
    client,
    held_info,
    inbound,
    opt_in,
    opt_out,
    opted_in,
    precondition_violations,
    ts,
)
from tests.e2e.test_erased_import import shown

pytestmark = pytest.mark.asyncio(loop_scope="session")

SENDER = "+12125550194"
UNOWNED = "+12125550195"
PHONE = "+14155553571"  # as test_erased_import's ``shown`` reads
NAME, EMAIL = "Ada Lovelace", "ada@example.com"
STOP, DETAIL, PLACE = "STOP texting Ada please", "YES from Ada's phone", "Ada moved to Austin"
PERSONAL = (NAME, EMAIL, STOP, DETAIL, PLACE)


def rid() -> str:
    return uuid.uuid4().hex


def named(at: datetime, request_id: str | None = None) -> api.RecordOptInRequest:
    grant = opt_in(PHONE, "acme", "promo", at, request_id=request_id)
    grant.proof.name, grant.proof.email = NAME, EMAIL
    return grant


def personal_writes(c: Any, app: Any) -> dict[str, Callable[[datetime], Awaitable[Any]]]:
    """Each write that carries PHONE's personal data towards acme, at a time given."""
    acme = dict(phone=PHONE, brand="acme")
    return {
        "an opt-in": lambda t: c.RecordOptIn(named(t)),
        "an opt-out": lambda t: c.RecordOptOut(
            opt_out(PHONE, "acme", "promo", t, channel=lpb.REVOCATION_CHANNEL_KEYWORD, text=STOP)
        ),
        "an opt-out of an unknown campaign": lambda t: c.RecordOptOut(
            opt_out(PHONE, "acme", "gone", t, channel=lpb.REVOCATION_CHANNEL_KEYWORD, text=STOP)
        ),
        "a reconfirmation": lambda t: c.RecordReconfirmation(
            api.RecordReconfirmationRequest(
                request_id=rid(),
                **acme,
                campaign="promo",
                channel=lpb.REVOCATION_CHANNEL_KEYWORD,
                occurred_at=ts(t),
                detail=DETAIL,
            )
        ),
        "a location": lambda t: c.RecordSubscriberLocation(
            api.RecordSubscriberLocationRequest(
                request_id=rid(), **acme, region="tx", occurred_at=ts(t), detail=PLACE
            )
        ),
        "a STOP": lambda t: c.HandleInboundMessage(inbound(PHONE, SENDER, STOP, t)),
        "a text": lambda t: c.HandleInboundMessage(inbound(PHONE, SENDER, f"hi, {NAME}", t)),
        "a STOP to a number no campaign sends from": lambda t: app.HandleInboundMessage(
            inbound(PHONE, UNOWNED, STOP, t)
        ),
    }


@pytest.mark.parametrize("on_kafka", [True, False], ids=["kafka", "embedded"])
async def test_a_write_dated_no_later_than_an_erasure_is_refused_and_stores_nothing(
    tmp_path, postgres_dsn, kafka_bootstrap, on_kafka
):
    bootstrap = kafka_bootstrap if on_kafka else None
    async with (
        opted_in(
            tmp_path, postgres_dsn, bootstrap, name="erased-writes", phone=PHONE, sender=SENDER
        ) as (runtime, c, clock),
        client(runtime.address, "acme-app") as app,
    ):
        before = clock.now - timedelta(minutes=20)
        first = named(before, request_id=rid())
        recorded = await c.RecordOptIn(first)

        clock.now = add_years(clock.now, 6)
        erasure = await c.RequestErasure(
            api.RequestErasureRequest(request_id=rid(), phone=PHONE, brand="acme")
        )
        erased_at = clock.now
        count, text = await shown(c, erasure.consistency_token)
        assert not any(said in text for said in PERSONAL), text
        reason = (
            f"the personal data of this number for 'acme' was erased at "
            f"{erased_at.isoformat()}, and this record is dated no later: what was erased "
            "is not recorded again; a consent given since needs a time after it"
        )

        # At once, on the instance that erased: no wait for the view.
        for name, write in personal_writes(c, app).items():
            for t in (before, erased_at):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await write(t)
                err = refused.value
                assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, (name, err)
                assert precondition_violations(err) == [("occurred_at", reason)], name
                assert held_info(err) is None, name

        # A retry of the opt-in recorded before the erasure is answered as recorded.
        again = await c.RecordOptIn(first)
        assert list(again.event_ids) == list(recorded.event_ids)

        token = again.consistency_token
        after, text = await shown(c, token)
        assert after == count
        assert not any(said in text for said in PERSONAL), text
        pending = await c.ListRevocationCandidates(
            api.ListRevocationCandidatesRequest(brand="acme", at_least_as_fresh=token)
        )
        assert list(pending.candidates) == [], pending

        # Dated after the erasure, each is written as before (the fresh opt-in last;
        # the STOPs, held for review for their words, would deny it).
        for name, write in personal_writes(c, app).items():
            if name in ("an opt-in", "an opt-out of an unknown campaign") or "STOP" in name:
                continue
            clock.now += timedelta(minutes=1)
            token = (await write(clock.now)).consistency_token
        later, _ = await shown(c, token)
        assert later > after

        clock.now += timedelta(minutes=1)
        fresh = await c.RecordOptIn(named(clock.now))
        count, text = await shown(c, fresh.consistency_token)
        assert NAME in text
        allowed = await c.CanSend(
            api.CanSendRequest(
                phone=PHONE,
                brand="acme",
                campaign="promo",
                at_least_as_fresh=fresh.consistency_token,
            )
        )
        assert (allowed.allowed, allowed.reason) == (True, api.REASON_CONSENT_ACTIVE), allowed
