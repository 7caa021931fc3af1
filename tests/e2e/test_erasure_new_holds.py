"""An erasure against the holds placed since, on the embedded default's PostgreSQL
ledger: a text read again under new keyword rules, its hold placed while the text's
subject is being erased, and after; holds of the number's brand, of another brand
and of every brand pending when it is erased; a late STOP at the same moment as the
erasure; sends before and after it. The erased words stay unread wherever a hold is
placed, each hold still denies, a fresh opt-in after the erasure included, and the
sends are judged by the consent that stood then."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import datetime, timedelta

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb
from google.protobuf import json_format

from ledger.events import RevocationCandidateFlagged, SubjectErased
from ledger.personal_data import ERASED
from ledger.ports import ConsistencyToken, Stream
from ledger.retention import add_years
from services.usecases import review as review_module
from services.usecases.context import Context
from tests.e2e.harness import (
    client,
    define,
    defined,
    inbound,
    opt_in,
    opted_in,
    sends_from,
    sent,
    ts,
)
from tests.e2e.test_texts_read_again import DISGUISED, stored_as_conversation

pytestmark = pytest.mark.asyncio(loop_scope="session")

SENDER = "+12125550187"
PHONE = "+14155553977"  # test_texts_read_again's: stored_as_conversation writes to it


@pytest.mark.parametrize("on_kafka", [False, True], ids=["embedded", "kafka"])
async def test_a_text_read_again_while_its_subject_is_erased_is_held_without_its_words(
    tmp_path, postgres_dsn, kafka_bootstrap, on_kafka
):
    bootstrap = kafka_bootstrap if on_kafka else None
    async with opted_in(
        tmp_path, postgres_dsn, bootstrap, name="rereaderased", phone=PHONE, sender=SENDER
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
        clock.now += timedelta(minutes=1)  # a fresh opt-in is dated after the erasure
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


INITECH = "+12125550188"
"""A number initech's campaign sent from, then let go, and acme took."""
UNOWNED = "+12125550189"
"""A number no campaign sends from."""


async def acme_took_initechs_number(runtime, c, clock) -> None:  # type: ignore[no-untyped-def]
    """initech's campaign sent from INITECH until ten minutes ago; acme's has sent
    from it too for five minutes."""
    sale = define("initech", "sale", clock.now - timedelta(days=2), [INITECH])
    await defined(runtime, [sale])
    await sends_from(c, sale, [], clock.now - timedelta(minutes=10))
    promo = define("acme", "promo", clock.now, [SENDER, INITECH])
    await sends_from(c, promo, [SENDER, INITECH], clock.now - timedelta(minutes=5))


