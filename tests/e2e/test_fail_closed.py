"""Any internal failure in a query answers "not allowed", with a reason."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from consent.v1 import consent_service_pb2 as api

from services.bootstrap import Runtime
from tests.e2e.harness import client, define, service_settings, ts

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.mark.parametrize("reads", ["replica", "postgres"])
async def test_a_failing_read_model_answers_not_allowed_for_single_and_batch(
    tmp_path, postgres_dsn, reads
):
    settings = service_settings(tmp_path, postgres_dsn, kafka=None)
    runtime = Runtime(dataclasses.replace(settings, cansend_reads=reads))
    await runtime.start()
    try:
        async with client(runtime.address) as c:
            await c.DefineCampaign(define("acme", "promo", datetime.now(UTC) - timedelta(days=1)))

            async def broken(*args, **kwargs):
                raise RuntimeError("the database fell over")

            # The replica, or the view behind the read batcher.
            target = runtime.app.reads if reads == "replica" else runtime.view
            target.digests = broken  # type: ignore[method-assign, union-attr]
            one = await c.CanSend(
                api.CanSendRequest(phone="+14155552671", brand="acme", campaign="promo")
            )
            assert not one.allowed and one.reason == api.REASON_INTERNAL_ERROR
            many = await c.CanSendBatch(
                api.CanSendBatchRequest(
                    brand="acme", campaign="promo", phones=["+14155552671", "+12125551234"]
                )
            )
            assert [d.allowed for d in many.decisions] == [False, False]
            assert {d.reason for d in many.decisions} == {api.REASON_INTERNAL_ERROR}
            assert [d.phone for d in many.decisions] == ["+14155552671", "+12125551234"]
    finally:
        await runtime.stop()


async def test_an_audit_read_the_view_cannot_serve_fresh_enough_is_unavailable(
    tmp_path, postgres_dsn
):
    import grpc

    settings = service_settings(tmp_path, postgres_dsn, kafka=None)
    settings = type(settings)(
        **{
            **settings.__dict__,
            "freshness": type(settings.freshness)(refresh_interval=0.05, wait_bound=0.3),
        }
    )
    runtime = Runtime(settings)
    await runtime.start()
    try:
        async with client(runtime.address) as c:
            ahead = "subscribers:0:1000000"  # a write the view has not applied
            for call in (
                c.GetConsent(
                    api.GetConsentRequest(
                        phone="+14155552671",
                        brand="acme",
                        campaign="promo",
                        at_least_as_fresh=ahead,
                    )
                ),
                c.ListEvents(api.ListEventsRequest(phone="+14155552671", at_least_as_fresh=ahead)),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            as_of = await c.CanSendAsOf(
                api.CanSendAsOfRequest(
                    phone="+14155552671",
                    brand="acme",
                    campaign="promo",
                    at=ts(datetime.now(UTC)),
                    at_least_as_fresh=ahead,
                )
            )
            assert not as_of.allowed and as_of.reason == api.REASON_NOT_CONSISTENT
    finally:
        await runtime.stop()
