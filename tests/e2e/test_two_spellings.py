"""A number written two ways is one person, through the real gRPC server on the real
Kafka and PostgreSQL. +54 11 1234 5678 and +54 9 11 1234 5678 are one line (the 9 is
dialled from abroad to reach a mobile), as are Gabon's +241 66 03 12 34 and its old
+241 06 03 12 34 or +241 6 03 12 34, and ``phonenumbers`` takes each for two valid
numbers: kept as two, an opt-out under one left the other allowed. Facts a version
before this one stored under the other spelling count too."""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb
from google.protobuf import json_format

import ledger.phone
from ledger.ports import ConsistencyToken, Stream
from ledger.retention import add_years
from services.bootstrap import Runtime
from services.settings import Settings
from tests.e2e.harness import (
    Clock,
    client,
    define,
    defined,
    held_info,
    inbound,
    kafka_ledger_env,
    kafka_settings,
    noon_in_los_angeles,
    opt_in,
    opt_out,
    running,
    sent,
    service_settings,
    ts,
)
from tests.e2e.test_lifecycle import ACME_NUMBER

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.asyncio(loop_scope="session")

SPELLINGS = {
    "argentina": ("+5491112344101", "+541112344101"),  # kept with the mobile 9; without
    # Gabon's number since 2019; its old number, as the last version kept it (with
    # its leading 0), and as a version before that kept it written without the 0.
    "gabon": ("+24166441012", "+24106441012"),
    "gabon-7-digits": ("+24177441013", "+2417441013"),
}
"""Each pair: the spelling a number is kept under, and the other."""

_LINES = {
    "argentina": ("+549111234", "+54111234", 4100),
    "gabon": ("+24166", "+24106", 441000),
    "gabon-7-digits": ("+24177", "+2417", 441000),
}
"""Each pair of ``SPELLINGS`` as lines of its kind: the heads of its two spellings,
and the number the rest of the digits count from."""

_lines_taken = itertools.count(100)


def line_of(pair: str, i: int) -> tuple[str, str]:
    """Line ``i`` of ``pair``'s kind: its spelling kept and its other spelling, read
    as one line as ``SPELLINGS[pair]`` is, so a test of its own numbers proves what
    one of those numbers would."""
    kept_head, other_head, first = _LINES[pair]
    tail = str(first + i)
    kept, other = kept_head + tail, other_head + tail
    stored_before = ledger.phone.forms_stored_before(kept)
    assert ledger.phone.to_e164(other) == kept and other in stored_before, (kept, other)
    like = ledger.phone.forms_stored_before(SPELLINGS[pair][0])
    assert len(stored_before) == len(like), (stored_before, like)
    forget_spellings()  # the service reads the line afresh, not from this check
    return kept, other


@pytest.fixture(params=sorted(SPELLINGS))
def spellings(request) -> tuple[str, str]:
    """A pair of ``SPELLINGS``' kind, as a line no other test uses, so that tests
    sharing a service each find only their own line's facts."""
    return line_of(request.param, next(_lines_taken))


def inside_hours(ahead: timedelta = timedelta(0)) -> Clock:
    """The next 14:00 UTC at least ``ahead`` of the real clock: 11:00 in Buenos
    Aires, 15:00 in Libreville, inside anyone's hours."""
    return Clock(noon_in_los_angeles(timedelta(hours=6) + ahead) - timedelta(hours=6))


def promo(clock: Clock) -> api.DefineCampaignRequest:
    return define("acme", "promo", clock.now - timedelta(days=60), [ACME_NUMBER])


async def _promo(serve: Any, clock: Clock) -> tuple[Runtime, Clock]:
    return await serve(name="spellings", clock=clock, campaigns=[promo(clock)]), clock


@pytest.fixture(scope="module")
async def service(module_serve):
    """acme's promo campaign sending from ACME_NUMBER, for every test of its own line
    (``spellings``) that keeps the clock where it is; an hour ahead of the real
    clock, as ``module_clock`` is, which the module's minutes cannot pass."""
    return await _promo(module_serve, inside_hours(ahead=timedelta(hours=1)))


@pytest.fixture
async def own_service(serve):
    """``service`` for a test of its own: one that moves the clock, which would
    change what the others find."""
    return await _promo(serve, inside_hours())


