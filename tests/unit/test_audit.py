"""What is on record (``services.usecases.audit``): consent, history and the opt-out
rate, refused rather than read stale."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from ledger.commands import (
    RecordDeliveryOutcome,
    RecordMessageSent,
    RecordOptOut,
    to_events,
)
from ledger.errors import InvalidRequest
from ledger.events import (
    ANY_BRAND,
    DeliveryOutcome,
    MessageKind,
    RevocationCandidateFlagged,
    RevocationChannel,
)
from ledger.health import HealthCounts, HealthReport, combine
from ledger.policy import Reason
from ledger.ports import ConsistencyToken
from ledger.status import ConsentState
from services.errors import FailedPrecondition, NotConsistent
from services.usecases.health import HealthProgress
from tests.builders import BRAND, PHONE, _base, at
from tests.builders import opt_in as an_opt_in
from tests.unit.usecase_harness import (
    AUDITOR,
    NOW,
    define,
    opt_in,
    running,
    stop_task,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_audit_reads_the_view_cannot_serve_fresh_are_unavailable_not_stale():
    async with running(wait_bound=0.1) as (app, projector):
        await app.writes.record(define())
        granted = await app.writes.record(opt_in("r1"))
        assert await app.guard.wait_for_token(granted.token)
        assert (
            await app.audit.get_consent(PHONE, BRAND, "promo", reader=AUDITOR)
        ).grant is not None
        await stop_task(projector)
        stop = RecordOptOut("r2", PHONE, BRAND, "promo", RevocationChannel.KEYWORD, at(1))
        await app.ledger.append(to_events(stop, NOW))  # acknowledged, never applied
        await app.guard.observe()

        reads = {
            "phone": [
                app.audit.get_consent(PHONE, BRAND, "promo", reader=AUDITOR),
                app.audit.history(PHONE, BRAND, reader=AUDITOR),
            ],
            "brand": [
                app.review.revocation_candidates(BRAND, reader=AUDITOR),
                app.audit.opt_out_rate(BRAND, "promo", reader=AUDITOR),
            ],
        }
        for field, calls in reads.items():
            for call in calls:
                with pytest.raises(NotConsistent) as err:
                    await call
                assert err.value.field == field


async def test_consent_is_asked_of_a_defined_campaign_only(app):
    granted = await app.writes.record(define())
    assert await app.guard.wait_for_token(granted.token)
    for name in ("", "NOT A NAME!"):
        with pytest.raises(InvalidRequest) as bad:
            await app.audit.get_consent(PHONE, BRAND, name, reader=AUDITOR)
        assert bad.value.field == "campaign"
    with pytest.raises(FailedPrecondition) as undefined:  # a misspelling, say
        await app.audit.get_consent(PHONE, BRAND, "promoo", reader=AUDITOR)
    assert undefined.value.field == "campaign"
    assert (await app.audit.get_consent(PHONE, BRAND, "promo", reader=AUDITOR)).grant is None


@pytest.mark.parametrize("held_under", [BRAND, ANY_BRAND])
async def test_an_unattributed_hold_is_revoked_brand_wide_in_get_consent_as_in_cansend(
    app, held_under
):
    """An opt-out no defined campaign could take (one naming an undefined campaign, a
    STOP to a number no campaign sends from) counts for every campaign until it is
    resolved: CanSend answered REVOKED_BRAND_WIDE while GetConsent said
    PENDING_REVIEW. It is still listed as awaiting review."""
    await app.writes.record(define())
    await app.writes.record(opt_in("r1"))
    if held_under == BRAND:
        written = await app.writes.record(
            RecordOptOut("r2", PHONE, BRAND, "winter-sale", RevocationChannel.API, at(5))
        )
        token = written.token
    else:
        stop = RevocationCandidateFlagged(
            **_base(at(5)), phone=PHONE, brand=ANY_BRAND, inbound_message_id="in-1", text="STOP"
        )
        token = ConsistencyToken.after(await app.ledger.append([replace(stop, unattributed=True)]))
    assert await app.guard.wait_for_token(token)
    answer = (await app.checks.can_send(PHONE, BRAND, "promo")).decision
    consent = await app.audit.get_consent(PHONE, BRAND, "promo", reader=AUDITOR)
    assert answer.reason is Reason.REVOKED_BRAND_WIDE, answer
    assert consent.state is ConsentState.REVOKED_BRAND_WIDE
    assert [str(c.event.event_id) for c in consent.pending] == list(answer.evidence)
    assert consent.revocation is None  # no opt-out was recorded: one awaits review


async def test_the_opt_out_rate_counts_the_last_30_days_by_default(app):
    await app.writes.record(define())
    await app.writes.record(opt_in("r1"))
    sent = RecordMessageSent("r2", PHONE, BRAND, "promo", "m1", MessageKind.REGULAR, at(1))
    await app.writes.record(sent)
    stop = await app.writes.record(
        RecordOptOut("r3", PHONE, BRAND, "promo", RevocationChannel.KEYWORD, at(2))
    )
    await app.guard.wait_for_token(stop.token)

    rate = (await app.audit.opt_out_rate(BRAND, "promo", reader=AUDITOR)).value
    assert (rate.start, rate.end) == (NOW - timedelta(days=30), NOW)
    assert (rate.counts.messages_sent, rate.counts.opt_outs, rate.rate) == (1, 1, 1.0)
    assert rate.above_limit
    later = (await app.audit.opt_out_rate(BRAND, None, at(3), NOW, reader=AUDITOR)).value
    assert (later.counts.messages_sent, later.counts.opt_outs, later.above_limit) == (0, 0, False)


async def test_the_opt_out_rate_refuses_a_bad_window_or_an_undefined_campaign(app):
    await app.writes.record(define())
    with pytest.raises(FailedPrecondition) as undefined:
        await app.audit.opt_out_rate(BRAND, "nosuch", reader=AUDITOR)
    assert undefined.value.field == "campaign"
    with pytest.raises(InvalidRequest) as backwards:
        await app.audit.opt_out_rate(BRAND, "promo", at(5), at(5), reader=AUDITOR)
    assert backwards.value.field == "start_time"
    with pytest.raises(InvalidRequest) as future:
        await app.audit.opt_out_rate(BRAND, "promo", None, NOW + timedelta(days=1), reader=AUDITOR)
    assert future.value.field == "end_time"
    with pytest.raises(InvalidRequest) as too_early:
        await app.audit.opt_out_rate(
            BRAND, None, None, datetime(1, 1, 2, tzinfo=UTC), reader=AUDITOR
        )
    assert too_early.value.field == "end_time"
    with pytest.raises(InvalidRequest) as naive:
        await app.audit.opt_out_rate(BRAND, None, at(0).replace(tzinfo=None), NOW, reader=AUDITOR)
    assert naive.value.field == "start_time"


def _sent(request_id: str, message_id: str, minutes: float, **kw) -> RecordMessageSent:
    return RecordMessageSent(
        request_id, PHONE, BRAND, "promo", message_id, MessageKind.REGULAR, at(minutes), **kw
    )


async def test_campaign_health_counts_per_sending_number_from_the_view(app):
    await app.writes.record(define())
    await app.writes.record(opt_in("r1"))
    await app.writes.record(_sent("s1", "m1", 1, from_number="+12125550100"))
    await app.writes.record(_sent("s2", "m2", 2, from_number="+12125550101"))
    await app.writes.record(
        RecordDeliveryOutcome("d1", PHONE, BRAND, "m1", DeliveryOutcome.FAILED, at(3))
    )
    stop = await app.writes.record(
        RecordOptOut("r3", PHONE, BRAND, "promo", RevocationChannel.KEYWORD, at(4))
    )
    await app.guard.wait_for_token(stop.token)

    health = (await app.audit.campaign_health(BRAND, None, reader=AUDITOR)).value
    assert (health.start, health.end) == (NOW - timedelta(days=30), NOW)
    [promo] = health.campaigns
    assert promo.counts == HealthCounts(2, 1, 1)
    assert [(s.from_number, s.counts) for s in promo.senders] == [
        ("+12125550100", HealthCounts(1, 0, 1)),  # failed
        ("+12125550101", HealthCounts(1, 1, 0)),  # the STOP came after it
    ]
    assert health.flagged
    later = (await app.audit.campaign_health(BRAND, "promo", at(5), NOW, reader=AUDITOR)).value
    assert later.campaigns == () and not later.flagged


async def test_campaign_health_refuses_a_bad_window_or_an_undefined_campaign(app):
    await app.writes.record(define())
    with pytest.raises(FailedPrecondition) as undefined:
        await app.audit.campaign_health(BRAND, "nosuch", reader=AUDITOR)
    assert undefined.value.field == "campaign"
    with pytest.raises(InvalidRequest) as backwards:
        await app.audit.campaign_health(BRAND, "promo", at(5), at(5), reader=AUDITOR)
    assert backwards.value.field == "start_time"
    with pytest.raises(InvalidRequest) as future:
        await app.audit.campaign_health(
            BRAND, "promo", None, NOW + timedelta(days=1), reader=AUDITOR
        )
    assert future.value.field == "end_time"
    with pytest.raises(InvalidRequest) as bad_brand:
        await app.audit.campaign_health("NOT A BRAND", None, reader=AUDITOR)
    assert bad_brand.value.field == "brand"


async def test_campaign_health_resumed_without_its_finished_partitions_adds_up_to_the_whole(
    app,
):
    await app.writes.record(define())
    last = None
    for i in range(12):  # numbers on every partition of the ledger
        phone = f"+1415555{2600 + i:04d}"
        await app.writes.record(an_opt_in(at(0), request_id=f"o{i}", phone=phone))
        last = await app.writes.record(
            RecordMessageSent(f"s{i}", phone, BRAND, "promo", f"m{i}", MessageKind.REGULAR, at(1))
        )
        if i % 3 == 0:
            last = await app.writes.record(
                RecordOptOut(f"r{i}", phone, BRAND, "promo", RevocationChannel.KEYWORD, at(2))
            )
    assert last is not None and await app.guard.wait_for_token(last.token)
    whole = (await app.audit.campaign_health(BRAND, None, reader=AUDITOR)).value

    items = [i async for i in app.audit.campaign_health_stream(BRAND, None, reader=AUDITOR)]
    ends = [i for i in items if isinstance(i, HealthProgress) and i.partition is not None]
    assert len(ends) > 1 and [len(e.partitions_done) for e in ends] == list(range(1, len(ends) + 1))
    first, token = ends[0], ends[0].token
    resumed = [
        i
        async for i in app.audit.campaign_health_stream(
            BRAND,
            None,
            whole.start,
            whole.end,
            reader=AUDITOR,
            resume_at=token,
            skip=frozenset(first.partitions_done),
        )
    ]
    rest = resumed[-1]
    assert isinstance(rest, HealthReport) and isinstance(first.partition, HealthReport)
    assert rest.campaigns != whole.campaigns  # the first partition is not read again
    combined = combine(BRAND, None, whole.start, whole.end, whole.limits, [first.partition, rest])
    assert combined.campaigns == whole.campaigns
    assert combined.unattributed_opt_outs == whole.unattributed_opt_outs
