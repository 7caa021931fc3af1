"""The command starts without the service's parts: ``--help``, the client commands
and an import's dry run do not wait for gRPC's server, asyncpg, aiokafka or the
policy's data (holidays), which only the commands that run the service load
(bench/HISTORY.md, "The CLI's start")."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from services.cli import main as cli

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("asyncpg", "aiokafka", "holidays", "services.bootstrap")


def loaded_after(code: str) -> list[str]:
    """Which of ``HEAVY`` a fresh interpreter has loaded after running ``code``."""
    script = f"import sys\n{code}\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return out.split()


def test_the_parser_of_every_command_loads_none_of_the_services_parts():
    assert loaded_after("from services.cli.main import _parser; _parser()") == []


def test_an_import_loads_none_of_the_services_parts_to_read_and_send_its_file():
    code = (
        "import grpc, tqdm, services.import_files, services.cli.client, ledger.ports\n"
        "from consent.v1 import consent_service_pb2_grpc"
    )
    assert loaded_after(code) == []


def test_the_probe_sees_what_the_service_loads():
    assert loaded_after("import services.bootstrap") == list(HEAVY)


def test_ctrl_c_while_a_command_loads_what_it_runs_on_exits_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt  # as a Ctrl-C in the middle of the command's imports

    from services.cli import tokens

    monkeypatch.setattr(tokens, "run", interrupted)
    assert cli.main(["token", "remove", "x", "--file", "t.json"]) == cli.INTERRUPTED
    assert "consent-ledger: interrupted" in capsys.readouterr().err


def test_ctrl_c_while_python_m_loads_the_command_exits_130():
    # `python -m services.cli` imports the command's module before main() runs; a
    # Ctrl-C there printed a traceback of whichever import it hit.
    code = (
        "import builtins, runpy\n"
        "real = builtins.__import__\n"
        "def importing(name, *args, **kwargs):\n"
        "    if name == 'services.cli.main':\n"
        "        raise KeyboardInterrupt\n"
        "    return real(name, *args, **kwargs)\n"
        "builtins.__import__ = importing\n"
        "runpy.run_module('services.cli', run_name='__main__')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == cli.INTERRUPTED, done.stderr
    assert "consent-ledger: interrupted" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_ctrl_c_while_the_service_loads_exits_130(command, monkeypatch, capsys):
    import builtins

    real = builtins.__import__

    def importing(name, *args, **kwargs):
        if name == "services.bootstrap":
            raise KeyboardInterrupt
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", importing)
    assert cli.main([command]) == cli.INTERRUPTED
    assert "consent-ledger: interrupted" in capsys.readouterr().err
