"""``consent-ledger audit erase`` and ``audit hold place|release``: clients of the
service's RequestErasure, PlaceLegalHold and ReleaseLegalHold, with the caller's
token (its scope and brands decide, as for any call)."""

from __future__ import annotations

import argparse
import sys
import uuid
from typing import Any

ERASE_DESCRIPTION = """\
Erase the personal data of one phone number towards one brand: the name, email,
physical address, IP address and collection details of its opt-ins, and the
words of its texts and opt-outs. The service destroys the number's key for the
brand and records the erasure as an event. Every event stays in the ledger, and
the ledger still verifies (consent-ledger verify): the events were sealed with
that key, and now show [erased] where they held personal data. CanSend answers
"not allowed" for the number (REASON_SUBJECT_ERASED, or the opt-out that
stands) until a fresh opt-in after the erasure.

Proof is kept for the retention period, CONSENT_RETENTION_YEARS (5 by default)
after the last fact about the number and brand. Inside it, or while a legal hold
stands, the erasure is refused with the reason and the date from which it is
possible. Needs a token with the admin scope for the brand."""


HOLD_DESCRIPTION = """\
Place or release a legal hold on a phone number's records towards a brand.
While any hold stands the number's personal data cannot be erased, whatever the
retention period says. Each is recorded as an event (LegalHoldPlaced,
LegalHoldReleased) and shows in the proof packet. Placing needs the audit scope
for the brand, releasing the admin scope; releasing a hold that does not stand
is refused."""


def _manuals() -> tuple[Any, Any]:
    from services.cli.client import CONNECTION
    from services.cli.manual import Manual

    erase = Manual(
        summary="erase a number's personal data after the retention period",
        description=f"{ERASE_DESCRIPTION}\n\n{CONNECTION}",
        examples="""\
consent-ledger audit erase --phone +14155552671 --brand acme --reference DSR-1042
consent-ledger audit erase --phone +14155552671 --brand acme --request-id dsr-1042
    (a retry with the same --request-id records nothing twice)""",
        exit_status="""\
0  erased (or erased before, by the same --request-id)
1  refused (the reason and the date it becomes possible are printed), or the
   service could not be reached
2  a usage error""",
        see_also=("consent-ledger audit hold", "consent-ledger audit verify"),
    )
    hold = Manual(
        summary="place or release a legal hold on a number's records",
        description=f"{HOLD_DESCRIPTION}\n\n{CONNECTION}",
        examples="""\
consent-ledger audit hold place --phone +14155552671 --brand acme \\
    --hold-id smith-v-acme --reason "Smith v. Acme, N.D. Cal."
consent-ledger audit hold release --phone +14155552671 --brand acme --hold-id smith-v-acme""",
        exit_status="""\
0  the hold was placed or released
1  refused (a release of a hold that does not stand, another brand's number), or
   the service could not be reached
2  a usage error""",
        see_also=("consent-ledger audit erase",),
    )
    return erase, hold


def _connection(parser: argparse.ArgumentParser) -> None:
    from services.cli import client

    parser.add_argument("--phone", required=True, help="the number, E.164 (+14155552671)")
    parser.add_argument("--brand", required=True, help="the brand")
    parser.add_argument(
        "--request-id",
        default=None,
        help="makes a retry harmless: the same id records nothing twice (default: a new one)",
    )
    client.add_connection_options(parser, 30)


def add_parsers(tools: Any) -> None:
    """``erase`` and ``hold`` among ``audit``'s tools (``services.cli.audit``)."""
    from services.cli.manual import tool

    erase_manual, hold_manual = _manuals()
    erase = tool(tools, "erase", erase_manual)
    _connection(erase)
    erase.add_argument("--reference", default="", help="your reference, e.g. a ticket number")
    hold = tool(tools, "hold", hold_manual)
    hold.add_argument("action", choices=["place", "release"], help="place or release the hold")
    _connection(hold)
    hold.add_argument("--hold-id", required=True, help="the hold's name, e.g. the matter")
    hold.add_argument("--reason", default="", help="why it is placed (place only)")


def _refusal(exc: Any) -> str:
    """A failed call's status and message, its bad fields, and an ``ErrorInfo``'s
    reason and metadata (the date an erasure becomes possible, the holds)."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    lines = [f"{exc.code().name}: {exc.details()}"]
    status = rpc_status.from_call(exc)
    for detail in status.details if status else []:
        bad = error_details_pb2.BadRequest()
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(bad):
            lines += [f"  {v.field}: {v.description}" for v in bad.field_violations]
        elif detail.Unpack(info):
            lines.append(f"  reason: {info.reason}")
            lines += [f"  {k}: {v}" for k, v in sorted(info.metadata.items()) if v]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import grpc
    from consent.v1 import consent_service_pb2 as api
    from consent.v1 import consent_service_pb2_grpc as api_grpc

    from services.cli import client

    name = "audit erase" if args.audit_command == "erase" else f"audit hold {args.action}"
    connected = client.connect(args, name)
    if connected is None:
        return 2
    token, channel = connected
    request_id = args.request_id or uuid.uuid4().hex
    subject = {"request_id": request_id, "phone": args.phone, "brand": args.brand}
    metadata = [("authorization", f"Bearer {token}")]
    try:
        with channel:
            stub = api_grpc.ConsentServiceStub(channel)
            # Tried again with the same request_id: a retry records nothing twice.
            backoff = client.Backoff(name)
            if args.audit_command == "erase":
                erased = backoff.call(
                    lambda: stub.RequestErasure(
                        api.RequestErasureRequest(**subject, reference=args.reference),
                        metadata=metadata,
                        timeout=args.timeout,
                    )
                )
                ended = erased.retained_until.ToDatetime().date().isoformat()
                print(
                    f"erased {args.phone} for {args.brand}: event {erased.event_id}, "
                    f"{erased.keys_destroyed} key(s) destroyed (retention ended {ended}); "
                    f"consistency token {erased.consistency_token}"
                )
            elif args.action == "place":
                placed = backoff.call(
                    lambda: stub.PlaceLegalHold(
                        api.PlaceLegalHoldRequest(
                            **subject, hold_id=args.hold_id, reason=args.reason
                        ),
                        metadata=metadata,
                        timeout=args.timeout,
                    )
                )
                print(f"legal hold {args.hold_id} placed: event {placed.event_ids[0]}")
            else:
                released = backoff.call(
                    lambda: stub.ReleaseLegalHold(
                        api.ReleaseLegalHoldRequest(**subject, hold_id=args.hold_id),
                        metadata=metadata,
                        timeout=args.timeout,
                    )
                )
                print(f"legal hold {args.hold_id} released: event {released.event_ids[0]}")
    except grpc.RpcError as exc:
        print(f"consent-ledger {name}: {_refusal(exc)}", file=sys.stderr)
        return 1
    return 0
