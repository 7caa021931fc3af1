"""Reading another platform's export for ``consent-ledger import``: CSV or JSON Lines,
one opt-in or opt-out a record, each turned into an ``ImportRecord`` message.

Both formats have the same fields (``FIELDS``); a JSON line may also nest the proof
as ``"proof": {...}``. Enumerations are written short (``promotional``,
``web_form``, ``keyword``) or as the API names them (``CONSENT_TIER_PROMOTIONAL``).
Times are ISO 8601 with a zone (``2026-11-02T09:30:00Z``, ``...+01:00``): a time
without one would be read in some zone the file does not say, unless the user names
it (``--time-zone``). An export that writes them otherwise (a count since 1970, a
date as ``01/02/2024 4:00 AM``) is read as the user says it writes every one of them
(``--time-format``), never guessed.

A record without ``import_id`` gets one from its content (``derived_import_id``):
the same record in the same export has the same id on every run, so running the
import again writes nothing new, and a record whose content changed is a new fact.
Its number is read as E.164 first (``+1 (415) 555-2671`` is ``+14155552671``), as
its enumerations and times are read into their values, and its free text without
the spaces around it and with LF line ends (``as_read``): the same consent written
another way, in one export or the next, is the same record.

What cannot be read is a ``Unreadable`` naming its line, field and why, and the
rest of the file goes on. Of an opt-out, what can be read (its number, brand and
campaign) is still sent (``Unreadable.held``), for the service to hold for review:
an opt-out refused must not leave its number open to texts.
"""

from __future__ import annotations

import calendar
import codecs
import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import re
import sys
import tempfile
import time
import unicodedata
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from functools import lru_cache, partial
from pathlib import Path
from typing import IO, Any, BinaryIO, TextIO
from zoneinfo import ZoneInfo

from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb
from google.protobuf.timestamp_pb2 import Timestamp

from ledger.errors import DomainError, InvalidRequest
from ledger.phone import to_e164
from ledger.regions import normalise_region
from ledger.validation import (
    NAME_RULE,
    TEXT_LIMITS,
    check_length,
    is_name,
    says_nothing,
    text_problem,
)
from services.import_mapping import EPOCH_UNITS, TYPED, Mapping, loosely, reads_as_opt_out
from services.wire.enums import NOT_SET

FORMATS = ("csv", "jsonl")
_PLAIN = Mapping()
"""No mapping: the export under our own names, its numbers and times as they are."""
_EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}

PROOF_FIELDS = (
    "registered_at",
    "name",
    "email",
    "postal_address",
    "ip_address",
    "collection_detail",
    "form_url",
    "consent_text",
    "consent_text_sha256",
    "consent_text_version",
    "screenshot_ref",
    "screenshot_sha256",
    "region",
)
COMMON_FIELDS = ("type", "import_id", "phone", "brand", "campaign", "occurred_at")
OPT_IN_FIELDS = ("tier", "method", "source", *(f"proof.{f}" for f in PROOF_FIELDS))
OPT_OUT_FIELDS = ("channel", "text", "in_reply_to")
FIELDS = (*COMMON_FIELDS, *OPT_IN_FIELDS, *OPT_OUT_FIELDS)
"""Every field a record may have; any other is a mistake (a misspelt column would
otherwise drop its values silently)."""
_FOLDED = {name.casefold(): name for name in (*FIELDS, "proof")}
"""Our field names (and a JSON line's nested ``proof``) by their capitals folded."""
_OURS = frozenset(_FOLDED.values())


def as_ours(
    names: Iterable[str], keep: Collection[str] = ()
) -> tuple[list[str], tuple[str, str] | None]:
    """``names`` (a header's columns, a JSON line's keys) with each that is one of our
    fields in other capitals ("Type", "Phone", "Occurred_At") spelt as ours, but for
    those in ``keep`` (read by a mapping as they are); and, when two of them are one
    field but for capitals, that field and why: which was meant cannot be told.
    Refused as unknown, such a column was named in the error beside the very field
    it spells."""
    spelt: list[str] = []
    seen: dict[str, str] = {}
    for name in names:
        ours = name if name in keep else _FOLDED.get(name.casefold(), name)
        if ours in _OURS:
            other = seen.setdefault(ours, name)
            if other != name:
                said = f"{_shown(other)!r} and {_shown(name)!r}"
                why = f"{said} are the one field but for capitals; which to read cannot be told"
                return spelt, (ours, why)
        spelt.append(ours)
    return spelt, None


BELONGS = {
    **{name: "opt_in" for name in OPT_IN_FIELDS},
    **{name: "opt_out" for name in OPT_OUT_FIELDS},
}
"""The record type each field of one type only belongs to."""

_ENUMS: dict[str, tuple[Any, str]] = {
    "tier": (lpb.ConsentTier, "CONSENT_TIER_"),
    "method": (lpb.CollectionMethod, "COLLECTION_METHOD_"),
    "source": (lpb.ListSource, "LIST_SOURCE_"),
    "channel": (lpb.RevocationChannel, "REVOCATION_CHANNEL_"),
}


CSV_VALUE_LIMIT = 1 << 24
"""Characters a CSV value is read up to. The csv module's own limit (131,072) would
stop the whole file at one long value; a value over its field's limit is refused
on its own instead (``VALUE_LIMIT``)."""
VALUE_LIMIT = 1024
"""Characters a value of a field without a limit of its own in ``TEXT_LIMITS`` may
hold before it is refused here (the service's limits on those are far lower). With
``TEXT_LIMITS``, this keeps every record a small part of one message to the service,
which reads messages of up to 512 KiB."""


class FormatError(ValueError):
    """The file as a whole cannot be read (an unknown format or column)."""


class Stopped(FormatError):
    """The file cannot be read past a line (a quote left open, a header further down
    naming an unknown column), or changed while read: the records before it are
    imported, and the import fails (exit 1), unlike a file of unknown columns."""


class Changed(Stopped):
    """The file changed while it was read (an export still being written): it holds
    records the import did not read."""


@dataclass(frozen=True)
class Unreadable:
    """A record that cannot be read: where, which field, why."""

    line: int
    field: str
    reason: str
    held: api.ImportRecord | None = None
    """Of an opt-out, what can be read of it, with no channel or time: the service
    refuses it and holds its number for review (``ImportConsents``)."""
    opt_in: bool = dataclasses.field(default=False, compare=False)
    """Typed ``opt_in``: never held (``read_records`` reads these apart)."""
    import_id: str = ""
    """The record's own import id, when it could be read: the refusals file keeps it,
    so that the record fixed and imported again is recorded once (``_refused``)."""
    kind: str = dataclasses.field(default="", compare=False)
    """``opt_in`` or ``opt_out`` when its type was read, else empty: a field a
    mapping reads from one column per type is named by this type's."""
    derived_id: str = dataclasses.field(default="", compare=False)
    """Without an import id of its own: the one derived from what it said, as an
    opt-out that cannot be read is held under (``_said_id``), the same on every run,
    so that the refusals of two runs of the file can be matched. Empty for a line
    that gave no fields at all."""
    opted_out_id: str = dataclasses.field(default="", compare=False)
    """Of a subscriber row's opt-in refused as not before its row's opt-out: the
    import id it would be imported under, so that the same opt-in on another row of
    the file (the same id) is refused too (``opted_out_opt_ins``)."""
    unskipped: str = dataclasses.field(default="", compare=False)
    """The ``--skip`` (``COLUMN=VALUE``) it matched, not skipped being an opt-out."""

    @property
    def shown_id(self) -> str:
        """The id a refusal names it by: its own, else the one derived."""
        return self.import_id or self.derived_id


@dataclass(frozen=True)
class Read:
    """A record read: the line it starts on, and the message."""

    line: int
    record: api.ImportRecord
    id_derived: bool = dataclasses.field(default=False, compare=False)
    """Its import id was derived from its content (``derived_import_id``), the
    record giving none."""
    unskipped: str = dataclasses.field(default="", compare=False)
    """The ``--skip`` (``COLUMN=VALUE``) it matched, not skipped being an opt-out."""


@dataclass(frozen=True)
class Skipped:
    """A record a ``--skip`` matched, which is not sent: its line and the skip, as
    ``COLUMN=VALUE``. Never an opt-out (``_skips``)."""

    line: int
    rule: str
    opt_in: bool = False
    """Typed ``opt_in``: in the part of the file the opt-ins are read in."""


STDIN_NAME = "standard input"
"""How a file read from standard input (``-``, ``path`` None below) is named."""


def format_of(path: Path | None, given: str | None) -> str:
    """``given``, or the format the file's extension names (None: standard input)."""
    if given is not None:
        if given not in FORMATS:
            raise FormatError(f"unknown format {given!r}: one of {', '.join(FORMATS)}")
        return given
    found = None if path is None else _EXTENSIONS.get(path.suffix.lower())
    if found is None:
        if path is not None and path.suffix.lower() in _PACKED_SUFFIXES:
            raise _packed(path.name, *_PACKED_SUFFIXES[path.suffix.lower()], by_name=True)
        where = STDIN_NAME if path is None else f"{path.name} from its extension"
        raise FormatError(f"cannot tell the format of {where}; give --format csv or --format jsonl")
    return found


_SHEET = "save the sheet as CSV (UTF-8) and import that"
_UNZIP = "unzip it and import the CSV or JSON Lines file inside, or from a workbook " + _SHEET
# A compressed file or a workbook read as text would refuse every line for bytes that
# are not UTF-8, none saying why: each is known by its first bytes or its extension and
# refused whole. (pattern of its start or None, its extensions, what it is, the tool
# that decompresses it or what to do)
_PACKED: tuple[tuple[re.Pattern[bytes] | None, tuple[str, ...], str, str], ...] = (
    (re.compile(rb"\x1f\x8b"), (".gz",), "gzip-compressed", "gzip"),
    (re.compile(rb"BZh[1-9]1AY&SY"), (".bz2",), "bzip2-compressed", "bzip2"),
    (re.compile(rb"\xfd7zXZ\x00"), (".xz",), "xz-compressed", "xz"),
    (re.compile(rb"\x28\xb5\x2f\xfd"), (".zst",), "zstd-compressed", "zstd"),
    (re.compile(rb"PK\x03\x04"), (), "a ZIP archive (an .xlsx or .ods workbook is one)", _UNZIP),
    (re.compile(rb"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"), (), "an Excel 97-2003 workbook", _SHEET),
    (None, (".zip",), "a ZIP archive", _UNZIP),
    (None, (".xlsx", ".xls"), "an Excel workbook", _SHEET),
    (None, (".ods",), "a spreadsheet", _SHEET),
)
_PACKED_SUFFIXES = {
    suffix: (what, then) for _, suffixes, what, then in _PACKED for suffix in suffixes
}


def _packed(name: str, what: str, then: str, *, by_name: bool = False) -> FormatError:
    """The refusal of a file that is ``what`` (by its start, or ``by_name``), saying
    what to do ``then``: a tool's name, to decompress it with, or the advice itself."""
    if " " not in then:  # a tool: the same import, decompressed on its way
        source = "FILE" if name == STDIN_NAME else name
        then = f"decompress it first: {then} -dc {source} | consent-ledger import --format csv -"
    seems = ("looks" if what.endswith("compressed") else "looks like") if by_name else "is"
    return FormatError(f"{name} {seems} {what}; {then}")


