"""Campaign health through the real gRPC server, on the real Kafka ledger and
PostgreSQL: delivery outcomes recorded and refused by field, the error-rate flag
above 6 %, the opt-out flag above 0.3 % (and not at it), each opt-out attributed
to the message before it, the window's bounds, another brand refused, the CLI and
the metrics."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb

from ledger.ports import ConsistencyToken
from services.bootstrap import Runtime
from tests.e2e.harness import (
    TOKENS,
    client,
    define,
    opt_out,
    precondition_violations,
    sent,
    status_details,
    ts,
)
from tests.e2e.test_readme import answers, run_after_walk_through

pytestmark = pytest.mark.asyncio(loop_scope="session")

A, B, C, D = "+12125550171", "+12125550172", "+12125550173", "+12125550174"
"""promo sends from A and B, news from C, edge from D."""
NEWS = 999  # news's own numbers; with the one promo number it also texts, 1,000 sends


def promo_phone(i: int) -> str:
    return f"+1415556{i:04d}"


def news_phone(i: int) -> str:
    return f"+1646555{i:04d}"


@pytest.fixture
async def service(serve) -> Runtime:
    return await serve(name="health")


def _outcome(
    sent: api.RecordMessageSentRequest, outcome: int, at: datetime, code: str = ""
) -> api.RecordDeliveryOutcomeRequest:
    return api.RecordDeliveryOutcomeRequest(
        request_id=uuid.uuid4().hex,
        phone=sent.phone,
        brand="acme",
        message_id=sent.message_id,
        outcome=outcome,
        error_code=code,
        occurred_at=ts(at),
    )


async def retried(method, request):
    """``method(request)``, again on UNAVAILABLE, as a caller does: on a loaded
    machine the view may not catch up within a read's wait, and the same request
    again is harmless (a write's request id makes it so)."""
    for attempt in range(5):
        try:
            return await method(request, timeout=120)
        except grpc.aio.AioRpcError as err:
            if err.code() is not grpc.StatusCode.UNAVAILABLE or attempt == 4:
                raise
            await asyncio.sleep(1)
    raise AssertionError("unreachable")


def _counts(response: api.GetCampaignHealthResponse, campaign: str, number: str | None = None):
    [c] = [c for c in response.campaigns if c.campaign == campaign]
    if number is None:
        return c.counts
    [s] = [s for s in c.senders if s.from_number == number]
    return s.counts


def _triple(counts: api.HealthCounts) -> tuple[int, int, int]:
    return (counts.messages_sent, counts.opt_outs, counts.delivery_errors)


async def test_campaign_health_flags_errors_over_six_percent_and_opt_outs_over_three_in_1000(
    tmp_path,
    service,
):
    runtime = service
    day = (datetime.now(UTC) - timedelta(days=3)).replace(hour=0, minute=0, second=0, microsecond=0)
    end = day + timedelta(days=1)
    async with client(runtime.address) as admin:
        for name, numbers in (("promo", [A, B]), ("news", [C]), ("edge", [D])):
            w = await retried(
                admin.DefineCampaign, define("acme", name, day - timedelta(days=5), numbers)
            )
        assert await runtime.guard.wait_for_token(
            ConsistencyToken.decode(w.consistency_token), timeout=60
        )
    async with client(runtime.address, "acme-app") as c:
        gate = asyncio.Semaphore(32)
        tokens: list[str] = []

        async def call(rpc: str, request):
            async with gate:
                written = await retried(getattr(c, rpc), request)
            tokens.append(written.consistency_token)
            return written

        async def every(rpc: str, requests) -> None:
            await asyncio.gather(*(call(rpc, r) for r in requests))

        hour = day + timedelta(hours=1)
        # The number promo texts last (from B) had a news text before: its STOPALL
        # goes to promo's message, not to news's.
        shared = promo_phone(99)
        await call(
            "RecordMessageSent",
            sent(shared, "acme", "news", day + timedelta(minutes=30), from_number=C),
        )
        promo = [
            sent(
                promo_phone(i),
                "acme",
                "promo",
                hour + timedelta(seconds=i),
                from_number=A if i < 50 else B,
            )
            for i in range(100)
        ]
        news = [
            sent(news_phone(i), "acme", "news", hour + timedelta(seconds=i), from_number=C)
            for i in range(NEWS)
        ]
        await every("RecordMessageSent", [*promo, *news])
        later = day + timedelta(hours=2)
        # 7 of promo's 100 failed, all of them from A (7 of its 50); one from B
        # failed, then was delivered: the later report stands.
        codes = ["30003", "30005", "30006", "30007", "30008", "30003", "30003"]
        failed = [
            _outcome(
                s,
                lpb.DELIVERY_OUTCOME_FAILED if i % 2 else lpb.DELIVERY_OUTCOME_UNDELIVERABLE,
                later,
                codes[i],
            )
            for i, s in enumerate(promo[:7])
        ]
        delivered = [_outcome(s, lpb.DELIVERY_OUTCOME_DELIVERED, later) for s in promo[7:]]
        await every("RecordDeliveryOutcome", [*failed, *delivered])
        await call(
            "RecordDeliveryOutcome",
            _outcome(promo[50], lpb.DELIVERY_OUTCOME_FAILED, day + timedelta(minutes=90), "30003"),
        )
        stops = day + timedelta(hours=3)
        await call("RecordOptOut", opt_out(shared, "acme", None, stops))  # STOPALL
        # Three opt-outs of news's 1,000 messages: 0.3 %, at the limit, not above it.
        await every(
            "RecordOptOut", [opt_out(news_phone(i), "acme", "news", stops) for i in range(3)]
        )
        # edge: a send at the window's start counts, one at its end does not; a send
        # before the window and the opt-out it drew inside it count in the window
        # before; an opt-out with no message before it is counted apart.
        await every(
            "RecordMessageSent",
            [
                sent("+13125550001", "acme", "edge", day, from_number=D),
                sent("+13125550002", "acme", "edge", end, from_number=D),
                sent("+13125550003", "acme", "edge", day - timedelta(minutes=1), from_number=D),
            ],
        )
        await every(
            "RecordOptOut",
            [
                opt_out("+13125550003", "acme", "edge", stops),
                opt_out("+13125550004", "acme", "edge", stops),
            ],
        )
        fresh = ConsistencyToken({})
        for token in tokens:
            fresh = fresh.merge(ConsistencyToken.decode(token))
        assert await runtime.guard.wait_for_token(fresh, timeout=120)

        request = api.GetCampaignHealthRequest(
            brand="acme", start_time=ts(day), end_time=ts(end), at_least_as_fresh=fresh.encode()
        )
        health = await retried(c.GetCampaignHealth, request)

        assert [x.campaign for x in health.campaigns] == ["edge", "news", "promo"]
        assert (health.opt_out_limit, health.error_limit) == (0.003, 0.06)
        assert health.flagged
        promo_total = _counts(health, "promo")
        assert _triple(promo_total) == (100, 1, 7)
        assert promo_total.error_rate == pytest.approx(0.07) and promo_total.error_flagged
        assert promo_total.opt_out_flagged  # 1 in 100
        from_a, from_b = _counts(health, "promo", A), _counts(health, "promo", B)
        assert _triple(from_a) == (50, 0, 7) and from_a.error_flagged
        assert not from_a.opt_out_flagged
        assert _triple(from_b) == (50, 1, 0) and not from_b.error_flagged
        news_total = _counts(health, "news")
        assert _triple(news_total) == (1000, 3, 0)
        assert news_total.opt_out_rate == pytest.approx(0.003)
        assert not news_total.opt_out_flagged and not news_total.error_flagged
        assert _triple(_counts(health, "edge")) == (1, 0, 0)
        assert health.unattributed_opt_outs == 1

        # A fourth opt-out of news: 0.4 %, above the limit.
        w = await call("RecordOptOut", opt_out(news_phone(3), "acme", "news", stops))
        one = await retried(
            c.GetCampaignHealth,
            api.GetCampaignHealthRequest(
                brand="acme",
                campaign="news",
                start_time=ts(day),
                end_time=ts(end),
                at_least_as_fresh=w.consistency_token,
            ),
        )
        assert [x.campaign for x in one.campaigns] == ["news"]
        assert _triple(one.campaigns[0].counts) == (1000, 4, 0)
        assert one.campaigns[0].counts.opt_out_flagged and one.flagged

        before = await retried(
            c.GetCampaignHealth,
            api.GetCampaignHealthRequest(
                brand="acme",
                campaign="edge",
                start_time=ts(day - timedelta(hours=1)),
                end_time=ts(day),
            ),
        )
        assert _triple(before.campaigns[0].counts) == (1, 1, 0)

    # Metrics: every outcome appended, by outcome, and the flags answered.
    registry = runtime.metrics.registry()
    outcomes = "consent_delivery_outcomes_total"
    assert registry.get_sample_value(outcomes, {"outcome": "failed"}) == 3 + 1
    assert registry.get_sample_value(outcomes, {"outcome": "undeliverable"}) == 4
    assert registry.get_sample_value(outcomes, {"outcome": "delivered"}) == 93
    assert registry.get_sample_value("consent_messages_sent_total") == 1 + 100 + NEWS + 3
    flags = "consent_campaign_health_flags_total"
    assert registry.get_sample_value(flags, {"flag": "error"}) == 2  # promo and A
    # promo and B; then news and C; then edge and D in the window before (1 in 1)
    assert registry.get_sample_value(flags, {"flag": "opt_out"}) == 2 + 2 + 2

    # The same answer streamed, after progress: from done 0, never going back, to 1.
    async with client(runtime.address, "acme-app") as c:
        streamed = api.StreamCampaignHealthRequest()
        streamed.ParseFromString(request.SerializeToString())  # the same fields
        stream = c.stub.StreamCampaignHealth(
            streamed, metadata=[("authorization", f"Bearer {c.token}")], timeout=120
        )
        items = [item async for item in stream]
        now = await retried(c.GetCampaignHealth, request)  # the fourth opt-out in
    *progress, last = items
    assert last.WhichOneof("item") == "health"
    assert all(p.WhichOneof("item") == "progress" for p in progress)
    shares = [p.progress.done for p in progress]
    events = [p.progress.events_read for p in progress]
    assert shares[0] == 0 and shares[-1] == 1 and shares == sorted(shares)
    assert events == sorted(events) and events[-1] > 1 + 100 + NEWS
    assert list(last.health.campaigns) == list(now.campaigns)
    assert _triple(_counts(last.health, "news")) == (1000, 4, 0)
    assert last.health.unattributed_opt_outs == now.unattributed_opt_outs
    assert last.consistency_token == progress[0].consistency_token

    # The CLI, as an auditor runs it: exit 1, the flagged rows marked.
    env = {**os.environ, "CONSENT_TOKEN": TOKENS["acme-app"][0]}
    done = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "services.cli",
            "audit",
            "health",
            "--brand",
            "acme",
            "--campaign",
            "promo",
            "--since",
            day.isoformat(),
            "--until",
            end.isoformat(),
            "--address",
            runtime.address,
            "--progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )
    assert done.returncode == 1, done.stderr
    # The progress line (standard error is no terminal: --progress asks for it).
    last_line = done.stderr.strip().splitlines()[-1]
    assert last_line.startswith("health [##############################] 100.0%  "), done.stderr
    assert " events  " in last_line and "/s  00:00 left" in last_line
    rows = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines() if line.strip()}
    assert rows["promo"] == ["100", "1", "0", "1.00%", "7", "7.00%", "OPT-OUTS", "ERRORS"]
    assert rows[A] == ["50", "0", "0", "0.00%", "7", "14.00%", "ERRORS"]
    assert rows[B] == ["50", "1", "0", "2.00%", "0", "0.00%", "OPT-OUTS"]

    # Interrupted after its first partition (the test hook acts as Ctrl-C), then run
    # again: it resumes, reads the rest, and prints what the whole run printed.
    whole = done.stdout.splitlines()[1:]  # all but the heading, with its read's token
    state = tmp_path / "health.resume"
    argv = [*done.args[:-1], "--resume", str(state)]
    hooked = {**env, "CONSENT_TEST_STOP_AFTER_EVENTS": "1"}
    stopped = await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, timeout=300, env=hooked
    )
    assert stopped.returncode == 130, stopped.stderr
    assert "1 partition(s) read are kept in" in stopped.stderr
    assert json.loads(state.read_text())["partitions_done"]
    resumed = await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, timeout=300, env=env
    )
    assert resumed.returncode == 1, resumed.stderr
    assert "resumed: 1 partition(s) read by the interrupted run" in resumed.stderr
    assert resumed.stdout.splitlines()[1:] == whole
    assert not state.exists()


