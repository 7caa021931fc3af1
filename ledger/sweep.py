"""The compliance sweep: every message of a campaign sent without what the policy
required at that moment.

A sweep reads a brand's subscriber events in ledger order, once, and keeps only the
folded state of each number (``ledger.state``), never the events themselves: a
campaign of a million messages is swept in the memory of its numbers' states.
Each ``MessageSent`` of the campaign inside the time range is judged by the
policy's own ``Check`` (``ledger.policy``) as ``CanSendAsOf`` answers for
``at = occurred_at``, ``known_at = recorded_at``, from the facts recorded before
the send: what ``CanSend`` would have said had it been asked when the message went
out, knowing what the ledger knew when it was told of it. There is no second
reading of the rules here; this module only says which answers make a finding.

A send is also set beside the answer its sender said it relied on
(``MessageSent.relied_on``): one sent without asking, or against a "not allowed",
is a finding even when the policy would have allowed it.

And a send is judged in hindsight, as the proof packet judges it
(``ledger.packet.replays``): from every fact of its number in world order
(occurred_at, then offset), the send itself left out. A fact recorded after the send
but placed before it (an opt-out reported late, an older send, a location, an
import of old facts, rules defined back in time) can make it "not allowed in
hindsight". Only numbers that had such a fact are judged again, from their whole
history (``Sweep.to_review``, ``Sweep.review``), so the sweep still holds no send.

A number spelt two ways (+54 11 ... and +54 9 11 ...) is one person, whose facts an
earlier version may have stored under the other spelling, in that spelling's
partition (``ledger.phone.line_spellings``). CanSend and the packet count them as
the number's own; so does the sweep, judging such a number's sends again from every
spelling's facts once it is told it has any (``Sweep.other_spellings``).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime

from ledger.campaigns import Campaign
from ledger.digest import digest_of, with_phone_wide
from ledger.events import (
    ANY_BRAND,
    BRAND_SETTINGS,
    CampaignEvent,
    MessageSent,
    Recorded,
    SubscriberEvent,
)
from ledger.packet import in_hindsight, replays, unmet_obligations
from ledger.phone import line_spellings
from ledger.policy import Check, Decision, Obligation, Reason, as_one_number, decide_as_of, deny
from ledger.state import CampaignHistory, SubscriberState, apply, retained_facts


class FindingKind(enum.Enum):
    """What a send lacked."""

    NO_CONSENT = "no_consent"
    """No consent of a sufficient tier for the campaign (texting first is not one, nor
    anything after an erasure but a fresh opt-in)."""
    AFTER_OPT_OUT = "after_opt_out"
    """Sent after an opt-out (or a pending or overdue one), other than the one
    confirmation it was owed."""
    QUIET_HOURS = "quiet_hours"
    """Outside the hours of the federal rule, the recipient's state or the campaign,
    or on a day the state closes, or with no time zone to tell."""
    OVER_CAP = "over_cap"
    """Over the campaign's or the recipient's state's cap."""
    AGE_UNVERIFIED = "age_unverified"
    """An age-gated campaign's message to a number not verified 21 or older."""
    OBLIGATIONS_UNMET = "obligations_unmet"
    """Allowed, but without what the message had to carry: the opt-out language of a
    first message, the sender's name, the reconfirmation that was due."""
    NOT_ALLOWED = "not_allowed"
    """Denied for another reason (content, an unowed reply, an unknown campaign)."""
    SENT_AGAINST_NOT_ALLOWED = "sent_against_not_allowed"
    """The sender says it relied on an answer that did not allow the send."""
    SENT_WITHOUT_ASKING = "sent_without_asking"
    """The sender named no answer it relied on."""


_DENIALS: dict[Reason, FindingKind] = {
    Reason.NO_CONSENT: FindingKind.NO_CONSENT,
    Reason.CONSENT_TIER_INSUFFICIENT: FindingKind.NO_CONSENT,
    Reason.CONVERSATION_WINDOW_CLOSED: FindingKind.NO_CONSENT,
    # An erasure leaves no consent until a fresh opt-in: a send after it had none.
    Reason.SUBJECT_ERASED: FindingKind.NO_CONSENT,
    Reason.REVOKED: FindingKind.AFTER_OPT_OUT,
    Reason.REVOKED_BRAND_WIDE: FindingKind.AFTER_OPT_OUT,
    Reason.REVOCATION_PENDING_REVIEW: FindingKind.AFTER_OPT_OUT,
    Reason.REVOCATION_OVERDUE: FindingKind.AFTER_OPT_OUT,
    Reason.OPT_OUT_CONFIRMATION_NOT_ALLOWED: FindingKind.AFTER_OPT_OUT,
    Reason.QUIET_HOURS: FindingKind.QUIET_HOURS,
    Reason.TIME_ZONE_UNKNOWN: FindingKind.QUIET_HOURS,
    Reason.FREQUENCY_CAP_REACHED: FindingKind.OVER_CAP,
    Reason.DAILY_CAP_REACHED: FindingKind.OVER_CAP,
    Reason.AGE_VERIFICATION_REQUIRED: FindingKind.AGE_UNVERIFIED,
}
"""The finding a denial makes; any other denial is ``NOT_ALLOWED``."""


