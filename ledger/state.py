"""State is a pure fold of recorded events, one mutator per event type.

The fold works in *world* order: of two facts about the same consent, the one
that happened later wins, whatever order the ledger learned them in. A web form
imported an hour late therefore cannot undo an opt-out that happened in between.
Ties (the same instant) go to the revocation, so doubt always denies.

Because every field keeps "the latest fact by (occurred_at, offset)" or a set of
facts, folding is insensitive to how events are batched, and a replay of the same
events gives an equal state. Of the opt-outs, the latest by the time each said
(``stated_key``) is kept as well: a consent outranks an opt-out only when it is the
later by place and by the times each said.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cached_property
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from ledger.campaigns import (
    MAX_CAP_WINDOW,
    MAX_OPT_OUT_CONFIRMATION_WINDOW,
    Campaign,
    CampaignPolicy,
    ReplyWindows,
)
from ledger.events import (
    MAX_CLOCK_SKEW,
    AgeVerified,
    BrandPolicySet,
    CampaignDefined,
    CampaignEvent,
    CampaignPolicyChanged,
    ConsentGranted,
    ConsentReconfirmed,
    ConsentResumed,
    ConsentRevoked,
    DeliveryOutcomeReported,
    InboundMessageReceived,
    LedgerEvent,
    LedgerPosition,
    LegalHoldPlaced,
    LegalHoldReleased,
    MessageKind,
    MessageSent,
    Recorded,
    RevocationCandidateFlagged,
    RevocationCandidateResolved,
    SubjectErased,
    SubscriberEvent,
    SubscriberLocated,
)
from ledger.keywords import Intent

OrderKey = tuple[datetime, int]
E = TypeVar("E", bound=LedgerEvent)


T = TypeVar("T")


def _evolve(obj: T, **changes: Any) -> T:
    """``dataclasses.replace`` for the state's frozen dataclasses, without its per-call
    field introspection: the fold calls it for every event, and ``replace`` was the
    largest single cost of loading a state. The state classes have no ``__post_init__``,
    so copying the instance dictionary is the whole of what ``replace`` would do."""
    new = object.__new__(type(obj))
    fields = new.__dict__
    fields.update(obj.__dict__)
    fields.update(changes)
    return new


@dataclass(frozen=True)
class Fact(Generic[E]):
    """One recorded event kept in the state, typed by its event class."""

    event: E
    position: LedgerPosition
    recorded_at: datetime

    @property
    def key(self) -> OrderKey:
        """World order, ties broken by ledger order (one phone lives in one partition)."""
        return (self.event.occurred_at, self.position.offset)

    @property
    def at(self) -> datetime:
        return self.event.occurred_at

    def as_recorded(self) -> Recorded:
        return Recorded(self.event, self.position, self.recorded_at)

    @property
    def event_id(self) -> str:
        return str(self.event.event_id)


def _later(current: Fact[E] | None, new: Fact[E]) -> Fact[E]:
    return new if current is None or new.key > current.key else current


def stated_key(fact: Fact[Any]) -> OrderKey:
    """A fact of consent (an opt-out, an opt-in, a START) by the time it said it
    happened (``stated_at``), later than its place (``Fact.key``) when it was stamped
    ahead of the clock that recorded it (``ledger.commands.consent_time``).

    By place alone, a consent stated before an opt-out said it happened but recorded
    after it, by an instance that did not check it (a race, an older version),
    outranked the opt-out. By the stated times alone, a consent stamped ahead
    outranked an opt-out recorded after it. So a consent outranks an opt-out only
    when it is the later by both (``ledger.policy.standing``), and the one
    confirmation owed after an opt-out counts from its place. A stated time earlier
    than the place moves nothing: doubt denies."""
    event = fact.event
    stated = event.stated_at
    at = event.occurred_at if stated is None or stated < event.occurred_at else stated
    return (at, fact.position.offset)


def _later_stated(
    current: Fact[ConsentRevoked] | None, new: Fact[ConsentRevoked]
) -> Fact[ConsentRevoked]:
    """The later opt-out by ``stated_key``."""
    return new if current is None or stated_key(new) > stated_key(current) else current


@dataclass(frozen=True)
class SentRecord:
    at: datetime
    kind: MessageKind
    event_id: str
    message_id: str
    fact: Fact[MessageSent] = field(compare=False, repr=False)
    basis: tuple[Fact[Any], ...] = field(default=(), compare=False, repr=False)
    """The facts the fold read to judge whether a reply owed once was still owed
    (``_owed_reply``): kept with it, so a state refolded from its retained facts
    judges it the same."""


@dataclass(frozen=True)
class CampaignConsent:
    """Everything known about one campaign of one brand for one phone."""

    grant: Fact[ConsentGranted] | None = None
    revocation: Fact[ConsentRevoked] | None = None
    revocation_said: Fact[ConsentRevoked] | None = None
    """The latest opt-out of this campaign by the time it said (``stated_key``): a
    consent outranks the campaign's opt-outs only when it is later than
    ``revocation`` by place and than this by the times each said."""
    resume: Fact[ConsentResumed] | None = None
    reconfirmation: Fact[ConsentReconfirmed] | None = None
    sent: tuple[SentRecord, ...] = ()
    """Counted sends within the longest cap window, oldest first."""
    last_sent: SentRecord | None = None
    """The latest counted send ever, kept apart from ``sent`` because pruning drops it."""
    last_disclosed: SentRecord | None = None
    """The latest counted send that carried opt-out language, recorded since the
    campaign's latest grant or START (``_reopened``): the first message's obligation
    to carry it holds until a send says it did."""
    opener: SentRecord | None = None
    """The earliest counted send since the campaign's latest consent (``consent_anchor``)
    recorded after it: the first message, which had to reconfirm when it came later
    than the first-message window after that consent (``ledger.policy``)."""
    reconfirming: SentRecord | None = None
    """The latest counted reconfirmation request that carried opt-out language: the
    only send that meets a reconfirmation owed after a silence."""
    unreconfirmed: Fact[DeliveryOutcomeReported] | None = None
    """``undisclosed`` for ``reconfirming``: while that send is still the latest
    reconfirmation request, it met nothing."""
    undisclosed: Fact[DeliveryOutcomeReported] | None = None
    """The latest delivery error reported on the send that was ``last_disclosed`` when
    it came: while that send is still ``last_disclosed`` its language counts for
    nothing (the person may never have read it), so it is owed again."""
    help_request: Fact[InboundMessageReceived] | None = None
    """The latest HELP (or INFO) the person sent this campaign's number: it earns one
    help reply (``ledger.policy``)."""
    last_inbound: Fact[InboundMessageReceived] | None = None
    """The latest text the person sent this campaign's number: the conversation it
    opens is this campaign's only (``ledger.policy``)."""
    help_reply: SentRecord | None = None
    """The latest help reply sent for this campaign, counted or not."""
    opt_in_confirmation: SentRecord | None = None
    """The latest confirmation of a START sent for this campaign, counted or not."""
    help_answer: SentRecord | None = None
    """The latest help reply that escaped the caps: the one reply a HELP is owed."""
    opt_in_answer: SentRecord | None = None
    """The latest confirmation of a START that escaped the caps."""
    answered_late: tuple[SentRecord, ...] = ()
    """Help replies and opt-out confirmations that count, each recorded
    (``MessageSent.exempt`` false) before the HELP or opt-out it followed reached the
    ledger, that fact kept as its ``basis``: in the facts' own order it was its answer.
    The fold does not read the campaign's reply window, so it keeps them counted; the
    policy leaves out of the caps the one sent within that window after its text or
    opt-out (``ledger.policy``; ``_answered_before``, ``_confirmed_before``)."""
    escaped: tuple[SentRecord, ...] = ()
    """Help replies, START confirmations, opt-out confirmations and conversation
    replies of this campaign that escaped the caps, within the longest cap window, in
    world order: each owed once (``_owed_reply``, ``_owed_confirmation``) or inside a
    conversation, the text or opt-out it answered kept as its ``basis``. The write
    judged its window by the rules then known; a change of the rules dated back
    before the reply may have shortened it since, so the policy counts one sent
    outside the window in force when it was sent, as the facts' own order would
    (``ledger.policy``). A conversation reply or START confirmation whose exchange an
    opt-out of another campaign was placed inside keeps that opt-out as the second
    fact of its basis (``_ended_elsewhere_by``): the policy counts it under the
    revoke-all rule."""


