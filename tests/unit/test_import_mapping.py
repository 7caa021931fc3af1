"""Another platform's export read through a mapping (``services.import_mapping``,
``consent-ledger import --column/--value/--set/--mapping``): the same records, under
the same import ids, as the export rewritten under our own names; a mapping that
does not fit the file refused before anything is read; an unmapped value refusing
its record, an opt-out-looking one held; refusals named as the export names them."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

from services.cli import import_
from services.import_files import (
    BELONGS,
    FIELDS,
    FormatError,
    Read,
    Skipped,
    Unreadable,
    json_keys,
    read_records,
    unreadable_value,
)
from services.import_mapping import Mapping, MappingError, from_parts

THEIRS = """\
Phone Number,Status,Opted In At,Consent Text,IP Address,Email
+14155550100,subscribed,2026-11-02T09:30:00Z,Yes text me. STOP to end.,203.0.113.7,a@x.example
+14155550101,Unsubscribed ,2026-11-03T10:00:00Z,,,
+14155550102,pending,2026-11-03T10:00:00Z,,,
+14155550103,pending,2026-11-03T10:00:00Z,Yes text me. STOP to end.,,
"""
OURS = (
    "type,phone,brand,campaign,occurred_at,proof.registered_at,proof.consent_text,"
    "proof.ip_address,proof.email,tier,method,channel\n"
    "opt_in,+14155550100,acme,promo,2026-11-02T09:30:00Z,2026-11-02T09:30:00Z,"
    "Yes text me. STOP to end.,203.0.113.7,a@x.example,promotional,web_form,\n"
    "opt_out,+14155550101,acme,promo,2026-11-03T10:00:00Z,,,,,,,keyword\n"
)
OPTIONS = {
    "columns": [
        "phone=Phone Number",
        "type=Status",
        "occurred_at=Opted In At",
        "proof.registered_at=Opted In At",
        "proof.consent_text=Consent Text",
        "proof.ip_address=IP Address",
        "proof.email=Email",
    ],
    "values": ["type:subscribed=opt_in", "type:unsubscribed=opt_out"],
    "constants": [
        "brand=acme",
        "campaign=promo",
        "tier=promotional",
        "method=web_form",
        "channel=keyword",
    ],
}


def mapping(**changes: list[str]) -> Mapping:
    given = {**OPTIONS, **changes}
    return from_parts(**given, fields=FIELDS, belongs=BELONGS)


def read(text: str, fmt: str, with_mapping: Mapping | None = None) -> list[Read | Unreadable]:
    return list(read_records(io.StringIO(text), fmt, mapping=with_mapping))


def test_a_mapped_export_reads_as_the_same_records_under_the_same_import_ids():
    mapped = read(THEIRS, "csv", mapping())
    direct = read(OURS, "csv")

    assert [type(r) for r in mapped[:2]] == [Read, Read]
    assert [r.record for r in mapped[:2]] == [r.record for r in direct]  # type: ignore[union-attr]
    opt_in = mapped[0].record.opt_in  # type: ignore[union-attr]
    assert opt_in.request_id.startswith("import-") and opt_in.proof.email == "a@x.example"
    assert mapped[1].record.opt_out.phone == "+14155550101"  # type: ignore[union-attr]


def test_json_lines_read_through_nested_keys_as_the_csv_does():
    lines = [
        {
            "msisdn": "+14155550100",
            "state": "subscribed",
            "at": "2026-11-02T09:30:00Z",
            "consent": {"text": "Yes text me. STOP to end.", "ip": "203.0.113.7"},
            "contact": {"email": "a@x.example"},
        },
        {"msisdn": "+14155550101", "state": "unsubscribed", "at": "2026-11-03T10:00:00Z"},
    ]
    text = "".join(json.dumps(line) + "\n" for line in lines)
    nested = mapping(
        columns=[
            "phone=msisdn",
            "type=state",
            "occurred_at=at",
            "proof.registered_at=at",
            "proof.consent_text=consent.text",
            "proof.ip_address=consent.ip",
            "proof.email=contact.email",
        ]
    )
    nested.check_header(json_keys(io.StringIO(text)), "the file")

    assert [r.record for r in read(text, "jsonl", nested)] == [  # type: ignore[union-attr]
        r.record  # type: ignore[union-attr]
        for r in read(OURS, "csv")
    ]


def test_an_unmapped_value_refuses_its_record_and_holds_it_as_it_may_be_an_opt_out():
    _, _, plain, with_proof = read(THEIRS, "csv", mapping())

    assert isinstance(plain, Unreadable) and plain.field == "type"
    assert "'pending'" in plain.reason and "--value type" in plain.reason
    # No type it can be read as: it may be an opt-out, so its number is held.
    assert plain.held is not None and plain.held.opt_out.phone == "+14155550102"
    assert plain.held.opt_out.brand == "acme"
    # Every row has the proof columns: they do not make it an opt-in, held all the same.
    assert isinstance(with_proof, Unreadable) and with_proof.held is not None


def test_a_record_of_no_type_with_an_opt_in_s_own_column_is_refused_not_held():
    own = "Phone Number,Status,tier\n+14155550102,pending,promotional\n"
    (refused,) = read(own, "csv", mapping(columns=OPTIONS["columns"][:2], constants=[]))
    assert isinstance(refused, Unreadable) and refused.held is None


def test_a_record_whose_type_is_unmapped_gets_no_field_of_one_type_only():
    fields, problem = mapping().apply({"type": "maybe", "phone": "+14155550102"})

    assert problem is not None and problem[0] == "type"
    assert "tier" not in fields and "channel" not in fields and fields["brand"] == "acme"


@pytest.mark.parametrize(
    ("header", "words"),
    [
        ("Phone,Status,Opted In At", "no column 'Phone Number'"),
        ("Phone Number,Status,Opted In At,phone", "has a column 'phone'"),
        ("Phone Number,Status,Opted In At,brand", "has a column 'brand'"),
        ("Phone Number,Status,Status,Opted In At", "'Status' more than once"),
    ],
)
def test_a_mapping_that_does_not_fit_the_header_refuses_the_file(header, words):
    given = mapping(columns=OPTIONS["columns"][:3])
    with pytest.raises(MappingError, match=words):
        read(header + "\n+14155550100,subscribed,2026-11-02T09:30:00Z\n", "csv", given)


def test_a_json_key_no_line_has_refuses_the_file():
    keys = json_keys(io.StringIO('{"msisdn": "+1", "a": {"b": "c"}}\n'))
    assert keys == {"msisdn", "a", "a.b"}
    with pytest.raises(MappingError, match=r"no column 'a\.x'"):
        from_parts(["phone=msisdn", "proof.name=a.x"], fields=FIELDS).check_header(keys, "f")


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"columns": ["fone=Phone"]}, "fone: no such field"),
        ({"columns": ["Phone"]}, "give FIELD=VALUE"),
        ({"columns": ["phone=A", "phone=B"]}, "given twice"),
        ({"columns": ["brand=Brand"], "constants": ["brand=acme"]}, "both read from a column"),
        ({"values": ["type=opt_in"]}, "FIELD:EXPORT_VALUE=OUR_VALUE"),
        ({"values": ["type:a=opt_in", "type:A=opt_out"]}, "one value two ways"),
    ],
)
def test_a_mapping_that_says_a_thing_twice_or_wrong_is_refused(kwargs, words):
    with pytest.raises(MappingError, match=words):
        from_parts(**kwargs, fields=FIELDS)


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_a_mapping_file_is_the_options_said_once(tmp_path: Path, suffix):
    said = {"columns": {"phone": "Phone Number"}, "values": {"type": {"Y": "opt_in"}},
            "set": {"brand": "acme"}}  # fmt: skip
    toml = '[columns]\nphone = "Phone Number"\n[values.type]\nY = "opt_in"\n[set]\nbrand = "acme"\n'
    body = json.dumps(said) if suffix == ".json" else toml
    (tmp_path / f"m{suffix}").write_text(body)

    from_file = from_parts(file=tmp_path / f"m{suffix}", fields=FIELDS)

    assert from_file == from_parts(
        ["phone=Phone Number"], ["type:Y=opt_in"], ["brand=acme"], fields=FIELDS
    )
    with pytest.raises(MappingError, match="given twice"):
        from_parts(["phone=P"], file=tmp_path / f"m{suffix}", fields=FIELDS)


def test_refusals_name_the_export_s_columns(tmp_path: Path):
    mapped = mapping()
    assert mapped.shown("type") == "Status" and mapped.shown("brand") == "--set brand"
    export = tmp_path / "theirs.csv"
    export.write_text(THEIRS)
    reader = import_._opt_outs_first(export, None, "csv", str(export), mapped)
    refused = [r for r in reader if isinstance(r, Unreadable)]
    assert [r.field for r in refused] == ["Status", "Status"]


def test_a_column_neither_mapped_nor_ignored_refuses_the_file_and_an_ignored_one_is_unread():
    tagged = THEIRS.replace("Email\n", "Email,Tags\n", 1).replace(
        "a@x.example\n", "a@x.example,vip\n"
    )
    with pytest.raises(FormatError, match=r"unknown column.*'Tags'"):
        read(tagged, "csv", mapping())

    ignoring = from_parts(**OPTIONS, fields=FIELDS, belongs=BELONGS, ignored=["Tags"])
    assert [r.record for r in read(tagged, "csv", ignoring)[:2]] == [  # type: ignore[union-attr]
        r.record  # type: ignore[union-attr]
        for r in read(OURS, "csv")
    ]
    with pytest.raises(MappingError, match="no column 'Tags'"):
        read(THEIRS, "csv", ignoring)


def test_an_ignored_json_key_is_unread_nested_or_not():
    line = {"msisdn": "+14155550101", "state": "unsubscribed", "at": "2026-11-03T10:00:00Z",
            "meta": {"list": "x"}, "tags": ["a"]}  # fmt: skip
    given = from_parts(
        ["phone=msisdn", "type=state", "occurred_at=at"], OPTIONS["values"], OPTIONS["constants"],
        fields=FIELDS, belongs=BELONGS, ignored=["meta.list", "tags"],
    )  # fmt: skip
    (record,) = read(json.dumps(line) + "\n", "jsonl", given)
    assert record.record == read(OURS, "csv")[1].record  # type: ignore[union-attr]


LATER = "2026-11-30T08:00:00Z"


def test_a_field_read_from_a_column_of_its_record_type_gives_each_its_own_time(tmp_path: Path):
    """An export keeping "opted in at" and "opted out at" apart, its status a JSON
    boolean: each record read at its own type's time (``occurred_at@opt_out``), the
    same record as under our own names; an opt-out with no time of its own has none
    (the service refuses and holds it), never its opt-in's."""
    lines = [
        {"p": "+14155550100", "e": {"on": True, "in": "2026-10-01T08:00:00Z", "out": None}},
        {"p": "+14155550100", "e": {"on": False, "in": "2026-10-01T08:00:00Z", "out": LATER}},
        {"p": "+14155550101", "e": {"on": False, "in": "2026-10-01T08:00:00Z", "out": ""}},
    ]  # fmt: skip
    (tmp_path / "m.toml").write_text(
        '[columns]\nphone = "p"\ntype = "e.on"\noccurred_at = "e.in"\n'
        '"occurred_at@opt_out" = "e.out"\n"proof.registered_at" = "e.in"\n'
        '[values.type]\n"true" = "opt_in"\n"false" = "opt_out"\n'
        '[set]\nbrand = "acme"\ncampaign = "promo"\nchannel = "keyword"\n'
    )
    mapping = from_parts(file=tmp_path / "m.toml", fields=FIELDS, belongs=BELONGS)
    text = "".join(json.dumps(line) + "\n" for line in lines)
    mapping.check_header(json_keys(io.StringIO(text)), "the export")

    got = list(read_records(io.StringIO(text), "jsonl", None, mapping))

    ours = (
        "type,phone,brand,campaign,occurred_at,proof.registered_at,channel\n"
        "opt_in,+14155550100,acme,promo,2026-10-01T08:00:00Z,2026-10-01T08:00:00Z,\n"
        "opt_out,+14155550100,acme,promo,2026-11-30T08:00:00Z,,keyword\n"
    )
    assert [r.record for r in got[:2]] == [r.record for r in read(ours, "csv")]  # type: ignore[union-attr]
    untimed = got[2]  # the service refuses it, "is required", and holds it
    assert isinstance(untimed, Read) and untimed.record.HasField("opt_out"), untimed
    assert not untimed.record.opt_out.HasField("occurred_at"), untimed
    assert mapping.shown("occurred_at", "opt_out") == "e.out"
    assert mapping.shown("occurred_at", "opt_in") == "e.in"


