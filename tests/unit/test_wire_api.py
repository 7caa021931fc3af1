"""The gRPC API translation: requests become domain commands, answers become responses."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any

import pytest
from consent.v1 import consent_service_pb2 as api_pb2
from consent.v1 import ledger_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.campaigns import Campaign, CampaignPolicy, CampaignPurpose, FrequencyCap, QuietHours
from ledger.commands import (
    HELP_CONTENT,
    OPT_OUT_CONFIRMATION_CONTENT,
    ChangeCampaignPolicy,
    DefineCampaign,
    HandleInboundMessage,
    RecordAgeVerification,
    RecordDeliveryOutcome,
    RecordMessageSent,
    RecordMessagesSent,
    RecordOptIn,
    RecordOptOut,
    RecordReconfirmation,
    RecordSubscriberLocation,
    ResolveRevocationCandidate,
    SentMessage,
    SetBrandPolicy,
    handle_inbound,
    to_events,
)
from ledger.errors import DomainError, InvalidRequest
from ledger.events import (
    CandidateResolution,
    CollectionMethod,
    ConsentGranted,
    ConsentTier,
    DeliveryOutcome,
    ListSource,
    MessageKind,
    ReliedAnswer,
    RevocationChannel,
)
from ledger.policy import Decision, Obligation, Reason
from ledger.state import SubscriberState, fold
from services.wire import api
from services.wire.enums import WireFormatError
from tests.builders import granted, proof, proof_proto, record

AT = datetime(2025, 6, 1, 14, 30, 5, 123456, tzinfo=UTC)
PHONE, BRAND, CAMPAIGN = "+14155550123", "acme", "spring-sale"


def ts(value: datetime = AT) -> Timestamp:
    t = Timestamp()
    t.FromDatetime(value)
    return t


def policy_proto() -> ledger_pb2.CampaignPolicy:
    return ledger_pb2.CampaignPolicy(
        purpose=ledger_pb2.CAMPAIGN_PURPOSE_INFORMATIONAL,
        quiet_hours=ledger_pb2.QuietHours(start_minute_of_day=9 * 60, end_minute_of_day=20 * 60),
        daily_cap=1,
        frequency_caps=[ledger_pb2.FrequencyCap(limit=3, window=Duration(seconds=7 * 86400))],
        sender_numbers=["+14155550100"],
    )


def policy_domain() -> CampaignPolicy:
    return CampaignPolicy(
        purpose=CampaignPurpose.INFORMATIONAL,
        quiet_hours=QuietHours(time(9, 0), time(20, 0)),
        daily_cap=1,
        frequency_caps=(FrequencyCap(3, timedelta(days=7)),),
        sender_numbers=("+14155550100",),
    )


who = {"request_id": "req-1", "phone": PHONE, "brand": BRAND}

# Each write request, fully filled in, with the domain command it must become.
WRITES: list[tuple[Message, Any]] = [
    (
        api_pb2.RecordOptInRequest(
            **who,
            campaign=CAMPAIGN,
            tier=ledger_pb2.CONSENT_TIER_PROMOTIONAL,
            method=ledger_pb2.COLLECTION_METHOD_WEB_FORM,
            proof=proof_proto(AT - timedelta(seconds=2)),
            source=ledger_pb2.LIST_SOURCE_FIRST_PARTY,
            occurred_at=ts(),
        ),
        RecordOptIn(
            **who,
            campaign=CAMPAIGN,
            tier=ConsentTier.PROMOTIONAL,
            method=CollectionMethod.WEB_FORM,
            proof=proof(AT - timedelta(seconds=2)),
            occurred_at=AT,
        ),
    ),
    (
        api_pb2.RecordOptOutRequest(
            **who,
            campaign=CAMPAIGN,
            channel=ledger_pb2.REVOCATION_CHANNEL_WEB,
            occurred_at=ts(),
            text="unsubscribe me",
            in_reply_to="SM1",
        ),
        RecordOptOut(
            **who,
            campaign=CAMPAIGN,
            channel=RevocationChannel.WEB,
            occurred_at=AT,
            text="unsubscribe me",
            in_reply_to="SM1",
        ),
    ),
    (
        api_pb2.RecordReconfirmationRequest(
            **who,
            campaign=CAMPAIGN,
            channel=ledger_pb2.REVOCATION_CHANNEL_CALL,
            occurred_at=ts(),
            detail="agent 7",
        ),
        RecordReconfirmation(
            **who,
            campaign=CAMPAIGN,
            channel=RevocationChannel.CALL,
            occurred_at=AT,
            detail="agent 7",
        ),
    ),
    (
        api_pb2.RecordMessageSentRequest(
            **who,
            campaign=CAMPAIGN,
            message_id="SM2",
            kind=ledger_pb2.MESSAGE_KIND_RECONFIRMATION_REQUEST,
            occurred_at=ts(),
            included_opt_out_language=True,
            identified_sender=True,
            from_number="+12125550100",
        ),
        RecordMessageSent(
            **who,
            campaign=CAMPAIGN,
            message_id="SM2",
            kind=MessageKind.RECONFIRMATION_REQUEST,
            occurred_at=AT,
            included_opt_out_language=True,
            identified_sender=True,
            from_number="+12125550100",
        ),
    ),
    (
        api_pb2.RecordAgeVerificationRequest(
            **who, method="id_scan", occurred_at=ts(), date_of_birth="1990-02-28"
        ),
        RecordAgeVerification(**who, method="id_scan", occurred_at=AT, date_of_birth="1990-02-28"),
    ),
    (
        api_pb2.ResolveRevocationCandidateRequest(
            **who,
            candidate_event_id="00000000-0000-0000-0000-00000000000c",
            resolution=ledger_pb2.CANDIDATE_RESOLUTION_DISMISSED,
            occurred_at=ts(),
            resolved_by="ops@acme",
        ),
        ResolveRevocationCandidate(
            **who,
            candidate_event_id="00000000-0000-0000-0000-00000000000c",
            resolution=CandidateResolution.DISMISSED,
            occurred_at=AT,
            resolved_by="ops@acme",
        ),
    ),
    (
        api_pb2.DefineCampaignRequest(
            request_id="req-1",
            brand=BRAND,
            campaign=CAMPAIGN,
            policy=policy_proto(),
            occurred_at=ts(),
        ),
        DefineCampaign(
            request_id="req-1",
            brand=BRAND,
            campaign=CAMPAIGN,
            policy=policy_domain(),
            occurred_at=AT,
        ),
    ),
    (
        api_pb2.ChangeCampaignPolicyRequest(
            request_id="req-1",
            brand=BRAND,
            campaign=CAMPAIGN,
            policy=policy_proto(),
            occurred_at=ts(),
        ),
        ChangeCampaignPolicy(
            request_id="req-1",
            brand=BRAND,
            campaign=CAMPAIGN,
            policy=policy_domain(),
            occurred_at=AT,
        ),
    ),
    (
        api_pb2.HandleInboundMessageRequest(
            request_id="req-1",
            from_phone=PHONE,
            to_phone="+14155550100",
            body="STOP",
            message_id="SM3",
            occurred_at=ts(),
        ),
        HandleInboundMessage(
            request_id="req-1",
            from_phone=PHONE,
            to_phone="+14155550100",
            body="STOP",
            message_id="SM3",
            occurred_at=AT,
        ),
    ),
    (
        api_pb2.RecordSubscriberLocationRequest(
            **who, region="tx", occurred_at=ts(), detail="billing address"
        ),
        RecordSubscriberLocation(**who, region="tx", occurred_at=AT, detail="billing address"),
    ),
    (
        api_pb2.RecordDeliveryOutcomeRequest(
            **who,
            message_id="SM2",
            outcome=ledger_pb2.DELIVERY_OUTCOME_FAILED,
            error_code="30007",
            occurred_at=ts(),
        ),
        RecordDeliveryOutcome(
            **who,
            message_id="SM2",
            outcome=DeliveryOutcome.FAILED,
            error_code="30007",
            occurred_at=AT,
        ),
    ),
]


def name_of(case: Any) -> str:
    return type(case).__name__ if isinstance(case, Message) else ""


@pytest.mark.parametrize(("request_msg", "expected"), WRITES, ids=name_of)
def test_each_write_request_becomes_its_domain_command(request_msg: Message, expected: Any) -> None:
    assert api.command_from_proto(request_msg) == expected


def test_an_opt_in_request_translates_into_a_grant_the_domain_accepts() -> None:
    command = api.command_from_proto(WRITES[0][0])

    (event,) = to_events(command, now=AT)  # type: ignore[arg-type]

    assert isinstance(event, ConsentGranted)
    assert event.proof.registered_at == AT - timedelta(seconds=2)


def test_every_write_request_type_is_translated() -> None:
    writes = {
        name
        for name in api_pb2.DESCRIPTOR.services_by_name["ConsentService"].methods_by_name
        if name.startswith(("Record", "Resolve", "Define", "Change", "Handle"))
    }
    translated = {type(msg).__name__.removesuffix("Request") for msg, _ in WRITES}
    translated.add("RecordMessagesSent")  # below: a call of many messages

    assert translated == writes


@pytest.mark.parametrize(("request_msg", "expected"), WRITES, ids=name_of)
def test_missing_occurred_at_is_refused_naming_the_field(
    request_msg: Message, expected: Any
) -> None:
    request_msg = type(request_msg).FromString(request_msg.SerializeToString())
    request_msg.ClearField("occurred_at")

    with pytest.raises(InvalidRequest) as err:
        api.command_from_proto(request_msg)
    assert err.value.field == "occurred_at"


@pytest.mark.parametrize("seconds", [-62135596800 - 86400, 253402300800 + 86400])
@pytest.mark.parametrize(("request_msg", "expected"), WRITES, ids=name_of)
def test_an_occurred_at_out_of_datetime_s_range_is_refused_naming_the_field(
    request_msg: Message, expected: Any, seconds: int
) -> None:
    request_msg = type(request_msg).FromString(request_msg.SerializeToString())
    request_msg.occurred_at.seconds = seconds  # type: ignore[attr-defined]

    with pytest.raises((InvalidRequest, WireFormatError)) as err:
        api.command_from_proto(request_msg)
    assert (err.value.field, err.value.reason) == (
        "occurred_at",
        "is out of range (years 1 to 9999)",
    )
    with pytest.raises(InvalidRequest):  # the readers CanSend and the audit calls use
        api.optional_time(request_msg, "occurred_at")


def opt_in(**changes: Any) -> api_pb2.RecordOptInRequest:
    msg = api_pb2.RecordOptInRequest()
    msg.CopyFrom(WRITES[0][0])
    for name, value in changes.items():
        if value is None:
            msg.ClearField(name)
        else:
            setattr(msg, name, value)
    return msg


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"tier": None}, "tier"),
        ({"method": None}, "method"),
        ({"tier": 42}, "tier"),
        ({"proof": None}, "proof"),
    ],
)
def test_unset_or_unknown_opt_in_fields_are_refused_by_name(
    changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidRequest) as err:
        api.command_from_proto(opt_in(**changes))
    assert err.value.field == field


def test_proof_without_registration_time_is_refused_naming_the_nested_field() -> None:
    msg = opt_in()
    msg.proof.ClearField("registered_at")

    with pytest.raises(InvalidRequest) as err:
        api.command_from_proto(msg)
    assert err.value.field == "proof.registered_at"


def test_unset_list_source_means_first_party() -> None:
    command = api.command_from_proto(opt_in(source=None))

    assert command.source is ListSource.FIRST_PARTY  # type: ignore[union-attr]


def test_purchased_list_source_reaches_the_domain_which_refuses_it() -> None:
    command = api.command_from_proto(opt_in(source=ledger_pb2.LIST_SOURCE_PURCHASED))

    assert command.source is ListSource.PURCHASED  # type: ignore[union-attr]


def test_opt_out_without_campaign_is_brand_wide() -> None:
    msg = api_pb2.RecordOptOutRequest()
    msg.CopyFrom(WRITES[1][0])
    msg.ClearField("campaign")

    assert api.command_from_proto(msg).campaign is None  # type: ignore[union-attr]


def test_opt_out_with_unset_channel_is_refused() -> None:
    msg = api_pb2.RecordOptOutRequest()
    msg.CopyFrom(WRITES[1][0])
    msg.ClearField("channel")

    with pytest.raises(InvalidRequest) as err:
        api.command_from_proto(msg)
    assert err.value.field == "channel"


@pytest.mark.parametrize(
    ("request_type", "field", "accepted"),
    [
        (api_pb2.RecordOptInRequest, "tier", "conversational, informational, promotional"),
        (api_pb2.RecordOptInRequest, "method",
         "web_form, keyword_reply, paper, verbal, api_import"),
        (api_pb2.RecordOptOutRequest, "channel", "keyword, free_text, web, call, api"),
        (api_pb2.RecordReconfirmationRequest, "channel", "keyword, free_text, web, call, api"),
        (api_pb2.RecordDeliveryOutcomeRequest, "outcome",
         "delivered, failed, undeliverable"),
        (api_pb2.ResolveRevocationCandidateRequest, "resolution", "revoked, dismissed"),
    ],
)  # fmt: skip
def test_an_enum_left_unset_is_refused_as_not_set_naming_what_it_may_be(
    request_type: type[Message], field: str, accepted: str
) -> None:
    """Refused "is required (REVOCATION_CHANNEL_UNSPECIFIED given)": the proto's zero
    value, a name no client wrote, which a refused opt-out's hold then kept in the
    ledger as the reason it was held."""
    msg = request_type()
    msg.CopyFrom(next(m for m, _ in WRITES if isinstance(m, request_type)))
    msg.ClearField(field)

    with pytest.raises(InvalidRequest) as err:
        api.command_from_proto(msg)
    assert err.value.violations == ((field, f"is required and was not set: one of {accepted}"),)


def test_unset_message_kind_means_regular() -> None:
    msg = api_pb2.RecordMessageSentRequest()
    msg.CopyFrom(WRITES[3][0])
    msg.ClearField("kind")

    assert api.command_from_proto(msg).kind is MessageKind.REGULAR  # type: ignore[union-attr]
    assert api.message_kind_from_proto(0) is MessageKind.REGULAR


def test_campaign_request_without_policy_is_refused() -> None:
    msg = api_pb2.DefineCampaignRequest(request_id="r", brand=BRAND, campaign=CAMPAIGN)
    msg.occurred_at.CopyFrom(ts())

    with pytest.raises(InvalidRequest) as err:
        api.command_from_proto(msg)
    assert err.value.field == "policy"


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda p: p.frequency_caps[0].ClearField("window"), "policy.frequency_caps[0].window"),
        (
            lambda p: setattr(p.quiet_hours, "start_minute_of_day", 1440),
            "policy.quiet_hours.start_minute_of_day",
        ),
        (lambda p: setattr(p, "purpose", 99), "policy.purpose"),
        # Durations protobuf's own ToTimedelta overflows on (it raised OverflowError,
        # which the edge reported as UNAVAILABLE, "retry"), or that its spec forbids.
        (
            lambda p: setattr(p.first_message_window, "seconds", 2**62),
            "policy.first_message_window",
        ),
        (
            lambda p: setattr(p.conversation_window, "seconds", 10**12),
            "policy.conversation_window",
        ),
        (
            lambda p: setattr(p.reconfirm_interval, "seconds", -(2**62)),
            "policy.reconfirm_interval",
        ),
        (
            lambda p: setattr(p.frequency_caps[0].window, "seconds", 2**62),
            "policy.frequency_caps[0].window",
        ),
        (
            lambda p: p.opt_out_confirmation_window.MergeFrom(Duration(seconds=60, nanos=-1)),
            "policy.opt_out_confirmation_window",
        ),
        (
            lambda p: p.opt_out_confirmation_window.MergeFrom(Duration(nanos=10**9)),
            "policy.opt_out_confirmation_window",
        ),
    ],
)
def test_malformed_policy_fields_are_refused_with_their_full_path(mutate: Any, field: str) -> None:
    msg = api_pb2.ChangeCampaignPolicyRequest()
    msg.CopyFrom(WRITES[7][0])
    mutate(msg.policy)

    with pytest.raises(InvalidRequest) as err:
        api.command_from_proto(msg)
    assert err.value.field == field


def test_a_read_request_is_not_a_command() -> None:
    with pytest.raises(TypeError):
        api.command_from_proto(api_pb2.CanSendRequest())


def test_absent_optional_time_is_none_and_present_one_is_utc() -> None:
    request = api_pb2.CanSendRequest(phone=PHONE)

    assert api.optional_time(request, "at") is None
    request.at.CopyFrom(ts())
    assert api.optional_time(request, "at") == AT
    with pytest.raises(InvalidRequest):
        api.required_time(api_pb2.CanSendAsOfRequest(), "at")


# --- enums -----------------------------------------------------------------------


@pytest.mark.parametrize("enum_map", [api.REASONS, api.OBLIGATIONS, api.INTENTS, api.REPLY_KINDS])
def test_every_domain_member_maps_to_a_distinct_proto_value_and_back(enum_map: Any) -> None:
    values = [enum_map.to_proto(m) for m in enum_map.domain]

    assert 0 not in values
    assert len(set(values)) == len(values)
    assert [enum_map.from_proto(v, "f") for v in values] == list(enum_map.domain)


@pytest.mark.parametrize(
    ("enum_map", "proto_enum"),
    [
        (api.REASONS, api_pb2.Reason),
        (api.OBLIGATIONS, api_pb2.Obligation),
        (api.INTENTS, api_pb2.InboundIntent),
        (api.REPLY_KINDS, api_pb2.ReplyKind),
    ],
)
def test_every_proto_value_but_unspecified_has_a_domain_member(
    enum_map: Any, proto_enum: Any
) -> None:
    nonzero = {v for _, v in proto_enum.items() if v != 0}

    assert nonzero == {enum_map.to_proto(m) for m in enum_map.domain}


def test_required_content_all_has_proto_values() -> None:
    contents = {*OPT_OUT_CONFIRMATION_CONTENT, *HELP_CONTENT, "opt_out_instructions"}

    assert 0 not in {api.reply_content_to_proto(c) for c in contents}
    with pytest.raises(ValueError):
        api.reply_content_to_proto("sing_a_song")


# --- decisions and outcomes ---------------------------------------------------------

ALLOW = Decision(
    allowed=True,
    reason=Reason.CONSENT_ACTIVE,
    obligations=(Obligation.INCLUDE_OPT_OUT_LANGUAGE, Obligation.IDENTIFY_SENDER),
    evidence=("00000000-0000-0000-0000-000000000001",),
    detail="consent since 2025-05-01",
    policy_version=3,
)
DENY = Decision(False, Reason.QUIET_HOURS, (), (), "21:30 local in America/New_York", 1)


@pytest.mark.parametrize("decision", [ALLOW, DENY], ids=["allow", "deny"])
def test_decision_survives_the_response_unchanged(decision: Decision) -> None:
    response = api.decision_to_proto(decision, consistency_token="subscribers:0:5")

    assert api.decision_from_proto(response) == decision
    assert response.consistency_token == "subscribers:0:5"
    assert api.decision_from_proto(api.decision_to_as_of_proto(decision, "t")) == decision


def test_allow_names_its_obligations_in_order() -> None:
    response = api.decision_to_proto(ALLOW)

    assert response.reason == api_pb2.REASON_CONSENT_ACTIVE
    assert list(response.obligations) == [
        api_pb2.OBLIGATION_INCLUDE_OPT_OUT_LANGUAGE,
        api_pb2.OBLIGATION_IDENTIFY_SENDER,
    ]
    assert list(response.evidence_event_ids) == list(ALLOW.evidence)


def test_batch_entry_keeps_the_phone_as_requested() -> None:
    entry = api.send_decision_to_proto("(415) 555-0123", DENY)

    assert entry.phone == "(415) 555-0123"
    assert api.decision_from_proto(entry) == DENY


def test_a_batch_response_is_each_decision_in_request_order() -> None:
    other = Decision(
        True,
        Reason.CONSENT_ACTIVE,
        (Obligation.IDENTIFY_SENDER,),
        ("00000000-0000-0000-0000-000000000002", "00000000-0000-0000-0000-000000000003"),
        "consent stands",
        2,
    )
    decisions = [ALLOW, DENY, other, ALLOW, DENY, other]
    phones = [f"+1415555{n:04d}" for n in range(len(decisions))]

    response = api.batch_to_proto(phones, decisions, "subscribers:0:9")

    assert response.consistency_token == "subscribers:0:9"
    assert list(response.decisions) == [
        api.send_decision_to_proto(p, d) for p, d in zip(phones, decisions, strict=True)
    ]
    assert [api.decision_from_proto(e) for e in response.decisions] == decisions
    with pytest.raises(ValueError):
        api.batch_to_proto(phones[:2], decisions)


_decisions = st.builds(
    Decision,
    allowed=st.booleans(),
    reason=st.sampled_from(list(Reason)),
    # Equal tuples that are distinct objects, and shared ones, both occur.
    obligations=st.lists(st.sampled_from(list(Obligation)), max_size=3).map(tuple),
    evidence=st.lists(st.sampled_from(["e-1", "e-2", "e-3"]), max_size=3).map(tuple),
    detail=st.sampled_from(["", "consent stands", "opted out"]),
    policy_version=st.integers(0, 3),
)


@settings(max_examples=300, deadline=None)
@given(decisions=st.lists(_decisions | st.sampled_from([ALLOW, DENY]), max_size=12))
def test_a_batch_entry_is_its_decision_alone_whatever_the_entries_around_it(
    decisions: list[Decision],
) -> None:
    # Entries copy a template per kind of answer: one may never carry another's fields.
    phones = [f"+1415555{n:04d}" for n in range(len(decisions))]

    response = api.batch_to_proto(phones, decisions)

    assert [e.SerializeToString() for e in response.decisions] == [
        api.send_decision_to_proto(p, d).SerializeToString()
        for p, d in zip(phones, decisions, strict=True)
    ]
    assert [api.decision_from_proto(e) for e in response.decisions] == decisions


def test_help_text_owes_a_help_reply_with_its_required_content() -> None:
    campaign = Campaign(BRAND, CAMPAIGN, CampaignPolicy(), policy_version=1)
    command = api.command_from_proto(WRITES[8][0])
    command = HandleInboundMessage(**{**command.__dict__, "body": "HELP"})
    outcome = handle_inbound(command, campaign, SubscriberState(), now=AT)

    response = api.inbound_outcome_to_proto(outcome, ["e1"], "subscribers:0:1")

    assert response.intent == api_pb2.INBOUND_INTENT_HELP
    assert response.reply == api_pb2.REPLY_KIND_HELP
    assert list(response.required_content) == [
        api_pb2.REPLY_CONTENT_IDENTIFY_SENDER,
        api_pb2.REPLY_CONTENT_CUSTOMER_CARE_CONTACT,
        api_pb2.REPLY_CONTENT_OPT_OUT_INSTRUCTIONS,
    ]
    assert (response.brand, response.campaign) == (BRAND, CAMPAIGN)
    assert list(response.event_ids) == ["e1"]
    assert response.reply_message_kind == ledger_pb2.MESSAGE_KIND_HELP_REPLY


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ("STOP", ledger_pb2.MESSAGE_KIND_OPT_OUT_CONFIRMATION),
        ("STOPALL", ledger_pb2.MESSAGE_KIND_OPT_OUT_CONFIRMATION),
        ("START", ledger_pb2.MESSAGE_KIND_OPT_IN_CONFIRMATION),
        ("hello", ledger_pb2.MESSAGE_KIND_UNSPECIFIED),
    ],
)
def test_the_response_names_the_kind_to_send_the_owed_reply_as(body, kind) -> None:
    campaign = Campaign(BRAND, CAMPAIGN, CampaignPolicy(), policy_version=1)
    command = api.command_from_proto(WRITES[8][0])
    command = HandleInboundMessage(**{**command.__dict__, "body": body})
    grant = granted(AT - timedelta(days=1), CAMPAIGN, phone=PHONE, brand=BRAND)
    outcome = handle_inbound(command, campaign, fold(record([grant])), now=AT)
    response = api.inbound_outcome_to_proto(outcome, ["e1"], "subscribers:0:1")
    assert response.reply_message_kind == kind


def test_a_set_brand_policy_request_becomes_its_command() -> None:
    # No occurred_at: the setting is dated when it is recorded (not in WRITES).
    msg = api_pb2.SetBrandPolicyRequest(request_id="req-1", brand=BRAND, revoke_all=True)
    assert api.command_from_proto(msg) == SetBrandPolicy("req-1", BRAND, revoke_all=True)
    off = api_pb2.SetBrandPolicyRequest(request_id="req-1", brand=BRAND)
    with pytest.raises(InvalidRequest) as err:
        to_events(api.command_from_proto(off), AT)  # type: ignore[arg-type]
    assert err.value.field == "revoke_all"


def sent_message_proto(i: int) -> api_pb2.SentMessage:
    return api_pb2.SentMessage(
        phone=PHONE,
        campaign=CAMPAIGN,
        message_id=f"SM{i}",
        kind=ledger_pb2.MESSAGE_KIND_HELP_REPLY,
        occurred_at=ts(),
        included_opt_out_language=True,
        identified_sender=True,
        relied_on=api_pb2.ReliedOnAnswer(
            consistency_token="subscribers:0:3",
            allowed=True,
            reason=api_pb2.REASON_CONSENT_ACTIVE,
            evidence_event_ids=["e1"],
        ),
        from_number="+12125550100",
    )


def test_a_call_of_many_messages_sent_becomes_one_request_of_each_message() -> None:
    request = api_pb2.RecordMessagesSentRequest(
        request_id="req-1", brand=BRAND, messages=[sent_message_proto(0), sent_message_proto(1)]
    )
    relied = ReliedAnswer("subscribers:0:3", True, "consent_active", ("e1",))
    assert api.command_from_proto(request) == RecordMessagesSent(
        "req-1",
        BRAND,
        tuple(
            SentMessage(
                PHONE,
                CAMPAIGN,
                f"SM{i}",
                MessageKind.HELP_REPLY,
                AT,
                True,
                True,
                relied,
                "+12125550100",
            )
            for i in range(2)
        ),
    )


def test_what_a_message_of_a_call_lacks_is_named_by_its_place_with_every_other_bad_field() -> None:
    messages = [sent_message_proto(i) for i in range(4)]
    messages[1].ClearField("occurred_at")
    messages[2].relied_on.reason = api_pb2.REASON_UNSPECIFIED
    messages[3].phone = "not a phone"
    request = api_pb2.RecordMessagesSentRequest(request_id="req-1", brand="Acme", messages=messages)
    with pytest.raises(InvalidRequest) as refused:
        api.command_from_proto(request)
    assert [f for f, _ in refused.value.violations] == [
        "brand",
        "messages[1].occurred_at",
        "messages[2].relied_on.reason",
        "messages[3].phone",
    ]


def test_a_call_s_bad_fields_are_listed_by_message_whichever_pass_found_them() -> None:
    # An unset time is found while the request is read, a bad phone only when the
    # messages read are checked: the earlier message still comes first.
    messages = [sent_message_proto(i) for i in range(12)]
    messages[0].phone = "not a phone"
    messages[3].ClearField("occurred_at")
    messages[5].kind = 99
    messages[10].message_id = ""
    request = api_pb2.RecordMessagesSentRequest(request_id="req-1", brand="acme", messages=messages)
    with pytest.raises(DomainError) as refused:  # the first bad field's type
        api.command_from_proto(request)
    fields = [f for f, _ in refused.value.violations]
    assert fields[:3] == ["messages[0].phone", "messages[3].occurred_at", "messages[5].kind"]
    assert fields == sorted(fields, key=lambda f: int(f[9 : f.index("]")]))
    assert str(refused.value).startswith("messages[0].phone: ")
    assert refused.value.field == "messages[0].phone"  # what the answer names first


def test_a_call_of_too_many_messages_is_not_read_message_by_message() -> None:
    request = api_pb2.RecordMessagesSentRequest(
        request_id="req-1", brand=BRAND, messages=[api_pb2.SentMessage()] * 1_001
    )
    command = api.command_from_proto(request)  # no message is read, so none is refused
    assert isinstance(command, RecordMessagesSent) and len(command.messages) == 1_001
    with pytest.raises(InvalidRequest) as refused:
        to_events(command, AT)
    assert refused.value.field == "messages"