def forget_spellings() -> None:
    """Clear what ``ledger.phone`` keeps of the numbers it read, under the last rules."""
    ledger.phone._e164.cache_clear()
    ledger.phone.forms_stored_before.cache_clear()


@pytest.fixture
def before_one_form(monkeypatch) -> Iterator[None]:
    """The service as a version before this one: each spelling kept as written."""
    forget_spellings()
    monkeypatch.setattr(ledger.phone, "_kept_form", lambda e164: e164)
    yield
    monkeypatch.undo()
    forget_spellings()


async def upgraded(monkeypatch) -> None:
    """The service as this version, after ``before_one_form`` recorded its facts."""
    monkeypatch.undo()
    forget_spellings()


async def applied(runtime: Runtime, token: str) -> str:
    assert await runtime.guard.wait_for_token(ConsistencyToken.decode(token))
    return token


async def answers(
    runtime: Runtime, clock: Clock, token: str, spellings: tuple[str, str]
) -> dict[str, object]:
    """What every check says of each spelling: CanSend, CanSendAsOf, CanSendBatch."""
    async with client(runtime.address) as admin:
        out: dict[str, object] = {}
        for number in spellings:
            one = await admin.CanSend(
                api.CanSendRequest(
                    phone=number, brand="acme", campaign="promo", at_least_as_fresh=token
                )
            )
            out[f"CanSend {number}"] = (one.allowed, one.reason)
            past = await admin.CanSendAsOf(
                api.CanSendAsOfRequest(
                    phone=number,
                    brand="acme",
                    campaign="promo",
                    at=ts(clock.now),
                    at_least_as_fresh=token,
                )
            )
            out[f"CanSendAsOf {number}"] = past.allowed
        batch = await admin.CanSendBatch(
            api.CanSendBatchRequest(
                brand="acme", campaign="promo", phones=list(spellings), at_least_as_fresh=token
            )
        )
        out["CanSendBatch"] = [d.allowed for d in batch.decisions]
    return out


async def test_a_stop_from_the_other_spelling_stops_the_one_kept(service, spellings):
    runtime, clock = service
    kept, other = spellings
    async with client(runtime.address) as admin:
        await admin.RecordOptIn(opt_in(kept, "acme", "promo", clock.now - timedelta(days=1)))
        w = await admin.HandleInboundMessage(
            inbound(other, ACME_NUMBER, "STOP", clock.now - timedelta(minutes=1))
        )
    token = await applied(runtime, w.consistency_token)
    found = await answers(runtime, clock, token, spellings)
    assert found == {
        f"CanSend {kept}": (False, api.REASON_REVOKED),
        f"CanSendAsOf {kept}": False,
        f"CanSend {other}": (False, api.REASON_REVOKED),
        f"CanSendAsOf {other}": False,
        "CanSendBatch": [False, False],
    }, found


async def test_an_opt_out_of_the_spelling_kept_stops_the_other(service, spellings):
    runtime, clock = service
    kept, other = spellings
    async with client(runtime.address) as admin:
        await admin.RecordOptIn(opt_in(other, "acme", "promo", clock.now - timedelta(days=1)))
        w = await admin.RecordOptOut(opt_out(kept, "acme", None, clock.now - timedelta(minutes=1)))
        got = await admin.GetConsent(
            api.GetConsentRequest(
                phone=other,
                brand="acme",
                campaign="promo",
                at_least_as_fresh=w.consistency_token,
            )
        )
    token = await applied(runtime, w.consistency_token)
    found = await answers(runtime, clock, token, spellings)
    assert found[f"CanSend {other}"] == (False, api.REASON_REVOKED_BRAND_WIDE), found
    assert found[f"CanSendAsOf {other}"] is False, found
    assert found["CanSendBatch"] == [False, False], found
    assert got.HasField("grant") and got.HasField("revocation"), got


