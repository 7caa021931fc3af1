"""Each rule of the sending policy, proven on its own."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, time, timedelta

import pytest

from ledger.campaigns import Campaign, CampaignPolicy, CampaignPurpose, FrequencyCap, QuietHours
from ledger.commands import (
    HELD_OPT_OUT,
    HoldRefusedOptOut,
    RecordOptOut,
    ResolveRevocationCandidate,
    held_opt_out,
    to_events,
    unattributed_opt_out,
)
from ledger.events import (
    CandidateResolution,
    CollectionMethod,
    ConsentTier,
    DeliveryOutcome,
    MessageKind,
    RevocationChannel,
)
from ledger.policy import Obligation, Reason, decide
from ledger.state import fold, retained_facts
from tests.builders import (
    BRAND,
    PHONE,
    age,
    at,
    campaign,
    flagged,
    granted,
    inbound,
    reconfirmed,
    record,
    resolved,
    resumed,
    revoked,
    sent,
    undelivered,
)

PROMO = campaign("promo")


def state_of(*events):
    return fold(record(list(events)))


# Rule 1: consent is per brand and per campaign.
def test_no_events_denies_with_no_consent():
    d = decide(fold([]), PROMO, at(10))
    assert not d.allowed and d.reason is Reason.NO_CONSENT


def test_consent_for_another_campaign_does_not_count():
    d = decide(state_of(granted(at(0), "newsletter")), PROMO, at(10))
    assert not d.allowed and d.reason is Reason.NO_CONSENT
    assert "newsletter" in d.detail


def test_consent_for_another_brand_does_not_count():
    other_brand = fold(record([granted(at(0), brand="globex")]))
    d = decide(other_brand, PROMO, at(10))
    assert not d.allowed and d.reason is Reason.NO_CONSENT


def test_grant_for_this_campaign_allows_and_cites_the_grant():
    g = granted(at(0))
    d = decide(state_of(g), PROMO, at(10))
    assert d.allowed and d.reason is Reason.CONSENT_ACTIVE
    assert str(g.event_id) in d.evidence


# Rule 2: revocation, and the one opt-out confirmation.
def test_stop_for_the_campaign_denies():
    d = decide(state_of(granted(at(0)), revoked(at(5))), PROMO, at(10))
    assert not d.allowed and d.reason is Reason.REVOKED


def test_stopall_revokes_every_campaign_of_the_brand():
    s = state_of(granted(at(0), "promo"), granted(at(0), "alerts"), revoked(at(5), None))
    for name in ("promo", "alerts"):
        d = decide(s, campaign(name), at(10))
        assert not d.allowed and d.reason is Reason.REVOKED_BRAND_WIDE


def test_stop_for_one_campaign_leaves_the_others():
    s = state_of(granted(at(0), "promo"), granted(at(0), "alerts"), revoked(at(5), "promo"))
    assert decide(s, campaign("alerts"), at(10)).allowed


def test_one_opt_out_confirmation_is_allowed_within_five_minutes():
    s = state_of(granted(at(0)), revoked(at(5)))
    d = decide(s, PROMO, at(8), MessageKind.OPT_OUT_CONFIRMATION)
    assert d.allowed and d.reason is Reason.OPT_OUT_CONFIRMATION_ALLOWED
    assert Obligation.NON_MARKETING_CONTENT_ONLY in d.obligations


def test_opt_out_confirmation_after_five_minutes_is_denied():
    s = state_of(granted(at(0)), revoked(at(5)))
    d = decide(s, PROMO, at(10.5), MessageKind.OPT_OUT_CONFIRMATION)
    assert not d.allowed and d.reason is Reason.OPT_OUT_CONFIRMATION_NOT_ALLOWED


def test_second_opt_out_confirmation_is_denied():
    s = state_of(granted(at(0)), revoked(at(5)), sent(at(6), kind=MessageKind.OPT_OUT_CONFIRMATION))
    d = decide(s, PROMO, at(7), MessageKind.OPT_OUT_CONFIRMATION)
    assert not d.allowed and d.reason is Reason.OPT_OUT_CONFIRMATION_NOT_ALLOWED


def test_a_confirmation_window_wider_than_five_minutes_is_held_to_five():
    # Such a campaign can no longer be defined (test_commands); one recorded before
    # that check allowed a confirmation 200 days after the STOP.
    wide = campaign(opt_out_confirmation_window=timedelta(days=3650))
    s = state_of(granted(at(0)), revoked(at(5)))
    assert decide(s, wide, at(10), MessageKind.OPT_OUT_CONFIRMATION).allowed
    d = decide(s, wide, at(10.5), MessageKind.OPT_OUT_CONFIRMATION)
    assert not d.allowed and d.reason is Reason.OPT_OUT_CONFIRMATION_NOT_ALLOWED
    assert "0:05:00" in d.detail
    assert not decide(s, wide, at(days=200), MessageKind.OPT_OUT_CONFIRMATION).allowed


def test_a_confirmation_window_that_is_not_positive_allows_no_confirmation():
    for window in (timedelta(0), timedelta(minutes=-1)):
        c = campaign(opt_out_confirmation_window=window)
        s = state_of(granted(at(0)), revoked(at(5)))
        assert not decide(s, c, at(5.5), MessageKind.OPT_OUT_CONFIRMATION).allowed


def test_opt_out_confirmation_without_an_opt_out_is_denied():
    d = decide(state_of(granted(at(0))), PROMO, at(7), MessageKind.OPT_OUT_CONFIRMATION)
    assert not d.allowed


@pytest.mark.parametrize("scope", ["promo", None])
def test_an_imported_opt_out_allows_no_confirmation_from_this_service(scope):
    """An import's opt-out was received by another platform, which owed its one
    confirmation and may have sent it: allowed here too, the sender texted the
    person a second time after their STOP. It denies a regular send as any does."""
    stop = revoked(at(5), scope, imported=True)
    s = state_of(granted(at(0)), stop)
    d = decide(s, PROMO, at(6), MessageKind.OPT_OUT_CONFIRMATION)
    assert not d.allowed and d.reason is Reason.OPT_OUT_CONFIRMATION_NOT_ALLOWED
    assert "imported" in d.detail and d.evidence == (str(stop.event_id),)
    regular = decide(s, PROMO, at(6))
    assert not regular.allowed and regular.reason in (Reason.REVOKED, Reason.REVOKED_BRAND_WIDE)


@pytest.mark.parametrize(
    ("imported", "live"), [("promo", "promo"), ("promo", None), (None, "promo")]
)
def test_a_live_opt_out_after_an_imported_one_owes_its_confirmation(imported, live):
    stop = revoked(at(6), live)
    s = state_of(granted(at(0)), revoked(at(5), imported, imported=True), stop)
    d = decide(s, PROMO, at(7), MessageKind.OPT_OUT_CONFIRMATION)
    assert d.allowed and d.reason is Reason.OPT_OUT_CONFIRMATION_ALLOWED
    assert d.evidence == (str(stop.event_id),)
    # An imported opt-out after the live one is the latest: it owes none.
    s = state_of(granted(at(0)), stop, revoked(at(6.5), imported, imported=True))
    assert not decide(s, PROMO, at(7), MessageKind.OPT_OUT_CONFIRMATION).allowed


@pytest.mark.parametrize(("via", "owed"), [("", False), (HELD_OPT_OUT, True)])
def test_an_imports_opt_out_held_then_revoked_by_a_review_owes_no_confirmation(via, owed):
    """A review's "revoked" writes the opt-out for the hold: an import's hold was
    another platform's opt-out, a live one held for its details is the person's own."""
    hold = HoldRefusedOptOut("out-1", PHONE, BRAND, "said", via=via, occurred_at=at(5))
    (held,) = held_opt_out(hold, "channel: is required", at(5.5))
    review = ResolveRevocationCandidate(
        "r-1", PHONE, BRAND, str(held.event_id), CandidateResolution.REVOKED, at(6)
    )
    s = state_of(granted(at(0)), held, *to_events(review, at(6)))
    d = decide(s, PROMO, at(7), MessageKind.OPT_OUT_CONFIRMATION)
    assert d.allowed is owed
    assert ("imported" in d.detail) is not owed


@pytest.mark.parametrize("from_import", [False, True])
def test_an_opt_out_of_an_undefined_campaign_revoked_by_a_review_owes_per_its_source(
    from_import,
):
    """An opt-out naming a campaign not defined is kept for review: a live one is the
    person's own and owes its confirmation once a review records it; an import's was
    another platform's, which owed it (as an import's recorded opt-out)."""
    cmd = RecordOptOut("out-1", PHONE, BRAND, "launch", RevocationChannel.KEYWORD, at(5))
    (held,) = unattributed_opt_out(cmd, at(5))
    held = dataclasses.replace(held, from_import=from_import)
    assert held.unattributed and held.imported is from_import
    review = ResolveRevocationCandidate(
        "r-1", PHONE, BRAND, str(held.event_id), CandidateResolution.REVOKED, at(6)
    )
    pending = decide(state_of(granted(at(0)), held), PROMO, at(5.5))
    assert not pending.allowed
    assert ("imported opt-out" in pending.detail) is from_import, pending.detail
    s = state_of(granted(at(0)), held, *to_events(review, at(6)))
    d = decide(s, PROMO, at(7), MessageKind.OPT_OUT_CONFIRMATION)
    assert d.allowed is not from_import, d
    assert ("imported" in d.detail) is from_import, d.detail


def test_regular_message_after_opt_out_is_denied_even_inside_the_window():
    d = decide(state_of(granted(at(0)), revoked(at(5))), PROMO, at(6))
    assert not d.allowed and d.reason is Reason.REVOKED


def test_new_grant_after_revocation_allows_again():
    s = state_of(granted(at(0)), revoked(at(5)), granted(at(60)))
    assert decide(s, PROMO, at(70)).allowed


def test_start_after_stop_resumes_the_prior_consent():
    s = state_of(granted(at(0)), revoked(at(5)), resumed(at(20), "promo"))
    d = decide(s, PROMO, at(30))
    assert d.allowed
    assert Obligation.INCLUDE_OPT_OUT_LANGUAGE in d.obligations  # first message again


def test_start_after_stopall_lifts_the_stopall_but_not_a_campaigns_own_stop():
    # STOP to promo, then STOPALL, then START to another campaign's number: the
    # person asked for the brand back, not for promo, which they had stopped on its own.
    history = [granted(at(0)), granted(at(0), "b"), revoked(at(5)), revoked(at(10), None)]
    s = state_of(*history, resumed(at(20)))
    d = decide(s, PROMO, at(30))
    assert not d.allowed and d.reason is Reason.REVOKED
    assert decide(s, campaign("b"), at(30)).allowed
    assert decide(
        state_of(*history, resumed(at(20)), resumed(at(20), "promo")), PROMO, at(30)
    ).allowed
    # Without a STOP of its own, a campaign comes back with the brand.
    s = state_of(granted(at(0)), revoked(at(10), None), resumed(at(20)))
    assert decide(s, PROMO, at(30)).allowed


def test_a_campaign_resume_newer_than_a_stopall_lifts_it_for_that_campaign_only():
    history = [granted(at(0)), granted(at(0), "b"), revoked(at(10), None)]
    s = state_of(*history, resumed(at(20), "promo"))
    assert decide(s, PROMO, at(30)).allowed
    d = decide(s, campaign("b"), at(30))
    assert not d.allowed and d.reason is Reason.REVOKED_BRAND_WIDE
    # A STOPALL after the resume stops the campaign again; one at the same instant wins.
    for later in (at(25), at(20)):
        s = state_of(*history, resumed(at(20), "promo"), revoked(later, None))
        d = decide(s, PROMO, at(30))
        assert not d.allowed and d.reason is Reason.REVOKED_BRAND_WIDE
    # A resume older than the STOPALL lifts nothing.
    s = state_of(granted(at(0)), resumed(at(5), "promo"), revoked(at(10), None))
    assert not decide(s, PROMO, at(30)).allowed


def test_late_grant_does_not_override_an_opt_out_that_happened_after_it():
    # The form was filled at 0, the person opted out at 30, the import arrived at 90.
    g, r = granted(at(0)), revoked(at(30))
    events = record([r, g], known_at=[at(31), at(90)])
    d = decide(fold(events), PROMO, at(100))
    assert not d.allowed and d.reason is Reason.REVOKED


def test_revocation_wins_a_tie_at_the_same_instant():
    d = decide(state_of(revoked(at(5)), granted(at(5))), PROMO, at(10))
    assert not d.allowed


# Rule 3: revocation candidates block.
def test_pending_revocation_candidate_denies():
    d = decide(state_of(granted(at(0)), flagged(at(5))), PROMO, at(10))
    assert not d.allowed and d.reason is Reason.REVOCATION_PENDING_REVIEW


def test_dismissed_candidate_no_longer_blocks():
    c = flagged(at(5))
    s = state_of(granted(at(0)), c, resolved(at(6), c, CandidateResolution.DISMISSED))
    assert decide(s, PROMO, at(10)).allowed


# Rule 4: reconfirmation.
def test_consent_older_than_the_first_message_window_needs_reconfirmation():
    d = decide(state_of(granted(at(0))), PROMO, at(days=31))
    assert d.allowed and Obligation.RECONFIRM_IN_THIS_MESSAGE in d.obligations


def test_a_first_message_window_longer_than_30_days_is_held_to_30_days():
    # Such a campaign can no longer be defined (test_commands); one recorded before
    # that check let a consent left unused for years be texted without reconfirming.
    c = campaign(first_message_window=timedelta(days=3650))
    d = decide(state_of(granted(at(0))), c, at(days=300))
    assert d.allowed and Obligation.RECONFIRM_IN_THIS_MESSAGE in d.obligations
    d = decide(state_of(granted(at(0))), c, at(days=29))
    assert Obligation.RECONFIRM_IN_THIS_MESSAGE not in d.obligations


def test_consent_inside_the_first_message_window_needs_no_reconfirmation():
    d = decide(state_of(granted(at(0))), PROMO, at(days=29))
    assert Obligation.RECONFIRM_IN_THIS_MESSAGE not in d.obligations


def test_a_periodic_reconfirmation_reminds_how_to_unsubscribe():
    # Messages went out with the opt-out language, so only the first owed it; the
    # message that reconfirms consent after the interval owes the reminder again.
    c = campaign(reconfirm_interval=timedelta(days=90))
    s = state_of(granted(at(0)), sent(at(days=1)))
    d = decide(s, c, at(days=100))
    assert Obligation.RECONFIRM_IN_THIS_MESSAGE in d.obligations
    assert Obligation.INCLUDE_OPT_OUT_LANGUAGE in d.obligations
    d = decide(s, c, at(days=80))
    assert Obligation.INCLUDE_OPT_OUT_LANGUAGE not in d.obligations


def test_a_message_sent_inside_the_window_ends_the_first_message_rule():
    d = decide(state_of(granted(at(0)), sent(at(days=1))), PROMO, at(days=40))
    assert Obligation.RECONFIRM_IN_THIS_MESSAGE not in d.obligations


def test_a_late_first_message_that_did_not_reconfirm_leaves_the_reconfirmation_owed():
    # Nothing went out for 35 days: the first message had to reconfirm. A regular
    # message then ended nothing; a reconfirmation request with the opt-out
    # language ends it, and a send inside the window never owed it.
    late = [granted(at(0)), sent(at(days=35))]
    for kind, disclosed, owed in (
        (MessageKind.REGULAR, True, True),
        (MessageKind.RECONFIRMATION_REQUEST, False, True),
        (MessageKind.RECONFIRMATION_REQUEST, True, False),
    ):
        s = state_of(*late, sent(at(days=36), kind=kind, disclosed=disclosed))
        d = decide(s, PROMO, at(days=37))
        assert (Obligation.RECONFIRM_IN_THIS_MESSAGE in d.obligations) is owed, (kind, disclosed)
        assert fold(retained_facts(s)) == s
    # A campaign's shorter window is read the same way.
    c = campaign(first_message_window=timedelta(days=10))
    d = decide(state_of(granted(at(0)), sent(at(days=20))), c, at(days=21))
    assert Obligation.RECONFIRM_IN_THIS_MESSAGE in d.obligations
    d = decide(state_of(granted(at(0)), sent(at(days=9))), c, at(days=21))
    assert Obligation.RECONFIRM_IN_THIS_MESSAGE not in d.obligations
    # A new consent (START after STOP) starts the window again: the send before it
    # opened nothing for it.
    s = state_of(
        granted(at(0)), sent(at(days=1)), revoked(at(days=2)), resumed(at(days=3), "promo")
    )
    d = decide(s, PROMO, at(days=40))
    assert Obligation.RECONFIRM_IN_THIS_MESSAGE in d.obligations
    s = state_of(*late, sent(at(days=36), kind=MessageKind.RECONFIRMATION_REQUEST))
    s = fold(record([resumed(at(days=38), "promo")]), s)
    assert Obligation.RECONFIRM_IN_THIS_MESSAGE not in decide(s, PROMO, at(days=39)).obligations


def test_a_reconfirmation_request_never_delivered_leaves_the_reconfirmation_owed():
    request = sent(at(days=36), kind=MessageKind.RECONFIRMATION_REQUEST)
    s = state_of(granted(at(0)), sent(at(days=35)), request, undelivered(request, at(days=36)))
    d = decide(s, PROMO, at(days=37))
    assert Obligation.RECONFIRM_IN_THIS_MESSAGE in d.obligations
    assert Obligation.INCLUDE_OPT_OUT_LANGUAGE in d.obligations
    assert fold(retained_facts(s)) == s
    # Another request, recorded after the report, meets it.
    s = fold(record([sent(at(days=36, minutes=5), kind=MessageKind.RECONFIRMATION_REQUEST)]), s)
    assert Obligation.RECONFIRM_IN_THIS_MESSAGE not in decide(s, PROMO, at(days=37)).obligations


def test_periodic_reconfirmation_interval_passed_requires_reconfirmation():
    c = campaign(reconfirm_interval=timedelta(days=90))
    s = state_of(granted(at(0)), sent(at(days=1)))
    assert Obligation.RECONFIRM_IN_THIS_MESSAGE in decide(s, c, at(days=91)).obligations


def test_reconfirmation_resumes_normal_sending():
    c = campaign(reconfirm_interval=timedelta(days=90))
    s = state_of(granted(at(0)), sent(at(days=1)), reconfirmed(at(days=91)))
    d = decide(s, c, at(days=92))
    assert d.allowed and Obligation.RECONFIRM_IN_THIS_MESSAGE not in d.obligations


# Rule 5: the first message.
def test_first_message_must_carry_opt_out_language_and_identify_the_sender():
    d = decide(state_of(granted(at(0))), PROMO, at(10))
    assert {Obligation.INCLUDE_OPT_OUT_LANGUAGE, Obligation.IDENTIFY_SENDER} <= set(d.obligations)


def test_later_messages_need_no_opt_out_language_but_still_identify_the_sender():
    d = decide(state_of(granted(at(0)), sent(at(5))), PROMO, at(10))
    assert Obligation.INCLUDE_OPT_OUT_LANGUAGE not in d.obligations
    assert Obligation.IDENTIFY_SENDER in d.obligations


def test_opt_out_language_is_owed_until_a_send_says_it_carried_it():
    # The first message went out without it: the next still owes it.
    s = state_of(granted(at(0)), sent(at(5), disclosed=False))
    assert Obligation.INCLUDE_OPT_OUT_LANGUAGE in decide(s, PROMO, at(10)).obligations
    s = state_of(granted(at(0)), sent(at(5), disclosed=False), sent(at(7)))
    assert Obligation.INCLUDE_OPT_OUT_LANGUAGE not in decide(s, PROMO, at(10)).obligations
    # A disclosure before a new consent (START after STOP) does not count for it.
    s = state_of(granted(at(0)), sent(at(5)), revoked(at(6)), resumed(at(8), "promo"))
    assert Obligation.INCLUDE_OPT_OUT_LANGUAGE in decide(s, PROMO, at(10)).obligations


def test_a_send_recorded_before_a_new_consent_meets_nothing_of_it():
    # A send stamped four minutes ahead of the clock that recorded it, then a STOP
    # and a START within those minutes: by its stamp the send follows the START, but
    # it went out before the STOP. Its opt-out language and its reconfirmation are
    # not the new consent's.
    ahead = sent(at(14), kind=MessageKind.RECONFIRMATION_REQUEST)
    events = [granted(at(days=-40)), ahead, revoked(at(11)), resumed(at(12), "promo")]
    s = fold(record(events, known_at=[at(days=-40), at(10), at(11), at(12)]))
    assert Obligation.INCLUDE_OPT_OUT_LANGUAGE in decide(s, PROMO, at(13)).obligations
    assert fold(retained_facts(s)) == s
    # A new grant the same; a reconfirmation leaves the language met.
    events = [granted(at(days=-1)), sent(at(14)), granted(at(12))]
    s = fold(record(events, known_at=[at(days=-1), at(10), at(12)]))
    assert Obligation.INCLUDE_OPT_OUT_LANGUAGE in decide(s, PROMO, at(13)).obligations
    s = state_of(granted(at(0)), sent(at(5)), reconfirmed(at(7)))
    assert Obligation.INCLUDE_OPT_OUT_LANGUAGE not in decide(s, PROMO, at(10)).obligations


def test_a_disclosure_pruned_from_the_cap_window_is_still_remembered():
    # Caps keep 24 hours of sends; the disclosure was 3 days ago, and every send
    # since went without the language.
    c = campaign(frequency_caps=(FrequencyCap(10, timedelta(hours=24)),))
    later = [sent(at(days=2 + i / 10), disclosed=False) for i in range(3)]
    s = state_of(granted(at(0)), sent(at(5)), *later)
    assert Obligation.INCLUDE_OPT_OUT_LANGUAGE not in decide(s, c, at(days=3)).obligations
    refolded = fold(retained_facts(s))
    assert refolded == s


def test_opt_out_language_in_a_message_never_delivered_is_owed_again():
    # The person never read the language: a delivery error on the send that carried
    # it leaves it owed, until a send recorded after the report carries it.
    first = sent(at(5))
    for code in ("30003", "21610", ""):
        s = state_of(granted(at(0)), first, undelivered(first, at(6), code))
        assert Obligation.INCLUDE_OPT_OUT_LANGUAGE in decide(s, PROMO, at(10)).obligations, code
        assert fold(retained_facts(s)) == s
    delivered = dataclasses.replace(undelivered(first, at(6)), outcome=DeliveryOutcome.DELIVERED)
    s = state_of(granted(at(0)), first, dataclasses.replace(delivered, error_code=""))
    assert Obligation.INCLUDE_OPT_OUT_LANGUAGE not in decide(s, PROMO, at(10)).obligations
    # A later send, undelivered or not, without the language changes nothing; one
    # with it, recorded after the report, discharges it.
    failed = undelivered(first, at(6))
    s = state_of(granted(at(0)), first, failed, sent(at(7), disclosed=False))
    assert Obligation.INCLUDE_OPT_OUT_LANGUAGE in decide(s, PROMO, at(10)).obligations
    s = state_of(granted(at(0)), first, failed, sent(at(8)))
    assert Obligation.INCLUDE_OPT_OUT_LANGUAGE not in decide(s, PROMO, at(10)).obligations
    assert fold(retained_facts(s)) == s
    # An error on another message, or another campaign's, leaves the disclosure be.
    other = sent(at(7), disclosed=False)
    s = state_of(granted(at(0)), first, other, undelivered(other, at(8)))
    assert Obligation.INCLUDE_OPT_OUT_LANGUAGE not in decide(s, PROMO, at(10)).obligations
    elsewhere = sent(at(5), "alerts")
    s = state_of(granted(at(0)), first, elsewhere, undelivered(elsewhere, at(8)))
    assert Obligation.INCLUDE_OPT_OUT_LANGUAGE not in decide(s, PROMO, at(10)).obligations


# Rule 6: quiet hours in the recipient's time zone.
def test_promotional_message_at_night_in_the_recipients_zone_is_denied():
    # 05:00 UTC is 21:00 in Los Angeles.
    d = decide(state_of(granted(at(0))), PROMO, at(hours=11))
    assert not d.allowed and d.reason is Reason.QUIET_HOURS
    assert "America/Los_Angeles" in d.detail


def test_promotional_message_at_1059_local_is_allowed():
    assert decide(state_of(granted(at(0))), PROMO, at(59)).allowed


def test_stricter_campaign_window_ends_at_8pm():
    c = campaign(quiet_hours=QuietHours(time(8), time(20)))
    # 04:30 UTC = 20:30 in Los Angeles: allowed by default, denied by the stricter window.
    s = state_of(granted(at(0)))
    assert decide(s, PROMO, at(hours=10, minutes=30)).allowed
    assert decide(s, c, at(hours=10, minutes=30)).reason is Reason.QUIET_HOURS


def test_a_campaign_window_wider_than_the_default_is_held_to_the_default():
    # 22:30 in Los Angeles. Such a campaign can no longer be defined
    # (test_campaigns); one recorded before that check still gets 08:00-21:00.
    wide = campaign(quiet_hours=QuietHours(time(6), time(23, 30)))
    s = state_of(granted(at(0)))
    d = decide(s, wide, at(hours=12, minutes=30))
    assert not d.allowed and d.reason is Reason.QUIET_HOURS and "08:00-21:00" in d.detail
    assert not decide(s, wide, at(hours=-3, minutes=30)).allowed  # 06:30 there
    assert decide(s, wide, at(hours=10, minutes=30)).allowed  # 20:30 there


def test_number_spanning_several_zones_uses_the_most_restrictive():
    alaska = "+19075551234"  # America/Adak and America/Anchorage
    s = fold(record([granted(at(0), phone=alaska)]))
    # 05:30 UTC: 21:30 Anchorage (AKDT? March 2 is AKST, UTC-9: 20:30) and 19:30 Adak (UTC-10).
    # Anchorage at 20:30 is allowed by 8-21; at 06:30 UTC it is 21:30 and denied.
    assert decide(s, PROMO, at(hours=11, minutes=30)).allowed
    d = decide(s, PROMO, at(hours=12, minutes=30))
    assert not d.allowed and "America/Anchorage" in d.detail


def test_informational_campaign_ignores_quiet_hours_by_default():
    c = campaign("receipts", purpose=CampaignPurpose.INFORMATIONAL)
    s = state_of(granted(at(0), "receipts", tier=ConsentTier.INFORMATIONAL))
    assert decide(s, c, at(hours=11)).allowed


def test_daily_cap_counts_the_recipients_local_day():
    c = campaign(daily_cap=2)
    s = state_of(granted(at(0)), sent(at(10)), sent(at(20)))
    d = decide(s, c, at(30))
    assert not d.allowed and d.reason is Reason.DAILY_CAP_REACHED
    # The next local day (08:30 Los Angeles = 16:30 UTC next day) is fresh.
    assert decide(s, c, at(days=1, hours=-1, minutes=30)).allowed


def test_a_daily_cap_without_a_known_time_zone_fails_closed():
    # No local day to count in; counting UTC days would let a second message through
    # on what is still the same day for the person.
    c = campaign("receipts", purpose=CampaignPurpose.INFORMATIONAL, daily_cap=1)
    nowhere = "+80012345678"  # valid, and no time zone
    s = fold(record([granted(at(0), "receipts", phone=nowhere, tier=ConsentTier.INFORMATIONAL)]))
    d = decide(s, c, at(5))
    assert not d.allowed and d.reason is Reason.TIME_ZONE_UNKNOWN
    assert decide(s, campaign("receipts", purpose=CampaignPurpose.INFORMATIONAL), at(5)).allowed


# Rule 7: frequency caps.
def test_frequency_cap_reached_denies():
    c = campaign(frequency_caps=(FrequencyCap(3, timedelta(hours=24)),))
    s = state_of(granted(at(0)), sent(at(1)), sent(at(2)), sent(at(3)))
    d = decide(s, c, at(4))
    assert not d.allowed and d.reason is Reason.FREQUENCY_CAP_REACHED
    assert len(d.evidence) >= 3


def test_a_denial_by_the_campaigns_rules_names_them_and_one_by_the_law_does_not():
    """An auditor asked why a send was denied must find the rules that denied it, as
    an allow names the rules it was judged by; a denial by federal quiet hours or an
    opt-out rests on no rules of the campaign's."""
    rules = "rules-event-7"

    def ruled(**kw):
        return dataclasses.replace(campaign(**kw), policy_event_id=rules)

    capped = ruled(frequency_caps=(FrequencyCap(1, timedelta(hours=24)),))
    evening = ruled(quiet_hours=QuietHours(time(8), time(20)))
    bar = ruled(name="bar", purpose=CampaignPurpose.PROMOTIONAL, category="alcohol")
    consent = granted(at(0))
    by_rules = {
        "cap": decide(state_of(consent, sent(at(1))), capped, at(2)),
        "campaign hours": decide(state_of(consent), evening, at(hours=10, minutes=30)),
        "tier": decide(state_of(granted(at(0), tier=ConsentTier.INFORMATIONAL)), ruled(), at(5)),
        "age": decide(state_of(granted(at(0), "bar")), bar, at(5)),
    }
    for name, d in by_rules.items():
        assert not d.allowed and rules in d.evidence, (name, d)
    assert by_rules["campaign hours"].reason is Reason.QUIET_HOURS
    by_law = {
        "federal hours": decide(state_of(consent), ruled(), at(hours=12, minutes=30)),
        "opt-out": decide(state_of(consent, revoked(at(1))), ruled(), at(2)),
    }
    for name, d in by_law.items():
        assert not d.allowed and rules not in d.evidence, (name, d)
    assert decide(state_of(consent), ruled(), at(5)).evidence[-1] == rules  # an allow's


