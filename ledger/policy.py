"""The sending policy: may we message this number for this campaign now?

``decide`` is a pure function of the folded state, the campaign's rules and the
time of the question. It checks the rules in a fixed order and answers with the
first that denies; when every rule passes it lists the obligations the next
message must meet. Every answer names the events that justify it.

The rules read a state's digest (``ledger.digest``), never the state itself:
``decide`` digests the state and asks a ``Check``; the service asks the same
``Check`` of digests the projection stored. One set of rules serves both.
"""

from __future__ import annotations

import enum
import functools
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from functools import cache
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from ledger import state_rules
from ledger.campaigns import (
    MAX_CAP_WINDOW,
    MAX_CONVERSATION_WINDOW,
    MAX_FIRST_MESSAGE_WINDOW,
    MAX_OPT_OUT_CONFIRMATION_WINDOW,
    Campaign,
    CampaignPurpose,
    QuietHours,
    ReplyWindows,
)
from ledger.digest import (
    EPOCH,
    EVERY_BRANDS_HOLD,
    CampaignDigest,
    Digest,
    Located,
    Mark,
    Pending,
    built,
    digest_of,
    from_micros,
    micros,
    micros_of,
    with_phone_wide,
)
from ledger.events import (
    ANY_BRAND,
    BRAND_SETTINGS,
    CampaignEvent,
    ConsentTier,
    MessageKind,
    MessageSent,
    Recorded,
    SubscriberEvent,
    is_21_plus,
)
from ledger.personal_data import ERASED, SEALED
from ledger.state import (
    CampaignHistory,
    SubscriberState,
    fold,
    fold_campaign,
)
from ledger.state_rules import StateCap, StateRule

REVOKE_ALL_EFFECTIVE = datetime(2027, 1, 31, tzinfo=ZoneInfo("America/New_York"))
"""From when a revocation in reply to one campaign of a brand revokes all of them.

47 CFR 64.1200(a)(10) (the FCC's 2024 TCPA Consent Order, FCC 24-24) has a caller
treat a revocation made in reply to one kind of message as applying to all its
robocalls and robotexts on unrelated matters. The FCC delayed that part twice: from
April 11, 2025 to April 11, 2026 (Consumer and Governmental Affairs Bureau Order
DA 25-312, April 7, 2025), then to January 31, 2027 (CGB Order DA 26-12, CG Docket
No. 02-278, released January 6, 2026), the latest order found as of 2026-12-02.
Checks at or after this moment treat every campaign-scoped opt-out of the brand as
brand-wide, whenever it was sent; a campaign's ``CampaignPolicy.revoke_all``, or its
brand's own setting (``ledger.events.BrandPolicySet``, folded into
``Campaign.revoke_all_since``), does so earlier (and neither can turn it off after).
Midnight in Washington, D.C., as the business days of ``ledger.deadlines`` are counted."""


def _said(text: str) -> str:
    """What a person's words add to an answer: " 'their words'", or nothing where they
    are sealed or erased (``ledger.personal_data``): a sender reads the answer too;
    for a hold of every brand, that it is one (``EVERY_BRANDS_HOLD``)."""
    if text == EVERY_BRANDS_HOLD:
        return " held for every brand"
    return "" if text in (SEALED, ERASED) else f" {text!r}"


def _candidate(pending: Pending) -> str:
    """What a candidate awaiting review is, for an answer: a person's reply, an
    import's or a live request's opt-out held for its details (whose words say why
    it was refused), or an opt-out that named no defined campaign. One held for
    every brand is told by that alone: any brand's sender reads the answer."""
    if pending.text == EVERY_BRANDS_HOLD:
        return "a STOP held for every brand"
    if pending.provider:  # its text is the service's, not the person's, but sealed as theirs
        return "an opt-out the SMS provider reported" + (
            "" if pending.text in (SEALED, ERASED) else f" ({pending.text})"
        )
    if pending.unattributed and pending.imported:  # an import's opt-out naming no defined campaign
        return f"an imported opt-out{_said(pending.text)} naming no defined campaign"
    if pending.imported or pending.refused:
        text = pending.text
        if pending.imported:
            what = "an imported opt-out"
        elif pending.reused_id:
            what = "an opt-out refused for a request id used before"
        else:
            what = "an opt-out refused for its details"
        return what + ("" if text in (SEALED, ERASED) else f" ({text})")
    if pending.unattributed:  # a STOP or an opt-out of a campaign not defined: no reply
        return f"opt-out{_said(pending.text)} naming no defined campaign"
    return f"reply{_said(pending.text)} reads like an opt-out and"


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
    OPT_IN_CONFIRMATION_ALLOWED = "opt_in_confirmation_allowed"
    """The one confirmation of the person's own START, which resumed their consent."""
    # denied by the domain
    NO_CONSENT = "no_consent"
    """No consent for this brand and campaign (another campaign's does not count)."""
    REVOKED = "revoked"
    """The person opted out of this campaign."""
    REVOKED_BRAND_WIDE = "revoked_brand_wide"
    """The person opted out of every campaign of the brand (STOPALL or equivalent)."""
    REVOCATION_PENDING_REVIEW = "revocation_pending_review"
    """A reply that reads like an opt-out awaits a human decision."""
    REVOCATION_OVERDUE = "revocation_overdue"
    """A reply that reads like an opt-out was not resolved within the ten business days
    the law allows (47 CFR 64.1200(a)(10)): it counts as a revocation of everything."""
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
    CONTENT_NOT_ALLOWED = "content_not_allowed"
    """The campaign's category is prohibited, or not a category the service knows."""
    SUBJECT_ERASED = "subject_erased"
    """The subscriber's personal data was erased, and with it the proof of every
    earlier consent: only a fresh opt-in after the erasure allows a send."""
    REPLY_NOT_OWED = "reply_not_owed"
    """A help reply or START confirmation that no recent text of the person's asked
    for, or one already sent for it."""
    # denied by the service (the domain never produces these)
    CAMPAIGN_UNKNOWN = "campaign_unknown"
    """No such campaign was defined (at that time)."""
    NOT_CONSISTENT = "not_consistent"
    """The projection had not caught up with the ledger within the bound."""
    INTERNAL_ERROR = "internal_error"
    """The service could not answer; it fails closed."""
    INVALID_PHONE = "invalid_phone"
    """An entry of a batch is no phone number; the rest of the batch is answered."""


ALLOWING_REASONS = frozenset(
    {
        Reason.CONSENT_ACTIVE,
        Reason.CONVERSATION_REPLY,
        Reason.OPT_OUT_CONFIRMATION_ALLOWED,
        Reason.HELP_REPLY_ALLOWED,
        Reason.OPT_IN_CONFIRMATION_ALLOWED,
    }
)
"""The reasons of an answer that allows a send; every other reason denies one."""

_BY_CAMPAIGN_RULES = frozenset(
    {
        Reason.CONSENT_TIER_INSUFFICIENT,
        Reason.CONVERSATION_WINDOW_CLOSED,
        Reason.AGE_VERIFICATION_REQUIRED,
        Reason.FREQUENCY_CAP_REACHED,
        Reason.DAILY_CAP_REACHED,
    }
)
"""Denials that the campaign's rules decide (its purpose, window, age gate, caps):
each names the rules event, as an allow does. A quiet-hours denial names it when
the campaign's own window decided (``rule`` ``campaign``)."""


class Obligation(enum.Enum):
    """What the next message must do to be compliant."""

    INCLUDE_OPT_OUT_LANGUAGE = "include_opt_out_language"
    IDENTIFY_SENDER = "identify_sender"
    RECONFIRM_IN_THIS_MESSAGE = "reconfirm_in_this_message"
    NON_MARKETING_CONTENT_ONLY = "non_marketing_content_only"


class Decision(NamedTuple):
    """The answer. Immutable."""

    allowed: bool
    reason: Reason
    obligations: tuple[Obligation, ...] = ()
    evidence: tuple[str, ...] = ()
    detail: str = ""
    policy_version: int = 0
    rule: str = ""
    """The rule that decided a denial by quiet hours or caps: ``federal``, ``campaign``
    or ``state:XX`` (``ledger.state_rules``); empty for every other answer."""
    citation: str = ""
    """Where that rule is written (statute or regulation, or the campaign's policy)."""


def deny(
    reason: Reason,
    detail: str,
    evidence: Iterable[str] = (),
    version: int = 0,
    rule: str = "",
    citation: str = "",
) -> Decision:
    return built(Decision, (False, reason, (), tuple(evidence), detail, version, rule, citation))


