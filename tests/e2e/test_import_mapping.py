"""``consent-ledger import`` of another platform's export under its own column names
(``--column``, ``--value``, ``--set``, ``--mapping``), end to end on the real Kafka
ledger and PostgreSQL: its records answered by ``CanSend``; its refusals named by
the export's columns; a re-run, and a switch to or from a mapping, writing nothing
(the ledger's end offsets unchanged); a mapping that does not fit the file exiting
2 with nothing sent."""

from __future__ import annotations

import asyncio
import csv
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from ledger.ports import Stream
from tests.e2e.harness import TOKENS, client, define
from tests.e2e.test_bulk_import import (
    answers,
    import_cli,
    importing,
    iso,
    started_import,
    token_of,
)
from tests.e2e.test_bulk_import import service as service  # the fixture, shared
from tests.e2e.test_embedded_run import data_dir as data_dir  # the fixture, shared
from tests.e2e.test_embedded_run import start, stop

pytestmark = pytest.mark.asyncio(loop_scope="session")

CONSENT = "Yes, text me offers from Acme. Msg & data rates may apply. Reply STOP to cancel."
THEIR_COLUMNS = [
    "Phone Number", "Status", "Changed At", "Opted In At", "Full Name", "Email",
    "IP Address", "Signup Form", "Consent Text", "Screenshot", "Screenshot SHA-256", "Tags",
]  # fmt: skip
MAPPING: dict[str, Any] = {
    "columns": {
        "phone": "Phone Number",
        "type": "Status",
        "occurred_at": "Changed At",
        "proof.registered_at": "Opted In At",
        "proof.name": "Full Name",
        "proof.email": "Email",
        "proof.ip_address": "IP Address",
        "proof.form_url": "Signup Form",
        "proof.consent_text": "Consent Text",
        "proof.screenshot_ref": "Screenshot",
        "proof.screenshot_sha256": "Screenshot SHA-256",
    },
    "values": {"type": {"subscribed": "opt_in", "unsubscribed": "opt_out"}},
    "set": {
        "brand": "acme",
        "campaign": "promo",
        "tier": "promotional",
        "method": "web_form",
        "channel": "keyword",
    },
    "ignore": ["Tags"],
}
SUBSCRIBED = 12
"""Numbers the export has subscribed; every fourth unsubscribed later."""


@pytest.fixture(scope="module")
async def unsent(module_serve):
    """One service for the imports refused before they send anything: each finds
    the ledger's end, and its numbers, as they were."""
    return await importing(module_serve)


def number(i: int) -> str:
    return f"+1628555{4000 + i:04d}"


def their_rows(when: datetime, first: int = 0) -> list[dict[str, str]]:
    """An export as another platform writes it: one row per subscription change,
    each carrying the subscriber's opt-in proof; one row of a status the mapping
    does not name, and one of a number that is none."""
    rows = []
    for i in range(first, first + SUBSCRIBED):
        opted_in = iso(when - timedelta(days=20, minutes=i))
        subscriber = {
            "Phone Number": number(i),
            "Opted In At": opted_in,
            "Full Name": f"Subscriber {i}",
            "Email": f"s{i}@example.com",
            "IP Address": "198.51.100.23",
            "Signup Form": "https://acme.example/sms",
            "Consent Text": CONSENT,
            "Screenshot": f"s3://acme-proofs/{i}.png",
            "Screenshot SHA-256": "ab" * 32,
            "Tags": "spring-promo;vip",
        }
        rows.append({**subscriber, "Status": "subscribed", "Changed At": opted_in})
        if i % 4 == 0:
            stopped = iso(when - timedelta(days=3, minutes=i))
            rows.append({**subscriber, "Status": "Unsubscribed", "Changed At": stopped})
    rows.append({**rows[1], "Phone Number": number(first + 90), "Status": "cleaned"})
    rows.append({**rows[1], "Phone Number": "+1 628 CALL NOW"})
    return rows


def our_rows(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """The same export rewritten by hand under our own names, as before ``--column``."""
    out = []
    for row in rows:
        kind = MAPPING["values"]["type"].get(row["Status"].strip().lower())
        if kind is None:
            continue
        ours = {f: row[h] for f, h in MAPPING["columns"].items() if row.get(h)}
        ours.update(type=kind, brand="acme", campaign="promo")
        if kind == "opt_in":
            ours.update(tier="promotional", method="web_form")
        else:
            ours = {k: v for k, v in ours.items() if not k.startswith("proof.")}
            ours["channel"] = "keyword"
        out.append(ours)
    return out


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    """The export as JSON Lines, its proof nested as that platform nests it."""
    with path.open("w") as out:
        for row in rows:
            nested = {
                "msisdn": row["Phone Number"],
                "status": row["Status"],
                "changed_at": row["Changed At"],
                "consent": {
                    "opted_in_at": row["Opted In At"],
                    "ip": row["IP Address"],
                    "form": row["Signup Form"],
                    "text": row["Consent Text"],
                    "screenshot": {"ref": row["Screenshot"], "sha256": row["Screenshot SHA-256"]},
                },
                "contact": {"name": row["Full Name"], "email": row["Email"]},
                "tags": row["Tags"].split(";"),
            }
            out.write(json.dumps(nested) + "\n")
    return path


JSON_KEYS = {
    "phone": "msisdn",
    "type": "status",
    "occurred_at": "changed_at",
    "proof.registered_at": "consent.opted_in_at",
    "proof.name": "contact.name",
    "proof.email": "contact.email",
    "proof.ip_address": "consent.ip",
    "proof.form_url": "consent.form",
    "proof.consent_text": "consent.text",
    "proof.screenshot_ref": "consent.screenshot.ref",
    "proof.screenshot_sha256": "consent.screenshot.sha256",
}


def options(columns: dict[str, str], ignore: str = "Tags") -> list[str]:
    """The mapping as command-line options."""
    argv = [f"--column={field}={header}" for field, header in columns.items()]
    argv.append(f"--ignore={ignore}")
    argv += [f"--value=type:{theirs}={ours}" for theirs, ours in MAPPING["values"]["type"].items()]
    argv += [f"--set={field}={value}" for field, value in MAPPING["set"].items()]
    return argv


def expected(first: int = 0) -> dict[str, str]:
    reasons = {}
    for i in range(first, first + SUBSCRIBED):
        reasons[number(i)] = "REASON_REVOKED" if i % 4 == 0 else "REASON_CONSENT_ACTIVE"
    reasons[number(first + 90)] = "REASON_REVOCATION_PENDING_REVIEW"
    return reasons


async def imported(runtime: Any, *argv: str) -> tuple[int, str, str]:
    return await import_cli(*argv, "--address", runtime.address, token=TOKENS["acme-app"][0])


async def test_a_mapped_csv_export_is_imported_named_in_its_columns_and_again_as_nothing(
    service, tmp_path
):
    runtime, when = service
    export = write_csv(tmp_path / "subscribers.csv", their_rows(when))
    records = SUBSCRIBED + SUBSCRIBED // 4
    assert runtime.ledger is not None
    before = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)

    code, dry, err = await imported(
        runtime,
        str(export),
        *options(MAPPING["columns"]),
        "--dry-run",
    )

    assert code == 1, dry + err
    assert f"would import {records:,} of {records + 2:,} records" in dry, dry
    assert re.search(r"INVALID_ARGUMENT +Phone Number: ", dry), dry
    assert re.search(r"INVALID_ARGUMENT +Status: .*would be held for review", dry), dry
    assert await runtime.ledger.end_offsets(Stream.SUBSCRIBERS) == before

    code, out, err = await imported(
        runtime, str(export), *options(MAPPING["columns"]),
        "--refusals", str(tmp_path / "refused.jsonl"),
    )  # fmt: skip

    assert code == 1, out + err  # two refused
    assert f"imported {records:,} of {records + 2:,} records" in out, out + err
    assert re.search(r"1 +INVALID_ARGUMENT +Phone Number: ", out), out
    assert re.search(r"1 +INVALID_ARGUMENT +Status: has the value 'cleaned'.*held for review", out)
    assert "held for review: 1" in out, out
    refused = [json.loads(line) for line in (tmp_path / "refused.jsonl").read_text().splitlines()]
    assert sorted(r["field"] for r in refused) == ["Phone Number", "Status"], refused
    async with client(runtime.address, "acme-app") as c:
        reasons = await answers(c, list(expected()), token_of(out))
    assert reasons == expected(), reasons

    ends = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)
    mapping_file = tmp_path / "mapping.json"
    mapping_file.write_text(json.dumps(MAPPING))

    code, again, err = await imported(runtime, str(export), "--mapping", str(mapping_file))

    assert code == 1, again + err
    assert f"imported 0 of {records + 2:,} records" in again, again
    assert f"already present: {records:,}" in again, again
    assert await runtime.ledger.end_offsets(Stream.SUBSCRIBERS) == ends

    # The same export as JSON Lines, its proof nested: the same records, nothing new.
    jsonl = write_jsonl(tmp_path / "subscribers.jsonl", their_rows(when))
    code, as_json, err = await imported(runtime, str(jsonl), *options(JSON_KEYS, "tags"))

    assert code == 1, as_json + err
    assert f"imported 0 of {records + 2:,} records" in as_json, as_json
    assert await runtime.ledger.end_offsets(Stream.SUBSCRIBERS) == ends


