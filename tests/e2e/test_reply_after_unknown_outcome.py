"""A STOP whose first delivery was answered "outcome unknown" but recorded owes its
confirmation to the redelivery, once, on a Kafka broker of the test's own (paused)."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from datetime import timedelta

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb

from ledger.ports import ConsistencyToken
from tests.e2e.harness import client, define, inbound, opt_in
from tests.e2e.test_write_faults import PASSING, SENDER, WHEN, _running
from tests.infra.kafka_broker import KafkaBroker

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def _answered(call, request) -> api.HandleInboundMessageResponse:
    """``call(request)``, sent again unchanged while the broker is still catching up."""
    for _ in range(60):
        try:
            return await call(request, timeout=10)
        except grpc.aio.AioRpcError as err:
            if err.code() not in PASSING:
                raise
            await asyncio.sleep(0.5)
    raise AssertionError("never answered")


async def test_a_stop_answered_outcome_unknown_owes_its_confirmation_to_its_redelivery(
    tmp_path, postgres_dsn, private_kafka_broker: KafkaBroker
):
    """The first delivery of a STOP, sent while the broker was paused, was answered
    UNAVAILABLE "outcome unknown" and recorded all the same. Its redelivery under a
    new request id (as gateways redeliver) was answered as a redelivery,
    REPLY_KIND_NONE, so no answer ever said the confirmation the README owes was
    owed, and none was sent. It is now owed to the first delivery answered so:
    that redelivery (and its retry), not a later one."""
    phone = "+14155559999"
    async with (
        _running(tmp_path, postgres_dsn, private_kafka_broker.bootstrap_servers) as runtime,
        client(runtime.address, "acme-app") as c,
        client(runtime.address) as admin,
    ):
        defined = await admin.DefineCampaign(
            define("acme", "promo", WHEN - timedelta(days=1), [SENDER])
        )
        granted = await c.RecordOptIn(opt_in(phone, "acme", "promo", WHEN - timedelta(hours=3)))
        for token in (defined.consistency_token, granted.consistency_token):
            assert await runtime.guard.wait_for_token(ConsistencyToken.decode(token), 30)
        stop = inbound(phone, SENDER, "STOP", WHEN - timedelta(minutes=20))
        pid = private_kafka_broker.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as first:
                await c.HandleInboundMessage(stop, timeout=4)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert first.value.code() in PASSING
        retried = api.HandleInboundMessageRequest()
        retried.CopyFrom(stop)
        retried.request_id = uuid.uuid4().hex
        answer = await _answered(c.HandleInboundMessage, retried)
        assert answer.reply == api.REPLY_KIND_OPT_OUT_CONFIRMATION, answer.notes
        assert answer.reply_message_kind == lpb.MESSAGE_KIND_OPT_OUT_CONFIRMATION
        again = await _answered(c.HandleInboundMessage, retried)  # that request's retry
        assert again.reply == api.REPLY_KIND_OPT_OUT_CONFIRMATION, again.notes
        later = api.HandleInboundMessageRequest()
        later.CopyFrom(stop)
        later.request_id = uuid.uuid4().hex
        once = await _answered(c.HandleInboundMessage, later)
        assert once.reply == api.REPLY_KIND_NONE, once.notes
        history = await c.ListEvents(api.ListEventsRequest(phone=phone, brand="acme"))
        kinds = [e.event.event_type for e in history.events]
        assert sum("Inbound" in k for k in kinds) == 1, kinds  # the first delivery's
