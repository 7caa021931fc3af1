"""The consistency rule across service instances, on the real broker and database.

Default reads (no token) never allow a send after an opt-out that was
acknowledged at least one freshness refresh interval earlier; reads with the
write's token see it at once; a projection that stops catching up makes reads
fail closed instead of answering from stale state.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import UTC, timedelta

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from ledger.ports import ConsistencyToken, Stream
from services.adapters.digest_replica import DigestReplica
from services.bootstrap import Runtime
from services.settings import FreshnessSettings
from tests.e2e.harness import (
    already_recorded,
    client,
    define,
    held_info,
    kafka_settings,
    noon_in_los_angeles,
    opt_in,
    opt_out,
    precondition_violations,
    running,
    sent,
    service_settings,
    status_details,
    ts,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

REFRESH = 0.05


@pytest.fixture
async def two_instances(tmp_path, postgres_dsn, kafka_bootstrap):
    """Two instances on one ledger and view; CanSend reads each one's in-memory
    replica of the view."""
    when = noon_in_los_angeles()
    prefix = f"cons-{uuid.uuid4().hex[:8]}."
    group = f"group-{uuid.uuid4().hex[:8]}"
    runtimes = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        settings = service_settings(
            tmp_path / name,
            postgres_dsn,
            kafka=kafka_settings(kafka_bootstrap, prefix),
            group=group,
        )
        runtime = Runtime(settings, clock=lambda: when)
        await runtime.start()
        runtimes.append(runtime)
        assert runtime.usecases is not None
        assert isinstance(runtime.usecases.checks.reads, DigestReplica)
    async with client(runtimes[0].address) as admin:
        w = await admin.DefineCampaign(define("acme", "promo", when - timedelta(days=1)))
    for runtime in runtimes:
        assert await runtime.guard.wait_for_token(ConsistencyToken.decode(w.consistency_token))
    try:
        yield runtimes, when
    finally:
        for runtime in runtimes:
            await runtime.stop()


async def test_an_opt_out_written_through_one_instance_is_honoured_by_another(two_instances):
    (a, b), when = two_instances
    async with client(a.address, "acme-app") as ca, client(b.address, "acme-app") as cb:
        for i in range(10):
            phone = f"+1415555{2600 + i:04d}"
            granted = await ca.RecordOptIn(opt_in(phone, "acme", "promo", when))
            fresh = await cb.CanSend(
                api.CanSendRequest(
                    phone=phone,
                    brand="acme",
                    campaign="promo",
                    at_least_as_fresh=granted.consistency_token,
                )
            )
            assert fresh.allowed, fresh
            await ca.RecordOptOut(
                opt_out(
                    phone,
                    "acme",
                    "promo",
                    when,
                    channel=lpb.REVOCATION_CHANNEL_KEYWORD,
                    text="STOP",
                )
            )
            # Acknowledged by A. One refresh interval later, B must say no without a token.
            await asyncio.sleep(2 * REFRESH)
            answer = await cb.CanSend(
                api.CanSendRequest(phone=phone, brand="acme", campaign="promo")
            )
            assert not answer.allowed, (i, answer)
            assert answer.reason in (api.REASON_REVOKED, api.REASON_NOT_CONSISTENT)


async def test_the_write_token_gives_read_your_writes_on_another_instance(two_instances):
    (a, b), when = two_instances
    async with client(a.address, "acme-app") as ca, client(b.address, "acme-app") as cb:
        phone = "+14155552700"
        await ca.RecordOptIn(opt_in(phone, "acme", "promo", when))
        out = await ca.RecordOptOut(
            opt_out(phone, "acme", "promo", when, channel=lpb.REVOCATION_CHANNEL_WEB)
        )
        answer = await cb.CanSend(
            api.CanSendRequest(
                phone=phone, brand="acme", campaign="promo", at_least_as_fresh=out.consistency_token
            )
        )
        assert not answer.allowed and answer.reason == api.REASON_REVOKED


async def test_reads_fail_closed_when_the_projection_stops_catching_up(two_instances):
    (a, b), when = two_instances
    async with client(a.address, "acme-app") as ca, client(b.address, "acme-app") as cb:
        phone = "+14155552701"
        granted = await ca.RecordOptIn(opt_in(phone, "acme", "promo", when))
        ok = await cb.CanSend(
            api.CanSendRequest(
                phone=phone,
                brand="acme",
                campaign="promo",
                at_least_as_fresh=granted.consistency_token,
            )
        )
        assert ok.allowed
        for runtime in (a, b):  # every projector in the group stops
            for task in runtime._tasks:
                task.cancel()
        await asyncio.gather(*(t for r in (a, b) for t in r._tasks), return_exceptions=True)
        await ca.RecordOptOut(
            opt_out(phone, "acme", "promo", when, channel=lpb.REVOCATION_CHANNEL_CALL)
        )
        await asyncio.sleep(2 * REFRESH)
        b.guard._settings = type(b.guard._settings)(refresh_interval=REFRESH, wait_bound=0.3)
        answer = await cb.CanSend(api.CanSendRequest(phone=phone, brand="acme", campaign="promo"))
        assert not answer.allowed and answer.reason == api.REASON_NOT_CONSISTENT


async def test_a_request_id_reused_on_another_instance_is_refused(two_instances):
    (a, b), when = two_instances
    phone = "+14155552702"

    async with client(a.address, "acme-app") as ca, client(b.address, "acme-app") as cb:
        first = await ca.RecordOptIn(opt_in(phone, "acme", "promo", when, request_id="r1"))
        # At once, through B, whose view may not have the opt-in yet: "r1" again, for
        # a STOP. A client's bug: refused, naming what "r1" recorded, and the STOP
        # held for review, so that both instances deny the number meanwhile.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await cb.RecordOptOut(
                opt_out(phone, "acme", "promo", when + timedelta(seconds=1), "r1")
            )
        assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert already_recorded(refused.value) == list(first.event_ids)
        held = held_info(refused.value)
        assert held is not None, refused.value.details()
        for c in (ca, cb):
            answer = await c.CanSend(
                api.CanSendRequest(
                    phone=phone,
                    brand="acme",
                    campaign="promo",
                    at_least_as_fresh=held["consistency_token"],
                )
            )
            assert answer.reason == api.REASON_REVOCATION_PENDING_REVIEW, answer
            assert list(answer.evidence_event_ids) == [held["candidate_event_id"]]

        partition = a.ledger.partition_for(phone)
        assert partition is not None
        written = await a.ledger.read(Stream.SUBSCRIBERS, partition, 0)
        mine = [r.event for r in written if r.event.phone == phone]
        assert [type(e).__name__ for e in mine] == ["ConsentGranted", "RevocationCandidateFlagged"]
        assert mine[1].request_id != "r1"  # the hold's own id, not the client's


async def test_two_requests_under_one_id_at_once_through_two_instances_record_one(two_instances):
    (a, b), when = two_instances
    async with client(a.address, "acme-app") as ca, client(b.address, "acme-app") as cb:
        for i in range(4):
            phone, rid = f"+1415555271{i}", f"race-{i}"
            first, second = (ca, cb) if i % 2 else (cb, ca)
            results = await asyncio.gather(
                first.RecordOptIn(opt_in(phone, "acme", "promo", when, request_id=rid)),
                second.RecordOptOut(opt_out(phone, "acme", "promo", when, rid)),
                return_exceptions=True,
            )
            errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
            (won,) = [r for r in results if not isinstance(r, BaseException)]
            assert [e.code() for e in errors] == [grpc.StatusCode.ALREADY_EXISTS]
            assert already_recorded(errors[0]) == list(won.event_ids)
            # The STOP refused is held for review (perhaps appended before what won,
            # still on its way to the ledger); the opt-in refused is not.
            held = held_info(errors[0])
            assert (held is not None) == (results[1] is errors[0]), errors[0].details()
            expected = list(won.event_ids) + ([held["candidate_event_id"]] if held else [])
            fresh = held["consistency_token"] if held else won.consistency_token
            events = await ca.ListEvents(
                api.ListEventsRequest(phone=phone, brand="acme", at_least_as_fresh=fresh)
            )
            assert sorted(e.event.event_id for e in events.events) == sorted(expected)


async def test_one_sender_number_claimed_through_two_instances_at_once_goes_to_one(
    two_instances,
):
    """Each instance checks that a number is free, then appends its claim. Taken one
    at a time across instances (the view's turn for campaign writes), the second
    checks after the first claim is recorded and is refused; at the same moment,
    without turns, both would be answered OK while the ledger gives the number to
    the first alone."""
    (a, b), when = two_instances
    async with client(a.address) as ca, client(b.address) as cb:
        for i in range(6):
            number = f"+1415555{2800 + i:04d}"
            first, second = (ca, cb) if i % 2 == 0 else (cb, ca)
            results = await asyncio.gather(
                first.DefineCampaign(define("acme", f"race{i}a", when, [number])),
                second.DefineCampaign(define("acme", f"race{i}b", when, [number])),
                return_exceptions=True,
            )
            won = [r for r in results if isinstance(r, api.DefineCampaignResponse)]
            lost = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
            assert len(won) == 1 and len(lost) == 1, results
            assert lost[0].code() == grpc.StatusCode.FAILED_PRECONDITION
            [(field, reason)] = precondition_violations(lost[0])
            assert field == "policy.sender_numbers[0]" and "in use by campaign acme/race" in reason

            winner = f"race{i}a" if results[0] is won[0] else f"race{i}b"
            for runtime in (a, b):
                token = ConsistencyToken.decode(won[0].consistency_token)
                assert await runtime.guard.wait_for_token(token)
                assert await runtime.view.campaign_for_number(number) == ("acme", winner)


async def test_one_campaign_defined_through_two_instances_at_once_is_defined_once(
    two_instances,
):
    """Two definitions of one campaign, listing no number, through two instances at
    once: taken in turns as claims of a number are, the second finds the campaign
    defined and is refused; without turns both were recorded, the second a change
    of the rules, dated as it pleased, that no check of ChangeCampaignPolicy saw."""
    (a, b), when = two_instances
    before = await a.ledger.end_offsets(Stream.CAMPAIGNS)
    async with client(a.address) as ca, client(b.address) as cb:
        for i in range(4):
            first, second = (ca, cb) if i % 2 == 0 else (cb, ca)
            gated = define("acme", f"twice{i}", when - timedelta(days=2), age_gated=True)
            results = await asyncio.gather(
                first.DefineCampaign(define("acme", f"twice{i}", when)),
                second.DefineCampaign(gated),
                return_exceptions=True,
            )
            lost = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
            assert len(lost) == 1, results
            assert lost[0].code() == grpc.StatusCode.FAILED_PRECONDITION, lost[0]
            assert "already defined" in lost[0].details(), lost[0].details()
    after = await a.ledger.end_offsets(Stream.CAMPAIGNS)
    assert sum(after.values()) - sum(before.values()) == 4


@pytest.mark.parametrize("ledger", ["kafka", "postgres"])
async def test_an_instance_honours_its_own_opt_out_at_once_without_a_token(
    ledger, tmp_path, postgres_dsn, kafka_bootstrap
):
    """The refresh interval's window is for writes another instance acknowledged: a
    read sent to the instance that acknowledged the opt-out, right after, says no."""
    when = noon_in_los_angeles()
    kafka = kafka_settings(kafka_bootstrap, f"own-{uuid.uuid4().hex[:8]}.")
    settings = service_settings(tmp_path, postgres_dsn, kafka=kafka if ledger == "kafka" else None)
    async with (
        running(settings, clock=lambda: when) as runtime,
        client(runtime.address) as admin,
        client(runtime.address, "acme-app") as c,
    ):
        w = await admin.DefineCampaign(define("acme", "promo", when - timedelta(days=1)))
        phones = [f"+1415555{2800 + i:04d}" for i in range(40)]
        token = ConsistencyToken.decode(w.consistency_token)
        for phone in phones:
            granted = await c.RecordOptIn(opt_in(phone, "acme", "promo", when))
            token = token.merge(ConsistencyToken.decode(granted.consistency_token))
        assert await runtime.guard.wait_for_token(token)
        batch = api.CanSendBatchRequest(brand="acme", campaign="promo", phones=phones)
        assert all(d.allowed for d in (await c.CanSendBatch(batch)).decisions)

        for i, phone in enumerate(phones[:30]):
            await c.RecordOptOut(
                opt_out(phone, "acme", "promo", when, channel=lpb.REVOCATION_CHANNEL_WEB)
            )
            if i % 3 == 0:
                answer = await c.CanSend(
                    api.CanSendRequest(phone=phone, brand="acme", campaign="promo")
                )
                assert not answer.allowed and answer.reason == api.REASON_REVOKED, (i, answer)
            elif i % 3 == 1:  # a batch of one number waits for its partition
                small = api.CanSendBatchRequest(brand="acme", campaign="promo", phones=[phone])
                (decision,) = (await c.CanSendBatch(small)).decisions
                assert not decision.allowed and decision.reason == api.REASON_REVOKED, i
            else:  # a batch of more numbers than are hashed waits for every partition
                decisions = (await c.CanSendBatch(batch)).decisions
                assert [d.allowed for d in decisions] == [j > i for j in range(40)], i


def candidate_resolved(err: grpc.aio.AioRpcError) -> dict[str, str] | None:
    """The metadata of a refusal's ``ErrorInfo`` saying another resolution won."""
    status = rpc_status.from_call(err)
    for detail in status.details if status else []:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info) and info.reason == "CANDIDATE_ALREADY_RESOLVED":
            return dict(info.metadata)
    return None


