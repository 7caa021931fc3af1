"""Every kind of hold, and an opt-in that allows informational sends only, answer
alike before and after the service is stopped and started again on the same ledger
and database (embedded and Kafka): CanSend, CanSendBatch, CanSendAsOf (now and at
a send before the hold), GetConsent, the review queue and the stored
``consent_status`` rows. The holds: an opt-out refused for its details, a STOP to a
number no campaign sends from (held under ``*``), a provider's opt-out code, an
imported opt-out held, a disguised STOP an older version recorded as a conversation
and held when read again, and a reply a review resolved as an opt-out (its one
confirmation counted from the person's text, long past)."""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb

from ledger.ports import ConsistencyToken, Stream
from services.bootstrap import Runtime
from tests.builders import proof_proto
from tests.e2e.harness import (
    Client,
    Clock,
    client,
    define,
    defined,
    inbound,
    kafka_settings,
    noon_in_los_angeles,
    opt_in,
    running,
    service_settings,
    ts,
)
from tests.e2e.test_holds_readers_agree import HOLD_REASONS, SENDER, Case, hold, send
from tests.e2e.test_texts_read_again import stored_as_conversation

pytestmark = pytest.mark.asyncio(loop_scope="session")

CAMPAIGNS = ("promo", "alerts")
HOLDS = ("refused opt-out", "unowned STOP", "provider code", "imported opt-out")
KINDS = (*HOLDS, "read again", "review revoked", "verbal")
KINDS_OF_MESSAGE = (lpb.MESSAGE_KIND_REGULAR, lpb.MESSAGE_KIND_OPT_OUT_CONFIRMATION)


async def _held(runtime: Runtime, c: Client, clock: Clock, dsn: str) -> tuple[dict[str, str], str]:
    """A number of each kind, each opted in to both campaigns and sent to before its
    hold; returns the numbers by kind and a token covering every write."""
    phones: dict[str, str] = {}
    token = ConsistencyToken({})
    base = 4600 + 100 * (runtime.settings.kafka is not None)
    for n, kind in enumerate(KINDS):
        phone = phones[kind] = f"+1415557{base + n:04d}"
        case = Case(c, clock, phone, dsn)
        for campaign in CAMPAIGNS:
            at = clock.now - timedelta(days=2)
            told = proof_proto(at, collection_detail="recorded call 42")
            verbal = {"method": lpb.COLLECTION_METHOD_VERBAL, "proof": told}
            w = await c.RecordOptIn(
                opt_in(phone, "acme", campaign, at, **(verbal if kind == "verbal" else {}))
            )
            case.wrote(w.consistency_token)
        if kind != "verbal":  # a promotional send it does not allow
            await send(case, "before", clock.now - timedelta(minutes=55), relied=True)
        if kind in HOLDS:
            await hold(case, kind)
        elif kind == "review revoked":
            then = clock.now - timedelta(hours=3)
            w = await c.HandleInboundMessage(inbound(phone, SENDER, "please stop texting me", then))
            w = await c.ResolveRevocationCandidate(
                api.ResolveRevocationCandidateRequest(
                    request_id=uuid.uuid4().hex,
                    phone=phone,
                    brand="acme",
                    candidate_event_id=w.event_ids[-1],
                    resolution=lpb.CANDIDATE_RESOLUTION_REVOKED,
                    occurred_at=ts(clock.now - timedelta(minutes=1)),
                )
            )
            case.wrote(w.consistency_token)
        elif kind == "read again":  # as an older version recorded it: a conversation
            assert runtime.usecases is not None
            text = stored_as_conversation(clock.now - timedelta(minutes=30), "older", "SM-older")
            text = dataclasses.replace(text, event_id=uuid.uuid4(), phone=phone, to_number=SENDER)
            (stored,) = await runtime.usecases.review.ctx.ledger.append([text])
            case.token = case.token.merge(ConsistencyToken.after([stored]))
        token = token.merge(case.token)
    await read_again_as_after_an_upgrade(runtime)
    for stream_and_partition, end in (await _ends(runtime)).items():
        token = token.merge(ConsistencyToken({stream_and_partition: end}))
    return phones, token.encode()


async def read_again_as_after_an_upgrade(runtime: Runtime) -> None:
    """The start read the texts already; as after an upgrade that changed the rules,
    they are read again from the start (a disguised STOP among them held)."""
    assert runtime.pool is not None
    await runtime.texts_read.wait()
    await runtime.pool.execute("UPDATE texts_read_under SET rules = 'older rules'")
    await runtime.pool.execute("DELETE FROM texts_read_to")
    assert await runtime.read_texts_on()


async def _ends(runtime: Runtime) -> dict[Any, int]:
    assert runtime.ledger is not None
    ends = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)
    return {(Stream.SUBSCRIBERS, p): o for p, o in ends.items()}


