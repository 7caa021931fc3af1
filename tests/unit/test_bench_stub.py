"""The ladder's stub server (``python -m bench.server stub``): the service's gRPC
server whose CanSend answers the echo's response, authenticating first if told to."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import consent_service_pb2_grpc as api_grpc

from bench.infra import REPO_ROOT, free_port
from bench.server import sample_responses
from services.grpc_api.auth import token_digest

TOKEN = "stub-test-token"


def _start(*extra: str) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.server", "stub", "--port", str(port), *extra],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("READY")
        yield f"127.0.0.1:{port}"
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(20)


@pytest.fixture
def stub() -> Iterator[str]:
    yield from _start()


@pytest.fixture
def auth_stub(tmp_path: Path) -> Iterator[str]:
    tokens = tmp_path / "tokens.json"
    entry = {"name": "t", "sha256": token_digest(TOKEN), "scopes": ["check"], "brands": ["acme"]}
    tokens.write_text(json.dumps({"tokens": [entry]}))
    yield from _start("--tokens", str(tokens))


def _without_evidence(response: api.CanSendResponse) -> api.CanSendResponse:
    response.ClearField("evidence_event_ids")  # a new random id in each process
    return response


ECHOED = _without_evidence(api.CanSendResponse.FromString(sample_responses()[0]))


def _can_send(address: str, brand: str, token: str | None) -> api.CanSendResponse:
    with grpc.insecure_channel(address) as channel:
        metadata = () if token is None else (("authorization", f"Bearer {token}"),)
        request = api.CanSendRequest(phone="+14155550100", brand=brand, campaign="promo")
        response: api.CanSendResponse = api_grpc.ConsentServiceStub(channel).CanSend(
            request, metadata=metadata, timeout=10
        )
        return response


def test_the_stub_answers_the_echos_response_without_asking_who_calls(stub: str) -> None:
    assert _without_evidence(_can_send(stub, "acme", None)) == ECHOED


def test_the_auth_stub_authenticates_and_scopes_the_caller_as_the_service_does(
    auth_stub: str,
) -> None:
    assert _without_evidence(_can_send(auth_stub, "acme", TOKEN)) == ECHOED
    for brand, token, code in (
        ("acme", None, grpc.StatusCode.UNAUTHENTICATED),
        ("acme", "made-up", grpc.StatusCode.UNAUTHENTICATED),
        ("globex", TOKEN, grpc.StatusCode.PERMISSION_DENIED),
    ):
        with pytest.raises(grpc.RpcError) as err:
            _can_send(auth_stub, brand, token)
        assert err.value.code() == code  # type: ignore[attr-defined]
