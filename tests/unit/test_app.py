"""The use cases on the in-memory adapters (fast; the real path is in tests/e2e)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ledger.campaigns import CampaignPolicy
from ledger.commands import (
    ChangeCampaignPolicy,
    DefineCampaign,
    HandleInboundMessage,
    RecordMessageSent,
    RecordOptIn,
    RecordOptOut,
    ResolveRevocationCandidate,
    to_events,
)
from ledger.errors import InvalidPhoneNumber, InvalidRequest, MissingProofError
from ledger.events import (
    CandidateResolution,
    LedgerEvent,
    LedgerPosition,
    MessageKind,
    Recorded,
    RevocationCandidateResolved,
    RevocationChannel,
)
from ledger.policy import Reason
from ledger.ports import ConsistencyToken, Stream
from services.adapters.memory_ledger import InMemoryLedger
from services.adapters.memory_view import InMemoryConsentView
from services.app import ConsentApp
from services.errors import AlreadyExists, FailedPrecondition, NotConsistent
from services.freshness import FreshnessGuard
from services.projector import Projector
from services.settings import FreshnessSettings
from tests.builders import BRAND, PHONE, at, proof
from tests.builders import opt_in as an_opt_in
from tests.conformance.view_suite import Positions, flag

pytestmark = pytest.mark.asyncio(loop_scope="session")
NOW = at(60)


@contextlib.asynccontextmanager
async def instances(
    count: int = 1,
    *,
    wait_bound: float = 1,
    ledger: InMemoryLedger | None = None,
    view: InMemoryConsentView | None = None,
) -> AsyncIterator[tuple[list[ConsentApp], asyncio.Task[None]]]:
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
        yield [ConsentApp(ledger, view, guard, clock=lambda: NOW) for guard in guards], projector
    finally:
        for guard in guards:
            await guard.stop()
        await _stop(projector)


@contextlib.asynccontextmanager
async def running(
    wait_bound: float = 1,
    ledger: InMemoryLedger | None = None,
    view: InMemoryConsentView | None = None,
) -> AsyncIterator[tuple[ConsentApp, asyncio.Task[None]]]:
    """An app on the in-memory adapters, with its projector task (a test may stop it)."""
    async with instances(wait_bound=wait_bound, ledger=ledger, view=view) as ([app], projector):
        yield app, projector


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@pytest.fixture
async def app():
    async with running() as (app, _):
        yield app


def opt_in(request_id: str) -> RecordOptIn:
    return an_opt_in(at(0), request_id=request_id)


def define(request_id: str = "define-promo") -> DefineCampaign:
    return DefineCampaign(request_id, BRAND, "promo", CampaignPolicy(), at(0) - timedelta(days=1))


async def test_a_retry_that_overtakes_the_projection_is_still_a_retry(app):
    first = await app.record(define())
    second = await app.record(define())  # before the projector has applied the first
    assert second.replayed and second.event_ids == first.event_ids
    with pytest.raises(FailedPrecondition):
        await app.record(define("another-request"))


async def test_every_event_written_names_its_caller_and_a_retry_keeps_the_first():
    async with running() as (app, _):
        await app.record(define(), recorded_by="ops-console")
        first = await app.record(opt_in("r1"), recorded_by="checkout")
        await app.guard.wait_for_token(first.token)
        again = await app.record(opt_in("r1"), recorded_by="someone-else")
        assert again.replayed and again.event_ids == first.event_ids
        ledger = app.ledger
        subscribers = await ledger.read(Stream.SUBSCRIBERS, ledger.partition_for(PHONE), 0)
        campaigns = await ledger.read(Stream.CAMPAIGNS, 0, 0)
        assert [r.event.recorded_by for r in campaigns] == ["ops-console"]
        assert [r.event.recorded_by for r in subscribers] == ["checkout"]


async def test_two_brands_may_use_the_same_request_id_and_neither_write_is_lost():
    async with running() as (app, _):
        for brand in (BRAND, "globex"):
            await app.record(
                DefineCampaign(f"define-{brand}", brand, "promo", CampaignPolicy(), at(-1))
            )
        acme = await app.record(opt_in("r1"))
        await app.record(an_opt_in(at(0), request_id="g1", brand="globex"))
        stop = await app.record(
            RecordOptOut("r1", PHONE, "globex", "promo", RevocationChannel.API, at(30))
        )
        assert not stop.replayed and stop.event_ids != acme.event_ids
        globex = await app.can_send(PHONE, "globex", "promo", token=stop.token)
        assert globex.decision.reason is Reason.REVOKED
        assert (await app.can_send(PHONE, BRAND, "promo", token=stop.token)).decision.allowed


async def test_a_request_id_reused_for_another_request_is_refused_naming_the_first():
    async with running() as (app, _):
        await app.record(define())
        first = await app.record(opt_in("r1"))
        await app.guard.wait_for_token(first.token)
        for other in (reuse_r1_to_stop(), dataclasses.replace(opt_in("r1"), occurred_at=at(1))):
            with pytest.raises(AlreadyExists) as refused:
                await app.record(other)  # a client bug: "r1" again, for another request
            assert refused.value.event_ids == tuple(first.event_ids)
            assert refused.value.field == "request_id" and refused.value.request_id == "r1"
        again = await app.record(opt_in("r1"))  # an unchanged retry is still a retry
        assert again.replayed and again.event_ids == first.event_ids
        written = await app.ledger.read(Stream.SUBSCRIBERS, app.ledger.partition_for(PHONE), 0)
        assert [type(r.event).__name__ for r in written] == ["ConsentGranted"]


def reuse_r1_to_stop() -> RecordOptOut:
    return RecordOptOut("r1", PHONE, BRAND, "promo", RevocationChannel.API, at(30))


async def test_a_request_id_reused_while_the_projection_lags_is_refused_all_the_same():
    # The view has not applied the first use of "r1" when the second comes: the id
    # was taken before the first was appended, so the second is refused anyway.
    async with running() as (app, projector):
        assert await app.guard.wait_for_token((await app.record(define())).token)
        await _stop(projector)
        first = await app.record(opt_in("r1"))  # in the ledger, not in the view
        with pytest.raises(AlreadyExists) as refused:
            await app.record(reuse_r1_to_stop())
        assert refused.value.event_ids == tuple(first.event_ids)
        retry = await app.record(opt_in("r1"))  # not seen as a retry yet: written again
        assert retry.event_ids == first.event_ids
        written = await app.ledger.read(Stream.SUBSCRIBERS, app.ledger.partition_for(PHONE), 0)
        assert [type(r.event).__name__ for r in written] == ["ConsentGranted"] * 2


async def test_two_requests_under_one_id_at_once_through_two_instances_record_one():
    async with instances(2) as ((a, b), _):
        assert await a.guard.wait_for_token((await a.record(define())).token)
        results = await asyncio.gather(
            a.record(opt_in("r1")), b.record(reuse_r1_to_stop()), return_exceptions=True
        )
        refused = [r for r in results if isinstance(r, AlreadyExists)]
        (written,) = [r for r in results if not isinstance(r, BaseException)]
        assert len(refused) == 1 and refused[0].event_ids == tuple(written.event_ids)
        events = await a.ledger.read(Stream.SUBSCRIBERS, a.ledger.partition_for(PHONE), 0)
        assert [str(r.event.event_id) for r in events] == written.event_ids


async def test_a_fact_appended_under_an_id_another_request_holds_is_no_fact():
    # A writer that did not take the id (an older version, a view of its own): both
    # reach the ledger, and the fold keeps the request that holds the id, here the
    # first applied, and ignores the other, in every view.
    async with running() as (app, _):
        await app.record(define())
        grant = to_events(opt_in("r1"), NOW)
        stop = to_events(reuse_r1_to_stop(), NOW)
        recorded = await app.ledger.append([*grant, *stop])
        token = ConsistencyToken.after(recorded)
        assert await app.guard.wait_for_token(token)
        history = await app.history(PHONE, BRAND)
        assert [r.event.event_id for r in history] == [grant[0].event_id]
        assert (await app.can_send(PHONE, BRAND, "promo", token=token)).decision.allowed
        use = await app.view.request_use(BRAND, "r1")
        assert use is not None and use.event_ids == (str(grant[0].event_id),)
        with pytest.raises(AlreadyExists):
            await app.record(reuse_r1_to_stop())


def sent(request_id: str, message_id: str = "SM1", **changes: Any) -> RecordMessageSent:
    cmd = RecordMessageSent(
        request_id, PHONE, BRAND, "promo", message_id, MessageKind.REGULAR, at(10)
    )
    return dataclasses.replace(cmd, **changes)


async def test_a_message_id_recorded_already_is_the_same_message_whatever_else_is_said():
    async with running() as (app, _):
        await app.record(define())
        await app.record(opt_in("g1"))
        first = await app.record(sent("s1"))
        assert await app.guard.wait_for_token(first.token)
        for other in (sent("s2"), sent("s3", occurred_at=at(11), included_opt_out_language=True)):
            again = await app.record(other)
            assert again.replayed and again.event_ids == first.event_ids
        other = await app.record(sent("s4", message_id="SM2"))  # another message: counted
        assert await app.guard.wait_for_token(other.token)
        rate = await app.opt_out_rate(BRAND, "promo", at(0), at(60))
        assert rate.counts.messages_sent == 2
        # Appended twice without the check (a race, or a writer of its own): once.
        dupes = to_events(sent("s5", occurred_at=at(12)), NOW) + to_events(sent("s6"), NOW)
        assert await app.guard.wait_for_token(
            ConsistencyToken.after(await app.ledger.append(dupes))
        )
        rate = await app.opt_out_rate(BRAND, "promo", at(0), at(60))
        assert rate.counts.messages_sent == 2
        kinds = [type(r.event).__name__ for r in await app.history(PHONE, BRAND)]
        assert kinds.count("MessageSent") == 2


async def test_writes_of_other_request_ids_do_not_wait_for_each_other():
    async with running(ledger=SlowLedger(partitions=4)) as (app, _):
        await app.record(define())
        started = asyncio.get_running_loop().time()

        await asyncio.gather(*(app.record(opt_in(f"r{i}")) for i in range(10)))

        # SlowLedger takes 0.05 s an append; one after another would take 0.5 s.
        assert asyncio.get_running_loop().time() - started < 0.3


async def test_opt_in_then_check_then_opt_out_then_check(app):
    await app.record(define())
    granted = await app.record(opt_in("r1"))
    yes = await app.can_send(PHONE, BRAND, "promo", token=granted.token)
    assert yes.decision.allowed
    stop = await app.record(
        RecordOptOut("r2", PHONE, BRAND, "promo", RevocationChannel.KEYWORD, at(1))
    )
    no = await app.can_send(PHONE, BRAND, "promo", token=stop.token)
    assert not no.decision.allowed and no.decision.reason is Reason.REVOKED


async def test_an_opt_in_for_an_undefined_campaign_writes_nothing(app):
    with pytest.raises(FailedPrecondition) as err:
        await app.record(an_opt_in(at(0), "nosuch", request_id="r1"))
    assert err.value.field == "campaign"
    assert await app.ledger.end_offsets(Stream.SUBSCRIBERS) == {0: 0, 1: 0, 2: 0, 3: 0}


async def test_a_single_check_answers_as_the_batch_does_for_each_number(app):
    await app.record(define())
    await app.record(opt_in("r-single"))
    await app.record(dataclasses.replace(opt_in("r-uk"), phone="+442071234567"))
    stop = await app.record(
        RecordOptOut("r-single-stop", "+12125551234", BRAND, "promo", RevocationChannel.API, at(2))
    )
    # canonical and known, written another way, canonical and never seen, opted out,
    # and a known number in E.164 form but with the trunk 0 kept (stored without it)
    phones = [PHONE, "+1 (415) 555-2671", "+13105550123", "+12125551234", "+4402071234567"]

    batch = await app.can_send_batch(phones, BRAND, "promo", token=stop.token)
    singles = [await app.can_send(p, BRAND, "promo", token=stop.token) for p in phones]

    assert [s.decision for s in singles] == batch.decisions
    assert [d.reason for d in batch.decisions] == [
        Reason.CONSENT_ACTIVE,
        Reason.CONSENT_ACTIVE,
        Reason.NO_CONSENT,
        Reason.REVOKED,
        Reason.CONSENT_ACTIVE,
    ]
    undefined = await app.can_send(PHONE, BRAND, "no-such-campaign")
    assert undefined.decision.reason is Reason.CAMPAIGN_UNKNOWN


@pytest.mark.parametrize("phone", ["not a number", "+15551234567", ""])
async def test_a_single_check_names_the_phone_field_for_a_non_number(app, phone):
    await app.record(define())
    with pytest.raises(InvalidPhoneNumber) as err:
        await app.can_send(phone, BRAND, "promo")
    assert err.value.field == "phone"


async def test_a_batch_reads_numbers_written_another_way_as_their_canonical_form(app):
    await app.record(define())
    granted = await app.record(opt_in("r-canonical"))
    # PHONE is +14155552671; neither entry below is written in E.164, and the
    # canonical form is nowhere in the batch: the numbers are looked up again.
    phones = ["+1 (415) 555-2671", "+1 212 555 1234", "+1-415-555-2671"]

    batch = await app.can_send_batch(phones, BRAND, "promo", token=granted.token)

    assert [d.reason for d in batch.decisions] == [
        Reason.CONSENT_ACTIVE,
        Reason.NO_CONSENT,
        Reason.CONSENT_ACTIVE,
    ]


async def test_numbers_written_another_way_on_a_lagging_partition_are_refused_as_one_is():
    async with running(wait_bound=0.1) as (app, projector):
        await app.record(define())
        granted = await app.record(opt_in("r-lagging"))
        assert await app.guard.wait_for_token(granted.token)
        await _stop(projector)
        # An opt-out the projection never applies: PHONE's partition stays behind.
        stop = RecordOptOut("r-lagging-stop", PHONE, BRAND, "promo", RevocationChannel.API, at(2))
        await app.ledger.append(to_events(stop, NOW))
        await app.guard.observe()
        phones = ["+1 (415) 555-2671", "+1-415-555-2671"]  # never in E.164 in the batch

        batch = await app.can_send_batch(phones, BRAND, "promo")
        single = await app.can_send(phones[0], BRAND, "promo")

        assert single.decision.reason is Reason.NOT_CONSISTENT
        assert batch.decisions == [single.decision] * len(phones)


async def test_rules_read_before_a_policy_change_are_not_kept_for_after_it(app):
    await app.record(define())
    granted = await app.record(opt_in("r1"))
    assert (await app.can_send(PHONE, BRAND, "promo", token=granted.token)).decision.allowed
    # Another campaign's write moves the positions the cached rules are valid for.
    other = DefineCampaign("define-other", BRAND, "other", CampaignPolicy(), at(-1))
    assert await app.guard.wait_for_token((await app.record(other)).token)
    read, release = asyncio.Event(), asyncio.Event()
    real = app.view.campaign_history

    async def slow_once(brand: str, campaign: str):  # reads, then resumes late
        history = await real(brand, campaign)
        if not read.is_set():
            read.set()
            await release.wait()
        return history

    app.view.campaign_history = slow_once  # type: ignore[method-assign]
    early = asyncio.create_task(app.can_send(PHONE, BRAND, "promo"))
    await read.wait()  # it holds the rules as they were before the change
    gated = ChangeCampaignPolicy("gate", BRAND, "promo", CampaignPolicy(age_gated=True), at(1))
    change = await app.record(gated)
    fresh = await app.can_send(PHONE, BRAND, "promo", token=change.token)
    release.set()
    await early

    later = await app.can_send(PHONE, BRAND, "promo", token=change.token)
    assert fresh.decision.reason is Reason.AGE_VERIFICATION_REQUIRED
    assert later.decision.reason is Reason.AGE_VERIFICATION_REQUIRED


def ledger_at_now() -> InMemoryLedger:
    """A ledger whose ``recorded_at`` is the app's now: a check as of now knows it all."""
    return InMemoryLedger(partitions=4, clock=lambda: NOW)


