"""A compliance sweep resumed (``services.usecases.sweeps``): it goes a partition at a
time and says which it finished, and a sweep resumed from those reads the same view,
skips them, and finds what the uninterrupted sweep found in the others."""

from __future__ import annotations

import pytest

from ledger.commands import RecordMessagesSent, SentMessage
from ledger.events import MessageKind
from ledger.sweep import Finding
from services.usecases.sweeps import SweepProgress, sweep_campaign
from tests.builders import BRAND, at
from tests.unit.usecase_harness import define, running

pytestmark = pytest.mark.asyncio(loop_scope="session")

WAIT = 30.0


def send(i: int) -> SentMessage:
    # no consent and no answer relied on: every send is a finding
    return SentMessage(f"+1415555{i:04d}", "promo", f"SM-{i}", MessageKind.REGULAR, at(10))


async def test_a_resumed_sweep_skips_the_partitions_finished_and_finds_the_rest():
    async with running(WAIT) as (app, _):
        await app.writes.record(define())
        written = await app.sends.record(
            RecordMessagesSent("b1", BRAND, tuple(send(i) for i in range(40)))
        )
        assert await app.guard.wait_for_token(written.token)
        ctx = app.sends.ctx

        whole = [i async for i in sweep_campaign(ctx, BRAND, "promo", at(0), at(60))]
        found: dict[int, list[str]] = {}
        for item in whole:
            if isinstance(item, Finding):
                found.setdefault(item.sent.position.partition, []).append(item.message.message_id)
        assert len(found) >= 2  # the sends spread over several partitions
        last = whole[-1]
        assert isinstance(last, SweepProgress) and last.done == 1.0
        assert set(found) <= set(last.partitions_done)
        # partition-major: each partition's findings come together
        order = [i.sent.position.partition for i in whole if isinstance(i, Finding)]
        assert order == sorted(order, key=order.index)

        # stop at the first partition finished, as an interrupted sweep would
        first: SweepProgress | None = None
        stream = sweep_campaign(ctx, BRAND, "promo", at(0), at(60))
        async for item in stream:
            if isinstance(item, SweepProgress) and item.partitions_done:
                first = item
                break
        await stream.aclose()
        assert first is not None
        skipped = set(first.partitions_done)

        resumed = [
            i
            async for i in sweep_campaign(
                ctx, BRAND, "promo", at(0), at(60), resume_at=first.token, skip=frozenset(skipped)
            )
        ]
        again = [i.message.message_id for i in resumed if isinstance(i, Finding)]
        want = [m for p in sorted(found) if p not in skipped for m in found[p]]
        assert again == want
        end = resumed[-1]
        assert isinstance(end, SweepProgress)
        assert end.events_read + first.events_read == last.events_read  # none read twice
        assert end.events_read < last.events_read
        assert set(end.partitions_done) == set(last.partitions_done)
