"""The ledger's wire format: domain events <-> ``consent.v1`` protobuf messages.

This is the one place that knows both sides. Everything that stores or ships a
ledger fact (the Kafka adapter, snapshots, the gRPC audit API) goes through it,
so a field added to an event is added here and in ``ledger.proto`` and nowhere
else.

Rules the translation keeps:

* Times are tz-aware; they travel as UTC ``Timestamp``s and come back as UTC
  datetimes equal to the originals to the microsecond. A naive datetime is
  refused rather than guessed at.
* ``None`` (a brand-wide revocation, no daily cap...) is an absent field, never
  an empty string or a zero.
* ``schema_version`` is the domain class's ``class_version``; older facts are
  upcast with ``ledger.upcasting.upcast``, newer ones are refused.

Errors are ``WireFormatError`` (a ``ValueError``) naming the offending field.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, time, timedelta
from typing import Any

from consent.v1 import ledger_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp

from ledger.campaigns import (
    CampaignCategory,
    CampaignPolicy,
    CampaignPurpose,
    FrequencyCap,
    QuietHours,
    category_of,
)
from ledger.events import (
    BRAND_SETTINGS,
    EVENT_TYPES,
    AgeVerified,
    BrandPolicySet,
    CampaignDefined,
    CampaignEvent,
    CampaignPolicyChanged,
    CandidateResolution,
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
    LegalHoldPlaced,
    LegalHoldReleased,
    ListSource,
    MessageKind,
    MessageSent,
    Recorded,
    ReliedAnswer,
    RevocationCandidateFlagged,
    RevocationCandidateResolved,
    RevocationChannel,
    Sealed,
    SubjectErased,
    SubscriberEvent,
    SubscriberLocated,
)
from ledger.personal_data import SEALED
from ledger.upcasting import class_version, upcast
from services.wire.enums import EnumMap, WireFormatError

__all__ = [
    "EVENT_CLASSES",
    "WireFormatError",
    "decode_event",
    "decode_recorded",
    "decode_snapshot",
    "duration_from_proto",
    "duration_to_proto",
    "encode_event",
    "encode_recorded",
    "encode_snapshot",
    "event_from_proto",
    "event_to_proto",
    "policy_from_proto",
    "policy_to_proto",
    "recorded_from_proto",
    "recorded_from_stored",
    "recorded_to_proto",
    "timestamp_from_proto",
    "timestamp_to_proto",
]

EVENT_CLASSES: dict[str, type[LedgerEvent]] = dict(EVENT_TYPES)
"""The class each ``event_type`` decodes into (tests swap in newer versions)."""

TIERS = EnumMap(ConsentTier, ledger_pb2.ConsentTier)
METHODS = EnumMap(CollectionMethod, ledger_pb2.CollectionMethod)
SOURCES = EnumMap(ListSource, ledger_pb2.ListSource)
CHANNELS = EnumMap(RevocationChannel, ledger_pb2.RevocationChannel)
MESSAGE_KINDS = EnumMap(MessageKind, ledger_pb2.MessageKind)
OUTCOMES = EnumMap(DeliveryOutcome, ledger_pb2.DeliveryOutcome)
RESOLUTIONS = EnumMap(CandidateResolution, ledger_pb2.CandidateResolution)
PURPOSES = EnumMap(CampaignPurpose, ledger_pb2.CampaignPurpose)
CATEGORIES = EnumMap(CampaignCategory, ledger_pb2.CampaignCategory)

_MINUTES_PER_DAY = 24 * 60
_DEFAULT_POLICY = CampaignPolicy()


# --- scalars -----------------------------------------------------------------


def timestamp_to_proto(value: datetime, field: str = "timestamp") -> Timestamp:
    seconds, nanos = _since_epoch(value, field)
    return Timestamp(seconds=seconds, nanos=nanos)


def _since_epoch(value: datetime, field: str) -> tuple[int, int]:
    """A ``Timestamp``'s seconds and nanos for ``value``."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise WireFormatError(field, "must carry a time zone (naive datetimes are ambiguous)")
    # Counted from the epoch in UTC: what FromDatetime gives, without its
    # utctimetuple() (a tenth of encoding an event), which would also drop any
    # sub-second part of a historic zone's UTC offset.
    since = value - _EPOCH
    return since.days * 86_400 + since.seconds, since.microseconds * 1000


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_NANOS = 999_999_999


