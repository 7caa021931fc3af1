"""``consent-ledger audit packet``: ask a running service for a number's proof of
opt-in and write it as JSON, HTML or PDF. A client of the gRPC API, so the caller's
token, its audit scope and its brands decide what it may read, as for any call."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from services.cli import client
from services.cli.client import CONNECTION
from services.cli.manual import Manual, tool
from services.progress import Progress, ProgressLine, wanted

PACKET_DESCRIPTION = """\
Write the proof of opt-in for one phone number and one brand (optionally one
campaign): what a carrier's or a court's request for proof asks for, from the
ledger alone, as a file for people (HTML or PDF) or for machines (JSON).

The packet holds, for each opt-in, the fields of the provider's proof-of-opt-in
template (name, email, physical address, registration date and time, IP address
or other method of collection, form URL, consent wording, screenshot and its
SHA-256, the first message sent), with every field the record lacks listed as
missing, never filled in; every message sent, with the decision CanSend would
have given for it from what the ledger had recorded when the send was recorded
(and the decision in hindsight, when a fact recorded later changes it); every
opt-out and every text received, with how each was handled (the confirmation
sent, the review of a flagged reply); the consent timeline, drawn as a picture
in HTML and PDF (grant, messages, STOP, confirmation, resume); and every fact it
rests on, with its ledger position and who recorded it. History is kept after an
opt-out, so a packet made years later is whole.

It asks the service's GetProofPacket (the same as grpcurl would) with a token
that has the audit scope for the brand: a token limited to other brands is
refused. It prints a summary to standard error."""

PACKET_MANUAL = Manual(
    summary="write a number's proof-of-opt-in packet (JSON, HTML or PDF)",
    description=f"{PACKET_DESCRIPTION}\n\n{CONNECTION}",
    examples="""\
consent-ledger audit packet --phone +14155552671 --brand acme --format pdf -o proof.pdf
consent-ledger audit packet --phone +14155552671 --brand acme --campaign promo \\
    --format json -o - | jq '.missing'""",
    exit_status="""\
0  the packet was written
1  the service refused (the reason and any bad field are printed) or could
   not be reached
2  a usage error""",
    see_also=("consent-ledger audit verify", "consent-ledger audit access"),
)


def add_parser(tools: Any) -> None:
    """``packet`` among ``audit``'s tools (``services.cli.audit``)."""
    packet = tool(tools, "packet", PACKET_MANUAL)
    packet.add_argument("--phone", required=True, help="the number, E.164 (+14155552671)")
    packet.add_argument("--brand", required=True, help="the brand the proof is for")
    packet.add_argument(
        "--campaign", help="only what bears on this campaign (default: every campaign)"
    )
    packet.add_argument(
        "--format",
        choices=["json", "html", "pdf"],
        default="pdf",
        help="json for machines; html or pdf (the default) for people",
    )
    packet.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="FILE",
        help="where to write it; - for standard output",
    )
    client.add_connection_options(packet, 60)
    packet.add_argument(
        "--progress",
        action="store_true",
        help="the progress line on standard error even when it is not a terminal",
    )
    packet.add_argument("--quiet", action="store_true", help="no progress line")


def summary(packet: dict[str, Any]) -> str:
    """What a person wants to know before opening the file."""
    messages = packet["messages"]
    denied = sum(1 for m in messages if not m["decision"]["allowed"])
    late = sum(1 for m in messages if m["hindsight"] and not m["hindsight"]["allowed"])
    lines = [
        f"proof of opt-in for {packet['phone']} / {packet['brand']}"
        + (f" / {packet['campaign']}" if packet["campaign"] else "")
        + f" (ledger read up to {packet['consistency_token'] or '-'})",
        f"  opt-ins: {len(packet['opt_ins'])}; messages: {len(messages)} "
        f"({denied} not allowed when sent, {late} not allowed in hindsight); "
        f"opt-outs: {len(packet['opt_outs'])}; texts received: {len(packet['replies'])}",
    ]
    if packet["missing"]:
        lines.append("  missing: " + ", ".join(m["field"] for m in packet["missing"]))
    else:
        lines.append("  missing: nothing the template asks for")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import grpc
    from consent.v1 import consent_service_pb2 as api
    from consent.v1 import consent_service_pb2_grpc as api_grpc

    if args.output == "-" and args.format == "pdf" and sys.stdout.isatty():
        print(
            "consent-ledger audit packet: a PDF is not for a terminal: give -o FILE",
            file=sys.stderr,
        )
        return 2
    connected = client.connect(args, "audit packet")
    if connected is None:
        return 2
    token, channel = connected
    request = api.GetProofPacketRequest(
        phone=args.phone,
        brand=args.brand,
        format={
            "json": api.PACKET_FORMAT_JSON,
            "html": api.PACKET_FORMAT_HTML,
            "pdf": api.PACKET_FORMAT_PDF,
        }[args.format],
    )
    if args.campaign is not None:
        request.campaign = args.campaign
    began = time.monotonic()
    try:
        with channel:
            stub = api_grpc.ConsentServiceStub(channel)
            answer = client.Backoff("audit packet").call(
                lambda: stub.GetProofPacket(
                    request, metadata=[("authorization", f"Bearer {token}")], timeout=args.timeout
                )
            )
    except grpc.RpcError as exc:
        print(f"consent-ledger audit packet: {client.refusal(exc)}", file=sys.stderr)
        return 1
    if wanted(sys.stderr, args.progress) and not args.quiet:
        # One number's packet comes in one answer: the line says what it read, and
        # how fast, once it is there.
        events = len(_as_dict(answer.packet).get("events", []))
        progress = ProgressLine(sys.stderr, "packet")
        progress(Progress(events, events, events, time.monotonic() - began))
        progress.end()
    if args.output == "-":
        sys.stdout.buffer.write(answer.document)
        sys.stdout.buffer.flush()
    else:
        Path(args.output).write_bytes(answer.document)
    packet = json.loads(answer.document) if args.format == "json" else _as_dict(answer.packet)
    where = "standard output" if args.output == "-" else args.output
    print(f"wrote {where} ({args.format}, {len(answer.document)} bytes)", file=sys.stderr)
    print(summary(packet), file=sys.stderr)
    return 0


def _as_dict(message: Any) -> dict[str, Any]:
    from google.protobuf import json_format

    found: dict[str, Any] = json_format.MessageToDict(message)
    return found
