"""One benchmark server process: the bare echo baseline or the real consent service.

    python -m bench.server echo    --port P --loop uvloop
    python -m bench.server consent --port P --loop asyncio --dsn ... --kafka ... --prefix ...
                                   [--ledger kafka|postgres] [--projector in-process|off]
    python -m bench.server project --port P --loop uvloop  --dsn ... (as consent's)
    python -m bench.server stub    --port P --loop uvloop [--tokens FILE]

Prints ``READY <port>`` on stdout once it serves, and stops when its stdin closes
(the parent died or is done) or on SIGTERM. With ``--profile FILE`` the process runs
under cProfile and writes the stats to FILE when it stops.

The echo server is a ``grpc.aio`` server with the very options ``GrpcServer`` uses,
and one generic handler of raw bytes: no proto parsing, no work. It answers
``/bench.Echo/Unary`` with a realistic ``CanSendResponse`` and ``/bench.Echo/Batch``
with a realistic ``CanSendBatchResponse`` of 1,000 decisions, and ``/bench.Echo/Write``
with a write's response (one event id and its consistency token), so the baseline
moves the same bytes the service does.

``project`` is ``consent-ledger project`` with the settings ``consent`` would have
(its ``--port`` unused): the projector of a ``consent --projector off``.

The stub (``python -m bench.ladder`` runs it) is the service's own gRPC server
(``GrpcServer``: its options, its handlers, health and reflection) with a
``CanSend`` that answers the echo's response as a message, with no check: what the
typed API costs over raw bytes. With ``--tokens`` it first authenticates the caller
as the service does: what that adds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import logging
import os
import signal
import sys
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc

SERVER_OPTIONS = [
    # services.grpc_api.server.SERVER_OPTIONS, written out so that the echo process
    # imports none of the service (tests/unit/test_bench_options.py keeps them equal).
    ("grpc.so_reuseport", 1),
    ("grpc.max_receive_message_length", 512 * 1024),
]
ECHO_UNARY = "/bench.Echo/Unary"
ECHO_BATCH = "/bench.Echo/Batch"
ECHO_WRITE = "/bench.Echo/Write"


def sample_responses(partitions: int = 12, batch: int = 1000) -> tuple[bytes, bytes]:
    """Serialized responses shaped like the service's: an allowed decision with its
    obligations, evidence and a consistency token over every partition."""
    from consent.v1 import consent_service_pb2 as api_pb2

    from ledger.policy import Decision, Obligation, Reason
    from ledger.ports import ConsistencyToken, Stream
    from services.wire import api

    token = ConsistencyToken(
        {
            **{(Stream.SUBSCRIBERS, p): 83_000 + p for p in range(partitions)},
            (Stream.CAMPAIGNS, 0): 1,
        }
    ).encode()
    decision = Decision(
        True,
        Reason.CONSENT_ACTIVE,
        (Obligation.INCLUDE_OPT_OUT_LANGUAGE, Obligation.IDENTIFY_SENDER),
        (str(uuid.uuid4()),),
        "",
        1,
    )
    unary = api.decision_to_proto(decision, token).SerializeToString()
    decisions = [api.send_decision_to_proto(f"+1415201{i:04d}", decision) for i in range(batch)]
    many = api_pb2.CanSendBatchResponse(decisions=decisions, consistency_token=token)
    return unary, many.SerializeToString()


def sample_write_response() -> bytes:
    """A write's response: one event id and the token of one subscriber partition."""
    from consent.v1 import consent_service_pb2 as api_pb2

    response = api_pb2.RecordOptInResponse(
        event_ids=[str(uuid.uuid4())], consistency_token="subscribers:7:83021"
    )
    return bytes(response.SerializeToString())


async def _echo(port: int, ready: Callable[[int], None], stop: asyncio.Event) -> None:
    unary_reply, batch_reply = sample_responses()
    write_reply = sample_write_response()

    async def unary(request: bytes, context: Any) -> bytes:
        return unary_reply

    async def batch(request: bytes, context: Any) -> bytes:
        return batch_reply

    async def write(request: bytes, context: Any) -> bytes:
        return write_reply

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Batch": grpc.unary_unary_rpc_method_handler(batch),
        "Write": grpc.unary_unary_rpc_method_handler(write),
    }
    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Echo", handlers),))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    ready(bound)
    await stop.wait()
    await server.stop(1)


