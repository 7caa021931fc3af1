"""The packet as JSON: the form machines read, and the one the HTML page and the PDF
are drawn from, so all three show the same facts."""

from __future__ import annotations

import dataclasses
import enum
import json
from datetime import datetime
from typing import Any

from ledger.packet import Packet, iso

TAMPER_EVIDENCE_PENDING = {
    "status": "not_available",
    "detail": (
        "this packet does not carry the proof of its events against a signed "
        "checkpoint yet; each event's partition and offset are listed, so "
        "`consent-ledger export` and `consent-ledger verify` check them against the "
        "ledger's signed checkpoints"
    ),
}
"""``tamper_evidence`` until a packet carries its own proof: the place where what
checks the packet's events against a signed checkpoint, with the public key alone,
goes (``ledger.chain.prove`` makes it from the partition's records)."""


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, enum.Enum):
        return value.value
    return value


def to_document(
    packet: Packet,
    *,
    consistency_token: str = "",
    tamper_evidence: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The packet as plain JSON values (times as UTC ISO 8601 with ``Z``).

    ``consistency_token``: how far the view had read the ledger when the packet was
    made. ``tamper_evidence``: what checks the events against a signed checkpoint."""
    body = _plain(packet)
    stored = body.pop("tamper_evidence")
    for opt_in in body["opt_ins"]:
        for item in opt_in["template"]:
            item["missing"] = item["value"] is None
    return {
        "packet_version": body.pop("version"),
        "title": "Proof of opt-in",
        "phone": body.pop("phone"),
        "brand": body.pop("brand"),
        "campaign": body.pop("campaign"),
        "generated_at": body.pop("generated_at"),
        "consistency_token": consistency_token,
        **body,
        "tamper_evidence": tamper_evidence or stored or TAMPER_EVIDENCE_PENDING,
    }


def to_json(document: dict[str, Any]) -> bytes:
    return json.dumps(document, ensure_ascii=False, indent=2).encode() + b"\n"