async def test_an_opt_out_stored_under_the_old_spelling_still_stops_the_number(
    service, spellings, before_one_form, monkeypatch
):
    """An opt-in in the spelling kept and a STOP a gateway handed on in the other, both
    recorded by a version that kept them apart: after the upgrade the number is
    still stopped, under either spelling, in every check."""
    runtime, clock = service
    kept, other = spellings
    async with client(runtime.address) as admin:
        await admin.RecordOptIn(opt_in(kept, "acme", "promo", clock.now - timedelta(days=1)))
        w = await admin.HandleInboundMessage(
            inbound(other, ACME_NUMBER, "STOP", clock.now - timedelta(minutes=2))
        )
    token = await applied(runtime, w.consistency_token)
    await upgraded(monkeypatch)
    found = await answers(runtime, clock, token, spellings)
    assert found[f"CanSend {kept}"] == (False, api.REASON_REVOKED), found
    assert found[f"CanSend {other}"] == (False, api.REASON_REVOKED), found
    assert found["CanSendBatch"] == [False, False], found
    assert found[f"CanSendAsOf {kept}"] is False, found


async def test_an_opt_in_stored_under_the_old_spelling_stands_until_a_stop(
    service, spellings, before_one_form, monkeypatch
):
    """Kept apart before, an opt-in in the other spelling is still the person's
    consent after the upgrade (under either spelling), and a STOP now ends it."""
    runtime, clock = service
    kept, other = spellings
    async with client(runtime.address) as admin:
        w = await admin.RecordOptIn(opt_in(other, "acme", "promo", clock.now - timedelta(days=1)))
        await applied(runtime, w.consistency_token)
        await upgraded(monkeypatch)
        before = await answers(runtime, clock, w.consistency_token, spellings)
        w = await admin.HandleInboundMessage(
            inbound(kept, ACME_NUMBER, "STOP", clock.now - timedelta(minutes=1))
        )
    token = await applied(runtime, w.consistency_token)
    after = await answers(runtime, clock, token, spellings)
    assert before["CanSendBatch"] == [True, True], before
    assert after["CanSendBatch"] == [False, False], after
    assert after[f"CanSend {other}"] == (False, api.REASON_REVOKED), after


@pytest.mark.parametrize("opted_in_under", ["kept", "other"])
async def test_audit_reads_show_every_fact_checks_count_with_its_spelling(
    service, spellings, before_one_form, monkeypatch, opted_in_under
):
    """An opt-in under one spelling and a STOP under the other, recorded by a version
    that kept them apart: CanSend counts both, so GetConsent, ListEvents and the proof
    packet show both, each under the spelling it was recorded under, whichever
    spelling the auditor asks about."""
    runtime, clock = service
    kept, other = spellings
    granted_as, stopped_as = (kept, other) if opted_in_under == "kept" else (other, kept)
    async with client(runtime.address) as admin:
        await admin.RecordOptIn(opt_in(granted_as, "acme", "promo", clock.now - timedelta(days=1)))
        w = await admin.HandleInboundMessage(
            inbound(stopped_as, ACME_NUMBER, "STOP", clock.now - timedelta(minutes=2))
        )
    token = await applied(runtime, w.consistency_token)
    await upgraded(monkeypatch)
    expected_events = [
        ("ConsentGranted", granted_as),
        ("InboundMessageReceived", stopped_as),
        ("ConsentRevoked", stopped_as),
    ]
    async with client(runtime.address) as admin:
        for asked in spellings:
            consent = await admin.GetConsent(
                api.GetConsentRequest(
                    phone=asked, brand="acme", campaign="promo", at_least_as_fresh=token
                )
            )
            assert consent.state == api.CONSENT_STATE_REVOKED, (asked, consent)
            assert consent.grant.event.phone == granted_as, (asked, consent)
            assert consent.revocation.event.phone == stopped_as, (asked, consent)
            for brand in ("acme", None):
                listed = await admin.ListEvents(
                    api.ListEventsRequest(phone=asked, brand=brand, at_least_as_fresh=token)
                )
                found = [(r.event.event_type, r.event.phone) for r in listed.events]
                assert found == expected_events, (asked, brand, found)
            answer = await admin.GetProofPacket(
                api.GetProofPacketRequest(
                    phone=asked, brand="acme", campaign="promo", at_least_as_fresh=token
                )
            )
            packet = json_format.MessageToDict(answer.packet)
            assert packet["phone"] == kept, packet
            assert [o["event"]["phone"] for o in packet["opt_ins"]] == [granted_as], packet
            assert [o["event"]["phone"] for o in packet["opt_outs"]] == [stopped_as], packet
            assert [e["type"] for e in packet["events"]] == [t for t, _ in expected_events]


