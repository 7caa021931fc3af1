"""The proof packet's use case (``Audit.proof_packet``): the number's facts, a
campaign never defined refused, and tamper evidence that cannot be read said so
rather than hiding the packet."""

from __future__ import annotations

import pytest

from services.errors import FailedPrecondition
from services.usecases.audit import Audit
from tests.builders import BRAND, PHONE
from tests.unit.usecase_harness import AUDITOR, define, opt_in, running

pytestmark = pytest.mark.asyncio(loop_scope="session")


class Broken:
    async def of(self, positions, withheld=()):  # type: ignore[no-untyped-def]
        list(positions)
        raise TimeoutError("the checkpoint topic did not answer")


class Recording:
    def __init__(self) -> None:
        self.asked: list[tuple[int, int]] = []

    async def of(self, positions, withheld=()):  # type: ignore[no-untyped-def]
        self.asked = list(positions)
        return {"status": "proven", "detail": "test"}


async def test_the_packet_reads_the_numbers_facts_and_asks_for_their_proof():
    async with running() as (app, _):
        await app.writes.record(define())
        granted = await app.writes.record(opt_in("r1"))
        assert await app.guard.wait_for_token(granted.token)
        evidence = Recording()
        audit = Audit(app.audit.ctx, evidence)
        read = await audit.proof_packet(PHONE, BRAND, "promo", granted.token, reader=AUDITOR)
        [grant] = read.value.opt_ins
        assert grant.event.event_id == granted.event_ids[0]
        assert evidence.asked == [(grant.event.partition, grant.event.offset)]
        assert read.value.tamper_evidence == {"status": "proven", "detail": "test"}
        with pytest.raises(FailedPrecondition):
            await audit.proof_packet(PHONE, BRAND, "promo-typo", reader=AUDITOR)


async def test_evidence_that_cannot_be_read_is_said_and_the_packet_still_given():
    async with running() as (app, _):
        await app.writes.record(define())
        granted = await app.writes.record(opt_in("r1"))
        read = await Audit(app.audit.ctx, Broken()).proof_packet(
            PHONE, BRAND, None, granted.token, reader=AUDITOR
        )
        assert len(read.value.opt_ins) == 1
        assert read.value.tamper_evidence is not None
        assert read.value.tamper_evidence["status"] == "unavailable"
        assert "did not answer" in read.value.tamper_evidence["detail"]