async def test_an_export_rewritten_by_hand_then_mapped_is_imported_once(service, tmp_path):
    runtime, when = service
    rows = their_rows(when, first=20)
    ours = write_csv(tmp_path / "ours.csv", our_rows(rows))
    records = SUBSCRIBED + SUBSCRIBED // 4

    code, out, err = await imported(runtime, str(ours))

    assert code == 1, out + err  # the bad number
    assert f"imported {records:,} of {records + 1:,} records" in out, out
    assert runtime.ledger is not None
    ends = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)

    export = write_csv(tmp_path / "subscribers.csv", rows)
    code, mapped, err = await imported(runtime, str(export), *options(MAPPING["columns"]))

    assert code == 1, mapped + err  # the unmapped status and the bad number
    assert "imported 0 of" in mapped and f"already present: {records:,}" in mapped, mapped
    # The opt-out held for its unmapped status is the only record written.
    assert (
        sum((await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)).values())
        == sum(ends.values()) + 1
    )


async def test_a_mapped_json_lines_export_is_imported(service, tmp_path):
    runtime, when = service
    export = write_jsonl(tmp_path / "subscribers.jsonl", their_rows(when, first=40))
    mapping_file = tmp_path / "mapping.toml"
    keys = "\n".join(f'"{field}" = "{key}"' for field, key in JSON_KEYS.items())
    mapping_file.write_text(
        f'ignore = ["tags"]\n[columns]\n{keys}\n[values.type]\nsubscribed = "opt_in"\n'
        'unsubscribed = "opt_out"\n[set]\nbrand = "acme"\ncampaign = "promo"\n'
        'tier = "promotional"\nmethod = "web_form"\nchannel = "keyword"\n'
    )

    code, out, err = await imported(runtime, str(export), "--mapping", str(mapping_file))

    assert code == 1, out + err
    records = SUBSCRIBED + SUBSCRIBED // 4
    assert f"imported {records:,} of {records + 2:,} records" in out, out
    assert re.search(r"INVALID_ARGUMENT +msisdn: ", out), out
    assert re.search(r"INVALID_ARGUMENT +status: has the value 'cleaned'", out), out
    async with client(runtime.address, "acme-app") as c:
        reasons = await answers(c, list(expected(40)), token_of(out))
    assert reasons == expected(40), reasons


@pytest.mark.parametrize(
    ("fmt", "change", "extra", "words"),
    [
        ("csv", {"phone": "Mobile"}, [], "has no column 'Mobile'"),
        ("csv", {"brand": "Full Name"}, [], "both read from a column (--column) and set"),
        ("jsonl", {"phone": "contact.mobile"}, [], "has no column 'contact.mobile'"),
        ("csv", {}, ["--value=text:sms=STOP"], "has no column for"),
    ],
)
async def test_a_mapping_that_does_not_fit_the_export_exits_2_with_nothing_sent(
    unsent, tmp_path, fmt, change, extra, words
):
    runtime, when = unsent
    rows = their_rows(when, first=60)
    export = (
        write_csv(tmp_path / "subscribers.csv", rows)
        if fmt == "csv"
        else write_jsonl(tmp_path / "subscribers.jsonl", rows)
    )
    columns = {**(MAPPING["columns"] if fmt == "csv" else JSON_KEYS), **change}
    ignore = "Tags" if fmt == "csv" else "tags"
    assert runtime.ledger is not None
    before = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)

    code, out, err = await imported(runtime, str(export), *options(columns, ignore), *extra)

    assert code == 2, out + err
    assert words in err, err
    assert out == "", out
    assert await runtime.ledger.end_offsets(Stream.SUBSCRIBERS) == before
    async with client(runtime.address, "acme-app") as c:
        reasons = await answers(c, [number(61)], "")
    assert reasons == {number(61): "REASON_NO_CONSENT"}


async def test_a_column_mapped_and_present_under_our_own_name_exits_2(unsent, tmp_path):
    runtime, when = unsent
    rows = [{**row, "phone": row["Phone Number"]} for row in their_rows(when, first=70)]
    export = write_csv(tmp_path / "subscribers.csv", rows)

    code, out, err = await imported(runtime, str(export), *options(MAPPING["columns"]))

    assert code == 2, out + err
    assert "has a column 'phone' and phone is mapped from 'Phone Number'" in err, err


async def test_opt_outs_kept_in_their_own_time_column_are_imported_at_that_time(service, tmp_path):
    """An export keeping "Opted In At" and "Opted Out At" apart: each record at its
    own type's time (``occurred_at@opt_out``), so a number that came back after its
    opt-out is allowed and one that left after coming back is not; an opt-out with
    no time of its own is refused and held, never imported at its opt-in's time;
    a re-run writes nothing."""
    runtime, when = service
    day = lambda n: iso(when - timedelta(days=n))  # noqa: E731
    came_back, left, left_untimed = number(80), number(81), number(82)
    changes = [  # the number, its status, when it opted in, when it opted out
        (came_back, "subscribed", day(30), ""),
        (came_back, "unsubscribed", day(30), day(10)),
        (came_back, "subscribed", day(2), day(10)),
        (left, "subscribed", day(30), ""),
        (left, "unsubscribed", day(30), day(2)),
        (left_untimed, "subscribed", day(30), ""),
        (left_untimed, "unsubscribed", day(30), ""),
    ]
    columns = ["Phone Number", "Status", "Opted In At", "Opted Out At"]
    rows = [dict(zip(columns, change, strict=True)) for change in changes]
    export = write_csv(tmp_path / "subscribers.csv", rows)
    argv = [
        "--column=phone=Phone Number", "--column=type=Status",
        "--column=occurred_at=Opted In At", "--column=occurred_at@opt_out=Opted Out At",
        "--column=proof.registered_at=Opted In At",
        "--value=type:subscribed=opt_in", "--value=type:unsubscribed=opt_out",
        "--set=brand=acme", "--set=campaign=promo", "--set=tier=promotional",
        "--set=method=paper", "--set=channel=keyword", f"--set=proof.consent_text={CONSENT}",
        "--set=proof.name=Acme subscriber", "--set=proof.collection_detail=signed form 2211",
    ]  # fmt: skip

    code, dry, err = await imported(runtime, str(export), *argv, "--dry-run")

    assert code == 1, dry + err  # named by the opt-outs' column, not "Opted Out At or ..."
    assert re.search(r"1 +INVALID_ARGUMENT +Opted Out At: is required; would be held", dry), dry

    code, out, err = await imported(runtime, str(export), *argv)

    assert code == 1, out + err  # the opt-out with no time, held
    assert "imported 6 of 7 records" in out, out
    assert re.search(r"1 +INVALID_ARGUMENT +Opted Out At: is required; held for review", out)
    async with client(runtime.address, "acme-app") as c:
        reasons = await answers(c, [came_back, left, left_untimed], token_of(out))
    assert reasons == {
        came_back: "REASON_CONSENT_ACTIVE",
        left: "REASON_REVOKED",
        left_untimed: "REASON_REVOCATION_PENDING_REVIEW",
    }, reasons
    assert runtime.ledger is not None
    ends = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)

    code, again, err = await imported(runtime, str(export), *argv)

    assert code == 1, again + err
    assert "imported 0 of 7 records" in again and "already present: 6" in again, again
    assert await runtime.ledger.end_offsets(Stream.SUBSCRIBERS) == ends


