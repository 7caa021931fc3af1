"""Hostile spellings of an opt-out's identifiers, through the real gRPC server: each
is refused with its field named and nothing written (but the opt-out held for review
where its number and brand can be read), or accepted and then found by
a check that spells the number, brand and campaign the same way (an acknowledged
opt-out always protects). ``tests/unit/test_hostile_input.py`` runs many more
through the same translation and validation; this is a sample, end to end."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from ledger.commands import _loose_name, brands_meant, is_name
from ledger.ports import Stream
from services.bootstrap import Runtime
from tests.e2e.harness import (
    client,
    define,
    inbound,
    opt_in,
    opt_out,
    service_settings,
    status_details,
    ts,
)
from tests.unit.test_hostile_input import TRICKY

pytestmark = pytest.mark.asyncio(loop_scope="session")

PHONE = "+14155552671"
NUMBER = "+12125550100"  # the campaign's sender number
VALID = {"phone": PHONE, "brand": "acme", "campaign": "promo", "in_reply_to": "SM1"}


def sample(seed: int = 19, size: int = 12) -> list[tuple[str, str]]:
    """(field, value): the issue's own cases, then tricky characters put around and
    inside each valid value at random (seeded, so a failure can be run again)."""
    cases = [
        ("brand", "acme\n"),
        ("campaign", "promo\n"),
        ("brand", "acme\x00"),
        ("phone", PHONE + "\n"),
        ("phone", " +1 (415) 555-2671 "),
        ("phone", "+1415555\u200b2671"),
        ("in_reply_to", "SM1\u202e"),
        ("request_id", "   "),
        ("request_id", "r-1\x00"),
    ]
    rng = random.Random(seed)
    for field, valid in [*VALID.items(), ("request_id", "req-1")]:
        for _ in range(size // 4):
            at = rng.randrange(len(valid) + 1)
            cut = "".join(rng.choice(TRICKY) for _ in range(rng.randint(1, 3)))
            cases.append((field, valid[:at] + cut + valid[at:]))
    return cases


@pytest.fixture
async def runtime(tmp_path, postgres_dsn):
    runtime = Runtime(service_settings(tmp_path, postgres_dsn, kafka=None))
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop()


def held_info(err: grpc.aio.AioRpcError) -> dict[str, str] | None:
    """The metadata of a refusal's ``OPT_OUT_HELD_FOR_REVIEW`` ErrorInfo, or None."""
    status = rpc_status.from_call(err)
    for detail in status.details if status else []:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info) and info.reason == "OPT_OUT_HELD_FOR_REVIEW":
            return dict(info.metadata)
    return None


async def dismissed(c: Any, held: dict[str, str], t: datetime, brand: str = "acme") -> None:
    """A held opt-out denies the number for acme until dismissed, which the next
    case needs (its own opt-out must then read as a revocation). ``brand`` is the
    one it is held under: "*" for a STOP whose receiving number could not be read,
    sent with the operator's token."""
    answer = await c.CanSend(
        api.CanSendRequest(
            phone=PHONE, brand="acme", campaign="promo",
            at_least_as_fresh=held["consistency_token"],
        )
    )  # fmt: skip
    assert answer.reason == api.REASON_REVOCATION_PENDING_REVIEW, answer
    stamp = Timestamp()
    # Not before the hold, which is stamped when it was recorded, not at ``t``.
    stamp.FromDatetime(max(t + timedelta(seconds=2), datetime.now(UTC)))
    await c.ResolveRevocationCandidate(
        api.ResolveRevocationCandidateRequest(
            request_id=uuid.uuid4().hex, phone=PHONE, brand=brand,
            candidate_event_id=held["candidate_event_id"],
            resolution=lpb.CANDIDATE_RESOLUTION_DISMISSED, occurred_at=stamp,
        )
    )  # fmt: skip


