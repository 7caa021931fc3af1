"""``consent-ledger audit packet``: a manual page for --help, usage errors refused
before any call."""

from __future__ import annotations

import pytest

from services.cli import main as cli
from services.cli.audit import packet as packets_cli
from tests.unit.test_cli_options import help_text


def test_the_help_reads_like_a_manual_page(capsys):
    text = help_text(["audit", "packet"], capsys)
    for part in (
        "Write the proof of opt-in for one phone number and one brand",
        "listed as missing, never filled in",
        "the decision CanSend would have given",
        "Connection:",
        "EXAMPLES consent-ledger audit packet --phone +14155552671 --brand acme",
        "EXIT STATUS 0 the packet was written",
    ):
        assert part in text


def test_every_option_has_its_own_help():
    parser = cli._parser()
    sub = next(a for a in parser._actions if isinstance(a, cli.argparse._SubParsersAction))
    audit = sub.choices["audit"]
    tools = next(a for a in audit._actions if isinstance(a, cli.argparse._SubParsersAction))
    for action in tools.choices["packet"]._actions:
        assert action.help, action.option_strings or action.dest


def test_no_token_is_a_usage_error(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("CONSENT_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)  # no var/data/dev-token here
    argv = ["audit", "packet", "--phone", "+14155552671", "--brand", "acme", "-o", "x.pdf"]
    assert cli.main(argv) == 2
    assert "no token" in capsys.readouterr().err
    assert not (tmp_path / "x.pdf").exists()


@pytest.mark.parametrize("missing", ["--phone", "--brand", "-o"])
def test_the_phone_brand_and_output_are_required(missing, capsys):
    argv = ["audit", "packet", "--phone", "+14155552671", "--brand", "acme", "-o", "x.pdf"]
    i = argv.index(missing)
    with pytest.raises(SystemExit) as exited:
        cli.main(argv[:i] + argv[i + 2 :])
    assert exited.value.code == 2


def test_the_summary_counts_what_was_not_allowed_and_lists_what_is_missing():
    packet = {
        "phone": "+14155552671",
        "brand": "acme",
        "campaign": None,
        "consistency_token": "subscribers:0:6",
        "opt_ins": [{}],
        "messages": [
            {"decision": {"allowed": True}, "hindsight": None},
            {"decision": {"allowed": False}, "hindsight": None},
            {"decision": {"allowed": True}, "hindsight": {"allowed": False}},
            # A ruling in hindsight that still allows (other obligations, say) is not
            # counted as one that does not.
            {"decision": {"allowed": True}, "hindsight": {"allowed": True}},
        ],
        "opt_outs": [{}],
        "replies": [],
        "missing": [{"field": "opt_ins[0].email"}],
    }
    assert packets_cli.summary(packet).splitlines() == [
        "proof of opt-in for +14155552671 / acme (ledger read up to subscribers:0:6)",
        "  opt-ins: 1; messages: 4 (1 not allowed when sent, 1 not allowed in hindsight); "
        "opt-outs: 1; texts received: 0",
        "  missing: opt_ins[0].email",
    ]
