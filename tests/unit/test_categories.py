"""Content categories: a vocabulary, never a free string; what the provider never
allows is refused, and what it gates by age needs the age verified."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from consent.v1 import ledger_pb2
from google.rpc import error_details_pb2, status_pb2

from ledger.campaigns import (
    AGE_GATED,
    LEGAL_AGE,
    PROHIBITED,
    Campaign,
    CampaignCategory,
    CampaignPolicy,
    CampaignPurpose,
    category_of,
)
from ledger.commands import ChangeCampaignPolicy, DefineCampaign, to_events
from ledger.errors import InvalidCampaignPolicy, ProhibitedContent
from ledger.events import MessageKind
from ledger.policy import Reason, decide
from ledger.state import fold
from services.grpc_api.errors import to_status
from services.wire import codec
from services.wire.enums import WireFormatError
from tests.builders import BRAND, age, at, granted, inbound, record

POLICY_TEXT = next(
    (found for d in Path(__file__).parents for found in d.glob("shared/policy/003_*.txt")), None
)
"""The provider's Acceptable Use Policy, beside the repository (``../shared/policy``)."""
NOW = at(0)


def define(category: str = "", request: type = DefineCampaign) -> list:
    policy = CampaignPolicy(category=category)
    return to_events(request("r", BRAND, "promo", policy, NOW - timedelta(days=1)), NOW)


def state_of(*events):
    return fold(record(list(events)))


@pytest.mark.parametrize(
    ("text", "category"),
    [
        ("cannabis", CampaignCategory.CANNABIS),
        ("Marijuana", CampaignCategory.CANNABIS),
        ("CBD", CampaignCategory.CBD),
        ("prescription drugs", CampaignCategory.PRESCRIPTION_DRUG_OFFERS),
        ("Prescription-Medication", CampaignCategory.PRESCRIPTION_DRUG_OFFERS),
        ("hate speech", CampaignCategory.HATE_SPEECH),
        ("harassment", CampaignCategory.HARASSMENT),
        ("fraud", CampaignCategory.FRAUD),
        ("phishing", CampaignCategory.FRAUD),
        ("malware", CampaignCategory.MALWARE),
        ("filter_evasion", CampaignCategory.FILTER_EVASION),
        ("misinformation", CampaignCategory.MISINFORMATION),
        ("public safety threat", CampaignCategory.PUBLIC_SAFETY_THREAT),
        ("illegal", CampaignCategory.ILLEGAL),
    ],
)
@pytest.mark.parametrize("request_type", [DefineCampaign, ChangeCampaignPolicy])
def test_a_campaign_of_a_prohibited_category_is_refused_with_the_reason(
    text, category, request_type
):
    with pytest.raises(ProhibitedContent) as err:
        define(text, request_type)
    assert err.value.field == "policy.category"
    assert err.value.error_reason == "CONTENT_PROHIBITED"
    assert err.value.metadata == {"category": category.value}
    assert PROHIBITED[category] in err.value.reason


def test_every_category_the_acceptable_use_policy_names_is_prohibited_or_gated():
    prohibited = {c.value for c in PROHIBITED}
    assert {"cannabis", "cbd", "prescription_drug_offers"} <= prohibited
    assert {"hate_speech", "harassment", "fraud", "malware", "filter_evasion"} <= prohibited
    gated = {c.value for c in AGE_GATED}
    assert gated == {"alcohol", "firearms", "gambling", "tobacco", "adult_content"}
    assert not prohibited & gated and CampaignCategory.GENERAL not in {*PROHIBITED, *AGE_GATED}
    if POLICY_TEXT is not None:  # the policy's own words for each, where it is at hand
        text = POLICY_TEXT.read_text().lower()
        for word in ("cannabis", "cbd", "prescription medication", "hate speech", "fraudulent"):
            assert word in text
        assert "alcohol, firearms, gambling, tobacco, or other adult content" in text


def test_an_unknown_category_is_refused_naming_the_categories_there_are():
    for text in ("retail", "alcohol-free", "x" * 64):
        with pytest.raises(InvalidCampaignPolicy) as err:
            define(text)
        assert err.value.field == "policy.category"
        assert "general, alcohol, firearms, gambling, tobacco, adult_content" in err.value.reason
        assert "cannabis" not in err.value.reason  # what may not be chosen is not offered


def test_a_known_name_is_recorded_as_its_category():
    for text, name in (("Alcohol", "alcohol"), (" sports-betting ", "gambling"), ("", "")):
        (event,) = define(text)
        assert event.policy.category == name
        assert event.policy.content_category is (category_of(name))