@dataclass(frozen=True)
class Finding:
    """One send that lacked what the policy required, and every reason why: a send
    has one finding at most, which holds what it lacked as recorded and what it
    lacked in hindsight."""

    sent: Recorded
    """The ``MessageSent`` as the ledger recorded it."""
    kinds: tuple[FindingKind, ...]
    """Every kind: those of the answer as recorded and of the sender's answer, then
    those of the answer in hindsight (``hindsight_kinds``) not among them."""
    decision: Decision
    """The answer the finding stands on: the one in hindsight when ``hindsight``,
    else the one ``CanSend`` gives for the moment of the send (``Sweep``)."""
    unmet: tuple[Obligation, ...] = ()
    """The obligations of an allowed ``decision`` that the send says it did not meet."""
    hindsight: bool = False
    """The answer is one in hindsight: from every fact of the number the sweep read,
    the send itself left out, as the proof packet's ``hindsight`` (``Sweep.review``):
    a fact recorded after the send but placed before it in world order made it not
    allowed."""
    as_recorded: Decision | None = None
    """With ``hindsight``: the answer as recorded, for the moment of the send from
    what the ledger knew then (``decision`` is that answer otherwise)."""
    hindsight_kinds: tuple[FindingKind, ...] = ()
    """With ``hindsight``: the kinds of the answer in hindsight."""

    @property
    def message(self) -> MessageSent:
        event = self.sent.event
        assert isinstance(event, MessageSent)
        return event

    @property
    def evidence(self) -> tuple[str, ...]:
        """The send's own id, then the ids of the events the answer stands on."""
        return (str(self.sent.event.event_id), *self.decision.evidence)


def judge(recorded: Recorded, decision: Decision) -> Finding | None:
    """The finding ``decision`` (the answer for the send's moment) makes of the send
    ``recorded``, or None when the send lacked nothing."""
    message = recorded.event
    assert isinstance(message, MessageSent)
    kinds: list[FindingKind] = []
    unmet: tuple[Obligation, ...] = ()
    if not decision.allowed:
        kinds.append(_DENIALS.get(decision.reason, FindingKind.NOT_ALLOWED))
    else:
        unmet = unmet_obligations(decision, message)
        if unmet:
            kinds.append(FindingKind.OBLIGATIONS_UNMET)
    relied = message.relied_on
    if relied is None:
        kinds.append(FindingKind.SENT_WITHOUT_ASKING)
    elif not relied.allowed:
        kinds.append(FindingKind.SENT_AGAINST_NOT_ALLOWED)
    if not kinds:
        return None
    return Finding(recorded, tuple(kinds), decision, unmet)


_EMPTY = SubscriberState()


