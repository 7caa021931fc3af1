"""One line, one number: a mobile written with or without its country's mobile token
(Argentina's 9) is read as the one form."""

from __future__ import annotations

import phonenumbers
import pytest

from ledger.phone import to_e164

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
    assert changed == {}
