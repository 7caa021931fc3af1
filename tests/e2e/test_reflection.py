"""Reflection through the real server: both protocol names, each listing both, and
the ``.proto`` comments in the files it answers with (what ``grpcurl describe``
prints)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

from tests.e2e.harness import running, service_settings

pytestmark = pytest.mark.asyncio(loop_scope="session")

V1 = "grpc.reflection.v1.ServerReflection"
V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"


async def ask(
    channel: grpc.aio.Channel, service: str, requests: list[reflection_pb2.ServerReflectionRequest]
) -> list[reflection_pb2.ServerReflectionResponse]:
    """One reflection stream to ``service``: its messages are the same under both names."""
    call = channel.stream_stream(
        f"/{service}/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    return [reply async for reply in call(iter(requests), timeout=20)]


def comments(reply: reflection_pb2.ServerReflectionResponse) -> dict[str, str]:
    """Each file of a reply by name, its comments joined."""
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in reply.file_descriptor_response.file_descriptor_proto
    ]
    return {
        f.name: " ".join(loc.leading_comments for loc in f.source_code_info.location) for f in files
    }


@pytest.mark.parametrize("service", [V1, V1ALPHA])
async def test_reflection_lists_both_versions_and_carries_comments(service, tmp_path, postgres_dsn):
    settings = service_settings(tmp_path, postgres_dsn, kafka=None)
    async with running(settings) as runtime, grpc.aio.insecure_channel(runtime.address) as channel:
        listed, method, message, own, missing = await ask(
            channel,
            service,
            [
                reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(
                    file_containing_symbol="consent.v1.ConsentService.CanSend"
                ),
                reflection_pb2.ServerReflectionRequest(
                    file_containing_symbol="consent.v1.CanSendRequest"
                ),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol=V1),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol="no.Such"),
            ],
        )
    names = {s.name for s in listed.list_services_response.service}
    assert {V1, V1ALPHA, "consent.v1.ConsentService", "grpc.health.v1.Health"} <= names
    for reply in (method, message):
        text = comments(reply)["consent/v1/consent_service.proto"]
        assert "Fails closed: when the service cannot tell" in text
        assert "Consent for SMS: may we text this number" in text
    own_files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in own.file_descriptor_response.file_descriptor_proto
    ]
    assert [(f.name, f.package) for f in own_files] == [
        ("grpc/reflection/v1/reflection.proto", "grpc.reflection.v1")
    ]
    assert [s.name for s in own_files[0].service] == ["ServerReflection"]
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


async def test_reflection_descriptor_database_reads_the_api_over_v1alpha(tmp_path, postgres_dsn):
    """grpcio-reflection's own client builds a working pool from the answers."""
    from google.protobuf import descriptor_pool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    async with running(service_settings(tmp_path, postgres_dsn, kafka=None)) as runtime:

        def read() -> tuple[list[str], str]:
            with grpc.insecure_channel(runtime.address) as channel:
                database = ProtoReflectionDescriptorDatabase(channel)
                pool = descriptor_pool.DescriptorPool(database)
                service = pool.FindServiceByName("consent.v1.ConsentService")
                request = pool.FindMessageTypeByName("consent.v1.CanSendRequest")
                return list(database.get_services()), service.methods_by_name[
                    "CanSend"
                ].input_type.full_name if request else ""

        services, input_type = await asyncio.to_thread(read)
    assert V1 in services and V1ALPHA in services
    assert input_type == "consent.v1.CanSendRequest"


async def test_grpcurl_lists_both_and_describes_with_comments(tmp_path, postgres_dsn):
    from tests.e2e.grpcurl import run

    async with running(service_settings(tmp_path, postgres_dsn, kafka=None)) as runtime:
        listed, method, message = [
            await asyncio.to_thread(run, "-plaintext", runtime.address, *args)
            for args in (
                ["list"],
                ["describe", "consent.v1.ConsentService.CanSend"],
                ["describe", "consent.v1.CanSendRequest"],
            )
        ]
    assert listed.returncode == 0, listed.stderr
    assert {V1, V1ALPHA, "consent.v1.ConsentService"} <= set(listed.stdout.split())
    assert method.returncode == 0, method.stderr
    assert "Fails closed: when the service cannot tell" in method.stdout
    assert "rpc CanSend ( .consent.v1.CanSendRequest )" in method.stdout
    assert message.returncode == 0, message.stderr
    assert "E.164, with its country code (+14155552671)" in message.stdout
