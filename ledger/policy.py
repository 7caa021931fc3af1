"""The sending policy: may we message this number for this campaign now?

``decide`` is a pure function of the folded state, the campaign's rules and the
time of the question. It checks the rules in a fixed order and answers with the
first that denies; when every rule passes it lists the obligations the next
message must meet. Every answer names the events that justify it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from ledger.campaigns import Campaign, CampaignPurpose
from ledger.events import (
    CampaignEvent,
    ConsentRevoked,
    MessageKind,
    Recorded,
    SubscriberEvent,
)
from ledger.phone import time_zones
from ledger.state import (
    CampaignConsent,
    CampaignHistory,
    Fact,
    SubscriberState,
    fold,
    fold_campaign,
)


class Reason(enum.Enum):
    """Why a decision came out as it did. One enum for allow and deny alike."""

    # allowed
    CONSENT_ACTIVE = "consent_active"
    """A standing consent of a sufficient tier for this brand and campaign."""
    CONVERSATION_REPLY = "conversation_reply"
    """The person texted first, within the conversation window (conversational only)."""
    OPT_OUT_CONFIRMATION_ALLOWED = "opt_out_confirmation_allowed"
    """The one confirmation allowed within minutes of an opt-out."""
    HELP_REPLY_ALLOWED = "help_reply_allowed"
    """A reply to the person's own HELP/INFO request."""
    # denied by the domain
    NO_CONSENT = "no_consent"
    """No consent for this brand and campaign (another campaign's does not count)."""
    REVOKED = "revoked"
    """The person opted out of this campaign."""
    REVOKED_BRAND_WIDE = "revoked_brand_wide"
    """The person opted out of every campaign of the brand (STOPALL or equivalent)."""
    REVOCATION_PENDING_REVIEW = "revocation_pending_review"
    """A reply that reads like an opt-out awaits a human decision."""
    OPT_OUT_CONFIRMATION_NOT_ALLOWED = "opt_out_confirmation_not_allowed"
    """No recent opt-out, the window passed, or the one confirmation was already sent."""
    CONSENT_TIER_INSUFFICIENT = "consent_tier_insufficient"
    """The consent held is for a lesser use (informational or conversational only)."""
    CONVERSATION_WINDOW_CLOSED = "conversation_window_closed"
    """A conversational reply, but the person's last message is too old."""
    AGE_VERIFICATION_REQUIRED = "age_verification_required"
    """An age-gated campaign and no verification of 21 or older."""
    FREQUENCY_CAP_REACHED = "frequency_cap_reached"
    """The campaign's frequency cap for this number is used up."""
    DAILY_CAP_REACHED = "daily_cap_reached"
    """The campaign's cap for the recipient's local day is used up."""
    QUIET_HOURS = "quiet_hours"
    """Outside the allowed hours in the recipient's local time."""
    TIME_ZONE_UNKNOWN = "time_zone_unknown"
    """Quiet hours apply and the recipient's time zone cannot be told from the number."""
    # denied by the service (the domain never produces these)
    CAMPAIGN_UNKNOWN = "campaign_unknown"
    """No such campaign was defined (at that time)."""
    NOT_CONSISTENT = "not_consistent"
    """The projection had not caught up with the ledger within the bound."""
    INTERNAL_ERROR = "internal_error"
    """The service could not answer; it fails closed."""


class Obligation(enum.Enum):
    """What the next message must do to be compliant."""

    INCLUDE_OPT_OUT_LANGUAGE = "include_opt_out_language"
    IDENTIFY_SENDER = "identify_sender"
    RECONFIRM_IN_THIS_MESSAGE = "reconfirm_in_this_message"
    NON_MARKETING_CONTENT_ONLY = "non_marketing_content_only"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: Reason
    obligations: tuple[Obligation, ...] = ()
    evidence: tuple[str, ...] = ()
    detail: str = ""
    policy_version: int = 0


def deny(reason: Reason, detail: str, evidence: Iterable[str] = (), version: int = 0) -> Decision:
    return Decision(False, reason, (), tuple(evidence), detail, version)