@pytest.mark.parametrize(
    ("column", "words"),
    [
        ("occurred_at@optout=Opted Out At", "give FIELD@opt_in or FIELD@opt_out"),
        ("type@opt_out=Opted Out At", "give FIELD@opt_in or FIELD@opt_out"),
        ("tier@opt_out=Opted Out At", "tier is a field of opt_in records only"),
    ],
)
async def test_a_column_of_one_record_type_that_cannot_be_used_exits_2(
    unsent, tmp_path, column, words
):
    runtime, when = unsent
    rows = [{"Phone Number": number(85), "Status": "subscribed", "Opted Out At": iso(when)}]
    export = write_csv(tmp_path / "subscribers.csv", rows)

    code, out, err = await imported(
        runtime, str(export), "--column=phone=Phone Number", "--column=type=Status",
        f"--column={column}", "--value=type:subscribed=opt_in", "--set=brand=acme",
    )  # fmt: skip

    assert code == 2, out + err
    assert words in err, err
    assert out == "", out


@pytest.mark.parametrize(
    ("replace", "words"),
    [
        ("--set=channel=sms", "--set channel: is not one of keyword, "),
        ("--set=tier=promo", "--set tier: is not one of conversational, "),
        ("--value=type:cleaned=optout", "--value type:cleaned=optout: must be opt_in or opt_out"),
        ("--set=occurred_at=yesterday", "--set occurred_at: is not an ISO 8601 time"),
        ("--set=import_id=batch-7", "--set import_id: every record would have the one id"),
        ("--value=type:=opt_out", "--value type:=opt_out: an empty value cannot be mapped"),
    ],
)
async def test_a_set_or_mapped_value_that_cannot_work_exits_2_with_nothing_sent(
    unsent, tmp_path, replace, words
):
    """A set or mapped value reaches every record of its type: one its field cannot
    hold (or one id for all, or an empty value never looked up) would refuse them
    all, or leave them unmapped, and hold every opt-out for review."""
    runtime, when = unsent
    export = write_csv(tmp_path / "subscribers.csv", their_rows(when, first=100))
    field = replace.removeprefix("--set=").partition("=")[0]
    argv = [
        a
        for a in options(MAPPING["columns"])
        if not a.startswith((f"--set={field}=", f"--column={field}="))
    ]
    assert runtime.ledger is not None
    before = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)

    code, out, err = await imported(runtime, str(export), *argv, replace)

    assert code == 2, out + err
    assert words in err, err
    assert out == "", out
    assert await runtime.ledger.end_offsets(Stream.SUBSCRIBERS) == before


async def test_a_mapped_json_value_written_as_a_decimal_is_read_or_refused_on_its_line(
    service, tmp_path
):
    """A JSON export's subscribed flag written 1.0 / 0.0 (the reader keeps such a
    number exact): one the mapping names is read, one it does not is refused on its
    own line and, its type unread, held; the import goes on."""
    runtime, when = service
    lines = [
        {"msisdn": number(110), "subscribed": 1, "at": iso(when - timedelta(days=9))},
        {"msisdn": number(110), "subscribed": 0.0, "at": iso(when - timedelta(days=2))},
        {"msisdn": number(111), "subscribed": 1, "at": iso(when - timedelta(days=9))},
        {"msisdn": number(111), "subscribed": [0.5], "at": iso(when - timedelta(days=2))},
    ]
    export = tmp_path / "subscribers.jsonl"
    export.write_text("".join(json.dumps(line) + "\n" for line in lines))

    code, out, err = await imported(
        runtime, str(export), "--column=phone=msisdn", "--column=type=subscribed",
        "--column=occurred_at=at", "--column=proof.registered_at=at",
        "--value=type:1=opt_in", "--value=type:0.0=opt_out",
        "--set=brand=acme", "--set=campaign=promo", "--set=tier=promotional",
        "--set=method=paper", "--set=channel=keyword", f"--set=proof.consent_text={CONSENT}",
        "--set=proof.name=Acme subscriber", "--set=proof.collection_detail=signed form 2211",
    )  # fmt: skip

    assert code == 1, out + err
    assert "imported 3 of 4 records" in out, out + err
    assert re.search(r"1 +INVALID_ARGUMENT +subscribed: has the value '\[0\.5\]'.*line 4", out)
    assert "held for review: 1" in out, out
    async with client(runtime.address, "acme-app") as c:
        reasons = await answers(c, [number(110), number(111)], token_of(out))
    assert reasons == {
        number(110): "REASON_REVOKED",
        number(111): "REASON_REVOCATION_PENDING_REVIEW",
    }, reasons


async def test_a_column_of_our_own_name_ignored_beside_the_one_mapped_to_it_is_unread(
    service, tmp_path
):
    """A JSON export of events, each with its own "type" (the event's) beside the
    subscription's "status": --ignore type leaves the event's type unread, and the
    status is read as the record's type."""
    runtime, when = service
    events = [
        ("contact.subscribed", "subscribed", number(120), 9),
        ("contact.unsubscribed", "unsubscribed", number(120), 2),
        ("contact.subscribed", "subscribed", number(121), 9),
    ]
    export = tmp_path / "events.jsonl"
    export.write_text(
        "".join(
            json.dumps(
                {
                    "type": kind,
                    "status": status,
                    "msisdn": phone,
                    "at": iso(when - timedelta(days=ago)),
                }
            )
            + "\n"
            for kind, status, phone, ago in events
        )
    )

    code, out, err = await imported(
        runtime, str(export), "--ignore=type", "--column=type=status", "--column=phone=msisdn",
        "--column=occurred_at=at", "--column=proof.registered_at=at",
        "--value=type:subscribed=opt_in", "--value=type:unsubscribed=opt_out",
        "--set=brand=acme", "--set=campaign=promo", "--set=tier=promotional",
        "--set=method=paper", "--set=channel=keyword", f"--set=proof.consent_text={CONSENT}",
        "--set=proof.name=Acme subscriber", "--set=proof.collection_detail=signed form 2211",
    )  # fmt: skip

    assert code == 0, out + err
    assert "imported 3 of 3 records" in out, out
    async with client(runtime.address, "acme-app") as c:
        reasons = await answers(c, [number(120), number(121)], token_of(out))
    assert reasons == {number(120): "REASON_REVOKED", number(121): "REASON_CONSENT_ACTIVE"}


def subscriber_export(tmp_path: Path, when: datetime, first: int) -> tuple[Path, dict[str, str]]:
    """One row per subscriber, no status column: "Opted Out At" empty while subscribed.
    The numbers and what CanSend is to answer each once the export is imported."""
    day = lambda n: iso(when - timedelta(days=n))  # noqa: E731
    rows = [  # the number, when it opted in, when it opted out, the answer then
        (number(first), day(30), "", "REASON_CONSENT_ACTIVE"),
        (number(first + 1), day(30), day(10), "REASON_REVOKED_BRAND_WIDE"),
        (number(first + 2), "", day(10), "REASON_REVOKED_BRAND_WIDE"),  # an opt-out alone
        # Opted out before it opted in: read as opted out, its opt-in refused.
        (number(first + 3), day(2), day(10), "REASON_REVOKED_BRAND_WIDE"),
        # An opt-out time that cannot be read: held, whatever its opt-in says.
        (number(first + 4), day(30), "yesterday", "REASON_REVOCATION_PENDING_REVIEW"),
        (number(first + 5), day(30), "  ", "REASON_CONSENT_ACTIVE"),  # spaces: none
    ]
    export = write_csv(
        tmp_path / "subscribers.csv",
        [
            {"Phone": phone, "Opted In At": opted_in, "Opted Out At": opted_out,
             "Full Name": f"Subscriber {phone[-2:]}", "Source": "spring-form"}
            for phone, opted_in, opted_out, _ in rows
        ],
    )  # fmt: skip
    return export, {phone: reason for phone, _, _, reason in rows}


