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

from services.progress import Progress, ProgressLine, ResumeState, StopAfter, wanted

HEALTH_STATE = "consent-ledger-health.resume"
"""Where ``audit health`` keeps its resume state by default, in the current folder."""

HEALTH_DESCRIPTION = """\
Show, for the messages a brand's campaigns sent in [--since, --until), per
campaign and per sending number, what a carrier looks at before it suspends a
sender:

  sent       every message recorded as sent (RecordMessageSent), of any kind
  opt-outs   the messages an opt-out was attributed to: each opt-out goes to the
             latest message to that number before it (of its campaign; of the
             brand for a STOPALL), never to a reply owed to the person's own
             STOP, HELP or START, and counts in that message's window
  held       the messages an opt-out held for review and not yet resolved was
             attributed to, as an opt-out is (a provider's 21610, a STOP refused
             for a detail, a reply that reads like one), and no opt-out: a
             carrier counts them already, so the flag counts them as opt-outs
             (the rate does not); resolved "revoked", one is an opt-out,
             dismissed, it counts nowhere
  errors     the messages whose latest delivery outcome (RecordDeliveryOutcome)
             is failed or undeliverable

with each as a rate of the messages sent, and a flag where a rate is above its
limit: by default the top of what the provider calls good, 0.3 % of opt-outs and
6 % of errors (the service's CONSENT_OPT_OUT_RATE_LIMIT and
CONSENT_ERROR_RATE_LIMIT). The sending number is RecordMessageSent's from_number;
"(none)" holds the sends that named none. Opt-outs and holds with no message
before them are counted apart.

While the service reads the brand's events, a progress line on standard error
(share done, events read, rate, time left) when it is a terminal or with
--progress. Interrupted (Ctrl-C, exit status 130), the same command run again
carries on from its resume state (--resume; saved at each partition's end): it
reads the same view, skips the partitions read, and adds their counts."""


def _manual() -> Any:
    from services.cli.client import CONNECTION
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

    from services.cli import client
    from services.cli.manual import tool

    health = tool(tools, "health", _manual())
    health.add_argument("--brand", required=True, help="the brand")
    health.add_argument("--campaign", help="only this campaign (default: every campaign)")
    health.add_argument(
        "--since",
        dest="start",
        metavar="TIME",
        type=client.moment,
        help="first moment of the window, ISO 8601 (default: 30 days before --until)",
    )
    health.add_argument(
        "--until",
        dest="end",
        metavar="TIME",
        type=client.moment,
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
        "--resume",
        metavar="FILE",
        help=f"the resume state (default: {HEALTH_STATE}); an interrupted read run again "
        "skips the partitions it finished",
    )
    health.add_argument(
        "--at-least-as-fresh",
        default="",
        metavar="TOKEN",
        help="a write's consistency_token: read a view that has applied it",
    )
    client.add_connection_options(health, 600)


def _counts(counts: Any) -> dict[str, Any]:
    return {
        "messages_sent": counts.messages_sent,
        "opt_outs": counts.opt_outs,
        "opt_outs_pending_review": counts.opt_outs_pending_review,
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
        "unattributed_opt_outs_pending_review": response.unattributed_opt_outs_pending_review,
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
        f"{counts['opt_outs_pending_review']:>9,} {_rate(counts['opt_out_rate']):>8} "
        f"{counts['delivery_errors']:>9,} {_rate(counts['error_rate']):>8}  {' '.join(flags)}"
    ).rstrip()