def timestamp_from_proto(ts: Timestamp, field: str = "timestamp") -> datetime:
    # The same value as ``ts.ToDatetime(tzinfo=UTC)`` (microseconds truncated), by
    # plain arithmetic: protobuf's helper was the largest single cost of loading a
    # stored state, and every state read decodes several timestamps.
    if not 0 <= ts.nanos <= _MAX_NANOS:  # else a negative or huge nanos moves the second
        raise WireFormatError(
            field, f"is not a valid Timestamp (nanos must be 0 to {_MAX_NANOS:,}, got {ts.nanos:,})"
        )
    try:
        return _EPOCH + timedelta(seconds=ts.seconds, microseconds=ts.nanos // 1000)
    except OverflowError:  # a client's value outside datetime's years 1 to 9999
        raise WireFormatError(field, "is out of range (years 1 to 9999)") from None


def duration_to_proto(value: timedelta) -> Duration:
    d = Duration()
    d.FromTimedelta(value)
    return d


_DURATION_SECONDS = 315_576_000_000
"""The most seconds a ``google.protobuf.Duration`` may hold (10,000 years, its spec)."""


def duration_from_proto(d: Duration, field: str = "duration") -> timedelta:
    """``d`` as a timedelta; ``WireFormatError`` naming ``field`` for a Duration its own
    spec does not allow (protobuf's ``ToTimedelta`` overflows on some of those)."""
    if abs(d.seconds) > _DURATION_SECONDS:
        raise WireFormatError(field, "is out of range (a Duration holds at most 10,000 years)")
    if abs(d.nanos) > 999_999_999 or d.seconds * d.nanos < 0:
        raise WireFormatError(
            field, "is not a valid Duration (nanos within a second, of the seconds' sign)"
        )
    return d.ToTimedelta()


def _required_time(msg: Message, name: str, field: str) -> datetime:
    if not msg.HasField(name):
        raise WireFormatError(field, "is required")
    return timestamp_from_proto(getattr(msg, name), field)


def _optional_str(msg: Message, name: str) -> str | None:
    return getattr(msg, name) if msg.HasField(name) else None


def _minute_of_day(value: time, field: str) -> int:
    if value.second or value.microsecond or value.tzinfo is not None:
        raise WireFormatError(field, "only whole minutes of a local time can be stored")
    return value.hour * 60 + value.minute


def _time_of_day(minutes: int, field: str) -> time:
    if minutes >= _MINUTES_PER_DAY:
        raise WireFormatError(field, f"must be a minute of the day (0-{_MINUTES_PER_DAY - 1})")
    return time(minutes // 60, minutes % 60)


# --- campaign policy -----------------------------------------------------------


def policy_to_proto(policy: CampaignPolicy) -> ledger_pb2.CampaignPolicy:
    msg = ledger_pb2.CampaignPolicy(
        purpose=PURPOSES.to_proto(policy.purpose),
        category=policy.category,
        age_gated=policy.age_gated,
        first_message_window=duration_to_proto(policy.first_message_window),
        quiet_hours=ledger_pb2.QuietHours(
            start_minute_of_day=_minute_of_day(policy.quiet_hours.start, "quiet_hours.start"),
            end_minute_of_day=_minute_of_day(policy.quiet_hours.end, "quiet_hours.end"),
        ),
        quiet_hours_apply_to_all=policy.quiet_hours_apply_to_all,
        frequency_caps=[
            ledger_pb2.FrequencyCap(limit=cap.limit, window=duration_to_proto(cap.window))
            for cap in policy.frequency_caps
        ],
        conversation_window=duration_to_proto(policy.conversation_window),
        opt_out_confirmation_window=duration_to_proto(policy.opt_out_confirmation_window),
        sender_numbers=list(policy.sender_numbers),
        required_proof_fields=list(policy.required_proof_fields),
        revoke_all=policy.revoke_all,
    )
    category = policy.content_category
    if policy.category and category is not None:  # by name too, for readers in any language
        msg.content_category = CATEGORIES.to_proto(category)
    if policy.reconfirm_interval is not None:
        msg.reconfirm_interval.CopyFrom(duration_to_proto(policy.reconfirm_interval))
    if policy.daily_cap is not None:
        msg.daily_cap = policy.daily_cap
    return msg


def _category(msg: ledger_pb2.CampaignPolicy) -> str:
    """The policy's category as the domain keeps it, by name: ``category`` as written
    (a fact replays as it was recorded), or the name of ``content_category``. Both
    given must agree; whether the name is a category at all is for the domain to say
    of a new request, never of a fact already recorded."""
    name: str = msg.category
    if not msg.content_category:
        return name
    category = CATEGORIES.from_proto(msg.content_category, "content_category")
    if not name:
        return category.value
    if category_of(name) is not category:
        raise WireFormatError(
            "category", f"{name!r} is not content_category {category.name}: give one, or both alike"
        )
    return name


def policy_from_proto(msg: ledger_pb2.CampaignPolicy) -> CampaignPolicy:
    """The domain policy; an absent field takes ``CampaignPolicy``'s default.

    Field names in errors are relative to the policy message (``quiet_hours...``).
    Consistency (start before end, caps of at least 1) is ``CampaignPolicy.validate``'s
    job, not the wire format's.
    """

    def window(name: str) -> timedelta:
        if msg.HasField(name):
            return duration_from_proto(getattr(msg, name), name)
        default: timedelta = getattr(_DEFAULT_POLICY, name)
        return default

    quiet_hours = _DEFAULT_POLICY.quiet_hours
    if msg.HasField("quiet_hours"):
        quiet_hours = QuietHours(
            start=_time_of_day(
                msg.quiet_hours.start_minute_of_day, "quiet_hours.start_minute_of_day"
            ),
            end=_time_of_day(msg.quiet_hours.end_minute_of_day, "quiet_hours.end_minute_of_day"),
        )
    caps = []
    for i, cap in enumerate(msg.frequency_caps):
        if not cap.HasField("window"):
            raise WireFormatError(f"frequency_caps[{i}].window", "is required")
        span = duration_from_proto(cap.window, f"frequency_caps[{i}].window")
        caps.append(FrequencyCap(limit=cap.limit, window=span))
    return CampaignPolicy(
        purpose=PURPOSES.from_proto_or(msg.purpose, "purpose", _DEFAULT_POLICY.purpose),
        category=_category(msg),
        age_gated=msg.age_gated,
        first_message_window=window("first_message_window"),
        reconfirm_interval=(
            duration_from_proto(msg.reconfirm_interval, "reconfirm_interval")
            if msg.HasField("reconfirm_interval")
            else None
        ),
        quiet_hours=quiet_hours,
        quiet_hours_apply_to_all=msg.quiet_hours_apply_to_all,
        daily_cap=msg.daily_cap if msg.HasField("daily_cap") else None,
        frequency_caps=tuple(caps),
        conversation_window=window("conversation_window"),
        opt_out_confirmation_window=window("opt_out_confirmation_window"),
        sender_numbers=tuple(msg.sender_numbers),
        required_proof_fields=tuple(msg.required_proof_fields),
        revoke_all=msg.revoke_all,
    )


# --- consent proof -------------------------------------------------------------

_PROOF_TEXT_FIELDS = (
    "name",
    "email",
    "postal_address",
    "ip_address",
    "collection_detail",
    "form_url",
    "consent_text",
    "consent_text_sha256",
    "consent_text_version",
    "screenshot_ref",
    "screenshot_sha256",
    "region",
)


def proof_to_proto(proof: ConsentProof) -> ledger_pb2.ConsentProof:
    return ledger_pb2.ConsentProof(
        registered_at=timestamp_to_proto(proof.registered_at, "proof.registered_at"),
        **{name: getattr(proof, name) for name in _PROOF_TEXT_FIELDS},
    )


def proof_from_proto(msg: ledger_pb2.ConsentProof, field: str = "proof") -> ConsentProof:
    return ConsentProof(
        registered_at=_required_time(msg, "registered_at", f"{field}.registered_at"),
        **{name: getattr(msg, name) for name in _PROOF_TEXT_FIELDS},
    )


# --- payloads, one encoder and one decoder per event type ----------------------
# An encoder returns the oneof field name and the payload message; a decoder
# returns the event's own keyword arguments (everything but id, time, phone, brand).

Payload = Any  # one of the generated payload messages
_Encoder = Callable[[Any], tuple[str, Message]]
_Decoder = Callable[[Payload], dict[str, Any]]


def _enc_granted(e: ConsentGranted) -> tuple[str, Message]:
    return "consent_granted", ledger_pb2.ConsentGranted(
        campaign=e.campaign,
        tier=TIERS.to_proto(e.tier),
        method=METHODS.to_proto(e.method),
        proof=proof_to_proto(e.proof),
        source=SOURCES.to_proto(e.source),
        stated_at=(
            None
            if e.stated_at is None
            else timestamp_to_proto(e.stated_at, "consent_granted.stated_at")
        ),
    )


def _dec_granted(p: ledger_pb2.ConsentGranted) -> dict[str, Any]:
    if not p.HasField("proof"):
        raise WireFormatError("consent_granted.proof", "is required")
    return {
        "campaign": p.campaign,
        "tier": TIERS.from_proto(p.tier, "consent_granted.tier"),
        "method": METHODS.from_proto(p.method, "consent_granted.method"),
        "proof": proof_from_proto(p.proof, "consent_granted.proof"),
        "source": SOURCES.from_proto(p.source, "consent_granted.source"),
        "stated_at": (
            timestamp_from_proto(p.stated_at, "consent_granted.stated_at")
            if p.HasField("stated_at")
            else None
        ),
    }


def _enc_revoked(e: ConsentRevoked) -> tuple[str, Message]:
    return "consent_revoked", ledger_pb2.ConsentRevoked(
        campaign=e.campaign,
        channel=CHANNELS.to_proto(e.channel),
        text=e.text,
        in_reply_to=e.in_reply_to,
        stated_at=(
            None
            if e.stated_at is None
            else timestamp_to_proto(e.stated_at, "consent_revoked.stated_at")
        ),
        imported=e.imported,
    )


def _dec_revoked(p: ledger_pb2.ConsentRevoked) -> dict[str, Any]:
    return {
        "campaign": _optional_str(p, "campaign"),
        "channel": CHANNELS.from_proto(p.channel, "consent_revoked.channel"),
        "text": p.text,
        "in_reply_to": p.in_reply_to,
        "stated_at": (
            timestamp_from_proto(p.stated_at, "consent_revoked.stated_at")
            if p.HasField("stated_at")
            else None
        ),
        "imported": p.imported,
    }


def _enc_reconfirmed(e: ConsentReconfirmed) -> tuple[str, Message]:
    return "consent_reconfirmed", ledger_pb2.ConsentReconfirmed(
        campaign=e.campaign, channel=CHANNELS.to_proto(e.channel), detail=e.detail
    )


def _dec_reconfirmed(p: ledger_pb2.ConsentReconfirmed) -> dict[str, Any]:
    return {
        "campaign": p.campaign,
        "channel": CHANNELS.from_proto(p.channel, "consent_reconfirmed.channel"),
        "detail": p.detail,
    }


def _enc_resumed(e: ConsentResumed) -> tuple[str, Message]:
    return "consent_resumed", ledger_pb2.ConsentResumed(
        campaign=e.campaign,
        inbound_message_id=e.inbound_message_id,
        stated_at=(
            None
            if e.stated_at is None
            else timestamp_to_proto(e.stated_at, "consent_resumed.stated_at")
        ),
    )


def _dec_resumed(p: ledger_pb2.ConsentResumed) -> dict[str, Any]:
    return {
        "campaign": _optional_str(p, "campaign"),
        "inbound_message_id": p.inbound_message_id,
        "stated_at": (
            timestamp_from_proto(p.stated_at, "consent_resumed.stated_at")
            if p.HasField("stated_at")
            else None
        ),
    }


def _enc_sent(e: MessageSent) -> tuple[str, Message]:
    return "message_sent", ledger_pb2.MessageSent(
        message_id=e.message_id,
        campaign=e.campaign,
        kind=MESSAGE_KINDS.to_proto(e.kind),
        included_opt_out_language=e.included_opt_out_language,
        identified_sender=e.identified_sender,
        exempt=e.exempt,
        relied_on=None if e.relied_on is None else _enc_relied(e.relied_on),
        from_number=e.from_number,
    )


def _enc_relied(r: ReliedAnswer) -> ledger_pb2.ReliedAnswer:
    return ledger_pb2.ReliedAnswer(
        consistency_token=r.consistency_token,
        allowed=r.allowed,
        reason=r.reason,
        evidence_event_ids=r.evidence,
    )


def _dec_sent(p: ledger_pb2.MessageSent) -> dict[str, Any]:
    return {
        "message_id": p.message_id,
        "campaign": p.campaign,
        "kind": MESSAGE_KINDS.from_proto(p.kind, "message_sent.kind"),
        "included_opt_out_language": p.included_opt_out_language,
        "identified_sender": p.identified_sender,
        "exempt": p.exempt if p.HasField("exempt") else None,
        "relied_on": (
            ReliedAnswer(
                p.relied_on.consistency_token,
                p.relied_on.allowed,
                p.relied_on.reason,
                tuple(p.relied_on.evidence_event_ids),
            )
            if p.HasField("relied_on")
            else None
        ),
        "from_number": p.from_number,
    }


def _enc_inbound(e: InboundMessageReceived) -> tuple[str, Message]:
    return "inbound_message_received", ledger_pb2.InboundMessageReceived(
        message_id=e.message_id,
        to_number=e.to_number,
        body=e.body,
        campaign=e.campaign,
        intent=e.intent,
        reply=e.reply,
    )


def _dec_inbound(p: ledger_pb2.InboundMessageReceived) -> dict[str, Any]:
    return {
        "message_id": p.message_id,
        "to_number": p.to_number,
        "body": p.body,
        "campaign": _optional_str(p, "campaign"),
        "intent": p.intent,
        "reply": p.reply,
    }


def _enc_flagged(e: RevocationCandidateFlagged) -> tuple[str, Message]:
    return "revocation_candidate_flagged", ledger_pb2.RevocationCandidateFlagged(
        inbound_message_id=e.inbound_message_id,
        text=e.text,
        unattributed=e.unattributed,
        to_number=e.to_number,
        campaign=e.campaign,
        stated_at=(
            None
            if e.stated_at is None
            else timestamp_to_proto(e.stated_at, "revocation_candidate_flagged.stated_at")
        ),
        imported=e.from_import,
    )


def _dec_flagged(p: ledger_pb2.RevocationCandidateFlagged) -> dict[str, Any]:
    return {
        "inbound_message_id": p.inbound_message_id,
        "text": p.text,
        "unattributed": p.unattributed,
        "to_number": p.to_number,
        "campaign": p.campaign if p.HasField("campaign") else None,
        "stated_at": (
            timestamp_from_proto(p.stated_at, "revocation_candidate_flagged.stated_at")
            if p.HasField("stated_at")
            else None
        ),
        "from_import": p.imported,
    }


def _enc_resolved(e: RevocationCandidateResolved) -> tuple[str, Message]:
    return "revocation_candidate_resolved", ledger_pb2.RevocationCandidateResolved(
        candidate_event_id=str(e.candidate_event_id),
        resolution=RESOLUTIONS.to_proto(e.resolution),
        resolved_by=e.resolved_by,
    )


def _dec_resolved(p: ledger_pb2.RevocationCandidateResolved) -> dict[str, Any]:
    return {
        "candidate_event_id": _uuid(
            p.candidate_event_id, "revocation_candidate_resolved.candidate_event_id"
        ),
        "resolution": RESOLUTIONS.from_proto(
            p.resolution, "revocation_candidate_resolved.resolution"
        ),
        "resolved_by": p.resolved_by,
    }


def _enc_age(e: AgeVerified) -> tuple[str, Message]:
    return "age_verified", ledger_pb2.AgeVerified(
        method=e.method, date_of_birth=e.date_of_birth, verified_21_plus=e.verified_21_plus
    )


def _dec_age(p: ledger_pb2.AgeVerified) -> dict[str, Any]:
    return {
        "method": p.method,
        "date_of_birth": p.date_of_birth,
        "verified_21_plus": p.verified_21_plus,
    }


def _enc_located(e: SubscriberLocated) -> tuple[str, Message]:
    return "subscriber_located", ledger_pb2.SubscriberLocated(region=e.region, detail=e.detail)


def _dec_located(p: ledger_pb2.SubscriberLocated) -> dict[str, Any]:
    return {"region": p.region, "detail": p.detail}


def _enc_delivery(e: DeliveryOutcomeReported) -> tuple[str, Message]:
    return "delivery_outcome_reported", ledger_pb2.DeliveryOutcomeReported(
        message_id=e.message_id,
        campaign=e.campaign,
        outcome=OUTCOMES.to_proto(e.outcome),
        error_code=e.error_code,
    )


def _dec_delivery(p: ledger_pb2.DeliveryOutcomeReported) -> dict[str, Any]:
    return {
        "message_id": p.message_id,
        "campaign": p.campaign,
        "outcome": OUTCOMES.from_proto(p.outcome, "delivery_outcome_reported.outcome"),
        "error_code": p.error_code,
    }


def _enc_erased(e: SubjectErased) -> tuple[str, Message]:
    msg = ledger_pb2.SubjectErased(
        requested_by=e.requested_by, reference=e.reference, key_ids=e.key_ids
    )
    if e.retained_until is not None:
        msg.retained_until.CopyFrom(timestamp_to_proto(e.retained_until, "retained_until"))
    return "subject_erased", msg


def _dec_erased(p: ledger_pb2.SubjectErased) -> dict[str, Any]:
    return {
        "requested_by": p.requested_by,
        "reference": p.reference,
        "retained_until": (
            timestamp_from_proto(p.retained_until, "subject_erased.retained_until")
            if p.HasField("retained_until")
            else None
        ),
        "key_ids": tuple(p.key_ids),
    }


def _enc_hold(e: LegalHoldPlaced) -> tuple[str, Message]:
    return "legal_hold_placed", ledger_pb2.LegalHoldPlaced(
        hold_id=e.hold_id, reason=e.reason, placed_by=e.placed_by
    )


def _dec_hold(p: ledger_pb2.LegalHoldPlaced) -> dict[str, Any]:
    return {"hold_id": p.hold_id, "reason": p.reason, "placed_by": p.placed_by}


def _enc_release(e: LegalHoldReleased) -> tuple[str, Message]:
    return "legal_hold_released", ledger_pb2.LegalHoldReleased(
        hold_id=e.hold_id, released_by=e.released_by
    )


def _dec_release(p: ledger_pb2.LegalHoldReleased) -> dict[str, Any]:
    return {"hold_id": p.hold_id, "released_by": p.released_by}


def _campaign_encoder(field: str, message: type[Message]) -> _Encoder:
    def encode(e: CampaignDefined | CampaignPolicyChanged) -> tuple[str, Message]:
        return field, message(campaign=e.campaign, policy=policy_to_proto(e.policy))

    return encode


def _campaign_decoder(field: str) -> _Decoder:
    def decode(p: Any) -> dict[str, Any]:
        if not p.HasField("policy"):
            raise WireFormatError(f"{field}.policy", "is required")
        try:
            policy = policy_from_proto(p.policy)
        except WireFormatError as exc:
            raise WireFormatError(f"{field}.policy.{exc.field}", exc.reason) from exc
        return {"campaign": p.campaign, "policy": policy}

    return decode


def _enc_brand_policy(e: BrandPolicySet) -> tuple[str, Message]:
    return "brand_policy_set", ledger_pb2.BrandPolicySet(revoke_all=e.revoke_all)


def _dec_brand_policy(p: ledger_pb2.BrandPolicySet) -> dict[str, Any]:
    return {"campaign": BRAND_SETTINGS, "revoke_all": p.revoke_all}


_CODECS: dict[str, tuple[str, _Encoder, _Decoder]] = {
    ConsentGranted.EVENT_TYPE: ("consent_granted", _enc_granted, _dec_granted),
    ConsentRevoked.EVENT_TYPE: ("consent_revoked", _enc_revoked, _dec_revoked),
    ConsentReconfirmed.EVENT_TYPE: ("consent_reconfirmed", _enc_reconfirmed, _dec_reconfirmed),
    ConsentResumed.EVENT_TYPE: ("consent_resumed", _enc_resumed, _dec_resumed),
    MessageSent.EVENT_TYPE: ("message_sent", _enc_sent, _dec_sent),
    InboundMessageReceived.EVENT_TYPE: ("inbound_message_received", _enc_inbound, _dec_inbound),
    RevocationCandidateFlagged.EVENT_TYPE: (
        "revocation_candidate_flagged",
        _enc_flagged,
        _dec_flagged,
    ),
    RevocationCandidateResolved.EVENT_TYPE: (
        "revocation_candidate_resolved",
        _enc_resolved,
        _dec_resolved,
    ),
    AgeVerified.EVENT_TYPE: ("age_verified", _enc_age, _dec_age),
    SubscriberLocated.EVENT_TYPE: ("subscriber_located", _enc_located, _dec_located),
    DeliveryOutcomeReported.EVENT_TYPE: (
        "delivery_outcome_reported",
        _enc_delivery,
        _dec_delivery,
    ),
    SubjectErased.EVENT_TYPE: ("subject_erased", _enc_erased, _dec_erased),
    LegalHoldPlaced.EVENT_TYPE: ("legal_hold_placed", _enc_hold, _dec_hold),
    LegalHoldReleased.EVENT_TYPE: ("legal_hold_released", _enc_release, _dec_release),
    CampaignDefined.EVENT_TYPE: (
        "campaign_defined",
        _campaign_encoder("campaign_defined", ledger_pb2.CampaignDefined),
        _campaign_decoder("campaign_defined"),
    ),
    CampaignPolicyChanged.EVENT_TYPE: (
        "campaign_policy_changed",
        _campaign_encoder("campaign_policy_changed", ledger_pb2.CampaignPolicyChanged),
        _campaign_decoder("campaign_policy_changed"),
    ),
    BrandPolicySet.EVENT_TYPE: ("brand_policy_set", _enc_brand_policy, _dec_brand_policy),
}

_missing = set(EVENT_TYPES) - set(_CODECS)
if _missing:  # an event type added to the domain but not to the wire format
    raise TypeError(f"services.wire.codec has no translation for {sorted(_missing)}")


def _uuid(text: str, field: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise WireFormatError(field, f"must be a UUID, got {text!r}") from None


# --- events ----------------------------------------------------------------------


def _set_paths(payload: Message, paths: Sequence[str], value: str, field: str = "") -> None:
    """Set each text field of ``payload`` at ``paths`` ("body", "proof.name") to ``value``."""
    for path in paths:
        *parents, name = path.split(".")
        msg = payload
        try:
            for parent in parents:
                msg = getattr(msg, parent)
            if not isinstance(getattr(msg, name), str):
                raise AttributeError(f"{path} is not a text field")
            setattr(msg, name, value)
        except AttributeError as exc:
            raise WireFormatError(field or "sealed.fields", f"{path!r}: {exc}") from exc


def event_to_proto(event: LedgerEvent) -> ledger_pb2.EventEnvelope:
    """The envelope for ``event``; ``WireFormatError`` if it cannot be stored faithfully."""
    event_type = type(event).EVENT_TYPE
    if event_type not in _CODECS:
        raise WireFormatError("event_type", f"{type(event).__name__} has no wire format")
    oneof_field, encode, _ = _CODECS[event_type]
    _, payload = encode(event)
    sealed = event.sealed
    if sealed is not None:  # the sealed fields travel empty: their text is in ``sealed``
        _set_paths(payload, sealed.fields, "")
    campaign = getattr(event, "campaign", None)
    env = ledger_pb2.EventEnvelope(
        event_id=str(event.event_id),
        event_type=event_type,
        schema_version=class_version(type(event)),
        occurred_at=timestamp_to_proto(event.occurred_at, "occurred_at"),
        phone=event.phone if isinstance(event, SubscriberEvent) else "",
        brand=event.brand if isinstance(event, SubscriberEvent | CampaignEvent) else "",
        campaign=campaign or "",
        recorded_by=event.recorded_by,
        request_id=event.request_id,
        request_fingerprint=event.request_fingerprint,
    )
    getattr(env, oneof_field).CopyFrom(payload)
    if sealed is not None:
        env.sealed.CopyFrom(
            ledger_pb2.SealedPersonalData(
                key_id=sealed.key_id,
                nonce=sealed.nonce,
                ciphertext=sealed.ciphertext,
                fields=sealed.fields,
            )
        )
    return env


def event_from_proto(env: ledger_pb2.EventEnvelope) -> LedgerEvent:
    """The domain event in ``env``, upcast to the current class version.

    Raises ``WireFormatError`` (a ``ValueError``) for an unknown event type, a
    version newer than this code knows, a payload that does not match the type,
    or a missing required field.
    """
    cls = EVENT_CLASSES.get(env.event_type)
    if cls is None or env.event_type not in _CODECS:
        raise WireFormatError("event_type", f"unknown event type {env.event_type!r}")
    oneof_field, _, decode = _CODECS[env.event_type]
    carried = env.WhichOneof("payload")
    if carried != oneof_field:
        raise WireFormatError(
            "payload", f"{env.event_type} must carry {oneof_field}, not {carried or 'nothing'}"
        )
    state: dict[str, Any] = {
        "event_id": _uuid(env.event_id, "event_id"),
        "occurred_at": _required_time(env, "occurred_at", "occurred_at"),
        "brand": env.brand,
        "recorded_by": env.recorded_by,
        "request_id": env.request_id,
        "request_fingerprint": env.request_fingerprint,
    }
    if issubclass(cls, SubscriberEvent):
        state["phone"] = env.phone
    payload = getattr(env, oneof_field)
    if env.HasField("sealed"):  # each sealed field shows SEALED (on a copy: env is the caller's)
        shown = type(payload)()
        shown.CopyFrom(payload)
        _set_paths(shown, env.sealed.fields, SEALED, "sealed.fields")
        payload = shown
    state.update(decode(payload))
    # Written before schema_version existed, or by a writer that left it unset.
    written_as = env.schema_version or 1
    sealed = None
    if env.HasField("sealed"):
        s = env.sealed
        sealed = Sealed(s.key_id, s.nonce, s.ciphertext, tuple(s.fields))
        state["sealed"] = sealed
    try:
        state = upcast(cls, state, written_as)
    except ValueError as exc:
        raise WireFormatError("schema_version", str(exc)) from exc
    return cls(**state)


def encode_event(event: LedgerEvent) -> bytes:
    """``event`` as a serialized ``consent.v1.EventEnvelope``."""
    return _serialize(event_to_proto(event))


def _serialize(message: Message) -> bytes:
    # Deterministic: the same fact always gives the same bytes (map order included).
    data: bytes = message.SerializeToString(deterministic=True)
    return data


def _parse(message: Message, data: bytes) -> None:
    try:
        message.ParseFromString(data)
    except DecodeError as exc:
        raise WireFormatError(type(message).__name__, f"not a valid message: {exc}") from exc


def decode_event(data: bytes) -> LedgerEvent:
    """The event in a serialized ``EventEnvelope``; see ``event_from_proto`` for errors."""
    env = ledger_pb2.EventEnvelope()
    _parse(env, data)
    return event_from_proto(env)


def recorded_from_stored(data: bytes, position: LedgerPosition, recorded_at: datetime) -> Recorded:
    """The event a ledger stored as ``data`` (``decode_event``), recorded at ``position``;
    with ``data`` kept (``Recorded.as_read``) when it is what ``encode_event`` gives for
    the event, so ``encode_recorded`` reuses it instead of encoding the event again."""
    env = ledger_pb2.EventEnvelope()
    _parse(env, data)
    event = event_from_proto(env)
    if _encodes_back(env, event, data):  # then it holds no field this code does not know
        return Recorded.as_read(event, position, recorded_at, data)
    _refuse_unknown_fields(data)
    return Recorded(event, position, recorded_at)


def _refuse_unknown_fields(data: bytes) -> None:
    """Raise ``WireFormatError`` when the stored event ``data`` holds a field this code
    does not know. A newer version wrote it (one that added the field without raising
    its class's version): read without it, the fact would be folded as less than it
    says (an opt-out's stated time, say) and stored in the view's copies so, as a
    version it does not know is refused instead."""
    env = ledger_pb2.EventEnvelope()
    _parse(env, data)
    size = env.ByteSize()
    env.DiscardUnknownFields()
    if env.ByteSize() != size:
        raise WireFormatError(
            "event",
            f"{env.event_type} {env.event_id} holds fields this version does not know:"
            " a newer version of this code wrote it; upgrade the reader",
        )


def _encodes_back(env: ledger_pb2.EventEnvelope, event: LedgerEvent, data: bytes) -> bool:
    """Whether ``encode_event(event) == data``, told without encoding: ``env`` (parsed
    from ``data``) must hold nothing that decoding drops or changes. Each such loss
    is checked below; tests/unit/test_wire_stored.py sets every field of every
    subscriber event's envelope in turn and holds the answer to ``encode_event``."""
    if not isinstance(event, SubscriberEvent):
        return False  # a campaign policy's absent fields read as defaults: rare, encoded
    if env.schema_version != class_version(type(event)):  # upcast, or written unset
        return False
    if (
        env.event_id != str(event.event_id)  # a UUID written in another form
        or env.event_type != event.EVENT_TYPE
        or env.campaign != (getattr(event, "campaign", None) or "")  # a copy, never read
        or env.occurred_at.nanos % 1000  # datetimes keep microseconds
    ):
        return False
    oneof_field = _CODECS[env.event_type][0]
    payload = getattr(env, oneof_field)
    exact = _DECODED_EXACTLY.get(oneof_field)
    if exact is not None and not exact(payload, event):
        return False
    if env.HasField("sealed") and any(_text_at(payload, p) for p in env.sealed.fields):
        return False  # a sealed field reads as SEALED whatever was written there
    # What is left is the wire form: fields in order, defaults left out, no field
    # this code does not know (which decoding drops), as serializing writes it.
    env.DiscardUnknownFields()
    return _serialize(env) == data


_DECODED_EXACTLY: dict[str, Callable[[Any, Any], bool]] = {
    "consent_granted": lambda p, e: (
        p.proof.registered_at.nanos % 1000 == 0 and p.stated_at.nanos % 1000 == 0
    ),
    "consent_resumed": lambda p, e: p.stated_at.nanos % 1000 == 0,
    "consent_revoked": lambda p, e: p.stated_at.nanos % 1000 == 0,
    "revocation_candidate_flagged": lambda p, e: p.stated_at.nanos % 1000 == 0,
    "subject_erased": lambda p, e: p.retained_until.nanos % 1000 == 0,
    "revocation_candidate_resolved": lambda p, e: p.candidate_event_id == str(e.candidate_event_id),
}
"""Per payload, the check that its decoding keeps what encoding writes back (its
times' nanoseconds, its UUIDs' form), for ``_encodes_back``."""


def _text_at(payload: Message, path: str) -> Any:
    msg = payload
    for name in path.split("."):
        msg = getattr(msg, name)
    return msg


# --- recorded events and snapshots ------------------------------------------------


def recorded_to_proto(r: Recorded) -> ledger_pb2.RecordedEvent:
    return ledger_pb2.RecordedEvent(
        event=event_to_proto(r.event),
        partition=r.position.partition,
        offset=r.position.offset,
        recorded_at=timestamp_to_proto(r.recorded_at, "recorded_at"),
        extra=dict(r.extra),
    )


def recorded_from_proto(msg: ledger_pb2.RecordedEvent) -> Recorded:
    if not msg.HasField("event"):
        raise WireFormatError("event", "is required")
    return Recorded(
        event_from_proto(msg.event),
        LedgerPosition(msg.partition, msg.offset),
        _required_time(msg, "recorded_at", "recorded_at"),
        extra=dict(msg.extra),
    )


def encode_recorded(r: Recorded) -> bytes:
    envelope = r.envelope
    position = r.position
    if (
        envelope is None
        or r.extra
        or not 0 <= position.partition < _INT32
        or not 0 <= position.offset < _INT64
    ):
        return _serialize(recorded_to_proto(r))
    # The event as the ledger stored it (exactly what encoding it gives), joined
    # to the rest: encoding the event was most of the cost. The rest is a
    # RecordedEvent without its event, serialized by protobuf's own (C) encoder:
    # its fields come after the event's in field order, so the bytes are those of
    # the whole message.
    seconds, nanos = _since_epoch(r.recorded_at, "recorded_at")
    rest = ledger_pb2.RecordedEvent(partition=position.partition, offset=position.offset)
    at = rest.recorded_at
    at.SetInParent()  # present even at the epoch itself, as recorded_to_proto writes it
    at.seconds = seconds
    at.nanos = nanos
    size = len(envelope)
    # Nearly every envelope's length takes two bytes: written without the loop.
    length = bytes((size & 0x7F | 0x80, size >> 7)) if 128 <= size < 16384 else _varint(size)
    return b"".join(
        (
            b"\x0a",  # event: field 1, length-delimited
            length,
            envelope,
            _serialize(rest),
        )
    )


_INT32, _INT64 = 2**31, 2**63


def decode_recorded(data: bytes) -> Recorded:
    """A fact as the view keeps it (``encode_recorded``); ``WireFormatError`` for one
    holding a field this code does not know, as ``recorded_from_stored`` refuses it."""
    msg = ledger_pb2.RecordedEvent()
    _parse(msg, data)
    if _unknown_fields(msg):
        raise _newer(f"{msg.event.event_type} {msg.event.event_id}")
    return recorded_from_proto(msg)


def _unknown_fields(msg: Message) -> bool:
    """Whether a copy in the view holds a field this code does not know: an instance
    of a newer version shares the view during a rolling upgrade, and read without
    the field its fact would count as less than it says, as a ledger record would
    (``_refuse_unknown_fields``). Discarding them changes the size only then."""
    size = msg.ByteSize()
    msg.DiscardUnknownFields()
    return msg.ByteSize() != size


def _newer(what: str) -> WireFormatError:
    return WireFormatError(
        "event",
        f"{what} holds fields this version does not know: a newer version of this"
        " code wrote it; upgrade the reader",
    )


def encode_snapshot(facts: Sequence[Recorded]) -> bytes:
    snapshot = ledger_pb2.StateSnapshot(facts=[recorded_to_proto(r) for r in facts])
    return _serialize(snapshot)


def decode_snapshot(data: bytes) -> list[Recorded]:
    msg = ledger_pb2.StateSnapshot()
    _parse(msg, data)
    if _unknown_fields(msg):
        raise _newer("a state's snapshot")
    return [recorded_from_proto(r) for r in msg.facts]


_FACTS_TAG = b"\x0a"  # StateSnapshot.facts: field 1, length-delimited


def join_snapshot(facts: Sequence[bytes]) -> bytes:
    """``encode_snapshot`` of facts already encoded one by one (``encode_recorded``,
    with no ``extra``): a repeated message field is its items' bytes one after
    another, so the projector encodes each fact once, for its event copy and for
    every snapshot that keeps it."""
    parts = []
    for data in facts:
        parts.append(_FACTS_TAG)
        parts.append(_varint(len(data)))
        parts.append(data)
    return b"".join(parts)


def split_snapshot(data: bytes) -> list[bytes]:
    """The encoded facts of a snapshot, each as ``encode_recorded`` gives it; the
    inverse of ``join_snapshot``."""
    facts, at, end = [], 0, len(data)
    while at < end:
        if data[at : at + 1] != _FACTS_TAG:
            raise WireFormatError("snapshot", "holds a field other than its facts")
        length, shift, at = 0, 0, at + 1
        while True:
            if at >= end:
                raise WireFormatError("snapshot", "ends inside a fact's length")
            byte = data[at]
            at += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        if at + length > end:
            raise WireFormatError("snapshot", "ends inside a fact")
        facts.append(data[at : at + length])
        at += length
    return facts


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