SUBSCRIBER_ARGV = [
    "--subscriber-rows", "--column=phone=Phone",
    "--column=occurred_at@opt_in=Opted In At", "--column=occurred_at@opt_out=Opted Out At",
    "--column=proof.registered_at=Opted In At", "--column=proof.name=Full Name",
    "--ignore=Source", "--set=brand=acme", "--set=campaign@opt_in=promo",
    "--set=tier=promotional", "--set=method=paper", "--set=channel=keyword",
    f"--set=proof.consent_text={CONSENT}", "--set=proof.collection_detail=signed form 2211",
]  # fmt: skip
"""The subscriber export's mapping: 9 records of 6 rows, 7 imported."""


async def subscriber_rows_imported(
    address: str, token: str, export: Path, expect: dict[str, str], argv: list[str]
) -> None:
    """The subscriber export dry run, then imported: counted by rows and records, its
    refusals named by the export's columns, CanSend answering ``expect``."""
    code, dry, err = await import_cli(str(export), *argv, "--dry-run", "--address", address,
                                      token=token)  # fmt: skip
    assert code == 1, dry + err
    assert "would import 7 of 9 records from 6 rows of subscribers.csv" in dry, dry + err
    assert re.search(r"INVALID_ARGUMENT +Opted Out At: is not an ISO 8601 .*would be held", dry)

    code, out, err = await import_cli(str(export), *argv, "--address", address, token=token)

    assert code == 1, out + err
    assert "imported 7 of 9 records from 6 rows of subscribers.csv" in out, out + err
    assert re.search(r"1 +INVALID_ARGUMENT +Opted In At: is not before the opt-out's time", out)
    assert re.search(r"1 +INVALID_ARGUMENT +Opted Out At: is not an ISO 8601 .*held for rev", out)
    assert "held for review: 1" in out, out
    async with client(address) as c:
        c.token = token
        reasons = await answers(c, list(expect), token_of(out))
    assert reasons == expect, reasons


async def test_an_export_of_one_row_per_subscriber_imports_each_row_s_opt_in_and_opt_out(
    service, tmp_path
):
    """``--subscriber-rows``: each row an opt-in at "Opted In At" and, when "Opted Out
    At" is given, an opt-out at that time; a row opting out no later than it opted in
    never allows; a re-run, its mapping from a file, writes nothing."""
    runtime, when = service
    export, expect = subscriber_export(tmp_path, when, first=130)
    token = TOKENS["acme-app"][0]

    await subscriber_rows_imported(runtime.address, token, export, expect, SUBSCRIBER_ARGV)

    assert runtime.ledger is not None
    ends = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)
    mapping_file = tmp_path / "mapping.toml"
    mapping_file.write_text(
        'subscriber_rows = true\nignore = ["Source"]\n[columns]\nphone = "Phone"\n'
        '"occurred_at@opt_in" = "Opted In At"\n"occurred_at@opt_out" = "Opted Out At"\n'
        '"proof.registered_at" = "Opted In At"\n"proof.name" = "Full Name"\n'
        '[set]\nbrand = "acme"\n"campaign@opt_in" = "promo"\ntier = "promotional"\n'
        f'method = "paper"\nchannel = "keyword"\n"proof.consent_text" = "{CONSENT}"\n'
        '"proof.collection_detail" = "signed form 2211"\n'
    )

    code, again, err = await imported(runtime, str(export), "--mapping", str(mapping_file))

    assert code == 1, again + err
    assert "imported 0 of 9 records from 6 rows" in again, again
    assert "already present: 7" in again and "held for review: 1" in again, again
    assert await runtime.ledger.end_offsets(Stream.SUBSCRIBERS) == ends

    # Without --subscriber-rows, nothing says what a row is: exit 2, nothing sent.
    code, out, err = await imported(runtime, str(export), *SUBSCRIBER_ARGV[1:])
    assert code == 2 and out == "", out + err
    assert "give --subscriber-rows" in err, err
    assert await runtime.ledger.end_offsets(Stream.SUBSCRIBERS) == ends


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
async def test_an_opt_in_refused_for_its_row_s_opt_out_is_refused_on_every_row_it_is_on(
    service, tmp_path, fmt
):
    """A subscriber on two rows with the same opt-in, one row opting out before it
    (a time wrong in the export): that row's opt-in is refused, and so is the same
    opt-in on the other row, before it or after it, in a dry run too. It was imported
    from the other row, its time after the opt-out's: the number was allowed."""
    runtime, when = service
    first = 170 if fmt == "csv" else 175
    day = lambda n: iso(when - timedelta(days=n))  # noqa: E731
    opted_out_first = (day(10), day(30))  # its opt-out 20 days before its opt-in
    rows = [  # the number, when it opted in, when it opted out
        (number(first), *opted_out_first), (number(first), day(10), ""),
        (number(first + 1), day(10), ""), (number(first + 1), *opted_out_first),
        # One who came back on a row of its own, dated after the opt-out: allowed.
        (number(first + 2), day(30), day(10)), (number(first + 2), day(5), ""),
    ]  # fmt: skip
    records = [
        {"Phone": phone, "Opted In At": opted_in, "Opted Out At": opted_out,
         "Full Name": f"Subscriber {phone[-2:]}", "Source": "spring-form"}
        for phone, opted_in, opted_out in rows
    ]  # fmt: skip
    export = tmp_path / f"subscribers.{fmt}"
    if fmt == "csv":
        write_csv(export, records)
    else:
        export.write_text(
            "".join(json.dumps({k: v for k, v in r.items() if v}) + "\n" for r in records)
        )
    token = TOKENS["acme-app"][0]
    refused = re.compile(r"INVALID_ARGUMENT +Opted In At: is the opt-in of line (\d+), refused")

    code, dry, err = await import_cli(str(export), *SUBSCRIBER_ARGV, "--dry-run", "--address",
                                      runtime.address, token=token)  # fmt: skip
    code_, out, err_ = await import_cli(str(export), *SUBSCRIBER_ARGV, "--address",
                                        runtime.address, token=token)  # fmt: skip

    assert (code, code_) == (1, 1), dry + err + out + err_
    assert f"would import 5 of 9 records from 6 rows of subscribers.{fmt}" in dry, dry + err
    assert f"imported 5 of 9 records from 6 rows of subscribers.{fmt}" in out, out + err_
    for said in (dry, out):
        assert re.search(r"2 +INVALID_ARGUMENT +Opted In At: is not before the opt", said), said
        # The second row of each number, named by the first's line (no header in JSON).
        lines = "(lines 3, 4)" if fmt == "csv" else "(lines 2, 3)"
        assert len(refused.findall(said)) == 1 and lines in said, said
    async with client(runtime.address) as c:
        c.token = token
        reasons = await answers(c, [number(first + i) for i in range(3)], token_of(out))
    assert reasons == {
        number(first): "REASON_REVOKED_BRAND_WIDE",
        number(first + 1): "REASON_REVOKED_BRAND_WIDE",
        number(first + 2): "REASON_CONSENT_ACTIVE",
    }, reasons


async def test_a_subscriber_export_still_being_written_counts_its_rows_and_records_now(
    service, tmp_path, monkeypatch
):
    """A subscriber export that grew while its opt-outs were read is stopped before
    its opt-ins, as any export is, but the summary counted the rows and records it
    held before ("3 of 9 records from 6 rows"): what it holds now goes uncounted. It
    counts both as the file holds them now, the records added among those not sent."""
    runtime, when = service
    ledger = runtime.ledger
    assert ledger is not None
    export, _ = subscriber_export(tmp_path, when, first=150)
    append, held, release = ledger.append, asyncio.Event(), asyncio.Event()

    async def held_once(events):  # type: ignore[no-untyped-def]
        if not held.is_set():
            held.set()
            await release.wait()
        return await append(events)

    monkeypatch.setattr(ledger, "append", held_once)
    process = await started_import(
        str(export), *SUBSCRIBER_ARGV, "--address", runtime.address, "--quiet",
        token=TOKENS["acme-app"][0],
    )  # fmt: skip
    await asyncio.wait_for(held.wait(), 60)  # the opt-outs sent, not yet answered
    day = lambda n: iso(when - timedelta(days=n))  # noqa: E731
    with export.open("a", newline="") as grown:  # a row of two records, one of one
        csv.writer(grown).writerows(
            [[number(156), day(30), day(5), "Subscriber 56", "spring-form"],
             [number(157), day(30), "", "Subscriber 57", "spring-form"]]
        )  # fmt: skip
    release.set()
    out_bytes, err_bytes = await asyncio.wait_for(process.communicate(), 60)
    out, err = out_bytes.decode(), err_bytes.decode()

    assert process.returncode == 1, out + err
    assert "changed while its opt-outs were read" in err, err
    # Its four opt-outs read: three imported, one held; the rest never sent.
    assert "imported 3 of 12 records from 8 rows of subscribers.csv" in out, out
    assert "not sent, the import stopped first: 8" in out, out


