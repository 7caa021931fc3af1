"""``consent-ledger audit sweep``: ask a running service to sweep a campaign for the
messages sent without what the policy required, show how far it has come, and
print each finding. A client of ``SweepCampaign``: the caller's token, its audit
scope and its brands decide what it may read."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from services.progress import Progress, ProgressLine, ResumeState, StopAfter, wanted

SWEEP_STATE = "consent-ledger-sweep.resume"
"""Where ``audit sweep`` keeps its resume state by default, in the current folder."""

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

Each send is also judged in hindsight, as the proof packet judges it: a fact
recorded after it but placed before it (an opt-out reported or imported late, an
older send, a location) can show it sent without consent. A send has one line at
most, with every kind: "answer in hindsight" then gives that answer and "answer
then" the one as recorded; with --json, "hindsight", "hindsight_kinds" and
"as_recorded" say the same.

It streams: a campaign of millions of messages is swept without holding them,
with a progress line on standard error (share done, events read, rate, time left)
when it is a terminal or with --progress.

Interrupted (Ctrl-C, exit status 130), it keeps the partitions it finished and
their findings in a resume state (--resume FILE; default
consent-ledger-sweep.resume): the same command run again prints those findings,
sweeps only the other partitions of the same view, and ends as an uninterrupted
sweep would."""


def _manual() -> Any:
    from services.cli.client import CONNECTION
    from services.cli.manual import Manual

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
2  a usage error
130  interrupted (Ctrl-C): run the same command again to carry on""",
        see_also=("consent-ledger audit packet", "consent-ledger audit health"),
    )


def add_parser(tools: Any) -> None:
    """``sweep`` among ``audit``'s tools."""
    from services.cli import client
    from services.cli.manual import tool

    sweep = tool(tools, "sweep", _manual())
    sweep.add_argument("--brand", required=True, help="the brand")
    sweep.add_argument("--campaign", required=True, help="the campaign swept")
    sweep.add_argument(
        "--from", dest="start", required=True, type=client.moment, help="first moment (ISO 8601)"
    )
    sweep.add_argument(
        "--to",
        dest="end",
        required=True,
        type=client.moment,
        help="moment after the last (ISO 8601)",
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
        "--resume",
        metavar="FILE",
        help=f"the resume state (default: {SWEEP_STATE}); an interrupted sweep run again "
        "skips the partitions it finished",
    )
    sweep.add_argument(
        "--progress",
        action="store_true",
        help="a progress line on standard error even when it is not a terminal",
    )
    client.add_connection_options(sweep, 3600)


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
        "hindsight": finding.hindsight,
        "hindsight_kinds": [
            name(api.SweepFindingKind, "SWEEP_FINDING_KIND_", k) for k in finding.hindsight_kinds
        ],
        "as_recorded": None,
    }
    if finding.HasField("as_recorded"):
        then = finding.as_recorded
        record["as_recorded"] = {
            "allowed": then.allowed,
            "reason": name(api.Reason, "REASON_", then.reason),
            "detail": then.detail,
            "evidence_event_ids": list(then.evidence_event_ids),
        }
    if finding.HasField("relied_on"):
        relied = finding.relied_on
        record["relied_on"] = {
            "consistency_token": relied.consistency_token,
            "allowed": relied.allowed,
            "reason": name(api.Reason, "REASON_", relied.reason),
        }
    return record


def _why(answer: dict[str, Any]) -> str:
    return f"{answer['reason']}: {answer['detail']}" if not answer["allowed"] else "allowed"


