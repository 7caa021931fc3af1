"""``consent-ledger import`` end to end: a CSV export sent through ``ImportConsents``
to a service on the real Kafka ledger and PostgreSQL, answered by ``CanSend``; its
bad records refused by line, field and reason in the summary; the same import run
again writing nothing (the ledger's end offsets unchanged); a dry run writing
nothing; and the embedded default (``serve --embedded``) importing JSON Lines."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import fcntl
import io
import json
import logging
import os
import pty
import re
import signal
import socket
import struct
import sys
import termios
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from unittest import mock

import grpc
import pypdf
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb

from ledger.ports import Stream
from services import import_files
from services.bootstrap import Runtime
from services.cli import import_
from services.cli import main as cli
from tests.e2e.harness import (
    TOKENS,
    Client,
    client,
    ctrl_c_as_at_a_terminal,
    define,
    opt_in,
    status_details,
    streamed,
    ts,
)
from tests.e2e.test_embedded_run import data_dir as data_dir  # the fixture, shared
from tests.e2e.test_embedded_run import start, stop
from tests.e2e.test_metrics import Samples, sample, scrape

pytestmark = pytest.mark.asyncio(loop_scope="session")

ROOT = Path(__file__).resolve().parents[2]
PROOF = {
    "proof.name": "Ada Lovelace",
    "proof.ip_address": "203.0.113.7",
    "proof.form_url": "https://acme.example/join",
    "proof.consent_text": "Yes, text me offers. Reply STOP to cancel.",
    "proof.screenshot_ref": "s3://proofs/form.png",
    "proof.screenshot_sha256": "9f" * 32,
}
COLUMNS = ["type", "import_id", "phone", "brand", "campaign", "occurred_at", "tier", "method",
           "channel", "text", "proof.registered_at", *PROOF]  # fmt: skip
GOOD = 40
"""Numbers opted in by the export; every fifth opts out later."""


def phone(i: int) -> str:
    return f"+1415555{3000 + i:04d}"


def iso(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def export_rows(when: datetime) -> list[dict[str, str]]:
    """The export: good opt-ins, later opt-outs of some (listed before their opt-in,
    as an export sorted by number may list them), and five bad records."""
    rows: list[dict[str, str]] = []
    for i in range(GOOD):
        opted_in = when - timedelta(days=30, minutes=i)
        opt_in = {
            "type": "opt_in",
            "import_id": f"old-platform-{i}",
            "phone": phone(i),
            "brand": "acme",
            "campaign": "promo",
            "occurred_at": iso(opted_in),
            "tier": "promotional",
            "method": "web_form",
            "proof.registered_at": iso(opted_in),
            **PROOF,
        }
        if i % 5 == 0:
            rows.append(
                {
                    "type": "opt_out",
                    "import_id": f"old-platform-stop-{i}",
                    "phone": phone(i),
                    "brand": "acme",
                    "campaign": "promo",
                    "occurred_at": iso(when - timedelta(days=2)),
                    "channel": "keyword",
                    "text": "STOP",
                }
            )
        rows.append(opt_in)
    base = dict(rows[1])
    rows += [
        {**base, "import_id": "bad-phone", "phone": "+1 415 CALL ME"},
        {**base, "import_id": "no-ip", "phone": phone(90), "proof.ip_address": ""},
        {**base, "import_id": "no-campaign", "phone": phone(91), "campaign": "nope"},
        {**base, "import_id": "globex", "phone": phone(92), "brand": "globex"},
        {**base, "import_id": "bad-time", "phone": phone(93), "occurred_at": "yesterday"},
    ]
    return rows


def opted_in_then_out(when: datetime, opt_outs: dict[str, dict[str, str]]) -> list[dict[str, str]]:
    """For each number, its opt-in as the export writes it, then its opt-out (a STOP
    a day before ``when``) with ``opt_outs[number]`` written over its fields."""
    rows = []
    for number, changes in opt_outs.items():
        rows.append({**export_rows(when)[1], "import_id": f"in-{number}", "phone": number})
        opt_out = {
            "type": "opt_out",
            "import_id": f"out-{number}",
            "phone": number,
            "brand": "acme",
            "campaign": "promo",
            "occurred_at": iso(when - timedelta(days=1)),
            "channel": "keyword",
            "text": "STOP",
        }
        rows.append({**opt_out, **changes})
    return rows


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


async def started_import(
    *argv: str, token: str, cwd: Path = ROOT, stdin: int | None = None
) -> asyncio.subprocess.Process:
    """``consent-ledger import`` started in a process of its own (the service runs in
    this test's event loop, which the CLI must not block), its output piped, and
    Ctrl-C reaching it as at a terminal."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "import", *argv,
        env={**os.environ, "CONSENT_TOKEN": token}, cwd=cwd, stdin=stdin,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        preexec_fn=ctrl_c_as_at_a_terminal,
    )  # fmt: skip


async def import_cli(*argv: str, token: str) -> tuple[int, str, str]:
    """``consent-ledger import`` run to its end: its exit status, output and errors.
    Its main runs in a thread of this process, which starts in a fraction of the time
    a process of its own does; ``started_import`` is the real command, for what only
    a process shows (an exit by signal, standard input, its output closed)."""
    return await asyncio.wait_for(asyncio.to_thread(_main_of_import, argv, token), 120)


def _main_of_import(argv: Sequence[str], token: str) -> tuple[int, str, str]:
    """``consent-ledger import``'s main, its output and errors captured as its own
    process writes them: with what a thread of it raised, and what gRPC's client
    logged (which Python, with no logging set up, writes to standard error)."""
    out, err = io.StringIO(), io.StringIO()
    grpc_log = logging.StreamHandler(err)
    grpc_log.setLevel(logging.WARNING)
    service = threading.main_thread().ident  # the service's gRPC logs from this loop's
    grpc_log.addFilter(lambda record: record.thread != service)
    hook = threading.excepthook
    threading.excepthook = threading.__excepthook__  # to sys.stderr, as a process does
    logging.getLogger("grpc").addHandler(grpc_log)
    try:
        with (
            mock.patch.dict(os.environ, {"CONSENT_TOKEN": token}),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            try:
                code = cli.main(["import", *argv])
            except SystemExit as stopped:  # argparse's, for a usage error or --help
                code = stopped.code if isinstance(stopped.code, int | None) else 1
    finally:
        logging.getLogger("grpc").removeHandler(grpc_log)
        threading.excepthook = hook
    return code or 0, out.getvalue(), err.getvalue()


async def importing(serve, **changes):
    """A service (of ``serve`` or ``module_serve``) with acme's promo campaign, and
    the time it started; ``changes`` to its settings."""
    campaign = define("acme", "promo", datetime.now(UTC) - timedelta(days=60))
    runtime = await serve(name="import", campaigns=[campaign], **changes)
    return runtime, datetime.now(UTC)


@pytest.fixture
async def service(serve):
    return await importing(serve)


@pytest.fixture
async def metered(serve):
    """``service`` serving ``/metrics`` too: only for the tests that scrape it, as
    its server's stop waits out up to half a second of its loop."""
    return await importing(serve, metrics_listen="127.0.0.1:0")


@pytest.fixture(scope="module")
async def unsent(module_serve):
    """One service for the imports that write nothing (refused before they send a
    record, or dry runs): each finds the ledger's end, and its numbers, as they were."""
    return await importing(module_serve, metrics_listen="127.0.0.1:0")


def imports_counted(m: Samples) -> dict[str, float]:
    """``consent_import_records_total`` of a scrape, by outcome."""
    return {
        outcome: sample(m, "consent_import_records_total", outcome=outcome) or 0
        for outcome in ("imported", "present", "refused")
    }


def import_refusals(m: Samples) -> dict[tuple[str, str, str], float]:
    """``consent_import_refusals_total`` of a scrape, by (record, code, held)."""
    return {
        (labels["record"], labels["code"], labels["held"]): value
        for (name, frozen), value in m.items()
        if name == "consent_import_refusals_total"
        for labels in [dict(frozen)]
    }


def token_of(summary: str) -> str:
    found = re.search(r"ledger written up to: (\S+)", summary)
    assert found, summary
    return found.group(1)


async def pdf_proof(
    runtime: Runtime, number: str, token: str
) -> tuple[api.GetProofPacketResponse, str]:
    """acme/promo's proof packet for ``number`` as a PDF, and the PDF's text."""
    async with client(runtime.address, "acme-app") as c:
        answer = await c.GetProofPacket(
            api.GetProofPacketRequest(
                phone=number, brand="acme", campaign="promo",
                format=api.PACKET_FORMAT_PDF, at_least_as_fresh=token,
            ),
            timeout=60,
        )  # fmt: skip
    pages = pypdf.PdfReader(io.BytesIO(answer.document)).pages
    return answer, "\n".join(page.extract_text() for page in pages)


async def answers(c: Client, phones: list[str], token: str) -> dict[str, str]:
    """CanSendBatch's reason per number, at a coming noon in Los Angeles (no quiet
    hours), from a view that has applied ``token``."""
    noon = datetime.now(UTC).replace(hour=20, minute=0, second=0, microsecond=0)
    noon += timedelta(days=1)
    batch = await c.CanSendBatch(
        api.CanSendBatchRequest(
            brand="acme", campaign="promo", phones=phones, at=ts(noon), at_least_as_fresh=token
        )
    )
    return {d.phone: api.Reason.Name(d.reason) for d in batch.decisions}


async def imported_answers(
    runtime: Runtime,
    export: Path,
    numbers: Iterable[str],
    *,
    code: int,
    said: Sequence[str] = (),
    refusals: Sequence[str] = (),
    held: int | None = None,
) -> dict[str, str]:
    """``export`` imported as acme's app, its exit status ``code``, its summary saying
    each of ``said``, matching each pattern of ``refusals`` and (unless None) naming
    ``held`` records held for review; then ``answers`` for ``numbers`` from a view
    that has applied the import."""
    status, out, err = await import_cli(
        str(export), "--address", runtime.address, token=TOKENS["acme-app"][0]
    )
    assert status == code, out + err
    for words in said:
        assert words in out, out + err
    for pattern in refusals:
        assert re.search(pattern, out), (pattern, out)
    if held is not None:
        assert len(re.findall(r"; held for review", out)) == held, out
    async with client(runtime.address, "acme-app") as c:
        return await answers(c, list(numbers), token_of(out))


async def test_an_export_is_imported_refused_by_line_and_imported_again_as_nothing(
    metered, tmp_path
):
    runtime, when = metered
    export = write_csv(tmp_path / "export.csv", export_rows(when))
    acme = TOKENS["acme-app"][0]

    code, out, err = await import_cli(
        str(export), "--address", runtime.address, "--refusals", str(tmp_path / "r.jsonl"),
        token=acme,
    )  # fmt: skip

    assert code == 1, err  # some records refused
    opt_outs = GOOD // 5
    assert f"imported {GOOD + opt_outs:,} of {GOOD + opt_outs + 5:,} records" in out, out
    assert "already present: 0" in out and "refused: 5" in out
    lines = {m.group(2): m.group(1) for m in re.finditer(r"(\w+)  (\S+): .*\(line", out)}
    assert lines == {
        "phone": "INVALID_ARGUMENT",
        "proof.ip_address": "INVALID_ARGUMENT",
        "campaign": "FAILED_PRECONDITION",
        "brand": "PERMISSION_DENIED",
        "occurred_at": "INVALID_ARGUMENT",
    }, out
    first_bad_line = GOOD + opt_outs + 2  # after the header and the good records
    assert f"(line {first_bad_line})" in out
    refused = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    # "bad-time" cannot be read: the service never saw it, but its row's id is kept,
    # so that the row fixed and imported again is recorded once.
    assert {r["import_id"] for r in refused} == {
        "bad-phone",
        "no-ip",
        "no-campaign",
        "globex",
        "bad-time",
    }

    async with client(runtime.address, "acme-app") as c:
        reasons = await answers(c, [phone(i) for i in range(GOOD)], token_of(out))
    for i in range(GOOD):
        expected = "REASON_REVOKED" if i % 5 == 0 else "REASON_CONSENT_ACTIVE"
        assert reasons[phone(i)] == expected, (i, reasons[phone(i)])

    assert runtime.ledger is not None
    ends = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)
    assert sum(ends.values()) == GOOD + opt_outs
    # The service counts what it answered, as the summary does ("bad-time" it never
    # saw), and its refusals by type and code: no number, brand or import id.
    assert runtime.metrics_address is not None
    m = await asyncio.to_thread(scrape, runtime.metrics_address)
    assert imports_counted(m) == {"imported": GOOD + opt_outs, "present": 0, "refused": 4}
    assert import_refusals(m) == {
        ("opt_in", "INVALID_ARGUMENT", "false"): 2,
        ("opt_in", "FAILED_PRECONDITION", "false"): 1,
        ("opt_in", "PERMISSION_DENIED", "false"): 1,
    }

    code, again, err = await import_cli(str(export), "--address", runtime.address, token=acme)

    assert code == 1, err
    assert f"imported 0 of {GOOD + opt_outs + 5:,} records" in again, again
    assert f"already present: {GOOD + opt_outs:,}" in again and "refused: 5" in again
    assert await runtime.ledger.end_offsets(Stream.SUBSCRIBERS) == ends
    m = await asyncio.to_thread(scrape, runtime.metrics_address)
    assert imports_counted(m) == {
        "imported": GOOD + opt_outs,
        "present": GOOD + opt_outs,
        "refused": 8,
    }


async def test_a_dry_run_checks_every_record_and_writes_nothing(unsent, tmp_path):
    runtime, when = unsent
    export = write_csv(tmp_path / "export.csv", export_rows(when))
    assert runtime.ledger is not None
    before = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)

    code, out, err = await import_cli(
        str(export), "--dry-run", "--address", runtime.address, token=TOKENS["acme-app"][0]
    )

    assert code == 1, err
    assert f"would import {GOOD + GOOD // 5:,} of" in out and "refused: 5" in out, out
    assert "dry run: nothing was written" in out
    assert await runtime.ledger.end_offsets(Stream.SUBSCRIBERS) == before
    async with client(runtime.address, "acme-app") as c:
        reasons = await answers(c, [phone(1)], "")
    assert reasons[phone(1)] == "REASON_NO_CONSENT"
    assert runtime.metrics_address is not None  # nor counted as an import's records
    m = await asyncio.to_thread(scrape, runtime.metrics_address)
    assert imports_counted(m)["imported"] == 0


async def test_refusals_to_standard_output_leave_the_summary_on_standard_error(
    unsent, tmp_path, monkeypatch
):
    """``--refusals -`` pipes the refused records (to jq, say) and says the summary on
    standard error; it used to write them to a file named ``-``, which ``./-`` names."""
    runtime, when = unsent
    export = write_csv(tmp_path / "export.csv", export_rows(when))
    monkeypatch.chdir(tmp_path)
    acme = TOKENS["acme-app"][0]

    code, out, err = await import_cli(
        str(export), "--dry-run", "--address", runtime.address, "--refusals", "-", token=acme
    )

    assert code == 1, err
    refused = [json.loads(line) for line in out.splitlines()]
    assert {r["import_id"] for r in refused} == {
        "bad-phone", "no-ip", "no-campaign", "globex", "bad-time",
    }  # fmt: skip
    assert "refused: 5" in err and "dry run: nothing was written" in err, err
    assert not (tmp_path / "-").exists()

    code, out, err = await import_cli(
        str(export), "--dry-run", "--address", runtime.address, "--refusals", "./-", token=acme
    )
    assert code == 1, err
    assert "refused: 5" in out and len((tmp_path / "-").read_text().splitlines()) == 5, out


async def test_a_refused_record_without_an_import_id_is_named_by_the_id_derived_for_it(
    service, tmp_path
):
    """``--refusals`` named a refused opt-in that gave no ``import_id`` by an empty id,
    not by the one the import derived for it, so the refusals of two runs could not
    be matched. Each refused record is named by its id, one derived marked so, the
    same on every run: the id the service was sent, or for a record the file could
    not read, the one derived from what it said (as such an opt-out is held under)."""
    runtime, when = service
    base = {**export_rows(when)[1], "import_id": ""}
    rows = [
        {**base, "phone": phone(94)},  # imported
        {**base, "phone": phone(95), "occurred_at": "yesterday"},  # the CLI refuses it
        {**base, "phone": phone(96), "campaign": "nope"},  # the service refuses it
        {**base, "phone": phone(97), "campaign": "nope", "import_id": "own-id"},
        {"type": "opt_out", "phone": phone(98), "brand": "acme", "campaign": "promo",
         "occurred_at": iso(when - timedelta(days=1)), "text": "STOP"},  # no channel: held
    ]  # fmt: skip
    export = write_csv(tmp_path / "export.csv", rows)
    with export.open(newline="") as text:  # the ids the CLI sends, as it reads them
        sent = {
            read.line: getattr(read.record, str(read.record.WhichOneof("record"))).request_id
            for read in import_files.read_records(text, "csv")
            if isinstance(read, import_files.Read)
        }
    told: list[dict[int, dict[str, Any]]] = []
    for run in ("first", "again"):
        refusals = tmp_path / f"{run}.jsonl"
        code, out, err = await import_cli(
            str(export), "--address", runtime.address, "--refusals", str(refusals),
            token=TOKENS["acme-app"][0],
        )  # fmt: skip
        assert code == 1, out + err
        assert "refused: 4" in out, out
        told.append({r["line"]: r for r in map(json.loads, refusals.read_text().splitlines())})

    first, again = told
    assert sorted(first) == [3, 4, 5, 6], first
    for line in (4, 6):  # refused by the service: the id it was sent, derived
        assert (first[line]["import_id"], first[line]["import_id_derived"]) == (sent[line], True)
        assert sent[line].startswith("import-"), sent
    assert (first[5]["import_id"], first[5]["import_id_derived"]) == ("own-id", False)
    unread = first[3]  # never sent: derived from what it said
    assert unread["field"] == "occurred_at" and unread["import_id_derived"], unread
    assert unread["import_id"].startswith("import-"), unread
    assert len({r["import_id"] for r in first.values()}) == 4, first
    # A run again names each the same: its refusals match the first's, id by id.
    assert {line: (r["import_id"], r["import_id_derived"]) for line, r in again.items()} == {
        line: (r["import_id"], r["import_id_derived"]) for line, r in first.items()
    }