def read_records(
    text: TextIO, fmt: str, opt_ins: bool | None = None, mapping: Mapping | None = None
) -> Iterator[Read | Unreadable | Skipped]:
    """Every record of ``text`` in order, read or not; with ``opt_ins`` True only
    those typed ``opt_in``, with False only the others (opt-outs, records whose type
    cannot be read, header rows further down). A record typed ``opt_in`` is never
    held (``_refused``), so the second part holds every record that may deny: read
    and imported first, it denies before any opt-in is allowed. ``mapping``: how the
    export names our fields (``services.import_mapping``); the fields of what cannot
    be read are named as ours still (``Mapping.shown`` names them as the export does).
    A record of a row that ``mapping``'s skips leave out is ``Skipped``, in the part
    its type puts it in."""
    mapping = Mapping() if mapping is None else mapping
    if fmt == "csv":
        yield from _csv(text, opt_ins, mapping)
    else:
        yield from _jsonl(text, opt_ins, mapping)


def _wanted(fields: dict[str, Any], opt_ins: bool | None) -> bool:
    """Whether a record of ``fields`` is in the part of the file ``opt_ins`` asks for
    (``read_records``); its fields are looked at, not parsed, so a part costs the
    reading of the other's lines only."""
    if opt_ins is None:
        return True
    kind = fields.get("type")
    return (isinstance(kind, str) and _kind({"type": kind}) == "opt_in") == opt_ins


def _csv(
    text: TextIO, opt_ins: bool | None = None, mapping: Mapping | None = None
) -> Iterator[Read | Unreadable | Skipped]:
    mapping = Mapping() if mapping is None else mapping
    csv.field_size_limit(max(csv.field_size_limit(), CSV_VALUE_LIMIT))
    # Strict: a quote opened and never closed would otherwise take every line after
    # it, up to the next quote or the end of the file, into one value, and the
    # records on those lines would vanish without a word.
    source = _RowStarts(text)
    rows = csv.reader(source, strict=True)
    # The header is the first row that is not blank, as each record is (a blank line
    # before it would make it a record of a header with no columns).
    try:
        columns: list[str] = next((row for row in rows if any(v.strip() for v in row)), [])
    except csv.Error as exc:
        raise FormatError(f"line {rows.line_num}: {exc}; the header cannot be read") from None
    _check_separator(columns)
    _check_header_text(columns, rows.line_num)
    if mapping.names_columns:
        mapping = mapping.fitted(columns, "the header")
    header = columns  # as the file spells it: a header row further down repeats it so
    columns = _spelt_as_ours(columns, mapping)
    if mapping:  # a column of ours in other capitals, mapped as well: which is meant?
        mapping.check_header(columns, "the header")
    _check_columns(mapping.renamed(columns) if mapping else columns, mapped=bool(mapping))
    source.row_read()
    seen = rows.line_num  # the lines up to the header's end
    try:
        for row in rows:
            source.row_read()
            start, seen = seen + 1, rows.line_num
            # A blank line, or a row of empty values (a spreadsheet writes them below
            # its data): no record, and the next starts after it.
            if not any(value.strip() for value in row):
                continue
            # Under a mapping, the export's own header again (no other is known),
            # its byte-order mark dropped: a second export joined by cat keeps its own.
            unmarked = [row[0].removeprefix("\ufeff"), *row[1:]]
            again = (unmarked if unmarked == header else None) if mapping else _header_again(row)
            if again is not None:
                where = f"line {start}, a header row further down: "
                header, again = again, _spelt_as_ours(again, mapping, where, STOPPED, Stopped)
                # Exports joined (cat a.csv b.csv): the second's header is no record,
                # and its rows are written under it, so they are read under it. It is
                # refused all the same, named, so that a file that is not the one
                # export it seems does not pass for clean, and no row is dropped unsaid.
                # Under a mapping it is the first header, checked as that was.
                _check_columns(
                    mapping.renamed(again) if mapping else again, where, STOPPED, Stopped,
                    mapped=bool(mapping),
                )  # fmt: skip
                if opt_ins is not True:
                    yield Unreadable(start, "record", _header_reason(again, columns))
                columns = again
                continue
            given = {k: v for k, v in zip(columns, row, strict=False) if v}
            said = mapping.fields_of(given)
            records = _records_of(mapping, said)
            # Looked up by the header as the file spells it: a skip names its column.
            as_written = {k: v for k, v in zip(header, row, strict=False) if v}
            rule = mapping.skipped_by(as_written.get) if mapping.skip else None
            says_out = rule is not None and _says_opt_out(said)
            skips = _skips(rule, [fields for fields, _ in records]) and not says_out
            for fields, unmapped in records:
                if not _wanted(fields, opt_ins):
                    continue
                if skips:
                    assert rule is not None
                    yield Skipped(start, rule, _wanted(fields, True))
                    continue
                item: Read | Unreadable
                if unmapped is not None:  # its type unread, an opt-out-looking one is held
                    item = _refused(fields, start, *unmapped, mapping=mapping)
                elif len(row) > len(columns):  # an unquoted comma, most often in a text
                    reason = "has more values than the header has columns"
                    item = _refused(fields, start, "record", reason, mapping=mapping)
                else:
                    item = parse_fields(fields, start, mapping)
                yield _unskipped(item, rule, fields, says_out)
    except csv.Error as exc:  # the rest cannot be read: stop, naming where
        quoting = "expected after" in str(exc) or "end of data" in str(exc)
        hint = " (a quoted value that opens on this line and does not close?)" if quoting else ""
        # An opt-out on the broken line is held by what it said before its mistake,
        # as a JSON line cut short is: its number and brand most often come first.
        said, _ = mapping.apply(mapping.fields_of(_said_before_the_break(columns, source.first)))
        if _wanted(said, opt_ins):
            broken = _refused(
                said, seen + 1, "record", f"cannot be read: {exc}{hint}", mapping=mapping
            )
            if broken.held is not None:
                yield broken
        raise Stopped(f"line {seen + 1}: {exc}{hint}{STOPPED}") from None


class _RowStarts:
    """``text``'s lines for ``csv.reader``, keeping the first line of the row being
    read (up to ``LINE_LIMIT`` characters; ``row_read`` after each row): what a row
    that cannot be read said, without keeping the lines a quote left open takes."""

    def __init__(self, text: TextIO) -> None:
        self._lines = iter(text)
        self._starts = True
        self.first = ""

    def __iter__(self) -> _RowStarts:
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        if self._starts:
            self.first, self._starts = line[:LINE_LIMIT], False
        return line

    def row_read(self) -> None:
        self._starts = True


def _said_before_the_break(columns: list[str], line: str) -> dict[str, str]:
    """The values of a CSV row that cannot be read, from its first line read without
    strictness, less the last: the one its quote opens (which may have taken more
    than its own) or that has more after its closing quote."""
    row = next(csv.reader([line]), [])
    return {k: v for k, v in zip(columns, row[:-1], strict=False) if v}


STOPPED = "; nothing from this line on was read"


SEPARATORS = {";": ("semicolons", ";"), "\t": ("tabs", "\\t"), "|": ("bars", "|")}
"""Other separators a spreadsheet or a platform writes a CSV export with."""


def _check_separator(columns: list[str]) -> None:
    """Refuse a header that reads as one column of fields joined by another
    separator: each of its names was told as one unknown column (or one a mapping
    could not find), which did not say that only commas separate values here."""
    if len(columns) != 1:
        return
    header = columns[0] if len(columns[0]) <= 80 else columns[0][:77] + "..."
    for mark, (name, written) in SEPARATORS.items():
        if mark in columns[0]:
            raise FormatError(
                f"the header is one column, {header!r}: its values are separated by "
                f"{name}, and a CSV export's by commas; convert it, for example with "
                f"python3 -c 'import csv, sys; csv.writer(sys.stdout).writerows("
                f'csv.reader(sys.stdin, delimiter="{written}"))\' < export.csv | '
                "consent-ledger import --format csv -"
            )


def _spelt_as_ours(
    columns: list[str],
    mapping: Mapping,
    where: str = "",
    then: str = "",
    error: type[FormatError] = FormatError,
) -> list[str]:
    """A header's columns, each of our fields in other capitals spelt as ours
    (``as_ours``), but for those a mapping reads or ignores; refused (``error``) when
    two are one field but for capitals."""
    spelt, clash = as_ours(columns, set(mapping.columns.values()) | mapping.ignored)
    if clash is not None:
        field_name, reason = clash
        raise error(f"{where}the columns for {field_name}: {reason}{then}")
    return spelt


def _check_header_text(columns: list[str], line: int) -> None:
    """Refuse a header holding a byte that is not UTF-8: the export is most often
    Latin-1 or Windows-1252 whole, and its column was refused as unknown, or not
    found by the --column naming it, with nothing said of why."""
    for column in columns:
        if (odd := _SURROGATE.search(column)) is not None:
            raise FormatError(
                f"line {line}, the header: column '{_shown(column)}' {_not_text(odd.group())}"
                "; save the export as UTF-8 (it may be Latin-1 or Windows-1252)"
            )


def _check_columns(
    columns: list[str],
    where: str = "",
    then: str = "",
    error: type[FormatError] = FormatError,
    mapped: bool = False,
) -> None:
    """Refuse a header (``error``) that names a column no record has, or one twice."""
    unknown = [c for c in columns if c not in FIELDS]
    if unknown:
        hint = "" if mapped else "; another platform's columns are mapped with --column"
        raise error(
            f"{where}unknown column(s) {', '.join(map(repr, unknown))}; the columns are: "
            + ", ".join(FIELDS)
            + hint
            + then
        )
    twice = sorted({c for c in columns if columns.count(c) > 1})
    if twice:
        # A row would keep only the last of the column's values, silently.
        named = ", ".join(map(repr, twice))
        raise error(f"{where}column(s) {named} named more than once{then}")


def _header_again(row: list[str]) -> list[str] | None:
    """``row`` as the columns it names when it is a header row below the first (a
    joined export's, its byte-order mark dropped), else None: ``type`` among its
    values (a record's is ``opt_in`` or ``opt_out``) and most of them fields' names.
    One naming a column no record has is a header still, which ``_check_columns``
    refuses: read as a record, the rows after it would be read under other columns."""
    named = [row[0].removeprefix("\ufeff"), *row[1:]]
    spelt, _ = as_ours(named)
    if "type" in spelt and 2 * sum(value in FIELDS for value in spelt) > len(spelt):
        return named
    return None


def _header_reason(again: list[str], columns: list[str]) -> str:
    joined = "exports joined, as by cat?"
    if again == columns:
        return f"repeats the header row ({joined}): no record; the rows after it are read"
    return (
        f"is a header row naming other columns ({joined}): no record; the rows after it "
        "are read under its columns"
    )


def _jsonl(
    text: TextIO, opt_ins: bool | None = None, mapping: Mapping | None = None
) -> Iterator[Read | Unreadable | Skipped]:
    for item in _jsonl_all(text, opt_ins, Mapping() if mapping is None else mapping):
        if opt_ins is None or _typed_opt_in(item) == opt_ins:
            yield item


