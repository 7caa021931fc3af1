"""A ``CanSendBatch`` that names a number more than once asks about a message per
entry: through the real gRPC server, on the Kafka ledger and on the embedded
default's, each entry after the first is answered as if those allowed before it had
been sent at the batch's moment, so together they never pass a cap that one more
send would reach (the campaign's, its daily cap, a state's), in any spelling, for a
moment now, ahead or past; an entry denied for another reason counts nothing."""

from __future__ import annotations

from datetime import UTC, timedelta
from zoneinfo import ZoneInfo

import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb
from google.protobuf.duration_pb2 import Duration

from ledger.ports import ConsistencyToken
from services.bootstrap import Runtime
from tests.e2e.harness import Clock, client, define, module_clock, opt_in, sent, ts

pytestmark = pytest.mark.asyncio(loop_scope="session")

DAY = Duration(seconds=86_400)
PROMOTIONAL = lpb.CAMPAIGN_PURPOSE_PROMOTIONAL
CAMPAIGNS = {
    "capped": dict(frequency_caps=[lpb.FrequencyCap(limit=2, window=DAY)]),
    "three": dict(frequency_caps=[lpb.FrequencyCap(limit=3, window=DAY)]),
    "daily": dict(daily_cap=1),
    "plain": {},  # no cap of its own: a Florida number has Florida's
    # One send a day, between 08:00 and 09:00 in the recipient's time only.
    "mornings": dict(
        frequency_caps=[lpb.FrequencyCap(limit=1, window=DAY)],
        quiet_hours=lpb.QuietHours(start_minute_of_day=8 * 60, end_minute_of_day=9 * 60),
    ),
}
LA = ZoneInfo("America/Los_Angeles")


@pytest.fixture(scope="module", params=["embedded", "kafka"])
async def service(request, module_serve) -> tuple[Runtime, Clock]:
    clock = module_clock()  # noon in Los Angeles, 15:00 in Miami: no quiet hours bite
    start = clock.now - timedelta(days=1)
    runtime = await module_serve(
        on_kafka=request.param == "kafka",
        name="twice",
        clock=clock,
        campaigns=[
            define("acme", name, start, purpose=PROMOTIONAL, **policy)
            for name, policy in CAMPAIGNS.items()
        ],
    )
    return runtime, clock


def merged(*written) -> str:
    token = ConsistencyToken({})
    for w in written:
        token = token.merge(ConsistencyToken.decode(w.consistency_token))
    return token.encode()


async def opted_in_and_sent(c, clock: Clock, phone: str, campaign: str, sends: int, ago=None):
    """``phone`` opted in to ``campaign`` an hour before ``ago`` (default now) and sent
    ``sends`` messages half an hour before it; the writes."""
    then = clock.now if ago is None else clock.now - ago
    written = [await c.RecordOptIn(opt_in(phone, "acme", campaign, then - timedelta(hours=1)))]
    for i in range(sends):
        at = then - timedelta(minutes=30 - i)
        written.append(await c.RecordMessageSent(sent(phone, "acme", campaign, at)))
    return written


async def batch(c, campaign: str, phones: list[str], fresh: str, at=None):
    request = api.CanSendBatchRequest(
        brand="acme", campaign=campaign, phones=phones, at_least_as_fresh=fresh
    )
    if at is not None:
        request.at.CopyFrom(ts(at))
    answer = await c.CanSendBatch(request)
    assert [d.phone for d in answer.decisions] == phones  # as given, in order
    return answer


async def test_at_a_frequency_caps_edge_a_number_named_twice_is_allowed_once(service):
    runtime, clock = service
    number, once = "+14155550301", "+14155550302"
    async with client(runtime.address, "acme-app") as c:
        written = await opted_in_and_sent(c, clock, number, "capped", 1)
        written += await opted_in_and_sent(c, clock, once, "capped", 1)
        fresh = merged(*written)

        answer = await batch(c, "capped", [number, once, number], fresh)
        alone = await c.CanSend(
            api.CanSendRequest(
                phone=number, brand="acme", campaign="capped", at_least_as_fresh=fresh
            )
        )

    first, other, second = answer.decisions
    assert first.allowed and other.allowed  # a number named once: as ever
    assert not second.allowed and second.reason == api.REASON_FREQUENCY_CAP_REACHED
    assert second.rule == "campaign"
    assert second.detail.startswith("2 of 2 messages") and "phones[0]," in second.detail
    assert "phones[1]" not in second.detail
    assert "" not in second.evidence_event_ids
    # A single check reserves nothing: it reads the sends recorded.
    assert alone.allowed and alone.reason == first.reason