@pytest.mark.parametrize(
    ("columns", "constants", "words"),
    [
        (["occurred_at@optout=X"], [], "give FIELD@opt_in or FIELD@opt_out"),
        (["type@opt_in=X"], [], "give FIELD@opt_in or FIELD@opt_out"),
        (["nope@opt_in=X"], [], "give FIELD@opt_in or FIELD@opt_out"),
        (["channel@opt_in=X"], [], "channel is a field of opt_out records only"),
        (["occurred_at@opt_out=X"], ["occurred_at=2026-11-30T08:00:00Z"], "both read from"),
        (["occurred_at@opt_out=X", "occurred_at@opt_out=Y"], [], "given twice"),
    ],
)
def test_a_column_of_one_record_type_that_cannot_be_used_is_refused(columns, constants, words):
    with pytest.raises(MappingError, match=words):
        from_parts(columns, (), constants, fields=FIELDS, belongs=BELONGS)


def test_a_field_set_for_one_record_type_leaves_the_other_type_without_it():
    """A platform's "unsubscribed" most often ends every text of the brand: with
    ``--set campaign=promo`` its opt-outs were of promo alone, and the brand's
    other campaigns kept allowing the number. ``campaign@opt_in`` sets the opt-ins'
    campaign only, so the opt-outs are of every campaign."""
    constants = [c for c in OPTIONS["constants"] if not c.startswith("campaign=")]
    typed = mapping(constants=[*constants, "campaign@opt_in=promo"])

    got = read(THEIRS, "csv", typed)

    opt_in, opt_out = (r.record for r in got[:2])  # type: ignore[union-attr]
    assert opt_in.opt_in.campaign == "promo"
    assert opt_out.HasField("opt_out") and opt_out.opt_out.campaign == ""
    assert typed.shown("campaign", "opt_in") == "--set campaign@opt_in"


@pytest.mark.parametrize(
    ("constants", "words"),
    [
        (["campaign@optin=promo"], "give FIELD@opt_in or FIELD@opt_out"),
        (["type@opt_in=opt_in"], "give FIELD@opt_in or FIELD@opt_out"),
        (["channel@opt_in=keyword"], "channel is a field of opt_out records only"),
        (["campaign@opt_in=promo", "campaign=promo"], "for every record and for one record type"),
        (["import_id@opt_out=x"], "every record would have the one id"),
    ],
)
def test_a_field_set_for_one_record_type_that_cannot_be_used_is_refused(constants, words):
    with pytest.raises(MappingError, match=words):
        from_parts((), (), constants, fields=FIELDS, belongs=BELONGS)


@pytest.mark.parametrize("kind", ["OPT_IN", "Opt_In"])
def test_a_record_type_in_other_capitals_is_read_as_ours(kind):
    """Our field names are taken in other capitals; the record type after ``@`` is too,
    not refused as a usage error."""
    typed = mapping(
        constants=[
            *(c for c in OPTIONS["constants"] if not c.startswith("campaign=")),
            f"Campaign@{kind}=promo",
        ]
    )

    opt_in, opt_out = (r.record for r in read(THEIRS, "csv", typed)[:2])  # type: ignore[union-attr]

    assert opt_in.opt_in.campaign == "promo"
    assert opt_out.HasField("opt_out") and opt_out.opt_out.campaign == ""
    with pytest.raises(MappingError, match="one field but for capitals"):
        from_parts((), (), [f"campaign@{kind}=a", "campaign@opt_in=b"], fields=FIELDS)


def test_a_column_of_our_own_name_beside_a_typed_mapping_of_it_refuses_the_file():
    mapping = from_parts(["occurred_at@opt_out=Out"], fields=FIELDS, belongs=BELONGS)

    with pytest.raises(MappingError, match="has a column 'occurred_at'"):
        mapping.check_header(["phone", "occurred_at", "Out"], "the header")