async def test_a_hostile_opt_out_is_refused_by_field_or_protects_the_number(runtime):
    base = datetime.now(UTC) - timedelta(minutes=30)
    async with client(runtime.address, "admin") as c:
        await c.DefineCampaign(define("acme", "promo", base - timedelta(days=1)))
        for i, (field, value) in enumerate(sample()):
            t = base + timedelta(seconds=10 * i)
            granted = await c.RecordOptIn(opt_in(PHONE, "acme", "promo", t))
            ledger_end = sum((await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)).values())
            given = {**VALID, "request_id": uuid.uuid4().hex, field: value}
            request = opt_out(
                given["phone"],
                given["brand"],
                given["campaign"],
                t + timedelta(seconds=1),
                request_id=given["request_id"],
                in_reply_to=given["in_reply_to"],
            )
            try:
                written = await c.RecordOptOut(request)
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, value, err)
                assert field in [f for f, _ in status_details(err)], (field, value)
                after = sum((await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)).values())
                held = held_info(err)
                if held is not None:  # an opt-out refused is held for review, not lost
                    assert after == ledger_end + 1, f"{field}={value!r} held more than once"
                    # A brand that spells no name is held under the brand in use it reads
                    # as ("ac\x00me"), or, reading as none, for the operator's token of
                    # every brand under "*" (it could be any brand's), and dismissed there.
                    spelt = field != "brand" or is_name(_loose_name(value))
                    spelt = spelt or brands_meant(value, ["acme"]) == ["acme"]
                    await dismissed(c, held, t, brand="acme" if spelt else "*")
                    continue
                assert after == ledger_end, f"{field}={value!r} was refused but written"
                still = await c.CanSend(
                    api.CanSendRequest(
                        phone=PHONE,
                        brand="acme",
                        campaign="promo",
                        at_least_as_fresh=granted.consistency_token,
                    )
                )
                assert still.reason != api.REASON_REVOKED
                continue
            # Accepted: a check spelling everything as the opt-out did must find it.
            answer = await c.CanSend(
                api.CanSendRequest(
                    phone=given["phone"],
                    brand=given["brand"],
                    campaign=given["campaign"],
                    at_least_as_fresh=written.consistency_token,
                )
            )
            assert not answer.allowed, (field, value)
            assert answer.reason == api.REASON_REVOKED, (field, value, answer)
            again = await c.RecordOptOut(request)  # the same spelling is the same request
            assert list(again.event_ids) == list(written.event_ids)
            if field == "in_reply_to":
                events = await c.ListEvents(
                    api.ListEventsRequest(phone=PHONE, at_least_as_fresh=written.consistency_token)
                )
                stored = [r.event for r in events.events if r.event.event_id in written.event_ids]
                assert stored[0].consent_revoked.in_reply_to == value


async def test_every_bad_field_of_a_read_is_named_in_one_bad_request(runtime):
    async with client(runtime.address, "admin") as c:
        calls = [
            (
                c.GetConsent(
                    api.GetConsentRequest(
                        phone="+1415\x00", brand="Acme", campaign="promo\n", at_least_as_fresh="x"
                    )
                ),
                ["at_least_as_fresh", "phone", "brand", "campaign"],
            ),
            (
                c.ListEvents(
                    api.ListEventsRequest(
                        phone="nope", brand="acme ", page_size=-1, page_token="!!"
                    )
                ),
                ["page_size", "page_token", "phone", "brand"],
            ),
            (
                c.ListRevocationCandidates(
                    api.ListRevocationCandidatesRequest(brand="acme\n", page_token="x")
                ),
                ["page_token", "brand"],
            ),
            (
                c.CanSendAsOf(
                    api.CanSendAsOfRequest(
                        phone="+1", brand="acme", campaign="Promo", message_kind=99
                    )
                ),
                ["at", "message_kind", "phone", "campaign"],
            ),
            (
                c.GetOptOutRate(
                    api.GetOptOutRateRequest(
                        brand="acme\u200b",
                        campaign="promo\x00",
                        end_time=Timestamp(seconds=1_700_000_000, nanos=-1),
                    )
                ),
                ["end_time", "brand", "campaign"],
            ),
        ]
        for call, fields in calls:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert [f for f, _ in status_details(err.value)] == fields