async def test_a_check_as_of_waits_for_the_projection_and_says_no_while_it_is_behind():
    async with running(wait_bound=0.1, ledger=ledger_at_now()) as (app, projector):
        await app.record(define())
        granted = await app.record(opt_in("r1"))
        assert await app.guard.wait_for_token(granted.token)
        before = await app.can_send_as_of(PHONE, BRAND, "promo", NOW)
        await _stop(projector)
        stop = RecordOptOut("r2", PHONE, BRAND, "promo", RevocationChannel.KEYWORD, at(1))
        await app.ledger.append(to_events(stop, NOW))  # acknowledged, never applied
        await app.guard.observe()

        after = await app.can_send_as_of(PHONE, BRAND, "promo", NOW)

        assert before.decision.allowed
        assert not after.decision.allowed and after.decision.reason is Reason.NOT_CONSISTENT


@pytest.mark.parametrize("field", ["at", "known_at"])
async def test_a_check_as_of_refuses_a_time_ahead_of_now(field):
    async with running(ledger=ledger_at_now()) as (app, _):
        assert await app.guard.wait_for_token((await app.record(define())).token)
        ahead = {"at": NOW, "known_at": None, field: datetime(9999, 12, 31, tzinfo=UTC)}
        with pytest.raises(InvalidRequest) as err:
            await app.can_send_as_of(PHONE, BRAND, "promo", ahead["at"], ahead["known_at"])
        assert err.value.field == field
        skewed = await app.can_send_as_of(PHONE, BRAND, "promo", NOW, NOW + timedelta(minutes=1))
        assert skewed.decision.reason is Reason.NO_CONSENT  # within the skew allowed


