"""Phone numbers: E.164 normalisation and the recipient's time zones.

Both come from Google's libphonenumber port; a hand-written pattern would accept
numbers that cannot ring and miss the per-country rules.
"""

from __future__ import annotations

from functools import lru_cache

import phonenumbers
from phonenumbers import timezone as pn_timezone

from ledger.errors import InvalidPhoneNumber

_UNKNOWN_ZONE = "Etc/Unknown"


_PUNCTUATION = frozenset("+-(). /")

E164_EXAMPLE = "E.164, for example +14155552671"
"""The form a phone number is asked for, as every refusal of one says."""


def to_e164(raw: str, *, field: str = "phone", default_region: str | None = None) -> str:
    """Return ``raw`` as an E.164 string, or raise ``InvalidPhoneNumber``.

    Without ``default_region`` the number must carry its country code (+1...), so a
    subscriber can never be filed under the wrong country by accident. Spaces,
    dashes, dots, slashes and brackets are read through (``+1 (415) 555-2671``), and
    digits of any script; anything else (a control or format character, a letter)
    is refused, not skipped, and so is an extension: no text reaches one. The reason
    says the form expected, never the library's own words.
    """
    if not raw or not raw.strip():
        raise InvalidPhoneNumber(field, f"is required: a phone number in {E164_EXAMPLE}")
    if not raw.isprintable():
        raise InvalidPhoneNumber(
            field, f"must be a phone number in {E164_EXAMPLE}, with no control characters"
        )
    # The library drops a stray letter ("+1415K5552671" was +14155552671) and reads
    # words as keypad letters: a typo would pass for another number, so only digits
    # and the punctuation people write numbers with are read.
    if not all(ch.isdecimal() or ch in _PUNCTUATION for ch in raw):
        raise InvalidPhoneNumber(
            field,
            f"must hold only digits, spaces and + - ( ) . / : a phone number in {E164_EXAMPLE}",
        )
    try:
        parsed = phonenumbers.parse(raw, default_region)
    except phonenumbers.NumberParseException:
        raise InvalidPhoneNumber(field, f"is not a phone number: expected {E164_EXAMPLE}") from None
    if parsed.extension:
        raise InvalidPhoneNumber(
            field, f"must be a phone number without an extension, in {E164_EXAMPLE}"
        )
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidPhoneNumber(
            field, f"is not a valid number for its region: expected {E164_EXAMPLE}"
        )
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


@lru_cache(maxsize=262_144)
def time_zones(e164: str) -> tuple[str, ...]:
    """The IANA zones the number may ring in; empty when the library cannot tell.

    Several zones are normal (a toll-free or mobile range spans a country); the
    policy then applies the most restrictive of them.
    """
    try:
        parsed = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return ()  # not a number: no zone, so quiet hours deny (fail closed)
    zones = pn_timezone.time_zones_for_number(parsed)
    return tuple(z for z in zones if z != _UNKNOWN_ZONE)