def _json_kind(value: Any) -> str:
    """What a JSON value that is no string is, as its writer would call it (its
    digits are not shown: a number of thousands of them has no short text)."""
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "a number"


def _typed_opt_in(item: Read | Unreadable | Skipped) -> bool:
    if isinstance(item, Unreadable | Skipped):
        return item.opt_in
    return bool(item.record.WhichOneof("record") == "opt_in")


def _jsonl_all(
    text: TextIO, opt_ins: bool | None, mapping: Mapping
) -> Iterator[Read | Unreadable | Skipped]:
    def ours(said: dict[str, Any]) -> dict[str, Any]:
        """What a line that cannot be read said, under our names, for its hold."""
        return mapping.apply(_renamed_as_ours(said, mapping))[0] if mapping else said

    first = True
    for number, raw, whole in _lines(text):
        # Files joined (cat a.jsonl b.jsonl) keep each one's byte-order mark: no content.
        raw = raw.removeprefix("\ufeff")
        if not raw.strip():
            continue
        if first and raw.lstrip().startswith("["):
            # A JSON document (an array of records, on one line or many), not JSON
            # Lines: it would be refused as one record, or each line for another reason.
            where = f"line {number} opens a JSON array"
            raise FormatError(f"{where}: the file must be JSON Lines, one object a line")
        # A pretty-printed export (jq without -c) read line by line lost each opt-out
        # in its fragments, held by nothing, while one-line opt-ins went in.
        if raw.strip() == "{":  # no JSON line can only open an object
            raise _over_lines(number, "opens", first)
        at_first, first = first, False
        if not whole:
            reason = f"is longer than {LINE_LIMIT:,} characters, longer than any record"
            yield _refused(
                _loose(ours(_cut_short(raw) or {})), number, "record", reason, mapping=mapping
            )
            continue
        try:
            obj = json.loads(raw, object_pairs_hook=_once, parse_int=_whole, parse_float=Decimal)
        except _Twice as twice:
            try:
                agreed = json.loads(
                    raw, object_pairs_hook=_agreed, parse_int=_whole, parse_float=Decimal
                )
            except json.JSONDecodeError as exc:
                # Objects glued on the line, one naming a field twice: refused (and
                # held) each, as glued objects are below, not the whole file stopped.
                for said in _said(raw, exc):
                    yield _refused(
                        _loose(ours(said)),
                        number,
                        "record",
                        f"is not JSON: {exc.msg}",
                        mapping=mapping,
                    )
                continue
            if not isinstance(agreed, dict):
                yield from _not_an_object(agreed, number, ours, mapping)
                continue
            where = _twice_at(raw) or twice.field
            yield _refused(
                _loose(ours(agreed)), number, where, "is given more than once", mapping=mapping
            )
            continue
        except json.JSONDecodeError as exc:
            if raw.lstrip()[:1] in ('"', "}", "]"):  # a key or an end: an object's inside
                raise _over_lines(number, "is inside", at_first) from None
            # Without the position in the line, so that one mistake groups as one.
            for said in _said(raw, exc):
                yield _refused(
                    _loose(ours(said)), number, "record", f"is not JSON: {exc.msg}", mapping=mapping
                )
            continue
        except ValueError as exc:
            yield Unreadable(number, "record", f"is not JSON: {exc}")
            continue
        except RecursionError:
            # Arrays or objects nested some thousand deep are past what the parser
            # reads: refused as a line, an opt-out held by what it said before them.
            said = _cut_short(raw[: _deep_value_at(raw, 2)]) or {}
            reason = "is not JSON: nested too deeply to be read"
            yield _refused(_loose(ours(said)), number, "record", reason, mapping=mapping)
            continue
        if not isinstance(obj, dict):
            yield from _not_an_object(obj, number, ours, mapping)
            continue
        pieces: list[tuple[dict[str, Any], tuple[str, ...] | None, tuple[str, str] | None]] = []
        renamed = _renamed_as_ours(obj, mapping) if mapping else obj
        apart = _apart_in(renamed) if mapping else None
        for piece, unmapped in _records_of(mapping, renamed) if mapping else [(obj, None)]:
            # A mapped field given apart refuses each record of the line, an opt-in
            # of a subscriber row too: which the line says cannot be told.
            unmapped = apart or unmapped
            # Our keys in other capitals ("Type") are ours, as a header's columns are:
            # read before the type is, or the record went in neither pass. (Under a
            # mapping they were spelt so before it applied; two that clash are not.)
            spelt, clash = as_ours(piece)
            if clash is None:
                piece = dict(zip(spelt, piece.values(), strict=True))
            pieces.append((piece, unmapped, clash))
        rule = mapping.skipped_by(partial(_value_at, obj)) if mapping.skip else None
        says_out = rule is not None and _says_opt_out(renamed)
        # A line whose fields clash may have its type twice: never skipped.
        skips = (
            _skips(rule, [piece for piece, _, clash in pieces if clash is None])
            and all(clash is None for _, _, clash in pieces)
            and apart is None
            and not says_out
        )
        for piece, unmapped, clash in pieces:
            # Of a type given twice apart, an opt-out one names goes in first (``_loose``).
            if not _wanted(piece if clash is None else _loose(piece), opt_ins):
                continue
            if skips:
                assert rule is not None
                yield Skipped(number, rule, _wanted(piece, True))
                continue
            item = _json_record(piece, unmapped, clash, number, mapping)
            yield _unskipped(item, rule, piece, says_out)


def _value_at(obj: dict[str, Any], key: str) -> Any:
    """A JSON line's value of ``key`` (a nested one as ``outer.inner``), found as a
    mapping's column is (``_renamed``)."""
    here = _spelt(obj, key)
    return obj[here] if here is not None else _at_path(obj, key.split("."))


def _json_record(
    obj: dict[str, Any],
    unmapped: tuple[str, ...] | None,
    clash: tuple[str, str] | None,
    number: int,
    mapping: Mapping,
) -> Read | Unreadable:
    """One record of a JSON line, its fields under our names (``_records_of``):
    read, or refused (an opt-out held) for a type unmapped (``unmapped``), two keys
    of one field but for capitals (``clash``), or a field of the wrong kind."""
    if unmapped is not None:  # its type unread, an opt-out-looking one is held
        return _refused(_loose(obj), number, *unmapped, mapping=mapping)
    loose = _loose(obj)  # what an opt-out refused below is held by
    if clash is not None:
        return _refused(loose, number, *clash, mapping=mapping)
    nested = obj.pop("proof", None)
    if nested is not None:
        if not isinstance(nested, dict):
            return _refused(loose, number, "proof", "is not a JSON object", mapping=mapping)
        spelt, clash = as_ours(f"proof.{k}" for k in nested)
        if clash is not None:
            return _refused(loose, number, *clash, mapping=mapping)
        flat = dict(zip(spelt, nested.values(), strict=True))
        both = sorted(k for k in flat if k in obj)
        if both:
            return _refused(
                loose, number, both[0], "is given both nested and flat", mapping=mapping
            )
        obj.update(flat)
    unknown = sorted(k for k in obj if k not in FIELDS)
    if unknown:
        reason = "is no field of an import record"
        return _refused(loose, number, _shown(unknown[0]), reason, mapping=mapping)
    for name in _TIMES:
        if name in obj:
            obj[name] = _time_written(obj[name])
    bad = next((k for k, v in obj.items() if v is not None and not isinstance(v, str)), None)
    if bad is not None:
        reason = f"must be a string, not {_json_kind(obj[bad])}"
        return _refused(loose, number, bad, reason, mapping=mapping)
    return parse_fields({k: v for k, v in obj.items() if v}, number, mapping)


_TIMES = ("occurred_at", "proof.registered_at")
"""The fields of a record that hold a time."""


def _time_written(value: Any) -> Any:
    """A JSON number given for a time as the text of its digits, so that it is read
    as the same count written as a string is: with ``--time-format`` epoch-s or
    epoch-ms read, else refused as such a string is. A number written as a float
    (a fraction, ".0", an exponent) is text that is no count, as its string is:
    ``Decimal`` reads 1.706041141103E+12 as a whole number, so it is written with
    its exponent. Anything else (true or false, an array) as it is, refused as no
    string."""
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        return value
    text = str(value)
    # A whole number past what ``_whole`` turns into an int is a ``Decimal`` too.
    whole = _DIGITS.fullmatch(text.removeprefix("-")) is not None
    if isinstance(value, Decimal) and whole and len(text) <= sys.get_int_max_str_digits():
        return f"{value:e}"
    return text


def _skips(rule: str | None, records: list[dict[str, Any]]) -> bool:
    """Whether a row that matched the skip ``rule`` (None: none) is skipped, its
    records' fields as ``records``: not when any of them reads as an opt-out (typed
    so, by its column, a value mapped or ``--set type=opt_out``; a subscriber row's
    opt-out). A skip that meets one is a mistake in the skip, or in the export, and
    an opt-out left out would leave its number open to texts."""
    return rule is not None and not any(_opts_out(fields) for fields in records)


def _opts_out(fields: dict[str, Any]) -> bool:
    kind = fields.get("type")
    return isinstance(kind, str) and _kind({"type": kind}) == "opt_out"


def _says_opt_out(said: dict[str, Any]) -> bool:
    """Whether a row's type as the export wrote it (its fields under our names, no
    value mapped yet) says an opt-out in plain words (``reads_as_opt_out``): an
    "unsubscribed" that no ``--value`` maps is refused and held, never skipped for
    a match in another column."""
    return any(
        isinstance(v, str) and reads_as_opt_out(v)
        for k, v in said.items()
        if _field_spelt(k) == "type"
    )


def _unskipped(
    item: Read | Unreadable, rule: str | None, fields: dict[str, Any], says_out: bool = False
) -> Read | Unreadable:
    """``item``, read from the fields ``fields`` of a row that matched ``rule`` and was
    not skipped, marked as such when it is the opt-out that kept the row, by its type
    or by the words its type was written in (``says_out``; the summary counts those)."""
    if rule is None or not (_opts_out(fields) or says_out):
        return item
    return dataclasses.replace(item, unskipped=rule)


def _records_of(
    mapping: Mapping, fields: dict[str, Any]
) -> list[tuple[dict[str, Any], tuple[str, ...] | None]]:
    """A row's records (under our names, the mapping applied; ``Mapping.apply``): one,
    or with ``subscriber_rows`` its opt-in and, when its opt-out time is given, its
    opt-out, each without the other type's fields. A row with no opt-in time is its
    opt-out alone. An opt-in not before its row's opt-out is refused: the row says
    the subscriber opted out, and a time wrong in the export (or a return the export
    does not date) must not leave the number allowed."""
    if not mapping.subscriber_rows:
        return [mapping.apply(fields)]
    opt_in_at = fields.get(f"occurred_at{TYPED}opt_in")
    opt_out_at = fields.get(f"occurred_at{TYPED}opt_out")
    kinds = ["opt_in"] if _given(opt_in_at) or not _given(opt_out_at) else []
    if _given(opt_out_at):
        kinds.append("opt_out")
    out = []
    for kind in kinds:
        # A nested proof under our own name (JSON) is an opt-in's as its fields are.
        own = {
            k: v
            for k, v in fields.items()
            if BELONGS.get(k, "opt_in" if k == "proof" else kind) == kind
        }
        record, read_as = mapping.apply({**own, "type": kind})
        problem: tuple[str, ...] | None = read_as
        if kind == "opt_in" and problem is None and "opt_out" in kinds:
            problem = _opt_out_first(opt_in_at, opt_out_at, mapping, record)
        out.append((record, problem))
    return out