async def test_a_daily_cap_counts_the_entries_allowed_before(service):
    runtime, clock = service
    number = "+14155550311"
    async with client(runtime.address, "acme-app") as c:
        fresh = merged(*await opted_in_and_sent(c, clock, number, "daily", 0))
        answer = await batch(c, "daily", [number, number], fresh)

    first, second = answer.decisions
    assert first.allowed
    assert not second.allowed and second.reason == api.REASON_DAILY_CAP_REACHED
    assert "phones[0]," in second.detail


async def test_a_florida_number_named_thrice_gets_what_floridas_cap_leaves(service):
    runtime, clock = service
    florida = "+13055550321"  # three solicitations on a subject in 24 hours
    async with client(runtime.address, "acme-app") as c:
        fresh = merged(*await opted_in_and_sent(c, clock, florida, "plain", 2))
        answer = await batch(c, "plain", [florida] * 3, fresh)

    first, second, third = answer.decisions
    assert first.allowed
    for denied in (second, third):
        assert not denied.allowed and denied.reason == api.REASON_FREQUENCY_CAP_REACHED
        assert denied.rule == "state:FL" and "501.616" in denied.rule_citation
        assert "phones[0]," in denied.detail


async def test_two_spellings_of_one_number_are_one_number(service):
    runtime, clock = service
    number, spelt = "+14155550331", "+1 (415) 555-0331"
    async with client(runtime.address, "acme-app") as c:
        fresh = merged(*await opted_in_and_sent(c, clock, number, "capped", 1))
        answer = await batch(c, "capped", [spelt, number], fresh)

    first, second = answer.decisions
    assert first.allowed
    assert not second.allowed and second.reason == api.REASON_FREQUENCY_CAP_REACHED


async def test_with_room_for_two_of_three_entries_two_are_allowed(service):
    runtime, clock = service
    number = "+14155550341"
    async with client(runtime.address, "acme-app") as c:
        fresh = merged(*await opted_in_and_sent(c, clock, number, "three", 1))
        answer = await batch(c, "three", [number] * 3, fresh)

    assert [d.allowed for d in answer.decisions] == [True, True, False]
    third = answer.decisions[2]
    assert third.reason == api.REASON_FREQUENCY_CAP_REACHED
    assert third.detail.startswith("3 of 3 messages") and "phones[0], phones[1]," in third.detail


async def test_an_entry_that_is_no_number_between_two_changes_nothing(service):
    runtime, clock = service
    number = "+14155550351"
    async with client(runtime.address, "acme-app") as c:
        fresh = merged(*await opted_in_and_sent(c, clock, number, "capped", 1))
        answer = await batch(c, "capped", [number, "not a number", number], fresh)

    assert [d.reason for d in answer.decisions] == [
        api.REASON_CONSENT_ACTIVE,
        api.REASON_INVALID_PHONE,
        api.REASON_FREQUENCY_CAP_REACHED,
    ]
    assert "phones[0]," in answer.decisions[2].detail


async def test_an_entry_denied_for_another_reason_counts_nothing(service):
    runtime, clock = service
    number, stranger = "+14155550361", "+14155550362"
    async with client(runtime.address, "acme-app") as c:
        fresh = merged(*await opted_in_and_sent(c, clock, number, "mornings", 0))
        now = await batch(c, "mornings", [number, stranger, number, stranger], fresh)
        # Tomorrow at 08:30 in Los Angeles the window is open: one send fits.
        local = (clock.now + timedelta(days=1)).astimezone(LA)
        morning = local.replace(hour=8, minute=30, second=0, microsecond=0).astimezone(UTC)
        ahead = await batch(c, "mornings", [number, number], fresh, at=morning)

    assert [d.reason for d in now.decisions] == [
        api.REASON_QUIET_HOURS,
        api.REASON_NO_CONSENT,
        api.REASON_QUIET_HOURS,
        api.REASON_NO_CONSENT,
    ]
    assert now.decisions[0] == now.decisions[2] and now.decisions[1] == now.decisions[3]
    assert ahead.provisional
    assert ahead.decisions[0].allowed
    assert ahead.decisions[1].reason == api.REASON_FREQUENCY_CAP_REACHED


async def test_a_batch_for_a_past_moment_counts_the_entries_allowed_before(service):
    runtime, clock = service
    number = "+14155550371"
    ago = timedelta(hours=2)
    async with client(runtime.address, "acme-app") as c:
        fresh = merged(*await opted_in_and_sent(c, clock, number, "capped", 1, ago=ago))
        then = clock.now - ago
        answer = await batch(c, "capped", [number, "+1 415-555-0371"], fresh, at=then)
        audit = await c.CanSendAsOf(
            api.CanSendAsOfRequest(
                phone=number, brand="acme", campaign="capped", at=ts(then), at_least_as_fresh=fresh
            )
        )

    first, second = answer.decisions
    assert audit.allowed and first.allowed and first.reason == audit.reason
    assert not second.allowed and second.reason == api.REASON_FREQUENCY_CAP_REACHED
    assert "phones[0]," in second.detail
