"""Hostile strings in every identifier field of every write request: each is refused
with that field named, or accepted and stored in exactly the canonical form that a
later request spelling it the same way finds.

The requests go through the wire translation (``services.wire.api``) and the
domain's validation (``ledger.commands``), as the servicer sends them."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.campaigns import Campaign
from ledger.commands import HandleInboundMessage, handle_inbound, is_name, to_events
from ledger.errors import DomainError
from ledger.events import LedgerEvent
from ledger.phone import to_e164
from ledger.regions import STATE_NAMES
from ledger.state import SubscriberState
from ledger.validation import identifier_problem
from services.wire import api
from tests.unit.test_wire_api import WRITES, policy_domain

NOW = datetime(2025, 6, 1, 14, 31, tzinfo=UTC)
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")

# Characters that have slipped through validators elsewhere: controls, format
# characters, separators, look-alike digits and letters, and the punctuation a
# phone parser reads through.
TRICKY = [
    "\x00", "\n", "\r", "\t", "\x0b", "\x1b", "\x7f", "\x85", "\x9b", " ", "\u00a0", "\u2028",
    "\u200b", "\u200d", "\u202e", "\u2066", "\ufeff", "\ufffe", "\U000e0001",
    "\uff11", "\u0661", "\u00b2", "A", "Z", "\u0130", "\u212a", "e\u0301", "\u00e9",
    "+", "-", "(", ")", ".", "/", ":", "_", "*", "#", ";ext=", " ext. ", "tel:", "0", "1", "9",
]  # fmt: skip
tricky = st.lists(st.sampled_from(TRICKY), max_size=4).map("".join)


def around(valid: str) -> st.SearchStrategy[str]:
    """``valid`` with tricky characters before, after or inside it, or replaced by any text."""
    return st.one_of(
        st.text(st.characters(codec="utf-8"), max_size=24),  # what protobuf can carry
        st.builds(lambda a, b: a + valid + b, tricky, tricky),
        st.builds(
            lambda i, t: valid[: i % (len(valid) + 1)] + t + valid[i % (len(valid) + 1) :],
            st.integers(0, 64),
            tricky,
        ),
    )


def _request(name: str) -> Message:
    for request, _ in WRITES:
        if type(request).__name__ == name:
            return type(request).FromString(request.SerializeToString())
    raise LookupError(name)


def _events(msg: Message) -> list[LedgerEvent]:
    """What the service would record for ``msg`` (raises ``DomainError`` if refused)."""
    command = api.command_from_proto(msg)
    if isinstance(command, HandleInboundMessage):
        campaign = Campaign("acme", "spring-sale", policy_domain(), 1)
        state = SubscriberState(phone="+14155550123", brand="acme")
        return handle_inbound(command, campaign, state, NOW).events
    return to_events(command, NOW)


def _canonical_phone(value: str, stored: str) -> None:
    assert _E164.fullmatch(stored), stored
    assert to_e164(stored) == stored  # canonical: reading it again changes nothing
    assert to_e164(value) == stored  # a read spelling it as written finds it


def _exact_identifier(value: str, stored: str) -> None:
    assert stored == value
    assert identifier_problem(value) is None


def _exact_name(value: str, stored: str) -> None:
    assert stored == value and is_name(value)
    assert value.isascii() and value == value.strip() and "\n" not in value


# (request type, field as the request names it, a valid value, where the accepted
# value is stored, what must hold of it)
Stored = Callable[[LedgerEvent], str]
CASES: list[tuple[str, str, str, Stored, Callable[[str, str], None]]] = []
_PHONE_AT: Stored = lambda e: e.phone  # type: ignore[attr-defined]  # noqa: E731
for _request_name in (
    "RecordOptInRequest",
    "RecordOptOutRequest",
    "RecordReconfirmationRequest",
    "RecordMessageSentRequest",
    "RecordAgeVerificationRequest",
    "RecordSubscriberLocationRequest",
    "ResolveRevocationCandidateRequest",
):
    CASES += [
        (_request_name, "phone", "+14155550123", _PHONE_AT, _canonical_phone),
        (_request_name, "brand", "acme", lambda e: e.brand, _exact_name),  # type: ignore[attr-defined]
    ]
for _request_name in (
    "RecordOptInRequest",
    "RecordOptOutRequest",
    "RecordReconfirmationRequest",
    "RecordMessageSentRequest",
    "DefineCampaignRequest",
    "ChangeCampaignPolicyRequest",
):
    CASES.append(
        (_request_name, "campaign", "spring-sale", lambda e: e.campaign, _exact_name)  # type: ignore[attr-defined]
    )
for _request_name in ("DefineCampaignRequest", "ChangeCampaignPolicyRequest"):
    CASES.append(
        (_request_name, "brand", "acme", lambda e: e.brand, _exact_name)  # type: ignore[attr-defined]
    )
CASES += [
    (
        "RecordSubscriberLocationRequest",
        "region",
        "FL",
        lambda e: e.region,  # type: ignore[attr-defined]
        lambda value, stored: _in(stored, STATE_NAMES),
    ),
    ("RecordOptOutRequest", "in_reply_to", "SM1", lambda e: e.in_reply_to, _exact_identifier),  # type: ignore[attr-defined]
    ("RecordMessageSentRequest", "message_id", "SM2", lambda e: e.message_id, _exact_identifier),  # type: ignore[attr-defined]
    ("HandleInboundMessageRequest", "message_id", "SM3", lambda e: e.message_id, _exact_identifier),  # type: ignore[attr-defined]
    ("HandleInboundMessageRequest", "from_phone", "+14155550123", _PHONE_AT, _canonical_phone),
    (
        "HandleInboundMessageRequest",
        "to_phone",
        "+14155550100",
        lambda e: e.to_number,  # type: ignore[attr-defined]
        _canonical_phone,
    ),
    (
        "ResolveRevocationCandidateRequest",
        "candidate_event_id",
        "00000000-0000-0000-0000-00000000000c",
        lambda e: str(e.candidate_event_id),  # type: ignore[attr-defined]
        lambda value, stored: (
            None if stored == value.lower() == str(uuid.UUID(value)) else pytest_fail(value)
        ),
    ),
]


def _in(stored: str, codes: Any) -> None:
    assert stored in codes and stored.isascii() and len(stored) == 2, stored


def pytest_fail(value: str) -> None:
    raise AssertionError(f"{value!r} was stored in another form")


def _one(case: tuple[str, str, str, Stored, Callable[[str, str], None]], value: str) -> None:
    request_name, field, _, stored_at, holds = case
    msg = _request(request_name)
    setattr(msg, field, value)
    try:
        events = _events(msg)
    except DomainError as exc:
        fields = [f for f, _ in exc.violations]
        assert field in fields, (value, exc.violations)
        return
    holds(value, stored_at(events[0]))
    # The same request again is the same facts (a retry), spelt the same way.
    assert [e.event_id for e in _events(msg)] == [e.event_id for e in events]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_identifier_field_is_refused_by_name_or_stored_canonically(data: Any) -> None:
    case = data.draw(st.sampled_from(CASES), label="case")
    value = data.draw(around(case[2]), label=f"{case[0]}.{case[1]}")
    _one(case, value)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_request_id_is_refused_by_name_or_kept_exactly(data: Any) -> None:
    request, _ = data.draw(st.sampled_from(WRITES), label="request")
    value = data.draw(around("req-1"), label="request_id")
    msg = type(request).FromString(request.SerializeToString())
    msg.request_id = value
    try:
        events = _events(msg)
    except DomainError as exc:
        assert "request_id" in [f for f, _ in exc.violations], (value, exc.violations)
        return
    assert value.strip() and identifier_problem(value) is None and len(value) <= 128
    assert [e.event_id for e in _events(msg)] == [e.event_id for e in events]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=around("+14155550101"), index=st.integers(0, 2))
def test_every_sender_number_is_refused_by_name_or_stored_canonically(
    value: str, index: int
) -> None:
    msg = _request("DefineCampaignRequest")
    numbers = ["+14155550100", "+14155550102", "+14155550103"]
    numbers[index] = value
    del msg.policy.sender_numbers[:]  # type: ignore[attr-defined]
    msg.policy.sender_numbers.extend(numbers)  # type: ignore[attr-defined]
    field = f"policy.sender_numbers[{index}]"
    try:
        events = _events(msg)
    except DomainError as exc:
        assert field in [f for f, _ in exc.violations], (value, exc.violations)
        return
    _canonical_phone(value, events[0].policy.sender_numbers[index])  # type: ignore[attr-defined]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_several_hostile_fields_are_all_named_in_one_refusal(data: Any) -> None:
    request_name = "RecordOptOutRequest"
    bad = {
        "brand": data.draw(st.sampled_from(["acme\n", "ac\x00me", " acme", "acme\u200b"])),
        "phone": data.draw(st.sampled_from(["+1415555\x000123", "nope", "+14155550123\u202e"])),
        "in_reply_to": data.draw(st.sampled_from(["SM1\n", "\u200b", " SM1"])),
        "request_id": data.draw(st.sampled_from([" ", "r\x00", "r\u2028"])),
    }
    chosen = data.draw(st.lists(st.sampled_from(sorted(bad)), min_size=2, unique=True))
    msg = _request(request_name)
    for field in chosen:
        setattr(msg, field, bad[field])
    try:
        _events(msg)
    except DomainError as exc:
        assert sorted(f for f, _ in exc.violations) == sorted(chosen)
    else:
        raise AssertionError(f"{chosen} were accepted")