async def test_two_reviewers_resolving_one_candidate_at_once_through_two_instances(
    two_instances,
):
    """Before, both reviewers found the candidate pending, both resolutions were
    recorded and both were told OK, though only one decision could stand (a
    "revoked" beside a "dismissed" revokes). Now the first keeps the candidate and
    the other is refused FAILED_PRECONDITION naming the resolution that won; a retry
    of the winner is still answered OK."""
    (a, b), when = two_instances
    async with client(a.address) as ca, client(b.address) as cb:
        for i in range(6):
            phone = f"+1415555{2900 + i:04d}"
            kept = await ca.RecordOptOut(opt_out(phone, "acme", "nope", when))
            (candidate,) = kept.event_ids
            assert await b.guard.wait_for_token(ConsistencyToken.decode(kept.consistency_token))
            requests = [
                api.ResolveRevocationCandidateRequest(
                    request_id=uuid.uuid4().hex,
                    phone=phone,
                    brand="acme",
                    candidate_event_id=candidate,
                    resolution=resolution,
                    occurred_at=ts(when),
                    resolved_by=who,
                )
                for resolution, who in (
                    (lpb.CANDIDATE_RESOLUTION_DISMISSED, "alice"),
                    (lpb.CANDIDATE_RESOLUTION_REVOKED, "bob"),
                )
            ]
            first, second = (ca, cb) if i % 2 == 0 else (cb, ca)
            results = await asyncio.gather(
                first.ResolveRevocationCandidate(requests[0]),
                second.ResolveRevocationCandidate(requests[1]),
                return_exceptions=True,
            )
            won = [r for r in results if isinstance(r, api.ResolveRevocationCandidateResponse)]
            lost = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
            assert len(won) == 1 and len(lost) == 1, results
            assert lost[0].code() == grpc.StatusCode.FAILED_PRECONDITION, lost[0]
            info = candidate_resolved(lost[0])
            assert info is not None, lost[0].details()
            winner = requests[results.index(won[0])]
            assert info["candidate_event_id"] == candidate
            assert info["event_id"] == won[0].event_ids[0]
            if "resolution" in info:  # the winner was in the view: its decision is named
                assert info["resolved_by"] == winner.resolved_by
                assert info["resolution"] in ("dismissed", "revoked")
                assert info["resolved_by"] in lost[0].details()
            again = await first.ResolveRevocationCandidate(winner)
            assert list(again.event_ids) == list(won[0].event_ids)
            # A reviewer who comes after, through either instance, is told the same.
            late = requests[1 - results.index(won[0])]
            late.request_id = uuid.uuid4().hex
            with pytest.raises(grpc.aio.AioRpcError) as after:
                await second.ResolveRevocationCandidate(late)
            assert after.value.code() == grpc.StatusCode.FAILED_PRECONDITION, after.value
            told = candidate_resolved(after.value)
            assert told is not None, after.value.details()
            assert told["event_id"] == won[0].event_ids[0]
            assert told["resolved_by"] == winner.resolved_by, told
            events = await ca.ListEvents(
                api.ListEventsRequest(
                    phone=phone, brand="acme", at_least_as_fresh=won[0].consistency_token
                )
            )
            resolutions = [
                e.event.revocation_candidate_resolved.resolved_by
                for e in events.events
                if e.event.event_type == "RevocationCandidateResolved"
            ]
            assert resolutions == [winner.resolved_by], resolutions


