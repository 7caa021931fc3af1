"""``consent-ledger audit health``: ask a running service for the health of a brand's
campaigns (``GetCampaignHealth``) and print it as a table, flags included. A client
of the service: the caller's token, its audit scope and its brands decide what it
may read."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from services.progress import Progress, ProgressLine, wanted

HEALTH_DESCRIPTION = """\
Show, for the messages a brand's campaigns sent in [--since, --until), per
campaign and per sending number, what a carrier looks at before it suspends a
sender:

  sent       every message recorded as sent (RecordMessageSent), of any kind
  opt-outs   the messages an opt-out was attributed to: each opt-out goes to the
             latest message to that number before it (of its campaign; of the
             brand for a STOPALL), never to a reply owed to the person's own
             STOP, HELP or START, and counts in that message's window
  errors     the messages whose latest delivery outcome (RecordDeliveryOutcome)
             is failed or undeliverable

with each as a rate of the messages sent, and a flag where a rate is above its
limit: by default the top of what the provider calls good, 0.3 % of opt-outs and
6 % of errors (the service's CONSENT_OPT_OUT_RATE_LIMIT and
CONSENT_ERROR_RATE_LIMIT). The sending number is RecordMessageSent's from_number;
"(none)" holds the sends that named none. Opt-outs with no message before them
are counted apart.

While the service reads the brand's events, a progress line on standard error
(share done, events read, rate, time left) when it is a terminal or with
--progress."""


def _manual() -> Any:
    from services.cli.audit.packet import CONNECTION
    from services.cli.manual import Manual

    return Manual(
        summary="show a brand's campaigns' opt-out and error rates, flagged past the limits",
        description=f"{HEALTH_DESCRIPTION}\n\n{CONNECTION}",
        examples="""\
consent-ledger audit health --brand acme
    (every campaign, the last 30 days)
consent-ledger audit health --brand acme --campaign promo \\
    --since 2026-11-01 --until 2026-12-01
consent-ledger audit health --brand acme --json | jq '.campaigns[] | select(.flagged)'""",
        exit_status="""\
0  nothing flagged
1  a campaign or sending number is flagged; or the service refused (the reason
   and any bad field are printed) or could not be reached
2  a usage error""",
        see_also=("consent-ledger audit sweep",),
    )


def add_parser(tools: Any) -> None:
    """``health`` among ``audit``'s tools."""
    from services.cli.audit import packet as packet_cli
    from services.cli.audit import sweep as sweep_cli
    from services.cli.manual import tool

    health = tool(tools, "health", _manual())
    health.add_argument("--brand", required=True, help="the brand")
    health.add_argument("--campaign", help="only this campaign (default: every campaign)")
    health.add_argument(
        "--since",
        dest="start",
        metavar="TIME",
        type=sweep_cli._moment,
        help="first moment of the window, ISO 8601 (default: 30 days before --until)",
    )
    health.add_argument(
        "--until",
        dest="end",
        metavar="TIME",
        type=sweep_cli._moment,
        help="moment after the window's last, ISO 8601 (default: now)",
    )
    health.add_argument("--json", action="store_true", help="print the answer as JSON")
    health.add_argument(
        "--progress",
        action="store_true",
        help="a progress line on standard error even when it is not a terminal",
    )
    health.add_argument("--quiet", action="store_true", help="no progress line")
    health.add_argument(
        "--at-least-as-fresh",
        default="",
        metavar="TOKEN",
        help="a write's consistency_token: read a view that has applied it",
    )
    health.add_argument(
        "--address",
        help=f"the service (default: $CONSENT_ADDRESS or {packet_cli.DEFAULT_ADDRESS})",
    )
    health.add_argument("--token-file", type=sweep_cli._path, help="a file holding the token")
    health.add_argument(
        "--cacert", type=sweep_cli._path, help="PEM CA to verify the server's certificate"
    )
    health.add_argument("--cert", type=sweep_cli._path, help="PEM client certificate, for mTLS")
    health.add_argument("--key", type=sweep_cli._path, help="PEM key of --cert")
    health.add_argument(
        "--timeout", type=float, default=600.0, metavar="SECONDS", help="give up after (600)"
    )


def _counts(counts: Any) -> dict[str, Any]:
    return {
        "messages_sent": counts.messages_sent,
        "opt_outs": counts.opt_outs,
        "delivery_errors": counts.delivery_errors,
        "opt_out_rate": counts.opt_out_rate if counts.HasField("opt_out_rate") else None,
        "error_rate": counts.error_rate if counts.HasField("error_rate") else None,
        "opt_out_flagged": counts.opt_out_flagged,
        "error_flagged": counts.error_flagged,
    }