def test_a_denial_by_the_campaigns_caps_names_the_campaign_as_the_rule():
    """ "For a denial by quiet hours or a cap the rule that decided and its citation"
    (README, "The policy"): a campaign's own cap is its rule, as its own quiet hours
    are; a state's cap names the state."""
    consent = granted(at(0))
    for kw, reason in (
        (
            dict(frequency_caps=(FrequencyCap(1, timedelta(hours=24)),)),
            Reason.FREQUENCY_CAP_REACHED,
        ),
        (dict(frequency_caps=(FrequencyCap(1, timedelta(days=90)),)), Reason.FREQUENCY_CAP_REACHED),
        (dict(daily_cap=1), Reason.DAILY_CAP_REACHED),
    ):
        d = decide(state_of(consent, sent(at(1))), campaign(**kw), at(2))
        assert not d.allowed and d.reason is reason, (kw, d)
        assert d.rule == "campaign" and "'promo'" in d.citation, (kw, d)


def test_frequency_cap_window_rolls():
    c = campaign(frequency_caps=(FrequencyCap(3, timedelta(hours=24)),))
    s = state_of(granted(at(0)), sent(at(1)), sent(at(2)), sent(at(3)))
    assert decide(s, c, at(days=1, minutes=1.5)).allowed


@pytest.mark.parametrize("window", [timedelta(days=90), timedelta(0), timedelta(days=-1)])
def test_a_cap_whose_window_cannot_be_counted_denies(window):
    # Such a cap can no longer be defined (test_commands). The fold keeps sends for
    # 31 days, so one recorded before that check counted only those: two sends in
    # 90 days passed a cap of two in 90 days; a window of none counted nothing.
    c = campaign(frequency_caps=(FrequencyCap(2, window),))
    s = state_of(granted(at(days=-100)), sent(at(days=-80)), sent(at(days=-1)))
    d = decide(s, c, at(0))
    assert not d.allowed and d.reason is Reason.FREQUENCY_CAP_REACHED
    assert "cannot be counted" in d.detail
    # A reply inside the conversation the person opened escapes the caps, as ever.
    chat = campaign(
        "chat", purpose=CampaignPurpose.CONVERSATIONAL, frequency_caps=(FrequencyCap(2, window),)
    )
    talk = state_of(inbound(at(-5), campaign="chat"))
    assert decide(talk, chat, at(0), MessageKind.CONVERSATION_REPLY).allowed