def _given(value: Any) -> bool:
    """Whether a subscriber row's time is given: a cell of spaces is empty, as a
    blank row is; anything else, even what is no time, is read (and refused)."""
    return value is not None and (not isinstance(value, str) or bool(value.strip()))


def _opt_out_first(
    opt_in_at: Any, opt_out_at: Any, mapping: Mapping, record: dict[str, Any]
) -> tuple[str, str, str] | None:
    """Why a subscriber row's opt-in (``record``) is refused, its opt-out being no
    later, and the import id it would have (empty if it could not be read), or None
    (a time that cannot be read is refused on its own record)."""
    opt_in_at, opt_out_at = _time_written(opt_in_at), _time_written(opt_out_at)
    try:
        opted_in = _time(opt_in_at, "occurred_at", mapping).ToDatetime()
        opted_out = _time(opt_out_at, "occurred_at", mapping).ToDatetime()
    except (_Bad, AttributeError, TypeError):
        return None
    if opted_in < opted_out:
        return None
    column = mapping.shown("occurred_at", "opt_out")
    return (
        "occurred_at",
        f"is not before the opt-out's time in its row ({column}, {opt_out_at.strip()!r}): "
        "the row is read as opted out, its opt-out imported and this opt-in refused, so "
        "that no time wrong in the export allows the number; import a later opt-in as a "
        "record of its own",
        _import_id_of(record, mapping),
    )


def _import_id_of(record: dict[str, Any], mapping: Mapping) -> str:
    """The import id an opt-in of ``record``'s fields (a JSON line's proof perhaps
    nested) is imported under, or empty for one that would be refused anyway."""
    flat = dict(record)
    nested = flat.pop("proof", None)
    if isinstance(nested, dict):
        flat.update((f"proof.{k}", v) for k, v in nested.items())
    elif nested is not None:
        return ""
    flat.update((name, _time_written(flat[name])) for name in _TIMES if name in flat)
    if any(k not in FIELDS or not isinstance(v, str | None) for k, v in flat.items()):
        return ""
    read = parse_fields({k: v for k, v in flat.items() if v}, 0, mapping)
    return read.record.opt_in.request_id if isinstance(read, Read) else ""


def _over_lines(number: int, how: str, first: bool) -> FormatError:
    """The file refused at line ``number`` (``how``: "opens" or "is inside" a JSON
    object written over several lines): whole before any record was read, else
    from that line on, the opt-outs before it imported and no opt-in."""
    where = f"line {number} {how} a JSON object written over several lines (pretty-printed?)"
    said = f"{where}: the file must be JSON Lines, one object a line (jq -c writes so)"
    return FormatError(said) if first else Stopped(said + STOPPED)


def _renamed(obj: dict[str, Any], mapping: Mapping) -> dict[str, Any]:
    """A JSON record with each mapped key (a nested one as ``outer.inner``, unless a
    key spelt so is there) moved to our field's name; a nested object left empty by
    that is dropped, so that its keys are not read as fields no record has. A key is
    found as the header's columns are (``Mapping.fitted``), in each line: JSON Lines
    have no one header, and a line may spell a key as no other does."""
    out = dict(obj)
    found: dict[str, Any] = {}
    keys: dict[str, list[str]] = {}  # the line's keys, each under its loose spelling
    for k in obj:
        keys.setdefault(_loosely(k), []).append(k)
    for name, key in mapping.columns.items():  # one key may give two fields
        # Spelt out as a key of its own (``outer.inner`` too), and nested.
        given = [obj[k] for k in keys.get(_loosely(key), ())]
        if "." in key:
            head, *rest = key.split(".")
            given += [v for k in keys.get(_loosely(head), ()) for v in _all_at(obj[k], rest)]
        apart = [v for i, v in enumerate(given) if v not in given[:i]]
        found[name] = _Apart(key, apart) if len(apart) > 1 else next(iter(apart), None)
    for key in set(mapping.columns.values()) | mapping.ignored:
        if (here := _spelt(out, key)) is not None:
            del out[here]
        else:
            _pop_path(out, key.split("."))
    out.update((name, value) for name, value in found.items() if value is not None)
    return out


def _renamed_as_ours(obj: dict[str, Any], mapping: Mapping) -> dict[str, Any]:
    """A JSON record ``_renamed``, and each key left that is one of our fields in other
    capitals spelt as ours (``as_ours``), as a CSV header's columns are before the
    mapping applies: else ``--value type:...`` and ``--set`` read past a ``"TYPE"``,
    and an opt-out mapped under ``"type"`` was refused under ``"TYPE"``. A nested
    proof's fields are spelt out as ``proof.name`` too, so that ``--value proof.*``
    maps them as a CSV column's. Keys that clash (a proof given nested and flat as
    well) are left as they are, refused when the record is read."""
    renamed = _renamed(obj, mapping)
    spelt, clash = as_ours(renamed)
    if clash is not None:
        return renamed
    out = dict(zip(spelt, renamed.values(), strict=True))
    nested = out.get("proof")
    if isinstance(nested, dict):
        flat, clash = as_ours(f"proof.{k}" for k in nested)
        if clash is None and not any(name in out for name in flat):
            del out["proof"]
            out.update(zip(flat, nested.values(), strict=True))
    return out


class _Apart(str):
    """A mapped key's values where a JSON line gives it more than once, apart (in
    other capitals, or nested and spelt out as ``outer.inner`` too): read as one
    value that is none of them, refused (``_jsonl``), and, whatever field it is, an
    opt-out the line may be held as one whose field cannot be read. Taking the one
    spelt as mapped left a nested "unsubscribed" dropped and its line an opt-in."""

    key: str

    def __new__(cls, key: str, values: list[Any]) -> _Apart:
        shown = [v if isinstance(v, str) else json.dumps(v, default=str) for v in values]
        made = super().__new__(cls, ", ".join(shown))
        made.key = key
        return made

    @property
    def reason(self) -> str:
        how = "in other capitals"
        if "." in self.key:
            how = f"nested and as {self.key!r} too, or {how}"
        return (
            f"is given more than once in the line with other values ({how}); which to "
            "read cannot be told"
        )


def _apart_in(fields: dict[str, Any]) -> tuple[str, str] | None:
    """The first field of a JSON line's record given more than once apart (``_Apart``),
    and why it is refused, or None."""
    for name, value in fields.items():
        if isinstance(value, _Apart):
            return name, value.reason
    return None


def _all_at(obj: Any, path: list[str]) -> list[Any]:
    """Every value a JSON object gives at ``path``, its key at each level found as
    ``_spelt`` finds one, or as any other key equal to it but for spaces and capitals."""
    if not path:
        return [obj]
    if not isinstance(obj, dict):
        return []
    head, rest = path[0], path[1:]
    return [
        v for k, inner in obj.items() if _loosely(k) == _loosely(head) for v in _all_at(inner, rest)
    ]


_loosely = lru_cache(maxsize=4_096)(loosely)
"""``loosely``, kept: a JSON Lines file spells its keys alike line after line."""


def _spelt(obj: dict[str, Any], key: str) -> str | None:
    """``key`` as ``obj`` spells it: itself, else the one key equal to it but for
    spaces around it and capitals, else None."""
    if key in obj:
        return key
    near = [k for k in obj if loosely(k) == loosely(key)]
    return near[0] if len(near) == 1 else None


def _at_path(obj: dict[str, Any], path: list[str]) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        here = _spelt(obj, key)
        obj = None if here is None else obj[here]  # type: ignore[assignment]
    return obj


def _pop_path(obj: dict[str, Any], path: list[str]) -> Any:
    """The value at ``path`` inside ``obj``, taken out of a copy of each object on
    the way (the record's own objects are not changed), or None."""
    key, *rest = path
    head = _spelt(obj, key)
    if head is None:
        return None
    inner = obj.get(head)
    if not rest:
        return obj.pop(head, None)
    if not isinstance(inner, dict):
        return None
    inner = dict(inner)
    value = _pop_path(inner, rest)
    if inner:
        obj[head] = inner
    else:
        del obj[head]
    return value


def json_keys(text: TextIO) -> set[str]:
    """Every key of ``text``'s JSON lines, a nested one also as ``outer.inner``: what
    a mapping's columns are checked against (``Mapping.check_header``) before any
    record is read. A line that is no JSON object is passed over here."""
    keys: set[str] = set()
    for _, raw, whole in _lines(text):
        if not whole:
            continue
        try:
            obj = json.loads(raw.removeprefix("\ufeff"), parse_float=Decimal)
        except ValueError:
            continue
        pending = [("", obj)] if isinstance(obj, dict) else []
        while pending:
            prefix, inner = pending.pop()
            for key, value in inner.items():
                keys.add(prefix + key)
                if isinstance(value, dict):
                    pending.append((f"{prefix}{key}.", value))
    return keys


LINE_LIMIT = 1 << 20
"""Characters of a JSON line read: far more than any record holds (``VALUE_LIMIT``,
``TEXT_LIMITS``, escaped). A longer line is refused by what its first characters
say, and the rest of it skipped unkept, so that memory does not grow with a line."""


def _lines(text: TextIO) -> Iterator[tuple[int, str, bool]]:
    """Each line's number, its first ``LINE_LIMIT`` characters, and whether that is
    the whole line."""
    number = 0
    while line := text.readline(LINE_LIMIT):
        number += 1
        whole = len(line) < LINE_LIMIT or line.endswith(("\n", "\r"))
        rest = line
        while not rest.endswith(("\n", "\r")) and (rest := text.readline(LINE_LIMIT)):
            pass
        yield number, line, whole


class _Twice(ValueError):
    def __init__(self, field: str) -> None:
        super().__init__(f"{field} is given more than once")
        self.field = field


def _once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refusing a key given twice (``json`` would keep the last
    value and drop the other silently)."""
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _Twice(key if key in FIELDS or key not in PROOF_FIELDS else f"proof.{key}")
        obj[key] = value
    return obj


class _Pairs(list[tuple[str, Any]]):
    """A JSON object's keys and values as written, repeats kept."""


def _twice_at(raw: str) -> str | None:
    """The key given twice on a JSON line, a nested one as ``outer.inner``, as a
    mapping names it: ``_once`` sees a key without the objects around it, and a
    nested "at" repeated is not the line's own "at"."""
    try:
        line = json.loads(raw, object_pairs_hook=_Pairs, parse_int=_whole, parse_float=Decimal)
    except ValueError:
        return None

    def found(value: Any, prefix: str) -> str | None:
        if isinstance(value, _Pairs):
            keys = [key for key, _ in value]
            twice = next((key for i, key in enumerate(keys) if key in keys[:i]), None)
            if twice is not None:
                return prefix + twice
            inner = (found(v, f"{prefix}{k}.") for k, v in value)
        elif isinstance(value, list):
            inner = (found(v, prefix) for v in value)
        else:
            return None
        return next((path for path in inner if path is not None), None)

    return found(line, "")


