"""protos/README.md's worked example, run as written against the real broker: kcat lists
records with their keys and headers, and protoc decodes a value with the shipped
descriptor set."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from aiokafka.admin import NewTopic

from ledger.events import Recorded
from ledger.ports import Stream
from tests.builders import T0, granted, revoked
from tests.conformance.ledger_suite import new_phone
from tests.integration.test_ledger_kafka import admin_client, settings_for_test, started_ledger

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = ROOT / "protos" / "README.md"


def worked_example() -> str:
    """The first ``sh`` block under the README's worked-example heading."""
    text = CONTRACT.read_text()
    section = text[text.index("## Worked example") :]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, "protos/README.md lost its worked example"
    return match.group(1)


def kcat() -> str:
    found = shutil.which("kcat")
    if found is None:  # never a skip: the contract's example would go untested
        pytest.fail(
            "kcat is not installed; `make test` installs it (scripts/ensure_kcat.sh), "
            "or apt-get install kcat",
            pytrace=False,
        )
    return found


async def test_the_worked_kcat_and_protoc_example_runs_as_written(kafka_bootstrap: str) -> None:
    kcat()
    settings = settings_for_test(kafka_bootstrap)
    recorded: list[Recorded] = []
    async with started_ledger(settings) as ledger:
        # Enough phones that partition 0, which the example decodes from, has some.
        while not any(r.position.partition == 0 for r in recorded):
            phone = new_phone()
            recorded += await ledger.append(
                [granted(T0, "spring-promo", phone=phone), revoked(T0, None, phone=phone)]
            )
    environment = {
        **os.environ,
        "BROKER": kafka_bootstrap,
        "TOPIC": settings.topic(Stream.SUBSCRIBERS),
        # `python` in the example is the one that has consent-ledger installed
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }

    run = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", worked_example()],
        env=environment, capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert run.returncode == 0, run.stderr
    listed = [line for line in run.stdout.splitlines() if line.startswith("partition ")]
    assert len(listed) == len(recorded)
    for r in recorded:
        event = r.event
        headers = (
            "headers content-type=application/x-protobuf; messageType=consent.v1.EventEnvelope,"
            f"event-id={event.event_id},event-type={type(event).__name__},schema-version={event.class_version},"
            "brand=acme"
        )
        if type(event).__name__ == "ConsentGranted":
            headers += ",campaign=spring-promo"
        line = f"partition {r.position.partition} offset {r.position.offset} key {event.phone} "
        assert line + headers in listed
    first = min((r for r in recorded if r.position.partition == 0), key=lambda r: r.position)
    decoded = run.stdout[run.stdout.index("event_id:") :]
    assert f'event_id: "{first.event.event_id}"' in decoded
    assert 'event_type: "ConsentGranted"' in decoded
    assert f'phone: "{first.event.phone}"' in decoded
    assert "tier: CONSENT_TIER_PROMOTIONAL" in decoded


async def test_a_librdkafka_client_set_to_murmur2_puts_a_phone_where_the_ledger_does(
    kafka_bootstrap: str,
) -> None:
    """The contract's partitioning rule, checked with another client: kcat keyed by the
    phone with ``partitioner=murmur2_random`` picks the partition the ledger picked."""
    settings = settings_for_test(kafka_bootstrap, subscriber_partitions=5)
    phones = [new_phone() for _ in range(30)]
    scratch = settings.topic_prefix + "partitioning-check"  # as many partitions, no ledger
    async with admin_client(kafka_bootstrap) as admin:
        await admin.create_topics([NewTopic(scratch, settings.subscriber_partitions, 1)])
    async with started_ledger(settings) as ledger:
        recorded = await ledger.append([revoked(T0, None, phone=phone) for phone in phones])
    where_ledger = {r.event.phone: r.position.partition for r in recorded}

    subprocess.run(
        [kcat(), "-P", "-b", kafka_bootstrap, "-t", scratch, "-K", ":",
         "-X", "topic.partitioner=murmur2_random"],
        input="".join(f"{phone}:x\n" for phone in phones), text=True, check=True, timeout=30,
    )  # fmt: skip
    listed = subprocess.run(
        [kcat(), "-C", "-b", kafka_bootstrap, "-t", scratch, "-o", "beginning", "-e", "-q",
         "-f", "%k %p\n"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    where_kcat = {phone: int(p) for phone, p in (line.split() for line in listed.splitlines())}

    assert len(set(where_ledger.values())) > 1  # the phones spread over the partitions
    assert where_kcat == where_ledger
