"""The FCC's revoke-all rule (47 CFR 64.1200(a)(10)): a STOP to one campaign of a
brand stops all of them, from the rule's effective date, or earlier by choice."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ledger.campaigns import CampaignPolicy, CampaignPurpose, FrequencyCap
from ledger.digest import digest_of
from ledger.events import CampaignDefined, CampaignPolicyChanged, MessageKind, event_id_for
from ledger.policy import REVOKE_ALL_EFFECTIVE, Reason, decide, decide_as_of, earns_exemption
from ledger.state import fold
from tests.builders import campaign, granted, inbound, record, resumed, revoked, sent

BEFORE = datetime(2027, 1, 20, 19, 0, tzinfo=UTC)  # 11:00 in Los Angeles
AFTER = datetime(2027, 2, 1, 19, 0, tzinfo=UTC)
PROMO = campaign("promo")
ALERTS = campaign("alerts")


def state_of(*events):
    return fold(record(list(events)))


def test_the_effective_date_is_the_latest_fcc_order_s():
    assert datetime(2027, 1, 31, 5, 0, tzinfo=UTC) == REVOKE_ALL_EFFECTIVE


def test_before_the_effective_date_a_stop_stays_with_its_campaign():
    s = state_of(granted(BEFORE - timedelta(days=5), "alerts"), revoked(BEFORE, "promo"))
    assert decide(s, ALERTS, BEFORE + timedelta(hours=1)).allowed


def test_from_the_effective_date_a_stop_to_one_campaign_stops_them_all():
    stop = revoked(BEFORE, "promo")
    s = state_of(granted(BEFORE - timedelta(days=5), "alerts"), stop)
    d = decide(s, ALERTS, AFTER)
    assert not d.allowed and d.reason is Reason.REVOKED_BRAND_WIDE
    assert d.evidence == (str(stop.event_id),)
    assert "revoke-all" in d.detail


def test_a_campaign_may_honour_it_before_the_date():
    early = campaign("alerts", revoke_all=True)
    s = state_of(granted(BEFORE - timedelta(days=5), "alerts"), revoked(BEFORE, "promo"))
    assert decide(s, early, BEFORE + timedelta(hours=1)).reason is Reason.REVOKED_BRAND_WIDE


def test_consent_given_after_the_stop_is_the_persons_newer_word():
    s = state_of(revoked(BEFORE, "promo"), granted(BEFORE + timedelta(days=1), "alerts"))
    assert decide(s, ALERTS, AFTER).allowed


def test_a_start_to_the_stopped_campaign_resumes_it_alone():
    """The STOP to promo is read as one of every campaign; a START to promo's number
    then lifted alerts' stop too (the STOP no longer stood for promo), as a START
    after a STOPALL never does. Only alerts' own newer consent lifts it."""
    stop = revoked(BEFORE, "promo")
    events = [granted(BEFORE - timedelta(days=5), "alerts"), granted(BEFORE - timedelta(days=5))]
    start = resumed(BEFORE + timedelta(hours=1), "promo")
    s = state_of(*events, stop, start)
    assert decide(s, PROMO, AFTER).allowed
    d = decide(s, ALERTS, AFTER)
    assert not d.allowed and d.reason is Reason.REVOKED_BRAND_WIDE
    assert d.evidence == (str(stop.event_id),)
    again = granted(BEFORE + timedelta(hours=2))  # a new opt-in to promo: promo's alone
    assert not decide(state_of(*events, stop, again), ALERTS, AFTER).allowed
    own = resumed(BEFORE + timedelta(hours=2), "alerts")
    assert decide(state_of(*events, stop, start, own), ALERTS, AFTER).allowed


def test_the_stopped_campaign_may_still_send_its_one_confirmation():
    at = AFTER - timedelta(minutes=2)
    s = state_of(granted(at - timedelta(days=1), "alerts"), revoked(at, "promo"))
    d = decide(s, PROMO, AFTER, MessageKind.OPT_OUT_CONFIRMATION)
    assert d.reason is not Reason.REVOKED_BRAND_WIDE