def _agreed(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys given twice keep their value only when both say the
    same: of two numbers, or two types, which was meant cannot be told."""
    obj: dict[str, Any] = {}
    differ = set()
    for key, value in pairs:
        if key in obj and obj[key] != value:
            differ.add(key)
        obj.setdefault(key, value)
    return {k: v for k, v in obj.items() if k not in differ}


def _whole(digits: str) -> int | Decimal:
    """A JSON whole number; one past what Python turns into an int (4,300 digits) as
    a ``Decimal``, refused as any number given for text is, rather than the whole
    line with Python's advice to raise its limit."""
    try:
        return int(digits)
    except ValueError:
        return Decimal(digits)


_BETWEEN_OBJECTS = re.compile(r"[\s,]*")


def _said(raw: str, exc: json.JSONDecodeError) -> list[dict[str, Any]]:
    """What a JSON line that is no one object said, for an opt-out on it to be held:
    each object of a line that holds several one after another (``cat`` of exports
    whose first did not end its last line), else what it said before the mistake (a
    line cut short, a comma left before its closing brace). Refused as "is not JSON"
    and held by nothing, each opt-out on it left its number allowed."""
    decoder = json.JSONDecoder(object_pairs_hook=_agreed, parse_int=_whole, parse_float=Decimal)
    objects: list[dict[str, Any]] = []
    at = _past_separators(raw, 0)
    while exc.msg == "Extra data" and at < len(raw):
        try:
            value, at = decoder.raw_decode(raw, at)
        except ValueError:
            break
        if not isinstance(value, dict):
            break
        objects.append(value)
        at = _past_separators(raw, at)
    return objects or [_cut_short(raw) or _cut_short(raw[: exc.pos]) or {}]


def _objects_in(value: Any) -> list[dict[str, Any]]:
    """The objects of a JSON line that is an array rather than one object."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _not_an_object(
    value: Any, line: int, ours: Callable[[dict[str, Any]], dict[str, Any]], mapping: Mapping
) -> Iterator[Unreadable]:
    """A JSON line that is no object, refused: an array of records (a JSON export
    joined to JSON Lines) each object in it, an opt-out among them held by what it
    says, as objects glued on a line are, not dropped unheld."""
    objects = _objects_in(value)
    for said in objects:
        yield _refused(_loose(ours(said)), line, "record", "is not a JSON object", mapping=mapping)
    if not objects:
        yield Unreadable(line, "record", "is not a JSON object")


def _deep_value_at(raw: str, depth: int) -> int:
    """Where the value of a JSON line's object that nests deeper than ``depth`` (the
    record, then its proof) begins, outside strings; the line's length when none."""
    level, quoted, escaped, value_at = 0, False, False, len(raw)
    for at, char in enumerate(raw):
        if quoted:
            quoted = char != '"' or escaped  # a quote escaped does not close the string
            escaped = char == "\\" and not escaped
        elif char == '"':
            quoted = True
        elif char in "[{":
            level += 1
            if level == 2:
                value_at = at
            elif level > depth:
                return value_at
        elif char in "]}":
            level -= 1
    return len(raw)


def _past_separators(raw: str, at: int) -> int:
    found = _BETWEEN_OBJECTS.match(raw, at)
    return found.end() if found else at


def _cut_short(raw: str) -> dict[str, Any] | None:
    """What a JSON line cut short (an export stopped mid-write) said before the cut:
    the object closed where the line stops, less its last value unless that one
    plainly ended (a string's closing quote, a comma after it), for the cut may
    have shortened it (a number's last digits). None when it is no such line."""
    head = raw.rstrip()
    ended = head.endswith((",", '"'))
    head = head.removesuffix(",")
    for nested in ("", "}"):  # cut inside the proof, or not
        for closing in ("}", '"}', '":null}', ":null}", "null}"):
            try:
                obj = json.loads(
                    head + closing + nested,
                    object_pairs_hook=_agreed,
                    parse_int=_whole,
                    parse_float=Decimal,
                )
            except ValueError:
                continue
            if not isinstance(obj, dict) or not obj:
                return None
            if not (ended and closing == "}"):
                obj.popitem()
            return obj
    return None


def _loose(obj: dict[str, Any]) -> dict[str, str]:
    """A JSON record that will be refused, as fields: its text, its whole numbers as
    written (a phone number given as a number) and a nested proof's, for ``_held``."""
    fields: dict[str, str] = {}
    for given, value in obj.items():
        key = _field_spelt(given)
        if key != given and key in obj:
            continue  # the field is given as named too: that value is the one read
        if key == "proof" and isinstance(value, dict):
            fields.update(_loose({f"proof.{k}": v for k, v in value.items()}))
        elif isinstance(value, str) and value:
            fields[key] = value
        elif isinstance(value, int) and not isinstance(value, bool):
            fields[key] = str(value)
        elif isinstance(value, Decimal) and _whole_as_written(value):
            # 14155552671.0, as a float column writes a number: its digits are all
            # there (unlike 1.4155E+10's), and the hold reads them through the ".0".
            fields[key] = str(value)
        elif key != "proof" and isinstance(value, list | dict) and (inside := _texts_in(value)):
            # ["+14155552671"] or {"e164": "+14155552671"}: dropped, the opt-out was
            # held under no number while the number's opt-in stood. The hold reads
            # each number the value holds.
            fields[key] = ", ".join(inside)
    # A type given in two spellings that differ ("type": "opt_in", "TYPE": "opt_out")
    # is neither read, but an opt-out one of them names is held as one: kept to the
    # one spelt as ours, the opt-out went unheld while the opt-in before it stood.
    kinds = {
        _kind({"type": v}) if isinstance(v, str) else repr(v)
        for k, v in obj.items()
        if _field_spelt(k) == "type"
    }
    if len(kinds) > 1:
        fields.pop("type", None)
        if "opt_out" in kinds:
            fields["type"] = "opt_out"
    return fields


def _field_spelt(key: str) -> str:
    """The field a refused JSON line's ``key`` spells, read loosely (" phone",
    "TYPE ", " Brand"); else ``key``. Another tool's padding left its opt-out held
    under no number, though the line names it; the line stays refused for the key
    (capitals alone are read as ours, ``as_ours``)."""
    loose = key.strip().lower()
    return loose if loose in FIELDS or loose == "proof" else key


def _texts_in(value: list[Any] | dict[str, Any]) -> list[str]:
    """The texts and whole numbers a JSON array or object holds, at any depth (walked
    without recursion: a line may nest as deep as the JSON reader allows)."""
    texts: list[str] = []
    pending: list[Any] = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict | list):
            inner = item.values() if isinstance(item, dict) else item
            pending.extend(reversed(list(inner)))
        elif plain := _loose({"value": item}).get("value"):
            texts.append(plain)
    return texts


def _whole_as_written(value: Decimal) -> bool:
    """Whether ``value`` is a whole number with every digit written out."""
    exponent = value.as_tuple().exponent
    return isinstance(exponent, int) and exponent <= 0 and value == value.to_integral_value()


def parse_fields(fields: dict[str, str], line: int, mapping: Mapping = _PLAIN) -> Read | Unreadable:
    """One record's fields (empty ones left out) as an ``ImportRecord``, its free
    text as read (``as_read``), its number and times as ``mapping`` says the export
    writes them (``Mapping.phone_region``, ``Mapping.time_zone``,
    ``Mapping.time_format``)."""
    written = fields
    fields = {name: text for name, value in fields.items() if (text := as_read(name, value))}
    kind = _kind(fields)
    if kind not in ("opt_in", "opt_out"):
        given = fields.get("type", "")
        odd = _SURROGATE.search(given)
        if not given.strip():  # a cell of spaces is none, as a mapped one is
            reason = "is required, and was left blank: opt_in or opt_out"
        elif odd is not None:
            reason = _not_text(odd.group())
        else:
            reason = f"must be opt_in or opt_out, not {quoted(given)}"
        return _refused(fields, line, "type", reason, mapping=mapping)
    read = _parse(kind, fields, line, mapping)
    if isinstance(read, Unreadable):
        return _refused(fields, read.line, read.field, read.reason, mapping=mapping)
    return _hashed_as_written(read, written.get("proof.consent_text"))


def _hashed_as_written(read: Read, written: str | None) -> Read:
    """``read`` with its consent text as the export wrote it, padding and CR line ends
    kept, when the record's ``consent_text_sha256`` is that text's digest: the text
    stored must still match its digest for an auditor to check it. Its id stays the
    one derived from the text as read, so another writing of the export finds it."""
    if not read.record.HasField("opt_in") or written is None:
        return read
    proof = read.record.opt_in.proof
    if written == proof.consent_text or not _fits("proof.consent_text", written):
        return read
    if hashlib.sha256(written.encode()).hexdigest() == proof.consent_text_sha256:
        proof.consent_text = written
    return read


_FREE_TEXT = frozenset({"text", *(f"proof.{name}" for name in PROOF_FIELDS)})
"""Fields of free text: the spaces around their value and how its lines end are the
writing of the export (a padded cell, a file converted to CR LF line ends), not
what the person said or was shown."""


_SPACES = "".join(
    [" \t\n\xa0\u1680", *map(chr, range(0x2000, 0x200B)), "\u2028\u2029\u202f\u205f\u3000"]
)
"""The spaces and line ends trimmed from around free text: ``str.strip``'s whitespace
but for the control characters it counts as such (NEL, the C0 separators, a form
feed), which the service refuses in free text, as the import must then."""


def as_read(name: str, value: str) -> str:
    """``value`` of field ``name`` as it is imported: free text without the spaces
    around it, its lines ended by LF, and a proof's value as the ledger reads it
    (empty when it says nothing). The same text written so another time is then
    the same record, under the same derived import id, and present on a re-run;
    identifiers (``import_id``, ``brand``, ``campaign``, ``in_reply_to``) are matched
    whole and refused when padded, as the service refuses them."""
    if name not in _FREE_TEXT:
        return value
    text = value.replace("\r\n", "\n").replace("\r", "\n").strip(_SPACES)
    proof = name.removeprefix("proof.")
    if name == "text" or proof == "registered_at" or not _fits(name, text):
        return text
    # As the ledger reads a proof: a placeholder ("N/A") is no value, a region its
    # USPS code, a digest's hex digits in either case one digest.
    if says_nothing(text, proof):
        return ""
    if proof == "region":
        return normalise_region(text) or text
    if proof.endswith("_sha256") and _HEX_DIGEST.fullmatch(text):
        return text.lower()
    return text


_HEX_DIGEST = re.compile(r"[0-9A-Fa-f]{64}")


def _fits(name: str, text: str) -> bool:
    """Whether ``text`` is within ``name``'s length and holds no control character:
    one that is not is refused as written, never read as a placeholder and dropped."""
    return len(text) <= TEXT_LIMITS.get(name, VALUE_LIMIT) and text_problem(text, name) is None


