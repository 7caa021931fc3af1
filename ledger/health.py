"""Campaign health: the opt-out rate and the error rate of a brand's campaigns and of
each number they send from, as a carrier sees them.

The provider's suspension notice names both grounds ("High Error Rate", "High
Opt-Out rates") and the good ranges: "A good opt-out rate is typically in the range
of 0-0.3%", "A good error rate is typically in the range of 0-6%". A rate above the
top of its range is flagged. The notice gives them for a sender as a whole, not per
brand, so the limits are the service's settings (``HealthLimits``), not a brand's.

What is counted, for the messages of the window ``[start, end)`` of world time (a
send's ``occurred_at``), per campaign and per sending number (``MessageSent.from_number``;
"" when the sender did not say):

* **messages sent**: every ``MessageSent`` of the brand, of any kind (a carrier
  counts every text), once per provider message id;
* **opt-outs**: the messages that drew an opt-out. A ``ConsentRevoked`` is
  attributed to the message that preceded it to that number: for an opt-out of one
  campaign the latest message of that campaign, for a brand-wide one (STOPALL, a
  reply resolved as an opt-out) the latest message of the brand. The replies owed to
  the person's own STOP, HELP or START are left out of "preceded": nobody opts out
  of the answer to their own keyword. A message draws at most one opt-out. An
  opt-out counts in the window of the message it is attributed to, so the rate is a
  share of the window's messages; one with no message before it is counted apart
  (``HealthReport.unattributed_opt_outs``, by the opt-out's own time). Opt-outs of a
  number that say the same (scope, own time and words: one STOP imported twice under
  two import ids) are one opt-out, as the fold reads them;
* **opt-outs pending review**: the messages a ``RevocationCandidateFlagged`` from the
  window's start on, that no ``RevocationCandidateResolved`` answers (at any time),
  is attributed to as an opt-out is, and that drew no opt-out; those with no message
  before them counted apart. Most holds are opt-outs a carrier counts already (a
  provider's 21610, a STOP refused for a detail, a reply that reads like one), so
  the opt-out flag counts them as opt-outs (the rate does not): the flag comes
  before the review. Resolved "revoked", a hold is the opt-out the review records;
  dismissed, nothing;
* **delivery errors**: the messages whose latest reported outcome
  (``DeliveryOutcomeReported``, by ``occurred_at``) is failed or undeliverable. A
  message with no report counts as no error: the error rate is of what providers
  reported, over every message sent.

"Preceded" is world time (``occurred_at``), the ledger's order breaking ties: a send
recorded after the STOP it came before (reported late, or in a batch) is still the
one the STOP answers, and a send after the STOP is never blamed for it.

``HealthTally`` reads the brand's events once and keeps, per message of the window,
a few numbers in flat arrays; per number, whether it was texted before the window
and its first text after it (per campaign, and of the brand); and the opt-outs
from the window's start on. It attributes the opt-outs when asked for the report.
It never keeps the events themselves.
"""

from __future__ import annotations

import sys
import uuid
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ledger.events import (
    ConsentRevoked,
    DeliveryOutcomeReported,
    MessageKind,
    MessageSent,
    Recorded,
    RevocationCandidateFlagged,
    RevocationCandidateResolved,
)
from ledger.opt_out_rate import OPT_OUT_RATE_LIMIT

ERROR_RATE_LIMIT = 0.06
"""The top of the range the provider calls a good error rate ("typically in the
range of 0-6%")."""

NO_NUMBER = ""
"""The sending number of the sends that named none."""

_ANSWERS = frozenset(
    {MessageKind.OPT_OUT_CONFIRMATION, MessageKind.HELP_REPLY, MessageKind.OPT_IN_CONFIRMATION}
)
"""Replies owed to the person's own keyword: no opt-out is attributed to them."""


@dataclass(frozen=True)
class HealthLimits:
    """The rates above which a campaign or a number is flagged."""

    opt_out: float = OPT_OUT_RATE_LIMIT
    error: float = ERROR_RATE_LIMIT

    def __post_init__(self) -> None:
        for name in ("opt_out", "error"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"the {name} limit must be a share from 0 to 1, got {value}")