async def test_a_batch_with_a_nul_in_one_entry_answers_every_entry(tmp_path, postgres_dsn):
    # PostgreSQL text holds no NUL: looked up as written, one such entry once failed
    # the shared query, and with it every number of the batch.
    runtime = Runtime(service_settings(tmp_path, postgres_dsn, kafka=None))
    await runtime.start()
    try:
        now = datetime.now(UTC)
        async with client(runtime.address, "admin") as c:
            await c.DefineCampaign(define("acme", "promo", now - timedelta(days=1)))
            granted = await c.RecordOptIn(opt_in(PHONE, "acme", "promo", now))
            await c.RecordOptOut(opt_out(PHONE, "acme", "promo", now + timedelta(seconds=1)))
            phones = [PHONE, PHONE + "\x00", "\x00", "+1 415 555 2671"]
            batch = await c.CanSendBatch(
                api.CanSendBatchRequest(
                    brand="acme",
                    campaign="promo",
                    phones=phones,
                    at_least_as_fresh=granted.consistency_token,
                )
            )
            reasons = [d.reason for d in batch.decisions]
            assert reasons[1:3] == [api.REASON_INVALID_PHONE] * 2, batch
            assert reasons[0] != api.REASON_INTERNAL_ERROR and reasons[3] == reasons[0]
            assert not any(d.allowed for d in batch.decisions)
    finally:
        await runtime.stop()


async def test_a_hostile_stop_is_refused_by_field_or_stops_the_number(runtime):
    """The gateway's path: an inbound STOP whose sender, receiving number or message
    id is spelt oddly is refused naming the field (and held for review where its
    sender can be read), or recorded so that a check spelling the sender the same
    way finds the opt-out."""
    base = datetime.now(UTC) - timedelta(minutes=30)
    rng = random.Random(7)
    cases = [("from_phone", " +1 (415) 555-2671 "), ("to_phone", "+1 212 555 0100")]
    for field, valid in (("from_phone", PHONE), ("to_phone", NUMBER), ("message_id", "SM9")):
        for _ in range(4):
            at = rng.randrange(len(valid) + 1)
            cut = "".join(rng.choice(TRICKY) for _ in range(rng.randint(1, 2)))
            cases.append((field, valid[:at] + cut + valid[at:]))
    async with client(runtime.address, "admin") as c:
        # The sender number itself given with spacing: stored as E.164, found as such.
        await c.DefineCampaign(
            define("acme", "promo", base - timedelta(days=1), numbers=["+1 (212) 555-0100"])
        )
        for i, (field, value) in enumerate(cases):
            t = base + timedelta(seconds=10 * i)
            await c.RecordOptIn(opt_in(PHONE, "acme", "promo", t))
            ledger_end = sum((await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)).values())
            spelt = {"message_id": f"SM-{i}", field: value}
            request = inbound(PHONE, NUMBER, "STOP", t + timedelta(seconds=1), **spelt)
            try:
                written = await c.HandleInboundMessage(request)
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, value, err)
                assert field in [f for f, _ in status_details(err)], (field, value)
                after = sum((await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)).values())
                held = held_info(err)
                if held is not None:  # an opt-out refused is held for review, not lost
                    assert after == ledger_end + 1, f"{field}={value!r} held more than once"
                    await dismissed(c, held, t, "*" if field == "to_phone" else "acme")
                    continue
                assert after == ledger_end, f"{field}={value!r} was refused but written"
                continue
            assert written.intent == api.INBOUND_INTENT_OPT_OUT, (field, value)
            answer = await c.CanSend(
                api.CanSendRequest(
                    phone=request.from_phone,
                    brand="acme",
                    campaign="promo",
                    at_least_as_fresh=written.consistency_token,
                )
            )
            assert answer.reason == api.REASON_REVOKED, (field, value, answer)


