"""What a request's text may hold, and how a request's every bad field is gathered.

Identifiers key the ledger or name a fact (request ids, message ids, names), so
they must be one exact string a later read can spell again: printable characters
only (no control, format, separator other than a space, private-use or unassigned
characters: NUL, a zero-width space or a bidi override cannot hide in one) and no
space at either end. Free text (a reply's body, an opt-out's words, the proof of
opt-in) may hold any character but the C0 and C1 controls; a field that may run
over several lines keeps tab, line feed and carriage return.

``Violations`` checks field after field and raises once, with every bad field.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Callable
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import TypeVar
from urllib.parse import urlsplit

from ledger.errors import DomainError, InvalidRequest

T = TypeVar("T")

EARLIEST_TIME = datetime(2000, 1, 1, tzinfo=UTC)
"""No fact this service records, and no moment it is asked about, is older: SMS
consent under the TCPA has no records from before it, and an earlier time is a
client's mistake (an epoch of 0, a year of 1) that would sort before every real fact."""

EARLIEST_BIRTH = date(1900, 1, 1)
"""No one alive was born earlier: an earlier date of birth is a typing mistake."""

MULTILINE = frozenset({"body", "text", "detail", "proof.consent_text", "proof.postal_address"})
"""Free-text fields that may run over several lines (tab, line feed and carriage
return allowed); every other free-text field is one line."""

_LINE_BREAKS = frozenset("\t\n\r")

TEXT_LIMITS: dict[str, int] = {
    # What a person texted. Carriers deliver at most 1,600 characters (ten segments,
    # and Twilio's limit for SMS and MMS alike); the rest is headroom for a gateway
    # that joins segments itself. An inbound STOP refused would be a STOP lost.
    "body": 4_096,
    # An opt-out's words, by any channel (an email, notes of a call): generous, since
    # an opt-out refused for its wording leaves the number opted in.
    "text": 16_384,
    "detail": 4_096,
    "message_id": 256,
    "error_code": 64,
    "in_reply_to": 256,
    "method": 256,
    "resolved_by": 256,
    "proof.name": 256,
    "proof.email": 320,
    "proof.postal_address": 1_024,
    "proof.ip_address": 256,
    "proof.collection_detail": 4_096,
    "proof.form_url": 4_096,
    # The words next to the checkbox; a longer document is kept by its sha256 and version.
    "proof.consent_text": 8_192,
    "proof.consent_text_sha256": 128,
    "proof.consent_text_version": 256,
    "proof.screenshot_ref": 4_096,
    "proof.screenshot_sha256": 128,
    "policy.category": 64,
    # Erasure and legal holds (``ledger.retention``): names and references, no personal data.
    "hold_id": 256,
    "reference": 256,
    "reason": 1_024,
}
"""The most characters each free-text field of a request may hold, by its name in the
request. Every fact must fit one ledger record (Kafka's producer refuses records over
1 MiB, and so would the broker), and a field no real request fills to this length is
refused rather than stored: with every field at its limit, in four-byte characters, a
fact stays far below a record's limit."""


# Matched whole (``fullmatch``): with ``match`` and ``$``, "acme\n" passed, and an
# opt-out written under it stopped nothing sent under "acme". Ending alphanumeric:
# "acme." or "promo-" was a name of its own, one a person reads as "acme", and an
# opt-out accepted under it stopped nothing sent under the name meant.
_NAME = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?")
NAME_RULE = "must be 1-64 chars of a-z, 0-9, '.', '_' or '-', starting and ending alphanumeric"
"""Why a brand or campaign name is refused (``ledger.commands.check_name``)."""


@lru_cache(maxsize=4096)
def is_name(value: str) -> bool:
    """Whether ``value`` is a brand or campaign name (``check_name`` says why not)."""
    return _NAME.fullmatch(value) is not None


