"""Phone numbers: E.164 normalisation and the recipient's time zones.

Both come from Google's libphonenumber port; a hand-written pattern would accept
numbers that cannot ring and miss the per-country rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import phonenumbers
from phonenumbers import timezone as pn_timezone
from phonenumbers.tzdata import TIMEZONE_DATA

from ledger.errors import InvalidPhoneNumber

UNKNOWN_ZONE = "Etc/Unknown"
"""``phonenumbers``' zone for a number it cannot place; never kept."""


_PUNCTUATION = frozenset("+-(). /")

# Spaces, dashes and the full-width + ( ) . / as they reach us from a spreadsheet (a
# no-break space between groups), a word processor (an en dash) or a phone's
# full-width input, read as the ASCII ones: refused, an opt-out written so was lost
# while its number, written plainly elsewhere, stayed opted in.
_SEPARATORS = str.maketrans(
    {
        **dict.fromkeys("\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008", " "),
        **dict.fromkeys("\u2009\u200a\u202f\u205f\u3000", " "),
        **dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d", "-"),
        "\uff0b": "+",
        "\uff08": "(",
        "\uff09": ")",
        "\uff0e": ".",
        "\uff0f": "/",
    }
)

E164_EXAMPLE = "E.164, for example +14155552671"
"""The form a phone number is asked for, as every refusal of one says."""


class _Refused(ValueError):
    """Why ``_e164`` refuses a number; ``to_e164`` names the field."""


def to_e164(raw: str, *, field: str = "phone", default_region: str | None = None) -> str:
    """Return ``raw`` as an E.164 string, or raise ``InvalidPhoneNumber``.

    Without ``default_region`` the number must carry its country code (+1...), so a
    subscriber can never be filed under the wrong country by accident. Spaces,
    dashes, dots, slashes and brackets are read through (``+1 (415) 555-2671``),
    no-break and other Unicode spaces, Unicode dashes and full-width punctuation
    included, and digits of any script; anything else (a control or format character, a letter)
    is refused, not skipped, and so is an extension: no text reaches one. The reason
    says the form expected, never the library's own words.

    What a number reads as is kept (the last 65,536 numbers read): the library's
    parse is most of a write's CPU, and a number is read again and again (its
    CanSend, then its send, then the next campaign's).
    """
    try:
        return _e164(raw, default_region)
    except _Refused as exc:
        raise InvalidPhoneNumber(field, str(exc)) from None


NANP_BLOCK = 6
"""How many national digits of a NANP number decide what it reads as: area code, exchange."""
NANP_LONGER_BLOCKS = frozenset({"246", "876"})
"""The area codes (Barbados, Jamaica) whose numbers' types need one digit more."""
_NANP_WRITTEN = re.compile(r"\+1[0-9]{10}")


def nanp_block(e164: str) -> str:
    """The head of a NANP number (+1 and ten digits) that decides its reading: every
    pattern of the NANP regions' metadata decides a ten-digit number by its first
    ``NANP_BLOCK`` national digits (one more in ``NANP_LONGER_BLOCKS``' area codes), as
    tests/unit/test_numbers.py proves from the installed metadata."""
    digits = NANP_BLOCK + 1 if e164[2:5] in NANP_LONGER_BLOCKS else NANP_BLOCK
    return e164[: 2 + digits]


@lru_cache(maxsize=65_536)
def _e164(raw: str, default_region: str | None) -> str:
    """``to_e164``'s reading, raising ``_Refused`` with the reason (a refusal is not kept)."""
    # An import brings a new number a record, most of them written +1 and ten digits:
    # such a number reads as its block's first number does, so a block that reads as
    # written is read once, not once for each of its ten thousand numbers.
    if _NANP_WRITTEN.fullmatch(raw) and _block_reads_as_written(nanp_block(raw), default_region):
        return raw
    return _read(raw, default_region)


@lru_cache(maxsize=65_536)
def _block_reads_as_written(head: str, default_region: str | None) -> bool:
    """Whether the NANP block ``head`` is valid numbers, each read as it is written."""
    first = head.ljust(12, "0")
    try:
        return _read(first, default_region) == first
    except _Refused:
        return False


