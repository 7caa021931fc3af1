"""Recording many messages sent in one call (``RecordMessagesSent``).

Each message becomes the ``MessageSent`` that ``RecordMessageSent`` would record
for it, read by the fold, the sweep and every other reader as such; the call is one
request (one request id, taken once) whose events go to the ledger in one append.
What costs a single write a round trip per check here costs one per call: the
request id, the message ids recorded before, each campaign named, the exemptions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial

from ledger.commands import RecordMessagesSent, to_events
from ledger.digest import digest_of
from ledger.errors import InvalidRequest
from ledger.events import (
    LedgerEvent,
    LedgerPosition,
    MessageSent,
    Recorded,
    content_differences,
    evolved,
    message_contents,
)
from ledger.phone import forms_stored_before
from ledger.policy import earns_exemption
from ledger.ports import (
    TOO_LARGE,
    ConsistencyToken,
    EventTooLarge,
    MessageClaim,
    RequestTaken,
    RequestUse,
)
from ledger.state import COUNTED_KINDS, apply
from services.errors import FailedPrecondition, MessageIdReused, NotConsistent, refuse_every
from services.usecases.context import BEHIND, Context
from services.usecases.requests import (
    LATE_TO_APPEND,
    RequestTurns,
    as_it_lands,
    as_recorded_after_take_over,
    claimed_sends_applied,
    landing_wait_s,
    recorded_as_spelled,
    refuse_another_claim,
    refuse_another_message,
    refuse_another_request,
    take_over_lapsed_claims,
    too_late_to_append,
    unless_gone,
    unwritten,
    use_standing,
)
from services.usecases.spellings import earlier_message_uses, state_as_one


def _refuse_too_large(
    exc: EventTooLarge, events: Sequence[MessageSent], new: Sequence[MessageSent]
) -> None:
    """``InvalidRequest`` naming each message of the call whose fact the ledger refused
    as too large before appending any (``exc.places``, in ``new``), so the caller
    learns which; an ``exc`` that names none is left to be raised as it is."""
    if not exc.places:
        return
    place: dict[tuple[str, str], int] = {}
    for i, event in enumerate(events):
        place.setdefault((event.phone, event.message_id), i)
    (field, reason), *more = [
        (f"messages[{i}]", f"{TOO_LARGE} ({exc})")
        for i in sorted(place[new[j].phone, new[j].message_id] for j in exc.places)
    ]
    raise InvalidRequest(field, reason, *more) from exc


@dataclass(frozen=True)
class SendsResult:
    event_ids: list[str]
    """Per message, in the call's order, its ``MessageSent``: the first one's when its
    message id was recorded before for the phone."""
    token: ConsistencyToken
    appended: int
    """How many events this call appended (0 for a retry the view has applied)."""


_UNAPPENDED = 2**62
"""The offsets a call's messages are folded at before they are appended: past any a
ledger gives, so they follow the phone's recorded facts of the same moment."""

CALLS_AT_ONCE = 2
"""Calls a process works on at once; the others wait their turn before any read. Two
keep the CPU busy while one waits for the database or the broker; more would only
interleave their CPU, and a call's reads would wait behind the others' validation past
the database's time limit."""


def _stamped(cmd: RecordMessagesSent, now: datetime, recorded_by: str) -> list[LedgerEvent]:
    """``cmd``'s facts, each with ``recorded_by`` set (as they are when it is empty)."""
    events = to_events(cmd, now)
    return [evolved(e, recorded_by=recorded_by) for e in events] if recorded_by else events


def _split(
    events: Sequence[MessageSent],
    keys: Sequence[tuple[str, str]],
    known: dict[tuple[str, str], str],
) -> tuple[list[str], list[MessageSent]]:
    """Per message, the event id that answers it (the first one recorded under its
    message id, in the view or earlier in the call), and the messages to append."""
    answer: list[str] = []
    new: list[MessageSent] = []
    first_in_call: dict[tuple[str, str], str] = {}
    for event, key in zip(events, keys, strict=True):
        earlier = known.get(key) or first_in_call.get(key)
        if earlier is not None:
            answer.append(earlier)
            continue
        first_in_call[key] = str(event.event_id)
        answer.append(str(event.event_id))
        new.append(event)
    return answer, new