async def test_audit_reads_the_view_cannot_serve_fresh_are_unavailable_not_stale():
    async with running(wait_bound=0.1) as (app, projector):
        await app.record(define())
        granted = await app.record(opt_in("r1"))
        assert await app.guard.wait_for_token(granted.token)
        assert (await app.get_consent(PHONE, BRAND, "promo")).grants
        await _stop(projector)
        stop = RecordOptOut("r2", PHONE, BRAND, "promo", RevocationChannel.KEYWORD, at(1))
        await app.ledger.append(to_events(stop, NOW))  # acknowledged, never applied
        await app.guard.observe()

        reads = {
            "phone": [app.get_consent(PHONE, BRAND, "promo"), app.history(PHONE, BRAND)],
            "brand": [app.revocation_candidates(BRAND), app.opt_out_rate(BRAND, "promo")],
        }
        for field, calls in reads.items():
            for call in calls:
                with pytest.raises(NotConsistent) as err:
                    await call
                assert err.value.field == field


async def test_consent_is_asked_of_a_defined_campaign_only(app):
    granted = await app.record(define())
    assert await app.guard.wait_for_token(granted.token)
    for name in ("", "NOT A NAME!"):
        with pytest.raises(InvalidRequest) as bad:
            await app.get_consent(PHONE, BRAND, name)
        assert bad.value.field == "campaign"
    with pytest.raises(FailedPrecondition) as undefined:  # a misspelling, say
        await app.get_consent(PHONE, BRAND, "promoo")
    assert undefined.value.field == "campaign"
    assert not (await app.get_consent(PHONE, BRAND, "promo")).grants


