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
from pathlib import Path
from typing import Any

import grpc
from consent.v1 import consent_service_pb2 as api_pb2
from consent.v1 import consent_service_pb2_grpc as api_grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from services.grpc_api.admission import Admission, CallerLimits
from services.grpc_api.interceptors import CallIds, RpcMetrics
from services.grpc_api.servicer import ConsentServicer
from services.settings import ConnectionLimits

log = logging.getLogger(__name__)
SERVICE_NAME = api_pb2.DESCRIPTOR.services_by_name["ConsentService"].full_name
LIVENESS = "liveness"
"""The health service name answered SERVING while the process serves, whatever its
readiness: the liveness probe's (the overall status "" is the readiness probe's)."""

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


def connection_options(limits: ConnectionLimits) -> list[tuple[str, int]]:
    """gRPC core's channel arguments for ``limits`` (its keepalive guide,
    ``doc/keepalive.md``, and gRFC A9 for idle and age)."""

    def ms(seconds: float) -> int:
        return max(1, round(seconds * 1000))

    options = [
        ("grpc.max_concurrent_streams", limits.max_concurrent_streams),
        ("grpc.keepalive_time_ms", ms(limits.keepalive_time)),
        ("grpc.keepalive_timeout_ms", ms(limits.keepalive_timeout)),
        # Core does not time its keepalive pings by the setting above but by every
        # ping's timeout (grpc/grpc#39239), a minute unless set.
        ("grpc.http2.ping_timeout_ms", ms(limits.keepalive_timeout)),
        # Ping connections with no call too, and take clients' pings on them at the
        # same rate: otherwise core allows one every two hours on such a connection.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", ms(limits.min_ping_interval)),
        ("grpc.http2.max_ping_strikes", limits.max_ping_strikes),
    ]
    if limits.max_idle is not None:
        options.append(("grpc.max_connection_idle_ms", ms(limits.max_idle)))
    if limits.max_age is not None:
        options.append(("grpc.max_connection_age_ms", ms(limits.max_age)))
        if limits.max_age_grace is not None:
            grace = round(limits.max_age_grace * 1000)
            options.append(("grpc.max_connection_age_grace_ms", grace))
    return options


class CannotListen(OSError):
    """An address the server could not bind (in use, or not this machine's)."""

    def __init__(self, address: str) -> None:
        super().__init__(f"cannot listen on {address}")
        self.address = address


REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
"""The reflection service's released name. grpcio-reflection serves only
``grpc.reflection.v1alpha``; newer clients (grpcurl among them) ask for ``v1``
first. The two protocols are the same messages with the same field numbers under
another package, so the ``v1alpha`` servicer answers both."""

SHIPPED_DESCRIPTORS = Path(api_pb2.__file__).with_name("consent_v1.binpb")
"""The API's files as ``scripts/gen_protos.sh`` ships them, comments included; the
generated modules register their files without them."""


def _v1_reflection_file() -> descriptor_pb2.FileDescriptorProto:
    """``grpc/reflection/v1/reflection.proto``, made from the ``v1alpha`` file by
    renaming its package, so that reflection can describe itself under both names."""
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    renamed = proto
    renamed.name = "grpc/reflection/v1/reflection.proto"
    renamed.package = "grpc.reflection.v1"
    renamed.options.Clear()
    for message in renamed.message_type:
        for field in message.field:
            if field.HasField("type_name"):
                field.type_name = field.type_name.replace(".v1alpha.", ".v1.")
    for service in renamed.service:
        for method in service.method:
            method.input_type = method.input_type.replace(".v1alpha.", ".v1.")
            method.output_type = method.output_type.replace(".v1alpha.", ".v1.")
    return renamed


def _commented_files(path: Path) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    """The files of a descriptor set by name, each with its source info (comments)."""
    try:
        shipped = descriptor_pb2.FileDescriptorSet.FromString(path.read_bytes())
    except OSError:  # a checkout without generated files: reflection still answers
        log.warning("no %s: reflection answers without the .proto comments", path)
        return {}
    return {f.name: f for f in shipped.file if f.HasField("source_code_info")}


class _Described:
    """A file as reflection answers it: the pool's descriptor, serialized from the
    shipped copy that keeps its comments when there is one."""

    def __init__(self, file: Any, commented: dict[str, descriptor_pb2.FileDescriptorProto]) -> None:
        self._file = file
        self._commented = commented
        self.name: str = file.name

    @property
    def dependencies(self) -> list[_Described]:
        return [_Described(d, self._commented) for d in self._file.dependencies]

    def CopyToProto(self, proto: descriptor_pb2.FileDescriptorProto) -> None:
        shipped = self._commented.get(self.name)
        if shipped is None:
            self._file.CopyToProto(proto)
        else:
            proto.CopyFrom(shipped)


