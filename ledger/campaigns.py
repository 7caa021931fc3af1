"""Campaign rules: what a brand declared about a campaign, and its history.

The rules in force at any past moment are themselves ledger facts
(``CampaignDefined`` / ``CampaignPolicyChanged``), so an auditor can replay a
decision with the policy that applied then.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import NamedTuple

from ledger.errors import InvalidCampaignPolicy


class CampaignCategory(enum.Enum):
    """What a campaign's messages are about, in the terms of the provider's Acceptable
    Use and Messaging Policy (``../shared/policy/003_*``): content it never allows in
    the US, content that needs an age gate, and everything else (``GENERAL``)."""

    GENERAL = "general"
    # "Age and Geographic Gating": "alcohol, firearms, gambling, tobacco, or other
    # adult content" needs every recipient to be of the legal age where they are.
    ALCOHOL = "alcohol"
    FIREARMS = "firearms"
    GAMBLING = "gambling"
    TOBACCO = "tobacco"
    ADULT_CONTENT = "adult_content"
    # "Content We Do Not Allow", allowed "even if our customers get consent".
    CANNABIS = "cannabis"
    CBD = "cbd"
    PRESCRIPTION_DRUG_OFFERS = "prescription_drug_offers"
    HATE_SPEECH = "hate_speech"
    HARASSMENT = "harassment"
    FRAUD = "fraud"
    MALWARE = "malware"
    FILTER_EVASION = "filter_evasion"
    MISINFORMATION = "misinformation"
    PUBLIC_SAFETY_THREAT = "public_safety_threat"
    ILLEGAL = "illegal"


LEGAL_AGE = 21
"""The age an age-gated campaign's recipient must be verified to have reached: the
highest legal age for any of the gated categories in any US state, so one gate
holds wherever the recipient is (``AGE_GATED`` cites each). Outside the US it is
applied as well; it is at least the legal age in the countries we looked at, but
that was not confirmed for every one."""

AGE_GATED: dict[CampaignCategory, str] = {
    CampaignCategory.ALCOHOL: (
        "21 in every state: National Minimum Drinking Age Act of 1984, 23 U.S.C. 158"
    ),
    CampaignCategory.TOBACCO: (
        "21 for every tobacco product, e-cigarettes included, since 2019-12-20: "
        "Federal Food, Drug, and Cosmetic Act sec. 906(d)(5), 21 U.S.C. 387f(d)(5) "
        "(Further Consolidated Appropriations Act, 2020)"
    ),
    CampaignCategory.FIREARMS: (
        "21 for handguns and their ammunition from a licensed dealer, "
        "18 U.S.C. 922(b)(1); 18 for long guns federally, 21 in some states: "
        "the stricter 21, as a message cannot tell which it offers"
    ),
    CampaignCategory.GAMBLING: (
        "set by each state, 18 or 21 by state and kind of game (21 for casinos and "
        "sports betting in most): the stricter 21"
    ),
    CampaignCategory.ADULT_CONTENT: (
        "18 at least (18 U.S.C. 2256 counts anyone younger as a minor); the provider "
        "gates it with alcohol and tobacco: the stricter 21"
    ),
}
"""The age-gated categories, each with the legal age in the US and where it comes from."""

PROHIBITED: dict[CampaignCategory, str] = {
    CampaignCategory.CANNABIS: (
        "messages related to cannabis are not allowed in the United States, as federal "
        "law prohibits its sale"
    ),
    CampaignCategory.CBD: (
        "messages related to CBD are not allowed in the United States, as some states "
        "prohibit its sale"
    ),
    CampaignCategory.PRESCRIPTION_DRUG_OFFERS: (
        "offers of prescription medication that cannot legally be sold over the counter "
        "are prohibited in the United States"
    ),
    CampaignCategory.HATE_SPEECH: (
        "hateful content, or content that encourages hatred or violence, or from a hate group"
    ),
    CampaignCategory.HARASSMENT: "harassing, exploitative or abusive communications",
    CampaignCategory.FRAUD: "fraudulent messages",
    CampaignCategory.MALWARE: "malicious content, such as malware or viruses",
    CampaignCategory.FILTER_EVASION: (
        "content designed to evade unwanted-messaging detection and filters"
    ),
    CampaignCategory.MISINFORMATION: "false or inaccurate content, criminal misinformation",
    CampaignCategory.PUBLIC_SAFETY_THREAT: "content that could endanger public safety",
    CampaignCategory.ILLEGAL: "anything illegal where the recipient lives",
}
"""What the provider never allows in the US, with the policy's reason, even with consent."""