@pytest.mark.parametrize(
    ("values", "constants", "words"),
    [
        ([], ["channel=sms"], "--set channel: is not one of keyword"),
        ([], ["method=form"], "--set method: is not one of "),
        ([], ["proof.registered_at=2026-11-30"], "--set proof.registered_at: has no time zone"),
        (["type:gone=opt-outs"], [], "--value type:gone=opt-outs: must be opt_in or opt_out"),
        (["tier:vip=gold"], [], "--value tier:vip=gold: is not one of conversational"),
        ([], ["import_id=batch-7"], "--set import_id: every record would have the one id"),
        (["type: =opt_out"], [], "--value type: =opt_out: an empty value cannot be mapped"),
        ([], ["brand="], "--set brand: is empty"),
        ([], ["campaign@opt_in= "], "--set campaign@opt_in: is empty"),
        ([], ["brand=ac\x00me"], "--set brand: must not hold"),
        ([], ["brand=" + "a" * 65], "--set brand: must be 1-64 chars"),
        (["brand:ACME=Acme"], [], "--value brand:ACME=Acme: must be 1-64 chars"),
        ([], ["campaign@opt_in=promo!"], "--set campaign@opt_in: must be 1-64 chars"),
        ([], ["proof.consent_text=" + "x" * 8_193], "--set proof.consent_text: must be at most"),
        (["proof.name:a=b\tc"], [], "--value proof.name:a=b\tc: must not hold"),
    ],
)
def test_a_value_its_field_cannot_hold_is_refused_before_the_file_is_read(values, constants, words):
    with pytest.raises(MappingError, match=words):
        from_parts(
            (), values, constants, fields=FIELDS, belongs=BELONGS, unreadable=unreadable_value
        )


def test_a_value_mapped_to_nothing_or_spelt_as_the_reader_reads_it_is_kept():
    given = from_parts(
        ["type=Status"],
        ["type:gone=", "type:Unsubscribed=Opt-Out", "channel:sms= Keyword"],
        ["tier=Promotional"],
        fields=FIELDS, belongs=BELONGS, unreadable=unreadable_value,
    )  # fmt: skip
    assert given.values["type"] == {"gone": "", "unsubscribed": "Opt-Out"}


def test_a_nested_key_given_twice_is_named_by_its_path_not_by_a_key_of_the_same_name():
    """A JSON line repeating "at" inside "consent": the refusal names consent.at,
    the key the mapping reads the proof's time from, not the line's own "at"."""
    line = {"p": "+14155550100", "s": "unsubscribed", "at": "2026-11-30T08:00:00Z"}
    raw = json.dumps(line)[:-1] + ', "consent": {"at": "2026-10-01T08:00:00Z", "at": "x"}}\n'
    given = from_parts(
        ["phone=p", "type=s", "occurred_at=at", "proof.registered_at=consent.at"],
        ["type:unsubscribed=opt_out"], ["brand=acme", "channel=keyword"],
        fields=FIELDS, belongs=BELONGS,
    )  # fmt: skip

    (refused,) = read(raw, "jsonl", given)

    assert isinstance(refused, Unreadable), refused
    assert (refused.field, refused.reason) == ("consent.at", "is given more than once")
    assert refused.held is not None  # an opt-out all the same
    (ours,) = read('{"type": "opt_in", "proof": {"name": "a", "name": "b"}}\n', "jsonl")
    assert isinstance(ours, Unreadable) and ours.field == "proof.name", ours


def test_a_mapped_json_key_a_line_gives_twice_apart_refuses_it_and_holds_its_opt_out():
    """A line giving a mapped key twice (spelt out as ``event.status`` and nested, or
    in other capitals) had the one spelt as mapped read, the other dropped: a nested
    "unsubscribed" beside a flat "subscribed" was imported as an opt-in, exit 0, and
    its number stayed open. Now which was meant cannot be told: each record of the
    line is refused, an opt-out it may be held, and the line never skipped; values
    alike are read as ever."""
    given = from_parts(
        ["phone=p", "type=event.status", "occurred_at=at"],
        ["type:subscribed=opt_in", "type:unsubscribed=opt_out"],
        ["brand=acme", "campaign@opt_in=promo", "channel=keyword"],
        ignored=["event"],  # the rest of the event is left unread
        fields=FIELDS, belongs=BELONGS, skip=["kind=email"],
    )  # fmt: skip
    at = {"p": "+14155550100", "at": OUT, "kind": "email"}
    lines = [
        {**at, "event.status": "subscribed", "event": {"status": "unsubscribed"}},
        {**at, "event": {"status": "subscribed", "Status": "unsubscribed"}},
        {**at, "EVENT": {"status": "subscribed"}, "event": {"status": "unsubscribed"}},
        {**at, "event.status": "unsubscribed", "event": {"status": " unsubscribed"}},
        {**at, "event.status": "subscribed", "event": {"status": "subscribed", "x": 1}},
    ]
    text = "".join(json.dumps(line) + "\n" for line in lines)

    found = fitted_read(text, "jsonl", given)

    for refused in found[:4]:
        assert isinstance(refused, Unreadable), refused
        assert refused.field == "type" and "is given more than once" in refused.reason
        assert refused.held is not None and refused.held.opt_out.phone == "+14155550100"
    assert found[4] == Skipped(5, "kind=email", True)  # alike: one value, read as ever
    fitted = given.fitted(json_keys(io.StringIO(text)), "the JSON lines")
    assert list(read_records(io.StringIO(text), "jsonl", True, fitted)) == [found[4]]

    # A subscriber row's opt-out time given twice apart: its opt-in is refused too.
    rows = from_parts(
        ["phone=Phone", "occurred_at@opt_in=in", "occurred_at@opt_out=out"], (),
        ["brand=acme", "campaign@opt_in=promo", "channel=keyword"],
        fields=FIELDS, belongs=BELONGS, subscriber_rows=True,
    )  # fmt: skip
    row = {"Phone": "+14155550101", "in": IN, "out": None, "OUT": OUT}
    opt_in, opt_out = fitted_read(json.dumps(row) + "\n", "jsonl", rows)
    assert isinstance(opt_in, Unreadable) and opt_in.opt_in and opt_in.held is None
    assert isinstance(opt_out, Unreadable) and opt_out.held is not None, opt_out


# One row per subscriber (``--subscriber-rows``): no status column, an opt-in time and
# an opt-out time empty while the subscriber still is one.
SUBSCRIBERS = """\
Phone,Opted In At,Opted Out At,Consent Text,Channel
+14155550200,2026-10-01T08:00:00Z,,Yes text me. STOP to end.,
+14155550201,2026-10-01T08:00:00Z,2026-11-30T08:00:00Z,Yes text me. STOP to end.,keyword
+14155550202,,2026-11-30T08:00:00Z,,web
+14155550203,2026-11-30T08:00:00Z,2026-10-01T08:00:00Z,Yes text me. STOP to end.,keyword
+14155550204,2026-10-01T08:00:00Z,yesterday,Yes text me. STOP to end.,keyword
+14155550205,2026-10-01T08:00:00Z,   ,Yes text me. STOP to end.,
"""
SUBSCRIBER_COLUMNS = [
    "phone=Phone",
    "occurred_at@opt_in=Opted In At",
    "occurred_at@opt_out=Opted Out At",
    "proof.registered_at=Opted In At",
    "proof.consent_text=Consent Text",
    "channel=Channel",
]
SUBSCRIBER_SET = ["brand=acme", "campaign@opt_in=promo", "tier=promotional", "method=web_form"]
IN, OUT = "2026-10-01T08:00:00Z", "2026-11-30T08:00:00Z"
TWO_RECORDS_BY_HAND = (
    "type,phone,brand,campaign,occurred_at,proof.registered_at,proof.consent_text,tier,"
    "method,channel\n"
    f"opt_in,+14155550200,acme,promo,{IN},{IN},Yes text me. STOP to end.,promotional,web_form,\n"
    f"opt_in,+14155550201,acme,promo,{IN},{IN},Yes text me. STOP to end.,promotional,web_form,\n"
    f"opt_out,+14155550201,acme,,{OUT},,,,,keyword\n"
    f"opt_out,+14155550202,acme,,{OUT},,,,,web\n"
    f"opt_out,+14155550203,acme,,{IN},,,,,keyword\n"
    f"opt_in,+14155550204,acme,promo,{IN},{IN},Yes text me. STOP to end.,promotional,web_form,\n"
    f"opt_in,+14155550205,acme,promo,{IN},{IN},Yes text me. STOP to end.,promotional,web_form,\n"
)


def subscriber_rows(**changes: Any) -> Mapping:
    given: dict[str, Any] = {
        "columns": SUBSCRIBER_COLUMNS,
        "constants": SUBSCRIBER_SET,
        "subscriber_rows": True,
        **changes,
    }
    return from_parts(**given, fields=FIELDS, belongs=BELONGS, unreadable=unreadable_value)


