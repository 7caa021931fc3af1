"""Many messages sent in one call (``services.usecases.sends``): each recorded as a
single ``RecordMessageSent`` records it, in one append; the call refused whole on
bad input; a retry, a reused request id and message ids recorded before."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Sequence
from typing import Any

import pytest

from ledger.commands import (
    MAX_SENDS_PER_CALL,
    RecordMessageSent,
    RecordMessagesSent,
    RecordOptOut,
    SentMessage,
)
from ledger.errors import DomainError, InvalidRequest
from ledger.events import (
    LedgerEvent,
    MessageKind,
    MessageSent,
    Recorded,
    ReliedAnswer,
    RevocationChannel,
)
from ledger.ports import Stream
from ledger.sweep import Finding
from services.adapters.memory_ledger import InMemoryLedger
from services.adapters.memory_view import InMemoryConsentView
from services.errors import (
    AlreadyExists,
    FailedPrecondition,
    MessageIdReused,
    NotConsistent,
    StoreUnavailable,
)
from services.usecases.sweeps import sweep_campaign
from tests.builders import BRAND, PHONE, at
from tests.unit.usecase_harness import (
    AUDITOR,
    App,
    GatedLedger,
    define,
    opt_in,
    running,
    stop_task,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

WAIT = 30.0
"""The freshness guard's bound: a loaded machine may take seconds to project 1,000 sends."""


