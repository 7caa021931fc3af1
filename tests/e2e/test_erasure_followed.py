"""What follows an erasure, through the API, on real Kafka and on the embedded
default: a START, a HELP, a text, a reconfirmation, an age verification, a send and
its outcome, a legal hold, an import of an opt-in dated before the erasure (refused,
FAILED_PRECONDITION on ``occurred_at``) and an opt-in to another campaign each leave
CanSend, CanSendBatch, CanSendAsOf and GetConsent saying the subject was erased
(the worked consumer's table: not opted in); a fresh opt-in to the campaign allows
it again. A START after an erasure was answered CONSENT_TIER_INSUFFICIENT, as if it
were the person's text alone."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb

from ledger.retention import add_years
from tests.e2e.harness import Client, defined, imported, inbound, opt_in, opted_in, sent, ts
from tests.e2e.harness import define as definition
from tests.e2e.test_erasure_in_flight import example_table_says

pytestmark = pytest.mark.asyncio(loop_scope="session")

SENDER = "+12125550191"
NEWS = "+12125550192"
PHONE = "+14155553564"

ERASED = {
    "CanSend": (False, api.REASON_SUBJECT_ERASED),
    "CanSendBatch": [(False, api.REASON_SUBJECT_ERASED)],
    "CanSendAsOf": (False, api.REASON_SUBJECT_ERASED),
    "GetConsent": api.CONSENT_STATE_ERASED,
}


async def readers(c: Client, campaign: str, now: datetime, token: str) -> dict[str, Any]:
    """What every reader says of PHONE's consent to ``campaign`` at acme, now."""
    ask = dict(phone=PHONE, brand="acme", campaign=campaign, at_least_as_fresh=token)
    one = await c.CanSend(api.CanSendRequest(**ask))
    batch = await c.CanSendBatch(
        api.CanSendBatchRequest(
            phones=[PHONE], brand="acme", campaign=campaign, at_least_as_fresh=token
        )
    )
    as_of = await c.CanSendAsOf(api.CanSendAsOfRequest(**ask, at=ts(now)))
    consent = await c.GetConsent(api.GetConsentRequest(**ask))
    return {
        "CanSend": (one.allowed, one.reason),
        "CanSendBatch": [(d.allowed, d.reason) for d in batch.decisions],
        "CanSendAsOf": (as_of.allowed, as_of.reason),
        "GetConsent": consent.state,
    }


def rid() -> str:
    return uuid.uuid4().hex


def facts_after(c: Client, erased_at: datetime) -> dict[str, Callable[[datetime], Awaitable[Any]]]:
    """Each fact that may follow an erasure without being a fresh opt-in to promo, as
    a write at a moment given (its answer carries the consistency token)."""
    sent_id = f"msg-{rid()[:12]}"
    acme = dict(phone=PHONE, brand="acme")

    async def start(t: datetime) -> Any:
        answer = await c.HandleInboundMessage(inbound(PHONE, SENDER, "START", t))
        # Nothing to resume, so no confirmation is owed, and CanSend says why.
        assert answer.reply == api.REPLY_KIND_NONE, answer
        confirmation = await c.CanSend(
            api.CanSendRequest(
                **acme,
                campaign="promo",
                message_kind=lpb.MESSAGE_KIND_OPT_IN_CONFIRMATION,
                at_least_as_fresh=answer.consistency_token,
            )
        )
        assert confirmation.reason == api.REASON_SUBJECT_ERASED, confirmation
        return answer

    async def imported_before(t: datetime) -> Any:
        record = opt_in(PHONE, "acme", "promo", erased_at - timedelta(days=1))
        answer = await imported(c, api.ImportRecord(opt_in=record))
        # Refused, not stored again: what was erased is not imported again.
        refusals = [(r.code, [v.field for v in r.violations]) for r in answer.refusals]
        assert (answer.imported, refusals) == (0, [("FAILED_PRECONDITION", ["occurred_at"])])
        assert (
            f"was erased at {erased_at.isoformat()}" in answer.refusals[0].violations[0].description
        )
        return answer

    async def hold(t: datetime) -> Any:
        await c.PlaceLegalHold(api.PlaceLegalHoldRequest(request_id=rid(), **acme, hold_id="h1"))
        return await c.ReleaseLegalHold(
            api.ReleaseLegalHoldRequest(request_id=rid(), **acme, hold_id="h1")
        )

    return {
        "START": start,
        "HELP": lambda t: c.HandleInboundMessage(inbound(PHONE, SENDER, "HELP", t)),
        "a text": lambda t: c.HandleInboundMessage(inbound(PHONE, SENDER, "are you open?", t)),
        "a reconfirmation": lambda t: c.RecordReconfirmation(
            api.RecordReconfirmationRequest(
                request_id=rid(),
                **acme,
                campaign="promo",
                channel=lpb.REVOCATION_CHANNEL_KEYWORD,
                occurred_at=ts(t),
                detail="YES",
            )
        ),
        "an age verification": lambda t: c.RecordAgeVerification(
            api.RecordAgeVerificationRequest(
                request_id=rid(), **acme, method="id-scan", verified_21_plus=True, occurred_at=ts(t)
            )
        ),
        "a send": lambda t: c.RecordMessageSent(
            sent(PHONE, "acme", "promo", t, message_id=sent_id)
        ),
        "its delivery": lambda t: c.RecordDeliveryOutcome(
            api.RecordDeliveryOutcomeRequest(
                request_id=rid(),
                **acme,
                message_id=sent_id,
                outcome=lpb.DELIVERY_OUTCOME_DELIVERED,
                occurred_at=ts(t),
            )
        ),
        "a legal hold placed and released": hold,
        "an imported opt-in dated before the erasure": imported_before,
        "an opt-in to another campaign": lambda t: c.RecordOptIn(opt_in(PHONE, "acme", "news", t)),
    }