async def test_a_start_after_a_stop_under_the_old_spelling_resumes_and_is_confirmed(
    service, spellings, before_one_form, monkeypatch
):
    """The opt-in and the STOP kept under the other spelling by an earlier version: a
    START now (read under the spelling kept) resumes that opt-in and is owed its
    confirmation, as it would be were all three under one spelling."""
    runtime, clock = service
    _, other = spellings
    async with client(runtime.address) as admin:
        await admin.RecordOptIn(opt_in(other, "acme", "promo", clock.now - timedelta(days=1)))
        w = await admin.HandleInboundMessage(
            inbound(other, ACME_NUMBER, "STOP", clock.now - timedelta(minutes=3))
        )
        await applied(runtime, w.consistency_token)
        await upgraded(monkeypatch)
        for written in spellings:  # either spelling is read as the one kept
            start = await admin.HandleInboundMessage(
                inbound(written, ACME_NUMBER, "START", clock.now - timedelta(minutes=2))
            )
            assert start.reply == api.REPLY_KIND_OPT_IN_CONFIRMATION, start
            assert list(start.notes) == [], start
    token = await applied(runtime, start.consistency_token)
    found = await answers(runtime, clock, token, spellings)
    assert found["CanSendBatch"] == [True, True], found


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ("HELP", lpb.MESSAGE_KIND_HELP_REPLY),
        ("what time do you open?", lpb.MESSAGE_KIND_CONVERSATION_REPLY),
    ],
)
@pytest.mark.parametrize("alone", [True, False], ids=["RecordMessageSent", "RecordMessagesSent"])
async def test_a_reply_to_a_text_under_the_old_spelling_is_the_reply_it_owed(
    service, spellings, before_one_form, monkeypatch, body, kind, alone
):
    """A HELP, or a conversation, that an earlier version kept under the other
    spelling earns its reply, sent to the number now read as the one kept: recorded
    exempt from the caps, as CanSend counts it."""
    runtime, clock = service
    kept, other = spellings
    async with client(runtime.address) as admin:
        await admin.RecordOptIn(opt_in(kept, "acme", "promo", clock.now - timedelta(days=1)))
        w = await admin.HandleInboundMessage(
            inbound(other, ACME_NUMBER, body, clock.now - timedelta(minutes=2))
        )
        await applied(runtime, w.consistency_token)
        await upgraded(monkeypatch)
        reply = dict(
            phone=kept,
            campaign="promo",
            message_id=f"SM-reply-{uuid.uuid4().hex[:8]}",
            kind=kind,
            occurred_at=ts(clock.now - timedelta(minutes=1)),
            included_opt_out_language=True,
            identified_sender=True,
        )
        if alone:
            request = api.RecordMessageSentRequest(
                request_id=uuid.uuid4().hex, brand="acme", **reply
            )
            w = await admin.RecordMessageSent(request)
        else:
            batch = api.RecordMessagesSentRequest(
                request_id=uuid.uuid4().hex, brand="acme", messages=[api.SentMessage(**reply)]
            )
            w = await admin.RecordMessagesSent(batch)
        listed = await admin.ListEvents(
            api.ListEventsRequest(phone=kept, brand="acme", at_least_as_fresh=w.consistency_token)
        )
    (sent,) = [r.event for r in listed.events if r.event.event_type == "MessageSent"]
    assert sent.message_sent.exempt, sent
    assert list(listed.exemption_not_granted) == [], listed


def sent_again(
    message_id: str, number: str, when: datetime, alone: bool, **changes: Any
) -> api.RecordMessageSentRequest | api.RecordMessagesSentRequest:
    """Message ``message_id`` to ``number``, recorded alone or in a batch."""
    said = dict(
        phone=number,
        campaign="promo",
        message_id=message_id,
        occurred_at=ts(when),
        included_opt_out_language=True,
        identified_sender=True,
    )
    said.update(changes)
    request_id = f"again-{uuid.uuid4().hex[:8]}"
    if alone:
        return api.RecordMessageSentRequest(request_id=request_id, brand="acme", **said)
    return api.RecordMessagesSentRequest(
        request_id=request_id, brand="acme", messages=[api.SentMessage(**said)]
    )


