"""Reading an export for ``consent-ledger import`` (``services.import_files``) and the
summary it prints (``services.cli.import_``): CSV and JSON Lines read alike, every
unreadable record named by line and field, import ids stable, reasons grouped."""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import os
import re
from array import array as numbers
from pathlib import Path
from typing import Any

import pytest
from consent.v1 import ledger_pb2 as lpb

from ledger.errors import InvalidRequest
from services.cli import import_
from services.import_files import (
    LINE_LIMIT,
    FormatError,
    Read,
    Stopped,
    Unreadable,
    count_records,
    format_of,
    national,
    open_spooled,
    open_text,
    parse_fields,
    read_records,
    spool,
)
from services.import_mapping import Mapping

CSV = """\
type,import_id,phone,brand,campaign,occurred_at,tier,method,proof.registered_at,proof.name,channel,text
opt_in,src-1,+14155550100,acme,promo,2026-11-02T09:30:00Z,promotional,WEB_FORM,2026-11-02T09:29:00Z,Ada,,
opt_out,src-2,+14155550100,acme,,2026-11-03T10:00:00+01:00,,,,,keyword,STOP
opt_in,,+14155550101,acme,promo,2026-11-02 09:30,promotional,web_form,,,,
opt_in,,+14155550102,acme,promo,2026-11-02T09:30:00Z,lifetime,web_form,,,,
"""


def read(text: str, fmt: str) -> list[Read | Unreadable]:
    return list(read_records(io.StringIO(text), fmt))


def test_csv_rows_become_the_single_writes_requests():
    opt_in, opt_out, no_zone, bad_tier = read(CSV, "csv")

    assert isinstance(opt_in, Read) and opt_in.line == 2
    request = opt_in.record.opt_in
    assert (request.request_id, request.phone, request.brand, request.campaign) == (
        "src-1", "+14155550100", "acme", "promo"
    )  # fmt: skip
    assert request.tier == lpb.CONSENT_TIER_PROMOTIONAL
    assert request.method == lpb.COLLECTION_METHOD_WEB_FORM
    assert request.occurred_at.ToJsonString() == "2026-11-02T09:30:00Z"
    assert request.proof.name == "Ada"
    assert request.proof.registered_at.ToJsonString() == "2026-11-02T09:29:00Z"

    assert isinstance(opt_out, Read) and opt_out.line == 3
    stop = opt_out.record.opt_out
    assert not stop.HasField("campaign")  # empty: every campaign of the brand
    assert stop.channel == lpb.REVOCATION_CHANNEL_KEYWORD and stop.text == "STOP"
    assert stop.occurred_at.ToJsonString() == "2026-11-03T09:00:00Z"

    assert no_zone == Unreadable(
        4, "occurred_at", "has no time zone (Z or +hh:mm): '2026-11-02 09:30'"
    )
    assert isinstance(bad_tier, Unreadable) and (bad_tier.line, bad_tier.field) == (5, "tier")
    assert "conversational, informational, promotional" in bad_tier.reason


@pytest.mark.parametrize(
    "written", ["2026-11-02t09:30:00z", "2026-11-02T09:30:00z", "2026-11-02t10:30:00+01:00"]
)
def test_a_time_with_a_lower_case_t_or_z_reads_as_rfc_3339_allows(written):
    row = f"opt_in,src-1,+14155550100,acme,promo,{written},promotional,web_form"
    (found,) = read("type,import_id,phone,brand,campaign,occurred_at,tier,method\n" + row, "csv")
    assert isinstance(found, Read), found
    assert found.record.opt_in.occurred_at.ToJsonString() == "2026-11-02T09:30:00Z"


@pytest.mark.parametrize(
    "written",
    [
        "2026-11-02T09:30:00+23:00",  # no zone is a day ahead of UTC
        "2026-11-02T09:30:00-13:00",
        "2026-11-02T09:30:00+14:01",
        "2026-11-02T09:30:00+05:30:15",  # no zone has had seconds since 1972
        "2026-11-02T09:30:00+05:30:15.5",
    ],
)
def test_a_time_with_an_offset_no_zone_uses_is_refused_not_moved(written):
    """A corrupt offset moves a fact by up to a day: an opt-out read so could be
    placed before the opt-in it revoked. Refused, an opt-out is held for review."""
    row = f"opt_out,src-2,+14155550100,acme,,{written},,,,,keyword,STOP"
    (found,) = read(CSV.splitlines()[0] + "\n" + row, "csv")
    assert isinstance(found, Unreadable) and found.field == "occurred_at", found
    assert "offset" in found.reason and written in found.reason


@pytest.mark.parametrize(
    ("written", "utc"),
    [
        ("2026-11-02T23:30:00+14:00", "2026-11-02T09:30:00Z"),  # Kiribati
        ("2026-11-01T21:30:00-12:00", "2026-11-02T09:30:00Z"),  # Baker Island
        ("2026-11-02T15:15:00+05:45", "2026-11-02T09:30:00Z"),  # Nepal
        ("2026-11-02T09:30:00-00:00", "2026-11-02T09:30:00Z"),  # UTC, zone unknown
    ],
)
def test_a_time_with_an_offset_a_zone_uses_reads(written, utc):
    row = f"opt_out,src-2,+14155550100,acme,,{written},,,,,keyword,STOP"
    (found,) = read(CSV.splitlines()[0] + "\n" + row, "csv")
    assert isinstance(found, Read), found
    assert found.record.opt_out.occurred_at.ToJsonString() == utc


def test_json_lines_read_as_csv_does_with_the_proof_nested_or_flat():
    lines = (
        '{"type": "opt_in", "import_id": "src-1", "phone": "+14155550100", "brand": "acme",'
        ' "campaign": "promo", "occurred_at": "2026-11-02T09:30:00Z", "tier": "promotional",'
        ' "method": "WEB_FORM", "proof": {"registered_at": "2026-11-02T09:29:00Z",'
        ' "name": "Ada"}}\n'
        "\n"
        '{"type": "opt_out", "import_id": "src-2", "phone": "+14155550100", "brand": "acme",'
        ' "occurred_at": "2026-11-03T10:00:00+01:00", "channel": "keyword", "text": "STOP"}\n'
        "not json\n"
        '{"type": "opt_in", "colour": "red"}\n'
        '{"type": "opt_out", "phone": 14155550100}\n'
    )
    from_csv = [r.record for r in read(CSV, "csv")[:2] if isinstance(r, Read)]

    found = read(lines, "jsonl")

    assert [r.record for r in found[:2] if isinstance(r, Read)] == from_csv
    assert [(r.line, r.field) for r in found[2:] if isinstance(r, Unreadable)] == [
        (4, "record"),
        (5, "colour"),
        (6, "phone"),
    ]


def test_a_record_without_an_import_id_gets_the_same_one_from_its_content_every_run():
    text = CSV.replace("2026-11-02 09:30", "2026-11-02T09:30:00Z")  # all four readable

    def ids(text: str) -> list[str]:
        rows = [r.record for r in read(text, "csv") if isinstance(r, Read)]
        return [getattr(r, str(r.WhichOneof("record"))).request_id for r in rows]

    first, again = ids(text), ids(text)
    changed = ids(text.replace("+14155550101", "+14155550109"))

    assert first == again
    assert first[:2] == ["src-1", "src-2"]  # given: kept
    assert first[2].startswith("import-") and len(first[2]) == len("import-") + 32
    assert changed[2] != first[2]  # another record is another fact


def test_a_record_that_cannot_be_read_and_gives_no_import_id_is_named_by_one_derived():
    """An opt-in the file cannot read, with no import id, was refused under none: the
    refusals of two runs could not be matched. It is named by the id derived from
    what it said, as an opt-out so refused is held under, the same on every run."""
    said = {"type": "opt_in", "phone": "+14155550101", "brand": "acme", "campaign": "promo",
            "occurred_at": "yesterday", "tier": "promotional", "method": "web_form"}  # fmt: skip
    opt_out = {"type": "opt_out", "phone": "+14155550101", "brand": "acme",
               "occurred_at": "yesterday", "channel": "keyword"}  # fmt: skip

    first, again = parse_fields(dict(said), 2), parse_fields(dict(said), 7)
    other = parse_fields({**said, "phone": "+14155550109"}, 3)
    held = parse_fields(opt_out, 4)
    own = parse_fields({**said, "import_id": "src-9"}, 5)

    assert isinstance(first, Unreadable) and isinstance(again, Unreadable)
    assert first.field == "occurred_at" and first.import_id == ""
    assert first.shown_id == first.derived_id == again.derived_id
    assert first.derived_id.startswith("import-") and len(first.derived_id) == 7 + 32
    assert isinstance(other, Unreadable) and other.derived_id != first.derived_id
    assert isinstance(held, Unreadable) and held.held is not None
    assert held.derived_id == held.held.opt_out.request_id  # the id it is held under
    assert isinstance(own, Unreadable) and (own.shown_id, own.derived_id) == ("src-9", "")
    readable = parse_fields({**said, "occurred_at": "2026-11-02T09:30:00Z"}, 6)
    assert isinstance(readable, Read) and readable.id_derived  # its id from its content
    given = parse_fields({**said, "occurred_at": "2026-11-02T09:30:00Z", "import_id": "x"}, 8)
    assert isinstance(given, Read) and not given.id_derived


def test_fields_of_the_other_kind_and_unknown_types_are_unreadable():
    text = "type,phone,brand,channel,tier\nopt_in,+14155550100,acme,keyword,\nstop,+1,acme,,\n"
    assert [(r.line, r.field) for r in read(text, "csv") if isinstance(r, Unreadable)] == [
        (2, "channel"),
        (3, "type"),
    ]


