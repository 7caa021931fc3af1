"""``consent-ledger audit health``: its options and the table it prints."""

from __future__ import annotations

import pytest
from consent.v1 import consent_service_pb2 as api

from services.cli.audit.health import combine_records, health_record, table
from services.cli.main import _parser


def _args(*extra: str):
    return _parser().parse_args(["audit", "health", "--brand", "acme", *extra])


def test_the_window_is_optional_and_read_as_iso_times_a_bare_one_as_utc():
    args = _args("--since", "2026-11-01", "--until", "2026-12-01T00:00:00+01:00")
    assert args.start.isoformat() == "2026-11-01T00:00:00+00:00"
    assert args.end.utcoffset().total_seconds() == 3600
    default = _args()
    assert (default.start, default.end, default.campaign) == (None, None, None)
    with pytest.raises(SystemExit):
        _args("--since", "last week")


def test_the_brand_is_required():
    with pytest.raises(SystemExit):
        _parser().parse_args(["audit", "health"])


def _response() -> api.GetCampaignHealthResponse:
    flagged = api.HealthCounts(
        messages_sent=100,
        opt_outs=1,
        opt_outs_pending_review=3,
        delivery_errors=7,
        opt_out_rate=0.01,
        error_rate=0.07,
        opt_out_flagged=True,
        error_flagged=True,
    )
    fine = api.HealthCounts(messages_sent=50, opt_out_rate=0.0, error_rate=0.0)
    response = api.GetCampaignHealthResponse(
        campaigns=[
            api.CampaignHealth(
                campaign="promo",
                counts=flagged,
                senders=[
                    api.SenderHealth(from_number="+12125550100", counts=flagged),
                    api.SenderHealth(from_number="", counts=fine),
                ],
            )
        ],
        unattributed_opt_outs=2,
        unattributed_opt_outs_pending_review=4,
        opt_out_limit=0.003,
        error_limit=0.06,
        flagged=True,
        consistency_token="subscribers:0:12",
    )
    response.start_time.FromJsonString("2026-11-01T00:00:00Z")
    response.end_time.FromJsonString("2026-12-01T00:00:00Z")
    return response


def test_the_table_shows_each_number_under_its_campaign_with_its_flags():
    text = table(health_record(_response()), "acme")
    lines = text.splitlines()
    assert lines[0] == (
        "campaign health of acme, 2026-11-01T00:00:00Z to 2026-12-01T00:00:00Z"
        " (ledger read up to subscribers:0:12)"
    )
    assert lines[1] == "flagged above: opt-out rate 0.30%, error rate 6.00%"
    [promo] = [line for line in lines if line.startswith("promo")]
    # the rate is of opt-outs; the holds awaiting review stand beside them
    assert promo.split() == [
        "promo", "100", "1", "3", "1.00%", "7", "7.00%", "OPT-OUTS", "ERRORS"
    ]  # fmt: skip
    [none] = [line for line in lines if "(none)" in line]
    assert none.split() == ["(none)", "50", "0", "0", "0.00%", "0", "0.00%"]
    assert lines[-2:] == [
        "opt-outs with no message before them: 2",
        "held for review with no message before them: 4",
    ]


def test_the_json_keeps_every_count_and_flag():
    record = health_record(_response())
    [promo] = record["campaigns"]
    assert promo["flagged"] and promo["error_rate"] == 0.07
    assert [s["from_number"] for s in promo["senders"]] == ["+12125550100", ""]
    assert record["unattributed_opt_outs"] == 2 and record["flagged"]
    assert promo["opt_outs_pending_review"] == 3
    assert record["unattributed_opt_outs_pending_review"] == 4


def test_resumed_parts_flag_the_holds_awaiting_review_as_opt_outs():
    """Parts added up flag as the service does: 1 opt-out and 3 holds in 1,000
    messages are 0.4 %, above 0.3 %."""
    part = health_record(_response())
    for c in part["campaigns"]:
        for counts in (c, *c["senders"]):
            counts.update(messages_sent=500, opt_outs=0, opt_outs_pending_review=0)
    held = part["campaigns"][0]["senders"][0]
    held.update(opt_outs=1, opt_outs_pending_review=1)
    other = health_record(_response())
    for c in other["campaigns"]:
        for counts in (c, *c["senders"]):
            counts.update(messages_sent=500, opt_outs=0, opt_outs_pending_review=0)
    other["campaigns"][0]["senders"][0]["opt_outs_pending_review"] = 2
    [promo] = combine_records([part, other])["campaigns"]
    [number] = [s for s in promo["senders"] if s["from_number"] == "+12125550100"]
    assert (number["opt_outs"], number["opt_outs_pending_review"]) == (1, 3)
    assert number["opt_out_flagged"] and number["opt_out_rate"] == 0.001
    assert combine_records([part, other])["unattributed_opt_outs_pending_review"] == 8