@dataclass(frozen=True)
class HealthCounts:
    messages_sent: int = 0
    opt_outs: int = 0
    delivery_errors: int = 0
    opt_outs_pending_review: int = 0
    """The messages a hold still awaiting review was attributed to, and no opt-out."""

    def __add__(self, other: HealthCounts) -> HealthCounts:
        return HealthCounts(
            self.messages_sent + other.messages_sent,
            self.opt_outs + other.opt_outs,
            self.delivery_errors + other.delivery_errors,
            self.opt_outs_pending_review + other.opt_outs_pending_review,
        )

    @property
    def opt_out_rate(self) -> float | None:
        """Messages that drew an opt-out per message sent; None when none was sent."""
        return self.opt_outs / self.messages_sent if self.messages_sent else None

    @property
    def error_rate(self) -> float | None:
        """Messages whose delivery failed per message sent; None when none was sent."""
        return self.delivery_errors / self.messages_sent if self.messages_sent else None

    def opt_out_flagged(self, limits: HealthLimits) -> bool:
        """Whether the opt-outs, with the holds awaiting review counted as opt-outs
        (a carrier counts them already), are above the limit: the flag comes
        before the review."""
        counted = self.opt_outs + self.opt_outs_pending_review
        return bool(self.messages_sent) and counted / self.messages_sent > limits.opt_out

    def error_flagged(self, limits: HealthLimits) -> bool:
        rate = self.error_rate
        return rate is not None and rate > limits.error


@dataclass(frozen=True)
class SenderHealth:
    """One sending number of a campaign."""

    from_number: str
    counts: HealthCounts


@dataclass(frozen=True)
class CampaignHealth:
    campaign: str
    counts: HealthCounts
    """Every sending number of the campaign together."""
    senders: tuple[SenderHealth, ...]
    """By sending number, in order; ``NO_NUMBER`` for the sends that named none."""


@dataclass(frozen=True)
class HealthReport:
    brand: str
    campaign: str | None
    """The one campaign asked about; None: every campaign of the brand."""
    start: datetime
    end: datetime
    limits: HealthLimits
    campaigns: tuple[CampaignHealth, ...]
    """The campaigns that sent in the window, by name."""
    unattributed_opt_outs: int
    """Opt-outs in the window with no message of theirs before them in the ledger."""
    events_read: int = 0
    unattributed_opt_outs_pending_review: int = 0
    """Holds awaiting review in the window with no message of theirs before them."""

    @property
    def flagged(self) -> bool:
        """Whether any campaign or sending number is above a limit."""
        return any(
            counts.opt_out_flagged(self.limits) or counts.error_flagged(self.limits)
            for c in self.campaigns
            for counts in (c.counts, *(s.counts for s in c.senders))
        )


_OPTED_OUT, _ERROR, _HELD = 1, 2, 4
"""A window message's flags (``HealthTally._flags``)."""
_NOT_COUNTED = 0xFFFFFFFF
"""The bucket of a window message outside the report (another campaign's)."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_BRAND = -1
"""The scope of a brand-wide opt-out, beside the campaigns' indices (0 on)."""

Moment = tuple[int, int]
"""(``occurred_at`` in microseconds, the order the tally was fed in): what precedes what."""


def _micros(t: datetime) -> int:
    return (t - _EPOCH) // _MICROSECOND


def _said(scope: int, stated: datetime, *words: str) -> int:
    """What an opt-out (or a hold) of a number said: its scope, its own time and its
    words, hashed. Two that say the same are one person's one STOP recorded twice (an
    export imported again under other import ids), as the fold reads them: one
    revocation of the scope at that instant. Counted twice, it made a number that
    opted out once two opt-outs with no message before them."""
    return hash((scope, _micros(stated), *words))


