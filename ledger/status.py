"""Where a number's consent to one campaign stands, in the words audits use.

``GetConsent`` answers it and the projection stores it (``consent_status``), so it
is worked out here once, from the digest the policy reads. The stored rows are
written without ``revoke_all`` (the rule's date comes with no fact to rewrite
them), so they are no decision: their table says so. A hold awaiting review they
do say, as ``pending_review`` whatever the hold.
"""

from __future__ import annotations

import enum
from datetime import datetime

from ledger.digest import Digest, Mark, micros
from ledger.events import ConsentRevoked
from ledger.policy import Standing, revoked_elsewhere, standing
from ledger.state import Fact, SubscriberState


class ConsentState(enum.Enum):
    """The API's ``ConsentState``, member for member."""

    ACTIVE = "active"
    """A grant stands and no opt-out came after it."""
    NEVER_GRANTED = "never_granted"
    REVOKED = "revoked"
    """Opted out of this campaign."""
    REVOKED_BRAND_WIDE = "revoked_brand_wide"
    """Opted out of every campaign of the brand; or an opt-out no defined campaign
    could take awaits review, which counts for every campaign until resolved."""
    PENDING_REVIEW = "pending_review"
    """A reply that reads like an opt-out awaits review; nothing may be sent. Past its
    deadline it counts as a revocation."""
    ERASED = "erased"
    """The subscriber's personal data was erased, with the proof of every consent
    before it, no opt-in to this campaign came after it and no opt-out stands (one
    that does is named instead, as CanSend names it): nothing may be sent until a
    fresh opt-in, whatever else came after (a START, a HELP, a conversation)."""


def consent_state(
    digest: Digest,
    campaign: str,
    *,
    pending_review: bool = False,
    unattributed: bool = False,
    revoke_all: bool = False,
    content_since: datetime | None = None,
) -> ConsentState:
    """The campaign's consent as it stands now: a reply awaiting review
    (``pending_review``) outranks all else, then the latest of grant, resume and
    opt-out (``ledger.policy.standing``), and with the revoke-all rule in force for
    the campaign now (``revoke_all``: ``ledger.policy.revokes_all``) an opt-out of
    another campaign of the brand that ends this one's consent, as CanSend reads it.

    ``unattributed``: among those awaiting review is an opt-out no defined campaign
    could take (``RevocationCandidateFlagged.unattributed``). CanSend counts it as an
    opt-out of every campaign until it is resolved (``REVOKED_BRAND_WIDE``), and so
    is it said here; the holds themselves still say it awaits review.

    ``content_since``: the rules in force gave the campaign its content then
    (``ledger.campaigns.Campaign.content_since``). A grant placed before it was given
    to other content and allows nothing (CanSend's ``NO_CONSENT``): none granted."""
    if pending_review:
        return ConsentState.REVOKED_BRAND_WIDE if unattributed else ConsentState.PENDING_REVIEW
    state = _state(digest, campaign, _standing(digest, campaign, revoke_all), revoke_all)
    grant = digest.campaign(campaign).grant
    if (
        state is ConsentState.ACTIVE
        and content_since is not None
        and grant is not None
        and grant.at < micros(content_since)
    ):
        return ConsentState.NEVER_GRANTED
    return state


def _standing(digest: Digest, campaign: str, revoke_all: bool) -> Standing:
    return standing(digest, digest.campaign(campaign), campaign if revoke_all else None)


def _state(digest: Digest, campaign: str, now: Standing, revoke_all: bool) -> ConsentState:
    """``consent_state`` with nothing awaiting review, from the campaign's ``now``."""
    if now.active:
        since = now.since
        if (
            revoke_all
            and since is not None
            and revoked_elsewhere(digest, campaign, since, now.since_stated)
        ):
            return ConsentState.REVOKED_BRAND_WIDE
        return ConsentState.ACTIVE
    if now.revocation is None:
        return ConsentState.NEVER_GRANTED if digest.erased is None else ConsentState.ERASED
    return ConsentState.REVOKED_BRAND_WIDE if now.brand_wide else ConsentState.REVOKED


def revocation_in_force(
    state: SubscriberState, digest: Digest, campaign: str, *, revoke_all: bool = False
) -> Fact[ConsentRevoked] | None:
    """The opt-out that stops the campaign's sends now (the brand-wide one, the
    campaign's own, or under ``revoke_all`` another campaign's), as ``consent_state``
    reads it; None while none does."""
    current = _standing(digest, campaign, revoke_all)
    stands = _state(digest, campaign, current, revoke_all)
    if stands is ConsentState.REVOKED_BRAND_WIDE:
        if current.active and current.since is not None:
            elsewhere = revoked_elsewhere(digest, campaign, current.since, current.since_stated)
            if elsewhere is not None:
                c = state.campaign(elsewhere[0])
                return _named(elsewhere[1], c.revocation, c.revocation_said)
        mark = current.revocation
        return _named(mark, state.brand_revocation, state.brand_revocation_said)
    if stands is ConsentState.REVOKED:
        c = state.campaign(campaign)
        return _named(current.revocation, c.revocation, c.revocation_said)
    return None


def _named(
    mark: Mark | None, placed: Fact[ConsentRevoked] | None, said: Fact[ConsentRevoked] | None
) -> Fact[ConsentRevoked] | None:
    """Of a scope's opt-outs (the latest by place, and by the time it said), the one
    ``mark`` names: the one that stops the sends (``ledger.policy.standing``)."""
    if mark is not None and said is not None and mark.event_id == said.event_id:
        return said
    return placed
