"""A brand's own revoke-all setting (``BrandPolicySet``): 47 CFR 64.1200(a)(10)'s
rule in force for every campaign of the brand before the FCC's date, from the
moment the setting was recorded, one-way."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from ledger.commands import SetBrandPolicy, to_events
from ledger.digest import digest_of
from ledger.errors import DomainError
from ledger.events import (
    BRAND_SETTINGS,
    BrandPolicySet,
    CampaignDefined,
    LedgerPosition,
    MessageKind,
    Recorded,
    event_id_for,
)
from ledger.policy import Check, Reason, decide_as_of
from ledger.state import CampaignHistory, fold, fold_campaign
from tests.builders import BRAND, campaign, granted, record, revoked

BEFORE = datetime(2027, 1, 10, 19, 0, tzinfo=UTC)  # 11:00 in Los Angeles, before the date
SET_AT = BEFORE - timedelta(days=1)


def _defined(name: str, at: datetime, offset: int) -> Recorded:
    rules = campaign(name)
    event = CampaignDefined(
        event_id=event_id_for(f"define-{name}"),
        occurred_at=at,
        brand=BRAND,
        campaign=name,
        policy=rules.policy,
    )
    return Recorded(event, LedgerPosition(0, offset), at)


def _setting(at: datetime, offset: int, *, on: bool = True, known: datetime | None = None):
    event = BrandPolicySet(
        event_id=event_id_for(f"brand-{offset}"),
        occurred_at=at,
        brand=BRAND,
        campaign=BRAND_SETTINGS,
        revoke_all=on,
    )
    return Recorded(event, LedgerPosition(0, offset), known or at)


def _state():
    return fold(record([granted(BEFORE - timedelta(days=5), "alerts"), revoked(SET_AT, "promo")]))


def test_the_fold_puts_the_brand_setting_on_every_campaign_from_its_moment():
    history = fold_campaign(
        [_defined("alerts", BEFORE - timedelta(days=30), 0), _setting(SET_AT, 1)]
    )
    rules = history.as_of(BEFORE)
    assert rules is not None and rules.revoke_all_since == SET_AT
    earlier = history.as_of(SET_AT - timedelta(seconds=1))
    assert earlier is not None and earlier.revoke_all_since is None
    # Known only later: a question about what was known before that is not touched.
    late = fold_campaign(
        [
            _defined("alerts", BEFORE - timedelta(days=30), 0),
            _setting(SET_AT, 1, known=BEFORE + timedelta(days=1)),
        ]
    )
    as_known = late.as_of(BEFORE, BEFORE)
    assert as_known is not None and as_known.revoke_all_since is None


def test_the_latest_rules_include_a_setting_newer_than_the_last_policy():
    history = fold_campaign([_defined("alerts", BEFORE - timedelta(days=30), 0)])
    first = history.as_of(BEFORE)  # cached, the rules in force now
    assert first is not None and first.revoke_all_since is None
    history = history.with_event(_setting(SET_AT, 1))
    rules = history.as_of(BEFORE)
    assert rules is not None and rules.revoke_all_since == SET_AT


def test_a_later_setting_that_says_off_lifts_nothing():
    history = fold_campaign(
        [
            _defined("alerts", BEFORE - timedelta(days=30), 0),
            _setting(SET_AT, 1),
            _setting(SET_AT + timedelta(hours=1), 2, on=False),
        ]
    )
    rules = history.as_of(BEFORE)
    assert rules is not None and rules.revoke_all_since == SET_AT


def test_with_brand_merges_the_settings_a_view_keeps_apart():
    alerts = fold_campaign([_defined("alerts", BEFORE - timedelta(days=30), 0)])
    brand = CampaignHistory().with_event(_setting(SET_AT, 1))
    merged = alerts.with_brand(brand).with_brand(brand)
    assert len(merged.brand_settings) == 1
    assert [r.event for r in merged.facts()] == [v.event for v in alerts.versions] + [
        _setting(SET_AT, 1).event
    ]
    assert alerts.with_brand(CampaignHistory()) is alerts


def test_with_the_setting_a_stop_to_one_campaign_denies_the_others():
    without = campaign("alerts")
    assert Check(without, BEFORE)(_digest()).allowed
    brand_wide = replace(campaign("alerts"), revoke_all_since=SET_AT)
    d = Check(brand_wide, BEFORE)(_digest())
    assert not d.allowed and d.reason is Reason.REVOKED_BRAND_WIDE
    assert "revoke-all" in d.detail


def test_the_stopped_campaign_keeps_its_one_confirmation():
    promo = replace(campaign("promo"), revoke_all_since=SET_AT)
    s = fold(
        record(
            [
                granted(BEFORE - timedelta(days=5), "alerts"),
                granted(BEFORE - timedelta(days=5), "promo"),
                revoked(BEFORE - timedelta(minutes=1), "promo"),
            ]
        )
    )
    d = Check(promo, BEFORE, MessageKind.OPT_OUT_CONFIRMATION)(digest_of(s))
    assert d.allowed


def test_as_of_replays_the_setting_only_from_when_it_was_recorded():
    subscriber = record(
        [
            granted(BEFORE - timedelta(days=5), "alerts"),
            revoked(BEFORE - timedelta(hours=2), "promo"),
        ]
    )
    set_at = BEFORE - timedelta(hours=1)
    campaign_events = [_defined("alerts", BEFORE - timedelta(days=30), 0), _setting(set_at, 1)]
    history = [*campaign_events, *subscriber]
    now = BEFORE + timedelta(hours=1)
    before_setting = decide_as_of(history, "alerts", set_at - timedelta(minutes=1), now)
    after_setting = decide_as_of(history, "alerts", BEFORE, now)
    assert before_setting.allowed
    assert after_setting.reason is Reason.REVOKED_BRAND_WIDE
    # What was known then: the setting was recorded after BEFORE.
    known_late = [campaign_events[0], _setting(set_at, 1, known=now), *subscriber]
    assert decide_as_of(known_late, "alerts", BEFORE, BEFORE).allowed


def test_set_brand_policy_records_one_fact_at_now():
    now = BEFORE
    (event,) = to_events(SetBrandPolicy("r1", BRAND, revoke_all=True), now)
    assert isinstance(event, BrandPolicySet)
    assert (event.brand, event.campaign, event.revoke_all, event.occurred_at) == (
        BRAND,
        BRAND_SETTINGS,
        True,
        now,
    )
    again = to_events(SetBrandPolicy("r1", BRAND, revoke_all=True), now + timedelta(seconds=5))
    assert again[0].event_id == event.event_id  # a retry is the same fact


@pytest.mark.parametrize(
    ("cmd", "field"),
    [
        (SetBrandPolicy("r1", BRAND, revoke_all=False), "revoke_all"),
        (SetBrandPolicy("r1", "", revoke_all=True), "brand"),
        (SetBrandPolicy("r1", "bad brand!", revoke_all=True), "brand"),
        (SetBrandPolicy("", BRAND, revoke_all=True), "request_id"),
    ],
)
def test_set_brand_policy_refuses_bad_input_naming_the_field(cmd, field):
    with pytest.raises(DomainError) as caught:
        to_events(cmd, BEFORE)
    assert field in str(caught.value)


def _digest():
    return digest_of(_state())