def _read(raw: str, default_region: str | None) -> str:
    """``_e164``'s full reading, through the library."""
    raw = raw.translate(_SEPARATORS)
    if not raw or not raw.strip():
        raise _Refused(f"is required: a phone number in {E164_EXAMPLE}")
    if not raw.isprintable():
        raise _Refused(f"must be a phone number in {E164_EXAMPLE}, with no control characters")
    # The library drops a stray letter ("+1415K5552671" was +14155552671) and reads
    # words as keypad letters: a typo would pass for another number, so only digits
    # and the punctuation people write numbers with are read.
    if not all(ch.isdecimal() or ch in _PUNCTUATION for ch in raw):
        raise _Refused(
            f"must hold only digits, spaces and + - ( ) . /, as a phone number in {E164_EXAMPLE}",
        )
    try:
        parsed = phonenumbers.parse(raw, default_region)
    except phonenumbers.NumberParseException:
        raise _Refused(f"is not a phone number: expected {E164_EXAMPLE}") from None
    if parsed.extension:
        raise _Refused(f"must be a phone number without an extension, in {E164_EXAMPLE}")
    if not phonenumbers.is_valid_number(parsed):
        raise _Refused(f"is not a valid number for its region: expected {E164_EXAMPLE}")
    return _kept_form(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))


NUMBERS_READ_IN = 4_096
"""Characters of a text that ``numbers_in`` looks through: far past any cell a number
is written in, and a bound on the library's search of a hostile one."""


def numbers_in(text: str) -> list[str]:
    """The valid numbers written with their country code among other words or marks
    in ``text`` ("+1 415 555 2671 (mobile)", "cell: +1 ...", two numbers in one
    cell), as E.164 in the order written, each once; none for text that names none.

    ``to_e164`` refuses such text: a number is recorded only as written alone. This
    reads it as a person would, for what only denies (a refused opt-out held for
    review), through the library's search for numbers in text."""
    found: list[str] = []
    matches = phonenumbers.PhoneNumberMatcher(
        text[:NUMBERS_READ_IN].translate(_SEPARATORS), None, leniency=phonenumbers.Leniency.POSSIBLE
    )
    for match in matches:
        written = phonenumbers.format_number(match.number, phonenumbers.PhoneNumberFormat.E164)
        try:
            number = _e164(written, None)
        except _Refused:
            continue
        if number not in found:
            found.append(number)
    return found


@dataclass(frozen=True)
class _Respelling:
    """Numbers that start with ``earlier`` and are ``length`` characters long (the +
    included) are kept starting with ``kept`` instead, the rest of their digits as
    they are, when both are valid numbers: one line that ``phonenumbers`` reads as
    two valid numbers."""

    earlier: str
    kept: str
    length: int

    def kept_form(self, e164: str) -> str | None:
        if len(e164) != self.length or not e164.startswith(self.earlier):
            return None
        return self.kept + e164[len(self.earlier) :]

    def earlier_form(self, e164: str) -> str | None:
        if len(e164) != self.length - len(self.earlier) + len(self.kept):
            return None
        if not e164.startswith(self.kept):
            return None
        return self.earlier + e164[len(self.kept) :]


def _covering(prefixes: Iterable[str]) -> tuple[str, ...]:
    """The fewest of ``prefixes`` that every one of them starts with, in their order."""
    found = list(dict.fromkeys(prefixes))
    return tuple(p for p in found if not any(p != q and p.startswith(q) for q in found))


_RESPELLINGS = (
    # Argentina's mobile 9 (``phonenumbers.country_mobile_token(54)``, the library's
    # only mobile token): +54 9 11 1234 5678 and +54 11 1234 5678 (ten digits, as
    # every Argentine number has) are one line (a number is a mobile or a fixed line,
    # never both), and carriers deliver texts to the form with the 9.
    _Respelling("+54", "+549", 13),
    # Gabon's 2019 plan (ARCEP) put the operator's digit after the 0 of every number:
    # 06 03 12 34 became 066 03 12 34, +241 66 03 12 34 from abroad, and the old
    # numbers stopped working on 6 April 2024. ``phonenumbers`` still takes the old
    # ones for valid numbers, written after +241 with their leading 0 (its removal
    # was postponed, google/libphonenumber#701) or without it: each is kept as the
    # number its line has now.
    *(
        _Respelling(f"+241{zero}{old}", f"+241{new}", 12 if zero else 11)
        for old, new in {"2": "62", "5": "65", "6": "66", "4": "74", "7": "77"}.items()
        for zero in ("0", "")
    ),
    _Respelling("+24101", "+24111", 12),  # a Gabon Telecom fixed line: 01 became 011
    # An old number the plan names no new one for (03) is kept as the library reads
    # it written at home, with its 0; and +241 0 77 69 47 23 as +241 77 69 47 23.
    _Respelling("+241", "+2410", 11),
    _Respelling("+2410", "+241", 13),
)
"""Each way one line is spelt as two valid numbers: the spelling its facts are kept
under, and the one an earlier version kept apart (``forms_stored_before``)."""

