"""A disguised STOP an older version recorded as a conversation, read again by
``serve`` under the current keyword rules (``Runtime.reread_texts``), on the real
Kafka ledger with its words sealed: held for review from its own time, and every
check and the review queue say so until someone resolves it."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import timedelta

import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb

from ledger.events import InboundMessageReceived, RevocationCandidateFlagged
from ledger.keywords import Intent
from ledger.ports import ConsistencyToken, Stream
from services.usecases.review import reading_rules
from tests.e2e.harness import Client, define, defined, opt_in, opted_in, ts

pytestmark = pytest.mark.asyncio(loop_scope="session")

SENDER = "+12125550177"
PHONE = "+14155553977"
DISGUISED = "ST\u00d8P"
MOVED = "+12125550178"
"""A number globex's campaign sent from, then acme's."""


def stored_as_conversation(at, request_id: str, message_id: str) -> InboundMessageReceived:
    """The disguised STOP as a version before 0368632 recorded it: a conversation."""
    return InboundMessageReceived(
        event_id=uuid.uuid4(),
        occurred_at=at,
        request_id=request_id,
        phone=PHONE,
        brand="acme",
        message_id=message_id,
        to_number=SENDER,
        body=DISGUISED,
        campaign="promo",
        intent=Intent.CONVERSATION.value,
    )


async def reasons(c: Client, token: str, at) -> list[int]:
    """CanSend's, CanSendBatch's and CanSendAsOf's answers for PHONE at acme/promo."""
    single = await c.CanSend(
        api.CanSendRequest(phone=PHONE, brand="acme", campaign="promo", at_least_as_fresh=token)
    )
    batch = await c.CanSendBatch(
        api.CanSendBatchRequest(
            phones=[PHONE], brand="acme", campaign="promo", at_least_as_fresh=token
        )
    )
    as_of = await c.CanSendAsOf(
        api.CanSendAsOfRequest(
            phone=PHONE, brand="acme", campaign="promo", at=ts(at), at_least_as_fresh=token
        )
    )
    return [single.reason, *(d.reason for d in batch.decisions), as_of.reason]


async def test_a_disguised_stop_recorded_as_conversation_is_held_when_read_again(
    tmp_path, postgres_dsn, kafka_bootstrap
):
    async with opted_in(
        tmp_path, postgres_dsn, kafka_bootstrap, name="reread", phone=PHONE, sender=SENDER
    ) as (runtime, c, clock):
        assert runtime.usecases is not None and runtime.pool is not None
        ctx = runtime.usecases.review.ctx
        said = clock.now - timedelta(minutes=10)
        # As a version before 0368632 recorded it: a conversation, its words sealed.
        text = stored_as_conversation(said, "older-version", "SM-disguised")
        (stored,) = await ctx.ledger.append([text])
        assert stored.event.sealed is not None
        token = ConsistencyToken.after([stored]).encode()
        assert await reasons(c, token, clock.now) == [api.REASON_CONSENT_ACTIVE] * 3

        # The start read the stored texts under these rules already (before this one
        # was stored); as after an upgrade that changed them, it reads them again.
        await runtime.texts_read.wait()
        assert await runtime.pool.fetchval("SELECT rules FROM texts_read_under") == reading_rules()
        await runtime.pool.execute("UPDATE texts_read_under SET rules = 'older rules'")
        await runtime.pool.execute("DELETE FROM texts_read_to")
        assert await runtime.read_texts_on()
        assert await runtime.pool.fetchval("SELECT rules FROM texts_read_under") == reading_rules()

        assert runtime.ledger is not None
        ends = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)
        token = ConsistencyToken({(Stream.SUBSCRIBERS, p): o for p, o in ends.items()}).encode()
        assert await reasons(c, token, clock.now) == [api.REASON_REVOCATION_PENDING_REVIEW] * 3
        queue = await c.ListRevocationCandidates(
            api.ListRevocationCandidatesRequest(brand="acme", at_least_as_fresh=token)
        )
        [held] = queue.candidates
        flagged = held.event.revocation_candidate_flagged
        assert (flagged.text, flagged.inbound_message_id) == (DISGUISED, "SM-disguised")
        assert held.event.occurred_at.ToDatetime().replace(tzinfo=said.tzinfo) == said

        done = await c.ResolveRevocationCandidate(
            api.ResolveRevocationCandidateRequest(
                request_id=uuid.uuid4().hex,
                phone=PHONE,
                brand="acme",
                candidate_event_id=held.event.event_id,
                resolution=lpb.CANDIDATE_RESOLUTION_REVOKED,
                occurred_at=ts(clock.now),
            )
        )
        after = await reasons(c, done.consistency_token, clock.now)
        assert after == [api.REASON_REVOKED_BRAND_WIDE] * 3


