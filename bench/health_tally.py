"""What campaign health's fold costs (``ledger.health.HealthTally``), in one process:
its rate over generated events beside a bare loop over the same events and beside
``ledger.opt_out_rate.count_sending`` (GetOptOutRate's rule), and the memory it keeps
(``tracemalloc``: what the tally allocates and holds, the events excluded).

    python -m bench.health_tally [--numbers N] [--sends-each K] [--partitions P]

With ``--partitions``, also the peak memory of the service's way (a tally per ledger
partition, each reduced to its counts before the next: ``ledger.health.combine``)
beside one tally of every number at once.

The view's paging (``services.usecases.health``) and the decoding of each event
are not in it: this is the fold alone, the part whose memory grows with the data.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta

from ledger.events import (
    ConsentRevoked,
    DeliveryOutcome,
    DeliveryOutcomeReported,
    LedgerEvent,
    LedgerPosition,
    MessageKind,
    MessageSent,
    Recorded,
    RevocationChannel,
)
from ledger.health import HealthLimits, HealthTally, combine
from ledger.opt_out_rate import count_sending

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def events(numbers: int, sends_each: int) -> list[Recorded]:
    """Each number texted ``sends_each`` times from one of four numbers; one send in
    twenty failed; one number in a hundred opted out after its last message."""
    out: list[Recorded] = []
    offset = 0

    def add(event: LedgerEvent) -> None:
        nonlocal offset
        out.append(Recorded(event, LedgerPosition(0, offset), event.occurred_at))
        offset += 1

    for n in range(numbers):
        phone = f"+1415{n:07d}"
        for k in range(sends_each):
            at = T0 + timedelta(minutes=n % 1440, days=k)
            sent = MessageSent(
                event_id=uuid.uuid4(),
                occurred_at=at,
                phone=phone,
                brand="acme",
                message_id=f"SM{n}-{k}",
                campaign=f"c{n % 3}",
                kind=MessageKind.REGULAR,
                from_number=f"+1212555010{n % 4}",
            )
            add(sent)
            if (n + k) % 20 == 0:
                add(
                    DeliveryOutcomeReported(
                        event_id=uuid.uuid4(),
                        occurred_at=at,
                        phone=phone,
                        brand="acme",
                        message_id=sent.message_id,
                        campaign=sent.campaign,
                        outcome=DeliveryOutcome.FAILED,
                        error_code="30003",
                    )
                )
        if n % 100 == 0:
            add(
                ConsentRevoked(
                    event_id=uuid.uuid4(),
                    occurred_at=T0 + timedelta(days=sends_each),
                    phone=phone,
                    brand="acme",
                    campaign=None,
                    channel=RevocationChannel.KEYWORD,
                )
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--numbers", type=int, default=100_000)
    parser.add_argument("--sends-each", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=0)
    args = parser.parse_args()
    recorded = events(args.numbers, args.sends_each)
    start, end = T0, T0 + timedelta(days=args.sends_each + 1)
    events_ = [r.event for r in recorded]

    began = time.perf_counter()
    for _ in recorded:
        pass
    bare = time.perf_counter() - began
    began = time.perf_counter()
    count_sending(events_, "acme", None, start, end)
    rate_rule = time.perf_counter() - began
    # The first fold touches fresh memory (its page faults are part of a real
    # answer's cost); later ones reuse what the first freed.
    folds = []
    for _ in range(3):
        began = time.perf_counter()
        HealthTally("acme", None, start, end).feed_all(recorded).report()
        folds.append(time.perf_counter() - began)
    folded = folds[0]
    # Again under tracemalloc, which slows allocation: for the memory only.
    tracemalloc.start()
    tally = HealthTally("acme", None, start, end).feed_all(recorded)
    held, peak = tracemalloc.get_traced_memory()
    report = tally.report()
    tracemalloc.stop()

    sends = sum(c.counts.messages_sent for c in report.campaigns)
    print(f"{len(recorded):,} events ({sends:,} sends, {args.numbers:,} numbers)")
    print(f"bare loop        {len(recorded) / bare:14,.0f} events/s")
    print(f"count_sending    {len(recorded) / rate_rule:14,.0f} events/s")
    print(
        f"HealthTally      {len(recorded) / folded:14,.0f} events/s"
        f"  ({folded / rate_rule:.2f} x count_sending's time); the next two "
        + ", ".join(f"{len(recorded) / f:,.0f}" for f in folds[1:])
    )
    print(
        f"tally memory     {held / 2**20:10,.1f} MiB held after the fold, "
        f"{held / sends:,.0f} bytes a send; peak {peak / 2**20:,.1f} MiB"
    )
    if args.partitions:
        # A number's events share a partition; split as the ledger keys them (by
        # number), outside the measurement, as the view hands them over.
        parts: list[list[Recorded]] = [[] for _ in range(args.partitions)]
        for r in recorded:
            parts[hash(r.event.phone) % args.partitions].append(r)  # type: ignore[attr-defined]
        tracemalloc.start()
        reports = []
        for part in parts:
            reports.append(HealthTally("acme", None, start, end).feed_all(part).report())
        combined = combine("acme", None, start, end, HealthLimits(), reports)
        _, part_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert combined.campaigns == report.campaigns, "a partition at a time counts alike"
        print(
            f"per partition    {part_peak / 2**20:10,.1f} MiB peak over {args.partitions} "
            f"partitions ({part_peak / peak:.2f} x one tally's peak), the same counts"
        )


if __name__ == "__main__":
    main()