@dataclass(frozen=True)
class Standing:
    """The consent for one campaign as it stands: the latest grant/resume/revocation."""

    active: bool
    since: datetime | None
    evidence: tuple[str, ...]
    revocation: Fact[ConsentRevoked] | None


def standing(state: SubscriberState, cc: CampaignConsent) -> Standing:
    """Where one campaign's consent stands: the latest of grant, resume and revocation."""
    # At the same instant a revocation outranks a grant: doubt denies.
    candidates: list[tuple[tuple[datetime, int, int], str, Fact[Any]]] = []
    if cc.grant is not None:
        candidates.append(((cc.grant.at, 0, cc.grant.key[1]), "grant", cc.grant))
    for resume in (cc.resume, state.brand_resume):
        if resume is not None and cc.grant is not None and cc.grant.key < resume.key:
            candidates.append(((resume.at, 0, resume.key[1]), "resume", resume))
    for revocation in (cc.revocation, state.brand_revocation):
        if revocation is not None:
            candidates.append(((revocation.at, 1, revocation.key[1]), "revoke", revocation))
    if not candidates:
        return Standing(False, None, (), None)
    _, kind, fact = max(candidates, key=lambda c: c[0])
    if kind == "revoke":
        return Standing(False, None, (fact.event_id,), fact)
    assert cc.grant is not None  # "resume" is only a candidate when a grant precedes it
    evidence = (cc.grant.event_id,) if kind == "grant" else (cc.grant.event_id, fact.event_id)
    return Standing(True, fact.at, evidence, None)


def latest_revocation(state: SubscriberState, cc: CampaignConsent) -> Fact[ConsentRevoked] | None:
    """The latest opt-out on record for the campaign (its own or brand-wide), even when a
    later grant or resume outranks it."""
    found = [r for r in (cc.revocation, state.brand_revocation) if r is not None]
    return max(found, key=lambda r: r.key) if found else None


def _opt_out_confirmation(
    state: SubscriberState, cc: CampaignConsent, campaign: Campaign, now: datetime
) -> Decision:
    version = campaign.policy_version
    revocation = latest_revocation(state, cc)
    if revocation is None:
        return deny(Reason.OPT_OUT_CONFIRMATION_NOT_ALLOWED, "no opt-out to confirm", (), version)
    evidence = (revocation.event_id,)
    already = [
        s
        for s in state.brand_sent
        if s.kind is MessageKind.OPT_OUT_CONFIRMATION and s.at >= revocation.at
    ]
    if already:
        return deny(
            Reason.OPT_OUT_CONFIRMATION_NOT_ALLOWED,
            "the one confirmation for this opt-out was already sent",
            (*evidence, already[0].event_id),
            version,
        )
    window = campaign.policy.opt_out_confirmation_window
    if not revocation.at <= now <= revocation.at + window:
        return deny(
            Reason.OPT_OUT_CONFIRMATION_NOT_ALLOWED,
            f"the confirmation window of {window} after the opt-out has passed",
            evidence,
            version,
        )
    return Decision(
        True,
        Reason.OPT_OUT_CONFIRMATION_ALLOWED,
        (Obligation.IDENTIFY_SENDER, Obligation.NON_MARKETING_CONTENT_ONLY),
        evidence,
        "one confirmation of the opt-out, nothing after it",
        version,
    )


def _open_conversation(
    state: SubscriberState,
    campaign: Campaign,
    now: datetime,
    revocation: Fact[ConsentRevoked] | None,
) -> str | None:
    """The id of the inbound message that keeps a conversation open, if any."""
    inbound = state.last_inbound
    if inbound is None or not inbound.at <= now <= inbound.at + campaign.policy.conversation_window:
        return None
    if revocation is not None and inbound.key <= revocation.key:
        return None  # the opt-out itself, or anything before it, opens nothing
    return inbound.event_id


def _zones_for_quiet_hours(phone: str) -> Sequence[str]:
    return time_zones(phone)


