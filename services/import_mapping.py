"""How another platform's export names our fields, for ``consent-ledger import``:
the column (or JSON key) each field is read from, the values of a column that stand
for ours, and the fields the export does not carry, given once for every record.

The command line (``--column``, ``--value``, ``--set``) and a mapping file
(``--mapping``, JSON or TOML) say the same things in the same shape, so both are
turned into one ``Mapping`` by one function (``from_parts``); a mistake in either is
a ``MappingError``, a usage error, before the file is read.

A field may be read from one column for opt-ins and another for opt-outs
(``occurred_at@opt_out``): an export that keeps an "opted in at" and an "opted out
at" column would otherwise have its opt-outs imported at their opt-in's time.

A record read through a mapping is the record the export would be under our own
names: its import id, derived from what it says, is the same either way, so
switching to a mapping imports nothing again.

An export of one row per subscriber, with no status column, an opt-in time and an
opt-out time left empty while the subscriber still is one, is read with
``subscriber_rows`` (``--subscriber-rows``): each row is an opt-in at its
``occurred_at@opt_in`` column and, when its ``occurred_at@opt_out`` column is not
empty, an opt-out at that time (``import_files`` splits the row).
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable, Iterable
from collections.abc import Mapping as Dict
from dataclasses import dataclass, field, replace
from decimal import Decimal
from itertools import pairwise
from pathlib import Path
from typing import Any

from ledger.keywords import BRAND_WIDE_OPT_OUT_KEYWORDS, OPT_OUT_KEYWORDS


class MappingError(ValueError):
    """A mapping that cannot be used as given (a usage error)."""


@dataclass(frozen=True)
class Mapping:
    """``columns``: our field (or ``FIELD@TYPE``: FIELD of records of that type
    only, in place of FIELD's own column) -> the export's column; ``values``: our
    field -> the export's value (stripped, case folded) -> ours; ``constants``: our
    field -> the value every record has; ``belongs``: of the fields of both, those
    given only to records of one type (``opt_in`` or ``opt_out``)."""

    columns: dict[str, str] = field(default_factory=dict)
    values: dict[str, dict[str, str]] = field(default_factory=dict)
    constants: dict[str, str] = field(default_factory=dict)
    belongs: dict[str, str] = field(default_factory=dict)
    ignored: frozenset[str] = frozenset()
    """The export's columns no field is read from, named so that they are not
    refused as columns no record has (any other still is: a misspelt one)."""
    subscriber_rows: bool = False
    """Each row one subscriber: an opt-in, and an opt-out when its opt-out time is
    given (``--subscriber-rows``)."""
    phone_region: str = ""
    """The region (ISO 3166 alpha-2, as ``US``) a number written without its country
    code is read in (``--phone-region``); empty: such a number is refused."""
    time_zone: str = ""
    """The IANA zone (``America/New_York``) a time written with no offset or zone of
    its own is read in (``--time-zone``); empty: such a time is refused."""
    time_format: str = ""
    """How the export writes every time (``--time-format``): ``epoch-s`` or
    ``epoch-ms`` (a count since 1970, UTC), or a ``strptime`` format; empty: ISO 8601
    or RFC 2822, with a zone (or read in ``time_zone``)."""
    skip: dict[str, dict[str, str]] = field(default_factory=dict)
    """The export's column -> its values (stripped, case folded) -> the value as
    given: a row holding one is skipped (``--skip COLUMN=VALUE``), never sent,
    unless it reads as an opt-out (``skipped_by``). A column no field is read from
    is ignored as well, so that it is not refused as a column no record has."""
    fields: frozenset[str] = frozenset()
    """Our field names (``from_parts``'s ``fields``): a column of one in other
    capitals ("TYPE") is that field's own column, unless the mapping reads or ignores
    it, as the reader spells it (``import_files.as_ours``)."""

    def __bool__(self) -> bool:
        return bool(self.columns or self.values or self.constants or self.ignored)

    @property
    def names_columns(self) -> bool:
        """Whether it names any of the export's columns, each to be found in its
        header (``fitted``): a skip of a column of our own name names one too."""
        return bool(self) or bool(self.skip)

    def skipped_by(self, value_of: Callable[[str], Any]) -> str | None:
        """The ``--skip`` a row matches, as ``COLUMN=VALUE``, or None; ``value_of``
        gives the row's value of a column (None: the row has none). An empty value is
        none, never matched. Whether the row is skipped is the reader's to say: one
        that reads as an opt-out never is."""
        for column, table in self.skip.items():
            given = value_of(column)
            if given is None:
                continue
            named = table.get(_as_text(given).strip().casefold())
            if named is not None:
                return f"{column}={named}"
        return None

    def shown(self, name: str, kind: str | None = None) -> str:
        """Our field ``name`` (of a record of ``kind``, if known) as the export names
        it, for what the command tells."""
        if kind is not None and f"{name}{TYPED}{kind}" in self.columns:
            return self.columns[f"{name}{TYPED}{kind}"]
        typed = [
            self.columns[f"{name}{TYPED}{k}"] for k in KINDS if f"{name}{TYPED}{k}" in self.columns
        ]
        if typed and kind is None:
            return " or ".join(dict.fromkeys([*typed, self.columns.get(name, name)]))
        if name in self.columns:
            return self.columns[name]
        if name in self.constants:
            return f"--set {name}"
        if kind is not None and f"{name}{TYPED}{kind}" in self.constants:
            return f"--set {name}{TYPED}{kind}"
        return name

    def fitted(self, header: Iterable[str], where: str) -> Mapping:
        """This mapping with each column it reads or ignores spelt as ``header``
        spells it, checked against it (``check_header``). A column is the header's
        of its very spelling, else the one header equal to it but for spaces around
        either, capitals and a byte-order mark: a spreadsheet keeps spaces no one
        sees, and a platform's exports differ in capitals from the one the mapping
        was written for. Two such columns are a usage error: which was meant cannot
        be told."""
        listed = list(header)
        have = list(dict.fromkeys(listed))

        def spelt(name: str) -> str:
            if name in have:
                return name
            near = [h for h in have if loosely(h) == loosely(name)]
            if len(near) > 1:
                raise MappingError(
                    f"{where}: the column {name!r} could be any of "
                    + ", ".join(map(repr, near))
                    + "; name it as the file spells it"
                )
            return near[0] if near else name  # missing: ``check_header`` says so

        columns = {name: spelt(header) for name, header in self.columns.items()}
        skip: dict[str, dict[str, str]] = {}
        for column, table in self.skip.items():  # two spellings of one column: both
            skip.setdefault(spelt(column), {}).update(table)
        # Checked here only, against the header as the file spells it: a column of
        # our own name in other capitals is read under ours (``as_ours``) from here on.
        missing = sorted(c for c in skip if c not in have)
        if missing:
            raise MappingError(
                f"{where} has no column {', '.join(map(repr, missing))} (named by --skip); its "
                "columns are: " + ", ".join(map(repr, sorted(have)))
            )
        fitted = replace(
            self, columns=columns, ignored=frozenset(map(spelt, self.ignored)), skip=skip
        )
        fitted.check_header(listed, where)
        return fitted

    def check_header(self, header: Iterable[str], where: str) -> None:
        """Refuse a header (or a JSON Lines file's keys) that lacks a mapped column,
        or that holds a field under our own name that is mapped or set as well:
        which of the two was meant cannot be told."""
        listed = list(header)
        have = set(self.as_ours(listed))
        for what, named_here in (("--column", self.columns.values()), ("--ignore", self.ignored)):
            missing = sorted(h for h in named_here if h not in have)
            if missing:
                named = ", ".join(map(repr, missing))
                raise MappingError(
                    f"{where} has no column {named} (named by {what}); its columns are: "
                    + ", ".join(map(repr, sorted(set(listed))))
                )
        # Checked by ``from_parts`` as spelt, and again as the header reads them
        # (``fitted``): " opted at" and "Opted At" may be one column.
        both_ways = sorted(self.ignored & set(self.columns.values()))
        if both_ways:
            raise MappingError(f"column {both_ways[0]!r} is both read (--column) and ignored")
        times = [self.columns.get(f"occurred_at{TYPED}{k}") for k in KINDS]
        if self.subscriber_rows and times[0] is not None and times[0] == times[1]:
            raise MappingError(
                "--subscriber-rows: occurred_at@opt_in and occurred_at@opt_out are read "
                f"from one column, {times[0]!r}; each row would opt out as it opts in"
            )
        twice = sorted({h for h in self.columns.values() if listed.count(h) > 1})
        if twice:
            raise MappingError(f"{where} names the column {twice[0]!r} more than once")
        read_from = set(self.columns.values())
        for name in dict.fromkeys(n.partition(TYPED)[0] for n in [*self.columns, *self.constants]):
            # A column of our own name that is itself mapped to another field is fine,
            # and so is one ignored: a JSON export's event "type" beside its "status".
            if name in have and name not in read_from and name not in self.ignored:
                set_ = any(n.partition(TYPED)[0] == name for n in self.constants)
                how = "set" if set_ else "mapped from " + repr(self.shown(name))
                raise MappingError(
                    f"{where} has a column {name!r} and {name} is {how} as well; "
                    f"drop one of the two, or --ignore {name} to leave the column unread"
                )
        mapped = {n.partition(TYPED)[0] for n in self.columns}
        unread = [n for n in self.values if n not in mapped and n not in have]
        if unread:
            raise MappingError(
                f"--value {unread[0]}:... maps values of {unread[0]}, which {where} has no "
                "column for"
            )
        self._check_type_column(have, where)

    def _check_type_column(self, have: set[str], where: str) -> None:
        """Refuse a type column beside ``subscriber_rows`` (which of the two says what
        a row is cannot be told), and an opt-in or opt-out time column of its own with
        no type at all: every record would be refused, and each held for review,
        where the export is most likely one of a row per subscriber."""
        typed_time = [f"occurred_at{TYPED}{k}" for k in KINDS]
        type_given = "type" in self.columns or "type" in self.constants
        own_type = "type" in have and "type" not in self.ignored
        if self.subscriber_rows and own_type:
            raise MappingError(
                f"{where} has a column 'type', and --subscriber-rows reads each row as an "
                "opt-in and, when its opt-out time is given, an opt-out; drop one of the "
                "two, or --ignore type to leave the column unread"
            )
        if self.subscriber_rows and "import_id" in have and "import_id" not in self.ignored:
            raise MappingError(
                f"{where} has a column 'import_id', which under --subscriber-rows would give "
                "a row's opt-in and opt-out one id; --ignore import_id for an id derived "
                "from each record"
            )
        if self.subscriber_rows or type_given or own_type:
            return
        if any(name in self.columns for name in typed_time):
            raise MappingError(
                f"{where} has no type column to tell an opt-in from an opt-out "
                "(--column type=HEADER); for an export of one row per subscriber, its "
                "opt-out time empty while subscribed, give --subscriber-rows"
            )

    def as_ours(self, header: Iterable[str]) -> list[str]:
        """``header`` with each column of one of our fields in other capitals spelt as
        ours, but for those the mapping reads or ignores: what the reader reads them
        as (``import_files.as_ours``), so that a field's own column is found (for
        ``--value``, a type column) whichever way the export capitalises it. A JSON
        line's key is the mapping's however the line spells it (``loosely``), and
        the keys of every line are checked at once: each spelling of it is kept."""
        folded = {name.casefold(): name for name in self.fields}
        keep = {loosely(h) for h in (*self.columns.values(), *self.ignored)}
        return [h if loosely(h) in keep else folded.get(h.casefold(), h) for h in header]

    def renamed(self, header: list[str]) -> list[str]:
        """A CSV header as the fields it gives: each mapped column as the fields read
        from it (one column may give two, as a time both of the opt-in and of its
        proof), the others as they are."""
        read_from = set(self.columns.values()) | self.ignored
        fields = dict.fromkeys(n.partition(TYPED)[0] for n in self.columns)
        return [*(h for h in header if h not in read_from), *fields]

    def fields_of(self, row: dict[str, Any]) -> dict[str, Any]:
        """A record's values under our field names (a mapped column's value under
        each field read from it), before ``apply``."""
        if not self.columns and not self.ignored:
            return row
        read_from = set(self.columns.values()) | self.ignored
        out = {k: v for k, v in row.items() if k not in read_from}
        for name, header in self.columns.items():
            if header in row:
                out[name] = row[header]
        return out

    def apply(self, fields: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, str] | None]:
        """A record's fields (under our names) with their values mapped and the
        constants set, and, for a value the mapping has no entry for, the field and
        why: that record is refused (its field left out, so that it is not read as
        what the export's value happens to spell)."""
        out = dict(fields)
        problem: tuple[str, str] | None = None
        if "type" in self.constants:
            # Set before anything is read by type: an export of opt-outs only
            # (--set type=opt_out) wants its channel set and its text read, as a
            # mixed export's opt-outs have them.
            out["type"] = self.constants["type"]
        self._typed_read(out)
        for name, table in self.values.items():
            if name not in out or out[name] is None or _as_text(out[name]).strip() == "":
                continue  # a cell of spaces is no value, as an empty one: never looked up
            given = out[name]
            key = _as_text(given)
            mapped = table.get(key.strip().casefold())
            if mapped is None:
                del out[name]
                if problem is None:
                    known = ", ".join(repr(v) for v in table)
                    problem = (
                        name,
                        f"has the value {key!r}, which no --value {name}:... maps "
                        f"(mapped: {known})",
                    )
            else:
                out[name] = mapped
        # A mixed export's opt-ins want a tier, its opt-outs a channel: each is set on
        # the records it belongs to. A record whose type cannot be read gets neither:
        # an opt-in's field set on it would pass it for an opt-in, never held.
        kind = str(out.get("type", "")).strip().lower().replace("-", "_")
        for name, value in self.constants.items():
            base, typed, of = name.partition(TYPED)
            if typed:
                if of == kind:  # ``campaign@opt_in``: the opt-outs keep every campaign
                    out[base] = value
            elif self.belongs.get(name, kind) == kind:
                out[name] = value
        # An export has one row shape: an opt-out's row carries the proof columns of
        # the opt-in it ended. A mapped column of the other type's field is not read.
        # Of a record whose type is unread, none is: every row has them, so they tell
        # nothing of what it is, and an opt-in's fields would pass an opt-out for an
        # opt-in, refused and not held.
        for name in self.columns:
            if self.belongs.get(name, kind) != kind:
                out.pop(name, None)
        return out, problem

    def _typed_read(self, out: dict[str, Any]) -> None:
        """Each ``FIELD@TYPE`` column's value moved to ``FIELD`` in a record of that
        type, and dropped from the others. An empty one leaves the field empty, not
        read from ``FIELD``'s own column: an opt-out with no "opted out at" is
        refused (and held), not imported at its opt-in's time. A record whose type
        is unread gets none of them."""
        typed = [n for n in self.columns if TYPED in n]
        if not typed:
            return
        given = out.get("type")
        if given not in (None, "") and "type" in self.values:
            key = _as_text(given)  # as ``apply`` reads it
            given = self.values["type"].get(key.strip().casefold())
        kind = given.strip().lower().replace("-", "_") if isinstance(given, str) else ""
        for key in typed:
            name, _, of = key.partition(TYPED)
            value = out.pop(key, None)
            if of == kind:
                out.pop(name, None)
                if value not in (None, ""):
                    out[name] = value


def loosely(name: str) -> str:
    """A column's name as ``Mapping.fitted`` (and a JSON line's key as
    ``import_files``) compares it (a nested JSON key's, as
    ``outer.inner``, by each of its keys)."""
    return ".".join(key.strip() for key in name.replace("\ufeff", "").split(".")).casefold()


def _as_text(value: Any) -> str:
    """A JSON value as the text a ``--value`` names it by: true / false, a number as
    written (the reader keeps 0.0 as a Decimal, which ``json`` cannot write), an
    array or object as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, Decimal):
        return str(value)
    return json.dumps(value, default=float)


_OPT_OUT_WORDS = frozenset(
    {word.casefold() for word in OPT_OUT_KEYWORDS | BRAND_WIDE_OPT_OUT_KEYWORDS}
    | {"stopped", "unsubscribed", "unsub", "unsubbed", "optedout", "revoked", "cancelled"}
    | {"canceled"}
)
"""The words an export's value says an opt-out in: the service's STOP words
(``ledger.keywords``) and their past tense, as a platform writes a status."""
_OPT_OUT_STEMS = ("unsubscri", "optout", "optedout")
"""Parts of a word that say an opt-out within it, as a status written as one word
does ("SmsUnsubscribed")."""
_WORD = re.compile(r"[^\W\d_]+")


def reads_as_opt_out(value: str) -> bool:
    """Whether an export's ``value`` (a status, an event's name) says an opt-out in
    plain words: one of its words, or two side by side written as one ("opted out",
    "opt-out"), is one of ``_OPT_OUT_WORDS``, or a word holds one of
    ``_OPT_OUT_STEMS``. Klaviyo's ``NEVER_SUBSCRIBED`` does not; ``unsubscribed``,
    ``OPTED_OUT`` and ``STOP`` do. An option that would leave out, or import as an
    opt-in, a record of such a value is refused (``--skip``, ``--value``)."""
    words = _WORD.findall(value.casefold())
    said = [*words, *(a + b for a, b in pairwise(words))]
    return any(w in _OPT_OUT_WORDS or any(s in w for s in _OPT_OUT_STEMS) for w in said)


TYPED = "@"
"""Between a field and a record type in ``--column`` and ``--set``:
``occurred_at@opt_out``, ``campaign@opt_in``."""
KINDS = ("opt_in", "opt_out")


def from_parts(
    columns: Iterable[str] = (),
    values: Iterable[str] = (),
    constants: Iterable[str] = (),
    file: Path | None = None,
    fields: Iterable[str] = (),
    belongs: Dict[str, str] | None = None,
    ignored: Iterable[str] = (),
    unreadable: Callable[[str, str, Mapping], str | None] | None = None,
    subscriber_rows: bool = False,
    phone_region: str | None = None,
    time_zone: str | None = None,
    time_format: str | None = None,
    skip: Iterable[str] = (),
) -> Mapping:
    """One ``Mapping`` from the mapping file (if any) and the options given
    (``FIELD=HEADER``, ``FIELD:VALUE=OURS``, ``FIELD=VALUE``); ``fields`` are the
    fields a record may have, ``belongs`` the record type each field of one type
    only belongs to. A field given twice, in the file or the options, is refused:
    which one was meant cannot be told. ``unreadable`` says why a value cannot be
    read as a field, if it cannot: a value set or mapped to that cannot would refuse
    (and for an opt-out hold) every record it reaches, so it is refused here.
    ``subscriber_rows``, ``phone_region``, ``time_zone``, ``time_format``: the options
    of those names (see ``Mapping``); ``skip``, ``--skip``'s ``COLUMN=VALUE``."""
    known = tuple(fields)
    given: dict[str, Any] = {"columns": {}, "values": {}, "set": {}, "ignore": [], "skip": {}}
    if file is not None:
        given = _read_file(file)
    if subscriber_rows:
        if "subscriber_rows" in given:
            raise MappingError("--subscriber-rows is given twice (the mapping file and an option?)")
        given["subscriber_rows"] = True
    settings = (
        ("phone_region", phone_region), ("time_zone", time_zone), ("time_format", time_format)
    )  # fmt: skip
    for key, setting in settings:
        if setting is not None:
            if key in given:
                option = "--" + key.replace("_", "-")
                raise MappingError(f"{option} is given twice (the mapping file and an option?)")
            given[key] = setting
    for header in ignored:
        if header in given["ignore"]:
            raise MappingError(f"--ignore {header!r} is given twice")
        given["ignore"].append(header)
    for item in skip:
        column, sep, value = item.partition("=")
        if not sep or not column.strip():
            raise MappingError(f"--skip {item!r}: give COLUMN=VALUE")
        given["skip"].setdefault(column, []).append(value)
    sources = [("--column", columns, given["columns"]), ("--set", constants, given["set"])]
    for option, items, into in sources:
        for item in items:
            name, sep, value = item.partition("=")
            if not sep or not name.strip():
                raise MappingError(f"{option} {item!r}: give FIELD=VALUE")
            _put(into, name.strip(), value, f"{option} {name.strip()}")
    for item in values:
        name, colon, rest = item.partition(":")
        theirs, sep, ours = rest.rpartition("=")
        if not colon or not sep or not name.strip():
            raise MappingError(f"--value {item!r}: give FIELD:EXPORT_VALUE=OUR_VALUE")
        table = given["values"].setdefault(name.strip(), {})
        _put(table, theirs, ours, f"--value {name.strip()}:{theirs}")
    for option, key in (("--column", "columns"), ("--set", "set"), ("--value", "values")):
        given[key] = _fields_spelt(given[key], known, option)
    mapping = _built(given, known, dict(belongs or {}))
    if unreadable is not None:
        _check_values(given, lambda name, value: unreadable(name, value, mapping))
    return mapping


def _fields_spelt(named: dict[str, Any], fields: tuple[str, ...], option: str) -> dict[str, Any]:
    """``named`` (a mapping's ``FIELD`` or ``FIELD@TYPE`` keys) with each of our fields
    and record types written in other capitals ("Phone", "@OPT_IN") spelt as ours, as
    a header's columns are (``import_files.as_ours``); two that are one field but for
    capitals are refused: which was meant cannot be told."""
    folded = {f.casefold(): f for f in fields}
    kinds = {k.casefold(): k for k in KINDS}
    spelt: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    for name, value in named.items():
        base, typed, kind = name.partition(TYPED)
        base = base if base in fields else folded.get(base.casefold(), base)
        ours = base + typed + kinds.get(kind.casefold(), kind)
        other = given_as.setdefault(ours, name)
        if other != name:
            raise MappingError(
                f"{option} {other} and {option} {name} are the one field but for capitals; "
                "which was meant cannot be told"
            )
        spelt[ours] = value
    return spelt


def _check_values(given: Dict[str, Any], unreadable: Callable[[str, str], str | None]) -> None:
    """Refuse a value set (``--set``) or mapped to (``--value``) that its field
    cannot hold. Mapped to nothing (``--value type:cleaned=``) is no value: its
    records are read as the export would be without it."""
    for name, value in given["set"].items():
        if not value.strip():
            # A blank brand or campaign would refuse every opt-in, and hold every
            # opt-out under each brand the token writes for.
            raise MappingError(f"--set {name}: is empty; leave it out to set nothing")
        if (why := unreadable(name.partition(TYPED)[0], value)) is not None:
            raise MappingError(f"--set {name}: {why}")
    for name, table in given["values"].items():
        for theirs, ours in table.items():
            if ours.strip() and (why := unreadable(name, ours)) is not None:
                raise MappingError(f"--value {name}:{theirs}={ours}: {why}")


def _put(into: dict[str, str], key: str, value: str, what: str) -> None:
    if key in into:
        raise MappingError(f"{what} is given twice (the mapping file and an option?)")
    into[key] = value


def _read_file(path: Path) -> dict[str, Any]:
    """A mapping file: a JSON object or a TOML document of ``columns`` (field to
    column), ``values`` (field to a table of the export's values to ours), ``set``
    (field to value), ``ignore`` (columns) and ``skip`` (column to the values whose
    rows are skipped), each optional."""
    try:
        # A byte-order mark, as Windows editors save one, is no part of the mapping.
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise MappingError(f"--mapping {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise MappingError(
            f"--mapping {path}: is not UTF-8 text (byte {exc.start}); save it as UTF-8"
        ) from None
    try:
        if path.suffix.lower() == ".toml":
            read: Any = tomllib.loads(text)  # which refuses a key given twice itself
        else:
            read = json.loads(text, object_pairs_hook=_once)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise MappingError(f"--mapping {path}: cannot be read: {exc}") from None
    if not isinstance(read, dict):
        raise MappingError(f"--mapping {path}: must be an object of columns, values and set")
    stray = sorted(set(read) - {*_TABLES, *_SETTINGS})
    if stray:
        raise MappingError(
            f"--mapping {path}: unknown key {stray[0]!r} ("
            + ", ".join([*_TABLES, *_SETTINGS])
            + ")"
        )
    ignore = read.get("ignore", [])
    if not isinstance(ignore, list) or not all(isinstance(h, str) for h in ignore):
        raise MappingError(f"--mapping {path}: ignore must be a list of column names")
    out: dict[str, Any] = {
        "columns": {}, "values": {}, "set": {}, "ignore": list(ignore), "skip": {}
    }  # fmt: skip
    if "subscriber_rows" in read:
        if not isinstance(read["subscriber_rows"], bool):
            raise MappingError(f"--mapping {path}: subscriber_rows must be true or false")
        out["subscriber_rows"] = read["subscriber_rows"]
    for key in ("phone_region", "time_zone", "time_format"):
        if key in read:
            if not isinstance(read[key], str):
                raise MappingError(f"--mapping {path}: {key} must be a string")
            out[key] = read[key]
    for part in ("columns", "set"):
        table = _dotted(read.get(part, {}))
        if not isinstance(table, dict) or not all(isinstance(v, str) for v in table.values()):
            raise MappingError(
                f"--mapping {path}: {part} must map fields to strings{_stray(table, str)}"
            )
        out[part] = dict(table)
    tables = read.get("values", {})
    if not isinstance(tables, dict) or not all(
        isinstance(t, dict) and all(isinstance(v, str) for v in t.values()) for t in tables.values()
    ):
        named = _stray(tables, dict) or next(
            (w for k, t in tables.items() if isinstance(t, dict) and (w := _stray(t, str, k))),
            "",
        )
        raise MappingError(f"--mapping {path}: values must map fields to tables of strings{named}")
    out["values"] = {k: dict(v) for k, v in tables.items()}
    skip = _dotted(read.get("skip", {}))
    if isinstance(skip, dict):  # a column's one value may be given as it is
        skip = {k: [v] if isinstance(v, str) else v for k, v in skip.items()}
    if not isinstance(skip, dict) or not all(
        isinstance(t, list) and all(isinstance(v, str) for v in t) for t in skip.values()
    ):
        raise MappingError(
            f"--mapping {path}: skip must map columns to lists of values{_stray(skip, list)}"
        )
    out["skip"] = {k: list(v) for k, v in skip.items()}
    return out


def _stray(table: Any, kind: type, within: str = "") -> str:
    """Where a mapping file's table holds a value of another type than ``kind``, as
    the end of its refusal (``: 'brand' is 5``; ``within`` a field's table of
    values, ``: 'type.cleaned' is 5``); empty if none is found."""
    if not isinstance(table, dict):
        return ""
    for key, value in table.items():
        if not isinstance(value, kind):
            where = f"{within}.{key}" if within else key
            return f": {where!r} is {value!r}"[:200]
    return ""


_TABLES = ("columns", "values", "set", "ignore", "skip")
_SETTINGS = ("subscriber_rows", "phone_region", "time_zone", "time_format")
"""A mapping file's keys: its tables, and the settings of the options of their names."""


def _dotted(table: Any, prefix: str = "") -> Any:
    """A table of fields with each table within it spelt out as ``outer.inner``: in
    TOML, ``proof.name = "Full Name"`` unquoted is ``name`` within a table ``proof``.
    Anything else as it is."""
    if not isinstance(table, dict):
        return table
    out: dict[str, Any] = {}
    for key, value in table.items():
        inner = _dotted(value, f"{prefix}{key}.") if isinstance(value, dict) and value else None
        for name, given in (inner or {f"{prefix}{key}": value}).items():
            if name in out:  # "proof.name" quoted and unquoted
                raise MappingError(f"{name} is given twice in the mapping file")
            out[name] = given
    return out


def _once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object of a mapping file, refused when it gives a key twice: ``json``
    would keep the last unsaid, where an option given twice is refused."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"{key!r} is given twice")
        out[key] = value
    return out


def _built(given: Dict[str, Any], fields: tuple[str, ...], belongs: dict[str, str]) -> Mapping:
    columns: dict[str, str] = given["columns"]
    constants: dict[str, str] = given["set"]
    values: dict[str, dict[str, str]] = given["values"]
    for option, named, how in (
        ("--column", columns, "read FIELD from this column"),
        ("--set", constants, "set FIELD"),
    ):
        for name in named:
            base, typed, kind = name.partition(TYPED)
            if not typed:
                continue
            if kind not in KINDS or base not in fields or base == "type":
                raise MappingError(
                    f"{option} {name}: give FIELD@opt_in or FIELD@opt_out, FIELD a field "
                    f"other than type, to {how} for records of that type only"
                )
            if belongs.get(base, kind) != kind:
                raise MappingError(
                    f"{option} {name}: {base} is a field of {belongs[base]} records only"
                )
    typed_values = [n for n in values if TYPED in n]
    if typed_values:
        # Its table would never be looked up: refused as mapping a column the header
        # lacks, which named the column the export has.
        raise MappingError(
            f"--value {typed_values[0]}:...: --value maps the values of a field in every "
            "record (FIELD:THEIRS=OURS), not those of one record type's column"
        )
    for what, names in (("--column", columns), ("--value", values), ("--set", constants)):
        unknown = [n for n in names if n.partition(TYPED)[0] not in fields]
        read_as = [f for f, h in columns.items() if unknown and loosely(h) == loosely(unknown[0])]
        if what == "--value" and read_as:
            # The export's name for the field, as a user reading the export writes it.
            raise MappingError(
                f"--value {unknown[0]}:...: {unknown[0]!r} is the column {read_as[0]} is read "
                f"from: give --value {read_as[0]}:THEIRS=OURS"
            )
        if unknown:
            raise MappingError(
                f"{what} {unknown[0]}: no such field; the fields are: " + ", ".join(fields)
            )
    set_fields = {n.partition(TYPED)[0] for n in constants}
    if "import_id" in set_fields:
        # One id for every record: the first imported, each other refused as another
        # record under its id (each opt-out held), and nothing tells which is which.
        raise MappingError(
            "--set import_id: every record would have the one id; read it from a column "
            "(--column import_id=HEADER), or leave it out for an id derived from each record"
        )
    plain_and_typed = sorted(n.partition(TYPED)[0] for n in constants if TYPED in n)
    plain_and_typed = [n for n in plain_and_typed if n in constants]
    if plain_and_typed:
        name = plain_and_typed[0]
        raise MappingError(
            f"--set {name} is given for every record and for one record type as well; "
            "give it once for each type instead"
        )
    both = sorted({n.partition(TYPED)[0] for n in columns} & set_fields)
    if both:
        raise MappingError(f"{both[0]} is both read from a column (--column) and set (--set)")
    set_and_mapped = sorted(set(values) & set_fields)
    if set_and_mapped:
        name = set_and_mapped[0]
        raise MappingError(f"{name} is set (--set): it has no column whose values to map")
    ignored = frozenset(given["ignore"])
    both_ways = sorted(ignored & set(columns.values()))
    if both_ways:
        raise MappingError(f"column {both_ways[0]!r} is both read (--column) and ignored")
    folded: dict[str, dict[str, str]] = {}
    for name, table in values.items():
        folded[name] = {}
        for theirs, ours in table.items():
            key = theirs.strip().casefold()
            if not key:
                # An empty value is no value: never looked up, so such a mapping would
                # be dropped unsaid (an "unsubscribed" left empty held, not imported).
                raise MappingError(
                    f"--value {name}:{theirs}={ours}: an empty value cannot be mapped; a "
                    f"record whose {name} is empty is read as giving none"
                )
            if key in folded[name] and folded[name][key] != ours:
                raise MappingError(f"--value {name}:{theirs} maps one value two ways")
            folded[name][key] = ours
    for theirs, ours in given["values"].get("type", {}).items():
        if ours.strip().lower().replace("-", "_") == "opt_in" and reads_as_opt_out(theirs):
            # Each such record imported as an opt-in would allow the number it says
            # has opted out: a slip in the mapping, never what an export means.
            raise MappingError(
                f"--value type:{theirs}={ours}: {theirs.strip()!r} reads as an opt-out; "
                "it cannot be imported as an opt-in"
            )
    skip = _skipped(given.get("skip", {}))
    # A column read for its skips alone is no field's: ignored, not refused unknown.
    read = {loosely(h) for h in columns.values()} | {loosely(f) for f in fields}
    ignored |= {c for c in skip if loosely(c) not in read}
    subscriber_rows = bool(given.get("subscriber_rows"))
    if subscriber_rows:
        _check_subscriber_rows(columns, values, constants)
    only = {name: kind for name, kind in belongs.items() if name in constants or name in columns}
    region, zone = _region(given.get("phone_region")), _zone(given.get("time_zone"))
    time_format = _time_format(given.get("time_format"), zone)
    return Mapping(
        dict(columns), folded, dict(constants), only, ignored, subscriber_rows, region, zone,
        time_format, skip, frozenset(fields),
    )  # fmt: skip


def _skipped(given: Dict[str, list[str]]) -> dict[str, dict[str, str]]:
    """``--skip``'s columns, each to its values stripped and case folded (as a cell
    is compared) to the value as given. An empty value is refused, as ``--value``'s
    is: an empty cell is no value, never matched; a value given twice is refused,
    as anything given twice is; and so is a value that reads as an opt-out
    (``reads_as_opt_out``), which a skip must never leave out."""
    out: dict[str, dict[str, str]] = {}
    for column, values in given.items():
        table = out.setdefault(column, {})
        for value in values:
            key = value.strip().casefold()
            if not key:
                raise MappingError(
                    f"--skip {column}={value}: an empty value cannot be skipped on; a row "
                    f"whose {column} is empty is read as giving none"
                )
            if reads_as_opt_out(value):
                # A row of that value whose type is not mapped would be held for
                # review; skipped, an opt-out it says in plain words was lost.
                raise MappingError(
                    f"--skip {column}={value}: {value.strip()!r} reads as an opt-out, and an "
                    "opt-out is never skipped (its number would stay open to texts): leave the "
                    "skip out, and if the column holds the records' type, map the value as one "
                    f"(--value type:{value.strip()}=opt_out)"
                )
            if key in table:
                raise MappingError(
                    f"--skip {column}={value} is given twice (the mapping file and an option?)"
                )
            table[key] = value.strip()
    return out


def _region(given: str | None) -> str:
    """``--phone-region``'s region as ``phonenumbers`` names it, refused when it knows
    no such region: every number without its country code would be refused, or read
    in a region that was not meant."""
    if given is None:
        return ""
    import phonenumbers

    region = given.strip().upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise MappingError(
            f"--phone-region {given!r}: is not a region phone numbers are known for; give "
            "its ISO 3166 code, two letters, as US or GB"
        )
    return region


def _zone(given: str | None) -> str:
    """``--time-zone``'s zone, refused when the zone database has no such name: every
    time without a zone of its own would be refused, or read in a zone not meant."""
    if given is None:
        return ""
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(given)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise MappingError(
            f"--time-zone {given!r}: is no time zone known; give its IANA name, as "
            "America/New_York or Europe/London"
        ) from None
    return given


EPOCH_UNITS = {"epoch-s": "seconds", "epoch-ms": "milliseconds"}
"""``--time-format``'s counts since 1970, by the unit each counts in."""
_DIRECTIVE = re.compile(r"%(.?)", re.DOTALL)
_STRPTIME = frozenset("aAbBdfGHIjmMpSuUVwWyYzZ%")
"""The directives ``strptime`` reads (but for the locale's own ``%c``, ``%x``, ``%X``)."""


def _time_format(given: str | None, zone: str) -> str:
    """``--time-format``'s format, refused unless it is a unit of ``EPOCH_UNITS`` or a
    ``strptime`` format that gives a whole moment: a date, a time of day, and an
    offset (``%z``) or else ``--time-zone`` (``zone``) to read it in. Anything less
    would have each time read as some moment the export does not say. A zone beside
    a count is refused too: a count is UTC, and the zone would go unused."""
    if given in EPOCH_UNITS and zone:
        # Accepted and never used, it told its user that the counts were read in it.
        raise MappingError(
            f"--time-zone {zone!r} does not apply to --time-format {given}: a count since "
            "1970 is UTC, so the zone would be ignored; leave --time-zone out"
        )
    if given is None or given in EPOCH_UNITS:
        return given or ""
    said = f"--time-format {given!r}"
    if "%" not in given:
        raise MappingError(
            f"{said}: give epoch-s, epoch-ms, or a strptime format, as '%m/%d/%Y %I:%M %p'"
        )
    used: list[str] = []
    for found in _DIRECTIVE.finditer(given):
        letter = found.group(1)
        if letter and letter in "cxX":
            raise MappingError(
                f"{said}: %{letter} is the locale's way of writing a date or time, which "
                "differs from one machine to another; write its parts out, as %m/%d/%Y %H:%M"
            )
        if not letter or letter not in _STRPTIME:
            what = f"%{letter} is no directive strptime reads" if letter else "ends in a lone %"
            raise MappingError(f"{said}: {what}")
        if letter in used and letter != "%":
            raise MappingError(f"{said}: gives %{letter} twice; which to read cannot be told")
        used.append(letter)
    have = set(used)
    month_and_day = "d" in have and bool(have & {"m", "b", "B"})
    if not have & {"Y", "y"} or not (month_and_day or "j" in have):
        raise MappingError(
            f"{said}: gives no whole date: a year (%Y or %y) with a month and day (%m or %b, "
            "and %d) or a day of the year (%j)"
        )
    if not have & {"H", "I"}:
        raise MappingError(f"{said}: gives no time of day (an hour, %H or %I with %p)")
    if "I" in have and "p" not in have:
        raise MappingError(
            f"{said}: gives the hour on a 12-hour clock (%I) with no AM or PM (%p): which "
            "half of the day cannot be told; give %p, or %H for a 24-hour clock"
        )
    if "Z" in have and "z" not in have:
        raise MappingError(
            f"{said}: strptime reads a zone's name (%Z) as no zone at all; give %z for an "
            "offset, or name the export's zone with --time-zone and leave it out"
        )
    if "z" not in have and not zone:
        raise MappingError(
            f"{said}: gives no offset (%z), so its times are of a zone the export does not "
            "say; name it with --time-zone, as America/New_York"
        )
    if "z" in have and zone:
        # Every time must match the format, so each carries its offset: the zone
        # would be accepted and never used, as beside a count.
        raise MappingError(
            f"--time-zone {zone!r} does not apply to {said}: its %z gives every time's "
            "offset, so the zone would be ignored; leave --time-zone out"
        )
    return given


def _check_subscriber_rows(
    columns: Dict[str, str], values: Dict[str, Any], constants: Dict[str, str]
) -> None:
    """Refuse what ``--subscriber-rows`` cannot be read with: a row is an opt-in at
    one time column and an opt-out at another, so both are needed, apart, and
    neither a type nor a time for every record can be given besides."""
    what = "--subscriber-rows"
    for kind in KINDS:
        if f"occurred_at{TYPED}{kind}" not in columns:
            raise MappingError(
                f"{what}: give --column occurred_at{TYPED}{kind}=HEADER, the column of "
                f"each row's {kind.replace('_', '-')} time"
            )
    if "type" in columns or "type" in values or "type" in constants:
        raise MappingError(
            f"{what} reads each row as an opt-in and, when its opt-out time is given, an "
            "opt-out: a type (--column type, --value type or --set type) says otherwise; "
            "drop one of the two"
        )
    if "occurred_at" in columns or any(n.partition(TYPED)[0] == "occurred_at" for n in constants):
        raise MappingError(
            f"{what}: occurred_at is read from its @opt_in and @opt_out columns only; "
            "drop --column occurred_at (or --set occurred_at)"
        )
    if "import_id" in columns:
        # Both records of a row would have the one id: the opt-in refused as another
        # record under the opt-out's. Derived from each record, ids are apart and the
        # same as a hand-rewritten two-record file's.
        raise MappingError(
            f"{what}: the export's id names the subscriber, not each opt-in or opt-out; "
            "leave import_id unmapped (--ignore its column) for an id derived from each "
            "record"
        )
    if columns[f"occurred_at{TYPED}opt_in"] == columns[f"occurred_at{TYPED}opt_out"]:
        raise MappingError(
            f"{what}: occurred_at@opt_in and occurred_at@opt_out are read from one column; "
            "each row would opt out as it opts in"
        )