async def test_records_under_an_import_id_that_is_no_id_are_each_refused_for_it(service, tmp_path):
    """An import id the service refuses as no id (here one holding a zero-width space)
    claimed itself for the file all the same: the opt-out under it was refused for the
    id, and each record after it under the same id "was used by the opt-out", refused
    ALREADY_EXISTS as a repeat, where ImportConsents and RecordOptIn refuse each
    INVALID_ARGUMENT for the id itself. Each is now refused as they refuse it."""
    runtime, when = service
    bad = "old\u200bplatform-1"
    opt_out = {
        "type": "opt_out", "import_id": bad, "phone": phone(85), "brand": "acme",
        "campaign": "promo", "occurred_at": iso(when - timedelta(days=1)), "channel": "keyword",
        "text": "STOP",
    }  # fmt: skip
    opt_in = {**export_rows(when)[1], "import_id": bad}
    rows = [opt_out, {**opt_in, "phone": phone(86)}, {**opt_in, "phone": phone(87)}]
    export = write_csv(tmp_path / "export.csv", rows)
    for dry in ([], ["--dry-run"]):
        refusals = tmp_path / "refused.jsonl"
        code, out, err = await import_cli(
            str(export), "--address", runtime.address, "--refusals", str(refusals), *dry,
            token=TOKENS["acme-app"][0],
        )  # fmt: skip
        assert code == 1, out + err
        told = {r["line"]: r for r in map(json.loads, refusals.read_text().splitlines())}
        assert sorted(told) == [2, 3, 4], told
        for line, refusal in told.items():
            assert (refusal["code"], refusal["field"]) == ("INVALID_ARGUMENT", "import_id"), (
                line, refusal,
            )  # fmt: skip
            assert "U+200B" in refusal["reason"], refusal


@pytest.mark.parametrize("control", ["\x85", "\x1f", "\x0c"])
async def test_a_control_character_at_the_end_of_free_text_is_refused_as_the_service_does(
    service, tmp_path, control
):
    """The import trimmed free text (an opt-out's words, the proof) with ``str.strip``,
    which takes NEL, the C0 separators and a form feed for spaces: a record ending in
    one was imported where ImportConsents and RecordOptIn refuse the control character,
    naming the field. Only spaces and line ends are trimmed now; each such record is
    refused naming its field, in a dry run as in the import."""
    runtime, when = service
    opt_out = {
        "type": "opt_out", "import_id": "stop-80", "phone": phone(80), "brand": "acme",
        "campaign": "promo", "occurred_at": iso(when - timedelta(days=1)), "channel": "keyword",
        "text": "STOP" + control,
    }  # fmt: skip
    row = {**export_rows(when)[1], "import_id": "in-81", "phone": phone(81)}
    row["proof.name"] += control
    export = write_csv(tmp_path / "export.csv", [opt_out, row])
    stop = api.RecordOptOutRequest(
        request_id="stop-82", phone=phone(82), brand="acme", campaign="promo",
        channel=lpb.REVOCATION_CHANNEL_KEYWORD, occurred_at=ts(when - timedelta(days=1)),
        text="STOP" + control,
    )  # fmt: skip
    signed_up = opt_in(phone(83), "acme", "promo", when - timedelta(days=30))
    signed_up.proof.name += control
    async with client(runtime.address, "acme-app") as c:  # what the service says of each
        (told,) = await streamed(
            c,
            [
                api.ImportConsentsRequest(
                    records=[api.ImportRecord(opt_out=stop), api.ImportRecord(opt_in=signed_up)]
                )
            ],
        )
    assert [[v.field for v in r.violations] for r in told.refusals] == [["text"], ["proof.name"]]
    for dry in (["--dry-run"], []):
        refusals = tmp_path / "refused.jsonl"
        code, out, err = await import_cli(
            str(export), "--address", runtime.address, "--refusals", str(refusals), *dry,
            token=TOKENS["acme-app"][0],
        )  # fmt: skip
        assert code == 1, out + err
        said = {r["line"]: r for r in map(json.loads, refusals.read_text().splitlines())}
        assert {line: (r["code"], r["field"]) for line, r in said.items()} == {
            2: ("INVALID_ARGUMENT", "text"),
            3: ("INVALID_ARGUMENT", "proof.name"),
        }, said
        assert f"U+{ord(control):04X}" in said[2]["reason"], said


async def test_promotional_opt_ins_not_given_in_writing_are_counted_as_informational(
    service, tmp_path
):
    """Imported with method api_import or verbal, a promotional opt-in allows no
    promotional campaign (47 CFR 64.1200(a)(2)); a migration of them once found out
    only from its first campaign denied. The summary says so, in a dry run and on
    a re-run (present) too, and counts no refused record."""
    runtime, when = service
    base = {**export_rows(when)[1], "proof.collection_detail": "imported from OldSMS"}
    methods = {phone(0): "api_import", phone(1): "verbal", phone(2): "web_form"}
    rows = [
        {**base, "import_id": f"m-{number}", "phone": number, "method": method}
        for number, method in methods.items()
    ]
    rows.append({**rows[0], "import_id": "refused", "phone": phone(3), "campaign": "nope"})
    export = tmp_path / "export.csv"
    with export.open("w", newline="") as out:
        writer = csv.DictWriter(out, [*COLUMNS, "proof.collection_detail"])
        writer.writeheader()
        writer.writerows(rows)
    said = (
        "  2 promotional opt-ins not given in writing (method verbal/api_import): they "
        "allow informational campaigns only"
    )
    acme = TOKENS["acme-app"][0]

    for argv in (["--dry-run"], [], []):  # then the import, then a re-run: present
        code, out, err = await import_cli(
            str(export), *argv, "--address", runtime.address, token=acme
        )
        assert code == 1, out + err  # the one refused
        assert said in out.splitlines(), out

    async with client(runtime.address, "acme-app") as c:
        reasons = await answers(c, list(methods), token_of(out))
    assert reasons == {
        phone(0): "REASON_CONSENT_TIER_INSUFFICIENT",
        phone(1): "REASON_CONSENT_TIER_INSUFFICIENT",
        phone(2): "REASON_CONSENT_ACTIVE",
    }


async def test_a_repeated_opt_in_not_given_in_writing_is_counted_as_informational_too(
    service, tmp_path
):
    """A record repeated in the file is not sent again: the command counts it present
    itself, as its first fared. Such a repeat of a promotional opt-in not given in
    writing is one of the present the informational line counts (as the service counts
    each copy of one within a message), not left out of it."""
    runtime, when = service
    base = {**export_rows(when)[1], "proof.collection_detail": "imported from OldSMS"}
    row = {**base, "import_id": "api-0", "phone": phone(0), "method": "api_import"}
    export = tmp_path / "export.csv"
    with export.open("w", newline="") as out:
        writer = csv.DictWriter(out, [*COLUMNS, "proof.collection_detail"])
        writer.writeheader()
        writer.writerows([row, row])
    acme = TOKENS["acme-app"][0]

    for argv in (["--dry-run"], [], []):  # then the import, then a re-run: present
        code, out, err = await import_cli(
            str(export), *argv, "--address", runtime.address, token=acme
        )
        assert code == 0, out + err
        assert "  already present: " in out, out
        assert (
            "  2 promotional opt-ins not given in writing (method verbal/api_import): they "
            "allow informational campaigns only"
        ) in out.splitlines(), out


async def test_a_token_without_the_write_scope_imports_nothing(unsent, tmp_path):
    """A dry run refused so said what an import refused does: that it stopped "after
    0 records imported", that "running the import again goes on from there" and
    that "no opt-in was imported". A dry run imports nothing, whatever ends it."""
    runtime, when = unsent
    export = write_csv(tmp_path / "export.csv", export_rows(when)[:3])
    code, _, err = await import_cli(
        str(export), "--address", runtime.address, token=TOKENS["acme-checker"][0]
    )
    assert code == 1
    assert "PERMISSION_DENIED" in err and "lacks the write scope" in err, err

    code, out, err = await import_cli(
        str(export), "--dry-run", "--address", runtime.address, token=TOKENS["acme-checker"][0]
    )
    assert code == 1
    assert "PERMISSION_DENIED" in err and "lacks the write scope" in err, err
    assert "the dry run stopped after 0 records checked; nothing was written" in err, err
    assert "imported" not in err and "goes on from there" not in err, err
    assert "dry run: nothing was written" in out, out


async def test_an_import_the_service_never_read_counts_no_record_as_sent(unsent, tmp_path):
    """A service down, or a token it does not know: the summary said records were
    "sent, no answer came (perhaps recorded: run the import again)", though the
    service read none of them (and, a token refused, a rerun records nothing
    either). They count among those not sent, as when a token lacks the scope."""
    runtime, when = unsent
    export = write_csv(tmp_path / "export.csv", export_rows(when)[:12])
    down = socket.socket()
    down.bind(("127.0.0.1", 0))  # a port no one listens on, held so none takes it
    try:
        for address, token in (
            (f"127.0.0.1:{down.getsockname()[1]}", TOKENS["acme-app"][0]),
            (runtime.address, "no-such-token"),
        ):
            code, out, err = await import_cli(str(export), "--address", address, token=token)

            assert code == 1, out + err
            assert "no answer came" not in out, out
            assert "not sent, the import stopped first: 12" in out, out
    finally:
        down.close()


async def test_an_import_whose_output_is_closed_exits_as_its_records_fared(service, tmp_path):
    """Its output piped to a reader gone (``| head -0``, ``| true``), the summary's
    write failed with a traceback and exit 1 (or 120, Python's own for a flush at
    exit that fails) after every record was imported. The import's own status
    stands, and standard error says the summary could not be written."""
    runtime, when = service
    export = write_csv(tmp_path / "export.csv", export_rows(when)[:3])
    read_end, write_end = os.pipe()
    os.close(read_end)  # no reader: a write fails with EPIPE
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.cli", "import", str(export),
            "--address", runtime.address, "--quiet",
            env={**os.environ, "CONSENT_TOKEN": TOKENS["acme-app"][0]}, cwd=ROOT,
            stdout=write_end, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
    finally:
        os.close(write_end)
    _, err_bytes = await asyncio.wait_for(process.communicate(), 60)
    err = err_bytes.decode()

    assert process.returncode == 0, err
    assert "Traceback" not in err and "could not write the summary" in err, err


async def test_the_embedded_default_imports_json_lines(tmp_path, data_dir):
    proc, address, token, _ = await asyncio.to_thread(start, data_dir)
    try:
        when = datetime.now(UTC)
        async with client(address) as admin:
            admin.token = token
            await admin.DefineCampaign(define("acme", "promo", when - timedelta(days=60)))
        records = [
            {**{k: v for k, v in row.items() if not k.startswith("proof.")},
             "proof": {k.removeprefix("proof."): v for k, v in row.items()
                       if k.startswith("proof.")}}
            for row in export_rows(when)[:12]
        ]  # fmt: skip
        export = tmp_path / "export.jsonl"
        export.write_text("".join(json.dumps(r) + "\n" for r in records))

        code, out, err = await import_cli(str(export), "--address", address, token=token)
        assert code == 0, err
        assert "imported 12 of 12 records" in out, out
        async with client(address) as c:
            c.token = token
            reasons = await answers(c, [phone(1), phone(5)], token_of(out))
        assert reasons == {phone(1): "REASON_CONSENT_ACTIVE", phone(5): "REASON_REVOKED"}

        code, again, err = await import_cli(str(export), "--address", address, token=token)
        assert code == 0, err
        assert "imported 0 of 12 records" in again and "already present: 12" in again, again
    finally:
        await asyncio.to_thread(stop, proc)


async def test_a_field_named_twice_is_refused_rather_than_one_value_dropped(service, tmp_path):
    """A CSV header naming a column twice, or a JSON line giving a key twice, would
    keep the last value and drop the other without a word."""
    runtime, when = service
    assert runtime.ledger is not None
    before = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)
    row = export_rows(when)[1]
    twice = tmp_path / "twice.csv"
    with twice.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow([*COLUMNS, "phone"])
        writer.writerow([*(row.get(c, "") for c in COLUMNS), phone(70)])

    code, out, err = await import_cli(
        str(twice), "--address", runtime.address, token=TOKENS["acme-app"][0]
    )

    assert code == 2, out + err
    assert "'phone' named more than once" in err and "Traceback" not in err, err
    assert await runtime.ledger.end_offsets(Stream.SUBSCRIBERS) == before

    good = json.dumps(export_rows(when)[3])
    bad = json.dumps(row)[:-1] + f', "phone": "{phone(71)}"}}'
    lines = tmp_path / "twice.jsonl"
    lines.write_text(bad + "\n" + good + "\n")

    code, out, err = await import_cli(
        str(lines), "--address", runtime.address, token=TOKENS["acme-app"][0]
    )

    assert code == 1, out + err
    assert "imported 1 of 2 records" in out, out
    assert "phone: is given more than once (line 1)" in out, out


async def test_our_columns_and_keys_in_other_capitals_are_read_as_ours(service, tmp_path):
    """A header naming our columns in other capitals ("Type", "Phone", "Occurred_At")
    was refused as naming unknown columns, the error listing the very names it meant;
    a JSON line's keys so, each record refused. Each is read as ours now; a CSV
    header or JSON line naming one field twice but for capitals is refused, naming
    both, as which was meant cannot be told."""
    runtime, when = service
    assert runtime.ledger is not None
    capitals = {"type": "Type", "phone": "Phone", "occurred_at": "Occurred_At"}
    rows = [{capitals.get(k, k): v for k, v in row.items()} for row in export_rows(when)[:3]]
    export = tmp_path / "capitals.csv"
    with export.open("w", newline="") as out:
        writer = csv.DictWriter(out, [capitals.get(c, c) for c in COLUMNS])
        writer.writeheader()
        writer.writerows(rows)
    records = tmp_path / "capitals.jsonl"
    json_rows = [
        {{"import_id": "Import_ID", "type": "TYPE"}.get(k, k): v for k, v in row.items()}
        for row in export_rows(when)[3:5]
    ]
    records.write_text("".join(json.dumps(row) + "\n" for row in json_rows))
    numbers = [phone(0), phone(1), phone(2), phone(3)]

    for path, count in ((export, 3), (records, 2)):
        code, out, err = await import_cli(
            str(path), "--address", runtime.address, token=TOKENS["acme-app"][0]
        )
        assert code == 0, out + err
        assert f"imported {count} of {count} records" in out, out + err
    async with client(runtime.address, "acme-app") as c:
        reasons = await answers(c, numbers, token_of(out))
    assert reasons == {
        phone(0): "REASON_REVOKED",
        phone(1): "REASON_CONSENT_ACTIVE",
        phone(2): "REASON_CONSENT_ACTIVE",
        phone(3): "REASON_CONSENT_ACTIVE",
    }, reasons

    before = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)
    both = tmp_path / "both.csv"
    with both.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow([*COLUMNS, "Phone"])
        writer.writerow([*(export_rows(when)[1].get(c, "") for c in COLUMNS), phone(72)])

    code, out, err = await import_cli(
        str(both), "--address", runtime.address, token=TOKENS["acme-app"][0]
    )

    assert code == 2, out + err
    assert "'phone' and 'Phone' are the one field but for capitals" in err, err
    assert "Traceback" not in err, err

    line = json.dumps({**export_rows(when)[7], "import_id": "caps-twice", "PHONE": phone(73)})
    both_keys = tmp_path / "both.jsonl"
    both_keys.write_text(line + "\n")

    code, out, err = await import_cli(
        str(both_keys), "--address", runtime.address, token=TOKENS["acme-app"][0]
    )

    assert code == 1, out + err
    assert "phone: 'phone' and 'PHONE' are the one field but for capitals" in out, out
    assert await runtime.ledger.end_offsets(Stream.SUBSCRIBERS) == before


async def test_an_overlong_import_id_is_refused_for_its_length(service, tmp_path):
    """An import id of 129 characters was refused as "is required (1-128 chars)", as
    if the record had none: the reason names what is wrong with it."""
    runtime, when = service
    row = {**export_rows(when)[1], "import_id": "x" * 129, "phone": phone(190)}
    export = write_csv(tmp_path / "long-id.csv", [row])

    code, out, err = await import_cli(
        str(export), "--address", runtime.address, token=TOKENS["acme-app"][0]
    )

    assert code == 1, out + err
    assert "import_id: must be at most 128 characters, got 129 (line 2)" in out, out


async def test_an_overlong_value_is_refused_on_its_own_and_the_rest_imported(service, tmp_path):
    """A value past the csv module's own limit (131,072 characters) stopped the whole
    file with a traceback, and a JSON line too large for one message to the service
    stopped the whole import; each is now one record refused, naming the field."""
    runtime, when = service
    rows = export_rows(when)[:4]
    rows[1] = {**rows[1], "proof.consent_text": "Reply STOP to cancel. " + "x" * 200_000}
    export = write_csv(tmp_path / "long.csv", rows)

    code, out, err = await import_cli(
        str(export), "--address", runtime.address, token=TOKENS["acme-app"][0]
    )

    assert code == 1, out + err
    assert "Traceback" not in err, err
    assert "imported 3 of 4 records" in out, out
    assert "proof.consent_text: must be at most 8,192 characters, got 200,022 (line 3)" in out

    stop = {**export_rows(when)[0], "import_id": "long-stop", "text": "STOP " + "y" * 1_000_000}
    lines = tmp_path / "long.jsonl"
    lines.write_text(json.dumps(stop) + "\n" + json.dumps(export_rows(when)[5]) + "\n")

    code, out, err = await import_cli(
        str(lines), "--address", runtime.address, token=TOKENS["acme-app"][0]
    )

    assert code == 1, out + err
    assert "imported 1 of 2 records" in out, out
    # An opt-out: refused, and its number held for review all the same.
    assert (
        "text: must be at most 16,384 characters, got 1,000,005; held for review: the "
        "number is denied for the brand until someone resolves it"
    ) in out, out


