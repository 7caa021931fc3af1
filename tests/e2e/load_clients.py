"""Client processes for the load tests: each runs its own event loop and gRPC channel,
so the load does not share the server's loop, and notes when (``time.monotonic``,
which every process on the machine shares) it sent or was answered what.

Opt-outs follow a schedule known to every process: number ``i`` is opted out at
``start + i * spacing``, so the readers can crowd the numbers whose opt-out is
near, where a stale read would show."""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path

import grpc
from consent.v1 import consent_service_pb2 as api
from consent.v1 import consent_service_pb2_grpc as api_grpc
from consent.v1 import ledger_pb2 as lpb
from google.protobuf.timestamp_pb2 import Timestamp


def phone(i: int) -> str:
    return f"+1415556{i:04d}"


def read(
    address: str, token: str, count: int, start: float, spacing: float, tasks: int, out: str
) -> None:
    """CanSend as fast as ``tasks`` concurrent callers can, until the last opt-out
    is well past; ``out`` lists (sent at, number index, allowed, reason, seconds
    to the answer)."""
    asyncio.run(_read(address, token, count, start, spacing, tasks, Path(out)))


async def _read(
    address: str, token: str, count: int, start: float, spacing: float, tasks: int, out: Path
) -> None:
    end = start + count * spacing + 0.3
    seen: list[tuple[float, int, bool, int, float]] = []
    metadata = [("authorization", f"Bearer {token}")]

    async def caller(stub: api_grpc.ConsentServiceStub) -> None:
        while (now := time.monotonic()) < end:
            # Mostly the numbers whose opt-out is due within 150 ms either side of now.
            due = int((now - start) / spacing)
            i = min(count - 1, max(0, due + random.choice((-1, 0, 0, 0, 1))))
            sent = time.monotonic()
            try:
                answer = await stub.CanSend(
                    api.CanSendRequest(phone=phone(i), brand="acme", campaign="promo"),
                    metadata=metadata,
                    timeout=5,
                )
            except grpc.aio.AioRpcError:
                continue
            seen.append((sent, i, answer.allowed, answer.reason, time.monotonic() - sent))

    async with grpc.aio.insecure_channel(address) as channel:
        stub = api_grpc.ConsentServiceStub(channel)
        await asyncio.gather(*(caller(stub) for _ in range(tasks)))
    out.write_text(json.dumps(seen))


def opt_out(
    address: str, token: str, count: int, start: float, spacing: float, at: float, out: str
) -> None:
    """Opt number ``i`` out at ``start + i * spacing`` (monotonic), each stamped ``at``
    (seconds since the epoch); ``out`` holds when each acknowledgement arrived."""
    asyncio.run(_opt_out(address, token, count, start, spacing, at, Path(out)))


async def _opt_out(
    address: str, token: str, count: int, start: float, spacing: float, at: float, out: Path
) -> None:
    acked: dict[int, float] = {}
    metadata = [("authorization", f"Bearer {token}")]
    when = Timestamp()
    when.FromNanoseconds(int(at * 1e9))
    async with grpc.aio.insecure_channel(address) as channel:
        stub = api_grpc.ConsentServiceStub(channel)
        for i in range(count):
            await asyncio.sleep(max(0.0, start + i * spacing - time.monotonic()))
            await stub.RecordOptOut(
                api.RecordOptOutRequest(
                    request_id=f"load-stop-{i}",
                    phone=phone(i),
                    brand="acme",
                    campaign="promo",
                    channel=lpb.REVOCATION_CHANNEL_API,
                    occurred_at=when,
                ),
                metadata=metadata,
                timeout=10,
            )
            acked[i] = time.monotonic()
    out.write_text(json.dumps(acked))