async def test_an_erasure_lifts_no_hold_of_its_brand_of_another_or_of_every_brand(
    tmp_path, postgres_dsn
):
    # PHONE has three holds pending when acme erases it: a reply of its own that may
    # be an opt-out; a STOP sent to initech's number, delivered after initech let it
    # go and acme took it, held for initech; and a STOP to a number no campaign sends
    # from, kept under "*" (the caller's token is every brand's).
    async with opted_in(
        tmp_path, postgres_dsn, None, name="erasedheld", phone=PHONE, sender=SENDER
    ) as (runtime, c, clock):
        await acme_took_initechs_number(runtime, c, clock)
        own = await c.HandleInboundMessage(
            inbound(PHONE, SENDER, "No thanks", clock.now - timedelta(minutes=25))
        )
        assert own.intent == api.INBOUND_INTENT_REVOCATION_CANDIDATE, own
        await c.HandleInboundMessage(
            inbound(PHONE, INITECH, "STOP", clock.now - timedelta(minutes=20))
        )
        late = await c.HandleInboundMessage(
            inbound(PHONE, UNOWNED, "STOP", clock.now - timedelta(minutes=15))
        )
        holds = {}
        for brand in ("acme", "initech", "*"):
            listed = await c.ListRevocationCandidates(
                api.ListRevocationCandidatesRequest(
                    brand=brand, at_least_as_fresh=late.consistency_token
                )
            )
            (holds[brand],) = listed.candidates
        texted = clock.now
        clock.now = add_years(clock.now, 6)
        erasure = await c.RequestErasure(
            api.RequestErasureRequest(request_id=uuid.uuid4().hex, phone=PHONE, brand="acme")
        )
        clock.now += timedelta(minutes=1)  # a fresh opt-in is dated after the erasure
        fresh = await c.RecordOptIn(opt_in(PHONE, "acme", "promo", clock.now))
        token = fresh.consistency_token
        denied = await readers(c, token, clock.now)
        assert not any(allowed for allowed, _ in denied.values()), denied
        # A send after the late STOP, before the erasure, is denied in hindsight.
        before = await readers(c, token, texted)
        assert not before["CanSendAsOf"][0], before

        # The review queue still lists each hold, acme's without its erased words,
        # and the proof packet and the events show none of them.
        for brand, hold in holds.items():
            listed = await c.ListRevocationCandidates(
                api.ListRevocationCandidatesRequest(brand=brand, at_least_as_fresh=token)
            )
            ids = [h.event.event_id for h in listed.candidates]
            assert ids == [hold.event.event_id], (brand, listed)
            words = listed.candidates[0].event.revocation_candidate_flagged.text
            # initech's and "*"'s records are not acme's to erase (README, "What it
            # does not do").
            assert words == {"acme": ERASED}.get(brand, "STOP"), (brand, words)
        ask = dict(phone=PHONE, brand="acme", at_least_as_fresh=token)
        packet = await c.GetProofPacket(
            api.GetProofPacketRequest(**ask, campaign="promo"), timeout=60
        )
        events = await c.ListEvents(api.ListEventsRequest(**ask))
        consent = await c.GetConsent(api.GetConsentRequest(**ask, campaign="promo"))
        assert len(consent.pending_revocation_candidates) == 2, consent
        assert "No thanks" not in str(packet) + str(events) + str(consent)

        # Each hold is resolved as before; acme's sends wait for its own and for "*"'s.
        for brand in ("acme", "initech", "*"):
            done = await c.ResolveRevocationCandidate(
                api.ResolveRevocationCandidateRequest(
                    request_id=uuid.uuid4().hex, brand=brand, phone=PHONE,
                    candidate_event_id=holds[brand].event.event_id,
                    resolution=lpb.CANDIDATE_RESOLUTION_DISMISSED,
                    resolved_by="reviewer", occurred_at=ts(clock.now),
                )
            )  # fmt: skip
            said = await readers(c, done.consistency_token, clock.now)
            allowed = brand == "*"
            assert all(a == allowed for a, _ in said.values()), (brand, said)
        assert erasure.event_id


async def readers(c, token: str, at) -> dict[str, tuple[bool, int]]:  # type: ignore[no-untyped-def]
    """CanSend's, CanSendBatch's and CanSendAsOf's (of ``at``) answers for acme/promo."""
    ask = dict(phone=PHONE, brand="acme", campaign="promo", at_least_as_fresh=token)
    one = await c.CanSend(api.CanSendRequest(**ask))
    (batch,) = (
        await c.CanSendBatch(
            api.CanSendBatchRequest(
                phones=[PHONE], brand="acme", campaign="promo", at_least_as_fresh=token
            )
        )
    ).decisions
    as_of = await c.CanSendAsOf(api.CanSendAsOfRequest(**ask, at=ts(at)))
    return {
        "CanSend": (one.allowed, one.reason),
        "CanSendBatch": (batch.allowed, batch.reason),
        "CanSendAsOf": (as_of.allowed, as_of.reason),
    }