def test_a_send_stamped_a_little_ahead_of_now_counts_towards_the_caps():
    # The sender's clock runs 2 minutes ahead (within the accepted skew).
    c = campaign(frequency_caps=(FrequencyCap(1, timedelta(hours=24)),))
    s = state_of(granted(at(0)), sent(at(3)))
    d = decide(s, c, at(1))
    assert not d.allowed and d.reason is Reason.FREQUENCY_CAP_REACHED
    daily = campaign(daily_cap=1)
    assert decide(s, daily, at(1)).reason is Reason.DAILY_CAP_REACHED


def test_each_rules_object_is_checked_by_its_own_rules():
    # A Check works out a campaign's spans once per rules object and keeps them by
    # the object's id. A new object made where a freed one was (CPython often gives
    # it the same id: this loop does, about half the time) must get its own.
    s = state_of(granted(at(0)), sent(at(1)), sent(at(2)), sent(at(3)))
    uncapped = CampaignPolicy()
    for _ in range(40):
        capped = campaign(frequency_caps=(FrequencyCap(3, timedelta(hours=24)),))
        assert decide(s, capped, at(4)).reason is Reason.FREQUENCY_CAP_REACHED
        del capped
        free = Campaign(BRAND, "promo", uncapped, 1)
        assert decide(s, free, at(4)).allowed
        del free