async def test_a_refusal_that_would_quote_a_huge_field_still_names_it(runtime):
    """A reason may quote what was sent; quoted whole, 100,000 characters (or 2,000 bad
    sender numbers) overflowed the trailers, and the caller got RESOURCE_EXHAUSTED
    from its own gRPC library instead of the field it got wrong."""
    at = datetime.now(UTC) - timedelta(days=1)
    cases = [
        (define("acme", "c1", at, category="x" * 100_000, content_category=1), "policy.category"),
        (
            define("acme", "c2", at, required_proof_fields=["y" * 50_000]),
            "policy.required_proof_fields[0]",
        ),
        (define("acme", "c3", at, category="\U0001f600" * 60, content_category=1), "category"),
        (
            define("acme", "c4", at, numbers=[f"+1999{i:07d}" for i in range(2_000)]),
            "policy.sender_numbers[0]",
        ),
    ]
    async with client(runtime.address, "admin") as c:
        for request, field in cases:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await c.DefineCampaign(request)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
            named = [f for f, _ in status_details(err.value)]
            assert any(f.endswith(field) for f in named), (field, named)
            assert len(err.value.details().encode()) <= 1_024
        # The service is still there for the next caller.
        await c.DefineCampaign(define("acme", "promo", at))


@pytest.mark.parametrize("method", ["   ", "\u200b", "\u3000"])
async def test_an_age_verification_by_no_visible_method_is_refused(runtime, method):
    """``method`` is required (how the age was verified): one of only spaces or
    invisible characters names none, and is refused like an empty one."""
    now = datetime.now(UTC)
    async with client(runtime.address, "admin") as c:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.RecordAgeVerification(
                api.RecordAgeVerificationRequest(
                    request_id=uuid.uuid4().hex,
                    phone=PHONE,
                    brand="acme",
                    method=method,
                    occurred_at=ts(now - timedelta(minutes=1)),
                    date_of_birth="1990-01-01",
                )
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in status_details(err.value)] == ["method"]


@pytest.mark.parametrize(
    "hold_id", ["   ", "smith-v-acme ", " smith-v-acme", "smith\u202e-v-acme", "smith\u200b-v-acme"]
)
async def test_a_legal_hold_named_by_no_exact_id_is_refused_and_not_placed(runtime, hold_id):
    """A hold's id names it again for its release, as a message id names a message:
    one of only spaces, with a space at an end or with an invisible or bidi character
    could not be spelt again, and is refused as any other id is, with nothing written."""
    async with client(runtime.address, "admin") as c:
        await c.DefineCampaign(define("acme", "promo", datetime.now(UTC) - timedelta(days=1)))
        await c.RecordOptIn(opt_in(PHONE, "acme", "promo", datetime.now(UTC)))
        ledger_end = sum((await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)).values())
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.PlaceLegalHold(
                api.PlaceLegalHoldRequest(
                    request_id=uuid.uuid4().hex, phone=PHONE, brand="acme",
                    hold_id=hold_id, reason="litigation",
                )
            )  # fmt: skip
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
        assert [f for f, _ in status_details(err.value)] == ["hold_id"]
        assert sum((await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)).values()) == ledger_end


async def test_a_time_before_2000_is_named_beside_a_field_that_cannot_be_read(runtime):
    """A write refused for a field that cannot be read (an unknown enum value) still
    names its time before 2000 in the same answer: only the time's future bound needs
    the request's other fields, not its lower bound."""
    epoch = Timestamp(seconds=1)
    async with client(runtime.address, "admin") as c:
        calls = [
            c.RecordMessageSent(
                api.RecordMessageSentRequest(
                    request_id="r-1", phone=PHONE, brand="acme", campaign="promo",
                    message_id="SM1", kind=99, occurred_at=epoch,
                )
            ),
            c.RecordReconfirmation(
                api.RecordReconfirmationRequest(
                    request_id="r-2", phone=PHONE, brand="acme", campaign="promo",
                    channel=99, occurred_at=epoch,
                )
            ),
        ]  # fmt: skip
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            named = [f for f, _ in status_details(err.value)]
            assert "occurred_at" in named and len(named) == 2, named


