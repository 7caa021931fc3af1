"""An import on the Kafka ledger whose topics take smaller records than some of its
records' facts (a topic's ``max.message.bytes`` set low), through the real gRPC
server and PostgreSQL: each such record is refused on its own, as its single write
is (``request``: too large to record as one ledger fact), an opt-out held for
review; the others are imported, the stream goes on, a re-run writes nothing new,
and the record corrected under its import id is imported."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from consent.v1 import consent_service_pb2 as api

from ledger.ports import TOO_LARGE, Stream
from services.adapters.kafka_ledger import KafkaLedger
from tests.builders import proof_proto
from tests.e2e.harness import (
    Clock,
    client,
    define,
    kafka_settings,
    limit_subscriber_records,
    opt_in,
    opt_out,
    streamed,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

LIMIT = "2048"
"""Bytes a subscriber record may have: the records below are some 1 KB, or 4 KB
with 3,000 characters of consent text or opt-out text."""


def numbers(tag: str) -> list[str]:
    base = {"before": 10, "while": 20}[tag]
    return [f"+141555503{base + i:02d}" for i in range(5)]


@pytest.mark.parametrize("lowered", ["before", "while"])
async def test_a_record_too_large_for_the_ledger_is_refused_alone(lowered, serve, kafka_bootstrap):
    """Refused as too large, one record ended the whole stream INVALID_ARGUMENT
    ("request: is too large ...") naming no record: the records before and beside it
    in its message were not imported (an opt-out among them), a refused opt-out was
    not held, and every run of the import ended there again. ``lowered``: the limit
    set before the service read it (the ledger refuses before sending), or while it
    serves (the broker refuses the batch)."""
    clock = Clock()
    at = clock.now - timedelta(days=2)
    settings = kafka_settings(kafka_bootstrap, f"too-large-{uuid.uuid4().hex[:8]}.")
    await KafkaLedger(settings).ensure_topics()
    if lowered == "before":
        await limit_subscriber_records(settings, LIMIT)
    campaign = define("acme", "promo", clock.now - timedelta(days=30))
    runtime = await serve(name="too-large", clock=clock, campaigns=[campaign], kafka=settings)
    if lowered == "while":
        await limit_subscriber_records(settings, LIMIT)
    out, kept, large_in, large_out, later = numbers(lowered)
    long_proof = proof_proto(at, consent_text="y" * 3000)
    big_opt_in = opt_in(large_in, "acme", "promo", at, "big-in", proof=long_proof)
    first = [
        api.ImportRecord(opt_out=opt_out(out, "acme", None, at, "out")),
        api.ImportRecord(opt_in=opt_in(kept, "acme", "promo", at, "in")),
        api.ImportRecord(opt_in=big_opt_in),
        api.ImportRecord(opt_out=opt_out(large_out, "acme", None, at, "big-out", text="z" * 3000)),
    ]
    second = [api.ImportRecord(opt_in=opt_in(later, "acme", "promo", at, "later"))]
    messages = [api.ImportConsentsRequest(records=first), api.ImportConsentsRequest(records=second)]
    async with client(runtime.address, "acme-app") as app:
        one, two = await streamed(app, messages)
        assert (one.imported, one.held_for_review, two.imported) == (2, 1, 1)
        assert [(r.index, r.request_id, r.code) for r in one.refusals] == [
            (2, "big-in", "INVALID_ARGUMENT"),
            (3, "big-out", "INVALID_ARGUMENT"),
        ]
        for refusal in one.refusals:
            assert refusal.violations[0].field == "request"
            assert refusal.violations[0].description.startswith(TOO_LARGE)
        assert [r.held_for_review for r in one.refusals] == [False, True]

        async def allowed(phone: str) -> tuple[bool, int]:
            answer = await app.CanSend(
                api.CanSendRequest(phone=phone, brand="acme", campaign="promo")
            )
            return answer.allowed, answer.reason

        assert await allowed(out) == (False, api.REASON_REVOKED_BRAND_WIDE)
        assert (await allowed(kept))[0] and (await allowed(later))[0]
        assert await allowed(large_in) == (False, api.REASON_NO_CONSENT)
        assert await allowed(large_out) == (False, api.REASON_REVOCATION_PENDING_REVIEW)

        again = await streamed(app, messages)
        assert [(a.imported, a.already_present) for a in again] == [(0, 2), (0, 1)]
        assert [r.index for r in again[0].refusals] == [2, 3]

        # Its import id was given up: the record corrected under it is imported.
        big_opt_in.proof.CopyFrom(proof_proto(at))
        (fixed,) = await streamed(
            app, [api.ImportConsentsRequest(records=[api.ImportRecord(opt_in=big_opt_in)])]
        )
        assert (fixed.imported, list(fixed.refusals)) == (1, [])
        assert (await allowed(large_in))[0]


async def test_a_dry_run_refuses_a_record_too_large_as_the_import_does(serve, kafka_bootstrap):
    """A dry run answered "would be imported" for a record the ledger then refused as
    too large: the Kafka ledger knows its topics' ``max.message.bytes`` from its start,
    and the dry run now refuses such a record as the import does, an opt-out to be
    held, writing nothing."""
    clock = Clock()
    at = clock.now - timedelta(days=2)
    settings = kafka_settings(kafka_bootstrap, f"too-large-dry-{uuid.uuid4().hex[:8]}.")
    await KafkaLedger(settings).ensure_topics()
    await limit_subscriber_records(settings, LIMIT)
    campaign = define("acme", "promo", clock.now - timedelta(days=30))
    runtime = await serve(name="too-large-dry", clock=clock, campaigns=[campaign], kafka=settings)
    assert runtime.ledger is not None
    kept, large_in, large_out = (f"+1415555040{i}" for i in range(3))
    records = [
        api.ImportRecord(opt_in=opt_in(kept, "acme", "promo", at, "dry-in")),
        api.ImportRecord(
            opt_in=opt_in(
                large_in, "acme", "promo", at, "dry-big-in",
                proof=proof_proto(at, consent_text="y" * 3000),
            )
        ),
        api.ImportRecord(opt_out=opt_out(large_out, "acme", None, at, "dry-big", text="z" * 3000)),
    ]  # fmt: skip

    def seen(answer: api.ImportConsentsResponse) -> tuple[object, ...]:
        refused = [
            (r.index, r.code, r.violations[0].field, r.held_for_review) for r in answer.refusals
        ]
        return answer.imported, answer.held_for_review, refused

    async with client(runtime.address, "acme-app") as app:
        before = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)
        (dry,) = await streamed(app, [api.ImportConsentsRequest(records=records, dry_run=True)])
        assert await runtime.ledger.end_offsets(Stream.SUBSCRIBERS) == before
        (real,) = await streamed(app, [api.ImportConsentsRequest(records=records)])

    assert seen(real) == (
        1,
        1,
        [(1, "INVALID_ARGUMENT", "request", False), (2, "INVALID_ARGUMENT", "request", True)],
    )
    assert seen(dry) == seen(real)
    assert dry.refusals[0].violations[0].description.startswith(TOO_LARGE)
