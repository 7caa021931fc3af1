"""Any internal failure in a query answers "not allowed", with a reason."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb

from ledger.ports import ConsistencyToken
from services.bootstrap import Runtime
from services.settings import FreshnessSettings
from services.wire.digest import FORMAT as DIGEST_FORMAT
from services.wire.enums import WireFormatError
from tests.e2e.harness import (
    Clock,
    client,
    define,
    defined,
    noon_in_los_angeles,
    opt_in,
    opt_out,
    running,
    service_settings,
    status_details,
    ts,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")


FAILURES = {
    "down": RuntimeError("the database fell over"),
    # A row this code cannot decode (from a newer writer, during a rolling upgrade):
    # the caller sent no such field, so it is no INVALID_ARGUMENT of theirs.
    "undecodable": WireFormatError("consent_revoked.channel", "unknown value 9"),
}


@pytest.mark.parametrize("failure", FAILURES)
async def test_a_failing_read_model_answers_not_allowed_for_single_and_batch(
    tmp_path, postgres_dsn, failure
):
    runtime = Runtime(service_settings(tmp_path, postgres_dsn, kafka=None))
    await runtime.start()
    try:
        async with client(runtime.address) as c:
            await c.DefineCampaign(define("acme", "promo", datetime.now(UTC) - timedelta(days=1)))

            async def broken(*args, **kwargs):
                raise FAILURES[failure]

            assert runtime.usecases is not None
            runtime.usecases.checks.reads.digests = broken  # type: ignore[method-assign]
            one = await c.CanSend(
                api.CanSendRequest(phone="+14155552671", brand="acme", campaign="promo")
            )
            assert not one.allowed and one.reason == api.REASON_INTERNAL_ERROR
            many = await c.CanSendBatch(
                api.CanSendBatchRequest(
                    brand="acme", campaign="promo", phones=["+14155552671", "+12125551234"]
                )
            )
            assert [d.allowed for d in many.decisions] == [False, False]
            assert {d.reason for d in many.decisions} == {api.REASON_INTERNAL_ERROR}
            assert [d.phone for d in many.decisions] == ["+14155552671", "+12125551234"]
    finally:
        await runtime.stop()


async def test_an_audit_read_the_view_cannot_serve_fresh_enough_is_unavailable(
    tmp_path, postgres_dsn
):
    when = noon_in_los_angeles()
    runtime = await _started_with_quick_freshness(tmp_path, postgres_dsn, when)
    phone = "+14155552671"
    try:
        async with client(runtime.address) as c:
            await c.DefineCampaign(define("acme", "promo", when - timedelta(days=1)))
            await asyncio.sleep(0.15)
            # A write the ledger acknowledged and the view never applies.
            ahead = await _stop_the_projector_then_opt_out(runtime, c, phone, when)
            for call in (
                c.GetConsent(
                    api.GetConsentRequest(
                        phone=phone, brand="acme", campaign="promo", at_least_as_fresh=ahead
                    )
                ),
                c.ListEvents(api.ListEventsRequest(phone=phone, at_least_as_fresh=ahead)),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            as_of = await c.CanSendAsOf(
                api.CanSendAsOfRequest(
                    phone=phone, brand="acme", campaign="promo", at=ts(when),
                    at_least_as_fresh=ahead,
                )
            )  # fmt: skip
            assert not as_of.allowed and as_of.reason == api.REASON_NOT_CONSISTENT
    finally:
        await runtime.stop()


async def test_a_check_as_of_says_no_when_it_fails_or_the_view_is_behind(tmp_path, postgres_dsn):
    when = noon_in_los_angeles()
    runtime = await _started_with_quick_freshness(tmp_path, postgres_dsn, when)
    phone = "+14155552671"

    def as_of(at: datetime, **fields: str) -> api.CanSendAsOfRequest:
        return api.CanSendAsOfRequest(
            phone=phone, brand="acme", campaign="promo", at=ts(at), **fields
        )

    try:
        async with client(runtime.address) as c:
            await c.DefineCampaign(define("acme", "promo", when - timedelta(days=1)))
            granted = await c.RecordOptIn(opt_in(phone, "acme", "promo", when))
            ok = await c.CanSendAsOf(as_of(when, at_least_as_fresh=granted.consistency_token))
            assert ok.allowed, ok

            with pytest.raises(grpc.aio.AioRpcError) as err:
                await c.CanSendAsOf(as_of(datetime(9999, 12, 31, tzinfo=UTC)))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert [field for field, _ in status_details(err.value)] == ["at"]

            async def broken(*args, **kwargs):
                raise RuntimeError("the database fell over")

            history = runtime.view.history
            runtime.view.history = broken  # type: ignore[method-assign, union-attr]
            failed = await c.CanSendAsOf(as_of(when))
            runtime.view.history = history  # type: ignore[method-assign, union-attr]
            assert not failed.allowed and failed.reason == api.REASON_INTERNAL_ERROR

            await _stop_the_projector_then_opt_out(runtime, c, phone, when)
            behind = await c.CanSendAsOf(as_of(when))
            assert not behind.allowed and behind.reason == api.REASON_NOT_CONSISTENT
    finally:
        await runtime.stop()


async def test_audit_reads_behind_an_acknowledged_stop_are_unavailable(tmp_path, postgres_dsn):
    when = noon_in_los_angeles()
    runtime = await _started_with_quick_freshness(tmp_path, postgres_dsn, when)
    phone = "+14155552671"
    try:
        async with client(runtime.address) as c:
            await c.DefineCampaign(define("acme", "promo", when - timedelta(days=1)))
            await c.RecordOptIn(opt_in(phone, "acme", "promo", when))
            await asyncio.sleep(0.15)
            await _stop_the_projector_then_opt_out(runtime, c, phone, when)
            for call in (
                c.GetConsent(api.GetConsentRequest(phone=phone, brand="acme", campaign="promo")),
                c.ListEvents(api.ListEventsRequest(phone=phone, brand="acme")),
                c.ListRevocationCandidates(api.ListRevocationCandidatesRequest(brand="acme")),
                c.GetOptOutRate(api.GetOptOutRateRequest(brand="acme")),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await runtime.stop()


async def _stop_the_projector_then_opt_out(runtime, c, phone: str, when) -> str:
    """Stop every projector, record a STOP the view will not apply, and let the guard
    observe it (several refresh intervals); the STOP's consistency token."""
    for task in runtime._tasks:
        task.cancel()
    await asyncio.gather(*runtime._tasks, return_exceptions=True)
    stop = await c.RecordOptOut(
        opt_out(phone, "acme", "promo", when, "stop-1", channel=lpb.REVOCATION_CHANNEL_KEYWORD)
    )
    await asyncio.sleep(0.15)
    return stop.consistency_token