def test_an_unknown_column_refuses_the_file():
    with pytest.raises(FormatError, match="'colour'"):
        read("type,phone,colour\nopt_in,+1,red\n", "csv")


@pytest.mark.parametrize(
    ("mark", "named", "written"), [(";", "semicolons", ";"), ("\t", "tabs", "\\t")]
)
def test_a_header_separated_otherwise_than_by_commas_is_refused_saying_so(mark, named, written):
    """A semicolon- or tab-separated export (as a spreadsheet in many locales
    writes) was refused as one unknown column, 'type;import_id;phone', which did not
    say why; now the refusal names the separator and how to convert the file."""
    header = mark.join(["type", "import_id", "phone", "brand"])
    with pytest.raises(FormatError) as refused:
        read(f"{header}\nopt_out{mark}s-1{mark}+14155550100{mark}acme\n", "csv")

    said = str(refused.value)
    assert f"separated by {named}" in said and "unknown column" not in said, said
    assert f'delimiter="{written}"' in said, said


def test_the_format_comes_from_the_extension_unless_given():
    assert format_of(Path("x.CSV"), None) == "csv"
    assert format_of(Path("x.ndjson"), None) == "jsonl"
    assert format_of(Path("x.txt"), "csv") == "csv"
    with pytest.raises(FormatError, match="--format"):
        format_of(Path("x.txt"), None)


def _packed_exports() -> list[Any]:
    import bz2
    import gzip
    import lzma
    import zipfile

    def zipped(data: bytes) -> bytes:
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as archive:
            archive.writestr("export.csv", data)
        return out.getvalue()

    xls = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504)  # an OLE2 file's header
    zstd = b"\x28\xb5\x2f\xfd\x24\x05\x29\x00"  # a zstd frame's start
    return [
        pytest.param(gzip.compress, "gzip-compressed", "gzip -dc", id="gzip"),
        pytest.param(bz2.compress, "bzip2-compressed", "bzip2 -dc", id="bzip2"),
        pytest.param(lzma.compress, "xz-compressed", "xz -dc", id="xz"),
        pytest.param(lambda data: zstd + data, "zstd-compressed", "zstd -dc", id="zstd"),
        pytest.param(zipped, "a ZIP archive", "unzip it", id="zip"),
        pytest.param(lambda data: xls, "an Excel 97-2003 workbook", "as CSV (UTF-8)", id="xls"),
    ]


@pytest.mark.parametrize(("pack", "what", "advice"), _packed_exports())
def test_a_compressed_export_or_a_workbook_is_refused_whole_saying_what_to_do(
    tmp_path, pack, what, advice
):
    """Read as text, such a file refused every line for bytes that are not UTF-8, none
    saying why: it is refused as a file, named, with how to import it, read from a
    file, from standard input's copy, and whatever its extension says."""
    data = pack(b"type,phone\nopt_out,+14155552671\n")
    path = tmp_path / "export.csv"
    path.write_bytes(data)
    with pytest.raises(
        FormatError, match=rf"^export\.csv is {re.escape(what)}.*; .*{re.escape(advice)}"
    ):
        open_text(path)
    copied = spool(path, 1 << 20)
    with pytest.raises(FormatError, match=rf"is {re.escape(what)}.*; .*{re.escape(advice)}"):
        open_spooled(copied, "standard input")
    copied.close()


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("export.csv.gz", "looks gzip-compressed; decompress it first: gzip -dc export.csv.gz |"),
        ("export.jsonl.bz2", "looks bzip2-compressed; decompress it first: bzip2 -dc"),
        ("export.xz", "looks xz-compressed"),
        ("export.zst", "looks zstd-compressed"),
        ("export.zip", "looks like a ZIP archive; unzip it"),
        ("Contacts.XLSX", "looks like an Excel workbook; save the sheet as CSV"),
        ("contacts.xls", "looks like an Excel workbook"),
        ("contacts.ods", "looks like a spreadsheet"),
    ],
)
def test_a_compressed_or_workbook_extension_says_so_where_the_format_is_asked(name, said):
    with pytest.raises(FormatError, match=f"^{re.escape(name)} {re.escape(said)}"):
        format_of(Path(name), None)


def test_text_that_merely_begins_like_a_packed_file_is_read(tmp_path):
    """Only the whole signature refuses: a header beginning "BZh" or "PK" is text."""
    for header in ("BZh1,phone\n", "PK,phone\n"):
        path = tmp_path / "x.csv"
        path.write_text(header)
        with open_text(path) as text:
            assert text.read() == header


def test_records_are_counted_for_the_progress_bar_without_a_trailing_newline(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("type\nopt_in\nopt_in")
    assert count_records(path, "csv") == 2
    assert count_records(path, "jsonl") == 3


def test_a_pipe_is_not_counted_for_it_can_be_read_only_once(tmp_path):
    """Counting a pipe (``/dev/stdin``) would take its records from the import."""
    fifo = tmp_path / "export.csv"
    os.mkfifo(fifo)
    assert count_records(fifo, "csv") is None  # and returns at once: nothing opened it


def test_records_are_counted_as_the_reader_finds_them_not_by_lines(tmp_path):
    """A quoted value over lines (a doubled quote, a blank line in it) is one
    record; a blank line between records is none."""
    path = tmp_path / "x.csv"
    path.write_bytes(b'type,text\r\n\r\nopt_out,"a\r\n\r\n""b""\r\n"\r\n\r\nopt_out,c\r\n\r\n')
    with open_text(path) as text:
        assert count_records(path, "csv") == len(list(read_records(text, "csv"))) == 2
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'\n{"type": "opt_out"}\n \t\r\n{"type": "opt_out"}\n\n')
    with open_text(path) as text:
        assert count_records(path, "jsonl") == len(list(read_records(text, "jsonl"))) == 2


def test_objects_glued_on_one_json_line_are_counted_as_the_reader_finds_them(tmp_path):
    """Two objects on one line (exports joined by cat, the first's last line not
    ended) are two records to the reader: the progress bar's total says so too, and
    a brace pair inside a text, or a line cut short, stays one."""
    stop = '{"type": "opt_out", "phone": "+14155550100", "brand": "acme"}'
    lines = [
        stop + stop,  # glued: two
        stop + " , " + stop + stop,  # three, a comma between two of them
        '{"type": "opt_out", "text": "}{"}',  # one: the braces are in a text
        '{"type": "opt_out", "phone": "+1415555}{',  # cut short: one
        "\ufeff" + stop + stop,  # a byte-order mark (files joined): two
    ]
    path = tmp_path / "x.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with open_text(path) as text:
        found = len(list(read_records(text, "jsonl")))
    assert count_records(path, "jsonl") == found == 9


def test_glued_objects_one_naming_a_field_twice_are_refused_each_not_the_file(tmp_path):
    """The reader raised on such a line (``json`` told of the glue only once the key
    given twice was dealt with), stopping the whole import; each object is refused,
    and an opt-out among them held by what it says."""
    twice = '{"type": "opt_out", "type": "opt_out", "phone": "+14155550100", "brand": "acme"}'
    stop = '{"type": "opt_out", "phone": "+14155550101", "brand": "acme"}'
    path = tmp_path / "x.jsonl"
    path.write_text(twice + stop + "\n", encoding="utf-8")
    with open_text(path) as text:
        found = list(read_records(text, "jsonl"))
    assert [(r.line, r.field) for r in found] == [(1, "record"), (1, "record")]
    assert all(isinstance(r, Unreadable) and r.held is not None for r in found)
    assert count_records(path, "jsonl") == 2


@pytest.mark.parametrize("end", ["\r", "\n", "\r\n"])
def test_records_are_counted_whatever_ends_their_lines(tmp_path, end):
    """An old Mac's lone CR ends a line for the reader, so it does for the count."""
    path = tmp_path / "x.csv"
    rows = ["type,text", "opt_out,a", "", 'opt_out,"b', 'c"', "opt_out,d"]
    path.write_bytes(end.join(rows).encode())
    with open_text(path) as text:
        assert count_records(path, "csv") == len(list(read_records(text, "csv"))) == 3
    path = tmp_path / "x.jsonl"
    path.write_bytes(end.join(['{"type": "opt_out"}', " ", '{"type": "opt_out"}']).encode())
    with open_text(path) as text:
        assert count_records(path, "jsonl") == len(list(read_records(text, "jsonl"))) == 2


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_utf16_without_a_byte_order_mark_is_refused_as_a_file(tmp_path, encoding):
    path = tmp_path / "x.csv"
    path.write_bytes("type,phone\nopt_out,+14155552671 (Zoë, 日本)\n".encode(encoding))
    with pytest.raises(FormatError, match=r"UTF-16 text .*without a byte-order mark"):
        open_text(path)


def test_utf8_with_characters_past_ascii_is_not_taken_for_utf16(tmp_path):
    path = tmp_path / "x.csv"
    path.write_bytes("type,text\nopt_out,Zoë 日本 ✓\n".encode())
    with open_text(path) as text:
        assert len(list(read_records(text, "csv"))) == 1


def test_a_header_row_further_down_is_refused_and_its_rows_read_under_it():
    at = "2026-11-02T09:30:00Z"
    rows = read(
        f"type,phone,brand,occurred_at,channel\nopt_out,+14155552671,acme,{at},keyword\n"
        f"\ufefftype,phone,brand,occurred_at,channel\nopt_out,+14155552672,acme,{at},keyword\n"
        f"channel,occurred_at,brand,phone,type\nkeyword,{at},acme,+14155552673,opt_out\n",
        "csv",
    )
    told = [(r.line, r.field, r.reason[:25]) for r in rows if isinstance(r, Unreadable)]
    assert told == [
        (3, "record", "repeats the header row (e"),
        (5, "record", "is a header row naming ot"),
    ], rows
    phones = [r.record.opt_out.phone for r in rows if isinstance(r, Read)]
    assert phones == ["+14155552671", "+14155552672", "+14155552673"], rows