def _kind(fields: dict[str, str]) -> str:
    return fields.get("type", "").strip().lower().replace("-", "_")


def _refused(
    fields: dict[str, str],
    line: int,
    field: str,
    reason: str,
    opted_out_id: str = "",
    *,
    mapping: Mapping = _PLAIN,
) -> Unreadable:
    """A record that cannot be read, held (``_held``) if it may be an opt-out: one
    typed so, or one whose type cannot be read ("optout", "unsubscribe", none),
    unless it says only what an opt-in says (a misspelt opt-in stays refused).
    ``opted_out_id``: see ``Unreadable.opted_out_id``."""
    kind = _kind(fields)
    opt_in_only = any(f in fields for f in OPT_IN_FIELDS) and not any(
        f in fields for f in OPT_OUT_FIELDS
    )
    given = fields.get("import_id", "")
    # An id past reading (too long, not text) is none: it could not be imported either.
    import_id = given if len(given) <= VALUE_LIMIT and not _SURROGATE.search(given) else ""
    read = kind if kind in ("opt_in", "opt_out") else ""
    derived = "" if import_id else _said_id(fields, mapping)
    if kind == "opt_in" or (kind != "opt_out" and opt_in_only):
        return Unreadable(
            line,
            field,
            reason,
            opt_in=kind == "opt_in",
            import_id=import_id,
            kind=read,
            derived_id=derived,
            opted_out_id=opted_out_id,
        )
    held = _held(fields, mapping)
    return Unreadable(line, field, reason, held, import_id=import_id, kind=read, derived_id=derived)


def _held(fields: dict[str, str], mapping: Mapping) -> api.ImportRecord | None:
    """What the service may hold of an opt-out that cannot be read: its number,
    brand and campaign, under its import id or one derived from all it said (the
    same on every run). Without a channel or a time it is refused, and held. None
    when its number is not text of a sane length: nothing to hold. A brand left
    out or past reading is sent blank: the service holds it under each of the
    caller's brands, one of which it was."""
    plain = {k: v for k, v in fields.items() if len(v) <= VALUE_LIMIT and not _SURROGATE.search(v)}
    phone = fields.get("phone", "") or _named_elsewhere(fields)
    if not phone or len(phone) > VALUE_LIMIT:
        return None
    # A byte of a number that is not UTF-8 is no digit: a Windows export's no-break
    # space or en dash between its groups (0xA0, 0x96). Read as a space, the number's
    # digits are all there; dropped, the STOP was lost while its opt-in stood.
    phone = _SURROGATE.sub(" ", phone)
    if not phone.strip():
        return None
    brand = plain.get("brand", "")
    request = api.RecordOptOutRequest(
        phone=e164_or_as_given(phone, mapping.phone_region), brand=brand
    )
    if "campaign" in plain:
        request.campaign = plain["campaign"]
    try:  # where the hold goes, if it can be read (the service ignores a bad one)
        request.occurred_at.CopyFrom(_time(plain.get("occurred_at", ""), "occurred_at", mapping))
    except _Bad:
        request.ClearField("occurred_at")
    request.request_id = plain.get("import_id") or _said_id(fields, mapping)
    return api.ImportRecord(opt_out=request)


def _said_id(fields: dict[str, str], mapping: Mapping) -> str:
    """The import id of a record that cannot be read and gives none of its own: a
    digest of all it said, written as read (``_as_said``). An opt-out is held under
    it; any such record is named by it in the refusals, the same on every run."""
    said = json.dumps(sorted(_as_said(fields, mapping).items())).encode()  # lone surrogates escaped
    return f"import-{hashlib.sha256(said).hexdigest()[:32]}"


def _as_said(fields: dict[str, str], mapping: Mapping) -> dict[str, str]:
    """A held record's fields, each that reads written as read (its number in E.164,
    a time in UTC as ``...Z``, a type or enumeration by its short name, free text as
    ``as_read``), the rest as given: the id derived from them is the same for the same
    opt-out written another way, so a re-run holds nothing new. A field written so
    already is left as it was, and so is the id of a record whose fields all are."""
    out = {}
    for name, value in fields.items():
        if name == "phone":
            value = e164_or_as_given(value, mapping.phone_region)
        elif name == "type":
            kind = _kind({"type": value})
            value = kind if kind in ("opt_in", "opt_out") else value
        elif name in ("occurred_at", "proof.registered_at") or name in _ENUMS:
            with contextlib.suppress(_Bad):
                value = _written(name, value, mapping)
        else:
            value = as_read(name, value)
        if value:  # a cell of spaces is none, as it is in a record read
            out[name] = value
    return out


def _written(name: str, value: str, mapping: Mapping) -> str:
    """A time or enumeration as the README writes it: ``2026-11-02T09:30:00Z``,
    ``keyword``. Raises ``_Bad`` for one that does not read."""
    if name in _ENUMS:
        enum, prefix = _ENUMS[name]
        return str(enum.Name(_enum(name, value))).removeprefix(prefix).lower()
    when = _time(value, name, mapping).ToDatetime(tzinfo=UTC)
    return when.isoformat().replace("+00:00", "Z")


def _named_elsewhere(fields: dict[str, str]) -> str:
    """A JSON line's values under keys no record has ("phone_number", "msisdn", a
    record nested under "data"), for the service to read the numbers they name, when
    the line gives no "phone": held under none, its opt-out was dropped while the
    number's opt-in, on a line of its own, stood. At most ``VALUE_LIMIT`` characters."""
    said = ""
    for key, value in fields.items():
        if key in FIELDS or len(said) + len(value) + 2 > VALUE_LIMIT:
            continue
        said = f"{said}, {value}" if said else value
    return said


def _parse(kind: str, fields: dict[str, str], line: int, mapping: Mapping) -> Read | Unreadable:
    own, other = (
        (OPT_IN_FIELDS, OPT_OUT_FIELDS) if kind == "opt_in" else (OPT_OUT_FIELDS, OPT_IN_FIELDS)
    )
    stray = next((f for f in other if f in fields), None)
    if stray is not None:
        return Unreadable(line, stray, f"is no field of an {kind}")
    for name, given in fields.items():
        odd = _SURROGATE.search(given)
        if odd is not None:
            return Unreadable(line, name, _not_text(odd.group()))
        if name == "proof.region" and (problem := text_problem(given, name)) is not None:
            # Said before the service reads it as a code, whose reason quotes it as
            # Python writes it ('a\\x00b').
            return Unreadable(line, name, problem)
        if name in TEXT_LIMITS:
            try:
                check_length(given, name)  # the service's own check, in its words
            except InvalidRequest as too_long:
                return Unreadable(line, name, too_long.violations[0][1])
        elif len(given) > VALUE_LIMIT:
            return Unreadable(
                line, name, f"is {len(given):,} characters long, longer than any {name}"
            )
    try:
        values: dict[str, Any] = {}
        for name in ("phone", "brand"):
            values[name] = fields.get(name, "")
        if mapping.phone_region:
            values["phone"] = _in_region(values["phone"], mapping.phone_region)
        if "occurred_at" in fields:
            values["occurred_at"] = _time(fields["occurred_at"], "occurred_at", mapping)
        for name in own:
            if name in fields and not name.startswith("proof."):
                values[name] = _enum(name, fields[name]) if name in _ENUMS else fields[name]
        if values.get("source") == lpb.LIST_SOURCE_FIRST_PARTY:
            del values["source"]  # the default, as the service reads a source not given
        if kind == "opt_in":
            values["campaign"] = fields.get("campaign", "")
            proof: dict[str, Any] = {}
            for name in PROOF_FIELDS:
                value = fields.get(f"proof.{name}")
                if value is not None:
                    proof[name] = (
                        _time(value, "proof.registered_at", mapping)
                        if name == "registered_at"
                        else value
                    )
            message: Any = api.RecordOptInRequest(**values, proof=lpb.ConsentProof(**proof))
            record = api.ImportRecord(opt_in=message)
        else:
            if "campaign" in fields:  # none: every campaign of the brand (STOPALL)
                values["campaign"] = fields["campaign"]
            message = api.RecordOptOutRequest(**values)
            record = api.ImportRecord(opt_out=message)
    except _Bad as bad:
        return Unreadable(line, bad.field, bad.reason)
    # Set on the record's own copy of the request (the constructor copied it in).
    request = getattr(record, kind)
    if "import_id" in fields:
        request.request_id = fields["import_id"]
    else:
        request.phone = e164_or_as_given(request.phone, mapping.phone_region)
        request.request_id = derived_import_id(record)
        return Read(line, record, id_derived=True)
    return Read(line, record)


_E164 = re.compile(r"\+[1-9][0-9]{1,14}")


def e164_or_as_given(phone: str, region: str = "") -> str:
    """``phone`` in E.164 when it is a valid number written another way (with
    ``region``, one without its country code read as that region's), else as
    written (the service refuses it, in its own words). One already in E.164's form
    is not parsed again: most exports write every number so."""
    if _E164.fullmatch(phone):
        return phone
    try:
        return to_e164(phone, default_region=_region_of(phone, region))
    except DomainError:
        return phone


def _region_of(phone: str, region: str) -> str | None:
    """The region ``phone`` is read in: ``region`` (``--phone-region``) for a number
    written without a leading +, none for one with it, read as it always is."""
    if not region or _with_country_code(phone):
        return None
    return region


def _with_country_code(phone: str) -> bool:
    return phone.lstrip(_SPACES).startswith(("+", "\uff0b"))


def national(phone: str) -> bool:
    """Whether ``phone`` is written as a number without its country code, which only
    ``--phone-region`` reads: digits with no leading +, and no letter (a number of
    letters no region reads), and no control character, which the service refuses
    a number for however it is read."""
    return (
        not _with_country_code(phone)
        and any(c.isdecimal() for c in phone)
        and not any(c.isalpha() or unicodedata.category(c) == "Cc" for c in phone)
    )


def _in_region(phone: str, region: str) -> str:
    """A record's number read in ``region`` (``--phone-region``) into E.164, when it is
    written without its country code; one with it, or none, as written. Raises
    ``_Bad`` for a number that is not a valid one of ``region``, saying so."""
    if not phone.strip() or _region_of(phone, region) is None:
        return phone
    try:
        return to_e164(phone, default_region=region)
    except DomainError as exc:
        raise _Bad(
            "phone", f"{exc.reason}; read as a number of {region} (--phone-region)"
        ) from None


_SURROGATE = re.compile("[\ud800-\udfff]")


_SHOWN_LIMIT = 60
"""Characters of a value a reason quotes: one longer is shown by its start and its
length, so that a refusal stays one line of a summary."""


def quoted(text: str) -> str:
    """``text`` quoted as the file has it, for a reason: a character that prints as
    nothing or moves the line (a control character, a byte that is not UTF-8) shown
    by its code point, as ``<U+0000>``, and no more than ``_SHOWN_LIMIT`` characters of
    it. Python's repr showed ``'a\\x00b'``, and a value of 20,000 characters whole."""
    if not text.strip():
        return f"{len(text):,} spaces" if text else "nothing"
    shown = "".join(
        c if c.isprintable() or c == " " else f"<U+{ord(c):04X}>" for c in text[:_SHOWN_LIMIT]
    )
    if len(text) > _SHOWN_LIMIT:
        return f"'{shown}...' ({len(text):,} characters)"
    return f"'{shown}'"


