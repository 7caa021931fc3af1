"""A batched send reads its messages once (``_SentReader``), the checks its messages
share made once a call. It must refuse exactly what the field-by-field checks refuse
and build the same events: a message the fast read let through that a check would
refuse is a wrong record, and a field added to ``SentMessage`` must be read by both."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.commands import (
    RecordMessagesSent,
    SentMessage,
    Violations,
    _one_sent,
    _sent_batch,
    _within,
    check_fields,
    request_fingerprint,
)
from ledger.errors import DomainError
from ledger.events import MessageKind, ReliedAnswer, send_differences

NOW = datetime(2026, 6, 1, 15, 0, tzinfo=UTC)
EVIDENCE = "0c6f7d1e-4b8a-5c2d-9e3f-1a2b3c4d5e6f"

PHONES = ["+14155550101", "(415) 555-0102", "+1 415 555 0101", "+44 20 7946 0958", "+1415555",
          "", "+1415555\x000101", "+5491123456789", "+54 11 2345 6789", "١٤١٥٥٥٥٠١٠١"]  # fmt: skip
CAMPAIGNS = ["promo", "alerts", "", "Promo", "pro\nmo", "p" * 200, " promo", "promo\u200b"]
MESSAGE_IDS = ["SM1", "SM2", "SM1", "", "SM\x001", "m" * 300, "SM 1", "SM\u202e1"]
TIMES = [NOW - timedelta(hours=1), NOW - timedelta(days=400), NOW + timedelta(days=2),
         NOW - timedelta(seconds=1), NOW, datetime(1969, 12, 31, tzinfo=UTC)]  # fmt: skip
RELIED = [
    None,
    ReliedAnswer("subscribers:3:1042", True, "consent_active", (EVIDENCE,)),
    ReliedAnswer("subscribers:3:1042", False, "revoked", (EVIDENCE,)),
    ReliedAnswer("", True, "consent_active", ()),
    ReliedAnswer("not a token", True, "consent_active", ()),
    ReliedAnswer("subscribers:3:1042", True, "no_such_reason", ()),
    ReliedAnswer("subscribers:3:1042", True, "consent_active", ("0c6f7d1e",)),
]
SENDERS = ["", "+12125551234", "+1212555", "212-555-1234"]

messages = st.builds(
    SentMessage,
    phone=st.sampled_from(PHONES),
    campaign=st.sampled_from(CAMPAIGNS),
    message_id=st.sampled_from(MESSAGE_IDS),
    kind=st.sampled_from(list(MessageKind)),
    occurred_at=st.sampled_from(TIMES),
    included_opt_out_language=st.booleans(),
    identified_sender=st.booleans(),
    relied_on=st.sampled_from(RELIED),
    from_number=st.sampled_from(SENDERS),
)


def field_by_field(cmd: RecordMessagesSent) -> list[object]:
    """The batch as each message's own checks read it, message by message."""
    fingerprint = request_fingerprint(cmd)
    found = Violations()
    events = []
    first: dict[tuple[str, str], tuple[int, object]] = {}
    for i, message in enumerate(cmd.messages):
        item = Violations()
        check_fields(vars(message), NOW, item)
        sent = item.check(_one_sent, cmd, i, message, cmd.brand, fingerprint)
        if item:
            found.add(_within(item, f"messages[{i}]."))
            continue
        events.append(sent)
        key = (sent.phone, sent.message_id)
        seen = first.get(key)
        if seen is None:
            first[key] = (i, sent)
        elif other := send_differences(seen[1], sent):
            found.add(DomainError(f"messages[{i}].message_id", ", ".join(other)))
    found.raise_if_any()
    return events


def outcome(read, cmd: RecordMessagesSent) -> object:
    try:
        return read(cmd)
    except DomainError as refused:
        return sorted(field for field, _ in refused.violations)


def test_the_reader_reads_every_field_of_a_sent_message():
    # A field added to SentMessage is read by ``_SentReader`` too, or this fails.
    assert [f.name for f in dataclasses.fields(SentMessage)] == [
        "phone", "campaign", "message_id", "kind", "occurred_at",
        "included_opt_out_language", "identified_sender", "relied_on", "from_number",
    ]  # fmt: skip


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages, min_size=1, max_size=6))
def test_a_batch_read_once_refuses_and_builds_what_its_checks_one_by_one_do(batch):
    cmd = RecordMessagesSent("batch-1", "acme", tuple(batch))
    fast = outcome(lambda c: _sent_batch(c, NOW), cmd)
    slow = outcome(field_by_field, cmd)
    assert fast == slow
