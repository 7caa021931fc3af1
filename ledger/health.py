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
  (``HealthReport.unattributed_opt_outs``, by the opt-out's own time);
* **delivery errors**: the messages whose latest reported outcome
  (``DeliveryOutcomeReported``, by ``occurred_at``) is failed or undeliverable. A
  message with no report counts as no error: the error rate is of what providers
  reported, over every message sent.

"Preceded" is the ledger's order of the number's facts (one partition holds them
all, in the order they were recorded): the STOP answers the last text the number
had been sent when the STOP was recorded.

``HealthTally`` reads the brand's events once, in that order, and keeps per number
its latest message (per campaign, and of the brand) and per message of the window
a few counters, never the events themselves.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from ledger.events import (
    ConsentRevoked,
    DeliveryOutcomeReported,
    MessageKind,
    MessageSent,
    Recorded,
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

    def __add__(self, other: HealthCounts) -> HealthCounts:
        return HealthCounts(
            self.messages_sent + other.messages_sent,
            self.opt_outs + other.opt_outs,
            self.delivery_errors + other.delivery_errors,
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
        rate = self.opt_out_rate
        return rate is not None and rate > limits.opt_out

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

    @property
    def flagged(self) -> bool:
        """Whether any campaign or sending number is above a limit."""
        return any(
            counts.opt_out_flagged(self.limits) or counts.error_flagged(self.limits)
            for c in self.campaigns
            for counts in (c.counts, *(s.counts for s in c.senders))
        )


_OPTED_OUT, _ERROR = 1, 2
"""A counted message's flags (``HealthTally._flags``)."""
_NOT_COUNTED = -1
"""The index of a message outside the report (another window or campaign)."""


class HealthTally:
    """Campaign health of ``brand`` (``campaign``: of that one) over ``[start, end)``,
    fed the brand's subscriber events in the ledger's order of each number's facts.

    A counted message is an index into flat arrays (its bucket, its flags), not an
    object: a million of them are a few bytes each beside their key, and nothing
    the cyclic collector walks."""

    def __init__(self, brand: str, campaign: str | None, start: datetime, end: datetime) -> None:
        self.brand, self.campaign, self.start, self.end = brand, campaign, start, end
        self.events_read = 0
        # Per number, its latest message per campaign, and of the brand under None.
        self._latest: dict[str, dict[str | None, int]] = {}
        # The window's messages that count, by (number, provider message id).
        self._counted: dict[tuple[str, str], int] = {}
        self._bucket_of = array("I")  # per counted message, its (campaign, number)
        self._flags = bytearray()  # per counted message, _OPTED_OUT | _ERROR
        self._outcome_at: dict[int, datetime] = {}  # the latest report's time
        self._buckets: dict[tuple[str, str], int] = {}
        self._unattributed = 0

    def feed(self, recorded: Recorded) -> None:
        event = recorded.event
        if getattr(event, "brand", None) != self.brand:
            return
        self.events_read += 1
        if isinstance(event, MessageSent):
            self._sent(event)
        elif isinstance(event, ConsentRevoked):
            self._revoked(event)
        elif isinstance(event, DeliveryOutcomeReported):
            self._reported(event)

    def feed_all(self, events: Iterable[Recorded]) -> HealthTally:
        for recorded in events:
            self.feed(recorded)
        return self

    def _sent(self, event: MessageSent) -> None:
        # One string per phone, however many events carry a copy of it.
        phone = sys.intern(event.phone)
        key = (phone, event.message_id)
        if key in self._counted:
            return  # the same provider message recorded again
        index = _NOT_COUNTED
        if self.start <= event.occurred_at < self.end and self.campaign in (
            None,
            event.campaign,
        ):
            bucket = (event.campaign, event.from_number)
            index = len(self._flags)
            self._bucket_of.append(self._buckets.setdefault(bucket, len(self._buckets)))
            self._flags.append(0)
            self._counted[key] = index
        if event.kind not in _ANSWERS:
            latest = self._latest.setdefault(phone, {})
            latest[event.campaign] = latest[None] = index

    def _revoked(self, event: ConsentRevoked) -> None:
        index = self._latest.get(event.phone, {}).get(event.campaign)
        if index is None:
            if self.start <= event.occurred_at < self.end and self.campaign in (
                None,
                event.campaign,
            ):
                self._unattributed += 1
        elif index != _NOT_COUNTED:
            self._flags[index] |= _OPTED_OUT  # once: a message draws one opt-out at most

    def _reported(self, event: DeliveryOutcomeReported) -> None:
        index = self._counted.get((event.phone, event.message_id))
        if index is None:
            return
        before = self._outcome_at.get(index)
        if before is None or event.occurred_at >= before:
            self._outcome_at[index] = event.occurred_at
            if event.outcome.is_error:
                self._flags[index] |= _ERROR
            else:
                self._flags[index] &= ~_ERROR & 0xFF

    def report(self, limits: HealthLimits | None = None) -> HealthReport:
        tallies = [[0, 0, 0] for _ in self._buckets]
        for bucket, flags in zip(self._bucket_of, self._flags, strict=True):
            tally = tallies[bucket]
            tally[0] += 1
            tally[1] += flags & _OPTED_OUT
            tally[2] += (flags & _ERROR) >> 1
        buckets = {key: tallies[i] for key, i in self._buckets.items()}
        campaigns: dict[str, list[SenderHealth]] = {}
        for (campaign, number), (sent_, opted, errors) in sorted(buckets.items()):
            campaigns.setdefault(campaign, []).append(
                SenderHealth(number, HealthCounts(sent_, opted, errors))
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
            self._unattributed,
            self.events_read,
        )