@pytest.mark.parametrize("alone", [True, False], ids=["RecordMessageSent", "RecordMessagesSent"])
async def test_a_message_recorded_under_the_old_spelling_is_not_recorded_twice(
    service, spellings, before_one_form, monkeypatch, alone
):
    """A message an earlier version recorded under the number's other spelling, sent
    again (a gateway's redelivery) under the spelling kept: its message id was looked
    up under that spelling alone, so it was recorded a second time and counted twice
    by every check, which folds both spellings; and sent again saying something else
    of it, it was answered OK. Now it is that message, as under one spelling: answered
    with its first event and nothing written, or refused ``ALREADY_EXISTS``."""
    runtime, clock = service
    kept, other = spellings
    at = clock.now - timedelta(minutes=1)
    message_id = f"SM-again-{uuid.uuid4().hex[:8]}"
    record = "RecordMessageSent" if alone else "RecordMessagesSent"
    async with client(runtime.address) as admin:
        await admin.RecordOptIn(opt_in(kept, "acme", "promo", clock.now - timedelta(days=1)))
        first = await getattr(admin, record)(sent_again(message_id, other, at, alone))
        token = await applied(runtime, first.consistency_token)
        size = sum((await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)).values())
        await upgraded(monkeypatch)
        again = await getattr(admin, record)(sent_again(message_id, kept, at, alone))
        assert list(again.event_ids) == list(first.event_ids)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            later = at + timedelta(seconds=30)
            await getattr(admin, record)(sent_again(message_id, kept, later, alone))
        assert refused.value.code() is grpc.StatusCode.ALREADY_EXISTS, refused.value
        assert "occurred_at" in (refused.value.details() or "")
        assert sum((await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)).values()) == size
        listed = await admin.ListEvents(
            api.ListEventsRequest(phone=kept, brand="acme", at_least_as_fresh=token)
        )
    sent = [
        (r.event.event_id, r.event.phone) for r in listed.events if r.event.message_sent.message_id
    ]
    assert sent == [(first.event_ids[0], other)], sent


async def test_an_outcome_of_a_message_recorded_under_the_old_spelling_is_recorded(
    service, spellings, before_one_form, monkeypatch
):
    """The provider's report on a message an earlier version recorded under the
    number's other spelling, given under the spelling kept: the message was looked up
    under that spelling alone and the report refused (``FAILED_PRECONDITION``, "no
    message was recorded as sent"), so it counted towards no campaign's error rate."""
    runtime, clock = service
    kept, other = spellings
    at = clock.now - timedelta(minutes=1)
    message_id = f"SM-again-{uuid.uuid4().hex[:8]}"
    async with client(runtime.address) as admin:
        first = await admin.RecordMessageSent(sent_again(message_id, other, at, True))
        await applied(runtime, first.consistency_token)
        await upgraded(monkeypatch)
        reported = await admin.RecordDeliveryOutcome(
            api.RecordDeliveryOutcomeRequest(
                request_id=uuid.uuid4().hex,
                phone=kept,
                brand="acme",
                message_id=message_id,
                outcome=lpb.DELIVERY_OUTCOME_UNDELIVERABLE,
                error_code="30003",
                occurred_at=ts(clock.now),
            )
        )
        listed = await admin.ListEvents(
            api.ListEventsRequest(
                phone=kept, brand="acme", at_least_as_fresh=reported.consistency_token
            )
        )
    outcomes = [r.event for r in listed.events if r.event.event_type == "DeliveryOutcomeReported"]
    assert [e.event_id for e in outcomes] == list(reported.event_ids), listed
    assert outcomes[0].delivery_outcome_reported.campaign == "promo", outcomes


async def awaiting_review(admin: Any, token: str) -> list[tuple[str, str]]:
    """Every candidate of acme's queue, page after page: its event id and phone."""
    found: list[tuple[str, str]] = []
    page = ""
    while True:
        queue = await admin.ListRevocationCandidates(
            api.ListRevocationCandidatesRequest(
                brand="acme", page_token=page, at_least_as_fresh=token
            )
        )
        found += [(c.event.event_id, c.event.phone) for c in queue.candidates]
        page = queue.next_page_token
        if not page:
            return found


