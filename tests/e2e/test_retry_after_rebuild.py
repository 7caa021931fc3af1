"""A retry answered as first answered after the view is lost and rebuilt, on the real
Kafka ledger and PostgreSQL: the reply a text's first answer told is kept with the
text in the ledger (``InboundMessageReceived.reply``), not only in the view, so a
rebuild from the ledger tells a retry of it the same reply, whatever happened since.
A redelivery under a new request id is recognised too, and an opt-in stated before
an opt-out stamped ahead refused: the view takes the keys writes took for them again
as it applies their facts (``ledger.view_keys``)."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import timedelta

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api

from ledger.ports import ConsistencyToken
from services.cli import rebuild
from services.cli.main import _parser
from tests.builders import proof_proto as proof
from tests.e2e.harness import (
    client,
    define,
    inbound,
    kafka_service_settings,
    noon_in_los_angeles,
    opt_in,
    opt_out,
    running,
)
from tests.infra.postgres_server import PostgresServer

pytestmark = pytest.mark.asyncio(loop_scope="session")

PROMO_NUMBER = "+12125550150"


class LostView:
    """A service's settings on the test broker and a database of the test's own, which
    ``lose`` drops whole (every table, the keys writes took with them) and fills
    again from the ledger: by ``rebuild --workers 2``, or by the next service's own
    projector."""

    def __init__(self, server: PostgresServer, tmp_path, kafka_bootstrap: str, name: str) -> None:
        self.server, self.name = server, f"{name}_{uuid.uuid4().hex[:8]}"
        self._tmp, self._bootstrap = tmp_path, kafka_bootstrap

    async def __aenter__(self) -> LostView:
        dsn = await self.server.create_database(self.name)
        self.settings = kafka_service_settings(self._tmp, dsn, self._bootstrap)
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.server.drop_database(self.name)

    async def lose(self, refill: str = "rebuild") -> None:
        await self.server.drop_database(self.name)
        dsn = await self.server.create_database(self.name)
        self.settings = dataclasses.replace(self.settings, postgres_dsn=dsn)
        if refill == "rebuild":
            args = _parser().parse_args(["rebuild", "--quiet", "--workers", "2"])
            await rebuild.run(self.settings, args)


async def test_a_retry_after_the_view_is_dropped_and_rebuilt_is_told_the_first_reply(
    tmp_path, postgres_server: PostgresServer, kafka_bootstrap
):
    """A START with nothing to resume owes no reply; an opt-in and a STOP then give it
    something to resume. The view dropped entirely and rebuilt from the ledger (by two
    workers), the START's retry is still told no reply is owed, and a STOP's retry its
    confirmation, as before the rebuild."""
    when = noon_in_los_angeles()
    phone = "+14155552791"
    start_text = inbound(phone, PROMO_NUMBER, "START", when - timedelta(minutes=8))
    stop_text = inbound(phone, PROMO_NUMBER, "STOP", when - timedelta(minutes=6))
    async with LostView(postgres_server, tmp_path, kafka_bootstrap, "replykept") as view:
        async with running(view.settings, lambda: when) as runtime, client(runtime.address) as c:
            await c.DefineCampaign(
                define("acme", "promo", when - timedelta(days=1), [PROMO_NUMBER])
            )
            start = await c.HandleInboundMessage(start_text)
            assert start.reply == api.REPLY_KIND_NONE, start
            await c.RecordOptIn(opt_in(phone, "acme", "promo", when - timedelta(minutes=7)))
            stop = await c.HandleInboundMessage(stop_text)
            assert stop.reply == api.REPLY_KIND_OPT_OUT_CONFIRMATION, stop
            again = await c.HandleInboundMessage(start_text)
            assert again.reply == api.REPLY_KIND_NONE, again  # the view keeps it
            token = ConsistencyToken.decode(stop.consistency_token)
            assert await runtime.guard.wait_for_token(token, 30)

        await view.lose()

        async with running(view.settings, lambda: when) as runtime, client(runtime.address) as c:
            again = await c.HandleInboundMessage(start_text)
            assert list(again.event_ids) == list(start.event_ids)
            assert again.reply == api.REPLY_KIND_NONE, again
            again = await c.HandleInboundMessage(stop_text)
            assert list(again.event_ids) == list(stop.event_ids)
            assert again.reply == api.REPLY_KIND_OPT_OUT_CONFIRMATION, again
            # Each text shows the reply it was recorded owing, as its other fields.
            listed = await c.ListEvents(api.ListEventsRequest(phone=phone, brand="acme"))
            texts = [
                (
                    e.event.inbound_message_received.message_id,
                    e.event.inbound_message_received.reply,
                )
                for e in listed.events
                if e.event.HasField("inbound_message_received")
            ]
            told = [(start_text.message_id, "none"), (stop_text.message_id, "opt_out_confirmation")]
            assert texts == told, texts


@pytest.mark.parametrize("refill", ["rebuild", "projector"])
async def test_a_redelivery_after_the_view_is_lost_is_told_the_text_was_recorded(
    tmp_path, postgres_server: PostgresServer, kafka_bootstrap, refill
):
    """A gateway redelivers a STOP and a HELP under new request ids. Before the view
    is lost each redelivery is answered with the first recording and no reply owed;
    the view dropped and filled again from the ledger (by ``rebuild`` or by the
    service's own projector), a redelivery under yet another request id is answered
    the same, not recorded a second time owing its reply again."""
    when = noon_in_los_angeles()
    phone = "+14155552792"
    stop_text = inbound(phone, PROMO_NUMBER, "STOP", when - timedelta(minutes=6))
    help_text = inbound(phone, PROMO_NUMBER, "HELP", when - timedelta(minutes=5))
    texts = [stop_text, help_text]

    def redelivered(text: api.HandleInboundMessageRequest) -> api.HandleInboundMessageRequest:
        again = api.HandleInboundMessageRequest()
        again.CopyFrom(text)
        again.request_id = uuid.uuid4().hex
        return again

    async with LostView(postgres_server, tmp_path, kafka_bootstrap, "textkeys") as view:
        async with running(view.settings, lambda: when) as runtime, client(runtime.address) as c:
            await c.DefineCampaign(
                define("acme", "promo", when - timedelta(days=1), [PROMO_NUMBER])
            )
            await c.RecordOptIn(opt_in(phone, "acme", "promo", when - timedelta(minutes=7)))
            first = [await c.HandleInboundMessage(text) for text in texts]
            assert first[0].reply == api.REPLY_KIND_OPT_OUT_CONFIRMATION, first[0]
            assert first[1].reply == api.REPLY_KIND_HELP, first[1]
            for text, answer in zip(texts, first, strict=True):
                again = await c.HandleInboundMessage(redelivered(text))
                assert list(again.event_ids) == list(answer.event_ids)  # the view keeps it
                assert again.reply == api.REPLY_KIND_NONE, again
            token = ConsistencyToken.decode(first[1].consistency_token)
            assert await runtime.guard.wait_for_token(token, 30)

        await view.lose(refill)

        async with running(view.settings, lambda: when) as runtime, client(runtime.address) as c:
            for text, answer in zip(texts, first, strict=True):
                again = await c.HandleInboundMessage(redelivered(text))
                assert list(again.event_ids) == list(answer.event_ids), again
                assert again.reply == api.REPLY_KIND_NONE, again
            # The words are sealed in the ledger, but a text that reads otherwise is
            # still another text under a taken message id, refused as before.
            other = redelivered(help_text)
            other.body = "thanks"
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await c.HandleInboundMessage(other)
            assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
            assert "message_id" in refused.value.details()
            listed = await c.ListEvents(api.ListEventsRequest(phone=phone, brand="acme"))
            recorded = [
                e.event.inbound_message_received.message_id
                for e in listed.events
                if e.event.HasField("inbound_message_received")
            ]
            assert recorded == [stop_text.message_id, help_text.message_id], recorded


@pytest.mark.parametrize("refill", ["rebuild", "projector"])
async def test_an_opt_in_stated_before_an_opt_out_stamped_ahead_is_refused_after_the_view_is_lost(
    tmp_path, postgres_server: PostgresServer, kafka_bootstrap, refill
):
    """An opt-out stamped 40 s ahead of the clock takes its place when recorded and
    keeps the time it said; an opt-in stated before that time, placed after it, is
    refused on ``occurred_at``. The view dropped and filled again from the ledger
    (by ``rebuild`` or by the service's own projector), it is refused still, not
    recorded to lose to the opt-out in the fold."""
    t = noon_in_los_angeles()
    now = [t]
    phone = "+14155552793"
    between = t + timedelta(seconds=20)

    async def refused_on_occurred_at(c) -> None:
        late = opt_in(phone, "acme", "promo", between, proof=proof(between))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await c.RecordOptIn(late)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
        assert "occurred_at" in (refused.value.details() or "")

    async with LostView(postgres_server, tmp_path, kafka_bootstrap, "statedkeys") as view:
        async with running(view.settings, lambda: now[0]) as runtime, client(runtime.address) as c:
            await c.DefineCampaign(define("acme", "promo", t - timedelta(days=1), [PROMO_NUMBER]))
            stopped = await c.RecordOptOut(opt_out(phone, "acme", None, t + timedelta(seconds=40)))
            now[0] = t + timedelta(seconds=25)
            await refused_on_occurred_at(c)  # the view keeps the opt-out's note
            token = ConsistencyToken.decode(stopped.consistency_token)
            assert await runtime.guard.wait_for_token(token, 30)

        await view.lose(refill)

        async with running(view.settings, lambda: now[0]) as runtime, client(runtime.address) as c:
            await refused_on_occurred_at(c)