def test_a_header_row_further_down_naming_an_unknown_column_stops_the_file_there():
    text = "type,phone\nopt_out,+14155552671\ntype,phone,colour\nopt_out,+14155552672,red\n"
    with pytest.raises(FormatError, match=r"line 3, a header row further down: .*'colour'"):
        read(text, "csv")


def test_the_summary_groups_refusals_by_reason_with_their_lines():
    summary = import_.Summary(imported=7, present=2, held=1, token="subscribers:0:7")
    for line in (4, 9, 12, 15, 20, 31, 40):
        summary.refuse(line, "INVALID_ARGUMENT", "phone", "is not a phone number")
    summary.refuse(3, "FAILED_PRECONDITION", "campaign", "acme/nope is not defined")

    text = summary.lines("export.csv", 2.0, dry_run=False)

    assert text == [
        "imported 7 of 17 records from export.csv in 2.0 s (8 records/s)",
        "  already present: 2",
        "  refused: 8",
        "         7  INVALID_ARGUMENT  phone: is not a phone number "
        "(lines 4, 9, 12, 15, 20 and 2 more)",
        "         1  FAILED_PRECONDITION  campaign: acme/nope is not defined (line 3)",
        "  held for review: 1",
        "ledger written up to: subscribers:0:7",
    ]
    assert summary.lines("export.csv", 2.0, dry_run=True)[0].startswith("would import 7 of 17")
    assert summary.lines("export.csv", 2.0, dry_run=True)[-1] == "dry run: nothing was written"


def test_the_summary_says_one_record_and_one_row_in_the_singular():
    one = import_.Summary(imported=1, rows=1).lines("s.csv", 1.0, dry_run=False)
    assert one[0] == "imported 1 of 1 record from 1 row of s.csv in 1.0 s (1 records/s)"
    two = import_.Summary(imported=2, rows=2).lines("s.csv", 1.0, dry_run=False)
    assert two[0].startswith("imported 2 of 2 records from 2 rows of s.csv")


def test_the_summary_of_an_import_stopped_early_counts_the_whole_file():
    """An import that stopped after its opt-outs said "imported 10 of 10 records" of a
    file of a thousand: read as the whole file done."""
    summary = import_.Summary(imported=10, in_file=1000)

    text = summary.lines("export.csv", 1.0, dry_run=False)

    assert text[0] == "imported 10 of 1,000 records from export.csv in 1.0 s (10 records/s)"
    assert "  not sent, the import stopped first: 990" in text
    whole = import_.Summary(imported=10, in_file=10).lines("export.csv", 1.0, dry_run=False)
    assert not any("not sent" in line for line in whole)
    piped = import_.Summary(imported=10).lines("-", 1.0, dry_run=False)
    assert piped[0].startswith("imported 10 of 10 records") and "not sent" not in str(piped)


def test_the_summary_tells_records_sent_but_never_answered_from_those_not_sent():
    """Records sent in messages the service never answered (a deadline, Ctrl-C, the
    connection lost) were counted as "not sent", though the service may have
    recorded them."""
    summary = import_.Summary(imported=500, in_file=3000, unanswered=1500)

    text = summary.lines("export.csv", 1.0, dry_run=False)

    assert "  sent, no answer came (perhaps recorded: run the import again): 1,500" in text
    assert "  not sent, the import stopped first: 1,000" in text
    sent_all = import_.Summary(imported=500, in_file=1000, unanswered=500)
    assert not any("not sent" in line for line in sent_all.lines("e.csv", 1.0, False))
    # A dry run records nothing, answered or not.
    dry = summary.lines("export.csv", 1.0, dry_run=True)
    assert "  sent, no answer came (run the dry run again): 1,500" in dry, dry


def test_an_unreadable_opt_outs_digits_stand_for_the_numbers_they_end():
    unread = {import_._digits_of("020 7183 8751"): 3, import_._digits_of("555-3072"): 5}

    assert import_._opted_out_unread("+442071838751", unread) == 3
    assert import_._opted_out_unread("+1 (415) 555-3072", unread) == 5
    assert import_._opted_out_unread("+14155553073", unread) is None
    assert import_._digits_of("x 0012345") is None  # too few digits to stand for any


def test_a_number_refused_without_its_country_code_is_said_to_need_phone_region():
    """A national number ("(415) 555-0100") imported with no ``--phone-region`` was
    refused as no number at all, in the service's words, which never named the
    option that reads it. The refusal now names it, before what it says of a hold;
    a number written with its +, or of letters, is left as the service said it."""
    assert all(national(p) for p in ["(415) 555-0100", "020 7946 0000", "14155550100"])
    assert not any(national(p) for p in ["+1 415", " +44 20", "", " ", "1-800-FLOWERS"])
    # Refused for its control character however it is read: --phone-region reads it
    # no better, and one before a "+" hid the +.
    assert not any(national(p) for p in ["\x01+14155550100", "4155550100\x00"])
    said = "is not a phone number: expected E.164, for example +14155552671"
    hint = (
        "; a number without its country code (no leading +) is read only in the region "
        "--phone-region names, as --phone-region US"
    )
    assert import_._region_hinted(said) == said + hint
    held = "; would be held for review: the number is denied for the brand until ..."
    assert import_._region_hinted(said + held) == said + hint + held
    real = "; held for review: the number is denied for the brand until ..."
    assert import_._region_hinted(said + real) == said + hint + real


def test_the_summary_counts_refusals_alike_but_for_a_value_on_one_line():
    """An export of US dates ('11/30/2026 08:00'), each record's its own, was summed
    up one line a record: a summary of 2 million lines, and a group kept for each.
    Reasons that differ only in a value quoted or a number count on one line, which
    shows the first of them; reasons that differ in words stay apart."""
    summary = import_.Summary()
    for line in range(2, 1_002):
        time = f"11/{1 + line % 28:02d}/2026 {line % 24:02d}:00"
        reason = f"is not an ISO 8601 time: {time!r}"
        summary.refuse(line, "INVALID_ARGUMENT", "occurred_at", reason)
    for line, earlier in ((1_002, 5), (1_003, 9)):
        reason = f"was used before by the record on line {earlier}; a new record needs a new id"
        summary.refuse(line, "ALREADY_EXISTS", "import_id", reason)
    summary.refuse(1_004, "INVALID_ARGUMENT", "occurred_at", "has no time zone (Z or +hh:mm): 'x'")

    text = summary.lines("export.csv", 2.0, dry_run=False)

    assert text[3:6] == [
        "     1,000  INVALID_ARGUMENT  occurred_at: is not an ISO 8601 time: '11/03/2026 02:00' "
        "(the first; the others alike) (lines 2, 3, 4, 5, 6 and 995 more)",
        "         2  ALREADY_EXISTS  import_id: was used before by the record on line 5; a new "
        "record needs a new id (the first; the others alike) (lines 1002, 1003)",
        "         1  INVALID_ARGUMENT  occurred_at: has no time zone (Z or +hh:mm): 'x' "
        "(line 1004)",
    ]
    assert len(summary.groups) == 3


def test_a_value_is_held_to_its_own_fields_limit():
    fields = {"type": "opt_in", "phone": "+14155550100", "brand": "acme", "campaign": "promo"}
    within = parse_fields({**fields, "proof.collection_detail": "x" * 4096}, 2)
    over = parse_fields({**fields, "proof.collection_detail": "x" * 4097}, 3)
    long_phone = parse_fields({**fields, "phone": "1" * 1025}, 4)

    assert isinstance(within, Read)
    assert over == Unreadable(
        3, "proof.collection_detail", "must be at most 4,096 characters, got 4,097"
    )
    assert long_phone == Unreadable(4, "phone", "is 1,025 characters long, longer than any phone")


def test_a_consent_text_keeps_its_writing_where_its_digest_is_of_that_writing():
    """Padding and CR line ends are read away, so another writing of the export is
    the same record; but a text whose given SHA-256 is of it as written is stored as
    written, or the proof's text would no longer match its own digest."""
    written = " Yes, text me offers.\r\nReply STOP to cancel. "
    read = written.replace("\r\n", "\n").strip()
    fields = {"type": "opt_in", "phone": "+14155550100", "brand": "acme", "campaign": "promo",
              "occurred_at": "2026-11-02T09:30:00Z", "method": "web_form",
              "proof.consent_text": written}  # fmt: skip

    def proof(digest_of: str | None) -> tuple[str, str]:
        given = {}
        if digest_of is not None:
            given = {"proof.consent_text_sha256": hashlib.sha256(digest_of.encode()).hexdigest()}
        record = parse_fields({**fields, **given}, 2)
        assert isinstance(record, Read), record
        return record.record.opt_in.proof.consent_text, record.record.opt_in.request_id

    hashed_as_written, hashed_id = proof(written)
    hashed_as_read, _ = proof(read)
    no_digest, plain_id = proof(None)
    assert hashed_as_written == written
    assert hashed_as_read == no_digest == read
    clean = parse_fields(
        {
            **fields,
            "proof.consent_text": read,
            "proof.consent_text_sha256": hashlib.sha256(written.encode()).hexdigest().upper(),
        },
        3,
    )
    assert isinstance(clean, Read)
    assert clean.record.opt_in.request_id == hashed_id  # one record, however written
    assert plain_id != hashed_id  # the digest is part of the record


