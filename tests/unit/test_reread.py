"""Stored texts read again under the current keyword rules (``ledger.reread``,
``Review.reread_texts``): a disguised STOP an older version recorded as a
conversation is held for review from its own time; a reading never relaxes."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from ledger.commands import ResolveRevocationCandidate
from ledger.events import CandidateResolution, InboundMessageReceived, LedgerEvent
from ledger.keywords import Intent
from ledger.personal_data import ERASED, SEALED
from ledger.policy import Reason
from ledger.ports import AccessRecord, ConsistencyToken, Stream
from ledger.reread import REREAD_PREFIX, held_for, reread_holds
from ledger.sweep import Finding
from services.adapters.memory_access import InMemoryAccessLog
from services.errors import AccessNotRecorded
from services.usecases.context import Context
from services.usecases.review import REREAD_BY
from tests.builders import BRAND, PHONE, at, flagged, inbound, revoked, sent
from tests.unit.usecase_harness import (
    AUDITOR,
    NOW,
    NUMBER,
    App,
    claim,
    ledger_at_now,
    opt_in,
    running,
)

ASYNC = pytest.mark.asyncio(loop_scope="session")

STOP_WITH_A_STROKE = "ST\u00d8P"
"""Read as conversation before 0368632; a possible opt-out now."""
STOP_BESIDE_A_FILLER = "\u1160STOP"
"""Read as conversation before bfd8dff; an opt-out now."""


def as_older_read(body: str, *, intent: str = Intent.CONVERSATION.value) -> InboundMessageReceived:
    """A text to the campaign's number recorded with the reading an older version gave."""
    return dataclasses.replace(inbound(at(30), body, campaign="promo"), intent=intent)


@pytest.mark.parametrize("body", [STOP_WITH_A_STROKE, STOP_BESIDE_A_FILLER])
def test_a_text_read_as_conversation_then_and_as_stopping_now_is_held_at_its_time(body):
    text = as_older_read(body)
    (hold,) = reread_holds([text])
    assert (hold.phone, hold.brand, hold.inbound_message_id) == (PHONE, BRAND, text.message_id)
    assert hold.occurred_at == text.occurred_at
    assert hold.text == body and hold.to_number == text.to_number
    assert hold.request_id.startswith(REREAD_PREFIX)
    assert not (hold.unattributed or hold.imported or hold.refused or hold.provider_reported)
    assert reread_holds([text]) == [hold]  # the same ids: placed again, stored once


def test_a_text_held_for_another_brand_too_takes_ids_of_its_own_from_the_text():
    text = as_older_read(STOP_WITH_A_STROKE)
    (hold,) = reread_holds([text])
    theirs = held_for(hold, "globex")
    assert theirs.brand == "globex" and theirs.occurred_at == hold.occurred_at
    assert (theirs.phone, theirs.inbound_message_id, theirs.text) == (
        hold.phone, hold.inbound_message_id, hold.text,
    )  # fmt: skip
    assert theirs.request_id.startswith(REREAD_PREFIX)
    assert BRAND not in theirs.request_id + theirs.request_fingerprint
    ids = {(h.event_id, h.request_id) for h in (hold, theirs, held_for(hold, "initech"))}
    assert len(ids) == 3  # one hold per brand, each its own request
    (again,) = reread_holds([text])
    assert held_for(again, "globex") == theirs  # read again: the same, stored once


@pytest.mark.parametrize("intent", [Intent.HELP.value, Intent.OPT_IN.value, ""])
def test_a_text_read_as_help_a_start_or_before_readings_were_kept_is_read_again(intent):
    assert len(reread_holds([as_older_read(STOP_BESIDE_A_FILLER, intent=intent)])) == 1


def test_a_text_whose_stop_was_recorded_or_held_is_not_held_again():
    legacy = as_older_read(STOP_BESIDE_A_FILLER, intent="")
    its_stop = dataclasses.replace(revoked(at(30)), in_reply_to=legacy.message_id)
    its_hold = dataclasses.replace(flagged(at(30)), inbound_message_id=legacy.message_id)
    assert reread_holds([legacy, its_stop]) == []
    assert reread_holds([legacy, its_hold]) == []
    # Only the text's own: another text's stop leaves it to be held.
    other = dataclasses.replace(its_stop, in_reply_to="in-another")
    assert len(reread_holds([legacy, other])) == 1