async def test_the_embedded_default_imports_one_row_per_subscriber(tmp_path, data_dir):
    proc, address, token, _ = await asyncio.to_thread(start, data_dir)
    try:
        when = datetime.now(UTC)
        async with client(address) as admin:
            admin.token = token
            await admin.DefineCampaign(define("acme", "promo", when - timedelta(days=60)))
        export, expect = subscriber_export(tmp_path, when, first=140)

        await subscriber_rows_imported(address, token, export, expect, SUBSCRIBER_ARGV)

        code, again, err = await import_cli(
            str(export), *SUBSCRIBER_ARGV, "--address", address, token=token
        )
        assert code == 1, again + err
        assert "imported 0 of 9 records from 6 rows" in again, again
        assert "already present: 7" in again, again
    finally:
        await asyncio.to_thread(stop, proc)


async def test_an_export_whose_headers_differ_in_spaces_and_capitals_is_imported(service, tmp_path):
    """A spreadsheet's export, saved with a byte-order mark, its headers with spaces
    around them and other capitals than the mapping's, its statuses in capitals: the
    dry run and the import read it as the clean export, CanSend answers alike, and
    a re-run writes nothing."""
    runtime, when = service
    rows = [
        {f" {k.upper()} " if i % 2 else k.lower(): v.upper() if k == "Status" else v
         for i, (k, v) in enumerate(row.items())}
        for row in their_rows(when, first=152)
    ]  # fmt: skip
    export = write_csv(tmp_path / "subscribers.csv", rows)
    export.write_text("\ufeff" + export.read_text())
    records = SUBSCRIBED + SUBSCRIBED // 4
    assert runtime.ledger is not None
    before = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)

    argv = [str(export), *options(MAPPING["columns"])]
    code, dry, err = await imported(runtime, *argv, "--dry-run", "--refusals", f"{export}.dry")

    assert code == 1, dry + err
    assert f"would import {records:,} of {records + 2:,} records" in dry, dry + err
    assert await runtime.ledger.end_offsets(Stream.SUBSCRIBERS) == before

    code, out, err = await imported(runtime, *argv, "--refusals", f"{export}.real")

    assert code == 1, out + err
    assert f"imported {records:,} of {records + 2:,} records" in out, out + err
    assert "held for review: 1" in out, out
    refused = [
        [{k: v for k, v in json.loads(line).items() if k != "reason"} for line in lines]
        for lines in (Path(f"{export}.{run}").read_text().splitlines() for run in ("dry", "real"))
    ]  # the reasons alike but for "would be held"
    assert len(refused[0]) == 2 and refused[0] == refused[1], refused
    async with client(runtime.address, "acme-app") as c:
        reasons = await answers(c, list(expected(152)), token_of(out))
    assert reasons == expected(152), reasons

    ends = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)
    code, again, err = await imported(runtime, str(export), *options(MAPPING["columns"]))

    assert code == 1, again + err
    assert f"already present: {records:,}" in again, again
    assert await runtime.ledger.end_offsets(Stream.SUBSCRIBERS) == ends


async def test_a_mapping_naming_our_fields_in_other_capitals_reads_them_as_ours(unsent, tmp_path):
    """``--column Phone=...``, ``--value Type:...``, ``--set Brand=...`` were refused
    as naming no such field, the error listing the very fields they meant; they are
    read as ours now. One field given twice but for capitals exits 2, naming both."""
    runtime, when = unsent
    export = write_csv(tmp_path / "subscribers.csv", their_rows(when, first=170))
    records = SUBSCRIBED + SUBSCRIBED // 4

    def capitalised(argv: list[str]) -> list[str]:
        out = []
        for arg in argv:
            option, _, rest = arg.partition("=")
            out.append(f"{option}={rest[:1].upper()}{rest[1:]}" if option != "--ignore" else arg)
        return out

    argv = capitalised(options(MAPPING["columns"]))
    assert "--column=Phone=Phone Number" in argv and "--set=Brand=acme" in argv, argv

    code, dry, err = await imported(runtime, str(export), *argv, "--dry-run")

    assert code == 1, dry + err
    assert f"would import {records:,} of {records + 2:,} records" in dry, dry + err

    twice = [*options(MAPPING["columns"]), "--column=PHONE=Phone Number"]
    code, out, err = await imported(runtime, str(export), *twice, "--dry-run")

    assert code == 2, out + err
    assert "--column phone and --column PHONE are the one field but for capitals" in err, err


async def test_json_lines_of_one_row_per_subscriber_spelling_keys_apart_are_imported(
    service, tmp_path
):
    """The subscriber export as JSON Lines from a platform whose lines spell their
    keys apart (capitals, spaces around them): each line read as the CSV's row, the
    dry run predicting the import, and CanSend answering as for the CSV."""
    runtime, when = service
    export, expect = subscriber_export(tmp_path, when, first=160)
    with export.open(newline="") as rows:
        spellings = [str, str.upper, lambda key: f" {key.lower()} "]
        lines = [
            json.dumps({spellings[i % 3](k): v for k, v in row.items()})
            for i, row in enumerate(csv.DictReader(rows))
        ]
    jsonl = tmp_path / "subscribers.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")

    code, dry, err = await imported(runtime, str(jsonl), *SUBSCRIBER_ARGV, "--dry-run")

    assert code == 1, dry + err
    assert "would import 7 of 9 records from 6 rows of subscribers.jsonl" in dry, dry + err

    code, out, err = await imported(runtime, str(jsonl), *SUBSCRIBER_ARGV)

    assert code == 1, out + err
    assert "imported 7 of 9 records from 6 rows of subscribers.jsonl" in out, out + err
    assert "held for review: 1" in out, out
    async with client(runtime.address, "acme-app") as c:
        reasons = await answers(c, list(expect), token_of(out))
    assert reasons == expect, reasons


async def test_an_export_of_opt_outs_only_set_as_such_is_imported_with_its_channel(
    service, tmp_path
):
    """An opt-out list (Twilio's inbound STOPs, a suppression list) has no type
    column: ``--set type=opt_out`` says what every record is. Its channel set and
    its text read all the same, each opt-out is imported, not refused and held."""
    runtime, when = service
    first = 300
    rows = their_rows(when, first=first)
    export = write_csv(tmp_path / "subscribers.csv", rows)
    code, out, err = await imported(runtime, str(export), *options(MAPPING["columns"]))
    assert code == 1 and "refused: 2" in out, out + err
    stopped = [number(i) for i in range(first + 1, first + SUBSCRIBED, 4)]
    messages = tmp_path / "messages.jsonl"
    with messages.open("w") as lines:
        for n, phone in enumerate(stopped):
            sent = (when - timedelta(days=1, minutes=n)).strftime("%a, %d %b %Y %H:%M:%S +0000")
            message = {"sid": f"SM{first + n:032x}", "from": phone, "body": "STOP"}
            lines.write(json.dumps({**message, "to": "+12125550100", "date_sent": sent}) + "\n")
    argv = [
        str(messages), "--column=import_id=sid", "--column=phone=from", "--column=text=body",
        "--column=occurred_at=date_sent", "--ignore=to", "--set=type=opt_out",
        "--set=brand=acme", "--set=channel=keyword",
    ]  # fmt: skip

    code, out, err = await imported(runtime, *argv)

    assert code == 0, out + err
    assert f"imported {len(stopped)} of {len(stopped)} records" in out, out
    async with client(runtime.address, "acme-app") as c:
        reasons = await answers(
            c, [number(i) for i in range(first, first + SUBSCRIBED)], token_of(out)
        )
    want = {
        number(i): "REASON_REVOKED" if i % 4 == 0 else "REASON_CONSENT_ACTIVE"
        for i in range(first, first + SUBSCRIBED)
    }
    want.update(dict.fromkeys(stopped, "REASON_REVOKED_BRAND_WIDE"))
    assert reasons == want, reasons
    code, out, err = await imported(runtime, *argv)
    assert code == 0 and f"already present: {len(stopped)}" in out, out + err


