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
  that never did. A number that opts out twice counts once.

The messages include opt-out confirmations and HELP replies, as a carrier's count
does; with one confirmation per keyword opt-out this lowers a rate near 0.3 % by a
few thousandths of itself. Opt-outs by any channel count (keyword, web, call,
API), not only those a carrier sees.

``count_sending`` is the rule in plain Python; the views answer the same counts
from their own storage, and the conformance suite holds them to this function.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from ledger.events import ConsentRevoked, LedgerEvent, MessageSent

OPT_OUT_RATE_LIMIT = 0.003
"""The top of the range the provider calls a good opt-out rate ("typically in the
range of 0-0.3%"); the policy README reads a rate above it as a suspension risk."""

DEFAULT_WINDOW = timedelta(days=30)


@dataclass(frozen=True)
class SendingCounts:
    messages_sent: int
    opt_outs: int


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
    for event in events:
        if getattr(event, "brand", None) != brand or not start <= event.occurred_at < end:
            continue
        if isinstance(event, MessageSent) and campaign in (None, event.campaign):
            sent += 1
            texted.add(event.phone)
        elif isinstance(event, ConsentRevoked):
            if campaign in (None, event.campaign):
                opted_out.add(event.phone)
            elif event.campaign is None:
                brand_wide.add(event.phone)
    return SendingCounts(sent, len(opted_out | (brand_wide & texted)))


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
        has no record of in this window, which is worth a look either way."""
        rate = self.rate
        if rate is None:
            return self.counts.opt_outs > 0
        return rate > self.limit
