"""An erasure whose keys were not destroyed (PostgreSQL went away between its
append and the destruction: answered UNAVAILABLE, "retry with the same
request_id"), tried again after a fresh opt-in, on real Kafka and PostgreSQL and
on the embedded default.

The retry is the same request: it must be answered as the erasure recorded, and
destroy the keys that erasure named, whatever was recorded since. It was refused
inside the retention period that the later opt-in opened, and the erased
subject's key stayed live: the proof the erasure was recorded as erasing could
still be read."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api

from ledger.retention import add_years
from services.errors import StoreUnavailable
from tests.e2e.harness import opt_in, opted_in

pytestmark = pytest.mark.asyncio(loop_scope="session")

SENDER = "+12125550187"
PHONE = "+14155553562"


@pytest.mark.parametrize("on_kafka", [True, False], ids=["kafka", "embedded"])
async def test_an_erasure_tried_again_destroys_the_keys_it_named(
    tmp_path, postgres_dsn, kafka_bootstrap, on_kafka
):
    bootstrap = kafka_bootstrap if on_kafka else None
    async with opted_in(
        tmp_path, postgres_dsn, bootstrap, name="erase-again", phone=PHONE, sender=SENDER
    ) as (runtime, c, clock):
        clock.now = add_years(clock.now, 6)
        keys = runtime.usecases.erasure.keys
        assert keys is not None
        named = await keys.live(PHONE, "acme")
        assert len(named) == 1

        # The erasure is appended; the key store is gone when its key is destroyed.
        destroy = keys.destroy

        async def gone(*args: Any) -> int:
            raise StoreUnavailable("PostgreSQL did not answer")

        keys.destroy = gone  # type: ignore[method-assign]
        request = api.RequestErasureRequest(
            request_id=uuid.uuid4().hex, phone=PHONE, brand="acme", reference="DSR-8"
        )
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await c.RequestErasure(request)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE, failed.value
        keys.destroy = destroy  # type: ignore[method-assign]

        listed = await c.ListEvents(api.ListEventsRequest(phone=PHONE, brand="acme"))
        [erasure] = [
            e.event.event_id for e in listed.events if e.event.event_type == "SubjectErased"
        ]

        # The person opts in again before the client tries the erasure again.
        clock.now += timedelta(minutes=1)
        await c.RecordOptIn(opt_in(PHONE, "acme", "promo", clock.now))

        again = await c.RequestErasure(request)
        assert again.event_id == erasure, again
        assert not set(named) & set(await keys.live(PHONE, "acme"))
