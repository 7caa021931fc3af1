"""``python -m bench`` on a reused broker deletes the topics it made when it ends,
failed or interrupted, and leaves another run's topics where they are."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.infra import REPO_ROOT, delete_topics, topic_names
from tests.e2e.harness import ctrl_c_as_at_a_terminal
from tests.infra.fixtures import ENV_KAFKA, ENV_POSTGRES
from tests.infra.postgres_server import PostgresServer

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

# The bench with its import phase replaced: it makes a topic under the run's prefix,
# as the service it starts would, says its name, then fails or waits for Ctrl-C.
BENCH = textwrap.dedent(
    """
    import asyncio, sys
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    import bench.__main__ as bench

    async def phase(args, infra, say):
        admin = AIOKafkaAdminClient(bootstrap_servers=infra.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(infra.prefix + "subscribers", 1, 1)])
        finally:
            await admin.close()
        print("MADE", infra.prefix + "subscribers", flush=True)
        if sys.argv[1] == "fail":
            raise RuntimeError("the phase failed")
        await asyncio.sleep(60)

    bench.run_imports = phase
    sys.exit(bench.main(["--import-only"]))
    """
)


async def _create(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()


async def _gone(bootstrap: str, topic: str) -> bool:
    # A deleted topic may stay in the broker's metadata for a moment.
    for _ in range(50):
        if topic not in await topic_names(bootstrap):
            return True
        await asyncio.sleep(0.2)
    return False


@pytest.mark.parametrize("ending", ["fail", "ctrl-c"])
async def test_the_bench_deletes_its_own_topics_and_no_others(
    kafka_bootstrap: str, postgres_server: PostgresServer, ending: str
) -> None:
    other = f"bench-{uuid.uuid4().hex[:8]}.subscribers"  # another bench running beside it
    await _create(kafka_bootstrap, other)
    env = {**os.environ, ENV_KAFKA: kafka_bootstrap, ENV_POSTGRES: postgres_server.dsn,
           "PYTHONPATH": str(REPO_ROOT)}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-c", BENCH, ending], cwd=REPO_ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=ctrl_c_as_at_a_terminal,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        made = ""
        for line in proc.stdout:
            if line.startswith("MADE "):
                made = line.split()[1]
                break
        assert made, proc.stderr.read() if proc.stderr else ""
        assert made in await topic_names(kafka_bootstrap)
        if ending == "ctrl-c":
            proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == (130 if ending == "ctrl-c" else 1), err
        assert await _gone(kafka_bootstrap, made), err
        assert other in await topic_names(kafka_bootstrap)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        await delete_topics(kafka_bootstrap, [other])
