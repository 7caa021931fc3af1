"""``consent-ledger audit access``: list who read what, from a running service's
``ListAuditAccess``. A client of the gRPC API: the caller's token, its audit scope
and its brands decide what it may list, and the listing is itself recorded."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

ACCESS_DESCRIPTION = """\
List the audit reads of a brand, newest first: who read (the token's name), what
(the call: GetProofPacket, ListEvents, SweepCampaign, ...), about which number and
campaign, when, under which request id, and through what (grpc, console).

The service records every audit read before it answers it, in an append-only
table (nothing in it can be changed or removed); a read it cannot record it
refuses, unread. So this list is every read there was. Listing it is an audit
read too, and is listed. A token limited to some brands lists only theirs."""

ACCESS_EXAMPLES = """\
consent-ledger audit access --brand acme
consent-ledger audit access --brand acme --phone +14155552671 --from 2026-12-01
consent-ledger audit access --brand acme --subject acme-auditor --json | jq -r .action"""

ACCESS_EXIT = """\
0  listed
1  the service refused (the reason and any bad field are printed) or could not
   be reached
2  a usage error"""


def add_parser(tools: Any) -> None:
    """``access`` among ``audit``'s tools (``services.cli.audit``)."""
    from services.cli import client
    from services.cli.client import CONNECTION
    from services.cli.manual import Manual, tool

    parser = tool(
        tools,
        "access",
        Manual(
            summary="list who read what: every audit read of a brand, newest first",
            description=f"{ACCESS_DESCRIPTION}\n\n{CONNECTION}",
            examples=ACCESS_EXAMPLES,
            exit_status=ACCESS_EXIT,
            see_also=("consent-ledger audit packet",),
        ),
    )
    parser.add_argument(
        "--brand", help="the brand whose reads to list (default: every brand, for such a token)"
    )
    parser.add_argument("--phone", help="only the reads of this number (E.164)")
    parser.add_argument("--subject", help="only the reads by this caller (a token's name)")
    parser.add_argument("--from", dest="start", type=client.moment, help="first moment (ISO 8601)")
    parser.add_argument("--to", dest="end", type=client.moment, help="moment after the last")
    parser.add_argument(
        "--limit", type=int, default=100, metavar="N", help="at most N records (default 100)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object a line")
    client.add_connection_options(parser, 60)


def record(access: Any) -> dict[str, Any]:
    """An ``AuditAccess`` as one JSON object."""
    return {
        "id": access.id,
        "at": access.at.ToJsonString(),
        "subject": access.subject,
        "via": access.via,
        "action": access.action,
        "brand": access.brand or None,
        "phone": access.phone or None,
        "campaign": access.campaign or None,
        "request_id": access.request_id,
        "detail": dict(access.detail),
        "outcome": access.outcome or "admitted",
        "refusal_code": access.refusal_code or None,
        "refusal": access.refusal or None,
    }


def text(found: dict[str, Any]) -> str:
    what = " ".join(
        x for x in (found["brand"] or "(every brand)", found["phone"], found["campaign"]) if x
    )
    detail = " ".join(f"{k}={v}" for k, v in sorted(found["detail"].items()))
    line = (
        f"{found['at']}  {found['subject']}  {found['action']}  {what}  "
        f"request {found['request_id']} via {found['via']}" + (f"  {detail}" if detail else "")
    )
    if found.get("outcome") == "refused":  # an attempt, turned away before any read
        line += f"  REFUSED {found['refusal_code']}: {found['refusal']}"
    return line


def run(args: argparse.Namespace) -> int:
    import grpc
    from consent.v1 import consent_service_pb2 as api
    from consent.v1 import consent_service_pb2_grpc as api_grpc

    from services.cli import client

    if args.limit < 1:
        print("consent-ledger audit access: --limit must be 1 or more", file=sys.stderr)
        return 2
    connected = client.connect(args, "audit access")
    if connected is None:
        return 2
    token, channel = connected
    request = api.ListAuditAccessRequest(
        phone=args.phone or "", subject=args.subject or "", page_size=min(args.limit, 1000)
    )
    if args.brand is not None:
        request.brand = args.brand
    if args.start is not None:
        request.start_time.FromDatetime(args.start)
    if args.end is not None:
        request.end_time.FromDatetime(args.end)
    shown = 0
    try:
        with channel:
            stub = api_grpc.ConsentServiceStub(channel)
            backoff = client.Backoff("audit access")
            while shown < args.limit:
                page = backoff.call(
                    lambda: stub.ListAuditAccess(
                        request,
                        metadata=[("authorization", f"Bearer {token}")],
                        timeout=args.timeout,
                    )
                )
                for access in page.accesses[: args.limit - shown]:
                    found = record(access)
                    print(json.dumps(found) if args.json else text(found))
                    shown += 1
                if not page.next_page_token:
                    break
                request.page_token = page.next_page_token
    except grpc.RpcError as exc:
        print(f"consent-ledger audit access: {client.refusal(exc)}", file=sys.stderr)
        return 1
    print(f"{shown} read(s) listed", file=sys.stderr)
    return 0
