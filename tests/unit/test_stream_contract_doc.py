"""protos/README.md names what the code does: the topics and every record header."""

from __future__ import annotations

import re
from pathlib import Path

from ledger.events import CAMPAIGN_EVENT_TYPES, SUBSCRIBER_EVENT_TYPES
from ledger.ports import Stream
from services.adapters.kafka_ledger import record_headers
from services.consumer import StreamConsumerSettings
from services.settings import KafkaLedgerSettings
from tests.builders import T0, granted

CONTRACT = (Path(__file__).resolve().parents[2] / "protos" / "README.md").read_text()


def section(title: str) -> str:
    start = CONTRACT.index(f"## {title}\n")
    end = CONTRACT.find("\n## ", start + 1)
    return CONTRACT[start : end if end != -1 else None]


def table_names(text: str) -> list[str]:
    """The first column of a Markdown table's rows, where it is one `name`."""
    return re.findall(r"^\| `([^`]+)` \|", text, re.M)


def test_the_headers_table_lists_every_header_a_record_carries_in_order() -> None:
    carried = [name for name, _ in record_headers(granted(T0, "spring-promo"))]

    assert table_names(section("Headers")) == carried


def test_the_topics_table_names_the_topics_the_ledger_and_the_consumer_use() -> None:
    ledger = KafkaLedgerSettings("kafka:9092", topic_prefix="staging.")
    consumer = StreamConsumerSettings("kafka:9092", group_id="g", topic_prefix="staging.")
    documented = [name.replace("<prefix>", "staging.") for name in table_names(section("Topics"))]

    events = [ledger.topic(Stream.SUBSCRIBERS), ledger.topic(Stream.CAMPAIGNS)]
    assert documented == [*events, ledger.checkpoint_topic_name()]
    assert documented == list(ledger.topic_partitions())
    assert consumer.topics() == events  # the checkpoints hold no events


def test_every_event_kind_is_named_with_what_it_means_for_consent() -> None:
    # A consumer that keeps who may be messaged and skips a kind that denies lets
    # through a number CanSend stops: the page names every kind, in the ledger's order.
    kinds = [cls.EVENT_TYPE for cls in (*SUBSCRIBER_EVENT_TYPES, *CAMPAIGN_EVENT_TYPES)]

    assert table_names(section("What each event means for consent")) == kinds
