"""The fold, snapshots of it, and decisions as of a past moment."""

from __future__ import annotations

import uuid
from datetime import timedelta

from ledger.campaigns import CampaignPolicy, FrequencyCap, QuietHours
from ledger.events import (
    CampaignDefined,
    CampaignPolicyChanged,
    LedgerPosition,
    MessageKind,
    Recorded,
)
from ledger.policy import Decision, Reason, decide, decide_as_of
from ledger.state import (
    CampaignHistory,
    SubscriberState,
    fold,
    new_state,
    retained,
    retained_facts,
)
from tests.builders import (
    BRAND,
    PHONE,
    _base,
    age,
    at,
    campaign,
    flagged,
    granted,
    inbound,
    record,
    revoked,
    sent,
)


def _campaign_event(cls, when, policy):
    return cls(**_base(when), brand=BRAND, campaign="promo", policy=policy)


def test_state_rebuilt_from_its_retained_facts_is_equal():
    events = record(
        [
            granted(at(0)),
            sent(at(1)),
            revoked(at(2), None),
            inbound(at(3)),
            granted(at(4), "alerts"),
            sent(at(5), "alerts"),
        ]
    )
    state = fold(events)
    assert fold(retained_facts(state)) == state


def test_the_retained_facts_are_the_state_s_own_facts_in_ledger_order():
    events = record([granted(at(0)), sent(at(1)), revoked(at(2), None), flagged(at(3))])
    state = fold(events)
    facts = retained(state)
    assert [f.as_recorded() for f in facts] == retained_facts(state)
    assert [f.position.offset for f in facts] == [0, 1, 2, 3]  # each once, in ledger order
    assert {f.event.event_id for f in facts} == {r.event.event_id for r in events}


def test_new_states_start_empty_and_folding_one_leaves_the_others_empty():
    first, second = new_state(PHONE, BRAND), new_state("+14155550199", BRAND)
    assert first == SubscriberState(phone=PHONE, brand=BRAND)
    folded = fold(record([granted(at(0)), flagged(at(1))]), first)
    assert folded.campaigns and folded.candidates
    assert first == SubscriberState(phone=PHONE, brand=BRAND)  # shared empty mappings unchanged
    assert second == SubscriberState(phone="+14155550199", brand=BRAND)
    assert not second.campaigns and not second.candidates and not second.resolutions


def test_a_campaigns_sends_do_not_depend_on_when_a_newer_confirmation_was_recorded():
    # Found by hypothesis: counted sends, a confirmation more than the longest cap
    # window later, then one more counted send of the first moment, recorded late.
    # The campaign's list of sends must be the same whatever the order of recording,
    # or a state refolded from its retained facts differs from the original.
    # (The confirmation answers an opt-out: one that answers none counts.)
    late = at(days=31, minutes=1)
    events = [sent(at(0)) for _ in range(4)]
    stop = revoked(at(days=31), None)
    events += [stop, sent(late, kind=MessageKind.OPT_OUT_CONFIRMATION), sent(at(0))]
    state = fold(record(events))
    assert len(state.campaign("promo").sent) == 5  # within the window of the campaign's own
    assert fold(retained_facts(state)) == state
    reordered = fold(record([events[4], events[5], *events[:4], events[6]]))
    assert reordered.campaign("promo") == state.campaign("promo")  # the opt-out moved


def test_messages_older_than_the_longest_cap_window_are_dropped_from_state():
    events = record([granted(at(0)), sent(at(1)), sent(at(days=40))])
    state = fold(events)
    assert len(state.campaign("promo").sent) == 1
    assert state.campaign("promo").last_sent is not None


def test_duplicate_delivery_of_an_event_changes_nothing():
    g, s = granted(at(0)), sent(at(1))
    once = fold(record([g, s]))
    twice = fold([*record([g, s]), Recorded(s, LedgerPosition(0, 7), at(2))])
    assert decide(once, _promo(), at(3)) == decide(twice, _promo(), at(3))
    assert len(twice.campaign("promo").sent) == 1


def _promo():
    from tests.builders import campaign

    return campaign()


def test_campaign_history_answers_with_the_rules_in_force_then():
    strict = CampaignPolicy(
        quiet_hours=QuietHours(at(0).time().replace(hour=9), at(0).time().replace(hour=17))
    )
    events = record(
        [
            _campaign_event(CampaignDefined, at(0), CampaignPolicy()),
            _campaign_event(CampaignPolicyChanged, at(days=10), strict),
        ]
    )
    history = CampaignHistory()
    for r in events:
        history = history.with_event(r)
    assert history.as_of(at(days=5)).policy == CampaignPolicy()
    assert history.as_of(at(days=11)).policy == strict
    assert history.as_of(at(days=11)).policy_version == 2
    assert history.as_of(at(-1)) is None


def test_a_version_keeps_its_number_when_rules_dated_before_it_are_recorded_after_it():
    """A version's number is the order the ledger recorded it in: rules dated back
    but recorded later (two changes that raced, or written before such a change
    was refused) do not renumber the version an answer and its packet named."""
    capped = CampaignPolicy(daily_cap=5)
    events = [
        _campaign_event(CampaignDefined, at(0), CampaignPolicy()),
        _campaign_event(CampaignPolicyChanged, at(days=10), capped),
    ]
    history = CampaignHistory()
    for r in record(events):
        history = history.with_event(r)
    named = history.as_of(at(days=11))
    late = _campaign_event(CampaignPolicyChanged, at(days=5), CampaignPolicy(daily_cap=7))
    history = history.with_event(Recorded(late, LedgerPosition(0, 2), at(days=11)))
    again = history.as_of(at(days=11))
    assert (again.policy, again.policy_version, again.policy_event_id) == (
        named.policy,
        named.policy_version,
        named.policy_event_id,
    )
    assert history.as_of(at(days=6)).policy_version == 3