async def test_opt_ins_with_long_proof_are_sent_in_messages_the_service_reads(service, tmp_path):
    """A hundred opt-ins with 6,000 characters of consent text each (the limit is
    8,192) are more than the 512 KiB the service reads in one message: sent as one
    they ended the whole import RESOURCE_EXHAUSTED, and every run again the same."""
    runtime, when = service
    text = "Yes, text me offers. Reply STOP to cancel. " + "Terms apply. " * 458
    rows = [
        {**export_rows(when)[1], "import_id": f"long-proof-{i}", "phone": phone(100 + i),
         "proof.consent_text": text}
        for i in range(100)
    ]  # fmt: skip
    export = write_csv(tmp_path / "long-proof.csv", rows)

    code, out, err = await import_cli(
        str(export), "--address", runtime.address, token=TOKENS["acme-app"][0]
    )

    assert code == 0, out + err
    assert "imported 100 of 100 records" in out, out
    async with client(runtime.address, "acme-app") as c:
        reasons = await answers(c, [phone(100), phone(199)], token_of(out))
    assert set(reasons.values()) == {"REASON_CONSENT_ACTIVE"}, reasons


async def test_bytes_that_are_not_utf8_refuse_their_record_naming_line_and_field(service, tmp_path):
    """A byte that is not UTF-8 stopped the whole import as a usage error (exit 2),
    naming a position in a read buffer rather than a line, after the records before
    it were written; a JSON escape of half a surrogate pair did the same."""
    runtime, when = service
    rows = export_rows(when)[:4]
    rows[2] = {**rows[2], "proof.name": "Ada \udcff Lovelace"}  # the byte 0xff, below
    export = tmp_path / "latin1.csv"
    with export.open("w", newline="", encoding="utf-8", errors="surrogateescape") as out:
        writer = csv.DictWriter(out, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    assert b"Ada \xff Lovelace" in export.read_bytes()

    code, out, err = await import_cli(
        str(export), "--address", runtime.address, token=TOKENS["acme-app"][0]
    )

    assert code == 1, out + err
    assert "imported 3 of 4 records" in out, out
    assert "proof.name: holds the byte 0xFF, which is not UTF-8 text (line 4)" in out, out

    half = json.dumps(export_rows(when)[5]).replace("Ada Lovelace", "Ada \\ud800")
    lines = tmp_path / "half.jsonl"
    lines.write_text(half + "\n" + json.dumps(export_rows(when)[6]) + "\n")

    code, out, err = await import_cli(
        str(lines), "--address", runtime.address, token=TOKENS["acme-app"][0]
    )

    assert code == 1, out + err
    assert "imported 1 of 2 records" in out, out
    assert "proof.name: holds U+D800, half of a surrogate pair" in out, out


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
async def test_an_import_interrupted_by_ctrl_c_says_so_and_a_rerun_writes_each_record_once(
    service, tmp_path, monkeypatch, stop_signal
):
    """Ctrl-C ended the import with a traceback and no summary; now it cancels the
    call, tells what was imported (exit 130), and a run again completes the import
    with every record in the ledger once. SIGTERM (a stopped pod, a job's timeout)
    killed it silently (exit -15, no summary); it ends as Ctrl-C does. The service
    holds every append after the first, so the interrupt lands midway whatever the
    machine's speed."""
    runtime, when = service
    ledger = runtime.ledger
    assert ledger is not None
    total = 3_000
    template = export_rows(when)[1]
    rows = [
        {**template, "import_id": f"many-{i}", "phone": f"+1646{5_500_000 + i:07d}"}
        for i in range(total)
    ]
    export = write_csv(tmp_path / "many.csv", rows)
    before = sum((await ledger.end_offsets(Stream.SUBSCRIBERS)).values())
    append, appends, held, release = ledger.append, [], asyncio.Event(), asyncio.Event()

    async def one_then_held(events):
        appends.append(len(events))
        if len(appends) > 1:
            held.set()
            await release.wait()
        return await append(events)

    monkeypatch.setattr(ledger, "append", one_then_held)
    process = await started_import(
        str(export), "--address", runtime.address, token=TOKENS["acme-app"][0]
    )
    await asyncio.wait_for(held.wait(), 60)  # one message written, the next held
    process.send_signal(stop_signal)
    out_bytes, err_bytes = await asyncio.wait_for(process.communicate(), 60)
    out, err = out_bytes.decode(), err_bytes.decode()
    release.set()
    monkeypatch.setattr(ledger, "append", append)

    assert process.returncode == 130, out + err
    assert "interrupted after" in err and "Traceback" not in err, err
    done = re.search(r"imported ([\d,]+) of", out)
    assert done and int(done.group(1).replace(",", "")) <= 500, out
    # The messages held were sent: not answered, but recorded once released.
    unanswered = re.search(r"sent, no answer came \(perhaps recorded: [^)]*\): ([\d,]+)", out)
    unsent = re.search(r"not sent, the import stopped first: ([\d,]+)", out)
    assert unanswered and int(unanswered.group(1).replace(",", "")) >= 500, out
    told = [done, unanswered] + ([unsent] if unsent else [])
    assert sum(int(m.group(1).replace(",", "")) for m in told) == total, out

    code, again, err2 = await import_cli(str(export), "--address", runtime.address,
                                         token=TOKENS["acme-app"][0])  # fmt: skip

    assert code == 0, again + err2
    found = re.search(r"imported ([\d,]+) of ([\d,]+) records", again)
    present = re.search(r"already present: ([\d,]+)", again)
    assert found and present, again
    imported, seen = (int(g.replace(",", "")) for g in found.groups())
    assert seen == total and imported + int(present.group(1).replace(",", "")) == total
    after = sum((await ledger.end_offsets(Stream.SUBSCRIBERS)).values())
    assert after == before + total  # nothing written twice


def opt_ins_then_their_opt_outs(when: datetime, numbers: list[str]) -> list[dict[str, str]]:
    """An export of two tables one after the other: every number's opt-in, then
    every number's opt-out (a STOP a day before ``when``)."""
    template = export_rows(when)[1]
    rows = [{**template, "import_id": f"in-{n}", "phone": n} for n in numbers]
    at = iso(when - timedelta(days=1))
    rows += [
        {"type": "opt_out", "import_id": f"out-{n}", "phone": n, "brand": "acme",
         "campaign": "promo", "occurred_at": at, "channel": "keyword", "text": "STOP"}
        for n in numbers
    ]  # fmt: skip
    return rows


@pytest.mark.parametrize("source", ["file", "standard input"])
async def test_an_import_stopped_after_its_first_message_allows_no_number_it_opts_out(
    service, tmp_path, monkeypatch, source
):
    """An export listing its opt-ins before their opt-outs, stopped once its first
    message was appended (the ledger failed the next): the opt-ins were recorded and
    the opt-outs further down were not, so CanSend allowed every one of those numbers
    until the import was run again. Every opt-out of the file (or of standard input,
    copied first) is imported before any opt-in now: stopped there, the numbers are
    denied, and the import run again records the rest once."""
    runtime, when = service
    ledger = runtime.ledger
    assert ledger is not None
    base = 5_700_000 if source == "file" else 5_800_000
    numbers = [f"+1646{base + i:07d}" for i in range(import_.CHUNK)]  # a message each
    export = write_csv(tmp_path / "tables.csv", opt_ins_then_their_opt_outs(when, numbers))
    before = sum((await ledger.end_offsets(Stream.SUBSCRIBERS)).values())
    append, appends = ledger.append, []

    async def first_then_failing(events):
        appends.append(len(events))
        if len(appends) > 1:
            raise ConnectionError("the broker went away")
        return await append(events)

    monkeypatch.setattr(ledger, "append", first_then_failing)
    acme = TOKENS["acme-app"][0]
    if source == "file":
        code, out, err = await import_cli(str(export), "--address", runtime.address, token=acme)
    else:
        with export.open("rb") as piped:
            process = await started_import(
                "-", "--format", "csv", "--address", runtime.address, token=acme, stdin=piped
            )
            out_bytes, err_bytes = await asyncio.wait_for(process.communicate(), 120)
        code, out, err = process.returncode, out_bytes.decode(), err_bytes.decode()
    monkeypatch.setattr(ledger, "append", append)

    assert code == 1, out + err
    # The opt-ins' message is answered, each record not imported for now.
    assert f"imported {len(numbers):,} of {2 * len(numbers):,} records" in out, out
    assert f"{len(numbers):,}  UNAVAILABLE  record: not imported" in out, out
    async with client(runtime.address, "acme-app") as c:
        reasons = await answers(c, numbers, token_of(out))
    assert "REASON_CONSENT_ACTIVE" not in reasons.values(), reasons
    assert set(reasons.values()) == {"REASON_REVOKED"}, reasons

    code, again, err = await import_cli(str(export), "--address", runtime.address, token=acme)

    assert code == 0, again + err
    assert f"already present: {len(numbers):,}" in again, again
    after = sum((await ledger.end_offsets(Stream.SUBSCRIBERS)).values())
    assert after == before + 2 * len(numbers)  # each record once
    async with client(runtime.address, "acme-app") as c:
        reasons = await answers(c, numbers, token_of(again))
    assert set(reasons.values()) == {"REASON_REVOKED"}, reasons


async def test_an_export_still_being_written_is_stopped_counting_what_it_holds_now(
    service, tmp_path, monkeypatch
):
    """An export that grew while its opt-outs were read is stopped before its
    opt-ins (it may hold opt-outs the first reading missed), but the summary
    measured it against the records counted before: "imported 2 of 4", the two added
    counted nowhere. It counts them now among those not sent."""
    runtime, when = service
    ledger = runtime.ledger
    assert ledger is not None
    numbers = [f"+1646{5_900_000 + i:07d}" for i in range(3)]
    rows = opted_in_then_out(when, {n: {} for n in numbers[:2]})
    export = write_csv(tmp_path / "growing.csv", rows)
    append, held, release = ledger.append, asyncio.Event(), asyncio.Event()

    async def held_once(events):
        if not held.is_set():
            held.set()
            await release.wait()
        return await append(events)

    monkeypatch.setattr(ledger, "append", held_once)
    process = await started_import(
        str(export), "--address", runtime.address, "--quiet", token=TOKENS["acme-app"][0]
    )
    await asyncio.wait_for(held.wait(), 60)  # the opt-outs sent, not yet answered
    with export.open("a", newline="") as grown:
        csv.DictWriter(grown, COLUMNS).writerows(opted_in_then_out(when, {numbers[2]: {}}))
    release.set()
    out_bytes, err_bytes = await asyncio.wait_for(process.communicate(), 60)
    out, err = out_bytes.decode(), err_bytes.decode()

    assert process.returncode == 1, out + err
    assert "changed while its opt-outs were read" in err, err
    assert "imported 2 of 6 records" in out, out
    assert "not sent, the import stopped first: 4" in out, out


async def test_an_import_whose_opt_outs_were_not_imported_for_now_sends_no_opt_in(
    service, tmp_path, monkeypatch
):
    """The service answers a message whose append failed with each of its records
    not imported (UNAVAILABLE) and goes on, where it ended the call before. The
    command then went on to the opt-ins, in a call of their own that cannot know of
    the opt-outs missing, and allowed their numbers. It stops before them now."""
    runtime, when = service
    ledger = runtime.ledger
    assert ledger is not None
    numbers = [f"+1646{5_900_000 + i:07d}" for i in range(10)]
    export = write_csv(tmp_path / "tables.csv", opt_ins_then_their_opt_outs(when, numbers))
    append = ledger.append

    async def failing(events):  # type: ignore[no-untyped-def]
        raise ConnectionError("the broker went away")

    monkeypatch.setattr(ledger, "append", failing)
    acme = TOKENS["acme-app"][0]
    code, out, err = await import_cli(str(export), "--address", runtime.address, token=acme)
    monkeypatch.setattr(ledger, "append", append)

    assert code == 1, out + err
    assert f"{len(numbers)} opt-outs were not imported for now" in err, err
    assert import_.NO_OPT_IN in err, err
    assert f"{len(numbers)}  UNAVAILABLE  record: not imported" in out, out
    async with client(runtime.address, "acme-app") as c:
        reasons = await answers(c, numbers, "")
    assert "REASON_CONSENT_ACTIVE" not in reasons.values(), reasons

    code, again, err = await import_cli(str(export), "--address", runtime.address, token=acme)

    assert code == 0, again + err
    assert f"imported {2 * len(numbers)} of {2 * len(numbers)} records" in again, again
    async with client(runtime.address, "acme-app") as c:
        reasons = await answers(c, numbers, token_of(again))
    assert set(reasons.values()) == {"REASON_REVOKED"}, reasons


async def test_a_refused_import_id_is_named_as_the_file_names_it(service, tmp_path):
    """The service calls a record's import id its request_id and an earlier record
    by its index in the import; the summary named a column the file does not have
    and a "record 3" that is on no line the user can find."""
    runtime, when = service
    rows = export_rows(when)[1:4]
    rows += [
        {**rows[2], "phone": phone(80)},  # the import id of line 4, another record
        {**rows[0], "import_id": " spaced", "phone": phone(81)},
    ]
    export = write_csv(tmp_path / "ids.csv", rows)

    code, out, err = await import_cli(
        str(export), "--address", runtime.address, "--refusals", str(tmp_path / "r.jsonl"),
        token=TOKENS["acme-app"][0],
    )  # fmt: skip

    assert code == 1, out + err
    assert "imported 3 of 5 records" in out, out
    assert "import_id: was used before by the record on line 4; a new record" in out, out
    assert "(line 5)" in out and "import_id: must not begin or end with a space (line 6)" in out
    refused = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert {r["field"] for r in refused} == {"import_id"}


async def test_a_record_repeated_in_another_chunk_is_written_once(service):
    """Chunks of one import are worked on at once; a record repeated in another chunk
    found its id claimed and its facts not yet in the view, as after a failed append,
    and was appended a second time and counted as imported twice."""
    runtime, when = service
    assert runtime.ledger is not None
    before = sum((await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)).values())
    at = when - timedelta(days=3)
    first = [
        api.ImportRecord(opt_in=opt_in(f"+1720555{i:04d}", "acme", "promo", at, f"chunked-{i}"))
        for i in range(1000)
    ]
    again = [first[7], api.ImportRecord(opt_in=opt_in("+17205551999", "acme", "promo", at, "x"))]

    async def chunks():
        yield api.ImportConsentsRequest(records=first)
        yield api.ImportConsentsRequest(records=again)

    async with client(runtime.address, "acme-app") as c:
        stream = c.stub.ImportConsents(
            chunks(), metadata=[("authorization", f"Bearer {c.token}")], timeout=120
        )
        answers = [a async for a in stream]

    # Whichever chunk claims the record first writes it; the other finds it present.
    assert len(answers) == 2 and not any(a.refusals for a in answers)
    assert sum(a.imported for a in answers) == 1001
    assert sum(a.already_present for a in answers) == 1
    after = sum((await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)).values())
    assert after == before + 1001


@pytest.mark.parametrize("dry_run", [False, True])
async def test_an_import_id_reused_in_a_later_message_names_the_record_that_used_it(
    service, dry_run
):
    """A record reusing the import id of another record of an earlier message of the
    same stream was refused as "used before by another request", naming nothing the
    user could find in their file; within one message the earlier record was named."""
    runtime, when = service
    at = when - timedelta(days=3)
    tag = "dry" if dry_run else "real"
    first = [
        api.ImportRecord(opt_in=opt_in(f"+1720556{i:04d}", "acme", "promo", at, f"{tag}-{i}"))
        for i in range(3)
    ]
    other = opt_in(f"+172055{7 if dry_run else 8}0000", "acme", "promo", at, f"{tag}-1")

    async with client(runtime.address, "acme-app") as c:
        answers = await streamed(
            c,
            [
                api.ImportConsentsRequest(records=first, dry_run=dry_run),
                api.ImportConsentsRequest(
                    records=[api.ImportRecord(opt_in=other)], dry_run=dry_run
                ),
            ],
        )

    assert [a.imported for a in answers] == [3, 0]
    (refusal,) = answers[1].refusals
    assert (refusal.index, refusal.code) == (3, "ALREADY_EXISTS")
    (violation,) = refusal.violations
    assert violation.field == "request_id"
    assert "record 1 of this import" in violation.description, violation.description


async def test_a_reused_id_of_a_record_imported_before_is_named_alike_by_a_dry_run(service):
    """Of a record recorded by an earlier import, and present in this one, the import
    named the record when a later message reused its id; the dry run said "another
    request", as it remembered only the records it would write."""
    runtime, when = service
    at = when - timedelta(days=3)
    kept = api.ImportRecord(opt_in=opt_in("+17205590000", "acme", "promo", at, "kept-1"))
    other = api.ImportRecord(opt_in=opt_in("+17205590001", "acme", "promo", at, "kept-1"))

    async with client(runtime.address, "acme-app") as c:
        await streamed(c, [api.ImportConsentsRequest(records=[kept])])
        said = {}
        for dry_run in (True, False):
            answers = await streamed(
                c,
                [
                    api.ImportConsentsRequest(records=[kept], dry_run=dry_run),
                    api.ImportConsentsRequest(records=[other], dry_run=dry_run),
                ],
            )
            assert [a.already_present for a in answers] == [1, 0]
            (refusal,) = answers[1].refusals
            said[dry_run] = refusal.violations[0].description

    assert said[True] == said[False], said
    assert "record 0 of this import" in said[True], said


async def test_a_dry_run_finds_what_the_import_refuses_across_the_whole_file(service, tmp_path):
    """A record repeated, or an import id reused for another record, more than a
    message (500 records) after its first: the dry run checked each message alone
    and said all would be imported, while the import then refused one; and which of
    two records sharing an id was refused depended on which message the service
    reached first. The file's order decides now, in a dry run too."""
    runtime, when = service
    assert runtime.ledger is not None
    template = export_rows(when)[1]
    rows = [
        {**template, "import_id": f"spread-{i}", "phone": f"+1720666{i:04d}"} for i in range(600)
    ]
    rows.append(dict(rows[2]))  # the same record again
    rows.append({**rows[1], "phone": "+17206669999"})  # its id, another record
    export = write_csv(tmp_path / "spread.csv", rows)
    before = sum((await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)).values())
    acme = TOKENS["acme-app"][0]

    code, dry, err = await import_cli(str(export), "--dry-run", "--address", runtime.address,
                                      token=acme)  # fmt: skip
    code_real, real, err_real = await import_cli(str(export), "--address", runtime.address,
                                                 token=acme)  # fmt: skip

    reused = "import_id: was used before by the record on line 3; a new record needs a new id"
    for out, exit_code in ((dry, code), (real, code_real)):
        assert exit_code == 1, out + err + err_real
        assert "600 of 602 records" in out and "already present: 1" in out, out
        assert f"{reused} (line 603)" in out, out
    after = sum((await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)).values())
    assert after == before + 600


