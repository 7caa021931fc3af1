"""CanSend for a moment other than now: the past as CanSendAsOf answers it, the near
future provisionally, and nothing beyond the horizon (on the in-memory adapters)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from ledger.campaigns import CampaignPolicy, FrequencyCap
from ledger.commands import DefineCampaign, RecordMessageSent, RecordOptOut
from ledger.errors import InvalidRequest
from ledger.events import MAX_CLOCK_SKEW, MessageKind, RevocationChannel
from ledger.policy import Reason
from ledger.ports import AccessQuery
from services.adapters.memory_ledger import InMemoryLedger
from services.errors import PermissionDenied
from services.usecases.checks import Checks
from services.usecases.context import Context
from tests.builders import BRAND, PHONE, at
from tests.builders import opt_in as an_opt_in
from tests.unit.usecase_harness import AUDITOR, NOW, define, ledger_at_now, opt_in, running

pytestmark = pytest.mark.asyncio(loop_scope="session")
OTHER = "+14155550199"


class Recording:
    """The ledger's clock, which the test moves to each fact's time as it records it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def test_a_check_for_a_past_moment_counts_no_grant_given_after_it():
    async with running(ledger=ledger_at_now()) as (app, _):
        await app.writes.record(define())
        granted = await app.writes.record(opt_in("r1"))  # at(0)
        before = await app.checks.can_send(
            PHONE, BRAND, "promo", at=at(-10), token=granted.token, reader=AUDITOR
        )
        assert not before.decision.allowed and before.decision.reason is Reason.NO_CONSENT
        assert not before.provisional
        assert (
            await app.checks.can_send(PHONE, BRAND, "promo", token=granted.token)
        ).decision.allowed


async def test_a_check_for_a_past_moment_answers_as_the_check_as_of_does():
    # Each fact recorded when it happened: what was recorded after a past moment
    # counts against it, never for it.
    recording = Recording(at(-30))
    async with running(ledger=InMemoryLedger(partitions=4, clock=recording)) as (app, _):
        await app.writes.record(define())
        recording.now = at(0)
        await app.writes.record(opt_in("r1"))
        recording.now = at(30)
        stop = RecordOptOut("r2", PHONE, BRAND, "promo", RevocationChannel.KEYWORD, at(30))
        written = await app.writes.record(stop)
        recording.now = NOW
        for moment in (at(-10), at(10), at(30), at(45)):
            single = await app.checks.can_send(
                PHONE, BRAND, "promo", at=moment, token=written.token, reader=AUDITOR
            )
            audit = await app.checks.can_send_as_of(PHONE, BRAND, "promo", moment, reader=AUDITOR)
            assert single.decision == audit.decision, moment
            batch = await app.checks.can_send_batch(
                [PHONE, OTHER, PHONE],
                BRAND,
                "promo",
                at=moment,
                token=written.token,
                reader=AUDITOR,
            )
            assert batch.decisions == [audit.decision, batch.decisions[1], audit.decision]
            assert batch.decisions[1].reason is Reason.NO_CONSENT and not batch.provisional
        then = await app.checks.can_send(PHONE, BRAND, "promo", at=at(10), reader=AUDITOR)
        assert then.decision.allowed


async def test_a_past_batch_naming_a_number_twice_counts_the_entry_allowed_before():
    recording = Recording(at(-30))
    async with running(ledger=InMemoryLedger(partitions=4, clock=recording)) as (app, _):
        capped = CampaignPolicy(frequency_caps=(FrequencyCap(2, timedelta(hours=6)),))
        await app.writes.record(
            DefineCampaign("d", BRAND, "promo", capped, at(0) - timedelta(days=1))
        )
        recording.now = at(0)
        await app.writes.record(opt_in("r1"))
        recording.now = at(1)
        sent = RecordMessageSent("s1", PHONE, BRAND, "promo", "m1", MessageKind.REGULAR, at(1))
        written = await app.writes.record(sent)
        recording.now = NOW

        batch = await app.checks.can_send_batch(
            [PHONE, OTHER, "+1 415 555 2671", PHONE],
            BRAND,
            "promo",
            at=at(10),
            token=written.token,
            reader=AUDITOR,
        )
        audit = await app.checks.can_send_as_of(PHONE, BRAND, "promo", at(10), reader=AUDITOR)

        assert audit.decision.allowed and batch.decisions[0] == audit.decision
        assert batch.decisions[1].reason is Reason.NO_CONSENT
        for denied in batch.decisions[2:]:
            assert denied.reason is Reason.FREQUENCY_CAP_REACHED
            assert "phones[0]," in denied.detail