def test_words_that_cannot_be_read_and_plain_conversation_are_left_as_read():
    assert reread_holds([as_older_read(SEALED), as_older_read(ERASED)]) == []
    assert reread_holds([as_older_read("what are your hours?")]) == []


def test_an_opt_out_of_one_campaign_now_read_as_one_of_every_campaign_is_held():
    # A STOPALL an older version read as a STOP of the campaign alone: the brand's
    # other campaigns went on sending.
    stored = as_older_read("STOPALL", intent=Intent.OPT_OUT.value)
    (hold,) = reread_holds([stored])
    assert hold.inbound_message_id == stored.message_id
    legacy = as_older_read("STOPALL", intent="")
    of_one = dataclasses.replace(revoked(at(30), "promo"), in_reply_to=legacy.message_id)
    of_all = dataclasses.replace(revoked(at(30), None), in_reply_to=legacy.message_id)
    assert len(reread_holds([legacy, of_one])) == 1
    assert reread_holds([legacy, of_all]) == []
    # Read as a STOP of the campaign still, or held for a person then: nothing to add.
    assert reread_holds([as_older_read("STOP", intent=Intent.OPT_OUT.value)]) == []
    held = Intent.REVOCATION_CANDIDATE.value
    assert reread_holds([as_older_read("STOPALL", intent=held)]) == []


def test_a_text_stored_as_an_opt_out_or_flagged_is_never_read_as_less():
    # Current rules read these as conversation: the stored reading stands, nothing is
    # placed, and the opt-out recorded with it goes on counting.
    for intent in (Intent.OPT_OUT, Intent.OPT_OUT_BRAND_WIDE, Intent.REVOCATION_CANDIDATE):
        assert reread_holds([as_older_read("hello", intent=intent.value)]) == []


async def recorded_as_older(app: App, *events: LedgerEvent) -> None:
    """A campaign with a grant, then ``events`` appended as an older version wrote them."""
    await app.writes.record(claim("define-promo", BRAND, "promo", NUMBER))
    await app.writes.record(opt_in("grant"))
    written = await app.ledger.append(list(events))
    assert await app.guard.wait_for_token(ConsistencyToken.after(written))


async def answers(app: App) -> list[Reason]:
    single = await app.checks.can_send(PHONE, BRAND, "promo")
    batch = await app.checks.can_send_batch([PHONE], BRAND, "promo")
    as_of = await app.checks.can_send_as_of(PHONE, BRAND, "promo", NOW, reader=AUDITOR)
    return [d.reason for d in (single.decision, *batch.decisions, as_of.decision)]


@ASYNC
@pytest.mark.parametrize(
    ("resolution", "then"),
    [
        (CandidateResolution.DISMISSED, Reason.CONSENT_ACTIVE),
        (CandidateResolution.REVOKED, Reason.REVOKED_BRAND_WIDE),
    ],
)
async def test_a_disguised_stop_recorded_as_conversation_denies_until_reviewed(resolution, then):
    async with running(ledger=ledger_at_now()) as (app, _):
        text = as_older_read(STOP_WITH_A_STROKE)
        await recorded_as_older(app, text)
        assert await answers(app) == [Reason.CONSENT_ACTIVE] * 3  # the wrong allow

        reread = await app.review.reread_texts()
        (hold_id,) = reread.held
        assert await app.guard.wait_for_token(reread.token)
        assert (await app.review.reread_texts()).held == []  # held once, however often

        assert await answers(app) == [Reason.REVOCATION_PENDING_REVIEW] * 3
        (queued,) = (await app.review.revocation_candidates(BRAND, reader=AUDITOR)).candidates
        assert queued.candidate.event_id == hold_id
        assert queued.candidate.event.text == STOP_WITH_A_STROKE
        assert queued.candidate.event.inbound_message_id == text.message_id
        assert queued.candidate.at == text.occurred_at

        written = await app.writes.record(
            ResolveRevocationCandidate("review", PHONE, BRAND, hold_id, resolution, NOW)
        )
        assert await app.guard.wait_for_token(written.token)
        assert await answers(app) == [then] * 3
        assert (await app.review.revocation_candidates(BRAND, reader=AUDITOR)).candidates == []
        assert (await app.review.reread_texts()).held == []  # nor again once resolved