def test_a_subscriber_row_is_an_opt_in_and_an_opt_out_as_two_records_written_by_hand():
    """Each row is an opt-in at its opt-in time with its proof and, when its opt-out
    time is given, an opt-out at that time: the records, and so the import ids, of
    the export rewritten by hand as two records a row. A row with no opt-in time is
    its opt-out alone."""
    got = read(SUBSCRIBERS, "csv", subscriber_rows())
    by_hand = [r.record for r in read(TWO_RECORDS_BY_HAND, "csv")]  # type: ignore[union-attr]

    read_ = [r.record for r in got if isinstance(r, Read)]
    assert read_ == by_hand, got
    ids = [getattr(r, r.WhichOneof("record")).request_id for r in read_]
    assert len(set(ids)) == len(ids) and all(i.startswith("import-") for i in ids)
    # The first row's opt-out time is empty, the last's only spaces: no opt-out.
    assert [r.line for r in got if isinstance(r, Read)] == [2, 3, 3, 4, 5, 6, 7]


def test_a_subscriber_row_whose_opt_out_is_not_after_its_opt_in_keeps_the_opt_out_alone():
    """Read as opted out (an opt-out time is given), the row never allows: a time
    wrong in the export, or a subscriber who came back later, is for a person to
    sort out. Its opt-out is imported at its time, its opt-in refused, not held."""
    got = [r for r in read(SUBSCRIBERS, "csv", subscriber_rows()) if r.line == 5]
    opt_in, opt_out = got
    assert isinstance(opt_out, Read) and opt_out.record.opt_out.phone == "+14155550203"
    assert isinstance(opt_in, Unreadable) and opt_in.opt_in and opt_in.held is None
    assert opt_in.field == "occurred_at"
    assert "not before the opt-out's time in its row (Opted Out At" in opt_in.reason
    same_time = SUBSCRIBERS.replace(f"0203,{OUT},{IN}", f"0203,{IN},{IN}")
    got = [r for r in read(same_time, "csv", subscriber_rows()) if r.line == 5]
    assert [type(r) for r in got] == [Unreadable, Read], got


def test_a_subscriber_row_s_unreadable_opt_out_time_is_held_and_its_opt_in_read():
    got = [r for r in read(SUBSCRIBERS, "csv", subscriber_rows()) if r.line == 6]
    opt_in, opt_out = got
    assert isinstance(opt_in, Read) and opt_in.record.HasField("opt_in")
    assert isinstance(opt_out, Unreadable) and opt_out.field == "occurred_at"
    assert opt_out.held is not None and opt_out.held.opt_out.phone == "+14155550204"


def test_subscriber_rows_split_between_the_opt_outs_part_and_the_opt_ins_part():
    mapping = subscriber_rows()
    outs = list(read_records(io.StringIO(SUBSCRIBERS), "csv", False, mapping))
    ins = list(read_records(io.StringIO(SUBSCRIBERS), "csv", True, mapping))

    assert [r.line for r in outs] == [3, 4, 5, 6]
    assert all(isinstance(r, Unreadable) or r.record.HasField("opt_out") for r in outs)
    assert [r.line for r in ins] == [2, 3, 5, 6, 7]
    assert all(isinstance(r, Unreadable) or r.record.HasField("opt_in") for r in ins)


def test_subscriber_rows_of_json_lines_read_as_the_csv_does():
    lines = [
        {"p": "+14155550201", "in": IN, "out": OUT, "text": "Yes text me. STOP to end.",
         "ch": "keyword"},
        {"p": "+14155550200", "in": IN, "out": None, "text": "Yes text me. STOP to end."},
    ]  # fmt: skip
    text = "".join(json.dumps(line) + "\n" for line in lines)
    columns = [
        "phone=p", "occurred_at@opt_in=in", "occurred_at@opt_out=out",
        "proof.registered_at=in", "proof.consent_text=text", "channel=ch",
    ]  # fmt: skip
    mapping = subscriber_rows(columns=columns)
    mapping.check_header(json_keys(io.StringIO(text)), "the export")
    by_hand = [r.record for r in read(TWO_RECORDS_BY_HAND, "csv")]  # type: ignore[union-attr]

    got = [r.record for r in read(text, "jsonl", mapping)]  # type: ignore[union-attr]

    assert got == [by_hand[1], by_hand[2], by_hand[0]]


def test_the_subscriber_rows_key_of_a_mapping_file_is_the_option(tmp_path: Path):
    (tmp_path / "m.toml").write_text(
        'subscriber_rows = true\n[columns]\nphone = "Phone"\n'
        '"occurred_at@opt_in" = "Opted In At"\n"occurred_at@opt_out" = "Opted Out At"\n'
    )
    (tmp_path / "m.json").write_text(json.dumps({"subscriber_rows": "yes"}))
    given = from_parts(file=tmp_path / "m.toml", fields=FIELDS, belongs=BELONGS)

    assert given.subscriber_rows
    with pytest.raises(MappingError, match="given twice"):
        from_parts(file=tmp_path / "m.toml", fields=FIELDS, subscriber_rows=True)
    with pytest.raises(MappingError, match="subscriber_rows must be true or false"):
        from_parts(file=tmp_path / "m.json", fields=FIELDS)


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"columns": SUBSCRIBER_COLUMNS[:2]}, "give --column occurred_at@opt_out=HEADER"),
        ({"columns": [SUBSCRIBER_COLUMNS[0], *SUBSCRIBER_COLUMNS[2:]]}, "occurred_at@opt_in"),
        ({"columns": [*SUBSCRIBER_COLUMNS, "type=Status"]}, "a type (--column type"),
        ({"constants": [*SUBSCRIBER_SET, "type=opt_in"]}, "a type (--column type"),
        ({"values": ["type:a=opt_in"]}, "a type (--column type"),
        ({"columns": [*SUBSCRIBER_COLUMNS, "occurred_at=Opted In At"]}, "occurred_at is read"),
        ({"columns": [*SUBSCRIBER_COLUMNS, "import_id=Id"]}, "names the subscriber"),
        (
            {"columns": [*SUBSCRIBER_COLUMNS[:2], "occurred_at@opt_out=Opted In At"]},
            "one column",
        ),
    ],
)
def test_subscriber_rows_with_a_mapping_that_says_otherwise_is_refused(changes, words):
    with pytest.raises(MappingError, match=re.escape(words)):
        subscriber_rows(**changes)


def test_subscriber_rows_refuse_a_type_column_of_our_own_name():
    with pytest.raises(MappingError, match="has a column 'type'"):
        read("type," + SUBSCRIBERS, "csv", subscriber_rows())


def test_an_opt_out_time_column_without_a_type_asks_for_subscriber_rows():
    """Without a type, every record would be refused (and each held): the shape of
    a subscriber export, said so before anything is sent."""
    given = from_parts(SUBSCRIBER_COLUMNS, (), SUBSCRIBER_SET, fields=FIELDS, belongs=BELONGS)
    with pytest.raises(MappingError, match="--subscriber-rows"):
        read(SUBSCRIBERS, "csv", given)
    typed = from_parts(
        [*SUBSCRIBER_COLUMNS, "type=Status"], (), SUBSCRIBER_SET, fields=FIELDS, belongs=BELONGS
    )
    typed.check_header([*SUBSCRIBERS.splitlines()[0].split(","), "Status"], "the header")


def test_a_refused_typed_time_names_the_column_of_its_record_type(tmp_path: Path):
    """An opt-out whose own time cannot be read is named by its own column, not
    "Opted Out At or Opted In At"."""
    export = tmp_path / "theirs.csv"
    export.write_text(
        "Phone,Status,Opted In At,Opted Out At\n"
        "+14155550101,unsubscribed,2026-10-01T08:00:00Z,yesterday\n"
        "+14155550101,subscribed,tomorrow,\n"
    )
    given = from_parts(
        ["phone=Phone", "type=Status", "occurred_at=Opted In At",
         "occurred_at@opt_out=Opted Out At"],
        OPTIONS["values"], ["brand=acme", "campaign=promo", "channel=keyword"],
        fields=FIELDS, belongs=BELONGS,
    )  # fmt: skip
    reader = import_._opt_outs_first(export, None, "csv", str(export), given)
    refused = [r for r in reader if isinstance(r, Unreadable)]
    assert [r.field for r in refused] == ["Opted Out At", "Opted In At"], refused


@pytest.mark.parametrize(
    "header",
    [
        " Phone Number , Status,Opted In At ,Consent Text,IP Address,Email",
        "phone number,STATUS,opted in at,consent text,ip address,EMAIL",
        '"Phone Number ","Status","Opted In At","Consent Text","IP Address","Email"',
    ],
)
def test_a_mapped_column_is_found_whatever_the_spaces_around_it_and_its_capitals(header):
    """A spreadsheet's header keeps spaces no one sees, and another export's
    capitals differ from the one the mapping was written for: read the same."""
    export = header + "\n" + THEIRS.split("\n", 1)[1]
    spaced = mapping(columns=[c.replace("=", "= ") + " " for c in OPTIONS["columns"]])
    assert read(export, "csv", mapping()) == read(THEIRS, "csv", mapping())
    assert read(THEIRS, "csv", spaced) == read(THEIRS, "csv", mapping())