async def test_the_opt_out_rate_counts_the_last_30_days_by_default(app):
    await app.record(define())
    await app.record(opt_in("r1"))
    sent = RecordMessageSent("r2", PHONE, BRAND, "promo", "m1", MessageKind.REGULAR, at(1))
    await app.record(sent)
    stop = await app.record(
        RecordOptOut("r3", PHONE, BRAND, "promo", RevocationChannel.KEYWORD, at(2))
    )
    await app.guard.wait_for_token(stop.token)

    rate = await app.opt_out_rate(BRAND, "promo")
    assert (rate.start, rate.end) == (NOW - timedelta(days=30), NOW)
    assert (rate.counts.messages_sent, rate.counts.opt_outs, rate.rate) == (1, 1, 1.0)
    assert rate.above_limit
    later = await app.opt_out_rate(BRAND, None, at(3), NOW)
    assert (later.counts.messages_sent, later.counts.opt_outs, later.above_limit) == (0, 0, False)


async def test_the_opt_out_rate_refuses_a_bad_window_or_an_undefined_campaign(app):
    await app.record(define())
    with pytest.raises(FailedPrecondition) as undefined:
        await app.opt_out_rate(BRAND, "nosuch")
    assert undefined.value.field == "campaign"
    with pytest.raises(InvalidRequest) as backwards:
        await app.opt_out_rate(BRAND, "promo", at(5), at(5))
    assert backwards.value.field == "start_time"
    with pytest.raises(InvalidRequest) as future:
        await app.opt_out_rate(BRAND, "promo", None, NOW + timedelta(days=1))
    assert future.value.field == "end_time"
    with pytest.raises(InvalidRequest) as too_early:
        await app.opt_out_rate(BRAND, None, None, datetime(1, 1, 2, tzinfo=UTC))
    assert too_early.value.field == "end_time"
    with pytest.raises(InvalidRequest) as naive:
        await app.opt_out_rate(BRAND, None, at(0).replace(tzinfo=None), NOW)
    assert naive.value.field == "start_time"


