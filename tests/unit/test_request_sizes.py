"""Every request the limits allow fits the server, and every fact it makes fits one
Kafka record: a fact that did not would be refused by the producer on every retry."""

from __future__ import annotations

from consent.v1 import consent_service_pb2 as api_pb2
from consent.v1 import ledger_pb2
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from ledger.campaigns import PROHIBITED, Campaign, CampaignCategory, CampaignPolicy
from ledger.commands import TEXT_LIMITS, HandleInboundMessage, handle_inbound, to_events
from ledger.events import LedgerEvent
from ledger.state import fold
from services.adapters.kafka_ledger import _key
from services.grpc_api.server import MAX_REQUEST_BYTES
from services.settings import KafkaLedgerSettings
from services.wire import api, codec
from tests.builders import BRAND, PHONE, at

WIDE = "\U0001f600"  # four bytes in UTF-8, the most a character takes
LETTER = "\U0001d400"  # a letter (mathematical bold A), four bytes as well
NOW = at(10)
NUMBER = "+12125550100"
RECORD_BYTES = KafkaLedgerSettings(bootstrap_servers="kafka:9092").max_record_bytes


def full(field: str) -> str:
    return WIDE * TEXT_LIMITS[field]


def when() -> Timestamp:
    return codec.timestamp_to_proto(at(0))


def largest_proof_text(name: str) -> str:
    """The largest value ``proof.<name>`` takes: four-byte letters (a field without a
    letter or digit is a placeholder, and missing), or the longest one of its type."""
    limit = TEXT_LIMITS[f"proof.{name}"]
    if name == "ip_address":  # an IPv6 address's zone may be any text
        return "fe80::1%" + LETTER * (limit - 8)
    if name == "form_url":
        return "https://acme.example/" + LETTER * (limit - 21)
    if name.endswith("_sha256"):
        return "f" * 64
    return LETTER * limit


def largest_writes() -> list[Message]:
    proof = ledger_pb2.ConsentProof(
        registered_at=when(),
        **{name: largest_proof_text(name) for name in codec._PROOF_TEXT_FIELDS if name != "region"},
        region="FL",  # a USPS code, never free text
    )
    policy = ledger_pb2.CampaignPolicy(
        category=max((c.value for c in CampaignCategory if c not in PROHIBITED), key=len),
        sender_numbers=[f"+1212555{n:04d}" for n in range(1000)],
    )
    common = {"request_id": "r" * 128, "phone": PHONE, "brand": BRAND, "occurred_at": when()}
    return [
        api_pb2.RecordOptInRequest(
            **common,
            campaign="promo",
            tier=ledger_pb2.CONSENT_TIER_PROMOTIONAL,
            method=ledger_pb2.COLLECTION_METHOD_WEB_FORM,
            proof=proof,
        ),
        api_pb2.RecordOptOutRequest(
            **common,
            channel=ledger_pb2.REVOCATION_CHANNEL_WEB,
            text=full("text"),
            in_reply_to=full("in_reply_to"),
        ),
        api_pb2.RecordReconfirmationRequest(
            **common,
            campaign="promo",
            channel=ledger_pb2.REVOCATION_CHANNEL_WEB,
            detail=full("detail"),
        ),
        api_pb2.RecordMessageSentRequest(**common, campaign="promo", message_id=full("message_id")),
        api_pb2.RecordAgeVerificationRequest(
            **common, method=full("method"), verified_21_plus=True
        ),
        api_pb2.RecordSubscriberLocationRequest(**common, region="TX", detail=full("detail")),
        api_pb2.ResolveRevocationCandidateRequest(
            **common,
            candidate_event_id="8c524f7e-5f25-5734-841b-8e24c95b218e",
            resolution=ledger_pb2.CANDIDATE_RESOLUTION_REVOKED,
            resolved_by=full("resolved_by"),
        ),
        api_pb2.DefineCampaignRequest(
            request_id="r", brand=BRAND, campaign="promo", policy=policy, occurred_at=when()
        ),
        api_pb2.HandleInboundMessageRequest(
            request_id="r" * 128,
            from_phone=PHONE,
            to_phone=NUMBER,
            body=f"STOP {full('body')}"[: TEXT_LIMITS["body"]],
            message_id=full("message_id"),
            occurred_at=when(),
        ),
    ]


def facts(request: Message) -> list[LedgerEvent]:
    command = api.command_from_proto(request)
    if isinstance(command, HandleInboundMessage):
        rules = Campaign(BRAND, "promo", CampaignPolicy(sender_numbers=(NUMBER,)), 1)
        return handle_inbound(command, rules, fold([]), NOW).events
    return to_events(command, NOW)


def record_bytes(event: LedgerEvent) -> int:
    from aiokafka.record.default_records import DefaultRecordBatchBuilder

    return DefaultRecordBatchBuilder.estimate_size_in_bytes(
        _key(event), codec.encode_event(event), []
    )


def test_every_write_at_its_limits_fits_the_server_and_each_of_its_facts_one_record() -> None:
    for request in largest_writes():
        name = type(request).__name__
        assert request.ByteSize() <= MAX_REQUEST_BYTES, name
        made = facts(request)
        assert made, name
        for event in made:
            assert record_bytes(event) <= RECORD_BYTES // 4, (name, type(event).__name__)


def test_a_request_the_server_takes_cannot_make_a_fact_too_large_for_a_record() -> None:
    # A fact holds each field of its request once, plus a small envelope.
    assert MAX_REQUEST_BYTES <= RECORD_BYTES // 2


def test_a_thousand_number_batch_fits_the_server_even_written_out_at_length() -> None:
    batch = api_pb2.CanSendBatchRequest(
        brand=BRAND,
        campaign="promo",
        phones=[f"+1 (415) 555-{n:04d}".ljust(250) for n in range(1000)],
        at_least_as_fresh="subscribers:0:1," * 64,
    )
    assert all(len(p) == 250 for p in batch.phones)  # phonenumbers reads no more
    assert batch.ByteSize() <= MAX_REQUEST_BYTES
