"""The client tools wait out a refusal for now (RESOURCE_EXHAUSTED with a
``RetryInfo``) and call again, against a tiny in-process service that refuses the
first calls as the real one refuses a caller past its streams or its rate."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import consent_service_pb2_grpc as api_grpc

from services.cli import client
from services.cli import main as cli
from services.errors import RateLimited
from services.grpc_api import errors

DELAY = 0.01
"""The service's retry delay here: short, so the waits take no time."""


class Refusing(api_grpc.ConsentServiceServicer):  # type: ignore[misc]
    """Refuses the first ``refusals`` calls, as the service refuses a caller's fifth
    sweep (with ``RetryInfo`` unless ``retry_info`` is False); then answers."""

    def __init__(self) -> None:
        self.refusals = 0
        self.retry_info = True
        self.calls = 0
        self.imported: list[str] = []  # request ids of the records that reached it

    async def refuse(self, context: Any) -> None:
        self.calls += 1
        if self.calls > self.refusals:
            return
        if not self.retry_info:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too much")
        why = "4 SweepCampaign streams of this caller are open, the most at once"
        await context.abort_with_status(errors.rate_limited(RateLimited("tester", why, DELAY)))

    async def SweepCampaign(self, request: Any, context: Any) -> Any:
        await self.refuse(context)
        finding = api.SweepFinding(phone="+14155552671", message_id="SM1", kinds=[1])
        yield api.SweepCampaignResponse(finding=finding, consistency_token="subscribers:0:3")
        done = api.SweepProgress(events_read=3, sends_judged=1, done=1.0, partitions_done=[0])
        yield api.SweepCampaignResponse(progress=done, consistency_token="subscribers:0:3")

    async def StreamCampaignHealth(self, request: Any, context: Any) -> Any:
        await self.refuse(context)
        yield api.StreamCampaignHealthResponse(health=api.GetCampaignHealthResponse())

    async def GetProofPacket(self, request: Any, context: Any) -> Any:
        await self.refuse(context)
        packet = {"phone": request.phone, "brand": request.brand, "campaign": ""}
        packet |= {"consistency_token": "", "messages": [], "missing": []}
        packet |= {"opt_ins": [], "opt_outs": [], "replies": []}
        return api.GetProofPacketResponse(document=json.dumps(packet).encode())

    async def ImportConsents(self, requests: Any, context: Any) -> Any:
        await self.refuse(context)
        first = 0
        async for message in requests:
            ids = [r.opt_out.request_id for r in message.records]
            self.imported += ids
            yield api.ImportConsentsResponse(imported=len(ids), first_index=first)
            first += len(ids)


@pytest.fixture
def service() -> Iterator[tuple[Refusing, str]]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    servicer = Refusing()

    async def start() -> tuple[Any, int]:
        server = grpc.aio.server()
        api_grpc.add_ConsentServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(start(), loop).result()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(None), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


def sweep(address: str, tmp_path: Any) -> list[str]:
    return [
        "audit",
        "sweep",
        "--address",
        address,
        "--brand",
        "acme",
        "--campaign",
        "promo",
        "--from",
        "2026-11-01",
        "--to",
        "2026-12-01",
        "--json",
        "--quiet",
        "--resume",
        str(tmp_path / "sweep.resume"),
    ]


@pytest.fixture(autouse=True)
def _token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSENT_TOKEN", "secret")


def test_a_sweep_refused_for_now_waits_says_so_once_and_sweeps(service, tmp_path, capsys):
    servicer, address = service
    servicer.refusals = 3
    assert cli.main(sweep(address, tmp_path)) == 1  # swept, one finding
    out, err = capsys.readouterr()
    assert servicer.calls == 4
    assert out.count('"message_id": "SM1"') == 1
    assert err.count("waiting") == 1
    assert "the service refused for now (4 SweepCampaign streams of this caller" in err
    assert "caller:tester" in err
    assert "swept acme/promo: 3 events read, 1 sends judged, 1 found" in err


def test_a_refusal_without_a_retry_delay_ends_the_tool(service, tmp_path, capsys):
    servicer, address = service
    servicer.refusals, servicer.retry_info = 1, False
    assert cli.main(sweep(address, tmp_path)) == 1
    err = capsys.readouterr().err
    assert servicer.calls == 1
    assert "RESOURCE_EXHAUSTED: too much" in err and "waiting" not in err


def test_refusals_past_the_bound_end_the_tool_with_the_refusal(service, tmp_path, capsys):
    servicer, address = service
    servicer.refusals = 1000
    assert cli.main(sweep(address, tmp_path)) == 1
    err = capsys.readouterr().err
    assert servicer.calls == client.RETRIES + 1
    assert f"gave up after {client.RETRIES + 1} refusals in a row" in err
    assert "RESOURCE_EXHAUSTED: 4 SweepCampaign streams" in err


def test_a_packet_refused_for_now_is_asked_again(service, tmp_path, capsys):
    servicer, address = service
    servicer.refusals = 2
    argv = ["audit", "packet", "--address", address, "--phone", "+14155552671"]
    argv += ["--brand", "acme", "--format", "json", "--quiet", "-o", str(tmp_path / "p.json")]
    assert cli.main(argv) == 0
    assert servicer.calls == 3
    assert capsys.readouterr().err.count("waiting") == 1


def test_a_health_read_refused_for_now_is_asked_again(service, tmp_path, capsys):
    servicer, address = service
    servicer.refusals = 2
    argv = ["audit", "health", "--address", address, "--brand", "acme", "--json", "--quiet"]
    assert cli.main([*argv, "--resume", str(tmp_path / "health.resume")]) == 0
    assert servicer.calls == 3
    assert capsys.readouterr().err.count("waiting") == 1


def test_the_waits_grow_with_jitter_within_their_bounds(capsys):
    class Refused(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.RESOURCE_EXHAUSTED

        def details(self) -> str:
            return "over; retry in 1 s"

        def trailing_metadata(self) -> Any:
            status = errors.rate_limited(RateLimited("tester", "over", 1.0))
            return status.trailing_metadata

    waits: list[float] = []
    backoff = client.Backoff("test", sleep=waits.append)
    while backoff.wait(Refused()):
        pass
    assert len(waits) < client.RETRIES and sum(waits) <= client.RETRY_SECONDS
    for n, wait in enumerate(waits):
        grown = max(1.0, min(2.0**n, client.RETRY_LONGEST))
        assert grown <= wait <= grown * 1.5
    assert "gave up" in capsys.readouterr().err


def test_an_import_refused_for_now_sends_each_record_once_when_admitted(service, tmp_path, capsys):
    # More messages than the import keeps unanswered (8 of 500): gRPC's thread waits
    # for room to take the ninth while the call is refused, and the next call gets it.
    servicer, address = service
    servicer.refusals = 2
    export = tmp_path / "export.jsonl"
    stop = '{"type": "opt_out", "import_id": "src-%d", "phone": "+1415555%04d", '
    stop += '"brand": "acme", "occurred_at": "2026-11-02T09:30:00Z", "channel": "keyword"}\n'
    export.write_text("".join(stop % (n, n) for n in range(5_000)))
    assert cli.main(["import", str(export), "--address", address, "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert servicer.calls >= 3
    assert len(servicer.imported) == 5_000 == len(set(servicer.imported))
    assert "imported 5,000 of 5,000 records" in out
    assert err.count("waiting") == 1