def _not_text(char: str) -> str:
    """Why a value holding ``char`` (a lone surrogate) is no text: a byte of the
    file that is not UTF-8 (``open_text`` reads each as U+DC80-U+DCFF), or a
    JSON escape of half a surrogate pair."""
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:
        return f"holds the byte 0x{code - 0xDC00:02X}, which is not UTF-8 text"
    return f"holds U+{code:04X}, half of a surrogate pair, which is no character"


def _shown(name: str) -> str:
    """A name read from the file, printable in UTF-8: a lone surrogate (a byte that
    is not UTF-8, or half a pair) escaped as ``\\udcff``."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


def derived_import_id(record: api.ImportRecord) -> str:
    """An import id from everything the record says (it has no ``request_id`` yet):
    the same for the same record on every run."""
    digest = hashlib.sha256(record.SerializeToString(deterministic=True)).hexdigest()
    return f"import-{digest[:32]}"


class _Bad(Exception):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


_MINUTE = timedelta(minutes=1)
_WEST, _EAST = timedelta(hours=-12), timedelta(hours=14)
"""The offsets of the world's zones: Baker Island's -12:00, Kiribati's +14:00."""


_COUNT = re.compile(r"[0-9]{9,}(?:\.[0-9]+)?")
"""A time written as a count (Unix seconds or milliseconds): no date of ISO 8601 is
nine digits or more without a separator."""


_UTC_NAMED = re.compile(r"(?<=[0-9]) (?:UTC|GMT)$")
"""A time's zone written as its name, where the name is UTC's."""


def _time(text: str, field: str, mapping: Mapping = _PLAIN) -> Timestamp:
    """``text`` read as a time, as every time of a record is (``occurred_at``, either
    time of ``--subscriber-rows``, ``proof.registered_at``, a held opt-out's, a
    ``--set`` time): as ``mapping.time_format`` writes it when given, else ISO 8601
    or RFC 2822."""
    given = mapping.time_format
    if text and not text.strip():
        raise _Bad(field, f"{_BLANK}, not {'a' if given else 'an ISO 8601'} time")
    if given in EPOCH_UNITS:
        return _counted(text.strip(), field, given)
    if given:
        value = _formatted(text.strip(), field, given)
    elif _COUNT.fullmatch(text.strip()):
        # Read as ISO 8601 some are a date of the 1700s with no zone, and the refusal
        # asked for a zone: what is wrong is that it is a count, not a written time.
        raise _Bad(
            field,
            f"is a number, not a time: {quoted(text)}; a Unix time (seconds or "
            "milliseconds since 1970, which one cannot be told) is read only with "
            "--time-format epoch-s or epoch-ms; else write it in ISO 8601 with a zone, "
            "as 2024-03-05T14:22:10Z",
        )
    else:
        try:
            # RFC 3339 lets the "T" and "Z" be written in lower case, as some exports
            # do; Ruby on Rails writes UTC so ("2024-03-05 14:22:10 UTC"), and its
            # other zones as an offset, which is read.
            value = datetime.fromisoformat(_UTC_NAMED.sub("+00:00", text.strip().upper()))
        except ValueError:
            value = _rfc_2822_time(text.strip(), field)
    if value.tzinfo is None and mapping.time_zone:
        # A format given has a time of day in it (``import_mapping``), however the
        # two are parted ("01/02/2024, 4:00 AM").
        if not given and not _CLOCK.search(text.strip()):
            raise _Bad(field, f"is a date with no time of day: {quoted(text)}")
        value = _in_zone(value, mapping.time_zone, field, text)
    if value.tzinfo is None:
        raise _Bad(field, f"has no time zone (Z or +hh:mm): {quoted(text)}")
    # A corrupt offset moves a fact by up to a day (an opt-out to before the opt-in
    # it revoked): read only those some zone has used since 2000.
    offset = value.utcoffset()
    if offset is not None and (offset % _MINUTE or not _WEST <= offset <= _EAST):
        raise _Bad(
            field,
            f"has an offset no time zone uses (-12:00 to +14:00, whole minutes): {quoted(text)}",
        )
    stamp = Timestamp()
    try:
        stamp.FromDatetime(value)
    except (ValueError, OverflowError):
        raise _Bad(field, f"is out of range: {quoted(text)}") from None
    return stamp


_CLOCK = re.compile(r"[0-9][T ][0-9]")
"""A time of day after a date: a date alone is no moment in any zone."""


