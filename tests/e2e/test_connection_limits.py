"""What one client connection may hold, through the real server (embedded default).

The gRPC port caps the calls open at once on a connection (a client's next call
waits for one to end, it is not refused), pings a connection that sends nothing
and closes it under a peer that no longer answers (its calls end), refuses a
client that pings too often, takes one that pings within the limit, and closes a
connection that holds no call for long. One service with small limits serves
those tests; none of the limits is gRPC's default. Another, with a maximum age and
no grace, moves new calls to a new connection and keeps an open watch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from datetime import timedelta
from typing import Any

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import consent_service_pb2_grpc as api_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.bootstrap import Runtime
from services.settings import ConnectionLimits
from tests.e2e.harness import TOKENS, client, define, now, opt_in
from tests.e2e.test_metrics import scrape

pytestmark = pytest.mark.asyncio(loop_scope="session")

PHONE = "+14155552671"
LIMITS = ConnectionLimits(
    max_concurrent_streams=2,
    keepalive_time=1.0,
    keepalive_timeout=1.0,
    min_ping_interval=0.2,
    max_ping_strikes=1,
    max_idle=1.0,
)


async def served(
    module_serve: Callable[..., Awaitable[Runtime]], limits: ConnectionLimits, **changes: Any
) -> Runtime:
    """A service on the embedded default with ``limits``, and a change of acme's for
    every watch to start with."""
    at = now() - timedelta(days=1)
    runtime = await module_serve(
        on_kafka=False, campaigns=[define("acme", "promo", at)], connections=limits, **changes
    )
    async with client(runtime.address) as admin:
        await admin.RecordOptIn(opt_in(PHONE, "acme", "promo", at + timedelta(hours=1)))
    return runtime


@pytest.fixture(scope="module")
async def runtime(module_serve: Callable[..., Awaitable[Runtime]]) -> Runtime:
    return await served(
        module_serve, LIMITS, metrics_listen="127.0.0.1:0", health_listen="127.0.0.1:0"
    )


async def watching(channel: grpc.aio.Channel) -> grpc.aio.UnaryStreamCall:
    """A watch of acme's changes, open on the server: its first change has come."""
    call = api_grpc.ConsentServiceStub(channel).WatchConsentChanges(
        api.WatchConsentChangesRequest(brand="acme"),
        metadata=[("authorization", f"Bearer {TOKENS['acme-app'][0]}")],
        timeout=30,
    )
    async with asyncio.timeout(10):
        assert await call.read() is not grpc.aio.EOF
    return call


async def open_watches(runtime: Runtime) -> float:
    """Watches the server is serving: started, less ended (whatever their status).
    Scraped off the loop, which relays the pings of ``Blackhole``'s connections."""
    assert runtime.metrics_address is not None
    samples = await asyncio.to_thread(scrape, runtime.metrics_address)
    count = 0.0
    for (name, labels), value in samples.items():
        if ("grpc_method", "WatchConsentChanges") not in labels:
            continue
        if name == "grpc_server_started_total":
            count += value
        elif name == "grpc_server_handled_total":
            count -= value
    return count


async def until(condition: Callable[[], Awaitable[bool]], within: float) -> float:
    """Seconds until ``condition`` held; fails the test after ``within``."""
    started = time.monotonic()
    while not await condition():
        assert time.monotonic() - started < within, "not within the time allowed"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def test_a_call_past_the_streams_cap_waits_for_one_to_end(runtime: Runtime) -> None:
    async with grpc.aio.insecure_channel(runtime.address) as channel:
        first, second = await watching(channel), await watching(channel)
        third = asyncio.ensure_future(
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        )
        await asyncio.sleep(0.5)
        assert not third.done(), "a third call ran beside two open streams"
        first.cancel()
        async with asyncio.timeout(5):
            answer = await third  # waited, not refused
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        second.cancel()


class Blackhole:
    """A TCP relay to ``port`` that, once ``cut``, passes nothing either way and
    closes nothing: a peer whose host vanished without a FIN. It counts the
    connections it relayed."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cut = False
        self.connections = 0
        self._tasks: list[asyncio.Task[None]] = []

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        try:
            yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        finally:
            server.close()
            for task in self._tasks:
                task.cancel()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.port)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            while data := await source.read(65536):
                if not self.cut:
                    sink.write(data)
                    await sink.drain()

        for source, sink in ((reader, up_writer), (up_reader, writer)):
            self._tasks.append(asyncio.create_task(pipe(source, sink)))


async def test_a_peer_that_vanished_is_found_and_its_stream_ends(runtime: Runtime) -> None:
    blackhole = Blackhole(int(runtime.address.rsplit(":", 1)[1]))
    async with blackhole.serving() as address, grpc.aio.insecure_channel(address) as channel:
        before = await open_watches(runtime)
        call = await watching(channel)
        assert await open_watches(runtime) == before + 1
        await asyncio.sleep(LIMITS.keepalive_time * 1.5)  # idle but answering: pinged, kept
        assert await open_watches(runtime) == before + 1
        blackhole.cut = True

        async def released() -> bool:
            return await open_watches(runtime) == before

        # A ping within keepalive_time, unanswered for keepalive_timeout: closed.
        took = await until(released, within=5)
        assert took <= LIMITS.keepalive_time + LIMITS.keepalive_timeout + 1
        call.cancel()


SETTINGS, PING, GOAWAY = 0x4, 0x6, 0x7
ACK = 0x1
ENHANCE_YOUR_CALM = 0xB


def frame(kind: int, flags: int = 0, payload: bytes = b"") -> bytes:
    """An HTTP/2 frame on the connection's stream (0)."""
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + bytes(4) + payload