def national_export(tmp_path: Path, when: datetime) -> tuple[Path, dict[str, str]]:
    """One row per subscriber, its number written as a US platform writes it, without
    its country code (SimpleTexting, Attentive), but for one with it; the last not a
    valid US number. The numbers and what CanSend is to answer each once imported."""
    day = lambda n: iso(when - timedelta(days=n))  # noqa: E731
    rows = [  # as written, in E.164, opted in, opted out, the answer then
        ("(628) 555-4200", number(200), day(30), "", "REASON_CONSENT_ACTIVE"),
        ("6285554201", number(201), day(30), day(10), "REASON_REVOKED_BRAND_WIDE"),
        ("16285554202", number(202), day(30), "", "REASON_CONSENT_ACTIVE"),
        ("+1 628 555 4203", number(203), day(30), "", "REASON_CONSENT_ACTIVE"),
        ("628 555", "", day(30), "", ""),
    ]
    export = write_csv(
        tmp_path / "subscribers.csv",
        [
            {"Phone": written, "Opted In At": opted_in, "Opted Out At": opted_out,
             "Full Name": f"Subscriber {i}", "Source": "spring-form"}
            for i, (written, _, opted_in, opted_out, _) in enumerate(rows)
        ],
    )  # fmt: skip
    return export, {e164: reason for _, e164, _, _, reason in rows if e164}


async def test_numbers_without_their_country_code_are_read_in_the_phone_region_given(
    service, tmp_path
):
    """``--phone-region US`` reads a number with no leading + as a US one (one with it
    as ever), alike in a dry run and the import; one that is no valid US number is
    refused saying the region it was read in; a re-run, the region from the mapping
    file, writes nothing. Without it such numbers are refused, as before, the refusal
    naming the option."""
    runtime, when = service
    export, expect = national_export(tmp_path, when)
    argv = [*SUBSCRIBER_ARGV, "--phone-region", "US"]
    assert runtime.ledger is not None

    code, out, err = await imported(runtime, str(export), *SUBSCRIBER_ARGV, "--dry-run")
    assert code == 1, out + err
    assert "would import 1 of 6 records from 5 rows" in out, out + err
    # Refused, never read in a region guessed, but saying which option reads them.
    hint = r"Phone: is not a phone number: .*; a number without its country code \(no leading "
    hint += r"\+\) is read only in the region --phone-region names, as --phone-region US"
    assert re.search(rf"4 +INVALID_ARGUMENT +{hint} \(lines 2, 3, 4, 6\)", out), out

    code, dry, err = await imported(runtime, str(export), *argv, "--dry-run")
    assert code == 1, dry + err
    assert "would import 5 of 6 records from 5 rows" in dry, dry + err
    refused = r"1 +INVALID_ARGUMENT +Phone: is not a valid number.*; read as a number of US "
    assert re.search(refused, dry), dry

    code, out, err = await imported(runtime, str(export), *argv)
    assert code == 1, out + err
    assert "imported 5 of 6 records from 5 rows" in out, out + err
    assert re.search(refused, out), out
    async with client(runtime.address, "acme-app") as c:
        assert await answers(c, list(expect), token_of(out)) == expect

    ends = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)
    mapping_file = tmp_path / "mapping.json"
    mapping_file.write_text(json.dumps({"phone_region": "us"}))
    code, again, err = await imported(
        runtime, str(export), *SUBSCRIBER_ARGV, "--mapping", str(mapping_file)
    )
    assert code == 1, again + err
    assert "imported 0 of 6 records from 5 rows" in again and "already present: 5" in again
    assert await runtime.ledger.end_offsets(Stream.SUBSCRIBERS) == ends


async def test_a_phone_region_not_known_exits_2_with_nothing_sent(unsent, tmp_path):
    runtime, when = unsent
    export, _ = national_export(tmp_path, when)
    assert runtime.ledger is not None
    ends = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)

    code, out, err = await imported(runtime, str(export), *SUBSCRIBER_ARGV, "--phone-region", "XX")

    assert code == 2 and out == "", out + err
    assert "--phone-region 'XX': is not a region phone numbers are known for" in err, err
    assert await runtime.ledger.end_offsets(Stream.SUBSCRIBERS) == ends


def local_export(tmp_path: Path, when: datetime) -> tuple[Path, dict[str, str]]:
    """One row per subscriber, its times written as Klaviyo and Mailchimp write them,
    with no zone (but for one row's), some in a gap or a repeated hour of New York's.
    The numbers and what CanSend is to answer each once imported in that zone."""
    day = lambda n: f"{(when - timedelta(days=n)).date()} 09:00:00"  # noqa: E731
    rows = [  # the number, opted in, opted out, the answer then
        (number(210), day(30), "", "REASON_CONSENT_ACTIVE"),
        (number(211), day(30), day(10), "REASON_REVOKED_BRAND_WIDE"),
        (number(212), iso(when - timedelta(days=30)), "", "REASON_CONSENT_ACTIVE"),
        # Skipped as New York's clocks went forward: refused, and held.
        (number(213), day(30), "2024-03-10 02:30:00", "REASON_REVOCATION_PENDING_REVIEW"),
        (number(214), "2024-11-03 01:30:00", "", ""),  # twice as they went back
    ]
    export = write_csv(
        tmp_path / "subscribers.csv",
        [
            {"Phone": phone, "Opted In At": opted_in, "Opted Out At": opted_out,
             "Full Name": f"Subscriber {phone[-2:]}", "Source": "spring-form"}
            for phone, opted_in, opted_out, _ in rows
        ],
    )  # fmt: skip
    return export, {phone: reason for phone, _, _, reason in rows if reason}


async def test_times_without_a_zone_are_read_in_the_time_zone_given(service, tmp_path):
    """``--time-zone`` reads a time with no zone of its own as one of that zone (one
    with an offset as ever), alike in a dry run and the import; one the zone's clocks
    skipped or repeated is refused naming its column (an opt-out's held); a re-run,
    the zone from the mapping file, writes nothing. Without it such times are refused."""
    runtime, when = service
    export, expect = local_export(tmp_path, when)
    argv = [*SUBSCRIBER_ARGV, "--time-zone", "America/New_York"]
    assert runtime.ledger is not None

    code, out, err = await imported(runtime, str(export), *SUBSCRIBER_ARGV, "--dry-run")
    assert code == 1, out + err
    assert "would import 1 of 7 records from 5 rows" in out, out + err
    assert "Opted In At: has no time zone" in out, out

    gap = r"1 +INVALID_ARGUMENT +Opted Out At: does not exist in America/New_York.*held"
    fold = r"1 +INVALID_ARGUMENT +Opted In At: is in the hour America/New_York repeats"
    code, dry, err = await imported(runtime, str(export), *argv, "--dry-run")
    assert code == 1, dry + err
    assert "would import 5 of 7 records from 5 rows" in dry, dry + err
    assert re.search(gap, dry) and re.search(fold, dry), dry

    code, out, err = await imported(runtime, str(export), *argv)
    assert code == 1, out + err
    assert "imported 5 of 7 records from 5 rows" in out, out + err
    assert re.search(gap, out) and re.search(fold, out) and "held for review: 1" in out, out
    async with client(runtime.address, "acme-app") as c:
        assert await answers(c, list(expect), token_of(out)) == expect

    ends = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)
    mapping_file = tmp_path / "mapping.toml"
    mapping_file.write_text('time_zone = "America/New_York"\n')
    code, again, err = await imported(
        runtime, str(export), *SUBSCRIBER_ARGV, "--mapping", str(mapping_file)
    )
    assert code == 1, again + err
    assert "imported 0 of 7 records from 5 rows" in again and "already present: 5" in again
    assert await runtime.ledger.end_offsets(Stream.SUBSCRIBERS) == ends


