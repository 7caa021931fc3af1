"""The gRPC API's messages <-> the domain's requests and answers.

The servicer stays thin because everything proto-shaped is here: a request
message becomes a ``ledger.commands`` request (``command_from_proto``), a
``ledger.policy.Decision`` becomes a response (``decision_to_proto``), and the
enums map one to one by name.

Only what the wire itself can get wrong is checked here: a missing message or
timestamp, an enum left unset or from a newer client. Those raise
``ledger.errors.InvalidRequest`` naming the proto field, so the edge can return
a field-level ``INVALID_ARGUMENT``. Everything about *meaning* (request ids,
names, phone numbers, proof completeness) is the domain's to check.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from consent.v1 import consent_service_pb2 as api_pb2
from google.protobuf import json_format
from google.protobuf.message import Message

from ledger.campaigns import CampaignPolicy
from ledger.commands import (
    MAX_SENDS_PER_CALL,
    REPLY_MESSAGE_KINDS,
    ChangeCampaignPolicy,
    Command,
    DefineCampaign,
    HandleInboundMessage,
    InboundOutcome,
    RecordAgeVerification,
    RecordDeliveryOutcome,
    RecordMessageSent,
    RecordMessagesSent,
    RecordOptIn,
    RecordOptOut,
    RecordReconfirmation,
    RecordSubscriberLocation,
    ReplyKind,
    ResolveRevocationCandidate,
    SentMessage,
    SetBrandPolicy,
    check_fields,
    check_sent_messages,
)
from ledger.errors import InvalidRequest
from ledger.events import ConsentProof, ListSource, MessageKind, ReliedAnswer
from ledger.health import HealthCounts, HealthLimits, HealthReport
from ledger.keywords import Intent
from ledger.opt_out_rate import OptOutRate
from ledger.policy import Decision, Obligation, Reason
from ledger.ports import AccessRecord
from ledger.status import ConsentState
from ledger.sweep import Finding, FindingKind
from ledger.validation import Violations
from services.packets import Format
from services.wire import codec
from services.wire.enums import EnumMap, WireFormatError

__all__ = [
    "CONSENT_STATES",
    "INTENTS",
    "OBLIGATIONS",
    "REASONS",
    "REPLY_KINDS",
    "campaign_health_to_proto",
    "command_from_proto",
    "decision_from_proto",
    "decision_to_as_of_proto",
    "decision_to_proto",
    "inbound_outcome_to_proto",
    "message_kind_from_proto",
    "opt_out_rate_to_proto",
    "optional_time",
    "reply_content_to_proto",
    "required_time",
    "send_decision_to_proto",
]

REASONS = EnumMap(Reason, api_pb2.Reason)
OBLIGATIONS = EnumMap(Obligation, api_pb2.Obligation)
INTENTS = EnumMap(Intent, api_pb2.InboundIntent)
REPLY_KINDS = EnumMap(ReplyKind, api_pb2.ReplyKind)
CONSENT_STATES = EnumMap(ConsentState, api_pb2.ConsentState)
SWEEP_FINDING_KINDS = EnumMap(FindingKind, api_pb2.SweepFindingKind)

# --- small readers, shared with the servicer --------------------------------------


def required_time(msg: Message, name: str, label: str = "") -> datetime:
    """The timestamp field ``name`` of ``msg`` as a UTC datetime, or ``InvalidRequest``
    on ``label`` (the field's name in the request; ``name`` when not given)."""
    if not msg.HasField(name):
        raise InvalidRequest(label or name, "is required")
    return _timestamp(msg, name, label)


def optional_time(msg: Message, name: str) -> datetime | None:
    """The timestamp field ``name`` of ``msg``, or None when the client left it out."""
    return _timestamp(msg, name) if msg.HasField(name) else None


def _timestamp(msg: Message, name: str, label: str = "") -> datetime:
    try:
        return codec.timestamp_from_proto(getattr(msg, name), label or name)
    except WireFormatError as exc:  # a nanos or a year out of range: the caller's error
        raise InvalidRequest(exc.field, exc.reason) from None


def _enum(enum_map: EnumMap[Any], value: int, field: str) -> Any:
    try:
        return enum_map.from_proto(value, field)
    except WireFormatError as exc:
        raise InvalidRequest(exc.field, exc.reason) from None


def _enum_or(enum_map: EnumMap[Any], value: int, field: str, default: Any) -> Any:
    return default if value == 0 else _enum(enum_map, value, field)


def message_kind_from_proto(value: int, field: str = "message_kind") -> MessageKind:
    """A request's message kind; unset means ``MessageKind.REGULAR``."""
    kind: MessageKind = _enum_or(codec.MESSAGE_KINDS, value, field, MessageKind.REGULAR)
    return kind


def _proof(msg: Message, field: str) -> ConsentProof:
    if not msg.HasField(field):
        raise InvalidRequest(field, "is required: the proof of opt-in")
    try:
        return codec.proof_from_proto(getattr(msg, field), field)
    except WireFormatError as exc:
        raise InvalidRequest(exc.field, exc.reason) from None


def _policy(msg: Message, field: str) -> CampaignPolicy:
    if not msg.HasField(field):
        raise InvalidRequest(field, "is required")
    try:
        return codec.policy_from_proto(getattr(msg, field))
    except WireFormatError as exc:
        raise InvalidRequest(f"{field}.{exc.field}", exc.reason) from None


# --- write requests -> commands ---------------------------------------------------


def _opt_in(r: api_pb2.RecordOptInRequest, v: Violations) -> RecordOptIn:
    return RecordOptIn(
        request_id=r.request_id,
        phone=r.phone,
        brand=r.brand,
        campaign=r.campaign,
        tier=_read(v, lambda: _enum(codec.TIERS, r.tier, "tier")),
        method=_read(v, lambda: _enum(codec.METHODS, r.method, "method")),
        proof=_read(v, lambda: _proof(r, "proof")),
        occurred_at=_read(v, lambda: required_time(r, "occurred_at")),
        source=_read(
            v, lambda: _enum_or(codec.SOURCES, r.source, "source", ListSource.FIRST_PARTY)
        ),
    )


def _opt_out(r: api_pb2.RecordOptOutRequest, v: Violations) -> RecordOptOut:
    return RecordOptOut(
        request_id=r.request_id,
        phone=r.phone,
        brand=r.brand,
        campaign=r.campaign if r.HasField("campaign") else None,
        channel=_read(v, lambda: _enum(codec.CHANNELS, r.channel, "channel")),
        occurred_at=_read(v, lambda: required_time(r, "occurred_at")),
        text=r.text,
        in_reply_to=r.in_reply_to,
    )


def _reconfirmation(r: api_pb2.RecordReconfirmationRequest, v: Violations) -> RecordReconfirmation:
    return RecordReconfirmation(
        request_id=r.request_id,
        phone=r.phone,
        brand=r.brand,
        campaign=r.campaign,
        channel=_read(v, lambda: _enum(codec.CHANNELS, r.channel, "channel")),
        occurred_at=_read(v, lambda: required_time(r, "occurred_at")),
        detail=r.detail,
    )


def _message_sent(r: api_pb2.RecordMessageSentRequest, v: Violations) -> RecordMessageSent:
    return RecordMessageSent(
        request_id=r.request_id,
        phone=r.phone,
        brand=r.brand,
        campaign=r.campaign,
        message_id=r.message_id,
        kind=_read(v, lambda: message_kind_from_proto(r.kind, "kind")),
        occurred_at=_read(v, lambda: required_time(r, "occurred_at")),
        included_opt_out_language=r.included_opt_out_language,
        identified_sender=r.identified_sender,
        relied_on=_read(v, lambda: _relied_on(r)),
        from_number=r.from_number,
    )


def _delivery_outcome(
    r: api_pb2.RecordDeliveryOutcomeRequest, v: Violations
) -> RecordDeliveryOutcome:
    return RecordDeliveryOutcome(
        request_id=r.request_id,
        phone=r.phone,
        brand=r.brand,
        message_id=r.message_id,
        outcome=_read(v, lambda: _enum(codec.OUTCOMES, r.outcome, "outcome")),
        occurred_at=_read(v, lambda: required_time(r, "occurred_at")),
        error_code=r.error_code,
    )


def _messages_sent(r: api_pb2.RecordMessagesSentRequest, v: Violations) -> RecordMessagesSent:
    """Each message as ``_message_sent`` reads one, what it cannot read named under
    its place (``messages[3].occurred_at``). Past the limit nothing is read: the
    domain refuses the count, and reading 100,000 messages first would be for nothing."""
    if len(r.messages) > MAX_SENDS_PER_CALL:
        return RecordMessagesSent(r.request_id, r.brand, tuple(_unread(len(r.messages))))
    return RecordMessagesSent(
        request_id=r.request_id,
        brand=r.brand,
        messages=tuple(_sent_message(m, i, v) for i, m in enumerate(r.messages)),
    )


def _sent_message(m: api_pb2.SentMessage, index: int, v: Violations) -> SentMessage:
    at = f"messages[{index}]."
    return SentMessage(
        phone=m.phone,
        campaign=m.campaign,
        message_id=m.message_id,
        kind=_read(v, lambda: message_kind_from_proto(m.kind, at + "kind")),
        occurred_at=_read(v, lambda: required_time(m, "occurred_at", at + "occurred_at")),
        included_opt_out_language=m.included_opt_out_language,
        identified_sender=m.identified_sender,
        relied_on=_read(v, lambda: _relied_on(m, at)),
        from_number=m.from_number,
    )


def _unread(count: int) -> list[SentMessage]:
    """``count`` placeholders: only how many there are is looked at."""
    blank = SentMessage("", "", "", MessageKind.REGULAR, datetime.min)
    return [blank] * count


def _relied_on(
    r: api_pb2.RecordMessageSentRequest | api_pb2.SentMessage, at: str = ""
) -> ReliedAnswer | None:
    """The answer the sender relied on; an unset reason is no answer the service gave."""
    if not r.HasField("relied_on"):
        return None
    answer = r.relied_on
    if answer.reason == api_pb2.REASON_UNSPECIFIED:
        raise InvalidRequest(at + "relied_on.reason", "is required")
    reason: Reason = _enum(REASONS, answer.reason, at + "relied_on.reason")
    return ReliedAnswer(
        answer.consistency_token, answer.allowed, reason.value, tuple(answer.evidence_event_ids)
    )


def _age_verification(
    r: api_pb2.RecordAgeVerificationRequest, v: Violations
) -> RecordAgeVerification:
    return RecordAgeVerification(
        request_id=r.request_id,
        phone=r.phone,
        brand=r.brand,
        method=r.method,
        occurred_at=_read(v, lambda: required_time(r, "occurred_at")),
        date_of_birth=r.date_of_birth,
        verified_21_plus=r.verified_21_plus,
    )


def _location(
    r: api_pb2.RecordSubscriberLocationRequest, v: Violations
) -> RecordSubscriberLocation:
    return RecordSubscriberLocation(
        request_id=r.request_id,
        phone=r.phone,
        brand=r.brand,
        region=r.region,
        occurred_at=_read(v, lambda: required_time(r, "occurred_at")),
        detail=r.detail,
    )


def _resolve(
    r: api_pb2.ResolveRevocationCandidateRequest, v: Violations
) -> ResolveRevocationCandidate:
    return ResolveRevocationCandidate(
        request_id=r.request_id,
        phone=r.phone,
        brand=r.brand,
        candidate_event_id=r.candidate_event_id,
        resolution=_read(v, lambda: _enum(codec.RESOLUTIONS, r.resolution, "resolution")),
        occurred_at=_read(v, lambda: required_time(r, "occurred_at")),
        resolved_by=r.resolved_by,
    )


def _define(r: api_pb2.DefineCampaignRequest, v: Violations) -> DefineCampaign:
    return DefineCampaign(
        request_id=r.request_id,
        brand=r.brand,
        campaign=r.campaign,
        policy=_read(v, lambda: _policy(r, "policy")),
        occurred_at=_read(v, lambda: required_time(r, "occurred_at")),
    )


def _change(r: api_pb2.ChangeCampaignPolicyRequest, v: Violations) -> ChangeCampaignPolicy:
    return ChangeCampaignPolicy(
        request_id=r.request_id,
        brand=r.brand,
        campaign=r.campaign,
        policy=_read(v, lambda: _policy(r, "policy")),
        occurred_at=_read(v, lambda: required_time(r, "occurred_at")),
    )


def _brand_policy(r: api_pb2.SetBrandPolicyRequest, v: Violations) -> SetBrandPolicy:
    return SetBrandPolicy(request_id=r.request_id, brand=r.brand, revoke_all=r.revoke_all)


def _inbound(r: api_pb2.HandleInboundMessageRequest, v: Violations) -> HandleInboundMessage:
    return HandleInboundMessage(
        request_id=r.request_id,
        from_phone=r.from_phone,
        to_phone=r.to_phone,
        body=r.body,
        message_id=r.message_id,
        occurred_at=_read(v, lambda: required_time(r, "occurred_at")),
    )


def _read(found: Violations, read: Callable[[], Any]) -> Any:
    """What ``read`` reads from the wire, or None once ``found`` notes why it cannot:
    the request is then refused, after every other field was looked at too."""
    return found.check(read)


_COMMANDS: dict[type[Message], Callable[[Any, Violations], Command | HandleInboundMessage]] = {
    api_pb2.RecordOptInRequest: _opt_in,
    api_pb2.RecordOptOutRequest: _opt_out,
    api_pb2.RecordReconfirmationRequest: _reconfirmation,
    api_pb2.RecordMessageSentRequest: _message_sent,
    api_pb2.RecordDeliveryOutcomeRequest: _delivery_outcome,
    api_pb2.RecordMessagesSentRequest: _messages_sent,
    api_pb2.RecordAgeVerificationRequest: _age_verification,
    api_pb2.RecordSubscriberLocationRequest: _location,
    api_pb2.ResolveRevocationCandidateRequest: _resolve,
    api_pb2.DefineCampaignRequest: _define,
    api_pb2.ChangeCampaignPolicyRequest: _change,
    api_pb2.SetBrandPolicyRequest: _brand_policy,
    api_pb2.HandleInboundMessageRequest: _inbound,
}


def command_from_proto(
    request: Message, now: datetime | None = None
) -> Command | HandleInboundMessage:
    """The domain request for a write request message.

    Raises ``InvalidRequest`` naming the proto field when a required message or
    timestamp is missing or out of range or an enum is unset or unknown, and then
    names every other field the domain would refuse as well (one answer lists
    every bad field); ``TypeError`` for a message that is not a write request.
    ``now``, the service's time, lets those include a time too far ahead: without
    it a message stamped days ahead beside one with its time unset was named only
    on the next try.
    """
    build = _COMMANDS.get(type(request))
    if build is None:
        raise TypeError(f"{type(request).__name__} is not a write request")
    found = Violations()
    command = build(request, found)
    if found:  # what could not be read is None, and left out of these checks
        check_fields(vars(command), now, found)
        order = None
        if isinstance(command, RecordMessagesSent):
            check_sent_messages(command, now, found)
            order = _message_place
        found.raise_if_any(order=order)
    return command


def _message_place(field: str) -> int:
    """The index of the message a batch's field is of (``messages[3].kind``: 3), -1
    for the request's own fields: a client reading the first violation reads the
    first bad message's."""
    if not field.startswith("messages["):
        return -1
    return int(field[len("messages[") : field.index("]")])


# --- answers -> responses ---------------------------------------------------------


def _fill_decision(msg: Any, decision: Decision, reason: int, obligations: list[int]) -> None:
    """Set a decision's fields on a response message, given the wire values of its
    reason and obligations. Field by field: several times quicker in the upb
    runtime than keyword construction, which counts for a 1,000-number batch."""
    msg.allowed = decision.allowed
    msg.reason = reason
    if obligations:
        msg.obligations.extend(obligations)
    msg.detail = decision.detail
    msg.evidence_event_ids.extend(decision.evidence)
    msg.policy_version = decision.policy_version
    msg.rule = decision.rule
    msg.rule_citation = decision.citation


def _wire_values(decision: Decision) -> tuple[int, list[int]]:
    return REASONS.to_proto(decision.reason), [
        OBLIGATIONS.to_proto(o) for o in decision.obligations
    ]


def decision_to_proto(decision: Decision, consistency_token: str = "") -> api_pb2.CanSendResponse:
    response = api_pb2.CanSendResponse(consistency_token=consistency_token)
    _fill_decision(response, decision, *_wire_values(decision))
    return response


def decision_to_as_of_proto(
    decision: Decision, consistency_token: str = ""
) -> api_pb2.CanSendAsOfResponse:
    response = api_pb2.CanSendAsOfResponse(consistency_token=consistency_token)
    _fill_decision(response, decision, *_wire_values(decision))
    return response


def sweep_finding_to_proto(
    finding: Finding, consistency_token: str = ""
) -> api_pb2.SweepCampaignResponse:
    """A ``SweepCampaign`` message carrying ``finding``."""
    message, recorded, decision = finding.message, finding.sent, finding.decision
    found = api_pb2.SweepFinding(
        event_id=str(message.event_id),
        phone=message.phone,
        message_id=message.message_id,
        message_kind=codec.MESSAGE_KINDS.to_proto(message.kind),
        occurred_at=codec.timestamp_to_proto(message.occurred_at),
        recorded_at=codec.timestamp_to_proto(recorded.recorded_at),
        partition=recorded.position.partition,
        offset=recorded.position.offset,
        kinds=[SWEEP_FINDING_KINDS.to_proto(k) for k in finding.kinds],
        allowed=decision.allowed,
        reason=REASONS.to_proto(decision.reason),
        detail=decision.detail,
        evidence_event_ids=decision.evidence,
        rule=decision.rule,
        rule_citation=decision.citation,
        policy_version=decision.policy_version,
        unmet_obligations=[OBLIGATIONS.to_proto(o) for o in finding.unmet],
        hindsight=finding.hindsight,
        hindsight_kinds=[SWEEP_FINDING_KINDS.to_proto(k) for k in finding.hindsight_kinds],
    )
    if finding.as_recorded is not None:
        found.as_recorded.CopyFrom(decision_to_as_of_proto(finding.as_recorded))
    relied = message.relied_on
    if relied is not None:
        found.relied_on.CopyFrom(
            api_pb2.ReliedOnAnswer(
                consistency_token=relied.consistency_token,
                allowed=relied.allowed,
                reason=REASONS.to_proto(Reason(relied.reason)),
                evidence_event_ids=relied.evidence,
            )
        )
    return api_pb2.SweepCampaignResponse(finding=found, consistency_token=consistency_token)


def sweep_progress_to_proto(
    events_read: int,
    sends_judged: int,
    findings: int,
    done: float,
    consistency_token: str,
    partitions_done: Sequence[int] = (),
) -> api_pb2.SweepCampaignResponse:
    """A ``SweepCampaign`` message saying how far the sweep has come."""
    return api_pb2.SweepCampaignResponse(
        progress=api_pb2.SweepProgress(
            events_read=events_read,
            sends_judged=sends_judged,
            findings=findings,
            done=done,
            partitions_done=partitions_done,
        ),
        consistency_token=consistency_token,
    )


def candidate_deadline_to_proto(
    event_id: str, due_at: datetime, now: datetime
) -> api_pb2.RevocationCandidateDeadline:
    """When a revocation candidate is due, and whether it is overdue at ``now``."""
    return api_pb2.RevocationCandidateDeadline(
        candidate_event_id=event_id,
        due_at=codec.timestamp_to_proto(due_at),
        overdue=due_at <= now,
    )


def opt_out_rate_to_proto(
    rate: OptOutRate, consistency_token: str = ""
) -> api_pb2.GetOptOutRateResponse:
    response = api_pb2.GetOptOutRateResponse(
        messages_sent=rate.counts.messages_sent,
        opt_outs=rate.counts.opt_outs,
        opt_outs_pending_review=rate.counts.opt_outs_pending_review,
        limit=rate.limit,
        above_limit=rate.above_limit,
        start_time=codec.timestamp_to_proto(rate.start),
        end_time=codec.timestamp_to_proto(rate.end),
        consistency_token=consistency_token,
    )
    if rate.rate is not None:
        response.opt_out_rate = rate.rate
    return response


def _health_counts(counts: HealthCounts, limits: HealthLimits) -> api_pb2.HealthCounts:
    message = api_pb2.HealthCounts(
        messages_sent=counts.messages_sent,
        opt_outs=counts.opt_outs,
        delivery_errors=counts.delivery_errors,
        opt_outs_pending_review=counts.opt_outs_pending_review,
        opt_out_flagged=counts.opt_out_flagged(limits),
        error_flagged=counts.error_flagged(limits),
    )
    if counts.opt_out_rate is not None:
        message.opt_out_rate = counts.opt_out_rate
    if counts.error_rate is not None:
        message.error_rate = counts.error_rate
    return message


def campaign_health_to_proto(
    report: HealthReport, consistency_token: str = ""
) -> api_pb2.GetCampaignHealthResponse:
    limits = report.limits
    return api_pb2.GetCampaignHealthResponse(
        campaigns=[
            api_pb2.CampaignHealth(
                campaign=c.campaign,
                counts=_health_counts(c.counts, limits),
                senders=[
                    api_pb2.SenderHealth(
                        from_number=s.from_number, counts=_health_counts(s.counts, limits)
                    )
                    for s in c.senders
                ],
            )
            for c in report.campaigns
        ],
        unattributed_opt_outs=report.unattributed_opt_outs,
        opt_out_limit=limits.opt_out,
        error_limit=limits.error,
        flagged=report.flagged,
        start_time=codec.timestamp_to_proto(report.start),
        end_time=codec.timestamp_to_proto(report.end),
        consistency_token=consistency_token,
        unattributed_opt_outs_pending_review=report.unattributed_opt_outs_pending_review,
    )


def access_to_proto(record: AccessRecord) -> api_pb2.AuditAccess:
    """One access record; a read across every brand has an empty ``brand``."""
    assert record.id is not None, "only a written record is listed"
    return api_pb2.AuditAccess(
        id=record.id,
        at=codec.timestamp_to_proto(record.at),
        subject=record.subject,
        via=record.via,
        action=record.action,
        brand=record.brand or "",
        phone=record.phone or "",
        campaign=record.campaign or "",
        request_id=record.request_id,
        detail=dict(record.detail),
        outcome=record.outcome,
        refusal_code=record.refusal_code or "",
        refusal=record.refusal or "",
    )


def batch_to_proto(
    phones: Sequence[str], decisions: Sequence[Decision], consistency_token: str = ""
) -> api_pb2.CanSendBatchResponse:
    """A ``CanSendBatchResponse``: one ``SendDecision`` per phone, in order.

    The same as ``send_decision_to_proto`` for each, with entries added in place.
    """
    response = api_pb2.CanSendBatchResponse(consistency_token=consistency_token)
    add = response.decisions.add
    # A batch's decisions are of a few kinds that differ in their evidence alone: each
    # entry copies its kind's template (one C call), then gets its phone and evidence.
    templates: dict[tuple[int, int, str, int, bool, str, str], api_pb2.SendDecision] = {}
    for phone, decision in zip(phones, decisions, strict=True):
        kind = (
            id(decision.reason),
            id(decision.obligations),
            decision.detail,
            decision.policy_version,
            decision.allowed,
            decision.rule,
            decision.citation,
        )
        template = templates.get(kind)
        if template is None:
            template = templates[kind] = api_pb2.SendDecision()
            _fill_decision(template, decision._replace(evidence=()), *_wire_values(decision))
        entry = add()
        entry.CopyFrom(template)
        entry.phone = phone
        entry.evidence_event_ids.extend(decision.evidence)
    return response


def send_decision_to_proto(phone: str, decision: Decision) -> api_pb2.SendDecision:
    """One entry of a ``CanSendBatchResponse``; ``phone`` as the client wrote it."""
    entry = api_pb2.SendDecision(phone=phone)
    _fill_decision(entry, decision, *_wire_values(decision))
    return entry


def decision_from_proto(
    msg: api_pb2.CanSendResponse | api_pb2.CanSendAsOfResponse | api_pb2.SendDecision,
) -> Decision:
    """The domain decision in a response (for clients and tests); ``ValueError`` if unset."""
    return Decision(
        allowed=msg.allowed,
        reason=REASONS.from_proto(msg.reason, "reason"),
        obligations=tuple(OBLIGATIONS.from_proto(o, "obligations") for o in msg.obligations),
        evidence=tuple(msg.evidence_event_ids),
        detail=msg.detail,
        policy_version=msg.policy_version,
        rule=msg.rule,
        citation=msg.rule_citation,
    )


def reply_content_to_proto(content: str) -> int:
    """A required-content name (``"identify_sender"``) as ``consent.v1.ReplyContent``."""
    name = f"REPLY_CONTENT_{content.upper()}"
    try:
        return int(api_pb2.ReplyContent.Value(name))
    except ValueError:
        raise ValueError(f"no consent.v1.ReplyContent for {content!r}") from None


def inbound_outcome_to_proto(
    outcome: InboundOutcome, event_ids: Iterable[str], consistency_token: str
) -> api_pb2.HandleInboundMessageResponse:
    """The response to ``HandleInboundMessage``: what was written and the reply owed."""
    return api_pb2.HandleInboundMessageResponse(
        event_ids=list(event_ids),
        consistency_token=consistency_token,
        intent=INTENTS.to_proto(outcome.intent),
        reply=REPLY_KINDS.to_proto(outcome.reply),
        required_content=[reply_content_to_proto(c) for c in outcome.required_content],
        brand=outcome.brand,
        campaign=outcome.campaign,
        notes=list(outcome.notes),
        reply_message_kind=(
            codec.MESSAGE_KINDS.to_proto(REPLY_MESSAGE_KINDS[outcome.reply])
            if outcome.reply in REPLY_MESSAGE_KINDS
            else 0
        ),
    )


_PACKET_FORMATS = {
    api_pb2.PACKET_FORMAT_JSON: Format.JSON,
    api_pb2.PACKET_FORMAT_HTML: Format.HTML,
    api_pb2.PACKET_FORMAT_PDF: Format.PDF,
}


def packet_format_from_proto(value: int, field: str = "format") -> Format | None:
    """The document a ``GetProofPacket`` asks for; None: the JSON packet alone."""
    if value == api_pb2.PACKET_FORMAT_UNSPECIFIED:
        return None
    if value not in _PACKET_FORMATS:
        raise InvalidRequest(field, f"{value} is not a PacketFormat")
    return _PACKET_FORMATS[value]


def packet_to_proto(
    document: dict[str, Any], rendered: bytes, fmt: Format | None
) -> api_pb2.GetProofPacketResponse:
    response = api_pb2.GetProofPacketResponse(consistency_token=document["consistency_token"])
    json_format.ParseDict(document, response.packet)
    if fmt is not None:
        response.document = rendered
        response.content_type = fmt.content_type
    return response
