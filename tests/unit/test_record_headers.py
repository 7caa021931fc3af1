"""The headers every Kafka ledger record carries: the routing half of the stream contract."""

from __future__ import annotations

from ledger.events import LedgerEvent
from services.adapters.kafka_ledger import CONTENT_TYPE, record_headers
from services.wire.codec import decode_event, encode_event, event_to_proto
from tests.builders import T0, granted, inbound, revoked
from tests.conformance.ledger_suite import campaign_defined, one_of_each_kind


def headers_of(event: LedgerEvent) -> dict[str, str]:
    return {name: value.decode() for name, value in record_headers(event)}


def test_a_campaign_grant_names_its_type_version_brand_campaign_and_id() -> None:
    event = granted(T0, "spring-promo")

    assert headers_of(event) == {
        "content-type": CONTENT_TYPE,
        "event-id": str(event.event_id),
        "event-type": "ConsentGranted",
        "schema-version": "2",  # sealed personal data (ledger.upcasting)
        "brand": "acme",
        "campaign": "spring-promo",
    }


def test_a_brand_wide_stop_has_no_campaign_header() -> None:
    headers = headers_of(revoked(T0, campaign=None))

    assert "campaign" not in headers
    assert headers["event-type"] == "ConsentRevoked"


def test_a_text_to_a_number_no_campaign_owns_has_no_campaign_header() -> None:
    assert "campaign" not in headers_of(inbound(T0, campaign=None))


def test_a_campaign_event_names_its_brand_and_campaign() -> None:
    headers = headers_of(campaign_defined("winter", brand="globex"))

    assert (headers["brand"], headers["campaign"]) == ("globex", "winter")
    assert headers["event-type"] == "CampaignDefined"


def test_every_header_agrees_with_the_envelope_of_every_event_type() -> None:
    for event in [*one_of_each_kind("+14155550123"), campaign_defined()]:
        envelope = event_to_proto(event)
        headers = headers_of(event)

        assert headers["event-id"] == envelope.event_id
        assert headers["event-type"] == envelope.event_type
        assert headers["schema-version"] == str(envelope.schema_version)
        assert headers["brand"] == envelope.brand
        assert headers.get("campaign", "") == envelope.campaign
        assert decode_event(encode_event(event)) == event