@pytest.mark.parametrize("view_fails", ["hangs", "refuses"])
async def test_a_dry_run_the_service_cannot_answer_says_nothing_was_recorded(
    service, tmp_path, monkeypatch, view_fails
):
    """A dry run whose records the service could not check, its view hanging past the
    caller's deadline or failing, said they "may or may not be recorded" and "what was
    recorded is skipped", and that no opt-in was imported. A dry run records nothing,
    and its words say that alone."""
    runtime, when = service
    assert runtime.view is not None
    export = write_csv(tmp_path / "export.csv", export_rows(when)[:12])

    async def failing(keys):  # type: ignore[no-untyped-def]
        if view_fails == "hangs":
            await asyncio.Event().wait()
        raise ConnectionError("the database went away")

    monkeypatch.setattr(runtime.view, "request_uses", failing)
    code, out, err = await import_cli(
        str(export), "--dry-run", "--timeout", "3", "--address", runtime.address,
        token=TOKENS["acme-app"][0],
    )  # fmt: skip

    assert code == 1, out + err
    assert "nothing was written" in out + err, out + err
    assert not re.search(r"recorded|(was|not) imported|skipped|found present", out + err), out + err


async def test_a_dry_run_refuses_an_opt_in_stated_before_an_opt_out_stamped_ahead(
    service, tmp_path
):
    """An opt-out stamped a few minutes ahead of the clock takes its place when it is
    recorded, and an opt-in of its number stated before it, recorded after it, is
    refused on occurred_at (README, "No conditional appends"). The import sends its
    opt-ins in a call after its opt-outs', which knows them; the dry run sent them
    in a second call too, which did not (nothing was written), and said the opt-in
    would be imported. Compared record by record, the two now agree."""
    runtime, _ = service
    now = datetime.now(UTC)
    template = export_rows(now)[1]
    stamped, after_it = "+17206680001", "+17206680002"

    def opt_in_at(number: str, when: datetime) -> dict[str, str]:
        return {**template, "import_id": f"in-{number}", "phone": number,
                "occurred_at": iso(when), "proof.registered_at": iso(when)}  # fmt: skip

    def opt_out_at(number: str, when: datetime) -> dict[str, str]:
        return {"type": "opt_out", "import_id": f"out-{number}", "phone": number,
                "brand": "acme", "occurred_at": iso(when), "channel": "keyword",
                "text": "STOP"}  # fmt: skip

    export = write_csv(
        tmp_path / "ahead.csv",
        [
            opt_in_at(stamped, now + timedelta(minutes=2)),
            opt_out_at(stamped, now + timedelta(minutes=4)),
            opt_out_at(after_it, now + timedelta(minutes=1)),  # the opt-in is the later
            opt_in_at(after_it, now + timedelta(minutes=3)),
        ],
    )
    acme = TOKENS["acme-app"][0]
    told = {}
    for run in ("dry", "real"):
        refusals = tmp_path / f"{run}.jsonl"
        dry = ("--dry-run",) if run == "dry" else ()
        code, out, err = await import_cli(str(export), *dry, "--address", runtime.address,
                                          "--refusals", str(refusals), token=acme)  # fmt: skip
        assert code == 1, out + err
        assert "3 of 4 records" in out, out
        told[run] = [json.loads(line) for line in refusals.read_text().splitlines()]
    [refused] = told["real"]
    assert (refused["line"], refused["import_id"], refused["field"]) == (
        2, f"in-{stamped}", "occurred_at"
    ), refused  # fmt: skip
    assert told["dry"] == told["real"]
    async with client(runtime.address, "acme-app") as c:
        final = await answers(c, [stamped, after_it], token_of(out))
    assert final == {stamped: "REASON_REVOKED_BRAND_WIDE", after_it: "REASON_CONSENT_ACTIVE"}


async def test_a_json_array_is_refused_as_a_file_not_line_by_line(unsent, tmp_path):
    """A .json export holding one JSON array (over many lines) was read as JSON
    Lines: every line refused on its own, for reasons that differed only in the
    column, and nothing said the file was of the wrong kind."""
    runtime, when = unsent
    assert runtime.ledger is not None
    before = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)
    export = tmp_path / "export.json"
    export.write_text(json.dumps(export_rows(when)[:3], indent=2))

    code, out, err = await import_cli(
        str(export), "--address", runtime.address, token=TOKENS["acme-app"][0]
    )

    assert code == 2, out + err
    assert "line 1 opens a JSON array: the file must be JSON Lines" in err, err
    assert await runtime.ledger.end_offsets(Stream.SUBSCRIBERS) == before


async def test_an_opt_out_written_over_several_json_lines_leaves_no_opt_in_of_its_number(
    service, tmp_path
):
    """Opt-outs pretty-printed (jq without -c) among one-line opt-ins: each fragment
    of them was refused on its own and held by nothing, while the opt-ins went in,
    and CanSend allowed numbers that had opted out. The import now stops at the
    object's first line, its opt-outs before it imported and no opt-in."""
    runtime, when = service
    numbers = [phone(70), phone(71)]
    rows = opted_in_then_out(when, {number: {} for number in numbers})
    records = [
        {**{k: v for k, v in row.items() if v and not k.startswith("proof.")},
         "proof": {k.removeprefix("proof."): v for k, v in row.items()
                   if k.startswith("proof.") and v}}
        if row["type"] == "opt_in" else row
        for row in rows
    ]  # fmt: skip
    opt_in, opt_out, second_in, second_out = records
    export = tmp_path / "export.jsonl"
    lines = [json.dumps(second_out), json.dumps(opt_in), json.dumps(opt_out, indent=2)]
    export.write_text("\n".join([*lines, json.dumps(second_in)]) + "\n")

    code, out, err = await import_cli(
        str(export), "--address", runtime.address, token=TOKENS["acme-app"][0]
    )

    assert code == 1, out + err
    assert "line 3 opens a JSON object written over several lines" in err, err
    assert "no opt-in was imported" in err, err
    assert "imported 1 of" in out, out  # the one-line opt-out before it
    async with client(runtime.address, "acme-app") as c:
        reasons = await answers(c, numbers, token_of(out))
    assert reasons == {phone(70): "REASON_NO_CONSENT", phone(71): "REASON_REVOKED"}, reasons


async def test_a_quote_left_open_stops_the_import_at_its_line(service, tmp_path):
    """A quote opened and never closed took every line after it into one value (up
    to the next quote or the end of the file): the opt-outs on those lines vanished,
    and the summary said all was imported. The import now stops at that line and
    names it, with what came before it imported and the opt-out on it held; a quoted
    value may still run over several lines."""
    runtime, when = service
    assert runtime.ledger is not None
    before = sum((await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)).values())
    at = iso(when - timedelta(days=1))
    lines = ["type,import_id,phone,brand,campaign,occurred_at,channel,text"]
    lines += [f"opt_out,open-{i},{phone(60 + i)},acme,,{at},keyword,STOP" for i in range(12)]
    lines[2] = f'opt_out,open-1,{phone(61)},acme,,{at},free_text,"Please stop\ntexting me"'
    lines[5] = lines[5].replace(",STOP", ',"STOP')  # line 6: the quote never closes
    export = tmp_path / "stops.csv"
    export.write_text("\n".join(lines) + "\n")

    code, out, err = await import_cli(
        str(export), "--address", runtime.address, token=TOKENS["acme-app"][0]
    )

    assert code == 1, out + err
    assert "line 7: unexpected end of data" in err and "does not close" in err, err
    assert "imported 4 of 5 records" in out, out  # lines 2 to 6 (one runs over two)
    assert re.search(r"record: cannot be read: .*; held for review.*\(line 7\)", out), out
    after = sum((await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)).values())
    assert after == before + 5  # and the hold of line 7's opt-out


async def test_an_opt_in_whose_number_an_unreadable_opt_out_may_name_is_not_imported(
    service, tmp_path
):
    """An opt-out whose number cannot be read as one (a 7-digit local number, another
    country's national form) cannot be held under any number, and was refused while
    the opt-in of the number it ends was imported and allowed. Such an opt-in is now
    refused, naming the opt-out's line; the others go in."""
    runtime, when = service
    uk, local, other = "+442071838751", phone(72), phone(73)
    rows = opted_in_then_out(
        when, {uk: {"phone": "020 7183 8751"}, local: {"phone": "555-3072"}, other: {}}
    )
    export = write_csv(tmp_path / "export.csv", rows)

    reasons = await imported_answers(
        runtime, export, [uk, local, other], code=1,
        refusals=[r"2  FAILED_PRECONDITION  phone: may be the number of the opt-out on "
                  r"line 3, .*\(lines 2, 4\)"],
    )  # fmt: skip

    assert reasons == {
        uk: "REASON_NO_CONSENT",
        local: "REASON_NO_CONSENT",
        other: "REASON_REVOKED",
    }, reasons


async def test_an_opt_out_on_the_line_a_quote_breaks_is_held_by_what_it_said(metered, tmp_path):
    """A CSV row whose quote opens and never closes (an export cut short inside a
    text), or that has more after a closing quote, stops the import at its line; the
    opt-out on that line was dropped with it, though its number and brand come before
    the quote, and CanSend allowed the number its opt-in had allowed before. It is
    held now by the values before the broken one; the import still stops there."""
    runtime, when = metered
    at = iso(when - timedelta(days=1))
    numbers = [phone(200), phone(201), phone(202)]
    opt_ins = [{**export_rows(when)[1], "import_id": f"in-{n}", "phone": n} for n in numbers]
    code, out, err = await import_cli(
        str(write_csv(tmp_path / "in.csv", opt_ins)), "--address", runtime.address,
        token=TOKENS["acme-app"][0],
    )  # fmt: skip
    assert code == 0, out + err
    header = "type,import_id,phone,brand,campaign,occurred_at,channel,text\n"
    cut = tmp_path / "cut.csv"
    cut.write_text(
        header
        + f"opt_out,q-0,{numbers[0]},acme,promo,{at},keyword,STOP\n"
        + f'opt_out,q-1,{numbers[1]},acme,promo,{at},free_text,"Stop texting me, please'
    )
    after_quote = tmp_path / "after-quote.csv"
    after_quote.write_text(header + f'opt_out,q-2,{numbers[2]},acme,promo,{at},keyword,"STOP" x\n')

    reasons = {}
    for export, says in ((cut, "unexpected end of data"), (after_quote, "',' expected")):
        code, out, err = await import_cli(
            str(export), "--address", runtime.address, token=TOKENS["acme-app"][0]
        )
        assert code == 1 and says in err, out + err
        assert re.search(r"1 +INVALID_ARGUMENT +record: .*; held for review", out), out
        async with client(runtime.address, "acme-app") as c:
            reasons.update(await answers(c, numbers, token_of(out)))

    assert reasons == {
        numbers[0]: "REASON_REVOKED",
        numbers[1]: "REASON_REVOCATION_PENDING_REVIEW",
        numbers[2]: "REASON_REVOCATION_PENDING_REVIEW",
    }, reasons
    # Held, not lost: the service counts each so, and the review queue holds them.
    assert runtime.metrics_address is not None
    m = await asyncio.to_thread(scrape, runtime.metrics_address)
    assert import_refusals(m) == {("opt_out", "INVALID_ARGUMENT", "true"): 2}
    assert sample(m, "consent_revocation_candidates_unresolved") == 2


async def test_opt_outs_of_campaigns_not_defined_are_imported_and_said_to_be_held(
    service, tmp_path
):
    """An imported opt-out naming a campaign not defined is kept for review, denying
    every campaign of the brand, and was counted only as "imported": the summary
    said "held for review: 0" of opt-outs a reviewer must resolve. Each answer now
    counts them, in a dry run, the import and its re-run alike."""
    runtime, when = service
    at = iso(when - timedelta(days=1))
    numbers = [phone(210), phone(211), phone(212)]
    export = tmp_path / "opt-outs.csv"
    export.write_text(
        "type,import_id,phone,brand,campaign,occurred_at,channel,text\n"
        + f"opt_out,u-0,{numbers[0]},acme,nope,{at},keyword,STOP\n"
        + f"opt_out,u-1,{numbers[1]},acme,gone,{at},keyword,STOP\n"
        + f"opt_out,u-2,{numbers[2]},acme,promo,{at},keyword,STOP\n"
    )
    said = "2 opt-outs of campaigns not defined: imported and held for review"
    for run in ("--dry-run", None, None):
        code, out, err = await import_cli(
            str(export), "--address", runtime.address, *([run] if run else []),
            token=TOKENS["acme-app"][0],
        )  # fmt: skip
        assert code == 0 and said in out, out + err
    assert "already present: 3" in out, out
    async with client(runtime.address, "acme-app") as c:
        reasons = await answers(c, numbers, token_of(out))
    assert reasons == {
        numbers[0]: "REASON_REVOKED_BRAND_WIDE",
        numbers[1]: "REASON_REVOKED_BRAND_WIDE",
        numbers[2]: "REASON_REVOKED",
    }, reasons


async def test_a_file_without_records_says_nothing_was_imported(unsent, tmp_path):
    """An empty export, one of a header only and one of blank lines each exited 0
    with "imported 0 of 0 records", as an import of every record does: an export
    that failed (a header and no rows) passed for one whose opt-outs were all
    recorded. Now each says it holds no records and exits 2, a dry run too."""
    runtime, _ = unsent
    assert runtime.ledger is not None
    before = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)
    files = {
        "empty.csv": "",
        "header.csv": ",".join(COLUMNS) + "\r\n",
        "blank.csv": "\r\n\r\n",
        "blank.jsonl": "\n   \n\n",
    }
    for file_name, content in files.items():
        export = tmp_path / file_name
        export.write_text(content)
        for dry in ((), ("--dry-run",)):
            code, out, err = await import_cli(
                str(export), *dry, "--address", runtime.address, token=TOKENS["acme-app"][0]
            )

            assert code == 2, (file_name, dry, out, err)
            assert f"{export}: holds no records" in err, (file_name, err)
            assert "nothing was imported" in err and "Traceback" not in err, err
    assert await runtime.ledger.end_offsets(Stream.SUBSCRIBERS) == before


async def test_the_progress_total_counts_records_not_lines(service, tmp_path):
    """The progress bar's total was the file's lines less the header: a value over
    three lines and two blank lines made five records a total of nine, and the bar
    ended at 5/9 (56%) on an import that had done everything; JSON Lines' blank
    lines the same."""
    runtime, when = service
    at = iso(when - timedelta(days=1))
    lines = ["type,import_id,phone,brand,campaign,occurred_at,channel,text"]
    lines += [f"opt_out,bar-{i},{phone(110 + i)},acme,,{at},keyword,STOP" for i in range(4)]
    lines.insert(2, "")
    lines.insert(4, f'opt_out,bar-9,{phone(119)},acme,,{at},free_text,"Please\n""stop""\nnow"')
    lines.append("")
    export = tmp_path / "bar.csv"
    export.write_text("\r\n".join(lines) + "\r\n")
    stops = export_rows(when)[:3]
    jsonl = tmp_path / "bar.jsonl"
    jsonl.write_text("\n" + "\n \n".join(json.dumps(r) for r in stops) + "\n\n")

    for path, records in ((export, 5), (jsonl, 3)):
        code, out, err = await import_cli(
            str(path), "--address", runtime.address, token=TOKENS["acme-app"][0]
        )

        assert code == 0, out + err
        assert f"imported {records} of {records} records" in out, out
        assert f"import: {records} of {records} records" in err, err


async def test_the_progress_total_counts_records_ended_by_an_old_macs_lone_carriage_returns(
    service, tmp_path
):
    """A CSV whose lines end with CR alone (classic Mac OS, some Excel for Mac
    saves) was read and imported right, but counted as one line for the progress
    bar: a total of 0, shown as none ("4 records"). Its lines end as the reader
    ends them now, a quoted value over lines and JSON Lines alike."""
    runtime, when = service
    at = iso(when - timedelta(days=1))
    lines = ["type,import_id,phone,brand,campaign,occurred_at,channel,text"]
    lines += [f"opt_out,mac-{i},{phone(2320 + i)},acme,,{at},keyword,STOP" for i in range(3)]
    lines.insert(2, f'opt_out,mac-9,{phone(2329)},acme,,{at},free_text,"Please\r\rstop"')
    export = tmp_path / "mac.csv"
    export.write_bytes(("\r".join(lines) + "\r").encode())
    jsonl = tmp_path / "mac.jsonl"
    stops = opted_in_then_out(when, {phone(2330): {}})
    jsonl.write_bytes("\r".join(json.dumps(r) for r in stops).encode())

    for path, records in ((export, 4), (jsonl, 2)):
        code, out, err = await import_cli(
            str(path), "--address", runtime.address, token=TOKENS["acme-app"][0]
        )

        assert code == 0, out + err
        assert f"imported {records} of {records} records" in out, out
        assert f"import: {records} of {records} records" in err, err


def read_terminal(leader: int) -> str:
    """All a pseudo-terminal's program wrote, once the program has ended."""
    drawn = b""
    while True:
        try:
            piece = os.read(leader, 65536)
        except OSError:  # EIO: every holder of the other end has closed it
            break
        if not piece:
            break
        drawn += piece
    os.close(leader)
    return drawn.decode()