class Sweep:
    """A sweep of one campaign of a brand over ``[start, end)`` of world time.

    ``feed`` it the brand's subscriber events in ledger order (each partition's in
    offset order; the events of one number share a partition), including those of
    the numbers' unknown brand (``ANY_BRAND``), and events of every other campaign:
    an opt-out of one campaign, a send of another, count for this one. Events of
    other brands are skipped. ``history`` holds the campaign's rules and its brand's
    settings; campaign events fed in are added to it.
    """

    def __init__(
        self,
        history: CampaignHistory,
        brand: str,
        campaign: str,
        start: datetime,
        end: datetime,
        now: datetime | None = None,
    ) -> None:
        if start.tzinfo is None or end.tzinfo is None:
            raise ValueError("start and end must be timezone-aware")
        self.history = history
        self.brand = brand
        self.campaign = campaign
        self.start = start
        self.end = end
        self.now = now
        """When the sweep reads: the answers in hindsight are known then, or as of
        the latest fact read when that is later (None: as of that fact)."""
        self.events_read = 0
        self.sends_judged = 0
        self._states: dict[str, SubscriberState] = {}
        self._wide: dict[str, SubscriberState] = {}
        # Per number, the latest occurred_at and recorded_at of what its states hold:
        # while neither is past the send's moment, the states are exactly what
        # ``decide_as_of`` would fold, and the decision is asked of them directly.
        self._latest: dict[str, tuple[datetime, datetime]] = {}
        # Per number, its facts other than sends: the fold keeps only the latest of
        # each kind, and a send stamped before a later fact is judged without that
        # fact, by the one before it. Sends the fold keeps (those a cap can count).
        self._facts: dict[str, list[Recorded]] = {}
        self._rules: dict[tuple[str, datetime | None], Campaign] = {}
        # Per number, the latest world time of its sends judged so far: a fact fed
        # after them that is placed at or before it may change them in hindsight.
        self._judged_until: dict[str, datetime] = {}
        self._review: set[str] = set()
        self._spellings: dict[str, tuple[str, ...]] = {}
        # The findings as recorded, by the send's event id, until ``finish`` adds
        # what a fact recorded after a send shows of it.
        self._found: dict[str, Finding] = {}
        self._rule_times = _times(history)
        self._known = max((known for _, known in self._rule_times), default=None)

    @property
    def to_review(self) -> frozenset[str]:
        """The numbers with a send judged that a fact recorded after it may make not
        allowed in hindsight: a fact of the number placed at or before the send in
        world order (whichever of its occurred_at and recorded_at is earlier, as the
        proof packet reads it), or the campaign's rules recorded after the send for
        its moment. Each is judged again from its whole history (``review``)."""
        return frozenset(self._review)

    def feed(self, recorded: Recorded) -> Finding | None:
        """Take the next event; the finding it makes as recorded, if it is a send that
        lacked something. ``finish`` gives it again, with what it lacked in hindsight."""
        self.events_read += 1
        event = recorded.event
        if self._known is None or recorded.recorded_at > self._known:
            self._known = recorded.recorded_at
        if not isinstance(event, SubscriberEvent):
            if (
                isinstance(event, CampaignEvent)
                and event.brand == self.brand
                and event.campaign in (self.campaign, BRAND_SETTINGS)
            ):
                self.history = self.history.with_event(recorded)
                self._rule_times = _times(self.history)
            return None
        phone = event.phone
        if event.brand == ANY_BRAND:
            states = self._wide
        elif event.brand == self.brand:
            states = self._states
        else:
            return None
        judged_until = self._judged_until.get(phone)
        if judged_until is not None and _placed_at(recorded) <= judged_until:
            self._review.add(phone)
        finding = None
        if (
            isinstance(event, MessageSent)
            and event.campaign == self.campaign
            and event.brand == self.brand
            and self.start <= event.occurred_at < self.end
        ):
            self.sends_judged += 1
            finding = judge(recorded, self.decision(recorded))
            if finding is not None:
                self._found[str(event.event_id)] = finding
            if phone not in self._spellings:
                others = line_spellings(phone)
                if len(others) > 1:
                    self._spellings[phone] = tuple(f for f in others if f != phone)
            if self._may_change(recorded):
                self._review.add(phone)
            if judged_until is None or event.occurred_at > judged_until:
                self._judged_until[phone] = event.occurred_at
        states[phone] = apply(states.get(phone, _EMPTY), recorded)
        if not isinstance(event, MessageSent):
            self._facts.setdefault(phone, []).append(recorded)
        latest = self._latest.get(phone)
        if latest is None:
            self._latest[phone] = (event.occurred_at, recorded.recorded_at)
        else:
            self._latest[phone] = (
                max(latest[0], event.occurred_at),
                max(latest[1], recorded.recorded_at),
            )
        return finding

    def _may_change(self, send: Recorded) -> bool:
        """Whether something fed before ``send`` comes after it in the ledger yet is
        placed at or before it (the STOPs of an unknown brand are fed first), or the
        rules for its moment were recorded after it."""
        message = send.event
        assert isinstance(message, MessageSent)
        at, known, here = message.occurred_at, send.recorded_at, _ledger_order(send)
        facts = self._facts.get(message.phone, ()) if message.phone in self._wide else ()
        if any(_ledger_order(f) > here and _placed_at(f) <= at for f in facts):
            return True
        return any(recorded > known and occurred <= at for occurred, recorded in self._rule_times)

    @property
    def other_spellings(self) -> Mapping[str, tuple[str, ...]]:
        """Per number with a send judged whose line is spelt other ways too
        (``ledger.phone.line_spellings``), those spellings. Facts an earlier version
        stored under one of them are the person's, as CanSend and the proof packet
        count them, but sit in that spelling's partition, which the sweep reads apart:
        a number that has any is judged again from them all (``finish``)."""
        return self._spellings

    def review(self, phone: str, history: Iterable[Recorded]) -> list[Finding]:
        """The findings in hindsight of the sends of ``phone`` (one of ``to_review``):
        ``history`` holds its subscriber events, those of the unknown brand too, as
        the sweep read them (any order). Each send of the campaign in the range is
        judged as the proof packet judges it (``ledger.packet.replays``), from every
        fact of the number, the send itself left out; one whose answer in hindsight
        tells otherwise than the answer as recorded, and does not allow it, is found
        with ``hindsight`` set. A reply recorded before the HELP or opt-out it answered,
        owed in hindsight (``ledger.packet.replays``), is judged by that answer
        alone: found only for what else it lacked.

        When ``history`` also holds facts of the number's other spellings
        (``other_spellings``), the packet counts them as the number's, and so is
        each send of ``phone`` judged: as recorded as well as in hindsight, each
        finding whole, in place of what the sweep found of it from ``phone``'s
        facts alone."""
        return [f for f in self._judged_again(phone, history)[1] if f.kinds]

    def _judged_again(self, phone: str, history: Iterable[Recorded]) -> tuple[bool, list[Finding]]:
        """``review``, and whether it read other spellings' facts too."""
        spellings = {phone, *self._spellings.get(phone, ())}
        subscriber = sorted(
            (
                r
                for r in history
                if isinstance(r.event, SubscriberEvent)
                and r.event.phone in spellings
                and r.event.brand in (self.brand, ANY_BRAND)
            ),
            key=_ledger_order,
        )
        as_one = any(getattr(r.event, "phone", phone) != phone for r in subscriber)
        wanted = {
            str(r.event.event_id): r
            for r in subscriber
            if isinstance(r.event, MessageSent)
            and r.event.phone == phone
            and r.event.brand == self.brand
            and r.event.campaign == self.campaign
            and self.start <= r.event.occurred_at < self.end
        }
        if not wanted:
            return as_one, []
        if as_one:
            # Put together as the packet does: ledger order, as the ledger took the
            # two partitions' facts, each as if recorded under the spelling kept.
            subscriber = as_one_number(subscriber, line_spellings(phone)[0])
        rules = self.history.facts()
        # Everything the sweep read was known when it read it, even under a clock
        # behind a writer's (``now`` is only ever later in a running service).
        read = [r.recorded_at for r in [*subscriber, *rules]]
        known = max(t for t in [*read, self.now, self._known] if t is not None)
        findings = []
        for event_id, (then, later) in replays(subscriber, rules, known, set(wanted)).items():
            sent = wanted[event_id]
            changed = in_hindsight(then, later)
            late = None
            if changed is not None and changed.allowed:
                # A reply recorded before the HELP or opt-out it answered (the one send a
                # later fact allows, ``replays``): judged by the answer in hindsight,
                # which CanSend counts it by, in place of the one as recorded.
                # So is a send that owed more in hindsight than as recorded.
                owed = judge(sent, changed)
                kinds, unmet = (owed.kinds, owed.unmet) if owed else ((), ())
                late = Finding(sent, kinds, changed, unmet, True, then)
            elif changed is not None:
                kinds = (_DENIALS.get(changed.reason, FindingKind.NOT_ALLOWED),)
                late = Finding(sent, kinds, changed, (), True, then, kinds)
            if as_one and (late is None or not late.decision.allowed):
                # The answer as recorded from one spelling's facts missed the other's.
                found = judge(sent, then)
                if found is not None and late is not None:
                    found = _with_hindsight(found, late)
                late = found or late
            if late is not None:
                findings.append(late)
        return as_one, sorted(findings, key=lambda f: _ledger_order(f.sent))

    def finish(self, histories: Mapping[str, Iterable[Recorded]]) -> list[Finding]:
        """Every finding of the sweep, one per send, in ledger order: those as
        recorded, each with the reasons in hindsight of its send added, and the
        sends found in hindsight alone. ``histories``: the events of each number of
        ``to_review``, as ``review`` takes them; and of each number of
        ``other_spellings`` whose other spellings hold facts, with those facts."""
        found = dict(self._found)
        spelt = {
            phone
            for phone, others in self._spellings.items()
            if any(getattr(r.event, "phone", None) in others for r in histories.get(phone, ()))
        }
        for phone in sorted(self.to_review | spelt):
            as_one, findings = self._judged_again(phone, histories.get(phone, ()))
            if as_one:
                # Judged whole from every spelling's facts: what was found from this
                # spelling's alone gives way, found or not.
                for key in [k for k, f in found.items() if f.message.phone == phone]:
                    del found[key]
                found.update((str(f.sent.event.event_id), f) for f in findings if f.kinds)
                continue
            for late in findings:
                key = str(late.sent.event.event_id)
                then = found.get(key)
                if late.decision.allowed:  # owed in hindsight: it stands for the send
                    if late.kinds:
                        found[key] = late
                    else:
                        found.pop(key, None)
                    continue
                if then is not None:
                    late = _with_hindsight(then, late)
                found[key] = late
        return sorted(found.values(), key=lambda f: _ledger_order(f.sent))

    def decision(self, recorded: Recorded) -> Decision:
        """What ``CanSendAsOf`` answers for the send ``recorded`` (at its occurred_at,
        known at its recorded_at) from the facts fed before it."""
        message = recorded.event
        assert isinstance(message, MessageSent)
        phone, moment, known = message.phone, message.occurred_at, recorded.recorded_at
        state = self._states.get(phone, _EMPTY)
        wide = self._wide.get(phone)
        latest = self._latest.get(phone)
        if latest is not None and (latest[0] > moment or latest[1] > known):
            # A fact stamped after the send (a clock ahead, a late import): leave out
            # what the moment did not know, exactly as the audit answer does.
            sends = [r for r in retained_facts(state) if isinstance(r.event, MessageSent)]
            # In ledger order: the fold grants a reply owed once to the first after its
            # request in that order (``ledger.state._owed_reply``), not to the first
            # send folded after every other fact.
            kept = sorted([*self._facts.get(phone, ()), *sends], key=_ledger_order)
            facts = [*kept, *self.history.facts()]
            return decide_as_of(facts, self.campaign, moment, known, message.kind)
        rules = self._rules_at(moment, known)
        if rules is None:
            return deny(
                Reason.CAMPAIGN_UNKNOWN, f"campaign {self.campaign!r} was not defined at that time"
            )
        digest = digest_of(state)
        if wide is not None:
            merged = with_phone_wide(digest, digest_of(wide))
            assert merged is not None
            digest = merged
        return Check(rules, moment, message.kind)(digest)

    def _rules_at(self, moment: datetime, known: datetime) -> Campaign | None:
        """The rules in force at ``moment`` as known at ``known``; one object per
        version, so the policy's per-rules caches serve every send under it."""
        found = self.history.as_of(moment, known)
        if found is None:
            return None
        key = (found.policy_event_id, found.revoke_all_since)
        kept = self._rules.get(key)
        if kept is None or kept.policy_version != found.policy_version:
            self._rules[key] = kept = found
        return kept


