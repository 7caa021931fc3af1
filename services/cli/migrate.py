"""``consent-ledger migrate``: create the schema (and the Kafka topics, with
CONSENT_LEDGER=kafka); with ``--check``, change nothing and say what is missing."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.settings import Settings

log = logging.getLogger("consent-ledger")


def add_parser(command: Any, embedded_help: str) -> None:
    migrate = command(
        "migrate", "create the schema (and the Kafka topics, with CONSENT_LEDGER=kafka)"
    )
    migrate.add_argument("--embedded", action="store_true", help=embedded_help)
    migrate.add_argument(
        "--check",
        action="store_true",
        help="change nothing: exit 0 if every migration is applied and the topics are "
        "in place, 1 naming what is missing (an init container's wait for the migrate Job)",
    )
    migrate.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="with --check: ask again every 2 s for up to SECONDS before failing",
    )


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse option values the parser cannot (``parser.error`` exits 2)."""
    if args.wait < 0 or args.wait != args.wait:
        parser.error("--wait must be 0 or more seconds")
    if args.wait and not args.check:
        parser.error("--wait goes with --check")


async def run(settings: Settings, args: argparse.Namespace) -> None:
    await (_migrate_check(settings, args.wait) if args.check else _migrate(settings))


async def _migrate(settings: Settings) -> None:
    import asyncpg

    from services.adapters.migrations import migrate
    from services.adapters.postgres_bounds import close_pool
    from services.bootstrap import start_embedded_postgres

    dsn = settings.postgres_dsn or start_embedded_postgres(settings.data_dir)[0]
    async with contextlib.AsyncExitStack() as stack:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        stack.push_async_callback(close_pool, pool)
        applied = await migrate(pool)
        print(f"schema: {len(applied)} migration(s) applied {applied}")
    if settings.ledger == "kafka":
        from services.adapters.kafka_ledger import KafkaLedger

        assert settings.kafka is not None
        await KafkaLedger(settings.kafka).ensure_topics()
        print("kafka: ledger topics present with ledger settings")


CHECK_INTERVAL_S = 2.0


async def _not_migrated(settings: Settings) -> list[str]:
    """What ``migrate`` has yet to do: migrations not applied, topics missing or
    unsafe, or a store that does not answer. Changes nothing."""
    import asyncpg

    from services.adapters.migrations import pending
    from services.bootstrap import start_embedded_postgres

    dsn = settings.postgres_dsn or start_embedded_postgres(settings.data_dir)[0]
    try:
        conn = await asyncpg.connect(dsn, timeout=10)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        return [f"PostgreSQL (CONSENT_POSTGRES_DSN) does not answer: {exc or type(exc).__name__}"]
    try:
        problems = [f"migration {name} is not applied" for name in await pending(conn)]
    finally:
        await conn.close()
    if settings.ledger == "kafka":
        from aiokafka.errors import KafkaError

        from services.adapters.kafka_ledger import KafkaLedger, UnsafeTopicError

        assert settings.kafka is not None
        try:
            await KafkaLedger(settings.kafka).verify_topics()
        except UnsafeTopicError as exc:
            problems.append(str(exc))
        except (TimeoutError, KafkaError, OSError) as exc:
            problems.append(f"Kafka (CONSENT_KAFKA_BOOTSTRAP) does not answer: {exc!r}")
    return problems


async def _migrate_check(settings: Settings, wait: float) -> None:
    """``migrate --check``: exit 0 once the schema and topics are in place, after up to
    ``wait`` seconds of asking again; otherwise fail naming what is missing. For an
    init container that holds the service back until the migrate Job is done."""
    from services.bootstrap import StartError

    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while problems := await _not_migrated(settings):
        if loop.time() + CHECK_INTERVAL_S > deadline:
            raise StartError(
                f"not migrated (run `consent-ledger migrate`), checked for {wait:g} s:\n  "
                + "\n  ".join(problems)
            )
        log.info("waiting for migrate: %s", problems[0])
        await asyncio.sleep(CHECK_INTERVAL_S)
    print("schema and topics are in place")
