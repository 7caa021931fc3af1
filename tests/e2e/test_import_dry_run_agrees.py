"""``consent-ledger import --dry-run`` predicts what the import of the same file
would report, category by category (imported, already present, each refusal with
its line, field and reason, held for review, the informational-only note): on a
fresh ledger, after the file was imported, and after an import interrupted part-way
(the test hook ``CONSENT_TEST_STOP_AFTER_EVENTS``), in CSV and JSON Lines, on the
embedded default's ledger."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from services.import_files import FIELDS
from services.progress import STOP_AFTER
from tests.e2e.harness import TOKENS, define
from tests.e2e.test_bulk_import import export_rows, import_cli, iso

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="module")
async def embedded(module_serve):
    when = datetime.now(UTC)
    campaigns = [define(brand, "promo", when - timedelta(days=60)) for brand in ("acme", "globex")]
    return await module_serve(name="dry-run", campaigns=campaigns, on_kafka=False), when


EXPORTS = [f"{run}{suffix}" for run in ("fresh", "cut") for suffix in (".csv", ".jsonl")]


def export(when: datetime, tag: str) -> list[dict[str, str]]:
    """Records of every outcome: imported, repeated, refused by the reader or by the
    service, held for review (by either), kept for review, informational only."""
    opt_in = {**export_rows(when)[1], "proof.collection_detail": "called in, agreed"}
    opt_out = {
        "type": "opt_out",
        "brand": "acme",
        "campaign": "promo",
        "occurred_at": iso(when - timedelta(days=1)),
        "channel": "keyword",
        "text": "STOP",
    }
    seen: dict[str, int] = {}

    def number(name: str) -> str:
        """One number a name, and numbers of their own for each export."""
        return f"+1646{EXPORTS.index(tag) + 200:03d}{seen.setdefault(name, len(seen)):04d}"

    def row(base: dict[str, str], name: str, **changes: str) -> dict[str, str]:
        return {**base, "import_id": f"{tag}-{name}", "phone": number(name), **changes}

    return [
        row(opt_in, "in"),
        row(opt_in, "in"),  # the same record again
        row(opt_in, "in-again", import_id=f"{tag}-in"),  # another record under its id
        row(opt_in, "verbal", method="verbal"),  # informational only
        row(opt_in, "no-tier", tier=""),
        row(opt_in, "no-method", method=""),
        row(opt_in, "bad-time", occurred_at="yesterday"),
        row(opt_in, "no-ip", **{"proof.ip_address": ""}),
        row(opt_in, "undefined", campaign="nope"),
        row(opt_in, "globex", brand="globex"),
        row(opt_in, "no-id", import_id=""),
        row(opt_out, "out"),
        row(opt_out, "out"),
        row(opt_out, "no-channel", channel=""),
        row(opt_out, "no-channel", channel=""),  # a held opt-out again
        row(opt_out, "bad-channel", channel="sms"),
        row(opt_out, "out-undefined", campaign="nope"),  # kept for review
        row(opt_out, "out-no-id", import_id="", channel=""),
        row(opt_out, "out-future", occurred_at=iso(when + timedelta(days=3))),
        row(opt_in, "out-future"),
        row(opt_out, "no-type", type="optout"),
        row(opt_out, "shared"),
        row(opt_in, "shared-in", import_id=f"{tag}-shared"),
    ]


def written(path: Path, rows: list[dict[str, str]]) -> Path:
    if path.suffix == ".csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, list(FIELDS))
        writer.writeheader()
        writer.writerows(rows)
        path.write_text(out.getvalue())
    else:
        path.write_text("".join(json.dumps({k: v for k, v in r.items() if v}) + "\n" for r in rows))
    return path


_NOT_ITS_TERMS = re.compile(r"UNSPECIFIED|Traceback|\bb'|Decimal\(|<\w+ object|\bNone\b")


async def told(runtime: Any, path: Path, *dry: str) -> dict[str, Any]:
    """What the import (or its dry run) of ``path`` said: its exit status, its
    summary's counts and notes, and each refusal of ``--refusals``, a dry run's
    "would be" left out."""
    refusals = path.with_name(f"{path.name}.refused")
    code, out, err = await import_cli(
        str(path), *dry, "--quiet", "--refusals", str(refusals), "--address", runtime.address,
        token=TOKENS["acme-app"][0],
    )  # fmt: skip
    assert "Traceback" not in err, err
    # In the export's terms: a field it has, never the API's name for a value unset
    # nor a Python representation of one.
    assert not _NOT_ITS_TERMS.search(out), out
    counts = re.search(r"(?:would import|imported) ([\d,]+) of", out)
    assert counts, out + err
    said = {
        "code": code,
        "imported": counts.group(1),
        **{
            name: found.group(1)
            for name in ("already present", "refused", "held for review")
            if (found := re.search(rf"  {name}: ([\d,]+)", out))
        },
        "informational": re.findall(r"([\d,]+) promotional opt-ins not given in writing", out),
        "refusals": sorted(
            (
                r["line"],
                r["code"],
                r["field"],
                r["reason"].replace("would be ", ""),
                r["held_for_review"],
            )
            for r in map(json.loads, refusals.read_text().splitlines())
        ),
    }
    assert all(refusal[2] in FIELDS for refusal in said["refusals"]), said
    return said


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
async def test_a_dry_run_says_what_the_import_of_the_file_says(
    embedded, tmp_path, monkeypatch, suffix
):
    runtime, when = embedded
    fresh = written(tmp_path / f"fresh{suffix}", export(when, f"fresh{suffix}"))

    predicted = await told(runtime, fresh, "--dry-run")
    assert predicted == await told(runtime, fresh)  # a fresh ledger
    assert int(predicted["imported"]) > 0 and predicted["informational"] == ["1"], predicted
    assert await told(runtime, fresh, "--dry-run") == await told(runtime, fresh)  # after it

    cut = written(tmp_path / f"cut{suffix}", export(when, f"cut{suffix}"))
    monkeypatch.setenv(STOP_AFTER, "1")  # interrupted once its first message is answered
    interrupted = await told(runtime, cut)
    monkeypatch.delenv(STOP_AFTER)
    assert interrupted["code"] == 130, interrupted
    assert await told(runtime, cut, "--dry-run") == await told(runtime, cut)
