"""Any internal failure in a query answers "not allowed", with a reason."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from consent.v1 import consent_service_pb2 as api

from services.bootstrap import Runtime
from tests.e2e.harness import client, define, service_settings

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_failing_read_model_answers_not_allowed_for_single_and_batch(
    tmp_path, postgres_dsn
):
    runtime = Runtime(service_settings(tmp_path, postgres_dsn, kafka=None))
    await runtime.start()
    try:
        async with client(runtime.address) as c:
            await c.DefineCampaign(define("acme", "promo", datetime.now(UTC) - timedelta(days=1)))

            async def broken(*args, **kwargs):
                raise RuntimeError("the database fell over")

            runtime.view.subscriber_states = broken  # type: ignore[method-assign, union-attr]
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
