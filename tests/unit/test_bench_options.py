"""The benchmark's echo baseline must run with the service's own server options."""

from __future__ import annotations

import argparse

from bench import server as bench_server
from services.grpc_api import server


def test_the_echo_baseline_uses_the_services_server_options():
    assert bench_server.SERVER_OPTIONS == server.SERVER_OPTIONS


def test_the_bench_server_waits_on_postgresql_as_long_as_serve_is_told(monkeypatch):
    """A profiled bench run, slower, failed reads past the default 1.5 s that
    CONSENT_POSTGRES_TIMEOUT_MS, set as for ``serve``, did not lift."""
    args = argparse.Namespace(
        kafka="127.0.0.1:9092", prefix="bench.", partitions=12, ledger="kafka",
        dsn="postgresql:///x", tokens="/tmp/tokens.json", projector=True,
    )  # fmt: skip
    monkeypatch.delenv("CONSENT_POSTGRES_TIMEOUT_MS", raising=False)
    assert bench_server._settings(0, args).postgres_timeout == 1.5
    monkeypatch.setenv("CONSENT_POSTGRES_TIMEOUT_MS", "6000")
    assert bench_server._settings(0, args).postgres_timeout == 6.0
