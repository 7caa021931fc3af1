"""Erasure through the use cases, on the in-memory adapters with a clock the test
moves: refused inside the period and under a hold (with the date), done after it;
what the audit reads and CanSend then say."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta

import pytest

from ledger.commands import RecordOptOut
from ledger.digest import Digest
from ledger.errors import InvalidRequest
from ledger.events import ConsentGranted, RevocationChannel, SubjectErased
from ledger.personal_data import ERASED
from ledger.policy import Reason
from ledger.ports import DigestReads, Stream
from ledger.retention import PlaceLegalHold, ReleaseLegalHold, RequestErasure, add_years
from ledger.status import ConsentState
from services.adapters.memory_keys import InMemorySubjectKeys
from services.adapters.memory_ledger import InMemoryLedger
from services.adapters.memory_view import InMemoryConsentView
from services.errors import FailedPrecondition, Refused
from services.freshness import FreshnessGuard
from services.projector import Projector
from services.settings import FreshnessSettings
from services.usecases import UseCases
from tests.builders import BRAND, PHONE, at
from tests.builders import opt_in as an_opt_in
from tests.unit.usecase_harness import AUDITOR, define, stop_task


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@contextlib.asynccontextmanager
async def app(clock: Clock) -> AsyncIterator[tuple[UseCases, InMemorySubjectKeys]]:
    ledger, view, keys = (
        InMemoryLedger(partitions=4, clock=clock),
        InMemoryConsentView(),
        InMemorySubjectKeys(),
    )
    projector = asyncio.create_task(Projector(ledger, view, poll_timeout=0.01).run())
    guard = FreshnessGuard(ledger, view, FreshnessSettings(refresh_interval=0.01, wait_bound=1))
    await guard.start()
    try:
        yield UseCases.build(ledger, view, guard, clock, keys=keys), keys
    finally:
        await guard.stop()
        await stop_task(projector)


async def opted_in_and_out(uc: UseCases) -> datetime:
    """A number opted in and out; when the opt-out happened."""
    await uc.writes.record(define())
    await uc.writes.record(an_opt_in(at(0), request_id="in"))
    stop = at(5)
    await uc.writes.record(
        RecordOptOut("out", PHONE, BRAND, "promo", RevocationChannel.KEYWORD, stop, "STOP")
    )
    return stop


async def test_an_early_erasure_is_refused_with_the_date_it_becomes_possible() -> None:
    clock = Clock(at(10))
    async with app(clock) as (uc, keys):
        stop = await opted_in_and_out(uc)

        with pytest.raises(Refused) as err:
            await uc.erasure.erase(RequestErasure("erase-1", PHONE, BRAND), "dpo")

        assert err.value.error_reason == "RETENTION_PERIOD"
        # The period runs from the last fact: the opt-out, recorded at the clock's now.
        assert stop < clock.now
        assert err.value.metadata["possible_from"] == add_years(clock.now, 5).isoformat()
        assert add_years(clock.now, 5).isoformat() in err.value.reason
        history = await uc.audit.history(PHONE, BRAND, reader=AUDITOR)
        assert not any(isinstance(r.event, SubjectErased) for r in history.value)
        assert await keys.find(PHONE, BRAND, [(await keys.current(PHONE, BRAND)).key_id])


async def test_a_late_erasure_destroys_the_key_and_reads_show_it_erased() -> None:
    clock = Clock(at(10))
    async with app(clock) as (uc, _):
        stop = await opted_in_and_out(uc)
        clock.now = add_years(stop, 5) + timedelta(days=1)

        done = await uc.erasure.erase(RequestErasure("erase-1", PHONE, BRAND, "T-7"), "dpo")
        history = (await uc.audit.history(PHONE, BRAND, done.token, reader=AUDITOR)).value
        again = await uc.erasure.erase(RequestErasure("erase-1", PHONE, BRAND, "T-7"), "dpo")

        assert done.keys_destroyed == 1
        assert again.replayed and again.event_id == done.event_id
        grant = next(r.event for r in history if isinstance(r.event, ConsentGranted))
        assert grant.proof.name == grant.proof.email == ERASED
        assert any(isinstance(r.event, SubjectErased) for r in history)
        packet = (await uc.audit.proof_packet(PHONE, BRAND, reader=AUDITOR)).value
        assert ERASED in repr(packet) and "Ada Lovelace" not in repr(packet)
        answer = await uc.checks.can_send(PHONE, BRAND, "promo", token=done.token)
        assert not answer.decision.allowed


async def test_a_fresh_opt_in_after_erasure_is_allowed_and_readable() -> None:
    clock = Clock(at(10))
    async with app(clock) as (uc, _):
        await uc.writes.record(define())
        await uc.writes.record(an_opt_in(at(0), request_id="in"))
        clock.now = add_years(at(0), 5) + timedelta(days=1)
        done = await uc.erasure.erase(RequestErasure("erase-1", PHONE, BRAND), "dpo")
        erased_answer = await uc.checks.can_send(PHONE, BRAND, "promo", token=done.token)
        erased_consent = await uc.audit.get_consent(PHONE, BRAND, "promo", reader=AUDITOR)
        clock.now += timedelta(hours=1)
        fresh = an_opt_in(clock.now - timedelta(minutes=1), request_id="again")
        result = await uc.writes.record(fresh)

        answer = await uc.checks.can_send(PHONE, BRAND, "promo", token=result.token)
        history = (await uc.audit.history(PHONE, BRAND, reader=AUDITOR)).value

        assert erased_answer.decision.reason is Reason.SUBJECT_ERASED
        assert erased_consent.state is ConsentState.ERASED and erased_consent.grant is None
        assert answer.decision.allowed
        fresh_consent = await uc.audit.get_consent(
            PHONE, BRAND, "promo", result.token, reader=AUDITOR
        )
        assert fresh_consent.state is ConsentState.ACTIVE
        names = [r.event.proof.name for r in history if isinstance(r.event, ConsentGranted)]
        assert names == [ERASED, "Ada Lovelace"]


async def test_a_legal_hold_refuses_until_it_is_released() -> None:
    clock = Clock(at(10))
    async with app(clock) as (uc, _):
        stop = await opted_in_and_out(uc)
        await uc.erasure.hold(PlaceLegalHold("hold-1", PHONE, BRAND, "smith-v-acme", "suit"), "law")
        clock.now = add_years(stop, 6)

        with pytest.raises(Refused) as err:
            await uc.erasure.erase(RequestErasure("erase-1", PHONE, BRAND), "dpo")
        await uc.erasure.hold(ReleaseLegalHold("hold-2", PHONE, BRAND, "smith-v-acme"), "law")
        done = await uc.erasure.erase(RequestErasure("erase-2", PHONE, BRAND), "dpo")

        assert err.value.error_reason == "LEGAL_HOLD"
        assert err.value.metadata["holds"] == "smith-v-acme"
        assert done.keys_destroyed == 1


async def test_releasing_a_hold_that_does_not_stand_is_refused() -> None:
    clock = Clock(at(10))
    async with app(clock) as (uc, _):
        await opted_in_and_out(uc)

        with pytest.raises(Refused) as err:
            await uc.erasure.hold(ReleaseLegalHold("rel", PHONE, BRAND, "smith-v-acme"), "law")

        assert err.value.error_reason == "NO_SUCH_HOLD"


async def test_erasing_a_number_with_nothing_recorded_is_refused() -> None:
    async with app(Clock(at(10))) as (uc, _):
        with pytest.raises(Refused) as err:
            await uc.erasure.erase(RequestErasure("erase-1", PHONE, BRAND), "dpo")

        assert err.value.error_reason == "NOTHING_RECORDED"


async def test_get_consent_shows_each_fact_opened_while_the_ledger_holds_it_sealed() -> None:
    async with app(Clock(at(10))) as (uc, _):
        await opted_in_and_out(uc)
        assert await uc.audit.ctx.guard.wait_until_applied_for([PHONE])

        consent = await uc.audit.get_consent(PHONE, BRAND, "promo", reader=AUDITOR)
        stored = await uc.audit.ctx.view.history(PHONE, BRAND)

        assert consent.grant is not None and consent.grant.event.proof.name == "Ada Lovelace"
        assert consent.revocation is not None and consent.revocation.event.text == "STOP"
        assert {r.event.sealed is not None for r in stored} == {True}


async def test_the_change_stream_shows_the_opt_in_opened() -> None:
    async with app(Clock(at(10))) as (uc, _):
        await opted_in_and_out(uc)
        assert await uc.audit.ctx.guard.wait_until_applied_for([PHONE])
        stopping = asyncio.Event()

        seen = []
        async for recorded, _token in uc.audit.watch_changes(
            BRAND, None, stopping=stopping, reader=AUDITOR
        ):
            seen.append(recorded.event)
            if len(seen) == 2:
                stopping.set()
                break

        grant = next(e for e in seen if isinstance(e, ConsentGranted))
        assert grant.proof.name == "Ada Lovelace" and grant.sealed is None


async def test_bad_input_is_refused_by_field_before_the_retention_is_looked_at() -> None:
    async with app(Clock(at(10))) as (uc, _):
        await opted_in_and_out(uc)  # inside the period: a well-formed request is refused

        with pytest.raises(InvalidRequest) as err:
            await uc.erasure.erase(RequestErasure("", PHONE, BRAND, "x" * 300), "dpo")

        assert {f for f, _ in err.value.violations} == {"request_id", "reference"}


class Lagging(DigestReads):
    """CanSend's digests as a replica that has not applied anything since ``frozen``
    (the view's digests then), though the view has."""

    def __init__(self, view: InMemoryConsentView) -> None:
        self.view = view
        self.frozen: dict[str, Digest] | None = None

    async def positions(self, stream: Stream) -> dict[int, int]:
        return await self.view.positions(stream)

    async def digests(self, brand: str, phones: Sequence[str]) -> dict[str, Digest]:
        if self.frozen is not None:
            return {p: d for p, d in self.frozen.items() if p in phones}
        return await self.view.digests(brand, phones)


async def test_a_write_dated_no_later_than_an_erasure_answered_here_is_refused_at_once() -> None:
    # What CanSend reads lags the erasure this instance answered a moment ago: the
    # write dated before it is refused all the same, nothing of it written; a retry
    # of the opt-in recorded before the erasure is answered as recorded.
    clock = Clock(at(10))
    ledger, view = InMemoryLedger(partitions=4, clock=clock), InMemoryConsentView()
    reads = Lagging(view)
    projector = asyncio.create_task(Projector(ledger, view, poll_timeout=0.01).run())
    guard = FreshnessGuard(ledger, view, FreshnessSettings(refresh_interval=0.01, wait_bound=1))
    await guard.start()
    try:
        uc = UseCases.build(ledger, view, guard, clock, reads=reads, keys=InMemorySubjectKeys())
        await uc.writes.record(define())
        first = await uc.writes.record(an_opt_in(at(0), request_id="in"))
        reads.frozen = await view.digests(BRAND, [PHONE])
        clock.now = add_years(at(0), 5) + timedelta(days=1)
        done = await uc.erasure.erase(RequestErasure("erase-1", PHONE, BRAND), "dpo")

        with pytest.raises(FailedPrecondition) as refused:
            await uc.writes.record(an_opt_in(at(1), request_id="stale"))
        again = await uc.writes.record(an_opt_in(at(0), request_id="in"))
        history = (await uc.audit.history(PHONE, BRAND, done.token, reader=AUDITOR)).value

        assert refused.value.field == "occurred_at"
        assert f"was erased at {clock.now.isoformat()}" in refused.value.reason
        assert again.replayed and again.event_ids == first.event_ids
        assert [r.event.request_id for r in history] == ["in", "erase-1"]
        clock.now += timedelta(minutes=1)
        fresh = await uc.writes.record(an_opt_in(clock.now, request_id="fresh"))
        assert not fresh.replayed
    finally:
        await guard.stop()
        await stop_task(projector)
