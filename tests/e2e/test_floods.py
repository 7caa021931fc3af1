"""Floods of malformed and unauthenticated calls against ``consent-ledger serve``
(a real process, its log in a file, on real PostgreSQL): every call is answered
with its proper status, the service keeps serving, and neither its log nor its
memory grows with the flood."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.e2e.harness import TOKENS, write_tokens

pytestmark = pytest.mark.asyncio(loop_scope="session")
ROOT = Path(__file__).resolve().parents[2]
SERVICE = "/consent.v1.ConsentService"
GARBAGE = b"\xff\xff\xff\xff"
"""Not a protobuf message of any type (a corrupt tag)."""
BAD_UTF8 = b"\x0a\x05\xff\xfe\xfd\xfc\xfb"
"""Field 1, a string, that is not UTF-8: refused by protobuf's decoder too."""
CALLS = 5000
LOG_BOUND = 50_000
RSS_BOUND = 32 << 20
LOG_INTERVAL = 2.0
"""The log's repeat interval: short, so that a test sees a summary of what it held back."""


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    address: str
    health_address: str
    log: Path

    def log_size(self) -> int:
        return self.log.stat().st_size

    def rss(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        assert match is not None
        return int(match.group(1)) << 10


@pytest.fixture
def served(tmp_path, postgres_dsn) -> Iterator[Served]:
    log = tmp_path / "serve.log"
    env = {
        **os.environ,
        "CONSENT_LEDGER": "postgres",
        "CONSENT_POSTGRES_DSN": postgres_dsn,
        "CONSENT_AUTH_TOKENS_FILE": str(write_tokens(tmp_path / "tokens.json")),
        "CONSENT_DATA_DIR": str(tmp_path / "data"),
        "CONSENT_GRPC_LISTEN": "127.0.0.1:0",
        "CONSENT_HEALTH_LISTEN": "127.0.0.1:0",
        "CONSENT_LOG_REPEAT_INTERVAL_S": str(LOG_INTERVAL),
    }
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "serve"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while (found := re.search(r"serving gRPC on (\S+)", log.read_text())) is None:
            assert proc.poll() is None, f"serve exited: {log.read_text()}"
            assert time.monotonic() < deadline, f"serve did not start: {log.read_text()}"
            time.sleep(0.1)
        health = re.search(r"gRPC health checks \(plaintext\) on (\S+)", log.read_text())
        assert health is not None, log.read_text()
        yield Served(proc, found.group(1), health.group(1), log)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def raw_method(channel: grpc.aio.Channel, method: str) -> grpc.aio.UnaryUnaryMultiCallable:
    """A method that sends its request bytes as they are and returns the reply's."""
    return channel.unary_unary(method, request_serializer=None, response_deserializer=None)


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


async def codes_of(calls: int, call: Callable[[int], Awaitable[object]]) -> Counter[str]:
    """``call(i)`` for each ``i`` below ``calls``, 64 at a time; the status codes."""
    codes: Counter[str] = Counter()
    semaphore = asyncio.Semaphore(64)

    async def one(i: int) -> None:
        async with semaphore:
            try:
                await call(i)
                codes["OK"] += 1
            except grpc.aio.AioRpcError as err:
                codes[err.code().name] += 1

    await asyncio.gather(*(one(i) for i in range(calls)))
    return codes


CAN_SEND = api.CanSendRequest(phone="+14155552671", brand="acme", campaign="promo")


async def still_serving(channel: grpc.aio.Channel) -> None:
    answer = api.CanSendResponse.FromString(
        await raw_method(channel, f"{SERVICE}/CanSend")(
            CAN_SEND.SerializeToString(), metadata=bearer(TOKENS["admin"][0]), timeout=20
        )
    )
    assert not answer.allowed  # no campaign acme/promo: a decision, not an error


async def test_unauthenticated_floods_are_refused_and_cost_no_log_or_memory(served) -> None:
    kinds = [
        # (method, request body, metadata)
        ("CanSend", GARBAGE, []),  # no token, a body that does not decode
        ("CanSendBatch", BAD_UTF8, bearer("made-up")),  # a made-up token and a bad body
        ("RecordOptIn", GARBAGE, [("authorization", "Basic abc")]),  # not a bearer token
        ("CanSend", CAN_SEND.SerializeToString(), bearer("made-up")),  # a good body, no one's
        ("ListEvents", b"", []),  # an empty request, no token
    ]
    async with grpc.aio.insecure_channel(served.address) as channel:
        await still_serving(channel)
        methods = {name: raw_method(channel, f"{SERVICE}/{name}") for name, _, _ in kinds}

        async def call(i: int) -> object:
            name, body, metadata = kinds[i % len(kinds)]
            return await methods[name](body, metadata=metadata, timeout=20)

        await codes_of(500, call)  # warm-up: the first calls allocate what later ones reuse
        log_before, rss_before = served.log_size(), served.rss()
        codes = await codes_of(CALLS, call)
        await still_serving(channel)
        log_growth, rss_growth = served.log_size() - log_before, served.rss() - rss_before
    assert codes == {"UNAUTHENTICATED": CALLS}
    assert served.proc.poll() is None
    assert log_growth < LOG_BOUND, served.log.read_text()[-3000:]
    assert rss_growth < RSS_BOUND
    # Every refusal is either a line of its own or counted in a summary line, which
    # comes once its interval is over, with the next line of the log.
    await asyncio.sleep(LOG_INTERVAL + 0.1)
    async with grpc.aio.insecure_channel(served.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError):
            await raw_method(channel, f"{SERVICE}/CanSend")(GARBAGE, timeout=20)
    log = served.log.read_text()
    written = len(re.findall(r"refused a call to \w+ from", log))
    suppressed = sum(map(int, re.findall(r"suppressed (\d+) similar lines", log)))
    assert written < 100
    assert written + suppressed == 500 + CALLS + 1


async def test_an_authenticated_body_that_does_not_decode_is_invalid_argument(served) -> None:
    admin = bearer(TOKENS["admin"][0])
    async with grpc.aio.insecure_channel(served.address) as channel:
        can_send = raw_method(channel, f"{SERVICE}/CanSend")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await can_send(GARBAGE, metadata=admin, timeout=20)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        status = rpc_status.from_call(refused.value)
        assert status is not None
        bad = error_details_pb2.BadRequest()
        assert status.details[0].Unpack(bad)
        assert [v.field for v in bad.field_violations] == ["request"]
        assert "consent.v1.CanSendRequest" in bad.field_violations[0].description

        log_before = served.log_size()
        bodies = [GARBAGE, BAD_UTF8]
        record = raw_method(channel, f"{SERVICE}/RecordOptOut")
        codes = await codes_of(CALLS, lambda i: record(bodies[i % 2], metadata=admin, timeout=20))
        await still_serving(channel)
    assert codes == {"INVALID_ARGUMENT": CALLS}
    assert served.log_size() - log_before < LOG_BOUND, served.log.read_text()[-3000:]


async def test_unauthenticated_services_refuse_bodies_that_do_not_decode(served) -> None:
    """Health checks and reflection take no token; a bad body there is the caller's
    INVALID_ARGUMENT too, and logs nothing, on the API's port and the health port."""
    async with (
        grpc.aio.insecure_channel(served.address) as channel,
        grpc.aio.insecure_channel(served.health_address) as health,
    ):
        checks = [
            raw_method(channel, "/grpc.health.v1.Health/Check"),
            raw_method(health, "/grpc.health.v1.Health/Check"),
        ]
        log_before = served.log_size()
        codes = await codes_of(CALLS, lambda i: checks[i % 2](GARBAGE, timeout=20))
        reflection = channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            request_serializer=None,
            response_deserializer=None,
        )
        for _ in range(50):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for _ in reflection(iter([GARBAGE]), timeout=20):
                    pass
            codes[refused.value.code().name] += 1
        await still_serving(channel)
    assert codes == {"INVALID_ARGUMENT": CALLS + 50}
    assert served.log_size() - log_before < LOG_BOUND, served.log.read_text()[-3000:]