def table(record: dict[str, Any], brand: str) -> str:
    """The answer as a person reads it."""
    lines = [
        f"campaign health of {brand}, {record['start_time']} to {record['end_time']}"
        f" (ledger read up to {record['consistency_token'] or '-'})",
        f"flagged above: opt-out rate {record['opt_out_limit']:.2%}, "
        f"error rate {record['error_limit']:.2%}",
        "",
        f"{'campaign / sending number':<28} {'sent':>9} {'opt-outs':>9} {'held':>9} {'rate':>8} "
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
    held = record["unattributed_opt_outs_pending_review"]
    lines.append(f"held for review with no message before them: {held:,}")
    return "\n".join(lines)


def combine_records(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Answers (``health_record``) over disjoint partitions as one: the counts added
    per campaign and sending number, the rates and flags worked out again with the
    limits the service gave. Exact: every count is of one number's facts."""
    last = parts[-1]
    limits = (last["opt_out_limit"], last["error_limit"])
    buckets: dict[tuple[str, str], list[int]] = {}
    for part in parts:
        for c in part["campaigns"]:
            for sender in c["senders"]:
                key = (c["campaign"], sender["from_number"])
                tally = buckets.setdefault(key, [0, 0, 0, 0])
                tally[0] += sender["messages_sent"]
                tally[1] += sender["opt_outs"]
                tally[2] += sender["delivery_errors"]
                # a resume state saved before holds were counted has none
                tally[3] += sender.get("opt_outs_pending_review", 0)

    def counts(sent: int, opted: int, errors: int, held: int) -> dict[str, Any]:
        opt_rate = opted / sent if sent else None
        error_rate = errors / sent if sent else None
        return {
            "messages_sent": sent,
            "opt_outs": opted,
            "opt_outs_pending_review": held,
            "delivery_errors": errors,
            "opt_out_rate": opt_rate,
            "error_rate": error_rate,
            # as the service flags: the holds awaiting review count as opt-outs
            "opt_out_flagged": bool(sent) and (opted + held) / sent > limits[0],
            "error_flagged": error_rate is not None and error_rate > limits[1],
        }

    campaigns: dict[str, list[dict[str, Any]]] = {}
    for (name, number), (sent, opted, errors, held) in sorted(buckets.items()):
        campaigns.setdefault(name, []).append(
            {"from_number": number, **counts(sent, opted, errors, held)}
        )
    shown = []
    for name, senders in campaigns.items():
        keys = ("messages_sent", "opt_outs", "delivery_errors", "opt_outs_pending_review")
        total = counts(*(sum(s[k] for s in senders) for k in keys))
        flagged = total["opt_out_flagged"] or total["error_flagged"]
        shown.append({"campaign": name, **total, "flagged": flagged, "senders": senders})
    flagged = any(
        c[k] or s[k]
        for c in shown
        for s in c["senders"]
        for k in ("opt_out_flagged", "error_flagged")
    )
    return {
        **last,
        "flagged": flagged,
        "unattributed_opt_outs": sum(p["unattributed_opt_outs"] for p in parts),
        "unattributed_opt_outs_pending_review": sum(
            p.get("unattributed_opt_outs_pending_review", 0) for p in parts
        ),
        "campaigns": shown,
    }


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import grpc
    from consent.v1 import consent_service_pb2 as api
    from consent.v1 import consent_service_pb2_grpc as api_grpc

    from services.cli import client

    connected = client.connect(args, "audit health")
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
    state = ResumeState(Path(args.resume or HEALTH_STATE))
    asked = {
        "brand": args.brand,
        "campaign": args.campaign,
        "start": None if args.start is None else args.start.isoformat(),
        "end": None if args.end is None else args.end.isoformat(),
    }
    try:
        saved = state.load()
    except ValueError as exc:
        print(f"consent-ledger audit health: {exc}", file=sys.stderr)
        return 2
    if saved is not None and saved.get("asked") != asked:
        saved = None  # another question's state: start over, and replace it
    partials: list[dict[str, Any]] = []
    finished: list[int] = []
    read_at = ""
    if saved is not None:
        partials, finished = list(saved["partials"]), list(saved["partitions_done"])
        read_at = saved["read_at"]
        # The same window as the interrupted read, whose defaults were "now" then.
        request.start_time.FromJsonString(saved["start_time"])
        request.end_time.FromJsonString(saved["end_time"])
        request.resume_read_at = read_at
        request.resume_partitions_done.extend(finished)
    earlier = list(partials)

    def save() -> None:
        state.save(
            {
                "asked": asked,
                "read_at": read_at,
                "partitions_done": finished,
                "partials": partials,
                "start_time": partials[-1]["start_time"],
                "end_time": partials[-1]["end_time"],
            }
        )

    shown = wanted(sys.stderr, args.progress) and not args.quiet
    progress = ProgressLine(sys.stderr, "health")
    stop = StopAfter()
    began = time.monotonic()
    response = None
    try:
        with channel:
            # The streaming form of GetCampaignHealth: the same answer, last, after
            # progress messages as the service reads the brand's events.
            stub = api_grpc.ConsentServiceStub(channel)
            stream = client.Backoff("audit health").stream(
                lambda: stub.StreamCampaignHealth(
                    request, metadata=[("authorization", f"Bearer {token}")], timeout=args.timeout
                )
            )
            for item in stream:
                if item.HasField("health"):
                    response = item.health
                    continue
                p = item.progress
                read_at = item.consistency_token
                if p.HasField("partition"):  # a partition read to its end: keep it
                    partials.append(health_record(p.partition))
                    finished = sorted(p.partitions_done)
                    save()
                    stop.tick()
                if shown:
                    progress(
                        Progress(
                            done=p.events_read,
                            total=None,
                            read=p.events_read,
                            seconds=time.monotonic() - began,
                            resumed=saved is not None,
                            fraction=p.done,
                        )
                    )
    except KeyboardInterrupt:
        progress.interrupt()
        print(
            f"\nconsent-ledger audit health interrupted; {len(finished)} partition(s) read "
            f"are kept in {state.path}: run the same command again to carry on",
            file=sys.stderr,
        )
        return 130
    except grpc.RpcError as exc:
        progress.interrupt()
        print(f"consent-ledger audit health: {client.refusal(exc)}", file=sys.stderr)
        return 1
    progress.end()
    if response is None:
        print("consent-ledger audit health: the service ended without an answer", file=sys.stderr)
        return 1
    state.remove()
    record = health_record(response)
    if saved is not None:
        record = combine_records([*earlier, record])
        print(
            f"resumed: {len(saved['partitions_done'])} partition(s) read by the interrupted "
            "run, the rest by this one",
            file=sys.stderr,
        )
    print(json.dumps(record, indent=2) if args.json else table(record, args.brand))
    return 1 if record["flagged"] else 0