def check_length(value: str, field_name: str) -> str:
    """``value`` if it fits ``TEXT_LIMITS[field_name]``, else ``InvalidRequest``."""
    limit = TEXT_LIMITS[field_name]
    if len(value) > limit:
        raise InvalidRequest(
            field_name, f"must be at most {limit:,} characters, got {len(value):,}"
        )
    return value


def identifier_problem(value: str) -> str | None:
    """Why ``value`` cannot be an identifier, or None when it can."""
    if value.isprintable():
        if value[:1] == " " or value[-1:] == " ":
            return "must not begin or end with a space"
        return None
    for ch in value:
        if not ch.isprintable():
            return f"must not hold {_describe(ch)}"
    raise AssertionError("unreachable")  # pragma: no cover


def check_identifier(value: str, field: str) -> str:
    """``value``, or ``InvalidRequest`` on ``field`` if it is no exact identifier."""
    problem = identifier_problem(value)
    if problem is not None:
        raise InvalidRequest(field, problem)
    return value


def text_problem(value: str, field: str) -> str | None:
    """Why ``value`` cannot be the free text of ``field``, or None when it can."""
    if value.isprintable():  # the usual case, at C speed
        return None
    allowed = _LINE_BREAKS if field in MULTILINE else frozenset()
    for ch in value:
        category = unicodedata.category(ch)
        if (category == "Cc" and ch not in allowed) or category == "Cs":
            return f"must not hold {_describe(ch)}"
    return None


def check_text(value: str, field: str) -> str:
    problem = text_problem(value, field)
    if problem is not None:
        raise InvalidRequest(field, problem)
    return value


def check_not_too_early(value: datetime, field: str) -> datetime:
    """``value``, or ``InvalidRequest`` on ``field`` if it is before ``EARLIEST_TIME``."""
    if value < EARLIEST_TIME:
        raise InvalidRequest(
            field, f"is before {EARLIEST_TIME:%Y-%m-%d}, earlier than any fact of this ledger"
        )
    return value


# Characters that show nothing though they are no format character (Cf): Unicode's
# other Default_Ignorable_Code_Point characters (the Hangul fillers, which are letters,
# a combining grapheme joiner, variation selectors, Khmer inherent vowels, ...) and
# the blank Braille pattern.
_SHOWS_NOTHING = frozenset(
    "\u034f\u115f\u1160\u17b4\u17b5\u180b\u180c\u180d\u180e\u180f\u2800\u3164\uffa0"
    + "".join(map(chr, range(0xFE00, 0xFE10)))
    + "".join(map(chr, range(0xFFF0, 0xFFF9)))
    + "".join(map(chr, range(0xE0000, 0xE1000)))
)


def is_blank(value: str) -> bool:
    """Nothing a reader could see: empty, or only white space and invisible
    characters (a zero-width space, a bidi mark, a Hangul filler). A proof field
    that holds only these proves nothing, so it counts as left out."""
    # A loop, not all() over a generator: every digest of a grant asks this of six
    # proof fields, and the generator cost three times the loop (bench/HISTORY.md).
    # A field that opens with a printable ASCII character, as nearly all do, is
    # answered by that character alone, without a look at the Unicode tables.
    if value and "!" <= value[0] <= "~":
        return False
    for ch in value:
        if not (ch.isspace() or ch in _SHOWS_NOTHING or unicodedata.category(ch) == "Cf"):
            return False
    return True


PLACEHOLDER_WORDS = frozenset(
    {"na", "none", "null", "nil", "nan", "undefined", "unknown", "tbd", "tba", "test"}
    | {"notapplicable", "notavailable", "notgiven", "notprovided"}
)
"""Words that stand in for a value not given, as ``is_placeholder`` reads a field:
lower case, with every character that is no letter or digit taken out ("N/A" and
"n.a." read "na", "Not provided" "notprovided")."""

_STAND_INS = frozenset({"[sealed]", "[erased]"})
"""``ledger.personal_data.SEALED`` and ``ERASED``: what a recorded proof's personal
fields show while sealed or once erased. The proof was given; only what it said is
hidden, so these are read as given (spelt here, where that module cannot be imported)."""


