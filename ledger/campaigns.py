"""Campaign rules: what a brand declared about a campaign, and its history.

The rules in force at any past moment are themselves ledger facts
(``CampaignDefined`` / ``CampaignPolicyChanged``), so an auditor can replay a
decision with the policy that applied then.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta

from ledger.errors import InvalidCampaignPolicy

AGE_GATED_CATEGORIES = frozenset({"alcohol", "firearms", "gambling", "tobacco"})
MAX_CAP_WINDOW = timedelta(days=31)
"""The longest frequency-cap window; the fold keeps message history this long."""
MAX_OPT_OUT_CONFIRMATION_WINDOW = timedelta(minutes=5)
"""The policy allows one confirmation of an opt-out, within 5 minutes of it."""
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

    def allows(self, local: time) -> bool:
        return self.start <= local < self.end


@dataclass(frozen=True)
class CampaignPolicy:
    """A campaign's declared rules. Defaults follow the policy README."""

    purpose: CampaignPurpose = CampaignPurpose.PROMOTIONAL
    category: str = ""
    age_gated: bool = False
    first_message_window: timedelta = timedelta(days=30)
    reconfirm_interval: timedelta | None = None
    quiet_hours: QuietHours = field(default_factory=QuietHours)
    quiet_hours_apply_to_all: bool = False
    daily_cap: int | None = None
    frequency_caps: tuple[FrequencyCap, ...] = ()
    conversation_window: timedelta = MAX_CONVERSATION_WINDOW
    opt_out_confirmation_window: timedelta = MAX_OPT_OUT_CONFIRMATION_WINDOW
    sender_numbers: tuple[str, ...] = ()
    """The E.164 numbers the campaign sends from; inbound replies to them belong to it."""

    @property
    def requires_age_verification(self) -> bool:
        return self.age_gated or self.category.lower() in AGE_GATED_CATEGORIES

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
        if self.first_message_window <= timedelta(0):
            raise InvalidCampaignPolicy("first_message_window", "must be positive")
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


@dataclass(frozen=True)
class Campaign:
    """A campaign as the policy sees it: identity, rules, and which version of them."""

    brand: str
    campaign: str
    policy: CampaignPolicy
    policy_version: int
    policy_event_id: str = ""
    defined_at: datetime | None = None
