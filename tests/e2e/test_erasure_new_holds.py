"""An erasure against the holds placed since: a text read again under new keyword
rules, its hold placed while the text's subject is being erased, on the embedded
default's PostgreSQL ledger. The erased words stay unread wherever the hold is
placed, and the hold still denies, a fresh opt-in after the erasure included."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from consent.v1 import consent_service_pb2 as api

from ledger.personal_data import ERASED
from ledger.ports import ConsistencyToken, Stream
from ledger.retention import add_years
from services.usecases.context import Context
from tests.e2e.harness import opt_in, opted_in
from tests.e2e.test_texts_read_again import DISGUISED, stored_as_conversation

pytestmark = pytest.mark.asyncio(loop_scope="session")

SENDER = "+12125550187"
PHONE = "+14155553977"  # test_texts_read_again's: stored_as_conversation writes to it


async def test_a_text_read_again_while_its_subject_is_erased_is_held_without_its_words(
    tmp_path, postgres_dsn
):
    async with opted_in(
        tmp_path, postgres_dsn, None, name="rereaderased", phone=PHONE, sender=SENDER
    ) as (runtime, c, clock):
        assert runtime.usecases is not None and runtime.pool is not None
        assert runtime.ledger is not None
        review = runtime.usecases.review
        await runtime.texts_read.wait()  # the start's reading, before the text is stored
        text = stored_as_conversation(clock.now - timedelta(minutes=10), "older", "SM-erased")
        await review.ctx.ledger.append([text])
        clock.now = add_years(clock.now, 6)

        # The reading opens the text, then the erasure comes before its hold is placed.
        place, erased = review._place, []

        async def erased_first(owed, placed):  # type: ignore[no-untyped-def]
            if owed and not erased:
                erased.append(
                    await c.RequestErasure(
                        api.RequestErasureRequest(
                            request_id=uuid.uuid4().hex, phone=PHONE, brand="acme"
                        )
                    )
                )
            await place(owed, placed)

        review._place = erased_first  # type: ignore[method-assign]
        await runtime.pool.execute("UPDATE texts_read_under SET rules = 'older rules'")
        await runtime.pool.execute("DELETE FROM texts_read_to")
        assert await runtime.read_texts_on()
        assert erased, "the reading placed no hold"

        ends = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)
        token = ConsistencyToken({(Stream.SUBSCRIBERS, p): o for p, o in ends.items()}).encode()
        queue = await c.ListRevocationCandidates(
            api.ListRevocationCandidatesRequest(brand="acme", at_least_as_fresh=token)
        )
        [held] = queue.candidates
        assert held.event.revocation_candidate_flagged.text == ERASED, held
        assert DISGUISED not in str(queue)
        events = await c.ListEvents(
            api.ListEventsRequest(phone=PHONE, brand="acme", at_least_as_fresh=token)
        )
        assert DISGUISED not in str(events)

        # Held all the same: a fresh opt-in after the erasure allows nothing under it.
        fresh = await c.RecordOptIn(opt_in(PHONE, "acme", "promo", clock.now))
        check = await c.CanSend(
            api.CanSendRequest(
                phone=PHONE,
                brand="acme",
                campaign="promo",
                at_least_as_fresh=fresh.consistency_token,
            )
        )
        assert (check.allowed, check.reason) == (False, api.REASON_REVOCATION_OVERDUE), check


async def test_an_erasure_waits_for_a_hold_placed_on_its_number_on_this_instance(
    tmp_path, postgres_dsn, monkeypatch
):
    # The erasure comes after the reading has looked again at the text, before its hold
    # is appended: on one instance it waits for the hold, which its keys then erase,
    # rather than destroy them under it and leave the hold sealed with a key made since.
    async with opted_in(
        tmp_path, postgres_dsn, None, name="rereadturn", phone=PHONE, sender=SENDER
    ) as (runtime, c, clock):
        assert runtime.usecases is not None and runtime.pool is not None
        assert runtime.ledger is not None
        review, erasure = runtime.usecases.review, runtime.usecases.erasure
        await runtime.texts_read.wait()  # the start's reading, before the text is stored
        text = stored_as_conversation(clock.now - timedelta(minutes=10), "older", "SM-turn")
        (stored,) = await review.ctx.ledger.append([text])
        clock.now = add_years(clock.now, 6)
        opened, erasing, looks = Context.opened, [], []

        async def erased_meanwhile(ctx, history):  # type: ignore[no-untyped-def]
            shown = await opened(ctx, history)
            if [r.position for r in history] == [stored.position]:
                looks.append(history)
            # The reading opens the text, then looks at it again to place its hold.
            if len(looks) == 2 and not erasing:
                task = asyncio.create_task(
                    c.RequestErasure(
                        api.RequestErasureRequest(
                            request_id=uuid.uuid4().hex, phone=PHONE, brand="acme"
                        )
                    )
                )
                erasing.append(task)
                # Until the erasure is done, or waits for this subject's turn.
                while not task.done() and waiting(erasure) < 2:
                    await asyncio.sleep(0.01)
            return shown

        monkeypatch.setattr(Context, "opened", erased_meanwhile)
        await runtime.pool.execute("UPDATE texts_read_under SET rules = 'older rules'")
        await runtime.pool.execute("DELETE FROM texts_read_to")
        assert await runtime.read_texts_on()
        monkeypatch.undo()
        (task,) = erasing
        done = await task
        queue = await c.ListRevocationCandidates(
            api.ListRevocationCandidatesRequest(
                brand="acme", at_least_as_fresh=done.consistency_token
            )
        )
        [held] = queue.candidates
        assert held.event.revocation_candidate_flagged.text == ERASED, held


def waiting(erasure) -> int:  # type: ignore[no-untyped-def]
    """How many calls hold or wait for PHONE's turn at acme (``Erasure._turns``)."""
    turn = erasure._turns._turns.get((PHONE, "acme"))
    return 0 if turn is None else turn.holders
