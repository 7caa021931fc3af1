"""The benchmark's echo baseline must run with the service's own server options."""

from __future__ import annotations

from bench import server as bench_server
from services.grpc_api import server


def test_the_echo_baseline_uses_the_services_server_options():
    assert bench_server.SERVER_OPTIONS == server.SERVER_OPTIONS
