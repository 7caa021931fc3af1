"""The process set up for serving, once it holds the replica (``settle_heap``): the
cyclic collector kept off the long-lived heap, and the heap in huge pages.

Huge pages.
CanSend reads the digest replica (``services.adapters.digest_replica``) at random:
a million subscribers' digests and phone strings are some 300 MB of small objects,
and each number a batch checks touches several of them, each on another 4 KiB
page. On such a working set the processor's address-translation cache misses on
nearly every read. With 2 MiB pages it covers 512 times as much memory.

Linux backs anonymous memory with huge pages on its own only when
``/sys/kernel/mm/transparent_hugepage/enabled`` says ``always``; the usual
default is ``madvise``, which waits to be asked. ``collapse_heap`` asks: for every
private, writable, anonymous mapping of the process (CPython's heap, its object
arenas), ``madvise(MADV_HUGEPAGE)`` marks it, so the kernel's background
collapser keeps it in huge pages, and ``madvise(MADV_COLLAPSE)`` (Linux 6.1 or
later) collapses what exists now, at once. Nothing else changes: the memory is
the same, only the size of the pages the kernel maps it with. Where that cannot
be done (another system, an older kernel, huge pages disabled, no contiguous
memory free), the heap stays as it was and the call says why.
bench/HISTORY.md ("Huge pages") has what it was measured to be worth.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

HUGE_PAGE = 2 << 20
MADV_HUGEPAGE = 14
MADV_COLLAPSE = 25
_SMAPS = Path("/proc/self/smaps")
"""Read by ``collapse_heap``; a test points it elsewhere."""
_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")


@dataclass(frozen=True)
class Collapsed:
    """What ``collapse_heap`` did: bytes now in huge pages, bytes it could not
    collapse, and why nothing was done at all (empty when it tried)."""

    collapsed: int = 0
    left: int = 0
    skipped: str = ""


def thp_mode(path: Path = _ENABLED) -> str:
    """The kernel's transparent huge page mode (``always``, ``madvise``,
    ``never``), or "" where there is none to read."""
    try:
        text = path.read_text()
    except OSError:
        return ""
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else ""


def heap_ranges(smaps: str) -> list[tuple[int, int]]:
    """The 2 MiB-aligned parts, 2 MiB or more, of the private, writable, anonymous
    mappings in ``smaps`` (the text of ``/proc/self/smaps``) that are nearly all
    resident: CPython's heap and its object arenas. File mappings are left out, and
    so are sparse ones, such as threads' stacks: ``MADV_COLLAPSE`` fills a huge page
    whole, and would make a stack's untouched megabytes resident."""
    ranges = []
    header: list[str] | None = None
    for line in smaps.splitlines():
        fields = line.split(maxsplit=5)
        if fields and "-" in fields[0] and not fields[0].endswith(":"):
            header = fields
        elif header is not None and fields[:1] == ["Rss:"]:
            resident = int(fields[1]) * 1024
            perms = header[1]
            name = header[5].strip() if len(header) == 6 else ""
            low, high = (int(x, 16) for x in header[0].split("-"))
            header = None
            if not perms.startswith("rw") or perms[3] != "p" or name not in ("", "[heap]"):
                continue
            if resident < 0.9 * (high - low):
                continue
            start = (low + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1)
            end = high & ~(HUGE_PAGE - 1)
            if end - start >= HUGE_PAGE:
                ranges.append((start, end - start))
    return ranges


def collapse_heap() -> Collapsed:
    """Ask the kernel to map the heap as it is now with huge pages (see above)."""
    if not sys.platform.startswith("linux"):
        return Collapsed(skipped=f"not Linux ({sys.platform})")
    mode = thp_mode()
    if mode not in ("always", "madvise"):
        return Collapsed(skipped=f"transparent huge pages are {mode or 'unavailable'}")
    try:
        ranges = heap_ranges(_SMAPS.read_text())
        madvise = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).madvise
    except (OSError, AttributeError) as e:  # a restricted /proc, no C library to call
        return Collapsed(skipped=f"cannot ask the kernel: {e}")
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    collapsed = left = 0
    errors: set[str] = set()
    for start, length in ranges:
        # Either may fail for a range (memory freed meanwhile, none contiguous to
        # spare): that range keeps its small pages, and the rest go on.
        madvise(start, length, MADV_HUGEPAGE)
        if madvise(start, length, MADV_COLLAPSE) == 0:
            collapsed += length
        else:
            left += length
            errors.add(os.strerror(ctypes.get_errno()))
    if not collapsed and errors:
        return Collapsed(left=left, skipped="; ".join(sorted(errors)))
    return Collapsed(collapsed, left)


log = logging.getLogger(__name__)


def settle_heap() -> Collapsed:
    """Set up the heap for serving; call once, after ``Runtime.start`` (from a worker
    thread, as ``consent-ledger serve`` does, so the event loop keeps answering).

    Everything allocated by then (modules, the gRPC and protobuf machinery, the
    service's objects) lives as long as the process, yet CPython's cyclic
    collector would traverse it again and again: a 1,000-number batch check
    allocates some ten thousand tuples that outlive the young collections they
    trigger, and the full collections they add up to scan every object in the
    process. ``gc.freeze`` moves what exists now out of the collector's sight;
    objects made later, and the cycles among them, are collected as before. The
    youngest generation is collected after 10,000 net allocations instead of 700,
    so a batch's short-lived tuples are mostly gone before a collection looks.
    bench/HISTORY.md ("The garbage collector") has what each was measured to be worth.

    Then the heap, the digest replica's included, is mapped with huge pages where
    the system allows (``collapse_heap``), and the log says how much.
    """
    settle_collector()
    found = collapse_heap()
    if found.skipped:
        log.info("heap left in small pages: %s", found.skipped)
    else:
        log.info(
            "heap: %d MiB mapped with huge pages (%d MiB could not be)",
            found.collapsed >> 20,
            found.left >> 20,
        )
    return found


YOUNG_THRESHOLD = 10_000

PROJECTION_YOUNG_THRESHOLD = 200_000
"""For a process that only folds the ledger (``consent-ledger project``, ``rebuild``
and its workers). A batch of 5,000 events holds some 100,000 objects (its events,
states, digests and rows) until its commit frees them all by reference count; at
10,000 every young collection, and every tenth's middle-generation one, went over
them and found next to nothing to free: 6-8 % of the process's CPU (bench/HISTORY.md,
"The projection's Python per event, a third time"). Above a batch's count, the
collector runs only when garbage cycles outlive the batches. (At CPython's 700,
the full collections they added up to cost more still: "The projection's CPU".)"""


def settle_collector(young: int = YOUNG_THRESHOLD) -> None:
    """The collector's half of ``settle_heap``: what exists now frozen out of its
    sight, and the youngest generation collected after ``young`` net allocations.
    A process that only projects calls it alone (it holds no replica), with
    ``PROJECTION_YOUNG_THRESHOLD``."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(young, older, oldest)