async def test_a_reply_held_for_review_under_the_old_spelling_can_be_resolved(
    service, spellings, before_one_form, monkeypatch
):
    """A reply like a STOP that an earlier version held for review under the other
    spelling denies the number (CanSend counts it); a reviewer resolving it, under
    the number as now read, must be able to, or it denies for ever."""
    runtime, clock = service
    kept, other = spellings
    async with client(runtime.address) as admin:
        w = await admin.RecordOptIn(opt_in(kept, "acme", "promo", clock.now - timedelta(days=1)))
        # The queue as this test's reply finds it: other tests' candidates, if any.
        earlier = await awaiting_review(admin, w.consistency_token)
        w = await admin.HandleInboundMessage(
            inbound(other, ACME_NUMBER, "please stop texting me", clock.now - timedelta(minutes=3))
        )
        assert w.intent == api.INBOUND_INTENT_REVOCATION_CANDIDATE
        (_, flagged) = w.event_ids
        await applied(runtime, w.consistency_token)
        await upgraded(monkeypatch)
        before = await answers(runtime, clock, w.consistency_token, spellings)
        queued = [c for c in await awaiting_review(admin, w.consistency_token) if c not in earlier]
        w = await admin.ResolveRevocationCandidate(
            api.ResolveRevocationCandidateRequest(
                request_id=uuid.uuid4().hex,
                phone=other,
                brand="acme",
                candidate_event_id=flagged,
                resolution=lpb.CANDIDATE_RESOLUTION_DISMISSED,
                occurred_at=ts(clock.now - timedelta(minutes=1)),
                resolved_by="reviewer@acme",
            )
        )
        token = await applied(runtime, w.consistency_token)
        left = [c for c in await awaiting_review(admin, token) if c not in earlier]
    after = await answers(runtime, clock, token, spellings)
    assert before["CanSendBatch"] == [False, False], before
    assert queued == [(flagged, other)], queued
    assert after["CanSendBatch"] == [True, True], after
    assert left == [], left  # resolved: no longer awaiting review


async def test_an_opt_out_covers_a_hold_kept_under_the_old_spelling(
    service, spellings, before_one_form, monkeypatch
):
    """An opt-out refused for a detail, held by an earlier version under the other
    spelling: the corrected opt-out, recorded under the number as now read, covers
    it and resolves it, as it does a hold under one spelling."""
    runtime, clock = service
    kept, other = spellings
    async with client(runtime.address) as admin:
        await admin.RecordOptIn(opt_in(kept, "acme", "promo", clock.now - timedelta(days=1)))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await admin.RecordOptOut(opt_out(other, "acme", None, clock.now + timedelta(hours=3)))
        held = held_info(refused.value)
        assert held is not None
        await applied(runtime, held["consistency_token"])
        await upgraded(monkeypatch)
        written = await admin.RecordOptOut(opt_out(kept, "acme", None, clock.now))
        listed = await admin.ListEvents(
            api.ListEventsRequest(
                phone=kept, brand="acme", at_least_as_fresh=written.consistency_token
            )
        )
    resolved = [
        r.event.revocation_candidate_resolved.candidate_event_id
        for r in listed.events
        if r.event.event_type == "RevocationCandidateResolved"
    ]
    assert resolved == [held["candidate_event_id"]], listed
    found = await answers(runtime, clock, listed.consistency_token, spellings)
    assert found[f"CanSend {kept}"] == (False, api.REASON_REVOKED_BRAND_WIDE), found


async def audited(runtime: Runtime, token: str, number: str) -> dict[str, object]:
    """What GetConsent and ListEvents show of ``number``: each fact's type and spelling."""
    async with client(runtime.address) as admin:
        consent = await admin.GetConsent(
            api.GetConsentRequest(
                phone=number, brand="acme", campaign="promo", at_least_as_fresh=token
            )
        )
        listed = await admin.ListEvents(
            api.ListEventsRequest(phone=number, brand="acme", at_least_as_fresh=token)
        )
    return {
        "state": consent.state,
        "grant": consent.grant.event.phone,
        "revocation": consent.revocation.event.phone,
        "events": [(r.event.event_type, r.event.phone) for r in listed.events],
    }


