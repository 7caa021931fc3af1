"""``ImportConsents`` answers each chunk as soon as it is appended (real Kafka, real
PostgreSQL): a client that waits for a chunk's answer before sending the next is
not kept waiting for a chunk it has not sent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api

from tests.e2e.harness import Clock, client, define, opt_in

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_chunk_is_answered_before_the_next_is_sent(serve):
    """Each chunk was answered only once the next chunk came or the stream ended: a
    client that sent one chunk and waited for its answer stalled to its deadline."""
    clock = Clock()
    runtime = await serve(
        clock=clock, campaigns=[define("acme", "promo", clock.now - timedelta(days=1))]
    )
    chunks: asyncio.Queue[api.ImportConsentsRequest | None] = asyncio.Queue()

    async def sent() -> AsyncIterator[api.ImportConsentsRequest]:
        while (chunk := await chunks.get()) is not None:
            yield chunk

    def chunk(*phones: str) -> api.ImportConsentsRequest:
        return api.ImportConsentsRequest(
            records=[
                api.ImportRecord(opt_in=opt_in(p, "acme", "promo", clock.now, f"answer-{p}"))
                for p in phones
            ]
        )

    async with client(runtime.address, "acme-app") as app:
        stream = app.stub.ImportConsents(
            sent(), metadata=[("authorization", f"Bearer {app.token}")], timeout=8
        )
        started = asyncio.get_running_loop().time()
        await chunks.put(chunk("+14155550161", "+14155550162"))
        first = await stream.read()
        await chunks.put(chunk("+14155550162", "+14155550163"))
        second = await stream.read()
        await chunks.put(None)
        assert await stream.read() is grpc.aio.EOF
        took = asyncio.get_running_loop().time() - started
    assert (first.first_index, first.imported, first.already_present) == (0, 2, 0)
    assert (second.first_index, second.imported, second.already_present) == (2, 1, 1)
    assert took < 6, f"the import took {took:.1f} s of its 8 s deadline"

