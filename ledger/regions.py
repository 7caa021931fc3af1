"""Where the recipient may be: the US states (USPS codes) a number or an address points to.

A state's telemarketing rules apply to people in that state. A number's area code
names a state (``phonenumbers``' geocoder, the same data that gives its time zones);
a caller may also say where the subscriber lives (``ConsentProof.region``). Where
the two differ both are candidates, and the policy applies the strictest rule of
all of them: a supplied address adds a candidate, it never removes one.
"""

from __future__ import annotations

from functools import lru_cache

import phonenumbers

ANY_US_STATE = "US"
"""A candidate meaning "somewhere in the US, state unknown" (a toll-free or
non-geographic US number): the policy reads it as every state with rules."""

STATE_NAMES: dict[str, str] = {
    "AL": "Alabama", "AK": "Alaska", "AZ": "Arizona", "AR": "Arkansas", "CA": "California",
    "CO": "Colorado", "CT": "Connecticut", "DE": "Delaware", "DC": "District of Columbia",
    "FL": "Florida", "GA": "Georgia", "HI": "Hawaii", "ID": "Idaho", "IL": "Illinois",
    "IN": "Indiana", "IA": "Iowa", "KS": "Kansas", "KY": "Kentucky", "LA": "Louisiana",
    "ME": "Maine", "MD": "Maryland", "MA": "Massachusetts", "MI": "Michigan",
    "MN": "Minnesota", "MS": "Mississippi", "MO": "Missouri", "MT": "Montana",
    "NE": "Nebraska", "NV": "Nevada", "NH": "New Hampshire", "NJ": "New Jersey",
    "NM": "New Mexico", "NY": "New York", "NC": "North Carolina", "ND": "North Dakota",
    "OH": "Ohio", "OK": "Oklahoma", "OR": "Oregon", "PA": "Pennsylvania",
    "RI": "Rhode Island", "SC": "South Carolina", "SD": "South Dakota", "TN": "Tennessee",
    "TX": "Texas", "UT": "Utah", "VT": "Vermont", "VA": "Virginia", "WA": "Washington",
    "WV": "West Virginia", "WI": "Wisconsin", "WY": "Wyoming",
    "PR": "Puerto Rico", "VI": "U.S. Virgin Islands", "GU": "Guam",
    "AS": "American Samoa", "MP": "Northern Mariana Islands",
}  # fmt: skip
"""The USPS codes a caller may give: the states, DC and the inhabited territories."""

STATE_ZONES: dict[str, tuple[str, ...]] = {
    "AL": ("America/Chicago", "America/New_York"),  # Phenix City keeps Eastern time
    "AK": ("America/Anchorage", "America/Adak"),
    "AZ": ("America/Phoenix", "America/Denver"),  # the Navajo Nation keeps DST
    "AR": ("America/Chicago",),
    "CA": ("America/Los_Angeles",),
    "CO": ("America/Denver",),
    "CT": ("America/New_York",),
    "DE": ("America/New_York",),
    "DC": ("America/New_York",),
    "FL": ("America/New_York", "America/Chicago"),
    "GA": ("America/New_York",),
    "HI": ("Pacific/Honolulu",),
    "ID": ("America/Boise", "America/Los_Angeles"),
    "IL": ("America/Chicago",),
    "IN": ("America/Indiana/Indianapolis", "America/Chicago"),
    "IA": ("America/Chicago",),
    "KS": ("America/Chicago", "America/Denver"),
    "KY": ("America/New_York", "America/Chicago"),
    "LA": ("America/Chicago",),
    "ME": ("America/New_York",),
    "MD": ("America/New_York",),
    "MA": ("America/New_York",),
    # libphonenumber names Detroit's time America/New_York for every Michigan number:
    # without it, no number's own zone was one Michigan keeps, so each was held to
    # Central time as well (9:30 in Detroit denied as 8:30).
    "MI": ("America/Detroit", "America/New_York", "America/Chicago"),
    "MN": ("America/Chicago",),
    "MS": ("America/Chicago",),
    "MO": ("America/Chicago",),
    "MT": ("America/Denver",),
    "NE": ("America/Chicago", "America/Denver"),
    "NV": ("America/Los_Angeles", "America/Denver"),
    "NH": ("America/New_York",),
    "NJ": ("America/New_York",),
    "NM": ("America/Denver",),
    "NY": ("America/New_York",),
    "NC": ("America/New_York",),
    "ND": ("America/Chicago", "America/Denver"),
    "OH": ("America/New_York",),
    "OK": ("America/Chicago",),
    "OR": ("America/Los_Angeles", "America/Boise"),
    "PA": ("America/New_York",),
    "RI": ("America/New_York",),
    "SC": ("America/New_York",),
    "SD": ("America/Chicago", "America/Denver"),
    "TN": ("America/Chicago", "America/New_York"),
    "TX": ("America/Chicago", "America/Denver"),
    "UT": ("America/Denver",),
    "VT": ("America/New_York",),
    "VA": ("America/New_York",),
    "WA": ("America/Los_Angeles",),
    "WV": ("America/New_York",),
    "WI": ("America/Chicago",),
    "WY": ("America/Denver",),
    "PR": ("America/Puerto_Rico",),
    "VI": ("America/St_Thomas",),
    "GU": ("Pacific/Guam",),
    "AS": ("Pacific/Pago_Pago",),
    "MP": ("Pacific/Saipan",),
}
"""Every IANA zone a person in the state may keep: where the state itself is the
only thing known of the recipient's place, quiet hours hold in all of them."""