# ---- a sender number belongs to one campaign at a time ---------------------------------

NUMBER, OTHER_NUMBER = "+12125550100", "+12125550101"


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


async def test_another_brands_sender_number_is_refused_unnamed_and_its_stop_stays_put(app):
    await app.record(claim("acme-promo", "acme", "promo", NUMBER))
    await app.record(opt_in("r1"))
    written = await app.ledger.end_offsets(Stream.CAMPAIGNS)

    with pytest.raises(FailedPrecondition) as err:
        await app.record(claim("globex-deals", "globex", "deals", "+1 212 555 0101", NUMBER))

    assert err.value.field == "policy.sender_numbers[1]"
    assert "in use" in err.value.reason
    assert "acme" not in err.value.reason and "promo" not in err.value.reason
    assert await app.ledger.end_offsets(Stream.CAMPAIGNS) == written
    stop = await app.handle_inbound(HandleInboundMessage("in1", PHONE, NUMBER, "STOP", "m1", at(1)))
    assert (stop.outcome.brand, stop.outcome.campaign) == ("acme", "promo")
    check = await app.can_send(PHONE, "acme", "promo", token=stop.write.token)
    assert check.decision.reason is Reason.REVOKED


async def test_a_number_another_campaign_of_the_brand_uses_is_refused_by_its_name(app):
    await app.record(claim("acme-promo", "acme", "promo", NUMBER))
    await app.record(claim("acme-alerts", "acme", "alerts", OTHER_NUMBER))

    with pytest.raises(FailedPrecondition) as defined:
        await app.record(claim("acme-news", "acme", "news", NUMBER))
    with pytest.raises(FailedPrecondition) as changed:
        await app.record(claim("alerts-2", "acme", "alerts", OTHER_NUMBER, NUMBER, change=True))

    assert defined.value.field == "policy.sender_numbers[0]"
    assert changed.value.field == "policy.sender_numbers[1]"
    assert "acme/promo" in defined.value.reason and "acme/promo" in changed.value.reason


async def test_a_campaign_keeps_its_own_numbers_and_frees_those_it_drops(app):
    await app.record(claim("acme-promo", "acme", "promo", NUMBER))
    await app.record(claim("promo-2", "acme", "promo", NUMBER, OTHER_NUMBER, change=True))
    with pytest.raises(FailedPrecondition):
        await app.record(claim("globex-deals", "globex", "deals", NUMBER))

    await app.record(claim("promo-3", "acme", "promo", OTHER_NUMBER, change=True))
    freed = await app.record(claim("globex-deals-2", "globex", "deals", NUMBER))

    assert await app.guard.wait_for_token(freed.token)
    assert await app.view.campaign_for_number(NUMBER) == ("globex", "deals")
    assert await app.view.campaign_for_number(OTHER_NUMBER) == ("acme", "promo")


