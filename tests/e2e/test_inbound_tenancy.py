"""Who may hand on a text to which number, through the real gRPC server, on the real
Kafka ledger and PostgreSQL and on the embedded default's ledger (PostgreSQL): a
text to another brand's sender number is refused PERMISSION_DENIED, as a clean one
is, whatever else is wrong with it, and nothing of it is recorded or held."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest

from ledger.ports import Stream
from tests.e2e.harness import client, define, held_info, inbound, module_clock, status_details

pytestmark = pytest.mark.asyncio(loop_scope="session")

ACME_NUMBER = "+12125550201"
GLOBEX_NUMBER = "+12125550202"


@pytest.fixture(scope="module", params=["kafka", "embedded"])
async def service(request, module_serve):
    """A service with acme's campaign "promo" and globex's "deals" defined, each
    sending from a number of its own; one for the module's tests, which write
    nothing or hold a number of their own."""
    clock = module_clock()
    campaigns = [
        define("acme", "promo", clock.now - timedelta(days=1), [ACME_NUMBER]),
        define("globex", "deals", clock.now - timedelta(days=1), [GLOBEX_NUMBER]),
    ]
    runtime = await module_serve(
        on_kafka=request.param == "kafka", name="intenancy", clock=clock, campaigns=campaigns
    )
    return runtime, clock


@pytest.mark.parametrize(
    "what",
    ["a NUL in its body", "a time 2 h ahead", "no message id", "a NUL in a hello"],
)
async def test_a_bad_text_to_another_brand_s_number_is_refused_for_the_brand_first(service, what):
    """A token of acme handing on a malformed text to globex's number was told what
    to mend in it (INVALID_ARGUMENT on ``body`` or ``occurred_at``) where a clean one
    is refused PERMISSION_DENIED: it learnt which fields of another brand's records
    were wrong, and so that the number is some brand's."""
    runtime, clock = service
    phone = "+14155550350"
    changes = {
        "a NUL in its body": dict(body="STOP\x00"),
        "a time 2 h ahead": dict(at=clock.now + timedelta(hours=2)),
        "no message id": dict(message_id=""),
        "a NUL in a hello": dict(body="hello\x00"),
    }[what]
    at = changes.pop("at", clock.now)
    ends = await runtime.ledger.end_offsets(Stream.SUBSCRIBERS)
    async with client(runtime.address, "acme-app") as app:
        with pytest.raises(grpc.aio.AioRpcError) as clean:
            await app.HandleInboundMessage(inbound(phone, GLOBEX_NUMBER, "STOP", clock.now))
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await app.HandleInboundMessage(
                inbound(phone, GLOBEX_NUMBER, changes.pop("body", "STOP"), at, **changes)
            )
    assert clean.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert bad.value.code() == grpc.StatusCode.PERMISSION_DENIED, status_details(bad.value)
    assert bad.value.details() == clean.value.details()
    assert held_info(bad.value) is None
    assert await runtime.ledger.end_offsets(Stream.SUBSCRIBERS) == ends


async def test_a_bad_stop_to_the_caller_s_own_number_is_still_held(service):
    """Refused for the brand first, a malformed STOP to acme's own number is still
    refused for its details and held under acme."""
    runtime, clock = service
    async with client(runtime.address, "acme-app") as app:
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await app.HandleInboundMessage(
                inbound("+14155550351", ACME_NUMBER, "STOP\x00", clock.now)
            )
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in status_details(bad.value)] == ["body"]
    info = held_info(bad.value)
    assert info is not None and info["held_brands"] == "acme"
