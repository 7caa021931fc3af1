"""``ledger.numbers.places`` gives exactly what ``ledger.phone.time_zones`` and
``ledger.regions.regions_for_number`` give, number by number: every region's example
number of every type (and each with its last digit changed, which often makes it
invalid or another type), every non-geographic entity's, a spread of every NANP area
code's exchanges, random numbers, and strings that are no number."""

from __future__ import annotations

import random
import re
import subprocess
import sys
from collections.abc import Callable, Iterator

import phonenumbers
import pytest
from phonenumbers import PhoneNumberFormat, PhoneNumberType
from phonenumbers.geodata import GEOCODE_DATA
from phonenumbers.tzdata import TIMEZONE_DATA

from ledger import nanp_states, phone
from ledger.digest import digest_of
from ledger.numbers import nanp_state, places
from ledger.phone import NANP_BLOCK, NANP_LONGER_BLOCKS, time_zones, to_e164
from ledger.regions import candidate_regions, regions_for_number, state_of_description
from ledger.state import SubscriberState
from tests.unit.pattern_depth import Automaton

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


# --- NANP numbers are read once per block (ledger.numbers.NANP_BLOCK) ---------------


def _nanp_patterns() -> Iterator[tuple[str, str, bool]]:
    """Every pattern that can decide something about a NANP number, with whether it is
    read as ``re.match`` (a prefix): each NANP region's number descriptions and its
    leading digits (which pick the region), and the national prefix that parsing
    strips (the main region's: ``phonenumbers.parse`` reads a "+1" number by it)."""
    main = phonenumbers.region_code_for_country_code(1)
    for region in phonenumbers.COUNTRY_CODE_TO_REGION_CODE[1]:
        metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
        assert metadata is not None
        for name, value in sorted(vars(metadata).items()):
            if isinstance(value, phonenumbers.PhoneNumberDesc) and value.national_number_pattern:
                yield f"{region}.{name}", value.national_number_pattern, False
        if metadata.leading_digits:
            yield f"{region}.leading_digits", metadata.leading_digits, True
        if region == main and metadata.national_prefix_for_parsing:
            yield f"{region}.national_prefix", metadata.national_prefix_for_parsing, True


def test_the_proof_reads_the_patterns_as_re_does() -> None:
    rng = random.Random(3)
    examples = [n[2:] for n in _examples() if n.startswith("+1") and len(n) == 12]
    for name, pattern, prefix in _nanp_patterns():
        automaton = Automaton(pattern, prefix=prefix)
        compiled = re.compile(pattern)
        read = compiled.match if prefix else compiled.fullmatch
        texts = [*examples, *("".join(rng.choices("0123456789", k=10)) for _ in range(300))]
        texts += [t[:-1] for t in examples]
        for text in texts:
            assert automaton.accepts(text) == (read(text) is not None), (name, text)


def test_a_nanp_numbers_first_block_digits_decide_its_places() -> None:
    # Every pattern decides a ten-digit national number by its first NANP_BLOCK
    # digits (one more in NANP_LONGER_BLOCKS' area codes); the zone and geocoding
    # tables look at no more of it (their keys start with the country code, 1); the
    # rest of ledger.numbers.read_places reads the region, the type and the length.
    automata = {name: Automaton(p, prefix=m) for name, p, m in _nanp_patterns()}
    longer = set()
    for area in (f"{a:03d}" for a in range(1000)):
        depth = max(automaton.depth(10, area) for automaton in automata.values())
        assert depth <= NANP_BLOCK + 1, area
        if depth > NANP_BLOCK:
            longer.add(area)
    assert longer == NANP_LONGER_BLOCKS
    for table in (GEOCODE_DATA, TIMEZONE_DATA):
        assert max(len(key) for key in table if key.startswith("1")) <= 1 + NANP_BLOCK


def _blocks() -> Iterator[str]:
    rng = random.Random(11)
    for area in [*range(200, 1000), *map(int, NANP_LONGER_BLOCKS)]:
        digits = NANP_BLOCK + (f"{area}" in NANP_LONGER_BLOCKS) - 3
        for _ in range(3):
            yield f"+1{area}{rng.randrange(10**digits):0{digits}d}"
    for example in _examples():
        if example.startswith("+1") and len(example) == 12:
            digits = NANP_BLOCK + (example[2:5] in NANP_LONGER_BLOCKS)
            yield example[: 2 + digits]


def _block_numbers() -> list[str]:
    rng = random.Random(5)
    return [
        block + last
        for block in _blocks()
        for last in (
            "0" * (12 - len(block)),
            "9" * (12 - len(block)),
            f"{rng.randrange(10 ** (12 - len(block))):0{12 - len(block)}d}",
        )
    ]


def test_every_number_of_a_nanp_block_reads_the_same() -> None:
    numbers = _block_numbers()
    assert len(numbers) > 7000
    _same(numbers)


def _reading(read: Callable[[str, str | None], str], number: str, region: str | None) -> str:
    try:
        return read(number, region)
    except phone._Refused as exc:
        return f"refused: {exc}"


def test_every_number_of_a_nanp_block_is_read_as_the_library_reads_it() -> None:
    # ledger.phone reads a number written +1 and ten digits through its block's first
    # number; every number, valid or refused, must read as a full reading gives it.
    numbers = [*_block_numbers(), *_nanp(), "+12120000000", "+11234567890", "+10234567890"]
    assert len(numbers) > 20_000
    phone._block_reads_as_written.cache_clear()
    for number, region in [*((n, None) for n in numbers), *((n, "US") for n in numbers[::20])]:
        assert _reading(phone._e164.__wrapped__, number, region) == _reading(
            phone._read, number, region
        ), (number, region)


def test_a_nanp_blocks_numbers_are_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[str] = []
    parse = phonenumbers.parse

    def counted(number: str, region: str | None = None) -> phonenumbers.PhoneNumber:
        parsed.append(number)
        return parse(number, region)

    monkeypatch.setattr(phonenumbers, "parse", counted)
    phone._e164.cache_clear()
    phone._block_reads_as_written.cache_clear()
    numbers = [f"+1415202{n:04d}" for n in range(0, 10_000, 7)]
    assert {to_e164(n) for n in numbers} == set(numbers)
    assert parsed == ["+14152020000"]


def test_the_nanp_state_table_gives_the_geocoders_state_for_every_prefix() -> None:
    # Every prefix of the data: a number's answer is its longest prefix's in both, so
    # agreeing on every prefix (and keeping no other) is agreeing on every number.
    stale = "ledger/nanp_states.py is stale: run scripts/gen_nanp_states.py"
    nanp = {key: names for key, names in GEOCODE_DATA.items() if key.startswith("1")}
    assert set(nanp_states.STATES) <= set(nanp), stale
    assert max(map(len, nanp)) == nanp_states.LONGEST, stale
    for key, names in nanp.items():
        assert nanp_state(key) == (state_of_description(names["en"]) or ""), (key, stale)


def test_a_us_number_the_geocoder_describes_by_the_countrys_name_names_no_state() -> None:
    # ledger.numbers gives a non-geographic US number no state without asking.
    from phonenumbers.geocoder import country_name_for_number

    toll_free = phonenumbers.parse("+18005550100")
    assert state_of_description(country_name_for_number(toll_free, "en")) is None


def test_reading_a_numbers_places_leaves_the_geocoders_data_unloaded() -> None:
    # Its data (every language of every country) costs a process some 100 MB.
    script = (
        "import sys, services.bootstrap\n"
        "from ledger.numbers import places\n"
        "assert places('+14155550100').regions == ('CA',)\n"
        "print('phonenumbers.geodata' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"]