def test_a_consent_allows_only_the_content_the_campaign_sent_when_it_was_given():
    """Consent is to the type of messages sent: rules that change the campaign's
    category leave an opt-in given before them allowing nothing, changed back too,
    while a change of anything else keeps an opt-in given since the category's."""
    general, gambling = CampaignPolicy(), CampaignPolicy(category="gambling")
    capped = CampaignPolicy(daily_cap=5)
    history = record(
        [
            _campaign_event(CampaignDefined, at(-10), general),
            granted(at(0)),
            _campaign_event(CampaignPolicyChanged, at(10), gambling),
            _campaign_event(CampaignPolicyChanged, at(20), general),
            _campaign_event(CampaignPolicyChanged, at(40), capped),
        ]
    )

    def asked(minutes: int, facts=history) -> Decision:
        return decide_as_of(facts, "promo", t_world=at(minutes), t_known=at(days=1))

    assert asked(5).allowed
    for later in (15, 25, 45):
        d = asked(later)
        assert not d.allowed and d.reason is Reason.NO_CONSENT, (later, d)
        assert history[1].event.event_id in [uuid.UUID(e) for e in d.evidence], d
    regranted = [*history, Recorded(granted(at(30)), LedgerPosition(0, 5), at(30))]
    assert asked(35, regranted).allowed and asked(45, regranted).allowed


def test_a_consent_given_before_its_content_was_changed_back_in_time_allows_nothing():
    """Rules recorded at 10:30 that say the campaign has sent gambling since 9:00: the
    opt-in of 10:00 was given while the ledger said it sent general messages, and
    whether the person saw gambling offered cannot be told, so it allows nothing."""
    history = record(
        [
            _campaign_event(CampaignDefined, at(days=-2), CampaignPolicy()),
            age(at(-120), plus21=True),
            granted(at(0)),
            _campaign_event(CampaignPolicyChanged, at(-60), CampaignPolicy(category="gambling")),
        ],
        known_at=[at(days=-2), at(-120), at(0), at(30)],
    )
    d = decide_as_of(history, "promo", t_world=at(35), t_known=at(days=1))
    assert not d.allowed and d.reason is Reason.NO_CONSENT, d


def test_decide_as_of_sees_only_what_the_ledger_knew_then():
    g, r = granted(at(0)), revoked(at(30))
    defined = _campaign_event(CampaignDefined, at(-10), CampaignPolicy())
    # The opt-out happened at 30 but reached the ledger only at 120.
    history = record([defined, g, r], known_at=[at(-10), at(1), at(120)])
    before = decide_as_of(history, "promo", t_world=at(60), t_known=at(60))
    after = decide_as_of(history, "promo", t_world=at(60), t_known=at(121))
    assert before.allowed
    assert not after.allowed and after.reason is Reason.REVOKED


def test_decide_as_of_counts_a_send_stamped_ahead_as_the_check_then_did():
    # A send stamped 10:32 reached the ledger at 10:30; a check at 10:30 counted it
    # towards the cap (one a day), and the audit of 10:30 must say the same.
    capped = CampaignPolicy(frequency_caps=(FrequencyCap(1, timedelta(days=1)),))
    defined = _campaign_event(CampaignDefined, at(-10), capped)
    ahead = sent(at(32))
    history = record([defined, granted(at(0)), ahead], known_at=[at(-10), at(1), at(30)])
    live = decide(fold(history[1:]), campaign(frequency_caps=capped.frequency_caps), at(30))
    audit = decide_as_of(history, "promo", t_world=at(30), t_known=at(31))
    assert live.reason is audit.reason is Reason.FREQUENCY_CAP_REACHED
    # Recorded after the moment asked about, it is left out as before.
    late = record([defined, granted(at(0)), ahead], known_at=[at(-10), at(1), at(33)])
    assert decide_as_of(late, "promo", t_world=at(30), t_known=at(40)).allowed


def test_decide_as_of_before_the_campaign_existed_is_campaign_unknown():
    defined = _campaign_event(CampaignDefined, at(10), CampaignPolicy())
    history = record([defined, granted(at(0))])
    d = decide_as_of(history, "promo", t_world=at(5), t_known=at(500))
    assert not d.allowed and d.reason is Reason.CAMPAIGN_UNKNOWN


def test_decide_as_of_by_world_time_ignores_later_facts():
    defined = _campaign_event(CampaignDefined, at(-10), CampaignPolicy())
    history = record([defined, granted(at(0)), revoked(at(30))])
    assert decide_as_of(history, "promo", t_world=at(20), t_known=at(days=1)).allowed
    assert not decide_as_of(history, "promo", t_world=at(40), t_known=at(days=1)).allowed


def test_late_grant_imported_after_an_opt_out_keeps_the_number_blocked():
    g = granted(at(0))
    r = revoked(at(30))
    history = record([r, g], known_at=[at(31), at(90)])
    assert decide(fold(history), _promo(), at(95)).reason is Reason.REVOKED
    assert decide(fold(history[:1]), _promo(), at(95)).reason is Reason.REVOKED


def test_grant_after_an_older_revocation_in_world_time_stands():
    history = record([revoked(at(0)), granted(at(30))], delay=timedelta(seconds=1))
    assert decide(fold(history), _promo(), at(40)).allowed