async def test_a_disguised_stop_an_older_instance_records_after_the_reading_is_read_on(
    tmp_path, postgres_dsn, kafka_bootstrap
):
    # A rolling upgrade: the new rules' reading is done, then an instance still on the
    # older rules records a disguised STOP as a conversation. The next reading (every
    # minute, and at every start) goes on from where the last got and holds it.
    async with opted_in(
        tmp_path, postgres_dsn, kafka_bootstrap, name="readon", phone=PHONE, sender=SENDER
    ) as (runtime, c, clock):
        assert runtime.usecases is not None and runtime.pool is not None
        await runtime.texts_read.wait()
        (start,) = [t for t in runtime._tasks if t.get_name() == "reread-texts"]
        start.cancel()
        at = clock.now - timedelta(minutes=5)
        text = stored_as_conversation(at, "older-instance", "SM-during-upgrade")
        (stored,) = await runtime.usecases.review.ctx.ledger.append([text])
        token = ConsistencyToken.after([stored]).encode()
        assert await reasons(c, token, clock.now) == [api.REASON_CONSENT_ACTIVE] * 3

        runtime._tasks.append(asyncio.create_task(runtime.reread_texts(every=0.01)))
        for _ in range(2):  # the second reading surely began after the text was stored
            runtime.texts_read.clear()
            await asyncio.wait_for(runtime.texts_read.wait(), 60)
        assert runtime.ledger is not None
        ends = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)
        token = ConsistencyToken({(Stream.SUBSCRIBERS, p): o for p, o in ends.items()}).encode()
        assert await reasons(c, token, clock.now) == [api.REASON_REVOCATION_PENDING_REVIEW] * 3
        # Each chunk of texts read was on the access log before it was opened.
        read = await runtime.pool.fetch(
            "SELECT subject, via FROM audit_access WHERE action = 'ReadTextsAgain'"
        )
        assert read and {(r["subject"], r["via"]) for r in read} == {("service:reread", "service")}


async def test_a_text_read_again_is_held_for_the_brand_that_sent_from_its_number_then(
    tmp_path, postgres_dsn, kafka_bootstrap
):
    # globex let MOVED go and acme took it; a disguised STOP the person sent globex
    # before that, delivered after, an older version recorded as acme's conversation.
    async with opted_in(
        tmp_path, postgres_dsn, kafka_bootstrap, name="rereadmoved", phone=PHONE, sender=SENDER
    ) as (runtime, c, clock):
        assert runtime.usecases is not None and runtime.pool is not None
        deals = define("globex", "deals", clock.now - timedelta(days=2), ["+12125550179", MOVED])
        await defined(runtime, [deals])
        await c.RecordOptIn(opt_in(PHONE, "globex", "deals", clock.now - timedelta(days=1)))
        for brand, campaign, numbers, ago in (
            ("globex", "deals", ["+12125550179"], 20),
            ("acme", "promo", [SENDER, MOVED], 15),
        ):
            await c.ChangeCampaignPolicy(
                api.ChangeCampaignPolicyRequest(
                    request_id=uuid.uuid4().hex, brand=brand, campaign=campaign,
                    policy=lpb.CampaignPolicy(sender_numbers=numbers),
                    occurred_at=ts(clock.now - timedelta(minutes=ago)),
                )
            )  # fmt: skip
        said = clock.now - timedelta(minutes=25)
        text = replace(stored_as_conversation(said, "older", "SM-moved"), to_number=MOVED)
        # Another's STOPALL, recorded as an opt-out of acme's campaign and held for
        # globex when it came (as the late-STOP path does): now read as acme's STOPALL,
        # it is held for acme, and for globex still once.
        other = "+14155553978"
        stopall = replace(
            text, event_id=uuid.uuid4(), request_id="older-stopall", phone=other,
            message_id="SM-stopall", body="STOPALL", intent=Intent.OPT_OUT.value,
        )  # fmt: skip
        late = RevocationCandidateFlagged(
            event_id=uuid.uuid4(), occurred_at=said, request_id="late-stop-older",
            phone=other, brand="globex", inbound_message_id="SM-stopall",
            text="STOPALL", to_number=MOVED,
        )  # fmt: skip
        await runtime.usecases.review.ctx.ledger.append([text, late, stopall])
        await runtime.texts_read.wait()
        assert runtime.ledger is not None
        ask = dict(phone=PHONE, brand="globex", campaign="deals")
        for _ in range(2):  # a second reading, as after a restart, holds it once still
            await runtime.pool.execute("UPDATE texts_read_under SET rules = 'older rules'")
            await runtime.pool.execute("DELETE FROM texts_read_to")
            assert await runtime.read_texts_on()
            ends = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)
            fresh = ConsistencyToken({(Stream.SUBSCRIBERS, p): o for p, o in ends.items()})
            token = fresh.encode()
            assert await reasons(c, token, clock.now) == [api.REASON_REVOCATION_PENDING_REVIEW] * 3
            check = await c.CanSend(api.CanSendRequest(**ask, at_least_as_fresh=token))
            assert check.reason == api.REASON_REVOCATION_PENDING_REVIEW, check
            queue = await c.ListRevocationCandidates(
                api.ListRevocationCandidatesRequest(brand="globex", at_least_as_fresh=token)
            )
            held = sorted(
                (e.event.phone, e.event.revocation_candidate_flagged.inbound_message_id)
                for e in queue.candidates
            )
            assert held == [(PHONE, "SM-moved"), (other, "SM-stopall")]
            for_acme = await c.ListRevocationCandidates(
                api.ListRevocationCandidatesRequest(brand="acme", at_least_as_fresh=token)
            )
            assert sorted(e.event.phone for e in for_acme.candidates) == [PHONE, other]
            assert "acme" not in str(queue)
