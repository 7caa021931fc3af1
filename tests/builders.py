"""Small builders for domain facts, so each test states only what it is about."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from consent.v1 import ledger_pb2

from ledger.campaigns import Campaign, CampaignPolicy
from ledger.commands import RecordOptIn
from ledger.events import (
    AgeVerified,
    CollectionMethod,
    ConsentGranted,
    ConsentProof,
    ConsentReconfirmed,
    ConsentResumed,
    ConsentRevoked,
    ConsentTier,
    DeliveryOutcome,
    DeliveryOutcomeReported,
    InboundMessageReceived,
    LedgerEvent,
    LedgerPosition,
    MessageKind,
    MessageSent,
    Recorded,
    RevocationCandidateFlagged,
    RevocationCandidateResolved,
    RevocationChannel,
)
from ledger.keywords import classify

PHONE = "+14155552671"  # America/Los_Angeles
BRAND = "acme"
T0 = datetime(2026, 3, 2, 18, 0, tzinfo=UTC)  # 10:00 in Los Angeles


def at(minutes: float = 0, *, days: float = 0, hours: float = 0) -> datetime:
    return T0 + timedelta(days=days, hours=hours, minutes=minutes)


_PROOF_TEXT: dict[str, str] = {
    "name": "Ada Lovelace",
    "email": "ada@example.com",
    "postal_address": "1 Main St, Springfield",
    "ip_address": "203.0.113.7",
    "form_url": "https://acme.example/sms-signup?utm=spring",
    "consent_text": "Yes, text me Acme offers. Msg&data rates may apply. Reply STOP to cancel.",
    "screenshot_ref": "s3://proofs/form-v3.png",
    "screenshot_sha256": "9f" * 32,
}


def proof(when: datetime = T0, **changes: str) -> ConsentProof:
    """A web form's proof of opt-in, every field of the provider's template filled;
    ``changes`` replace or blank (``""``) text fields."""
    return ConsentProof(registered_at=when, **{**_PROOF_TEXT, **changes})


def proof_proto(when: datetime = T0, **changes: str) -> ledger_pb2.ConsentProof:
    """``proof`` as the API and the ledger's wire format carry it."""
    message = ledger_pb2.ConsentProof(**{**_PROOF_TEXT, **changes})
    message.registered_at.FromDatetime(when)
    return message


def opt_in(
    when: datetime = T0,
    campaign: str = "promo",
    *,
    request_id: str = "req-1",
    phone: str = PHONE,
    brand: str = BRAND,
    **changes: Any,
) -> RecordOptIn:
    """A promotional web-form opt-in with ``proof(when)``, occurring ``when``."""
    fields: dict[str, Any] = {
        "tier": ConsentTier.PROMOTIONAL,
        "method": CollectionMethod.WEB_FORM,
        "proof": proof(when),
        "occurred_at": when,
    }
    return RecordOptIn(request_id, phone, brand, campaign, **{**fields, **changes})


def _base(when: datetime) -> dict[str, Any]:
    """A new fact's own id and time. Random ids: a test database or topic that
    outlives a run never mistakes a new fact for a retried one."""
    return {"event_id": uuid.uuid4(), "occurred_at": when}


def granted(
    when: datetime = T0,
    campaign: str = "promo",
    *,
    phone: str = PHONE,
    brand: str = BRAND,
    tier: ConsentTier = ConsentTier.PROMOTIONAL,
    method: CollectionMethod = CollectionMethod.WEB_FORM,
) -> ConsentGranted:
    return ConsentGranted(
        **_base(when),
        phone=phone,
        brand=brand,
        campaign=campaign,
        tier=tier,
        method=method,
        proof=proof(when),
    )


def revoked(
    when: datetime,
    campaign: str | None = "promo",
    *,
    phone: str = PHONE,
    brand: str = BRAND,
    text: str = "STOP",
    imported: bool = False,
) -> ConsentRevoked:
    return ConsentRevoked(
        **_base(when),
        phone=phone,
        brand=brand,
        campaign=campaign,
        channel=RevocationChannel.KEYWORD,
        text=text,
        imported=imported,
    )


def resumed(when: datetime, campaign: str | None = None) -> ConsentResumed:
    return ConsentResumed(**_base(when), phone=PHONE, brand=BRAND, campaign=campaign)


def reconfirmed(when: datetime, campaign: str = "promo") -> ConsentReconfirmed:
    return ConsentReconfirmed(
        **_base(when),
        phone=PHONE,
        brand=BRAND,
        campaign=campaign,
        channel=RevocationChannel.KEYWORD,
        detail="YES",
    )


def sent(
    when: datetime,
    campaign: str = "promo",
    kind: MessageKind = MessageKind.REGULAR,
    *,
    disclosed: bool = True,
    exempt: bool | None = None,
    phone: str = PHONE,
    brand: str = BRAND,
) -> MessageSent:
    return MessageSent(
        **_base(when),
        phone=phone,
        brand=brand,
        campaign=campaign,
        message_id=f"msg-{uuid.uuid4().hex[:12]}",
        kind=kind,
        included_opt_out_language=disclosed,
        identified_sender=True,
        exempt=exempt,
    )


def inbound(
    when: datetime, body: str = "what are your hours?", campaign: str | None = None
) -> InboundMessageReceived:
    """A text from the person, read as ``HandleInboundMessage`` reads it; ``campaign``
    the one whose number it reached (None: no campaign's)."""
    return InboundMessageReceived(
        **_base(when),
        phone=PHONE,
        brand=BRAND,
        message_id=f"in-{uuid.uuid4().hex[:12]}",
        to_number="+12125551234",
        body=body,
        campaign=campaign,
        intent=classify(body).value,
    )


def undelivered(
    message: MessageSent, when: datetime, code: str = "30003"
) -> DeliveryOutcomeReported:
    """The provider's report that ``message`` could not be delivered."""
    return DeliveryOutcomeReported(
        **_base(when),
        phone=message.phone,
        brand=message.brand,
        message_id=message.message_id,
        campaign=message.campaign,
        outcome=DeliveryOutcome.UNDELIVERABLE,
        error_code=code,
    )


def flagged(
    when: datetime,
    text: str = "please stop texting me",
    *,
    phone: str = PHONE,
    brand: str = BRAND,
) -> RevocationCandidateFlagged:
    return RevocationCandidateFlagged(
        **_base(when), phone=phone, brand=brand, inbound_message_id="in-x", text=text
    )


def resolved(
    when: datetime, candidate: RevocationCandidateFlagged, resolution: Any
) -> RevocationCandidateResolved:
    return RevocationCandidateResolved(
        **_base(when),
        phone=PHONE,
        brand=BRAND,
        candidate_event_id=candidate.event_id,
        resolution=resolution,
    )


def age(when: datetime, *, dob: str = "", plus21: bool = False) -> AgeVerified:
    return AgeVerified(
        **_base(when),
        phone=PHONE,
        brand=BRAND,
        method="id-scan",
        date_of_birth=dob,
        verified_21_plus=plus21,
    )


def record(
    events: list[LedgerEvent],
    *,
    delay: timedelta = timedelta(0),
    known_at: list[datetime] | None = None,
) -> list[Recorded]:
    """Stamp positions in list order; ``recorded_at`` is ``occurred_at + delay`` by default."""
    out = []
    for i, e in enumerate(events):
        when = known_at[i] if known_at else e.occurred_at + delay
        out.append(Recorded(e, LedgerPosition(0, i), when))
    return out


def campaign(name: str = "promo", version: int = 1, **policy: Any) -> Campaign:
    return Campaign(BRAND, name, CampaignPolicy(**policy), version)