def test_a_mapped_column_two_columns_spell_but_for_capitals_refuses_the_file():
    header = "Phone Number,Status,status,Opted In At,Consent Text,IP Address,Email"
    given = mapping(columns=["phone=Phone Number", "type=STATUS", "occurred_at=Opted In At"])
    with pytest.raises(MappingError, match="'STATUS' could be any of 'Status', 'status'"):
        read(header + "\n+14155550100,subscribed,x,2026-11-02T09:30:00Z,,,\n", "csv", given)


def test_a_mapped_json_key_is_found_whatever_the_spaces_around_it_and_its_capitals():
    line = {" phone number": "+14155550101", "STATUS": "unsubscribed",
            "Opted In at": "2026-11-03T10:00:00Z", "Meta": {" list": "x"}}  # fmt: skip
    given = from_parts(
        ["phone=Phone Number", "type=Status", "occurred_at=Opted In At"], OPTIONS["values"],
        OPTIONS["constants"], fields=FIELDS, belongs=BELONGS, ignored=["meta.list"],
    )  # fmt: skip
    text = json.dumps(line) + "\n"
    fitted = given.fitted(json_keys(io.StringIO(text)), "the JSON lines")
    (record,) = read(text, "jsonl", fitted)
    assert record.record == read(OURS, "csv")[1].record  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("body", "suffix", "words"),
    [
        ('{"columns": {"phone": "A", "phone": "B"}}', ".json", "'phone' is given twice"),
        ('{"values": {"type": {"y": "opt_in", "y": "opt_out"}}}', ".json", "'y' is given twice"),
        (b"\xff\xfe[columns]", ".toml", "not UTF-8"),
    ],
)
def test_a_mapping_file_that_says_a_thing_twice_or_is_not_utf_8_is_refused(
    tmp_path: Path, body, suffix, words
):
    path = tmp_path / f"m{suffix}"
    path.write_bytes(body if isinstance(body, bytes) else body.encode())
    with pytest.raises(MappingError, match=words):
        from_parts(file=path, fields=FIELDS)


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_a_mapping_file_saved_with_a_byte_order_mark_is_read(tmp_path: Path, suffix):
    body = '{"columns": {"phone": "P"}}' if suffix == ".json" else '[columns]\nphone = "P"\n'
    (tmp_path / f"m{suffix}").write_text("\ufeff" + body, encoding="utf-8")
    assert from_parts(file=tmp_path / f"m{suffix}", fields=FIELDS) == from_parts(
        ["phone=P"], fields=FIELDS
    )


@pytest.mark.parametrize(
    ("columns", "ignored", "words"),
    [
        (["occurred_at@opt_out=opted in at "], [], "read from one column"),
        ([], ["phone "], "'Phone' is both read"),
    ],
)
def test_a_column_named_two_ways_that_the_header_reads_as_one_is_refused(columns, ignored, words):
    """What is refused of one spelling is refused of two the header reads alike."""
    given = from_parts(
        [*SUBSCRIBER_COLUMNS[:1], "occurred_at@opt_in=Opted In At",
         *(columns or SUBSCRIBER_COLUMNS[2:3])],
        (), SUBSCRIBER_SET, fields=FIELDS, belongs=BELONGS, ignored=ignored,
        subscriber_rows=True,
    )  # fmt: skip
    with pytest.raises(MappingError, match=words):
        given.fitted(["Phone", "Opted In At", "Opted Out At"], "the header")


def test_a_mapped_export_joined_to_another_with_its_byte_order_mark_is_read_under_its_header():
    """``cat a.csv b.csv`` of two exports saved with a byte-order mark: the second's
    header is its header again, not a record of phone "Phone Number"."""
    body = THEIRS.split("\n", 1)[1]
    joined = read(THEIRS + "\ufeff" + THEIRS, "csv", mapping())
    assert [getattr(r, "reason", "")[:24] for r in joined][len(read(THEIRS, "csv", mapping()))] == (
        "repeats the header row ("
    )
    assert (
        joined[-4:] == read(THEIRS + THEIRS.split("\n", 1)[0] + "\n" + body, "csv", mapping())[-4:]
    )


def test_a_value_mapped_under_the_export_s_column_name_says_which_field_to_name():
    with pytest.raises(MappingError, match=r"'Status' is the column type is read from: give --val"):
        mapping(values=["Status:subscribed=opt_in"])


def test_each_json_line_s_keys_are_matched_whatever_their_spaces_and_capitals():
    """JSON Lines have no one header: a line may spell a key as no other does, and
    is read as the others are, not refused (and held) for a key no record has."""
    lines = [
        {"msisdn": "+14155550101", "state": "unsubscribed", "at": "2026-11-03T10:00:00Z"},
        {"MSISDN ": "+14155550101", "State": "unsubscribed", "AT": "2026-11-03T10:00:00Z",
         "Meta": {"List ": "x"}},
    ]  # fmt: skip
    given = from_parts(
        ["phone=msisdn", "type=state", "occurred_at=at"], OPTIONS["values"], OPTIONS["constants"],
        fields=FIELDS, belongs=BELONGS, ignored=["meta.list"],
    )  # fmt: skip
    text = "".join(json.dumps(line) + "\n" for line in lines)
    fitted = given.fitted(json_keys(io.StringIO(text)), "the JSON lines")
    first, second = read(text, "jsonl", fitted)
    assert first.record == second.record == read(OURS, "csv")[1].record  # type: ignore[union-attr]


def test_a_toml_mapping_file_s_dotted_keys_need_no_quotes(tmp_path: Path):
    """In TOML, ``proof.name = "Full Name"`` is a key within a table ``proof``: read
    as the field it spells, as quoted."""
    (tmp_path / "m.toml").write_text(
        '[columns]\nproof.name = "Full Name"\nproof.ip_address = "IP"\n'
        '[set]\nproof.consent_text = "Yes"\nbrand = "acme"\n'
    )
    assert from_parts(file=tmp_path / "m.toml", fields=FIELDS) == from_parts(
        ["proof.name=Full Name", "proof.ip_address=IP"], (),
        ["proof.consent_text=Yes", "brand=acme"], fields=FIELDS,
    )  # fmt: skip
    (tmp_path / "m.toml").write_text('[columns]\nproof.name = "A"\n"proof.name" = "B"\n')
    with pytest.raises(MappingError, match=r"proof\.name is given twice"):
        from_parts(file=tmp_path / "m.toml", fields=FIELDS)


def test_a_mapped_column_s_cell_of_spaces_is_read_as_empty_not_as_a_value():
    """A cell of spaces is no value, as an empty one is: never looked up."""
    blank, spaces = (
        read(THEIRS.replace("pending", cell, 1), "csv", mapping())[2] for cell in ("", "   ")
    )
    assert isinstance(spaces, Unreadable) and spaces.reason == blank.reason, (blank, spaces)  # type: ignore[union-attr]


def test_a_mapped_header_separated_by_semicolons_is_refused_saying_so():
    """Under a mapping, a semicolon-separated export was refused as a header with
    no column 'Phone Number', its one column 'Phone Number;Status;...': the
    separator, not the mapping, is what is wrong, and now the refusal says so."""
    header = THEIRS.splitlines()[0].replace(",", ";")

    with pytest.raises(FormatError, match="separated by semicolons"):
        read(header + "\n", "csv", mapping())


def test_a_value_mapping_of_one_record_types_column_is_refused_as_such():
    """``--value occurred_at@opt_out:N/A=`` was refused as mapping a column "the
    header has no column for", beside ``--column occurred_at@opt_out="Opted Out
    At"`` and a header holding that column: the form, not the header, is what
    cannot be used, and the refusal now says so."""
    header = ["Phone Number", "Opted In At", "Opted Out At"]

    with pytest.raises(MappingError, match="not those of one record type's column"):
        from_parts(
            columns=["phone=Phone Number", "occurred_at@opt_in=Opted In At",
                     "occurred_at@opt_out=Opted Out At"],
            values=["occurred_at@opt_out:N/A="],
            fields=FIELDS, belongs=BELONGS, subscriber_rows=True,
        ).fitted(header, "the header")  # fmt: skip


