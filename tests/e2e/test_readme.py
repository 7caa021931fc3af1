"""The README's examples run as written against a real service: the Python block
as a script of its own, and the ``grpcurl`` walk-through with ``grpcurl`` itself."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.e2e.grpcurl import grpcurl
from tests.e2e.harness import TOKENS, running, service_settings

pytestmark = pytest.mark.asyncio(loop_scope="session")
README = Path(__file__).resolve().parents[2] / "README.md"


def block(marker: str, language: str) -> str:
    match = re.search(
        rf"<!-- {marker} -->\s*```{language}\n(.*?)```", README.read_text(), re.DOTALL
    )
    assert match, f"README lost its tested block {marker}"
    return match.group(1)


def readme_example() -> str:
    return block("readme-example", "python")


def run(argv: list[str], tmp_path: Path, address: str) -> subprocess.CompletedProcess[str]:
    """``argv`` in an empty directory, told only the service's address and token."""
    env = {**os.environ, "A": address, "TOKEN": TOKENS["admin"][0]}
    return subprocess.run(
        argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )


async def run_after_walk_through(
    marker: str, tmp_path: Path, dsn: str
) -> subprocess.CompletedProcess[str]:
    """README's block ``marker`` run after the "Calling the API" walk-through it
    follows, with grpcurl and the installed CLI on the path, against a real service."""
    walk, calls = block("readme-grpcurl", "sh"), block(marker, "sh")
    tool = await asyncio.to_thread(grpcurl)
    path = os.pathsep.join([str(Path(tool).parent), str(Path(sys.executable).parent)])
    script = f"PATH='{path}{os.pathsep}{os.environ['PATH']}'\n{walk}\n{calls}"
    async with running(service_settings(tmp_path, dsn, kafka=None)) as runtime:
        return await asyncio.to_thread(
            run, ["bash", "-euo", "pipefail", "-c", script], tmp_path, runtime.address
        )


async def test_the_readme_python_example_runs_as_written(tmp_path, postgres_dsn):
    script = tmp_path / "example.py"
    script.write_text(readme_example())
    async with running(service_settings(tmp_path, postgres_dsn, kafka=None)) as runtime:
        done = await asyncio.to_thread(
            run, [sys.executable, str(script)], tmp_path, runtime.address
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "OBLIGATION_IDENTIFY_SENDER"


def answers(out: str) -> tuple[list[str], list[dict]]:
    """grpcurl's output: the lines before the first JSON answer (``list``), then
    every JSON answer in order."""
    start = out.index("{")
    decoder, found, at = json.JSONDecoder(), [], start
    while at < len(out):
        if out[at].isspace():
            at += 1
            continue
        value, at = decoder.raw_decode(out, at)
        found.append(value)
    return out[:start].split(), found


async def test_the_readme_grpcurl_walk_through_runs_as_written(tmp_path, postgres_dsn):
    walk = block("readme-grpcurl", "sh")
    tool = await asyncio.to_thread(grpcurl)
    path = f"{Path(tool).parent}{os.pathsep}{os.environ['PATH']}"
    async with running(service_settings(tmp_path, postgres_dsn, kafka=None)) as runtime:
        before = datetime.now(UTC)
        done = await asyncio.to_thread(
            run, ["bash", "-euo", "pipefail", "-c", f"PATH='{path}'\n{walk}"], tmp_path,
            runtime.address,
        )  # fmt: skip
        after = datetime.now(UTC)
    assert done.returncode == 0, done.stdout + done.stderr
    listed, (health, campaign, brand, opt_in, check, inbound, rate) = answers(done.stdout)
    assert "consent.v1.ConsentService" in listed and "grpc.health.v1.Health" in listed
    assert health == {"status": "SERVING"}
    assert len(campaign["eventIds"]) == 1 and campaign["consistencyToken"].startswith("campaigns")
    assert brand["consistencyToken"].startswith("campaigns")
    assert len(opt_in["eventIds"]) == 1 and "subscribers" in opt_in["consistencyToken"]
    assert "subscribers" in check["consistencyToken"]  # it waited for the opt-in
    # As the README says: allowed in the afternoon, quiet hours at night (Los Angeles).
    hours = {t.astimezone(ZoneInfo("America/Los_Angeles")).hour for t in (before, after)}
    if check.get("allowed"):
        assert check["reason"] == "REASON_CONSENT_ACTIVE"
        assert "OBLIGATION_IDENTIFY_SENDER" in check["obligations"]
        assert hours & set(range(8, 21))
        # An allow also rests on the campaign's policy (its sender numbers).
        assert check["evidenceEventIds"] == opt_in["eventIds"] + campaign["eventIds"]
    else:
        assert check["reason"] == "REASON_QUIET_HOURS", check
        assert hours - set(range(8, 21))
        assert check["evidenceEventIds"] == opt_in["eventIds"]
    assert inbound["intent"] == "INBOUND_INTENT_OPT_OUT"
    assert inbound["reply"] == "REPLY_KIND_OPT_OUT_CONFIRMATION"
    assert rate["optOuts"] == "1" and rate["aboveLimit"] is True and rate["limit"] == 0.003
