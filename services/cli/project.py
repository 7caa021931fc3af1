"""``consent-ledger project``: run the projector alone, until SIGINT or SIGTERM.

Beside serving processes started with ``CONSENT_PROJECTOR=off``, projection gets a
process (and a core) of its own instead of competing with the gRPC handlers for
each ``serve``'s one interpreter lock. Several ``project`` processes share the
partitions through the consumer group ``CONSENT_PROJECTOR_GROUP`` (the Kafka
ledger), or take turns per partition (the PostgreSQL ledger). A failed projector
is started again, as in ``serve`` (``services.projector.supervise``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import TYPE_CHECKING, Any

from services.tuning import PROJECTION_YOUNG_THRESHOLD, settle_collector

if TYPE_CHECKING:
    from services.settings import Settings

log = logging.getLogger("consent-ledger")


def add_parser(command: Any) -> None:
    command(
        "project",
        "run only the projector, for serving processes started with CONSENT_PROJECTOR=off "
        "(and /metrics, health checks with CONSENT_METRICS_LISTEN, CONSENT_HEALTH_LISTEN)",
    )


async def run(settings: Settings, args: argparse.Namespace) -> None:
    from services.bootstrap import Runtime

    runtime = Runtime(settings)
    await runtime.start_projecting()
    # Before the lines that say it projects: a SIGTERM sent on seeing them is a clean stop.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    settle_collector(PROJECTION_YOUNG_THRESHOLD)  # as `rebuild` does: the fold is all small objects
    where = (
        f"the consumer group {settings.projector_group}"
        if settings.ledger == "kafka"
        else "the PostgreSQL ledger"
    )
    lines = [
        f"consent-ledger projecting the ledger into PostgreSQL (ledger: {settings.ledger}, {where})"
    ]
    if runtime.health_address:
        lines.append(f"gRPC health checks (plaintext) on {runtime.health_address}")
    if runtime.metrics_address:
        lines.append(f"Prometheus metrics on http://{runtime.metrics_address}/metrics")
    if settings.log_format == "json":
        for line in lines:
            log.info("%s", line)
    else:
        print("\n".join(lines), flush=True)
    await stop.wait()
    # Each batch commits its rows with its positions: stopping between two loses nothing.
    log.info("shutting down the projector")
    await runtime.stop()