async def _started_with_quick_freshness(tmp_path, postgres_dsn, when: datetime) -> Runtime:
    """A started runtime on the local ledger whose guard looks every 50 ms and gives up
    waiting after 0.3 s, so a view left behind shows within a test."""
    settings = service_settings(tmp_path, postgres_dsn, kafka=None)
    fast = FreshnessSettings(refresh_interval=0.05, wait_bound=0.3)
    runtime = Runtime(dataclasses.replace(settings, freshness=fast), clock=lambda: when)
    await runtime.start()
    return runtime


async def test_one_unreadable_stored_digest_denies_that_number_alone(tmp_path, postgres_dsn):
    """A corrupt digest row used to stop the service's start (the replica's load
    raised), and a refresh that read one failed every read NOT_CONSISTENT. Now the
    service starts, the number is answered "no" with the reason, every other number
    as before, and the number again once a new fact rewrites its row."""
    clock = Clock(noon_in_los_angeles())
    settings = service_settings(tmp_path, postgres_dsn, kafka=None)
    bad, good = "+14155552671", "+12125551234"
    first = clock.now - timedelta(minutes=30)
    async with running(settings, clock) as runtime:
        await defined(runtime, [define("acme", "promo", first - timedelta(days=1))])
        async with client(runtime.address) as c:
            for phone in (bad, good):
                w = await c.RecordOptIn(opt_in(phone, "acme", "promo", first))
        assert runtime.guard is not None and runtime.pool is not None
        # Applied, so that no write of the projector's comes after the corruption.
        assert await runtime.guard.wait_for_token(ConsistencyToken.decode(w.consistency_token))
        await runtime.pool.execute(
            "UPDATE subscriber_state SET digest = $1 WHERE phone = $2",
            bytes([DIGEST_FORMAT, 0xC1]),
            bad,
        )
    async with running(settings, clock) as runtime, client(runtime.address) as c:
        denied = await c.CanSend(api.CanSendRequest(phone=bad, brand="acme", campaign="promo"))
        assert not denied.allowed and denied.reason == api.REASON_INTERNAL_ERROR
        assert "stored state could not be read" in denied.detail
        allowed = await c.CanSend(api.CanSendRequest(phone=good, brand="acme", campaign="promo"))
        assert allowed.allowed, allowed
        many = await c.CanSendBatch(
            api.CanSendBatchRequest(brand="acme", campaign="promo", phones=[bad, good])
        )
        assert [(d.phone, d.allowed) for d in many.decisions] == [(bad, False), (good, True)]
        assert many.decisions[0].reason == api.REASON_INTERNAL_ERROR
        # The audit reads read the number's history, not its digest: answered as before.
        for phone in (bad, good):
            as_of = await c.CanSendAsOf(
                api.CanSendAsOfRequest(
                    phone=phone, brand="acme", campaign="promo", at=ts(clock.now)
                )
            )
            assert as_of.allowed, as_of
            consent = await c.GetConsent(
                api.GetConsentRequest(phone=phone, brand="acme", campaign="promo")
            )
            assert consent.state == api.CONSENT_STATE_ACTIVE
        assert runtime.metrics.replica is not None and runtime.metrics.replica.unreadable == 1

        # A new fact rewrites the row: the number is answered again.
        w = await c.RecordOptOut(opt_out(bad, "acme", "promo", clock.now - timedelta(minutes=1)))
        again = await c.CanSend(
            api.CanSendRequest(
                phone=bad, brand="acme", campaign="promo", at_least_as_fresh=w.consistency_token
            )
        )
        assert not again.allowed and again.reason == api.REASON_REVOKED, again
        assert runtime.metrics.replica.unreadable == 0