@pytest.fixture
async def slow_and_fast(tmp_path, postgres_dsn, kafka_bootstrap):
    """Two instances on one ledger and view: ``slow`` observes the ledger's end every
    1.5 s (``CONSENT_FRESHNESS_REFRESH_MS``), so its last observation may predate a
    write ``fast`` acknowledged; acme's campaign "capped" allows two messages a day."""
    when = noon_in_los_angeles()
    prefix = f"ack-{uuid.uuid4().hex[:8]}."
    group = f"group-{uuid.uuid4().hex[:8]}"
    runtimes = []
    for name, interval in (("slow", 1.5), ("fast", REFRESH)):
        (tmp_path / name).mkdir()
        settings = replace(
            service_settings(
                tmp_path / name,
                postgres_dsn,
                kafka=kafka_settings(kafka_bootstrap, prefix),
                group=group,
            ),
            freshness=FreshnessSettings(refresh_interval=interval, wait_bound=5.0),
        )
        runtime = Runtime(settings, clock=lambda: when)
        await runtime.start()
        runtimes.append(runtime)
    cap = lpb.FrequencyCap(limit=2, window=Duration(seconds=86400))
    capped = define("acme", "capped", when - timedelta(days=1), frequency_caps=[cap])
    async with client(runtimes[1].address) as admin:
        w = await admin.DefineCampaign(capped)
    for runtime in runtimes:
        assert await runtime.guard.wait_for_token(ConsistencyToken.decode(w.consistency_token))
    try:
        yield runtimes, when
    finally:
        for runtime in runtimes:
            await runtime.stop()