class HealthTally:
    """Campaign health of ``brand`` (``campaign``: of that one) over ``[start, end)``,
    fed the brand's subscriber events in the ledger's order of each number's facts.

    A window message is an index into flat arrays (its moment, campaign, bucket and
    flags), not an object: a million of them are a few dozen bytes each beside their
    key, and nothing the cyclic collector walks."""

    def __init__(self, brand: str, campaign: str | None, start: datetime, end: datetime) -> None:
        self.brand, self.campaign, self.start, self.end = brand, campaign, start, end
        self.events_read = 0
        self._fed = 0
        # The window's messages (every campaign's), by (number, provider message id).
        self._window: dict[tuple[str, str], int] = {}
        self._time = array("q")
        self._order = array("Q")
        self._campaign_of = array("i")
        self._bucket_of = array("I")  # _NOT_COUNTED, or an index of _buckets
        self._flags = bytearray()
        self._outcome_at: dict[int, datetime] = {}  # the latest report's time
        self._buckets: dict[tuple[str, str], int] = {}
        self._campaigns: dict[str, int] = {}
        # Per number: its window messages an opt-out may answer, the scopes it was
        # texted in before the window, its first text after it per scope, and its
        # opt-outs from the window's start on (moment, scope, occurred_at).
        self._messages: dict[str, list[int]] = {}
        self._before: dict[str, set[int]] = {}
        self._after: dict[str, dict[int, Moment]] = {}
        self._stops: dict[str, list[tuple[Moment, int, datetime, int]]] = {}
        # The holds for review from the window's start on, as the opt-outs, by
        # event id; and every hold of the brand a review resolved, at any time.
        self._holds: dict[uuid.UUID, tuple[str, Moment, int, datetime, int]] = {}
        self._resolved: set[uuid.UUID] = set()

    def feed(self, recorded: Recorded) -> None:
        event = recorded.event
        if getattr(event, "brand", None) != self.brand:
            return
        self.events_read += 1
        self._fed += 1
        if isinstance(event, MessageSent):
            self._sent(event)
        elif isinstance(event, ConsentRevoked):
            if event.occurred_at >= self.start:
                scope = _BRAND if event.campaign is None else self._scope(event.campaign)
                moment = (_micros(event.occurred_at), self._fed)
                said = _said(scope, event.stated, event.text)
                stops = self._stops.setdefault(sys.intern(event.phone), [])
                if not any(stop[3] == said for stop in stops):
                    stops.append((moment, scope, event.occurred_at, said))
        elif isinstance(event, DeliveryOutcomeReported):
            self._reported(event)
        elif isinstance(event, RevocationCandidateFlagged):
            if event.occurred_at >= self.start:
                scope = _BRAND if event.campaign is None else self._scope(event.campaign)
                moment = (_micros(event.occurred_at), self._fed)
                said = _said(scope, event.stated, event.text, event.inbound_message_id)
                self._holds[event.event_id] = (
                    sys.intern(event.phone),
                    moment,
                    scope,
                    event.occurred_at,
                    said,
                )
        elif isinstance(event, RevocationCandidateResolved):
            self._resolved.add(event.candidate_event_id)

    def feed_all(self, events: Iterable[Recorded]) -> HealthTally:
        for recorded in events:
            self.feed(recorded)
        return self

    def _scope(self, campaign: str) -> int:
        return self._campaigns.setdefault(campaign, len(self._campaigns))

    def _sent(self, event: MessageSent) -> None:
        # One string per phone, however many events carry a copy of it.
        phone = sys.intern(event.phone)
        answer = event.kind in _ANSWERS
        scope = self._scope(event.campaign)
        if event.occurred_at < self.start:
            if not answer:
                self._before.setdefault(phone, set()).update((scope, _BRAND))
            return
        moment = (_micros(event.occurred_at), self._fed)
        if event.occurred_at >= self.end:
            if not answer:
                after = self._after.setdefault(phone, {})
                for within in (scope, _BRAND):
                    if within not in after or moment < after[within]:
                        after[within] = moment
            return
        key = (phone, event.message_id)
        if key in self._window:
            return  # the same provider message recorded again
        index = len(self._flags)
        self._window[key] = index
        self._time.append(moment[0])
        self._order.append(moment[1])
        self._campaign_of.append(scope)
        if self.campaign in (None, event.campaign):
            bucket = (event.campaign, event.from_number)
            self._bucket_of.append(self._buckets.setdefault(bucket, len(self._buckets)))
        else:
            self._bucket_of.append(_NOT_COUNTED)
        self._flags.append(0)
        if not answer:
            self._messages.setdefault(phone, []).append(index)

    def _reported(self, event: DeliveryOutcomeReported) -> None:
        index = self._window.get((event.phone, event.message_id))
        if index is None:
            return
        before = self._outcome_at.get(index)
        if before is None or event.occurred_at >= before:
            self._outcome_at[index] = event.occurred_at
            if event.outcome.is_error:
                self._flags[index] |= _ERROR
            else:
                self._flags[index] &= ~_ERROR & 0xFF

    def _attribute(self) -> tuple[int, int]:
        """Mark each window message an opt-out answers, and each a hold still awaiting
        review answers; the opt-outs and such holds of the window with no message
        before them, counted."""
        unattributed = 0
        for phone, stops in self._stops.items():
            for moment, scope, at, _ in stops:
                unattributed += self._answered(phone, moment, scope, at, _OPTED_OUT)
        unattributed_held = 0
        pending: set[tuple[str, int]] = set()  # the holds counted, as (phone, _said)
        for event_id, (phone, moment, scope, at, said) in self._holds.items():
            if event_id not in self._resolved and (phone, said) not in pending:
                pending.add((phone, said))
                unattributed_held += self._answered(phone, moment, scope, at, _HELD)
        return unattributed, unattributed_held

    def _answered(self, phone: str, moment: Moment, scope: int, at: datetime, flag: int) -> bool:
        """Mark with ``flag`` the window message that an opt-out (or a hold) of
        ``phone`` in ``scope`` at ``moment`` answers; True when it is of the window
        and of the report and no message came before it."""
        first_after = self._after.get(phone, {}).get(scope)
        if first_after is not None and first_after < moment:
            return False  # it answers a message after the window
        latest, latest_at = None, (-1, -1)
        for i in self._messages.get(phone, []):
            sent_at = (self._time[i], self._order[i])
            if (
                (scope == _BRAND or self._campaign_of[i] == scope)
                and sent_at < moment
                and sent_at > latest_at
            ):
                latest, latest_at = i, sent_at
        if latest is not None:
            self._flags[latest] |= flag  # once: a message draws one at most
            return False
        if scope in self._before.get(phone, ()) or at >= self.end:
            return False
        wanted = None if self.campaign is None else self._campaigns.get(self.campaign, -2)
        return wanted is None or scope in (wanted, _BRAND)

    def report(self, limits: HealthLimits | None = None) -> HealthReport:
        unattributed, unattributed_held = self._attribute()
        tallies = [[0, 0, 0, 0] for _ in self._buckets]
        for bucket, flags in zip(self._bucket_of, self._flags, strict=True):
            if bucket == _NOT_COUNTED:
                continue
            tally = tallies[bucket]
            tally[0] += 1
            tally[1] += flags & _OPTED_OUT
            tally[2] += (flags & _ERROR) >> 1
            tally[3] += flags & (_HELD | _OPTED_OUT) == _HELD  # counted once, as an opt-out
        buckets = {key: tallies[i] for key, i in self._buckets.items()}
        campaigns: dict[str, list[SenderHealth]] = {}
        for (campaign, number), (sent_, opted, errors, held) in sorted(buckets.items()):
            campaigns.setdefault(campaign, []).append(
                SenderHealth(number, HealthCounts(sent_, opted, errors, held))
            )
        return HealthReport(
            self.brand,
            self.campaign,
            self.start,
            self.end,
            limits or HealthLimits(),
            tuple(
                CampaignHealth(
                    name, sum((s.counts for s in senders), HealthCounts()), tuple(senders)
                )
                for name, senders in campaigns.items()
            ),
            unattributed,
            self.events_read,
            unattributed_held,
        )


def combine(
    brand: str,
    campaign: str | None,
    start: datetime,
    end: datetime,
    limits: HealthLimits,
    reports: Iterable[HealthReport],
) -> HealthReport:
    """One report of the tallies of disjoint sets of numbers (each partition of the
    ledger's): their counts added per campaign and sending number. Exact, because
    every count is of one number's facts, and each number is in one set alone."""
    buckets: dict[tuple[str, str], HealthCounts] = {}
    unattributed = events = held = 0
    for report in reports:
        unattributed += report.unattributed_opt_outs
        held += report.unattributed_opt_outs_pending_review
        events += report.events_read
        for c in report.campaigns:
            for s in c.senders:
                key = (c.campaign, s.from_number)
                buckets[key] = buckets.get(key, HealthCounts()) + s.counts
    campaigns: dict[str, list[SenderHealth]] = {}
    for (name, number), counts in sorted(buckets.items()):
        campaigns.setdefault(name, []).append(SenderHealth(number, counts))
    return HealthReport(
        brand,
        campaign,
        start,
        end,
        limits,
        tuple(
            CampaignHealth(name, sum((s.counts for s in senders), HealthCounts()), tuple(senders))
            for name, senders in campaigns.items()
        ),
        unattributed,
        events,
        held,
    )