async def goaway_to_pinger(address: str, every: float, within: float) -> tuple[int, bytes] | None:
    """The GOAWAY (error code, debug text) a connection that opens no call and
    pings every ``every`` seconds gets within ``within``, if any. gRPC's own clients
    ping once a second at most, so this one speaks HTTP/2 itself."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(SETTINGS))

    async def goaway() -> tuple[int, bytes]:
        while True:
            head = await reader.readexactly(9)
            kind, flags = head[3], head[4]
            payload = await reader.readexactly(int.from_bytes(head[:3], "big"))
            if kind == SETTINGS and not flags & ACK:
                writer.write(frame(SETTINGS, ACK))
            elif kind == PING and not flags & ACK:
                writer.write(frame(PING, ACK, payload))
            elif kind == GOAWAY:
                return int.from_bytes(payload[4:8], "big"), payload[8:]

    async def ping() -> None:
        for n in range(10**6):
            writer.write(frame(PING, 0, n.to_bytes(8, "big")))
            await asyncio.sleep(every)

    pinging = asyncio.create_task(ping())
    try:
        async with asyncio.timeout(within):
            return await goaway()
    except TimeoutError:
        return None
    finally:
        pinging.cancel()
        writer.close()


async def test_a_client_pinging_too_often_is_disconnected(runtime: Runtime) -> None:
    # Before the idle limit: its pings are no call.
    refused = await goaway_to_pinger(runtime.address, every=0.1, within=LIMITS.max_idle / 2)
    assert refused == (ENHANCE_YOUR_CALM, b"too_many_pings")


async def test_a_client_pinging_within_the_limit_keeps_its_stream(runtime: Runtime) -> None:
    # Once a second (gRPC's clients ping no faster), on a stream that gets no data
    # for long: taken at the 0.2 s asked; gRPC's default (5 minutes) would refuse it
    # at the third ping.
    pings = [
        ("grpc.keepalive_time_ms", 1000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    async with grpc.aio.insecure_channel(runtime.address, options=pings) as channel:
        call = await watching(channel)
        read = asyncio.ensure_future(call.read())
        await asyncio.sleep(3.5)
        assert not read.done(), f"the stream ended: {read.exception() or read.result()}"
        call.cancel()
        with suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await read


async def test_a_connection_with_no_call_is_closed_and_reopened(runtime: Runtime) -> None:
    async with grpc.aio.insecure_channel(runtime.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert channel.get_state() == grpc.ChannelConnectivity.READY

        async def closed() -> bool:
            return channel.get_state() != grpc.ChannelConnectivity.READY

        took = await until(closed, within=5)
        assert took >= LIMITS.max_idle - 0.2
        answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_the_plaintext_health_port_holds_a_connection_to_the_same_limits(
    runtime: Runtime,
) -> None:
    # It takes no token: without the limits anyone who reached it could hold a
    # connection, and its health watches, for ever, and ping it as often as it liked.
    address = runtime.server.health_address if runtime.server else None
    assert address is not None
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watches = [health.Watch(health_pb2.HealthCheckRequest(), timeout=10) for _ in range(2)]
        for watch in watches:
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        third = asyncio.ensure_future(health.Check(health_pb2.HealthCheckRequest(), timeout=10))
        await asyncio.sleep(0.5)
        assert not third.done(), "a third call ran beside two open streams"
        watches[0].cancel()
        async with asyncio.timeout(5):
            await third
        watches[1].cancel()

        async def closed() -> bool:
            return channel.get_state() != grpc.ChannelConnectivity.READY

        assert await until(closed, within=5) >= LIMITS.max_idle - 0.2
    refused = await goaway_to_pinger(address, every=0.1, within=LIMITS.max_idle / 2)
    assert refused == (ENHANCE_YOUR_CALM, b"too_many_pings")


async def test_an_aged_connection_takes_no_new_call_but_keeps_its_watch(
    module_serve: Callable[..., Awaitable[Runtime]],
) -> None:
    # With no grace (the default once an age is set), a watch open at the age runs
    # on; the client's next calls go over a new connection (to another replica,
    # behind a balancer of connections).
    aged = await served(module_serve, ConnectionLimits(max_age=1.0))
    relay = Blackhole(int(aged.address.rsplit(":", 1)[1]))
    async with relay.serving() as address, grpc.aio.insecure_channel(address) as channel:
        call = await watching(channel)
        read = asyncio.ensure_future(call.read())
        await asyncio.sleep(2.5)  # the age, give or take its 10 % jitter, and then some
        assert not read.done(), f"the watch ended: {read.exception() or read.result()}"
        answer = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        assert relay.connections == 2
        call.cancel()
        with suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await read