@pytest.mark.parametrize("write", ["RecordOptOut", "RecordMessageSent", "RecordMessagesSent"])
async def test_a_write_answered_as_recorded_before_is_read_as_the_instance_s_own(
    slow_and_fast, write
):
    """A write one instance answers as recorded before (a retry of an opt-out, a
    message sent before) was recorded through another instance a moment ago. Only
    appends were noted as the instance's own writes: its next check without a token
    read its copy of the view as of an observation older than the write, and allowed
    a send after the opt-out it had just acknowledged, or past the cap its answer
    had just confirmed. Now every write it answers is read as its own."""
    (slow, fast), when = slow_and_fast
    async with client(slow.address, "acme-app") as s, client(fast.address, "acme-app") as f:
        for i in range(3):
            phone = f"+1415555{3100 + i:04d}"
            granted = await f.RecordOptIn(opt_in(phone, "acme", "capped", when))
            for runtime in (slow, fast):
                assert await runtime.guard.wait_for_token(
                    ConsistencyToken.decode(granted.consistency_token)
                )
            asked = api.CanSendRequest(phone=phone, brand="acme", campaign="capped")
            assert (await s.CanSend(asked)).allowed
            sends = [
                api.SentMessage(
                    phone=phone,
                    campaign="capped",
                    message_id=f"SM-ack-{i}-{k}",
                    occurred_at=ts(when - timedelta(minutes=2 - k)),
                    included_opt_out_language=True,
                    identified_sender=True,
                )
                for k in range(2)
            ]
            if write == "RecordOptOut":
                request = opt_out(phone, "acme", "capped", when)
                first = await f.RecordOptOut(request)
                found = fast.guard.wait_for_token(ConsistencyToken.decode(first.consistency_token))
                assert await found
                again = [await s.RecordOptOut(request)]
            else:
                first = await f.RecordMessagesSent(
                    api.RecordMessagesSentRequest(
                        request_id=f"fast-{i}", brand="acme", messages=sends
                    )
                )
                found = fast.guard.wait_for_token(ConsistencyToken.decode(first.consistency_token))
                assert await found
                if write == "RecordMessagesSent":
                    again = [
                        await s.RecordMessagesSent(
                            api.RecordMessagesSentRequest(
                                request_id=f"slow-{i}", brand="acme", messages=sends
                            )
                        )
                    ]
                else:
                    again = [
                        await s.RecordMessageSent(
                            sent(
                                m.phone,
                                "acme",
                                m.campaign,
                                m.occurred_at.ToDatetime(UTC),
                                f"slow-{i}-{k}",
                                message_id=m.message_id,
                            )
                        )
                        for k, m in enumerate(sends)
                    ]
            answered = [event_id for a in again for event_id in a.event_ids]
            assert answered == list(first.event_ids)  # recorded once, through ``fast``
            answer = await s.CanSend(asked)
            batch = await s.CanSendBatch(
                api.CanSendBatchRequest(brand="acme", campaign="capped", phones=[phone])
            )
            assert not answer.allowed, (i, answer)
            assert not batch.decisions[0].allowed, (i, batch)


