"""``services.tuning``: which mappings are asked for huge pages, and that the
kernel maps them so where it can."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from services import tuning as huge_pages
from services.tuning import HUGE_PAGE, collapse_heap, heap_ranges, thp_mode

MIB = 1 << 20


def _mapping(low: int, high: int, perms: str, name: str, rss_kb: int) -> str:
    return (
        f"{low:x}-{high:x} {perms} 00000000 00:00 0    {name}\n"
        f"Size:  {(high - low) // 1024} kB\nRss:  {rss_kb} kB\nAnonymous:  {rss_kb} kB\n"
    )


def test_only_dense_private_writable_anonymous_memory_is_asked_for_huge_pages():
    base = 0x7F0000000000
    smaps = "".join(
        [
            # An arena region, not aligned at either end: its aligned middle.
            _mapping(base + MIB, base + 9 * MIB, "rw-p", "", 8 * 1024),
            _mapping(base + 16 * MIB, base + 20 * MIB, "rw-p", "[heap]", 4 * 1024),
            # A thread's stack: 8 MiB reserved, 64 KiB touched.
            _mapping(base + 32 * MIB, base + 40 * MIB, "rw-p", "", 64),
            _mapping(base + 48 * MIB, base + 52 * MIB, "rw-p", "/usr/lib/libc.so.6", 4096),
            _mapping(base + 64 * MIB, base + 68 * MIB, "r--p", "", 4096),
            _mapping(base + 80 * MIB, base + 84 * MIB, "rw-s", "", 4096),
            _mapping(base + 96 * MIB, base + 100 * MIB, "rw-p", "[stack]", 4096),
            # Less than one aligned huge page.
            _mapping(base + 113 * MIB, base + 115 * MIB, "rw-p", "", 2 * 1024),
        ]
    )

    assert heap_ranges(smaps) == [(base + 2 * MIB, 6 * MIB), (base + 16 * MIB, 4 * MIB)]
    assert all(
        start % HUGE_PAGE == 0 and length % HUGE_PAGE == 0 for start, length in heap_ranges(smaps)
    )


def test_the_kernels_mode_is_the_bracketed_word(tmp_path: Path):
    enabled = tmp_path / "enabled"
    enabled.write_text("always [madvise] never\n")
    assert thp_mode(enabled) == "madvise"
    enabled.write_text("always madvise [never]\n")
    assert thp_mode(enabled) == "never"
    assert thp_mode(tmp_path / "missing") == ""


_PROBE = """
import json, os
from services.tuning import collapse_heap
def anon_huge():
    with open("/proc/self/smaps") as f:
        return sum(int(l.split()[1]) for l in f if l.startswith("AnonHugePages:")) * 1024
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) * 1024
kept = [os.urandom(100) for _ in range(1_000_000)]  # about 130 MB of small objects
before, rss_before = anon_huge(), rss()
found = collapse_heap()
print(json.dumps({"collapsed": found.collapsed, "skipped": found.skipped,
                  "before": before, "after": anon_huge(),
                  "rss_before": rss_before, "rss_after": rss()}))
"""


def _kernel_at_least(major: int, minor: int) -> bool:
    release = os.uname().release.split("-")[0].split(".")
    return (int(release[0]), int(release[1])) >= (major, minor)


def test_a_heap_of_small_objects_is_mapped_with_huge_pages_where_the_kernel_can():
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True
    ).stdout
    found = json.loads(out)
    if sys.platform.startswith("linux") and thp_mode() in ("always", "madvise"):
        if _kernel_at_least(6, 1):  # MADV_COLLAPSE
            assert found["skipped"] == ""
            assert found["collapsed"] >= 32 * MIB
            assert found["after"] - found["before"] >= 32 * MIB
            # The same memory in bigger pages, not more of it.
            assert found["rss_after"] - found["rss_before"] < 16 * MIB
            return
    # No huge pages to be had here: the heap is left as it was, and the call says why.
    assert found["collapsed"] == 0
    assert found["skipped"]


def test_a_process_that_cannot_read_its_mappings_is_left_as_it_was(monkeypatch, tmp_path):
    # A start must never fail over an optimisation: settle_heap logs the reason.
    monkeypatch.setattr(huge_pages, "_SMAPS", tmp_path / "unreadable")
    monkeypatch.setattr(huge_pages, "thp_mode", lambda: "madvise")
    found = collapse_heap()
    assert found.collapsed == 0
    assert "cannot ask the kernel" in found.skipped


def test_collapsing_is_safe_to_repeat():
    first, second = collapse_heap(), collapse_heap()
    assert bool(first.skipped) == bool(second.skipped)
