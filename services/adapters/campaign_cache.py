"""Campaign rules kept in memory between campaign writes.

Every check reads its campaign's rules; they change only when the campaign stream
moves, which is rare. ``CampaignHistoryCache`` wraps the view's ``CampaignReads`` and
answers from memory while the campaign stream's positions, as the freshness guard
last observed them, stay the same. It passes the view's ``CampaignReadsSuite``.
"""

from __future__ import annotations

from ledger.ports import CampaignReads, ConsistencyToken, Stream
from ledger.state import CampaignHistory


class CampaignHistoryCache(CampaignReads):
    def __init__(self, view: CampaignReads) -> None:
        self.view = view
        self._histories: dict[tuple[str, str], CampaignHistory] = {}
        self._seen: ConsistencyToken | None = None
        self._at: tuple[tuple[int, int], ...] | None = None
        self._generation = 0
        """Bumped when the cache is emptied: a read that began before must not store
        its answer."""

    def observe(self, seen: ConsistencyToken) -> None:
        if seen is self._seen:  # the guard keeps one token per observation
            return
        self._seen = seen
        at = tuple(sorted((p, o) for (s, p), o in seen.offsets.items() if s is Stream.CAMPAIGNS))
        if at != self._at:
            self._histories.clear()
            self._at = at
            self._generation += 1

    async def campaign_history(self, brand: str, campaign: str) -> CampaignHistory:
        history = self._histories.get((brand, campaign))
        if history is not None:
            return history
        generation = self._generation
        history = await self.view.campaign_history(brand, campaign)
        # Kept only if no newer observation emptied the cache meanwhile: a read that
        # began before it may predate the rules those positions include, and would be
        # served, stale, until the next campaign write. Nothing is kept before the
        # first observation, nor for a campaign not yet defined.
        if self._at is not None and history.versions and generation == self._generation:
            self._histories[(brand, campaign)] = history
        return history