_DEFAULT_HOURS = QuietHours()
"""The quiet hours of the policy texts; a campaign's own window lies within them."""
_CONVERSATIONAL = int(ConsentTier.CONVERSATIONAL)
_WRITTEN_NEEDED = {
    CampaignPurpose.PROMOTIONAL: (
        " (it needs the person's written agreement, 47 CFR 64.1200(f)(9): a promotional"
        " opt-in given verbally or imported (api_import) reaches informational messages only)"
    )
}
"""What a denial adds when consent of a lower tier meets a promotional campaign: a
promotional opt-in not given in writing digests as informational
(``ledger.digest.reached_tier``), so the denial says why."""
_CONSENT_ACTIVE = Reason.CONSENT_ACTIVE
_UNKNOWN: Any = object()
"""A dictionary lookup's "not there" where None is an answer."""
_EARLIEST_OFFSET = timedelta(hours=12)
"""UTC-12, the zone whose date is the earliest on Earth."""
PENDING_SEND = ""
"""The id of a send allowed and not yet recorded (``with_sends_pending``): no fact
stands for it, so an answer counts it and never names it as evidence."""
_PENDING_OFFSET = 2**63 - 1
"""Its place: after every fact the ledger holds."""


@cache
def _zone_info(name: str) -> ZoneInfo:
    """``ZoneInfo(name)``, held for good: the library holds only its 8 latest zones and
    reads the others from disk again, and a toll-free number may ring in 40."""
    return ZoneInfo(name)


class Standing(NamedTuple):
    """The consent for one campaign as it stands: the latest grant/resume/revocation."""

    active: bool
    since: int | None
    """When the consent that stands was given or resumed (``ledger.digest`` microseconds)."""
    evidence: tuple[str, ...]
    revocation: Mark | None
    """The opt-out that stands, if one does."""
    brand_wide: bool = False
    """True when that opt-out covers every campaign of the brand."""
    since_stated: int | None = None
    """When the consent that stands said it was given, where later than ``since``."""


def _not_after(
    consent: Mark | None, stated: int | None, placed: Mark, said: Mark | None
) -> Mark | None:
    """The opt-out that ``consent`` (said to be given at ``stated``, where later than
    its place) does not come after: ``placed``, the latest opt-out by place, unless
    the consent is later by place; else ``said``, the latest by the time it said
    (``CampaignDigest.revocation_said``), unless the consent said a later time. None
    when it comes after both: only then does it outrank them. At the same instant
    the opt-out wins, so doubt denies.

    Both, because each order alone let a consent outrank an opt-out it may not have
    come after (``ledger.state.stated_key``): one stated between an opt-out's place
    and its time, or one stamped ahead and recorded before an opt-out."""
    if consent is None or consent.at <= placed.at:
        return placed
    if said is not None and (consent.at if stated is None else stated) <= said.at:
        return said
    return None


def standing(digest: Digest, c: CampaignDigest, revoke_all_of: str | None = None) -> Standing:
    """Where one campaign's consent stands: the latest of grant, resume and revocation.

    ``revoke_all_of``: the campaign's name, when the revoke-all rule is in force for
    it: a START that an opt-out of another campaign ends (``revoked_elsewhere``)
    takes nothing from the grant before it either."""
    grant = c.grant
    if (
        grant is not None
        and c.revocation is None
        and digest.brand_revocation is None
        and c.resume is None
        and digest.brand_resume is None
    ):
        return built(Standing, (True, grant.at, (grant.event_id,), None, False, c.grant_stated))
    resume = c.resume
    if grant is not None and resume is not None and grant.before(resume):
        by_start = _standing_by(digest, c, resume, c.resume_stated, True)
        if by_start.active and not _ended_elsewhere(digest, revoke_all_of, by_start):
            return by_start
        # A START stated before an opt-out said its time lifts nothing, but it takes
        # nothing from the grant it came after either: one stamped ahead, later than
        # the opt-outs by both times, stands on its own (a consent never denies).
        by_grant = _standing_by(digest, c, grant, c.grant_stated, False)
        if by_grant.active and (
            not by_start.active or not _ended_elsewhere(digest, revoke_all_of, by_grant)
        ):
            return by_grant
        return by_start
    return _standing_by(digest, c, grant, c.grant_stated, False)


def _ended_elsewhere(digest: Digest, campaign: str | None, current: Standing) -> bool:
    """Whether, under the revoke-all rule for ``campaign`` (None: not in force), an
    opt-out of another campaign ends the consent ``current`` stands on."""
    if campaign is None or current.since is None:
        return False
    return revoked_elsewhere(digest, campaign, current.since, current.since_stated) is not None


def _standing_by(
    digest: Digest, c: CampaignDigest, consent: Mark | None, stated: int | None, resumed: bool
) -> Standing:
    """``standing`` with ``consent`` (the grant, or this campaign's resume after it,
    said at ``stated`` where later than its place) as the campaign's consent."""
    # This campaign's own opt-out is lifted only by this campaign's resume or a newer
    # grant; a brand-wide resume (START after STOPALL) lifts the brand-wide opt-out,
    # never a STOP the person sent this campaign on its own. A consent outranks an
    # opt-out only when it comes after it (``_not_after``).
    grant = c.grant
    own, brand = c.revocation, digest.brand_revocation
    stands = None if own is None else _not_after(consent, stated, own, c.revocation_said)
    if stands is not None:
        # The brand-wide opt-out is named instead when it stands too and is the
        # later, unless a brand-wide START lifted it.
        brand_said = digest.brand_revocation_said
        wide = None if brand is None else _not_after(consent, stated, brand, brand_said)
        if wide is not None and stands.before(wide):
            assert brand is not None
            resume = digest.brand_resume
            lifted = resume is not None and (
                _not_after(resume, digest.brand_resume_stated, brand, brand_said) is None
            )
            if not lifted:
                return Standing(False, None, (wide.event_id,), wide, True)
        return Standing(False, None, (stands.event_id,), stands, False)
    brand_resume = digest.brand_resume
    before_resume: tuple[Mark, int | None, bool] | None = None
    if (
        consent is not None
        and brand_resume is not None
        and grant is not None
        and grant.before(brand_resume)
        and consent.before(brand_resume)
    ):
        before_resume = (consent, stated, resumed)
        consent, stated, resumed = brand_resume, digest.brand_resume_stated, True
    if brand is not None:
        brand_said = digest.brand_revocation_said
        stands = _not_after(consent, stated, brand, brand_said)
        # A brand-wide START stated before a STOPALL said its time lifts nothing,
        # nor takes anything from the consent before it.
        if (
            stands is not None
            and before_resume is not None
            and _not_after(before_resume[0], before_resume[1], brand, brand_said) is None
        ):
            (consent, stated, resumed), stands = before_resume, None
        if stands is not None:
            return Standing(False, None, (stands.event_id,), stands, True)
    if consent is None:
        return Standing(False, None, (), None)
    assert grant is not None  # a resume only stands when a grant precedes it
    evidence = (grant.event_id, consent.event_id) if resumed else (grant.event_id,)
    return Standing(True, consent.at, evidence, None, False, stated)


def revoked_elsewhere(
    digest: Digest, campaign: str, since: int, stated: int | None = None
) -> tuple[str, Mark] | None:
    """Under the revoke-all rule, an opt-out of another campaign of the brand that
    ``campaign``'s consent (given at ``since``, said at ``stated`` where later) does
    not come after (``_not_after``), with that campaign's name; None when there is
    none. It is read as an opt-out of every campaign, so only this campaign's own
    newer consent (a grant, or a START to its number) outranks it: a START to the
    other campaign's number, or a new grant of it, resumes that campaign alone, as
    it does after a STOPALL. ``GetConsent`` reads it as the policy does."""
    consent = built(Mark, (since, -1, ""))  # after an opt-out only by a later time
    for other in sorted(digest.campaigns):
        if other == campaign:
            continue
        c = digest.campaign(other)
        if c.revocation is not None:
            found = _not_after(consent, stated, c.revocation, c.revocation_said)
            if found is not None:
                return other, found
    return None


def latest_revocation(digest: Digest, c: CampaignDigest) -> Mark | None:
    """The latest opt-out on record for the campaign (its own or a brand-wide one), even
    when a later grant or resume outranks it: by place, where its one confirmation
    counts from."""
    own, brand = c.revocation, digest.brand_revocation
    if own is None:
        return brand
    if brand is None or brand.before(own):
        return own
    return brand


def _imported(digest: Digest, c: CampaignDigest, revocation: Mark) -> bool:
    """Whether ``revocation`` (``latest_revocation``) was imported: the campaign's own
    opt-out or the brand's, whichever it is."""
    if revocation == c.revocation and c.revocation_imported:
        return True
    return revocation == digest.brand_revocation and digest.brand_revocation_imported


def latest_revocation_key(digest: Digest, c: CampaignDigest) -> tuple[int, int] | None:
    """The latest (time, offset) of the campaign's opt-outs and the brand's, by place
    and by the time each said (``revocation_said``): a text no later than this opens
    no conversation. A text keeps no stated time, so it must come after both."""
    keys = [
        (m.at, m.offset)
        for m in (c.revocation, c.revocation_said, digest.brand_revocation)
        if m is not None
    ]
    said = digest.brand_revocation_said
    if said is not None:
        keys.append((said.at, said.offset))
    return max(keys) if keys else None