async def consent_ledger_rebuild(settings: Settings) -> None:
    """``consent-ledger rebuild`` of the service's Kafka ledger into its database."""
    kafka = settings.kafka
    assert kafka is not None
    env = {
        **os.environ,
        **kafka_ledger_env(kafka),
        "CONSENT_POSTGRES_DSN": settings.postgres_dsn,
        "CONSENT_AUTH_TOKENS_FILE": str(settings.tokens_file),
        "CONSENT_DATA_DIR": str(settings.data_dir),
    }
    rebuild = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "rebuild",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(rebuild.communicate(), 300)
    assert rebuild.returncode == 0, (out + err).decode()
    assert b"rebuilt the projections" in out, (out + err).decode()


async def test_the_fold_survives_a_rebuild_and_a_restart(
    tmp_path, postgres_dsn, kafka_bootstrap, before_one_form, monkeypatch
):
    """Facts an earlier version kept under each number's other spelling, on the real
    Kafka ledger: after ``consent-ledger rebuild`` and a restart (the digest replica
    loaded afresh from the rebuilt tables), every check and audit read answers as
    before, the fold of both spellings included. Argentina's: an opt-in under the
    spelling kept, a STOP under the other (denied only through the fold); Gabon's:
    an opt-in under the other spelling alone (allowed only through it)."""
    clock = inside_hours()
    kafka = kafka_settings(kafka_bootstrap, f"spellings-{uuid.uuid4().hex[:8]}.")
    settings = service_settings(tmp_path, postgres_dsn, kafka=kafka)
    ar_kept, ar_other = SPELLINGS["argentina"]
    ga_other = SPELLINGS["gabon"][1]
    async with running(settings, clock) as runtime:
        await defined(runtime, [promo(clock)])
        async with client(runtime.address) as admin:
            day_ago = clock.now - timedelta(days=1)
            await admin.RecordOptIn(opt_in(ar_kept, "acme", "promo", day_ago))
            await admin.RecordOptIn(opt_in(ga_other, "acme", "promo", day_ago))
            w = await admin.HandleInboundMessage(
                inbound(ar_other, ACME_NUMBER, "STOP", clock.now - timedelta(minutes=2))
            )
        await applied(runtime, w.consistency_token)
        await upgraded(monkeypatch)
        token = runtime.guard.applied_token().encode()
        before = {
            pair: (
                await answers(runtime, clock, token, SPELLINGS[pair]),
                await audited(runtime, token, SPELLINGS[pair][1]),
            )
            for pair in SPELLINGS
        }
    assert before["argentina"][0]["CanSendBatch"] == [False, False], before
    assert before["argentina"][1]["revocation"] == ar_other, before
    assert before["gabon"][0]["CanSendBatch"] == [True, True], before
    assert before["gabon"][1]["grant"] == ga_other, before

    await consent_ledger_rebuild(settings)
    async with running(settings, clock) as runtime:
        after = {
            pair: (
                await answers(runtime, clock, token, SPELLINGS[pair]),
                await audited(runtime, token, SPELLINGS[pair][1]),
            )
            for pair in SPELLINGS
        }
    assert after == before