@ASYNC
async def test_a_text_stored_as_an_opt_out_stays_one_whatever_it_reads_as_now():
    async with running(ledger=ledger_at_now()) as (app, _):
        text = as_older_read("hello", intent=Intent.OPT_OUT.value)
        stop = dataclasses.replace(revoked(at(30), "promo"), in_reply_to=text.message_id)
        await recorded_as_older(app, text, stop)
        assert (await app.review.reread_texts()).held == []
        assert await answers(app) == [Reason.REVOKED] * 3


@ASYNC
async def test_a_stop_recorded_after_its_text_in_a_later_chunk_is_read_with_it(monkeypatch):
    # Read a record at a time: a text from before the reading was kept, and the STOP
    # recorded after it, come in two chunks; the second takes the first's hold away,
    # unless it stops less than the text reads now (a STOPALL read as a STOP).
    monkeypatch.setattr("services.usecases.review.REREAD_CHUNK", 1)
    async with running(ledger=ledger_at_now()) as (app, _):
        legacy = as_older_read(STOP_BESIDE_A_FILLER, intent="")
        stop = dataclasses.replace(revoked(at(30), "promo"), in_reply_to=legacy.message_id)
        wider = as_older_read("STOPALL", intent="")
        narrower = dataclasses.replace(revoked(at(30), "promo"), in_reply_to=wider.message_id)
        still = as_older_read(STOP_WITH_A_STROKE)
        await recorded_as_older(app, legacy, stop, wider, narrower, still)
        reread = await app.review.reread_texts()
        assert await app.guard.wait_for_token(reread.token)
        queued = (await app.review.revocation_candidates(BRAND, reader=AUDITOR)).candidates
        assert sorted(reread.held) == sorted(q.candidate.event_id for q in queued)
        assert {q.candidate.event.inbound_message_id for q in queued} == {
            wider.message_id,
            still.message_id,
        }


@ASYNC
async def test_the_texts_are_read_in_turns_with_the_calls_served(monkeypatch):
    # Reading a text costs what reading it when it came did: a chunk read at once
    # held every call the process serves back for as long.
    monkeypatch.setattr("services.usecases.review.REREAD_TURN", 2)
    async with running(ledger=ledger_at_now()) as (app, _):
        texts = [as_older_read("what are your hours?") for _ in range(40)]
        await recorded_as_older(app, *texts)
        turns = 0

        async def served() -> None:
            nonlocal turns
            while True:
                turns += 1
                await asyncio.sleep(0)

        serving = asyncio.create_task(served())
        before = turns
        await app.review.reread_texts()
        serving.cancel()
        assert turns - before >= len(texts) // 2


class _Unwritable(InMemoryAccessLog):
    async def append(self, record: AccessRecord) -> int:
        raise ConnectionError("the database is gone")


@ASYNC
async def test_reading_the_texts_again_is_recorded_in_the_access_log_before_it_reads():
    async with running(ledger=ledger_at_now()) as (app, _):
        await recorded_as_older(app, as_older_read(STOP_WITH_A_STROKE), as_older_read("hi"))
        log = app.access.log
        assert isinstance(log, InMemoryAccessLog)
        before = len(log.records)
        reread = await app.review.reread_texts()
        (record,) = log.records[before:]
        assert (record.action, record.subject, record.via) == (
            "ReadTextsAgain",
            REREAD_BY,
            "service",
        )
        assert record.brand is None and record.outcome == "admitted"
        assert record.detail["texts"] == "2" and record.detail["why"]
        assert record.detail["partition"] == "0" and record.detail["from_offset"] == "0"
        assert len(reread.held) == 1


@ASYNC
async def test_a_reading_whose_access_record_cannot_be_written_reads_nothing(monkeypatch):
    opened: list[object] = []

    async def spy(self: Context, history: object) -> list[object]:
        opened.append(history)
        return []

    async with running(ledger=ledger_at_now()) as (app, _):
        await recorded_as_older(app, as_older_read(STOP_WITH_A_STROKE))
        log, app.access.log = app.access.log, _Unwritable()
        monkeypatch.setattr(Context, "opened", spy)
        with pytest.raises(AccessNotRecorded):
            await app.review.reread_texts()
        assert opened == []
        monkeypatch.undo()
        app.access.log = log
        assert await answers(app) == [Reason.CONSENT_ACTIVE] * 3  # nothing held unread


