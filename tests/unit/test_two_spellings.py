"""One line, one number: a mobile written with or without its country's mobile token
(Argentina's 9), or a Gabonese number with or without its 0, is read as the one form,
and the facts an earlier version stored under the other spelling are folded with its
own."""

from __future__ import annotations

from datetime import timedelta

import phonenumbers
import pytest

from ledger.events import LedgerPosition, MessageKind, Recorded
from ledger.phone import KEPT_FORMS, SPELT_TWO_WAYS, forms_stored_before, to_e164
from ledger.policy import Check, as_one_number, digest_of_history
from tests.builders import T0, campaign, granted, revoked, sent

WITH_9 = "+5491112345678"
WITHOUT_9 = "+541112345678"


@pytest.mark.parametrize(
    "written",
    [
        "+54 11 1234-5678",  # as a Buenos Aires line is written
        "+541112345678",
        "+54 9 11 1234-5678",  # as dialled from abroad
        "+54 11 15 1234-5678",  # the national 15 kept after the country code
    ],
)
def test_an_argentine_mobile_is_one_number_with_or_without_its_9(written: str) -> None:
    assert to_e164(written) == WITH_9


@pytest.mark.parametrize(
    ("written", "region"), [("011 15 1234-5678", "AR"), ("011 1234-5678", "AR")]
)
def test_an_argentine_number_written_nationally_is_the_same_one(written: str, region: str) -> None:
    assert to_e164(written, default_region=region) == WITH_9


def test_a_number_whose_9_form_is_no_number_keeps_its_own() -> None:
    # Toll-free: no mobile is +54 9 800 ..., so the number is what it was.
    assert to_e164("+54 800 123 4567") == "+548001234567"
    assert forms_stored_before("+548001234567") == ()


def test_the_form_with_the_9_names_the_form_facts_were_stored_under_before() -> None:
    assert forms_stored_before(WITH_9) == (WITHOUT_9,)
    assert forms_stored_before("+14155552671") == ()
    assert forms_stored_before("+5491512345678") == ()  # no number
    assert KEPT_FORMS == ("+549", "+241") and SPELT_TWO_WAYS == ("+54", "+241")


@pytest.mark.parametrize(
    ("written", "kept"),
    [
        # Gabon's numbers since its 2019 plan (ARCEP: the old ones stopped working on
        # 6 April 2024): eight digits after +241, nine with the trunk 0 at home.
        ("+241 66 03 12 34", "+24166031234"),
        ("066 03 12 34", "+24166031234"),
        ("+241 0 66 03 12 34", "+24166031234"),  # the trunk 0 kept after +241
        ("+241 77 69 47 23", "+24177694723"),
        ("077 69 47 23", "+24177694723"),
        ("+241 0 77 69 47 23", "+24177694723"),
        # Their old numbers, with the leading 0 after +241 or without it, which
        # phonenumbers still reads as valid: the same lines, with the operator's
        # digit added (06 -> 066, 02 -> 062, 05 -> 065, 04 -> 074, 07 -> 077, 01 -> 011).
        ("+241 06 03 12 34", "+24166031234"),
        ("+241 6 03 12 34", "+24166031234"),
        ("06 03 12 34", "+24166031234"),
        ("+241 02 12 34 56", "+24162123456"),
        ("+241 2 12 34 56", "+24162123456"),
        ("+241 05 12 34 56", "+24165123456"),
        ("+241 5 12 34 56", "+24165123456"),
        ("+241 04 12 34 56", "+24174123456"),
        ("+241 4 12 34 56", "+24174123456"),
        ("+241 07 69 47 23", "+24177694723"),
        ("+241 7 69 47 23", "+24177694723"),
        ("07 69 47 23", "+24177694723"),
        ("+241 01 44 12 34", "+24111441234"),  # a Gabon Telecom fixed line
        ("01 44 12 34", "+24111441234"),
        # An old 03 number no plan moved: with or without its 0, kept with it.
        ("+241 03 12 34 56", "+24103123456"),
        ("+241 3 12 34 56", "+24103123456"),
    ],
)
def test_a_gabonese_number_is_one_number_in_its_old_and_new_spellings(
    written: str, kept: str
) -> None:
    assert to_e164(written, default_region="GA") == kept
    assert to_e164(kept) == kept
    for other in forms_stored_before(kept):
        assert to_e164(other) == kept and other != kept