async def test_an_erasure_covers_the_facts_and_holds_under_the_old_spelling(
    own_service, spellings, before_one_form, monkeypatch
):
    """An opt-in and a legal hold recorded under the other spelling by a version that
    kept them apart: after the upgrade, the hold refuses an erasure of the number
    kept, a release through that number lifts it, and the erasure then erases the
    opt-in's personal data too, whichever spelling the auditor asks about."""
    runtime, clock = own_service
    kept, other = spellings
    async with client(runtime.address) as admin:
        await admin.RecordOptIn(opt_in(other, "acme", "promo", clock.now - timedelta(days=1)))
        w = await admin.PlaceLegalHold(
            api.PlaceLegalHoldRequest(
                request_id=uuid.uuid4().hex,
                phone=other,
                brand="acme",
                hold_id="smith-v-acme",
                reason="Smith v. Acme",
            )
        )
        await applied(runtime, w.consistency_token)
        await upgraded(monkeypatch)
        clock.now = add_years(clock.now, 6)  # past the retention period

        def erase() -> api.RequestErasureRequest:
            return api.RequestErasureRequest(
                request_id=uuid.uuid4().hex, phone=kept, brand="acme", reference="DSR-9"
            )

        with pytest.raises(grpc.aio.AioRpcError) as held:
            await admin.RequestErasure(erase())
        assert held.value.code() == grpc.StatusCode.FAILED_PRECONDITION, held.value
        assert "smith-v-acme" in held.value.details()
        await admin.ReleaseLegalHold(
            api.ReleaseLegalHoldRequest(
                request_id=uuid.uuid4().hex, phone=kept, brand="acme", hold_id="smith-v-acme"
            )
        )
        done = await admin.RequestErasure(erase())
        token = await applied(runtime, done.consistency_token)
        assert done.keys_destroyed >= 1, done
        for asked in spellings:
            listed = await admin.ListEvents(
                api.ListEventsRequest(phone=asked, brand="acme", at_least_as_fresh=token)
            )
            grants = [r.event for r in listed.events if r.event.event_type == "ConsentGranted"]
            assert [g.phone for g in grants] == [other], (asked, listed)
            proof = grants[0].consent_granted.proof
            assert proof.name == proof.email == "[erased]", (asked, proof)
            consent = await admin.GetConsent(
                api.GetConsentRequest(
                    phone=asked, brand="acme", campaign="promo", at_least_as_fresh=token
                )
            )
            assert consent.state == api.CONSENT_STATE_ERASED, (asked, consent)
    after = await answers(runtime, clock, token, spellings)
    assert after["CanSendBatch"] == [False, False], after


async def test_the_sweep_finds_a_send_after_a_stop_stored_under_the_old_spelling(
    service, spellings, before_one_form, monkeypatch
):
    """A STOP a version that kept the spellings apart stored under the other spelling
    stops the number for CanSend, and the proof packet shows the send after it not
    allowed; the sweep judged the send from the spelling kept alone, which had the
    opt-in and no STOP, and did not find it."""
    runtime, clock = service
    kept, other = spellings
    async with client(runtime.address) as admin:
        w = await admin.RecordOptIn(opt_in(kept, "acme", "promo", clock.now - timedelta(days=1)))
        asked = await admin.CanSend(
            api.CanSendRequest(
                phone=kept, brand="acme", campaign="promo", at_least_as_fresh=w.consistency_token
            )
        )
        assert asked.allowed, asked
        w = await admin.HandleInboundMessage(
            inbound(other, ACME_NUMBER, "STOP", clock.now - timedelta(minutes=30))
        )
        await applied(runtime, w.consistency_token)
        await upgraded(monkeypatch)
        # The sender sends on the answer it had before the STOP.
        relied = api.ReliedOnAnswer(
            consistency_token=asked.consistency_token,
            allowed=True,
            reason=api.REASON_CONSENT_ACTIVE,
        )
        message = sent(kept, "acme", "promo", clock.now - timedelta(minutes=10), relied_on=relied)
        message_id = message.message_id
        w = await admin.RecordMessageSent(message)
        token = await applied(runtime, w.consistency_token)
        packet = await admin.GetProofPacket(
            api.GetProofPacketRequest(
                phone=kept, brand="acme", campaign="promo", at_least_as_fresh=token
            )
        )
        [shown] = [
            m
            for m in json_format.MessageToDict(packet.packet)["messages"]
            if m["message_id"] == message_id
        ]
        call = admin.stub.SweepCampaign(
            api.SweepCampaignRequest(
                brand="acme",
                campaign="promo",
                start_time=ts(clock.now - timedelta(days=2)),
                end_time=ts(clock.now + timedelta(hours=1)),
                at_least_as_fresh=token,
            ),
            metadata=[("authorization", f"Bearer {admin.token}")],
            timeout=120,
        )
        findings = [item.finding async for item in call if item.HasField("finding")]
    assert not shown["decision"]["allowed"], shown
    assert shown["decision"]["reason"] == "revoked", shown
    [finding] = [f for f in findings if f.message_id == message_id]
    assert list(finding.kinds) == [api.SWEEP_FINDING_KIND_AFTER_OPT_OUT], finding
    assert not finding.hindsight and finding.reason == api.REASON_REVOKED, finding
    assert finding.phone == kept, finding