async def test_a_token_past_the_ledgers_end_is_refused_by_every_check(two_instances):
    """A token no write of this ledger gave (past a partition's end, or of a partition
    it lacks) will never be applied: the checks waited out their bound and answered
    NOT_CONSISTENT, which a caller retries forever, where the audit reads refuse it.
    A token of this ledger is answered as before."""
    (a, _), when = two_instances
    phone = "+14155552702"
    async with client(a.address, "acme-app") as c:
        granted = await c.RecordOptIn(opt_in(phone, "acme", "promo", when))
        target = dict(brand="acme", campaign="promo")
        calls = [
            call
            for token in ("subscribers:0:999999", "campaigns:0:1,subscribers:99:1")
            for call in (
                c.CanSend(api.CanSendRequest(phone=phone, at_least_as_fresh=token, **target)),
                c.CanSendBatch(
                    api.CanSendBatchRequest(phones=[phone], at_least_as_fresh=token, **target)
                ),
                c.CanSendAsOf(
                    api.CanSendAsOfRequest(
                        phone=phone, at=ts(when), at_least_as_fresh=token, **target
                    )
                ),
            )
        ]
        # Asked at once: each waits out the freshness bound before it is refused; a
        # bound of a second (of the fixture's five) proves it as well.
        bound = a.guard._settings
        a.guard._settings = replace(bound, wait_bound=1.0)
        try:
            answered = await asyncio.gather(*calls, return_exceptions=True)
        finally:
            a.guard._settings = bound
        for refused in answered:
            assert isinstance(refused, grpc.aio.AioRpcError), refused
            assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT, refused
            ((field, why),) = status_details(refused)
            assert field == "at_least_as_fresh" and "past the ledger's end" in why, why
        answer = await c.CanSend(
            api.CanSendRequest(phone=phone, at_least_as_fresh=granted.consistency_token, **target)
        )
        assert answer.allowed, answer
