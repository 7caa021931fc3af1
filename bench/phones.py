"""Valid US numbers for the seeded ledger, spread over several area codes.

libphonenumber decides validity for NANP numbers by area code and exchange; the
last four digits never matter. So each (area code, exchange) block is checked
with ``is_valid_number`` on its first, a middle and its last number, and a block
is used only if all three are valid. The server parses every number it is asked
about, so an invalid one would show up as an error in the measured phases.
"""

from __future__ import annotations

from collections.abc import Iterator

import phonenumbers

AREA_CODES = (212, 415, 312, 305, 206, 713, 617, 404, 602, 303, 503, 615, 702, 808, 907)
"""New York, San Francisco, Chicago, Miami, Seattle, Houston, Boston, Atlanta, Phoenix,
Denver, Portland, Nashville, Las Vegas, Honolulu, Anchorage: several time zones."""
PER_BLOCK = 1_000


def _valid(e164: str) -> bool:
    return phonenumbers.is_valid_number(phonenumbers.parse(e164, None))


def valid_blocks() -> Iterator[str]:
    """Prefixes ``+1AAAEEE`` whose numbers are all valid, interleaved over the areas."""
    for exchange in range(201, 1000):
        if exchange % 100 == 11 or exchange == 555:  # N11 service codes, fictional 555
            continue
        for area in AREA_CODES:
            prefix = f"+1{area}{exchange}"
            if all(_valid(f"{prefix}{last}") for last in ("0000", "5000", "9999")):
                yield prefix


def phones(count: int) -> list[str]:
    """``count`` distinct valid E.164 numbers, block after block, in a fixed order."""
    out: list[str] = []
    for prefix in valid_blocks():
        need = min(PER_BLOCK, count - len(out))
        out.extend(f"{prefix}{i:04d}" for i in range(need))
        if len(out) >= count:
            return out
    raise ValueError(f"only {len(out)} valid numbers in the chosen blocks")
