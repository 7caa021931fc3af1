"""The use cases on the in-memory adapters, as a process wires them (fast; the real
path is in tests/e2e), and the requests the use-case tests share."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import timedelta

from ledger.campaigns import CampaignPolicy
from ledger.commands import ChangeCampaignPolicy, DefineCampaign, RecordOptIn
from ledger.events import LedgerEvent, Recorded
from ledger.ports import Stream
from services.adapters.digest_replica import CampaignHistoryCache
from services.adapters.memory_ledger import InMemoryLedger
from services.adapters.memory_view import InMemoryConsentView
from services.freshness import FreshnessGuard
from services.projector import Projector
from services.settings import FreshnessSettings
from services.usecases import UseCases
from services.usecases.access import Access, Reader
from services.usecases.audit import Audit
from services.usecases.checks import Checks
from services.usecases.review import Review
from services.usecases.sends import Sends
from services.usecases.writes import Writes
from tests.builders import BRAND, at
from tests.builders import opt_in as an_opt_in

NOW = at(60)
AUDITOR = Reader("auditor", None, "req-test")
"""A reader of every brand, as an operator's audit token is."""


@dataclass(frozen=True)
class App:
    """The use cases on one ledger, view and guard, which a test may look at."""

    ledger: InMemoryLedger
    view: InMemoryConsentView
    guard: FreshnessGuard
    writes: Writes
    checks: Checks
    audit: Audit
    review: Review
    access: Access
    sends: Sends


def wired(ledger: InMemoryLedger, view: InMemoryConsentView, guard: FreshnessGuard) -> App:
    """The use cases as ``services.bootstrap`` builds them, at ``NOW``."""
    built = UseCases.build(
        ledger, view, guard, clock=lambda: NOW, campaigns=CampaignHistoryCache(view)
    )
    return App(
        ledger,
        view,
        guard,
        built.writes,
        built.checks,
        built.audit,
        built.review,
        built.access,
        built.sends,
    )


@contextlib.asynccontextmanager
async def instances(
    count: int = 1,
    *,
    wait_bound: float = 1,
    ledger: InMemoryLedger | None = None,
    view: InMemoryConsentView | None = None,
) -> AsyncIterator[tuple[list[App], asyncio.Task[None]]]:
    """``count`` apps on the in-memory adapters, as processes would be, sharing one
    ledger and one view, with the view's projector task (a test may stop it)."""
    ledger = ledger or InMemoryLedger(partitions=4)
    view = InMemoryConsentView() if view is None else view
    projector = asyncio.create_task(Projector(ledger, view, poll_timeout=0.01).run())
    settings = FreshnessSettings(refresh_interval=0.01, wait_bound=wait_bound)
    guards = [FreshnessGuard(ledger, view, settings) for _ in range(count)]
    for guard in guards:
        await guard.start()
    try:
        yield [wired(ledger, view, guard) for guard in guards], projector
        await assert_view_within_ledger(ledger, view)
    finally:
        for guard in guards:
            await guard.stop()
        await stop_task(projector)


@contextlib.asynccontextmanager
async def running(
    wait_bound: float = 1,
    ledger: InMemoryLedger | None = None,
    view: InMemoryConsentView | None = None,
) -> AsyncIterator[tuple[App, asyncio.Task[None]]]:
    """An app on the in-memory adapters, with its projector task (a test may stop it)."""
    async with instances(wait_bound=wait_bound, ledger=ledger, view=view) as ([app], projector):
        yield app, projector


@contextlib.asynccontextmanager
async def unprojected() -> AsyncIterator[App]:
    """An app whose view applies nothing and whose guard observes only when asked:
    what the ledger holds, the view lacks, and the guard learns it only on a look."""
    ledger, view = InMemoryLedger(partitions=4), InMemoryConsentView()
    guard = FreshnessGuard(ledger, view, FreshnessSettings(wait_bound=0.1))
    await guard.observe()
    yield wired(ledger, view, guard)
    await assert_view_within_ledger(ledger, view)


async def assert_view_within_ledger(ledger: InMemoryLedger, view: InMemoryConsentView) -> None:
    """Fail a test whose view applied positions its ledger never held, every time.
    The freshness guard fails reads closed on such a view once it looks at the
    ledger again, so the test passed only while no look fell between its write
    and its read: on a quick machine, not on a loaded one."""
    for stream in Stream:
        ends = await ledger.end_offsets(stream)
        ahead = {
            p: (applied, ends.get(p, 0))
            for p, applied in (await view.positions(stream)).items()
            if applied > ends.get(p, 0)
        }
        assert not ahead, (
            f"the view applied {stream.value} positions its ledger lacks "
            f"(partition: (applied, end) {ahead}); append the facts to the ledger too"
        )


async def stop_task(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def ledger_at_now() -> InMemoryLedger:
    """A ledger whose ``recorded_at`` is the app's now: a check as of now knows it all."""
    return InMemoryLedger(partitions=4, clock=lambda: NOW)


class SlowLedger(InMemoryLedger):
    """Appends that take a while, as over a network: time for another request to run."""

    async def append(self, events: Sequence[LedgerEvent]) -> list[Recorded]:
        await asyncio.sleep(0.05)
        return await super().append(events)


class GatedLedger(InMemoryLedger):
    """Appends that wait for ``gate``, saying when one has begun."""

    def __init__(self, partitions: int) -> None:
        super().__init__(partitions=partitions)
        self.begun, self.gate = asyncio.Event(), asyncio.Event()

    async def append(self, events: Sequence[LedgerEvent]) -> list[Recorded]:
        self.begun.set()
        await self.gate.wait()
        return await super().append(events)


def opt_in(request_id: str) -> RecordOptIn:
    return an_opt_in(at(0), request_id=request_id)


def define(request_id: str = "define-promo") -> DefineCampaign:
    return DefineCampaign(request_id, BRAND, "promo", CampaignPolicy(), at(0) - timedelta(days=1))


NUMBER, OTHER_NUMBER = "+12125550100", "+12125550101"
"""Sender numbers a campaign may claim."""


def claim(
    request_id: str, brand: str, campaign: str, *numbers: str, change: bool = False
) -> DefineCampaign | ChangeCampaignPolicy:
    cls = ChangeCampaignPolicy if change else DefineCampaign
    return cls(
        request_id,
        brand,
        campaign,
        CampaignPolicy(sender_numbers=numbers),
        at(0) - timedelta(days=1),
    )
