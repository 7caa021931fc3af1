"""``consent-ledger audit sweep``: its progress line and its options."""

from __future__ import annotations

import io

import pytest

from services.cli.main import _parser
from services.progress import Progress, ProgressLine


def test_the_progress_line_gives_the_share_the_rate_and_the_time_left():
    line = ProgressLine(io.StringIO(), "sweep").line(
        Progress(50_000, None, 50_000, 10.0, fraction=0.25, note="3 found")
    )
    assert "25.0%" in line and "50,000 events" in line and "5,000/s" in line
    assert "00:30 left" in line and line.endswith("3 found")
    assert line.startswith("sweep [" + "#" * 7 + "." * 23 + "]")
    assert "--:-- left" in ProgressLine(io.StringIO()).line(Progress(0, None, 0, 0.0, fraction=0.0))


def test_the_range_is_read_as_iso_times_and_a_bare_one_as_utc():
    args = _parser().parse_args(
        [
            "audit",
            "sweep",
            "--brand",
            "acme",
            "--campaign",
            "promo",
            "--from",
            "2026-11-01",
            "--to",
            "2026-12-01T00:00:00+01:00",
        ]
    )
    assert args.start.isoformat() == "2026-11-01T00:00:00+00:00"
    assert args.end.utcoffset().total_seconds() == 3600
    with pytest.raises(SystemExit):
        _parser().parse_args(
            [
                "audit",
                "sweep",
                "--brand",
                "acme",
                "--campaign",
                "promo",
                "--from",
                "soon",
                "--to",
                "2026-12-01",
            ]
        )


def test_a_finding_in_hindsight_prints_both_answers_and_its_kinds_in_hindsight():
    from consent.v1 import consent_service_pb2 as api

    from services.cli.audit.sweep import _text, finding_record

    finding = api.SweepFinding(
        phone="+14155552671",
        message_id="SM1",
        kinds=[api.SWEEP_FINDING_KIND_SENT_WITHOUT_ASKING, api.SWEEP_FINDING_KIND_AFTER_OPT_OUT],
        allowed=False,
        reason=api.REASON_REVOKED,
        detail="opted out; new consent is needed",
        evidence_event_ids=["stop-1"],
        hindsight=True,
        hindsight_kinds=[api.SWEEP_FINDING_KIND_AFTER_OPT_OUT],
        as_recorded=api.CanSendAsOfResponse(allowed=True, reason=api.REASON_CONSENT_ACTIVE),
    )
    record = finding_record(finding)
    assert record["kinds"] == ["sent_without_asking", "after_opt_out"]
    assert record["hindsight_kinds"] == ["after_opt_out"]
    assert record["as_recorded"]["allowed"] and record["as_recorded"]["reason"] == "consent_active"
    text = _text(record)
    assert "answer in hindsight: revoked: opted out; new consent is needed" in text
    assert "answer then: allowed" in text
    plain = finding_record(api.SweepFinding(kinds=[api.SWEEP_FINDING_KIND_SENT_WITHOUT_ASKING]))
    assert plain["as_recorded"] is None and plain["hindsight_kinds"] == []
    assert "answer then" in _text(plain) and "answer then:" not in _text(plain).split("\n")[2:]