NAME_WORDS = frozenset({"na", "nil"})
"""Of ``PLACEHOLDER_WORDS``, those that are people's names too: Na (나) is a surname,
Nil a given name. In ``proof.name`` they are placeholders only written with a mark
("N/A", "n.a.", "nil.")."""

VERSION_FIELD = "consent_text_version"
"""A version is the label the document store gives the wording, and a first one is
often "0": only zeros ("0", "0.0") is a version there, not a placeholder."""


def is_placeholder(value: str, field: str = "") -> bool:
    """A proof field's whole value a stand-in for one not given: no letter or digit at
    all ("-", "?", "..."), only x's or only zeros ("x", "XX", "0", "0.0.0.0"; not in
    ``VERSION_FIELD``), or one of ``PLACEHOLDER_WORDS`` ("N/A", "None", "TBD"; in
    ``name``, ``NAME_WORDS`` written alone are names). It proves nothing, as a field
    left empty does. A value with anything more ("Na Li", "x@example.com") is read
    as given. ``field``: the proof field's name, without ``proof.``."""
    # A digest of a grant asks this of six fields: one that opens with a letter or
    # digit no placeholder opens with, as nearly every real value does, is answered
    # by that character alone.
    if value and value[0] in _OPENS_NO_PLACEHOLDER:
        return False
    if (_NO_ZEROS_FILLER if field == VERSION_FIELD else _FILLER).fullmatch(value):
        return True
    if len(value) > _LONGEST_WORD:
        return False
    word = _NOT_ALNUM.sub("", value).casefold()
    if word not in PLACEHOLDER_WORDS:
        return False
    # "Na" alone is a name; "N/A" is no one's.
    return not (field == "name" and word in NAME_WORDS and value.strip().isalnum())


_OPENS_NO_PLACEHOLDER = frozenset("abcdefghijklmopqrsvwyzABCDEFGHIJKLMOPQRSVWYZ123456789")
"""The ASCII letters and digits but those a placeholder may open with: n, t, u (the
words), x and 0."""

# ``re``'s \W is what str.isalnum() is not, but for "_", which counts as neither here.
_FILLER = re.compile(r"[\W_]*|[\W_]*(?:[xX][\W_]*)+|[\W_]*(?:0[\W_]*)+")
"""A value with no letter or digit, or none but x's, or none but zeros."""
_NO_ZEROS_FILLER = re.compile(r"[\W_]*|[\W_]*(?:[xX][\W_]*)+")
"""``_FILLER`` but for zeros."""
_NOT_ALNUM = re.compile(r"[\W_]+")
_LONGEST_WORD = 32
"""The longest value read as one of ``PLACEHOLDER_WORDS`` ("not applicable" with its
spaces and marks); a longer one says more."""

_IPV4 = re.compile(
    r"(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
)
"""A dotted IPv4 address as ``ipaddress`` reads one (no leading zeros), matched in a
fraction of its time: nearly every address a form records is one."""


_PLAIN_URL = re.compile(
    r"https?://[A-Za-z0-9.-]+(?::[0-9]+)?(?:[/?#].*)?", re.IGNORECASE | re.DOTALL
)
"""An http(s) URL with a plain host name, which ``urlsplit`` reads as one with a host:
matched faster than it splits one, and nearly every form's URL is one."""

_SHA256 = re.compile(r"[0-9A-Fa-f]{64}")

_TYPED_PROOF = ("ip_address", "form_url", "consent_text_sha256", "screenshot_sha256")
"""The proof fields whose value must parse as what they name (``proof_value_problem``)."""