async def test_a_past_batch_answers_a_phone_that_is_not_a_number_in_its_place():
    async with running(ledger=ledger_at_now()) as (app, _):
        await app.writes.record(define())
        result = await app.checks.can_send_batch(
            [PHONE, "not a number"], BRAND, "promo", at=at(-10), reader=AUDITOR
        )
        assert [d.reason for d in result.decisions][1] == Reason.INVALID_PHONE
        assert not result.decisions[1].allowed
        assert result.decisions[0].reason != Reason.INVALID_PHONE


@pytest.mark.parametrize("batch", [False, True])
async def test_a_check_for_a_past_moment_without_the_audit_scope_is_refused_on_at(batch):
    """Past, a check answers from the number's history what CanSendAsOf answers: a
    check-only token read past decisions unrecorded, and a sender whose clock ran
    behind was told "allowed" for the moment before a STOP it had just received."""
    async with running(ledger=ledger_at_now()) as (app, _):
        await app.writes.record(define())
        await app.writes.record(opt_in("r1"))
        stop = RecordOptOut("r2", PHONE, BRAND, "promo", RevocationChannel.KEYWORD, at(30))
        written = await app.writes.record(stop)
        with pytest.raises(PermissionDenied) as err:
            if batch:
                await app.checks.can_send_batch([PHONE], BRAND, "promo", at=at(10))
            else:
                await app.checks.can_send(PHONE, BRAND, "promo", at=at(10), token=written.token)
        assert err.value.field == "at" and "audit scope" in err.value.reason
        now = await app.checks.can_send(PHONE, BRAND, "promo", token=written.token)
        assert now.decision.reason is Reason.REVOKED


@pytest.mark.parametrize("behind", [timedelta(seconds=1), MAX_CLOCK_SKEW])
async def test_a_moment_within_the_clock_skew_before_now_is_a_check_of_now(behind):
    """A sender passing its own now, from a clock behind the service's, asks about a
    send now: it is answered from every fact known now, with no audit scope, so a STOP
    recorded since that moment denies (and a check-only token is not refused)."""
    async with running(ledger=ledger_at_now()) as (app, _):
        await app.writes.record(define())
        await app.writes.record(opt_in("r1"))
        stop = RecordOptOut(
            "r2", PHONE, BRAND, "promo", RevocationChannel.KEYWORD, NOW - timedelta(seconds=1)
        )
        written = await app.writes.record(stop)
        single = await app.checks.can_send(
            PHONE, BRAND, "promo", at=NOW - behind, token=written.token
        )
        batch = await app.checks.can_send_batch([PHONE], BRAND, "promo", at=NOW - behind)
        for answer in (single.decision, *batch.decisions):
            assert answer.reason is Reason.REVOKED
        assert not single.provisional and not batch.provisional
        with pytest.raises(PermissionDenied):
            await app.checks.can_send(
                PHONE, BRAND, "promo", at=NOW - MAX_CLOCK_SKEW - timedelta(seconds=1)
            )
        assert not await app.audit.ctx.access.log.list(AccessQuery(brands=None))


async def test_a_check_for_a_past_moment_is_on_the_access_log_before_it_reads():
    async with running(ledger=ledger_at_now()) as (app, _):
        await app.writes.record(define())
        await app.writes.record(opt_in("r1"))
        await app.checks.can_send(PHONE, BRAND, "promo", at=at(10), reader=AUDITOR)
        await app.checks.can_send_batch(
            [PHONE, OTHER, PHONE], BRAND, "promo", at=at(10), reader=AUDITOR
        )
        records = await app.audit.ctx.access.log.list(AccessQuery(brands=None))
        read = [(r.action, r.phone, r.detail.get("at")) for r in records]
        moment = at(10).isoformat()
        assert sorted(read) == [
            ("CanSend", PHONE, moment),
            ("CanSendBatch", OTHER, moment),
            ("CanSendBatch", PHONE, moment),
        ]