def _erased_without_opt_in(digest: Digest, c: CampaignDigest) -> bool:
    """Whether the subject was erased and the campaign has no opt-in since: the
    erasure took every grant before it (``ledger.state``), and nothing after it but a
    fresh opt-in to this campaign allows a send. A text after it (a START, a HELP, a
    conversation) and an opt-in to another campaign are no opt-in to this one, so
    CanSend says ``SUBJECT_ERASED`` whatever else it would have said for want of
    consent; an opt-out that stands is named before this, as GetConsent names it."""
    return digest.erased is not None and c.grant is None


def _answers(reply: Mark, asked: Mark) -> bool:
    """Whether the reply ``reply`` (an opt-out's confirmation, a HELP's reply, a
    START's confirmation) answers the text or opt-out ``asked``: sent at or after it,
    or recorded after it though stamped before its place (a sender whose clock runs
    behind, the text from a gateway whose runs ahead): the ledger held it before the
    reply. Offsets of one number's facts share a partition; a reply recorded late for
    an earlier text, or under another spelling, may deny a reply, never allow one."""
    return reply.at >= asked.at or reply.offset > asked.offset


def _recorded(sends: Iterable[Mark]) -> tuple[str, ...]:
    """The ids of ``sends`` the ledger holds: one not yet recorded
    (``with_sends_pending``) has none to name."""
    return tuple(s.event_id for s in sends if s.event_id != PENDING_SEND)


def _obligations(non_marketing: bool, first: bool, reconfirm: bool) -> tuple[Obligation, ...]:
    found = {Obligation.IDENTIFY_SENDER}
    # A message that reconfirms consent also reminds how to unsubscribe, in standard
    # opt-out language (the provider's "Periodic Messages and Ongoing Consent").
    if first or reconfirm:
        found.add(Obligation.INCLUDE_OPT_OUT_LANGUAGE)
    if reconfirm:
        found.add(Obligation.RECONFIRM_IN_THIS_MESSAGE)
    if non_marketing:
        found.add(Obligation.NON_MARKETING_CONTENT_ONLY)
    return tuple(sorted(found, key=lambda o: o.value))


_OBLIGATIONS = {
    non_marketing: {
        (first, reconfirm): _obligations(non_marketing, first, reconfirm)
        for first in (False, True)
        for reconfirm in (False, True)
    }
    for non_marketing in (False, True)
}
"""The obligations of an allowed message: by whether the campaign is other than
promotional, then by (first message since the consent?, reconfirmation due?)."""


