"""What may be sent at all, through a real gRPC client against the real Kafka broker
and the real PostgreSQL: CanSend for a moment other than now, content categories,
the replies the service says are owed, and the kinds of message that escape a rule."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api

from ledger.ports import ConsistencyToken
from services.bootstrap import Runtime
from tests.e2e.harness import (
    client,
    define,
    kafka_settings,
    opt_in,
    service_settings,
    status_details,
    ts,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

PHONE = "+14155552671"  # Los Angeles
OTHER = "+14155550199"
PROMO_NUMBER = "+12125550140"


class Clock:
    """The service's clock, at the next 12:00 in Los Angeles (ahead of the real clock,
    so the broker's ``recorded_at`` stamps are always known by the service's now)."""

    def __init__(self) -> None:
        real = datetime.now(UTC)
        noon = real.replace(hour=20, minute=0, second=0, microsecond=0)
        self.now = noon if noon > real else noon + timedelta(days=1)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def service(tmp_path, postgres_dsn, kafka_bootstrap):
    clock = Clock()
    prefix = f"e2e-{uuid.uuid4().hex[:8]}."
    runtime = Runtime(
        service_settings(tmp_path, postgres_dsn, kafka=kafka_settings(kafka_bootstrap, prefix)),
        clock=clock,
    )
    await runtime.start()
    async with client(runtime.address) as admin:
        w = await admin.DefineCampaign(
            define("acme", "promo", clock.now - timedelta(days=60), [PROMO_NUMBER])
        )
        assert await runtime.guard.wait_for_token(ConsistencyToken.decode(w.consistency_token))
    try:
        yield runtime, clock
    finally:
        await runtime.stop()


def can_send(phone: str = PHONE, **fields) -> api.CanSendRequest:
    return api.CanSendRequest(phone=phone, brand="acme", campaign="promo", **fields)


async def test_a_check_for_a_past_moment_answers_as_the_check_as_of_does(service):
    runtime, clock = service
    async with client(runtime.address) as c:
        granted_at = clock.now - timedelta(hours=2)
        w = await c.RecordOptIn(opt_in(PHONE, "acme", "promo", granted_at))
        token = w.consistency_token
        for moment in (granted_at - timedelta(hours=1), granted_at + timedelta(minutes=5)):
            r = await c.CanSend(can_send(at=ts(moment), at_least_as_fresh=token))
            audit = await c.CanSendAsOf(
                api.CanSendAsOfRequest(phone=PHONE, brand="acme", campaign="promo", at=ts(moment))
            )
            assert (r.allowed, r.reason, list(r.evidence_event_ids)) == (
                audit.allowed,
                audit.reason,
                list(audit.evidence_event_ids),
            )
            assert not r.provisional
            batch = await c.CanSendBatch(
                api.CanSendBatchRequest(
                    brand="acme", campaign="promo", phones=[PHONE, OTHER], at=ts(moment),
                    at_least_as_fresh=token,
                )
            )  # fmt: skip
            assert [d.reason for d in batch.decisions] == [audit.reason, api.REASON_NO_CONSENT]
        # Before the grant it was not allowed, whatever is known now.
        before = await c.CanSend(can_send(at=ts(granted_at - timedelta(hours=1))))
        assert not before.allowed and before.reason == api.REASON_NO_CONSENT


async def test_a_check_ahead_of_now_is_provisional_and_beyond_30_days_refused(service):
    runtime, clock = service
    async with client(runtime.address) as c:
        w = await c.RecordOptIn(opt_in(PHONE, "acme", "promo", clock.now - timedelta(hours=1)))
        now = await c.CanSend(can_send(at_least_as_fresh=w.consistency_token))
        assert now.allowed and not now.provisional
        # Noon in Los Angeles now: 23:00 there is quiet, 09:00 the next day is not.
        night = await c.CanSend(can_send(at=ts(clock.now + timedelta(hours=11))))
        assert night.provisional and night.reason == api.REASON_QUIET_HOURS
        morning = await c.CanSend(can_send(at=ts(clock.now + timedelta(hours=21))))
        assert morning.provisional and morning.allowed
        batch = await c.CanSendBatch(
            api.CanSendBatchRequest(
                brand="acme", campaign="promo", phones=[PHONE],
                at=ts(clock.now + timedelta(days=29, hours=21)),
            )
        )  # fmt: skip
        assert batch.provisional and batch.decisions[0].allowed
        beyond = ts(clock.now + timedelta(days=30, minutes=1))
        for call in (
            c.CanSend(can_send(at=beyond)),
            c.CanSendBatch(
                api.CanSendBatchRequest(brand="acme", campaign="promo", phones=[PHONE], at=beyond)
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert status_details(err.value)[0][0] == "at"
