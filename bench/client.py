"""The load generator: the same harness for the echo baseline and the service.

Each client process runs a uvloop event loop with ``concurrency`` coroutines, each
calling one method in a loop with pre-serialized requests (raw bytes both ways: the
client parses nothing, for the baseline or the service). Every call sends the same
``authorization`` metadata. The coroutines share a few channels, each with its own
TCP connection (``grpc.use_local_subchannel_pool``), so that ``so_reuseport`` can
spread connections over several server processes; each call takes the next channel.

All processes start together, warm up, then count the calls that *complete* inside
one common window of ``duration`` seconds (``time.monotonic`` is system-wide on
Linux) and time each of them.

A write must not repeat a request id (a repeat is answered from the first, writing
nothing), so a write load names ``unique`` fields: each call appends to its
pre-serialized request one more value of each, unique to the call. Protobuf keeps
the last value of a repeated scalar field, so the server reads the unique one.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import grpc


@dataclass(frozen=True)
class Load:
    address: str
    method: str
    requests: Sequence[bytes]
    metadata: tuple[tuple[str, str], ...]
    concurrency: int
    duration: float
    warmup: float = 2.0
    processes: int = 1
    channels_per_process: int = 8
    timeout: float = 30.0
    unique: tuple[int, ...] = ()
    """Numbers of string fields given a value of their own in every call."""
    tag: str = ""
    """Begins every unique value: one per run and phase, so that no two phases share one."""
    items: Sequence[Sequence[bytes]] = ()
    """Batches of items, each item pre-serialized: every call appends one batch's items
    (the next batch each call) to its request, each as field ``item_field``, with its
    ``item_unique`` fields given a value of its own (the call's, then the item's
    place): a batch of sends names new message ids."""
    item_field: int = 0
    item_unique: tuple[int, ...] = ()


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def message_field(number: int, value: bytes) -> bytes:
    """The wire encoding of an embedded message (or any length-delimited) field."""
    return _varint((number << 3) | 2) + _varint(len(value)) + value


def batch_items(load: Load, value: str, call: int = 0) -> bytes:
    """The ``call``-th batch of ``load.items`` as a request's repeated field, each
    item's unique fields set to ``value`` and its place."""
    if not load.items:
        return b""
    return b"".join(
        message_field(
            load.item_field,
            item + b"".join(string_field(f, f"{value}.{j}".encode()) for f in load.item_unique),
        )
        for j, item in enumerate(load.items[call % len(load.items)])
    )


def string_field(number: int, value: bytes) -> bytes:
    """The wire encoding of a string field (lengths below 128 bytes)."""
    if number >= 16 or len(value) >= 128:
        raise ValueError("string_field encodes field numbers below 16 and values below 128 bytes")
    return bytes(((number << 3) | 2, len(value))) + value


@dataclass
class Result:
    calls: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: array[float] = field(default_factory=lambda: array("d"))
    first_error: str = ""

    @property
    def qps(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        """The ``q``-quantile of the call latencies, in seconds (nearest rank)."""
        if not self.latencies:
            return float("nan")
        ordered: list[float] = sorted(self.latencies)
        rank = max(0, min(len(ordered) - 1, round(q * len(ordered) + 0.5) - 1))
        return ordered[rank]

    def merge(self, other: Result) -> None:
        self.calls += other.calls
        self.errors += other.errors
        self.seconds = max(self.seconds, other.seconds)
        self.latencies.extend(other.latencies)
        self.first_error = self.first_error or other.first_error


async def _drive(load: Load, share: int, offset: int, begin: float, end: float) -> Result:
    result = Result(seconds=end - begin)
    options = [("grpc.use_local_subchannel_pool", 1)]
    # As many connections as allowed, even for a few calls in flight: the kernel hashes
    # each connection to one of the processes sharing the port, and 4 connections split
    # 3:1 or 4:0 half the time, leaving a core idle in a two-process phase.
    channels = [
        grpc.aio.insecure_channel(load.address, options=options)
        for _ in range(max(1, load.channels_per_process))
    ]
    try:
        for ch in channels:
            await asyncio.wait_for(ch.channel_ready(), 30)
        calls = [ch.unary_unary(load.method) for ch in channels]
        requests = load.requests
        n = len(requests)
        metadata = load.metadata
        unique = load.unique

        async def worker(k: int) -> None:
            turn = k  # each call takes the next connection, so every one carries calls
            i = offset + k * 7919
            lat = result.latencies
            while True:
                call = calls[turn % len(calls)]
                turn += 1
                started = time.monotonic()
                if started >= end:
                    return
                request = requests[i % n]
                if unique:
                    value = f"{load.tag}.{offset}.{k}.{i}"
                    request += b"".join(string_field(f, value.encode()) for f in unique)
                    request += batch_items(load, value, i)
                i += 1
                try:
                    await call(request, metadata=metadata, timeout=load.timeout)
                    ok = True
                except grpc.aio.AioRpcError as exc:
                    ok = False
                    error = f"{exc.code().name}: {exc.details()}"
                done = time.monotonic()
                if begin <= done < end:
                    if ok:
                        result.calls += 1
                        lat.append(done - started)
                    else:
                        result.errors += 1
                        result.first_error = result.first_error or error

        now = time.monotonic()
        if now < begin - load.warmup:
            await asyncio.sleep(begin - load.warmup - now)
        await asyncio.gather(*(worker(k) for k in range(share)))
    finally:
        for ch in channels:
            await ch.close()
    return result


def _process(
    load: Load, share: int, offset: int, begin: float, end: float, conn: Connection
) -> None:
    import uvloop

    result = uvloop.run(_drive(load, share, offset, begin, end))
    conn.send(
        (
            result.calls,
            result.errors,
            result.seconds,
            result.latencies.tobytes(),
            result.first_error,
        )
    )
    conn.close()


START_DELAY = 3.0
"""Seconds from ``run`` to the warm-up: spawned interpreters import grpc and connect."""


def run(load: Load, start_delay: float = START_DELAY) -> Result:
    """Run ``load`` from ``load.processes`` processes; their merged result."""
    processes = max(1, min(load.processes, load.concurrency))
    shares = [load.concurrency // processes] * processes
    for i in range(load.concurrency % processes):
        shares[i] += 1
    # Spawned interpreters need a moment to import grpc and connect.
    begin = time.monotonic() + start_delay + load.warmup
    end = begin + load.duration
    ctx = multiprocessing.get_context("spawn")
    procs, pipes = [], []
    for i, share in enumerate(shares):
        parent, child = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_process, args=(load, share, i * 104_729, begin, end, child))
        p.start()
        child.close()
        procs.append(p)
        pipes.append(parent)
    total = Result(seconds=load.duration)
    try:
        for pipe in pipes:
            calls, errors, seconds, raw, first_error = pipe.recv()
            latencies = array("d")
            latencies.frombytes(raw)
            total.merge(Result(calls, errors, seconds, latencies, first_error))
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    return total
