"""``consent-ledger audit sweep``: ask a running service to sweep a campaign for the
messages sent without what the policy required, show how far it has come, and
print each finding. A client of ``SweepCampaign``: the caller's token, its audit
scope and its brands decide what it may read."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from typing import Any

from services.progress import Progress, ProgressLine, wanted

SWEEP_DESCRIPTION = """\
List every message of a campaign sent in [--from, --to) that lacked what the
policy required at that moment, with the reason and the ids of the events that
show it. Each send is judged as CanSend would have answered when it went out
(CanSendAsOf at its time, from what the ledger had recorded when the send was):

  no_consent                 no consent of a sufficient tier for the campaign
  after_opt_out              after an opt-out, other than the one confirmation
  quiet_hours                outside the federal, the recipient's state's or the
                             campaign's hours, or on a day the state closes
  over_cap                   over the campaign's or the state's cap
  age_unverified             an age-gated campaign, no verification of 21+
  obligations_unmet          allowed, but without the opt-out language of a first
                             message, the sender's name, or a reconfirmation due
  not_allowed                denied for another reason (content, unowed reply)
  sent_against_not_allowed   the sender relied on an answer that said no
  sent_without_asking        the sender named no answer it relied on

It streams: a campaign of millions of messages is swept without holding them,
with a progress line on standard error (share done, events read, rate, time left)
when it is a terminal or with --progress."""


def _manual() -> Any:
    from services.cli_manual import Manual
    from services.packets.cli import CONNECTION

    return Manual(
        summary="list a campaign's messages sent without what the policy required",
        description=f"{SWEEP_DESCRIPTION}\n\n{CONNECTION}",
        examples="""\
consent-ledger audit sweep --brand acme --campaign promo \\
    --from 2026-11-01T00:00:00Z --to 2026-12-01T00:00:00Z
consent-ledger audit sweep --brand acme --campaign promo --from 2026-11-01 \\
    --to 2026-12-01 --json | jq -r 'select(.kinds[] == "quiet_hours") | .phone'""",
        exit_status="""\
0  swept, nothing found
1  swept, findings printed; or the service refused (the reason and any bad
   field are printed) or could not be reached
2  a usage error""",
        see_also=("consent-ledger audit packet", "consent-ledger audit health"),
    )


def _moment(text: str) -> datetime:
    """An ISO 8601 time; a date or a time without zone is read as UTC."""
    from datetime import UTC

    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def add_parser(tools: Any) -> None:
    """``sweep`` among ``audit``'s tools."""
    from services.cli_manual import tool
    from services.packets import cli as packet_cli

    sweep = tool(tools, "sweep", _manual())
    sweep.add_argument("--brand", required=True, help="the brand")
    sweep.add_argument("--campaign", required=True, help="the campaign swept")
    sweep.add_argument(
        "--from", dest="start", required=True, type=_moment, help="first moment (ISO 8601)"
    )
    sweep.add_argument(
        "--to", dest="end", required=True, type=_moment, help="moment after the last (ISO 8601)"
    )
    sweep.add_argument("--json", action="store_true", help="print findings as JSON Lines")
    sweep.add_argument(
        "--at-least-as-fresh",
        default="",
        metavar="TOKEN",
        help="a write's consistency_token: sweep a view that has applied it",
    )
    sweep.add_argument("--quiet", action="store_true", help="no progress line")
    sweep.add_argument(
        "--progress",
        action="store_true",
        help="a progress line on standard error even when it is not a terminal",
    )
    sweep.add_argument(
        "--address",
        help=f"the service (default: $CONSENT_ADDRESS or {packet_cli.DEFAULT_ADDRESS})",
    )
    sweep.add_argument("--token-file", type=_path, help="a file holding the bearer token")
    sweep.add_argument("--cacert", type=_path, help="PEM CA to verify the server's certificate")
    sweep.add_argument("--cert", type=_path, help="PEM client certificate, for mutual TLS")
    sweep.add_argument("--key", type=_path, help="PEM key of --cert")
    sweep.add_argument(
        "--timeout", type=float, default=3600.0, metavar="SECONDS", help="give up after (3600)"
    )


def _path(text: str) -> Any:
    from pathlib import Path

    return Path(text)


