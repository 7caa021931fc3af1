"""The write bench gives every call request ids of its own."""

from datetime import UTC, datetime

from consent.v1 import consent_service_pb2 as api_pb2

from bench.client import string_field
from bench.writes import phases


def test_an_appended_field_overrides_the_template_value() -> None:
    sent = next(p for p in phases(["+14155552671"], datetime(2026, 1, 1, tzinfo=UTC))
                if p.name == "RecordMessageSent")  # fmt: skip
    template = sent.requests[0]
    request = template + b"".join(string_field(f, b"run1.0.3.17") for f in sent.unique)
    parsed = api_pb2.RecordMessageSentRequest.FromString(request)
    assert (parsed.request_id, parsed.message_id) == ("run1.0.3.17", "run1.0.3.17")
    assert parsed.phone == "+14155552671"
    assert api_pb2.RecordMessageSentRequest.FromString(template).request_id == ""


def test_every_phase_writes_a_fresh_request_id() -> None:
    for phase in phases(["+14155552671"], datetime(2026, 1, 1, tzinfo=UTC)):
        number = type(phase.messages[0]).DESCRIPTOR.fields_by_name["request_id"].number
        assert number in phase.unique, phase.name
