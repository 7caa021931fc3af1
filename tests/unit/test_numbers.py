"""``ledger.numbers.places`` gives exactly what ``ledger.phone.time_zones`` and
``ledger.regions.regions_for_number`` give, number by number: every region's example
number of every type (and each with its last digit changed, which often makes it
invalid or another type), every non-geographic entity's, a spread of every NANP area
code's exchanges, random numbers, and strings that are no number."""

from __future__ import annotations

import random
from collections.abc import Iterator

import phonenumbers
import pytest
from phonenumbers import PhoneNumberFormat, PhoneNumberType

from ledger.digest import digest_of
from ledger.numbers import places
from ledger.phone import time_zones
from ledger.regions import candidate_regions, regions_for_number
from ledger.state import SubscriberState

_TYPES = [getattr(PhoneNumberType, name) for name in dir(PhoneNumberType) if name.isupper()]


def _e164(number: phonenumbers.PhoneNumber) -> str:
    return phonenumbers.format_number(number, PhoneNumberFormat.E164)


def _examples() -> Iterator[str]:
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in _TYPES:
            example = phonenumbers.example_number_for_type(region, kind)
            if example is not None:
                yield _e164(example)
        invalid = phonenumbers.invalid_example_number(region)
        if invalid is not None:
            yield _e164(invalid)
    for code in sorted(phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS):
        example = phonenumbers.example_number_for_non_geo_entity(code)
        if example is not None:
            yield _e164(example)


def _variants(numbers: list[str]) -> Iterator[str]:
    for number in numbers:
        yield number
        for digit in "0579":
            yield number[:-1] + digit
        yield number[:-1]
        yield number + "1"


def _nanp() -> Iterator[str]:
    rng = random.Random(1)
    for area in range(200, 1000):
        for exchange in range(200, 1000, 53):
            yield f"+1{area}{exchange}{rng.randrange(10_000):04d}"
        yield f"+1{area}5550123"
        yield f"+1{area}1234567"  # an exchange may not start with 1: invalid


def _random() -> Iterator[str]:
    rng = random.Random(7)
    codes = sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE)
    for _ in range(4000):
        code = rng.choice(codes)
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randrange(4, 14)))
        yield f"+{code}{digits}"


NOT_NUMBERS = ["", "+", "+1", "+999", "garbage", "+1 415 555 2671 ext. 3", "+0123456789"]


def test_every_region_and_type_reads_the_same() -> None:
    numbers = list(_variants(sorted(set(_examples()))))
    assert len(numbers) > 5000
    _same(numbers)


def test_every_nanp_area_code_reads_the_same() -> None:
    numbers = list(_nanp())
    seen = _same(numbers)
    # The spread meets what the NANP branch has to get right: several zones, a state,
    # "somewhere in the US", the territories, other NANP countries and invalid numbers.
    assert {"FL", "TX", "CA", "US", "PR", "GU"} <= {r for regions, _ in seen for r in regions}
    assert any(len(zones) > 1 for _, zones in seen)
    assert ((), ()) in seen


def test_random_numbers_and_non_numbers_read_the_same() -> None:
    _same([*_random(), *NOT_NUMBERS])


def _same(numbers: list[str]) -> set[tuple[tuple[str, ...], tuple[str, ...]]]:
    seen = set()
    for number in numbers:
        found = places(number)
        assert (found.zones, found.regions) == (
            time_zones(number),
            regions_for_number(number),
        ), number
        seen.add((found.regions, found.zones))
    return seen


@pytest.mark.parametrize("phone", ["+18502220000", "+12125550123", "+18005550100", ""])
def test_a_digest_reads_the_number_as_before(phone: str) -> None:
    digest = digest_of(SubscriberState(phone=phone, brand="acme"))
    assert digest.zones == (time_zones(phone) if phone else ())
    assert digest.regions == candidate_regions(phone)