def proof_value_problem(name: str, value: str) -> str | None:
    """Why ``value`` cannot be the proof field ``name`` (``ip_address``, ``form_url``,
    a ``*_sha256``), or None: an IP address must parse, a URL be an absolute http(s)
    URL with a host, a SHA-256 be 64 hex digits. A field of another name is free text."""
    text = value.strip()
    if name == "ip_address":
        if _IPV4.fullmatch(text):
            return None
        try:
            ipaddress.ip_address(text)
        except ValueError:
            return f"is not an IP address (IPv4 or IPv6): {value[:64]!r}"
    elif name == "form_url":
        if _PLAIN_URL.fullmatch(text):
            return None
        try:
            parts = urlsplit(text)
            host = parts.hostname
        except ValueError:
            host = None
        if host is None or parts.scheme.lower() not in ("http", "https"):
            return f"is not an absolute http(s) URL with a host: {value[:64]!r}"
    elif name.endswith("_sha256") and not _SHA256.fullmatch(text):
        return f"is not a SHA-256 (64 hex digits): {value[:72]!r}"
    return None


def says_nothing(value: str, field: str = "") -> bool:
    """A proof field (named ``field``, without ``proof.``) left empty: blank, or a
    placeholder (a sealed or erased field was given, and is neither)."""
    return is_blank(value) or (value not in _STAND_INS and is_placeholder(value, field))


def proof_field_lacking(name: str, value: str) -> bool:
    """Whether the recorded proof field ``name`` proves nothing: it says nothing, or
    (a typed field) holds a value that does not parse, which a request is refused for
    now (``check_proof_value``) and an opt-in recorded before was not."""
    if value and value[0] in _OPENS_NO_PLACEHOLDER:  # neither blank nor a placeholder
        return name in _TYPED_PROOF and proof_value_problem(name, value) is not None
    if says_nothing(value, name):
        return True
    return (
        name in _TYPED_PROOF
        and value not in _STAND_INS
        and proof_value_problem(name, value) is not None
    )


def check_proof_value(name: str, value: str) -> str:
    """``value`` for the proof field ``name``, or ``InvalidRequest`` naming it when it
    was given (neither blank nor a placeholder, which count as missing) and does not
    parse as what the field names (``proof_value_problem``)."""
    if name in _TYPED_PROOF and not says_nothing(value, name):
        problem = proof_value_problem(name, value)
        if problem is not None:
            raise InvalidRequest(f"proof.{name}", problem)
    return value


def _describe(ch: str) -> str:
    name = unicodedata.name(ch, "")
    code = f"U+{ord(ch):04X}"
    return f"{code} {name}".rstrip() if name else f"{code} (a control or unassigned character)"


class Violations:
    """Every bad field of one request, gathered so the caller hears of all at once.

    ``check(fn, ...)`` runs a check and returns its result, or None after noting
    the ``DomainError`` it raised; ``raise_if_any`` raises the first error's type
    carrying every violation found (one per field, the first reason for each)."""

    def __init__(self) -> None:
        self._errors: list[DomainError] = []

    def check(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T | None:
        try:
            return fn(*args, **kwargs)
        except DomainError as exc:
            self.add(exc)
            return None

    def add(self, exc: DomainError) -> None:
        self._errors.append(exc)

    def __bool__(self) -> bool:
        return bool(self._errors)

    def raise_if_any(self, order: Callable[[str], int] | None = None) -> None:
        """``order``, given, ranks the fields (stably): a batch lists its messages'
        fields by message, not by the pass that found them."""
        if not self._errors:
            return
        found: dict[str, str] = {}
        for error in self._errors:
            for field, reason in error.violations:
                found.setdefault(field, reason)
        first = self._errors[0]
        if order is not None:
            found = dict(sorted(found.items(), key=lambda item: order(item[0])))
            head = next(iter(found))
            first = next(e for e in self._errors if any(f == head for f, _ in e.violations))
        if tuple(found.items()) == tuple(first.violations):
            raise first
        # The first error, its type and what it carries (a reason, metadata) kept,
        # with every violation: built without __init__, whose arguments vary by type.
        combined = Exception.__new__(type(first))
        combined.__dict__.update(first.__dict__)
        combined.violations = tuple(found.items())
        combined.field, combined.reason = combined.violations[0]
        combined.args = ("; ".join(f"{f}: {r}" for f, r in combined.violations),)
        raise combined from first
