"""TLS on the gRPC port, mutual TLS that knows a caller by its certificate, and the
plaintext health port for probes (real PostgreSQL, real gRPC, real handshakes)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import consent_service_pb2_grpc as api_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.bootstrap import Runtime, StartError
from services.settings import TlsSettings
from tests.e2e.certs import Authority, Issued
from tests.e2e.harness import TOKENS, define, now, opt_in, running, service_settings

pytestmark = pytest.mark.asyncio(loop_scope="session")

PHONE = "+14155552671"
ADMIN = [("authorization", f"Bearer {TOKENS['admin'][0]}")]


def settings_with_tls(tmp: Path, dsn: str, ca: Authority, *, clients: Authority | None = None):
    server = ca.issue("consent-ledger", server=True)
    tls = TlsSettings(server.cert, server.key, clients.cert if clients else None)
    base = service_settings(tmp, dsn, kafka=None)
    return dataclasses.replace(base, tls=tls, health_listen="127.0.0.1:0")


def channel(address: str, ca: Authority, client: Issued | None = None) -> grpc.aio.Channel:
    """A channel with a connection of its own: gRPC shares connections between
    channels by default, and a test of handshakes needs each to make its own."""
    key, chain = client.pem() if client else (None, None)
    credentials = grpc.ssl_channel_credentials(ca.cert.read_bytes(), key, chain)
    return grpc.aio.secure_channel(
        address, credentials, options=[("grpc.use_local_subchannel_pool", 1)]
    )


def check(brand: str = "acme") -> api.CanSendRequest:
    return api.CanSendRequest(phone=PHONE, brand=brand, campaign="promo")


async def test_tls_serves_callers_that_trust_the_ca_and_probes_on_the_plaintext_port(
    tmp_path, postgres_dsn
):
    ca = Authority(tmp_path, "server-ca")
    async with running(settings_with_tls(tmp_path, postgres_dsn, ca)) as runtime:
        async with channel(runtime.address, ca) as secure:
            answer = await api_grpc.ConsentServiceStub(secure).CanSend(
                check(), metadata=ADMIN, timeout=10
            )
            assert not answer.allowed  # an answer, over TLS (the campaign is not defined)
        async with grpc.aio.insecure_channel(runtime.address) as plain:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await api_grpc.ConsentServiceStub(plain).CanSend(check(), metadata=ADMIN, timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        health_address = runtime.server.health_address
        assert health_address is not None
        async with grpc.aio.insecure_channel(health_address) as probe:
            status = await health_pb2_grpc.HealthStub(probe).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert status.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.aio.AioRpcError) as only_health:
                await api_grpc.ConsentServiceStub(probe).CanSend(check(), metadata=ADMIN, timeout=5)
            assert only_health.value.code() == grpc.StatusCode.UNIMPLEMENTED
    async with grpc.aio.insecure_channel(health_address) as probe:  # stopped with the service
        with pytest.raises(grpc.aio.AioRpcError):
            await health_pb2_grpc.HealthStub(probe).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )


async def test_mutual_tls_knows_a_caller_by_its_certificate_within_its_scopes(
    tmp_path, postgres_dsn
):
    server_ca, client_ca = Authority(tmp_path, "server-ca"), Authority(tmp_path, "client-ca")
    settings = settings_with_tls(tmp_path, postgres_dsn, server_ca, clients=client_ca)
    tokens = json.loads(settings.tokens_file.read_text())
    tokens["tokens"].append(
        {
            "name": "checkout-service",
            "client_cert_name": "checkout.acme.internal",
            "scopes": ["check", "write", "audit"],
            "brands": ["acme"],
        }
    )
    settings.tokens_file.write_text(json.dumps(tokens))
    checkout = client_ca.issue("checkout", dns=("checkout.acme.internal",))
    laptop = client_ca.issue("ops-laptop")  # signed, but named by no entry
    stranger = Authority(tmp_path, "other-ca").issue("checkout", dns=("checkout.acme.internal",))
    at = now() - timedelta(minutes=1)

    async with running(settings) as runtime:
        async with channel(runtime.address, server_ca, laptop) as ops:
            admin = api_grpc.ConsentServiceStub(ops)
            await admin.DefineCampaign(
                define("acme", "promo", at - timedelta(days=1)), metadata=ADMIN, timeout=10
            )
            with pytest.raises(grpc.aio.AioRpcError) as unnamed:  # a certificate alone
                await admin.CanSend(check(), timeout=10)
            assert unnamed.value.code() == grpc.StatusCode.UNAUTHENTICATED

        async with channel(runtime.address, server_ca, checkout) as known:
            service = api_grpc.ConsentServiceStub(known)
            written = await service.RecordOptIn(opt_in(PHONE, "acme", "promo", at), timeout=10)
            answer = await service.CanSend(
                api.CanSendRequest(
                    phone=PHONE,
                    brand="acme",
                    campaign="promo",
                    at_least_as_fresh=written.consistency_token,
                ),
                timeout=10,
            )
            assert answer.allowed or answer.reason == api.REASON_QUIET_HOURS
            events = await service.ListEvents(
                api.ListEventsRequest(
                    phone=PHONE, brand="acme", at_least_as_fresh=written.consistency_token
                ),
                timeout=10,
            )
            assert [e.event.recorded_by for e in events.events] == ["checkout-service"]
            with pytest.raises(grpc.aio.AioRpcError) as other_brand:
                await service.CanSend(check("globex"), timeout=10)
            assert other_brand.value.code() == grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(grpc.aio.AioRpcError) as wrong_token:  # a token always decides
                await service.CanSend(
                    check(), metadata=[("authorization", "Bearer nope")], timeout=10
                )
            assert wrong_token.value.code() == grpc.StatusCode.UNAUTHENTICATED

        for client in (None, stranger):  # no certificate; one from a CA the server does not trust
            async with channel(runtime.address, server_ca, client) as refused:
                with pytest.raises(grpc.aio.AioRpcError) as handshake:
                    await api_grpc.ConsentServiceStub(refused).CanSend(
                        check(), metadata=ADMIN, timeout=5
                    )
                assert handshake.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_unusable_tls_files_stop_the_start_with_the_setting_named(tmp_path, postgres_dsn):
    ca = Authority(tmp_path, "server-ca")
    settings = settings_with_tls(tmp_path, postgres_dsn, ca)
    assert settings.tls is not None
    missing = dataclasses.replace(settings.tls, cert_file=tmp_path / "nowhere.pem")
    with pytest.raises(StartError, match=r"nowhere\.pem \(CONSENT_TLS_CERT_FILE\)"):
        await Runtime(dataclasses.replace(settings, tls=missing)).start()
    not_a_key = dataclasses.replace(settings.tls, key_file=ca.cert)
    with pytest.raises(StartError, match=r"\(CONSENT_TLS_KEY_FILE\) holds no PEM private key"):
        await Runtime(dataclasses.replace(settings, tls=not_a_key)).start()
    other_key = ca.issue("someone-else", server=True).key
    mismatched = dataclasses.replace(settings.tls, key_file=other_key)
    with pytest.raises(
        StartError, match=r"TLS files in CONSENT_TLS_CERT_FILE, .* do not work together"
    ):
        await Runtime(dataclasses.replace(settings, tls=mismatched)).start()


async def test_a_health_port_in_use_stops_the_start_and_lets_the_grpc_port_go(
    tmp_path, postgres_dsn
):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        health = f"127.0.0.1:{taken.getsockname()[1]}"
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            grpc_address = f"127.0.0.1:{probe.getsockname()[1]}"
        settings = dataclasses.replace(
            service_settings(tmp_path, postgres_dsn, kafka=None),
            listen=grpc_address,
            health_listen=health,
        )
        runtime = Runtime(settings)
        with pytest.raises(
            StartError, match=f"cannot serve gRPC on {health}: .*CONSENT_HEALTH_LISTEN"
        ):
            await runtime.start()
    with socket.socket() as again:
        again.bind(("127.0.0.1", int(grpc_address.rsplit(":", 1)[1])))  # released


async def answers(address: str, ca: Authority) -> bool:
    """Whether a new connection that trusts only ``ca`` gets an answer."""
    async with channel(address, ca) as secure:
        try:
            await health_pb2_grpc.HealthStub(secure).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
            return False
    return True


def install(source: Path, target: Path) -> None:
    """Replace ``target`` in one step, as Kubernetes swaps a secret's files."""
    staged = target.with_suffix(".new")
    staged.write_bytes(source.read_bytes())
    os.replace(staged, target)


async def test_a_renewed_certificate_is_served_without_a_restart(tmp_path, postgres_dsn, caplog):
    old_ca, new_ca = Authority(tmp_path, "old-ca"), Authority(tmp_path, "new-ca")
    settings = settings_with_tls(tmp_path, postgres_dsn, old_ca)
    tls = settings.tls
    assert tls is not None
    async with running(settings) as runtime:
        assert runtime.tls_files is not None
        assert await answers(runtime.address, old_ca)
        assert not await answers(runtime.address, new_ca)

        renewed = new_ca.issue("consent-ledger-renewed", server=True)
        install(renewed.key, tls.key_file)
        install(renewed.cert, tls.cert_file)
        assert await answers(runtime.address, new_ca)
        assert not await answers(runtime.address, old_ca)
        assert runtime.tls_files.reloads == 1

        with caplog.at_level(logging.WARNING, logger="services.bootstrap"):
            install(new_ca.issue("stray", server=True).key, tls.key_file)  # not the cert's key
            assert await answers(runtime.address, new_ca)  # the renewed pair, still
        assert runtime.tls_files.reloads == 1
        assert "the TLS files changed but cannot be used" in caplog.text