async def test_texts_read_again_after_their_number_is_erased_stay_unread_and_hold_nothing(
    tmp_path, postgres_dsn
):
    # A disguised STOP sealed and one written in the clear before sealing existed, of
    # a number acme then erases, and one of a number not erased: reading them all
    # again holds the last alone, and the reading goes through to the end.
    other = "+14155553979"
    async with opted_in(
        tmp_path, postgres_dsn, None, name="erasedread", phone=PHONE, sender=SENDER
    ) as (runtime, c, clock):
        assert runtime.usecases is not None and runtime.pool is not None
        assert runtime.ledger is not None
        said = clock.now - timedelta(minutes=10)
        sealed = stored_as_conversation(said, "older-sealed", "SM-sealed")
        clear = stored_as_conversation(said, "older-clear", "SM-clear")
        kept = replace(
            stored_as_conversation(said, "older-kept", "SM-kept"), event_id=uuid.uuid4(),
            phone=other,
        )  # fmt: skip
        await runtime.texts_read.wait()  # the start's reading, before the texts are stored
        await runtime.usecases.review.ctx.ledger.append([sealed])
        (written,) = await runtime.ledger.append([clear])
        assert written.event.sealed is None
        clock.now = add_years(clock.now, 6)
        await c.RequestErasure(
            api.RequestErasureRequest(request_id=uuid.uuid4().hex, phone=PHONE, brand="acme")
        )
        await runtime.usecases.review.ctx.ledger.append([kept])
        await runtime.pool.execute("UPDATE texts_read_under SET rules = 'older rules'")
        await runtime.pool.execute("DELETE FROM texts_read_to")
        assert await runtime.read_texts_on()

        ends = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)
        token = ConsistencyToken({(Stream.SUBSCRIBERS, p): o for p, o in ends.items()}).encode()
        queue = await c.ListRevocationCandidates(
            api.ListRevocationCandidatesRequest(brand="acme", at_least_as_fresh=token)
        )
        held = [
            (h.event.phone, h.event.revocation_candidate_flagged.inbound_message_id)
            for h in queue.candidates
        ]
        assert held == [(other, "SM-kept")]
        events = await c.ListEvents(
            api.ListEventsRequest(phone=PHONE, brand="acme", at_least_as_fresh=token)
        )
        assert DISGUISED not in str(events)


async def test_an_erasure_racing_a_late_stop_leaves_it_denying_and_its_words_erased_before(
    tmp_path, postgres_dsn
):
    # A late STOP to the number initech let go and acme took, and acme's erasure of
    # the person's number, at once: whichever is recorded first, acme's sends stay
    # denied, initech's hold stands, and words recorded before the erasure read erased.
    # Dated before the erasure, the STOP is refused once it is recorded
    # (FAILED_PRECONDITION, tests/e2e/test_erased_writes.py): nothing of it is
    # written for acme then, and initech's hold, placed first, stands all the same.
    phones = [f"+1415555390{i}" for i in range(4)]
    async with opted_in(
        tmp_path, postgres_dsn, None, name="erasedrace", phone=PHONE, sender=SENDER
    ) as (runtime, c, clock):
        await acme_took_initechs_number(runtime, c, clock)
        sent = clock.now - timedelta(minutes=20)
        for phone in phones:
            await c.RecordOptIn(opt_in(phone, "acme", "promo", clock.now - timedelta(minutes=30)))
        clock.now = add_years(clock.now, 6)
        words = "Stop texting me, Initech"
        for phone in phones:
            erasure, late = await asyncio.gather(
                c.RequestErasure(
                    api.RequestErasureRequest(
                        request_id=uuid.uuid4().hex, phone=phone, brand="acme"
                    )
                ),
                c.HandleInboundMessage(inbound(phone, INITECH, words, sent)),
                return_exceptions=True,
            )
            assert not isinstance(erasure, BaseException), erasure
            if isinstance(late, grpc.aio.AioRpcError):
                assert late.code() == grpc.StatusCode.FAILED_PRECONDITION, late
                assert "was erased at" in late.details(), late
            else:
                assert not isinstance(late, BaseException), late
            ends = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)
            token = ConsistencyToken({(Stream.SUBSCRIBERS, p): o for p, o in ends.items()}).encode()
            check = await c.CanSend(
                api.CanSendRequest(
                    phone=phone, brand="acme", campaign="promo", at_least_as_fresh=token
                )
            )
            assert not check.allowed, (phone, check)
            held = await c.ListRevocationCandidates(
                api.ListRevocationCandidatesRequest(brand="initech", at_least_as_fresh=token)
            )
            assert phone in [h.event.phone for h in held.candidates], phone
            events = await c.ListEvents(
                api.ListEventsRequest(phone=phone, brand="acme", at_least_as_fresh=token)
            )
            (erased_at,) = [
                e.offset for e in events.events if e.event.event_type == "SubjectErased"
            ]
            for e in events.events:
                if words in str(e):
                    assert e.offset > erased_at, (phone, e)