_ALIASES: dict[str, CampaignCategory] = {
    "": CampaignCategory.GENERAL,
    "adult": CampaignCategory.ADULT_CONTENT,
    "beer": CampaignCategory.ALCOHOL,
    "wine": CampaignCategory.ALCOHOL,
    "spirits": CampaignCategory.ALCOHOL,
    "liquor": CampaignCategory.ALCOHOL,
    "firearm": CampaignCategory.FIREARMS,
    "guns": CampaignCategory.FIREARMS,
    "ammunition": CampaignCategory.FIREARMS,
    "betting": CampaignCategory.GAMBLING,
    "casino": CampaignCategory.GAMBLING,
    "sports_betting": CampaignCategory.GAMBLING,
    "vape": CampaignCategory.TOBACCO,
    "vaping": CampaignCategory.TOBACCO,
    "e_cigarettes": CampaignCategory.TOBACCO,
    "nicotine": CampaignCategory.TOBACCO,
    "marijuana": CampaignCategory.CANNABIS,
    "cannabidiol": CampaignCategory.CBD,
    "prescription_drugs": CampaignCategory.PRESCRIPTION_DRUG_OFFERS,
    "prescription_medication": CampaignCategory.PRESCRIPTION_DRUG_OFFERS,
    "hate": CampaignCategory.HATE_SPEECH,
    "phishing": CampaignCategory.FRAUD,
    "scam": CampaignCategory.FRAUD,
}
"""Other names a category was written under before categories were checked."""


def category_of(text: str) -> CampaignCategory | None:
    """The category ``text`` names: a member's value or a known other name, whatever
    its case, spaces or hyphens (empty is ``GENERAL``); None when it names none."""
    key = "_".join(text.strip().lower().replace("-", " ").replace("_", " ").split())
    try:
        return CampaignCategory(key)
    except ValueError:
        return _ALIASES.get(key)


MAX_CAP_WINDOW = timedelta(days=31)
"""The longest frequency-cap window; the fold keeps message history this long (and
the clock skew a send may be stamped ahead by)."""
MAX_OPT_OUT_CONFIRMATION_WINDOW = timedelta(minutes=5)
"""The policy allows one confirmation of an opt-out, within 5 minutes of it."""
MAX_FIRST_MESSAGE_WINDOW = timedelta(days=30)
"""How long a consent may wait for its first message before that message must
reconfirm it (the provider's "reasonable period"): a campaign may shorten it."""
MAX_CONVERSATION_WINDOW = timedelta(hours=24)
"""How long texting first allows a conversational campaign to reply: a day at most.
The window is a permission no consent was recorded for; a campaign may shorten it."""


class CampaignPurpose(enum.IntEnum):
    """What a campaign sends; compared with the consent tier it needs."""

    CONVERSATIONAL = 1
    INFORMATIONAL = 2
    PROMOTIONAL = 3


@dataclass(frozen=True)
class FrequencyCap:
    """At most ``limit`` messages in any rolling ``window``."""

    limit: int
    window: timedelta


@dataclass(frozen=True)
class QuietHours:
    """Sending is allowed from ``start`` (inclusive) to ``end`` (exclusive), local time."""

    start: time = time(8, 0)
    end: time = time(21, 0)


PROOF_TEMPLATE_FIELDS = (
    "name",
    "email",
    "postal_address",
    "ip_address",
    "form_url",
    "screenshot_ref",
)
"""What the provider's proof-of-opt-in template asks for beyond the registration
date and time (always recorded): the person's name, email and physical address, the
IP address or other method of collection, the complete web URL or details of the
other collection method, and a screenshot of the form. These names (of
``ledger.events.ConsentProof`` fields) are what a campaign may require
(``CampaignPolicy.required_proof_fields``)."""