EMPTY_CAMPAIGN = CampaignConsent()


@dataclass(frozen=True)
class SubscriberState:
    """The folded state of one phone number towards one brand."""

    phone: str = ""
    brand: str = ""
    campaigns: Mapping[str, CampaignConsent] = field(default_factory=lambda: MappingProxyType({}))
    brand_revocation: Fact[ConsentRevoked] | None = None
    brand_revocation_said: Fact[ConsentRevoked] | None = None
    """``CampaignConsent.revocation_said`` of the brand-wide opt-outs."""
    brand_resume: Fact[ConsentResumed] | None = None
    candidates: Mapping[str, Fact[RevocationCandidateFlagged]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    resolutions: Mapping[str, Fact[RevocationCandidateResolved]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    """Resolutions by the id of the candidate they resolve."""
    age: Fact[AgeVerified] | None = None
    last_inbound: Fact[InboundMessageReceived] | None = None
    brand_sent: tuple[SentRecord, ...] = ()
    opt_out_answer: SentRecord | None = None
    """The latest opt-out confirmation that escaped the caps: the one an opt-out is
    owed, of any campaign of the brand (``_owed_confirmation``)."""
    location: Fact[Any] | None = None
    """The latest word of which state the subscriber is in: an opt-in whose proof gives
    a region (``Fact[ConsentGranted]``) or a ``Fact[SubscriberLocated]``; read it
    with ``located_region``."""
    erased: Fact[SubjectErased] | None = None
    """The latest erasure of the subject's personal data. Nothing before it that
    allows a send counts (a grant, a START, a reconfirmation, an age verification,
    a conversation, a location): its proof is gone, so only a fresh opt-in after
    it allows one. Opt-outs and sends before it still count: doubt denies."""

    def campaign(self, name: str) -> CampaignConsent:
        return self.campaigns.get(name, EMPTY_CAMPAIGN)

    def pending_candidates(self) -> list[Fact[RevocationCandidateFlagged]]:
        return [c for k, c in sorted(self.candidates.items()) if k not in self.resolutions]


_NO_STATE = SubscriberState()


def new_state(phone: str, brand: str) -> SubscriberState:
    """``SubscriberState(phone=phone, brand=brand)``, copied from one made once: a
    projection starts a state for every subscriber a batch brings, and the frozen
    ``__init__``, with a mapping made for each empty field, cost three times the copy.
    The empty mappings are shared, as nothing changes a state's mapping in place."""
    return _evolve(_NO_STATE, phone=phone, brand=brand)


def _with_campaign(
    state: SubscriberState, name: str, change: Callable[[CampaignConsent], CampaignConsent]
) -> SubscriberState:
    campaigns = dict(state.campaigns)
    campaigns[name] = change(campaigns.get(name, EMPTY_CAMPAIGN))
    return _evolve(state, campaigns=MappingProxyType(campaigns))


def _world_order(record: SentRecord) -> tuple[datetime, str]:
    return (record.at, record.event_id)


def _holds(sent: tuple[SentRecord, ...], record: SentRecord) -> bool:
    """``record in sent``, for ``sent`` in world order (``_with_send``'s): only the
    records of its moment and id are compared, not every send the window keeps, as
    one number's many sends made a linear scan per send cost the square of them."""
    key = _world_order(record)
    start = bisect_left(sent, key, key=_world_order)
    return record in sent[start : bisect_right(sent, key, lo=start, key=_world_order)]


def _with_send(
    sent: tuple[SentRecord, ...], record: SentRecord, newest: datetime
) -> tuple[SentRecord, ...]:
    """``sent`` (in world order) with ``record``, keeping only what a frequency cap
    can still count, in world order; a record of the same moment and id as one kept
    comes after it. ``sent`` is kept in this order, so ``record`` is put in its place
    and the sends before the horizon cut off the front, rather than sorting the
    whole window again for each send."""
    # The newest send may be stamped up to the clock skew ahead of the question's
    # now, and a cap counts back from now: a send inside the longest window before
    # now may lie outside it before the newest send, and must still count.
    horizon = newest - MAX_CAP_WINDOW - MAX_CLOCK_SKEW
    place = bisect_right(sent, _world_order(record), key=_world_order)
    kept = (*sent[:place], record, *sent[place:])
    return kept[bisect_left(kept, horizon, key=lambda s: s.at) :]


def _erased_after(s: SubscriberState, f: Fact[Any]) -> bool:
    """Whether an erasure of the subject came after ``f`` in world order, or destroyed
    the key ``f`` was sealed with: ``f`` then allows nothing. The key counts wherever
    ``f`` was placed: a write sealed before an erasure and appended after it (it was
    under way) has lost its proof all the same."""
    return s.erased is not None and (f.key < s.erased.key or _sealed_by(f, s.erased))


def _sealed_by(f: Fact[Any], erasure: Fact[SubjectErased]) -> bool:
    sealed = f.event.sealed
    return sealed is not None and sealed.key_id in erasure.event.key_ids


def consent_anchor(
    c: CampaignConsent, brand_resume: Fact[ConsentResumed] | None, reconfirmed: bool = True
) -> Fact[Any] | None:
    """The campaign's latest fact of consent in world order: its grant, its START, the
    brand's START (``brand_resume``) or, unless ``reconfirmed`` is false, a
    reconfirmation. The first message is counted from it; the opt-out language is
    owed again after each but a reconfirmation."""
    latest: Fact[Any] | None = None
    for fact in (c.grant, c.resume, c.reconfirmation if reconfirmed else None, brand_resume):
        if fact is not None:
            latest = _later(latest, fact)
    return latest


_FORGOTTEN_AT_CONSENT = {
    "opener": None,
    "reconfirming": None,
    "unreconfirmed": None,
}
_FORGOTTEN_AT_NEW_CONSENT = {"last_disclosed": None, "undisclosed": None}


def _reopened(before: SubscriberState, after: SubscriberState) -> SubscriberState:
    """``after`` with the first message and the reconfirmation request forgotten in
    each campaign whose consent anchor a fact of consent moved, and the send that
    carried the opt-out language where a grant or a START moved it: only a send
    recorded after the new consent meets its obligations, so a state refolded from
    its retained facts finds the same ones. A send recorded before a consent that it
    follows by its stamp (stamped ahead of the clock) went out before it: doubt owes."""
    changed = {}
    for name, c in after.campaigns.items():
        if c.opener is None and c.reconfirming is None and c.last_disclosed is None:
            continue
        b, was, now = before.campaign(name), before.brand_resume, after.brand_resume
        forget: dict[str, None] = {}
        if consent_anchor(c, now) is not consent_anchor(b, was):
            forget.update(_FORGOTTEN_AT_CONSENT)
        if consent_anchor(c, now, False) is not consent_anchor(b, was, False):
            forget.update(_FORGOTTEN_AT_NEW_CONSENT)
        if forget:
            changed[name] = _evolve(c, **forget)
    if not changed:
        return after
    return _evolve(after, campaigns=MappingProxyType({**after.campaigns, **changed}))


def _apply_granted(s: SubscriberState, f: Fact[ConsentGranted]) -> SubscriberState:
    if _erased_after(s, f):
        return s
    return _closed_by(_reopened(s, _granted(s, f)), f, f.event.campaign, _PASSED_BY_A_CONSENT)


def _granted(s: SubscriberState, f: Fact[ConsentGranted]) -> SubscriberState:
    s = _with_campaign(s, f.event.campaign, lambda c: _evolve(c, grant=_later(c.grant, f)))
    if f.event.proof.region:
        s = _evolve(s, location=_later(s.location, f))
    return s


def _apply_revoked(s: SubscriberState, f: Fact[ConsentRevoked]) -> SubscriberState:
    # The latest by place and the latest by the time each said (``stated_key``): of
    # an opt-out placed at T that said T+40s and one placed at T+10s, a consent at
    # T+20s loses to the first, one placed at T+5s that said T+45s to the second.
    s = _confirmed_after(s, lambda r: _reconfirmed_by(r, f))
    if f.event.campaign is None:
        s = _evolve(
            s,
            brand_revocation=_later(s.brand_revocation, f),
            brand_revocation_said=_later_stated(s.brand_revocation_said, f),
        )
    else:
        s = _with_campaign(
            s,
            f.event.campaign,
            lambda c: _evolve(
                c,
                revocation=_later(c.revocation, f),
                revocation_said=_later_stated(c.revocation_said, f),
            ),
        )
    kinds = _CLOSED_BY_AN_IMPORT if f.event.imported else _CLOSED_BY_AN_OPT_OUT
    s = _closed_by(s, f, f.event.campaign, kinds)
    if f.event.campaign is not None:
        s = _ended_elsewhere_by(s, f)
    return _confirmed_before(s, f)


def _closed_by(
    s: SubscriberState, f: Fact[Any], campaign: str | None, kinds: frozenset[MessageKind]
) -> SubscriberState:
    """``s`` with the replies of ``kinds`` that escaped the caps (``escaped``) in
    ``campaign`` (every campaign, when None) counted where ``f`` (an opt-out, a reply
    held for review) was placed after what earned them (the text that opened their
    conversation, the START they confirm) and no later than the reply: recorded
    after the reply, it closed that conversation (ended or held what the START
    resumed) in the facts' own order, and the reply earned nothing."""

    def closed(c: CampaignConsent) -> CampaignConsent:
        shut = [_shut_by(r, f) for r in c.escaped if r.kind in kinds and _inside(r, f)]
        return _unescaped(c, shut) if shut else c

    return _with_escaped_changed(s, lambda name: campaign in (None, name), closed)


def _shut_by(reply: SentRecord, f: Fact[Any]) -> SentRecord:
    """``reply`` (of ``escaped``) with ``f``, the fact that left it unearned, kept among
    the facts it was judged by: a state refolded from its retained facts counts it
    again, after a later fact of ``f``'s kind has replaced ``f`` as the latest."""
    return _evolve(reply, basis=(*reply.basis, f))


def _with_escaped_changed(
    s: SubscriberState,
    chosen: Callable[[str], bool],
    change: Callable[[CampaignConsent], CampaignConsent],
) -> SubscriberState:
    """``s`` with ``change`` made to each ``chosen`` campaign that holds replies that
    escaped the caps; ``s`` itself when it changes none."""
    changed = {
        name: after
        for name, c in s.campaigns.items()
        if c.escaped and chosen(name) and (after := change(c)) is not c
    }
    if not changed:
        return s
    return _evolve(s, campaigns=MappingProxyType({**s.campaigns, **changed}))


def _inside(reply: SentRecord, f: Fact[Any]) -> bool:
    """Whether ``f`` was placed after what earned ``reply`` (its ``basis``: the text that
    opened its conversation, the START it confirms) and no later than the reply."""
    return reply.basis[0].key <= f.key and f.at <= reply.at


def _ended_elsewhere_by(s: SubscriberState, f: Fact[ConsentRevoked]) -> SubscriberState:
    """``s`` with each conversation reply and START confirmation of another campaign
    that escaped the caps, and that ``f`` (an opt-out of one campaign) was placed inside
    (``_inside``), kept with ``f`` (``CampaignConsent.escaped``): under the revoke-all
    rule ``f`` ended that conversation (revoked what the START resumed) in the facts'
    own order, and the reply earned nothing. The fold does not read the rule; the
    policy counts such a reply where the rule is in force (``ledger.policy``)."""

    def ended(c: CampaignConsent) -> CampaignConsent:
        # A reply keeps the first such opt-out found.
        inside = [
            r
            for r in c.escaped
            if r.kind in _CLOSED_BY_AN_OPT_OUT and not ended_elsewhere(r) and _inside(r, f)
        ]
        if not inside:
            return c
        escaped = [_evolve(r, basis=(*r.basis, f)) if r in inside else r for r in c.escaped]
        return _evolve(c, escaped=tuple(escaped))

    return _with_escaped_changed(s, lambda name: name != f.event.campaign, ended)


def ended_elsewhere(reply: SentRecord) -> bool:
    """Whether ``reply``, of ``CampaignConsent.escaped``, keeps an opt-out of another
    campaign that ended its exchange (``_ended_elsewhere_by``), after what earned it."""
    return len(reply.basis) > 1


def _unescaped(c: CampaignConsent, replies: Collection[SentRecord]) -> CampaignConsent:
    """``c`` with ``replies`` (of ``escaped``) counted: among the sends the caps count,
    as neither the first message nor the send that carried the opt-out language."""
    latest, sent = c.last_sent, c.sent
    for record in replies:
        latest = _latest_record(latest, record)
        sent = _with_send(sent, record, latest.at)
    escaped = tuple([r for r in c.escaped if r not in replies])
    return _evolve(c, escaped=escaped, sent=sent, last_sent=latest)


_CLOSED_BY_AN_OPT_OUT = frozenset({MessageKind.CONVERSATION_REPLY, MessageKind.OPT_IN_CONFIRMATION})
"""Replies an opt-out placed between them and what earned them leaves unearned."""

_CLOSED_BY_AN_IMPORT = _CLOSED_BY_AN_OPT_OUT | {MessageKind.OPT_OUT_CONFIRMATION}
"""Those and opt-out confirmations: an imported opt-out placed between an opt-out and
its confirmation is the latest, whose one confirmation the platform that received it
owed (``ledger.policy``), so the confirmation earned nothing."""

_PASSED_BY_A_CONSENT = frozenset({MessageKind.OPT_IN_CONFIRMATION})
"""Replies a newer consent (a grant of the campaign) placed between them and their
START leaves unearned: the consent then stands on it, and the START resumed nothing
that still stood when the confirmation went out (``ledger.policy``)."""

_HELD_BY_A_HOLD = frozenset({MessageKind.OPT_IN_CONFIRMATION})
"""Replies a reply held for review placed between them and their START leaves
unearned: a START lifts no hold (``ledger.policy``)."""


def _reconfirmed_by(record: SentRecord, f: Fact[ConsentRevoked]) -> bool:
    """Whether the opt-out ``f`` is a later one than the opt-out the confirmation
    ``record`` was kept as answering late (``_confirmed_before``), of its campaign or
    the brand, placed no later than it was sent: in the facts' own order it would
    confirm ``f``, judged by what the ledger says of ``f``."""
    campaign = f.event.campaign
    return (
        campaign in (None, record.fact.event.campaign)
        and f.key > record.basis[0].key
        and f.at <= record.at
    )


def _apply_resumed(s: SubscriberState, f: Fact[ConsentResumed]) -> SubscriberState:
    if _erased_after(s, f):
        return s
    if f.event.campaign is None:
        return _reopened(s, _evolve(s, brand_resume=_later(s.brand_resume, f)))
    return _reopened(
        s,
        _with_campaign(s, f.event.campaign, lambda c: _evolve(c, resume=_later(c.resume, f))),
    )


def _apply_reconfirmed(s: SubscriberState, f: Fact[ConsentReconfirmed]) -> SubscriberState:
    if _erased_after(s, f):
        return s
    return _reopened(
        s,
        _with_campaign(
            s, f.event.campaign, lambda c: _evolve(c, reconfirmation=_later(c.reconfirmation, f))
        ),
    )


COUNTED_KINDS = frozenset({MessageKind.REGULAR, MessageKind.RECONFIRMATION_REQUEST})
"""Sends that count towards caps whatever was recorded about them, and the only ones
that end the "first message" period or carry the opt-out language that meets its
obligation. Another kind, a reply, counts as well unless it was recorded as having
earned its exemption (``MessageSent.exempt``); one recorded before that was decided
(``exempt`` None) goes by its kind, as it did then.

A reply that counts still stands as neither: whether it escaped the caps hangs on a
window that a change of the rules dated back can lengthen, and on a text that can
reach the ledger after it. In the facts' own order it may have escaped, and met
nothing (whatever the policy decides, a later send owes as much as in that order,
or more)."""

_REPLY_RECORDS = {
    MessageKind.HELP_REPLY: "help_reply",
    MessageKind.OPT_IN_CONFIRMATION: "opt_in_confirmation",
}
"""The replies owed once per request, by the ``CampaignConsent`` field of the latest."""

_ONCE_REPLIES = {
    MessageKind.HELP_REPLY: ("help_request", "help_answer"),
    MessageKind.OPT_IN_CONFIRMATION: ("resume", "opt_in_answer"),
}
"""The replies owed once per request: the ``CampaignConsent`` fields of the latest
request (HELP, START) and of the latest reply that escaped the caps."""


def counts(event: MessageSent) -> bool:
    """Whether a send counts towards caps (and ends the first-message period)."""
    return event.kind in COUNTED_KINDS or event.exempt is False


def _latest_record(current: SentRecord | None, record: SentRecord) -> SentRecord:
    if current is None or (record.at, record.event_id) > (current.at, current.event_id):
        return record
    return current


def _owed_reply(c: CampaignConsent, record: SentRecord) -> tuple[bool, tuple[Fact[Any], ...]]:
    """Whether ``record``, a reply owed once per request recorded as having earned its
    exemption, was still owed at this point of the ledger, and the facts that say so.

    The exemption is judged at the write against the view, and sends made at the
    same moment (several instances, or one HELP answered three times at once) were
    all judged against a view without the others: every one escaped the caps. In
    ledger order, which every view shares, only the first reply after the request
    is owed it; another counts, as a send judged not to be owed does."""
    asked_field, answer_field = _ONCE_REPLIES[record.kind]
    asked: Fact[Any] | None = getattr(c, asked_field)
    answer: SentRecord | None = getattr(c, answer_field)
    if asked is None:
        return False, ()
    if record.at < asked.at:  # it answers a request no longer known: doubt counts it
        return False, (asked,)
    if answer is not None and answer.at >= asked.at:
        return False, (asked, answer.fact, *answer.basis)
    return True, (asked,)


def _owed_confirmation(
    s: SubscriberState, record: SentRecord, campaign: str
) -> tuple[bool, tuple[Fact[Any], ...]]:
    """``_owed_reply`` for an opt-out confirmation recorded as exempt: owed once per
    opt-out (the campaign's own or the brand's, whichever is later, as the policy reads
    it), and only if no confirmation of any campaign of the brand escaped since, as
    the policy allows one (``Check._opt_out_confirmation``). Judged at the write, two
    sent at once were each judged against a view without the other: both escaped."""
    own, brand = s.campaign(campaign).revocation, s.brand_revocation
    asked = own if brand is None or (own is not None and own.key > brand.key) else brand
    answer = s.opt_out_answer
    if asked is None:
        return False, ()
    if record.at < asked.at:  # it answers an opt-out no longer the latest: doubt counts it
        return False, (asked,)
    if answer is not None and answer.at >= asked.at:
        return False, (asked, answer.fact, *answer.basis)
    return True, (asked,)


def _judged(
    s: SubscriberState, f: Fact[MessageSent], record: SentRecord
) -> tuple[bool, SentRecord]:
    """Whether the send ``f`` (its ``record``) escapes the caps at this point of the
    ledger, and its record with the facts that judgement read."""
    if counts(f.event):
        return False, record
    if record.kind in _ONCE_REPLIES:
        exempt, basis = _owed_reply(s.campaign(f.event.campaign), record)
    elif record.kind is MessageKind.OPT_OUT_CONFIRMATION:
        exempt, basis = _owed_confirmation(s, record, f.event.campaign)
    elif record.kind is MessageKind.CONVERSATION_REPLY:
        # Kept with the text that opened the conversation, its window judged again by
        # the policy (``CampaignConsent.escaped``); a text the ledger holds stamped
        # after the reply hides that one, and the reply is trusted as recorded.
        text = s.campaign(f.event.campaign).last_inbound
        if text is None or text.at > record.at:
            return True, record
        exempt, basis = True, (text,)
    else:
        return True, record
    if exempt and record.kind in _CLOSED_BY_AN_OPT_OUT:
        # Another campaign's opt-out the ledger holds may have ended its exchange
        # (``_ended_elsewhere_by``). Only each campaign's latest is kept: one placed
        # after the reply may hide an earlier one inside the exchange, so doubt keeps
        # it as if it were inside.
        basis = next(
            (
                (*basis, other.revocation)
                for name, other in sorted(s.campaigns.items())
                if name != f.event.campaign
                and other.revocation is not None
                and basis[0].key <= other.revocation.key
            ),
            basis,
        )
    return exempt, _evolve(record, basis=basis)


def _shut_already(s: SubscriberState, reply: SentRecord) -> Fact[Any] | None:
    """A fact ``s`` holds, placed after what earned the owed ``reply``, that left it
    unearned as ``_closed_by`` finds for one that comes after the reply, or may have:
    the campaign's or the brand's latest opt-out, or the campaign's latest opt-in,
    placed after the reply may hide an earlier one inside its exchange (only the
    latest is kept), and doubt counts the reply. Holds are all kept. None if none, or
    if ``reply`` was kept with nothing that earned it."""
    if not reply.basis:
        return None
    since = reply.basis[0].key
    c = s.campaign(reply.fact.event.campaign)
    found: list[Fact[Any] | None] = []
    if reply.kind in _CLOSED_BY_AN_OPT_OUT:
        found += [c.revocation, s.brand_revocation]
    if reply.kind in _PASSED_BY_A_CONSENT:
        found.append(c.grant)
    if reply.kind in _HELD_BY_A_HOLD:
        found += [h for h in s.candidates.values() if _inside(reply, h)]
    return next((f for f in found if f is not None and since <= f.key), None)


def _apply_sent(s: SubscriberState, f: Fact[MessageSent]) -> SubscriberState:
    record = SentRecord(f.at, f.event.kind, f.event_id, f.event.message_id, f)
    if _holds(s.brand_sent, record):
        return s
    exempt, record = _judged(s, f, record)
    # The campaign's records of this reply, changed at once.
    c = s.campaign(f.event.campaign)
    changes: dict[str, Any] = {}
    once = _ONCE_REPLIES.get(record.kind)
    if exempt and once is not None:
        changes[once[1]] = _latest_record(getattr(c, once[1]), record)
    elif exempt and record.kind is MessageKind.OPT_OUT_CONFIRMATION:
        s = _evolve(s, opt_out_answer=_latest_record(s.opt_out_answer, record))
    reply = _REPLY_RECORDS.get(record.kind)
    if reply is not None:
        changes[reply] = _latest_record(getattr(c, reply), record)
    if exempt and record.basis:  # an owed reply, its window judged again by the policy
        changes["escaped"] = _with_escaped(c.escaped, record)
    if changes:
        s = _with_campaign(s, f.event.campaign, lambda c: _evolve(c, **changes))
    shut = _shut_already(s, record) if exempt else None
    if shut is not None:
        counted = _shut_by(record, shut)
        s = _with_campaign(s, f.event.campaign, lambda c: _unescaped(c, [counted]))
    newest = max(record.at, s.brand_sent[-1].at) if s.brand_sent else record.at
    s = _evolve(s, brand_sent=_with_send(s.brand_sent, record, newest))
    if record.kind is MessageKind.HELP_REPLY and s.campaign(f.event.campaign).answered_late:
        s = _with_campaign(s, f.event.campaign, lambda c: _answered_after(c, record))
    elif record.kind is MessageKind.OPT_OUT_CONFIRMATION:
        s = _confirmed_after(s, lambda r: _between(r, record))
    if exempt:
        return s
    brand_resume = s.brand_resume
    reconfirms = (
        record.kind is MessageKind.RECONFIRMATION_REQUEST and f.event.included_opt_out_language
    )
    stands = record.kind in COUNTED_KINDS  # a reply meets no obligation (``COUNTED_KINDS``)

    def add(c: CampaignConsent) -> CampaignConsent:
        latest = c.last_sent
        if latest is None or (record.at, record.event_id) > (latest.at, latest.event_id):
            latest = record
        # The campaign's own newest counted send sets its horizon. The brand's newest
        # send of any kind would not: the campaign's list is pruned only when one of
        # its own sends arrives, so its contents would depend on the order in which
        # the other sends were recorded, and a state refolded from its retained facts
        # could differ from the state it was taken from.
        disclosed = c.last_disclosed
        if (
            stands
            and f.event.included_opt_out_language
            and (
                disclosed is None
                or (record.at, record.event_id) > (disclosed.at, disclosed.event_id)
            )
        ):
            disclosed = record
        opener = c.opener
        # Sends mostly come in order: one after the first message changes nothing, and
        # the consent it would be measured against need not be looked up.
        if stands and (
            opener is None or (record.at, record.event_id) < (opener.at, opener.event_id)
        ):
            anchor = consent_anchor(c, brand_resume)
            if anchor is not None and record.at >= anchor.at:
                opener = record
        reconfirming = _latest_record(c.reconfirming, record) if reconfirms else c.reconfirming
        sent = _with_send(c.sent, record, latest.at)
        late = c.answered_late
        if late:  # only a send still counted is left out of the caps
            late = tuple([r for r in late if _holds(sent, r)])
        # An error reported on the send these replace says nothing of the new one.
        return _evolve(
            c,
            sent=sent,
            answered_late=late,
            last_sent=latest,
            last_disclosed=disclosed,
            undisclosed=c.undisclosed if disclosed is c.last_disclosed else None,
            opener=opener,
            reconfirming=reconfirming,
            unreconfirmed=c.unreconfirmed if reconfirming is c.reconfirming else None,
        )

    return _with_campaign(s, f.event.campaign, add)


def _with_escaped(escaped: tuple[SentRecord, ...], record: SentRecord) -> tuple[SentRecord, ...]:
    """``escaped`` (``CampaignConsent.escaped``) with the owed reply ``record``, kept for
    as long as a cap counts back from the newest, as ``sent`` is."""
    newest = max(record.at, escaped[-1].at) if escaped else record.at
    return _with_send(escaped, record, newest)


_OPENS_NO_CONVERSATION = frozenset(
    i.value for i in (Intent.OPT_OUT, Intent.OPT_OUT_BRAND_WIDE, Intent.REVOCATION_CANDIDATE)
)
"""Intents of a text that opens no conversation of its campaign. Its ConsentRevoked or
RevocationCandidateFlagged closes it, but is appended after it, and an append is not
atomic: the text recorded alone (its writer killed, a batch given up on) let a
conversational campaign reply to a STOP."""


def _answered_before(s: SubscriberState, f: Fact[InboundMessageReceived]) -> SubscriberState:
    """``s`` with the help reply that answered the HELP ``f`` kept as answered late, when
    the gateway recorded it before ``f`` reached the ledger: judged without ``f``, it
    earned no exemption (``MessageSent.exempt`` false) and counts, where in the facts'
    own order it would not when sent within the campaign's reply window after ``f``.
    That window is the campaign's, which the fold does not read, so the reply still
    counts here; the policy leaves it out of the caps (``ledger.policy``).

    The reply is the first help reply of the campaign sent at or after ``f`` within
    the longest reply window, and only when no help reply escaped the caps since
    ``f``: in the facts' own order the first reply after a HELP is its answer. A
    later HELP before the reply takes it over, as the reply answers the latest HELP.
    Like every reply, it meets no obligation of the first message (``COUNTED_KINDS``)."""
    campaign = f.event.campaign
    assert campaign is not None
    c = s.campaign(campaign)
    if c.help_answer is not None and c.help_answer.at >= f.at:
        return s
    reply = _judged_without(s, f, MessageKind.HELP_REPLY, campaign)
    if reply is None or not _holds(c.sent, reply):
        return s
    earlier = next((r for r in c.answered_late if r == reply), None)
    if earlier is not None and earlier.basis[0].key >= f.key:
        return s  # kept for a later HELP already
    answered = _evolve(reply, basis=(f,))
    late = tuple([*(r for r in c.answered_late if r != reply), answered])

    def kept(c: CampaignConsent) -> CampaignConsent:
        return _evolve(
            c,
            answered_late=tuple(sorted(late, key=_world_order)),
            help_answer=_latest_record(c.help_answer, answered),
        )

    return _with_campaign(s, campaign, kept)


def _judged_without(
    s: SubscriberState, f: Fact[Any], kind: MessageKind, campaign: str | None = None
) -> SentRecord | None:
    """The first reply of ``kind`` the brand sent (for ``campaign``; any, when None) at
    or after the text or opt-out ``f``, within the longest reply window, when it was
    recorded before ``f`` as not exempt: judged without ``f``. None when that reply was
    judged with ``f`` known, or by its kind (``exempt`` None), or there is none."""
    sent = s.brand_sent
    start = bisect_left(sent, f.at, key=lambda r: r.at)
    end = bisect_right(sent, f.at + MAX_OPT_OUT_CONFIRMATION_WINDOW, lo=start, key=lambda r: r.at)
    reply = next(
        (
            r
            for r in sent[start:end]
            if r.kind is kind and campaign in (None, r.fact.event.campaign)
        ),
        None,
    )
    if reply is None or reply.fact.event.exempt is not False or _placed_after(reply, f):
        return None
    return reply


def _between(late: SentRecord, record: SentRecord) -> bool:
    """Whether ``record`` (another reply) was sent between the text or opt-out that
    ``late`` (a reply answered late) followed and ``late``: in the facts' own order it
    would be the answer, and ``late`` might count."""
    return (
        record != late
        and late.basis[0].at <= record.at
        and _world_order(record) < _world_order(late)
    )


def _answered_after(c: CampaignConsent, record: SentRecord) -> CampaignConsent:
    """``c`` without the replies answered late (``_answered_before``) that the help reply
    ``record`` comes between in world order, after the HELP each followed: in the
    facts' own order ``record`` might be that HELP's answer, so doubt counts both."""
    late = tuple(
        [r for r in c.answered_late if r.kind is not record.kind or not _between(r, record)]
    )
    return c if len(late) == len(c.answered_late) else _evolve(c, answered_late=late)


def _confirmed_before(s: SubscriberState, f: Fact[ConsentRevoked]) -> SubscriberState:
    """``s`` with the opt-out confirmation that confirmed the opt-out ``f`` kept as
    answered late, when the gateway recorded it before ``f`` reached the ledger
    (``_answered_before`` for a HELP's reply): the first opt-out confirmation of the
    brand sent at or after ``f`` within the longest reply window, recorded before it
    as not exempt, for ``f``'s campaign (any, for an opt-out of the brand).

    Only where, in the facts' own order, it would have been owed by ``f`` alone:
    ``f`` is the latest opt-out of that campaign and of the brand, not imported (its
    confirmation was the other platform's) nor recorded by a review (counted from
    the text held, not from ``f``), and no confirmation escaped the caps since
    ``f``. A later opt-out placed before the reply, or another confirmation sent
    between ``f`` and it, makes it count again (``_confirmed_after``)."""
    event = f.event
    if event.imported or (event.campaign is None and _by_review(s, f)):
        return s
    answer = s.opt_out_answer
    if answer is not None and answer.at >= f.at:
        return s
    reply = _judged_without(s, f, MessageKind.OPT_OUT_CONFIRMATION)
    if reply is None:
        return s
    campaign = reply.fact.event.campaign
    c = s.campaign(campaign)
    if event.campaign not in (None, campaign) or not _holds(c.sent, reply):
        return s
    if any(r is not None and r.key > f.key for r in (c.revocation, s.brand_revocation)):
        return s  # a later opt-out is the one it would confirm
    if any(r == reply for r in c.answered_late):
        return s
    answered = _evolve(reply, basis=(f,))

    def kept(c: CampaignConsent) -> CampaignConsent:
        late = tuple(sorted((*c.answered_late, answered), key=_world_order))
        return _evolve(c, answered_late=late)

    s = _evolve(s, opt_out_answer=_latest_record(s.opt_out_answer, answered))
    return _with_campaign(s, campaign, kept)


def _by_review(s: SubscriberState, f: Fact[ConsentRevoked]) -> bool:
    """Whether a review's resolution wrote the opt-out ``f`` (``ledger.digest.held_asked``
    reads it so): its confirmation counts from the text it held."""
    said = (f.event.request_id, f.event.request_fingerprint)
    return any(
        (r.event.request_id, r.event.request_fingerprint) == said for r in s.resolutions.values()
    )


def _confirmed_after(s: SubscriberState, doubted: Callable[[SentRecord], bool]) -> SubscriberState:
    """``s`` without the opt-out confirmations answered late (``_confirmed_before``)
    that ``doubted`` finds no longer owed as they would have been in order."""
    changed = {
        name: late
        for name, c in s.campaigns.items()
        if c.answered_late
        and len(
            late := tuple(
                r
                for r in c.answered_late
                if r.kind is not MessageKind.OPT_OUT_CONFIRMATION or not doubted(r)
            )
        )
        < len(c.answered_late)
    }
    if not changed:
        return s
    campaigns = {
        name: _evolve(c, answered_late=changed[name]) if name in changed else c
        for name, c in s.campaigns.items()
    }
    return _evolve(s, campaigns=MappingProxyType(campaigns))


def _placed_after(record: SentRecord, fact: Fact[Any]) -> bool:
    return _ledger_order(record.fact) > _ledger_order(fact)


def _apply_inbound(s: SubscriberState, f: Fact[InboundMessageReceived]) -> SubscriberState:
    if _erased_after(s, f):
        return s
    s = _evolve(s, last_inbound=_later(s.last_inbound, f))
    if f.event.campaign is None or f.event.intent in _OPENS_NO_CONVERSATION:
        return s
    if f.event.intent == Intent.HELP.value:
        s = _with_campaign(
            s,
            f.event.campaign,
            lambda c: _evolve(
                c,
                help_request=_later(c.help_request, f),
                last_inbound=_later(c.last_inbound, f),
            ),
        )
        return _answered_before(s, f)
    return _with_campaign(
        s, f.event.campaign, lambda c: _evolve(c, last_inbound=_later(c.last_inbound, f))
    )


def _apply_flagged(s: SubscriberState, f: Fact[RevocationCandidateFlagged]) -> SubscriberState:
    s = _closed_by(s, f, None, _HELD_BY_A_HOLD)
    return _evolve(s, candidates=MappingProxyType({**s.candidates, f.event_id: f}))


def _apply_resolved(s: SubscriberState, f: Fact[RevocationCandidateResolved]) -> SubscriberState:
    # A resolution that says "revoked" comes with its own ConsentRevoked; here it only
    # releases the block the candidate put on sending, unless that ConsentRevoked is
    # under no real brand (``lifts_hold``): then the candidate stays pending.
    if not f.event.lifts_hold:
        return s
    # The opt-out it wrote is confirmed from the text it held (``_by_review``).
    said = (f.event.request_id, f.event.request_fingerprint)
    s = _confirmed_after(
        s,
        lambda r: (
            r.basis[0].event.campaign is None
            and (r.basis[0].event.request_id, r.basis[0].event.request_fingerprint) == said
        ),
    )
    return _evolve(
        s, resolutions=MappingProxyType({**s.resolutions, str(f.event.candidate_event_id): f})
    )


def _apply_located(s: SubscriberState, f: Fact[SubscriberLocated]) -> SubscriberState:
    if _erased_after(s, f):
        return s
    return _evolve(s, location=_later(s.location, f))


def located_region(fact: Fact[Any] | None) -> str:
    """The USPS code a ``SubscriberState.location`` fact gives ("" for none)."""
    if fact is None:
        return ""
    event = fact.event
    if isinstance(event, ConsentGranted):
        return event.proof.region
    region: str = event.region
    return region


def _apply_age(s: SubscriberState, f: Fact[AgeVerified]) -> SubscriberState:
    if _erased_after(s, f):
        return s
    # A date of birth decides over a "verified 21+" flag, whichever came or was
    # recorded later: a flag cannot make 21 a person whose date of birth says younger.
    # Among dates of birth (a correction) or among flags, the latest counts.
    current = s.age
    if current is not None and bool(current.event.date_of_birth) != bool(f.event.date_of_birth):
        return s if current.event.date_of_birth else _evolve(s, age=f)
    return _evolve(s, age=_later(current, f))


def _apply_delivery(s: SubscriberState, f: Fact[DeliveryOutcomeReported]) -> SubscriberState:
    # Campaign health reads these facts from the ledger (``ledger.health``). The state
    # keeps only an error on the send whose opt-out language ends the first message's
    # obligation, or on the reconfirmation request that met a reconfirmation owed:
    # undelivered, it met nothing. A later "delivered" report does not
    # restore it: doubt leaves the language owed.
    reported = f.event
    if not reported.outcome.is_error or not reported.campaign:
        return s
    c = s.campaign(reported.campaign)
    changes = {
        name: f
        for name, send in (("undisclosed", c.last_disclosed), ("unreconfirmed", c.reconfirming))
        if send is not None and send.message_id == reported.message_id
    }
    if not changes:
        return s
    return _with_campaign(s, reported.campaign, lambda c: _evolve(c, **changes))


def _apply_erased(s: SubscriberState, f: Fact[SubjectErased]) -> SubscriberState:
    """Forget what allowed sends before the erasure (``SubscriberState.erased``); the
    mutators above ignore such facts that are folded after it."""
    erased = _later(s.erased, f)
    at = erased.key

    def before(fact: Fact[Any] | None) -> Fact[Any] | None:
        return None if fact is None or fact.key < at or _sealed_by(fact, erased) else fact

    def unearned(c: CampaignConsent) -> CampaignConsent:
        """A reply placed after the erasure answered a text or opt-out it forgets: in
        the facts' own order it earned nothing, and counts."""
        forgotten = [r for r in c.escaped if r.fact.key >= at and before(r.basis[0]) is None]
        return _unescaped(c, forgotten) if forgotten else c

    campaigns = {
        name: _evolve(
            unearned(c),
            grant=before(c.grant),
            resume=before(c.resume),
            reconfirmation=before(c.reconfirmation),
            help_request=before(c.help_request),
            last_inbound=before(c.last_inbound),
            # A HELP the erasure forgets earns no reply: one answered late counts.
            answered_late=tuple([r for r in c.answered_late if before(r.basis[0]) is not None]),
            # No consent before it stands, so nothing sent under one meets a new one's
            # obligations: forgotten here, as the consent it followed is.
            **_FORGOTTEN_AT_CONSENT,
            **_FORGOTTEN_AT_NEW_CONSENT,
        )
        for name, c in s.campaigns.items()
    }
    return _evolve(
        s,
        erased=erased,
        campaigns=MappingProxyType(campaigns),
        brand_resume=before(s.brand_resume),
        age=before(s.age),
        location=before(s.location),
        last_inbound=before(s.last_inbound),
    )


def _unchanged(s: SubscriberState, f: Fact[Any]) -> SubscriberState:
    """A fact about the records (a legal hold), not about consent."""
    return s


_MUTATORS: dict[type[Any], Callable[[SubscriberState, Any], SubscriberState]] = {
    ConsentGranted: _apply_granted,
    ConsentRevoked: _apply_revoked,
    ConsentResumed: _apply_resumed,
    ConsentReconfirmed: _apply_reconfirmed,
    MessageSent: _apply_sent,
    InboundMessageReceived: _apply_inbound,
    RevocationCandidateFlagged: _apply_flagged,
    RevocationCandidateResolved: _apply_resolved,
    AgeVerified: _apply_age,
    SubscriberLocated: _apply_located,
    DeliveryOutcomeReported: _apply_delivery,
    SubjectErased: _apply_erased,
    LegalHoldPlaced: _unchanged,
    LegalHoldReleased: _unchanged,
}


def apply(state: SubscriberState, recorded: Recorded) -> SubscriberState:
    """Fold one recorded subscriber event into ``state`` (returns a new state)."""
    event = recorded.event
    if not isinstance(event, SubscriberEvent):
        raise TypeError(f"{type(event).__name__} is not a subscriber event")
    if state.phone and (event.phone, event.brand) != (state.phone, state.brand):
        raise ValueError("event belongs to another subscriber or brand")
    fact: Fact[Any] = Fact(event, recorded.position, recorded.recorded_at)
    new = _MUTATORS[type(event)](state, fact)
    if new.phone:
        return new
    return _evolve(new, phone=event.phone, brand=event.brand)


def exemptions_not_granted(history: Iterable[Recorded]) -> set[str]:
    """The ids of the sends in ``history`` (one phone's facts, of any brands, in ledger
    order) recorded as exempt from the caps (``MessageSent.exempt`` true, or a reply
    recorded before it was decided) that the fold counts all the same, judged at the
    write or counted once an opt-out, an opt-in, a hold or an erasure placed before it
    came (``_closed_by``, ``_unescaped``): what the stored flag says of them is the
    judgement at the write, not what CanSend counts.
    Facts under another spelling of the number (``ledger.phone.forms_stored_before``)
    are the number's, as CanSend folds them (``ledger.policy.as_one_number``)."""
    states: dict[str, SubscriberState] = {}
    found: set[str] = set()
    for recorded in history:
        event = recorded.event
        if not isinstance(event, SubscriberEvent):
            continue
        state = states.get(event.brand) or new_state(event.phone, event.brand)
        if event.phone != state.phone:
            event = replace(event, phone=state.phone)
            recorded = replace(recorded, event=event, extra=recorded.extra)
        if isinstance(event, MessageSent) and not counts(event):
            f: Fact[MessageSent] = Fact(event, recorded.position, recorded.recorded_at)
            record = SentRecord(f.at, event.kind, f.event_id, event.message_id, f)
            if not _holds(state.brand_sent, record):
                exempt, record = _judged(state, f, record)
                if not exempt or _shut_already(state, record) is not None:
                    found.add(f.event_id)
        after = states[event.brand] = apply(state, recorded)
        if isinstance(
            event, ConsentRevoked | ConsentGranted | SubjectErased | RevocationCandidateFlagged
        ):
            # A reply that escaped, counted once this fact placed before it came.
            found.update(_escaped_ids(state) - _escaped_ids(after))
    return found


def _escaped_ids(state: SubscriberState) -> set[str]:
    return {r.event_id for c in state.campaigns.values() for r in c.escaped}


def fold(events: Iterable[Recorded], state: SubscriberState | None = None) -> SubscriberState:
    """Fold ``events`` (all for one phone and brand) into ``state``."""
    current = state or SubscriberState()
    for recorded in events:
        current = apply(current, recorded)
    return current


@dataclass(frozen=True)
class CampaignHistory:
    """Every definition and change of one campaign, for "as of" questions, and the
    settings of its brand (``BrandPolicySet``) that apply to every campaign of it."""

    versions: tuple[Fact[CampaignEvent], ...] = ()
    brand_settings: tuple[Fact[BrandPolicySet], ...] = ()

    def with_event(self, recorded: Recorded) -> CampaignHistory:
        event = recorded.event
        if isinstance(event, BrandPolicySet):
            setting: Fact[BrandPolicySet] = Fact(event, recorded.position, recorded.recorded_at)
            if setting in self.brand_settings:
                return self
            ordered = tuple(sorted((*self.brand_settings, setting), key=lambda f: f.key))
            return CampaignHistory(self.versions, ordered)
        if not isinstance(event, CampaignDefined | CampaignPolicyChanged):
            raise TypeError(f"{type(event).__name__} is not a campaign event")
        fact: Fact[CampaignEvent] = Fact(event, recorded.position, recorded.recorded_at)
        if fact in self.versions:
            return self
        versions = tuple(sorted((*self.versions, fact), key=lambda f: f.key))
        return CampaignHistory(versions, self.brand_settings)

    def with_brand(self, brand: CampaignHistory) -> CampaignHistory:
        """This campaign's history with the brand settings that ``brand`` holds (a
        view keeps them apart, under the campaign key ``BRAND_SETTINGS``)."""
        if not brand.brand_settings:
            return self
        merged = self
        for setting in brand.brand_settings:
            merged = merged.with_event(setting.as_recorded())
        return merged

    def facts(self) -> list[Recorded]:
        """Every fact of the history, the brand's settings too, as recorded."""
        return [
            *(f.as_recorded() for f in self.versions),
            *(f.as_recorded() for f in self.brand_settings),
        ]

    def as_of(self, t_world: datetime, t_known: datetime | None = None) -> Campaign | None:
        """The rules in force at ``t_world`` as the ledger knew them at ``t_known``."""
        if (
            t_known is None
            and self.versions
            and t_world >= self.versions[-1].at
            and (not self.brand_settings or t_world >= self.brand_settings[-1].at)
        ):
            return self._latest  # the common question: the rules in force now
        return self._as_of(t_world, t_known)

    @cached_property
    def _latest(self) -> Campaign | None:
        last = max([f.at for f in self.versions] + [f.at for f in self.brand_settings])
        return self._as_of(last, None)

    def _as_of(self, t_world: datetime, t_known: datetime | None) -> Campaign | None:
        known = [
            (i, f)
            for i, f in enumerate(self.versions)
            if f.at <= t_world and (t_known is None or f.recorded_at <= t_known)
        ]
        if not known:
            return None
        _, fact = known[-1]
        event = fact.event
        policy: CampaignPolicy = event.policy  # type: ignore[attr-defined]
        # One-way, as the brand's setting: an opt-out of another campaign that ended
        # this one's consent while it honoured revoke-all is not undone by a later
        # version that leaves it out (only the person's newer consent is).
        if not policy.revoke_all and any(f.event.policy.revoke_all for _, f in known):  # type: ignore[attr-defined]
            policy = replace(policy, revoke_all=True)
        # One-way: the first setting that turned revoke-all on, as then known, keeps
        # it on; a later one that says otherwise lifts nothing.
        revoke_all_since = next(
            (
                f.at
                for f in self.brand_settings
                if f.event.revoke_all
                and f.at <= t_world
                and (t_known is None or f.recorded_at <= t_known)
            ),
            None,
        )
        # The content the rules in force send, since the change that gave it: the
        # versions before the one in force, back to the last of another category.
        # A change dated back counts from when it was recorded: a consent given
        # before that was given to what the ledger said the campaign sent then.
        content_since = None
        for (_, earlier), (_, later) in zip(reversed(known[:-1]), reversed(known), strict=False):
            if earlier.event.policy.content_category != policy.content_category:  # type: ignore[attr-defined]
                content_since = max(later.at, later.recorded_at)
                break
        return Campaign(
            brand=event.brand,
            campaign=event.campaign,
            policy=policy,
            # Numbered in the order recorded, so a version dated back but recorded
            # later does not renumber the one an earlier answer named.
            policy_version=1 + sum(1 for f in self.versions if _placed(f) < _placed(fact)),
            policy_event_id=fact.event_id,
            revoke_all_since=revoke_all_since,
            content_since=content_since,
            reply_windows=tuple(
                ReplyWindows(f.at, p.opt_out_confirmation_window, p.conversation_window)
                for f in self.versions
                if t_known is None or f.recorded_at <= t_known
                for p in (f.event.policy,)  # type: ignore[attr-defined]
            ),
        )

    def current(self) -> Campaign | None:
        if not self.versions:
            return None
        return self.as_of(self.versions[-1].at)

    def claimed_since(self, number: str) -> LedgerPosition | None:
        """Where the campaign's claim of ``number`` began: the version from which on
        the rules in force, as each later version was recorded, listed it without a
        gap. None when the current rules do not list it. A number dropped and listed
        again is a new claim; a late version that never took force changes nothing."""
        since: LedgerPosition | None = None
        in_force: Fact[CampaignEvent] | None = None
        # One campaign's versions share a partition (they are keyed by the campaign).
        for fact in sorted(self.versions, key=lambda f: f.position.offset):
            if in_force is None or fact.key > in_force.key:
                in_force = fact
            policy: CampaignPolicy = in_force.event.policy  # type: ignore[attr-defined]
            if number not in policy.sender_numbers:
                since = None
            elif since is None:
                since = fact.position
        return since


def _placed(fact: Fact[Any]) -> tuple[int, int]:
    return (fact.position.partition, fact.position.offset)


def sender_number_holder(
    claims: Mapping[tuple[str, str], CampaignHistory], number: str
) -> tuple[str, str] | None:
    """The (brand, campaign) that replies to ``number`` belong to, of ``claims``.

    A number belongs to one campaign at a time. Two campaigns may still list it
    (data older than that rule, or two definitions that raced), and then the
    earliest claim that still holds keeps it: a later claim never takes a held
    number over. "Earliest" is ledger order, which no client can choose (the
    campaign stream is one partition, applied in order); with more partitions the
    order is still one every view agrees on, but not a chronology.
    """
    held = []
    for (brand, campaign), history in claims.items():
        since = history.claimed_since(number)
        if since is not None:
            held.append(((since.partition, since.offset), brand, campaign))
    if not held:
        return None
    _, brand, campaign = min(held)
    return brand, campaign


def fold_campaign(
    events: Iterable[Recorded], history: CampaignHistory | None = None
) -> CampaignHistory:
    current = history or CampaignHistory()
    for recorded in events:
        current = current.with_event(recorded)
    return current


def retained_facts(state: SubscriberState) -> list[Recorded]:
    """The events the state still depends on, in ledger order.

    Folding them again gives an equal state (every field is "latest by key" or a
    set), which is how a projection stores a state without a second schema for it.
    """
    return [f.as_recorded() for f in retained(state)]


def retained(state: SubscriberState) -> list[Fact[Any]]:
    """``retained_facts`` as the state holds them, for a caller that needs no
    ``Recorded`` of each (the projection's snapshot joins their stored bytes)."""
    # By the event's UUID as its integer, not its text (Fact.event_id) nor the UUID
    # itself, whose hash and equality run in Python: the same facts, found with
    # less work, as the projection asks this of every state it writes.
    facts: dict[int, Fact[Any]] = {}
    for c in state.campaigns.values():
        kept_facts = (c.grant, c.revocation, c.resume, c.reconfirmation, c.help_request)
        undelivered = (c.undisclosed, c.unreconfirmed)
        for kept in (*kept_facts, c.last_inbound, c.revocation_said, *undelivered):
            if kept is not None:
                facts[kept.event.event_id.int] = kept
        records = (
            *c.sent,
            c.last_sent,
            c.last_disclosed,
            c.opener,
            c.reconfirming,
            c.help_reply,
            c.opt_in_confirmation,
            c.help_answer,
            c.opt_in_answer,
            *c.answered_late,
            *c.escaped,
        )
        for record in records:
            if record is not None:
                facts[record.fact.event.event_id.int] = record.fact
                for kept in record.basis:
                    facts[kept.event.event_id.int] = kept
    brand_facts: tuple[Fact[Any] | None, ...] = (
        state.brand_revocation,
        state.brand_revocation_said,
        state.brand_resume,
        state.age,
        state.last_inbound,
        state.location,
        state.erased,
    )
    for kept in brand_facts:
        if kept is not None:
            facts[kept.event.event_id.int] = kept
    for sent in (*state.brand_sent, *filter(None, (state.opt_out_answer,))):
        facts[sent.fact.event.event_id.int] = sent.fact
        for kept in sent.basis:
            facts[kept.event.event_id.int] = kept
    for candidate in state.candidates.values():
        facts[candidate.event.event_id.int] = candidate
    for resolution in state.resolutions.values():
        facts[resolution.event.event_id.int] = resolution
    if len(facts) == 1:
        return list(facts.values())
    return sorted(facts.values(), key=_ledger_order)


def _ledger_order(fact: Fact[Any]) -> tuple[int, int]:
    position = fact.position
    return (position.partition, position.offset)