async def initech_erased(runtime, c, clock) -> datetime:  # type: ignore[no-untyped-def]
    """``acme_took_initechs_number``, PHONE opted in to initech's sale too, and six
    years on, initech erased it; the time, before the erasure, of a late STOP."""
    await acme_took_initechs_number(runtime, c, clock)
    await c.RecordOptIn(opt_in(PHONE, "initech", "sale", clock.now - timedelta(days=1)))
    texted: datetime = clock.now - timedelta(minutes=20)
    clock.now = add_years(clock.now, 6)
    await c.RequestErasure(
        api.RequestErasureRequest(request_id=uuid.uuid4().hex, phone=PHONE, brand="initech")
    )
    return texted


async def held_only_for_acme(c, token: str, words: str) -> None:  # type: ignore[no-untyped-def]
    """Nothing of PHONE's ``words`` under initech, which still denies; held for acme."""
    held = await c.ListRevocationCandidates(
        api.ListRevocationCandidatesRequest(brand="initech", at_least_as_fresh=token)
    )
    assert list(held.candidates) == [], held
    events = await c.ListEvents(
        api.ListEventsRequest(phone=PHONE, brand="initech", at_least_as_fresh=token)
    )
    assert words not in str(events), events
    check = await c.CanSend(
        api.CanSendRequest(phone=PHONE, brand="initech", campaign="sale", at_least_as_fresh=token)
    )
    assert not check.allowed, check
    mine = await c.ListRevocationCandidates(
        api.ListRevocationCandidatesRequest(brand="acme", at_least_as_fresh=token)
    )
    assert [h.event.revocation_candidate_flagged.text for h in mine.candidates] == [words]


@pytest.mark.parametrize("on_kafka", [False, True], ids=["embedded", "kafka"])
async def test_a_late_stop_is_not_held_for_the_numbers_last_brand_that_erased_its_sender(
    tmp_path, postgres_dsn, kafka_bootstrap, on_kafka
):
    # A STOP dated before initech's erasure of PHONE, to the number initech let go
    # and acme took: its hold for initech kept the words erased there readable again
    # in initech's review queue and events. It is not placed (initech denies PHONE
    # until a fresh opt-in anyway); acme's, not erased, is kept as before.
    bootstrap = kafka_bootstrap if on_kafka else None
    async with opted_in(
        tmp_path, postgres_dsn, bootstrap, name="latestoperased", phone=PHONE, sender=SENDER
    ) as (runtime, c, clock):
        texted = await initech_erased(runtime, c, clock)
        words = "STOP texting me, Initech"
        late = await c.HandleInboundMessage(inbound(PHONE, INITECH, words, texted))
        assert late.brand == "acme", late
        await held_only_for_acme(c, late.consistency_token, words)


@pytest.mark.parametrize("on_kafka", [False, True], ids=["embedded", "kafka"])
async def test_a_stop_to_a_number_of_no_campaign_erased_for_one_brand_is_held_for_the_other(
    tmp_path, postgres_dsn, kafka_bootstrap, on_kafka
):
    # A gateway of acme and initech passes on a STOP to a number no campaign sends
    # from, dated before initech's erasure of PHONE: it was refused whole, acme's
    # hold with it, and the gateway does not retry FAILED_PRECONDITION (an opt-out
    # lost). It is held for acme alone now, and its retry is answered the same.
    bootstrap = kafka_bootstrap if on_kafka else None
    async with (
        opted_in(
            tmp_path, postgres_dsn, bootstrap, name="unownederased", phone=PHONE, sender=SENDER
        ) as (runtime, c, clock),
        client(runtime.address, "acme-initech") as gateway,
    ):
        texted = await initech_erased(runtime, c, clock)
        words = "STOP, both of you"
        stop = inbound(PHONE, UNOWNED, words, texted)
        held = await gateway.HandleInboundMessage(stop)
        again = await gateway.HandleInboundMessage(stop)
        assert list(again.event_ids) == list(held.event_ids) != [], (held, again)
        await held_only_for_acme(c, held.consistency_token, words)
        check = await c.CanSend(
            api.CanSendRequest(
                phone=PHONE,
                brand="acme",
                campaign="promo",
                at_least_as_fresh=held.consistency_token,
            )
        )
        assert not check.allowed, check