async def test_a_number_claimed_a_moment_ago_is_seen_before_deciding(app):
    # Written by another process, say: in the ledger, not yet in the view.
    await app.ledger.append(to_events(claim("acme-promo", "acme", "promo", NUMBER), NOW))
    with pytest.raises(FailedPrecondition):
        await app.record(claim("globex-deals", "globex", "deals", NUMBER))


class SlowLedger(InMemoryLedger):
    """Appends that take a while, as over a network: time for another request to run."""

    async def append(self, events: Sequence[LedgerEvent]) -> list[Recorded]:
        await asyncio.sleep(0.05)
        return await super().append(events)


@pytest.mark.parametrize("count", [1, 2], ids=["one instance", "two instances"])
async def test_two_claims_of_one_number_at_once_let_one_through(count):
    async with instances(count, ledger=SlowLedger(partitions=4)) as (apps, _):
        results = await asyncio.gather(
            apps[0].record(claim("acme-promo", "acme", "promo", NUMBER)),
            apps[-1].record(claim("globex-deals", "globex", "deals", NUMBER)),
            return_exceptions=True,
        )

        refused = [r for r in results if isinstance(r, FailedPrecondition)]
        assert len(refused) == 1 and refused[0].field == "policy.sender_numbers[0]"
        assert len(await apps[0].ledger.read(Stream.CAMPAIGNS, 0, 0)) == 1


class GatedLedger(InMemoryLedger):
    """Appends that wait for ``gate``, saying when one has begun."""

    def __init__(self, partitions: int) -> None:
        super().__init__(partitions=partitions)
        self.begun, self.gate = asyncio.Event(), asyncio.Event()

    async def append(self, events: Sequence[LedgerEvent]) -> list[Recorded]:
        self.begun.set()
        await self.gate.wait()
        return await super().append(events)


async def test_a_claim_whose_caller_goes_away_keeps_its_turn_until_it_is_appended():
    ledger = GatedLedger(partitions=4)
    async with running(ledger=ledger) as (app, _):
        caller = asyncio.create_task(app.record(claim("acme-promo", "acme", "promo", NUMBER)))
        await asyncio.wait_for(ledger.begun.wait(), 5)
        await _stop(caller)  # a deadline, say, while the append is on its way

        with pytest.raises(TimeoutError):  # the write runs on, and holds the turn
            async with app.view.campaign_writes(0.1):
                pass
        ledger.gate.set()
        async with app.view.campaign_writes(5):
            assert len(await app.ledger.read(Stream.CAMPAIGNS, 0, 0)) == 1
        with pytest.raises(FailedPrecondition):
            await app.record(claim("globex-deals", "globex", "deals", NUMBER))


async def test_a_claim_that_cannot_get_its_turn_is_unavailable_and_writes_nothing(app, monkeypatch):
    monkeypatch.setattr("services.app.CAMPAIGN_TURN_WAIT", 0.1)
    async with app.view.campaign_writes(1):  # another instance's write, taking long
        with pytest.raises(NotConsistent) as err:
            await app.record(claim("acme-promo", "acme", "promo", NUMBER))
        # A campaign write that claims no number needs no turn.
        await app.record(claim("acme-alerts", "acme", "alerts"))

    assert err.value.field == "policy.sender_numbers"
    [written] = await app.ledger.read(Stream.CAMPAIGNS, 0, 0)
    assert written.event.campaign == "alerts"


async def test_a_claim_is_refused_as_not_consistent_while_the_view_lags():
    async with running(wait_bound=0.1) as (app, projector):
        await _stop(projector)
        await app.ledger.append(to_events(claim("acme-promo", "acme", "promo", NUMBER), NOW))

        with pytest.raises(NotConsistent) as err:
            await app.record(claim("acme-news", "acme", "news", OTHER_NUMBER))

        # "Is the campaign already defined?" is the first question that needs a view
        # caught up with the ledger; the sender numbers' check would be the next.
        assert err.value.field == "campaign"
        assert len(await app.ledger.read(Stream.CAMPAIGNS, 0, 0)) == 1


@contextlib.asynccontextmanager
async def unprojected() -> AsyncIterator[ConsentApp]:
    """An app whose view applies nothing and whose guard observes only when asked:
    what the ledger holds, the view lacks, and the guard learns it only on a look."""
    ledger, view = InMemoryLedger(partitions=4), InMemoryConsentView()
    guard = FreshnessGuard(ledger, view, FreshnessSettings(wait_bound=0.1))
    await guard.observe()
    yield ConsentApp(ledger, view, guard, clock=lambda: NOW)


