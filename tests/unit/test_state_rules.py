"""The recipient's state and its telemarketing rules: quiet hours, closed days, caps."""

from __future__ import annotations

import dataclasses
import json
import runpy
import uuid
from datetime import UTC, date, datetime, time, timedelta
from importlib import resources
from pathlib import Path

import phonenumbers
import pytest
from phonenumbers import geocoder

from ledger import state_rules
from ledger.campaigns import CampaignPurpose, QuietHours
from ledger.commands import RecordOptIn, RecordSubscriberLocation, to_events
from ledger.digest import digest_of
from ledger.errors import InvalidRequest
from ledger.events import (
    ConsentGranted,
    LedgerEvent,
    MessageSent,
    SubscriberLocated,
)
from ledger.phone import OVERLAID, time_zones
from ledger.policy import Check, Decision, Reason, decide
from ledger.regions import (
    ANY_US_STATE,
    STATE_NAMES,
    STATE_ZONES,
    candidate_regions,
    regions_for_number,
    state_of_description,
)
from ledger.state import fold, retained_facts
from services.wire.digest import decode_digest, encode_digest
from tests.builders import BRAND, campaign, granted, opt_in, proof, record, sent

FLORIDA = "+13055550123"  # Miami: America/New_York
TEXAS = "+15125550100"  # Austin: America/Chicago
EL_PASO = "+19155550123"  # Texas, America/Denver
ALABAMA = "+12055550123"  # Birmingham: America/Chicago
RHODE_ISLAND = "+14015550123"  # America/New_York
PENNSYLVANIA = "+12155550123"  # Philadelphia: America/New_York
MARYLAND = "+14105550123"  # Baltimore: America/New_York
CALIFORNIA = "+14155550123"  # San Francisco: no state rules
TOLL_FREE = "+18005550123"
LONDON = "+442071234567"

# Winter: New York is UTC-5, Chicago UTC-6, Denver UTC-7.
FRIDAY = date(2026, 12, 18)
SATURDAY = date(2026, 12, 19)
SUNDAY = date(2026, 12, 20)
MONDAY = date(2026, 12, 21)
CHRISTMAS = date(2026, 12, 25)  # a Friday


