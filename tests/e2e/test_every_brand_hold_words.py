"""A hold under brand "*" that a version before sealing wrote in the clear, asked
about by a brand's token (and the operator's) through CanSend, CanSendBatch and
CanSendAsOf: it denies the brand's sends, and the answer says so without the
person's words, which are not every brand's to read (they may name the brand the
person answered)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from consent.v1 import consent_service_pb2 as api

from ledger.ports import ConsistencyToken
from tests.builders import flagged
from tests.e2e.harness import client, opted_in, ts

pytestmark = pytest.mark.asyncio(loop_scope="session")

SENDER = "+12125550189"
PHONE = "+14155553962"
STRAY = "+14155553963"
REPLIED = "Initech you again? stop"
STOPPED = "STOP Initech"


async def test_a_hold_for_every_brand_in_the_clear_denies_a_brand_without_its_words(
    tmp_path, postgres_dsn
):
    async with opted_in(
        tmp_path, postgres_dsn, None, name="star-words", phone=PHONE, sender=SENDER
    ) as (runtime, admin, clock):
        at = clock.now - timedelta(minutes=5)
        # As a version before sealing wrote them: a reply held for review under "*",
        # and a STOP to a number no campaign sends from.
        assert runtime.ledger is not None
        written = await runtime.ledger.append(
            [
                flagged(at, REPLIED, phone=PHONE, brand="*"),
                replace(
                    flagged(at, STOPPED, phone=STRAY, brand="*"),
                    unattributed=True,
                    to_number="+12125550100",
                ),
            ]
        )
        assert all(r.event.sealed is None for r in written)
        fresh = ConsistencyToken.after(written).encode()
        answers = {}
        async with client(runtime.address, "acme-app") as acme:
            for who, c in (("acme-app", acme), ("admin", admin)):
                for phone in (PHONE, STRAY):
                    ask = dict(phone=phone, brand="acme", campaign="promo", at_least_as_fresh=fresh)
                    answers[who, "CanSend", phone] = await c.CanSend(api.CanSendRequest(**ask))
                    answers[who, "CanSendAsOf", phone] = await c.CanSendAsOf(
                        api.CanSendAsOfRequest(**ask, at=ts(clock.now), known_at=ts(clock.now))
                    )
                batch = await c.CanSendBatch(
                    api.CanSendBatchRequest(
                        brand="acme",
                        campaign="promo",
                        phones=[PHONE, STRAY],
                        at_least_as_fresh=fresh,
                    )
                )
                for d in batch.decisions:
                    answers[who, "CanSendBatch", d.phone] = d
        for key, answer in answers.items():
            assert not answer.allowed, (key, answer)  # every brand's to be denied by
            assert "Initech" not in answer.detail, (key, answer.detail)
            assert "held for every brand" in answer.detail, (key, answer.detail)
            pending = key[2] == PHONE
            assert answer.reason == (
                api.REASON_REVOCATION_PENDING_REVIEW if pending else api.REASON_REVOKED_BRAND_WIDE
            ), (key, answer)