@pytest.mark.parametrize(
    ("given", "zone", "words"),
    [
        ("%m/%d/%Y %I:%M %p", None, "gives no offset (%z), so its times are of a zone the "
         "export does not say; name it with --time-zone"),
        ("%m/%d/%Y", "UTC", "gives no time of day"),
        ("%m/%d %H:%M", "UTC", "gives no whole date: a year"),
        ("%Y-%m %H:%M", "UTC", "gives no whole date"),
        ("%m/%d/%Y %I:%M", "UTC", "gives the hour on a 12-hour clock (%I) with no AM or PM"),
        ("%Y-%m-%d %H:%M %Z", None, "strptime reads a zone's name (%Z) as no zone at all"),
        ("%Y-%m-%d %H:%M %Q", "UTC", "%Q is no directive strptime reads"),
        ("%Y-%m-%d %H:%M %", "UTC", "ends in a lone %"),
        ("%Y-%m-%d %H:%M %Y", "UTC", "gives %Y twice"),
        ("%c", "UTC", "%c is the locale's way of writing a date or time"),
        ("milliseconds", None, "give epoch-s, epoch-ms, or a strptime format"),
        ("", None, "give epoch-s, epoch-ms, or a strptime format"),
    ],
)  # fmt: skip
def test_a_time_format_that_does_not_give_a_whole_moment_is_a_usage_error(given, zone, words):
    with pytest.raises(MappingError) as refused:
        from_parts(fields=FIELDS, time_format=given, time_zone=zone)
    assert str(refused.value).startswith(f"--time-format {given!r}: {words}"), refused.value


def test_the_time_format_key_of_a_mapping_file_is_the_option(tmp_path: Path):
    (tmp_path / "m.toml").write_text(
        'time_format = "%m/%d/%Y %I:%M %p"\ntime_zone = "America/New_York"\n'
    )
    (tmp_path / "m.json").write_text(json.dumps({"time_format": 1706041141103}))
    given = from_parts(file=tmp_path / "m.toml", fields=FIELDS)

    assert (given.time_format, given.time_zone) == ("%m/%d/%Y %I:%M %p", "America/New_York")
    assert from_parts(fields=FIELDS, time_format="epoch-ms").time_format == "epoch-ms"
    assert from_parts(fields=FIELDS, time_format="%Y-%m-%dT%H:%M%z").time_format
    with pytest.raises(MappingError, match="--time-format is given twice"):
        from_parts(file=tmp_path / "m.toml", fields=FIELDS, time_format="epoch-s")
    with pytest.raises(MappingError, match="time_format must be a string"):
        from_parts(file=tmp_path / "m.json", fields=FIELDS)
    with pytest.raises(MappingError, match="--set occurred_at: is not a count of seconds"):
        from_parts(
            constants=["occurred_at=2024-01-02T09:00:00Z"], fields=FIELDS,
            unreadable=unreadable_value, time_format="epoch-s",
        )  # fmt: skip


@pytest.mark.parametrize("unit", ["epoch-s", "epoch-ms"])
def test_a_time_zone_beside_a_count_since_1970_is_a_usage_error(
    tmp_path: Path, unit: str, capsys: pytest.CaptureFixture[str]
):
    """A count is UTC: a zone given with it was accepted and never used, and read as
    the zone the counts are in. Refused, as an option and as a mapping file's key:
    the command exits 2 before it reads the file or sends anything."""
    from services.cli import main as cli

    said = (
        f"--time-zone 'America/New_York' does not apply to --time-format {unit}: a count "
        "since 1970 is UTC"
    )
    with pytest.raises(MappingError, match=re.escape(said)):
        from_parts(fields=FIELDS, time_format=unit, time_zone="America/New_York")
    (tmp_path / "m.toml").write_text(f'time_format = "{unit}"\ntime_zone = "America/New_York"\n')
    with pytest.raises(MappingError, match=re.escape(said)):
        from_parts(file=tmp_path / "m.toml", fields=FIELDS)
    (tmp_path / "m.json").write_text(json.dumps({"time_zone": "America/New_York"}))
    with pytest.raises(MappingError, match=re.escape(said)):
        from_parts(file=tmp_path / "m.json", fields=FIELDS, time_format=unit)
    # A strptime format without an offset still reads its times in the zone.
    assert from_parts(fields=FIELDS, time_format="%m/%d/%Y %H:%M", time_zone="UTC").time_zone
    export = tmp_path / "export.csv"
    export.write_text(
        "type,phone,brand,occurred_at,channel\nopt_out,+14155550100,acme,1706041141,keyword\n"
    )
    argv = ["import", str(export), "--time-format", unit, "--time-zone", "America/New_York"]
    assert cli.main([*argv, "--address", "127.0.0.1:9", "--token-file", str(export)]) == 2
    assert said in capsys.readouterr().err


KLAVIYO = """\
Phone Number,Consent,Opted In At,Consent Text,IP Address,Email,Channel Kind
+14155550300,SUBSCRIBED,2026-11-02T09:30:00Z,Yes text me. STOP to end.,203.0.113.7,a@x.example,SMS
+14155550301,UNSUBSCRIBED,2026-11-03T10:00:00Z,,,,SMS
+14155550302,NEVER_SUBSCRIBED,2026-11-03T10:00:00Z,,,,SMS
+14155550303, never_subscribed ,2026-11-03T10:00:00Z,,,,SMS
+14155550304,UNSUBSCRIBED,2026-11-03T10:00:00Z,,,,Email
+14155550305,SUBSCRIBED,2026-11-02T09:30:00Z,Yes text me. STOP to end.,203.0.113.7,,Email
+14155550306,pending,2026-11-03T10:00:00Z,,,,Email
"""
KLAVIYO_OPTIONS: dict[str, list[str]] = {
    "columns": [c.replace("Status", "Consent") for c in OPTIONS["columns"]],
    "values": ["type:subscribed=opt_in", "type:unsubscribed=opt_out"],
}


def klaviyo(**changes: Any) -> Mapping:
    given = {**OPTIONS, **KLAVIYO_OPTIONS, **changes}
    return from_parts(**given, fields=FIELDS, belongs=BELONGS)


def test_a_row_a_skip_matches_is_skipped_in_its_part_of_the_file_never_sent():
    """Klaviyo's NEVER_SUBSCRIBED is neither an opt-in nor an opt-out: refused and held
    for review, each filled the queue. Skipped by ``--skip``, it is read as such (its
    value as ``--value`` reads one), in the part of the file its type puts it in; the
    other records are the very ones read without the skip, under the same ids."""
    skip = ["Consent=NEVER_SUBSCRIBED", "Channel Kind=email"]
    with_skip = klaviyo(skip=skip)
    without = read(KLAVIYO, "csv", klaviyo(ignored=["Channel Kind"]))
    found = read(KLAVIYO, "csv", with_skip)

    assert isinstance(without[2], Unreadable) and without[2].held is not None  # as before
    assert found[2:4] == [
        Skipped(4, "Consent=NEVER_SUBSCRIBED"), Skipped(5, "Consent=NEVER_SUBSCRIBED")
    ]  # fmt: skip
    # Of another channel: the opt-in and the row of no type skipped, the opt-out not.
    assert found[5:] == [Skipped(7, "Channel Kind=email", True), Skipped(8, "Channel Kind=email")]
    assert isinstance(found[4], Read) and found[4].unskipped == "Channel Kind=email"
    assert [r.record for r in found[:2]] == [r.record for r in without[:2]]  # type: ignore[union-attr]
    assert found[4].record == without[4].record  # type: ignore[union-attr]
    assert not any(getattr(r, "unskipped", "") for r in found[:2])

    outs = list(read_records(io.StringIO(KLAVIYO), "csv", False, with_skip))
    ins = list(read_records(io.StringIO(KLAVIYO), "csv", True, with_skip))
    assert sorted([*outs, *ins], key=lambda r: r.line) == found
    assert Skipped(7, "Channel Kind=email", True) in ins and found[2] in outs


def test_a_row_that_reads_as_an_opt_out_is_never_skipped_but_said_to_have_matched():
    """Fail closed: a skip that matches an opt-out (typed so by a mapped value, by
    ``--set type=opt_out``, or a subscriber row's opt-out) leaves it imported as
    ever, marked as matched for the summary to count; its row's opt-in too."""
    pending = [*KLAVIYO_OPTIONS["values"], "type:pending=opt_out"]
    typed = read(
        KLAVIYO, "csv", klaviyo(values=pending, skip=["Consent=pending"], ignored=["Channel Kind"])
    )
    assert isinstance(typed[6], Read) and typed[6].record.HasField("opt_out")
    assert typed[6].unskipped == "Consent=pending"

    stops = (
        "Phone,occurred_at,Kind\n+14155550310,2026-11-03T10:00:00Z,test\n"
        "+14155550311,2026-11-03T10:00:00Z,real\n"
    )
    listed = from_parts(
        columns=["phone=Phone"], constants=["type=opt_out", "brand=acme", "channel=keyword"],
        fields=FIELDS, belongs=BELONGS, skip=["Kind=test"],
    )  # fmt: skip
    test_row, real = read(stops, "csv", listed)
    assert isinstance(test_row, Read) and test_row.unskipped == "Kind=test"
    assert isinstance(real, Read) and not real.unskipped

    rows = subscriber_rows(skip=["Channel=keyword", "Phone=+14155550205"])
    found = read(SUBSCRIBERS, "csv", rows)
    plain = read(SUBSCRIBERS, "csv", subscriber_rows())
    # Rows with an opt-out time are read as ever, both records; the last has none.
    assert found[:-1] == plain[:-1]
    assert [getattr(r, "unskipped", "") for r in found[:-1]] == [
        "", "", "Channel=keyword", "", "", "Channel=keyword", "", "Channel=keyword"
    ]  # fmt: skip
    assert found[-1] == Skipped(7, "Phone=+14155550205", True)