async def test_a_malformed_brand_is_bad_input_for_a_token_of_some_brands_too(runtime):
    """A token for acme that wrote with the brand empty, "ACME" or "acme\\n" was told
    PERMISSION_DENIED ("acme-app may not act for brand 'ACME'") with no field named,
    where an admin's token was told INVALID_ARGUMENT naming the brand: the caller
    was sent to look at its token, not at its request. Each write now refuses it as
    bad input, naming the brand and why beside every other bad field, and writes
    nothing; so is "*", which no write but a review's resolution names (an opt-out
    under it may be acme's: refused PERMISSION_DENIED, it was not held). Another
    brand's name is still PERMISSION_DENIED."""
    at = datetime.now(UTC) - timedelta(minutes=5)

    def writes(brand: str) -> list[tuple[str, object]]:
        return [
            ("RecordOptIn", opt_in("+1 CALL", brand, "promo", at)),
            ("RecordOptOut", opt_out("+1 CALL", brand, "promo", at)),
            (
                "RecordMessageSent",
                api.RecordMessageSentRequest(
                    request_id="m-1",
                    phone="+1 CALL",
                    brand=brand,
                    campaign="promo",
                    message_id="SM-1",
                    occurred_at=ts(at),
                ),
            ),
            (
                "RecordMessagesSent",
                api.RecordMessagesSentRequest(
                    request_id="ms-1",
                    brand=brand,
                    messages=[
                        api.SentMessage(
                            phone="+1 CALL", campaign="promo", message_id="SM-2", occurred_at=ts(at)
                        )
                    ],
                ),
            ),
        ]

    before = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)
    async with client(runtime.address, "acme-app") as c:
        for brand in ("", "ACME", "acme\n", "*"):
            for rpc, request in writes(brand):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await getattr(c, rpc)(request)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (rpc, brand)
                fields = {f for f, _ in status_details(err.value)}
                phone = "messages[0].phone" if rpc == "RecordMessagesSent" else "phone"
                assert fields == {"brand", phone}, (rpc, brand, fields)
        for brand in ("globex",):
            for rpc, request in writes(brand):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await getattr(c, rpc)(request)
                assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, (rpc, brand)
    assert await runtime.ledger.end_offsets(Stream.SUBSCRIBERS) == before