def _in_zone(value: datetime, name: str, field: str, text: str) -> datetime:
    """``value``, a time written with no zone or offset of its own, as a time of zone
    ``name`` (``--time-zone``). Refused (``_Bad``), never guessed: a time the zone's
    clocks skipped, and one of the hour they repeat."""
    zone = _zoneinfo(name)
    first, second = value.replace(tzinfo=zone), value.replace(tzinfo=zone, fold=1)
    if first.utcoffset() == second.utcoffset():
        return first
    if first.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != value:
        raise _Bad(
            field,
            f"does not exist in {name}, whose clocks went forward past it: {quoted(text)}; "
            "write it with its offset",
        )
    raise _Bad(
        field,
        f"is in the hour {name} repeats as its clocks go back, and which of the two it "
        f"is cannot be told: {quoted(text)}; write it with its offset",
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DIGITS = re.compile(r"[0-9]+")
_PLAUSIBLE = (datetime(1971, 1, 1, tzinfo=UTC), datetime.max.replace(tzinfo=UTC))
"""The first and last moments a count of ``--time-format`` may name. A count of
milliseconds read as seconds lands past the year 9999; one of seconds read as
milliseconds, in 1970 (ten digits, as today's seconds are, are 115 days of
milliseconds): neither is a consent's time, so such a count is refused, never
read in the other unit."""


def _counted(text: str, field: str, unit: str) -> Timestamp:
    """``text``, a whole count of ``--time-format``'s ``unit`` since 1970 (Attentive
    writes ``1706041141103``, milliseconds), as the UTC time it names."""
    units = EPOCH_UNITS[unit]
    said = f"{units} since 1970 (--time-format {unit})"
    if not _DIGITS.fullmatch(text):
        raise _Bad(field, f"is not a count of {said}, a whole number in digits: {quoted(text)}")
    count = int(text) if len(text) <= 20 else 10**20  # past any plausible count
    seconds, millis = divmod(count, 1000) if unit == "epoch-ms" else (count, 0)
    try:
        value = _EPOCH + timedelta(seconds=seconds, milliseconds=millis)
    except OverflowError:
        value = None
    first, last = _PLAUSIBLE
    if value is None or not first <= value <= last:
        late = value is None or value > last
        when = "past the year 9999" if late else "in 1970"
        # Seconds read as milliseconds are too early, milliseconds as seconds too late.
        other = EPOCH_UNITS["epoch-s" if unit == "epoch-ms" else "epoch-ms"]
        mistaken = late == (unit == "epoch-s")
        why = f"as a count of {other} would be" if mistaken else "when no consent was given"
        raise _Bad(
            field,
            f"is a time {when} read as {said}, {why}: {quoted(text)}; refused, never "
            "read in another unit: give the unit the export writes",
        )
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _formatted(text: str, field: str, given: str) -> datetime:
    """``text`` read with ``--time-format``'s ``strptime`` format ``given``: it must
    match the whole of it, as every time of the export must. A weekday it names
    (``%a``, ``%A``, ``%u``, ``%w``) must be its date's: ``strptime`` reads the date
    and drops the weekday unchecked, so "Tue 01/03/2024" (a Wednesday) was read
    silently, where one of the two is wrong and which cannot be told."""
    try:
        value = datetime.strptime(text, given)
    except ValueError as exc:
        if str(exc).startswith(("time data", "unconverted data")):
            raise _Bad(field, f"does not match --time-format {given!r}: {quoted(text)}") from None
        raise _Bad(field, f"is not a time that exists: {quoted(text)}") from None
    if _WEEKDAY.search(given.replace("%%", "")):
        # ``time.strptime`` keeps the weekday the text names (its date's only when
        # it names none).
        named = time.strptime(text, given).tm_wday
        if named != value.weekday():
            raise _Bad(
                field,
                f"names the weekday {calendar.day_name[named]}, and its date is a "
                f"{calendar.day_name[value.weekday()]}: {quoted(text)}",
            )
    return value


_WEEKDAY = re.compile(r"%[aAuw]")
"""The directives of ``strptime`` that name a weekday."""


@lru_cache(maxsize=16)
def _zoneinfo(name: str) -> ZoneInfo:
    return ZoneInfo(name)


_RFC_2822 = re.compile(
    r"(?:(Mon|Tue|Wed|Thu|Fri|Sat|Sun), )?(\d{1,2})"
    r" (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
    r" (\d{4}) (\d{2}):(\d{2})(?::(\d{2}))? ([+-]\d{4}|GMT|UT)",
    re.IGNORECASE,
)
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")


def _rfc_2822_time(text: str, field: str) -> datetime:
    """``text`` read as an RFC 2822 time with its zone, as Twilio's API and exports
    write every time (``Tue, 05 Mar 2024 14:22:10 +0000``): a zone is always given,
    so nothing is guessed (``-0000`` is UTC, the local zone unknown, as RFC 3339's
    ``-00:00``). A weekday that is not the date's says the time is not what was
    meant: refused."""
    match = _RFC_2822.fullmatch(text)
    if match is None:
        raise _Bad(field, f"is not an ISO 8601 time: {quoted(text)}")
    weekday, day, month, year, hour, minute, second, zone = match.groups()
    offset = timedelta(0)
    if not zone.isalpha():
        if int(zone[3:5]) >= 60:
            raise _Bad(field, f"has an offset no time zone uses (minutes past 59): {quoted(text)}")
        offset = timedelta(hours=int(zone[1:3]), minutes=int(zone[3:5]))
        offset = -offset if zone.startswith("-") else offset
    try:
        value = datetime(
            int(year),
            _MONTHS.index(month.lower()) + 1,
            int(day),
            int(hour),
            int(minute),
            int(second or 0),
            tzinfo=timezone(offset),
        )
    except ValueError:
        raise _Bad(field, f"is not a time that exists: {quoted(text)}") from None
    if weekday is not None and value.strftime("%a").lower() != weekday.lower():
        raise _Bad(field, f"names a weekday that is not its date's: {quoted(text)}")
    return value


def unreadable_value(field: str, value: str, mapping: Mapping = _PLAIN) -> str | None:
    """Why ``value`` cannot be read as ``field`` (a type, a time, a tier, a method,
    a source or a channel), or None: a mapping's value given for every record
    (``--set``, ``--value``) is checked so before anything is sent, rather than
    refusing, and holding, every record it reaches."""
    try:
        if field == "type":
            if _kind({"type": value}) not in ("opt_in", "opt_out"):
                return f"must be opt_in or opt_out: {value!r}"
        elif field in ("occurred_at", "proof.registered_at"):
            _time(value, field, mapping)
        elif field in _ENUMS:
            _enum(field, value)
    except _Bad as bad:
        return bad.reason
    # Past its field's length, or holding a control character, it would refuse
    # every record too, and hold every opt-out under a brand that is none.
    limit = TEXT_LIMITS.get(field, VALUE_LIMIT)
    if len(value) > limit:
        return f"must be at most {limit:,} characters, got {len(value):,}"
    problem = text_problem(value, field)
    if problem is None and field in ("brand", "campaign") and not is_name(value):
        # A name the service refuses (too long, in capitals, padded) would refuse
        # every record too, as an empty one would.
        problem = NAME_RULE
    return problem


_UNSET = re.compile(re.escape(NOT_SET) + r": one of [^;]*")


def in_file_terms(field: str, reason: str) -> str:
    """The service's ``reason`` for refusing ``field`` as the file's reader knows it:
    an enumeration the record left blank (or without its column) reaches the service
    unset, which it says was not set; said instead as left blank, with what is
    accepted. So is an import id of spaces, which the service calls missing."""
    if field in _ENUMS:
        said, ours = (
            _UNSET.match(reason),
            f"is required, and was left blank: one of {_choices(field)}",
        )
    elif field == "import_id":
        # An empty id is derived from the record: only one of spaces reaches the service.
        said = _NO_ID.match(reason)
        ours = f"{_BLANK}: give the record's id, or leave it empty for one derived from it"
    else:
        said = None
    if said is None:
        return reason
    # What follows it (a hold's note) is the service's word on the record, kept.
    return ours + reason[said.end() :]


_NO_ID = re.compile(r"is required \(1-128 chars\) so retries are idempotent")
_BLANK = "holds only spaces"


def _choices(field: str) -> str:
    enum, prefix = _ENUMS[field]
    names = [k for k in list(enum.keys()) if not k.endswith("_UNSPECIFIED")]
    return ", ".join(k.removeprefix(prefix).lower() for k in names)


def _enum(field: str, text: str) -> int:
    enum, prefix = _ENUMS[field]
    if not text.strip():
        raise _Bad(field, f"{_BLANK}, not one of {_choices(field)}")
    name = text.strip().upper().replace("-", "_").replace(" ", "_")
    names = [k for k in list(enum.keys()) if not k.endswith("_UNSPECIFIED")]
    for candidate in (name, prefix + name):
        if candidate in names:
            return int(enum.Value(candidate))
    raise _Bad(field, f"is not one of {_choices(field)}: {quoted(text)}")


def count_read(
    text: TextIO, fmt: str, mapping: Mapping, opted_out: dict[str, int] | None = None
) -> int | None:
    """How many records ``text`` holds as ``read_records`` finds them (read or not):
    under ``subscriber_rows`` a row may be two, which ``count_records``' scan of its
    lines cannot tell. None for a file that cannot be read to its end. ``opted_out``
    is given the import id of each subscriber row's opt-in refused as not before its
    row's opt-out, with that row's line (``Unreadable.opted_out_id``): read before
    any opt-in is sent, so that the same opt-in on any other row is refused as well,
    wherever it comes in the file."""
    count = 0
    try:
        for item in read_records(text, fmt, None, mapping):
            count += 1
            if opted_out is not None and isinstance(item, Unreadable) and item.opted_out_id:
                opted_out.setdefault(item.opted_out_id, item.line)
    except FormatError:
        return None
    return count


def count_records(path: Path | None, fmt: str, spooled: IO[bytes] | None = None) -> int | None:
    """How many records ``path`` holds, as the reader will find them: the progress
    bar's total, counted without parsing. Lines the reader skips (blank ones) and a
    CSV's header are not records, and a CSV line that ends inside a quoted value is
    one record with the lines its value runs over (a quote inside a value is
    doubled, so a line with an odd number of quotes opens or closes one).

    None for a file that is not a regular file (a pipe, ``/dev/stdin``) and for
    standard input (``path`` None): it can be read once only, and counting would
    take its records from the import. Once ``spool``ed (``spooled``), it is counted
    there."""
    if spooled is not None:
        return _count(open(spooled.fileno(), "rb", closefd=False), fmt)
    if path is None or not path.is_file():
        return None
    return _count(path.open("rb"), fmt)


def _count(raw: BinaryIO, fmt: str) -> int:
    raw.seek(0)
    csv_ = fmt == "csv"
    records = 0
    quoted = False  # the line before ended inside a quoted value
    line_starts = True  # the piece read next begins a line (pieces keep memory bounded)
    # Lines end as the reader ends them: at CR LF, LF, or a lone CR (an old Mac's
    # export), which universal newlines read as LF. Latin-1 reads any byte, and only
    # ASCII matters here (quotes, commas, ASCII whitespace as bytes.strip strips).
    with io.TextIOWrapper(raw, encoding="latin-1", newline=None) as text:
        for piece in iter(lambda: text.readline(LINE_LIMIT), ""):
            starts = line_starts and not quoted
            if csv_ and piece.count('"') % 2:
                quoted = not quoted
            # The reader skips a CSV row of empty values; JSON Lines, one of whitespace.
            if starts and piece.strip(" \t\r\n," if csv_ else " \t\r\n\x0b\x0c"):
                whole = len(piece) < LINE_LIMIT or piece.endswith("\n")
                glued = not csv_ and whole and _GLUED.search(piece)
                # Objects glued on one line are records each, as the reader finds them.
                records += _records_on(piece.removeprefix(_LATIN1_BOM)) if glued else 1
            line_starts = piece.endswith("\n")
    return max(records - csv_, 0)


_GLUED = re.compile(r"\}[\s,]*\{")
"""Where a JSON line may hold an object after another (or a brace in a text)."""
_LATIN1_BOM = codecs.BOM_UTF8.decode("latin-1")


def _records_on(raw: str) -> int:
    """The records ``_jsonl_all`` finds on a whole JSON line: one, or each object of
    a line holding several (``_said``)."""
    try:
        value = json.loads(raw, object_pairs_hook=_once, parse_int=_whole, parse_float=Decimal)
    except json.JSONDecodeError as exc:
        return len(_said(raw, exc))
    except _Twice:  # one record refused, unless objects are glued there too
        try:
            value = json.loads(
                raw, object_pairs_hook=_agreed, parse_int=_whole, parse_float=Decimal
            )
        except json.JSONDecodeError as exc:
            return len(_said(raw, exc))
    except ValueError:
        return 1
    return len(_objects_in(value)) or 1  # an array's objects, refused each


def open_text(path: Path | None, upto: int | None = None) -> TextIO:
    """The file as text, or standard input when ``path`` is None (UTF-8, a
    byte-order mark skipped; CSV's newlines kept as the csv module wants them). A
    byte that is not UTF-8 is read as a lone surrogate, which refuses the value
    holding it (``parse_fields``), not the whole file. With ``upto``, no further
    than that many bytes: what is added to the file meanwhile is not read.

    A UTF-16 file is refused whole: read as UTF-8, its every line would be refused
    for its NUL bytes, none saying why. It is known by its byte-order mark, or
    without one by a NUL in every other byte of its start (``_utf16_without_bom``)."""
    # The text wrapper returned closes it; standard input's descriptor stays open.
    raw = (
        open(sys.stdin.fileno(), "rb", closefd=False)  # noqa: SIM115
        if path is None
        else open(path, "rb")  # noqa: SIM115
    )
    if upto is not None:
        raw = io.BufferedReader(_Upto(raw.detach(), upto))
    return _text(raw, STDIN_NAME if path is None else path.name)


class _Upto(io.RawIOBase):
    """A file read no further than ``left`` bytes."""

    def __init__(self, raw: Any, left: int) -> None:
        super().__init__()
        self.raw, self.left = raw, left

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.left <= 0:
            return 0
        read = self.raw.readinto(memoryview(buffer)[: self.left]) or 0
        self.left -= read
        return read

    def fileno(self) -> int:
        return int(self.raw.fileno())

    def close(self) -> None:
        if not self.closed:
            self.raw.close()
        super().close()


def open_spooled(spooled: IO[bytes], name: str) -> TextIO:
    """The file ``spool`` copied, as ``open_text`` reads a file, from its start: it
    may be opened again (the file stays open when the text returned is closed)."""
    raw = open(spooled.fileno(), "rb", closefd=False)  # noqa: SIM115
    raw.seek(0)
    return _text(raw, name)


SPOOL_CHUNK = 1 << 20


def spool(path: Path | None, limit: int) -> IO[bytes]:
    """Standard input (``path`` None) or a file that can be read once only (a pipe,
    ``/dev/stdin``) copied whole to a temporary file, so that it can be read twice:
    opt-outs first (``read_records``). The file has no name (it is gone when the
    process ends, however it ends). Raises ``FormatError`` past ``limit`` bytes, and
    ``OSError`` when the disk is full: a file of that size is to be named instead."""
    out = tempfile.TemporaryFile()  # noqa: SIM115
    try:
        source = (
            open(sys.stdin.fileno(), "rb", closefd=False)  # noqa: SIM115
            if path is None
            else open(path, "rb")  # noqa: SIM115
        )
        with source:
            copied = 0
            while piece := source.read(SPOOL_CHUNK):
                copied += len(piece)
                if copied > limit:
                    name = STDIN_NAME if path is None else path.name
                    raise FormatError(
                        f"{name} holds more than {limit:,} bytes, more than is copied to a "
                        "temporary file to be read twice (opt-outs first); save it to a file "
                        "and import that"
                    )
                out.write(piece)
        out.flush()
    except BaseException:
        out.close()
        raise
    return out


def _text(raw: io.BufferedReader, name: str) -> TextIO:
    head = raw.peek(UTF16_SAMPLE)[:UTF16_SAMPLE]  # a file's start, looked at once
    for magic, _, what, tool in _PACKED:
        if magic is not None and magic.match(head):
            raw.close()
            raise _packed(name, what, tool)
    if head[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        raw.close()
        raise FormatError(
            f"{name} is UTF-16 text (it begins with UTF-16's byte-order mark); save it as UTF-8"
        )
    order = _utf16_without_bom(head)
    if order is not None:
        raw.close()
        raise FormatError(
            f"{name} is UTF-16 text ({order}, without a byte-order mark: every other byte "
            "of its start is NUL); save it as UTF-8"
        )
    return io.TextIOWrapper(raw, encoding="utf-8-sig", errors="surrogateescape", newline="")


UTF16_SAMPLE = 512
"""Bytes of a file's start looked at for UTF-16 without a byte-order mark."""


def _utf16_without_bom(head: bytes) -> str | None:
    """The byte order of UTF-16 text that ``head`` begins, or None. A header row or
    a JSON object begins with ASCII, which UTF-16 writes as the character and a NUL:
    one side of the byte pairs NUL nearly throughout (a character past U+00FF
    aside), the other never. UTF-8 text holds no NUL but as a control character,
    refused in any value, so no export read right is mistaken for it."""
    pairs = len(head) // 2
    if pairs < 2:
        return None
    low, high = head[0 : 2 * pairs : 2], head[1 : 2 * pairs : 2]
    for order, nuls, chars in (("little-endian", high, low), ("big-endian", low, high)):
        if chars.count(0) == 0 and nuls.count(0) * 4 >= pairs * 3:
            return order
    return None