def test_a_row_whose_unmapped_type_says_an_opt_out_is_never_skipped_for_another_column():
    """With ``unsubscribed`` not mapped, its row is refused and held for review; one
    that also matched ``--skip "Channel Kind=email"`` was skipped instead, the opt-out
    it says lost and its number left open. Now it is held as the rest are, and said
    to have matched; a row of a type that says none (``pending``) is skipped as ever."""
    given = klaviyo(values=["type:subscribed=opt_in"], skip=["Channel Kind=email"])
    found = read(KLAVIYO, "csv", given)

    assert isinstance(found[4], Unreadable) and found[4].held is not None, found[4]
    assert found[4].unskipped == "Channel Kind=email"
    assert found[5:] == [Skipped(7, "Channel Kind=email", True), Skipped(8, "Channel Kind=email")]
    assert isinstance(found[1], Unreadable) and not found[1].unskipped  # matched no skip

    line = {"p": "+14155550304", "s": "Opted-Out", "at": OUT, "kind": "email"}
    json_given = from_parts(
        ["phone=p", "type=s", "occurred_at=at"], ["type:subscribed=opt_in"],
        ["brand=acme", "channel=keyword"], fields=FIELDS, belongs=BELONGS, skip=["kind=email"],
    )  # fmt: skip
    (held,) = fitted_read(json.dumps(line) + "\n", "jsonl", json_given)
    assert isinstance(held, Unreadable) and held.held is not None and held.unskipped


def test_a_skip_of_a_json_line_s_key_nested_or_of_our_own_name_is_found_as_a_column_is():
    lines = [
        {"msisdn": "+14155550320", "type": "JOIN", "event": {"kind": "sms", "at": "x"}},
        {"msisdn": "+14155550321", "type": "CLICK", "event": {"kind": "sms", "at": "x"}},
        {"msisdn": "+14155550322", "type": "OPT_OUT", "event": {"kind": "Email", "at": "x"}},
        {"msisdn": "+14155550323", "TYPE": "click", "event": {"kind": "email", "at": "x"}},
        {"msisdn": "+14155550324", "type": 7, "event": {"kind": "sms", "at": "x"}},
    ]
    text = "".join(json.dumps(line) + "\n" for line in lines)
    given = from_parts(
        columns=["phone=msisdn", "occurred_at=event.at"],
        values=["type:join=opt_in", "type:opt_out=opt_out", "type:7=opt_in"],
        constants=["brand=acme"],
        fields=FIELDS,
        belongs=BELONGS,
        skip=["type=click", "event.kind=EMAIL", "type=7"],
    ).fitted(json_keys(io.StringIO(text)), "the file")
    found = read(text, "jsonl", given)

    assert isinstance(found[0], Unreadable) and found[0].field == "occurred_at"  # not skipped
    assert found[1] == Skipped(2, "type=click")
    assert isinstance(found[2], Unreadable) and found[2].unskipped == "event.kind=EMAIL"
    assert found[3] == Skipped(4, "type=click")
    assert found[4] == Skipped(5, "type=7", True)


def test_a_skip_that_cannot_be_used_is_a_usage_error_before_anything_is_read(tmp_path: Path):
    header = THEIRS.splitlines()[0].split(",")
    with pytest.raises(MappingError, match=r"has no column 'Consent' \(named by --skip\)"):
        mapping(skip=["Consent=x"]).fitted(header, "the header")
    with pytest.raises(MappingError, match="has no column 'Consent' \\(named by --skip\\)"):
        read(THEIRS, "csv", mapping(skip=["Consent=x"]))
    with pytest.raises(MappingError, match="has no column 'kind' \\(named by --skip\\)"):
        mapping(skip=["kind=x"]).fitted(["msisdn", "state", "at"], "the file's JSON lines")
    with pytest.raises(MappingError, match="--skip 'Consent': give COLUMN=VALUE"):
        mapping(skip=["Consent"])
    with pytest.raises(MappingError, match="--skip Consent= : an empty value cannot be skipped"):
        mapping(skip=["Consent= "])
    with pytest.raises(MappingError, match="--skip Status=Pending is given twice"):
        mapping(skip=["Status=pending", "Status=Pending"])
    (tmp_path / "m.toml").write_text('[skip]\nStatus = "pending"\n"Email" = ["a", "b"]\n')
    from_file = from_parts(file=tmp_path / "m.toml", fields=FIELDS)
    assert from_file.skip == {"Status": {"pending": "pending"}, "Email": {"a": "a", "b": "b"}}
    with pytest.raises(MappingError, match="--skip Status=pending is given twice"):
        from_parts(file=tmp_path / "m.toml", fields=FIELDS, skip=["Status=pending"])
    (tmp_path / "m.json").write_text(json.dumps({"skip": {"Status": [1]}}))
    with pytest.raises(MappingError, match="skip must map columns to lists of values"):
        from_parts(file=tmp_path / "m.json", fields=FIELDS)
    # Spaces and capitals aside, as a mapped column is found.
    spelt = mapping(skip=["status=PENDING"]).fitted(header, "the header")
    assert spelt.skip == {"Status": {"pending": "PENDING"}}


@pytest.mark.parametrize(
    "value", ["unsubscribed", " UNSUBSCRIBED ", "opted out", "Opted-Out", "OPT_OUT", "STOP",
              "stopped", "SmsUnsubscribed", "revoked"],
)  # fmt: skip
def test_a_skip_of_a_value_that_reads_as_an_opt_out_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
):
    """A skip of ``unsubscribed`` with the value not mapped left out each such row,
    whose type unread would have been held for review: the opt-out it says in plain
    words was lost, its number left open to the opt-in before it. Refused up front,
    from the options or a mapping file, whether the value is mapped or not; so is a
    value that reads so mapped to an opt-in. ``NEVER_SUBSCRIBED`` is no opt-out."""
    said = f"--skip Consent={value}: {value.strip()!r} reads as an opt-out"
    only_in = ["type:subscribed=opt_in"]
    with pytest.raises(MappingError, match=re.escape(said)):
        klaviyo(values=only_in, skip=[f"Consent={value}"], ignored=["Channel Kind"])
    with pytest.raises(MappingError, match=re.escape(said)):
        klaviyo(skip=["Consent=never_subscribed", f"Consent={value}"])
    (tmp_path / "m.toml").write_text(f'[skip]\nConsent = ["{value}"]\n')
    with pytest.raises(MappingError, match=re.escape(said)):
        from_parts(file=tmp_path / "m.toml", fields=FIELDS)
    with pytest.raises(MappingError, match=f"--value type:{re.escape(value)}=opt_in: .* reads"):
        klaviyo(values=[f"type:{value}=opt_in"])
    assert klaviyo(skip=["Consent=NEVER_SUBSCRIBED"], ignored=["Channel Kind"]).skip

    export = tmp_path / "klaviyo.csv"
    export.write_text(KLAVIYO)
    argv = ["import", str(export), *(f"--column={c}" for c in KLAVIYO_OPTIONS["columns"])]
    argv += [f"--value={v}" for v in only_in] + [f"--set={c}" for c in OPTIONS["constants"]]
    argv += ["--ignore=Channel Kind", f"--skip=Consent={value}"]
    from services.cli import main as cli

    assert cli.main([*argv, "--address", "127.0.0.1:9", "--token-file", str(export)]) == 2
    assert said in capsys.readouterr().err


