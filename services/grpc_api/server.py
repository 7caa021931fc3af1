"""The gRPC server: the consent API, health checking and reflection.

Reflection lets ``grpcurl`` list and call the API with no proto files at hand.
Shutdown turns health to NOT_SERVING first, so load balancers stop routing, then
gives in-flight calls the grace period to finish.

With server credentials the port speaks TLS (and, with a client CA, requires
client certificates). Probes that cannot speak TLS (Kubernetes' gRPC probes)
get a second, plaintext port that serves the health service and nothing else.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from consent.v1 import consent_service_pb2 as api_pb2
from consent.v1 import consent_service_pb2_grpc as api_grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.grpc_api.admission import Admission
from services.grpc_api.servicer import ConsentServicer
from services.rate_limits import CallerLimits

log = logging.getLogger(__name__)
SERVICE_NAME = api_pb2.DESCRIPTOR.services_by_name["ConsentService"].full_name

MAX_REQUEST_BYTES = 512 * 1024
"""The largest request the server reads; a larger one is RESOURCE_EXHAUSTED, and
nothing of it is written. A write becomes facts, each one Kafka record, which the
producer refuses over 1 MiB (``max_request_size``); a fact holds no field of its
request twice, so the records of a request of half that size always fit. A
1,000-number ``CanSendBatch`` takes some 20 KB, and 250 KB if every number were
written out to the 250 characters ``phonenumbers`` reads at most."""

SERVER_OPTIONS = [
    ("grpc.so_reuseport", 1),
    ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
]
"""The gRPC server's options when its port is shared (``CONSENT_GRPC_REUSE_PORT``);
the benchmark's echo baseline runs with the same."""


def server_options(reuse_port: bool) -> list[tuple[str, int]]:
    """``SERVER_OPTIONS``, with port sharing only when asked for: grpcio sets
    ``SO_REUSEPORT`` unless told not to, and a second instance started by mistake on
    the same port would then take half the connections instead of failing to start."""
    return [("grpc.so_reuseport", int(reuse_port)), *SERVER_OPTIONS[1:]]


class CannotListen(OSError):
    """An address the server could not bind (in use, or not this machine's)."""

    def __init__(self, address: str) -> None:
        super().__init__(f"cannot listen on {address}")
        self.address = address


class _ReflectedDescriptors:
    """The default descriptor pool, as reflection reads it, finding methods too.

    protobuf's upb runtime finds the file of a service, message, field or enum by
    its full name, but not of a method (``consent.v1.ConsentService.CanSend``),
    and a method is what ``grpcurl describe`` asks for: that lookup answered
    "symbol not found". A name the pool does not know is tried as a method of
    the service named by its prefix."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    def FindFileContainingSymbol(self, symbol: str) -> FileDescriptor:
        try:
            found: FileDescriptor = self._pool.FindFileContainingSymbol(symbol)
            return found
        except KeyError:
            service_name, _, method = symbol.rpartition(".")
            try:
                service = self._pool.FindServiceByName(service_name)
            except KeyError:
                service = None
            if service is None or method not in service.methods_by_name:
                raise
            file: FileDescriptor = service.file
            return file


class GrpcServer:
    def __init__(
        self,
        servicer: ConsentServicer,
        listen: str,
        *,
        credentials: grpc.ServerCredentials | None = None,
        health_listen: str = "",
        limits: CallerLimits | None = None,
        authenticate: bool = True,
        reuse_port: bool = False,
    ) -> None:
        """``limits``: the callers' rate limits (none by default). ``authenticate``
        False leaves authentication to the servicer's methods alone, after the body
        is decoded (the benchmark's stub without tokens)."""
        self._listen = listen
        self._credentials = credentials
        self._health_listen = health_listen
        admission = Admission(
            servicer.authenticate if authenticate else None,
            (SERVICE_NAME,),
            limits,
            servicer.metrics,
        )
        self._server = grpc.aio.server(options=server_options(reuse_port), interceptors=[admission])
        api_grpc.add_ConsentServiceServicer_to_server(servicer, self._server)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self._server,
            pool=_ReflectedDescriptors(descriptor_pool.Default()),
        )
        self._health_server: grpc.aio.Server | None = None
        if health_listen:
            self._health_server = grpc.aio.server(
                options=[("grpc.so_reuseport", int(reuse_port))], interceptors=[Admission(None)]
            )
            health_pb2_grpc.add_HealthServicer_to_server(self._health, self._health_server)
        self._port = self._health_port = 0

    async def start(self) -> None:
        """Bind and serve; raises ``CannotListen`` for an address it cannot bind.

        Each server starts as soon as it is bound: grpcio lets go of a bound port
        only by stopping a started server, so a failure stops what had started."""
        self._port = _bind(self._server, self._listen, self._credentials)
        await self._server.start()
        if self._health_server is not None:
            try:
                self._health_port = _bind(self._health_server, self._health_listen, None)
            except CannotListen:
                await self._server.stop(0)
                raise
            await self._health_server.start()
        for name in ("", SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)

    @property
    def address(self) -> str:
        return _with_port(self._listen, self._port)

    @property
    def health_address(self) -> str | None:
        """The plaintext health port's address, if there is one."""
        if self._health_server is None:
            return None
        return _with_port(self._health_listen, self._health_port)

    async def stop(self, grace: float) -> None:
        for name in ("", SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._server.stop(grace)
        if self._health_server is not None:
            await self._health_server.stop(0)


def _with_port(listen: str, port: int) -> str:
    """``listen`` (``host:port``, the port perhaps 0) with the port it was bound to."""
    return f"{listen.rsplit(':', 1)[0]}:{port}"


def _bind(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    try:
        if credentials is None:
            port: int = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as exc:  # what grpcio raises when it cannot bind
        raise CannotListen(address) from exc
    return port