async def test_delivery_outcomes_and_health_refuse_bad_input_by_field(service):
    runtime = service
    at = datetime.now(UTC) - timedelta(hours=1)
    async with client(runtime.address) as admin:
        w = await retried(
            admin.DefineCampaign, define("acme", "promo", at - timedelta(days=1), [A])
        )
        assert await runtime.guard.wait_for_token(
            ConsistencyToken.decode(w.consistency_token), timeout=60
        )
    async with client(runtime.address, "acme-app") as c:
        message = sent(promo_phone(1), "acme", "promo", at, from_number=A)
        await retried(c.RecordMessageSent, message)

        unset = _outcome(message, lpb.DELIVERY_OUTCOME_UNSPECIFIED, at)
        unset.message_id = ""
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.RecordDeliveryOutcome(unset)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert {f for f, _ in status_details(err.value)} == {"outcome", "message_id"}

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.RecordDeliveryOutcome(
                _outcome(message, lpb.DELIVERY_OUTCOME_DELIVERED, at, "30003")
            )
        assert [f for f, _ in status_details(err.value)] == ["error_code"]

        bad_number = sent(promo_phone(2), "acme", "promo", at, from_number="12345")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.RecordMessageSent(bad_number)
        assert [f for f, _ in status_details(err.value)] == ["from_number"]

        never_sent = _outcome(message, lpb.DELIVERY_OUTCOME_FAILED, at, "30003")
        never_sent.message_id = "SM-never-sent"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.RecordDeliveryOutcome(never_sent)
        assert err.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert [s for s, _ in precondition_violations(err.value)] == ["message_id"]

        # An outcome days before its message went out is refused, naming the send's time.
        early = _outcome(message, lpb.DELIVERY_OUTCOME_DELIVERED, at - timedelta(days=3))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.RecordDeliveryOutcome(early)
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        ((field, reason),) = status_details(err.value)
        assert field == "occurred_at" and at.isoformat() in reason

        # A retry records once: the same event ids, one fact.
        reported = _outcome(message, lpb.DELIVERY_OUTCOME_FAILED, at, "30003")
        first = await retried(c.RecordDeliveryOutcome, reported)
        again = await retried(c.RecordDeliveryOutcome, reported)
        assert list(again.event_ids) == list(first.event_ids)

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.GetCampaignHealth(
                api.GetCampaignHealthRequest(brand="acme", start_time=ts(at), end_time=ts(at))
            )
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in status_details(err.value)] == ["start_time"]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.GetCampaignHealth(api.GetCampaignHealthRequest(brand="acme", campaign="nosuch"))
        assert err.value.code() is grpc.StatusCode.NOT_FOUND
        # A write's token names one partition: resumed from it, the read counted that
        # partition alone and answered as if whole.
        partial = await retried(
            c.RecordMessageSent, sent(promo_phone(3), "acme", "promo", at, from_number=A)
        )
        stream = c.stub.StreamCampaignHealth(
            api.StreamCampaignHealthRequest(brand="acme", resume_read_at=partial.consistency_token),
            metadata=[("authorization", f"Bearer {c.token}")],
            timeout=30,
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            _ = [item async for item in stream]
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in status_details(err.value)] == ["resume_read_at"]

    async with client(runtime.address, "globex-app") as c:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.GetCampaignHealth(api.GetCampaignHealthRequest(brand="acme"))
        assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    async with client(runtime.address, "acme-checker") as c:  # the check scope only
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.RecordDeliveryOutcome(_outcome(message, lpb.DELIVERY_OUTCOME_DELIVERED, at))
        assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_the_readme_health_calls_run_as_written(tmp_path, postgres_dsn):
    """README's "Campaign health" block, after the "Calling the API" walk-through it
    follows, with grpcurl and the installed CLI, against a real service."""
    done = await run_after_walk_through("readme-health", tmp_path, postgres_dsn)
    assert done.returncode == 0, done.stdout + done.stderr
    table = done.stdout.index("campaign health of acme")
    *_, sent, outcome, health = answers(done.stdout[:table])[1]
    assert len(sent["eventIds"]) == 1 and len(outcome["eventIds"]) == 1
    [promo] = health["campaigns"]
    assert promo["counts"]["messagesSent"] == "1" and promo["counts"]["deliveryErrors"] == "1"
    assert promo["counts"]["errorFlagged"] is True
    assert [s["fromNumber"] for s in promo["senders"]] == ["+12125550100"]
    assert health["unattributedOptOuts"] == "1" and health["flagged"] is True
    rows = {line.split()[0]: line.split()[1:] for line in done.stdout[table:].splitlines() if line}
    assert rows["promo"] == ["1", "0", "0", "0.00%", "1", "100.00%", "ERRORS"]
    assert rows["+12125550100"] == ["1", "0", "0", "0.00%", "1", "100.00%", "ERRORS"]