def test_a_time_zone_beside_a_format_that_gives_the_offset_is_a_usage_error(tmp_path: Path):
    """Every time must match the format, so with ``%z`` each gives its own offset: a
    zone given too was accepted and never used. Refused, as beside a count."""
    said = (
        "--time-zone 'America/New_York' does not apply to --time-format "
        "'%m/%d/%Y %H:%M %z': its %z gives every time's offset"
    )
    with pytest.raises(MappingError, match=re.escape(said)):
        from_parts(fields=FIELDS, time_format="%m/%d/%Y %H:%M %z", time_zone="America/New_York")
    (tmp_path / "m.json").write_text(json.dumps({"time_zone": "America/New_York"}))
    with pytest.raises(MappingError, match=re.escape(said)):
        from_parts(file=tmp_path / "m.json", fields=FIELDS, time_format="%m/%d/%Y %H:%M %z")
    assert not from_parts(fields=FIELDS, time_format="%m/%d/%Y %H:%M %z").time_zone


def fitted_read(text: str, fmt: str, given: Mapping) -> list[Read | Unreadable]:
    """``text`` read as the command reads it: a JSON Lines file's keys checked first."""
    if fmt == "jsonl":
        given = given.fitted(json_keys(io.StringIO(text)), "the JSON lines")
    return read(text, fmt, given)


OWN_TYPE = {"phone": "+14155550101", "occurred_at": "2026-11-03T10:00:00Z"}


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize("key", ["type", "TYPE", "Type"])
def test_a_value_mapped_for_our_own_column_in_other_capitals_is_mapped(tmp_path: Path, fmt, key):
    """An export's own ``TYPE`` is read as our ``type``; ``--value type:...`` (and a
    mapping file's values) now map its values too. The CSV stopped at start as having
    no column for type; a JSON line's opt-out was refused as no opt_in or opt_out."""
    line = {key: "Unsubscribed", **OWN_TYPE}
    text = (
        json.dumps(line) + "\n"
        if fmt == "jsonl"
        else ",".join(line) + "\n" + ",".join(line.values()) + "\n"
    )
    options = from_parts(
        values=["type:unsubscribed=opt_out"],
        constants=["brand=acme", "campaign=promo", "channel@opt_out=keyword"],
        fields=FIELDS, belongs=BELONGS,
    )  # fmt: skip
    file = tmp_path / "mapping.json"
    file.write_text(json.dumps({
        "values": {"TYPE": {"unsubscribed": "opt_out"}},
        "set": {"brand": "acme", "campaign": "promo", "channel": "keyword"},
    }))  # fmt: skip
    in_file = from_parts(file=file, fields=FIELDS, belongs=BELONGS)
    ours = read(OURS, "csv")[1].record  # type: ignore[union-attr]

    for given in (options, in_file):
        (record,) = fitted_read(text, fmt, given)
        assert isinstance(record, Read) and record.record == ours, record
        if fmt == "jsonl":  # read without the keys checked first, as alike
            assert read(text, fmt, given) == [record]


@pytest.mark.parametrize(
    ("line", "changes", "words"),
    [
        # Set, and given in the export too: which was meant cannot be told.
        ({"type": "opt_out", "BRAND": "acme"}, {}, "has a column 'brand' and brand is set"),
        (
            {"type": "opt_in", "Proof": {"Registered_At": "2026-11-03T10:00:00Z"}},
            {"constants": ["brand=acme", "proof.registered_at=2026-11-03T10:00:00Z"]},
            "has a column 'proof.registered_at' and proof.registered_at is set",
        ),
        ({"Status": "x", "TYPE": "event"}, {"columns": ["type=Status"]}, "has a column 'type'"),
    ],
)
def test_a_json_key_of_our_own_field_in_other_capitals_is_checked_as_ours(line, changes, words):
    """Refused before anything is read, as under our own spelling: such a line's
    fields were each refused (and held) for a field given twice but for capitals."""
    given = from_parts(**{"constants": ["brand=acme"], **changes}, fields=FIELDS, belongs=BELONGS)
    text = json.dumps({**line, **OWN_TYPE}) + "\n"
    with pytest.raises(MappingError, match=re.escape(words)):
        fitted_read(text, "jsonl", given)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_type_column_in_other_capitals_is_one_beside_subscriber_rows_or_typed_times(fmt):
    """``TYPE`` is the type column: refused beside ``--subscriber-rows`` as ``type``
    is (JSON lines were read, each refused as giving the type twice), and with an
    opt-out time column of its own, not asked for (the CSV stopped at start)."""
    row = {"TYPE": "opt_out", "Phone": "+14155550101", "Opted In At": "",
           "Opted Out At": OUT, "Consent Text": "", "Channel": "keyword"}  # fmt: skip
    text = (
        json.dumps(row) + "\n"
        if fmt == "jsonl"
        else ",".join(row) + "\n" + ",".join(row.values()) + "\n"
    )
    with pytest.raises(MappingError, match="has a column 'type', and --subscriber-rows"):
        fitted_read(text, fmt, subscriber_rows())
    typed = from_parts(SUBSCRIBER_COLUMNS, (), SUBSCRIBER_SET, fields=FIELDS, belongs=BELONGS)
    (record,) = fitted_read(text, fmt, typed)
    assert isinstance(record, Read) and record.record.opt_out.phone == "+14155550101"


def test_subscriber_rows_of_json_lines_give_each_record_its_own_keys_in_other_capitals():
    """A line's own ``CHANNEL`` (an opt-out's) and ``Tier`` (an opt-in's) go to their
    own record, as the CSV's columns do: the line's opt-in was refused for a channel,
    and its opt-out for a tier (held, not imported)."""
    line = {"Phone": "+14155550201", "Opted In At": IN, "Opted Out At": OUT,
            "Consent Text": "Yes text me. STOP to end.", "CHANNEL": "keyword"}  # fmt: skip
    given = from_parts(
        SUBSCRIBER_COLUMNS[:-1], (), ["brand=acme", "campaign@opt_in=promo", "method=web_form"],
        fields=FIELDS, belongs=BELONGS, subscriber_rows=True,
    )  # fmt: skip
    text = json.dumps({**line, "Tier": "promotional"}) + "\n"
    by_hand = TWO_RECORDS_BY_HAND.splitlines()
    ours = read("\n".join([by_hand[0], by_hand[2], by_hand[3]]) + "\n", "csv")

    found = fitted_read(text, "jsonl", given)
    assert all(isinstance(r, Read) for r in found), found
    assert [r.record for r in found] == [r.record for r in ours]  # type: ignore[union-attr]


@pytest.mark.parametrize(("proof", "region"), [("proof", "region"), ("Proof", "REGION")])
def test_a_value_mapped_for_a_nested_proof_field_is_mapped(proof, region):
    """``--value proof.region:...`` mapped a CSV column's values, never those of a JSON
    line's nested proof: its region was imported as the export wrote it."""
    line = {"type": "opt_in", "phone": "+14155550100", "occurred_at": IN, "brand": "acme",
            "campaign": "promo", "tier": "promotional", "method": "web_form",
            proof: {"registered_at": IN, region: "Calif."}}  # fmt: skip
    given = from_parts(
        values=["proof.region:calif.=US-CA"], fields=FIELDS, belongs=BELONGS,
        unreadable=unreadable_value,
    )  # fmt: skip
    (record,) = fitted_read(json.dumps(line) + "\n", "jsonl", given)
    assert isinstance(record, Read) and record.record.opt_in.proof.region == "US-CA", record


def test_a_mapped_json_key_of_our_own_name_spelt_apart_by_lines_is_the_mapped_one():
    """``--column phone=Phone`` reads each line's ``PHONE`` as its ``Phone``, as the
    line is read: not refused as our own phone beside the mapped one."""
    lines = [{"Phone": "+14155550101", "type": "Unsubscribed"},
             {"PHONE": "+14155550101", "Type": "unsubscribed"}]  # fmt: skip
    text = "".join(json.dumps({**line, "at": "2026-11-03T10:00:00Z"}) + "\n" for line in lines)
    given = mapping(columns=["phone=Phone", "occurred_at=at"])
    first, second = fitted_read(text, "jsonl", given)
    assert first.record == second.record == read(OURS, "csv")[1].record  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("read", "words"),
    [
        ({"set": {"brand": "acme", "tier": 5}}, "set must map fields to strings: 'tier' is 5"),
        ({"columns": {"phone": ["a"]}}, "columns must map fields to strings: 'phone' is ['a']"),
        ({"values": {"type": {"gone": None}}}, "tables of strings: 'type.gone' is None"),
        ({"values": {"type": "opt_out"}}, "tables of strings: 'type' is 'opt_out'"),
    ],
)
def test_a_mapping_file_s_value_of_another_type_is_named_by_its_key(tmp_path, read, words):
    """The README promises a value of another type in a mapping file is a usage
    error naming it: the refusal named only its table, leaving a long file to be
    searched for the one value."""
    (tmp_path / "m.json").write_text(json.dumps(read))
    with pytest.raises(MappingError, match=re.escape(words)):
        from_parts(file=tmp_path / "m.json", fields=FIELDS)