def eastern(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(
        hours=hour + 5, minutes=minute
    )


def central(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(
        hours=hour + 6, minutes=minute
    )


def with_region(event: ConsentGranted, region: str) -> ConsentGranted:
    return dataclasses.replace(event, proof=dataclasses.replace(event.proof, region=region))


def state_of(phone: str, *events: LedgerEvent, region: str = ""):
    grant = granted(datetime(2026, 1, 5, tzinfo=UTC), phone=phone)
    if region:
        grant = with_region(grant, region)
    return fold(record([grant, *events])), grant


def sent_to(phone: str, when: datetime) -> MessageSent:
    return sent(when, phone=phone)


def ask(phone: str, when: datetime, region: str = "", **policy) -> Decision:
    state, _ = state_of(phone, region=region)
    return decide(state, campaign(**policy), when)


# --- the table ---------------------------------------------------------------------


def test_every_row_of_the_table_cites_its_statute_and_a_date_and_parses():
    document = state_rules.table_document()
    table = state_rules.parse_table(document)
    assert table.federal.hours == (time(8), time(21))
    assert "64.1200(c)(1)" in table.federal.citation
    assert len(table.rules) == len(document["states"]) >= 15
    assert len(table.states) >= 15
    for rule in table.rules:
        assert rule.state in STATE_NAMES and rule.name == STATE_NAMES[rule.state]
        assert rule.citation.strip() and any(ch.isdigit() for ch in rule.citation)
        assert date(1990, 1, 1) <= rule.effective <= date(2026, 12, 31)
        assert rule.sources, f"{rule.state} names no source"
        if not rule.confirmed:
            assert rule.notes, f"{rule.state} is unconfirmed and says not why"
        # Stricter than the federal floor somewhere, or it would not be in the table.
        days = (rule.weekdays, rule.saturday, rule.sunday)
        narrower = any(
            h is None or h[0] > table.federal.hours[0] or h[1] < table.federal.hours[1]
            for h in days
        )
        assert narrower or rule.holidays_closed or rule.cap is not None, rule.state
    for row in document["not_applied"]:
        assert row["citation"] and row["notes"]


def test_a_row_without_a_citation_or_with_hours_backwards_is_refused():
    document = state_rules.table_document()
    row = next(r for r in document["states"] if r["state"] == "FL")
    for broken in (
        {**row, "citation": " "},
        {**row, "effective": "someday"},
        {**row, "hours": {**row["hours"], "sunday": ["20:00", "08:00"]}},
        {**row, "holidays": "sometimes"},
        {**row, "extra_holidays": ["groundhog_day"]},
        {**row, "state": "XX"},
    ):
        with pytest.raises((ValueError, KeyError)):
            state_rules.parse_table({**document, "states": [broken]})
    with pytest.raises(ValueError, match="two rows"):
        state_rules.parse_table({**document, "states": [row, row]})
    # An amendment is a second row from a later date.
    later = {**row, "effective": "2030-01-01"}
    assert len(state_rules.parse_table({**document, "states": [row, later]}).rules) == 2


def test_the_table_is_packaged_data_and_valid_json():
    text = resources.files("ledger").joinpath("rules/us_state_rules.json").read_text("utf-8")
    assert json.loads(text)["states"]


# --- where the recipient is ------------------------------------------------------------


@pytest.mark.parametrize(
    ("phone", "regions"),
    [
        (FLORIDA, ("FL",)),
        (TEXAS, ("TX",)),
        (EL_PASO, ("TX",)),
        ("+12125550123", ("NY",)),  # "New York, NY"
        ("+12065550123", ("WA",)),  # "Washington State"
        ("+12025550123", ("DC",)),  # "Washington D.C."
        ("+17875550123", ("PR",)),
        (TOLL_FREE, (ANY_US_STATE,)),
        (LONDON, ()),
        ("+16475550123", ()),  # Toronto: not a US state
    ],
)
def test_the_area_code_names_the_state(phone, regions):
    assert regions_for_number(phone) == regions


def test_every_geographic_us_area_code_names_a_state():
    unnamed = set()
    for npa in range(201, 1000):
        for nxx in (201, 456, 620, 789, 850):
            number = phonenumbers.parse(f"+1{npa}{nxx}1234", None)
            if phonenumbers.region_code_for_number(number) != "US":
                continue
            if not phonenumbers.is_valid_number(number):
                continue
            description = geocoder.description_for_number(number, "en")
            if description and state_of_description(description) is None:
                unnamed.add(description)
    assert not unnamed


def test_geocoder_descriptions_map_to_usps_codes():
    assert state_of_description("San Francisco, CA") == "CA"
    assert state_of_description("Rhode Island") == "RI"
    assert state_of_description("Washington D.C.") == "DC"
    assert state_of_description("Ontario") is None
    assert state_of_description("") is None
    assert set(STATE_ZONES) == set(STATE_NAMES)


def test_a_supplied_state_adds_a_candidate_and_replaces_only_an_unknown_state():
    assert candidate_regions(FLORIDA, "TX") == ("FL", "TX")
    assert candidate_regions(FLORIDA, "FL") == ("FL",)
    assert candidate_regions(TOLL_FREE, "CA") == ("CA",)
    assert candidate_regions(LONDON, "MD") == ("MD",)


def test_the_digest_carries_the_states_and_the_zones_of_a_supplied_state():
    state, grant = state_of(LONDON, region="FL")
    digest = digest_of(state)
    assert digest.regions == ("FL",)
    assert digest.located == ("FL", str(grant.event_id))
    assert {"Europe/London", "America/New_York", "America/Chicago"} <= set(digest.zones)


def test_the_latest_supplied_state_is_kept_through_later_grants_without_one():
    first = with_region(granted(datetime(2026, 1, 5, tzinfo=UTC), phone=FLORIDA), "RI")
    later = granted(datetime(2026, 2, 5, tzinfo=UTC), phone=FLORIDA)  # no region
    state = fold(record([first, later]))
    assert state.location is not None and state.location.event is first
    assert fold(retained_facts(state)) == state
    assert digest_of(state).regions == ("FL", "RI")


def test_the_digest_keeps_its_states_through_its_stored_form_and_old_rows_are_refolded():
    state, _ = state_of(FLORIDA, region="TX")
    digest = digest_of(state)
    assert decode_digest(encode_digest(digest)) == digest
    old = bytes([2]) + encode_digest(digest)[1:]
    assert decode_digest(old) is None  # answered from the snapshot, folded again


# --- quiet hours -------------------------------------------------------------------------


def test_florida_number_at_20_30_is_denied_by_florida_and_named():
    d = ask(FLORIDA, eastern(MONDAY, 20, 30))
    assert not d.allowed and d.reason is Reason.QUIET_HOURS
    assert d.rule == "state:FL" and "501.616" in d.citation
    assert "state:FL" in d.detail and "501.616" in d.detail
    assert ask(FLORIDA, eastern(MONDAY, 19, 59)).allowed


def test_past_nine_the_federal_rule_is_the_one_named():
    d = ask(FLORIDA, eastern(MONDAY, 21, 30))
    assert d.reason is Reason.QUIET_HOURS and d.rule == "federal"
    assert d.citation.startswith("47 CFR 64.1200(c)(1)")
    d = ask(CALIFORNIA, datetime(2026, 12, 21, 15, tzinfo=UTC))  # 07:00 in San Francisco
    assert d.rule == "federal"


def test_texas_number_on_sunday_morning_is_denied_until_noon():
    d = ask(TEXAS, central(SUNDAY, 10))
    assert not d.allowed and d.reason is Reason.QUIET_HOURS and d.rule == "state:TX"
    assert "Sunday" in d.detail and "301.051" in d.citation
    assert ask(TEXAS, central(SUNDAY, 12, 30)).allowed
    assert not ask(TEXAS, central(SATURDAY, 8, 30)).allowed  # 9 a.m. on other days
    assert ask(TEXAS, central(SATURDAY, 9, 0)).allowed


def test_el_paso_is_read_in_mountain_time_not_every_texas_zone():
    mountain_noon_thirty = datetime(2026, 12, 20, 19, 30, tzinfo=UTC)  # 12:30 MST, 13:30 CST
    assert ask(EL_PASO, mountain_noon_thirty).allowed
    assert not ask(EL_PASO, datetime(2026, 12, 20, 18, 30, tzinfo=UTC)).allowed  # 11:30 MST


def test_a_michigan_number_is_read_in_its_own_eastern_time_not_also_central():
    # libphonenumber gives Michigan's numbers America/New_York, the zone Detroit keeps
    # by another name: Michigan keeps it, so its 9 a.m. is the number's own, and 9:30
    # in Detroit (8:30 in Chicago) is allowed; the Upper Peninsula's 906 spans Central
    # as well and is held to both.
    detroit = "+13135550123"
    assert ask(detroit, eastern(MONDAY, 9, 30)).allowed
    d = ask(detroit, eastern(MONDAY, 8, 30))
    assert not d.allowed and d.rule == "state:MI"
    d = ask("+19062221234", eastern(MONDAY, 9, 30))
    assert not d.allowed and d.rule == "state:MI"


def test_an_area_code_that_spans_two_zones_is_held_to_both():
    # libphonenumber gives 850-555 (an exchange it lacks) Eastern time only and
    # 423-555 Central only, though Pensacola keeps Central and Chattanooga Eastern.
    panhandle = "+18505550123"
    d = ask(panhandle, eastern(MONDAY, 8, 15))  # 07:15 in Pensacola
    assert not d.allowed and d.reason is Reason.QUIET_HOURS
    assert ask(panhandle, eastern(MONDAY, 9, 0)).allowed
    tennessee = "+14235550123"
    d = ask(tennessee, central(MONDAY, 20, 30))  # 21:30 in Chattanooga
    assert not d.allowed and d.reason is Reason.QUIET_HOURS and d.rule == "federal"
    assert time_zones("+18502220000") == ("America/New_York", "America/Chicago")
    assert time_zones("+12125550123") == ("America/New_York",)


def test_an_overlay_of_an_area_code_that_spans_two_zones_is_held_to_both():
    # An overlay serves its area code's ground, but libphonenumber gives 448 (over
    # Florida's 850) and 930 (over Indiana's 812) Eastern time only, though Pensacola
    # and Evansville keep Central; 458 (over Oregon's 541) Pacific only, though
    # Ontario, OR keeps Mountain.
    for overlay in ("+14485550123", "+19305550123"):
        d = ask(overlay, eastern(MONDAY, 8, 15))  # 07:15 in Central time
        assert not d.allowed and d.reason is Reason.QUIET_HOURS, overlay
        assert ask(overlay, eastern(MONDAY, 9, 0)).allowed, overlay
    pacific_2030 = eastern(MONDAY, 23, 30)  # 21:30 in Ontario, OR
    d = ask("+14585550123", pacific_2030)
    assert not d.allowed and d.reason is Reason.QUIET_HOURS and d.rule == "federal"
    for overlay, under in OVERLAID.items():
        held = set(time_zones(f"+1{overlay}2221234"))
        assert set(time_zones(f"+1{under}2221234")) <= held, overlay


def test_sunday_closed_states_deny_all_day_and_open_on_monday():
    for phone, when in ((ALABAMA, central), (RHODE_ISLAND, eastern)):
        d = ask(phone, when(SUNDAY, 12))
        assert not d.allowed and d.reason is Reason.QUIET_HOURS and "Sunday" in d.detail
        assert ask(phone, when(MONDAY, 12)).allowed


def test_state_public_holidays_close_the_day():
    d = ask(ALABAMA, central(CHRISTMAS, 12))
    assert not d.allowed and d.rule == "state:AL" and "Christmas" in d.detail
    assert ask(ALABAMA, central(date(2026, 12, 24), 12)).allowed
    # Louisiana's Mardi Gras, from the holidays package's Louisiana calendar.
    louisiana = "+15045550123"
    assert not ask(louisiana, central(date(2026, 2, 17), 12)).allowed
    assert ask(louisiana, central(date(2026, 2, 18), 12)).allowed
    # Florida closes no holiday.
    assert ask(FLORIDA, eastern(CHRISTMAS, 12)).allowed


def test_holidays_the_package_leaves_out_are_added_where_the_statute_names_them():
    good_friday = date(2026, 4, 3)
    d = ask(PENNSYLVANIA, datetime(2026, 4, 3, 16, tzinfo=UTC))  # 12:00 EDT
    assert not d.allowed and d.rule == "state:PA" and "Good Friday" in d.detail
    assert state_rules.holiday_name("PA", good_friday, ("good_friday",)) == "Good Friday"
    assert state_rules.holiday_name("PA", date(2026, 11, 3), ("general_election_day",))
    assert ask(PENNSYLVANIA, datetime(2026, 4, 2, 16, tzinfo=UTC)).allowed


def test_rhode_island_keeps_shorter_saturday_hours():
    assert ask(RHODE_ISLAND, eastern(SATURDAY, 16, 59)).allowed
    d = ask(RHODE_ISLAND, eastern(SATURDAY, 17, 0))
    assert not d.allowed and d.rule == "state:RI" and "Saturday" in d.detail
    assert not ask(RHODE_ISLAND, eastern(FRIDAY, 18, 0)).allowed
    assert ask(RHODE_ISLAND, eastern(FRIDAY, 17, 59)).allowed


def test_the_strictest_of_two_candidate_states_wins_and_the_opt_in_is_evidence():
    # A Florida number (8-20 every day) whose subscriber says Rhode Island (10-17 Saturday).
    state, grant = state_of(FLORIDA, region="RI")
    d = decide(state, campaign(), eastern(SATURDAY, 17, 30))
    assert not d.allowed and d.rule == "state:RI"
    assert str(grant.event_id) in d.evidence
    assert not decide(state, campaign(), eastern(SUNDAY, 12)).allowed
    assert decide(state, campaign(), eastern(SATURDAY, 16)).allowed
    # And the other way round: a Rhode Island number whose subscriber says Florida.
    state, _ = state_of(RHODE_ISLAND, region="FL")
    d = decide(state, campaign(), eastern(SATURDAY, 17, 30))
    assert not d.allowed and d.rule == "state:RI"


def test_a_supplied_state_without_rules_overrides_nothing_stricter():
    state, _ = state_of(RHODE_ISLAND, region="CA")
    assert not decide(state, campaign(), eastern(SUNDAY, 12)).allowed
    # California's zone is a candidate now: 10:00 in Providence is 07:00 in Los Angeles.
    d = decide(state, campaign(), eastern(MONDAY, 10))
    assert not d.allowed and d.rule == "federal" and "America/Los_Angeles" in d.detail
    assert decide(state, campaign(), eastern(MONDAY, 12)).allowed


def test_a_supplied_state_applies_to_a_number_from_abroad():
    state, _ = state_of(LONDON, region="TX")
    when = central(SUNDAY, 10)  # 16:00 in London
    d = decide(state, campaign(), when)
    assert not d.allowed and d.rule == "state:TX"


def test_a_rule_applies_from_its_effective_date_only():
    # Maryland's Stop the Spam Calls Act: from January 1, 2024.
    before = ask(MARYLAND, datetime(2023, 12, 12, 1, 30, tzinfo=UTC))  # 20:30 EST
    after = ask(MARYLAND, datetime(2024, 12, 12, 1, 30, tzinfo=UTC))
    assert before.allowed
    assert not after.allowed and after.rule == "state:MD"


def test_the_campaigns_narrower_window_is_named_when_the_law_allows():
    d = ask(FLORIDA, eastern(MONDAY, 18), quiet_hours=QuietHours(time(9), time(17)))
    assert not d.allowed and d.rule == "campaign" and "'promo'" in d.citation


def test_informational_campaigns_are_held_to_no_state_window():
    d = ask(TEXAS, central(SUNDAY, 10), purpose=CampaignPurpose.INFORMATIONAL)
    assert d.allowed


def test_a_toll_free_denial_says_no_moment_fits_every_zone_rather_than_one_zone():
    """A toll-free number may ring in 42 zones, Guam to Adak: its denial named one
    ("02:00 in Pacific/Guam ...") as if a later hour would do, where on a Saturday no
    moment of the day is inside the quiet hours in all of them."""
    assert len(time_zones(TOLL_FREE)) > 40
    saturday = ask(TOLL_FREE, eastern(SATURDAY, 12))
    assert saturday.reason is Reason.QUIET_HOURS, saturday
    assert "no moment of the next 24 hours is inside the quiet hours in all" in saturday.detail
    assert "once its state is known" in saturday.detail
    # On a winter Wednesday one hour fits them all (22:00 UTC: 08:00 in Guam, 12:00
    # in Honolulu, 17:00 in New York), and the denial says when it begins.
    wednesday = datetime(2026, 12, 16, 12, tzinfo=UTC)
    morning = ask(TOLL_FREE, wednesday)
    assert morning.reason is Reason.QUIET_HOURS, morning
    assert morning.detail.endswith("allows it from 2026-12-16T22:00Z"), morning.detail
    assert ask(TOLL_FREE, wednesday.replace(hour=22)).allowed
    # A number of one zone is told of that zone alone, as before.
    alone = ask(CALIFORNIA, datetime(2026, 12, 16, 7, tzinfo=UTC))
    assert alone.reason is Reason.QUIET_HOURS and "zones" not in alone.detail, alone.detail


def test_a_number_of_unknown_state_is_held_to_every_states_rules():
    assert state_rules.rules_for((ANY_US_STATE,)) == state_rules.table().rules


# --- caps -----------------------------------------------------------------------------------


def test_three_promotional_messages_per_24_hours_in_florida():
    first = eastern(MONDAY, 9)
    sends = [sent_to(FLORIDA, first + timedelta(hours=h)) for h in (0, 1, 2)]
    state, _ = state_of(FLORIDA, *sends)
    d = decide(state, campaign(), first + timedelta(hours=3))
    assert not d.allowed and d.reason is Reason.FREQUENCY_CAP_REACHED
    assert d.rule == "state:FL" and "501.616" in d.citation
    # The oldest counted send and the latest are named; the count is in the detail.
    assert {str(sends[0].event_id), str(sends[-1].event_id)} <= set(d.evidence)
    assert str(sends[1].event_id) not in d.evidence and "3 of 3" in d.detail
    # 24 hours after the first, one of the three has left the window.
    assert decide(state, campaign(), first + timedelta(hours=24, minutes=1)).allowed
    two, _ = state_of(FLORIDA, *sends[:2])
    assert decide(two, campaign(), first + timedelta(hours=3)).allowed


def test_the_state_cap_is_not_applied_to_informational_campaigns_or_other_states():
    first = eastern(MONDAY, 9)
    sends = [sent_to(FLORIDA, first + timedelta(hours=h)) for h in (0, 1, 2)]
    state, _ = state_of(FLORIDA, *sends)
    informational = campaign(purpose=CampaignPurpose.INFORMATIONAL)
    assert decide(state, informational, first + timedelta(hours=3)).allowed
    california = [sent_to(CALIFORNIA, first + timedelta(hours=h)) for h in (0, 1, 2)]
    state, _ = state_of(CALIFORNIA, *california)
    assert decide(state, campaign(), first + timedelta(hours=4)).allowed


def test_a_supplied_capped_state_caps_a_number_from_elsewhere_and_cites_the_opt_in():
    first = eastern(MONDAY, 10)
    sends = [sent_to(CALIFORNIA, first + timedelta(hours=h)) for h in (0, 1, 2)]
    state, grant = state_of(CALIFORNIA, *sends, region="OK")
    d = decide(state, campaign(), first + timedelta(hours=3))
    assert d.reason is Reason.FREQUENCY_CAP_REACHED and d.rule == "state:OK"
    assert str(grant.event_id) in d.evidence


def test_one_check_asked_of_many_numbers_keeps_each_numbers_states_apart():
    check = Check(campaign(), eastern(MONDAY, 20, 30))
    florida, _ = state_of(FLORIDA)
    new_york, _ = state_of("+12125550123")
    assert not check(digest_of(florida)).allowed
    assert check(digest_of(new_york)).allowed
    assert not check(digest_of(florida)).allowed


# --- the opt-in that says where --------------------------------------------------------------


def _opt_in(region: str) -> RecordOptIn:
    when = datetime(2026, 12, 1, 15, tzinfo=UTC)
    return opt_in(when, request_id="r-1", phone=FLORIDA, proof=proof(when, region=region))


def test_an_opt_in_region_is_kept_as_a_usps_code():
    (event,) = to_events(_opt_in("tx"), datetime(2026, 12, 1, 16, tzinfo=UTC))
    assert isinstance(event, ConsentGranted) and event.proof.region == "TX"


@pytest.mark.parametrize("region", ["ZZ", "Texas", "T", "12", "U S"])
def test_an_opt_in_region_that_is_no_state_is_refused_by_field(region):
    with pytest.raises(InvalidRequest) as err:
        to_events(_opt_in(region), datetime(2026, 12, 1, 16, tzinfo=UTC))
    assert err.value.field == "proof.region"


# Spaces around a code are read through (" tx "); a control character or a line
# break is bad input, as it is in a brand or an identifier, not stripped away.
CONTROLLED = ["TX\n", "TX\r\n", "\tTX", "TX\x00", "TX\x85", "TX\u2028", "\x0bTX"]


@pytest.mark.parametrize("region", CONTROLLED)
def test_an_opt_in_region_with_a_control_character_is_refused_by_field(region):
    with pytest.raises(InvalidRequest) as err:
        to_events(_opt_in(region), datetime(2026, 12, 1, 16, tzinfo=UTC))
    assert err.value.field == "proof.region"


def test_an_opt_in_region_with_spaces_around_is_read():
    (event,) = to_events(_opt_in(" tx "), datetime(2026, 12, 1, 16, tzinfo=UTC))
    assert isinstance(event, ConsentGranted) and event.proof.region == "TX"


def test_the_readme_lists_exactly_the_rules_the_table_holds():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = readme.index("<!-- state-rules:start")
    listed = readme[readme.index("\n", start) + 1 : readme.index("<!-- state-rules:end -->")]
    generated = runpy.run_path(
        str(Path(__file__).resolve().parents[2] / "scripts" / "state_rules_table.py")
    )["table_markdown"]()
    assert listed.strip() == generated.strip(), "run scripts/state_rules_table.py"


# --- a state given later ------------------------------------------------------------------


def _located(region: str, when: datetime, phone: str = FLORIDA) -> SubscriberLocated:
    return SubscriberLocated(
        event_id=uuid.uuid4(),
        occurred_at=when,
        phone=phone,
        brand=BRAND,
        region=region,
    )


def test_a_state_given_after_the_opt_in_applies_and_is_evidence():
    moved = _located("TX", datetime(2026, 2, 1, tzinfo=UTC))
    state, _ = state_of(FLORIDA, moved)
    d = decide(state, campaign(), central(SUNDAY, 10))
    assert not d.allowed and d.rule == "state:TX"
    assert str(moved.event_id) in d.evidence
    assert fold(retained_facts(state)) == state


def test_the_latest_word_of_where_the_subscriber_is_counts_in_world_order():
    grant = with_region(granted(datetime(2026, 3, 1, tzinfo=UTC), phone=FLORIDA), "RI")
    earlier = _located("TX", datetime(2026, 2, 1, tzinfo=UTC))  # recorded later, happened before
    state = fold(record([grant, earlier]))
    assert digest_of(state).regions == ("FL", "RI")
    later = _located("TX", datetime(2026, 4, 1, tzinfo=UTC))
    state = fold(record([grant, earlier, later]))
    assert digest_of(state).regions == ("FL", "TX")
    assert digest_of(state).located == ("TX", str(later.event_id))


def _location_request(region: str) -> RecordSubscriberLocation:
    return RecordSubscriberLocation(
        request_id="loc-1",
        phone=FLORIDA,
        brand=BRAND,
        region=region,
        occurred_at=datetime(2026, 12, 1, 15, tzinfo=UTC),
        detail="billing address updated",
    )


def test_a_location_request_becomes_a_fact_with_a_usps_code():
    (event,) = to_events(_location_request("tx"), datetime(2026, 12, 1, 16, tzinfo=UTC))
    assert isinstance(event, SubscriberLocated)
    assert (event.region, event.detail) == ("TX", "billing address updated")


@pytest.mark.parametrize("region", ["", "ZZ", "Texas", *CONTROLLED])
def test_a_location_request_without_a_state_is_refused_by_field(region):
    with pytest.raises(InvalidRequest) as err:
        to_events(_location_request(region), datetime(2026, 12, 1, 16, tzinfo=UTC))
    assert err.value.field == "region"


def test_an_amendment_applies_from_its_own_date_on_top_of_the_older_row():
    # Pennsylvania: holidays closed since 2019; Sundays too from October 18, 2026.
    before = ask(PENNSYLVANIA, datetime(2026, 10, 11, 16, tzinfo=UTC))  # Sunday 12:00 EDT
    after = ask(PENNSYLVANIA, datetime(2026, 10, 25, 16, tzinfo=UTC))
    assert before.allowed
    assert not after.allowed and after.rule == "state:PA" and "Sunday" in after.detail
    assert "SB 992" in after.citation
