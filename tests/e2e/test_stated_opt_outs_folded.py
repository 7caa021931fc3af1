"""An opt-out stamped ahead (placed at T, saying T+40s) outranks a consent stated
before T+40s on every read path, even when the consent reached the ledger without
the write's check: appended straight to the ledger here, as an instance racing past
the check, or one of a version that never made it, would append it. Through the real
gRPC server, on the real Kafka ledger and on the embedded default's PostgreSQL
ledger: CanSend, CanSendBatch, CanSendAsOf and GetConsent agree."""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack
from dataclasses import replace
from datetime import timedelta

import asyncpg
import pytest
from consent.v1 import consent_service_pb2 as api
from consent.v1 import ledger_pb2 as lpb

from ledger.events import ConsentResumed, ConsentTier, InboundMessageReceived
from ledger.keywords import classify
from ledger.ports import ConsistencyToken
from tests.builders import granted, revoked
from tests.e2e.harness import Clock, client, define, serving, ts
from tests.e2e.test_write_races import NUMBER, allowed

pytestmark = pytest.mark.asyncio(loop_scope="session")

SUPPORT = "+12125550179"


@pytest.fixture(params=["kafka", "embedded"])
async def service(request, tmp_path, postgres_dsn, kafka_bootstrap):
    clock = Clock()
    campaigns = [
        define("acme", "promo", clock.now - timedelta(days=1), [NUMBER]),
        define("acme", "other", clock.now - timedelta(days=1), ["+12125550178"]),
        define(
            "acme",
            "support",
            clock.now - timedelta(days=1),
            [SUPPORT],
            purpose=lpb.CAMPAIGN_PURPOSE_CONVERSATIONAL,
        ),
    ]
    bootstrap = kafka_bootstrap if request.param == "kafka" else None
    async with AsyncExitStack() as stack:
        runtime = await stack.enter_async_context(
            serving(
                tmp_path, postgres_dsn, bootstrap, name="folded", clock=clock, campaigns=campaigns
            )
        )
        yield runtime, clock


def ahead(when, phone, campaign):
    """An opt-out placed at ``when`` that said it happened 40 seconds later."""
    stop = revoked(when, campaign, phone=phone, brand="acme")
    return replace(stop, stated_at=when + timedelta(seconds=40))


def resumed(when, phone, campaign):
    return ConsentResumed(
        event_id=uuid.uuid4(), occurred_at=when, phone=phone, brand="acme", campaign=campaign
    )


async def appended(runtime, *events) -> str:
    """``events`` appended straight to the ledger, one append each and in order, as
    the writers that raced would append them; a token as fresh as the last."""
    token = None
    for event in events:
        recorded = await runtime.ledger.append([event])
        after = ConsistencyToken.after(recorded)
        token = after if token is None else token.merge(after)
    assert token is not None
    return token.encode()


async def consent_state(c, phone: str, fresh: str) -> int:
    answer = await c.GetConsent(
        api.GetConsentRequest(phone=phone, brand="acme", campaign="promo", at_least_as_fresh=fresh)
    )
    return answer.state


async def allowed_as_of(c, phone: str, moment, fresh: str) -> bool:
    answer = await c.CanSendAsOf(
        api.CanSendAsOfRequest(
            phone=phone, brand="acme", campaign="promo", at=ts(moment), at_least_as_fresh=fresh
        )
    )
    return answer.allowed