async def test_the_progress_is_drawn_in_place_on_a_terminal_and_in_plain_lines_in_a_log(
    service, tmp_path
):
    """The bar was drawn with carriage returns and block glyphs wherever standard
    error went, so that a log of the import (a pipe, a file) held "\r  0%|  | 0/12
    [...]\r100%|█████| 12/12 [...]". On a terminal it is still drawn in place; in a
    log it is plain lines, each whole, as on a terminal of no width, where the bar
    drew nothing; --quiet leaves it out."""
    runtime, when = service
    export = write_csv(tmp_path / "log.csv", export_rows(when)[:12])
    argv = (sys.executable, "-m", "services.cli", "import", str(export), "--dry-run",
            "--address", runtime.address)  # fmt: skip
    env = {**os.environ, "CONSENT_TOKEN": TOKENS["acme-app"][0]}

    async def run(*extra: str, stderr: Any) -> str:
        process = await asyncio.create_subprocess_exec(
            *argv, *extra, env=env, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=stderr
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, out.decode() + (err or b"").decode()
        assert "would import 12 of 12 records" in out.decode(), out.decode()
        return (err or b"").decode()

    piped = await run(stderr=asyncio.subprocess.PIPE)
    log = tmp_path / "import.log"
    with log.open("w") as file:
        await run(stderr=file)
    for written in (piped, log.read_text()):
        assert "12 of 12 records" in written, repr(written)
        # Nothing but printable ASCII and whole lines: no \r, no escape, no glyph.
        assert re.fullmatch(r"([ -~]*\n)+", written), repr(written)

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        await run(stderr=follower)
    finally:
        os.close(follower)
    drawn = await asyncio.to_thread(read_terminal, leader)
    assert "\r" in drawn and "| 12/12 [" in drawn, repr(drawn)
    # A terminal of no width (ssh -tt from a script): the bar drew nothing there.
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
    try:
        await run(stderr=follower)
    finally:
        os.close(follower)
    narrow = await asyncio.to_thread(read_terminal, leader)
    assert "12 of 12 records" in narrow, repr(narrow)

    assert await run("--quiet", stderr=asyncio.subprocess.PIPE) == ""


async def test_a_dry_run_stream_answers_a_repeat_in_a_later_message_as_the_import_does(service):
    """Through ImportConsents itself (the CLI settles repeats in the file before
    sending): a dry run looked up each message's import ids in what was claimed,
    and a dry run claims nothing, so a record an earlier message would import,
    repeated or its id reused for another record, was counted as one more it would
    import; the import then found one present and refused the other."""
    runtime, when = service
    assert runtime.ledger is not None
    at = when - timedelta(days=3)

    def record(i: int, import_id: str | None = None) -> api.ImportRecord:
        return api.ImportRecord(
            opt_in=opt_in(f"+1720777{i:04d}", "acme", "promo", at, import_id or f"dry-{i}")
        )

    first = [record(i) for i in range(10)]
    later = [record(3), record(50, "dry-5"), record(11)]  # again; its id reused; new

    async def answered(dry_run: bool) -> list[tuple[int, int, list[tuple[int, str]]]]:
        async def chunks():
            yield api.ImportConsentsRequest(records=first, dry_run=dry_run)
            yield api.ImportConsentsRequest(records=later)

        async with client(runtime.address, "acme-app") as c:
            stream = c.stub.ImportConsents(
                chunks(), metadata=[("authorization", f"Bearer {c.token}")], timeout=120
            )
            return [
                (a.imported, a.already_present, [(r.index, r.code) for r in a.refusals])
                async for a in stream
            ]

    before = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)
    dry = await answered(True)
    assert await runtime.ledger.end_offsets(Stream.SUBSCRIBERS) == before
    real = await answered(False)

    assert real == [(10, 0, []), (1, 1, [(11, "ALREADY_EXISTS")])], real
    assert dry == real


async def test_ctrl_c_while_the_import_starts_exits_130_without_a_traceback(
    service, tmp_path, monkeypatch
):
    """Ctrl-C in the second or two the command takes to start (importing gRPC,
    asyncpg, phonenumbers' data) printed a traceback of whichever import it hit,
    and the process died of the signal; now it exits 130 saying it was interrupted,
    wherever the signal lands once the interpreter has started. The service holds
    every append, so none lands after the import is done."""
    runtime, when = service
    ledger = runtime.ledger
    assert ledger is not None
    export = write_csv(tmp_path / "start.csv", export_rows(when)[:3])
    append, release = ledger.append, asyncio.Event()

    async def held(events):
        await release.wait()
        return await append(events)

    monkeypatch.setattr(ledger, "append", held)
    # A signal in the interpreter's own start-up (before any of the command's code
    # runs) can only kill it: the delays start after that, timed on this machine now.
    begun = time.monotonic()
    started = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import argparse, logging", cwd=ROOT
    )
    await started.wait()
    start_up = time.monotonic() - begun
    try:
        for delay in (2 * start_up + extra for extra in (0.1, 0.3, 0.6, 1.0)):
            process = await started_import(
                str(export), "--address", runtime.address, token=TOKENS["acme-app"][0]
            )
            await asyncio.sleep(delay)
            process.send_signal(signal.SIGINT)
            out_bytes, err_bytes = await asyncio.wait_for(process.communicate(), 60)
            err = err_bytes.decode()

            # 130, or the death by SIGINT a shell reports as 130: CPython ends so after
            # a KeyboardInterrupt caught once it has crossed an exec() of source text
            # (dataclasses make their methods so), whatever the program then returns.
            assert process.returncode in (130, -signal.SIGINT), (delay, out_bytes.decode(), err)
            assert "interrupted" in err and "Traceback" not in err, (delay, err)
    finally:
        release.set()
        monkeypatch.setattr(ledger, "append", append)


async def test_blank_lines_before_the_header_or_a_record_leave_the_lines_named_right(
    service, tmp_path
):
    """A blank line before a CSV's header made the header a record of a header with
    no columns: every record, the header too, was refused as having "more values
    than the header has columns". And a record after a blank line was named by the
    blank line's number, one that holds no record."""
    runtime, when = service
    at = iso(when - timedelta(days=1))
    export = tmp_path / "blank.csv"
    export.write_text(
        "\r\n\r\ntype,import_id,phone,brand,campaign,occurred_at,channel,text\r\n"
        f"opt_out,blank-1,{phone(120)},acme,,{at},keyword,STOP\r\n"
        "\r\n"
        f"opt_out,blank-2,+1 415 CALL ME,acme,,{at},keyword,STOP\r\n"
    )

    code, out, err = await import_cli(
        str(export), "--address", runtime.address, token=TOKENS["acme-app"][0]
    )

    assert code == 1, out + err
    assert "imported 1 of 2 records" in out and "refused: 1" in out, out
    assert "phone: must hold only digits" in out and "(line 6)" in out, out
    assert "more values than the header" not in out, out


async def test_a_later_message_asking_for_a_dry_run_of_an_import_that_writes_is_refused(service):
    """The first message of an ImportConsents stream decides whether it writes; a
    later message with dry_run set was written all the same, without a word: what
    it asked not to happen. Now the stream ends INVALID_ARGUMENT on dry_run once the
    messages before it are answered, and nothing of it is written."""
    runtime, when = service
    assert runtime.ledger is not None
    at = when - timedelta(days=3)

    def record(i: int) -> api.ImportRecord:
        return api.ImportRecord(opt_in=opt_in(f"+1720999{i:04d}", "acme", "promo", at, f"w-{i}"))

    async def chunks():
        yield api.ImportConsentsRequest(records=[record(0), record(1)])
        yield api.ImportConsentsRequest(records=[record(2)], dry_run=True)

    before = sum((await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)).values())
    answered = []
    async with client(runtime.address, "acme-app") as c:
        stream = c.stub.ImportConsents(
            chunks(), metadata=[("authorization", f"Bearer {c.token}")], timeout=120
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for answer in stream:
                answered.append(answer.imported)

    assert answered == [2]
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in status_details(err.value)] == ["dry_run"]
    after = sum((await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)).values())
    assert after == before + 2


async def test_refusals_written_to_the_file_being_imported_are_refused_first(unsent, tmp_path):
    """``--refusals`` naming the export itself opened it for writing after its first
    lines were read: the export was emptied, and the import went on with what was
    read before, as if that were the whole file. Now it is a usage error, and the
    file and the ledger are as they were."""
    runtime, when = unsent
    assert runtime.ledger is not None
    template = export_rows(when)[1]
    rows = [
        {**template, "import_id": f"self-{i}", "phone": f"+1720555{i:04d}"} for i in range(2_000)
    ]
    export = write_csv(tmp_path / "self.csv", rows)
    content = export.read_bytes()
    before = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)

    code, out, err = await import_cli(
        str(export), "--refusals", str(tmp_path / "." / "self.csv"), "--address",
        runtime.address, token=TOKENS["acme-app"][0],
    )  # fmt: skip

    assert code == 2, out + err
    assert "is the file to import" in err, err
    assert export.read_bytes() == content
    assert await runtime.ledger.end_offsets(Stream.SUBSCRIBERS) == before


async def test_a_refusals_file_that_cannot_be_written_ends_the_import_cleanly(service, tmp_path):
    """``--refusals`` on a disk that fills up (``/dev/full``) ended the import in a
    traceback, with no summary. The import goes on, the summary is printed, the exit
    status is 1 and standard error names the file; a rerun writing the refusals to
    another file finds every record it imported present."""
    runtime, when = service
    assert runtime.ledger is not None
    export = write_csv(tmp_path / "export.csv", export_rows(when))
    acme = TOKENS["acme-app"][0]
    opt_outs = GOOD // 5

    code, out, err = await import_cli(
        str(export), "--address", runtime.address, "--refusals", "/dev/full", token=acme
    )

    assert code == 1, out + err
    assert "Traceback" not in err, err
    assert "--refusals /dev/full could not be written" in err, err
    assert f"imported {GOOD + opt_outs:,} of {GOOD + opt_outs + 5:,} records" in out, out
    ends = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)

    refused = tmp_path / "refused.jsonl"
    code, again, err = await import_cli(
        str(export), "--address", runtime.address, "--refusals", str(refused), token=acme
    )

    assert code == 1, again + err
    assert f"already present: {GOOD + opt_outs:,}" in again, again
    assert len(refused.read_text().splitlines()) == 5
    assert await runtime.ledger.end_offsets(Stream.SUBSCRIBERS) == ends


async def remembering_import(remembered: int, *argv: str, token: str) -> tuple[int, str, int]:
    """``consent-ledger import`` with ``import_.REMEMBERED`` set to ``remembered``
    (a file past it, without a file of millions): its exit status, output and the
    largest resident size its process reached, in KiB."""
    script = (
        "import re, sys\n"
        "from pathlib import Path\n"
        "from services.cli import import_\n"
        f"import_.REMEMBERED = {remembered}\n"
        "from services.cli.main import main\n"
        "code = main()\n"
        # VmHWM, not ru_maxrss: Linux keeps the latter across exec, from this test's
        # own process, which the child was forked from.
        "peak = re.search(r'VmHWM:\\s+(\\d+)', Path('/proc/self/status').read_text())\n"
        "print('peak', peak.group(1), file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, "import", *argv,
        env={**os.environ, "CONSENT_TOKEN": token}, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 300)
    found = re.search(r"peak (\d+)", err.decode())
    assert found, err.decode()
    return process.returncode or 0, out.decode(), int(found.group(1))


async def test_a_large_file_is_read_in_memory_that_does_not_grow_with_it(unsent, tmp_path):
    """The command kept every record's import id, a hash of it and its line, and
    every refused record's line: 558 MB at its peak for 2 million opt-outs, some
    1.4 GB for the 5 million subscribers of a brand moving platforms, where a
    machine with less ends it the same way on every run. Past ``REMEMBERED`` records
    it keeps only the lines of the messages not yet answered, and the service
    settles a repeat: the same record again is present, another under its id is
    refused, named by its line."""
    runtime, when = unsent
    at = iso(when - timedelta(days=2))

    def stop(i: int, **changes: str) -> str:
        record = {"type": "opt_out", "phone": f"+1720{2_000_000 + i:07d}", "brand": "acme",
                  "campaign": "promo", "occurred_at": at, "channel": "keyword",
                  "text": "STOP", **changes}  # fmt: skip
        return json.dumps(record) + "\n"

    small, large = tmp_path / "small.jsonl", tmp_path / "large.jsonl"
    small.write_text("".join(stop(i) for i in range(2_000)))
    records = [stop(i) for i in range(100_000)]
    # Past what is remembered: a record, the same again, and another under its id.
    records[50_000] = records[50_001] = stop(50_000, import_id="x")
    records[50_002] = stop(50_002, import_id="x")
    large.write_text("".join(records))
    acme = TOKENS["acme-app"][0]
    common = ("--dry-run", "--address", runtime.address, "--quiet")

    code_small, out_small, rss_small = await remembering_import(1_000, str(small), *common,
                                                                token=acme)  # fmt: skip
    code, out, rss = await remembering_import(1_000, str(large), *common, token=acme)

    assert code_small == 0 and "would import 2,000 of 2,000 records" in out_small, out_small
    assert code == 1, out
    assert "would import 99,998 of 100,000 records" in out, out
    assert "already present: 1" in out and "refused: 1" in out, out
    assert (
        "ALREADY_EXISTS  import_id: was used before by the record on line 50001; a new "
        "record needs a new id; would be held for review"  # an opt-out: its number held
    ) in out, out
    assert "(ListRevocationCandidates, ResolveRevocationCandidate) (line 50003)" in out, out
    # 98,000 records more: 16 MB more when each was kept, nothing now
    assert rss - rss_small < 8 * 1024, (rss_small, rss)


async def test_the_proof_of_an_import_with_the_longest_words_allowed_exports_as_a_pdf(
    service, tmp_path
):
    """An export's opt-in whose consent text is as long as the import takes (8,192
    characters: a platform's whole terms), then its opt-out with words as long as
    they may be (16,384): the PDF of the proof failed (INTERNAL), as a table row of
    the packet taller than a page cannot be drawn, while the JSON was whole. Each
    text now goes on over rows and pages, all of it there to read."""
    runtime, when = service
    number = "+14155558190"
    terms = " ".join(f"term{i:04d}" for i in range(910))  # 8,189 characters
    words = " ".join(f"stop{i:05d}" for i in range(1638))  # 16,379
    opted_in = iso(when - timedelta(days=40))
    rows = [
        {"type": "opt_in", "import_id": "long-in", "phone": number, "brand": "acme",
         "campaign": "promo", "occurred_at": opted_in, "tier": "promotional",
         "method": "web_form", "proof.registered_at": opted_in,
         **{**PROOF, "proof.consent_text": terms}},
        {"type": "opt_out", "import_id": "long-out", "phone": number, "brand": "acme",
         "campaign": "promo", "occurred_at": iso(when - timedelta(days=1)),
         "channel": "free_text", "text": words},
    ]  # fmt: skip
    export = tmp_path / "long.jsonl"
    export.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, err = await import_cli(str(export), "--address", runtime.address,
                                      token=TOKENS["acme-app"][0])  # fmt: skip
    assert code == 0 and "imported 2 of 2 records" in out, out + err

    _, text = await pdf_proof(runtime, number, token_of(out))
    opt_ins = text.split("Opt-ins and their proof", 1)[1].split("Messages sent", 1)[0]
    opt_outs = text.split("Opt-outs and how they were handled", 1)[1]
    # Every word of each, in order (page footers and repeated headings between).
    assert re.findall(r"term\d{4}", opt_ins) == terms.split()
    assert re.findall(r"stop\d{5}", opt_outs) == words.split()


async def test_a_name_the_pdf_font_cannot_draw_is_shown_by_its_code_points(service, tmp_path):
    """An export's opt-in from a form where the person wrote their name in Chinese:
    the PDF's font (DejaVu Sans) has no glyph for it, and the proof's name was
    drawn as nothing, a proof of opt-in with the name left blank. Each such
    character is now written as its code point; the JSON keeps the text itself."""
    runtime, when = service
    number, name = "+14155558191", "李小龙 (Bruce Lee)"
    opted_in = iso(when - timedelta(days=40))
    row = {"type": "opt_in", "import_id": "cjk-name", "phone": number, "brand": "acme",
           "campaign": "promo", "occurred_at": opted_in, "tier": "promotional",
           "method": "web_form", "proof.registered_at": opted_in,
           **{**PROOF, "proof.name": name}}  # fmt: skip
    export = tmp_path / "names.jsonl"
    export.write_text(json.dumps(row) + "\n")
    code, out, err = await import_cli(str(export), "--address", runtime.address,
                                      token=TOKENS["acme-app"][0])  # fmt: skip
    assert code == 0, out + err

    answer, text = await pdf_proof(runtime, number, token_of(out))
    assert "<U+674E><U+5C0F><U+9F99> (Bruce Lee)" in text, text[:2000]
    template = answer.packet["opt_ins"][0]["template"]
    assert {t["key"]: t["value"] for t in template}["name"] == name


async def test_a_consent_written_two_ways_without_an_import_id_is_recorded_once(service, tmp_path):
    """One opt-in, its number written "+14155554950" on one line and "+1 (415)
    555-4950" on the next (a merged export), and again "+1.415.555.4950" in a later
    file: without an import id, each spelling got an id of its own, and the number's
    history and proof held the same consent two and three times. The number is read
    as E.164 before the id is derived from the record, as its times and
    enumerations are."""
    runtime, when = service
    at = iso(when - timedelta(days=9))
    record = {"type": "opt_in", "brand": "acme", "campaign": "promo", "occurred_at": at,
              "tier": "promotional", "method": "web_form", "proof.registered_at": at,
              **PROOF}  # fmt: skip
    merged, later = tmp_path / "merged.jsonl", tmp_path / "later.jsonl"
    merged.write_text(
        json.dumps({**record, "phone": "+14155554950"})
        + "\n"
        + json.dumps({**record, "phone": "+1 (415) 555-4950"})
        + "\n"
    )
    later.write_text(json.dumps({**record, "phone": "+1.415.555.4950"}) + "\n")
    acme = TOKENS["acme-app"][0]

    code, out, err = await import_cli(str(merged), "--address", runtime.address, token=acme)
    code_later, out_later, err_later = await import_cli(
        str(later), "--address", runtime.address, token=acme
    )

    assert code == 0 and "imported 1 of 2 records" in out and "present: 1" in out, out + err
    assert code_later == 0 and "imported 0 of 1 record from" in out_later, out_later + err_later
    async with client(runtime.address, "acme-app") as c:
        history = await c.ListEvents(
            api.ListEventsRequest(
                phone="+14155554950", brand="acme", at_least_as_fresh=token_of(out)
            )
        )
    assert [e.event.event_type for e in history.events] == ["ConsentGranted"]