def test_opt_out_confirmations_do_not_count_towards_the_cap():
    c = campaign(frequency_caps=(FrequencyCap(1, timedelta(days=30)),))
    # A reply to the person's HELP; one that answers no HELP counts (test_owed_replies).
    asked = inbound(at(1), "HELP", "promo")
    s = state_of(granted(at(0)), asked, sent(at(1), kind=MessageKind.HELP_REPLY))
    assert decide(s, c, at(2)).allowed


# Rule 8: conversational and informational consent.
def test_texting_first_allows_a_reply_within_the_conversation_window():
    c = campaign("support", purpose=CampaignPurpose.CONVERSATIONAL)
    d = decide(state_of(inbound(at(0), campaign="support")), c, at(30))
    assert d.allowed and d.reason is Reason.CONVERSATION_REPLY
    assert Obligation.IDENTIFY_SENDER not in d.obligations  # follow-up in a conversation


def test_conversation_reply_after_the_window_is_denied():
    c = campaign("support", purpose=CampaignPurpose.CONVERSATIONAL)
    d = decide(state_of(inbound(at(0), campaign="support")), c, at(days=1, minutes=1))
    assert not d.allowed and d.reason is Reason.CONVERSATION_WINDOW_CLOSED


def test_a_conversation_window_wider_than_a_day_is_held_to_a_day():
    # Such a campaign can no longer be defined (test_commands); one recorded before
    # that check let one text from the person open a conversation for years.
    c = campaign(
        "support", purpose=CampaignPurpose.CONVERSATIONAL, conversation_window=timedelta(days=3650)
    )
    s = state_of(inbound(at(0), campaign="support"))
    assert decide(s, c, at(days=1)).allowed
    d = decide(s, c, at(days=1, minutes=1))
    assert not d.allowed and d.reason is Reason.CONVERSATION_WINDOW_CLOSED
    assert not decide(s, c, at(days=200)).allowed