def health_record(response: Any) -> dict[str, Any]:
    """A ``GetCampaignHealthResponse`` as one JSON object."""
    return {
        "start_time": response.start_time.ToJsonString(),
        "end_time": response.end_time.ToJsonString(),
        "opt_out_limit": response.opt_out_limit,
        "error_limit": response.error_limit,
        "flagged": response.flagged,
        "unattributed_opt_outs": response.unattributed_opt_outs,
        "consistency_token": response.consistency_token,
        "campaigns": [
            {
                "campaign": c.campaign,
                **_counts(c.counts),
                "flagged": c.counts.opt_out_flagged or c.counts.error_flagged,
                "senders": [{"from_number": s.from_number, **_counts(s.counts)} for s in c.senders],
            }
            for c in response.campaigns
        ],
    }


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _row(name: str, counts: dict[str, Any]) -> str:
    flags = [
        flag
        for flag, raised in (
            ("OPT-OUTS", counts["opt_out_flagged"]),
            ("ERRORS", counts["error_flagged"]),
        )
        if raised
    ]
    return (
        f"{name:<28} {counts['messages_sent']:>9,} {counts['opt_outs']:>9,} "
        f"{_rate(counts['opt_out_rate']):>8} {counts['delivery_errors']:>9,} "
        f"{_rate(counts['error_rate']):>8}  {' '.join(flags)}"
    ).rstrip()


def table(record: dict[str, Any], brand: str) -> str:
    """The answer as a person reads it."""
    lines = [
        f"campaign health of {brand}, {record['start_time']} to {record['end_time']}"
        f" (ledger read up to {record['consistency_token'] or '-'})",
        f"flagged above: opt-out rate {record['opt_out_limit']:.2%}, "
        f"error rate {record['error_limit']:.2%}",
        "",
        f"{'campaign / sending number':<28} {'sent':>9} {'opt-outs':>9} {'rate':>8} "
        f"{'errors':>9} {'rate':>8}  flags",
    ]
    for campaign in record["campaigns"]:
        lines.append(_row(campaign["campaign"], campaign))
        for sender in campaign["senders"]:
            lines.append(_row("  " + (sender["from_number"] or "(none)"), sender))
    if not record["campaigns"]:
        lines.append("(no message was sent in the window)")
    lines.append("")
    lines.append(f"opt-outs with no message before them: {record['unattributed_opt_outs']:,}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:

    import grpc
    from consent.v1 import consent_service_pb2 as api
    from consent.v1 import consent_service_pb2_grpc as api_grpc

    from services.cli.audit import packet as packet_cli

    connected = packet_cli.connect(args, "audit health")
    if connected is None:
        return 2
    token, channel = connected
    request = api.StreamCampaignHealthRequest(
        brand=args.brand, at_least_as_fresh=args.at_least_as_fresh
    )
    if args.campaign is not None:
        request.campaign = args.campaign
    if args.start is not None:
        request.start_time.FromDatetime(args.start)
    if args.end is not None:
        request.end_time.FromDatetime(args.end)
    shown = wanted(sys.stderr, args.progress) and not args.quiet
    progress = ProgressLine(sys.stderr, "health")
    began = time.monotonic()
    response = None
    try:
        with channel:
            # The streaming form of GetCampaignHealth: the same answer, last, after
            # progress messages as the service reads the brand's events.
            stream = api_grpc.ConsentServiceStub(channel).StreamCampaignHealth(
                request, metadata=[("authorization", f"Bearer {token}")], timeout=args.timeout
            )
            for item in stream:
                if item.HasField("health"):
                    response = item.health
                elif shown:
                    progress(
                        Progress(
                            done=item.progress.events_read,
                            total=None,
                            read=item.progress.events_read,
                            seconds=time.monotonic() - began,
                            fraction=item.progress.done,
                        )
                    )
    except grpc.RpcError as exc:
        progress.interrupt()
        print(f"consent-ledger audit health: {packet_cli._refusal(exc)}", file=sys.stderr)
        return 1
    progress.end()
    if response is None:
        print("consent-ledger audit health: the service ended without an answer", file=sys.stderr)
        return 1
    record = health_record(response)
    print(json.dumps(record, indent=2) if args.json else table(record, args.brand))
    return 1 if response.flagged else 0