async def test_an_export_written_again_another_way_writes_nothing_new(service, tmp_path):
    """The same records exported again, written another way but meaning the same:
    times in other zones, numbers spaced, types and enumerations in capitals, the
    file's line breaks CR LF, a multi-line consent text's too (as a converter to
    Windows line ends writes it), proof and text cells padded with spaces, and as
    JSON Lines with the proof nested, its region in lower case, its digest in
    capitals, an email "N/A" and the default source given. Each such value got an id
    of its own, and the records were imported again (the one under an import id
    refused as another record under it); an opt-out the file could not read (a
    channel that is no channel) was held once more under each spelling of its
    fields. Each is present now, and nothing is written."""
    runtime, when = service
    at, stopped = when - timedelta(days=9), when - timedelta(days=2)
    text = "Yes, text me offers.\nReply STOP to cancel."
    opt_in = {"type": "opt_in", "brand": "acme", "campaign": "promo", "occurred_at": iso(at),
              "tier": "promotional", "method": "web_form", "proof.registered_at": iso(at),
              **PROOF, "proof.consent_text": text, "proof.region": "CA"}  # fmt: skip
    opt_out = {"type": "opt_out", "brand": "acme", "campaign": "promo",
               "occurred_at": iso(stopped), "channel": "keyword", "text": "STOP"}  # fmt: skip
    rows = [
        {**opt_in, "phone": phone(60)},
        {**opt_in, "phone": phone(61), "import_id": "written-again"},
        {**opt_out, "phone": phone(60)},
        {**opt_out, "phone": phone(62), "channel": "sms-stop"},  # unreadable: held
    ]

    def other_zone(value: str) -> str:
        return datetime.fromisoformat(value).astimezone(timezone(timedelta(hours=-8))).isoformat()

    def another_way(row: dict[str, str]) -> dict[str, str]:
        padded = {
            k: f"  {v} " if k.startswith("proof.") or k == "text" else v for k, v in row.items()
        }
        return {
            **padded,
            "type": row["type"].upper(),
            "phone": f"+1 ({row['phone'][2:5]}) {row['phone'][5:8]}-{row['phone'][8:]}",
            "occurred_at": other_zone(row["occurred_at"]),
            **({"tier": "CONSENT_TIER_PROMOTIONAL", "method": "Web-Form"} if "tier" in row else {}),
            **({"proof.registered_at": other_zone(row["proof.registered_at"]),
                "proof.consent_text": padded["proof.consent_text"].replace("\n", "\r\n")}
               if "proof.consent_text" in row else {}),
        }  # fmt: skip

    def write(path: Path, rows: list[dict[str, str]]) -> Path:
        with path.open("w", newline="") as out:  # CR LF between rows, as Excel writes
            writer = csv.DictWriter(out, list(dict.fromkeys(k for row in rows for k in row)))
            writer.writeheader()
            writer.writerows(rows)
        return path

    first = write(tmp_path / "first.csv", rows)  # LF in the consent text
    again = write(tmp_path / "again.csv", [another_way(row) for row in reversed(rows)])
    nested = tmp_path / "again.jsonl"
    lines = []
    for row in map(another_way, rows):
        proof = {k.removeprefix("proof."): row.pop(k) for k in list(row) if k.startswith("proof.")}
        line: dict[str, Any] = dict(row)
        if proof:  # as the ledger reads a proof, these are the first file's values
            digest = proof["screenshot_sha256"].strip().upper()
            proof.update(region=" ca", screenshot_sha256=digest, email="N/A")
            line.update(proof=proof, source="First_Party")
        lines.append(json.dumps(line))
    nested.write_text("\n".join(lines) + "\n")
    acme = TOKENS["acme-app"][0]
    code, out, err = await import_cli(str(first), "--address", runtime.address, token=acme)
    assert code == 1 and "imported 3 of 4 records" in out and "held for review: 1" in out, out
    assert runtime.ledger is not None
    ends = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)

    for export, dry in ((again, ()), (nested, ()), (nested, ("--dry-run",))):
        code, out, err = await import_cli(
            str(export), *dry, "--address", runtime.address, token=acme
        )

        assert code == 1, out + err  # the unreadable opt-out, refused (and held) again
        assert "import 0 of 4 records" in out or "imported 0 of 4 records" in out, out
        assert "already present: 3" in out and "refused: 1" in out, out
        assert "held for review: 1" in out, out
        assert await runtime.ledger.end_offsets(Stream.SUBSCRIBERS) == ends, (export, out)


async def test_a_record_repeated_under_its_id_with_its_number_spelled_otherwise_is_present(
    service, tmp_path
):
    """An opt-in under import id "spelled-twice", its number written "+14155554970"
    on one line and "+1 (415) 555-4970" on another (two exports merged): the service
    takes the two as one record (it reads numbers in E.164), but the command compared
    the lines as written, refused the second as another record under the id
    (ALREADY_EXISTS, exit 1) and asked for a new id, which would have recorded the
    consent twice. It fares as the first does, in a dry run too."""
    runtime, when = service
    first = {**export_rows(when)[1], "import_id": "spelled-twice", "phone": "+14155554970"}
    export = write_csv(tmp_path / "twice.csv", [first, {**first, "phone": "+1 (415) 555-4970"}])
    acme = TOKENS["acme-app"][0]

    for dry in (("--dry-run",), ()):
        code, out, err = await import_cli(
            str(export), *dry, "--address", runtime.address, token=acme
        )

        assert code == 0, out + err
        assert "import 1 of 2 records" in out or "imported 1 of 2 records" in out, out
        assert "already present: 1" in out and "refused: 0" in out, out
    async with client(runtime.address, "acme-app") as c:
        history = await c.ListEvents(
            api.ListEventsRequest(
                phone="+14155554970", brand="acme", at_least_as_fresh=token_of(out)
            )
        )
    assert [e.event.event_type for e in history.events] == ["ConsentGranted"]


async def test_an_opt_out_refused_for_its_details_denies_its_number_until_reviewed(
    service, tmp_path
):
    """An opt-out refused for its details (no channel; an import id an opt-in of
    another source table took; a time that cannot be read) was dropped while the
    number's opt-in went in: CanSend allowed texts to someone who had opted out.
    Each is refused and held for review now; a re-run and a dry run write nothing.
    Opt-outs are imported before opt-ins, so of an opt-out and an opt-in under one
    import id the opt-out is recorded and the opt-in refused."""
    runtime, when = service
    assert runtime.ledger is not None
    numbers = {"no-channel": phone(70), "reused-id": phone(71), "bad-time": phone(72)}
    rows = []
    for n, (why, number) in enumerate(numbers.items()):
        opt_in_row = export_rows(when)[1]
        rows.append({**opt_in_row, "import_id": str(7000 + n), "phone": number})
        opt_out_row = {
            "type": "opt_out", "import_id": f"stop-{why}", "phone": number, "brand": "acme",
            "occurred_at": iso(when - timedelta(days=1)), "channel": "keyword", "text": "STOP",
        }  # fmt: skip
        if why == "no-channel":
            del opt_out_row["channel"]
        elif why == "reused-id":
            opt_out_row["import_id"] = str(7000 + n)  # one numeric id space, two tables
        else:
            opt_out_row["occurred_at"] = "yesterday"
        rows.append(opt_out_row)
    export = write_csv(tmp_path / "stops.csv", rows)
    acme = TOKENS["acme-app"][0]
    before = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)

    code, dry, err = await import_cli(
        str(export), "--dry-run", "--address", runtime.address, token=acme
    )

    assert code == 1, dry + err
    assert "would import 3 of 6 records" in dry and "refused: 3" in dry, dry
    assert dry.count("would be held for review") == 2, dry
    assert re.search(r"^  held for review: 2$", dry, re.M), dry  # the summary counts them
    assert await runtime.ledger.end_offsets(Stream.SUBSCRIBERS) == before

    code, out, err = await import_cli(str(export), "--address", runtime.address, token=acme)

    assert code == 1, out + err
    assert "imported 3 of 6 records" in out and "refused: 3" in out, out
    assert re.search(r"^  held for review: 2$", out, re.M), out
    held = "held for review: the number is denied for the brand until someone resolves it"
    for refused in (
        "channel: is required",
        "occurred_at: is not an ISO 8601 time: 'yesterday'",
    ):
        assert re.search(f"{re.escape(refused)}.*; {held}", out), (refused, out)
    assert (
        "import_id: was used by the opt-out on line 5, imported first (opt-outs go in "
        "before opt-ins); a new record needs a new id (line 4)"
    ) in out, out
    async with client(runtime.address, "acme-app") as c:
        reasons = await answers(c, list(numbers.values()), token_of(out))
        assert reasons == {
            numbers["no-channel"]: "REASON_REVOCATION_PENDING_REVIEW",
            numbers["reused-id"]: "REASON_REVOKED_BRAND_WIDE",  # its opt-out in, the opt-in not
            numbers["bad-time"]: "REASON_REVOCATION_PENDING_REVIEW",
        }, reasons
        one = await c.CanSend(
            api.CanSendRequest(
                phone=numbers["no-channel"], brand="acme", campaign="promo",
                at_least_as_fresh=token_of(out),
            )
        )  # fmt: skip
        assert not one.allowed and one.reason == api.REASON_REVOCATION_PENDING_REVIEW
        assert "awaits review" in one.detail, one.detail
        queue = await c.ListRevocationCandidates(
            api.ListRevocationCandidatesRequest(brand="acme", at_least_as_fresh=token_of(out))
        )
        held_numbers = [numbers["no-channel"], numbers["bad-time"]]
        assert sorted(q.event.phone for q in queue.candidates) == sorted(held_numbers)
    ends = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)
    assert sum(ends.values()) == sum(before.values()) + 5  # 2 opt-ins, an opt-out, 2 holds

    code, again, err = await import_cli(str(export), "--address", runtime.address, token=acme)

    assert code == 1, again + err
    assert "imported 0 of 6 records" in again and "already present: 3" in again, again
    assert again.count(held) == 2, again
    assert re.search(r"^  held for review: 2$", again, re.M), again  # held by the first run
    assert await runtime.ledger.end_offsets(Stream.SUBSCRIBERS) == ends


async def test_the_refusals_file_tells_a_held_opt_out_from_a_refused_record(service, tmp_path):
    """``--refusals`` wrote line, import id, code, field and reason, and nothing of
    the hold: an opt-out refused but held for review (its number denied until
    resolved) read as a refused opt-in does (nothing recorded). Each line says
    ``held_for_review`` now: for what the service held, what the file could not
    read and was held, a repeat of a held line, and in a dry run (would be)."""
    runtime, when = service
    numbers = [phone(2310), phone(2311)]
    rows = opted_in_then_out(when, {numbers[0]: {"channel": ""}, numbers[1]: {"occurred_at": "x"}})
    bad_in = {**export_rows(when)[1], "import_id": "bad-in", "phone": "+1 415 CALL ME"}
    late_in = {**export_rows(when)[1], "import_id": "late-in", "phone": phone(2312)}
    rows += [rows[1], bad_in, {**late_in, "occurred_at": "later"}]
    export = write_csv(tmp_path / "held.csv", rows)
    acme = TOKENS["acme-app"][0]

    for dry in (("--dry-run",), ()):
        refusals = tmp_path / f"refused{len(dry)}.jsonl"
        code, out, err = await import_cli(
            str(export), *dry, "--address", runtime.address, "--refusals", str(refusals),
            token=acme,
        )  # fmt: skip

        assert code == 1 and "refused: 5" in out, out + err
        assert re.search(r"^  held for review: 3$", out, re.M), out  # lines 3, 5 and 6
        told = [json.loads(line) for line in refusals.read_text().splitlines()]
        held = {(r["line"], r["field"]): r["held_for_review"] for r in told}
        assert held == {
            (3, "channel"): True,  # refused by the service, held
            (5, "occurred_at"): True,  # not read here; what was read of it held
            (6, "channel"): True,  # line 3 again
            (7, "phone"): False,  # an opt-in: refused, nothing more
            (8, "occurred_at"): False,
        }, told
    async with client(runtime.address, "acme-app") as c:
        reasons = await answers(c, numbers, token_of(out))
    assert reasons == dict.fromkeys(numbers, "REASON_REVOCATION_PENDING_REVIEW"), reasons


async def test_an_opt_out_whose_number_is_spaced_by_a_spreadsheet_revokes_its_number(
    service, tmp_path
):
    """An opt-in with its number written plainly, and an opt-out of it written with
    a spreadsheet's no-break spaces, a word processor's en dashes or full-width
    signs: the opt-out was refused as "not a number" and not even held, and CanSend
    allowed the number it meant."""
    runtime, when = service
    spellings = {
        phone(80): "+1\u00a0415\u00a0555\u00a03080",
        phone(81): "+1\u2013415\u2013555\u20133081",
        phone(82): "\uff0b1 (415) 555-3082",
    }
    rows = opted_in_then_out(when, {n: {"phone": spelt} for n, spelt in spellings.items()})
    export = write_csv(tmp_path / "spaced.csv", rows)

    reasons = await imported_answers(
        runtime, export, spellings, code=0, said=["imported 6 of 6 records"]
    )

    assert reasons == dict.fromkeys(spellings, "REASON_REVOKED"), reasons


async def test_a_record_whose_type_cannot_be_read_is_held_unless_it_is_an_opt_in(service, tmp_path):
    """An opt-out typed "optout" or "unsubscribe", or with no type, beside its
    number's opt-in: refused as "type: must be opt_in or opt_out" and not held, so
    CanSend allowed the number. It is held for review now; a misspelt opt-in (only
    an opt-in's fields) is refused and nothing more."""
    runtime, when = service
    types = {phone(83): "optout", phone(84): "unsubscribe", phone(85): ""}
    rows = opted_in_then_out(when, {n: {"type": kind} for n, kind in types.items()})
    misspelt = {**export_rows(when)[1], "type": "optin", "import_id": "in-86", "phone": phone(86)}
    export = write_csv(tmp_path / "types.csv", [*rows, misspelt])

    reasons = await imported_answers(
        runtime, export, [*types, phone(86)], code=1,
        said=["imported 3 of 7 records", "refused: 4"],
        refusals=[
            r"2 +INVALID_ARGUMENT +type: must be opt_in or opt_out, not 'optout'; held for review",
            r"1 +INVALID_ARGUMENT +type: is required, and was left blank: opt_in or opt_out; held",
            r"1 +INVALID_ARGUMENT +type: must be opt_in or opt_out, not 'optin' \(line 8\)",
        ],
    )  # fmt: skip

    assert reasons == {
        **dict.fromkeys(types, "REASON_REVOCATION_PENDING_REVIEW"),
        phone(86): "REASON_NO_CONSENT",
    }, reasons


async def test_an_opt_out_whose_brand_is_padded_or_capitalised_is_held_under_the_brand(
    service, tmp_path
):
    """An opt-out whose brand an export wrote "acme " or "ACME" is refused (a name is
    matched whole), but was not held either, its brand being no name: the number's
    opt-in went in and CanSend allowed it. It is held under the brand it spells."""
    runtime, when = service
    brands = {phone(87): "acme ", phone(88): "ACME", phone(89): " Acme"}
    rows = opted_in_then_out(when, {n: {"brand": spelt} for n, spelt in brands.items()})
    export = write_csv(tmp_path / "brands.csv", rows)

    reasons = await imported_answers(
        runtime, export, brands, code=1, said=["imported 3 of 6 records", "refused: 3"],
        refusals=[r"3 +INVALID_ARGUMENT +brand: .*; held for review"],
    )  # fmt: skip

    assert reasons == dict.fromkeys(brands, "REASON_REVOCATION_PENDING_REVIEW"), reasons


async def test_a_held_opt_out_denies_in_the_history_from_its_own_time(service, tmp_path):
    """An opt-out held for review (refused by the service for no channel, or here for
    a channel that is no channel) was placed at the import: CanSendAsOf, asked of a
    send between the opt-out's own time and the import, with the ledger as it stands,
    answered "allowed" for a number the ledger knows had opted out. The hold is
    placed at the opt-out's own time now."""
    runtime, when = service
    numbers = {"no channel": phone(2400), "pigeon": phone(2401)}
    stopped = when - timedelta(days=5)
    rows = opted_in_then_out(
        when,
        {
            numbers["no channel"]: {"channel": "", "occurred_at": iso(stopped)},
            numbers["pigeon"]: {"channel": "pigeon", "occurred_at": iso(stopped)},
        },
    )
    export = write_csv(tmp_path / "held-then.csv", rows)
    code, out, err = await import_cli(
        str(export), "--address", runtime.address, token=TOKENS["acme-app"][0]
    )
    assert code == 1 and "imported 2 of 4 records" in out, out + err
    between = (when - timedelta(days=3)).replace(hour=20, minute=0, second=0, microsecond=0)
    async with client(runtime.address, "acme-app") as c:
        for number in numbers.values():
            then = await c.CanSendAsOf(
                api.CanSendAsOfRequest(
                    phone=number, brand="acme", campaign="promo", at=ts(between),
                    at_least_as_fresh=token_of(out),
                )
            )  # fmt: skip
            assert then.reason == api.REASON_REVOCATION_PENDING_REVIEW, (number, then)