@pytest.mark.parametrize("on_kafka", [True, False], ids=["kafka", "embedded"])
async def test_nothing_after_an_erasure_but_a_fresh_opt_in_allows_and_every_reader_says_so(
    tmp_path, postgres_dsn, kafka_bootstrap, on_kafka
):
    bootstrap = kafka_bootstrap if on_kafka else None
    async with opted_in(
        tmp_path, postgres_dsn, bootstrap, name="erased-then", phone=PHONE, sender=SENDER
    ) as (runtime, c, clock):
        opted = clock.now - timedelta(minutes=30)
        await defined(runtime, [definition("acme", "news", opted - timedelta(days=1), [NEWS])])
        clock.now = add_years(clock.now, 6)
        erasure = await c.RequestErasure(
            api.RequestErasureRequest(request_id=rid(), **dict(phone=PHONE, brand="acme"))
        )
        erased_at = clock.now
        assert await readers(c, "promo", clock.now, erasure.consistency_token) == ERASED

        for name, write in facts_after(c, erased_at).items():
            clock.now += timedelta(minutes=1)
            written = await write(clock.now)
            said = await readers(c, "promo", clock.now, written.consistency_token)
            assert said == ERASED, name

        token = written.consistency_token
        # The opt-in to news allows news alone; before the erasure, promo's stood.
        news = await readers(c, "news", clock.now, token)
        assert news["CanSend"] == (True, api.REASON_CONSENT_ACTIVE), news
        before = await c.CanSendAsOf(
            api.CanSendAsOfRequest(
                phone=PHONE,
                brand="acme",
                campaign="promo",
                at=ts(erased_at - timedelta(minutes=1)),
                at_least_as_fresh=token,
            )
        )
        assert (before.allowed, before.reason) == (True, api.REASON_CONSENT_ACTIVE), before
        table = await example_table_says(runtime, tmp_path, PHONE)
        assert table in (None, {"promo": False, "news": True})

        clock.now += timedelta(minutes=1)
        fresh = await c.RecordOptIn(opt_in(PHONE, "acme", "promo", clock.now))
        again = await readers(c, "promo", clock.now, fresh.consistency_token)
        assert again == {
            "CanSend": (True, api.REASON_CONSENT_ACTIVE),
            "CanSendBatch": [(True, api.REASON_CONSENT_ACTIVE)],
            "CanSendAsOf": (True, api.REASON_CONSENT_ACTIVE),
            "GetConsent": api.CONSENT_STATE_ACTIVE,
        }
        table = await example_table_says(runtime, tmp_path, PHONE)
        assert table in (None, {"promo": True, "news": True})