def test_an_opt_out_that_cannot_be_read_is_still_sent_as_its_number_and_brand():
    """The service holds it for review: refused, it must not leave its number open."""
    row = {"type": "opt_out", "phone": "+1 (415) 555-2671", "brand": "acme",
           "campaign": "promo", "occurred_at": "yesterday", "channel": "keyword"}  # fmt: skip

    first, again = parse_fields(dict(row), 7), parse_fields(dict(row), 9)
    other = parse_fields({**row, "occurred_at": "last week"}, 8)

    assert isinstance(first, Unreadable) and first.field == "occurred_at"
    assert first.held is not None
    held = first.held.opt_out
    assert (held.phone, held.brand, held.campaign) == ("+14155552671", "acme", "promo")
    assert not held.HasField("occurred_at") and held.channel == 0  # refused by the service
    assert isinstance(again, Unreadable) and again.held == first.held  # the same each run
    assert isinstance(other, Unreadable) and other.held is not None
    assert other.held.opt_out.request_id != held.request_id


def test_an_opt_out_that_cannot_be_read_nor_names_a_brand_is_still_sent_to_be_held():
    """Its brand left out or blank: sent blank, and the service holds it under
    each of the caller's brands. Dropped here, CanSend allowed the number."""
    row = {"type": "opt_out", "phone": "+14155552671", "occurred_at": "yesterday"}
    for brand in ({}, {"brand": "  "}):
        unread = parse_fields({**row, **brand}, 2)
        assert isinstance(unread, Unreadable) and unread.held is not None, brand
        held = unread.held.opt_out
        assert (held.phone, held.brand) == ("+14155552671", brand.get("brand", ""))


def test_an_opt_in_or_an_opt_out_without_a_readable_number_is_not_sent_to_be_held():
    opt_in = parse_fields({"type": "opt_in", "phone": "+14155552671", "brand": "acme",
                           "occurred_at": "yesterday"}, 2)  # fmt: skip
    no_number = parse_fields({"type": "opt_out", "phone": "\udcff\udcfe", "brand": "acme"}, 3)
    assert isinstance(opt_in, Unreadable) and opt_in.held is None
    assert isinstance(no_number, Unreadable) and no_number.held is None


def test_an_opt_out_whose_number_holds_bytes_not_utf8_is_sent_to_be_held_by_its_digits():
    spaced = parse_fields({"type": "opt_out", "phone": "+1\udca0415\udca0555\udca02671",
                           "brand": "acme"}, 2)  # fmt: skip
    assert isinstance(spaced, Unreadable) and spaced.held is not None
    assert spaced.held.opt_out.phone == "+14155552671"


def test_a_line_refused_for_how_it_is_written_is_held_if_it_may_be_an_opt_out():
    """Not only a bad value: a row with more values than the header, a key no record
    has, a value that is no string, a key given twice with two values (which was
    meant cannot be told, so the type is unread) or a proof that is no object."""
    rows = read("type,phone,brand,channel,text\nopt_out,+14155552671,acme,keyword,STOP, no\n"
                "opt_in,+14155552672,acme,,x,y\n", "csv")  # fmt: skip
    stop = {"type": "opt_out", "phone": "+14155552671", "brand": "acme", "channel": "keyword"}
    lines = [
        json.dumps({**stop, "notes": "x"}),
        json.dumps({**stop, "phone": 14155552671}),
        json.dumps(stop)[:-1] + ', "type": "opt_in"}',
        json.dumps({**stop, "proof": "none"}),
        json.dumps({**stop, "type": "opt_in", "tier": "promotional", "notes": "x"}),
        json.dumps(stop)[:-1] + ', "phone": "+14155550000"}',
    ]
    *odd, opt_in, two_numbers = read("\n".join(lines) + "\n", "jsonl")

    comma, opt_in_row = rows
    assert isinstance(comma, Unreadable) and comma.field == "record" and comma.held is not None
    assert isinstance(opt_in_row, Unreadable) and opt_in_row.held is None
    assert [(r.field, r.held is not None) for r in odd if isinstance(r, Unreadable)] == [
        ("notes", True), ("phone", True), ("type", True), ("proof", True)
    ]  # fmt: skip
    for record in (comma, *odd):
        assert isinstance(record, Unreadable) and record.held is not None
        # The service reads a number without its "+" as the number (as when it is held).
        assert record.held.opt_out.phone.removeprefix("+") == "14155552671"
        assert record.held.opt_out.brand == "acme"
    assert isinstance(opt_in, Unreadable) and opt_in.held is None
    assert isinstance(two_numbers, Unreadable) and two_numbers.held is None


def test_an_opt_out_on_a_json_line_cut_short_is_held_by_what_it_said_before_the_cut():
    """Its last value is left out unless it plainly ended: the cut may have
    shortened it, and a number short of digits may be another's."""
    stop = json.dumps({"type": "opt_out", "phone": "+14155552671", "brand": "acme",
                       "channel": "keyword", "text": "STOP"})  # fmt: skip
    after_brand = stop.index('"acme"') + len('"acme"')
    cuts = [stop[:after_brand], stop[: after_brand + 1], stop[: after_brand + 9], stop[:-3]]
    in_number = stop[: stop.index("2671")]
    opt_in = json.dumps({"type": "opt_in", "phone": "+14155552671", "brand": "acme"})[:-5]
    *held, short, refused_in = read("\n".join([*cuts, in_number, opt_in]) + "\n", "jsonl")

    for record in held:
        assert isinstance(record, Unreadable) and record.field == "record", record
        assert record.held is not None, record
        assert (record.held.opt_out.phone, record.held.opt_out.brand) == ("+14155552671", "acme")
    assert isinstance(short, Unreadable) and short.held is None
    assert isinstance(refused_in, Unreadable) and refused_in.held is None


def test_a_json_line_typed_twice_apart_in_other_capitals_is_held_if_one_opts_out():
    """``{"type": "opt_in", "TYPE": "opt_out", ...}``: refused, which to read cannot be
    told, but held only when the type spelt as ours said opt_out, so the opt-out the
    other spelling says went unheld while the number's opt-in stood. Held now, in the
    part of the file read first; types alike are one type."""
    stop = {"phone": "+14155552671", "brand": "acme", "occurred_at": "2026-11-30T08:00:00Z"}
    lines = [
        {"type": "opt_in", "TYPE": "opt_out", **stop, "channel": "keyword"},
        {"Type": "opt_out", "type": "opt_in", **stop},
        {"type": "opt_in", "Type": "nonsense", **stop},
        {"type": "opt_out", "Type": "OPT-OUT", **stop},
    ]
    text = "".join(json.dumps(line) + "\n" for line in lines)

    *apart, alike = read(text, "jsonl")

    for refused in apart[:2]:
        assert isinstance(refused, Unreadable) and refused.field == "type", refused
        assert refused.held is not None and refused.held.opt_out.phone == "+14155552671"
    assert isinstance(apart[2], Unreadable) and apart[2].held is not None  # neither read
    assert isinstance(alike, Unreadable) and alike.held is not None  # refused as before
    first = list(read_records(io.StringIO(text), "jsonl", False))
    assert [r.line for r in first] == [1, 2, 3, 4]


def test_a_utf16_file_is_refused_whole_and_a_utf8_one_read_past_its_mark(tmp_path):
    for encoding in ("utf-16", "utf-16-be"):
        path = tmp_path / f"{encoding}.csv"
        path.write_bytes(
            codecs.BOM_UTF16_BE * (encoding == "utf-16-be") + "type\n".encode(encoding)
        )
        with pytest.raises(FormatError, match=f"{path.name} is UTF-16 text"):
            open_text(path)
    path = tmp_path / "utf-8.csv"
    path.write_bytes(codecs.BOM_UTF8 + "type,text\nopt_out,Zoë\n".encode())
    with open_text(path) as text:
        assert text.read() == "type,text\nopt_out,Zoë\n"


def test_a_csv_header_that_is_not_utf_8_refuses_the_file_saying_so(tmp_path):
    """A Windows-1252 export's header ("T\xe9l\xe9phone") was refused as an unknown
    column, or as one --column did not find, shown as 'T\\udce9l\\udce9phone':
    nothing said that the file is not UTF-8."""
    path = tmp_path / "export.csv"
    path.write_bytes("T\xe9l\xe9phone,type\n+14155552671,opt_out\n".encode("cp1252"))
    said = (
        "line 1, the header: column 'T\\udce9l\\udce9phone' holds the byte 0xE9, which "
        "is not UTF-8 text; save the export as UTF-8 (it may be Latin-1 or Windows-1252)"
    )
    for mapping in (None, Mapping(columns={"phone": "T\xe9l\xe9phone"})):
        with open_text(path) as text, pytest.raises(FormatError) as refused:
            list(read_records(text, "csv", None, mapping))
        assert str(refused.value) == said


def test_rows_of_empty_values_are_no_records_and_not_counted(tmp_path):
    path = tmp_path / "sheet.csv"
    path.write_text(",,\r\n \r\ntype,phone,text\r\nopt_out,+14155552671,STOP\r\n,,\r\n , ,\r\n")
    with open_text(path) as text:
        records = list(read_records(text, "csv"))
    assert [r.line for r in records] == [4]
    assert count_records(path, "csv") == 1


def test_a_json_line_longer_than_any_record_is_refused_by_its_start_and_the_next_read():
    stop = {"type": "opt_out", "phone": "+14155552671", "brand": "acme", "channel": "keyword"}
    long = json.dumps({**stop, "text": "STOP " * LINE_LIMIT})
    overlong, after = read(f"{long}\n{json.dumps(stop)}\n", "jsonl")

    assert isinstance(overlong, Unreadable) and overlong.field == "record"
    assert overlong.reason == "is longer than 1,048,576 characters, longer than any record"
    assert overlong.held is not None and overlong.held.opt_out.phone == "+14155552671"
    assert isinstance(after, Read) and after.line == 2


