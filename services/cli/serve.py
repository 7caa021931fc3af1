"""``consent-ledger serve``: run the gRPC service (and /metrics, the auditor's
console, with their settings) until SIGINT or SIGTERM, and say where it answers."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import TYPE_CHECKING, Any

from services.tuning import settle_heap

if TYPE_CHECKING:
    from services.settings import Settings, TlsSettings

log = logging.getLogger("consent-ledger")


def add_parser(command: Any, embedded_help: str) -> None:
    serve = command("serve", "run the gRPC service (and /metrics with CONSENT_METRICS_LISTEN)")
    serve.add_argument("--embedded", action="store_true", help=embedded_help)


async def run(settings: Settings, args: argparse.Namespace) -> None:
    await _serve(settings, args.embedded)


def _grpcurl_hint(address: str, token: str | None, tls: TlsSettings | None = None) -> str:
    auth = f"-H 'authorization: Bearer {token}' " if token else "-H 'authorization: Bearer $TOKEN' "
    transport = "-plaintext "
    if tls is not None:  # the CA that signed the server's certificate, if not a public one
        transport = "-cacert ca.pem "
        if tls.client_ca_file is not None:
            transport += "-cert client.pem -key client-key.pem "
    return (
        f"  grpcurl {transport}{auth}\\\n"
        f'    -d \'{{"phone": "+14155552671", "brand": "acme", "campaign": "promo"}}\' \\\n'
        f"    {address} consent.v1.ConsentService/CanSend\n"
        "  (REASON_CAMPAIGN_UNKNOWN until acme/promo is defined: README, 'Calling the API')"
    )


async def _serve(settings: Settings, embedded: bool) -> None:
    from services.bootstrap import Runtime

    settling: set[asyncio.Future[Any]] = set()

    def settle_again() -> None:
        # The replica's new copy, after a rebuild, is on memory the start did not set
        # up: set the heap up again, off the event loop, as below.
        future = asyncio.ensure_future(asyncio.to_thread(settle_heap))
        settling.add(future)
        future.add_done_callback(settled)

    def settled(future: asyncio.Future[Any]) -> None:
        settling.discard(future)
        if not future.cancelled() and (error := future.exception()) is not None:
            log.error("setting the heap up again failed", exc_info=error)

    runtime = Runtime(settings, on_replica_reload=settle_again)
    await runtime.start()
    # In a worker thread: mapping a large heap with huge pages takes a moment, and
    # the server already answers meanwhile.
    await asyncio.to_thread(settle_heap)
    assert runtime.server is not None
    tls = settings.tls
    security = "" if tls is None else " with mutual TLS" if tls.client_ca_file else " with TLS"
    lines = [
        f"consent-ledger serving gRPC{security} on {runtime.address} "
        f"(ledger: {settings.ledger}, data: {settings.data_dir if embedded else 'external'})"
    ]
    if runtime.server.health_address:
        lines.append(f"gRPC health checks (plaintext) on {runtime.server.health_address}")
    if runtime.metrics_address:
        lines.append(f"Prometheus metrics on http://{runtime.metrics_address}/metrics")
    if runtime.console_address:
        scheme = "http" if tls is None else "https"
        lines.append(f"auditor's console on {scheme}://{runtime.console_address}/")
    if settings.log_format == "json":  # for a log pipeline: records, and no secrets
        if runtime.dev_token:
            lines.append(f"local admin token stored in {settings.data_dir}/dev-token")
        for line in lines:
            log.info("%s", line)
    else:
        if runtime.dev_token:
            lines.append(
                f"local admin token (stored in {settings.data_dir}/dev-token): {runtime.dev_token}"
            )
        lines.append("try:\n" + _grpcurl_hint(runtime.address, runtime.dev_token, tls))
        print("\n".join(lines), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: health NOT_SERVING, finishing in-flight calls")
    await runtime.stop()
