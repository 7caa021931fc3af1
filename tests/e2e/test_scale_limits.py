"""The limits of what the service stores (the digest the replica holds, the view,
the ledger's envelope) through a real gRPC client on the real Kafka broker and
PostgreSQL: a number's facts at the edges of what is kept must give the answers
the policy gives, never a quieter one."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb
from google.protobuf.duration_pb2 import Duration

from ledger.ports import Stream
from services.bootstrap import StartError
from tests.e2e.harness import Clock, client, define, opt_in, sent, serving, ts

pytestmark = pytest.mark.asyncio(loop_scope="session")

PHONE = "+14155552671"  # Los Angeles


def message(phone: str, at, campaign: str = "monthly") -> api.SentMessage:
    return api.SentMessage(
        phone=phone,
        campaign=campaign,
        message_id=f"SM{uuid.uuid4().hex[:12]}",
        occurred_at=ts(at),
        included_opt_out_language=True,
        identified_sender=True,
    )


async def test_a_send_stamped_ahead_keeps_the_month_old_send_a_monthly_cap_counts(serve):
    """A cap of two a month (31 days, the longest window there is): a send a minute
    inside the window, then one stamped four minutes ahead of the service's clock (a
    sender's clock ahead, within the accepted skew). Both count, so the cap is
    reached. The fold kept sends only back to 31 days before its newest, which
    dropped the first, and CanSend allowed a third."""
    clock = Clock()
    cap = lpb.FrequencyCap(limit=2, window=Duration(seconds=31 * 86400))
    campaign = define("acme", "monthly", clock.now - timedelta(days=60), frequency_caps=[cap])
    runtime = await serve(clock=clock, campaigns=[campaign])
    month = timedelta(days=31)
    async with client(runtime.address) as c:
        await c.RecordOptIn(opt_in(PHONE, "acme", "monthly", clock.now - timedelta(days=40)))
        first = message(PHONE, clock.now - month + timedelta(minutes=1))
        ahead = message(PHONE, clock.now + timedelta(minutes=4))
        w = await c.RecordMessagesSent(
            api.RecordMessagesSentRequest(
                request_id=uuid.uuid4().hex, brand="acme", messages=[first, ahead]
            )
        )
        answer = await c.CanSend(
            api.CanSendRequest(
                phone=PHONE,
                brand="acme",
                campaign="monthly",
                at_least_as_fresh=w.consistency_token,
            )
        )
    assert not answer.allowed, answer
    assert answer.reason == api.REASON_FREQUENCY_CAP_REACHED
    assert set(w.event_ids) <= set(answer.evidence_event_ids)


async def test_subscriber_partitions_added_under_a_running_service_fail_checks_closed(
    serve, kafka_bootstrap
):
    """The service refuses to start on a subscriber topic with another partition
    count: phones would move between partitions. Partitions added while it runs were
    taken up by its producer at its next metadata refresh, while the freshness guard
    kept waiting on each phone's partition as counted at start, so a check could read
    past a STOP written to the new one. Once the ledger shows the new count, checks
    fail closed."""
    clock = Clock()
    runtime = await serve(
        clock=clock, campaigns=[define("acme", "monthly", clock.now - timedelta(days=1))]
    )
    assert runtime.settings.kafka is not None
    topic = runtime.settings.kafka.topic(Stream.SUBSCRIBERS)
    async with client(runtime.address) as c:
        w = await c.RecordOptIn(opt_in(PHONE, "acme", "monthly", clock.now - timedelta(hours=1)))
        check = api.CanSendRequest(phone=PHONE, brand="acme", campaign="monthly")
        fresh = api.CanSendRequest(at_least_as_fresh=w.consistency_token)
        fresh.MergeFrom(check)
        before = await c.CanSend(fresh)
        assert before.allowed, before
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            count = runtime.settings.kafka.subscriber_partitions
            await admin.create_partitions({topic: NewPartitions(total_count=count + 4)})
        finally:
            await admin.close()
        # What the producer's periodic metadata refresh (5 minutes) would do, once
        # the brokers know of the new partitions.
        producer = runtime.ledger._producer
        for _ in range(100):
            await producer.client.force_metadata_update()
            if len(await producer.partitions_for(topic)) > count:
                break
            await asyncio.sleep(0.1)
        # A read may use the observation made just before the change (the freshness
        # rule's one interval): the ones after it must fail closed.
        for _ in range(100):
            after = await c.CanSend(check)
            if not after.allowed:
                break
            await asyncio.sleep(0.1)
    assert not after.allowed, after
    assert after.reason == api.REASON_NOT_CONSISTENT


async def test_a_view_built_from_other_topics_is_refused(tmp_path, postgres_dsn, kafka_bootstrap):
    """The view's positions are per stream and partition, not per topic: a view left
    from topics since deleted (or another prefix, or another cluster) held positions
    past the new topics' ends. The projector skipped the new facts below them as
    applied, and the guard took the view for caught up: a STOP acknowledged on the
    new topics was never read, and CanSend allowed the send, given the STOP's own
    token. A view ahead of the ledger's end is no view of this ledger: the service
    refuses to start on it (and a running one fails its observations, so checks fail
    closed)."""
    clock = Clock()
    campaign = define("acme", "monthly", clock.now - timedelta(days=1))
    async with (
        serving(
            tmp_path, postgres_dsn, kafka_bootstrap, name="old", clock=clock, campaigns=[campaign]
        ) as old,
        client(old.address) as c,
    ):
        for hours in (3, 2):  # the old topics' partition runs ahead
            at = clock.now - timedelta(hours=hours)
            await c.RecordOptIn(opt_in(PHONE, "acme", "monthly", at))
    with pytest.raises(StartError, match="view in CONSENT_POSTGRES_DSN is not one of this"):
        async with serving(tmp_path, postgres_dsn, kafka_bootstrap, name="new", clock=clock):
            pass


async def test_a_cap_of_150_names_sends_a_sender_can_hand_back_and_a_batch_fits(serve):
    """A cap of 150 a month, reached. Its denial named every counted send, 150 ids:
    a sender copying it into ``relied_on`` was refused (at most 100 ids), and a
    CanSendBatch of 1,000 such numbers passed gRPC's 4 MB receive limit. It names
    the oldest and the latest counted send, and the count in its detail."""
    clock = Clock()
    cap = lpb.FrequencyCap(limit=150, window=Duration(seconds=31 * 86400))
    campaign = define("acme", "monthly", clock.now - timedelta(days=60), frequency_caps=[cap])
    runtime = await serve(clock=clock, campaigns=[campaign])
    async with client(runtime.address) as c:
        await c.RecordOptIn(opt_in(PHONE, "acme", "monthly", clock.now - timedelta(days=40)))
        messages = [message(PHONE, clock.now - timedelta(days=20, minutes=-i)) for i in range(150)]
        w = await c.RecordMessagesSent(
            api.RecordMessagesSentRequest(
                request_id=uuid.uuid4().hex, brand="acme", messages=messages
            )
        )
        ask = api.CanSendRequest(
            phone=PHONE, brand="acme", campaign="monthly", at_least_as_fresh=w.consistency_token
        )
        answer = await c.CanSend(ask)
        assert not answer.allowed, answer
        assert answer.reason == api.REASON_FREQUENCY_CAP_REACHED
        assert "150 of 150" in answer.detail
        # The opt-in that stands, the oldest and the latest counted send, the rules.
        assert len(answer.evidence_event_ids) == 4
        assert list(answer.evidence_event_ids[1:3]) == [w.event_ids[0], w.event_ids[-1]]
        relied = api.ReliedOnAnswer(
            consistency_token=answer.consistency_token,
            allowed=answer.allowed,
            reason=answer.reason,
            evidence_event_ids=answer.evidence_event_ids,
        )
        over = await c.RecordMessageSent(
            sent(PHONE, "acme", "monthly", clock.now, relied_on=relied)
        )
        assert len(over.event_ids) == 1
        batch = await c.CanSendBatch(
            api.CanSendBatchRequest(
                brand="acme",
                campaign="monthly",
                phones=[PHONE] * 1000,
                at_least_as_fresh=over.consistency_token,
            )
        )
    assert len(batch.decisions) == 1000
    assert all(d.evidence_event_ids[-2] == over.event_ids[0] for d in batch.decisions)
    assert all(len(d.evidence_event_ids) == 4 for d in batch.decisions)
