"""ledger/ is the pure domain: no wire or I/O packages, no clock reads."""

from __future__ import annotations

import ast
from pathlib import Path

LEDGER = Path(__file__).resolve().parents[2] / "ledger"
FORBIDDEN = {"grpc", "google", "aiokafka", "asyncpg", "socket", "requests", "psycopg"}
CLOCK_CALLS = {"now", "utcnow", "today", "time", "monotonic"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_ledger_imports_no_grpc_protobuf_aiokafka_or_asyncpg():
    offenders = {
        p.name: sorted(_imports(p) & FORBIDDEN)
        for p in LEDGER.glob("*.py")
        if _imports(p) & FORBIDDEN
    }
    assert offenders == {}


def test_the_purity_check_would_catch_an_offender(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import grpc\nfrom aiokafka import AIOKafkaProducer\n")
    assert _imports(bad) & FORBIDDEN == {"grpc", "aiokafka"}


def test_ledger_never_reads_the_clock():
    offenders = []
    for path in LEDGER.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in CLOCK_CALLS
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id in {"datetime", "date", "time"}
            ):
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []
