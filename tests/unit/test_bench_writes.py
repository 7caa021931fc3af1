"""The write bench gives every call request ids of its own."""

from datetime import UTC, datetime

from consent.v1 import consent_service_pb2 as api_pb2

from bench import client
from bench.client import string_field
from bench.writes import BATCH, phases
from ledger.ports import ConsistencyToken
from services.adapters.postgres_ledger import PARTITION


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


def test_each_batched_call_names_a_new_request_id_and_a_new_message_id_per_message() -> None:
    phones = [f"+1415555{i:04d}" for i in range(2000)]
    batched = next(p for p in phases(phones, datetime(2026, 1, 1, tzinfo=UTC))
                   if p.name == "RecordMessagesSent")  # fmt: skip
    load = client.Load(
        "-", batched.method, batched.requests, (), batched.concurrency, 1.0,
        unique=batched.unique, items=batched.items, item_field=batched.item_field,
        item_unique=batched.item_unique,
    )  # fmt: skip

    def call(value: str, n: int) -> api_pb2.RecordMessagesSentRequest:
        request = batched.requests[0]
        request += b"".join(string_field(f, value.encode()) for f in batched.unique)
        return api_pb2.RecordMessagesSentRequest.FromString(
            request + client.batch_items(load, value, n)
        )

    first, second = call("run1.0.3.17", 0), call("run1.0.3.18", 1)
    assert first.request_id == "run1.0.3.17" and first.brand == "acme"
    assert len(first.messages) == batched.per_call == BATCH
    ids = {m.message_id for m in first.messages} | {m.message_id for m in second.messages}
    assert len(ids) == 2 * BATCH
    assert [m.phone for m in first.messages] == phones[:BATCH]
    assert [m.phone for m in second.messages] == phones[BATCH:]  # the next thousand numbers
    assert all(m.relied_on.allowed and m.HasField("occurred_at") for m in first.messages)


def test_the_batched_sends_rely_on_a_token_the_embedded_ledger_has() -> None:
    # A token naming a partition the ledger lacks is refused (the embedded ledger
    # has one), which stopped `make bench` in this phase.
    phones = [f"+1415555{i:04d}" for i in range(BATCH)]
    batched = next(p for p in phases(phones, datetime(2026, 1, 1, tzinfo=UTC))
                   if p.name == "RecordMessagesSent")  # fmt: skip
    tokens = {
        api_pb2.SentMessage.FromString(item).relied_on.consistency_token
        for call in batched.items
        for item in call
    }
    assert tokens
    for token in tokens:
        assert {p for _, p in ConsistencyToken.decode(token).offsets} == {PARTITION}