async def test_an_inbound_stop_to_a_number_the_view_lacks_yet_is_unavailable_not_refused():
    async with unprojected() as app:
        await app.ledger.append(to_events(claim("acme-promo", "acme", "promo", NUMBER), NOW))

        with pytest.raises(NotConsistent) as err:  # gateways retry UNAVAILABLE
            await app.handle_inbound(
                HandleInboundMessage("in1", PHONE, NUMBER, "STOP", "m1", at(1))
            )

        assert err.value.field == "to_phone"


async def test_an_inbound_stop_to_a_number_claimed_a_moment_ago_is_recorded(app):
    await app.ledger.append(to_events(claim("acme-promo", "acme", "promo", NUMBER), NOW))

    stop = await app.handle_inbound(HandleInboundMessage("in1", PHONE, NUMBER, "STOP", "m1", at(1)))

    assert (stop.outcome.brand, stop.outcome.campaign) == ("acme", "promo")


async def test_a_check_for_a_campaign_the_view_lacks_yet_is_not_consistent_not_unknown():
    async with unprojected() as app:
        await app.ledger.append(to_events(define(), NOW))

        with pytest.raises(NotConsistent) as err:
            await app.opt_out_rate(BRAND, "promo")
        single = await app.can_send(PHONE, BRAND, "promo")
        batch = await app.can_send_batch([PHONE], BRAND, "promo")

        assert err.value.field == "campaign"
        assert single.decision.reason is Reason.NOT_CONSISTENT
        assert batch.decisions == [single.decision]


# ---- the review queue ---------------------------------------------------------------


async def test_the_review_queue_pages_past_no_reply_applied_late():
    """A reply recorded before one already listed, from a partition the projector
    applied late, is on the next page: the queue is in the order replies were applied.
    (Ordered by recorded time, it had sorted before the page's last and been skipped.)"""

    def flagged(phone: str, partition: int, recorded_at: datetime) -> Recorded:
        return Recorded(flag(phone, BRAND, recorded_at), LedgerPosition(partition, 0), recorded_at)

    async with running() as (app, _):
        later, earlier = flagged(PHONE, 0, at(2)), flagged("+14155552672", 1, at(1))
        await app.view.apply(Stream.SUBSCRIBERS, [later])
        (first,) = await app.revocation_candidates(BRAND)
        assert first.candidate.event_id == str(later.event.event_id)

        await app.view.apply(Stream.SUBSCRIBERS, [earlier])  # its partition was behind
        (following,) = await app.revocation_candidates(BRAND, after=first.position)
        assert following.candidate.event_id == str(earlier.event.event_id)
        assert [q.candidate for q in await app.revocation_candidates(BRAND)] == [
            first.candidate,
            following.candidate,
        ]


# ---- resolving a flagged reply ---------------------------------------------------------


def resolve(request_id: str, candidate: str, phone: str = PHONE, brand: str = "acme"):
    return ResolveRevocationCandidate(
        request_id, phone, brand, candidate, CandidateResolution.DISMISSED, at(3)
    )


async def test_only_a_pending_candidate_of_that_number_and_brand_can_be_resolved(app):
    other = "+14155552672"
    await app.record(claim("acme-promo", "acme", "promo", NUMBER))
    await app.record(claim("globex-deals", "globex", "deals", OTHER_NUMBER))
    flagged = {}
    for phone in (PHONE, other):  # resolved below at once: a reply flagged a moment ago counts
        reply = "please stop texting me"
        inbound = HandleInboundMessage(f"in-{phone}", phone, NUMBER, reply, f"m-{phone}", at(1))
        flagged[phone] = (await app.handle_inbound(inbound)).write.event_ids[1]
    written = await app.ledger.end_offsets(Stream.SUBSCRIBERS)

    for request, why in (
        (resolve("x1", "00000000-0000-0000-0000-000000000001"), "made up"),
        (resolve("x2", flagged[other]), "another number's"),
        (resolve("x3", flagged[PHONE], brand="globex"), "another brand's"),
    ):
        with pytest.raises(FailedPrecondition) as err:
            await app.record(request)
        assert err.value.field == "candidate_event_id", why
    assert await app.ledger.end_offsets(Stream.SUBSCRIBERS) == written

    done = await app.record(resolve("ok", flagged[PHONE].upper()))
    again = await app.record(resolve("ok", flagged[PHONE].upper()))  # a retry
    assert again.replayed and again.event_ids == done.event_ids
    with pytest.raises(FailedPrecondition):  # resolved already, by another request
        await app.record(resolve("ok-2", flagged[PHONE]))
    check = await app.can_send(PHONE, "acme", "promo", token=done.token)
    assert check.decision.reason is not Reason.REVOCATION_PENDING_REVIEW


class UnawareView(InMemoryConsentView):
    """A view that cannot tell which replies are resolved (rows from before the
    marker existed, say): it lists them all."""

    async def flagged(self, brand: str, after: int = 0, limit: int | None = None) -> list[Any]:
        queue = [f for f in self._tables.flagged.get(brand, []) if f.position > after]
        return queue[:limit]


