"""``settle_heap``: what ``consent-ledger serve`` does to the garbage collector once
started. Run in a child interpreter, so this test process keeps its own settings."""

from __future__ import annotations

import json
import subprocess
import sys

_PROBE = """
import gc, json
from services.bootstrap import YOUNG_COLLECTION_THRESHOLD, settle_heap
before = (gc.get_freeze_count(), gc.get_threshold())

class Node:
    pass

def cycle():
    a, b = Node(), Node()
    a.other, b.other = b, a

settle_heap()
frozen, threshold = gc.get_freeze_count(), gc.get_threshold()
for _ in range(1000):
    cycle()
collected = gc.collect()  # cycles made after the freeze are still found
print(json.dumps({"before": before, "frozen": frozen, "threshold": threshold,
                  "young": YOUNG_COLLECTION_THRESHOLD, "collected": collected}))
"""


def test_settle_heap_freezes_what_exists_and_raises_the_young_threshold():
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True
    ).stdout
    found = json.loads(out)
    assert found["before"][0] == 0
    assert found["frozen"] > 1000  # the modules, classes and functions loaded by then
    assert found["threshold"][0] == found["young"] > found["before"][1][0]
    assert found["threshold"][1:] == found["before"][1][1:]
    assert found["collected"] >= 2000  # garbage cycles are still collected