def _refusing(
    new: Sequence[MessageSent],
    held: dict[tuple[str, str], MessageClaim],
    place: dict[int, int],
) -> list[tuple[MessageSent, str, str]]:
    """Each of ``new`` whose message another send claimed saying something else of it
    (``refuse_another_claim``), with that send's event id and the message's field."""
    refusing = []
    for event in new:
        claim = held.get((event.phone, event.message_id))
        if (
            claim is not None
            and claim.event_id != str(event.event_id)
            and claim.content is not None
            and content_differences(claim.content, event)
        ):
            refusing.append((event, claim.event_id, f"messages[{place[id(event)]}].message_id"))
    return refusing


class Sends:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._turns = asyncio.Semaphore(CALLS_AT_ONCE)
        self._requests = RequestTurns()

    async def record(self, cmd: RecordMessagesSent, *, recorded_by: str = "") -> SendsResult:
        async with self._turns:
            sent = await self._requests.one_at_a_time(
                cmd.brand, cmd.request_id, lambda: self._record(cmd, recorded_by)
            )
        # Messages answered as sent before (perhaps through another instance a moment
        # ago) are read as this instance's own writes, as those it appended are.
        self.ctx.guard.acknowledged(sent.token)
        return sent

    async def _record(
        self, cmd: RecordMessagesSent, recorded_by: str, *, again: bool = False
    ) -> SendsResult:
        """Validate every message (any bad field refuses the call, nothing written),
        then append the messages not recorded before, in one append, in the order
        they went out (``occurred_at``; the call's order among equals).

        A message whose provider message id the view has recorded for its phone is
        that message (``RecordMessageSent``'s rule): answered with the first one's
        event id, not written. A retry of the call (its request id taken by this very
        request) lets the view reach the ledger's end on the phones' partitions
        first, once no append of this process is on its way (``EventLog.settled``), so
        what its first attempt appended is found, not appended again, looked for as
        the ledger grows (``landing_wait_s``: that attempt may be another
        instance's, its append on its way); when the view cannot get there in time
        it is refused ``NotConsistent``, unless the ledger stores an event once by
        itself (``EventLog.stores_events_once``). A call that finds its request id
        free, then taken by another attempt when it takes it, is made again as that
        retry. The
        new messages' ids are claimed as a single send claims its one; only messages
        another send claimed first make the call wait for the view on their phones.
        A copy the view cannot reach in time is appended, and the projection applies
        one ``MessageSent`` per message id, so it never counts twice."""
        # A thousand messages are some 100 ms of validation: in a thread, so the event
        # loop (CanSend, this call's own reads) gets its turns meanwhile.
        sent = await asyncio.to_thread(_stamped, cmd, self.ctx.clock(), recorded_by)
        events: list[MessageSent] = [e for e in sent if isinstance(e, MessageSent)]
        await self.ctx.refuse_relied_past_the_end(
            [
                (f"messages[{i}].relied_on.consistency_token", e.relied_on)
                for i, e in enumerate(events)
            ]
        )
        spelled = await recorded_as_spelled(self.ctx, cmd, events)
        if spelled is not None:
            return SendsResult(spelled.event_ids, spelled.token, 0)
        use = await self.ctx.view.request_use(cmd.brand, cmd.request_id)
        if use is not None:
            refuse_another_request(events[0], use)
        keys = [(e.phone, e.message_id) for e in events]
        known = await self._known(cmd.brand, keys)
        if use is not None and len(known) < len(set(keys)):
            # A retry: its first attempt may be in the ledger, not yet in the view, or
            # on its way still (through another instance: looked for as it lands, as
            # a single request's is, ``stored_or_landing``). Appended again blind,
            # Kafka would hold it twice.
            once = self.ctx.ledger.stores_events_once
            if not once:
                await self.ctx.ledger.settled()
            phones = sorted({e.phone for e in events})
            known, caught_up = await as_it_lands(
                partial(self.ctx.guard.wait_until_applied_for, phones),
                partial(self._known, cmd.brand, keys),
                lambda found: once or len(found) == len(set(keys)),
                landing_wait_s(self.ctx),
                known,
            )
            if not caught_up and not once:
                raise NotConsistent("request_id", BEHIND)
        answer, new = _split(events, keys, known)
        contested: list[MessageSent] = []
        made: list[MessageSent] = []  # the messages whose ids this call claims
        # A message recorded before with other content refuses the call before any
        # of its messages' ids is claimed, so a refused call leaves no claims behind.
        earlier = await self._recorded_as_said(events, answer, new)
        if new:
            await self._check_campaigns(new, events)
            # Claim the new messages' ids as a single send does (``take_request``), so a
            # single send of one of them a moment later waits for the view and is
            # answered as this one. A claim another send holds with other content
            # refuses the call (the view claims none of them then); one with the same
            # may have been recorded a moment ago: the view is let reach the ledger on
            # those phones, and asked.
            contents = message_contents(new)
            made = list(new)
            mine = [
                (e.phone, e.message_id, str(e.event_id), content)
                for e, content in zip(new, contents, strict=True)
            ]
            asked = asyncio.get_running_loop().time()  # before the claims
            held = await unless_gone(
                self.ctx.view.claim_messages(cmd.brand, mine),
                lambda _: self._release_message_ids(cmd, events[0], made),
            )
        # Each (phone, message id) whose lapsed claim the call took over, to its field:
        # named now, as the message may be made anew when judged for an exemption.
        taken_over: dict[tuple[str, str], str] = {}
        try:
            if made:
                place = {id(e): i for i, e in enumerate(events)}
                refusing = _refusing(new, held, place)
                lapses_in: dict[tuple[str, str], float] = {}
                if refusing:
                    # Claims of other sends that say something else of these messages
                    # refuse the call, unless those sends provably were never written
                    # (their instance died before appending): then the call takes them
                    # over, and claims its messages again.
                    over = await take_over_lapsed_claims(self.ctx, cmd.brand, refusing)
                    lapses_in = over.lapses_in
                    taken_over = {
                        (e.phone, e.message_id): field
                        for e, _, field in refusing
                        if (e.phone, e.message_id) in over.taken
                    }
                    if taken_over:
                        asked = asyncio.get_running_loop().time()
                        held = await unless_gone(
                            self.ctx.view.claim_messages(cmd.brand, mine),
                            lambda _: self._release_message_ids(cmd, events[0], made),
                        )
                        refusing = _refusing(new, held, place)
                refused = []
                for event, holder, field in refusing:
                    try:
                        content = held[(event.phone, event.message_id)].content
                        lapse = lapses_in.get((event.phone, event.message_id))
                        refuse_another_claim(event, holder, content, field, lapse)
                    except MessageIdReused as exc:
                        refused.append(exc)
                refuse_every(refused)
                for event in new:
                    claim = held.get((event.phone, event.message_id))
                    if claim is None or claim.event_id != str(event.event_id):
                        contested.append(event)  # another send's, saying the same
                if contested and await claimed_sends_applied(
                    self.ctx, cmd.brand, [(e.phone, e.message_id) for e in contested]
                ):
                    known = await self._known(cmd.brand, keys)
                    answer, new = _split(events, keys, known)
                    earlier = await self._recorded_as_said(events, answer, new)
            token = ConsistencyToken.after(list(earlier.values()))
            if not new:
                return SendsResult(answer, token, 0)
            # In the order the messages went out (the call's among equals): the sweep, the
            # packet and the fold's exemptions read a number's sends in ledger order, and
            # a call naming them newest first put each before the older ones it follows,
            # so none was ever judged over a cap they passed together.
            new = sorted(new, key=lambda e: e.occurred_at)
            new = await self._with_exemptions(new)
            fingerprint = events[0].request_fingerprint
            taken = await unless_gone(
                self.ctx.view.take_request(cmd.brand, cmd.request_id, fingerprint, answer),
                partial(self._give_up_request_id, cmd, use, fingerprint, answer),
            )
            claimed = await use_standing(
                self.ctx, taken, cmd.brand, cmd.request_id, fingerprint, answer
            )
        except (Exception, asyncio.CancelledError):
            # Failed between its claims (a passing failure, or the caller gone): the
            # message ids it took, kept, named sends never written, and a changed send
            # of those messages under another request id was refused as a reuse until
            # this request came back.
            if made:
                await self._release_message_ids(cmd, events[0], made)
            raise
        if claimed.fingerprint != events[0].request_fingerprint:
            await self._release_message_ids(cmd, events[0], new)
        refuse_another_request(events[0], claimed)
        if use is None and not taken.taken and not again:
            # Another attempt of this call (through another instance) took its request
            # id since this one looked: its append may be on its way. Made again as
            # its retry, which looks for it as it lands and claims the messages anew.
            return await self._record(cmd, recorded_by, again=True)
        if made and too_late_to_append(self.ctx, asked):
            if use is None:  # else an earlier attempt holding them may be appending
                await self.ctx.view.release_claims(
                    cmd.brand,
                    (cmd.request_id, events[0].request_fingerprint, answer),
                    [(e.phone, e.message_id, str(e.event_id)) for e in made],
                )
            raise NotConsistent("messages", LATE_TO_APPEND)
        try:
            recorded = await self.ctx.ledger.append(new)
        except EventTooLarge as exc:
            if use is None and unwritten(exc, new):
                # The request id and the message ids were this call's to take (no
                # earlier attempt had them): refused whole, it leaves them free, or its
                # corrected retry would be refused as a reuse of them for good.
                await self.ctx.view.release_claims(
                    cmd.brand,
                    (cmd.request_id, events[0].request_fingerprint, answer),
                    [(e.phone, e.message_id, str(e.event_id)) for e in new],
                )
            _refuse_too_large(exc, events, new)
            raise
        if taken_over:
            over_sent = [e for e in new if (e.phone, e.message_id) in taken_over]
            await as_recorded_after_take_over(
                self.ctx, over_sent, [taken_over[(e.phone, e.message_id)] for e in over_sent]
            )
        token = token.merge(ConsistencyToken.after(recorded))
        contested_keys = {(e.phone, e.message_id) for e in contested}
        copies = [e for e in new if (e.phone, e.message_id) in contested_keys]
        if copies:
            answer, token = await self._as_the_sends_applied(cmd.brand, answer, copies, token)
        return SendsResult(answer, token, len(recorded))

    async def _give_up_request_id(
        self,
        cmd: RecordMessagesSent,
        before: RequestUse | None,
        fingerprint: str,
        answer: list[str],
        taken: RequestTaken,
    ) -> None:
        """Give up the request id this call took (``taken``) as its caller went away:
        kept, it kept the call's message ids too (an attempt holding the request id
        may be appending them), and they named sends never written. One an earlier
        attempt took (``before``, or another attempt at once) is kept."""
        if before is None and taken.taken:
            await self.ctx.view.release_claims(cmd.brand, (cmd.request_id, fingerprint, answer), [])

    async def _release_message_ids(
        self, cmd: RecordMessagesSent, first: MessageSent, new: Sequence[MessageSent]
    ) -> None:
        """Give up the message ids this call claimed for ``new`` once another request
        took its request id between its two claims: kept, they named sends never
        written, and a corrected send of one of those messages under a new request id
        was refused as saying something else of it. Only a claim that still names this
        call's own event id is given up, and none while an attempt of this request
        holds the request id (another request's first use of it given up since, as
        one refused as too large is): that attempt may be appending them."""
        use = await self.ctx.view.request_use(cmd.brand, cmd.request_id)
        if use is not None and use.fingerprint == first.request_fingerprint:
            return
        await self.ctx.view.release_claims(
            cmd.brand, None, [(e.phone, e.message_id, str(e.event_id)) for e in new]
        )

    async def _as_the_sends_applied(
        self,
        brand: str,
        answer: list[str],
        copies: Sequence[MessageSent],
        token: ConsistencyToken,
    ) -> tuple[list[str], ConsistencyToken]:
        """``answer`` with each of ``copies`` (messages another send claimed first,
        appended all the same) answered as the send the view applied, as a single
        send's copy is (``requests._as_the_send_applied``): should the first reach the
        ledger ahead of the copy, the copy's own id is one no reader shows, and its
        retry would answer the first's. ``answer`` as it is when the view cannot get
        there in time."""
        if not await self.ctx.guard.wait_until_applied_for(sorted({e.phone for e in copies})):
            return answer, token
        applied = await self._known(brand, [(e.phone, e.message_id) for e in copies])
        instead: dict[str, str] = {}
        for copy in copies:
            first = applied.get((copy.phone, copy.message_id))
            if first is not None and first != str(copy.event_id):
                instead[str(copy.event_id)] = first
        if not instead:
            return answer, token
        recorded = await self.ctx.view.find_events(sorted(set(instead.values())))
        if len(recorded) < len(set(instead.values())):  # mid-rebuild: its own ids stand
            return answer, token
        answered = [instead.get(event_id, event_id) for event_id in answer]
        return answered, token.merge(ConsistencyToken.after(list(recorded.values())))

    async def _known(
        self, brand: str, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], str]:
        """The first send of each of ``keys`` (phone, message id) the view holds, under
        the phone's own spelling or one an earlier version kept it under."""
        known = await self.ctx.view.message_uses(brand, keys)
        missing = [k for k in keys if k not in known]
        return {**await earlier_message_uses(self.ctx.view, brand, missing), **known}

    async def _recorded_as_said(
        self, events: Sequence[MessageSent], answer: Sequence[str], new: Sequence[MessageSent]
    ) -> dict[str, Recorded]:
        """The events recorded before that ``answer`` names, by id; ``MessageIdReused``
        naming each of ``events`` that says something else of its message than its."""
        ours = {str(e.event_id) for e in new}
        earlier = await self._recorded({i for i in answer if i not in ours})
        refused = []
        for i, (event, event_id) in enumerate(zip(events, answer, strict=True)):
            if event_id in earlier:  # recorded before: the same message, or refused
                try:
                    refuse_another_message(
                        event, earlier[event_id].event, event_id, f"messages[{i}].message_id"
                    )
                except MessageIdReused as exc:
                    refused.append(exc)
        refuse_every(refused)
        return earlier

    async def _recorded(self, event_ids: set[str]) -> dict[str, Recorded]:
        """The events recorded before that the answer names, by id."""
        if not event_ids:
            return {}
        found = await self.ctx.view.find_events(sorted(event_ids))
        if len(found) < len(event_ids):  # the view reads them in one transaction: mid-rebuild
            raise NotConsistent("messages", BEHIND)
        return found

    async def _check_campaigns(
        self, new: Sequence[MessageSent], every: Sequence[MessageSent]
    ) -> None:
        """Every campaign the new messages name is defined (counting a definition
        acknowledged a moment ago), else ``FailedPrecondition`` naming every message
        that names one that is not, in the call's order: a caller told of one at a
        time would find the next only on its next try."""
        place = {id(e): i for i, e in enumerate(every)}
        known: dict[str, bool] = {}
        undefined: list[tuple[int, str]] = []
        for event in new:
            if event.campaign not in known:
                known[event.campaign] = await self.ctx.campaign_known(event.brand, event.campaign)
            if not known[event.campaign]:
                undefined.append(
                    (place[id(event)], f"{event.brand}/{event.campaign} is not defined")
                )
        if undefined:
            (field, reason), *more = [(f"messages[{i}].campaign", r) for i, r in sorted(undefined)]
            raise FailedPrecondition(field, reason, more=more)

    async def _with_exemptions(self, new: list[MessageSent]) -> list[MessageSent]:
        """Replies that may escape the caps, each with whether it earned that when it
        was sent, read as fresh as CanSend reads (``Writes._with_exemption``, for all
        of them at once): one that did not, or whose facts cannot be read fresh,
        counts like any other message. Each is judged after the messages ``new`` holds
        before it (sent before it), as if each had been sent alone in turn: a HELP
        earns one reply, not one per message of the call."""
        replying = sorted({e.phone for e in new if e.kind not in COUNTED_KINDS})
        if not replying:
            return new
        earlier = {n: forms for n in replying if (forms := forms_stored_before(n))}
        spellings = [*replying, *(f for forms in earlier.values() for f in forms)]
        if not await self.ctx.guard.wait_for_phones(spellings):
            return [e if e.kind in COUNTED_KINDS else replace(e, exempt=False) for e in new]
        states = await self.ctx.view.subscriber_states(new[0].brand, replying)
        for number in earlier:  # what an earlier version kept under its other spelling
            states[number] = (await state_as_one(self.ctx.view, number, new[0].brand)).state
        now = self.ctx.clock()
        judged: list[MessageSent] = []
        for place, event in enumerate(new):
            if event.phone not in states:
                judged.append(event)
                continue
            if event.kind not in COUNTED_KINDS:
                history = await self.ctx.rules.campaign_history(event.brand, event.campaign)
                rules = history.as_of(event.occurred_at)
                digest = digest_of(states[event.phone])
                event = replace(
                    event,
                    exempt=rules is not None
                    and earns_exemption(digest, rules, event.occurred_at, event.kind),
                )
            judged.append(event)
            # Not appended yet: placed after every fact of the phone, in call order.
            position = LedgerPosition(-1, _UNAPPENDED + place)
            states[event.phone] = apply(states[event.phone], Recorded(event, position, now))
        return judged