async def test_a_consent_stated_before_an_opt_outs_time_never_outranks_it(service):
    runtime, clock = service
    t = clock.now
    before = t - timedelta(hours=1)
    between = t + timedelta(seconds=20)
    # (phone, what is appended after a grant an hour before T, the state GetConsent says)
    cases = [
        ("+14155550401", [ahead(t, "+14155550401", "promo")], api.CONSENT_STATE_REVOKED),
        ("+14155550402", [ahead(t, "+14155550402", None)], api.CONSENT_STATE_REVOKED_BRAND_WIDE),
        # A START stated between the opt-out's place and its time resumes nothing.
        (
            "+14155550403",
            [ahead(t, "+14155550403", "promo"), resumed(between, "+14155550403", "promo")],
            api.CONSENT_STATE_REVOKED,
        ),
        (
            "+14155550404",
            [ahead(t, "+14155550404", None), resumed(between, "+14155550404", None)],
            api.CONSENT_STATE_REVOKED_BRAND_WIDE,
        ),
        # Two opt-outs: the one placed at T saying T+40s, and one placed at T+10s.
        (
            "+14155550405",
            [
                ahead(t, "+14155550405", "promo"),
                revoked(t + timedelta(seconds=10), "promo", phone="+14155550405", brand="acme"),
            ],
            api.CONSENT_STATE_REVOKED,
        ),
    ]
    async with client(runtime.address, "acme-app") as c:
        for phone, opt_outs, state in cases:
            first = granted(before, "promo", phone=phone, brand="acme")
            consent = (
                granted(between, "promo", phone=phone, brand="acme")
                if not isinstance(opt_outs[-1], ConsentResumed)
                else None
            )
            events = [first, *opt_outs, *([consent] if consent else [])]
            clock.now = t + timedelta(seconds=30)
            fresh = await appended(runtime, *events)
            assert await allowed(c, phone, fresh) == [False, False], phone
            assert await consent_state(c, phone, fresh) == state, phone
            assert not await allowed_as_of(c, phone, t + timedelta(seconds=30), fresh), phone


async def test_a_consent_stated_after_an_opt_outs_time_outranks_it(service):
    runtime, clock = service
    t = clock.now
    async with client(runtime.address, "acme-app") as c:
        for phone, scope in (("+14155550411", "promo"), ("+14155550412", None)):
            fresh = await appended(
                runtime,
                granted(t - timedelta(hours=1), "promo", phone=phone, brand="acme"),
                ahead(t, phone, scope),
                granted(t + timedelta(seconds=41), "promo", phone=phone, brand="acme"),
            )
            clock.now = t + timedelta(seconds=45)
            assert await allowed(c, phone, fresh) == [True, True], phone
            assert await consent_state(c, phone, fresh) == api.CONSENT_STATE_ACTIVE, phone


async def test_under_revoke_all_an_opt_out_of_another_campaign_said_later_ends_this_one(service):
    runtime, clock = service
    t = clock.now
    async with client(runtime.address, "admin") as admin:
        setting = await admin.SetBrandPolicy(
            api.SetBrandPolicyRequest(request_id=uuid.uuid4().hex, brand="acme", revoke_all=True)
        )
    phone = "+14155550421"
    async with client(runtime.address, "acme-app") as c:
        facts = await appended(
            runtime,
            granted(t - timedelta(hours=1), "promo", phone=phone, brand="acme"),
            ahead(t, phone, "other"),
            granted(t + timedelta(seconds=20), "promo", phone=phone, brand="acme"),
        )
        both = ConsistencyToken.decode(facts).merge(
            ConsistencyToken.decode(setting.consistency_token)
        )
        fresh = both.encode()
        clock.now = t + timedelta(seconds=30)
        assert await allowed(c, phone, fresh) == [False, False]
        assert await consent_state(c, phone, fresh) == api.CONSENT_STATE_REVOKED_BRAND_WIDE


async def test_a_text_stated_before_an_opt_outs_time_opens_no_conversation(service):
    """A conversational campaign replies inside the window after the person's text,
    but not to a text stated before the time an opt-out said: the person's later
    word is the opt-out. (A new conversational opt-in after that time lifts the
    opt-out, and the window is then the text's.)"""
    runtime, clock = service
    t = clock.now

    def text(phone, when):
        return InboundMessageReceived(
            event_id=uuid.uuid4(),
            occurred_at=when,
            phone=phone,
            brand="acme",
            message_id=f"SM{uuid.uuid4().hex[:12]}",
            to_number=SUPPORT,
            body="hi",
            campaign="support",
            intent=classify("hi").value,
        )

    def conversational(phone, when):
        return granted(when, "support", phone=phone, brand="acme", tier=ConsentTier.CONVERSATIONAL)

    async with client(runtime.address, "acme-app") as c:
        answers = {}
        for phone, text_at in (("+14155550431", 20), ("+14155550432", 42)):
            fresh = await appended(
                runtime,
                conversational(phone, t - timedelta(hours=1)),
                ahead(t, phone, "support"),
                text(phone, t + timedelta(seconds=text_at)),
                conversational(phone, t + timedelta(seconds=41)),
            )
            clock.now = t + timedelta(seconds=45)
            reply = await c.CanSend(
                api.CanSendRequest(
                    phone=phone,
                    brand="acme",
                    campaign="support",
                    message_kind=lpb.MESSAGE_KIND_CONVERSATION_REPLY,
                    at_least_as_fresh=fresh,
                )
            )
            answers[text_at] = (reply.allowed, reply.reason)
    assert answers[20] == (False, api.REASON_CONVERSATION_WINDOW_CLOSED)
    assert answers[42] == (True, api.REASON_CONVERSATION_REPLY)