async def test_a_check_ahead_of_now_is_provisional_and_plans_around_quiet_hours_and_caps():
    async with running(ledger=ledger_at_now()) as (app, _):
        capped = CampaignPolicy(frequency_caps=(FrequencyCap(1, timedelta(hours=6)),))
        await app.writes.record(
            DefineCampaign("d", BRAND, "promo", capped, at(0) - timedelta(days=1))
        )
        await app.writes.record(opt_in("r1"))
        sent = RecordMessageSent("s1", PHONE, BRAND, "promo", "m1", MessageKind.REGULAR, NOW)
        written = await app.writes.record(sent)
        now = await app.checks.can_send(PHONE, BRAND, "promo", token=written.token)
        assert not now.provisional and now.decision.reason is Reason.FREQUENCY_CAP_REACHED
        # NOW is 11:00 in Los Angeles: at 23:00 quiet hours, the next morning free.
        night = await app.checks.can_send(PHONE, BRAND, "promo", at=NOW + timedelta(hours=12))
        assert night.provisional and night.decision.reason is Reason.QUIET_HOURS
        morning = await app.checks.can_send(PHONE, BRAND, "promo", at=NOW + timedelta(hours=22))
        assert morning.provisional and morning.decision.allowed
        batch = await app.checks.can_send_batch(
            [PHONE], BRAND, "promo", at=NOW + timedelta(days=30)
        )
        assert batch.provisional and batch.decisions[0].allowed


@pytest.mark.parametrize("batch", [False, True])
async def test_a_check_beyond_the_horizon_is_refused_on_at(batch):
    async with running(ledger=ledger_at_now()) as (app, _):
        await app.writes.record(define())
        beyond = NOW + timedelta(days=30, seconds=1)
        with pytest.raises(InvalidRequest) as err:
            if batch:
                await app.checks.can_send_batch([PHONE], BRAND, "promo", at=beyond)
            else:
                await app.checks.can_send(PHONE, BRAND, "promo", at=beyond)
        assert err.value.field == "at" and "30 days" in err.value.reason


async def test_the_horizon_is_the_apps_setting():
    async with running(ledger=ledger_at_now()) as (app, _):
        await app.writes.record(define())
        short = Checks(
            Context(
                app.ledger, app.view, app.guard, clock=lambda: NOW, access=app.audit.ctx.access
            ),
            future_horizon=timedelta(days=1),
        )
        with pytest.raises(InvalidRequest):
            await short.can_send(PHONE, BRAND, "promo", at=NOW + timedelta(days=2))
        answer = await short.can_send(PHONE, BRAND, "promo", at=NOW + timedelta(hours=20))
        assert answer.provisional


@pytest.mark.parametrize("revoke_all", [False, True], ids=["own rules", "own revoke-all"])
async def test_a_moment_before_the_campaign_was_recorded_is_denied_on_the_later_facts(
    revoke_all,
):
    """Asked in hindsight of a moment before its campaign's rules were recorded (dated
    back), the answer is CAMPAIGN_UNKNOWN where the facts known now would allow, and
    their own denial where they deny: REVOKED_BRAND_WIDE under the campaign's own
    revoke-all (an opt-out of another campaign, dated back too), NO_CONSENT for a
    number with no facts. A later fact counts against the moment, never for it; the
    single, batch and as-of answers agree."""
    recording = Recording(at(-30))
    async with running(ledger=InMemoryLedger(partitions=4, clock=recording)) as (app, _):
        dated = at(0) - timedelta(days=1)
        await app.writes.record(DefineCampaign("d-other", BRAND, "other", CampaignPolicy(), dated))
        await app.writes.record(an_opt_in(at(-40), "other", request_id="in-other"))
        recording.now = at(30)
        promo = CampaignPolicy(revoke_all=revoke_all)
        await app.writes.record(DefineCampaign("d-promo", BRAND, "promo", promo, dated))
        recording.now = at(35)
        await app.writes.record(an_opt_in(at(-20), request_id="in-promo"))
        recording.now = at(40)
        stop = RecordOptOut("out", PHONE, BRAND, "other", RevocationChannel.WEB, at(-10))
        written = await app.writes.record(stop)
        recording.now = NOW

        before = at(0)  # promo's rules were recorded half an hour later
        asked = await app.checks.can_send_as_of(PHONE, BRAND, "promo", before, reader=AUDITOR)
        single = await app.checks.can_send(
            PHONE, BRAND, "promo", at=before, token=written.token, reader=AUDITOR
        )
        batch = await app.checks.can_send_batch(
            [PHONE, OTHER], BRAND, "promo", at=before, token=written.token, reader=AUDITOR
        )
        expected = Reason.REVOKED_BRAND_WIDE if revoke_all else Reason.CAMPAIGN_UNKNOWN
        assert asked.decision.reason is expected, asked.decision
        assert not asked.decision.allowed
        assert single.decision == asked.decision
        assert batch.decisions[0] == asked.decision
        assert batch.decisions[1].reason is Reason.NO_CONSENT, batch.decisions[1]