class _ReflectedDescriptors:
    """The default descriptor pool, as reflection reads it, finding methods too.

    protobuf's upb runtime finds the file of a service, message, field or enum by
    its full name, but not of a method (``consent.v1.ConsentService.CanSend``),
    and a method is what ``grpcurl describe`` asks for: that lookup answered
    "symbol not found". A name the pool does not know is tried as a method of
    the service named by its prefix. The files found carry their comments, and
    reflection's own ``v1`` file is found beside ``v1alpha``'s."""

    def __init__(self, pool: Any, commented: dict[str, descriptor_pb2.FileDescriptorProto]) -> None:
        self._pool = pool
        self._commented = commented
        self._own = descriptor_pool.DescriptorPool()
        self._own.Add(_v1_reflection_file())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    def FindFileByName(self, name: str) -> _Described:
        try:
            return _Described(self._pool.FindFileByName(name), self._commented)
        except KeyError:
            return _Described(self._own.FindFileByName(name), self._commented)

    def FindFileContainingSymbol(self, symbol: str) -> _Described:
        return _Described(self._file_containing(symbol), self._commented)

    def _file_containing(self, symbol: str) -> FileDescriptor:
        for pool in (self._pool, self._own):
            try:
                found: FileDescriptor = pool.FindFileContainingSymbol(symbol)
                return found
            except KeyError:
                pass
        service_name, _, method = symbol.rpartition(".")
        for pool in (self._pool, self._own):
            try:
                service = pool.FindServiceByName(service_name)
            except KeyError:
                continue
            if method in service.methods_by_name:
                file: FileDescriptor = service.file
                return file
        raise KeyError(symbol)


def _enable_reflection(server: grpc.aio.Server, services: tuple[str, ...]) -> None:
    """Reflection under ``v1alpha`` and ``v1``, each listing both."""
    pool = _ReflectedDescriptors(descriptor_pool.Default(), _commented_files(SHIPPED_DESCRIPTORS))
    names = (*services, reflection.SERVICE_NAME, REFLECTION_V1)
    reflection.enable_server_reflection(names, server, pool=pool)
    servicer = reflection.aio.ReflectionServicer(names, pool=pool)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": handler}),)
    )


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
        connections: ConnectionLimits | None = None,
    ) -> None:
        """``limits``: the callers' rate limits (none by default). ``connections``:
        what one client connection may hold (``ConnectionLimits``' defaults when
        None). ``authenticate``
        False leaves authentication to the servicer's methods alone, after the body
        is decoded (the benchmark's stub without tokens)."""
        self._listen = listen
        self._servicer = servicer
        self._credentials = credentials
        self._health_listen = health_listen
        admission = Admission(
            servicer.authenticate if authenticate else None,
            (SERVICE_NAME,),
            limits,
            servicer.metrics,
        )
        self._server = grpc.aio.server(
            options=[
                *server_options(reuse_port),
                *connection_options(connections or ConnectionLimits()),
            ],
            interceptors=[CallIds(), RpcMetrics(servicer.metrics), admission],
        )
        api_grpc.add_ConsentServiceServicer_to_server(servicer, self._server)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        _enable_reflection(
            self._server,
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name),
        )
        self._health_server: grpc.aio.Server | None = None
        if health_listen:
            # The same bounds on a connection as the API's port: it takes no token,
            # so anyone who reaches it could otherwise hold connections and their
            # streams (a health Watch) for ever, and ping as often as it likes.
            self._health_server = grpc.aio.server(
                options=[
                    ("grpc.so_reuseport", int(reuse_port)),
                    *connection_options(connections or ConnectionLimits()),
                ],
                interceptors=[Admission(None)],
            )
            health_pb2_grpc.add_HealthServicer_to_server(self._health, self._health_server)
        self._port = self._health_port = 0
        self._ready = False
        self._stopping = False

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
        for name in ("", SERVICE_NAME, LIVENESS):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._ready = True

    async def set_ready(self, ready: bool) -> None:
        """The readiness probe's status ("" and the API's name): NOT_SERVING while
        CanSend cannot answer safely, so that traffic goes to instances that can.
        ``LIVENESS`` stays SERVING: an outage of the broker or the database is no
        reason to restart the process. Once ``stop`` began, nothing turns back."""
        if ready == self._ready or self._stopping:
            return
        self._ready = ready
        status = health_pb2.HealthCheckResponse
        for name in ("", SERVICE_NAME):
            await self._health.set(name, status.SERVING if ready else status.NOT_SERVING)

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
        self._stopping = True
        for name in ("", SERVICE_NAME, LIVENESS):
            await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self._servicer.stopping.set()  # change streams would hold the grace to its end
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