def test_a_json_line_nested_deeper_than_python_reads_is_refused_and_the_next_read():
    """A line nesting arrays some thousands deep stopped the command with a
    RecursionError traceback; it is refused as a line of its own, an opt-out on it
    held by what it said before the nesting."""
    stop = {"type": "opt_out", "phone": "+14155552671", "brand": "acme", "channel": "keyword"}
    deep = json.dumps(stop)[:-1] + ', "text": ' + "[" * 100_000 + "]" * 100_000 + "}"
    nested, after = read(f"{deep}\n{json.dumps(stop)}\n", "jsonl")

    assert isinstance(nested, Unreadable) and nested.field == "record"
    assert nested.reason == "is not JSON: nested too deeply to be read"
    assert nested.held is not None and nested.held.opt_out.phone == "+14155552671"
    assert isinstance(after, Read) and after.line == 2


def test_a_json_array_is_refused_as_a_file_on_one_line_or_many():
    for array in ('[{"type": "opt_out"}]\n', '  [\n{"type": "opt_out"}\n]\n'):
        with pytest.raises(FormatError, match="line 1 opens a JSON array"):
            read(array, "jsonl")


def test_json_objects_written_over_several_lines_stop_the_file_at_their_first():
    """A pretty-printed export (``jq .``, ``json.dumps(indent=2)``) was read line by
    line: each fragment refused for its own reason, the opt-outs in them held by
    nothing, and the one-line opt-ins of their numbers imported, which allowed them."""
    stop = {"type": "opt_out", "phone": "+14155552671", "brand": "acme", "channel": "keyword"}
    pretty = json.dumps(stop, indent=2)
    with pytest.raises(FormatError, match="line 1 opens a JSON object written over several"):
        read(pretty + "\n", "jsonl")
    one_line = json.dumps({**stop, "phone": "+14155552672"})
    with pytest.raises(Stopped, match="line 2 opens a JSON object written over several"):
        read(f"{one_line}\n{pretty}\n", "jsonl")
    # The key on its own line tells an object begun on the line before it, too.
    begun = '{"type": "opt_out",\n  "phone": "+14155552671", "brand": "acme"}\n'
    with pytest.raises(Stopped, match="line 2 is inside a JSON object written over several"):
        read(begun, "jsonl")
    with pytest.raises(FormatError, match="line 1 is inside a JSON object") as whole:
        read('  "type": "opt_out",\n', "jsonl")
    assert not isinstance(whole.value, Stopped)


def test_the_records_that_may_deny_are_read_apart_from_the_opt_ins():
    """The import reads the file twice, its opt-outs first: every record is in one
    part, and no record that may be held for review is among the opt-ins."""
    rows = [
        "opt_in,in-1,+14155550100,acme,promo,2026-11-02T09:30:00Z,promotional,web_form,,,",
        "opt_in,in-2,+1 CALL ME,acme,promo,2026-11-02T09:30:00Z,promotional,web_form,,,",
        "opt_out,out-1,+14155550100,acme,,2026-11-03T10:00:00Z,,,,keyword,STOP",
        "optout,out-2,+14155550100,acme,,2026-11-03T10:00:00Z,,,,keyword,STOP",
        "Opt-In,in-3,+14155550101,acme,promo,yesterday,promotional,web_form,,,",
    ]
    header = "type,import_id,phone,brand,campaign,occurred_at,tier,method,proof.name,channel,text"
    text = "\n".join([header, *rows]) + "\n"
    jsonl = "".join(
        json.dumps(dict(zip(header.split(","), row.split(","), strict=True))) + "\n" for row in rows
    )
    for body, fmt, first_line in ((text, "csv", 2), (jsonl, "jsonl", 1)):
        whole = list(read_records(io.StringIO(body), fmt))
        outs = list(read_records(io.StringIO(body), fmt, opt_ins=False))
        ins = list(read_records(io.StringIO(body), fmt, opt_ins=True))
        assert sorted(r.line for r in outs + ins) == [r.line for r in whole]
        assert [r.line - first_line for r in ins] == [0, 1, 4], fmt
        assert isinstance(ins[2], Unreadable) and ins[2].held is None  # "Opt-In": never held
        assert [r.line - first_line for r in outs] == [2, 3], fmt
        assert isinstance(outs[1], Unreadable) and outs[1].held is not None  # "optout": held


def test_standard_input_is_copied_to_be_read_twice_and_no_more_than_the_limit(tmp_path):
    path = tmp_path / "export.csv"
    path.write_text(CSV)
    copy = spool(path, len(CSV))
    try:
        for _ in range(2):
            with open_spooled(copy, "standard input") as text:
                assert len(list(read_records(text, "csv"))) == 4
        assert count_records(None, "csv", copy) == 4
    finally:
        copy.close()
    with pytest.raises(FormatError, match=r"holds more than 100 bytes.*save it to a file"):
        spool(path, 100)


def test_an_opt_out_held_for_another_field_is_sent_with_its_time_for_the_hold():
    """The hold goes at the opt-out's own time when it can be read (a channel that
    is no channel), so that the history denies from then, not from the import."""
    row = {"type": "opt_out", "phone": "+14155552671", "brand": "acme",
           "occurred_at": "2026-11-02T09:30:00Z", "channel": "pigeon"}  # fmt: skip

    read = parse_fields(row, 3)

    assert isinstance(read, Unreadable) and read.field == "channel" and read.held is not None
    assert read.held.opt_out.occurred_at.ToJsonString() == "2026-11-02T09:30:00Z"


def test_a_file_growing_while_its_opt_ins_are_read_is_read_no_further_than_it_was(tmp_path):
    """An export still being written, grown while its opt-ins were read (past the
    check between the two readings): the opt-ins added were read and imported, and
    the opt-outs added, which that reading skips, were dropped without a word (exit
    0, a number opted out left allowed). Both readings end where the file ended as
    the first began, and a file changed by the end stops the import there."""
    header, opt_in, opt_out, *_ = CSV.splitlines()
    export = tmp_path / "growing.csv"
    export.write_text(f"{header}\n{opt_in}\n")
    items = import_._opt_outs_first(export, None, "csv", str(export))
    assert next(items) is import_.OPT_INS
    first = next(items)
    assert isinstance(first, Read) and first.record.opt_in.request_id == "src-1"

    later_in = opt_in.replace("src-1", "src-3").replace("+14155550100", "+14155550103")
    with export.open("a") as grown:
        grown.write(f"{opt_out}\n{later_in}\n")

    with pytest.raises(Stopped, match="changed while it was read"):
        for item in items:
            assert not isinstance(item, Read), item  # nothing added is read


BLANK_ENUMS = """\
type,import_id,phone,brand,campaign,occurred_at,tier,method,proof.registered_at,proof.name,channel,text
opt_out,out-1,+14155550100,acme,,2026-11-03T10:00:00Z,,,,,,STOP
opt_in,in-1,+14155550101,acme,promo,2026-11-02T09:30:00Z,,web_form,2026-11-02T09:29:00Z,Ada,,
opt_in,in-2,+14155550102,acme,promo,2026-11-02T09:30:00Z,promotional,,2026-11-02T09:29:00Z,Ada,,
"""


NO_LINES = (numbers("q"), 0, numbers("q"))
"""``import_._in_file_terms``' lines: a refusal that names no other record."""


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_an_enumeration_left_blank_is_refused_as_blank_naming_what_is_accepted(fmt):
    """An opt-out whose channel column was empty was refused "channel: is required
    (REVOCATION_CHANNEL_UNSPECIFIED given)": the proto's zero value, a name the
    export never wrote. The refusal says it was left blank and what it may be."""
    from services.grpc_api.imports import items_from_proto

    rows = list(csv.DictReader(io.StringIO(BLANK_ENUMS)))
    text = (
        BLANK_ENUMS
        if fmt == "csv"
        else "".join(json.dumps({k: v for k, v in row.items() if v}) + "\n" for row in rows)
    )
    records = [r for r in read_records(io.StringIO(text), fmt) if isinstance(r, Read)]
    items = items_from_proto([r.record for r in records], 0)
    told = [
        import_._in_file_terms(item.error.violations[0][0], item.error.violations[0][1], *NO_LINES)
        for item in items
        if isinstance(item.error, InvalidRequest)
    ]

    assert told == [
        ("channel", "is required, and was left blank: one of keyword, free_text, web, call, api"),
        ("tier", "is required, and was left blank: one of conversational, informational, "
                 "promotional"),
        ("method", "is required, and was left blank: one of web_form, keyword_reply, paper, "
                   "verbal, api_import"),
    ]  # fmt: skip
    assert not any("UNSPECIFIED" in reason for _, reason in told)


OPT_IN_ROW = {
    "type": "opt_in", "import_id": "in-1", "phone": "+14155550101", "brand": "acme",
    "campaign": "promo", "occurred_at": "2026-11-02T09:30:00Z", "tier": "promotional",
    "method": "web_form", "proof.registered_at": "2026-11-02T09:29:00Z", "proof.name": "Ada",
}  # fmt: skip


