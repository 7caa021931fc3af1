"""``settle_heap``: what ``consent-ledger serve`` does to the garbage collector once
started. Run in a child interpreter, so this test process keeps its own settings."""

from __future__ import annotations

import json
import subprocess
import sys

_PROBE = """
import gc, json, weakref
from services.tuning import settle_heap
before = gc.get_freeze_count()

class Node:
    pass

settle_heap()
frozen = gc.get_freeze_count()
a, b = Node(), Node()
a.other, b.other = b, a  # a cycle made after the freeze, then dropped
ref = weakref.ref(a)
del a, b
gc.collect()
print(json.dumps({
    "before": before, "frozen": frozen, "collected": ref() is None,
    "threshold": gc.get_threshold(),
}))
"""


def test_settle_heap_freezes_what_exists_and_still_collects_later_cycles():
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True
    ).stdout
    found = json.loads(out)
    assert found["before"] == 0
    assert found["frozen"] > 1000  # the modules, classes and functions loaded by then
    assert found["collected"] is True  # garbage cycles made later are still collected
    assert found["threshold"] == [10_000, 10, 10]  # CPython's defaults are 700, 10, 10


def test_settle_collector_is_settle_heaps_collector_half():
    """What ``consent-ledger rebuild`` does (it holds no replica to map in huge pages)."""
    probe = _PROBE.replace("settle_heap", "settle_collector")
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    found = json.loads(out)
    assert found["before"] == 0
    assert found["frozen"] > 1000
    assert found["collected"] is True
    assert found["threshold"] == [10_000, 10, 10]


def test_a_projecting_process_collects_its_young_objects_less_often_and_still_collects():
    """What ``consent-ledger project`` and ``rebuild`` do: their batches' objects are
    freed by reference count at the commit, so the young collections wait longer."""
    probe = _PROBE.replace("settle_heap", "settle_collector").replace(
        "settle_collector()", "settle_collector(PROJECTION_YOUNG_THRESHOLD)"
    )
    probe = probe.replace(
        "import settle_collector", "import PROJECTION_YOUNG_THRESHOLD, settle_collector"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    found = json.loads(out)
    assert found["frozen"] > 1000
    assert found["collected"] is True
    assert found["threshold"] == [200_000, 10, 10]
