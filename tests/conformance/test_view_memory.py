"""The ``ConsentView`` conformance suite against ``InMemoryConsentView``, and its
campaign slice against the ``CampaignHistoryCache`` in front of one."""

from __future__ import annotations

import pytest

from ledger.ports import ConsistencyToken, Stream
from ledger.state import CampaignHistory
from services.adapters.digest_replica import CampaignHistoryCache
from services.adapters.memory_view import InMemoryConsentView
from tests.conformance.view_suite import (
    T0,
    CampaignReadsSuite,
    ConsentViewSuite,
    PassTime,
    Positions,
    define,
)


class _Clock:
    """A monotonic clock that moves only when the test moves it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def pass_time(self, seconds: float) -> None:
        self.now += seconds


class TestInMemoryConsentView(ConsentViewSuite):
    @pytest.fixture
    def clock(self) -> _Clock:
        return _Clock()

    @pytest.fixture
    def view(self, clock: _Clock) -> InMemoryConsentView:
        return InMemoryConsentView(monotonic=clock)

    @pytest.fixture
    def pass_time(self, clock: _Clock) -> PassTime:
        return clock.pass_time


class TestCampaignHistoryCache(CampaignReadsSuite):
    """The cache in front of a view answers what the view answers."""

    @pytest.fixture
    def view(self) -> InMemoryConsentView:
        return InMemoryConsentView()

    @pytest.fixture
    def campaign_reads(self, view: InMemoryConsentView) -> CampaignHistoryCache:
        return CampaignHistoryCache(view)


async def test_the_cache_reads_the_view_again_only_after_the_campaigns_move() -> None:
    view = InMemoryConsentView()
    await view.apply(Stream.CAMPAIGNS, Positions().record([define("acme", "deals", T0)]))
    reads: list[tuple[str, str]] = []
    real = view.campaign_history

    async def counted(brand: str, campaign: str) -> CampaignHistory:
        reads.append((brand, campaign))
        return await real(brand, campaign)

    view.campaign_history = counted  # type: ignore[method-assign]
    cache = CampaignHistoryCache(view)
    seen = ConsistencyToken({(Stream.CAMPAIGNS, 0): 1})
    for _ in range(3):
        cache.observe(seen)
        await cache.campaign_history("acme", "deals")
    assert reads == [("acme", "deals")]

    cache.observe(ConsistencyToken({(Stream.CAMPAIGNS, 0): 1, (Stream.SUBSCRIBERS, 0): 7}))
    await cache.campaign_history("acme", "deals")
    assert len(reads) == 1  # subscriber writes leave the rules alone

    cache.observe(ConsistencyToken({(Stream.CAMPAIGNS, 0): 2}))
    await cache.campaign_history("acme", "deals")
    assert len(reads) == 2