async def test_a_time_zone_not_known_exits_2_with_nothing_sent(unsent, tmp_path):
    runtime, when = unsent
    export, _ = local_export(tmp_path, when)
    assert runtime.ledger is not None
    ends = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)

    code, out, err = await imported(runtime, str(export), *SUBSCRIBER_ARGV, "--time-zone", "EST+5")

    assert code == 2 and out == "", out + err
    assert "--time-zone 'EST+5': is no time zone known" in err, err
    assert await runtime.ledger.end_offsets(Stream.SUBSCRIBERS) == ends


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
async def test_the_phone_region_and_time_zone_apply_to_an_export_under_our_own_names(
    service, tmp_path, fmt
):
    """With no column mapped, ``--phone-region`` and ``--time-zone`` still read the
    export's numbers and times: they are not dropped with a mapping of no columns."""
    runtime, _ = service
    first = 220 if fmt == "csv" else 230
    records = [  # the second at a time New York's clocks skipped: held
        {"type": "opt_out", "phone": f"(628) 555-4{first}", "brand": "acme",
         "occurred_at": "2024-01-05 10:00:00", "channel": "keyword"},
        {"type": "opt_out", "phone": f"628555 4{first + 1}", "brand": "acme",
         "occurred_at": "2024-03-10 02:30:00", "channel": "keyword"},
    ]  # fmt: skip
    if fmt == "csv":
        export = write_csv(tmp_path / "stops.csv", records)
    else:
        export = tmp_path / "stops.jsonl"
        export.write_text("".join(json.dumps(r) + "\n" for r in records))
    argv = ["--phone-region", "US", "--time-zone", "America/New_York"]

    code, out, err = await imported(runtime, str(export), *argv)

    assert code == 1, out + err
    assert "imported 1 of 2 records" in out and "held for review: 1" in out, out + err
    assert "occurred_at: does not exist in America/New_York" in out, out
    expect = {
        number(first): "REASON_REVOKED_BRAND_WIDE",
        number(first + 1): "REASON_REVOCATION_PENDING_REVIEW",
    }
    async with client(runtime.address, "acme-app") as c:
        assert await answers(c, list(expect), token_of(out)) == expect


TIME_FORMATS = [  # the format, how it writes a time, its zone, a time it refuses and why
    pytest.param(
        "epoch-ms",
        lambda at: str(int(at.timestamp() * 1000)),  # Attentive's
        [],
        lambda at: str(int(at.timestamp())),  # seconds, read as milliseconds: of 1970
        r"is a time in 1970 read as milliseconds since 1970 \(--time-format epoch-ms\), "
        r"as a count of seconds would be",
        id="epoch-ms",
    ),
    pytest.param(
        "%m/%d/%Y %I:%M %p",
        lambda at: at.astimezone(ZoneInfo("America/New_York")).strftime("%m/%d/%Y %I:%M %p"),
        ["--time-zone", "America/New_York"],
        iso,  # ISO 8601, with its zone: not as the format writes it
        r"does not match --time-format '%m/%d/%Y %I:%M %p'",
        id="strptime",
    ),
]


@pytest.mark.parametrize(("time_format", "written", "zone", "odd", "why"), TIME_FORMATS)
async def test_times_are_read_as_the_time_format_given_and_again_as_nothing(
    service, tmp_path, time_format, written, zone, odd, why
):
    """``--time-format`` reads every time of the export as it says (a count since
    1970, a strptime format in ``--time-zone``), alike in a dry run and the import;
    a time not so written is refused naming its column, an opt-out's held, never
    read another way; a re-run, the format from the mapping file, writes nothing."""
    runtime, when = service
    first = 240 if time_format == "epoch-ms" else 250
    # At noon UTC: never in an hour New York's clocks skip or repeat.
    noon = when.replace(hour=12, minute=0, second=0, microsecond=0)
    day = lambda n: noon - timedelta(days=n)  # noqa: E731
    rows = [  # the number, opted in, opted out, the answer then
        (number(first), written(day(30)), "", "REASON_CONSENT_ACTIVE"),
        (number(first + 1), written(day(30)), written(day(10)), "REASON_REVOKED_BRAND_WIDE"),
        (number(first + 2), written(day(30)), odd(day(10)), "REASON_REVOCATION_PENDING_REVIEW"),
    ]
    export = write_csv(
        tmp_path / "subscribers.csv",
        [
            {"Phone": phone, "Opted In At": opted_in, "Opted Out At": opted_out,
             "Full Name": f"Subscriber {phone[-2:]}", "Source": "spring-form"}
            for phone, opted_in, opted_out, _ in rows
        ],
    )  # fmt: skip
    expect = {phone: reason for phone, _, _, reason in rows}
    argv = [*SUBSCRIBER_ARGV, "--time-format", time_format, *zone]
    refused = rf"1 +INVALID_ARGUMENT +Opted Out At: {why}.*held"
    assert runtime.ledger is not None

    code, dry, err = await imported(runtime, str(export), *argv, "--dry-run")
    assert code == 1, dry + err
    assert "would import 4 of 5 records from 3 rows" in dry, dry + err
    assert re.search(refused, dry), dry

    code, out, err = await imported(runtime, str(export), *argv)
    assert code == 1, out + err
    assert "imported 4 of 5 records from 3 rows" in out and "held for review: 1" in out, out + err
    assert re.search(refused, out), out
    async with client(runtime.address, "acme-app") as c:
        assert await answers(c, list(expect), token_of(out)) == expect

    ends = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)
    mapping_file = tmp_path / "mapping.json"
    mapping_file.write_text(json.dumps({"time_format": time_format}))
    code, again, err = await imported(
        runtime, str(export), *SUBSCRIBER_ARGV, "--mapping", str(mapping_file), *zone
    )
    assert code == 1, again + err
    assert "imported 0 of 5 records from 3 rows" in again and "already present: 4" in again
    assert await runtime.ledger.end_offsets(Stream.SUBSCRIBERS) == ends


@pytest.mark.parametrize(
    ("given", "words"),
    [
        (["--time-format", "%m/%d/%Y %I:%M %p"], "gives no offset (%z), so its times are of a"),
        (["--time-format", "%m/%d/%Y", "--time-zone", "UTC"], "gives no time of day"),
        (["--time-format", "%d/%m/%Y %H:%M %Q", "--time-zone", "UTC"], "%Q is no directive"),
        (["--time-format", "unix"], "give epoch-s, epoch-ms, or a strptime format"),
    ],
)
async def test_a_time_format_that_cannot_be_used_exits_2_with_nothing_sent(
    unsent, tmp_path, given, words
):
    runtime, when = unsent
    export, _ = local_export(tmp_path, when)
    assert runtime.ledger is not None
    ends = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)

    code, out, err = await imported(runtime, str(export), *SUBSCRIBER_ARGV, *given)

    assert code == 2 and out == "", out + err
    assert f"--time-format {given[1]!r}: {words}" in err, err
    assert await runtime.ledger.end_offsets(Stream.SUBSCRIBERS) == ends


