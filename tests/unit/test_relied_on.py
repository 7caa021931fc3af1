"""The answer a send relied on: carried from RecordMessageSent to the recorded fact."""

from __future__ import annotations

import pytest
from consent.v1 import consent_service_pb2 as api_pb2

from ledger.commands import RecordMessageSent, to_events
from ledger.errors import InvalidRequest
from ledger.events import MessageKind, MessageSent, ReliedAnswer
from ledger.policy import ALLOWING_REASONS
from services.wire import api, codec
from tests.builders import BRAND, PHONE, T0

EVIDENCE = ("5614ccb1-9b4f-5a80-b524-39b0aaf5cae9", "0c3fdc0c-2103-50b0-812e-efe0be7b247c")


def _request(**relied: object) -> api_pb2.RecordMessageSentRequest:
    msg = api_pb2.RecordMessageSentRequest(
        request_id="r-1", phone=PHONE, brand=BRAND, campaign="promo", message_id="SM1"
    )
    msg.occurred_at.FromDatetime(T0)
    if relied:
        msg.relied_on.CopyFrom(api_pb2.ReliedOnAnswer(**relied))  # type: ignore[arg-type]
    return msg


def _sent(msg: api_pb2.RecordMessageSentRequest) -> MessageSent:
    command = api.command_from_proto(msg)
    assert isinstance(command, RecordMessageSent)
    (event,) = to_events(command, T0)
    assert isinstance(event, MessageSent)
    return event


def test_the_answer_relied_on_reaches_the_fact_and_survives_the_wire():
    msg = _request(
        consistency_token="subscribers:0:12,campaigns:0:3",
        allowed=False,
        reason=api_pb2.REASON_QUIET_HOURS,
        evidence_event_ids=[EVIDENCE[0], EVIDENCE[1].upper()],
    )
    event = _sent(msg)
    assert event.relied_on == ReliedAnswer(
        "subscribers:0:12,campaigns:0:3", False, "quiet_hours", EVIDENCE
    )
    assert codec.decode_event(codec.encode_event(event)) == event


@pytest.mark.parametrize("reason", [r for r in api_pb2.Reason.values() if r])
def test_every_reason_is_relied_on_with_the_allowed_the_service_gives_with_it(reason):
    """Each reason is one the policy gives only to an allowed, or only to a denied,
    answer (``ledger.policy.ALLOWING_REASONS``): recorded with the other is refused."""
    allowing = api.REASONS.from_proto(reason, "reason") in ALLOWING_REASONS
    event = _sent(_request(consistency_token="subscribers:0:1", allowed=allowing, reason=reason))
    assert event.relied_on is not None and event.relied_on.allowed is allowing
    with pytest.raises(InvalidRequest) as err:
        _sent(_request(consistency_token="subscribers:0:1", allowed=not allowing, reason=reason))
    assert err.value.field == "relied_on.allowed"


def test_a_send_that_names_no_answer_records_none():
    event = _sent(_request())
    assert event.relied_on is None and event.kind is MessageKind.REGULAR
    assert codec.decode_event(codec.encode_event(event)).relied_on is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("relied", "field"),
    [
        ({"allowed": True, "reason": api_pb2.REASON_CONSENT_ACTIVE}, "relied_on.consistency_token"),
        (
            {"consistency_token": "yesterday", "reason": api_pb2.REASON_CONSENT_ACTIVE},
            "relied_on.consistency_token",
        ),
        ({"consistency_token": "subscribers:0:1", "allowed": True}, "relied_on.reason"),
        ({"consistency_token": "subscribers:0:1", "reason": 999}, "relied_on.reason"),
        (
            {
                "consistency_token": "subscribers:0:1",
                "reason": api_pb2.REASON_CONSENT_ACTIVE,
                "evidence_event_ids": ["x"] * 101,
            },
            "relied_on.evidence_event_ids",
        ),
        *(
            (
                {"consistency_token": "subscribers:0:1", "allowed": allowed, "reason": reason},
                "relied_on.allowed",
            )
            for allowed, reason in (
                (True, api_pb2.REASON_REVOKED),
                (True, api_pb2.REASON_FREQUENCY_CAP_REACHED),
                (True, api_pb2.REASON_NOT_CONSISTENT),
                (False, api_pb2.REASON_CONSENT_ACTIVE),
                (False, api_pb2.REASON_OPT_OUT_CONFIRMATION_ALLOWED),
            )
        ),
        *(
            (
                {
                    "consistency_token": "subscribers:0:1",
                    "allowed": True,
                    "reason": api_pb2.REASON_CONSENT_ACTIVE,
                    "evidence_event_ids": [EVIDENCE[0], spelled],
                },
                "relied_on.evidence_event_ids[1]",
            )
            for spelled in (
                "",
                "e1",
                EVIDENCE[1] + "\x00",
                "\u202e" + EVIDENCE[1],
                f" {EVIDENCE[1]}",
                EVIDENCE[1].replace("-", ""),
                "{" + EVIDENCE[1] + "}",
            )
        ),
    ],
)
def test_an_answer_the_service_could_not_have_given_is_refused_by_field(relied, field):
    with pytest.raises(InvalidRequest) as err:
        _sent(_request(**relied))
    assert err.value.field == field
