"""The use-case harness (``tests.unit.usecase_harness``) itself: a test built on it
that could pass or fail with the machine's speed fails every time instead."""

from __future__ import annotations

import pytest

from ledger.events import LedgerPosition, Recorded
from ledger.ports import Stream
from tests.builders import BRAND, PHONE, at
from tests.conformance.view_suite import flag
from tests.unit.usecase_harness import running, stop_task, unprojected

pytestmark = pytest.mark.asyncio(loop_scope="session")


def _unwritten() -> Recorded:
    """A fact at a position no ledger of the harness has given."""
    return Recorded(flag(PHONE, BRAND, at(1)), LedgerPosition(0, 0), at(1))


async def test_a_view_ahead_of_its_ledger_fails_the_test_however_quick_the_run():
    """No read fell after the guard's next look (the test reads nothing), yet the
    test fails: a view holding facts its ledger lacks is the test's mistake."""
    with pytest.raises(AssertionError, match="positions its ledger lacks"):
        async with running() as (app, projector):
            await stop_task(projector)
            await app.view.apply(Stream.SUBSCRIBERS, [_unwritten()])


async def test_an_unprojected_view_ahead_of_its_ledger_fails_the_test_too():
    with pytest.raises(AssertionError, match="positions its ledger lacks"):
        async with unprojected() as app:
            await app.view.apply(Stream.SUBSCRIBERS, [_unwritten()])


async def test_a_view_that_applied_what_its_ledger_holds_passes():
    async with running() as (app, projector):
        await stop_task(projector)
        written = await app.ledger.append([flag(PHONE, BRAND, at(1))])
        await app.view.apply(Stream.SUBSCRIBERS, written)