def _quiet_hours(state: SubscriberState, campaign: Campaign, now: datetime) -> Decision | None:
    policy = campaign.policy
    if not policy.quiet_hours_apply:
        return None
    zones = _zones_for_quiet_hours(state.phone)
    if not zones:
        return deny(
            Reason.TIME_ZONE_UNKNOWN,
            "quiet hours apply and the number's time zone is unknown",
            (),
            campaign.policy_version,
        )
    # Several zones: the most restrictive wins, so every one of them must allow it.
    for zone in zones:
        local = now.astimezone(ZoneInfo(zone))
        if not policy.quiet_hours.allows(local.time()):
            return deny(
                Reason.QUIET_HOURS,
                f"{local:%H:%M} in {zone} is outside "
                f"{policy.quiet_hours.start:%H:%M}-{policy.quiet_hours.end:%H:%M}",
                (),
                campaign.policy_version,
            )
    return None


def _caps(
    state: SubscriberState, cc: CampaignConsent, campaign: Campaign, now: datetime
) -> Decision | None:
    policy = campaign.policy
    for cap in policy.frequency_caps:
        counted = [s for s in cc.sent if now - cap.window < s.at <= now]
        if len(counted) >= cap.limit:
            return deny(
                Reason.FREQUENCY_CAP_REACHED,
                f"{len(counted)} of {cap.limit} messages in {cap.window}",
                [s.event_id for s in counted],
                campaign.policy_version,
            )
    if policy.daily_cap is not None:
        for zone in _zones_for_quiet_hours(state.phone) or ("UTC",):
            tz = ZoneInfo(zone)
            today = now.astimezone(tz).date()
            counted = [s for s in cc.sent if s.at <= now and s.at.astimezone(tz).date() == today]
            if len(counted) >= policy.daily_cap:
                return deny(
                    Reason.DAILY_CAP_REACHED,
                    f"{len(counted)} of {policy.daily_cap} messages on {today} in {zone}",
                    [s.event_id for s in counted],
                    campaign.policy_version,
                )
    return None


def _age_gate(state: SubscriberState, campaign: Campaign, now: datetime) -> Decision | None:
    if not campaign.policy.requires_age_verification:
        return None
    if state.age is None or not state.age.event.is_21_plus(now):
        evidence = (state.age.event_id,) if state.age else ()
        return deny(
            Reason.AGE_VERIFICATION_REQUIRED,
            "age-gated campaign: no verification of 21 or older",
            evidence,
            campaign.policy_version,
        )
    return None