class Check:
    """One question (a campaign's rules, a moment, a kind of message) asked of digests.

    ``check(digest)`` is the decision for one phone. A batch builds one ``Check`` and
    asks it of every number, so what the numbers share (durations, the local time in
    each zone) is worked out once.
    """

    def __init__(
        self, campaign: Campaign, now: datetime, kind: MessageKind = MessageKind.REGULAR
    ) -> None:
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        policy = campaign.policy
        self.campaign = campaign
        self.policy = policy
        self.now = now
        self.kind = kind
        self.version = campaign.policy_version
        self._now = micros(now)
        # The campaign's durations in the digest's microseconds. A campaign may only
        # shorten the two windows (its definition is checked for that); one recorded
        # before that check is held to the limits as well.
        self._conversation = micros_of(min(policy.conversation_window, MAX_CONVERSATION_WINDOW))
        self._confirmation = micros_of(self._window())
        # Rules recorded before a longer window was refused are held to the longest.
        self._first_message = micros_of(min(policy.first_message_window, MAX_FIRST_MESSAGE_WINDOW))
        self._reconfirm = (
            None if policy.reconfirm_interval is None else micros_of(policy.reconfirm_interval)
        )
        self._caps = tuple((cap, micros_of(cap.window)) for cap in policy.frequency_caps)
        # The fold keeps a campaign's sends for MAX_CAP_WINDOW: a cap recorded before
        # its window was checked, longer than that or none, cannot be counted.
        self._uncountable = next(
            (c for c in policy.frequency_caps if not timedelta(0) < c.window <= MAX_CAP_WINDOW),
            None,
        )
        self._campaign_limits = bool(policy.frequency_caps) or policy.daily_cap is not None
        # Promotional sends also count towards the caps of the recipient's states.
        self._promotional = policy.purpose is CampaignPurpose.PROMOTIONAL
        self._limits = self._campaign_limits or self._promotional
        self._age_gated = policy.requires_age_verification
        self._obligations = _OBLIGATIONS[not self._promotional]
        self._content_allowed = policy.content_allowed
        since = campaign.content_since
        self._content_since = None if since is None else micros(since)
        self._quiet: dict[tuple[tuple[str, ...], tuple[str, ...]], Decision | None] = {}
        self._state_caps: dict[
            tuple[tuple[str, ...], tuple[str, ...]], tuple[tuple[StateRule, StateCap, int], ...]
        ] = {}
        # What each call would otherwise look up on the enum classes.
        self._owed = {
            MessageKind.OPT_OUT_CONFIRMATION: self._opt_out_confirmation,
            MessageKind.HELP_REPLY: self._help_reply,
            MessageKind.OPT_IN_CONFIRMATION: self._opt_in_confirmation,
        }.get(kind)
        self._replying = kind is MessageKind.CONVERSATION_REPLY
        self._revoke_all = revokes_all(campaign, now)
        self._dates: dict[tuple[str, ...], date] = {}
        self._zone_dates: dict[str, date] = {}
        self._local_times: dict[str, datetime] = {}

    def __call__(self, digest: Digest) -> Decision:
        """May a message of this kind go to the digest's number now? An allow names
        the rules it was judged by (a reply's too, allowed by the campaign's windows),
        and so does a denial by those rules (``_BY_CAMPAIGN_RULES``)."""
        decision = self._decide(digest)
        rules = self.campaign.policy_event_id
        if (
            rules
            and (
                decision.allowed
                or decision.reason in _BY_CAMPAIGN_RULES
                or decision.rule == state_rules.CAMPAIGN
            )
            and rules not in decision.evidence
        ):
            return decision._replace(evidence=(*decision.evidence, rules))
        return decision

    def _decide(self, digest: Digest) -> Decision:
        campaign, version = self.campaign, self.version
        if digest.brand and digest.brand != campaign.brand:
            # Consent is per sender: another brand's state proves nothing here.
            return deny(Reason.NO_CONSENT, f"state is for brand {digest.brand!r}", (), version)
        c = digest.campaign(campaign.campaign)
        if self._owed is not None:
            # A reply owed to the person's own STOP, HELP or START is earned by that text
            # alone (within minutes of it, once) and carries none of the campaign's
            # content: review, content, consent, age, caps and quiet hours do not apply.
            return self._owed(digest, c)
        if digest.pending:
            return self._held(digest)

        if not self._content_allowed:
            return self._content_not_allowed()

        current = standing(digest, c, self.campaign.campaign if self._revoke_all else None)
        if current.revocation is not None:
            reason = Reason.REVOKED_BRAND_WIDE if current.brand_wide else Reason.REVOKED
            return deny(reason, "opted out; new consent is needed", current.evidence, version)
        if self._revoke_all and current.since is not None:
            elsewhere = self._revoked_elsewhere(digest, current.since, current.since_stated)
            if elsewhere is not None:
                return elsewhere

        purpose = self.policy.purpose
        if not current.active:
            return self._without_consent(digest, c)

        assert c.grant is not None and current.since is not None
        if c.tier < purpose:
            return deny(
                Reason.CONSENT_TIER_INSUFFICIENT,
                f"{ConsentTier(c.tier).name.lower()} consent does not allow a "
                f"{purpose.name.lower()} campaign" + _WRITTEN_NEEDED.get(purpose, ""),
                current.evidence,
                version,
            )

        if self._content_since is not None and c.grant.at < self._content_since:
            return self._other_content(digest, c)

        if c.tier <= _CONVERSATIONAL:
            # Texting first consents to that conversation only, a recorded grant of
            # that tier included: replies inside the window, nothing after it.
            return self._without_consent(digest, c)

        evidence = current.evidence
        # A conversation reply is one only inside the window after the person's text:
        # then it does not count towards caps and needs no sender identification (a
        # follow-up in a conversation); otherwise it is a message like any other. An
        # opt-out closes the conversation a text before it opened, a newer consent too.
        replying = self._conversation_open(digest, c) if self._replying else None
        # Age, caps, then quiet hours; the first that denies answers.
        check = self._age_gate(digest) if self._age_gated else None
        if check is None and self._limits and replying is None:
            check = self._caps_reached(digest, c)
        if check is None:
            check = self._quiet.get((digest.zones, digest.regions), _UNKNOWN)
            if check is _UNKNOWN or (check is not None and digest.located is not None):
                check = self._quiet_hours(digest.zones, digest.regions, digest.located)
        if check is not None:
            return check._replace(evidence=(*evidence, *check.evidence), policy_version=version)

        since = current.since
        first_sent = c.first_sent_at
        # Opt-out language is owed until a send since the consent says it carried it.
        disclosed = c.last_disclosed_at
        first = disclosed is None or disclosed < since
        basis = since
        reconfirmation = c.reconfirmation
        if reconfirmation is not None and reconfirmation.at >= since:
            basis = reconfirmation.at
            evidence = (*evidence, reconfirmation.event_id)
        elapsed = self._now - basis
        # The first message since the consent had to reconfirm it when it came after
        # the window; one that did not leaves the reconfirmation owed.
        silent_since_basis = (
            first_sent is None or first_sent < basis or first_sent - basis > self._first_message
        )
        reconfirm = (silent_since_basis and elapsed > self._first_message) or (
            self._reconfirm is not None and elapsed > self._reconfirm
        )
        if campaign.policy_event_id:
            evidence = (*evidence, campaign.policy_event_id)
        obligations = self._obligations[first, reconfirm]
        detail = "consent stands"
        if replying is not None:
            obligations = tuple(o for o in obligations if o is not Obligation.IDENTIFY_SENDER)
            evidence, detail = (*evidence, replying), "consent stands; a reply in a conversation"
        return built(
            Decision, (True, _CONSENT_ACTIVE, obligations, evidence, detail, version, "", "")
        )

    def _other_content(self, digest: Digest, c: CampaignDigest) -> Decision:
        """The consent was given before a change of the rules gave the campaign the
        content it sends now: the person agreed to messages of another type, and
        consent is to the type of messages sent, for that use only (the provider's
        policy, ``../shared/policy/003_*``). Only an opt-in since allows it; a
        conversational campaign may still reply inside a conversation."""
        if self.policy.purpose is CampaignPurpose.CONVERSATIONAL:
            return self._without_consent(digest, c)
        assert c.grant is not None and self.campaign.content_since is not None
        category = self.policy.content_category
        named = category.value if category is not None else repr(self.policy.category)
        return deny(
            Reason.NO_CONSENT,
            f"the consent was given before {self.campaign.content_since.isoformat()}, "
            f"from when the campaign's rules made it a {named} campaign: the person "
            "agreed to other content, and a new opt-in is needed",
            (c.grant.event_id, self.campaign.policy_event_id),
            self.version,
        )

    def _content_not_allowed(self) -> Decision:
        """A campaign whose category is prohibited, or no category at all: rules
        recorded before categories were checked (``DefineCampaign`` refuses them now)."""
        category = self.policy.category
        evidence = (self.campaign.policy_event_id,) if self.campaign.policy_event_id else ()
        detail = (
            f"category {category!r} is prohibited by the provider's Acceptable Use Policy"
            if self.policy.content_category is not None
            else f"{category!r} is not a category the service knows; change the policy"
        )
        return deny(Reason.CONTENT_NOT_ALLOWED, detail, evidence, self.version)

    def _revoked_elsewhere(self, digest: Digest, since: int, stated: int | None) -> Decision | None:
        """Under the revoke-all rule (``REVOKE_ALL_EFFECTIVE``, the campaign's own
        ``revoke_all``, or its brand's setting): an opt-out of another campaign of the
        brand that stands and is no older than this campaign's consent (a consent
        given or resumed after it is the person's newer word, for this campaign). The
        one opt-out confirmation is the revoked campaign's, decided before this."""
        found = revoked_elsewhere(digest, self.campaign.campaign, since, stated)
        if found is None:
            return None
        other, revocation = found
        return deny(
            Reason.REVOKED_BRAND_WIDE,
            f"opted out of campaign {other}: a revocation of one campaign revokes "
            "every campaign of the brand (47 CFR 64.1200(a)(10), revoke-all)",
            (revocation.event_id,),
            self.version,
        )

    def _held(self, digest: Digest, why: str = "") -> Decision:
        """The answer while opt-outs held for review are pending (``digest.pending``):
        an overdue or unattributed one is a revocation, and stops what one stops."""
        revoked = self._unresolved_revocation(digest)
        if revoked is not None:
            return revoked._replace(detail=revoked.detail + why) if why else revoked
        return deny(
            Reason.REVOCATION_PENDING_REVIEW,
            f"{_candidate(digest.pending[0])} awaits review{why}",
            [p.event_id for p in digest.pending],
            self.version,
        )

    def _unresolved_revocation(self, digest: Digest) -> Decision | None:
        """A pending candidate that counts as a revocation of every campaign of the
        brand: one past its deadline (ten business days, 47 CFR 64.1200(a)(10)), or an
        opt-out no defined campaign could take (``RevocationCandidateFlagged.unattributed``),
        which may have been meant for any campaign of the brand (of any brand, when
        the brand is unknown too). A resolution, either way, ends both. Replies owed
        to the person's own text are decided before this, as after a revocation."""
        now, version = self._now, self.version
        overdue = [p for p in digest.pending if p.due <= now]
        if overdue:
            due = from_micros(overdue[0].due)
            held = overdue[0].imported or overdue[0].refused or overdue[0].provider
            came = "was held" if held else "came"
            return deny(
                Reason.REVOCATION_OVERDUE,
                f"{_candidate(overdue[0])} was not resolved by {due:%Y-%m-%d %H:%M} UTC, ten "
                f"business days after it {came}: it counts as a revocation until resolved",
                [p.event_id for p in overdue],
                version,
            )
        unattributed = [p for p in digest.pending if p.unattributed]
        if unattributed:
            what = "imported opt-out" if unattributed[0].imported else "opt-out"
            return deny(
                Reason.REVOKED_BRAND_WIDE,
                f"{what}{_said(unattributed[0].text)} names no defined campaign: it counts for "
                "every campaign until resolved",
                [p.event_id for p in unattributed],
                version,
            )
        return None

    def _without_consent(self, digest: Digest, c: CampaignDigest) -> Decision:
        version = self.version
        if _erased_without_opt_in(digest, c):
            return self._erased(digest)
        purpose = self.policy.purpose
        revocation = latest_revocation_key(digest, c)
        if purpose is CampaignPurpose.CONVERSATIONAL:
            inbound = self._open_conversation(c, revocation)
            if inbound is not None and self._revoke_all:
                # Read as an opt-out of every campaign, another campaign's closes the
                # conversation a text before it opened, as a STOPALL does.
                assert c.last_inbound is not None
                elsewhere = self._revoked_elsewhere(digest, c.last_inbound.at, None)
                if elsewhere is not None:
                    return elsewhere
            if inbound is None:
                return deny(
                    Reason.CONVERSATION_WINDOW_CLOSED,
                    "the person has not texted within the conversation window",
                    (),
                    version,
                )
            # Replies are messages too: an age-gated campaign's, a capped one's, and
            # one whose quiet hours apply to every message.
            gate = self._age_gate(digest) if self._age_gated else None
            if gate is None and self._limits and not self._replying:
                gate = self._caps_reached(digest, c)
            if gate is None:
                gate = self._quiet_hours(digest.zones, digest.regions, digest.located)
            if gate is not None:
                return gate._replace(evidence=(inbound, *gate.evidence), policy_version=version)
            return Decision(
                True,
                Reason.CONVERSATION_REPLY,
                (),
                (inbound,),
                "a reply inside the conversation the person started",
                version,
            )
        # A STOP to another campaign's number is the brand's last text too, and opened
        # nothing: that campaign's opt-out bounds it, as this one's would.
        stops = [latest_revocation_key(digest, other) for other in digest.campaigns.values()]
        texted = max((k for k in (revocation, *stops) if k is not None), default=None)
        if digest.last_inbound is not None and self._opened(digest.last_inbound, texted):
            return deny(
                Reason.CONSENT_TIER_INSUFFICIENT,
                "texting first consents to that conversation only, never to "
                f"{'an' if purpose is CampaignPurpose.INFORMATIONAL else 'a'}"
                f" {purpose.name.lower()} campaign",
                (digest.last_inbound.event_id,),
                version,
            )
        other = sorted(name for name in digest.campaigns if digest.campaign(name).grant is not None)
        detail = "no consent for this campaign" + (
            f" (consent for {', '.join(other)} does not count)" if other else ""
        )
        return deny(Reason.NO_CONSENT, detail, (), version)

    def _erased(self, digest: Digest) -> Decision:
        assert digest.erased is not None
        return deny(
            Reason.SUBJECT_ERASED,
            "the subscriber's personal data was erased, with the proof of every consent"
            " before it: only a fresh opt-in after the erasure allows a send",
            (digest.erased.event_id,),
            self.version,
        )

    def _opt_out_confirmation(self, digest: Digest, c: CampaignDigest) -> Decision:
        version = self.version
        revocation = latest_revocation(digest, c)
        if revocation is None:
            return deny(
                Reason.OPT_OUT_CONFIRMATION_NOT_ALLOWED, "no opt-out to confirm", (), version
            )
        evidence = (revocation.event_id,)
        already = [s for s in digest.confirmations if _answers(s, revocation)]
        if already:
            return deny(
                Reason.OPT_OUT_CONFIRMATION_NOT_ALLOWED,
                "the one confirmation for this opt-out was already sent",
                (*evidence, *_recorded(already)[:1]),
                version,
            )
        if not self._in_reply_window(revocation):
            return deny(
                Reason.OPT_OUT_CONFIRMATION_NOT_ALLOWED,
                f"the confirmation window of {self._window()} after the opt-out has passed",
                evidence,
                version,
            )
        asked = digest.brand_revocation_asked if revocation == digest.brand_revocation else None
        if asked is not None and self._now > asked + self._confirmation:
            # Recorded by a review of a reply or opt-out held: 47 CFR 64.1200(a)(12)
            # allows the one confirmation within five minutes of the person's
            # request, which a review hours later does not open again.
            return deny(
                Reason.OPT_OUT_CONFIRMATION_NOT_ALLOWED,
                f"the confirmation window of {self._window()} after the text or opt-out"
                f" held for review ({from_micros(asked):%Y-%m-%d %H:%M:%S} UTC) that a review"
                " recorded as this opt-out has passed",
                evidence,
                version,
            )
        if _imported(digest, c, revocation):
            # Another platform received this opt-out and owed its one confirmation
            # (47 CFR 64.1200(a)(12)); it may have sent it, and a second text after
            # the person's STOP is not ours to allow.
            return deny(
                Reason.OPT_OUT_CONFIRMATION_NOT_ALLOWED,
                "the opt-out was imported: the platform that received it owed its"
                " confirmation, not this service",
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

    def _help_reply(self, digest: Digest, c: CampaignDigest) -> Decision:
        """One reply to each HELP the person sent this campaign's number, within the
        reply window after it (the opt-out confirmation's), at any hour."""
        request, version = c.help_request, self.version
        if request is None or not self._in_reply_window(request):
            return self._not_asked("HELP")
        reply = c.help_reply
        if reply is not None and _answers(reply, request):
            return deny(
                Reason.REPLY_NOT_OWED,
                "this HELP was already answered",
                (request.event_id, *_recorded((reply,))),
                version,
            )
        return Decision(
            True,
            Reason.HELP_REPLY_ALLOWED,
            (Obligation.IDENTIFY_SENDER, Obligation.NON_MARKETING_CONTENT_ONLY),
            (request.event_id,),
            "a reply to the person's own HELP",
            version,
        )

    def _opt_in_confirmation(self, digest: Digest, c: CampaignDigest) -> Decision:
        """One confirmation of a START to this campaign's number that resumed a prior
        consent still standing, within the reply window after it, at any hour."""
        resume, version = c.resume, self.version
        if resume is None or not self._in_reply_window(resume):
            return self._not_asked("START")
        if digest.pending:
            # A START lifts no hold, and one placed after it may be the person's
            # opt-out since ("please stop" right after START): a recorded STOP there
            # denies the confirmation, so a STOP held for review does too.
            return self._held(digest, ": a START lifts no hold, so it is not confirmed")
        current = standing(digest, c, self.campaign.campaign if self._revoke_all else None)
        if current.revocation is None and _erased_without_opt_in(digest, c):
            return self._erased(digest)  # the consent a START would resume was erased
        if not current.active or resume.event_id not in current.evidence:
            return deny(
                Reason.REPLY_NOT_OWED,
                "the START resumed no consent that still stands",
                (resume.event_id, *current.evidence),
                version,
            )
        if self._revoke_all and current.since is not None:
            # Under the revoke-all rule another campaign's opt-out after the START
            # revokes what it resumed, as it would for a regular send.
            found = revoked_elsewhere(
                digest, self.campaign.campaign, current.since, current.since_stated
            )
            if found is not None:
                other, revocation = found
                return deny(
                    Reason.REPLY_NOT_OWED,
                    f"the START was followed by an opt-out of campaign {other}, which"
                    " revokes every campaign of the brand",
                    (resume.event_id, revocation.event_id),
                    version,
                )
        sent = c.opt_in_confirmation
        if sent is not None and _answers(sent, resume):
            return deny(
                Reason.REPLY_NOT_OWED,
                "this START was already confirmed",
                (resume.event_id, *_recorded((sent,))),
                version,
            )
        return Decision(
            True,
            Reason.OPT_IN_CONFIRMATION_ALLOWED,
            (
                Obligation.IDENTIFY_SENDER,
                Obligation.INCLUDE_OPT_OUT_LANGUAGE,
                Obligation.NON_MARKETING_CONTENT_ONLY,
            ),
            current.evidence,
            "one confirmation of the person's own START",
            version,
        )

    def _in_reply_window(self, asked: Mark) -> bool:
        """Whether now is within the reply window after the person's text ``asked``."""
        return asked.at <= self._now <= asked.at + self._confirmation

    def _not_asked(self, keyword: str) -> Decision:
        return deny(
            Reason.REPLY_NOT_OWED,
            f"no {keyword} to this campaign's number within the last {self._window()}",
            (),
            self.version,
        )

    def _window(self) -> timedelta:
        return min(self.policy.opt_out_confirmation_window, MAX_OPT_OUT_CONFIRMATION_WINDOW)

    def _open_conversation(
        self, c: CampaignDigest, revocation: tuple[int, int] | None
    ) -> str | None:
        """The id of the inbound message that keeps this campaign's conversation open,
        if any: the person's text to this campaign's number. A text to another
        campaign's number is that campaign's conversation only (the provider's policy:
        "the consent is limited only to that particular conversation")."""
        return self._opened(c.last_inbound, revocation)

    def _conversation_open(self, digest: Digest, c: CampaignDigest) -> str | None:
        """``_open_conversation`` under the revoke-all rule too: an opt-out of another
        campaign, read as one of every campaign, closes the conversation a text before
        it opened, as a STOPALL does (a reply to that text would escape the caps)."""
        inbound = self._open_conversation(c, latest_revocation_key(digest, c))
        if inbound is not None and self._revoke_all:
            assert c.last_inbound is not None
            if revoked_elsewhere(digest, self.campaign.campaign, c.last_inbound.at) is not None:
                return None
        return inbound

    def _opened(self, inbound: Mark | None, revocation: tuple[int, int] | None) -> str | None:
        """``inbound``'s id when it keeps a conversation open now, else None;
        ``revocation`` is where the latest opt-out stands (``latest_revocation_key``)."""
        if inbound is None or not inbound.at <= self._now <= inbound.at + self._conversation:
            return None
        if revocation is not None and (inbound.at, inbound.offset) <= revocation:
            return None  # the opt-out itself, or anything before it, opens nothing
        return inbound.event_id

    def _quiet_hours(
        self,
        zones: tuple[str, ...],
        regions: tuple[str, ...] = (),
        located: Located | None = None,
    ) -> Decision | None:
        key = (zones, regions)
        try:
            found = self._quiet[key]
        except KeyError:
            found = self._quiet[key] = self._quiet_hours_in(zones, regions)
        if found is not None and located is not None and found.rule == f"state:{located.state}":
            # The state came from the subscriber's own word: that opt-in is evidence.
            return found._replace(evidence=(*found.evidence, located.event_id))
        return found

    def _quiet_hours_in(
        self, zones: tuple[str, ...], regions: tuple[str, ...] = ()
    ) -> Decision | None:
        """``_quiet_hours_at`` now, its denial saying, for a number that may ring in
        several zones, when every one of them next allows a send, or that none does
        within a day: naming one zone alone ("02:00 in Pacific/Guam") told a sender
        to wait for an hour that, for a toll-free number, may never come."""
        found = self._quiet_hours_at(zones, regions)
        if found is None or found.reason is not Reason.QUIET_HOURS or len(zones) < 2:
            return found
        fits = self._next_moment_every_zone_allows(zones, regions)
        if fits is None:
            why = (
                f"; no moment of the next 24 hours is inside the quiet hours in all"
                f" {len(zones)} zones the number may ring in: it can be sent once its"
                " state is known (proof.region, RecordSubscriberLocation)"
            )
        else:
            why = (
                f"; every one of the {len(zones)} zones the number may ring in allows it"
                f" from {fits:%Y-%m-%dT%H:%MZ}"
            )
        return found._replace(detail=found.detail + why)

    def _next_moment_every_zone_allows(
        self, zones: tuple[str, ...], regions: tuple[str, ...]
    ) -> datetime | None:
        """The first quarter hour (UTC) of the next 24 hours at which the quiet hours
        allow a send in every one of ``zones``, or None. Zones are offset by whole
        quarter hours and the windows start and end on them, so none is skipped."""
        now = self.now.astimezone(UTC)
        start = now.replace(minute=now.minute - now.minute % 15, second=0, microsecond=0)
        return _next_quarter_every_zone_allows(self.campaign, self.kind, zones, regions, start)

    def _quiet_hours_at(
        self, zones: tuple[str, ...], regions: tuple[str, ...] = ()
    ) -> Decision | None:
        policy = self.policy
        if not policy.quiet_hours_apply:
            return None
        if not zones:
            return deny(
                Reason.TIME_ZONE_UNKNOWN,
                "quiet hours apply and the number's time zone is unknown",
                (),
                self.version,
            )
        # The federal window, then each state's, then the campaign's own: every one
        # must allow the send in every zone the recipient may be in, and the first
        # that does not is named in the answer.
        federal = state_rules.table().federal
        start, end = federal.hours
        for zone in zones:
            local = self._local_in(zone)
            if not start <= local.time() < end:
                return deny(
                    Reason.QUIET_HOURS,
                    f"{local:%H:%M} in {zone} is outside {start:%H:%M}-{end:%H:%M} "
                    f"(federal: {federal.citation})",
                    (),
                    self.version,
                    state_rules.FEDERAL,
                    federal.citation,
                )
        for rule in state_rules.rules_for(regions):
            found = self._state_quiet_hours(rule, zones)
            if found is not None:
                return found
        # A campaign may only narrow the default window (its definition is checked
        # for that); one recorded before that check is held to the default as well.
        start = max(policy.quiet_hours.start, _DEFAULT_HOURS.start)
        end = min(policy.quiet_hours.end, _DEFAULT_HOURS.end)
        # Several zones: the most restrictive wins, so every one of them must allow it.
        for zone in zones:
            local = self._local_in(zone)
            if not start <= local.time() < end:
                return deny(
                    Reason.QUIET_HOURS,
                    f"{local:%H:%M} in {zone} is outside {start:%H:%M}-{end:%H:%M} "
                    f"(the campaign's quiet hours)",
                    (),
                    self.version,
                    *self._campaign_rule(),
                )
        return None

    def _campaign_rule(self) -> tuple[str, str]:
        """``rule`` and ``citation`` of a denial by the campaign's own caps or hours: an
        answer names the rule that decided a denial by either ("The policy")."""
        return (
            state_rules.CAMPAIGN,
            f"campaign {self.campaign.campaign!r} policy version {self.version}",
        )

    def _state_quiet_hours(self, rule: StateRule, zones: tuple[str, ...]) -> Decision | None:
        """``rule``'s answer: its hours for the local day in each zone it is read in."""
        for zone in state_rules.rule_zones(rule, zones):
            local = self._local_in(zone)
            day = local.date()
            if day < rule.effective:
                continue
            hours, kind = rule.hours_on(day)
            if hours is None:
                detail = f"{kind} {day} in {zone}: {rule.name} allows no solicitation that day"
            elif not hours[0] <= local.time() < hours[1]:
                start, end = hours
                detail = (
                    f"{local:%H:%M} on {kind} in {zone} is outside {rule.name}'s "
                    f"{start:%H:%M}-{end:%H:%M}"
                )
            else:
                continue
            return deny(
                Reason.QUIET_HOURS,
                f"{detail} ({rule.rule}: {rule.citation})",
                (),
                self.version,
                rule.rule,
                rule.citation,
            )
        return None

    def _local_date(self, zones: tuple[str, ...]) -> date:
        """The person's date now: the earliest of the number's zones' dates, or, with no
        zone known, the earliest date anywhere (UTC-12), so a birthday never comes early."""
        found = self._dates.get(zones)
        if found is None:
            if zones:
                found = min(self._date_in(zone) for zone in zones)
            else:
                found = (self.now.astimezone(UTC) - _EARLIEST_OFFSET).date()
            self._dates[zones] = found
        return found

    def _local_in(self, zone: str) -> datetime:
        """Now in ``zone``, worked out once per check and zone: the federal, state and
        campaign windows all read it."""
        found = self._local_times.get(zone)
        if found is None:
            found = self._local_times[zone] = self.now.astimezone(_zone_info(zone))
        return found

    def _date_in(self, zone: str) -> date:
        """Today's date in ``zone``, worked out once per check and zone."""
        found = self._zone_dates.get(zone)
        if found is None:
            found = self._zone_dates[zone] = self._local_in(zone).date()
        return found

    def _caps_reached(self, digest: Digest, c: CampaignDigest) -> Decision | None:
        if not self._campaign_limits:  # a promotional campaign's state caps alone
            return self._state_caps_reached(digest, c)
        policy, now = self.policy, self._now
        if self._uncountable is not None:
            return deny(
                Reason.FREQUENCY_CAP_REACHED,
                f"the campaign's cap of {self._uncountable.limit} messages in "
                f"{self._uncountable.window} cannot be counted: the ledger counts sends of"
                f" the last {MAX_CAP_WINDOW.days} days; change the policy",
                (),
                self.version,
                *self._campaign_rule(),
            )
        sent = self._counted(digest, c)
        for cap, window in self._caps:
            # A send stamped after now (a sender's clock a little ahead, within the
            # accepted skew) has happened all the same: it counts.
            counted = [s for s in sent if now - window < s.at]
            if len(counted) >= cap.limit:
                return deny(
                    Reason.FREQUENCY_CAP_REACHED,
                    f"{len(counted)} of {cap.limit} messages in {cap.window}",
                    _deciding(counted),
                    self.version,
                    *self._campaign_rule(),
                )
        if policy.daily_cap is not None:
            if not digest.zones:  # no local day to count in: fail closed
                return deny(
                    Reason.TIME_ZONE_UNKNOWN,
                    "a daily cap applies and the number's time zone is unknown",
                    (),
                    self.version,
                )
            for zone in digest.zones:
                tz = _zone_info(zone)
                today = self._date_in(zone)
                # A send stamped after now is recorded, so it went out by now: today,
                # even when its stamp bears tomorrow's date (just before midnight).
                counted = [
                    s
                    for s in sent
                    if now < s.at or from_micros(s.at).astimezone(tz).date() == today
                ]
                if len(counted) >= policy.daily_cap:
                    return deny(
                        Reason.DAILY_CAP_REACHED,
                        f"{len(counted)} of {policy.daily_cap} messages on {today} in {zone}",
                        _deciding(counted),
                        self.version,
                        *self._campaign_rule(),
                    )
        if self._promotional:
            return self._state_caps_reached(digest, c)
        return None

    def _state_caps_reached(self, digest: Digest, c: CampaignDigest) -> Decision | None:
        """The caps of the recipient's states on solicitations per subject: a campaign
        is one subject, so its counted sends in each cap's window count."""
        key = (digest.regions, digest.zones)
        caps = self._state_caps.get(key)
        if caps is None:
            caps = self._state_caps[key] = self._state_caps_in_force(digest)
        if not caps:
            return None
        now, sent = self._now, self._counted(digest, c)
        for rule, cap, window in caps:
            counted = [s for s in sent if now - window < s.at]
            if len(counted) >= cap.limit:
                evidence = list(_deciding(counted))
                located = digest.located
                if located is not None and located.state == rule.state:
                    evidence.append(located.event_id)
                return deny(
                    Reason.FREQUENCY_CAP_REACHED,
                    f"{len(counted)} of {cap.limit} solicitations on this subject in "
                    f"{cap.window} ({rule.rule}: {rule.citation})",
                    evidence,
                    self.version,
                    rule.rule,
                    rule.citation,
                )
        return None

    def _counted(self, digest: Digest, c: CampaignDigest) -> tuple[Mark, ...]:
        """The campaign's sends its caps count: ``c.sent`` but the replies sent within
        the window in force then after what they answered (``answered_late``)."""
        if not c.answered_late and not c.conversed:
            return c.sent
        late = self.answered_late(c)
        return tuple([s for s in c.sent if s.event_id not in late])

    def answered_late(self, c: CampaignDigest) -> frozenset[str]:
        """The event ids of the replies of ``c`` that the facts' own order leaves out of
        the caps: each sent within the window in force then after the HELP, START or
        opt-out it answered (``CampaignDigest.answered_late``), or after the text that
        opened the conversation (``conversed``) and before any opt-out that closed it.
        One that escaped the caps when recorded but was sent outside that window (a
        change of the rules dated back shortened it) counts, as one recorded before
        its text does; so, under the revoke-all rule, does one whose exchange another
        campaign's opt-out ended (``ended_elsewhere``)."""
        sent = {s.event_id: s for s in c.sent}
        ended = {m.event_id for m in c.ended_elsewhere} if self._revoke_all else ()
        return frozenset(
            [
                m.event_id
                for marks, conversation in ((c.answered_late, False), (c.conversed, True))
                for m in marks
                if (s := sent.get(m.event_id)) is not None
                and m.at <= s.at <= m.at + self._window_at(s.at, conversation)
                and m.event_id not in ended
            ]
        )

    def _window_at(self, at: int, conversation: bool) -> int:
        """The reply window, or with ``conversation`` the conversation window, in force
        at ``at``; -1 before the campaign had rules (a reply then earned nothing)."""
        since, windows = self._reply_windows
        place = bisect_right(since, at)
        return windows[place - 1][conversation] if place else -1

    @functools.cached_property
    def _reply_windows(self) -> tuple[list[int], list[tuple[int, int]]]:
        """When each version of the rules took effect, and its reply and conversation
        windows, held to the limits as this version's are (``Campaign.reply_windows``):
        worked out only for a digest that holds a reply to judge."""
        policy = self.policy
        windows = self.campaign.reply_windows or (
            ReplyWindows(EPOCH, policy.opt_out_confirmation_window, policy.conversation_window),
        )
        return [micros(w.since) for w in windows], [
            (
                micros_of(min(w.reply, MAX_OPT_OUT_CONFIRMATION_WINDOW)),
                micros_of(min(w.conversation, MAX_CONVERSATION_WINDOW)),
            )
            for w in windows
        ]

    def _state_caps_in_force(self, digest: Digest) -> tuple[tuple[StateRule, StateCap, int], ...]:
        """(rule, cap, its window in microseconds) of each candidate state's cap in force
        now: from its first day in any zone it is read in. Worked out once per check
        and (states, zones), as the quiet hours are."""
        found = []
        for rule in state_rules.rules_for(digest.regions):
            cap = rule.cap
            if cap is None:
                continue
            zones = state_rules.rule_zones(rule, digest.zones)
            if any(self._date_in(zone) >= rule.effective for zone in zones):
                found.append((rule, cap, micros_of(cap.window)))
        return tuple(found)

    def _age_gate(self, digest: Digest) -> Decision | None:
        if not self.policy.requires_age_verification:
            return None
        age = digest.age
        if age is None or not is_21_plus(
            age.verified_21_plus, age.date_of_birth, self._local_date(digest.zones)
        ):
            return deny(
                Reason.AGE_VERIFICATION_REQUIRED,
                "age-gated campaign: no verification of 21 or older",
                (age.event_id,) if age else (),
                self.version,
            )
        return None


@functools.lru_cache(maxsize=1024)
def _next_quarter_every_zone_allows(
    campaign: Campaign,
    kind: MessageKind,
    zones: tuple[str, ...],
    regions: tuple[str, ...],
    start: datetime,
) -> datetime | None:
    """``Check._next_moment_every_zone_allows`` from the quarter hour ``start``: a
    day's scan, kept for the quarter hour, as every denial in it has the same answer
    (a batch at night asks it once, not once for each number)."""
    for step in range(1, 24 * 4 + 1):
        moment = start + timedelta(minutes=15 * step)
        if Check(campaign, moment, kind)._quiet_hours_at(zones, regions) is None:
            return moment
    return None


def revokes_all(campaign: Campaign, at: datetime) -> bool:
    """Whether an opt-out of ``campaign`` at ``at`` (its rules then) revokes every
    campaign of its brand: the revoke-all rule (``REVOKE_ALL_EFFECTIVE``), the
    campaign's own ``revoke_all``, or its brand's setting."""
    return (
        campaign.policy.revoke_all
        or campaign.revoke_all_since is not None
        or at >= REVOKE_ALL_EFFECTIVE
    )


def earns_exemption(digest: Digest, campaign: Campaign, at: datetime, kind: MessageKind) -> bool:
    """Whether a send of ``kind`` at ``at`` earned what lets it escape the caps: a reply
    owed to the person's STOP, HELP or START that was still owed (``Check`` allows
    it), or a conversation reply inside the window after the person's own text.
    Recorded with the send (``MessageSent.exempt``); a send that did not earn it counts
    like any other. Regular sends and reconfirmation requests never do."""
    if kind in (MessageKind.REGULAR, MessageKind.RECONFIRMATION_REQUEST):
        return False
    check = Check(campaign, at, kind)
    if kind is MessageKind.CONVERSATION_REPLY:
        c = digest.campaign(campaign.campaign)
        if _erased_without_opt_in(digest, c):
            return False  # an erasure leaves no conversation open without an opt-in
        return check._conversation_open(digest, c) is not None
    return check(digest).allowed


def answered_late(
    state: SubscriberState, rules: Iterable[Recorded], now: datetime
) -> frozenset[str]:
    """The event ids of the replies of ``state`` that ``CanSend`` leaves out of the
    caps at ``now`` as answered late (``Check.answered_late``) by each campaign's rules
    then, of ``rules`` (its brand's campaign facts): the proof packet and the sweep
    judge those replies owed, as the caps do. A reply that escaped the caps when
    recorded (``CampaignConsent.escaped``) is judged as recorded: it is not one."""
    found: set[str] = set()
    digest = digest_of(state)
    for name, c in digest.campaigns.items():
        late = {r.event_id for r in state.campaign(name).answered_late}
        if not late:
            continue
        facts = [
            r
            for r in rules
            if isinstance(r.event, CampaignEvent) and r.event.campaign in (name, BRAND_SETTINGS)
        ]
        current = fold_campaign(facts, CampaignHistory()).as_of(now)
        if current is not None:
            found |= Check(current, now).answered_late(c) & late
    return frozenset(found)


def decide(
    state: SubscriberState,
    campaign: Campaign,
    now: datetime,
    kind: MessageKind = MessageKind.REGULAR,
) -> Decision:
    """May a message of ``kind`` go to ``state``'s number for ``campaign`` at ``now``?"""
    return Check(campaign, now, kind)(digest_of(state))


def with_sends_pending(
    digest: Digest, campaign: str, kind: MessageKind, at: datetime, count: int
) -> Digest:
    """``digest`` as if ``count`` messages of ``kind`` for ``campaign``, allowed and not
    yet recorded, had gone out at ``at``: each counts towards the caps, and where the
    kind is a reply owed once (a STOP's confirmation, a HELP's reply, a START's
    confirmation) it is that reply, given. They meet no obligation: the opt-out
    language and the reconfirmation a first message owes stay owed by every one of
    them, for nothing says which goes out first, nor that it reaches the person; only
    a send recorded as carrying them meets them."""
    if count <= 0:
        return digest
    mark = built(Mark, (micros(at), _PENDING_OFFSET, PENDING_SEND))
    if kind is MessageKind.OPT_OUT_CONFIRMATION:  # one for the brand's opt-out
        return digest._replace(confirmations=(*digest.confirmations, mark))
    c = digest.campaign(campaign)
    if kind is MessageKind.HELP_REPLY:
        c = c._replace(help_reply=mark)
    elif kind is MessageKind.OPT_IN_CONFIRMATION:
        c = c._replace(opt_in_confirmation=mark)
    else:
        # A reply inside a conversation escapes the caps, which it is not judged by;
        # one outside it is a message like any other, and counts.
        c = c._replace(sent=(*c.sent, *[mark] * count))
    return digest._replace(campaigns={**digest.campaigns, campaign: c})


def in_turn(decide: Callable[[int], Decision], entries: Sequence[str]) -> list[Decision]:
    """The answers for one message each to one number, asked together for one moment
    (a request's ``entries``, as its answer names them), in order: each is
    ``decide(n)``, the answer with the ``n`` entries before it that were allowed
    counted as sent then (``with_sends_pending``), and a denied one counts nothing.
    So with room for one more send under a cap the first is allowed and the rest are
    denied, their detail naming the entries counted. ``decide(0)`` is the number's
    answer alone, the one a single entry gets."""
    answers: list[Decision] = []
    allowed: list[str] = []
    known: dict[int, Decision] = {}
    for entry in entries:
        n = len(allowed)
        decision = known.get(n)
        if decision is None:
            decision = decide(n)
            if n and not decision.allowed:
                decision = decision._replace(
                    detail=f"{decision.detail}; counted as sent then: {', '.join(allowed)},"
                    " allowed before it in this request"
                )
            known[n] = decision
        answers.append(decision)
        if decision.allowed:
            allowed.append(entry)
    return answers


def decide_as_of(
    history: Iterable[Recorded],
    campaign: str,
    t_world: datetime,
    t_known: datetime,
    kind: MessageKind = MessageKind.REGULAR,
    allowing_by: datetime | None = None,
    *,
    pending: int = 0,
) -> Decision:
    """The decision as it stood at world time ``t_world``, from what the ledger knew at
    ``t_known`` (``_decided_as_of``), with what was recorded after ``allowing_by``
    counted against the moment, never for it: an allow needs the answer from what was
    recorded by ``allowing_by`` to allow too. An opt-in, a START, an age verification,
    a dismissal or a rule dated back before a send, but recorded after it, was not
    there to be asked about, and the ledger cannot tell it from one made up after the
    send. None: ``t_known``, every fact known then counting either way. ``pending``
    sends of ``kind`` allowed and not yet recorded count as gone out at ``t_world``
    (``with_sends_pending``)."""
    facts = list(history)
    answer = _decided_as_of(facts, campaign, t_world, t_known, kind, pending)
    if allowing_by is None or not answer.allowed:
        return answer
    late = _allowing_after(facts, campaign, t_world, t_known, kind, allowing_by, pending)
    if late is None:
        return answer
    recorded_then, ids = late
    if recorded_then.allowed:
        # Both allow: what was recorded after may add to what the send owed, never
        # put the allow on other grounds (an opt-in dated back under a reply inside
        # a conversation would stand as the consent it was sent on).
        return answer if answer.reason is recorded_then.reason else recorded_then
    return recorded_then._replace(
        detail=f"{recorded_then.detail}; recorded by {allowing_by.isoformat()} it was not"
        f" allowed, and what was recorded after ({ids}) does not allow it"
    )


def note_allowed_late(
    decision: Decision,
    history: Iterable[Recorded],
    campaign: str,
    t_world: datetime,
    t_known: datetime,
    kind: MessageKind,
    recorded_by: datetime,
    *,
    pending: int = 0,
) -> Decision:
    """``decision`` (``decide_as_of`` from what was known at ``t_known``, each fact
    counting either way, with ``pending`` sends), its detail naming the facts it
    allows on that were recorded after ``recorded_by`` when what was recorded by then
    did not allow: an import of an old history read as imported says, in the answer
    itself, that its allow rests on facts recorded later."""
    if not decision.allowed:
        return decision
    facts = list(history)
    late = _allowing_after(facts, campaign, t_world, t_known, kind, recorded_by, pending)
    if late is None or late[0].allowed:
        return decision
    _, ids = late
    return decision._replace(
        detail=f"{decision.detail}; allowed on what was recorded after"
        f" {recorded_by.isoformat()} ({ids}): recorded by then it was not allowed"
    )


def _allowing_after(
    facts: list[Recorded],
    campaign: str,
    t_world: datetime,
    t_known: datetime,
    kind: MessageKind,
    allowing_by: datetime,
    pending: int = 0,
) -> tuple[Decision, str] | None:
    """When facts dated by ``t_world`` were recorded after ``allowing_by`` (and by
    ``t_known``): the decision from what was recorded by ``allowing_by``, and those
    facts' ids (the latest recorded first, the one a sender would have added after its
    send; at most three)."""
    if allowing_by >= t_known:
        return None
    late = [
        r
        for r in facts
        if allowing_by < r.recorded_at <= t_known and r.event.occurred_at <= t_world
    ]
    if not late:
        return None
    recorded_then = _decided_as_of(facts, campaign, t_world, allowing_by, kind, pending)
    late.sort(key=lambda r: r.recorded_at, reverse=True)
    ids = ", ".join(str(r.event.event_id) for r in late[:3]) + (", ..." if len(late) > 3 else "")
    return recorded_then, ids


def _decided_as_of(
    history: Iterable[Recorded],
    campaign: str,
    t_world: datetime,
    t_known: datetime,
    kind: MessageKind = MessageKind.REGULAR,
    pending: int = 0,
) -> Decision:
    """The decision as it stood at world time ``t_world``, from what the ledger knew at ``t_known``
    (with ``pending`` sends not yet recorded gone out at ``t_world``).

    ``history`` holds one phone's subscriber events for one brand and that brand's
    campaign events, in ledger order. Facts that happened after ``t_world``, or that
    the ledger learned after ``t_known``, are left out (but a send the ledger had
    recorded by ``t_world``, stamped a little later, counts, as it did for a check
    made then); the campaign rules are the ones in force at ``t_world`` as known at
    ``t_known``.
    """
    subscriber: list[Recorded] = []
    phone_wide: list[Recorded] = []
    campaign_events: list[Recorded] = []
    for r in history:
        if r.recorded_at > t_known:
            continue
        # A send stamped a little after t_world (a sender's clock ahead) that the
        # ledger had by then counted towards the caps of a check made at t_world.
        sent_ahead = isinstance(r.event, MessageSent) and r.recorded_at <= t_world
        if r.event.occurred_at > t_world and not sent_ahead:
            continue
        if isinstance(r.event, SubscriberEvent):
            (phone_wide if r.event.brand == ANY_BRAND else subscriber).append(r)
        elif isinstance(r.event, CampaignEvent) and r.event.campaign in (campaign, BRAND_SETTINGS):
            # The campaign's rules, and its brand's own settings (``BrandPolicySet``).
            campaign_events.append(r)
    rules = fold_campaign(campaign_events, CampaignHistory()).as_of(t_world, t_known)
    if rules is None:
        return _undefined_then(campaign)
    wide = fold(phone_wide) if phone_wide else None
    return _decided_on(rules, fold(subscriber), wide, campaign, t_world, kind, pending)


def decide_folded(
    history: Iterable[Recorded],
    state: SubscriberState,
    wide: SubscriberState | None,
    campaign: str,
    t_world: datetime,
    t_known: datetime,
    kind: MessageKind = MessageKind.REGULAR,
) -> Decision:
    """``decide_as_of`` of ``history`` (campaign facts) and the subscriber facts folded
    into ``state`` (the brand's) and ``wide`` (those whose brand was unknown; None:
    none), when none of those happened after ``t_world`` or was recorded after
    ``t_known``: the states are then what it would fold, and are not folded again (a
    proof packet asking this of each send of a number with many sends in the window
    refolded them all for each)."""
    campaign_events = [
        r
        for r in history
        if r.recorded_at <= t_known
        and r.event.occurred_at <= t_world
        and isinstance(r.event, CampaignEvent)
        and r.event.campaign in (campaign, BRAND_SETTINGS)
    ]
    rules = fold_campaign(campaign_events, CampaignHistory()).as_of(t_world, t_known)
    if rules is None:
        return _undefined_then(campaign)
    return _decided_on(rules, state, wide, campaign, t_world, kind)


def _undefined_then(campaign: str) -> Decision:
    return deny(Reason.CAMPAIGN_UNKNOWN, f"campaign {campaign!r} was not defined at that time")


def _decided_on(
    rules: Campaign,
    state: SubscriberState,
    wide: SubscriberState | None,
    campaign: str,
    t_world: datetime,
    kind: MessageKind,
    pending: int = 0,
) -> Decision:
    """``_decided_as_of`` from the rules then and the subscriber's facts it kept, folded."""
    if wide is None and not pending:
        return decide(state, rules, t_world, kind)
    digest: Digest | None = digest_of(state)
    if wide is not None:
        # STOPs whose brand was unknown (``ANY_BRAND``) concern every brand, as in CanSend.
        digest = with_phone_wide(digest, digest_of(wide))
    assert digest is not None
    digest = with_sends_pending(digest, campaign, kind, t_world, pending)
    return Check(rules, t_world, kind)(digest)


def as_one_number(history: Iterable[Recorded], phone: str) -> list[Recorded]:
    """One person's subscriber facts, some recorded under another spelling of their
    number (``ledger.phone.forms_stored_before``), each as if recorded under ``phone``,
    in the order the ledger took them (``recorded_at``; a stable sort keeps each
    spelling's own ledger order). A fold takes one number's facts, and the ledger
    keeps each spelling's in that spelling's partition, so they are put together here."""
    facts = [
        r
        if not isinstance(r.event, SubscriberEvent) or r.event.phone == phone
        else replace(r, event=replace(r.event, phone=phone), extra=r.extra)
        for r in history
    ]
    return sorted(facts, key=lambda r: r.recorded_at)


def digest_of_history(history: Iterable[Recorded], phone: str, brand: str) -> Digest:
    """The digest CanSend reads for ``phone`` towards ``brand``, from its subscriber
    facts towards ``brand`` and towards ``ANY_BRAND`` (``as_one_number``'s)."""
    subscriber: list[Recorded] = []
    phone_wide: list[Recorded] = []
    for r in history:
        if isinstance(r.event, SubscriberEvent):
            if r.event.brand == brand:
                subscriber.append(r)
            elif r.event.brand == ANY_BRAND:
                phone_wide.append(r)
    state = fold(subscriber, SubscriberState(phone=phone, brand=brand))
    if not phone_wide:
        return digest_of(state)
    digest = with_phone_wide(digest_of(state), digest_of(fold(phone_wide)))
    assert digest is not None
    return digest


def _deciding(counted: Sequence[Mark]) -> tuple[str, ...]:
    """The counted sends (oldest first) a cap answer names: the oldest, whose leaving
    the window frees the cap, and the latest. The detail gives the count; naming every
    send would outgrow what a sender can hand back as ``relied_on`` (and a batch's
    answer), and the window between the two names the rest in the ledger. A send not
    yet recorded (``with_sends_pending``) is counted, never named: it has no id."""
    recorded = [s for s in counted if s.event_id != PENDING_SEND]
    if len(recorded) <= 2:
        return tuple(s.event_id for s in recorded)
    return (recorded[0].event_id, recorded[-1].event_id)
