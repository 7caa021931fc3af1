"""Reading a new topic's configs: a broker that does not know a topic just created
yet is asked again, and a topic that stays unreadable is reported."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from services.adapters.kafka_ledger import KafkaLedger
from services.settings import KafkaLedgerSettings

pytestmark = pytest.mark.asyncio(loop_scope="session")

UNKNOWN_TOPIC = 3


@dataclasses.dataclass
class Response:
    resources: list[dict[str, Any]]

    def to_object(self) -> dict[str, Any]:
        return {"resources": self.resources}


class Admin:
    """Answers ``describe_configs`` with an unknown-topic error ``misses`` times."""

    def __init__(self, misses: int) -> None:
        self.misses, self.asked = misses, 0

    async def describe_configs(self, resources: list[Any]) -> list[Response]:
        self.asked += 1
        code = UNKNOWN_TOPIC if self.asked <= self.misses else 0
        return [
            Response(
                [
                    {"resource_name": r.name, "error_code": code, "error_message": "",
                     "config_entries": []}
                    for r in resources
                ]
            )
        ]  # fmt: skip


def ledger(timeout: float) -> KafkaLedger:
    return KafkaLedger(KafkaLedgerSettings("kafka:9092", request_timeout_s=timeout))


async def test_configs_of_topics_just_created_are_asked_again_until_readable():
    admin = Admin(misses=3)
    found = await ledger(5.0)._described_configs(admin, ["a", "b"], await_creation=True)  # type: ignore[arg-type]
    assert admin.asked == 4 and [r["error_code"] for r in found] == [0, 0]


async def test_configs_of_existing_topics_are_asked_once_and_errors_kept():
    admin = Admin(misses=3)
    found = await ledger(5.0)._described_configs(admin, ["a"], await_creation=False)  # type: ignore[arg-type]
    assert admin.asked == 1 and found[0]["error_code"] == UNKNOWN_TOPIC


async def test_configs_that_stay_unreadable_are_reported_after_the_timeout():
    admin = Admin(misses=1_000)
    found = await ledger(0.3)._described_configs(admin, ["a"], await_creation=True)  # type: ignore[arg-type]
    assert 1 < admin.asked < 1_000 and found[0]["error_code"] == UNKNOWN_TOPIC