@dataclass(frozen=True)
class CampaignPolicy:
    """A campaign's declared rules. Defaults follow the policy README."""

    purpose: CampaignPurpose = CampaignPurpose.PROMOTIONAL
    category: str = ""
    age_gated: bool = False
    first_message_window: timedelta = MAX_FIRST_MESSAGE_WINDOW
    reconfirm_interval: timedelta | None = None
    quiet_hours: QuietHours = field(default_factory=QuietHours)
    quiet_hours_apply_to_all: bool = False
    daily_cap: int | None = None
    frequency_caps: tuple[FrequencyCap, ...] = ()
    conversation_window: timedelta = MAX_CONVERSATION_WINDOW
    opt_out_confirmation_window: timedelta = MAX_OPT_OUT_CONFIRMATION_WINDOW
    sender_numbers: tuple[str, ...] = ()
    """The E.164 numbers the campaign sends from; inbound replies to them belong to it."""
    required_proof_fields: tuple[str, ...] = ()
    """Proof fields every opt-in to the campaign must fill, of
    ``ledger.events.PROOF_TEMPLATE_FIELDS`` (the brand's own standard of proof)."""
    revoke_all: bool = False
    """Honour an opt-out from any campaign of the brand as one from this campaign too,
    before 47 CFR 64.1200(a)(10)'s "revoke-all" rule is in force (from then on it
    applies whatever this says: ``ledger.policy.REVOKE_ALL_EFFECTIVE``)."""

    def __post_init__(self) -> None:
        # The policy compares purposes by identity: a plain 1 or "conversational" would
        # silently never match CONVERSATIONAL, so it is made the enum here or refused.
        object.__setattr__(self, "purpose", CampaignPurpose(self.purpose))

    @property
    def content_category(self) -> CampaignCategory | None:
        """The category the policy names; None for a name the service does not know
        (one recorded before categories were checked)."""
        return category_of(self.category)

    @property
    def content_allowed(self) -> bool:
        """False for a prohibited category, or one not known: what a campaign sends
        must be told, and a name that means nothing tells nothing (fail closed)."""
        category = self.content_category
        return category is not None and category not in PROHIBITED

    @property
    def requires_age_verification(self) -> bool:
        return self.age_gated or self.content_category in AGE_GATED

    @property
    def quiet_hours_apply(self) -> bool:
        return self.quiet_hours_apply_to_all or self.purpose is CampaignPurpose.PROMOTIONAL

    def validate(self) -> None:
        """Raise ``InvalidCampaignPolicy`` naming the first inconsistent field."""
        if self.quiet_hours.start >= self.quiet_hours.end:
            raise InvalidCampaignPolicy("quiet_hours", "start must be before end")
        default = QuietHours()
        if self.quiet_hours.start < default.start or self.quiet_hours.end > default.end:
            raise InvalidCampaignPolicy(
                "quiet_hours",
                f"may only narrow the default {default.start:%H:%M}-{default.end:%H:%M}",
            )
        if self.daily_cap is not None and self.daily_cap < 1:
            raise InvalidCampaignPolicy("daily_cap", "must be at least 1 when set")
        for i, cap in enumerate(self.frequency_caps):
            if cap.limit < 1:
                raise InvalidCampaignPolicy(f"frequency_caps[{i}].limit", "must be at least 1")
            if not timedelta(0) < cap.window <= MAX_CAP_WINDOW:
                raise InvalidCampaignPolicy(
                    f"frequency_caps[{i}].window", "must be positive and at most 31 days"
                )
        for i, name in enumerate(self.required_proof_fields):
            if name not in PROOF_TEMPLATE_FIELDS:
                raise InvalidCampaignPolicy(
                    f"required_proof_fields[{i}]",
                    f"{name!r} is not one of {', '.join(PROOF_TEMPLATE_FIELDS)}",
                )
        # A longer window would let a consent left unused for years be texted with no
        # reconfirmation, which the provider's policy requires after a reasonable period.
        if not timedelta(0) < self.first_message_window <= MAX_FIRST_MESSAGE_WINDOW:
            raise InvalidCampaignPolicy(
                "first_message_window",
                "must be positive and at most 30 days (a consent unused longer must be "
                "reconfirmed by its first message)",
            )
        if self.reconfirm_interval is not None and self.reconfirm_interval <= timedelta(0):
            raise InvalidCampaignPolicy("reconfirm_interval", "must be positive when set")
        # Both windows allow a send no consent stands for: a campaign may only shorten them.
        if not timedelta(0) < self.conversation_window <= MAX_CONVERSATION_WINDOW:
            raise InvalidCampaignPolicy(
                "conversation_window",
                "must be positive and at most 24 hours (texting first allows replies for a "
                "day at most; longer needs consent)",
            )
        if not timedelta(0) < self.opt_out_confirmation_window <= MAX_OPT_OUT_CONFIRMATION_WINDOW:
            raise InvalidCampaignPolicy(
                "opt_out_confirmation_window",
                "must be positive and at most 5 minutes (the one confirmation of an opt-out "
                "follows it within 5 minutes)",
            )


class ReplyWindows(NamedTuple):
    """The windows a reply is judged by, as one version of a campaign's rules set them
    from when it took effect."""

    since: datetime
    reply: timedelta
    """``CampaignPolicy.opt_out_confirmation_window``: a HELP's, START's, opt-out's."""
    conversation: timedelta
    """``CampaignPolicy.conversation_window``: after the person's own text."""


@dataclass(frozen=True)
class Campaign:
    """A campaign as the policy sees it: identity, rules, and which version of them."""

    brand: str
    campaign: str
    policy: CampaignPolicy
    policy_version: int
    policy_event_id: str = ""
    revoke_all_since: datetime | None = None
    """When the brand's own setting (``ledger.events.BrandPolicySet``) put the
    revoke-all rule in force for all its campaigns, if it did by the moment these
    rules were read for; None if not."""
    content_since: datetime | None = None
    """When a change of the rules last gave the campaign the content category it has
    in these rules (a change from general to gambling, say), or when it was recorded
    if that is later; None when its category is the one it was defined with. A
    consent given before then was given to other content, and allows nothing under
    these rules."""
    reply_windows: tuple[ReplyWindows, ...] = ()
    """The reply windows of every version of the campaign's rules known, each from
    when it took effect, in that order; empty: this version's at any time. A reply
    is judged by the windows in force when it was sent, as its write judged it in the
    facts' own order: one recorded before the HELP or opt-out it answered, and one a
    change of the rules dated back before it gave a shorter window than its write
    read."""