def decide(
    state: SubscriberState,
    campaign: Campaign,
    now: datetime,
    kind: MessageKind = MessageKind.REGULAR,
) -> Decision:
    """May a message of ``kind`` go to ``state``'s number for ``campaign`` at ``now``?"""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    version = campaign.policy_version
    if state.brand and state.brand != campaign.brand:
        # Consent is per sender: another brand's state proves nothing here.
        return deny(Reason.NO_CONSENT, f"state is for brand {state.brand!r}", (), version)
    pending = state.pending_candidates()
    if pending:
        return deny(
            Reason.REVOCATION_PENDING_REVIEW,
            f"reply {pending[0].event.text!r} reads like an opt-out and awaits review",
            [c.event_id for c in pending],
            version,
        )

    cc = state.campaign(campaign.campaign)
    if kind is MessageKind.OPT_OUT_CONFIRMATION:
        return _opt_out_confirmation(state, cc, campaign, now)

    current = standing(state, cc)
    if current.revocation is not None:
        reason = (
            Reason.REVOKED_BRAND_WIDE if current.revocation.event.brand_wide else Reason.REVOKED
        )
        return deny(reason, "opted out; new consent is needed", current.evidence, version)

    purpose = campaign.policy.purpose
    revocation = latest_revocation(state, cc)
    if kind is MessageKind.HELP_REPLY:
        inbound = _open_conversation(state, campaign, now, None)
        if inbound is None:
            return deny(
                Reason.CONVERSATION_WINDOW_CLOSED, "no recent message asked for help", (), version
            )
        return Decision(
            True,
            Reason.HELP_REPLY_ALLOWED,
            (Obligation.IDENTIFY_SENDER, Obligation.NON_MARKETING_CONTENT_ONLY),
            (inbound,),
            "a reply to the person's own request",
            version,
        )

    if not current.active:
        if purpose is CampaignPurpose.CONVERSATIONAL:
            inbound = _open_conversation(state, campaign, now, revocation)
            if inbound is None:
                return deny(
                    Reason.CONVERSATION_WINDOW_CLOSED,
                    "the person has not texted within the conversation window",
                    (),
                    version,
                )
            return Decision(
                True,
                Reason.CONVERSATION_REPLY,
                (),
                (inbound,),
                "a reply inside the conversation the person started",
                version,
            )
        if state.last_inbound is not None and _open_conversation(state, campaign, now, revocation):
            return deny(
                Reason.CONSENT_TIER_INSUFFICIENT,
                "texting first consents to that conversation only, "
                f"never to a {purpose.name.lower()} campaign",
                (state.last_inbound.event_id,),
                version,
            )
        other = sorted(name for name, c in state.campaigns.items() if c.grant is not None)
        detail = "no consent for this campaign" + (
            f" (consent for {', '.join(other)} does not count)" if other else ""
        )
        return deny(Reason.NO_CONSENT, detail, (), version)

    assert cc.grant is not None and current.since is not None
    tier = cc.grant.event.tier
    if tier < purpose:
        return deny(
            Reason.CONSENT_TIER_INSUFFICIENT,
            f"{tier.name.lower()} consent does not allow a {purpose.name.lower()} campaign",
            current.evidence,
            version,
        )

    evidence = list(current.evidence)
    for check in (
        _age_gate(state, campaign, now),
        _caps(state, cc, campaign, now),
        _quiet_hours(state, campaign, now),
    ):
        if check is not None:
            return Decision(
                False, check.reason, (), (*evidence, *check.evidence), check.detail, version
            )

    obligations = {Obligation.IDENTIFY_SENDER}
    first = cc.last_sent is None or cc.last_sent.at < current.since
    if first:
        obligations.add(Obligation.INCLUDE_OPT_OUT_LANGUAGE)
    basis = current.since
    if cc.reconfirmation is not None and cc.reconfirmation.at >= current.since:
        basis = cc.reconfirmation.at
        evidence.append(cc.reconfirmation.event_id)
    policy = campaign.policy
    silent_since_basis = cc.last_sent is None or cc.last_sent.at < basis
    if (silent_since_basis and now - basis > policy.first_message_window) or (
        policy.reconfirm_interval is not None and now - basis > policy.reconfirm_interval
    ):
        obligations.add(Obligation.RECONFIRM_IN_THIS_MESSAGE)
    if purpose is not CampaignPurpose.PROMOTIONAL:
        obligations.add(Obligation.NON_MARKETING_CONTENT_ONLY)
    if campaign.policy_event_id:
        evidence.append(campaign.policy_event_id)
    return Decision(
        True,
        Reason.CONSENT_ACTIVE,
        tuple(sorted(obligations, key=lambda o: o.value)),
        tuple(evidence),
        "consent stands",
        version,
    )


def decide_as_of(
    history: Iterable[Recorded],
    campaign: str,
    t_world: datetime,
    t_known: datetime,
    kind: MessageKind = MessageKind.REGULAR,
) -> Decision:
    """The decision as it stood at world time ``t_world``, from what the ledger knew at ``t_known``.

    ``history`` holds one phone's subscriber events for one brand and that brand's
    campaign events, in ledger order. Facts that happened after ``t_world``, or that
    the ledger learned after ``t_known``, are left out; the campaign rules are the
    ones in force at ``t_world`` as known at ``t_known``.
    """
    subscriber: list[Recorded] = []
    campaign_events: list[Recorded] = []
    for r in history:
        if r.event.occurred_at > t_world or r.recorded_at > t_known:
            continue
        if isinstance(r.event, SubscriberEvent):
            subscriber.append(r)
        elif isinstance(r.event, CampaignEvent) and r.event.campaign == campaign:
            campaign_events.append(r)
    rules = fold_campaign(campaign_events, CampaignHistory()).as_of(t_world, t_known)
    if rules is None:
        return deny(Reason.CAMPAIGN_UNKNOWN, f"campaign {campaign!r} was not defined at that time")
    return decide(fold(subscriber), rules, t_world, kind)
