"""What the commands that are clients of a running service share (``audit packet``,
``sweep``, ``health``, ``access``, ``erase``, ``hold`` and ``import``): where the
service is, the token, the channel (plaintext or TLS), a refusal told as text, and
the argument types of their options."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

CONNECTION = """\
Connection: the audit tools that ask a running service (packet, sweep, health,
access, erase, hold) reach it at --address, or CONSENT_ADDRESS, else
127.0.0.1:50051, with the token in --token-file, else CONSENT_TOKEN, else
var/data/dev-token (what `make run` writes). Plaintext unless --cacert is given
(TLS), with --cert and --key for mutual TLS."""
"""The paragraph each client tool's manual page ends its description with."""

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEV_TOKEN = Path("var/data/dev-token")


def add_connection_options(parser: argparse.ArgumentParser, timeout: int) -> None:
    """``--address``, ``--token-file``, ``--cacert``, ``--cert``, ``--key`` and
    ``--timeout`` (giving up after ``timeout`` seconds), which ``connect`` reads."""
    parser.add_argument(
        "--address", help=f"the service (default: $CONSENT_ADDRESS or {DEFAULT_ADDRESS})"
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        help=f"a file holding the bearer token (default: $CONSENT_TOKEN, else {DEV_TOKEN})",
    )
    parser.add_argument("--cacert", type=Path, help="PEM CA to verify the server's certificate")
    parser.add_argument("--cert", type=Path, help="PEM client certificate, for mutual TLS")
    parser.add_argument("--key", type=Path, help="PEM key of --cert")
    parser.add_argument(
        "--timeout",
        type=float,
        default=float(timeout),
        metavar="SECONDS",
        help=f"give up after ({timeout})",
    )


def token(args: argparse.Namespace) -> str | None:
    """The bearer token: ``--token-file``, else $CONSENT_TOKEN, else the dev token.
    A file holding none is refused (``ValueError``): sent as it is, the service's
    answer, "expected 'Bearer <token>'", did not say that the file was empty."""
    if args.token_file is not None:
        return _held(args.token_file, f"--token-file {args.token_file}")
    if os.environ.get("CONSENT_TOKEN"):
        return os.environ["CONSENT_TOKEN"].strip()
    if DEV_TOKEN.exists():
        return _held(DEV_TOKEN, str(DEV_TOKEN))
    return None


def _held(path: Path, named: str) -> str:
    found = path.read_text().strip()
    if not found:
        raise ValueError(f"{named} is empty: it holds no token")
    return found


def address(args: argparse.Namespace) -> str:
    """``--address``, else $CONSENT_ADDRESS, else ``DEFAULT_ADDRESS``."""
    return args.address or os.environ.get("CONSENT_ADDRESS") or DEFAULT_ADDRESS


def connect(args: argparse.Namespace, tool: str) -> tuple[str, Any] | None:
    """The token and channel a client tool (``consent-ledger TOOL``) calls the
    service with; None after saying on standard error why there are none (the tool
    then exits 2, a usage error)."""
    try:
        found = token(args)
        opened = channel(args, address(args))
    except (OSError, ValueError) as exc:
        print(f"consent-ledger {tool}: {exc}", file=sys.stderr)
        return None
    if found is None:
        print(
            f"consent-ledger {tool}: no token: give --token-file or set CONSENT_TOKEN",
            file=sys.stderr,
        )
        return None
    return found, opened


def channel(args: argparse.Namespace, address: str) -> Any:
    """A channel to ``address``: plaintext, or TLS with ``--cacert`` (and mutual TLS
    with ``--cert`` and ``--key``); ValueError for options that do not go together."""
    import grpc

    if args.cacert is None:
        if args.cert or args.key:
            raise ValueError("--cert and --key go with --cacert")
        return grpc.insecure_channel(address)
    if bool(args.cert) != bool(args.key):
        raise ValueError("--cert and --key go together")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=args.cacert.read_bytes(),
        private_key=args.key.read_bytes() if args.key else None,
        certificate_chain=args.cert.read_bytes() if args.cert else None,
    )
    return grpc.secure_channel(address, credentials)


def refusal(exc: Any) -> str:
    """A failed call's status, message, and the fields a ``BadRequest`` names."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    lines = [f"{exc.code().name}: {exc.details()}"]
    status = rpc_status.from_call(exc)
    for detail in status.details if status else []:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            lines += [f"  {v.field}: {v.description}" for v in bad.field_violations]
    return "\n".join(lines)


def moment(text: str) -> datetime:
    """An ISO 8601 time; a date or a time without zone is read as UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