def test_a_text_to_one_campaigns_number_opens_no_other_campaigns_conversation():
    # "The consent is limited only to that particular conversation": a text to the
    # support line lets the support line answer, not the brand's other lines.
    support = campaign("support", purpose=CampaignPurpose.CONVERSATIONAL)
    sales = campaign("sales", purpose=CampaignPurpose.CONVERSATIONAL)
    s = state_of(inbound(at(0), "when do you open?", "support"))
    assert decide(s, support, at(5), MessageKind.CONVERSATION_REPLY).allowed
    for kind in (MessageKind.CONVERSATION_REPLY, MessageKind.REGULAR):
        d = decide(s, sales, at(5), kind)
        assert not d.allowed and d.reason is Reason.CONVERSATION_WINDOW_CLOSED
    # Nor does it make another campaign's message a reply that escapes its caps.
    capped = campaign(frequency_caps=(FrequencyCap(1, timedelta(days=1)),))
    s = state_of(granted(at(0)), sent(at(1)), inbound(at(2), "when do you open?", "support"))
    d = decide(s, capped, at(5), MessageKind.CONVERSATION_REPLY)
    assert not d.allowed and d.reason is Reason.FREQUENCY_CAP_REACHED


def test_texting_first_never_allows_a_promotional_campaign():
    d = decide(state_of(inbound(at(0))), PROMO, at(5))
    assert not d.allowed and d.reason is Reason.CONSENT_TIER_INSUFFICIENT