def finding_record(finding: Any) -> dict[str, Any]:
    """A ``SweepFinding`` as one JSON object, enum names in lower case."""
    from consent.v1 import consent_service_pb2 as api
    from consent.v1 import ledger_pb2 as lpb

    def name(enum: Any, prefix: str, value: int) -> str:
        return str(enum.Name(value)).removeprefix(prefix).lower()

    record: dict[str, Any] = {
        "event_id": finding.event_id,
        "phone": finding.phone,
        "message_id": finding.message_id,
        "message_kind": name(lpb.MessageKind, "MESSAGE_KIND_", finding.message_kind),
        "occurred_at": finding.occurred_at.ToJsonString(),
        "recorded_at": finding.recorded_at.ToJsonString(),
        "kinds": [name(api.SweepFindingKind, "SWEEP_FINDING_KIND_", k) for k in finding.kinds],
        "allowed": finding.allowed,
        "reason": name(api.Reason, "REASON_", finding.reason),
        "detail": finding.detail,
        "rule": finding.rule,
        "evidence_event_ids": list(finding.evidence_event_ids),
        "unmet_obligations": [
            name(api.Obligation, "OBLIGATION_", o) for o in finding.unmet_obligations
        ],
        "relied_on": None,
    }
    if finding.HasField("relied_on"):
        relied = finding.relied_on
        record["relied_on"] = {
            "consistency_token": relied.consistency_token,
            "allowed": relied.allowed,
            "reason": name(api.Reason, "REASON_", relied.reason),
        }
    return record


def _text(record: dict[str, Any]) -> str:
    why = f"{record['reason']}: {record['detail']}" if not record["allowed"] else "allowed"
    relied = record["relied_on"]
    asked = "not asked" if relied is None else f"relied on {relied['reason']}"
    return (
        f"{record['occurred_at']}  {record['phone']}  {record['message_id']}  "
        f"{','.join(record['kinds'])}\n"
        f"    answer then: {why}\n"
        f"    sender: {asked}; evidence: {', '.join(record['evidence_event_ids']) or '-'}"
    )


def run(args: argparse.Namespace) -> int:
    import os

    import grpc
    from consent.v1 import consent_service_pb2 as api
    from consent.v1 import consent_service_pb2_grpc as api_grpc

    from services.packets import cli as packet_cli

    address = args.address or os.environ.get("CONSENT_ADDRESS") or packet_cli.DEFAULT_ADDRESS
    try:
        token = packet_cli._token(args)
        channel = packet_cli._channel(args, address)
    except (OSError, ValueError) as exc:
        print(f"consent-ledger audit sweep: {exc}", file=sys.stderr)
        return 2
    if token is None:
        print(
            "consent-ledger audit sweep: no token: give --token-file or set CONSENT_TOKEN",
            file=sys.stderr,
        )
        return 2
    request = api.SweepCampaignRequest(
        brand=args.brand, campaign=args.campaign, at_least_as_fresh=args.at_least_as_fresh
    )
    request.start_time.FromDatetime(args.start)
    request.end_time.FromDatetime(args.end)
    shown = wanted(sys.stderr, args.progress) and not args.quiet
    progress = ProgressLine(sys.stderr, "sweep")
    began = time.monotonic()
    found = judged = events = 0
    try:
        with channel:
            stream = api_grpc.ConsentServiceStub(channel).SweepCampaign(
                request, metadata=[("authorization", f"Bearer {token}")], timeout=args.timeout
            )
            for item in stream:
                if item.HasField("progress"):
                    p = item.progress
                    events, judged = p.events_read, p.sends_judged
                    if shown:
                        progress(
                            Progress(
                                done=p.events_read,
                                total=None,
                                read=p.events_read,
                                seconds=time.monotonic() - began,
                                fraction=p.done,
                                note=f"{p.findings:,} found",
                            )
                        )
                    continue
                found += 1
                record = finding_record(item.finding)
                progress.interrupt()
                print(json.dumps(record) if args.json else _text(record), flush=True)
    except grpc.RpcError as exc:
        progress.interrupt()
        print(f"consent-ledger audit sweep: {packet_cli._refusal(exc)}", file=sys.stderr)
        return 1
    progress.end()
    print(
        f"swept {args.brand}/{args.campaign}: {events:,} events read, {judged:,} sends "
        f"judged, {found:,} found",
        file=sys.stderr,
    )
    return 1 if found else 0
