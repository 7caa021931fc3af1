"""A service reading a view whose rebuild stopped between an opt-in and the opt-out
after it (the embedded ledger, real PostgreSQL): CanSend says no, as the ledger
does, rather than allow what the half-rebuilt view holds; once a projector
folds the rest, it says no for the opt-out."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from consent.v1 import consent_service_pb2 as api

from ledger.events import ConsentRevoked, Recorded
from ledger.ports import Stream
from services.adapters.postgres_view import PostgresConsentView
from services.bootstrap import Runtime
from services.projector import Projector
from tests.e2e.harness import (
    Clock,
    client,
    define,
    noon_in_los_angeles,
    opt_in,
    opt_out,
    running,
    service_settings,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

PHONE = "+14155552671"


class UpTo:
    """A ledger read only up to (not including) one subscriber position."""

    def __init__(self, ledger: Any, stop: int) -> None:
        self.ledger, self.stop = ledger, stop

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ledger, name)

    async def read(self, stream: Stream, partition: int, start: int, limit: int = 1000) -> Any:
        found: list[Recorded] = await self.ledger.read(stream, partition, start, limit)
        if stream is Stream.SUBSCRIBERS:
            found = [r for r in found if r.position.offset < self.stop]
        return found

    async def end_offsets(self, stream: Stream) -> dict[int, int]:
        ends: dict[int, int] = await self.ledger.end_offsets(stream)
        if stream is Stream.SUBSCRIBERS:
            return {p: min(e, self.stop) for p, e in ends.items()}
        return ends


async def test_a_view_rebuilt_up_to_before_an_opt_out_never_allows(tmp_path, postgres_dsn) -> None:
    clock = Clock(noon_in_los_angeles(ahead=timedelta(hours=2)))
    when = clock.now
    settings = service_settings(tmp_path, postgres_dsn, kafka=None)
    ask = api.CanSendRequest(phone=PHONE, brand="acme", campaign="promo")
    async with running(settings, clock) as runtime, client(runtime.address) as c:
        await c.DefineCampaign(define("acme", "promo", when - timedelta(days=1)))
        await c.RecordOptIn(opt_in(PHONE, "acme", "promo", when - timedelta(hours=1)))
        assert (await c.CanSend(ask)).allowed
        await c.RecordOptOut(opt_out(PHONE, "acme", None, when - timedelta(minutes=30)))
        assert not (await c.CanSend(ask)).allowed

    quick = replace(settings.freshness, wait_bound=0.5)
    # A rebuild that stopped after the opt-in and before the opt-out.
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=2)
    builder = Runtime(settings)
    builder.pool = pool
    ledger = await builder._build_ledger(postgres_dsn)
    try:
        (partition, ends), *_ = (
            (p, e) for p, e in (await ledger.end_offsets(Stream.SUBSCRIBERS)).items() if e
        )
        history = await ledger.read(Stream.SUBSCRIBERS, partition, 0, ends)
        stop = next(r.position.offset for r in history if isinstance(r.event, ConsentRevoked))
        view = PostgresConsentView(pool)
        assert not await view.begin_rebuild()
        await Projector(UpTo(ledger, stop), view).catch_up()
        state = (await view.subscriber_states("acme", [PHONE]))[PHONE]
        assert state.brand_revocation is None  # the view alone would allow
    finally:
        await ledger.close()
        await pool.close()

    async with (
        running(replace(settings, projector="off", freshness=quick), clock) as runtime,
        client(runtime.address) as c,
    ):
        answer = await c.CanSend(ask)
        assert not answer.allowed and answer.reason == api.REASON_NOT_CONSISTENT, answer
        many = await c.CanSendBatch(
            api.CanSendBatchRequest(brand="acme", campaign="promo", phones=[PHONE])
        )
        assert [(d.allowed, d.reason) for d in many.decisions] == [
            (False, api.REASON_NOT_CONSISTENT)
        ]
    async with running(settings, clock) as runtime, client(runtime.address) as c:
        answer = await c.CanSend(ask)
        assert not answer.allowed and answer.reason == api.REASON_REVOKED_BRAND_WIDE, answer
