"""The gRPC server: the consent API, health checking and reflection.

Reflection lets ``grpcurl`` list and call the API with no proto files at hand.
Shutdown turns health to NOT_SERVING first, so load balancers stop routing, then
gives in-flight calls the grace period to finish.
"""

from __future__ import annotations

import logging

import grpc
from consent.v1 import consent_service_pb2 as api_pb2
from consent.v1 import consent_service_pb2_grpc as api_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.app import ConsentApp
from services.grpc_api.auth import TokenAuthenticator
from services.grpc_api.servicer import ConsentServicer
from services.metrics import ServiceMetrics

log = logging.getLogger(__name__)
SERVICE_NAME = api_pb2.DESCRIPTOR.services_by_name["ConsentService"].full_name


class GrpcServer:
    def __init__(
        self,
        app: ConsentApp,
        auth: TokenAuthenticator,
        listen: str,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self._listen = listen
        self._server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 1),
                ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            ]
        )
        servicer = ConsentServicer(app, auth, metrics)
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
        )
        self._port = 0

    async def start(self) -> None:
        """Bind and serve; raises ``OSError`` when the address cannot be bound."""
        try:
            self._port = self._server.add_insecure_port(self._listen)
        except RuntimeError as exc:  # what grpcio raises when it cannot bind
            raise OSError(f"cannot listen on {self._listen}") from exc
        await self._server.start()
        for name in ("", SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)

    @property
    def address(self) -> str:
        host = self._listen.rsplit(":", 1)[0]
        return f"{host}:{self._port}"

    async def stop(self, grace: float) -> None:
        for name in ("", SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._server.stop(grace)
