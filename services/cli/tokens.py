"""``consent-ledger token add`` / ``token remove``: edit the tokens file. No
service, database or broker needed; a running service reads the file again."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any


def add_parser(command: Any) -> None:
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


def _number(text: str, option: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{option} must be a number or 'unlimited', got {text!r}") from None


def run(args: argparse.Namespace) -> int:
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