class CountingLedger(InMemoryLedger):
    """Counts the appends, and how many events each carried."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.appends: list[int] = []

    async def append(self, events: Sequence[LedgerEvent]) -> list[Recorded]:
        self.appends.append(len(events))
        return await super().append(events)


def phone(i: int) -> str:
    return f"+1415555{i:04d}"


def message(i: int, **changes: Any) -> SentMessage:
    m = SentMessage(phone(i), "promo", f"SM-{i}", MessageKind.REGULAR, at(10))
    return dataclasses.replace(m, **changes)


def batch(request_id: str, messages: Sequence[SentMessage]) -> RecordMessagesSent:
    return RecordMessagesSent(request_id, BRAND, tuple(messages))


async def sends_in_ledger(app: App) -> list[MessageSent]:
    found: list[MessageSent] = []
    for partition in await app.ledger.partitions(Stream.SUBSCRIBERS):
        for r in await app.ledger.read(Stream.SUBSCRIBERS, partition, 0, 100_000):
            if isinstance(r.event, MessageSent):
                found.append(r.event)
    return found


async def test_a_thousand_messages_are_one_append_of_one_message_sent_each():
    async with running(WAIT, ledger=CountingLedger(partitions=4)) as (app, _):
        await app.writes.record(define())
        assert isinstance(app.ledger, CountingLedger)
        app.ledger.appends.clear()
        messages = [message(i) for i in range(MAX_SENDS_PER_CALL)]
        written = await app.sends.record(batch("b1", messages), recorded_by="sender")
        assert app.ledger.appends == [MAX_SENDS_PER_CALL]
        assert written.appended == MAX_SENDS_PER_CALL
        assert len(set(written.event_ids)) == MAX_SENDS_PER_CALL
        assert await app.guard.wait_for_token(written.token)
        recorded = {str(e.event_id): e for e in await sends_in_ledger(app)}
        for event_id, m in zip(written.event_ids, messages, strict=True):
            event = recorded[event_id]
            assert (event.phone, event.message_id, event.recorded_by) == (
                m.phone,
                m.message_id,
                "sender",
            )
        rate = (await app.audit.opt_out_rate(BRAND, "promo", at(0), at(60), reader=AUDITOR)).value
        assert rate.counts.messages_sent == MAX_SENDS_PER_CALL


async def test_a_batched_send_is_the_message_sent_a_single_write_records():
    async with running(WAIT) as (app, _):
        defined = await app.writes.record(define())
        relied = ReliedAnswer(
            defined.token.encode(),
            True,
            "consent_active",
            ("0c3fdc0c-2103-50b0-812e-efe0be7b247c",),
        )
        fields = dict(
            included_opt_out_language=True,
            identified_sender=True,
            relied_on=relied,
            from_number="+1 212 555 0100",
        )
        single = await app.writes.record(
            RecordMessageSent(
                "s1", PHONE, BRAND, "promo", "SM-single", MessageKind.REGULAR, at(10), **fields
            )
        )
        one = SentMessage(PHONE, "promo", "SM-batched", MessageKind.REGULAR, at(10), **fields)
        batched = await app.sends.record(batch("b1", [one]))
        assert await app.guard.wait_for_token(single.token.merge(batched.token))
        by_id = {str(e.event_id): e for e in await sends_in_ledger(app)}
        one, other = by_id[single.event_ids[0]], by_id[batched.event_ids[0]]
        differ = {"event_id", "message_id", "request_id", "request_fingerprint"}
        assert {
            f.name
            for f in dataclasses.fields(one)
            if getattr(one, f.name) != getattr(other, f.name)
        } == differ


async def test_the_sweep_judges_batched_sends_exactly_like_single_ones():
    async with running(WAIT) as (app, _):
        await app.writes.record(define())
        await app.writes.record(opt_in("g1"))
        await app.writes.record(
            RecordOptOut("stop", PHONE, BRAND, "promo", RevocationChannel.KEYWORD, at(5))
        )
        lone = await app.writes.record(
            RecordMessageSent("s1", PHONE, BRAND, "promo", "SM-a", MessageKind.REGULAR, at(10))
        )
        many = await app.sends.record(
            batch(
                "b1",
                [
                    SentMessage(PHONE, "promo", "SM-b", MessageKind.REGULAR, at(10)),
                    message(7),  # never opted in
                ],
            )
        )
        token = lone.token.merge(many.token)
        assert await app.guard.wait_for_token(token)
        findings = [
            f
            async for f in sweep_campaign(app.sends.ctx, BRAND, "promo", at(0), at(60), token)
            if isinstance(f, Finding)
        ]
        by_message = {f.message.message_id: f for f in findings}
        assert set(by_message) == {"SM-a", "SM-b", "SM-7"}
        single, batched = by_message["SM-a"], by_message["SM-b"]
        assert batched.kinds == single.kinds and batched.kinds
        assert batched.decision.reason == single.decision.reason
        assert batched.decision.evidence == single.decision.evidence
        assert by_message["SM-7"].kinds != single.kinds


async def test_one_bad_message_refuses_the_call_naming_each_field_and_writes_nothing():
    async with running(WAIT) as (app, _):
        await app.writes.record(define())
        before = len(await sends_in_ledger(app))
        messages = [
            message(0),
            message(1, phone="+1415"),
            message(2),
            message(3, message_id="", campaign="Not A Name"),
        ]
        with pytest.raises(DomainError) as refused:
            await app.sends.record(batch("b1", messages))
        fields = [f for f, _ in refused.value.violations]
        assert fields == ["messages[1].phone", "messages[3].campaign", "messages[3].message_id"]
        assert len(await sends_in_ledger(app)) == before


async def test_more_than_a_thousand_messages_is_refused_and_writes_nothing():
    async with running(WAIT) as (app, _):
        await app.writes.record(define())
        with pytest.raises(InvalidRequest) as refused:
            await app.sends.record(batch("b1", [message(i) for i in range(MAX_SENDS_PER_CALL + 1)]))
        assert refused.value.field == "messages"
        assert "at most 1,000" in refused.value.reason
        with pytest.raises(InvalidRequest, match="messages"):
            await app.sends.record(batch("b2", []))
        assert await sends_in_ledger(app) == []


async def test_a_retried_call_records_nothing_new_and_answers_the_same_ids():
    async with running(WAIT, ledger=CountingLedger(partitions=4)) as (app, _):
        await app.writes.record(define())
        call = batch("b1", [message(i) for i in range(50)])
        first = await app.sends.record(call)
        assert await app.guard.wait_for_token(first.token)
        again = await app.sends.record(call)
        assert again.appended == 0 and again.event_ids == first.event_ids
        assert again.token.offsets == first.token.offsets
        assert len(await sends_in_ledger(app)) == 50


async def test_a_retry_before_the_view_applied_the_first_waits_for_it_and_appends_nothing():
    async with running(WAIT, ledger=CountingLedger(partitions=4)) as (app, _):
        await app.writes.record(define())
        call = batch("b1", [message(i) for i in range(20)])
        first, again = await app.sends.record(call), await app.sends.record(call)
        assert again.event_ids == first.event_ids and again.appended == 0
        assert len(await sends_in_ledger(app)) == 20


async def test_a_retry_the_view_cannot_reach_is_refused_rather_than_appended_again():
    """Its first attempt may be in the ledger: appended blind, it would be stored twice
    (on Kafka; the embedded ledger stores an event once by itself)."""
    async with running(wait_bound=0.05) as (app, projector):
        await app.writes.record(define())
        call = batch("b1", [message(i) for i in range(5)])
        first = await app.sends.record(call)
        await app.guard.wait_for_token(first.token)
        await stop_task(projector)
        call2 = batch("b2", [message(i + 5) for i in range(5)])
        second = await app.sends.record(call2)
        with pytest.raises(NotConsistent):
            await app.sends.record(call2)  # the view has not applied the first attempt
        assert len(await sends_in_ledger(app)) == 10
    async with running(WAIT, ledger=app.ledger, view=app.view) as (later, _):
        again = await later.sends.record(call2)
        assert again.event_ids == second.event_ids and again.appended == 0
        assert len(await sends_in_ledger(later)) == 10


async def test_a_request_id_reused_for_another_call_is_refused_and_writes_nothing():
    async with running(WAIT) as (app, _):
        await app.writes.record(define())
        first = await app.sends.record(batch("b1", [message(i) for i in range(30)]))
        assert await app.guard.wait_for_token(first.token)
        with pytest.raises(AlreadyExists) as refused:
            await app.sends.record(batch("b1", [message(i) for i in range(31)]))
        assert refused.value.event_ids == tuple(first.event_ids)
        assert len(await sends_in_ledger(app)) == 30


async def test_a_message_id_recorded_before_is_answered_with_the_first_and_not_written():
    async with running(WAIT) as (app, _):
        await app.writes.record(define())
        single = await app.writes.record(
            RecordMessageSent("s1", phone(1), BRAND, "promo", "SM-1", MessageKind.REGULAR, at(10))
        )
        assert await app.guard.wait_for_token(single.token)
        written = await app.sends.record(
            batch("b1", [message(0), message(1), message(2), message(0)])
        )
        assert written.appended == 2
        assert written.event_ids[1] == single.event_ids[0]
        assert written.event_ids[3] == written.event_ids[0]
        assert await app.guard.wait_for_token(written.token)
        rate = (await app.audit.opt_out_rate(BRAND, "promo", at(0), at(60), reader=AUDITOR)).value
        assert rate.counts.messages_sent == 3


async def test_a_message_id_again_with_other_content_is_refused_and_not_written():
    """Answered as the first, the sender would take what it sent now for what is
    recorded: in one call that is bad input, across calls the id is taken."""
    async with running(WAIT) as (app, _):
        await app.writes.record(define())
        first = await app.sends.record(batch("b1", [message(0), message(1)]))
        assert await app.guard.wait_for_token(first.token)
        recorded = len(await sends_in_ledger(app))
        with pytest.raises(DomainError) as bad:
            await app.sends.record(batch("b2", [message(5), message(5, occurred_at=at(11))]))
        assert bad.value.violations == (
            ("messages[1].message_id", "is messages[0]'s message id for this number, with"
             " another occurred_at"),
        )  # fmt: skip
        with pytest.raises(MessageIdReused) as reused:
            await app.sends.record(batch("b3", [message(6), message(1, identified_sender=True)]))
        assert reused.value.field == "messages[1].message_id"
        assert reused.value.event_ids == (first.event_ids[1],)
        with pytest.raises(MessageIdReused) as reused:
            await app.writes.record(
                RecordMessageSent(
                    "s1", phone(0), BRAND, "other", "SM-0", MessageKind.REGULAR, at(10)
                )
            )
        assert reused.value.field == "message_id" and "another campaign" in reused.value.reason
        assert len(await sends_in_ledger(app)) == recorded


async def test_a_batch_meeting_a_message_on_its_way_with_other_content_is_refused_whole():
    """A single send of SM-1 is on its way to the ledger (its append waits). A batch
    that says something else of SM-1 is refused, naming it, before the first is
    readable; and it leaves no claim on its other message, which a later send then
    records whatever it says."""
    ledger = GatedLedger(partitions=4)
    async with running(WAIT, ledger=ledger) as (app, _):
        ledger.gate.set()
        await app.writes.record(define())
        ledger.gate.clear()
        ledger.begun.clear()
        single = RecordMessageSent(
            "s1", phone(1), BRAND, "promo", "SM-1", MessageKind.REGULAR, at(10)
        )
        first = asyncio.create_task(app.writes.record(single))
        await asyncio.wait_for(ledger.begun.wait(), 5)
        with pytest.raises(MessageIdReused) as reused:
            await asyncio.wait_for(
                app.sends.record(batch("b1", [message(2), message(1, identified_sender=True)])),
                5,
            )
        assert reused.value.field == "messages[1].message_id"
        assert "another identified_sender" in reused.value.reason
        ledger.gate.set()
        recorded = await first
        assert reused.value.event_ids == tuple(recorded.event_ids)
        later = await app.sends.record(batch("b2", [message(2, occurred_at=at(12))]))
        assert await app.guard.wait_for_token(later.token)
        sends = {
            (e.message_id, e.occurred_at, e.identified_sender) for e in await sends_in_ledger(app)
        }
        assert sends == {("SM-1", at(10), False), ("SM-2", at(12), False)}


async def test_a_call_failing_between_its_claims_leaves_its_message_ids_free():
    """A call claims its messages' ids, then fails for a passing reason before it
    claims its request id (here: the read of a reply's exemption). Its claims
    named sends never written: a changed send of those messages under another
    request id was refused MESSAGE_ID_REUSED until the first call was retried,
    which it may never be. Now the failed call gives them up, and the changed send
    is recorded."""
    async with running(WAIT) as (app, _):
        await app.writes.record(define())
        reply = message(1, kind=MessageKind.HELP_REPLY)
        read = app.view.subscriber_states

        async def unavailable(*args: Any, **kwargs: Any) -> Any:
            app.view.subscriber_states = read  # type: ignore[method-assign]
            raise StoreUnavailable("PostgreSQL did not answer in time")

        app.view.subscriber_states = unavailable  # type: ignore[method-assign]
        with pytest.raises(StoreUnavailable):
            await app.sends.record(batch("b1", [message(0), reply]))
        assert not await sends_in_ledger(app)
        changed = [
            message(0, identified_sender=True),
            dataclasses.replace(reply, occurred_at=at(11)),
        ]
        later = await app.sends.record(batch("b2", changed))
        assert await app.guard.wait_for_token(later.token)
        sends = {
            (e.message_id, e.occurred_at, e.identified_sender) for e in await sends_in_ledger(app)
        }
        assert sends == {("SM-0", at(10), True), ("SM-1", at(11), False)}


@pytest.mark.parametrize("claim", ["claim_messages", "claim_request"])
async def test_a_call_whose_caller_goes_away_while_it_claims_leaves_its_message_ids_free(claim):
    """A call's caller goes away (a deadline, a cancel) while the view claims its
    messages' ids, or its request id after them: the view's statement runs on and
    claims them, but the call goes no further. Kept, the claims named sends never
    written, and a changed send of those messages under another request id was
    refused MESSAGE_ID_REUSED for good. Now the call gives them up once the claim has
    come back, and the changed send is recorded."""
    async with running(WAIT) as (app, _):
        await app.writes.record(define())
        real, claimed, answered = getattr(app.view, claim), asyncio.Event(), asyncio.Event()

        async def slow_answer(*args: Any, **kwargs: Any) -> Any:
            held = await real(*args, **kwargs)
            claimed.set()
            await answered.wait()  # the view's answer on its way back
            return held

        setattr(app.view, claim, slow_answer)
        caller = asyncio.create_task(app.sends.record(batch("b1", [message(0), message(1)])))
        await asyncio.wait_for(claimed.wait(), 5)
        caller.cancel()
        answered.set()
        with pytest.raises(asyncio.CancelledError):
            await caller
        setattr(app.view, claim, real)

        changed = [message(0, identified_sender=True), message(1, identified_sender=True)]
        later = await app.sends.record(batch("b2", changed))
        assert await app.guard.wait_for_token(later.token)
        sends = {(e.message_id, e.identified_sender) for e in await sends_in_ledger(app)}
        assert sends == {("SM-0", True), ("SM-1", True)}


async def test_a_message_sent_right_after_in_the_other_call_is_answered_as_the_first():
    async with running(WAIT) as (app, _):
        await app.writes.record(define())
        # No wait for the view in between: the claims, not the view, tell the copy.
        written = await app.sends.record(batch("b1", [message(i) for i in range(3)]))
        copy = await app.writes.record(
            RecordMessageSent("s1", phone(1), BRAND, "promo", "SM-1", MessageKind.REGULAR, at(10))
        )
        assert copy.event_ids == [written.event_ids[1]]
        single = await app.writes.record(
            RecordMessageSent("s2", phone(7), BRAND, "promo", "SM-7", MessageKind.REGULAR, at(10))
        )
        again = await app.sends.record(batch("b2", [message(7), message(8)]))
        assert again.event_ids[0] == single.event_ids[0] and again.appended == 1
        assert sorted(e.message_id for e in await sends_in_ledger(app)) == [
            "SM-0", "SM-1", "SM-2", "SM-7", "SM-8"
        ]  # fmt: skip


async def test_a_message_for_an_undefined_campaign_refuses_the_call_and_writes_nothing():
    async with running(WAIT) as (app, _):
        await app.writes.record(define())
        with pytest.raises(FailedPrecondition) as refused:
            await app.sends.record(batch("b1", [message(0), message(1, campaign="nope")]))
        assert refused.value.field == "messages[1].campaign"
        assert await sends_in_ledger(app) == []


async def test_a_send_is_recorded_when_its_relied_on_token_cannot_be_checked_now():
    """A relied-on token ahead of the view is checked against the ledger's end. When
    that end cannot be read (an outage), the send went out all the same: refused, it
    would go uncounted against its caps, so it is recorded, the token unchecked."""
    async with running(WAIT) as (app, _):
        await app.writes.record(define())

        async def unreadable_end() -> Any:
            raise OSError("the broker is gone")

        app.guard.observe = unreadable_end  # type: ignore[method-assign]
        relied = ReliedAnswer("subscribers:0:999999", True, "consent_active", ())
        fields = dict(relied_on=relied)
        single = await app.writes.record(
            RecordMessageSent(
                "s1", PHONE, BRAND, "promo", "SM-1", MessageKind.REGULAR, at(10), **fields
            )
        )
        one = SentMessage(PHONE, "promo", "SM-2", MessageKind.REGULAR, at(10), **fields)
        batched = await app.sends.record(batch("b1", [one]))
        assert len(single.event_ids) == len(batched.event_ids) == 1


# ---- claims of sends whose instance died before appending ----------------------------


class DiesMidAppend(InMemoryLedger):
    """The first append after ``die`` is set never ends (its instance killed), and
    stores nothing; unless ``late`` is set before the next, which stores the dead
    append's events first, as a request the broker held would reach it late."""

    def __init__(self) -> None:
        super().__init__(partitions=4)
        self.die, self.begun, self.late = False, asyncio.Event(), False
        self.dead: list[LedgerEvent] = []

    @property
    def longest_append_s(self) -> float:
        return 0.0  # stored as ``append`` is called, before it first awaits

    async def append(self, events: Sequence[LedgerEvent]) -> list[Recorded]:
        if self.die:
            self.die, self.dead = False, list(events)
            self.begun.set()
            await asyncio.Event().wait()
        if self.late and self.dead:
            self.late = False
            await super().append(self.dead)
        return await super().append(events)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def single(request_id: str, **changes: Any) -> RecordMessageSent:
    sent = RecordMessageSent(
        request_id, phone(1), BRAND, "promo", "SM-1", MessageKind.REGULAR, at(10)
    )
    return dataclasses.replace(sent, **changes)


@contextlib.asynccontextmanager
async def a_send_killed_mid_append() -> Any:
    """An app whose first send of SM-1 (request ``s1``) claimed its ids, then died in
    its append: nothing stored, its claims kept. Its view's claims age by ``clock``."""
    ledger, clock = DiesMidAppend(), Clock()
    async with running(WAIT, ledger=ledger, view=InMemoryConsentView(clock)) as (app, _):
        await app.writes.record(define())
        ledger.die = True
        dying = asyncio.create_task(app.writes.record(single("s1")))
        await asyncio.wait_for(ledger.begun.wait(), 5)
        await stop_task(dying)
        yield app, ledger, clock


LAPSE = 2 * WAIT + 1
"""The ledger's appends end as they begin: an append begins within the freshness
bound of its claims, and the claims lapse a bound after that."""


@pytest.mark.parametrize("how", ["single", "batch"])
async def test_a_claim_of_a_send_that_died_before_its_append_lapses(how, caplog):
    """A send claimed SM-1, then its instance died before appending it. SM-1 sent
    again, corrected, under a new request id was refused ALREADY_EXISTS for good,
    though nothing was recorded. Now it is refused only while the claim is younger
    than the longest an append may take (saying when it lapses); past that, the
    view caught up and holding no send of SM-1, the new send takes the claim over
    and is recorded, and the dead request's own retry is refused as a reuse."""
    async with a_send_killed_mid_append() as (app, _, clock):

        async def corrected(request_id: str) -> list[str]:
            if how == "single":
                return (
                    await app.writes.record(single(request_id, identified_sender=True))
                ).event_ids
            changed = [message(2), message(1, identified_sender=True)]
            return (await app.sends.record(batch(request_id, changed))).event_ids

        with pytest.raises(MessageIdReused) as young:
            await corrected("s2")
        assert "lapses in" in young.value.reason
        field = "message_id" if how == "single" else "messages[1].message_id"
        assert young.value.field == field
        assert not await sends_in_ledger(app)

        assert "taken over" not in caplog.text
        clock.now += LAPSE
        ids = await corrected("s3")
        assert "1 send claim(s) of brand acme taken over" in caplog.text  # for the operator
        sends = [(e.message_id, e.identified_sender) for e in await sends_in_ledger(app)]
        assert ("SM-1", True) in sends and ("SM-1", False) not in sends
        with pytest.raises(MessageIdReused) as dead_retry:
            await app.writes.record(single("s1"))
        assert dead_retry.value.event_ids == (ids[-1],)


async def test_two_sends_taking_one_lapsed_claim_over_record_one():
    """Two corrected sends of SM-1 under new request ids, saying different things,
    at once: one takes the lapsed claim over and is recorded, the other is refused."""
    async with a_send_killed_mid_append() as (app, _, clock):
        clock.now += LAPSE
        answers = await asyncio.gather(
            app.writes.record(single("s2", identified_sender=True)),
            app.writes.record(single("s3", included_opt_out_language=True)),
            return_exceptions=True,
        )
        assert sorted(type(a).__name__ for a in answers) == ["MessageIdReused", "WriteResult"]
        assert [e.message_id for e in await sends_in_ledger(app)] == ["SM-1"]


@pytest.mark.parametrize("how", ["single", "batch"])
async def test_a_dead_send_that_reaches_the_ledger_after_all_leaves_one_answer(how):
    """The dead send's append reaches the ledger late after all, after its claim was
    taken over, just ahead of the new send: the view applies the dead one (the
    first). The new send is refused as a reuse of it, as its retry is, rather than
    answered OK with a send no reader shows."""
    async with a_send_killed_mid_append() as (app, ledger, clock):
        clock.now += LAPSE
        ledger.late = True

        async def corrected() -> Any:
            if how == "single":
                return await app.writes.record(single("s2", identified_sender=True))
            return await app.sends.record(batch("s2", [message(1, identified_sender=True)]))

        for _ in range(2):  # the call, then its retry
            with pytest.raises(MessageIdReused) as reused:
                await corrected()
            (dead,) = ledger.dead
            assert reused.value.event_ids == (str(dead.event_id),)
        assert (await app.writes.record(single("s1"))).event_ids == [str(dead.event_id)]


async def test_a_lapsed_claim_the_view_cannot_be_shown_past_is_in_doubt():
    """Past the lapse, but the view cannot be shown caught up with the ledger: the
    dead send may be there. Refused as retryable, saying so; the claim is kept."""
    async with a_send_killed_mid_append() as (app, _, clock):
        clock.now += LAPSE

        async def behind(phones: Sequence[str]) -> bool:
            return False

        app.guard.wait_until_applied_for = behind  # type: ignore[method-assign]
        with pytest.raises(NotConsistent) as doubt:
            await app.writes.record(single("s2", identified_sender=True))
        assert doubt.value.field == "message_id" and "in doubt" in doubt.value.reason
        assert not await sends_in_ledger(app)


async def test_a_dead_requests_retry_makes_its_claim_anew_so_it_is_not_taken_over():
    """Past the lapse, the dead request itself is sent again and is on its way to the
    ledger: it made its claim anew as it took its request id, so a corrected send
    under another request id is refused while it may still land, not recorded
    beside it (both answered OK, one never read)."""
    async with a_send_killed_mid_append() as (app, ledger, clock):
        clock.now += LAPSE
        ledger.die, ledger.begun = True, asyncio.Event()
        retry = asyncio.create_task(app.writes.record(single("s1")))
        await asyncio.wait_for(ledger.begun.wait(), 5)
        with pytest.raises(MessageIdReused) as young:
            await app.writes.record(single("s2", identified_sender=True))
        assert "lapses in" in young.value.reason
        await stop_task(retry)


@pytest.mark.parametrize("how", ["single", "batch"])
async def test_an_attempt_that_cannot_append_soon_after_its_claims_gives_them_up(how):
    """An attempt whose append would begin later after its claims than the ledger's
    bound allows (here the freshness bound alone: the ledger's appends end as they
    begin) might land after its claims lapsed and were taken over: it gives them up
    and is refused as retryable, and the message is then recorded as sent again."""
    async with running(0.2, ledger=DiesMidAppend()) as (app, _):
        await app.writes.record(define())
        claim = "take_request" if how == "single" else "claim_messages"
        real = getattr(app.view, claim)

        async def slow(*args: Any, **kwargs: Any) -> Any:
            held = await real(*args, **kwargs)
            await asyncio.sleep(0.5)
            return held

        setattr(app.view, claim, slow)
        with pytest.raises(NotConsistent) as late:
            if how == "single":
                await app.writes.record(single("s1"))
            else:
                await app.sends.record(batch("b1", [message(1)]))
        assert "claimed too long before the append" in late.value.reason
        setattr(app.view, claim, real)
        assert not await sends_in_ledger(app)
        again = await app.writes.record(single("s2", identified_sender=True))
        assert await app.guard.wait_for_token(again.token)
        sends = [(e.message_id, e.identified_sender) for e in await sends_in_ledger(app)]
        assert sends == [("SM-1", True)]


async def test_a_copy_of_a_dead_send_landing_after_the_send_that_took_over_is_refused():
    """A copy of the dead send (saying the same, another request id) waits out the
    bound and is appended slowly; meanwhile the claim lapses and a corrected send
    takes it over and lands first, so the view applies it. The copy was answered OK
    as that send, which says something else of the message; it is refused as a
    reuse of it now, as its retry is."""
    ledger, clock = DiesMidAppend(), Clock()
    async with running(0.2, ledger=ledger, view=InMemoryConsentView(clock)) as (app, _):
        await app.writes.record(define())
        ledger.die = True
        dying = asyncio.create_task(app.writes.record(single("s1")))
        await asyncio.wait_for(ledger.begun.wait(), 5)
        await stop_task(dying)

        gate, held = asyncio.Event(), asyncio.Event()
        real = ledger.append

        async def slow_copy(events: Sequence[LedgerEvent]) -> list[Recorded]:
            if any(e.request_id == "s2" for e in events):
                held.set()
                await gate.wait()
            return await real(events)

        ledger.append = slow_copy  # type: ignore[method-assign]
        copy = asyncio.create_task(app.writes.record(single("s2")))
        await asyncio.wait_for(held.wait(), 5)
        clock.now += 1  # past the lapse: twice the bound
        taker = await app.writes.record(single("s3", identified_sender=True))
        gate.set()
        with pytest.raises(MessageIdReused) as reused:
            await copy
        assert reused.value.event_ids == tuple(taker.event_ids)
        with pytest.raises(MessageIdReused):
            await app.writes.record(single("s2"))


async def test_a_reply_in_a_batch_takes_a_lapsed_claim_over_and_is_recorded():
    """A batch's reply (a kind that may escape the caps) is judged for its exemption,
    which makes a new event of it, after its claims were taken: the send that took a
    lapsed claim over was looked up among the call's messages as it was made, found
    no more, and the call failed after its append, its messages recorded."""
    async with a_send_killed_mid_append() as (app, _, clock):
        clock.now += LAPSE
        reply = message(1, kind=MessageKind.HELP_REPLY)
        answer = await app.sends.record(batch("s2", [message(2), reply]))
        sends = [(e.message_id, e.kind) for e in await sends_in_ledger(app)]
        assert ("SM-1", MessageKind.HELP_REPLY) in sends, sends
        assert len(answer.event_ids) == 2