async def test_a_held_opt_out_is_named_an_imported_opt_out_by_every_check(service, tmp_path):
    """CanSend's reason for an import's held opt-out was right, but its detail said
    the number's "reply reads like an opt-out and awaits review": there was no
    reply. Each check now says an imported opt-out is held (the record's words are
    sealed, as a reply's are: the review queue says why it was refused)."""
    runtime, when = service
    number = phone(80)
    rows = [
        {**export_rows(when)[1], "import_id": "8000", "phone": number},
        {
            "type": "opt_out", "import_id": "stop-8000", "phone": number, "brand": "acme",
            "occurred_at": iso(when - timedelta(days=1)), "text": "STOP",
        },  # no channel: refused, and held
    ]  # fmt: skip
    export = write_csv(tmp_path / "held.csv", rows)
    code, out, err = await import_cli(
        str(export), "--address", runtime.address, token=TOKENS["acme-app"][0]
    )
    assert code == 1 and "imported 1 of 2 records" in out, out + err
    fresh = token_of(out)
    held = "an imported opt-out awaits review"
    async with client(runtime.address, "acme-app") as c:
        one = await c.CanSend(
            api.CanSendRequest(
                phone=number, brand="acme", campaign="promo", at_least_as_fresh=fresh
            )
        )
        batch = await c.CanSendBatch(
            api.CanSendBatchRequest(
                brand="acme", campaign="promo", phones=[number], at_least_as_fresh=fresh
            )
        )
        as_of = await c.CanSendAsOf(
            api.CanSendAsOfRequest(
                phone=number, brand="acme", campaign="promo", at=ts(datetime.now(UTC)),
                at_least_as_fresh=fresh,
            )
        )  # fmt: skip
        overdue = await c.CanSend(  # a send planned past its ten business days
            api.CanSendRequest(
                phone=number, brand="acme", campaign="promo", at=ts(when + timedelta(days=30)),
                at_least_as_fresh=fresh,
            )
        )  # fmt: skip
    for answer in (one, batch.decisions[0], as_of):
        assert answer.reason == api.REASON_REVOCATION_PENDING_REVIEW, answer
        assert answer.detail.startswith(held), answer.detail
        assert "reply" not in answer.detail, answer.detail
    assert overdue.reason == api.REASON_REVOCATION_OVERDUE, overdue
    assert overdue.detail.startswith("an imported opt-out was not resolved by"), overdue.detail
    assert "reply" not in overdue.detail, overdue.detail


async def test_an_opt_out_whose_number_lost_its_plus_is_held_under_the_number(service, tmp_path):
    """An opt-out whose number a spreadsheet stripped of its "+" ("14155553093"), or
    that was written with an international prefix ("00 1 ...", "011 1 ..."), beside
    the number's opt-in written in E.164: refused as "not a phone number" (a
    number must carry its country code), and not held, so CanSend allowed the
    number. The refusal stands, and the opt-out is held under the number those
    digits make with a "+", for a person to confirm."""
    runtime, when = service
    spellings = {
        phone(93): "14155553093",
        phone(94): "00 1 415 555 3094",
        phone(95): "011-1-415-555-3095",
        phone(96): "+00 1 415 555 3096",  # a "+" before the prefix, as well
    }
    rows = opted_in_then_out(when, {n: {"phone": spelt} for n, spelt in spellings.items()})
    export = write_csv(tmp_path / "plus.csv", rows)

    reasons = await imported_answers(
        runtime, export, spellings, code=1, said=["imported 4 of 8 records", "refused: 4"],
        # The three written with no "+" are told of --phone-region; the fourth has one.
        refusals=[
            r"3 +INVALID_ARGUMENT +phone: .*--phone-region US; held for review.*\(lines 3, 5, 7\)",
            r"1 +INVALID_ARGUMENT +phone: [^-]*; held for review.*\(line 9\)",
        ],
    )  # fmt: skip

    assert reasons == dict.fromkeys(spellings, "REASON_REVOCATION_PENDING_REVIEW"), reasons


async def test_an_opt_out_whose_number_is_a_tel_uri_or_has_an_extension_is_held(service, tmp_path):
    """An opt-out whose number came as a "tel:" link, with an extension, or wrapped in
    the bidi marks a right-to-left spreadsheet puts around it, beside the number's
    opt-in written in E.164: refused, and not held, so CanSend allowed the number.
    The refusal stands, and the opt-out is held under the number it names."""
    runtime, when = service
    spellings = {
        phone(140): f"tel:{phone(140)}",
        phone(141): f"TEL:+1-415-555-{phone(141)[-4:]};phone-context=example.com",
        phone(142): f"{phone(142)} ext. 12",
        phone(143): f"{phone(143)}x12",
        phone(144): f"\u202a{phone(144)}\u202c",
    }
    rows = opted_in_then_out(when, {n: {"phone": spelt} for n, spelt in spellings.items()})
    export = write_csv(tmp_path / "tel.csv", rows)

    reasons = await imported_answers(
        runtime, export, spellings, code=1, said=["imported 5 of 10 records", "refused: 5"],
        refusals=[r"INVALID_ARGUMENT +phone: .*; held for review"],
    )  # fmt: skip

    assert reasons == dict.fromkeys(spellings, "REASON_REVOCATION_PENDING_REVIEW"), reasons


async def test_an_opt_out_whose_number_is_written_among_other_words_is_held(service, tmp_path):
    """An opt-out whose number came with words or marks around it (an extension left
    empty, a label, brackets, a second number in the same cell), beside the number's
    opt-in written in E.164: refused for its characters, and not held, so CanSend
    allowed the number. The refusal stands, and the opt-out is held under each number
    the cell names."""
    runtime, when = service
    spellings = {
        phone(180): f"{phone(180)} x",
        phone(181): f"{phone(181)} (mobile)",
        phone(182): f"mobile: {phone(182)}",
        phone(183): f"<{phone(183)}>",
        phone(184): f"{phone(184)} / +1 212 555 0100",
        phone(185): f"{phone(185)}p123",
        phone(186): f"cell {phone(186)[2:5]} {phone(186)[5:8]} {phone(186)[8:]}",
    }
    rows = opted_in_then_out(when, {n: {"phone": spelt} for n, spelt in spellings.items()})
    export = write_csv(tmp_path / "words.csv", rows)

    reasons = await imported_answers(
        runtime, export, spellings, code=1,
        said=["imported 7 of 14 records", "refused: 7", "held for review: 7"],
        refusals=[r"INVALID_ARGUMENT +phone: .*; held for review"],
    )  # fmt: skip

    assert reasons == dict.fromkeys(spellings, "REASON_REVOCATION_PENDING_REVIEW"), reasons


async def test_an_opt_out_whose_number_holds_control_characters_is_held(service, tmp_path):
    """An opt-out whose number an export left a control character in (a NUL a
    fixed-width field was padded with, a line break inside a cell, a DEL), beside the
    number's opt-in written in E.164: refused, and not held, so CanSend allowed the
    number. The refusal stands, and the opt-out is held under the number it names."""
    runtime, when = service
    for first, suffix in ((150, "csv"), (160, "jsonl")):
        spellings = {
            phone(first): f"{phone(first)}\0",
            phone(first + 1): f"\x01{phone(first + 1)}",
            phone(first + 2): f"+1 415\n555 {phone(first + 2)[-4:]}",
            phone(first + 3): f"{phone(first + 3)}\x7f",
        }
        rows = opted_in_then_out(when, {n: {"phone": spelt} for n, spelt in spellings.items()})
        export = tmp_path / f"control.{suffix}"
        if suffix == "csv":
            write_csv(export, rows)
        else:
            export.write_text("".join(json.dumps(row) + "\n" for row in rows))

        reasons = await imported_answers(
            runtime, export, spellings, code=1, said=["imported 4 of 8 records", "refused: 4"],
            refusals=[r"4 +INVALID_ARGUMENT +phone: .*; held for review"],
        )  # fmt: skip

        assert reasons == dict.fromkeys(spellings, "REASON_REVOCATION_PENDING_REVIEW"), reasons


async def test_an_opt_out_whose_number_a_windows_export_spaced_is_held(service, tmp_path):
    """An opt-out whose number came from a Windows-1252 export with its groups parted
    by a no-break space or an en dash (the bytes 0xA0 and 0x96, no UTF-8), beside the
    number's opt-in written in E.164: refused for the byte, and not held, so CanSend
    allowed the number. The refusal stands, and the opt-out is held under its
    digits, those bytes read as the spaces they are."""
    runtime, when = service
    spellings = {
        phone(190): f"+1\udca0415\udca0555\udca0{phone(190)[-4:]}",
        phone(191): f"+1 415\udc96555\udc96{phone(191)[-4:]}",
    }
    rows = opted_in_then_out(when, {n: {"phone": spelt} for n, spelt in spellings.items()})
    export = tmp_path / "cp1252.csv"
    with export.open("w", newline="", encoding="utf-8", errors="surrogateescape") as out:
        writer = csv.DictWriter(out, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    assert b"+1\xa0415\xa0555" in export.read_bytes()

    reasons = await imported_answers(
        runtime, export, spellings, code=1,
        said=["imported 2 of 4 records", "refused: 2", "held for review: 2"],
        refusals=[r"INVALID_ARGUMENT +phone: holds the byte 0x(A0|96), .*; held for review"],
    )  # fmt: skip

    assert reasons == dict.fromkeys(spellings, "REASON_REVOCATION_PENDING_REVIEW"), reasons


async def test_an_opt_out_whose_number_a_spreadsheet_kept_as_text_or_a_float_is_held(
    service, tmp_path
):
    """An opt-out whose number came with the marks a spreadsheet keeps a number as
    text with (a leading apostrophe, a formula ="...") or as a float column writes it
    ("14155553170.0"), beside the number's opt-in written in E.164: refused, and not
    held, so CanSend allowed the number. The refusal stands, and the opt-out is held
    under the number it names."""
    runtime, when = service
    spellings = {
        phone(170): f"'{phone(170)}",
        phone(171): f'="{phone(171)}"',
        phone(172): f"{phone(172).removeprefix('+')}.0",
    }
    rows = opted_in_then_out(when, {n: {"phone": spelt} for n, spelt in spellings.items()})
    export = write_csv(tmp_path / "sheet.csv", rows)

    reasons = await imported_answers(
        runtime, export, spellings, code=1, said=["imported 3 of 6 records", "refused: 3"],
        refusals=[r"INVALID_ARGUMENT +phone: .*; held for review"],
    )  # fmt: skip

    assert reasons == dict.fromkeys(spellings, "REASON_REVOCATION_PENDING_REVIEW"), reasons


async def test_an_opt_out_refused_for_how_its_line_is_written_is_held_all_the_same(
    service, tmp_path
):
    """Opt-outs beside their numbers' opt-ins, refused for how the line is written
    rather than for a field's value: a CSV row with more values than the header (an
    unquoted comma in its text), and JSON lines with a key no record has, a number
    given as a JSON number, a key given twice, or a proof that is no object. They
    were refused and not held, so CanSend allowed each number; now each is held
    for review, and a re-run of the files writes nothing new."""
    runtime, when = service
    assert runtime.ledger is not None
    export = write_csv(tmp_path / "comma.csv", opted_in_then_out(when, {phone(60): {}}))
    export.write_text(export.read_text().replace(",STOP", ",STOP, no more"))
    numbers = [phone(61), phone(62), phone(63), phone(64)]
    pairs = opted_in_then_out(when, {number: {} for number in numbers})
    notes, as_number, twice, proof = pairs[1::2]
    jsonl = tmp_path / "odd.jsonl"
    lines = [
        *(json.dumps(opt_in) for opt_in in pairs[::2]),
        json.dumps({**notes, "notes": "from the old CRM"}),
        json.dumps({**as_number, "phone": int(phone(62).removeprefix("+"))}),
        json.dumps(twice)[:-1] + ', "type": "opt_in"}',
        json.dumps({**proof, "proof": "none"}),
    ]
    jsonl.write_text("\n".join(lines) + "\n")

    for path, held in ((export, [phone(60)]), (jsonl, numbers)):
        reasons = await imported_answers(
            runtime, path, held, code=1, said=[f"refused: {len(held)}"], held=len(held)
        )
        assert reasons == dict.fromkeys(held, "REASON_REVOCATION_PENDING_REVIEW"), reasons

    before = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)
    for path in (export, jsonl):
        code, out, err = await import_cli(
            str(path), "--address", runtime.address, token=TOKENS["acme-app"][0]
        )
        assert code == 1 and "imported 0 of" in out, out + err
    assert await runtime.ledger.end_offsets(Stream.SUBSCRIBERS) == before


async def test_a_file_read_from_a_pipe_is_imported_whole(service):
    """An export piped in (``/dev/stdin``, or ``<(gunzip -c export.csv.gz)``) was
    read twice: once to count the records for the progress bar, which took from the
    pipe all the import had not buffered yet. 2,000 opt-outs imported 100 or so,
    the rest dropped without a word. A pipe is read once now, its total unknown."""
    runtime, when = service
    at = iso(when - timedelta(days=1))
    numbers = [phone(200 + i) for i in range(2000)]
    lines = ["type,import_id,phone,brand,campaign,occurred_at,channel,text"]
    lines += [f"opt_out,pipe-{n},{n},acme,,{at},keyword,STOP" for n in numbers]

    process = await started_import(
        "/dev/stdin", "--format", "csv", "--address", runtime.address,
        token=TOKENS["acme-app"][0], stdin=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate("\n".join(lines).encode()), 120)

    assert process.returncode == 0, out.decode() + err.decode()
    assert "imported 2,000 of 2,000 records" in out.decode(), out.decode()
    async with client(runtime.address, "acme-app") as c:
        reasons = await answers(c, numbers[-3:], token_of(out.decode()))
    assert reasons == dict.fromkeys(numbers[-3:], "REASON_REVOKED_BRAND_WIDE"), reasons


