"""One ``ImportConsents`` stream holding a number's opt-in and its opt-out in any
order, over several messages worked on at once, on the real Kafka ledger and
PostgreSQL: ``CanSend`` answers by the records' own times (an opt-out after the
opt-in denies, one before it does not, one at the same instant denies), never by
the stream's order; and while the import runs no number whose opt-out comes in a
message worked on together with its opt-in's is allowed, not even for the moment
between two appends. (An opt-out in a message sent after the opt-in's was
appended is the client's to send first, as the README says: the service cannot
wait for it.)"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from consent.v1 import consent_service_pb2 as api

from tests.e2e.harness import client, define, opt_in, opt_out, serving
from tests.e2e.test_bulk_import import answers

pytestmark = pytest.mark.asyncio(loop_scope="session")

NUMBERS = 60
CHUNK = 30
"""Four messages (``IN_FLIGHT``, the messages one stream has worked on at once), so
that a number's two records often fall in two of them."""


def phone(i: int) -> str:
    return f"+1415556{i:04d}"


def export(when: datetime, seed: int) -> tuple[list[api.ImportRecord], dict[str, bool]]:
    """Each number's opt-in and an opt-out after it, before it or at the same instant,
    shuffled; and whether each number may be sent to after the import."""
    records: list[api.ImportRecord] = []
    allowed: dict[str, bool] = {}
    for i in range(NUMBERS):
        opted_in = when - timedelta(days=10, minutes=i)
        offset = (timedelta(hours=1), -timedelta(hours=1), timedelta(0))[i % 3]
        records.append(
            api.ImportRecord(opt_in=opt_in(phone(i), "acme", "promo", opted_in, f"in-{seed}-{i}"))
        )
        records.append(
            api.ImportRecord(
                opt_out=opt_out(phone(i), "acme", None, opted_in + offset, f"out-{seed}-{i}")
            )
        )
        allowed[phone(i)] = offset < timedelta(0)
    random.Random(seed).shuffle(records)
    return records, allowed


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_a_shuffled_import_answers_by_the_records_times_at_every_moment(
    seed, tmp_path, postgres_dsn, kafka_bootstrap
):
    """Before: the messages worked on at once appended in any order, so an opt-in
    could land before the opt-out in the next message, and CanSend allowed a number
    that had opted out after opting in until the opt-out landed."""
    when = datetime.now(UTC)
    campaign = define("acme", "promo", when - timedelta(days=400))
    records, allowed = export(when, seed)
    denied = [p for p, ok in allowed.items() if not ok]
    seen_allowed: set[str] = set()
    done = asyncio.Event()
    async with (
        serving(tmp_path, postgres_dsn, kafka_bootstrap, campaigns=[campaign]) as runtime,
        client(runtime.address, "acme-app") as c,
    ):

        async def watch() -> None:
            while not done.is_set():
                now = await answers(c, denied, "")
                seen_allowed.update(p for p, r in now.items() if r == "REASON_CONSENT_ACTIVE")

        async def chunks() -> AsyncIterator[api.ImportConsentsRequest]:
            for start in range(0, len(records), CHUNK):
                yield api.ImportConsentsRequest(records=records[start : start + CHUNK])

        watching = asyncio.ensure_future(watch())
        stream = c.stub.ImportConsents(
            chunks(), metadata=[("authorization", f"Bearer {c.token}")], timeout=120
        )
        replies = [a async for a in stream]
        done.set()
        await watching
        assert not any(a.refusals for a in replies), replies
        assert sum(a.imported for a in replies) == len(records)
        tokens = [a.consistency_token for a in replies]
        final: dict[str, str] = {}
        for token in tokens:  # each message's token: the view has applied them all
            final = await answers(c, list(allowed), token)
    assert seen_allowed == set()
    assert {p for p, r in final.items() if r == "REASON_CONSENT_ACTIVE"} == {
        p for p, ok in allowed.items() if ok
    }