def test_informational_consent_never_allows_a_promotional_campaign():
    s = state_of(granted(at(0), tier=ConsentTier.INFORMATIONAL))
    d = decide(s, PROMO, at(5))
    assert not d.allowed and d.reason is Reason.CONSENT_TIER_INSUFFICIENT


@pytest.mark.parametrize("method", [CollectionMethod.VERBAL, CollectionMethod.API_IMPORT])
def test_a_promotional_opt_in_not_given_in_writing_allows_informational_campaigns_only(method):
    # Marketing texts need prior express written consent (47 CFR 64.1200(a)(2),
    # (f)(9)): a consent said on the phone, or imported without saying how it was
    # given, is express consent at most, which reaches informational messages.
    s = state_of(granted(at(0), method=method), granted(at(0), "receipts", method=method))
    d = decide(s, PROMO, at(5))
    assert not d.allowed and d.reason is Reason.CONSENT_TIER_INSUFFICIENT
    assert "written" in d.detail
    receipts = campaign("receipts", purpose=CampaignPurpose.INFORMATIONAL)
    assert decide(s, receipts, at(5)).allowed


@pytest.mark.parametrize(
    "method", [CollectionMethod.WEB_FORM, CollectionMethod.KEYWORD_REPLY, CollectionMethod.PAPER]
)
def test_a_promotional_opt_in_given_in_writing_allows_a_promotional_campaign(method):
    assert decide(state_of(granted(at(0), method=method)), PROMO, at(5)).allowed


