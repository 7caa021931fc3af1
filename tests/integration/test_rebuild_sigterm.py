"""A rebuild stopped by SIGTERM while its database connections are busy ends and
closes them, wherever the signal lands.

A SIGTERM handler that raised ``KeyboardInterrupt`` could land inside the
database driver's callback; the pool's close then waited forever on the connection
it left (a stopped pod's rebuild that never ended). Each run here sends SIGTERM at a
different moment of a loop of queries, in a process set up as ``consent-ledger
rebuild`` sets itself up."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import asyncio, signal, sys
import asyncpg, uvloop
from services.cli import main, rebuild

async def busy():
    pool = await asyncpg.create_pool(sys.argv[1], min_size=1, max_size=4)
    try:
        async def queries():
            while True:
                await pool.fetch("select generate_series(1, 200)")
        async with rebuild._stopped_by_sigterm():
            print("busy", flush=True)
            await asyncio.gather(*(queries() for _ in range(3)))
    finally:
        await pool.close()
        print("closed", flush=True)

signal.signal(signal.SIGTERM, main._interrupted)  # as the command's start sets it
try:
    uvloop.run(busy())
except rebuild.Stopped:
    print("stopped", flush=True)
"""


def test_a_sigterm_amid_queries_ends_the_rebuild_with_its_pool_closed(postgres_dsn: str) -> None:
    moments = random.Random(21)
    for attempt in range(6):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, postgres_dsn],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == "busy\n", child.stderr.read()
            time.sleep(moments.uniform(0.05, 0.5))
            os.kill(child.pid, signal.SIGTERM)
            out, err = child.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"run {attempt}: SIGTERM left the rebuild waiting on its pool")
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert out == "closed\nstopped\n", (attempt, out, err)
        assert child.returncode == 0, (attempt, err)