def _text(record: dict[str, Any]) -> str:
    relied = record["relied_on"]
    asked = "not asked" if relied is None else f"relied on {relied['reason']}"
    # A state saved by an older version lacks the answer as recorded.
    then = record.get("as_recorded")
    lines = [
        f"{record['occurred_at']}  {record['phone']}  {record['message_id']}  "
        f"{','.join(record['kinds'])}",
        f"    answer {'in hindsight' if record['hindsight'] else 'then'}: {_why(record)}",
    ]
    if then is not None:
        lines.append(f"    answer then: {_why(then)}")
    lines.append(f"    sender: {asked}; evidence: {', '.join(record['evidence_event_ids']) or '-'}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:

    import grpc
    from consent.v1 import consent_service_pb2 as api
    from consent.v1 import consent_service_pb2_grpc as api_grpc

    from services.cli import client

    connected = client.connect(args, "audit sweep")
    if connected is None:
        return 2
    token, channel = connected
    request = api.SweepCampaignRequest(
        brand=args.brand, campaign=args.campaign, at_least_as_fresh=args.at_least_as_fresh
    )
    request.start_time.FromDatetime(args.start)
    request.end_time.FromDatetime(args.end)
    state = ResumeState(Path(args.resume or SWEEP_STATE))
    asked = {
        "brand": args.brand,
        "campaign": args.campaign,
        "from": args.start.isoformat(),
        "to": args.end.isoformat(),
    }
    try:
        saved = state.load()
    except (OSError, ValueError) as exc:
        print(f"consent-ledger audit sweep: cannot read the resume state: {exc}", file=sys.stderr)
        return 2
    if saved is not None and (saved.get("command"), saved.get("request")) != ("sweep", asked):
        print(
            f"note: {state.path} is the resume state of another sweep; starting over",
            file=sys.stderr,
        )
        saved = None
    # Findings of the partitions finished, and what they read: the resumed sweep
    # reads the same view (read_at) and skips those partitions.
    kept: list[dict[str, Any]] = [] if saved is None else list(saved["findings"])
    prior_events = 0 if saved is None else int(saved["events_read"])
    prior_judged = 0 if saved is None else int(saved["sends_judged"])
    read_at = "" if saved is None else str(saved["read_at"])
    finished: list[int] = [] if saved is None else [int(p) for p in saved["partitions_done"]]
    if saved is not None:
        request.resume_read_at = read_at
        request.resume_partitions_done.extend(finished)
    pending: list[dict[str, Any]] = []
    base = {"events": 0, "judged": 0}  # this run's, at the last partition finished

    def save() -> None:
        state.save(
            {
                "command": "sweep",
                "request": asked,
                "read_at": read_at,
                "partitions_done": finished,
                "findings": kept,
                "events_read": prior_events + base["events"],
                "sends_judged": prior_judged + base["judged"],
            }
        )

    def show_record(record: dict[str, Any]) -> None:
        print(json.dumps(record) if args.json else _text(record), flush=True)

    for record in kept:
        show_record(record)
    shown = wanted(sys.stderr, args.progress) and not args.quiet
    progress = ProgressLine(sys.stderr, "sweep")
    stop = StopAfter()
    began = time.monotonic()
    events = judged = 0
    try:
        with channel:
            stub = api_grpc.ConsentServiceStub(channel)
            stream = client.Backoff("audit sweep").stream(
                lambda: stub.SweepCampaign(
                    request, metadata=[("authorization", f"Bearer {token}")], timeout=args.timeout
                )
            )
            for item in stream:
                if item.HasField("progress"):
                    p = item.progress
                    stop.tick(p.events_read - events)
                    events, judged = p.events_read, p.sends_judged
                    read_at = item.consistency_token
                    if len(p.partitions_done) > len(finished):
                        # every finding of a finished partition has come: keep them
                        finished = sorted(p.partitions_done)
                        kept.extend(pending)
                        pending.clear()
                        base.update(events=events, judged=judged)
                        save()
                    if shown:
                        progress(
                            Progress(
                                done=prior_events + p.events_read,
                                total=None,
                                read=p.events_read,
                                seconds=time.monotonic() - began,
                                resumed=saved is not None,
                                fraction=p.done,
                                note=f"{len(kept) + len(pending):,} found",
                            )
                        )
                    continue
                record = finding_record(item.finding)
                pending.append(record)
                progress.interrupt()
                show_record(record)
    except KeyboardInterrupt:
        progress.interrupt()
        if read_at:
            save()
        print(
            f"\nconsent-ledger audit sweep interrupted; {len(finished)} partition(s) swept "
            f"are kept in {state.path}: run the same command again to carry on",
            file=sys.stderr,
        )
        return 130
    except grpc.RpcError as exc:
        progress.interrupt()
        print(f"consent-ledger audit sweep: {client.refusal(exc)}", file=sys.stderr)
        return 1
    progress.end()
    state.remove()
    found = len(kept) + len(pending)
    if saved is not None:
        print(
            f"resumed: {len(saved['partitions_done'])} partition(s) swept by the interrupted "
            f"run, {events:,} events read by this one",
            file=sys.stderr,
        )
    print(
        f"swept {args.brand}/{args.campaign}: {prior_events + events:,} events read, "
        f"{prior_judged + judged:,} sends judged, {found:,} found",
        file=sys.stderr,
    )
    return 1 if found else 0
