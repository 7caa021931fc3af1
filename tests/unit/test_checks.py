"""May we send (``services.usecases.checks``): CanSend, a batch and a check as of a
past moment, failing closed while the view is behind."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from ledger.campaigns import CampaignPolicy, FrequencyCap
from ledger.commands import (
    ChangeCampaignPolicy,
    DefineCampaign,
    RecordMessageSent,
    RecordOptOut,
    to_events,
)
from ledger.errors import InvalidPhoneNumber, InvalidRequest
from ledger.events import (
    MessageKind,
    RevocationChannel,
)
from ledger.policy import Reason
from services.errors import NotConsistent
from tests.builders import BRAND, PHONE, at, proof
from tests.unit.usecase_harness import (
    AUDITOR,
    NOW,
    define,
    ledger_at_now,
    opt_in,
    running,
    stop_task,
    unprojected,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_opt_in_then_check_then_opt_out_then_check(app):
    await app.writes.record(define())
    granted = await app.writes.record(opt_in("r1"))
    yes = await app.checks.can_send(PHONE, BRAND, "promo", token=granted.token)
    assert yes.decision.allowed
    stop = await app.writes.record(
        RecordOptOut("r2", PHONE, BRAND, "promo", RevocationChannel.KEYWORD, at(1))
    )
    no = await app.checks.can_send(PHONE, BRAND, "promo", token=stop.token)
    assert not no.decision.allowed and no.decision.reason is Reason.REVOKED


async def test_a_single_check_answers_as_the_batch_does_for_each_number(app):
    await app.writes.record(define())
    await app.writes.record(opt_in("r-single"))
    await app.writes.record(dataclasses.replace(opt_in("r-uk"), phone="+442071234567"))
    stop = await app.writes.record(
        RecordOptOut("r-single-stop", "+12125551234", BRAND, "promo", RevocationChannel.API, at(2))
    )
    # canonical and known, written another way, canonical and never seen, opted out,
    # and a known number in E.164 form but with the trunk 0 kept (stored without it)
    phones = [PHONE, "+1 (415) 555-2671", "+13105550123", "+12125551234", "+4402071234567"]

    batch = await app.checks.can_send_batch(phones, BRAND, "promo", token=stop.token)
    singles = [await app.checks.can_send(p, BRAND, "promo", token=stop.token) for p in phones]

    assert [s.decision for s in singles] == batch.decisions
    assert [d.reason for d in batch.decisions] == [
        Reason.CONSENT_ACTIVE,
        Reason.CONSENT_ACTIVE,
        Reason.NO_CONSENT,
        Reason.REVOKED,
        Reason.CONSENT_ACTIVE,
    ]
    undefined = await app.checks.can_send(PHONE, BRAND, "no-such-campaign")
    assert undefined.decision.reason is Reason.CAMPAIGN_UNKNOWN


@pytest.mark.parametrize("phone", ["not a number", "+15551234567", ""])
async def test_a_single_check_names_the_phone_field_for_a_non_number(app, phone):
    await app.writes.record(define())
    with pytest.raises(InvalidPhoneNumber) as err:
        await app.checks.can_send(phone, BRAND, "promo")
    assert err.value.field == "phone"


async def test_a_batch_reads_numbers_written_another_way_as_their_canonical_form(app):
    await app.writes.record(define())
    granted = await app.writes.record(opt_in("r-canonical"))
    # PHONE is +14155552671; neither entry below is written in E.164, and the
    # canonical form is nowhere in the batch: the numbers are looked up again.
    phones = ["+1 (415) 555-2671", "+1 212 555 1234", "+1-415-555-2671"]

    batch = await app.checks.can_send_batch(phones, BRAND, "promo", token=granted.token)

    assert [d.reason for d in batch.decisions] == [
        Reason.CONSENT_ACTIVE,
        Reason.NO_CONSENT,
        Reason.CONSENT_ACTIVE,
    ]


async def test_numbers_written_another_way_on_a_lagging_partition_are_refused_as_one_is():
    async with running(wait_bound=0.1) as (app, projector):
        await app.writes.record(define())
        granted = await app.writes.record(opt_in("r-lagging"))
        assert await app.guard.wait_for_token(granted.token)
        await stop_task(projector)
        # An opt-out the projection never applies: PHONE's partition stays behind.
        stop = RecordOptOut("r-lagging-stop", PHONE, BRAND, "promo", RevocationChannel.API, at(2))
        await app.ledger.append(to_events(stop, NOW))
        await app.guard.observe()
        phones = ["+1 (415) 555-2671", "+1-415-555-2671"]  # never in E.164 in the batch

        batch = await app.checks.can_send_batch(phones, BRAND, "promo")
        single = await app.checks.can_send(phones[0], BRAND, "promo")

        assert single.decision.reason is Reason.NOT_CONSISTENT
        assert batch.decisions == [single.decision] * len(phones)


async def test_rules_read_before_a_policy_change_are_not_kept_for_after_it(app):
    await app.writes.record(define())
    granted = await app.writes.record(opt_in("r1"))
    assert (await app.checks.can_send(PHONE, BRAND, "promo", token=granted.token)).decision.allowed
    # Another campaign's write moves the positions the cached rules are valid for.
    other = DefineCampaign("define-other", BRAND, "other", CampaignPolicy(), at(-1))
    assert await app.guard.wait_for_token((await app.writes.record(other)).token)
    read, release = asyncio.Event(), asyncio.Event()
    real = app.view.campaign_history

    async def slow_once(brand: str, campaign: str):  # reads, then resumes late
        history = await real(brand, campaign)
        if not read.is_set():
            read.set()
            await release.wait()
        return history

    app.view.campaign_history = slow_once  # type: ignore[method-assign]
    early = asyncio.create_task(app.checks.can_send(PHONE, BRAND, "promo"))
    await read.wait()  # it holds the rules as they were before the change
    gated = ChangeCampaignPolicy("gate", BRAND, "promo", CampaignPolicy(age_gated=True), at(1))
    change = await app.writes.record(gated)
    fresh = await app.checks.can_send(PHONE, BRAND, "promo", token=change.token)
    release.set()
    await early

    later = await app.checks.can_send(PHONE, BRAND, "promo", token=change.token)
    assert fresh.decision.reason is Reason.AGE_VERIFICATION_REQUIRED
    assert later.decision.reason is Reason.AGE_VERIFICATION_REQUIRED


async def test_a_check_for_a_campaign_the_view_lacks_yet_is_not_consistent_not_unknown():
    async with unprojected() as app:
        await app.ledger.append(to_events(define(), NOW))

        with pytest.raises(NotConsistent) as err:
            await app.audit.opt_out_rate(BRAND, "promo", reader=AUDITOR)
        single = await app.checks.can_send(PHONE, BRAND, "promo")
        batch = await app.checks.can_send_batch([PHONE], BRAND, "promo")

        assert err.value.field == "campaign"
        assert single.decision.reason is Reason.NOT_CONSISTENT
        assert batch.decisions == [single.decision]


async def test_a_check_names_what_the_grant_s_proof_lacks(app):
    await app.writes.record(define())
    thin = proof(at(0), email="", postal_address="")
    written = await app.writes.record(dataclasses.replace(opt_in("r1"), proof=thin))
    checked = await app.checks.can_send(PHONE, BRAND, "promo", token=written.token)
    assert checked.proof_missing == ("proof.email", "proof.postal_address")


async def test_a_check_as_of_waits_for_the_projection_and_says_no_while_it_is_behind():
    async with running(wait_bound=0.1, ledger=ledger_at_now()) as (app, projector):
        await app.writes.record(define())
        granted = await app.writes.record(opt_in("r1"))
        assert await app.guard.wait_for_token(granted.token)
        before = await app.checks.can_send_as_of(PHONE, BRAND, "promo", NOW, reader=AUDITOR)
        await stop_task(projector)
        stop = RecordOptOut("r2", PHONE, BRAND, "promo", RevocationChannel.KEYWORD, at(1))
        await app.ledger.append(to_events(stop, NOW))  # acknowledged, never applied
        await app.guard.observe()

        after = await app.checks.can_send_as_of(PHONE, BRAND, "promo", NOW, reader=AUDITOR)

        assert before.decision.allowed
        assert not after.decision.allowed and after.decision.reason is Reason.NOT_CONSISTENT


@pytest.mark.parametrize("field", ["at", "known_at"])
async def test_a_check_as_of_refuses_a_time_ahead_of_now(field):
    async with running(ledger=ledger_at_now()) as (app, _):
        assert await app.guard.wait_for_token((await app.writes.record(define())).token)
        ahead = {"at": NOW, "known_at": None, field: datetime(9999, 12, 31, tzinfo=UTC)}
        with pytest.raises(InvalidRequest) as err:
            await app.checks.can_send_as_of(
                PHONE, BRAND, "promo", ahead["at"], ahead["known_at"], reader=AUDITOR
            )
        assert err.value.field == field
        skewed = await app.checks.can_send_as_of(
            PHONE, BRAND, "promo", NOW, NOW + timedelta(minutes=1), reader=AUDITOR
        )
        assert skewed.decision.reason is Reason.NO_CONSENT  # within the skew allowed


async def test_a_batch_naming_a_number_twice_at_a_caps_edge_allows_it_once(app):
    capped = CampaignPolicy(frequency_caps=(FrequencyCap(2, timedelta(days=1)),))
    await app.writes.record(DefineCampaign("d", BRAND, "promo", capped, at(0) - timedelta(days=1)))
    await app.writes.record(opt_in("r1"))
    one = RecordMessageSent("s1", PHONE, BRAND, "promo", "m1", MessageKind.REGULAR, at(1))
    written = await app.writes.record(one)
    # The number, another never opted in, the number spelt another way, an entry that
    # is no number, and the number again: one more send fits under the cap.
    phones = [PHONE, "+13105550123", "+1 (415) 555-2671", "not a number", PHONE]

    batch = await app.checks.can_send_batch(phones, BRAND, "promo", token=written.token)
    alone = await app.checks.can_send(PHONE, BRAND, "promo", token=written.token)

    assert [d.reason for d in batch.decisions] == [
        Reason.CONSENT_ACTIVE,
        Reason.NO_CONSENT,
        Reason.FREQUENCY_CAP_REACHED,
        Reason.INVALID_PHONE,
        Reason.FREQUENCY_CAP_REACHED,
    ]
    assert batch.decisions[0] == alone.decision  # a single check reserves nothing
    for denied in (batch.decisions[2], batch.decisions[4]):
        assert denied.detail.startswith("2 of 2 messages") and "phones[0]," in denied.detail
        assert "" not in denied.evidence