def test_informational_campaign_must_not_promote():
    c = campaign("receipts", purpose=CampaignPurpose.INFORMATIONAL)
    s = state_of(granted(at(0), "receipts", tier=ConsentTier.INFORMATIONAL))
    assert Obligation.NON_MARKETING_CONTENT_ONLY in decide(s, c, at(5)).obligations


def test_a_conversational_grant_allows_replies_within_the_window_only():
    # A recorded grant of the conversational tier is "the person texted first":
    # it reaches as far as the conversation does.
    c = campaign("support", purpose=CampaignPurpose.CONVERSATIONAL)
    grant = granted(at(0), "support", tier=ConsentTier.CONVERSATIONAL)
    d = decide(state_of(grant), c, at(days=30))
    assert not d.allowed and d.reason is Reason.CONVERSATION_WINDOW_CLOSED
    d = decide(state_of(grant, inbound(at(days=30), campaign="support")), c, at(days=30, minutes=5))
    assert d.allowed and d.reason is Reason.CONVERSATION_REPLY
    informational = granted(at(0), "support", tier=ConsentTier.INFORMATIONAL)
    assert decide(state_of(informational), c, at(days=30)).reason is Reason.CONSENT_ACTIVE


def test_replies_are_held_to_the_campaigns_caps_and_quiet_hours():
    # A campaign whose quiet hours apply to every message, one message a day.
    c = campaign(
        "support",
        purpose=CampaignPurpose.CONVERSATIONAL,
        quiet_hours_apply_to_all=True,
        frequency_caps=(FrequencyCap(1, timedelta(days=1)),),
    )
    grant = granted(at(0), "support", tier=ConsentTier.CONVERSATIONAL)
    asked = inbound(at(hours=10, minutes=40), campaign="support")  # 20:40 in Los Angeles
    for start in ([grant, asked], [asked]):  # a conversational grant, or no grant at all
        d = decide(state_of(*start), c, at(hours=11, minutes=5))  # 21:05 there
        assert not d.allowed and d.reason is Reason.QUIET_HOURS
        replied = [*start, sent(at(hours=10, minutes=45), "support")]
        d = decide(state_of(*replied), c, at(hours=10, minutes=50))
        assert not d.allowed and d.reason is Reason.FREQUENCY_CAP_REACHED
        assert decide(state_of(*start), c, at(hours=10, minutes=50)).allowed