def _plain(answer: Any) -> Any:
    answer.ClearField("consistency_token")
    return answer


async def _answers(c: Client, phones: dict[str, str], fresh: str, clock: Clock, dsn: str) -> Any:
    """What each reader says of each number, consistency tokens left out."""
    said: dict[Any, Any] = {}
    for kind, phone in phones.items():
        for campaign in CAMPAIGNS:
            ask: dict[str, Any] = dict(
                phone=phone, brand="acme", campaign=campaign, at_least_as_fresh=fresh
            )
            for message in KINDS_OF_MESSAGE:
                said[kind, campaign, message, "CanSend"] = _plain(
                    await c.CanSend(api.CanSendRequest(**ask, message_kind=message))
                )
                said[kind, campaign, message, "CanSendBatch"] = _plain(
                    await c.CanSendBatch(
                        api.CanSendBatchRequest(
                            phones=[phone],
                            brand="acme",
                            campaign=campaign,
                            at_least_as_fresh=fresh,
                            message_kind=message,
                        )
                    )
                )
            for ago in (timedelta(0), timedelta(minutes=45)):
                said[kind, campaign, ago, "CanSendAsOf"] = _plain(
                    await c.CanSendAsOf(api.CanSendAsOfRequest(**ask, at=ts(clock.now - ago)))
                )
            said[kind, campaign, "GetConsent"] = _plain(
                await c.GetConsent(api.GetConsentRequest(**ask))
            )
    for brand in ("acme", "*"):
        listed = await c.ListRevocationCandidates(
            api.ListRevocationCandidatesRequest(brand=brand, page_size=500, at_least_as_fresh=fresh)
        )
        said[brand, "queue"] = sorted(e.event.event_id for e in listed.candidates)
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT to_jsonb(s) AS row FROM consent_status AS s ORDER BY phone, brand, campaign"
        )
    finally:
        await conn.close()
    said["consent_status"] = [json.loads(r["row"]) for r in rows]
    return said


@pytest.mark.parametrize("on_kafka", [False, True], ids=["embedded", "kafka"])
async def test_every_hold_answers_alike_after_a_restart(
    tmp_path, postgres_dsn, kafka_bootstrap, on_kafka
):
    clock = Clock(noon_in_los_angeles(ahead=timedelta(hours=2)))
    kafka = (
        kafka_settings(kafka_bootstrap, f"restart-{uuid.uuid4().hex[:8]}.") if on_kafka else None
    )
    settings = service_settings(tmp_path, postgres_dsn, kafka=kafka)
    campaigns = [
        define("acme", "promo", clock.now - timedelta(days=60), [SENDER]),
        define("acme", "alerts", clock.now - timedelta(days=60)),
    ]
    async with running(settings, clock) as runtime, client(runtime.address) as c:
        await defined(runtime, campaigns)
        phones, fresh = await _held(runtime, c, clock, postgres_dsn)
        before = await _answers(c, phones, fresh, clock, postgres_dsn)
    async with running(settings, clock) as runtime, client(runtime.address) as c:
        after = await _answers(c, phones, fresh, clock, postgres_dsn)
        assert after == before
        # Read again from the start, as after a restart in the middle of a reading:
        # the hold already placed is not placed again.
        await read_again_as_after_an_upgrade(runtime)
        fresh = ConsistencyToken.decode(fresh).merge(ConsistencyToken(await _ends(runtime)))
        assert await _answers(c, phones, fresh.encode(), clock, postgres_dsn) == before

    # What was asked of: every hold denies every campaign, the verbal opt-in the
    # promotional one, and the review's opt-out owes no confirmation hours on.
    regular = lpb.MESSAGE_KIND_REGULAR
    for kind in (*HOLDS, "read again"):
        for campaign in CAMPAIGNS:
            answer = after[kind, campaign, regular, "CanSend"]
            assert not answer.allowed and answer.reason in HOLD_REASONS, (kind, answer)
    assert (
        after["verbal", "promo", regular, "CanSend"].reason == api.REASON_CONSENT_TIER_INSUFFICIENT
    )
    confirmation = after[
        "review revoked", "promo", lpb.MESSAGE_KIND_OPT_OUT_CONFIRMATION, "CanSend"
    ]
    assert confirmation.reason == api.REASON_OPT_OUT_CONFIRMATION_NOT_ALLOWED, confirmation
    # acme's queue: the refused, provider's, imported and read-again holds; "*"'s the STOP.
    assert (len(after["acme", "queue"]), len(after["*", "queue"])) == (4, 1)
    held = [r for r in after["consent_status"] if r["status"] == "pending_review"]
    assert {r["phone"] for r in held} == {phones[k] for k in (*HOLDS, "read again")}
