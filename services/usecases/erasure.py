"""Erasure and legal holds: ``RequestErasure``, ``PlaceLegalHold``, ``ReleaseLegalHold``.

An erasure is decided on the subject's whole history (``ledger.retention``): refused
inside the retention period or under a legal hold, with the reason and the date it
becomes possible; otherwise the erasure is recorded, then the subject's key is
destroyed (``ledger.ports.SubjectKeys``). In that order: a key destroyed but no
erasure recorded would be data gone without a trace, while an erasure recorded and
a key not yet destroyed (the store failed) already reads as erased
(``PersonalData.open``), and the request, retried, destroys it.

A hold placed on another instance between this one's look at the history and its
append is not seen (appends are unconditional); holds are placed before a matter
needs them, not raced against an erasure. On one instance an erasure and the holds
of its subject take turns (``Erasure._turn``), and so do the holds placed on its texts
read again (``Review._place``).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ledger.events import Recorded, SubjectErased, SubscriberEvent, event_id_for, evolved
from ledger.phone import forms_stored_before
from ledger.ports import ConsistencyToken, SubjectKeys
from ledger.retention import (
    ErasureVerdict,
    PlaceLegalHold,
    ReleaseLegalHold,
    RequestErasure,
    Retention,
    check_subject,
    checked,
    erasure_event,
    erasure_verdict,
    hold_event,
    standing_holds,
)
from services.errors import NotConsistent, Refused
from services.usecases.context import BEHIND, Context
from services.usecases.requests import Turns, WriteResult, recorded_once
from services.usecases.spellings import earlier_history, in_ledger_order


@dataclass(frozen=True)
class Erased:
    event_id: str
    token: ConsistencyToken
    retained_until: datetime | None
    keys_destroyed: int
    replayed: bool = False


class Erasure:
    def __init__(
        self,
        ctx: Context,
        keys: SubjectKeys | None,
        retention: Retention,
        turns: Turns[tuple[str, str]] | None = None,
    ) -> None:
        """``keys``: where the subjects' keys are (None: nothing is sealed, and an
        erasure only records itself and hides what it can on read); ``turns``: the
        subjects' turns, shared with what else must not be written under an erasure
        (the holds of texts read again, ``Review``)."""
        self.ctx, self.keys, self.retention = ctx, keys, retention
        self._turns: Turns[tuple[str, str]] = Turns() if turns is None else turns

    def _turn(self, phone: str, brand: str) -> AbstractAsyncContextManager[None]:
        """The subject's turn on this instance: an erasure and a hold (or a release) of
        one subject go one at a time, so a hold placed here while an erasure is
        decided is recorded after it, never acknowledged and then ignored."""
        return self._turns.turn((phone, brand))

    async def verdict(self, phone: str, brand: str) -> ErasureVerdict:
        """Whether the subject may be erased now, from its whole history."""
        number, brand = check_subject(phone, brand)
        return erasure_verdict(
            await self._everything(number, brand), self.retention, self.ctx.clock()
        )

    async def _everything(self, number: str, brand: str) -> list[Recorded]:
        """Every fact of the subject the ledger has acknowledged so far (a hold placed
        a moment ago included), under each spelling it was recorded under
        (``services.usecases.spellings``): an erasure cannot be taken back, so it is
        never decided on a view that may lag; ``NotConsistent`` (UNAVAILABLE,
        retryable) when the view cannot catch up within the bound."""
        if not await self.ctx.guard.wait_until_applied_for([number, *forms_stored_before(number)]):
            raise NotConsistent("phone", BEHIND)
        own = await self.ctx.view.history(number, brand)
        return in_ledger_order(own, await earlier_history(self.ctx.view, number, brand))

    async def erase(self, cmd: RequestErasure, requested_by: str = "") -> Erased:
        fields = checked(cmd, self.ctx.clock())  # bad input is refused before anything is read
        async with self._turn(fields["phone"], fields["brand"]):
            return await self._erase(cmd, requested_by)

    async def _erase(self, cmd: RequestErasure, requested_by: str) -> Erased:
        now = self.ctx.clock()
        fields = checked(cmd, now)
        number, brand = fields["phone"], fields["brand"]
        history = await self._everything(number, brand)
        earlier = self._recorded_before(history, fields)
        if earlier:
            return await self._finished(earlier, brand)
        verdict = erasure_verdict(history, self.retention, now)
        if verdict.last_fact is None:
            raise Refused(
                "phone",
                f"nothing is recorded about this number for {brand!r}: there is nothing to erase",
                "NOTHING_RECORDED",
                {},
            )
        if not verdict.allowed:
            assert verdict.refusal is not None
            metadata = {"holds": ",".join(verdict.holds)}
            if verdict.retained_until is not None:
                metadata["retained_until"] = verdict.retained_until.isoformat()
            if verdict.possible_from is not None:
                metadata["possible_from"] = verdict.possible_from.isoformat()
            raise Refused("phone", verdict.explain(), verdict.refusal.value, metadata)
        event: SubjectErased = erasure_event(cmd, now, verdict, requested_by)
        # Facts an earlier version kept under another spelling are sealed with that
        # spelling's key, and a read cuts a subject's facts at its erasure's offset,
        # which orders them only within its partition; so each such spelling gets an
        # erasure of its own, written to its partition (the request's 2nd, 3rd event).
        spelt = sorted(
            {r.event.phone for r in history if isinstance(r.event, SubscriberEvent)} - {number}
        )
        # Each erasure names the keys it destroys, listed before it is appended: a
        # write that sealed its facts with one of them but is appended after the
        # erasure (it was under way) is erased too, not read as a fresh opt-in whose
        # proof is gone (``ledger.state``); a key made after the listing, for such a
        # fresh opt-in, is not destroyed.
        keys = {
            phone: tuple(sorted(await self.keys.live(phone, brand))) if self.keys else ()
            for phone in [number, *spelt]
        }
        events = [evolved(event, key_ids=keys[number])] + [
            evolved(
                event,
                phone=phone,
                event_id=event_id_for(cmd.request_id, i, brand, event.request_fingerprint),
                key_ids=keys[phone],
            )
            for i, phone in enumerate(spelt, start=1)
        ]
        result = await recorded_once(self.ctx, events)
        # Before it is answered: a write begun after the answer is refused on this
        # instance, whether or not CanSend's digests have it yet.
        self.ctx.erased_here.note(brand, keys, event.occurred_at, result.token)
        destroyed = 0
        if self.keys is not None:
            for phone, named in keys.items():
                destroyed += await self.keys.destroy(phone, brand, named)
        return Erased(
            result.event_ids[0], result.token, verdict.retained_until, destroyed, result.replayed
        )

    @staticmethod
    def _recorded_before(history: list[Recorded], fields: dict[str, Any]) -> list[SubjectErased]:
        """This very request's erasures, when an earlier attempt recorded them (the one
        of the number first, then those of its other spellings)."""
        mine = [
            r.event
            for r in history
            if isinstance(r.event, SubjectErased)
            and r.event.request_id == fields["request_id"]
            and r.event.request_fingerprint == fields["request_fingerprint"]
        ]
        if not any(str(e.event_id) == str(fields["event_id"]) for e in mine):
            return []
        return sorted(mine, key=lambda e: str(e.event_id) != str(fields["event_id"]))

    async def _finished(self, earlier: list[SubjectErased], brand: str) -> Erased:
        """A retry of an erasure recorded before, whose keys may not all be destroyed
        (its attempt failed after the append): answered as that erasure, and the keys
        it named destroyed now. It is not decided again, so facts recorded since (a
        fresh opt-in, whose key it leaves alone) neither refuse it nor widen it."""
        result = await recorded_once(self.ctx, earlier)
        self.ctx.erased_here.note(
            brand, [e.phone for e in earlier], earlier[0].occurred_at, result.token
        )
        destroyed = 0
        if self.keys is not None:
            for e in earlier:
                destroyed += await self.keys.destroy(e.phone, brand, e.key_ids)
        retained_until = earlier[0].retained_until
        return Erased(result.event_ids[0], result.token, retained_until, destroyed, True)

    async def hold(self, cmd: PlaceLegalHold | ReleaseLegalHold, by: str = "") -> WriteResult:
        """Record a hold placed, or one released. Releasing a hold that does not stand
        is refused (``FAILED_PRECONDITION``), so a misspelt id cannot pass for a
        release."""
        event = hold_event(cmd, self.ctx.clock(), by)
        async with self._turn(event.phone, event.brand):
            return await self._hold(cmd, event)

    async def _hold(
        self, cmd: PlaceLegalHold | ReleaseLegalHold, event: SubscriberEvent
    ) -> WriteResult:
        if isinstance(cmd, ReleaseLegalHold):
            history = await self._everything(event.phone, event.brand)
            holds = standing_holds(history)
            if cmd.hold_id not in holds and not any(
                r.event.event_id == event.event_id for r in history
            ):
                raise Refused(
                    "hold_id",
                    f"no legal hold {cmd.hold_id!r} stands on this number for {event.brand!r}"
                    + (f" (standing: {', '.join(holds)})" if holds else ""),
                    "NO_SUCH_HOLD",
                    {"holds": ",".join(holds)},
                )
        return await recorded_once(self.ctx, [event])