async def _stub(
    port: int, ready: Callable[[int], None], stop: asyncio.Event, args: argparse.Namespace
) -> None:
    from consent.v1 import consent_service_pb2 as api_pb2

    from services.grpc_api.auth import Scope, TokenAuthenticator
    from services.grpc_api.errors import translate_errors
    from services.grpc_api.server import GrpcServer
    from services.grpc_api.servicer import ConsentServicer

    canned = api_pb2.CanSendResponse.FromString(sample_responses()[0])
    authenticate = args.tokens is not None
    auth = TokenAuthenticator.from_file(Path(args.tokens)) if authenticate else None

    class Stub(ConsentServicer):
        @translate_errors  # as the service's CanSend is: errors leave as gRPC statuses
        async def CanSend(self, request: Any, context: Any) -> Any:
            if authenticate:
                self._caller(context, Scope.CHECK, request.brand)
            return canned

    # The stub's CanSend asks nothing of the use cases.
    stub = Stub(None, auth or TokenAuthenticator({}))  # type: ignore[arg-type]
    # Without tokens the stub authenticates no one, before or after the body is read.
    server = GrpcServer(stub, f"127.0.0.1:{port}", authenticate=authenticate)
    await server.start()
    ready(int(server.address.rsplit(":", 1)[1]))
    await stop.wait()
    await server.stop(1)


def kafka_settings(bootstrap: str, prefix: str, partitions: int) -> Any:
    """The ledger's settings of a bench server: one broker, so one replica."""
    from services.settings import KafkaLedgerSettings

    return KafkaLedgerSettings(
        bootstrap_servers=bootstrap,
        topic_prefix=prefix,
        subscriber_partitions=partitions,
        replication_factor=1,
        min_insync_replicas=1,
    )


def _settings(port: int, args: argparse.Namespace) -> Any:
    from services.settings import FreshnessSettings, Settings

    kafka = kafka_settings(args.kafka, args.prefix, args.partitions)
    # CONSENT_POSTGRES_TIMEOUT_MS as ``serve`` reads it: a profiled run, slower, may
    # need PostgreSQL's answers waited for longer than the default.
    postgres_timeout = Settings.from_env(
        {k: v for k, v in os.environ.items() if k == "CONSENT_POSTGRES_TIMEOUT_MS"},
        embedded=True,
        api=False,
    ).postgres_timeout
    return Settings(
        listen=f"127.0.0.1:{port}",
        ledger=args.ledger,
        kafka=kafka if args.ledger == "kafka" else None,
        postgres_dsn=args.dsn,
        data_dir=Path(args.tokens).parent,
        tokens_file=Path(args.tokens),
        freshness=FreshnessSettings(),
        shutdown_grace=1,
        projector_group=f"{args.prefix}projector",
        projector=args.projector,
        reuse_port=True,  # CONSENT_GRPC_REUSE_PORT=true: a group of these shares the port
        postgres_timeout=postgres_timeout,
    )


async def _consent(
    port: int, ready: Callable[[int], None], stop: asyncio.Event, args: argparse.Namespace
) -> None:
    from services.bootstrap import Runtime
    from services.tuning import settle_heap

    runtime = Runtime(_settings(port, args))
    await runtime.start()
    await asyncio.to_thread(settle_heap)  # as ``consent-ledger serve`` does
    try:
        ready(int(runtime.address.rsplit(":", 1)[1]))
        await stop.wait()
    finally:
        await runtime.stop()


async def _project(
    port: int, ready: Callable[[int], None], stop: asyncio.Event, args: argparse.Namespace
) -> None:
    from services.bootstrap import Runtime
    from services.tuning import PROJECTION_YOUNG_THRESHOLD, settle_collector

    runtime = Runtime(_settings(port, args))
    await runtime.start_projecting()
    settle_collector(PROJECTION_YOUNG_THRESHOLD)  # as ``consent-ledger project`` does
    try:
        ready(port)
        await stop.wait()
    finally:
        await runtime.stop()


async def _main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # The parent holds our stdin open; EOF means it is gone or done with us.
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.read(1) else None)

    def ready(port: int) -> None:
        print(f"READY {port}", flush=True)

    if args.kind == "echo":
        await _echo(args.port, ready, stop)
    elif args.kind == "stub":
        await _stub(args.port, ready, stop, args)
    elif args.kind == "project":
        await _project(args.port, ready, stop, args)
    else:
        await _consent(args.port, ready, stop, args)


def _run(args: argparse.Namespace, coro: Callable[[], Coroutine[Any, Any, None]]) -> None:
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(coro())
    else:
        asyncio.run(coro())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.server")
    parser.add_argument("kind", choices=["echo", "stub", "consent", "project"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--dsn")
    parser.add_argument("--kafka")
    parser.add_argument("--prefix", default="bench.")
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--tokens")
    parser.add_argument(
        "--ledger",
        choices=["kafka", "postgres"],
        default="kafka",
        help="the ledger: Kafka, or the embedded default's PostgreSQL table",
    )
    parser.add_argument(
        "--projector",
        choices=["in-process", "off"],
        default="in-process",
        help="CONSENT_PROJECTOR: off leaves projection to a `project` process",
    )
    parser.add_argument("--profile", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    # A new consumer group's first coordinator lookup and rebalance log at ERROR and
    # WARNING; both are routine here and would bury the figures.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    if args.profile is None:
        _run(args, lambda: _main(args))
        return 0
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        _run(args, lambda: _main(args))
    finally:
        profiler.disable()
        with contextlib.suppress(OSError):
            profiler.dump_stats(str(args.profile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