async def test_a_start_stated_before_an_opt_outs_time_takes_nothing_from_the_grant(service):
    """An opt-in stamped ahead, later by both times than an opt-out stamped ahead too,
    outranks it; a START recorded after it (by an instance racing past the check)
    but stated before the opt-out's time lifts nothing. It took the place of the
    opt-in in the fold, so the person's own START denied what their opt-in allowed.
    The same for a brand-wide START, as a version before START resumed one campaign
    recorded it, after a STOPALL stamped ahead."""
    runtime, clock = service
    t = clock.now
    before = t - timedelta(hours=1)

    def stated_grant(phone, placed, said):
        return replace(granted(placed, "promo", phone=phone, brand="acme"), stated_at=said)

    cases = [
        # The opt-out placed at T+5s said T+45s; the opt-in placed at T+10s said T+70s;
        # the START at T+20s.
        (
            "+14155550441",
            [
                replace(
                    revoked(t + timedelta(seconds=5), "promo", phone="+14155550441", brand="acme"),
                    stated_at=t + timedelta(seconds=45),
                ),
                stated_grant("+14155550441", t + timedelta(seconds=10), t + timedelta(seconds=70)),
                resumed(t + timedelta(seconds=20), "+14155550441", "promo"),
            ],
        ),
        (
            "+14155550442",
            [
                ahead(t, "+14155550442", None),
                stated_grant("+14155550442", t + timedelta(seconds=10), t + timedelta(minutes=5)),
                resumed(t + timedelta(seconds=20), "+14155550442", None),
            ],
        ),
    ]
    async with client(runtime.address, "acme-app") as c:
        for phone, facts in cases:
            fresh = await appended(
                runtime, granted(before, "promo", phone=phone, brand="acme"), *facts
            )
            clock.now = t + timedelta(minutes=6)
            assert await allowed(c, phone, fresh) == [True, True], phone
            assert await consent_state(c, phone, fresh) == api.CONSENT_STATE_ACTIVE, phone
            assert await allowed_as_of(c, phone, clock.now, fresh), phone


async def test_the_status_row_names_the_opt_out_that_stands(service, postgres_dsn):
    """Of two opt-outs, the one placed at T that said T+40s and one placed at T+10s,
    the first stands against an opt-in at T+20s: GetConsent names it, and the
    ``consent_status`` row named the later by place."""
    runtime, clock = service
    t = clock.now
    phone = "+14155550451"
    first = ahead(t, phone, "promo")
    facts = [
        granted(t - timedelta(hours=1), "promo", phone=phone, brand="acme"),
        first,
        revoked(t + timedelta(seconds=10), "promo", phone=phone, brand="acme"),
        granted(t + timedelta(seconds=20), "promo", phone=phone, brand="acme"),
    ]
    async with client(runtime.address, "acme-app") as c:
        fresh = await appended(runtime, *facts)
        clock.now = t + timedelta(seconds=30)
        answer = await c.GetConsent(
            api.GetConsentRequest(
                phone=phone, brand="acme", campaign="promo", at_least_as_fresh=fresh
            )
        )
    assert answer.revocation.event.event_id == str(first.event_id)
    conn = await asyncpg.connect(postgres_dsn)
    try:
        row = await conn.fetchrow(
            "SELECT status, revoked_event_id, revoked_at FROM consent_status"
            " WHERE phone = $1 AND brand = 'acme' AND campaign = 'promo'",
            phone,
        )
    finally:
        await conn.close()
    assert (row["status"], str(row["revoked_event_id"])) == ("revoked", str(first.event_id))
    assert row["revoked_at"] == first.occurred_at
