"""``consent-ledger audit``: the auditors' one tool. Each capability is a TOOL with a
manual page for its ``--help`` (``services.cli.manual``): packet, sweep, health and
access ask a running service, with the caller's token; export, verify and keys work
on the ledger and its checkpoints themselves (the same as the top-level commands)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from services.cli.manual import ManualParser

AUDIT_HELP = "the auditors' tools: packet, sweep, health, access, erase, hold, export, verify, keys"

AUDIT_DESCRIPTION = """\
The auditors' tools, one for each thing an auditor is asked for:

  packet   a number's proof of opt-in for a brand, as JSON, HTML or PDF
  sweep    a campaign's messages sent without what the policy required
  health   a brand's campaigns' opt-out and error rates, flagged past the limits
  access   who read what: every audit read, recorded before it was answered
  erase    a number's personal data erased, after the retention period
  hold     a legal hold placed or released: no erasure while it stands
  export   the ledger's records and signed checkpoints, as a file to hand over
  verify   whether any record was altered, removed, inserted or reordered
  keys     the checkpoint signing keys: make, publish, retire, revoke

`consent-ledger audit TOOL --help` is each one's manual page. packet, sweep, health,
access, erase and hold are clients of a running service (CONSENT_ADDRESS,
CONSENT_TOKEN): the token's scopes and brands decide what they may do, and the
service records each read. export, verify and keys read the ledger the service's settings name."""


def add_command(sub: Any, command: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """``audit`` and its tools on ``services.cli.main``'s parser."""
    from services.cli.audit import access, erasure, evidence, health, packet, sweep

    audit = command("audit", AUDIT_HELP)
    audit.description = AUDIT_DESCRIPTION
    audit.epilog = None
    tools = audit.add_subparsers(
        dest="audit_command", required=True, metavar="TOOL", parser_class=ManualParser
    )
    packet.add_parser(tools)
    sweep.add_parser(tools)
    health.add_parser(tools)
    access.add_parser(tools)
    erasure.add_parsers(tools)
    evidence.add_audit_tools(tools)


def run(args: argparse.Namespace) -> int:
    from services.cli.audit import access, erasure, evidence, health, packet, sweep

    tool = args.audit_command
    if tool in evidence.COMMANDS:
        args.command = tool  # as the top-level command of that name
        return evidence.run(args)
    runners: dict[str, Callable[[argparse.Namespace], int]] = {
        "packet": packet.run,
        "sweep": sweep.run,
        "health": health.run,
        "access": access.run,
        "erase": erasure.run,
        "hold": erasure.run,
    }
    return runners[tool](args)
