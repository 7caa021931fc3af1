"""What one reading of a number gives a digest: its time zones and the states it points to.

``ledger.phone.time_zones`` and ``ledger.regions.regions_for_number`` say what the
answers are, each through ``phonenumbers``' public functions. Between them those
parse the number twice and work out its region four times and its type twice; the
region and the type are the costly part (each a run of the metadata's patterns over
the number), and a projection meets most numbers for the first time. ``places``
parses once and works the region and the type out once, then composes the same
library steps from them, so it gives the same answers (tests/unit/test_numbers.py
holds it to the two functions over every region's example numbers and every NANP
area code) in less than half the time: 26 µs a new number, not 61 (``bench/HISTORY.md``).

A NANP number's answers depend only on its block (``ledger.phone.nanp_block``, its
first six national digits, seven in two area codes): every pattern of the NANP
regions' metadata decides a ten-digit number by them, and the time zone and
geocoding tables key NANP numbers by six at most. So NANP numbers are read once per
block (ten thousand numbers; a thousand in those area codes), through the block's
first number; tests/unit/test_numbers.py proves the depths from the installed metadata.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

import phonenumbers
from phonenumbers import PhoneMetadata, PhoneNumberType
from phonenumbers.phonenumberutil import (
    COUNTRY_CODE_TO_REGION_CODE,
    _number_type_helper,
    is_number_type_geographical,
    national_significant_number,
)
from phonenumbers.re_util import re_compile
from phonenumbers.timezone import (
    _country_level_time_zones_for_number,
    time_zones_for_geographical_number,
)

from ledger import nanp_states
from ledger.phone import UNKNOWN_ZONE, area_zones, nanp_block
from ledger.regions import ANY_US_STATE, TERRITORIES

_UNKNOWN = PhoneNumberType.UNKNOWN


class Places(NamedTuple):
    zones: tuple[str, ...]
    """As ``ledger.phone.time_zones`` gives them."""
    regions: tuple[str, ...]
    """As ``ledger.regions.regions_for_number`` gives them."""


_NOWHERE = Places((), ())

_NANP_NUMBER = re.compile(r"\+1[0-9]{10}")


@lru_cache(maxsize=262_144)
def places(e164: str) -> Places:
    """The number's time zones and states."""
    # Cached by the whole number too: a number asked about again (every CanSend on
    # an in-memory view digests its state) is answered without running any of this.
    if _NANP_NUMBER.fullmatch(e164):
        return _block_places(nanp_block(e164))
    return read_places(e164)


@lru_cache(maxsize=262_144)
def _block_places(head: str) -> Places:
    """The places of every NANP number that starts with ``head``: its first number's."""
    return read_places(head.ljust(12, "0"))


def read_places(e164: str) -> Places:
    """The number's time zones and states, from one parse and one look at its region."""
    try:
        parsed = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return _NOWHERE
    country = parsed.country_code
    assert country is not None, "a parsed number has its country code"
    region, kind = _region_and_type(parsed, country)
    # phonenumbers.timezone.time_zones_for_number, with the type known
    if kind == _UNKNOWN:
        found: tuple[str, ...] = (UNKNOWN_ZONE,)
    elif not is_number_type_geographical(kind, country):
        found = tuple(_country_level_time_zones_for_number(parsed))
    else:
        found = tuple(time_zones_for_geographical_number(parsed))
    zones = list(found)
    if country == 1:  # as ledger.phone.time_zones: every zone of a NANP area code
        area = area_zones(national_significant_number(parsed))
        zones.extend(z for z in area if z not in zones)
    return Places(tuple(z for z in zones if z != UNKNOWN_ZONE), _regions(parsed, region, kind))


def _regions(parsed: phonenumbers.PhoneNumber, region: str | None, kind: int) -> tuple[str, ...]:
    """``ledger.regions.regions_for_number`` with the region and type known."""
    if region in TERRITORIES:
        return (TERRITORIES[region],)
    if region != "US":
        return ()
    # phonenumbers.geocoder.description_for_number(parsed, "en"), with the type known;
    # its description_for_valid_number for a number of its own region (the US has no
    # mobile token: checked at import below). A geographic number is described by its
    # longest prefix in the geocoding data, any other by the country's name, which
    # names no state (tests/unit/test_numbers.py checks both).
    state = ""
    if kind != _UNKNOWN and is_number_type_geographical(kind, 1):  # only US numbers come here
        state = nanp_state("1" + national_significant_number(parsed))
    return (state,) if state else (ANY_US_STATE,)


def nanp_state(digits: str) -> str:
    """The state the geocoder's description of a NANP number (its digits, country code
    first) names, or "" for none: its longest prefix in ``ledger.nanp_states``."""
    for length in range(min(len(digits), nanp_states.LONGEST), 0, -1):
        state = nanp_states.STATES.get(digits[:length])
        if state is not None:
            return state
    return ""


def _region_and_type(parsed: phonenumbers.PhoneNumber, country: int) -> tuple[str | None, int]:
    """``phonenumbers.region_code_for_number`` and ``phonenumbers.number_type`` at once:
    the region's search matches the number against a region's types, which is the
    number's type when that region is the answer, so it is not worked out again."""
    regions = COUNTRY_CODE_TO_REGION_CODE.get(country)
    nsn = national_significant_number(parsed)
    region: str | None = None
    if regions is not None and len(regions) == 1:
        region = regions[0]
    elif regions is not None:
        # phonenumberutil._region_code_for_number_from_list, keeping the type it found
        for code in regions:
            metadata = PhoneMetadata.metadata_for_region(code.upper(), None)
            if metadata is None:
                continue
            if metadata.leading_digits is not None:
                if re_compile(metadata.leading_digits).match(nsn):
                    region = code
                    break
            else:
                kind = _number_type_helper(nsn, metadata)
                if kind != _UNKNOWN:
                    return code, kind
    # phonenumberutil.number_type, given the region
    if region is None:
        return None, _UNKNOWN
    found = PhoneMetadata.metadata_for_region_or_calling_code(country, region)
    if found is None:
        return region, _UNKNOWN
    return region, _number_type_helper(nsn, found)


if phonenumbers.country_mobile_token(1) != "":  # pragma: no cover - a library change
    raise ImportError("ledger.numbers assumes NANP numbers carry no mobile token")