@pytest.mark.parametrize(
    ("kept", "earlier"),
    [
        ("+24166031234", {"+24106031234", "+2416031234"}),
        ("+24177694723", {"+24107694723", "+2417694723"}),
        ("+24111441234", {"+24101441234"}),
        ("+24103123456", {"+2413123456"}),
    ],
)
def test_a_gabonese_number_names_the_spellings_its_facts_were_stored_under(
    kept: str, earlier: set[str]
) -> None:
    """An earlier version kept the old number as written (with its 0 or without it),
    and the last one with its 0: each of those is read beside the number kept now."""
    assert earlier <= set(forms_stored_before(kept)), forms_stored_before(kept)


def test_a_new_gabonese_range_with_no_old_number_has_no_old_spelling() -> None:
    """060 and 076 were opened after the 2019 plan: no old number became one of
    them, so only the spelling with the trunk 0 after +241 is read beside them."""
    for number in ("+24160123456", "+24176123456"):
        assert forms_stored_before(number) == ("+2410" + number.removeprefix("+241"),)


def _example_numbers() -> list[str]:
    out = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in (phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE):
            example = phonenumbers.example_number_for_type(region, kind)
            if example is not None:
                out.append(phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164))
    return out


def test_every_region_s_example_numbers_read_the_same_when_read_again() -> None:
    """The form a number is kept in is one ``to_e164`` gives back unchanged, in every
    region: a check looks a number written in that form up as written."""
    changed = {}
    for number in _example_numbers():
        once = to_e164(number)
        if to_e164(once) != once:
            changed[number] = once
        for earlier in forms_stored_before(once):
            assert to_e164(earlier) == once
    assert changed == {}


def _recorded(events: list, partition: int, start: int) -> list[Recorded]:
    return [
        Recorded(e, LedgerPosition(partition, start + i), e.occurred_at + timedelta(seconds=1))
        for i, e in enumerate(events)
    ]


def test_an_opt_out_stored_under_the_other_spelling_revokes_the_number() -> None:
    mine = _recorded([granted(T0, phone=WITH_9)], partition=3, start=0)
    theirs = _recorded([revoked(T0 + timedelta(hours=1), phone=WITHOUT_9)], partition=7, start=0)
    check = Check(campaign(), T0 + timedelta(hours=2), MessageKind.REGULAR)
    alone = digest_of_history(mine, WITH_9, "acme")
    both = digest_of_history(as_one_number([*mine, *theirs], WITH_9), WITH_9, "acme")
    assert check(alone).allowed
    assert not check(both).allowed
    assert both.campaign("promo").revocation is not None


def test_an_opt_in_stored_under_the_other_spelling_is_the_number_s_consent() -> None:
    theirs = _recorded([granted(T0, phone=WITHOUT_9)], partition=7, start=0)
    mine = _recorded([sent(T0 + timedelta(hours=1), phone=WITH_9)], partition=3, start=0)
    check = Check(campaign(), T0 + timedelta(hours=2), MessageKind.REGULAR)
    both = digest_of_history(as_one_number([*mine, *theirs], WITH_9), WITH_9, "acme")
    assert check(both).allowed
    assert len(both.campaign("promo").sent) == 1  # the send counts towards its caps
    assert not check(digest_of_history(mine, WITH_9, "acme")).allowed


def test_a_later_opt_in_under_one_spelling_follows_an_opt_out_under_the_other() -> None:
    """Put together in the order the ledger took them, each fact keeps its place."""
    theirs = _recorded(
        [granted(T0, phone=WITHOUT_9), revoked(T0 + timedelta(hours=1), phone=WITHOUT_9)], 7, 0
    )
    mine = _recorded([granted(T0 + timedelta(hours=2), phone=WITH_9)], 3, 0)
    check = Check(campaign(), T0 + timedelta(hours=3), MessageKind.REGULAR)
    assert check(digest_of_history(as_one_number([*mine, *theirs], WITH_9), WITH_9, "acme")).allowed