_BY_NAME = {name.lower(): code for code, name in STATE_NAMES.items()}
_BY_NAME["washington d.c."] = "DC"
_BY_NAME["washington, d.c."] = "DC"
_BY_NAME["washington state"] = "WA"  # how the geocoder names Washington's area codes
TERRITORIES = {"PR": "PR", "VI": "VI", "GU": "GU", "AS": "AS", "MP": "MP"}


def normalise_region(raw: str) -> str | None:
    """``raw`` as a USPS code ("fl", " FL " -> "FL"); None when it names no US state.
    Only spaces are read through: a line break or other control character is a
    client's mistake, refused as it is in a brand, not stripped into a valid code."""
    code = raw.strip(" ").upper()
    return code if code in STATE_NAMES else None


def state_of_description(description: str) -> str | None:
    """The USPS code in a geocoder description: "Florida", "San Francisco, CA"."""
    text = description.strip()
    if not text:
        return None
    found = _BY_NAME.get(text.lower())
    if found is not None:
        return found
    _, comma, tail = text.rpartition(",")
    if comma:
        tail = tail.strip().upper()
        if tail in STATE_NAMES:
            return tail
        return _BY_NAME.get(tail.lower())
    return None


@lru_cache(maxsize=262_144)
def regions_for_number(e164: str) -> tuple[str, ...]:
    """The states a number's area code points to.

    A US number whose area code names no state (toll-free, non-geographic) is
    ``(ANY_US_STATE,)``; a territory's number its own code; any other country's
    number no state at all (empty).
    """
    try:
        parsed = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return ()
    region = phonenumbers.region_code_for_number(parsed)
    if region in TERRITORIES:
        return (TERRITORIES[region],)
    if region != "US":
        return ()
    # Imported here: the geocoder's data costs a process some 100 MB. The service reads
    # states through ledger.numbers (from ledger.nanp_states); this is the reference
    # the tests hold that to.
    from phonenumbers import geocoder

    state = state_of_description(geocoder.description_for_number(parsed, "en"))
    return (state,) if state is not None else (ANY_US_STATE,)


def candidate_regions(e164: str, supplied: str = "") -> tuple[str, ...]:
    """Every state the recipient may be in: the number's, and the one a caller gave.

    A supplied state replaces only "somewhere in the US" (it is better knowledge
    than nothing); it never removes the state the area code names.
    """
    return with_supplied(regions_for_number(e164) if e164 else (), supplied)


def with_supplied(from_number: tuple[str, ...], supplied: str) -> tuple[str, ...]:
    """``candidate_regions`` given the number's own states (``regions_for_number``)."""
    if not supplied:
        return from_number
    kept = [r for r in from_number if r != ANY_US_STATE]
    return tuple(sorted({*kept, supplied}))


def zones_with_region(zones: tuple[str, ...], supplied: str) -> tuple[str, ...]:
    """The number's zones and every zone of the state a caller gave, in a fixed order."""
    extra = STATE_ZONES.get(supplied, ())
    if not extra:
        return zones
    merged = list(zones)
    merged.extend(z for z in extra if z not in zones)
    return tuple(merged)
