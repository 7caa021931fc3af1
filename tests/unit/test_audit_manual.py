"""``consent-ledger audit``: one tool wraps every auditor's capability, and each
tool's ``--help`` reads like a manual page (``services.cli.manual``)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest

from services.cli import main as cli
from services.cli.manual import SECTIONS, Manual, ManualParser, tool

CAPABILITIES = {
    *("packet", "sweep", "health", "access", "erase", "hold", "export", "verify", "keys")
}
"""What an auditor does: the proof packet, the compliance sweep, campaign health,
who read what, erasure and legal holds, and tamper evidence (export, verify, keys)."""


def _tools() -> dict[str, argparse.ArgumentParser]:
    parser = cli._parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    audit = commands.choices["audit"]
    tools = next(a for a in audit._actions if isinstance(a, argparse._SubParsersAction))
    return dict(tools.choices)


def _sections(page: str) -> dict[str, str]:
    """Each section of a manual page (a heading in capitals at the margin) and its text."""
    found: dict[str, str] = {}
    heading = None
    for line in page.splitlines():
        if re.fullmatch(r"[A-Z][A-Z ]+", line):
            heading = line
            found[heading] = ""
        elif heading is not None:
            found[heading] += line + "\n"
    return found


def test_every_capability_is_an_audit_tool() -> None:
    assert set(_tools()) >= CAPABILITIES


@pytest.mark.parametrize("name", sorted(_tools()))
def test_every_audit_tool_has_a_manual_page(name: str) -> None:
    page = _tools()[name].format_help()
    sections = _sections(page)
    headings = list(sections)
    assert [h for h in headings if h in SECTIONS] == list(SECTIONS), headings
    prog = f"consent-ledger audit {name}"
    name_line = sections["NAME"].strip()
    assert name_line.startswith(f"{prog} - ") and len(name_line) > len(prog) + 10
    assert sections["SYNOPSIS"].strip().startswith(prog)
    assert len(sections["DESCRIPTION"].split()) >= 30  # says what it does, not just a line
    assert "--help" in sections["OPTIONS"]
    examples = [line.strip() for line in sections["EXAMPLES"].splitlines() if line.strip()]
    assert examples and examples[0].startswith(prog)
    assert re.search(r"^\s+0\s+\S", sections["EXIT STATUS"], re.MULTILINE)


def test_a_tool_added_without_a_manual_fails_the_check() -> None:
    parser = argparse.ArgumentParser(prog="consent-ledger audit")
    tools = parser.add_subparsers(parser_class=ManualParser)
    plain = tools.add_parser("plain", help="a tool", description="a tool")
    page = tool(tools, "paged", Manual("does a thing", "It does a thing. " * 10, "x", "0  ok"))
    assert "NAME" not in _sections(plain.format_help())
    assert "NAME" in _sections(page.format_help())


def test_the_audit_tools_run_what_the_top_level_commands_run(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["audit", "verify", "--help"])
    audit_page = capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["verify", "--help"])
    top_page = capsys.readouterr().out
    for option in ("--export", "--keys", "--grace", "--live-checkpoints", "--json"):
        assert option in audit_page and option in top_page


def test_the_readme_shows_a_manual_page_as_it_prints(monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    shown = readme.split("$ consent-ledger audit access --help\n", 1)[1].split("```", 1)[0]
    head, tail = shown.split("...\n")
    page = _tools()["access"].format_help()
    assert page.startswith(head)
    assert tail in page


def test_the_audit_tools_run_the_commands_they_wrap(tmp_path, capsys) -> None:
    key, keyring = tmp_path / "key.pem", tmp_path / "keys.json"
    assert cli.main(["audit", "keys", "new", str(key)]) == 0
    assert cli.main(["audit", "keys", "public", str(key), "--keyring", str(keyring)]) == 0
    made = capsys.readouterr()
    key_id = json.loads(made.out)["keys"][0]["key_id"]
    assert json.loads(keyring.read_text())["keys"][0]["key_id"] == key_id
    assert (
        cli.main(["audit", "verify", "--export", str(tmp_path / "none"), "--keys", str(keyring)])
        == 2
    )
    refused = capsys.readouterr().err
    assert refused.startswith("consent-ledger audit verify: ") and "No such file" in refused