async def test_a_dash_reads_the_export_from_standard_input(service, tmp_path):
    """``-`` was taken for a file of that name: "No such file or directory: '-'",
    exit 2, where most Unix tools read standard input. It is standard input now,
    piped or redirected, named so in the summary; a ``--refusals`` file that is the
    redirected export is refused before it is emptied."""
    runtime, when = service
    at = iso(when - timedelta(days=1))
    numbers = [phone(2300 + i) for i in range(3)]
    lines = ["type,import_id,phone,brand,campaign,occurred_at,channel,text"]
    lines += [f"opt_out,dash-{n},{n},acme,,{at},keyword,STOP" for n in numbers]
    export = tmp_path / "stops.csv"
    export.write_text("\n".join(lines) + "\n")

    process = await started_import(
        "-", "--format", "csv", "--address", runtime.address,
        token=TOKENS["acme-app"][0], stdin=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(export.read_bytes()), 120)

    assert process.returncode == 0, out.decode() + err.decode()
    assert "imported 3 of 3 records from standard input" in out.decode(), out.decode()
    async with client(runtime.address, "acme-app") as c:
        reasons = await answers(c, numbers, token_of(out.decode()))
    assert reasons == dict.fromkeys(numbers, "REASON_REVOKED_BRAND_WIDE"), reasons
    with export.open("rb") as redirected:
        process = await started_import(
            "-", "--format", "csv", "--refusals", str(export), "--address", runtime.address,
            token=TOKENS["acme-app"][0], stdin=redirected.fileno(),
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 2 and "is the file to import" in err.decode(), err.decode()
    assert export.read_text() == "\n".join(lines) + "\n"


async def test_an_opt_out_on_a_json_line_cut_short_is_held_by_what_it_said(service, tmp_path):
    """An export stopped mid-write ends on a line cut short. A CSV row cut after its
    number is held, for its number and brand were read; a JSON line cut short was
    refused as "is not JSON" and not held, so CanSend allowed the number opted in
    on the line before. It is held now by what it said before the cut; a line cut
    inside its number holds nothing (the number may have lost digits)."""
    runtime, when = service
    opt_in, opt_out = (json.dumps(r) for r in opted_in_then_out(when, {phone(65): {}}))
    cut = opt_out[: opt_out.index('"occurred_at"') + len('"occurred_at": "20')]
    other_in, other_out = (json.dumps(r) for r in opted_in_then_out(when, {phone(66): {}}))
    cut_in_number = other_out[: other_out.index(phone(66)) + 6]
    jsonl = tmp_path / "cut.jsonl"
    jsonl.write_text("\n".join([opt_in, other_in, cut_in_number, cut]))

    reasons = await imported_answers(
        runtime, jsonl, [phone(65), phone(66)], code=1, said=["imported 2 of 4 records"],
        refusals=[r"1 +INVALID_ARGUMENT +record: is not JSON: .*; held for review"],
    )  # fmt: skip

    assert reasons == {
        phone(65): "REASON_REVOCATION_PENDING_REVIEW",
        phone(66): "REASON_CONSENT_ACTIVE",
    }, reasons


async def test_opt_outs_on_a_json_line_that_is_no_one_object_are_held_by_what_they_said(
    service, tmp_path
):
    """JSON lines that are not one JSON object for a slip in how they are written: two
    records on one line (``cat`` of exports whose first does not end its last line),
    text after the record, a comma left before its closing brace, a whole number too
    long to read. Each was refused as "is not JSON" (the last with Python's advice to
    call ``sys.set_int_max_str_digits()``) and none held, so CanSend allowed every
    number opted in on the lines before. The lines stay refused, and each opt-out on
    them is held by what it said."""
    runtime, when = service
    numbers = [phone(180 + i) for i in range(5)]
    pairs = opted_in_then_out(when, {number: {} for number in numbers})
    first, second, trailing, comma, huge = (json.dumps(out) for out in pairs[1::2])
    jsonl = tmp_path / "slips.jsonl"
    lines = [
        *(json.dumps(opt_in) for opt_in in pairs[::2]),
        first + second,
        trailing + " -- exported by OldCRM",
        comma[:-1] + ",}",
        huge[:-1] + ', "in_reply_to": ' + "9" * 5000 + "}",
    ]
    jsonl.write_text("\n".join(lines) + "\n")

    code, out, err = await import_cli(
        str(jsonl), "--address", runtime.address, token=TOKENS["acme-app"][0]
    )

    assert code == 1, out + err
    assert "imported 5 of 10 records" in out and "refused: 5" in out, out
    assert "set_int_max_str_digits" not in out, out
    assert "in_reply_to: must be a string" in out, out
    async with client(runtime.address, "acme-app") as c:
        reasons = await answers(c, numbers, token_of(out))
    assert reasons == dict.fromkeys(numbers, "REASON_REVOCATION_PENDING_REVIEW"), reasons


async def test_an_opt_out_whose_number_is_a_json_float_is_held_under_it(service, tmp_path):
    """A JSON line whose phone is a number with a decimal point, as a float column
    writes it ("phone": 14155553210.0), beside the number's opt-in: refused, as a
    number for a text is, but not held, where the same number written as a whole
    number is, so CanSend allowed the number. It is held now under its digits."""
    runtime, when = service
    number = phone(210)
    opt_in, opt_out = opted_in_then_out(when, {number: {}})
    jsonl = tmp_path / "float.jsonl"
    written = json.dumps({**opt_out, "phone": "PHONE"}).replace('"PHONE"', f"{number[1:]}.0")
    jsonl.write_text(json.dumps(opt_in) + "\n" + written + "\n")

    reasons = await imported_answers(
        runtime, jsonl, [number], code=1, said=["imported 1 of 2 records"],
        refusals=[r"1 +INVALID_ARGUMENT +phone: must be a string, not a number; held for review"],
    )  # fmt: skip

    assert reasons == {number: "REASON_REVOCATION_PENDING_REVIEW"}, reasons


async def test_an_opt_out_whose_number_is_a_json_array_or_object_is_held_under_it(
    service, tmp_path
):
    """JSON lines whose phone is an array (["+14155553220"], as an export of a list
    of numbers writes one) or an object ({"e164": ...}), beside the numbers' opt-ins:
    refused as no text, and not held, so CanSend allowed the numbers. Each is held
    now under the numbers it holds."""
    runtime, when = service
    numbers = {
        phone(220): [phone(220)],
        phone(221): {"e164": phone(221), "type": "mobile"},
        phone(222): [phone(222), phone(223)],
    }
    lines = []
    for number, written in numbers.items():
        opt_in, opt_out = opted_in_then_out(when, {number: {}})
        lines += [json.dumps(opt_in), json.dumps({**opt_out, "phone": written})]
    lines.append(json.dumps(opted_in_then_out(when, {phone(223): {}})[0]))
    jsonl = tmp_path / "arrays.jsonl"
    jsonl.write_text("".join(line + "\n" for line in lines))

    reasons = await imported_answers(
        runtime, jsonl, [*numbers, phone(223)], code=1,
        said=["imported 4 of 7 records", "held for review: 3"],
        refusals=[
            r"2 +INVALID_ARGUMENT +phone: must be a string, not an array; held for review",
            r"1 +INVALID_ARGUMENT +phone: must be a string, not an object; held for review",
        ],
    )  # fmt: skip

    assert set(reasons.values()) == {"REASON_REVOCATION_PENDING_REVIEW"}, reasons


async def test_an_opt_out_on_a_json_line_whose_keys_are_capitalised_or_padded_denies(
    service, tmp_path
):
    """JSON lines of opt-outs whose keys another tool capitalised or padded ("Phone",
    "TYPE", " brand"), beside the numbers' opt-ins: refused for the keys and not held,
    so CanSend allowed the numbers: the hold read no "phone". Keys that are ours but
    for capitals are read as ours now, the opt-outs imported; a padded one is refused
    still, and held, its hold reading each key as the field it spells."""
    runtime, when = service
    spelt = {
        phone(230): lambda key: key.capitalize(),
        phone(231): lambda key: key.upper(),
        phone(232): lambda key: f" {key}" if key in ("phone", "type") else key,
    }
    lines = []
    for number, key in spelt.items():
        opt_in, opt_out = opted_in_then_out(when, {number: {}})
        lines += [json.dumps(opt_in), json.dumps({key(k): v for k, v in opt_out.items()})]
    jsonl = tmp_path / "keys.jsonl"
    jsonl.write_text("".join(line + "\n" for line in lines))

    reasons = await imported_answers(
        runtime, jsonl, spelt, code=1, said=["imported 5 of 6 records", "held for review: 1"],
        refusals=[r"INVALID_ARGUMENT +.*: is no field of an import record; held for review"],
    )  # fmt: skip

    revoked = reasons[phone(230)]
    assert revoked.startswith("REASON_REVOKED"), reasons
    assert reasons == {
        phone(230): revoked,
        phone(231): revoked,
        phone(232): "REASON_REVOCATION_PENDING_REVIEW",
    }, reasons


async def test_an_opt_out_on_a_json_line_naming_its_number_under_another_key_is_held(
    service, tmp_path
):
    """JSON lines of opt-outs that name their number under a key of their own
    ("phone_number", "msisdn" without its "+", a contact object, the whole record
    nested under "record"), beside the numbers' opt-ins written as the command asks:
    refused for the key, rightly, and held under no number, so CanSend allowed the
    numbers. Each is held under the number its line names."""
    runtime, when = service

    def elsewhere(number: str, key: str, value: object) -> dict[str, object]:
        opt_out = {k: v for k, v in opted_in_then_out(when, {number: {}})[1].items()}
        del opt_out["phone"]
        return {**opt_out, key: value}

    lines = {
        phone(240): elsewhere(phone(240), "phone_number", phone(240)),
        phone(241): elsewhere(phone(241), "msisdn", phone(241).removeprefix("+")),
        phone(242): elsewhere(phone(242), "contact", {"mobile": phone(242)}),
        phone(243): {"record": opted_in_then_out(when, {phone(243): {}})[1]},
    }
    written = []
    for number, opt_out in lines.items():
        written += [json.dumps(opted_in_then_out(when, {number: {}})[0]), json.dumps(opt_out)]
    jsonl = tmp_path / "keys.jsonl"
    jsonl.write_text("".join(line + "\n" for line in written))

    reasons = await imported_answers(
        runtime, jsonl, lines, code=1, said=["imported 4 of 8 records", "held for review: 4"],
        refusals=[r"INVALID_ARGUMENT +\w+: is no field of an import record; held for review"],
    )  # fmt: skip

    assert reasons == dict.fromkeys(lines, "REASON_REVOCATION_PENDING_REVIEW"), reasons


async def test_json_lines_files_joined_with_their_byte_order_marks_are_read_whole(
    service, tmp_path
):
    """``cat a.jsonl b.jsonl`` of exports that each begin with a byte-order mark
    puts the second's mark at the start of a line: that line was refused as "is not
    JSON: Unexpected UTF-8 BOM", an opt-out on it not held, and CanSend allowed
    its number. A mark is no content, wherever a line begins with it."""
    runtime, when = service
    opt_in, opt_out = (json.dumps(r) for r in opted_in_then_out(when, {phone(67): {}}))
    jsonl = tmp_path / "joined.jsonl"
    jsonl.write_text(f"\ufeff{opt_in}\n\ufeff{opt_out}\n", encoding="utf-8")

    reasons = await imported_answers(
        runtime, jsonl, [phone(67)], code=0, said=["imported 2 of 2 records"]
    )

    assert reasons == {phone(67): "REASON_REVOKED"}, reasons


async def test_a_utf16_export_is_refused_as_a_file_saying_so(unsent, tmp_path):
    """A UTF-16 file (PowerShell's ``>``, Windows' "Unicode" text) was read as
    UTF-8: a CSV's header was refused as unknown columns of NUL-spaced letters, and
    JSON Lines had each of its half-lines refused as "is not JSON", more records
    than the file held. Neither says what to do: the file is refused whole now,
    naming its encoding, and nothing is written."""
    runtime, when = unsent
    assert runtime.ledger is not None
    before = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)
    rows = opted_in_then_out(when, {phone(68): {}})
    export = write_csv(tmp_path / "unicode.csv", rows)
    export.write_bytes(export.read_text().encode("utf-16"))
    jsonl = tmp_path / "unicode.jsonl"
    jsonl.write_bytes("\n".join(json.dumps(r) for r in rows).encode("utf-16"))

    for path in (export, jsonl):
        code, out, err = await import_cli(
            str(path), "--address", runtime.address, token=TOKENS["acme-app"][0]
        )
        assert code == 2 and out == "", out + err
        assert f"{path.name} is UTF-16 text" in err and "save it as UTF-8" in err, err
    assert await runtime.ledger.end_offsets(Stream.SUBSCRIBERS) == before


async def test_a_utf16_export_without_a_byte_order_mark_is_refused_as_a_file(unsent, tmp_path):
    """UTF-16 saved without a byte-order mark (Python's ``utf-16-le``, some ETL
    tools) passed the check for its mark: a CSV was refused for unknown columns of
    NUL-spaced letters, JSON Lines line by line, neither naming the encoding. Its
    NUL in every other byte names it now, either byte order, piped in too; nothing
    is written."""
    runtime, when = unsent
    assert runtime.ledger is not None
    before = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)
    rows = opted_in_then_out(when, {phone(2340): {}})
    text = write_csv(tmp_path / "rows.csv", rows).read_text()
    lines = "\n".join(json.dumps(r) for r in rows)
    files = {}
    for order in ("le", "be"):
        files[tmp_path / f"{order}.csv"] = text.encode(f"utf-16-{order}")
        files[tmp_path / f"{order}.jsonl"] = lines.encode(f"utf-16-{order}")
    for path, content in files.items():
        path.write_bytes(content)
        code, out, err = await import_cli(
            str(path), "--address", runtime.address, token=TOKENS["acme-app"][0]
        )
        assert code == 2 and out == "", out + err
        endian = "little-endian" if path.stem == "le" else "big-endian"
        assert f"{path.name} is UTF-16 text ({endian}, without a byte-order mark" in err, err
        assert "save it as UTF-8" in err, err
    process = await started_import(
        "-", "--format", "csv", "--address", runtime.address,
        token=TOKENS["acme-app"][0], stdin=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(text.encode("utf-16-le")), 120)
    assert process.returncode == 2 and b"standard input is UTF-16 text" in err, err
    assert await runtime.ledger.end_offsets(Stream.SUBSCRIBERS) == before


async def test_exports_joined_with_their_headers_name_each_header_and_read_every_row(
    service, tmp_path
):
    """``cat a.csv b.csv``: the second export's header row was refused as "type: must
    be opt_in or opt_out" (and sent to be held as an opt-out of the number "phone"),
    and a second export of other columns had its rows read under the first's. Each
    header below the first is refused as what it is, by line, so the joined file
    does not pass for one clean export, and the rows after it are read under it:
    every opt-out of every part is recorded."""
    runtime, when = service
    first = write_csv(tmp_path / "a.csv", opted_in_then_out(when, {phone(2350): {}}))
    second = write_csv(tmp_path / "b.csv", opted_in_then_out(when, {phone(2351): {}}))
    reordered = opted_in_then_out(when, {phone(2352): {}})
    with (tmp_path / "c.csv").open("w", newline="") as out:
        writer = csv.DictWriter(out, [*COLUMNS[::-1]])  # the same fields, another order
        writer.writeheader()
        writer.writerows(reordered)
    joined = tmp_path / "joined.csv"
    joined.write_bytes(
        first.read_bytes() + "\ufeff".encode() + second.read_bytes()
        + (tmp_path / "c.csv").read_bytes()
    )  # fmt: skip
    numbers = [phone(2350), phone(2351), phone(2352)]

    reasons = await imported_answers(
        runtime, joined, numbers, code=1, held=0,
        said=["imported 6 of 8 records", "refused: 2"],
        refusals=[
            r"INVALID_ARGUMENT +record: repeats the header row \(exports joined, as by cat\?\)"
            r".* \(line 4\)",
            r"INVALID_ARGUMENT +record: is a header row naming other columns .*read under its "
            r"columns \(line 7\)",
        ],
    )  # fmt: skip

    assert reasons == dict.fromkeys(numbers, "REASON_REVOKED"), reasons


async def test_rows_of_empty_values_below_a_spreadsheets_data_are_no_records(service, tmp_path):
    """A spreadsheet saved as CSV writes rows of commas where cells below its data
    were once used: each was refused as "type: must be opt_in or opt_out", so an
    import of every record exited 1 as if some had failed. They are blank lines."""
    runtime, when = service
    export = write_csv(tmp_path / "sheet.csv", opted_in_then_out(when, {phone(69): {}}))
    empty = "," * (len(COLUMNS) - 1)
    export.write_text(f"{export.read_text()}{empty}\r\n{empty}\r\n , \r\n")

    code, out, err = await import_cli(
        str(export), "--address", runtime.address, token=TOKENS["acme-app"][0]
    )

    assert code == 0 and "imported 2 of 2 records" in out and "refused: 0" in out, out + err
    assert "import: 2 of 2 records" in err, err


async def test_a_json_array_on_one_line_is_refused_as_a_file_in_bounded_memory(unsent, tmp_path):
    """A JSON export written as one array on one line (``json.dump(records, f)``)
    was read as one line, whole, and parsed: 375 MB at its peak for a 42 MB file,
    so many GB for a brand's export, to refuse it as one record, "is not a JSON
    object", exit 1 (an array over many lines was a usage error, exit 2). It is
    refused as a file now from its first characters, and a line is read only up to
    ``LINE_LIMIT`` characters, far more than any record holds."""
    runtime, when = unsent
    record = json.dumps(opted_in_then_out(when, {phone(70): {}})[1])
    small, large = tmp_path / "small.json", tmp_path / "large.json"
    small.write_text(f"[{record}]")
    large.write_text("[" + ",".join([record] * 100_000) + "]")  # some 20 MB

    code_small, out_small, rss_small = await remembering_import(
        1_000, str(small), "--address", runtime.address, token=TOKENS["acme-app"][0]
    )
    code, out, rss = await remembering_import(
        1_000, str(large), "--address", runtime.address, token=TOKENS["acme-app"][0]
    )

    assert code_small == code == 2 and out_small == out == "", (out_small, out)
    assert rss - rss_small < 8 * 1024, (rss_small, rss)
    code, out, err = await import_cli(
        str(small), "--address", runtime.address, token=TOKENS["acme-app"][0]
    )
    assert code == 2 and "line 1 opens a JSON array: the file must be JSON Lines" in err, err


BROKEN = 'opt_in,q-1,+14155559999,acme,promo,2026-11-01T00:00:00Z,,"STOP'
"""An opt-in whose last value opens a quote that never closes."""


@pytest.mark.parametrize(
    ("where", "expected"),
    [("first", 1), ("middle", 1), ("last", 1), ("header only", 2), ("empty", 2)],
)
async def test_the_exit_status_of_a_broken_file_is_the_one_help_promises(
    service, tmp_path, where, expected
):
    """--help: 1 for a file that cannot be read past a line, wherever that line is;
    2 for one that holds no records."""
    runtime, when = service
    header = "type,import_id,phone,brand,campaign,occurred_at,tier,channel"
    good = f"opt_out,stop-1,{phone(70)},acme,promo,{iso(when)},,keyword"
    lines = {
        "first": [header, BROKEN, good],
        "middle": [header, good, BROKEN, good.replace("stop-1", "stop-2")],
        "last": [header, good, BROKEN],
        "header only": [header],
        "empty": [],
    }[where]
    export = tmp_path / "export.csv"
    export.write_text("".join(line + "\n" for line in lines))

    code, out, err = await import_cli(
        str(export), "--address", runtime.address, "--quiet", token=TOKENS["acme-app"][0]
    )

    assert code == expected, (out, err)
    if expected == 1:
        assert "does not close" in err, err


async def test_an_import_recorded_before_numbers_were_fingerprinted_in_e164_is_present(
    service, tmp_path, monkeypatch
):
    """A version that digested a number as spelled ("+1 (415) ...") claimed each
    import id, and made each hold's id, under that fingerprint. Run again, the
    records were refused as other records under their ids (an opt-out so refused
    was held for review, denying its number), and a record held was held again."""
    from ledger import commands
    from services.usecases import imports

    runtime, when = service
    assert runtime.ledger is not None
    spelled = [f"+1 (415) 555-{5400 + i}" for i in range(4)]
    stop = {
        "type": "opt_out", "brand": "acme", "occurred_at": iso(when - timedelta(days=1)),
        "channel": "keyword", "text": "STOP",
    }  # fmt: skip
    rows = [
        {**export_rows(when)[1], "import_id": "spelled-in", "phone": spelled[0]},
        {**stop, "import_id": "spelled-out", "phone": spelled[1]},
        {**stop, "import_id": "spelled-held", "phone": spelled[2], "channel": ""},
        # Read whole, then refused: its hold's id digests the record's fingerprint.
        {**stop, "import_id": "spelled-ahead", "phone": spelled[3],
         "occurred_at": iso(when + timedelta(hours=3))},
    ]  # fmt: skip
    export = write_csv(tmp_path / "spelled.csv", rows)
    acme = TOKENS["acme-app"][0]
    with monkeypatch.context() as old_version:
        for module in (commands, imports):
            old_version.setattr(module, "request_fingerprint", commands._digest)
        code, out, err = await import_cli(str(export), "--address", runtime.address, token=acme)
    assert code == 1 and "imported 2 of 4 records" in out, out + err
    assert "held for review: 2" in out, out
    ends = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)

    for dry in (("--dry-run",), ()):
        code, again, err = await import_cli(
            str(export), *dry, "--address", runtime.address, token=acme
        )

        assert code == 1, again + err
        assert "already present: 2" in again and "refused: 2" in again, again
        assert "import_id" not in again, again
        assert "held for review: 2" in again, again
    assert await runtime.ledger.end_offsets(Stream.SUBSCRIBERS) == ends


async def test_an_import_that_runs_past_its_timeout_says_so(service, tmp_path, monkeypatch):
    """An import longer than --timeout (an hour by default: a large export on a
    loaded machine) ended with "DEADLINE_EXCEEDED: Stream removed", or the service's
    answer just before it ("run the import again (with a longer deadline)"), and no
    word of --timeout, the option that sets the deadline. Now it names it."""
    runtime, when = service
    ledger = runtime.ledger
    assert ledger is not None
    template = export_rows(when)[1]
    rows = [
        {**template, "import_id": f"slow-{i}", "phone": f"+1646{5_600_000 + i:07d}"}
        for i in range(4_000)
    ]
    export = write_csv(tmp_path / "slow.csv", rows)
    append, one_at_a_time = ledger.append, asyncio.Lock()

    async def slowly(events):  # a message a second, one at a time: four take past 2.5 s
        async with one_at_a_time:
            await asyncio.sleep(1)
            return await append(events)

    monkeypatch.setattr(ledger, "append", slowly)
    code, out, err = await import_cli(
        str(export), "--address", runtime.address, "--timeout", "2.5",
        token=TOKENS["acme-app"][0],
    )  # fmt: skip

    assert code == 1, out + err
    assert "the call ran for --timeout (2.5 s" in err, err
    assert "give a longer --timeout" in err and "Traceback" not in err, err