@ASYNC
async def test_a_reading_goes_on_from_where_the_last_one_got_to_the_texts_since():
    # During a rolling upgrade an instance on older rules records a disguised STOP as a
    # conversation after the current rules' reading went past its place.
    async with running(ledger=ledger_at_now()) as (app, _):
        await recorded_as_older(app, as_older_read("hi"))
        first = await app.review.reread_texts()
        ends = await app.ledger.end_offsets(Stream.SUBSCRIBERS)
        assert first.held == [] and {p: first.reached.get(p, 0) for p in ends} == ends
        late = as_older_read(STOP_BESIDE_A_FILLER)
        (stored,) = await app.ledger.append([late])
        log = app.access.log
        assert isinstance(log, InMemoryAccessLog)
        before = len(log.records)

        on = await app.review.reread_texts(since=first.reached, why="read on")
        assert len(on.held) == 1
        part = stored.position.partition
        assert on.reached[part] == stored.position.offset + 1
        (record,) = log.records[before:]  # only the texts since were opened
        assert record.detail["from_offset"] == str(first.reached[part])
        assert record.detail["texts"] == "1" and record.detail["why"] == "read on"
        assert await app.guard.wait_for_token(on.token)
        assert await answers(app) == [Reason.REVOCATION_PENDING_REVIEW] * 3
        assert (await app.review.reread_texts(since=on.reached)).held == []


@ASYNC
async def test_sends_after_a_text_read_again_as_stopping_are_not_allowed_in_hindsight():
    # A send after the disguised STOP and before its hold was placed was allowed as
    # recorded; CanSendAsOf known now denies it, and so must the sweep and the packet.
    async with running(ledger=ledger_at_now()) as (app, _):
        text = as_older_read(STOP_WITH_A_STROKE)
        before, between = sent(at(20)), sent(at(45))
        await recorded_as_older(app, before, text, between)
        reread = await app.review.reread_texts()
        assert await app.guard.wait_for_token(reread.token)
        as_of = await app.checks.can_send_as_of(PHONE, BRAND, "promo", at(45), reader=AUDITOR)
        assert as_of.decision.reason == Reason.REVOCATION_PENDING_REVIEW

        found = [
            f
            async for f in app.audit.sweep(BRAND, "promo", at(0), NOW, reader=AUDITOR)
            if isinstance(f, Finding)
        ]
        late = {f.message.message_id: f for f in found if f.hindsight}
        assert set(late) == {between.message_id}
        assert late[between.message_id].decision.reason == Reason.REVOCATION_PENDING_REVIEW

        packet = (await app.audit.proof_packet(PHONE, BRAND, "promo", reader=AUDITOR)).value
        rulings = {m.message_id: m.hindsight for m in packet.messages}
        assert rulings[before.message_id] is None
        hindsight = rulings[between.message_id]
        assert hindsight is not None and not hindsight.allowed
        assert hindsight.reason == Reason.REVOCATION_PENDING_REVIEW.value


@ASYNC
async def test_a_reading_said_to_have_got_past_the_ledger_s_end_reads_it_from_the_start():
    # Past the end is another ledger's position (a ledger replaced under the same
    # database): reading on from it would read nothing, ever.
    async with running(ledger=ledger_at_now()) as (app, _):
        await recorded_as_older(app, as_older_read(STOP_WITH_A_STROKE))
        ends = await app.ledger.end_offsets(Stream.SUBSCRIBERS)
        reread = await app.review.reread_texts(since={p: 10**9 for p in ends})
        assert len(reread.held) == 1 and reread.reached == ends


@ASYNC
async def test_a_chunk_of_holds_without_texts_is_recorded_before_it_is_opened(monkeypatch):
    # A hold carries the person's words as the text does: opening it is a read too.
    monkeypatch.setattr("services.usecases.review.REREAD_CHUNK", 1)
    async with running(ledger=ledger_at_now()) as (app, _):
        await recorded_as_older(app, flagged(at(30)))
        log = app.access.log
        assert isinstance(log, InMemoryAccessLog)
        before = len(log.records)
        await app.review.reread_texts()
        (record,) = log.records[before:]
        assert record.action == "ReadTextsAgain" and record.detail["texts"] == "0"