async def test_a_check_s_malformed_brand_is_bad_input_for_a_token_of_some_brands_too(runtime):
    """CanSend and CanSendBatch with the brand empty, "ACME" or "acme\\n" told a token
    for acme PERMISSION_DENIED ("acme-checker may not act for brand 'ACME'") with no
    field named, where an admin's token was told INVALID_ARGUMENT naming the brand,
    as the writes already were. So did "*", to the checks and to every read that
    takes a brand but the review queue's: it names no brand a check or read is for
    (only ListRevocationCandidates names it, for the STOPs whose brand was unknown),
    so it is bad input whoever asks, as it is to the writes. Another brand's name,
    and "*" in the review queue, are still PERMISSION_DENIED."""
    now = ts(datetime.now(UTC))
    at = ts(datetime.now(UTC) - timedelta(minutes=5))
    streams = {"WatchConsentChanges", "SweepCampaign", "StreamCampaignHealth"}

    def checks(brand: str) -> list[tuple[str, object]]:
        return [
            ("CanSend", api.CanSendRequest(phone=PHONE, brand=brand, campaign="promo")),
            (
                "CanSendBatch",
                api.CanSendBatchRequest(phones=[PHONE], brand=brand, campaign="promo"),
            ),
        ]

    def reads(brand: str) -> list[tuple[str, object]]:
        return [
            (
                "CanSendAsOf",
                api.CanSendAsOfRequest(phone=PHONE, brand=brand, campaign="promo", at=at),
            ),
            ("GetConsent", api.GetConsentRequest(phone=PHONE, brand=brand, campaign="promo")),
            ("ListEvents", api.ListEventsRequest(phone=PHONE, brand=brand)),
            ("GetProofPacket", api.GetProofPacketRequest(phone=PHONE, brand=brand)),
            ("GetOptOutRate", api.GetOptOutRateRequest(brand=brand)),
            ("GetCampaignHealth", api.GetCampaignHealthRequest(brand=brand)),
            ("ListAuditAccess", api.ListAuditAccessRequest(brand=brand)),
            ("WatchConsentChanges", api.WatchConsentChangesRequest(brand=brand)),
            (
                "SweepCampaign",
                api.SweepCampaignRequest(
                    brand=brand, campaign="promo", start_time=at, end_time=now
                ),
            ),
            ("StreamCampaignHealth", api.StreamCampaignHealthRequest(brand=brand)),
        ]

    async def refused(c: Any, rpc: str, request: object) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            if rpc in streams:  # its refusal comes with its first read
                metadata = [("authorization", f"Bearer {c.token}")]
                await getattr(c.stub, rpc)(request, metadata=metadata, timeout=20).read()
            else:
                await getattr(c, rpc)(request)
        return err.value

    async with client(runtime.address, "acme-checker") as c:
        for brand in ("", "ACME", "acme\n", " acme", "*"):
            for rpc, request in checks(brand):
                err = await refused(c, rpc, request)
                assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (rpc, brand)
                assert [f for f, _ in status_details(err)] == ["brand"], (rpc, brand)
        for rpc, request in checks("globex"):
            err = await refused(c, rpc, request)
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED, rpc
    queue = api.ListRevocationCandidatesRequest(brand="*")
    async with client(runtime.address, "acme-app") as c:
        for rpc, request in reads("*"):
            err = await refused(c, rpc, request)
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (rpc, err.details())
            assert [f for f, _ in status_details(err)] == ["brand"], (rpc, err.details())
        for rpc, request in reads("globex"):
            err = await refused(c, rpc, request)
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED, (rpc, err.details())
        err = await refused(c, "ListRevocationCandidates", queue)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    async with client(runtime.address) as admin:
        for rpc, request in reads("*"):
            err = await refused(admin, rpc, request)
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (rpc, err.details())
            assert [f for f, _ in status_details(err)] == ["brand"], (rpc, err.details())
        await admin.ListRevocationCandidates(queue)  # the one read that names it


def _no_full_stop(length: int, tail: str) -> str:
    """``length`` characters of "no no no ..." with no sentence punctuation, ending
    in ``tail``: the text a classifier that looked past each "no" to the sentence's
    end read in time in the square of its length."""
    return ("no " * length)[: length - len(tail) - 1] + " " + tail


async def test_a_long_text_without_punctuation_is_answered_within_its_deadline(runtime):
    """A body at the length limit and one refused as too long, but still read for a
    STOP, are both answered within the call's deadline and as the README says: the
    first recorded as a reply to review, the second refused naming ``body`` and its
    STOP held, or refused alone when it holds none."""
    base = datetime.now(UTC) - timedelta(minutes=30)
    async with client(runtime.address, "admin") as c:
        await c.DefineCampaign(define("acme", "promo", base - timedelta(days=1), numbers=[NUMBER]))
        await c.RecordOptIn(opt_in(PHONE, "acme", "promo", base))
        written = await c.HandleInboundMessage(
            inbound(
                PHONE, NUMBER, _no_full_stop(4_096, "dont text me"), base + timedelta(seconds=1)
            )
        )
        assert written.intent == api.INBOUND_INTENT_REVOCATION_CANDIDATE
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.HandleInboundMessage(
                inbound(PHONE, NUMBER, _no_full_stop(65_536, "ok"), base + timedelta(seconds=2))
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
        assert "body" in [f for f, _ in status_details(err.value)]
        assert held_info(err.value) is None  # no STOP in it, nothing held
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await c.HandleInboundMessage(
                inbound(PHONE, NUMBER, _no_full_stop(65_536, "STOP"), base + timedelta(seconds=3))
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
        assert "body" in [f for f, _ in status_details(err.value)]
        assert held_info(err.value) is not None  # its STOP, at the very end, is held