def refused_as(fmt: str, **changes: Any) -> tuple[str, str]:
    """The field and reason of the opt-in ``OPT_IN_ROW`` with ``changes``, as read
    from a file of ``fmt``."""
    row = {**OPT_IN_ROW, **changes}
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, list(row))
        writer.writeheader()
        writer.writerow(row)
        text = out.getvalue()
    else:
        text = json.dumps(row) + "\n"
    (item,) = read_records(io.StringIO(text), fmt)
    assert isinstance(item, Unreadable), item
    return item.field, item.reason


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize(
    ("changes", "told"),
    [
        ({"type": ""}, ("type", "is required, and was left blank: opt_in or opt_out")),
        ({"type": "optin"}, ("type", "must be opt_in or opt_out, not 'optin'")),
        ({"type": "op\x00t_in"}, ("type", "must be opt_in or opt_out, not 'op<U+0000>t_in'")),
        ({"type": "   "}, ("type", "is required, and was left blank: opt_in or opt_out")),
        ({"tier": "  "}, ("tier", "holds only spaces, not one of conversational, "
                                  "informational, promotional")),
        ({"occurred_at": " "}, ("occurred_at", "holds only spaces, not an ISO 8601 time")),
        ({"occurred_at": "y" * 300},
         ("occurred_at", f"is not an ISO 8601 time: '{'y' * 60}...' (300 characters)")),
        ({"method": "form\x1b"},
         ("method", "is not one of web_form, keyword_reply, paper, verbal, api_import: "
                    "'form<U+001B>'")),
        ({"proof.region": "C\x00A"},
         ("proof.region", "must not hold U+0000 (a control or unassigned character)")),
    ],
)  # fmt: skip
def test_a_refused_value_is_told_as_the_export_wrote_it(fmt, changes, told):
    """A reason names what the record gave in its writer's terms: a type left blank
    or written otherwise was "must be opt_in or opt_out" with no word of what it was;
    a cell of spaces was quoted as "'   '"; a value was quoted as Python writes it
    ('a\\x00b', a proof's region quoted so by the service) and whole, 20,000
    characters of it on one line of the summary."""
    assert refused_as(fmt, **changes) == told


@pytest.mark.parametrize(
    ("value", "kind"),
    [(14155550101, "a number"), (1.5, "a number"), (True, "true or false"),
     (["+14155550101"], "an array"), ({"e164": "+14155550101"}, "an object")],
)  # fmt: skip
def test_a_json_value_that_is_no_string_is_told_by_what_it_is(value, kind):
    """It was "must be a string" whatever it was, a number or an array alike."""
    assert refused_as("jsonl", phone=value) == ("phone", f"must be a string, not {kind}")


async def test_an_import_id_of_spaces_is_told_as_spaces_not_as_missing():
    """The service refuses a request id of spaces as "is required (1-128 chars) so
    retries are idempotent", while the file gave one: an empty id is derived."""
    from services.grpc_api.imports import items_from_proto
    from services.usecases.imports import Imports
    from tests.unit.usecase_harness import define, running

    out = io.StringIO()
    writer = csv.DictWriter(out, list(OPT_IN_ROW))
    writer.writeheader()
    writer.writerow({**OPT_IN_ROW, "import_id": "   "})
    (read,) = read_records(io.StringIO(out.getvalue()), "csv")
    assert isinstance(read, Read)
    async with running() as (app, _):
        await app.writes.record(define())
        result = await Imports(app.writes.ctx).chunk(items_from_proto([read.record], 0))
    (field, reason), *_ = result.refusals[0].violations  # the first, as a summary shows

    assert import_._in_file_terms(field, reason, *NO_LINES) == (
        "import_id",
        "holds only spaces: give the record's id, or leave it empty for one derived from it",
    )


def test_an_import_whose_token_file_is_empty_stops_saying_so(tmp_path, capsys):
    """An empty token file (a secret mounted before it was written) was sent as
    "Bearer ", and the service's "UNAUTHENTICATED: expected 'Bearer <token>'" did not
    say the file held none; now the command stops before sending (exit 2), saying so."""
    from services.cli import main as cli

    export = tmp_path / "export.csv"
    export.write_text(CSV)
    empty = tmp_path / "token"
    empty.write_text("\n")

    code = cli.main(["import", str(export), "--token-file", str(empty), "--address", "127.0.0.1:9"])

    err = capsys.readouterr().err
    assert code == 2, err
    assert f"--token-file {empty} is empty: it holds no token" in err, err


@pytest.mark.parametrize(
    ("written", "utc"),
    [
        ("Tue, 05 Mar 2024 14:22:10 +0000", "2024-03-05T14:22:10Z"),  # Twilio's date_sent
        ("Tue, 05 Mar 2024 06:22:10 -0800", "2024-03-05T14:22:10Z"),
        ("5 Mar 2024 19:52 +0530", "2024-03-05T14:22:00Z"),
        ("Tue, 05 Mar 2024 14:22:10 GMT", "2024-03-05T14:22:10Z"),
        ("Tue, 05 Mar 2024 14:22:10 -0000", "2024-03-05T14:22:10Z"),  # UTC, zone unknown
    ],
)
def test_an_rfc_2822_time_with_its_zone_reads(written, utc):
    """Twilio writes every time so: with its zone, so nothing is guessed."""
    row = f'opt_out,src-2,+14155550100,acme,,"{written}",,,,,keyword,STOP'
    (found,) = read(CSV.splitlines()[0] + "\n" + row, "csv")
    assert isinstance(found, Read), found
    assert found.record.opt_out.occurred_at.ToJsonString() == utc


@pytest.mark.parametrize(
    ("written", "why"),
    [
        ("Wed, 05 Mar 2024 14:22:10 +0000", "weekday"),  # the 5th was a Tuesday
        ("Tue, 05 Mar 2024 14:22:10 +2300", "offset"),
        ("Tue, 05 Mar 2024 14:22:10 +0560", "offset"),
        ("Fri, 30 Feb 2024 14:22:10 +0000", "exists"),
        ("Tue, 05 Mar 2024 14:22:10", "ISO 8601"),  # no zone: not guessed
        ("Tue, 05 Mar 2024 14:22:10 EST", "ISO 8601"),
    ],
)
def test_an_rfc_2822_time_that_cannot_be_told_is_refused_and_its_opt_out_held(written, why):
    row = f'opt_out,src-2,+14155550100,acme,,"{written}",,,,,keyword,STOP'
    (found,) = read(CSV.splitlines()[0] + "\n" + row, "csv")
    assert isinstance(found, Unreadable) and found.field == "occurred_at", found
    assert why in found.reason and written in found.reason


@pytest.mark.parametrize("written", ["1704186000", "1706041141103", "1704186000.250"])
def test_a_time_written_as_a_unix_count_is_refused_saying_so(written):
    """Epoch milliseconds such as 1706041141103 read as ISO 8601 as a date of
    1706 with no zone: the refusal asked for a zone, which would not help."""
    row = f"opt_out,src-2,+14155550100,acme,,{written},,,,,keyword,STOP"
    (found,) = read(CSV.splitlines()[0] + "\n" + row, "csv")
    assert isinstance(found, Unreadable) and found.field == "occurred_at", found
    assert found.reason.startswith(f"is a number, not a time: '{written}'"), found.reason
    assert "Unix time" in found.reason and "2024-03-05T14:22:10Z" in found.reason
    assert "--time-format epoch-s or epoch-ms" in found.reason


@pytest.mark.parametrize(
    ("written", "utc"),
    [
        ("2024-03-05 14:22:10 UTC", "2024-03-05T14:22:10Z"),  # Ruby on Rails' Time#to_s
        ("2024-03-05 14:22:10.250 utc", "2024-03-05T14:22:10.250Z"),
        ("2024-03-05T14:22:10 GMT", "2024-03-05T14:22:10Z"),
    ],
)
def test_a_time_whose_zone_is_named_utc_reads(written, utc):
    row = f"opt_out,src-2,+14155550100,acme,,{written},,,,,keyword,STOP"
    (found,) = read(CSV.splitlines()[0] + "\n" + row, "csv")
    assert isinstance(found, Read), found
    assert found.record.opt_out.occurred_at.ToJsonString() == utc


@pytest.mark.parametrize("written", ["2024-03-05 14:22:10 EST", "2024-03-05T14:22:10Z UTC"])
def test_a_time_whose_zone_is_named_otherwise_is_refused(written):
    """EST is ambiguous (Eastern, or Australia's): only UTC's names are read."""
    row = f"opt_out,src-2,+14155550100,acme,,{written},,,,,keyword,STOP"
    (found,) = read(CSV.splitlines()[0] + "\n" + row, "csv")
    assert isinstance(found, Unreadable) and found.field == "occurred_at", found


def test_a_number_without_its_country_code_is_read_in_the_phone_region_given():
    from services.import_mapping import Mapping

    rows = [
        "type,import_id,phone,brand,campaign,occurred_at,channel",
        "opt_out,a,(415) 200-5000,acme,,2024-01-02T09:00:00Z,keyword",
        "opt_out,b,14152002000,acme,,2024-01-02T09:00:00Z,keyword",
        "opt_out,c,+44 20 7183 8750,acme,,2024-01-02T09:00:00Z,keyword",
        "opt_out,d,415 200,acme,,2024-01-02T09:00:00Z,keyword",
        "opt_out,e,4155552671,acme,,yesterday,keyword",
    ]
    text = "\n".join(rows) + "\n"
    in_us = list(read_records(io.StringIO(text), "csv", mapping=Mapping(phone_region="US")))

    phones = [r.record.opt_out.phone for r in in_us[:3] if isinstance(r, Read)]
    assert phones == ["+14152005000", "+14152002000", "+44 20 7183 8750"]  # + as ever
    bad, held = in_us[3:]
    assert isinstance(bad, Unreadable) and bad.field == "phone"
    assert bad.reason.endswith("; read as a number of US (--phone-region)"), bad.reason
    assert isinstance(held, Unreadable) and held.field == "occurred_at"
    assert held.held is not None and held.held.opt_out.phone == "+14155552671"

    # Without it, such a number is sent as written, for the service to refuse.
    plain = read(text, "csv")
    assert [r.record.opt_out.phone for r in plain[:2] if isinstance(r, Read)] == [
        "(415) 200-5000", "14152002000"
    ]  # fmt: skip


