"""The opt-out rate: how many people withdrew consent against how many texts went out.

Carriers suspend a sender whose opt-out rate is high (the provider's suspension
notice names "High Opt-Out rates" beside high error rates as grounds, reads a high
rate as a sign of unwanted messaging, and calls 0 to 0.3 % a good rate). The
ledger holds both halves of the ratio, so it can say where a brand or a campaign
stands before a carrier does.

What is counted, over a window ``[start, end)`` of world time (``occurred_at``):

* **messages sent**: every ``MessageSent`` of the brand (of the campaign, when one
  is named), whatever its kind: a carrier counts every text;
* **opt-outs**: the distinct numbers with a ``ConsentRevoked`` of the brand in the
  window. For one campaign: those that name the campaign, and the brand-wide ones
  (STOPALL, or a free-text reply resolved as an opt-out) of numbers the campaign
  texted in the window. A brand-wide opt-out withdraws every campaign's consent,
  but it is a verdict on the campaigns that were texting the person, not on one
  that never did. A number that opts out twice counts once;
* **opt-outs pending review**: the distinct numbers with a
  ``RevocationCandidateFlagged`` of the brand in the window (by the hold's own
  time) that no ``RevocationCandidateResolved`` answers yet, and not among the
  opt-outs; for one campaign, by the same rule as a brand-wide opt-out. Most holds
  are opt-outs a carrier counts already (a provider's 21610, a STOP refused for a
  detail, a reply that reads like one), so ``above_limit`` counts them too: a
  sender hears of the risk before the review, not after it. A hold resolved
  "revoked" is an opt-out of its own (at the review's time), one dismissed counts
  nowhere. Holds under ``ANY_BRAND`` are no brand's.

The messages include opt-out confirmations and HELP replies, as a carrier's count
does; with one confirmation per keyword opt-out this lowers a rate near 0.3 % by a
few thousandths of itself. Opt-outs by any channel count (keyword, web, call,
API), not only those a carrier sees.

``count_sending`` is the rule in plain Python; the views answer the same counts
from their own storage, and the conformance suite holds them to this function.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from ledger.events import (
    ConsentRevoked,
    LedgerEvent,
    MessageSent,
    RevocationCandidateFlagged,
    RevocationCandidateResolved,
)

OPT_OUT_RATE_LIMIT = 0.003
"""The top of the range the provider calls a good opt-out rate ("typically in the
range of 0-0.3%"); the policy README reads a rate above it as a suspension risk."""

DEFAULT_WINDOW = timedelta(days=30)


@dataclass(frozen=True)
class SendingCounts:
    messages_sent: int
    opt_outs: int
    opt_outs_pending_review: int = 0
    """Numbers held for review in the window and not resolved, not among ``opt_outs``."""


def count_sending(
    events: Iterable[LedgerEvent],
    brand: str,
    campaign: str | None,
    start: datetime,
    end: datetime,
) -> SendingCounts:
    """The counts of ``events`` for ``brand`` (and ``campaign``) in ``[start, end)``."""
    sent = 0
    opted_out: set[str] = set()
    texted: set[str] = set()  # the numbers the campaign texted in the window
    brand_wide: set[str] = set()
    held: dict[uuid.UUID, tuple[str, str | None]] = {}  # the window's holds: phone, campaign
    resolved: set[uuid.UUID] = set()  # at any time: a hold resolved after the window is too
    for event in events:
        if getattr(event, "brand", None) != brand:
            continue
        if isinstance(event, RevocationCandidateResolved):
            resolved.add(event.candidate_event_id)
        if not start <= event.occurred_at < end:
            continue
        if isinstance(event, MessageSent) and campaign in (None, event.campaign):
            sent += 1
            texted.add(event.phone)
        elif isinstance(event, ConsentRevoked):
            if campaign in (None, event.campaign):
                opted_out.add(event.phone)
            elif event.campaign is None:
                brand_wide.add(event.phone)
        elif isinstance(event, RevocationCandidateFlagged):
            held[event.event_id] = (event.phone, event.campaign)
    pending: set[str] = set()
    pending_brand_wide: set[str] = set()
    for event_id, (phone, named) in held.items():
        if event_id in resolved:
            continue
        if campaign in (None, named):
            pending.add(phone)
        elif named is None:
            pending_brand_wide.add(phone)
    opted = opted_out | (brand_wide & texted)
    return SendingCounts(sent, len(opted), len((pending | (pending_brand_wide & texted)) - opted))


@dataclass(frozen=True)
class OptOutRate:
    """A brand's (or one campaign's) opt-out rate over ``[start, end)``."""

    brand: str
    campaign: str | None
    start: datetime
    end: datetime
    counts: SendingCounts
    limit: float = OPT_OUT_RATE_LIMIT

    @property
    def rate(self) -> float | None:
        """Opt-outs per message sent; None when no message was sent."""
        sent = self.counts.messages_sent
        return self.counts.opt_outs / sent if sent else None

    @property
    def above_limit(self) -> bool:
        """True when the rate is above the limit. Opt-outs with no message sent in
        the window count as above it: people are opting out of texts the ledger
        has no record of in this window, which is worth a look either way. Holds
        awaiting review count as opt-outs here (not in ``rate``): a carrier counts
        them already, and the warning should come before the review."""
        counted = self.counts.opt_outs + self.counts.opt_outs_pending_review
        sent = self.counts.messages_sent
        if not sent:
            return counted > 0
        return counted / sent > self.limit
