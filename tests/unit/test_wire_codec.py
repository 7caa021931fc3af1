"""The ledger wire format: every event survives the trip through protobuf unchanged."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, time, timedelta, timezone
from typing import Any, ClassVar

import pytest
from consent.v1 import ledger_pb2
from google.protobuf.duration_pb2 import Duration
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.campaigns import CampaignPolicy, CampaignPurpose, FrequencyCap, QuietHours
from ledger.events import (
    BRAND_SETTINGS,
    EVENT_TYPES,
    AgeVerified,
    BrandPolicySet,
    CampaignDefined,
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
    SubscriberLocated,
)
from ledger.personal_data import SEALED
from ledger.upcasting import class_version, upcast
from services.wire import codec
from tests.builders import proof

AT = datetime(2025, 3, 14, 15, 9, 26, 535897, tzinfo=UTC)
PHONE, BRAND = "+14155550123", "acme"


def base(n: int, at: datetime = AT) -> dict[str, Any]:
    return {
        "event_id": uuid.UUID(int=n),
        "occurred_at": at,
    }


def who() -> dict[str, Any]:
    return {"phone": PHONE, "brand": BRAND}


# Every field filled, the optional ones too, so a lossy encoding shows.
FULL_PROOF = proof(
    AT - timedelta(seconds=3, microseconds=1),
    ip_address="2001:db8::1",
    collection_detail="checkout page, box unticked by default",
    consent_text_sha256="9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    consent_text_version="2025-01",
    region="CA",
)

RICH_POLICY = CampaignPolicy(
    purpose=CampaignPurpose.INFORMATIONAL,
    category="alcohol",
    age_gated=True,
    first_message_window=timedelta(days=7, microseconds=250),
    reconfirm_interval=timedelta(days=365),
    quiet_hours=QuietHours(time(9, 30), time(20, 45)),
    quiet_hours_apply_to_all=True,
    daily_cap=2,
    frequency_caps=(FrequencyCap(3, timedelta(days=7)), FrequencyCap(1, timedelta(hours=6))),
    conversation_window=timedelta(hours=12),
    opt_out_confirmation_window=timedelta(minutes=2),
    sender_numbers=("+14155550100", "+14155550101"),
)

EXAMPLES: list[LedgerEvent] = [
    ConsentGranted(
        **base(1),
        **who(),
        campaign="spring-sale",
        tier=ConsentTier.PROMOTIONAL,
        method=CollectionMethod.WEB_FORM,
        proof=FULL_PROOF,
        source=ListSource.FIRST_PARTY,
    ),
    ConsentGranted(
        **base(2),
        **who(),
        campaign="alerts",
        tier=ConsentTier.CONVERSATIONAL,
        method=CollectionMethod.KEYWORD_REPLY,
        proof=ConsentProof(registered_at=AT, collection_detail="inbound SM123"),
    ),
    ConsentRevoked(
        **base(3),
        **who(),
        campaign=None,
        channel=RevocationChannel.KEYWORD,
        text="STOPALL",
        in_reply_to="SM124",
    ),
    ConsentRevoked(**base(4), **who(), campaign="spring-sale", channel=RevocationChannel.WEB),
    ConsentRevoked(**base(5), **who(), campaign="", channel=RevocationChannel.API),
    ConsentReconfirmed(
        **base(6), **who(), campaign="spring-sale", channel=RevocationChannel.CALL, detail="agent 7"
    ),
    ConsentResumed(**base(7), **who(), campaign=None, inbound_message_id="SM125"),
    ConsentResumed(**base(8), **who(), campaign="alerts"),
    MessageSent(
        **base(9),
        **who(),
        message_id="SM126",
        campaign="spring-sale",
        kind=MessageKind.OPT_OUT_CONFIRMATION,
        included_opt_out_language=True,
        identified_sender=True,
    ),
    MessageSent(
        **base(9),
        **who(),
        message_id="SM126b",
        campaign="spring-sale",
        kind=MessageKind.REGULAR,
        relied_on=ReliedAnswer("subscribers:3:17", True, "consent_active", ("e-1", "e-2")),
        from_number="+14155550100",
    ),
    DeliveryOutcomeReported(
        **base(22),
        **who(),
        message_id="SM126b",
        campaign="spring-sale",
        outcome=DeliveryOutcome.UNDELIVERABLE,
        error_code="30003",
    ),
    DeliveryOutcomeReported(
        **base(23),
        **who(),
        message_id="SM126",
        campaign="spring-sale",
        outcome=DeliveryOutcome.DELIVERED,
    ),
    InboundMessageReceived(
        **base(10),
        **who(),
        message_id="SM127",
        to_number="+14155550100",
        body="HELP ✉️",
        campaign="spring-sale",
    ),
    InboundMessageReceived(
        **base(11), **who(), message_id="SM128", to_number="+14155550100", body=""
    ),
    RevocationCandidateFlagged(
        **base(12), **who(), inbound_message_id="SM129", text="please don't text me anymore"
    ),
    RevocationCandidateFlagged(  # an opt-out no defined campaign could take
        **base(20),
        **who(),
        inbound_message_id="",
        text="STOP",
        to_number="+14155550199",
        campaign="winter-sale",
        unattributed=True,
    ),
    RevocationCandidateResolved(
        **base(13),
        **who(),
        candidate_event_id=uuid.UUID(int=12),
        resolution=CandidateResolution.REVOKED,
        resolved_by="ops@acme",
    ),
    AgeVerified(**base(14), **who(), method="id_scan", date_of_birth="1990-02-28"),
    AgeVerified(**base(15), **who(), method="self_attested", verified_21_plus=True),
    SubscriberLocated(**base(18), **who(), region="TX", detail="billing address"),
    SubscriberLocated(**base(19), **who(), region="FL"),
    SubjectErased(**base(22), **who(), requested_by="dpo", reference="T-1", retained_until=AT),
    SubjectErased(**base(23), **who()),
    LegalHoldPlaced(**base(24), **who(), hold_id="smith-v-acme", reason="suit", placed_by="law"),
    LegalHoldReleased(**base(25), **who(), hold_id="smith-v-acme", released_by="law"),
    InboundMessageReceived(
        **base(26),
        **who(),
        message_id="SM9",
        to_number="+14155550100",
        body=SEALED,
        sealed=Sealed("k1", b"\x00" * 12, b"ciphertext", ("body",)),
    ),
    CampaignDefined(**base(16), brand=BRAND, campaign="spring-sale", policy=CampaignPolicy()),
    CampaignPolicyChanged(**base(17), brand=BRAND, campaign="spring-sale", policy=RICH_POLICY),
    BrandPolicySet(**base(21), brand=BRAND, campaign=BRAND_SETTINGS, revoke_all=True),
]


def test_the_examples_cover_every_event_type() -> None:
    assert {type(e) for e in EXAMPLES} == set(EVENT_TYPES.values())


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: type(e).__name__)
def test_every_event_type_round_trips_unchanged(event: LedgerEvent) -> None:
    decoded = codec.decode_event(codec.encode_event(event))

    assert decoded == event
    assert type(decoded) is type(event)
    assert decoded.occurred_at.tzinfo is not None


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: type(e).__name__)
def test_envelope_denormalises_type_version_and_routing_fields(event: LedgerEvent) -> None:
    env = ledger_pb2.EventEnvelope.FromString(codec.encode_event(event))

    assert env.event_id == str(event.event_id)
    assert env.event_type == type(event).EVENT_TYPE
    assert env.schema_version == class_version(type(event))
    assert env.brand == BRAND
    assert env.phone == getattr(event, "phone", "")
    assert env.campaign == (getattr(event, "campaign", None) or "")


def test_who_recorded_a_fact_travels_in_the_envelope_and_is_not_part_of_the_fact() -> None:
    event = dataclasses.replace(EXAMPLES[0], recorded_by="checkout-service")

    env = ledger_pb2.EventEnvelope.FromString(codec.encode_event(event))
    decoded = codec.decode_event(env.SerializeToString())

    assert env.recorded_by == "checkout-service"
    assert decoded.recorded_by == "checkout-service"
    assert decoded == EXAMPLES[0]  # the same fact, whoever recorded it
    env.ClearField("recorded_by")  # written before the field existed
    assert codec.decode_event(env.SerializeToString()).recorded_by == ""


def test_the_request_that_wrote_a_fact_travels_in_the_envelope() -> None:
    event = dataclasses.replace(EXAMPLES[0], request_id="r1", request_fingerprint="ab" * 16)

    env = ledger_pb2.EventEnvelope.FromString(codec.encode_event(event))
    decoded = codec.decode_event(env.SerializeToString())

    assert (env.request_id, env.request_fingerprint) == ("r1", "ab" * 16)
    assert (decoded.request_id, decoded.request_fingerprint) == ("r1", "ab" * 16)
    env.ClearField("request_id")  # written before the field existed
    env.ClearField("request_fingerprint")
    old = codec.decode_event(env.SerializeToString())
    assert (old.request_id, old.request_fingerprint) == ("", "")


def test_brand_wide_revocation_travels_as_absent_campaign_not_empty_string() -> None:
    stop_all, stop_empty = EXAMPLES[2], EXAMPLES[4]

    assert not codec.event_to_proto(stop_all).consent_revoked.HasField("campaign")
    assert codec.event_to_proto(stop_empty).consent_revoked.HasField("campaign")
    assert codec.decode_event(codec.encode_event(stop_all)).campaign is None  # type: ignore[attr-defined]


def test_an_opt_out_stamped_ahead_keeps_its_stated_time_and_one_written_without_it_loads() -> None:
    """The time an opt-out said, kept when it was placed earlier, travels as an optional
    field: absent when it took its place at its own time, and absent on every opt-out
    written before it was kept, which reads back as stated when placed."""
    stated = AT + timedelta(seconds=40)
    ahead = dataclasses.replace(EXAMPLES[3], stated_at=stated)
    env = codec.event_to_proto(ahead)
    assert env.consent_revoked.HasField("stated_at")
    back = codec.decode_event(codec.encode_event(ahead))
    assert back == ahead
    assert isinstance(back, ConsentRevoked) and back.stated == stated
    assert not codec.event_to_proto(EXAMPLES[3]).consent_revoked.HasField("stated_at")
    env.consent_revoked.ClearField("stated_at")  # as written before it was kept
    old = codec.decode_event(env.SerializeToString())
    assert isinstance(old, ConsentRevoked)
    assert (old.stated_at, old.stated) == (None, old.occurred_at)
    assert old.event_id == ahead.event_id


def test_an_imported_opt_out_keeps_its_mark_and_one_written_without_it_loads_as_live() -> None:
    """Whether an import recorded the opt-out decides whether this service owes its
    confirmation: the mark must survive the ledger, and an opt-out written before it
    was kept (no field) reads back as it was then, unmarked."""
    imported = dataclasses.replace(EXAMPLES[3], imported=True)
    back = codec.decode_event(codec.encode_event(imported))
    assert isinstance(back, ConsentRevoked) and back.imported
    assert back == imported
    env = codec.event_to_proto(EXAMPLES[3])
    # A live opt-out is written as before the mark was kept, which reads back unmarked.
    assert "imported" not in {f.name for f, _ in env.consent_revoked.ListFields()}
    old = codec.decode_event(env.SerializeToString())
    assert isinstance(old, ConsentRevoked) and not old.imported


def test_a_text_keeps_the_reply_it_owed_and_one_written_without_it_loads_without() -> None:
    """A text's retry is told the reply the text owed when recorded, read from the
    ledger once the view is rebuilt: the reply must survive it, and a text written
    before it was kept (no field) reads back without one, answered as it was then."""
    text = next(e for e in EXAMPLES if isinstance(e, InboundMessageReceived))
    told = dataclasses.replace(text, reply="none")
    back = codec.decode_event(codec.encode_event(told))
    assert isinstance(back, InboundMessageReceived) and back == told
    env = codec.event_to_proto(text)
    assert "reply" not in {f.name for f, _ in env.inbound_message_received.ListFields()}
    old = codec.decode_event(env.SerializeToString())
    assert isinstance(old, InboundMessageReceived) and old.reply == ""


def test_a_candidate_stamped_ahead_keeps_its_stated_time_and_one_written_without_it_loads() -> None:
    """A held opt-out's stated time travels as an optional field too: absent when it
    was placed at its own time, and on candidates written before it was kept."""
    stated = AT + timedelta(seconds=40)
    held = next(e for e in EXAMPLES if isinstance(e, RevocationCandidateFlagged) and e.unattributed)
    ahead = dataclasses.replace(held, stated_at=stated)
    env = codec.event_to_proto(ahead)
    assert env.revocation_candidate_flagged.HasField("stated_at")
    back = codec.decode_event(codec.encode_event(ahead))
    assert back == ahead
    assert isinstance(back, RevocationCandidateFlagged) and back.stated == stated
    assert not codec.event_to_proto(held).revocation_candidate_flagged.HasField("stated_at")
    env.revocation_candidate_flagged.ClearField("stated_at")  # as written before it was kept
    old = codec.decode_event(env.SerializeToString())
    assert isinstance(old, RevocationCandidateFlagged)
    assert (old.stated_at, old.stated) == (None, old.occurred_at)
    assert old.event_id == ahead.event_id


def test_an_imported_candidate_keeps_its_mark_and_one_written_without_it_loads_unmarked() -> None:
    """An import's opt-out naming a campaign not defined is kept as a candidate; the
    mark that it was imported decides who owed its confirmation, so it must survive
    the ledger, and a candidate written without it reads back unmarked."""
    held = next(e for e in EXAMPLES if isinstance(e, RevocationCandidateFlagged) and e.unattributed)
    marked = dataclasses.replace(held, from_import=True)
    back = codec.decode_event(codec.encode_event(marked))
    assert isinstance(back, RevocationCandidateFlagged) and back.from_import and back.imported
    assert back == marked
    env = codec.event_to_proto(held)
    assert "imported" not in {f.name for f, _ in env.revocation_candidate_flagged.ListFields()}
    old = codec.decode_event(env.SerializeToString())
    assert isinstance(old, RevocationCandidateFlagged) and not old.imported


def test_times_in_other_zones_come_back_as_the_same_instant_in_utc() -> None:
    tokyo = timezone(timedelta(hours=9))
    event = ConsentResumed(**base(20, AT.astimezone(tokyo)), **who(), campaign=None)

    decoded = codec.decode_event(codec.encode_event(event))

    assert decoded.occurred_at == AT
    assert decoded.occurred_at.utcoffset() == timedelta(0)


def test_naive_datetimes_are_refused_rather_than_guessed() -> None:
    event = ConsentResumed(**base(21, AT.replace(tzinfo=None)), **who(), campaign=None)

    with pytest.raises(codec.WireFormatError, match="occurred_at"):
        codec.encode_event(event)


def test_quiet_hours_with_seconds_are_refused_rather_than_truncated() -> None:
    policy = CampaignPolicy(quiet_hours=QuietHours(time(8, 0, 30), time(21, 0)))

    with pytest.raises(codec.WireFormatError) as err:
        codec.policy_to_proto(policy)
    assert err.value.field == "quiet_hours.start"


def test_absent_policy_fields_take_the_domain_defaults() -> None:
    assert codec.policy_from_proto(ledger_pb2.CampaignPolicy()) == CampaignPolicy()


def test_a_duration_as_long_as_its_spec_allows_is_read_and_a_longer_one_is_refused() -> None:
    longest = Duration(seconds=315_576_000_000, nanos=999_999_999)
    assert codec.duration_from_proto(longest) == timedelta(days=3_652_500, microseconds=999_999)
    assert codec.duration_from_proto(Duration(seconds=-1, nanos=-1_500)) == timedelta(
        seconds=-1, microseconds=-1
    )
    for bad in (
        Duration(seconds=315_576_000_001),
        Duration(seconds=2**62),  # ToTimedelta raised OverflowError
        Duration(seconds=-(2**63)),
        Duration(seconds=1, nanos=-1),
        Duration(nanos=1_000_000_000),
    ):
        with pytest.raises(codec.WireFormatError) as err:
            codec.duration_from_proto(bad, "window")
        assert err.value.field == "window"


def test_recorded_event_round_trips_with_position_time_and_extra() -> None:
    recorded = Recorded(
        EXAMPLES[0],
        LedgerPosition(7, 2**40 + 3),
        AT + timedelta(microseconds=1),
        extra={"producer": "api-1"},
    )

    decoded = codec.decode_recorded(codec.encode_recorded(recorded))

    assert decoded == recorded
    assert decoded.recorded_at == AT + timedelta(microseconds=1)
    assert decoded.extra == {"producer": "api-1"}


def test_snapshot_round_trips_every_fact_in_order() -> None:
    facts = [
        Recorded(e, LedgerPosition(i % 3, i), AT + timedelta(seconds=i))
        for i, e in enumerate(EXAMPLES)
    ]

    assert codec.decode_snapshot(codec.encode_snapshot(facts)) == facts
    assert codec.decode_snapshot(codec.encode_snapshot([])) == []


# --- errors --------------------------------------------------------------------


def envelope(event: LedgerEvent) -> ledger_pb2.EventEnvelope:
    return codec.event_to_proto(event)


def test_unknown_event_type_is_refused_by_name() -> None:
    env = envelope(EXAMPLES[0])
    env.event_type = "ConsentTeleported"

    with pytest.raises(ValueError, match="unknown event type 'ConsentTeleported'"):
        codec.decode_event(env.SerializeToString())


def test_event_written_by_a_newer_version_is_refused() -> None:
    env = envelope(EXAMPLES[0])
    env.schema_version = class_version(ConsentGranted) + 1

    with pytest.raises(ValueError, match="written by a newer version"):
        codec.decode_event(env.SerializeToString())


def test_unset_schema_version_reads_as_version_one() -> None:
    env = envelope(EXAMPLES[0])
    env.ClearField("schema_version")

    assert codec.decode_event(env.SerializeToString()) == EXAMPLES[0]


def test_payload_that_does_not_match_the_type_is_refused() -> None:
    env = envelope(EXAMPLES[0])
    env.event_type = ConsentRevoked.EVENT_TYPE

    with pytest.raises(ValueError, match="must carry consent_revoked, not consent_granted"):
        codec.decode_event(env.SerializeToString())


def test_unset_enum_is_refused_naming_the_field() -> None:
    env = envelope(EXAMPLES[0])
    env.consent_granted.tier = ledger_pb2.CONSENT_TIER_UNSPECIFIED

    with pytest.raises(codec.WireFormatError) as err:
        codec.decode_event(env.SerializeToString())
    assert err.value.field == "consent_granted.tier"


def test_enum_value_from_a_newer_writer_is_refused() -> None:
    env = envelope(EXAMPLES[3])
    env.consent_revoked.channel = 99  # type: ignore[assignment]

    with pytest.raises(ValueError, match="unknown RevocationChannel value 99"):
        codec.decode_event(env.SerializeToString())


@pytest.mark.parametrize("field", ["event_id", "occurred_at"])
def test_missing_or_malformed_identity_is_refused(field: str) -> None:
    env = envelope(EXAMPLES[0])
    if field == "event_id":
        env.event_id = "not-a-uuid"
    else:
        env.ClearField("occurred_at")

    with pytest.raises(codec.WireFormatError) as err:
        codec.decode_event(env.SerializeToString())
    assert err.value.field == field


def test_garbage_bytes_are_a_value_error() -> None:
    with pytest.raises(ValueError):
        codec.decode_event(b"\xff\xff\xff")


# --- upcasting -----------------------------------------------------------------


class AgeVerifiedV2(AgeVerified):
    """v1 wrote US-style dates of birth; v2 stores ISO dates."""

    class_version: ClassVar[int] = 2

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        dob = state["date_of_birth"]
        if dob and "/" in dob:
            month, day, year = dob.split("/")
            state["date_of_birth"] = f"{year}-{month}-{day}"


def test_old_event_is_upcast_to_the_current_class_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    v1 = AgeVerified(**base(30), **who(), method="id_scan", date_of_birth="02/28/1990")
    data = codec.encode_event(v1)
    assert ledger_pb2.EventEnvelope.FromString(data).schema_version == 1
    monkeypatch.setitem(codec.EVENT_CLASSES, AgeVerified.EVENT_TYPE, AgeVerifiedV2)

    decoded = codec.decode_event(data)

    assert type(decoded) is AgeVerifiedV2
    assert decoded.date_of_birth == "1990-02-28"  # type: ignore[attr-defined]
    assert decoded.event_id == v1.event_id
    assert decoded.occurred_at == v1.occurred_at


def test_current_version_is_written_and_read_back_without_upcasting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    v2 = AgeVerifiedV2(**base(31), **who(), method="id_scan", date_of_birth="1990-02-28")
    data = codec.encode_event(v2)
    monkeypatch.setitem(codec.EVENT_CLASSES, AgeVerified.EVENT_TYPE, AgeVerifiedV2)

    assert ledger_pb2.EventEnvelope.FromString(data).schema_version == 2
    assert codec.decode_event(data) == v2


def test_upcast_applies_each_step_in_order_and_leaves_the_input_alone() -> None:
    class Thrice:
        class_version = 3

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["log"] = [*state["log"], "1->2"]

        @staticmethod
        def upcast_v2_v3(state: dict[str, Any]) -> dict[str, Any]:
            return {**state, "log": [*state["log"], "2->3"]}

    original = {"log": []}

    assert upcast(Thrice, original, 1) == {"log": ["1->2", "2->3"]}
    assert upcast(Thrice, original, 2) == {"log": ["2->3"]}
    assert upcast(Thrice, original, 3) == {"log": []}
    assert original == {"log": []}


def test_upcast_without_a_step_for_an_old_version_fails_clearly() -> None:
    class Careless:
        class_version = 2

    with pytest.raises(ValueError, match="defines no upcast_v1_v2"):
        upcast(Careless, {}, 1)


# --- property: any event of any type round-trips -------------------------------

texts = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=40)
zones = st.builds(
    timezone, st.timedeltas(min_value=timedelta(hours=-23), max_value=timedelta(hours=23))
)
moments = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=zones
)
spans = st.timedeltas(min_value=timedelta(days=-3650), max_value=timedelta(days=3650))
minutes = st.builds(time, st.integers(0, 23), st.integers(0, 59))
counts = st.integers(0, 2**32 - 1)


def _event(cls: type[LedgerEvent], **fields: Any) -> st.SearchStrategy[LedgerEvent]:
    common = {
        "event_id": st.uuids(),
        "occurred_at": moments,
        "brand": texts,
    }
    return st.builds(cls, **common, **fields)


proofs = st.builds(
    ConsentProof,
    registered_at=moments,
    **{name: texts for name in codec._PROOF_TEXT_FIELDS},
)
policies = st.builds(
    CampaignPolicy,
    purpose=st.sampled_from(CampaignPurpose),
    category=texts,
    age_gated=st.booleans(),
    first_message_window=spans,
    reconfirm_interval=st.none() | spans,
    quiet_hours=st.builds(QuietHours, minutes, minutes),
    quiet_hours_apply_to_all=st.booleans(),
    daily_cap=st.none() | counts,
    frequency_caps=st.lists(st.builds(FrequencyCap, counts, spans), max_size=3).map(tuple),
    conversation_window=spans,
    opt_out_confirmation_window=spans,
    sender_numbers=st.lists(texts, max_size=3).map(tuple),
)
channels = st.sampled_from(RevocationChannel)

subscriber = {"phone": texts}
any_event = st.one_of(
    _event(
        ConsentGranted,
        **subscriber,
        campaign=texts,
        tier=st.sampled_from(ConsentTier),
        method=st.sampled_from(CollectionMethod),
        proof=proofs,
        source=st.sampled_from(ListSource),
    ),
    _event(
        ConsentRevoked,
        **subscriber,
        campaign=st.none() | texts,
        channel=channels,
        text=texts,
        in_reply_to=texts,
        stated_at=st.none() | moments,
    ),
    _event(ConsentReconfirmed, **subscriber, campaign=texts, channel=channels, detail=texts),
    _event(ConsentResumed, **subscriber, campaign=st.none() | texts, inbound_message_id=texts),
    _event(
        MessageSent,
        **subscriber,
        message_id=texts,
        campaign=texts,
        kind=st.sampled_from(MessageKind),
        included_opt_out_language=st.booleans(),
        identified_sender=st.booleans(),
    ),
    _event(
        InboundMessageReceived,
        **subscriber,
        message_id=texts,
        to_number=texts,
        body=texts,
        campaign=st.none() | texts,
    ),
    _event(
        RevocationCandidateFlagged,
        **subscriber,
        inbound_message_id=texts,
        text=texts,
        stated_at=st.none() | moments,
    ),
    _event(
        RevocationCandidateResolved,
        **subscriber,
        candidate_event_id=st.uuids(),
        resolution=st.sampled_from(CandidateResolution),
        resolved_by=texts,
    ),
    _event(
        AgeVerified, **subscriber, method=texts, date_of_birth=texts, verified_21_plus=st.booleans()
    ),
    _event(CampaignDefined, campaign=texts, policy=policies),
    _event(CampaignPolicyChanged, campaign=texts, policy=policies),
    _event(BrandPolicySet, campaign=st.just(BRAND_SETTINGS), revoke_all=st.booleans()),
)


@given(any_event)
def test_any_event_of_any_type_round_trips(event: LedgerEvent) -> None:
    decoded = codec.decode_event(codec.encode_event(event))

    assert decoded == event
    assert type(decoded) is type(event)


@given(
    st.lists(
        st.tuples(any_event, st.integers(0, 2**31 - 1), st.integers(0, 2**63 - 1), moments),
        max_size=5,
    )
)
def test_any_snapshot_round_trips(rows: list[tuple[LedgerEvent, int, int, datetime]]) -> None:
    facts = [Recorded(e, LedgerPosition(p, o), at) for e, p, o, at in rows]

    assert codec.decode_snapshot(codec.encode_snapshot(facts)) == facts


@given(
    st.lists(
        st.tuples(any_event, st.integers(0, 2**31 - 1), st.integers(0, 2**63 - 1), moments),
        max_size=5,
    )
)
def test_a_snapshot_joined_from_encoded_facts_is_the_encoded_snapshot(
    rows: list[tuple[LedgerEvent, int, int, datetime]],
) -> None:
    facts = [Recorded(e, LedgerPosition(p, o), at) for e, p, o, at in rows]
    encoded = [codec.encode_recorded(f) for f in facts]

    joined = codec.join_snapshot(encoded)

    assert joined == codec.encode_snapshot(facts)
    assert codec.split_snapshot(joined) == encoded


def test_a_snapshot_cut_short_is_refused_not_misread() -> None:
    fact = Recorded(EXAMPLES[0], LedgerPosition(0, 300), AT)
    whole = codec.encode_snapshot([fact, fact])

    with pytest.raises(codec.WireFormatError, match="snapshot"):
        codec.split_snapshot(whole[:-1])
    with pytest.raises(codec.WireFormatError, match="snapshot"):
        codec.split_snapshot(b"\x12\x00")


@pytest.mark.parametrize(
    "enum_map",
    [
        codec.TIERS,
        codec.METHODS,
        codec.SOURCES,
        codec.CHANNELS,
        codec.MESSAGE_KINDS,
        codec.RESOLUTIONS,
        codec.PURPOSES,
    ],
    ids=lambda m: m.domain.__name__,
)
def test_every_domain_enum_member_has_its_own_proto_value(enum_map: Any) -> None:
    values = [enum_map.to_proto(member) for member in enum_map.domain]

    assert 0 not in values
    assert len(set(values)) == len(values)
    assert [enum_map.from_proto(v, "f") for v in values] == list(enum_map.domain)


@settings(max_examples=500, deadline=None)
@given(
    seconds=st.integers(min_value=-62_135_596_800, max_value=253_402_300_799),
    nanos=st.integers(min_value=0, max_value=999_999_999),
)
def test_timestamp_decoding_agrees_with_protobufs_own_helper(seconds, nanos):
    from google.protobuf.timestamp_pb2 import Timestamp

    ts = Timestamp(seconds=seconds, nanos=nanos)
    assert codec.timestamp_from_proto(ts) == ts.ToDatetime(tzinfo=UTC)