async def test_sends_around_an_erasure_are_judged_by_the_consent_that_stood_then(
    tmp_path, postgres_dsn
):
    # A send under the first opt-in, the erasure, a fresh opt-in and a send under it:
    # neither send is "not allowed in hindsight", CanSendAsOf of the first's moment
    # allows, and the fresh opt-in owes its first message's obligations again.
    async with opted_in(
        tmp_path, postgres_dsn, None, name="erasedsends", phone=PHONE, sender=SENDER
    ) as (_, c, clock):
        ask = dict(phone=PHONE, brand="acme", campaign="promo")
        owed = await c.CanSend(api.CanSendRequest(**ask))
        assert owed.allowed and owed.obligations, owed

        first = clock.now - timedelta(minutes=20)
        w = await c.RecordMessageSent(sent(PHONE, "acme", "promo", first, message_id="SM-before"))
        met = await c.CanSend(api.CanSendRequest(**ask, at_least_as_fresh=w.consistency_token))
        assert list(met.obligations) != list(owed.obligations), met
        clock.now = add_years(clock.now, 6)
        await c.RequestErasure(
            api.RequestErasureRequest(request_id=uuid.uuid4().hex, phone=PHONE, brand="acme")
        )
        clock.now += timedelta(minutes=1)  # a fresh opt-in is dated after the erasure
        fresh = await c.RecordOptIn(opt_in(PHONE, "acme", "promo", clock.now))
        again = await c.CanSend(
            api.CanSendRequest(**ask, at_least_as_fresh=fresh.consistency_token)
        )
        assert (again.allowed, list(again.obligations)) == (True, list(owed.obligations))
        clock.now += timedelta(minutes=1)
        w = await c.RecordMessageSent(
            sent(PHONE, "acme", "promo", clock.now, message_id="SM-after")
        )
        token = w.consistency_token
        then = await c.CanSendAsOf(
            api.CanSendAsOfRequest(**ask, at=ts(first), at_least_as_fresh=token)
        )
        assert (then.allowed, then.reason) == (True, api.REASON_CONSENT_ACTIVE), then
        packet = await c.GetProofPacket(
            api.GetProofPacketRequest(**ask, at_least_as_fresh=token), timeout=60
        )
        messages = json_format.MessageToDict(packet.packet)["messages"]
        rulings = {m["message_id"]: (m["decision"]["allowed"], m["hindsight"]) for m in messages}
        assert rulings == {"SM-before": (True, None), "SM-after": (True, None)}, messages


async def test_a_text_in_the_clear_read_again_while_the_view_lags_its_erasure_shows_nothing(
    tmp_path, postgres_dsn, monkeypatch
):
    # A text written before sealing existed has no key to destroy: only the view's
    # erasure hides it. Its number erased (on another instance) while this view lags,
    # the text read again is held without its words, not with them under a new key.
    async with opted_in(
        tmp_path, postgres_dsn, None, name="rereadlag", phone=PHONE, sender=SENDER
    ) as (runtime, _, clock):
        assert runtime.usecases is not None and runtime.pool is not None
        assert runtime.ledger is not None
        await runtime.texts_read.wait()  # the start's reading, before the text is stored
        (projector,) = [t for t in runtime._tasks if t.get_name() == "projector"]
        projector.cancel()
        text = stored_as_conversation(clock.now - timedelta(minutes=10), "older", "SM-lag")
        erasure = SubjectErased(
            event_id=uuid.uuid4(), occurred_at=clock.now, request_id="erased-elsewhere",
            phone=PHONE, brand="acme",
        )  # fmt: skip
        await runtime.ledger.append([text])
        await runtime.ledger.append([erasure])
        # One record a chunk: the erasure is not among the records the text is read with.
        monkeypatch.setattr(review_module, "REREAD_CHUNK", 1)
        await runtime.pool.execute("UPDATE texts_read_under SET rules = 'older rules'")
        await runtime.pool.execute("DELETE FROM texts_read_to")
        assert await runtime.read_texts_on()
        ctx = runtime.usecases.review.ctx
        (partition,) = await ctx.ledger.partitions(Stream.SUBSCRIBERS)
        stored = await ctx.ledger.read(Stream.SUBSCRIBERS, partition, 0, 100)
        holds = [r for r in stored if isinstance(r.event, RevocationCandidateFlagged)]
        assert holds, "the reading placed no hold"
        for hold in await ctx.opened(holds):
            assert isinstance(hold.event, RevocationCandidateFlagged)
            assert hold.event.text == ERASED, hold
