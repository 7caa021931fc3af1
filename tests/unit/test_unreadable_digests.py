"""A number whose stored digest cannot be read (``UnreadableDigests``): checks deny it
alone, and the writes that read digests read its whole state instead of failing."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest

from ledger.commands import RecordOptOut
from ledger.digest import Digest
from ledger.events import ConsentRevoked, RevocationChannel
from ledger.policy import Reason
from ledger.ports import UnreadableDigests
from services.adapters.memory_view import InMemoryConsentView
from services.usecases.checks import UNREADABLE
from services.usecases.writes import opt_outs_placed_since
from tests.builders import BRAND, PHONE, at
from tests.unit.usecase_harness import define, opt_in

pytestmark = pytest.mark.asyncio(loop_scope="session")

OTHER = "+12125551234"


def unreadable(view: InMemoryConsentView, *phones: str) -> None:
    """Make ``view.digests`` fail for ``phones`` as the replica does for corrupt rows."""
    real = view.digests

    async def digests(brand: str, asked: Sequence[str]) -> dict[str, Digest]:
        found = await real(brand, asked)
        bad = [p for p in asked if p in phones]
        if bad:
            raise UnreadableDigests({p: d for p, d in found.items() if p not in bad}, bad)
        return found

    view.digests = digests  # type: ignore[method-assign]


async def _opted_in(app) -> None:
    await app.writes.record(define())
    await app.writes.record(opt_in("r-1"))
    written = await app.writes.record(dataclasses.replace(opt_in("r-2"), phone=OTHER))
    assert (await app.checks.can_send(OTHER, BRAND, "promo", token=written.token)).decision.allowed


async def test_checks_deny_the_unreadable_number_alone(app):
    await _opted_in(app)
    unreadable(app.view, PHONE)
    one = await app.checks.can_send(PHONE, BRAND, "promo")
    assert not one.decision.allowed and one.decision.reason is Reason.INTERNAL_ERROR
    assert one.decision.detail == UNREADABLE
    assert (await app.checks.can_send(OTHER, BRAND, "promo")).decision.allowed
    batch = await app.checks.can_send_batch([PHONE, OTHER, " +1 212 555 1234"], BRAND, "promo")
    assert [(d.allowed, d.reason) for d in batch.decisions] == [
        (False, Reason.INTERNAL_ERROR),
        (True, Reason.CONSENT_ACTIVE),
        (True, Reason.CONSENT_ACTIVE),
    ]
    # Written another way, the number is looked up in its stored form: denied too.
    again = await app.checks.can_send_batch(["+1 415 555 2671", OTHER], BRAND, "promo")
    assert [d.reason for d in again.decisions] == [Reason.INTERNAL_ERROR, Reason.CONSENT_ACTIVE]


async def test_an_opt_out_of_the_unreadable_number_is_recorded(app):
    await _opted_in(app)
    unreadable(app.view, PHONE)
    written = await app.writes.record(
        RecordOptOut("r-stop", PHONE, BRAND, "promo", RevocationChannel.KEYWORD, at(1))
    )
    assert written.event_ids
    assert any(isinstance(r.event, ConsentRevoked) for r in await app.view.history(PHONE))


async def test_opt_outs_placed_since_reads_the_unreadable_numbers_history(app):
    await _opted_in(app)
    await app.writes.record(
        RecordOptOut("r-stop", PHONE, BRAND, "promo", RevocationChannel.KEYWORD, at(1))
    )
    await app.writes.record(
        RecordOptOut("r-stop-2", OTHER, BRAND, "promo", RevocationChannel.KEYWORD, at(1))
    )
    await app.guard.wait_until_applied_for([PHONE, OTHER])
    unreadable(app.view, PHONE)
    found = await opt_outs_placed_since(app.view, BRAND, {PHONE: at(0), OTHER: at(0)})
    assert set(found) == {PHONE, OTHER}