def test_a_time_without_a_zone_is_read_in_the_time_zone_given_or_refused_never_guessed():
    from services.import_files import unreadable_value
    from services.import_mapping import Mapping

    in_ny = Mapping(time_zone="America/New_York")
    rows = [
        "type,import_id,phone,brand,campaign,occurred_at,tier,method,proof.registered_at,channel",
        "opt_in,a,+14152005000,acme,promo,2024-01-02 09:00:00,promotional,paper,2024-07-01 08:00,",
        "opt_out,b,+14152005000,acme,,2024-01-02T09:00:00+01:00,,,,keyword",
        "opt_out,c,+14152005000,acme,,2024-03-10 02:30:00,,,,keyword",
        "opt_in,d,+14152005000,acme,promo,2024-11-03 01:30:00,promotional,paper,,",
        "opt_out,e,+14152005000,acme,,2024-01-02,,,,keyword",
        "opt_out,f,+14152005000,acme,,2024-01-02 09:00:00,,,,pigeon",  # held
    ]
    text = "\n".join(rows) + "\n"
    opt_in, with_offset, gap, fold, date, held = read_records(io.StringIO(text), "csv", None, in_ny)

    assert isinstance(opt_in, Read) and isinstance(with_offset, Read)
    assert opt_in.record.opt_in.occurred_at.ToJsonString() == "2024-01-02T14:00:00Z"
    assert opt_in.record.opt_in.proof.registered_at.ToJsonString() == "2024-07-01T12:00:00Z"
    assert with_offset.record.opt_out.occurred_at.ToJsonString() == "2024-01-02T08:00:00Z"
    assert isinstance(gap, Unreadable) and gap.field == "occurred_at" and gap.held is not None
    assert gap.reason.startswith("does not exist in America/New_York"), gap.reason
    assert isinstance(fold, Unreadable) and fold.field == "occurred_at"
    assert fold.reason.startswith("is in the hour America/New_York repeats"), fold.reason
    assert isinstance(date, Unreadable) and "a date with no time of day" in date.reason
    assert isinstance(held, Unreadable) and held.held is not None
    assert held.held.opt_out.occurred_at.ToJsonString() == "2024-01-02T14:00:00Z"

    # Without it, as before; a time set for every record reads as a column's does.
    assert all(
        isinstance(r, Unreadable) and r.field == "occurred_at" for r in read(text, "csv")[2:5]
    )
    assert unreadable_value("occurred_at", "2024-01-02 09:00:00") is not None
    assert unreadable_value("occurred_at", "2024-01-02 09:00:00", in_ny) is None


HEADER = "type,phone,brand,campaign,occurred_at,tier,method,proof.registered_at,channel"


@pytest.mark.parametrize(
    ("time_format", "written", "utc"),
    [
        ("epoch-ms", "1706041141103", "2024-01-23T20:19:01.103Z"),  # Attentive's
        ("epoch-ms", " 1706041141000 ", "2024-01-23T20:19:01Z"),
        ("epoch-s", "1706041141", "2024-01-23T20:19:01Z"),
        ("epoch-s", "31536000", "1971-01-01T00:00:00Z"),
        ("epoch-s", "253402300799", "9999-12-31T23:59:59Z"),
    ],
)
def test_a_time_written_as_a_count_reads_in_the_unit_given_as_utc(time_format, written, utc):
    """With ``--time-format``, the count the import refused without it reads, its
    import id the one of the same record written in ISO 8601: a re-run of the
    export rewritten so finds it present."""
    rows = f"{HEADER}\nopt_out,+14155550100,acme,,{written},,,,keyword\n"
    (found,) = read_records(io.StringIO(rows), "csv", None, Mapping(time_format=time_format))
    (as_iso,) = read(rows.replace(written, utc), "csv")

    assert isinstance(found, Read) and found.record.opt_out.occurred_at.ToJsonString() == utc
    assert isinstance(as_iso, Read) and found.record == as_iso.record
    assert isinstance(read(rows, "csv")[0], Unreadable)


@pytest.mark.parametrize(
    ("time_format", "written", "why"),
    [
        ("epoch-ms", "1706041141", "is a time in 1970 read as milliseconds since 1970 "
         "(--time-format epoch-ms), as a count of seconds would be: '1706041141'"),
        ("epoch-s", "1706041141103", "is a time past the year 9999 read as seconds since 1970 "
         "(--time-format epoch-s), as a count of milliseconds would be: '1706041141103'"),
        ("epoch-s", "1200", "is a time in 1970 read as seconds since 1970 "
         "(--time-format epoch-s), when no consent was given"),
        ("epoch-ms", "2530000000000000", "is a time past the year 9999 read as milliseconds"),
        ("epoch-ms", "9" * 40, "is a time past the year 9999 read as milliseconds"),
        ("epoch-s", "-1706041141", "is not a count of seconds since 1970 (--time-format "
         "epoch-s), a whole number in digits: '-1706041141'"),
        ("epoch-s", "1706041141.5", "is not a count of seconds"),
        ("epoch-s", "١٧٠٦٠٤١١٤١", "is not a count of seconds"),  # digits, not ASCII ones
        ("epoch-ms", "2024-01-23T20:19:01Z", "is not a count of milliseconds"),
        ("epoch-ms", " ", "holds only spaces, not a time"),
    ],
)  # fmt: skip
def test_a_count_implausible_in_the_unit_given_is_refused_never_read_in_another(
    time_format, written, why
):
    rows = f'{HEADER}\nopt_out,+14155550100,acme,,"{written}",,,,keyword\n'
    (found,) = read_records(io.StringIO(rows), "csv", None, Mapping(time_format=time_format))

    assert isinstance(found, Unreadable) and found.field == "occurred_at", found
    assert why in found.reason, found.reason
    assert found.held is not None and found.held.opt_out.phone == "+14155550100"


def test_a_time_format_reads_every_time_of_the_export_in_its_zone_or_refuses_it():
    from services.import_files import unreadable_value

    us = Mapping(time_format="%m/%d/%Y %I:%M %p", time_zone="America/New_York")
    rows = [
        HEADER,
        "opt_in,+14155552000,acme,promo,01/02/2024 4:00 AM,promotional,paper,12/31/2023 11:59 PM,",
        "opt_out,+14155552000,acme,,01/02/2024 4:00 PM,,,,keyword",
        "opt_out,+14155552000,acme,,2024-01-02T09:00:00Z,,,,keyword",  # ISO: not the format
        "opt_out,+14155552000,acme,,02/30/2024 4:00 AM,,,,keyword",
        "opt_out,+14155552000,acme,,03/10/2024 2:30 AM,,,,keyword",  # skipped in New York
        "opt_in,+14155552000,acme,promo,01/02/2024 4:00 AM,promotional,paper,2023-12-31,",
    ]
    text = "\n".join(rows) + "\n"
    opt_in, opt_out, iso_time, no_such_day, gap, proof = read_records(
        io.StringIO(text), "csv", None, us
    )

    assert isinstance(opt_in, Read) and isinstance(opt_out, Read)
    assert opt_in.record.opt_in.occurred_at.ToJsonString() == "2024-01-02T09:00:00Z"
    assert opt_in.record.opt_in.proof.registered_at.ToJsonString() == "2024-01-01T04:59:00Z"
    assert opt_out.record.opt_out.occurred_at.ToJsonString() == "2024-01-02T21:00:00Z"
    assert isinstance(iso_time, Unreadable) and iso_time.field == "occurred_at"
    assert iso_time.reason == (
        "does not match --time-format '%m/%d/%Y %I:%M %p': '2024-01-02T09:00:00Z'"
    )
    assert iso_time.held is not None and not iso_time.held.opt_out.HasField("occurred_at")
    assert isinstance(no_such_day, Unreadable) and "is not a time that exists" in no_such_day.reason
    assert isinstance(gap, Unreadable) and gap.reason.startswith("does not exist in America/New")
    assert isinstance(proof, Unreadable) and proof.field == "proof.registered_at"
    assert proof.held is None  # an opt-in's

    # With an offset in the format, no zone is wanted; a time set for every record
    # is read by the format as a column's is.
    offset = Mapping(time_format="%d.%m.%Y %H:%M %z")
    assert unreadable_value("occurred_at", "02.01.2024 10:00 +0100", offset) is None
    assert unreadable_value("occurred_at", "2024-01-02T09:00:00Z", offset) is not None
    assert unreadable_value("occurred_at", "01/02/2024 4:00 AM", us) is None