def test_past_moments_are_answered_by_the_rule_of_that_moment():
    events = [granted(BEFORE - timedelta(days=5), "alerts"), revoked(BEFORE, "promo")]
    history = record(events)
    then = decide_as_of(
        [*record([_defined("alerts")]), *history], "alerts", BEFORE + timedelta(hours=1), AFTER
    )
    now = decide_as_of([*record([_defined("alerts")]), *history], "alerts", AFTER, AFTER)
    assert then.allowed
    assert now.reason is Reason.REVOKED_BRAND_WIDE


def test_a_campaign_that_honoured_it_keeps_it_when_a_later_change_leaves_it_out():
    """alerts honoured the rule when the STOP to promo came, so the STOP ended alerts'
    consent; a later change of alerts' rules that left ``revoke_all`` out let alerts
    text the person again with no new consent. Taking the rule up is one-way, as the
    brand's setting is; a moment before alerts took it up keeps the rules then."""
    subscriber = record([granted(BEFORE - timedelta(days=5), "alerts"), revoked(BEFORE)])
    took_up = _changed("took-up", BEFORE - timedelta(hours=1), revoke_all=True)
    left_out = _changed("left-out", BEFORE + timedelta(hours=1))
    history = [*record([_defined("alerts"), took_up, left_out]), *subscriber]
    later = BEFORE + timedelta(hours=2)
    assert decide_as_of(history, "alerts", later, later).reason is Reason.REVOKED_BRAND_WIDE
    never = [*record([_defined("alerts"), left_out]), *subscriber]
    assert decide_as_of(never, "alerts", later, later).allowed
    before = BEFORE - timedelta(hours=2)
    assert decide_as_of(history, "alerts", before, later).allowed


def _changed(name: str, when: datetime, **policy: bool) -> CampaignPolicyChanged:
    return CampaignPolicyChanged(
        event_id=event_id_for(f"change-alerts-{name}"),
        occurred_at=when,
        brand="acme",
        campaign="alerts",
        policy=CampaignPolicy(**policy),
    )


def _defined(name: str, **policy: bool):
    rules = campaign(name, **policy)
    return CampaignDefined(
        event_id=event_id_for(f"define-{name}"),
        occurred_at=BEFORE - timedelta(days=30),
        brand=rules.brand,
        campaign=name,
        policy=rules.policy,
    )


def test_a_stop_to_another_campaign_closes_a_conversation_opened_before_it():
    """Read as an opt-out of every campaign, it closes a conversation the person's
    text opened before it, as a STOPALL does: the conversational campaign's reply
    was allowed."""
    chat = campaign("chat", purpose=CampaignPurpose.CONVERSATIONAL)
    stop = revoked(AFTER + timedelta(minutes=5), "promo")
    events = [inbound(AFTER + timedelta(minutes=1), campaign="chat"), stop]
    s = state_of(*events)
    for kind in (MessageKind.CONVERSATION_REPLY, MessageKind.REGULAR):
        d = decide(s, chat, AFTER + timedelta(minutes=10), kind)
        assert not d.allowed and d.reason is Reason.REVOKED_BRAND_WIDE
        assert str(stop.event_id) in d.evidence and "revoke-all" in d.detail
    # A text after the STOP is the person's newer word: it opens the conversation.
    later = state_of(*events, inbound(AFTER + timedelta(minutes=6), campaign="chat"))
    d = decide(later, chat, AFTER + timedelta(minutes=10), MessageKind.CONVERSATION_REPLY)
    assert d.allowed and d.reason is Reason.CONVERSATION_REPLY


def test_a_reply_to_a_text_before_another_campaigns_stop_escapes_no_cap():
    """With a consent given after that STOP, a reply to the text before it is no
    conversation reply: it counts towards the caps, and earns no exemption."""
    alerts = campaign("alerts", frequency_caps=(FrequencyCap(1, timedelta(days=1)),))
    events = [
        inbound(AFTER + timedelta(minutes=1), campaign="alerts"),
        revoked(AFTER + timedelta(minutes=2), "promo"),
        granted(AFTER + timedelta(minutes=3), "alerts"),
        sent(AFTER + timedelta(minutes=4), "alerts"),
    ]
    s = state_of(*events)
    moment = AFTER + timedelta(minutes=10)
    d = decide(s, alerts, moment, MessageKind.CONVERSATION_REPLY)
    assert not d.allowed and d.reason is Reason.FREQUENCY_CAP_REACHED
    assert not earns_exemption(digest_of(s), alerts, moment, MessageKind.CONVERSATION_REPLY)