def _with_hindsight(then: Finding, late: Finding) -> Finding:
    """One send's finding as recorded (``then``) with what a finding in hindsight of
    it (``late``) adds: its answer, and its kinds after those already found."""
    added = tuple(k for k in late.kinds if k not in then.kinds)
    return dataclasses.replace(
        late, kinds=then.kinds + added, unmet=then.unmet, as_recorded=then.decision
    )


def _ledger_order(recorded: Recorded) -> tuple[int, int]:
    return (recorded.position.partition, recorded.position.offset)


def _times(history: CampaignHistory) -> list[tuple[datetime, datetime]]:
    """When each of the rules' facts occurred and was recorded."""
    return [(r.event.occurred_at, r.recorded_at) for r in history.facts()]


def _placed_at(recorded: Recorded) -> datetime:
    """Where a fact stands in world time for the answers of the sends before it in
    the ledger: when it occurred, or when it was recorded if that is earlier, as the
    proof packet reads it (``ledger.packet.replays``)."""
    return min(recorded.event.occurred_at, recorded.recorded_at)


def sweep(
    events: Iterable[Recorded],
    history: CampaignHistory,
    brand: str,
    campaign: str,
    start: datetime,
    end: datetime,
    now: datetime | None = None,
) -> Iterator[Finding]:
    """Every finding of a ``Sweep`` of ``events``, one per send (``Sweep.finish``),
    once the events are read: a fact recorded after a send may add to its finding.
    The events are held as they pass, for the numbers the sweep judges again."""
    swept = Sweep(history, brand, campaign, start, end, now)
    held = []
    for recorded in events:
        held.append(recorded)
        swept.feed(recorded)
    spellings = {p: {p, *swept.other_spellings.get(p, ())} for p in swept.to_review}
    spellings.update((p, {p, *others}) for p, others in swept.other_spellings.items())
    histories = {
        p: [r for r in held if getattr(r.event, "phone", None) in forms]
        for p, forms in spellings.items()
    }
    yield from swept.finish(histories)
