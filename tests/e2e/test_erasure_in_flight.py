"""An opt-in recorded while its number is being erased (real Kafka, and the
embedded default's PostgreSQL ledger): after the erasure, but sealed with the key
the erasure then destroys. Its proof is gone, so it must allow nothing, in CanSend
and in the worked consumer's table; a fresh opt-in after the erasure, sealed with
a new key, still does."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from consent.v1 import consent_service_pb2 as api

from ledger.ports import Stream
from ledger.retention import add_years
from services.bootstrap import Runtime
from services.consumer import StreamConsumerSettings
from services.consumer.opt_out_table import OptOutTable, keep_in_sync
from tests.e2e.harness import opt_in, opted_in
from tests.e2e.test_consumer_agrees import caught_up

pytestmark = pytest.mark.asyncio(loop_scope="session")

SENDER = "+12125550188"
PHONE = "+14155553561"


async def example_table_says(
    runtime: Runtime, tmp_path: Path, phone: str = PHONE
) -> dict[str, bool] | None:
    """What the worked consumer's table says of ``phone`` at acme once it has read the
    whole topic (None on the embedded default, which has no topic to follow)."""
    kafka = runtime.settings.kafka
    if kafka is None:
        return None
    group = f"opt-out-table-{uuid.uuid4().hex[:8]}"
    settings = StreamConsumerSettings(
        kafka.bootstrap_servers,
        group_id=group,
        topic_prefix=kafka.topic_prefix,
        streams=(Stream.SUBSCRIBERS,),
        poll_timeout_s=0.2,
    )
    table, stop = OptOutTable(tmp_path / f"{group}.sqlite"), asyncio.Event()
    syncing = asyncio.create_task(keep_in_sync(table, settings, stop))
    try:
        await caught_up(runtime, group)
        return table.status("acme", phone)
    finally:
        stop.set()
        await asyncio.wait_for(syncing, 60)
        table.close()


@pytest.mark.parametrize("on_kafka", [True, False], ids=["kafka", "embedded"])
async def test_an_opt_in_sealed_with_the_key_an_erasure_destroys_allows_nothing(
    tmp_path, postgres_dsn, kafka_bootstrap, on_kafka
):
    bootstrap = kafka_bootstrap if on_kafka else None
    async with opted_in(
        tmp_path, postgres_dsn, bootstrap, name="in-flight", phone=PHONE, sender=SENDER
    ) as (runtime, c, clock):
        clock.now = add_years(clock.now, 6)

        # The erasure is recorded, and stops before it destroys the number's key.
        keys = runtime.usecases.erasure.keys
        assert keys is not None
        destroy, destroying, go = keys.destroy, asyncio.Event(), asyncio.Event()

        async def held_back(*args: Any) -> int:
            destroying.set()
            await go.wait()
            return await destroy(*args)

        keys.destroy = held_back  # type: ignore[method-assign]
        erasing = asyncio.ensure_future(
            c.RequestErasure(
                api.RequestErasureRequest(
                    request_id=uuid.uuid4().hex, phone=PHONE, brand="acme", reference="DSR-7"
                )
            )
        )
        await asyncio.wait_for(destroying.wait(), 30)
        # A second later the person opts in again: sealed with the key not yet
        # destroyed, recorded after the erasure, and said after it too.
        clock.now += timedelta(seconds=1)
        written = await c.RecordOptIn(opt_in(PHONE, "acme", "promo", clock.now))
        go.set()
        assert (await erasing).keys_destroyed == 1
        keys.destroy = destroy  # type: ignore[method-assign]

        token = written.consistency_token
        listed = await c.ListEvents(
            api.ListEventsRequest(phone=PHONE, brand="acme", at_least_as_fresh=token)
        )
        kinds = [e.event.event_type for e in listed.events]
        assert kinds == ["ConsentGranted", "SubjectErased", "ConsentGranted"]
        # Its proof went with the key: the late opt-in reads erased.
        assert listed.events[2].event.consent_granted.proof.name == "[erased]"
        answer = await c.CanSend(
            api.CanSendRequest(phone=PHONE, brand="acme", campaign="promo", at_least_as_fresh=token)
        )
        assert (answer.allowed, answer.reason) == (False, api.REASON_SUBJECT_ERASED), answer
        batch = await c.CanSendBatch(
            api.CanSendBatchRequest(
                phones=[PHONE], brand="acme", campaign="promo", at_least_as_fresh=token
            )
        )
        assert [(d.allowed, d.reason) for d in batch.decisions] == [
            (False, api.REASON_SUBJECT_ERASED)
        ]
        consent = await c.GetConsent(
            api.GetConsentRequest(
                phone=PHONE, brand="acme", campaign="promo", at_least_as_fresh=token
            )
        )
        assert consent.state == api.CONSENT_STATE_ERASED
        assert await example_table_says(runtime, tmp_path) in (None, {"promo": False})

        # A fresh opt-in now is sealed with a new key: readable, and it allows.
        clock.now += timedelta(minutes=5)
        fresh = await c.RecordOptIn(opt_in(PHONE, "acme", "promo", clock.now))
        token = fresh.consistency_token
        answer = await c.CanSend(
            api.CanSendRequest(phone=PHONE, brand="acme", campaign="promo", at_least_as_fresh=token)
        )
        assert answer.allowed, answer.detail
        listed = await c.ListEvents(
            api.ListEventsRequest(phone=PHONE, brand="acme", at_least_as_fresh=token)
        )
        assert listed.events[-1].event.consent_granted.proof.name == "Ada Lovelace"
        assert await example_table_says(runtime, tmp_path) in (None, {"promo": True})


@pytest.mark.parametrize("on_kafka", [True, False], ids=["kafka", "embedded"])
async def test_a_hold_placed_while_an_erasure_is_decided_is_never_passed_over(
    tmp_path, postgres_dsn, kafka_bootstrap, on_kafka
):
    bootstrap = kafka_bootstrap if on_kafka else None
    async with opted_in(
        tmp_path, postgres_dsn, bootstrap, name="hold-race", phone=PHONE, sender=SENDER
    ) as (runtime, c, clock):
        clock.now = add_years(clock.now, 6)

        # The erasure stops once it has read the history it decides on.
        erasure = runtime.usecases.erasure
        everything, deciding, go = erasure._everything, asyncio.Event(), asyncio.Event()

        async def held_back(*args: Any) -> Any:
            history = await everything(*args)
            if not deciding.is_set():
                deciding.set()
                await go.wait()
            return history

        erasure._everything = held_back  # type: ignore[method-assign]
        erasing = asyncio.ensure_future(
            c.RequestErasure(
                api.RequestErasureRequest(
                    request_id=uuid.uuid4().hex, phone=PHONE, brand="acme", reference="DSR-9"
                )
            )
        )
        await asyncio.wait_for(deciding.wait(), 30)
        placing = asyncio.ensure_future(
            c.PlaceLegalHold(
                api.PlaceLegalHoldRequest(
                    request_id=uuid.uuid4().hex, phone=PHONE, brand="acme", hold_id="smith"
                )
            )
        )
        # Time for the hold to be recorded, were it not made to wait for the erasure.
        await asyncio.wait({placing}, timeout=5)
        go.set()
        await asyncio.gather(erasing, placing, return_exceptions=True)
        erasure._everything = everything  # type: ignore[method-assign]

        listed = await c.ListEvents(api.ListEventsRequest(phone=PHONE, brand="acme"))
        kinds = [e.event.event_type for e in listed.events]
        # Never a hold acknowledged and then erased over: the erasure went first.
        assert kinds == ["ConsentGranted", "SubjectErased", "LegalHoldPlaced"], kinds