SPELT_TWO_WAYS = _covering(r.earlier for r in _RESPELLINGS)
"""How a number of such a country starts: one written so may be in the spelling it is
not kept under, so it is read, never looked up as written."""
KEPT_FORMS = _covering(r.kept for r in _RESPELLINGS)
"""How the spelling a number is kept under starts: ``forms_stored_before`` has answers
only for numbers that start so (``str.startswith`` takes the tuple)."""


def _valid(e164: str) -> bool:
    try:
        return phonenumbers.is_valid_number(phonenumbers.parse(e164, None))
    except phonenumbers.NumberParseException:
        return False


def _kept_form(e164: str) -> str:
    """A valid number in the spelling its line is kept under: the other spelling, when
    that is a valid number too and the one kept; else itself."""
    for respelling in _RESPELLINGS:
        kept = respelling.kept_form(e164)
        if kept is not None and _valid(kept):
            return kept
    return e164


@lru_cache(maxsize=65_536)
def forms_stored_before(e164: str) -> tuple[str, ...]:
    """The other spellings a number's facts may be stored under by a version that did
    not yet bring them to one form: for +54 9 11 1234 5678, +54 11 1234 5678. Those
    facts stay where they are in the ledger (a phone's facts are one partition's, by
    its key), so a check reads them beside the number's own."""
    found = (r.earlier_form(e164) for r in _RESPELLINGS)
    return tuple(f for f in found if f is not None and _valid(f) and _kept_form(f) == e164)


def line_spellings(e164: str) -> tuple[str, ...]:
    """Every spelling the facts of ``e164``'s line may be stored under, ``e164`` among
    them: the one it is kept under first, then those an earlier version kept
    (``forms_stored_before``). Just ``e164`` for a line spelt one way, or a number
    that is none."""
    if not e164.startswith(SPELT_TWO_WAYS) and not e164.startswith(KEPT_FORMS):
        return (e164,)
    try:
        kept = _e164(e164, None)
    except _Refused:
        return (e164,)
    spellings = (kept, *forms_stored_before(kept))
    return spellings if e164 in spellings else (e164, *spellings)


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
    zones = list(pn_timezone.time_zones_for_number(parsed))
    if parsed.country_code == 1:
        # A North American number is dialled by its area code, and a mobile keeps
        # its exchange wherever it goes: where the area code spans several zones
        # (850: Eastern and Central), every zone of it counts, not just the one
        # libphonenumber gives the exchange (or, for an exchange it lacks, the
        # area code's default).
        area = area_zones(phonenumbers.national_significant_number(parsed))
        zones.extend(z for z in area if z not in zones)
    return tuple(z for z in zones if z != UNKNOWN_ZONE)


OVERLAID = {
    "986": "208",  # Idaho
    "364": "270",  # western Kentucky
    "729": "423",  # eastern Tennessee
    "458": "541",  # Oregon outside the Willamette Valley
    "930": "812",  # southern Indiana
    "448": "850",  # the Florida panhandle
    "236": "250",  # British Columbia
    "257": "250",
    "672": "250",
    "778": "250",
    "367": "418",  # eastern Quebec
    "581": "418",
    "879": "709",  # Newfoundland and Labrador
}
"""Overlay area codes over one that spans several zones, each with the one it
overlays (NANPA's and the CNA's overlay plans). An overlay serves the same ground,
but libphonenumber gives most of them one zone: 448 Eastern only, though Pensacola
keeps Central."""


def _area_zones() -> dict[str, tuple[str, ...]]:
    found: dict[str, set[str]] = {}
    for prefix, zones in TIMEZONE_DATA.items():
        if prefix.startswith("1") and len(prefix) >= 4:
            found.setdefault(prefix[1:4], set()).update(zones)
    for overlay, under in OVERLAID.items():
        found.setdefault(overlay, set()).update(found.get(under, ()))
    return {area: tuple(sorted(z)) for area, z in found.items() if len(z) > 1}


_AREA_ZONES = _area_zones()
"""The NANP area codes that span more than one zone, with all of them."""


def area_zones(national_number: str) -> tuple[str, ...]:
    """Every zone of a NANP number's area code when it spans several, else none."""
    return _AREA_ZONES.get(national_number[:3], ())