@pytest.mark.parametrize("category", sorted(AGE_GATED, key=lambda c: c.value))
def test_every_age_gated_category_needs_the_legal_age_verified(category):
    assert LEGAL_AGE == 21  # the strictest US age of each gated category (AGE_GATED)
    assert "21" in AGE_GATED[category]
    (defined,) = define(category.value)
    c = Campaign(BRAND, "promo", defined.policy, 1)
    d = decide(state_of(granted(at(-10))), c, NOW)
    assert not d.allowed and d.reason is Reason.AGE_VERIFICATION_REQUIRED
    twenty = state_of(granted(at(-10)), age(at(-5), dob="2005-06-01"))  # 20 on 2026-03-02
    assert decide(twenty, c, NOW).reason is Reason.AGE_VERIFICATION_REQUIRED
    adult = state_of(granted(at(-10)), age(at(-5), dob="2005-03-01"))  # 21 the day before
    assert decide(adult, c, NOW).allowed
    general = Campaign(BRAND, "promo", CampaignPolicy(category="general"), 1)
    assert decide(state_of(granted(at(-10))), general, NOW).allowed


@pytest.mark.parametrize("category", ["cbd", "retail", "Cannabis "])
def test_rules_recorded_before_categories_were_checked_send_nothing_of_that_content(category):
    # A prohibited category, or a name that is no category at all: fail closed.
    c = Campaign(BRAND, "promo", CampaignPolicy(category=category), 1, "policy-event")
    d = decide(state_of(granted(at(-10))), c, NOW)
    assert not d.allowed and d.reason is Reason.CONTENT_NOT_ALLOWED
    assert d.evidence == ("policy-event",) and repr(category) in d.detail
    # The reply the person asked for is no content of the campaign's own.
    asked = state_of(granted(at(-10)), inbound(at(-1), "HELP", "promo"))
    assert decide(asked, c, NOW, MessageKind.HELP_REPLY).allowed


def test_the_wire_carries_the_category_by_name_and_by_enum():
    for name in ("alcohol", "Alcohol", "general", "retail", ""):
        policy = CampaignPolicy(category=name)
        msg = codec.policy_to_proto(policy)
        assert msg.category == name
        known = category_of(name) if name else None
        expected = (
            ledger_pb2.CampaignCategory.Value(f"CAMPAIGN_CATEGORY_{known.name}") if known else 0
        )
        assert msg.content_category == expected
        assert codec.policy_from_proto(msg) == policy
    only_enum = ledger_pb2.CampaignPolicy(content_category=ledger_pb2.CAMPAIGN_CATEGORY_TOBACCO)
    assert codec.policy_from_proto(only_enum).category == "tobacco"
    both = ledger_pb2.CampaignPolicy(
        category="wine", content_category=ledger_pb2.CAMPAIGN_CATEGORY_ALCOHOL
    )
    assert codec.policy_from_proto(both).category == "wine"
    with pytest.raises(WireFormatError) as err:
        codec.policy_from_proto(
            ledger_pb2.CampaignPolicy(
                category="wine", content_category=ledger_pb2.CAMPAIGN_CATEGORY_TOBACCO
            )
        )
    assert err.value.field == "category"


def test_every_proto_category_is_a_domain_category():
    names = {n for n, _ in ledger_pb2.CampaignCategory.items()} - {"CAMPAIGN_CATEGORY_UNSPECIFIED"}
    assert names == {f"CAMPAIGN_CATEGORY_{c.name}" for c in CampaignCategory}


def test_a_prohibited_category_leaves_as_invalid_argument_with_a_reason_to_branch_on():
    with pytest.raises(ProhibitedContent) as err:
        define("cbd")
    status = to_status(err.value)
    assert status.code is grpc.StatusCode.INVALID_ARGUMENT
    raw = dict(status.trailing_metadata)["grpc-status-details-bin"]
    details = status_pb2.Status.FromString(raw).details
    bad, info = error_details_pb2.BadRequest(), error_details_pb2.ErrorInfo()
    assert details[0].Unpack(bad) and details[1].Unpack(info)
    assert bad.field_violations[0].field == "policy.category"
    assert info.reason == "CONTENT_PROHIBITED" and info.domain == "consent-ledger"
    assert dict(info.metadata) == {"field": "policy.category", "category": "cbd"}


def test_a_policy_holds_its_purpose_as_the_enum_the_checks_compare():
    # The checks compare purposes by identity: a plain int kept as it came would
    # never be CONVERSATIONAL, and a conversational campaign would be read as none.
    assert CampaignPolicy(purpose=1).purpose is CampaignPurpose.CONVERSATIONAL
    with pytest.raises(ValueError):
        CampaignPolicy(purpose="conversational")  # type: ignore[arg-type]