def test_an_age_gated_conversation_needs_the_age_verified_too():
    c = campaign("bar", purpose=CampaignPurpose.CONVERSATIONAL, category="alcohol")
    d = decide(state_of(inbound(at(0), "do you deliver?", "bar")), c, at(5))
    assert not d.allowed and d.reason is Reason.AGE_VERIFICATION_REQUIRED
    s = state_of(inbound(at(0), "do you deliver?", "bar"), age(at(1), plus21=True))
    assert decide(s, c, at(5)).reason is Reason.CONVERSATION_REPLY


def test_the_stop_message_itself_opens_no_conversation():
    c = campaign("support", purpose=CampaignPurpose.CONVERSATIONAL)
    stop = inbound(at(0), "STOP")
    s = state_of(stop, revoked(at(0), None))
    assert not decide(s, c, at(1)).allowed


# Rule 9: age gate.
@pytest.mark.parametrize("category", ["alcohol", "firearms", "gambling", "tobacco"])
def test_age_gated_category_without_verification_is_denied(category):
    c = campaign(category=category)
    d = decide(state_of(granted(at(0))), c, at(5))
    assert not d.allowed and d.reason is Reason.AGE_VERIFICATION_REQUIRED


def test_age_gated_campaign_with_21_plus_verification_is_allowed():
    c = campaign(age_gated=True)
    assert decide(state_of(granted(at(0)), age(at(1), plus21=True)), c, at(5)).allowed


def test_age_gated_campaign_with_a_20_year_old_is_denied():
    c = campaign(age_gated=True)
    s = state_of(granted(at(0)), age(at(1), dob="2005-06-01"))
    assert decide(s, c, at(5)).reason is Reason.AGE_VERIFICATION_REQUIRED


def test_a_date_of_birth_decides_over_a_later_verified_21_flag():
    # A date of birth saying 20 and then a "verified 21+" flag (another check, a
    # careless client, or the two recorded out of order): the date of birth stands,
    # whichever of the two came or was recorded first.
    c = campaign(age_gated=True)
    under = age(at(1), dob="2005-06-01")
    flag = age(at(2), plus21=True)
    for events in ([under, flag], [flag, under]):
        s = fold(record([granted(at(0)), *events]))
        d = decide(s, c, at(5))
        assert not d.allowed and d.reason is Reason.AGE_VERIFICATION_REQUIRED
        assert fold(retained_facts(s)) == s
    # A later date of birth still corrects an earlier one.
    s = state_of(granted(at(0)), under, age(at(3), dob="1990-01-01"), flag)
    assert decide(s, c, at(5)).allowed


def test_age_counts_from_the_date_of_birth_at_the_time_of_the_question():
    c = campaign(age_gated=True)
    s = state_of(granted(at(0)), age(at(1), dob="2005-03-01"))  # 21 on 2026-03-01
    assert decide(s, c, at(5)).allowed


def test_a_21st_birthday_counts_from_the_persons_own_date():
    # Born 2005-03-03. At 01:00 UTC on 2026-03-03 it is still 2026-03-02 in Los
    # Angeles, the number's zone: not 21 there yet. At 08:00 UTC it is the 3rd.
    c = campaign(age_gated=True)
    s = state_of(granted(at(0)), age(at(1), dob="2005-03-03"))
    night = datetime(2026, 3, 3, 1, 0, tzinfo=UTC)
    assert decide(s, c, night).reason is Reason.AGE_VERIFICATION_REQUIRED
    assert decide(s, c, datetime(2026, 3, 3, 17, 0, tzinfo=UTC)).allowed


def test_decide_refuses_a_naive_time():
    with pytest.raises(ValueError):
        decide(fold([]), PROMO, at(0).replace(tzinfo=None))


def test_decision_is_deterministic():
    s = state_of(granted(at(0)), sent(at(1)), revoked(at(2), "other"))
    assert decide(s, PROMO, at(3)) == decide(s, PROMO, at(3))
