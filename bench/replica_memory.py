"""``python -m bench.replica_memory``: how the replica's memory moves under updates.

    python -m bench.replica_memory [--subscribers N] [--updates M] [--reports K]
                                   [--refresh-every R] [--seed S]

The replica (``DigestReplica``) keeps its digests in a ``CompactDigests`` for as long
as the process runs. This loads N subscribers into one (as a first refresh does),
then applies M digest updates the way later refreshes do, R at a time, and prints,
K times along the way, the process's resident memory (VmRSS) and the copy's own
byte counts (``CompactDigests.stats``). No Kafka or PostgreSQL: the digests are
made here, so the figures are the copy's alone.

The updates are those of a long-running pod: each is a send recorded for a random
subscriber, so its digest changes every day.

* Each subscriber has a ``welcome`` grant; each day's campaign (``daily-<day>``,
  a new name every day: a new shape) counts the day's sends, up to four marks,
  then the next day's replaces it: digests grow, then shrink, and move.
* One update in ten also leaves a reply awaiting review, with a text of its own
  (a new string in the table of strings); the subscriber's next update resolves it.

After each refresh's updates the copy gets ``DigestReplica``'s upkeep: a bounded
step of compaction when one is due (``--compact-step 0`` leaves it out, as before
compaction was built). ``upkeep_worst_ms`` is the longest step: how long CanSend
may wait behind one (``upkeep_worst_cpu_ms`` the CPU of the costliest: the wall
time less waits for a core); ``step_p99_ms`` the 99th percentile of the steps
taken while a compaction was under way. ``--final-compaction`` then compacts the
copy whole (no writes between steps) and reports its steps' CPU and wall time.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import time
from array import array
from typing import Any

from bench.cpu import rss_bytes
from ledger.digest import CampaignDigest, Digest, Mark, Pending
from services.adapters.digest_replica import CompactDigests, Compaction

_BRAND = "acme"
_DAY = 86_400_000_000
"""A day in microseconds, as digests count time."""


def _event_id(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _phone(i: int) -> str:
    return f"+1{2_000_000_000 + i}"


def digest_for(rng: random.Random, day: int, sends: int, reply: str | None, offset: int) -> Digest:
    """A subscriber's digest on ``day`` after ``sends`` sends that day, with
    ``reply`` awaiting review (or none)."""
    start = 1_700_000_000_000_000
    grant = Mark(start, offset % 2**31, _event_id(rng))
    campaigns = {"welcome": CampaignDigest(grant=grant, tier=1)}
    if sends:
        marks = tuple(
            Mark(start + day * _DAY + n, (offset + n) % 2**31, _event_id(rng))
            for n in range(min(sends, 4))
        )
        campaigns[f"daily-{day}"] = CampaignDigest(
            grant=grant, sent=marks, first_sent_at=marks[-1].at
        )
    pending: tuple[Pending, ...] = ()
    if reply is not None:
        pending = (
            Pending(_event_id(rng), reply, start + day * _DAY, False, False, False, False, False),
        )
    return Digest(brand=_BRAND, zones=("America/New_York",), pending=pending, campaigns=campaigns)


def step_upkeep(store: CompactDigests, state: dict[str, Any], step: float) -> CompactDigests:
    """What ``DigestReplica._compact`` does to its copy after a refresh: a step of
    at most ``step`` seconds of compaction when one is due, and the compacted copy
    in place of ``store`` once it is whole."""
    compaction = state.get("compaction")
    if compaction is None:
        if step <= 0 or not store.wants_compaction():
            return store
        compaction = state["compaction"] = Compaction(store)
    compacted = compaction.step(step)
    if compacted is None:
        return store
    state["compaction"] = None
    state["compactions"] = state.get("compactions", 0) + 1
    return compacted


def run(
    subscribers: int,
    updates: int,
    reports: int,
    refresh_every: int,
    seed: int,
    step: float,
    final: bool = False,
) -> None:
    rng = random.Random(seed)
    gc.collect()
    before = rss_bytes([os.getpid()])
    store = CompactDigests()
    for i in range(subscribers):
        store.add(_BRAND, _phone(i), digest_for(rng, 0, 0, None, i))
    store.seal()
    gc.collect()
    print(
        json.dumps(
            {
                "at": "loaded",
                "subscribers": subscribers,
                "rss_mib": round((rss_bytes([os.getpid()]) - before) / 2**20, 1),
                **store.stats(),
            }
        ),
        flush=True,
    )
    # Per subscriber: the day of its last update and its sends that day.
    last_day = array("i", bytes(4 * subscribers))
    sends = array("B", bytes(subscribers))
    per_day = max(1, subscribers // 2)  # half the subscribers get a send a day
    state: dict[str, Any] = {}
    upkeep_worst = upkeep_cpu_worst = 0.0
    steps: list[float] = []
    step_cpus: list[float] = []
    started = time.perf_counter()
    for u in range(1, updates + 1):
        i = rng.randrange(subscribers)
        day = u // per_day
        if last_day[i] != day:
            last_day[i], sends[i] = day, 0
        sends[i] = min(sends[i] + 1, 255)
        reply = f"reply {u}: is this the right number?" if u % 10 == 0 else None
        store.put(_BRAND, _phone(i), digest_for(rng, day, sends[i], reply, u))
        if u % refresh_every == 0:
            t, cpu = time.perf_counter(), time.thread_time()
            store = step_upkeep(store, state, step)
            took, cpu = time.perf_counter() - t, time.thread_time() - cpu
            upkeep_worst = max(upkeep_worst, took)
            upkeep_cpu_worst = max(upkeep_cpu_worst, cpu)
            if state.get("compaction") is not None or cpu > 0.001:
                steps.append(took)
                step_cpus.append(cpu)
        if u % max(1, updates // reports) == 0:
            gc.collect()
            print(
                json.dumps(
                    {
                        "at": u,
                        "day": day,
                        "rss_mib": round((rss_bytes([os.getpid()]) - before) / 2**20, 1),
                        "upkeep_worst_ms": round(upkeep_worst * 1000, 2),
                        "upkeep_worst_cpu_ms": round(upkeep_cpu_worst * 1000, 2),
                        "steps": len(steps),
                        "step_p99_ms": _p99_ms(steps),
                        "step_cpu_p99_ms": _p99_ms(step_cpus),
                        "compactions": state.get("compactions", 0),
                        "seconds": round(time.perf_counter() - started, 1),
                        **store.stats(),
                    }
                ),
                flush=True,
            )
    if final:
        while state.get("compaction") is not None:  # one under way: let it finish first
            store = step_upkeep(store, state, step)
        held = [store]
        del store
        print(json.dumps({"at": "compacted", **full_compaction(held, step)}), flush=True)


def full_compaction(held: list[CompactDigests], step: float) -> dict[str, float]:
    """One whole compaction of the copy in ``held`` (its only reference) now, in
    steps of ``step`` seconds (with no writes between them): how long it took, what
    its steps cost, and dropping the old copy at the swap."""
    compaction = Compaction(held.pop())
    walls, cpus = [], []
    started, cpu_started = time.perf_counter(), time.thread_time()
    while True:
        t, cpu = time.perf_counter(), time.thread_time()
        compacted = compaction.step(step)
        walls.append(time.perf_counter() - t)
        cpus.append(time.thread_time() - cpu)
        if compacted is not None:
            break
    t, cpu = time.perf_counter(), time.thread_time()
    del compaction  # the old copy's last reference, as at the replica's swap
    freed_cpu = time.thread_time() - cpu
    return {
        "compaction_steps": len(walls),
        "compaction_cpu_s": round(time.thread_time() - cpu_started, 2),
        "compaction_wall_s": round(time.perf_counter() - started, 2),
        "step_worst_cpu_ms": round(max(cpus) * 1000, 2),
        "step_cpu_p99_ms": _p99_ms(cpus),
        "step_worst_ms": round(max(walls) * 1000, 2),
        "step_p99_ms": _p99_ms(walls),
        "old_copy_freed_ms": round((time.perf_counter() - t) * 1000, 2),
        "old_copy_freed_cpu_ms": round(freed_cpu * 1000, 2),
        **{f"after_{k}": v for k, v in compacted.stats().items()},
    }


def _p99_ms(values: list[float]) -> float:
    return round(sorted(values)[int(len(values) * 0.99)] * 1000, 2) if values else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=100_000)
    parser.add_argument("--updates", type=int, default=1_000_000)
    parser.add_argument("--reports", type=int, default=10)
    parser.add_argument(
        "--refresh-every", type=int, default=100, help="updates a refresh applies (upkeep after)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--compact-step",
        type=float,
        default=0.005,
        help="seconds of compaction per refresh, as DigestReplica's default (0: never compact)",
    )
    parser.add_argument(
        "--final-compaction",
        action="store_true",
        help="at the end, compact the copy whole and report its steps and duration",
    )
    args = parser.parse_args()
    run(
        args.subscribers,
        args.updates,
        args.reports,
        args.refresh_every,
        args.seed,
        args.compact_step,
        args.final_compaction,
    )


if __name__ == "__main__":
    main()
