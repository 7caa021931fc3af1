"""Revocation in any words, through the real gRPC server on the real Kafka ledger
and PostgreSQL view: a reply a reasonable person could read as "stop", in other
words, misspelt, abbreviated or in Spanish, blocks regular sends until reviewed;
an ordinary reply, a false friend of "stop" included, leaves the number allowed."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from consent.v1 import consent_service_pb2 as api

from services.bootstrap import Runtime
from tests.e2e.harness import Clock, client, define, inbound, opt_in

pytestmark = pytest.mark.asyncio(loop_scope="session")

NUMBER = "+12125550160"
REVOCATIONS = [
    "pls dont txt me no more",
    "can you not message me",
    "unsubscibe",
    "take me off ur list",
    "No me envíen más mensajes",
    "número equivocado",
    "\U0001f6d1",
]
ORDINARY = ["Can I stop by at 5?", "yes see you then", "No, that's all", "Who is this?"]


@pytest.fixture
async def service(serve):
    clock = Clock()
    campaign = define("acme", "promo", clock.now - timedelta(days=1), [NUMBER])
    return await serve(name="rev", clock=clock, campaigns=[campaign]), clock.now


async def reply_and_check(runtime: Runtime, when: datetime, phone: str, body: str):
    """Opt ``phone`` in, let it reply ``body``; the reply's reading and CanSend after it."""
    async with client(runtime.address, "acme-app") as c:
        await c.RecordOptIn(opt_in(phone, "acme", "promo", when - timedelta(minutes=30)))
        reply = await c.HandleInboundMessage(
            inbound(phone, NUMBER, body, when - timedelta(minutes=5))
        )
        answer = await c.CanSend(
            api.CanSendRequest(
                phone=phone,
                brand="acme",
                campaign="promo",
                at_least_as_fresh=reply.consistency_token,
            )
        )
        return reply, answer


async def test_a_revocation_in_other_words_blocks_sends_until_reviewed(service):
    runtime, when = service
    for n, body in enumerate(REVOCATIONS):
        reply, answer = await reply_and_check(runtime, when, f"+1415555{3000 + n}", body)
        assert reply.intent == api.INBOUND_INTENT_REVOCATION_CANDIDATE, body
        assert not answer.allowed, body
        assert answer.reason == api.REASON_REVOCATION_PENDING_REVIEW, body


async def test_an_ordinary_reply_leaves_the_number_allowed(service):
    runtime, when = service
    for n, body in enumerate(ORDINARY):
        reply, answer = await reply_and_check(runtime, when, f"+1415555{3100 + n}", body)
        assert reply.intent == api.INBOUND_INTENT_CONVERSATION, body
        assert answer.allowed, body


async def test_a_stop_typed_in_look_alike_letters_revokes(service):
    # Cyrillic, Armenian and Greek letters drawn like S, T, O and P: the person's
    # STOP (or STOP ALL), which the keyword sets alone read as conversation.
    runtime, when = service
    spellings = [
        ("\u0405\u0422\u041e\u0420", api.INBOUND_INTENT_OPT_OUT, api.REASON_REVOKED),
        ("\u054fTOP", api.INBOUND_INTENT_OPT_OUT, api.REASON_REVOKED),
        ("s\u03c4op", api.INBOUND_INTENT_OPT_OUT, api.REASON_REVOKED),
        (
            "\u0405\u0422\u041e\u0420 \u0410LL",
            api.INBOUND_INTENT_OPT_OUT_BRAND_WIDE,
            api.REASON_REVOKED_BRAND_WIDE,
        ),
    ]
    for n, (body, intent, reason) in enumerate(spellings):
        reply, answer = await reply_and_check(runtime, when, f"+1415555{3200 + n}", body)
        assert reply.intent == intent, body
        assert not answer.allowed, body
        assert answer.reason == reason, body
