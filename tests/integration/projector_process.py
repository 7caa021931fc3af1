"""A KafkaProjector in a process of its own, for tests that SIGKILL it.

python -m tests.integration.projector_process BOOTSTRAP PREFIX GROUP DSN
"""

from __future__ import annotations

import asyncio
import sys

import asyncpg

from services.adapters.kafka_projector import KafkaProjector
from services.adapters.postgres_view import PostgresConsentView
from services.settings import KafkaLedgerSettings


async def main(bootstrap: str, prefix: str, group: str, dsn: str) -> None:
    settings = KafkaLedgerSettings(
        bootstrap_servers=bootstrap,
        topic_prefix=prefix,
        subscriber_partitions=4,
        replication_factor=1,
        min_insync_replicas=1,
    )
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    projector = KafkaProjector(
        settings,
        PostgresConsentView(pool),
        group_id=group,
        max_records=50,
        consumer_options={"heartbeat_interval_ms": 300, "session_timeout_ms": 6000},
    )
    await projector.start()
    print("started", flush=True)
    await projector.run()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
