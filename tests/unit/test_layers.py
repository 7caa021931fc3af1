"""The tree says the architecture: drivers are imported only at the edges, and the
settings are plain data that nothing they configure is imported by."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ROOT / "services"
DRIVERS = {"aiokafka", "asyncpg"}
EDGES = ("adapters/", "consumer/", "bootstrap.py", "cli")
"""The adapters, the Kafka client library for other services, the composition root
and the command lines: the only modules that may talk to Kafka or PostgreSQL."""


def _imports(path: Path) -> set[str]:
    """Every absolute module ``path`` imports, in full (``services.adapters.x``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_only_the_edges_import_a_kafka_or_postgresql_driver():
    offenders = {}
    for path in sorted(SERVICES.rglob("*.py")):
        where = path.relative_to(SERVICES).as_posix()
        drivers = {name.split(".")[0] for name in _imports(path)} & DRIVERS
        if drivers and not where.startswith(EDGES):
            offenders[where] = sorted(drivers)
    assert offenders == {}


def test_settings_import_only_the_domain_and_the_standard_library():
    ours = {
        name
        for name in _imports(SERVICES / "settings.py")
        if name.split(".")[0] in {"services", "ledger"}
    }
    assert {name for name in ours if not name.startswith("ledger.")} == set()


def test_the_layer_checks_would_catch_an_offender(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from aiokafka import AIOKafkaConsumer\n"
        "def f():\n"
        "    from services.adapters.kafka_ledger import KafkaLedger\n"
    )
    assert _imports(bad) == {"aiokafka", "services.adapters.kafka_ledger"}