@pytest.mark.parametrize(
    ("time_format", "written", "fixed", "named"),
    [
        ("%a %m/%d/%Y %H:%M", "Tue 01/03/2024 10:00", "Wed 01/03/2024 10:00", "Tuesday"),
        ("%A, %d %B %Y %H:%M", "Monday, 03 January 2024 10:00", "wednesday, 03 January 2024 10:00",
         "Monday"),
        ("%m/%d/%Y %H:%M (%u)", "01/03/2024 10:00 (1)", "01/03/2024 10:00 (3)", "Monday"),
        ("%m/%d/%Y %H:%M (%w)", "01/03/2024 10:00 (0)", "01/03/2024 10:00 (3)", "Sunday"),
        ("%Y-%j %H:%M %a", "2024-003 10:00 Thu", "2024-003 10:00 WED", "Thursday"),
    ],
)  # fmt: skip
def test_a_weekday_the_time_format_reads_must_be_its_date_s(time_format, written, fixed, named):
    """``strptime`` reads a weekday and drops it: "Tue 01/03/2024" (a Wednesday) was
    read as the 3rd unsaid, where the export holds a mistake, the date's or the
    weekday's. Refused naming the field and both days (an opt-out's held); the
    weekday the date has reads as ever, and a literal ``%%a`` is no weekday."""
    utc = Mapping(time_format=time_format, time_zone="UTC")
    rows = f'{HEADER}\nopt_out,+14155550100,acme,,"{written}",,,,keyword\n'
    (found,) = read_records(io.StringIO(rows), "csv", None, utc)

    assert isinstance(found, Unreadable) and found.field == "occurred_at", found
    assert found.reason == f"names the weekday {named}, and its date is a Wednesday: '{written}'"
    assert found.held is not None and found.held.opt_out.phone == "+14155550100"

    (right,) = read_records(io.StringIO(rows.replace(written, fixed)), "csv", None, utc)
    assert isinstance(right, Read), right
    assert right.record.opt_out.occurred_at.ToJsonString() == "2024-01-03T10:00:00Z"

    literal = Mapping(time_format="%%a %m/%d/%Y %H:%M", time_zone="UTC")
    text = f"{HEADER}\nopt_out,+14155550100,acme,,%a 01/03/2024 10:00,,,,keyword\n"
    (plain,) = read_records(io.StringIO(text), "csv", None, literal)
    assert isinstance(plain, Read), plain


STOP = {"type": "opt_out", "phone": "+14155550100", "brand": "acme", "channel": "keyword"}


@pytest.mark.parametrize(
    ("time_format", "count"),
    [("epoch-ms", 1706041141103), ("epoch-s", 1706041141), ("epoch-ms", 1706041141000)],
)
def test_a_time_given_as_a_json_number_reads_as_its_digits_in_a_string(time_format, count):
    """Attentive's JSON writes its times as numbers: with ``--time-format`` epoch-s or
    epoch-ms each reads as the same digits in a string do, the same record under the
    same import id, a nested proof's time and a subscriber row's too. They were
    refused as no string, each opt-out held."""
    counted = Mapping(time_format=time_format)
    as_number = json.dumps({**STOP, "occurred_at": count})
    as_text = json.dumps({**STOP, "occurred_at": str(count)})
    (number,) = read_records(io.StringIO(as_number + "\n"), "jsonl", None, counted)
    (text,) = read_records(io.StringIO(as_text + "\n"), "jsonl", None, counted)

    assert isinstance(number, Read) and isinstance(text, Read), (number, text)
    assert number.record == text.record and number.id_derived

    opt_in = {
        "type": "opt_in", "phone": "+14155550100", "brand": "acme", "campaign": "promo",
        "tier": "promotional", "method": "paper", "occurred_at": count,
        "proof": {"registered_at": count, "collection_detail": "signed form 2211"},
    }  # fmt: skip
    (nested,) = read_records(io.StringIO(json.dumps(opt_in) + "\n"), "jsonl", None, counted)
    assert isinstance(nested, Read), nested
    proof = nested.record.opt_in.proof
    assert (
        proof.registered_at == nested.record.opt_in.occurred_at == text.record.opt_out.occurred_at
    )


@pytest.mark.parametrize(
    ("time_format", "given", "why"),
    [
        ("epoch-s", "1706041141.5", "is not a count of seconds since 1970 (--time-format epoch-s), "
         "a whole number in digits: '1706041141.5'"),
        ("epoch-ms", "1706041141103.0", "is not a count of milliseconds since 1970 (--time-format "
         "epoch-ms), a whole number in digits: '1706041141103.0'"),
        ("epoch-ms", "1.706041141103E+12", "is not a count of milliseconds"),
        ("epoch-s", "-1706041141", "is not a count of seconds since 1970 (--time-format "
         "epoch-s), a whole number in digits: '-1706041141'"),
        ("epoch-s", "1706041141103", "is a time past the year 9999 read as seconds since 1970 "
         "(--time-format epoch-s), as a count of milliseconds would be: '1706041141103'"),
        ("epoch-ms", "1706041141", "is a time in 1970 read as milliseconds since 1970"),
        ("epoch-ms", "9" * 40, "is a time past the year 9999 read as milliseconds"),
        ("epoch-ms", "9" * 5000, "is 5,000 characters long, longer than any occurred_at"),
        ("epoch-ms", "true", "must be a string, not true or false"),
        (None, "1706041141103", "is a number, not a time: '1706041141103'; a Unix time (seconds "
         "or milliseconds since 1970, which one cannot be told) is read only with "
         "--time-format epoch-s or epoch-ms"),
        (None, "1706041141.5", "is a number, not a time: '1706041141.5'"),
    ],
)  # fmt: skip
def test_a_time_given_as_a_json_number_is_refused_as_its_digits_in_a_string_are(
    time_format, given, why
):
    """A fraction, a float's digits, a negative number, true or false, or a count
    implausible in the unit given is refused naming the field, as a string of it
    is, an opt-out held; without ``--time-format`` a count is refused saying so, as
    a string count is, not as "must be a string"."""
    counted = Mapping(time_format=time_format or "")
    line = json.dumps({**STOP, "occurred_at": None}).replace("null", given)  # as written
    (found,) = read_records(io.StringIO(line + "\n"), "jsonl", None, counted)

    assert isinstance(found, Unreadable) and found.field == "occurred_at", found
    assert why in found.reason, found.reason
    assert found.held is not None and found.held.opt_out.phone == "+14155550100"


def test_subscriber_rows_whose_times_are_json_numbers_refuse_an_opt_in_after_its_opt_out():
    """A row opting out before it opted in, its times JSON numbers: the opt-in was
    not compared with the opt-out (a number has no ``strip``) and went in after it,
    allowing the number. It is refused as with times in strings, on every row."""
    from services.import_files import BELONGS, FIELDS
    from services.import_mapping import from_parts

    rows = from_parts(
        columns=["phone=Phone", "occurred_at@opt_in=In", "occurred_at@opt_out=Out"],
        constants=["brand=acme", "campaign@opt_in=promo", "tier=promotional",
                   "method=paper", "channel=keyword", "proof.collection_detail=form 7"],
        fields=FIELDS, belongs=BELONGS, subscriber_rows=True, time_format="epoch-s",
    )  # fmt: skip
    lines = [
        {"Phone": "+14155550100", "In": 1706041141, "Out": 1706000000},
        {"Phone": "+14155550100", "In": 1706041141},
    ]
    text = "".join(json.dumps(line) + "\n" for line in lines)
    found = list(read_records(io.StringIO(text), "jsonl", None, rows))
    strings = "".join(
        json.dumps({k: str(v) if k != "Phone" else v for k, v in line.items()}) + "\n"
        for line in lines
    )

    opted_in = [r for r in found if isinstance(r, Unreadable)]
    assert len(opted_in) == 1 and opted_in[0].reason.startswith("is not before the opt-out's")
    assert opted_in[0].opted_out_id, opted_in[0]
    as_strings = list(read_records(io.StringIO(strings), "jsonl", None, rows))
    assert [r.record for r in found if isinstance(r, Read)] == [
        r.record for r in as_strings if isinstance(r, Read)
    ]
    assert opted_in[0].opted_out_id == next(
        r.opted_out_id for r in as_strings if isinstance(r, Unreadable)
    )


def test_the_summary_counts_skipped_records_by_their_skip_and_not_as_unsent():
    """Records ``--skip`` left out are done with: counted by the skip that matched,
    part of the file's records, never "not sent"; the opt-outs a skip matched and
    did not skip are counted apart, so that a skip too wide is seen."""
    summary = import_.Summary(
        imported=4, in_file=8,
        skipped={"Consent=NEVER_SUBSCRIBED": 2, "Channel=email": 1},
        not_skipped={"Channel=email": 1},
    )  # fmt: skip

    text = summary.lines("klaviyo.csv", 1.0, dry_run=True)

    assert text == [
        "would import 4 of 8 records from klaviyo.csv in 1.0 s (7 records/s)",
        "  already present: 0",
        "  refused: 0",
        "  not sent, the import stopped first: 1",
        "  skipped (--skip): 3",
        "         2  Consent=NEVER_SUBSCRIBED",
        "         1  Channel=email",
        "  matched --skip but opt-outs, so not skipped: 1",
        "         1  Channel=email",
        "  held for review: 0",
        "dry run: nothing was written",
    ]


def test_an_array_of_records_on_a_later_json_line_holds_each_opt_out_in_it(tmp_path):
    """A JSON export's array joined to JSON Lines: the line was refused as "not a JSON
    object" and held by nothing, so an opt-out in it left its number allowed while
    the file's opt-ins went in. Each object is refused, and an opt-out held by what
    it says; the progress bar's count finds them as the reader does."""
    stop = '{"type": "opt_out", "phone": "+14155550101", "brand": "acme"}'
    start = '{"type": "opt_in", "phone": "+14155550102", "brand": "acme"}'
    path = tmp_path / "x.jsonl"
    twice = stop[:-1] + ', "brand": "acme"}'  # a key given twice, in an array too
    path.write_text(f"{stop}\n[{stop}, {start}]\n42\n[{twice}]\n", encoding="utf-8")
    with open_text(path) as text:
        found = list(read_records(text, "jsonl"))
    refused = [r for r in found if isinstance(r, Unreadable)]
    assert [(r.line, r.reason) for r in refused] == [
        (line, "is not a JSON object") for line in (2, 2, 3, 4)
    ]
    assert [r.held is not None for r in refused] == [True, False, False, True]
    assert refused[0].held is not None and refused[0].held.opt_out.phone == "+14155550101"
    assert count_records(path, "jsonl") == len(found) == 5