@pytest.mark.parametrize("view_type", [InMemoryConsentView, UnawareView])
async def test_the_review_queue_reads_in_chunks_and_the_fold_decides(monkeypatch, view_type):
    monkeypatch.setattr("services.app.QUEUE_CHUNK", 2)
    pos = Positions(partitions=4)
    replies = [flag(f"+1415555{2900 + i:04d}", BRAND, at(i)) for i in range(7)]
    resolutions = [
        RevocationCandidateResolved(
            event_id=uuid.uuid4(),
            occurred_at=at(10),
            phone=replies[i].phone,
            brand=BRAND,
            candidate_event_id=replies[i].event_id,
            resolution=CandidateResolution.DISMISSED,
        )
        for i in (0, 1, 2, 5)
    ]
    async with running(view=view_type()) as (app, _):
        for batch in (replies, resolutions):
            for recorded in pos.record(batch):
                await app.view.apply(Stream.SUBSCRIBERS, [recorded])
        open_ = [str(replies[i].event_id) for i in (3, 4, 6)]

        everything = await app.revocation_candidates(BRAND)
        assert [q.candidate.event_id for q in everything] == open_
        page = await app.revocation_candidates(BRAND, limit=2)
        assert page == everything[:2]
        rest = await app.revocation_candidates(BRAND, after=page[-1].position, limit=2)
        assert rest == everything[2:]


async def test_a_page_of_the_review_queue_reads_only_as_many_replies_as_it_shows():
    asked: list[int | None] = []

    class CountingView(InMemoryConsentView):
        async def flagged(self, brand: str, after: int = 0, limit: int | None = None) -> Any:
            asked.append(limit)
            return await super().flagged(brand, after, limit)

    replies = [flag(f"+1415555{2950 + i:04d}", BRAND, at(i)) for i in range(30)]
    async with running(view=CountingView()) as (app, _):
        await app.view.apply(Stream.SUBSCRIBERS, Positions(partitions=4).record(replies))
        page = await app.revocation_candidates(BRAND, limit=11)
    assert [q.candidate.event_id for q in page] == [str(r.event_id) for r in replies[:11]]
    assert asked == [11]


async def test_an_opt_in_without_a_field_its_campaign_requires_writes_nothing():
    async with running() as (app, _):
        strict = CampaignPolicy(required_proof_fields=("email",))
        await app.record(DefineCampaign("d", BRAND, "promo", strict, at(0) - timedelta(days=1)))
        thin = dataclasses.replace(opt_in("r1"), proof=proof(at(0), email=""))
        with pytest.raises(MissingProofError) as err:
            await app.record(thin)
        assert err.value.field == "proof.email"
        assert await app.ledger.read(Stream.SUBSCRIBERS, app.ledger.partition_for(PHONE), 0) == []
        written = await app.record(opt_in("r2"))
        checked = await app.can_send(PHONE, BRAND, "promo", token=written.token)
        assert checked.decision.evidence and checked.proof_missing == ()


async def test_a_check_names_what_the_grant_s_proof_lacks(app):
    await app.record(define())
    thin = proof(at(0), email="", postal_address="")
    written = await app.record(dataclasses.replace(opt_in("r1"), proof=thin))
    checked = await app.can_send(PHONE, BRAND, "promo", token=written.token)
    assert checked.proof_missing == ("proof.email", "proof.postal_address")


class ReadsLedger(SlowLedger):
    """A slow ledger that notes, in order, each append and each read of a state."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log: list[str] = []

    async def append(self, events: Sequence[LedgerEvent]) -> list[Recorded]:
        self.log.append("append starts")
        recorded = await super().append(events)
        self.log.append("append ends")
        return recorded


async def test_two_texts_of_one_phone_at_once_are_read_and_written_one_after_the_other():
    ledger = ReadsLedger(partitions=4)
    view = InMemoryConsentView()
    read = view.subscriber_states

    async def noted(brand: str, phones: Sequence[str]) -> Any:
        ledger.log.append("state read")
        return await read(brand, phones)

    view.subscriber_states = noted  # type: ignore[method-assign]
    async with running(ledger=ledger, view=view) as (app, _):
        assert await app.guard.wait_for_token(
            (await app.record(claim("acme-promo", BRAND, "promo", NUMBER))).token
        )
        ledger.log.clear()
        await asyncio.gather(
            app.handle_inbound(HandleInboundMessage("i1", PHONE, NUMBER, "STOP", "m1", at(1))),
            app.handle_inbound(HandleInboundMessage("i2", PHONE, NUMBER, "START", "m2", at(2))),
        )
        # Without the phone's turn both would read before either appended.
        assert ledger.log == ["state read", "append starts", "append ends"] * 2
        assert not app._inbound_turns  # nothing kept for a phone once its texts are done
