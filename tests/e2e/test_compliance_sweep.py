"""The compliance sweep through the real gRPC server, on the real Kafka ledger and
PostgreSQL: among thousands of compliant sends, the one sent in a state's quiet
hours is found alone; a send against a "not allowed" and one without asking are
found; another brand's token and bad input are refused; the CLI prints the same."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api

from ledger.ports import ConsistencyToken
from services.bootstrap import Runtime
from services.progress import STOP_AFTER
from tests.e2e.harness import (
    TOKENS,
    client,
    define,
    opt_in,
    sent,
    status_details,
    ts,
)
from tests.e2e.test_readme import answers, run_after_walk_through

pytestmark = pytest.mark.asyncio(loop_scope="session")

NUMBERS = 700
SENDS_EACH = 3  # 2,100 compliant sends, as many as Florida's cap allows a day
SENDER = "+12125550190"


def florida(i: int) -> str:
    return f"+1305555{i:04d}"  # Miami: America/New_York, Florida's 8 a.m. to 8 p.m.


@pytest.fixture
async def service(serve) -> Runtime:
    return await serve(name="sweep")


async def _sweep(c, start: datetime, end: datetime, brand: str = "acme"):
    request = api.SweepCampaignRequest(
        brand=brand, campaign="promo", start_time=ts(start), end_time=ts(end)
    )
    call = c.stub.SweepCampaign(
        request, metadata=[("authorization", f"Bearer {c.token}")], timeout=300
    )
    return [item async for item in call]


async def test_the_sweep_finds_the_one_send_in_a_states_quiet_hours_among_thousands(
    service, tmp_path
):
    runtime = service
    # Two days ago, in winter: Miami is UTC-5. Noon there, and 20:30, past Florida's
    # 8 p.m. but before the federal 9 p.m.
    day = (datetime.now(UTC) - timedelta(days=2)).replace(hour=0, minute=0, second=0, microsecond=0)
    noon = day + timedelta(hours=17)
    evening = day + timedelta(hours=25, minutes=30)
    async with client(runtime.address) as admin:
        w = await admin.DefineCampaign(define("acme", "promo", day - timedelta(days=5), [SENDER]))
    assert await runtime.guard.wait_for_token(
        ConsistencyToken.decode(w.consistency_token), timeout=60
    )
    async with client(runtime.address, "acme-app") as c:
        gate = asyncio.Semaphore(32)

        async def call(rpc, request):
            async with gate:
                return await getattr(c, rpc)(request, timeout=60)

        grants = await asyncio.gather(
            *(
                call("RecordOptIn", opt_in(florida(i), "acme", "promo", day - timedelta(days=1)))
                for i in range(NUMBERS + 3)
            )
        )
        answer = api.ReliedOnAnswer(
            consistency_token=grants[-1].consistency_token,
            allowed=True,
            reason=api.REASON_CONSENT_ACTIVE,
        )
        sends = [
            sent(florida(i), "acme", "promo", noon + timedelta(minutes=j), relied_on=answer)
            for i in range(NUMBERS)
            for j in range(SENDS_EACH)
        ]
        late = sent(florida(NUMBERS + 2), "acme", "promo", evening, relied_on=answer)
        written = await asyncio.gather(*(call("RecordMessageSent", s) for s in [*sends, late]))
        # A day later, out of the first range: a send against a "not allowed", and
        # one whose sender asked nothing.
        refused = api.ReliedOnAnswer(
            consistency_token=grants[-1].consistency_token,
            allowed=False,
            reason=api.REASON_QUIET_HOURS,
        )
        against = sent(
            florida(NUMBERS), "acme", "promo", noon + timedelta(days=1), relied_on=refused
        )
        unasked = sent(florida(NUMBERS + 1), "acme", "promo", noon + timedelta(days=1))
        written += [await c.RecordMessageSent(against), await c.RecordMessageSent(unasked)]
        every = ConsistencyToken({})
        for w in written:
            every = every.merge(ConsistencyToken.decode(w.consistency_token))
        assert await runtime.guard.wait_for_token(every, timeout=120)

        items = await _sweep(c, day, day + timedelta(days=1, hours=12))
        findings = [i.finding for i in items if i.HasField("finding")]
        progress = [i.progress for i in items if i.HasField("progress")]
        assert [(f.phone, f.message_id) for f in findings] == [
            (florida(NUMBERS + 2), late.message_id)
        ]
        (found,) = findings
        assert list(found.kinds) == [api.SWEEP_FINDING_KIND_QUIET_HOURS]
        assert found.reason == api.REASON_QUIET_HOURS and found.rule == "state:FL"
        assert found.relied_on.allowed and found.recorded_at.seconds > 0
        assert progress[-1].done == 1.0
        assert progress[-1].sends_judged == NUMBERS * SENDS_EACH + 1
        assert progress[-1].events_read >= NUMBERS * (SENDS_EACH + 1)

        items = await _sweep(c, day + timedelta(days=1, hours=12), day + timedelta(days=3))
        findings = {i.finding.message_id: i.finding for i in items if i.HasField("finding")}
        assert set(findings) == {against.message_id, unasked.message_id}
        assert list(findings[against.message_id].kinds) == [
            api.SWEEP_FINDING_KIND_SENT_AGAINST_NOT_ALLOWED
        ]
        assert findings[against.message_id].allowed
        assert list(findings[unasked.message_id].kinds) == [
            api.SWEEP_FINDING_KIND_SENT_WITHOUT_ASKING
        ]

    # The CLI, as an auditor runs it: JSON Lines on standard output, progress on stderr.
    env = {**os.environ, "CONSENT_TOKEN": TOKENS["acme-app"][0]}
    done = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "services.cli",
            "audit",
            "sweep",
            "--brand",
            "acme",
            "--campaign",
            "promo",
            "--from",
            day.isoformat(),
            "--to",
            (day + timedelta(days=1, hours=12)).isoformat(),
            "--json",
            "--progress",
            "--address",
            runtime.address,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )
    assert done.returncode == 1, done.stderr
    (line,) = done.stdout.splitlines()
    record = json.loads(line)
    assert record["message_id"] == late.message_id and record["kinds"] == ["quiet_hours"]
    assert record["rule"] == "state:FL" and record["relied_on"]["reason"] == "consent_active"
    assert "100.0%" in done.stderr and "/s" in done.stderr and "left" in done.stderr
    assert f"{NUMBERS * SENDS_EACH + 1:,} sends judged, 1 found" in done.stderr

    # Interrupted halfway (the test hook acts as Ctrl-C) and run again: the rerun
    # skips the partitions finished, and prints what an uninterrupted sweep prints.
    everything = [
        sys.executable,
        "-m",
        "services.cli",
        "audit",
        "sweep",
        "--brand",
        "acme",
        "--campaign",
        "promo",
        "--from",
        day.isoformat(),
        "--to",
        (day + timedelta(days=3)).isoformat(),
        "--json",
        "--address",
        runtime.address,
    ]

    def sweep_cli(*more: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*everything, *more],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            env=env | extra,
        )

    whole = await asyncio.to_thread(sweep_cli, "--resume", str(tmp_path / "whole.resume"))
    assert whole.returncode == 1, whole.stderr
    assert len(whole.stdout.splitlines()) == 3  # the late send, the unasked, the refused
    summary = whole.stderr.splitlines()[-1]
    total = int(summary.split(": ")[1].split(" events")[0].replace(",", ""))
    state = tmp_path / "sweep.resume"
    first = await asyncio.to_thread(
        sweep_cli, "--resume", str(state), **{STOP_AFTER: str(total // 2)}
    )
    assert first.returncode == 130, first.stderr
    kept = json.loads(state.read_text())
    assert kept["partitions_done"], kept  # at least one partition was finished
    rerun = await asyncio.to_thread(sweep_cli, "--resume", str(state))
    assert rerun.returncode == 1, rerun.stderr
    assert rerun.stdout == whole.stdout
    assert rerun.stderr.splitlines()[-1] == summary
    read_again = [line for line in rerun.stderr.splitlines() if "read by this one" in line]
    assert read_again, rerun.stderr
    assert int(read_again[0].split(", ")[-1].split(" ")[0].replace(",", "")) < total
    assert not state.exists()


async def test_a_sweep_is_refused_another_brands_token_and_bad_input_by_field(service):
    runtime = service
    start = datetime.now(UTC) - timedelta(days=1)
    async with client(runtime.address) as c:
        w = await c.DefineCampaign(define("acme", "promo", start - timedelta(days=2), [SENDER]))
        assert await runtime.guard.wait_for_token(
            ConsistencyToken.decode(w.consistency_token), timeout=60
        )
    async with client(runtime.address, "globex-app") as c:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _sweep(c, start, start + timedelta(hours=1))
        assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
    async with client(runtime.address, "acme-app") as c:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _sweep(c, start, start - timedelta(hours=1))
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in status_details(err.value)] == ["start_time"]
        call = c.stub.SweepCampaign(
            api.SweepCampaignRequest(brand="acme", campaign="promo"),
            metadata=[("authorization", f"Bearer {c.token}")],
            timeout=30,
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            _ = [item async for item in call]
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert {f for f, _ in status_details(err.value)} == {"start_time"}
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _sweep(c, start, start + timedelta(hours=1), brand="acme ")
        assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED or (
            err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        )
        request = api.SweepCampaignRequest(
            brand="acme",
            campaign="nosuch",
            start_time=ts(start),
            end_time=ts(start + timedelta(hours=1)),
        )
        call = c.stub.SweepCampaign(
            request, metadata=[("authorization", f"Bearer {c.token}")], timeout=30
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            _ = [item async for item in call]
        assert err.value.code() is grpc.StatusCode.NOT_FOUND


async def test_a_sweep_resumed_from_a_token_that_lacks_partitions_is_refused(service):
    """resume_read_at is the token a sweep's responses carried. Given a write's
    token instead (one partition) the sweep read that partition alone, and given a
    campaign's none at all, and each still ended "done" with what it found: a clean
    sweep of sends it never judged. Such a token is refused, naming the field; a
    sweep's own token names every partition, those it found empty too."""
    runtime = service
    start = datetime.now(UTC) - timedelta(hours=1)
    async with client(runtime.address) as c:
        w = await c.DefineCampaign(define("acme", "promo", start - timedelta(days=2), [SENDER]))
        assert await runtime.guard.wait_for_token(
            ConsistencyToken.decode(w.consistency_token), timeout=60
        )
        written = [
            await c.RecordMessageSent(sent(florida(i), "acme", "promo", start)) for i in range(6)
        ]
        whole = await _sweep(c, start - timedelta(hours=1), start + timedelta(hours=1))
        read_at = whole[-1].consistency_token
        assert sum(item.HasField("finding") for item in whole) == len(written)
        assert {p for (_, p) in ConsistencyToken.decode(read_at).offsets} == {0, 1, 2, 3}
        for token in [written[0].consistency_token, w.consistency_token]:
            request = api.SweepCampaignRequest(
                brand="acme",
                campaign="promo",
                start_time=ts(start - timedelta(hours=1)),
                end_time=ts(start + timedelta(hours=1)),
                resume_read_at=token,
            )
            call = c.stub.SweepCampaign(
                request, metadata=[("authorization", f"Bearer {c.token}")], timeout=30
            )
            with pytest.raises(grpc.aio.AioRpcError) as err:
                _ = [item async for item in call]
            assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT, token
            assert [f for f, _ in status_details(err.value)] == ["resume_read_at"], token
        request.resume_read_at = read_at  # its own token resumes, judging all again
        resumed = [item async for item in c.stub.SweepCampaign(
            request, metadata=[("authorization", f"Bearer {c.token}")], timeout=30
        )]  # fmt: skip
        assert sum(item.HasField("finding") for item in resumed) == len(written)


async def test_the_readme_sweep_calls_run_as_written(tmp_path, postgres_dsn):
    """README's "Compliance sweep" block, after the "Calling the API" walk-through it
    follows, with grpcurl and the installed CLI, against a real service."""
    done = await run_after_walk_through("readme-sweep", tmp_path, postgres_dsn)
    assert done.returncode == 0, done.stdout + done.stderr
    cli = done.stdout.index("  after_opt_out,sent_without_asking")
    grpcurl_out = done.stdout[: done.stdout.rindex("\n", 0, cli)]
    found = [a["finding"] for a in answers(grpcurl_out)[1] if "finding" in a]
    assert [f["kinds"] for f in found] == [
        ["SWEEP_FINDING_KIND_AFTER_OPT_OUT", "SWEEP_FINDING_KIND_SENT_WITHOUT_ASKING"]
    ]
    assert found[0]["reason"] == "REASON_REVOKED"
    assert "after_opt_out,sent_without_asking" in done.stdout
    assert "100.0%" in done.stderr and "1 found" in done.stderr