async def test_times_written_as_json_numbers_read_as_the_count_they_are(service, tmp_path):
    """Attentive's JSON writes its times as numbers (``1706041141103``): each was
    refused as no string, every opt-out held. With ``--time-format epoch-ms`` each
    reads as the same digits in a string, a row opting out before it opted in
    refusing its opt-in as ever; a fraction is refused naming its column (held);
    without it, each is refused as a count is. A re-run writes nothing."""
    runtime, when = service
    first = 600
    ms = lambda days: int((when - timedelta(days=days)).timestamp() * 1000)  # noqa: E731
    rows = [  # the number, opted in, opted out, the answer then
        (number(first), ms(30), None, "REASON_CONSENT_ACTIVE"),
        (number(first + 1), ms(30), ms(10), "REASON_REVOKED_BRAND_WIDE"),
        (number(first + 2), ms(30), ms(10) + 0.5, "REASON_REVOCATION_PENDING_REVIEW"),
        (number(first + 3), ms(10), ms(30), "REASON_REVOKED_BRAND_WIDE"),  # opted out first
    ]
    export = tmp_path / "subscribers.jsonl"
    lines = []
    for phone, opted_in, opted_out, _ in rows:
        line: dict[str, Any] = {
            "Phone": phone,
            "Opted In At": opted_in,
            "Full Name": f"Subscriber {phone[-2:]}",
            "Source": "api",
        }
        if opted_out is not None:
            line["Opted Out At"] = opted_out
        lines.append(json.dumps(line) + "\n")
    export.write_text("".join(lines))
    expect = {phone: reason for phone, _, _, reason in rows}
    argv = [str(export), *SUBSCRIBER_ARGV, "--time-format", "epoch-ms"]
    fraction = r"1 +INVALID_ARGUMENT +Opted Out At: is not a count of milliseconds .*held"
    assert runtime.ledger is not None

    code, out, err = await imported(runtime, str(export), *SUBSCRIBER_ARGV, "--dry-run")
    assert code == 1, out + err
    assert "would import 0 of 7 records from 4 rows" in out, out + err
    assert re.search(r"Opted In At: is a number, not a time: '\d+'; a Unix time", out), out

    code, dry, err = await imported(runtime, *argv, "--dry-run")
    assert code == 1, dry + err
    assert "would import 5 of 7 records from 4 rows" in dry, dry + err
    assert re.search(fraction, dry), dry
    assert re.search(r"1 +INVALID_ARGUMENT +Opted In At: is not before the opt-out's", dry), dry

    code, out, err = await imported(runtime, *argv)
    assert code == 1, out + err
    assert "imported 5 of 7 records from 4 rows" in out and "held for review: 1" in out, out
    assert re.search(fraction, out), out
    async with client(runtime.address, "acme-app") as c:
        assert await answers(c, list(expect), token_of(out)) == expect

    ends = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)
    mapping_file = tmp_path / "mapping.json"
    mapping_file.write_text(json.dumps({"time_format": "epoch-ms"}))
    code, again, err = await imported(
        runtime, str(export), *SUBSCRIBER_ARGV, "--mapping", str(mapping_file)
    )
    assert code == 1, again + err
    assert "imported 0 of 7 records from 4 rows" in again and "already present: 5" in again
    assert await runtime.ledger.end_offsets(Stream.SUBSCRIBERS) == ends


async def test_rows_a_skip_names_are_left_out_but_never_an_opt_out(service, tmp_path):
    """``--skip``: Klaviyo's NEVER_SUBSCRIBED rows, neither an opt-in nor an opt-out,
    were each refused and held for review, filling the queue. Skipped, they are never
    sent, counted by the skip, in a dry run alike, and the import exits 0. A skip
    that matches an opt-out never skips it (it is imported, and counted as such); a
    re-run, the skips from the mapping file, writes nothing."""
    runtime, when = service
    first = 500
    rows = their_rows(when, first=first)[:-2]  # no refusals: the skips alone
    never = {**rows[0], "Status": "NEVER_SUBSCRIBED", "Changed At": iso(when)}
    rows += [
        {**never, "Phone Number": number(first + 50)},
        {**never, "Phone Number": number(first + 51), "Status": " never_subscribed "},
        # Test rows of the platform's: its opt-in skipped, its opt-out never.
        {**rows[0], "Phone Number": number(first + 52), "Tags": "test"},
        {**rows[2], "Status": "unsubscribed", "Changed At": iso(when - timedelta(days=1)),
         "Tags": "TEST"},
    ]  # fmt: skip
    export = write_csv(tmp_path / "subscribers.csv", rows)
    skips = ["--skip=Status=never_subscribed", "--skip=Tags=test"]
    argv = [str(export), *options(MAPPING["columns"]), *skips]
    records = SUBSCRIBED + SUBSCRIBED // 4 + 1  # with the test opt-out
    counted = [
        r"  skipped \(--skip\): 3\n +2  Status=never_subscribed\n +1  Tags=test\n",
        r"  matched --skip but opt-outs, so not skipped: 1\n +1  Tags=test\n",
    ]
    assert runtime.ledger is not None
    before = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)

    code, dry, err = await imported(runtime, *argv, "--dry-run")

    assert code == 0, dry + err
    assert f"would import {records} of {records + 3} records" in dry, dry + err
    assert "refused: 0" in dry and "held for review: 0" in dry and "not sent" not in dry, dry
    assert all(re.search(said, dry) for said in counted), dry
    assert await runtime.ledger.end_offsets(Stream.SUBSCRIBERS) == before

    code, out, err = await imported(runtime, *argv)

    assert code == 0, out + err
    assert f"imported {records} of {records + 3} records" in out, out + err
    assert "refused: 0" in out and "held for review: 0" in out, out
    assert all(re.search(said, out) for said in counted), out
    expect = {**expected(first), number(first + 1): "REASON_REVOKED"}
    del expect[number(first + 90)]  # the row of a status unmapped, left out above
    skipped = {number(first + i): "REASON_NO_CONSENT" for i in (50, 51, 52)}
    async with client(runtime.address, "acme-app") as c:
        reasons = await answers(c, [*expect, *skipped], token_of(out))
    assert reasons == {**expect, **skipped}, reasons

    ends = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)
    mapping_file = tmp_path / "mapping.toml"
    mapping_file.write_text('[skip]\nStatus = ["NEVER_SUBSCRIBED"]\nTags = "test"\n')
    code, again, err = await imported(
        runtime, str(export), *options(MAPPING["columns"]), "--mapping", str(mapping_file)
    )
    assert code == 0, again + err
    assert f"imported 0 of {records + 3} records" in again, again
    assert f"already present: {records}" in again and "skipped (--skip): 3" in again, again
    assert await runtime.ledger.end_offsets(Stream.SUBSCRIBERS) == ends

    # A skip of a column the export lacks: exit 2, nothing sent.
    code, out, err = await imported(runtime, *argv, "--skip=Consent=NEVER_SUBSCRIBED")
    assert code == 2 and out == "", out + err
    assert "the header has no column 'Consent' (named by --skip)" in err, err
    assert await runtime.ledger.end_offsets(Stream.SUBSCRIBERS) == ends


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
async def test_values_mapped_for_our_own_type_column_in_other_capitals_are_imported(
    service, tmp_path, fmt
):
    """An export whose own type column is spelt ``TYPE`` (a JSON key ``"Type"``), read
    as our ``type``, with ``--value type:unsubscribed=opt_out``: the CSV stopped at
    start as having no column for type, and the JSON lines' opt-outs were refused
    as no opt_in or opt_out, held, not imported. Both import as the export under
    ``Status`` does, the dry run predicting it, and CanSend denies each opt-out."""
    runtime, when = service
    first = 620 if fmt == "csv" else 640
    key = "TYPE" if fmt == "csv" else "Type"
    rows = [
        {(key if k == "Status" else k): v for k, v in row.items()}
        for row in their_rows(when, first=first)
    ]
    if fmt == "csv":
        export = write_csv(tmp_path / "subscribers.csv", rows)
    else:
        export = tmp_path / "subscribers.jsonl"
        export.write_text("".join(json.dumps(row) + "\n" for row in rows))
    columns = {k: v for k, v in MAPPING["columns"].items() if k != "type"}
    argv = [str(export), *options(columns)]
    records = SUBSCRIBED + SUBSCRIBED // 4
    assert runtime.ledger is not None
    before = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)

    code, dry, err = await imported(runtime, *argv, "--dry-run")

    assert code == 1, dry + err
    assert f"would import {records:,} of {records + 2:,} records" in dry, dry + err
    assert "held for review: 1" in dry, dry
    assert await runtime.ledger.end_offsets(Stream.SUBSCRIBERS) == before

    code, out, err = await imported(runtime, *argv)

    assert code == 1, out + err
    assert f"imported {records:,} of {records + 2:,} records" in out, out + err
    assert "held for review: 1" in out, out
    async with client(runtime.address, "acme-app") as c:
        reasons = await answers(c, list(expected(first)), token_of(out))
    assert reasons == expected(first), reasons
    assert sum(reason == "REASON_REVOKED" for reason in reasons.values()) == SUBSCRIBED // 4
