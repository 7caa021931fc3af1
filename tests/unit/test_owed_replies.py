"""The replies the service says are owed, and every kind of message that escapes a
rule: each is allowed only when the fact that earns it is there."""

from __future__ import annotations

import itertools
import uuid
from dataclasses import replace
from datetime import timedelta

import pytest

from ledger.campaigns import CampaignPolicy, CampaignPurpose, FrequencyCap, ReplyWindows
from ledger.commands import (
    REPLY_MESSAGE_KINDS,
    ChangeCampaignPolicy,
    DefineCampaign,
    HandleInboundMessage,
    RecordMessageSent,
    RecordMessagesSent,
    RecordOptOut,
    ReplyKind,
    SentMessage,
    handle_inbound,
)
from ledger.digest import digest_of
from ledger.events import (
    CampaignDefined,
    CampaignPolicyChanged,
    CandidateResolution,
    InboundMessageReceived,
    MessageKind,
    MessageSent,
    RevocationChannel,
    SubjectErased,
)
from ledger.keywords import Intent
from ledger.policy import Obligation, Reason, decide, earns_exemption
from ledger.ports import Stream
from ledger.state import CampaignHistory, exemptions_not_granted, fold, retained_facts
from services.errors import MessageIdReused
from services.usecases import writes
from tests.builders import (
    BRAND,
    PHONE,
    _base,
    age,
    at,
    campaign,
    flagged,
    granted,
    inbound,
    record,
    resolved,
    resumed,
    revoked,
    sent,
)
from tests.unit.usecase_harness import AUDITOR, NOW, ledger_at_now, opt_in, running

NUMBER = "+12125551234"
PROMO = campaign("promo", sender_numbers=(NUMBER,))
OWED = (MessageKind.OPT_OUT_CONFIRMATION, MessageKind.HELP_REPLY, MessageKind.OPT_IN_CONFIRMATION)
_ids = itertools.count()


def state_of(*events):
    return fold(record(list(events)))


def text(body: str, minutes: float):
    return HandleInboundMessage(
        f"in-{next(_ids)}", PHONE, NUMBER, body, f"SM{next(_ids)}", at(minutes)
    )


BEFORE = {
    "nothing": [],
    "granted": [granted(at(-60))],
    "stopped": [granted(at(-60)), revoked(at(-30))],
    "stopped all": [granted(at(-60)), revoked(at(-30), None)],
    "flagged": [granted(at(-60)), flagged(at(-30))],
}
BODIES = ["STOP", "STOPALL", "START", "HELP", "info", "please stop texting me", "hi, hours?"]


@pytest.mark.parametrize("before", sorted(BEFORE))
@pytest.mark.parametrize("body", BODIES)
def test_the_reply_owed_is_allowed_right_after_and_no_other(before, body):
    prior = BEFORE[before]
    state = state_of(*prior)
    outcome = handle_inbound(text(body, 0), PROMO, state, at(0))
    after = state_of(*prior, *outcome.events)
    owed = REPLY_MESSAGE_KINDS.get(outcome.reply)
    for kind in OWED:
        d = decide(after, PROMO, at(1), kind)
        assert d.allowed is (kind is owed), (before, body, kind, d)
        if d.allowed:
            assert Obligation.NON_MARKETING_CONTENT_ONLY in d.obligations
            assert Obligation.IDENTIFY_SENDER in d.obligations
        # Late, it is no longer owed; once sent, it is owed no more.
        assert not decide(after, PROMO, at(6), kind).allowed
    if owed is not None:
        replied = state_of(*prior, *outcome.events, sent(at(1), "promo", owed))
        assert not decide(replied, PROMO, at(2), owed).allowed
    # An owed reply is never a regular message.
    if outcome.intent in (Intent.OPT_OUT, Intent.OPT_OUT_BRAND_WIDE):
        assert not decide(after, PROMO, at(1)).allowed


def test_every_owed_reply_has_its_kind():
    owing = {ReplyKind.OPT_OUT_CONFIRMATION, ReplyKind.HELP, ReplyKind.OPT_IN_CONFIRMATION}
    assert set(REPLY_MESSAGE_KINDS) == owing
    assert set(REPLY_MESSAGE_KINDS.values()) == set(OWED)


def test_after_a_stop_a_help_still_gets_its_reply_and_nothing_else():
    s = state_of(granted(at(0)), revoked(at(5), None), inbound(at(10), "HELP", "promo"))
    d = decide(s, PROMO, at(11), MessageKind.HELP_REPLY)
    assert d.allowed and d.reason is Reason.HELP_REPLY_ALLOWED
    assert decide(s, PROMO, at(11)).reason is Reason.REVOKED_BRAND_WIDE
    for kind in (MessageKind.CONVERSATION_REPLY, MessageKind.RECONFIRMATION_REQUEST):
        assert not decide(s, PROMO, at(11), kind).allowed


def test_a_help_reply_is_owed_by_the_campaign_whose_number_got_the_help():
    s = state_of(granted(at(0), "alerts"), inbound(at(10), "HELP", "alerts"))
    assert decide(s, campaign("alerts"), at(11), MessageKind.HELP_REPLY).allowed
    d = decide(s, PROMO, at(11), MessageKind.HELP_REPLY)
    assert not d.allowed and d.reason is Reason.REPLY_NOT_OWED
    # A text that is no HELP, or a HELP to no campaign's number, earns none.
    for asked in (inbound(at(10), "what?", "promo"), inbound(at(10), "HELP")):
        assert not decide(state_of(asked), PROMO, at(11), MessageKind.HELP_REPLY).allowed


def test_a_help_reply_goes_at_any_hour_past_caps_and_age_gates():
    strict = campaign(
        age_gated=True,
        daily_cap=1,
        frequency_caps=(FrequencyCap(1, timedelta(days=1)),),
        quiet_hours_apply_to_all=True,
    )
    night = at(hours=6)  # 02:00 in Los Angeles
    s = state_of(granted(at(0)), sent(at(1)), inbound(night, "HELP", "promo"))
    assert (
        decide(s, strict, night + timedelta(minutes=1)).reason is Reason.AGE_VERIFICATION_REQUIRED
    )
    assert decide(s, strict, night + timedelta(minutes=1), MessageKind.HELP_REPLY).allowed


def test_a_start_confirmation_needs_a_consent_the_start_resumed_still_standing():
    start = text("START", 0)
    prior = [granted(at(-60)), revoked(at(-30))]
    outcome = handle_inbound(start, PROMO, state_of(*prior), at(0))
    resumed = state_of(*prior, *outcome.events)
    d = decide(resumed, PROMO, at(1), MessageKind.OPT_IN_CONFIRMATION)
    assert d.allowed and d.reason is Reason.OPT_IN_CONFIRMATION_ALLOWED
    assert Obligation.INCLUDE_OPT_OUT_LANGUAGE in d.obligations
    stopped_again = state_of(*prior, *outcome.events, revoked(at(0.5)))
    d = decide(stopped_again, PROMO, at(1), MessageKind.OPT_IN_CONFIRMATION)
    assert not d.allowed and d.reason is Reason.REPLY_NOT_OWED
    other = campaign("alerts")
    assert not decide(resumed, other, at(1), MessageKind.OPT_IN_CONFIRMATION).allowed


def test_a_start_confirmation_is_not_owed_once_another_campaign_is_opted_out_after_it():
    """Under the revoke-all rule an opt-out of any campaign of the brand, after the
    START, revokes the consent the START resumed: its confirmation is owed no more."""
    alerts = campaign("alerts", sender_numbers=(NUMBER,), revoke_all=True)
    start = text("START", 0)
    prior = [granted(at(-60), "alerts"), revoked(at(-30), "alerts")]
    outcome = handle_inbound(start, alerts, state_of(*prior), at(0))
    resumed = state_of(*prior, *outcome.events)
    assert decide(resumed, alerts, at(1), MessageKind.OPT_IN_CONFIRMATION).allowed
    stopped_elsewhere = state_of(*prior, *outcome.events, revoked(at(0.5), "promo"))
    assert not decide(stopped_elsewhere, alerts, at(1)).allowed
    d = decide(stopped_elsewhere, alerts, at(1), MessageKind.OPT_IN_CONFIRMATION)
    assert not d.allowed and d.reason is Reason.REPLY_NOT_OWED
    assert "promo" in d.detail


def test_a_conversation_reply_escapes_caps_only_inside_the_window():
    capped = campaign(frequency_caps=(FrequencyCap(1, timedelta(days=2)),))
    base = [granted(at(0)), sent(at(1))]
    asked = inbound(at(10), "do you have it in blue?", "promo")
    inside = state_of(*base, asked)
    d = decide(inside, capped, at(20), MessageKind.CONVERSATION_REPLY)
    assert d.allowed and d.reason is Reason.CONSENT_ACTIVE
    assert Obligation.IDENTIFY_SENDER not in d.obligations  # a follow-up in a conversation
    assert str(asked.event_id) in d.evidence
    # Labelled a reply with no text from the person, or after the window: a message
    # like any other.
    for state, when in ((state_of(*base), at(20)), (inside, at(days=1, minutes=11))):
        d = decide(state, capped, when, MessageKind.CONVERSATION_REPLY)
        assert not d.allowed and d.reason is Reason.FREQUENCY_CAP_REACHED
    # Quiet hours hold for replies too.
    late = state_of(granted(at(0)), inbound(at(hours=10, minutes=50), "hi", "promo"))
    d = decide(late, PROMO, at(hours=11, minutes=5), MessageKind.CONVERSATION_REPLY)
    assert not d.allowed and d.reason is Reason.QUIET_HOURS
    # And a conversation reply with no open conversation still needs identification.
    d = decide(state_of(granted(at(0))), PROMO, at(5), MessageKind.CONVERSATION_REPLY)
    assert d.allowed and Obligation.IDENTIFY_SENDER in d.obligations


def test_a_conversational_campaigns_replies_are_capped_unless_labelled_and_earned():
    support = campaign(
        "support",
        purpose=CampaignPurpose.CONVERSATIONAL,
        frequency_caps=(FrequencyCap(1, timedelta(days=1)),),
    )
    s = state_of(inbound(at(0), "hello?", "support"), sent(at(1), "support"))
    assert decide(s, support, at(2)).reason is Reason.FREQUENCY_CAP_REACHED
    d = decide(s, support, at(2), MessageKind.CONVERSATION_REPLY)
    assert d.allowed and d.reason is Reason.CONVERSATION_REPLY


@pytest.mark.parametrize(
    "kind",
    [MessageKind.HELP_REPLY, MessageKind.OPT_OUT_CONFIRMATION, MessageKind.CONVERSATION_REPLY],
)
def test_a_recorded_reply_counts_towards_caps_unless_it_earned_its_exemption(kind):
    capped = campaign(frequency_caps=(FrequencyCap(1, timedelta(days=1)),))
    grant = granted(at(0))
    # A help reply is owed to a HELP (``test_only_the_first_reply_to_one_help_...``).
    asked = [inbound(at(1), "HELP", "promo")] if kind is MessageKind.HELP_REPLY else []
    # An opt-out confirmation is owed to an opt-out, and the person opts in again.
    again: list = []
    if kind is MessageKind.OPT_OUT_CONFIRMATION:
        asked, again = [revoked(at(1), None)], [granted(at(1) + timedelta(seconds=1))]
    unearned = state_of(grant, *asked, sent(at(1), "promo", kind, exempt=False), *again)
    d = decide(unearned, capped, at(2))
    assert not d.allowed and d.reason is Reason.FREQUENCY_CAP_REACHED
    earned = state_of(grant, *asked, sent(at(1), "promo", kind, exempt=True), *again)
    assert decide(earned, capped, at(2)).allowed
    legacy = state_of(grant, *asked, sent(at(1), "promo", kind), *again)  # before it was decided
    assert decide(legacy, capped, at(2)).allowed


@pytest.mark.parametrize(
    ("kind", "asked"),
    [
        (MessageKind.HELP_REPLY, lambda when: inbound(when, "HELP", "promo")),
        (MessageKind.OPT_IN_CONFIRMATION, lambda when: resumed(when, "promo")),
    ],
)
def test_only_the_first_reply_to_one_request_escapes_the_caps(kind, asked):
    """Three replies to one HELP judged at once (two instances, or one call each) were
    each recorded as exempt: none counted, and a regular send went out over a cap of
    two a day. In ledger order only the first is owed; the others count, and the
    next request earns one reply again."""
    capped = campaign(frequency_caps=(FrequencyCap(2, timedelta(days=1)),))
    replies = [sent(at(2), "promo", kind, exempt=True) for _ in range(3)]
    history = [granted(at(0)), asked(at(1)), *replies]
    state = state_of(*history)
    assert [r.event_id for r in state.campaign("promo").sent] == sorted(
        str(r.event_id) for r in replies[1:]
    )
    d = decide(state, capped, at(3))
    assert not d.allowed and d.reason is Reason.FREQUENCY_CAP_REACHED, d
    again = state_of(*history[:3], asked(at(4)), sent(at(5), "promo", kind, exempt=True))
    assert [r.event_id for r in again.campaign("promo").sent] == []
    # Judged in ledger order, the same however the state was stored and folded again.
    assert fold(retained_facts(state)) == state


def test_only_the_first_confirmation_of_one_opt_out_escapes_the_caps():
    """An opt-out earns one confirmation, of any campaign of the brand. Three judged at
    once were each recorded as exempt and none counted; in ledger order the first is
    owed and the others count, a later opt-out earns one again, and a confirmation
    with no opt-out before it counts."""
    kind = MessageKind.OPT_OUT_CONFIRMATION
    confirmations = [sent(at(2), "promo", kind, exempt=True) for _ in range(3)]
    history = [granted(at(0)), revoked(at(1), None), *confirmations]
    state = state_of(*history)
    assert [r.event_id for r in state.campaign("promo").sent] == sorted(
        str(r.event_id) for r in confirmations[1:]
    )
    assert fold(retained_facts(state)) == state
    again = state_of(*history[:3], revoked(at(4), "promo"), sent(at(5), "promo", kind, exempt=True))
    assert [r.event_id for r in again.campaign("promo").sent] == []
    unasked = state_of(granted(at(0)), sent(at(1), "promo", kind, exempt=True))
    assert len(unasked.campaign("promo").sent) == 1


def test_the_replies_recorded_exempt_that_count_are_named():
    """What an auditor reads of a send's exemption agrees with the fold: of three
    replies to one HELP recorded exempt, the two not owed are named; a reply judged
    not exempt at the write, or a regular send, is not (its flag says so already)."""
    kind = MessageKind.HELP_REPLY
    replies = [sent(at(2), "promo", kind, exempt=True) for _ in range(3)]
    plain = [sent(at(3), "promo", kind, exempt=False), sent(at(3))]
    history = record([granted(at(0)), inbound(at(1), "HELP", "promo"), *replies, *plain])
    assert exemptions_not_granted(history) == {str(r.event_id) for r in replies[1:]}
    assert exemptions_not_granted(history[:3]) == set()


def test_regular_sends_and_reconfirmation_requests_always_count():
    capped = campaign(frequency_caps=(FrequencyCap(1, timedelta(days=1)),))
    for kind in (MessageKind.REGULAR, MessageKind.RECONFIRMATION_REQUEST):
        s = state_of(granted(at(0)), sent(at(1), "promo", kind, exempt=True))
        assert decide(s, capped, at(2)).reason is Reason.FREQUENCY_CAP_REACHED


def test_what_earns_each_kind_its_exemption():
    def earns(state, kind, minutes):
        return earns_exemption(digest_of(state), PROMO, at(minutes), kind)

    help_asked = state_of(granted(at(0)), inbound(at(10), "HELP", "promo"))
    assert earns(help_asked, MessageKind.HELP_REPLY, 11)
    assert not earns(help_asked, MessageKind.HELP_REPLY, 16)  # too late
    answered = state_of(
        granted(at(0)),
        inbound(at(10), "HELP", "promo"),
        sent(at(11), "promo", MessageKind.HELP_REPLY),
    )
    assert not earns(answered, MessageKind.HELP_REPLY, 12)  # the second reply to one HELP
    stopped = state_of(granted(at(0)), revoked(at(10)))
    assert earns(stopped, MessageKind.OPT_OUT_CONFIRMATION, 11)
    assert not earns(state_of(granted(at(0))), MessageKind.OPT_OUT_CONFIRMATION, 11)
    talking = state_of(granted(at(0)), inbound(at(10), "is it in stock?", "promo"))
    assert earns(talking, MessageKind.CONVERSATION_REPLY, 30)
    assert not earns(talking, MessageKind.CONVERSATION_REPLY, 60 * 25)
    assert not earns(state_of(granted(at(0))), MessageKind.CONVERSATION_REPLY, 30)
    for kind in (MessageKind.REGULAR, MessageKind.RECONFIRMATION_REQUEST):
        assert not earns(talking, kind, 30)


def test_the_age_gate_still_holds_for_conversation_replies():
    bar = campaign("bar", category="alcohol")
    s = state_of(granted(at(0), "bar"), inbound(at(5), "open tonight?", "bar"))
    d = decide(s, bar, at(6), MessageKind.CONVERSATION_REPLY)
    assert d.reason is Reason.AGE_VERIFICATION_REQUIRED
    verified = state_of(
        granted(at(0), "bar"), age(at(1), plus21=True), inbound(at(5), "open?", "bar")
    )
    assert decide(verified, bar, at(6), MessageKind.CONVERSATION_REPLY).allowed


@pytest.mark.asyncio(loop_scope="session")
async def test_a_recorded_send_keeps_whether_it_earned_its_exemption():

    async with running(ledger=ledger_at_now()) as (app, _):
        capped = CampaignPolicy(
            sender_numbers=(NUMBER,), frequency_caps=(FrequencyCap(1, timedelta(days=1)),)
        )
        await app.writes.record(DefineCampaign("d", "acme", "promo", capped, at(-60 * 24)))
        await app.writes.record(opt_in("r1"))

        def reply(request_id: str, kind: MessageKind) -> RecordMessageSent:
            return RecordMessageSent(request_id, PHONE, "acme", "promo", request_id, kind, NOW)

        # A "help reply" no HELP asked for counts like any other message.
        written = await app.writes.record(reply("h1", MessageKind.HELP_REPLY))
        d = await app.checks.can_send(PHONE, "acme", "promo", token=written.token)
        assert d.decision.reason is Reason.FREQUENCY_CAP_REACHED
        sends = [
            r.event
            for r in (await app.audit.history(PHONE, "acme", reader=AUDITOR)).value
            if hasattr(r.event, "exempt")
        ]
        assert [s.exempt for s in sends] == [False]


@pytest.mark.asyncio(loop_scope="session")
async def test_a_help_reply_after_a_help_is_recorded_as_owed_and_not_counted():

    async with running(ledger=ledger_at_now()) as (app, _):
        capped = CampaignPolicy(
            sender_numbers=(NUMBER,), frequency_caps=(FrequencyCap(1, timedelta(days=1)),)
        )
        await app.writes.record(DefineCampaign("d", "acme", "promo", capped, at(-60 * 24)))
        await app.writes.record(opt_in("r1"))
        first = await app.writes.record(
            RecordMessageSent("s1", PHONE, "acme", "promo", "m1", MessageKind.REGULAR, NOW)
        )
        await app.guard.wait_for_token(first.token)
        asked = await app.writes.handle_inbound(
            HandleInboundMessage("i1", PHONE, NUMBER, "HELP", "SM-help", NOW)
        )
        assert asked.outcome.reply == ReplyKind.HELP
        await app.guard.wait_for_token(asked.write.token)
        d = await app.checks.can_send(PHONE, "acme", "promo", kind=MessageKind.HELP_REPLY)
        assert d.decision.allowed  # the cap is used up; the owed reply goes all the same
        help_reply = RecordMessageSent(
            "s2", PHONE, "acme", "promo", "m2", MessageKind.HELP_REPLY, NOW
        )
        written = await app.writes.record(help_reply)
        await app.guard.wait_for_token(written.token)
        sends = [
            r.event
            for r in (await app.audit.history(PHONE, "acme", reader=AUDITOR)).value
            if hasattr(r.event, "exempt")
        ]
        assert [(s.kind, s.exempt) for s in sends] == [
            (MessageKind.REGULAR, None),
            (MessageKind.HELP_REPLY, True),
        ]
        again = await app.checks.can_send(PHONE, "acme", "promo", kind=MessageKind.HELP_REPLY)
        assert again.decision.reason is Reason.REPLY_NOT_OWED


@pytest.mark.asyncio(loop_scope="session")
async def test_help_replies_batched_in_one_call_earn_one_exemption_as_sent_alone():
    async with running(ledger=ledger_at_now()) as (app, _):
        capped = CampaignPolicy(
            sender_numbers=(NUMBER,), frequency_caps=(FrequencyCap(1, timedelta(days=1)),)
        )
        await app.writes.record(DefineCampaign("d", "acme", "promo", capped, at(-60 * 24)))
        await app.writes.record(opt_in("r1"))
        asked = await app.writes.handle_inbound(
            HandleInboundMessage("i1", PHONE, NUMBER, "HELP", "SM-help", NOW)
        )
        await app.guard.wait_for_token(asked.write.token)
        replies = tuple(
            SentMessage(PHONE, "promo", f"m{i}", MessageKind.HELP_REPLY, NOW) for i in range(2)
        )
        written = await app.sends.record(RecordMessagesSent("b1", "acme", replies))
        await app.guard.wait_for_token(written.token)
        sends = [
            r.event
            for r in (await app.audit.history(PHONE, "acme", reader=AUDITOR)).value
            if hasattr(r.event, "exempt")
        ]
        assert [s.exempt for s in sends] == [True, False]
        d = await app.checks.can_send(PHONE, "acme", "promo")
        assert d.decision.reason is Reason.FREQUENCY_CAP_REACHED


async def test_a_text_redelivered_under_a_new_request_id_is_recorded_once():
    """Gateways redeliver: the same HELP or STOP under a new request id was recorded
    again, and each answer owed the reply again. It is answered with the first
    text's facts, nothing appended, no reply owed."""
    async with running(ledger=ledger_at_now()) as (app, _):
        await app.writes.record(DefineCampaign("d", "acme", "promo", PROMO.policy, at(-60 * 24)))
        await app.writes.record(opt_in("r1"))
        for body, reply in (("HELP", ReplyKind.HELP), ("STOP", ReplyKind.OPT_OUT_CONFIRMATION)):
            first = await app.writes.handle_inbound(
                HandleInboundMessage(f"i-{body}", PHONE, NUMBER, body, f"SM-{body}", NOW)
            )
            assert first.outcome.reply is reply
            await app.guard.wait_for_token(first.write.token)
            ends = await app.ledger.end_offsets(Stream.SUBSCRIBERS)

            again = await app.writes.handle_inbound(
                HandleInboundMessage(f"i-{body}-again", PHONE, NUMBER, body, f"SM-{body}", NOW)
            )

            assert again.write.event_ids == first.write.event_ids and again.write.replayed
            assert again.outcome.reply is ReplyKind.NONE, again.outcome
            assert "a redelivery" in again.outcome.notes[0]
            assert await app.ledger.end_offsets(Stream.SUBSCRIBERS) == ends


START = HandleInboundMessage("i-start", PHONE, NUMBER, "START", "SM-start", at(-10))


async def _start_then_opted_in_and_out(app):
    """A START with nothing to resume (answered "no reply owed"), then an opt-in and a
    STOP: the START's answer and the STOP's."""
    await app.writes.record(DefineCampaign("d", "acme", "promo", PROMO.policy, at(-60 * 24)))
    first = await app.writes.handle_inbound(START)
    assert first.outcome.reply is ReplyKind.NONE, first.outcome
    await app.writes.record(opt_in("r1"))
    stop = await app.writes.handle_inbound(
        HandleInboundMessage("i-stop", PHONE, NUMBER, "STOP", "SM-stop", NOW)
    )
    return first, stop


async def test_a_text_s_retries_and_redeliveries_tell_the_reply_its_first_answer_told():
    """The reply owed is read from the state the text came to. A START with nothing to
    resume was answered "no reply owed"; retried after an opt-in and a STOP, it was
    then told a confirmation was owed, and one answered "owed" was told "none" once
    a hold stood. The first answer stands for its retries and redeliveries."""
    async with running(ledger=ledger_at_now()) as (app, _):
        first, stop = await _start_then_opted_in_and_out(app)
        await app.guard.wait_for_token(stop.write.token)
        restart = HandleInboundMessage("i-again", PHONE, NUMBER, "START", "SM-again", NOW)
        owed = await app.writes.handle_inbound(restart)
        assert owed.outcome.reply is ReplyKind.OPT_IN_CONFIRMATION, owed.outcome
        for again in (START, replace(START, request_id="i-start-2")):
            told = await app.writes.handle_inbound(again)
            assert told.write.event_ids == first.write.event_ids
            assert told.outcome.reply is ReplyKind.NONE, (again.request_id, told.outcome)
        # Of a campaign not defined: held for review, which no START lifts.
        await app.writes.record(
            RecordOptOut("r-held", PHONE, "acme", "nope", RevocationChannel.WEB, NOW)
        )
        for again in (restart, replace(restart, request_id="i-again-2")):
            told = await app.writes.handle_inbound(again)
            assert told.write.event_ids == owed.write.event_ids
            expected = ReplyKind.OPT_IN_CONFIRMATION if again is restart else ReplyKind.NONE
            assert told.outcome.reply is expected, (again.request_id, told.outcome)


@pytest.mark.parametrize("kept", [True, False], ids=["recorded with it", "before it was kept"])
async def test_a_text_s_retry_on_a_view_rebuilt_from_the_ledger_is_told_its_first_reply(
    kept, monkeypatch
):
    """What a text's first answer told was kept only in the view, so a view rebuilt
    from the ledger told a retry the reply read from the state since. The text is
    recorded with the reply it owed (``InboundMessageReceived.reply``), and that is
    told again; a text recorded before it was kept is answered from the state, as
    before."""
    if not kept:  # as an earlier version records it
        monkeypatch.setattr(writes, "_telling", lambda events, reply: events)
    ledger = ledger_at_now()
    async with running(ledger=ledger) as (app, _):
        first, stop = await _start_then_opted_in_and_out(app)
        await app.guard.wait_for_token(stop.write.token)
        recorded = await app.audit.history(PHONE, "acme", reader=AUDITOR)
        texts = [r.event for r in recorded.value if isinstance(r.event, InboundMessageReceived)]
        assert [t.reply for t in texts] == (["none", "opt_out_confirmation"] if kept else ["", ""])

    async with running(ledger=ledger) as (app, _):  # a new view, folded from the ledger
        await app.guard.wait_for_token(stop.write.token)
        told = await app.writes.handle_inbound(START)
        assert told.write.event_ids == first.write.event_ids
        expected = ReplyKind.NONE if kept else ReplyKind.OPT_IN_CONFIRMATION
        assert told.outcome.reply is expected, told.outcome


async def test_a_stop_s_retry_is_told_its_first_reply_once_its_number_moved():
    """A STOP to a number no campaign sends from is held, no reply owed: retried once
    the brand's campaign claimed the number, it was told a confirmation was owed. One
    confirmed, retried once the campaign let the number go, was told none, and the
    confirmation it owed was never sent. Each retry tells what its first answer did."""
    async with running(ledger=ledger_at_now()) as (app, _):
        unclaimed = replace(PROMO.policy, sender_numbers=())
        await app.writes.record(DefineCampaign("d", "acme", "promo", unclaimed, at(-60 * 24)))
        await app.writes.record(opt_in("r1"))

        async def handled(cmd: HandleInboundMessage):
            return await app.writes.handle_inbound(cmd, unowned_brands=("acme",))

        held = HandleInboundMessage("i-held", PHONE, NUMBER, "STOP", "SM-held", at(-10))
        first = await handled(held)
        assert first.outcome.reply is ReplyKind.NONE, first.outcome
        claimed = ChangeCampaignPolicy("c1", "acme", "promo", PROMO.policy, at(-8))
        await app.writes.record(claimed)
        confirmed = HandleInboundMessage("i-stop", PHONE, NUMBER, "STOP", "SM-stop", at(-6))
        stop = await handled(confirmed)
        assert stop.outcome.reply is ReplyKind.OPT_OUT_CONFIRMATION, stop.outcome
        again = await handled(held)
        assert again.write.event_ids == first.write.event_ids
        assert again.outcome.reply is ReplyKind.NONE, again.outcome

        await app.writes.record(ChangeCampaignPolicy("c2", "acme", "promo", unclaimed, at(-4)))
        again = await handled(confirmed)
        assert again.write.event_ids == stop.write.event_ids
        assert again.outcome.reply is ReplyKind.OPT_OUT_CONFIRMATION, again.outcome
        assert again.outcome.required_content == stop.outcome.required_content


async def test_other_words_under_a_recorded_message_id_are_refused_unless_a_stop():
    """A message id names one text: other words under it are a gateway's bug, refused
    naming message_id, but a STOP is never lost: it is recorded as the text it is."""
    async with running(ledger=ledger_at_now()) as (app, _):
        await app.writes.record(DefineCampaign("d", "acme", "promo", PROMO.policy, at(-60 * 24)))
        await app.writes.record(opt_in("r1"))
        first = await app.writes.handle_inbound(
            HandleInboundMessage("i1", PHONE, NUMBER, "hi there", "SM-1", NOW)
        )
        await app.guard.wait_for_token(first.write.token)
        with pytest.raises(MessageIdReused) as refused:
            await app.writes.handle_inbound(
                HandleInboundMessage("i2", PHONE, NUMBER, "see you", "SM-1", NOW)
            )
        assert refused.value.field == "message_id"
        assert list(refused.value.event_ids) == first.write.event_ids

        stop = await app.writes.handle_inbound(
            HandleInboundMessage("i3", PHONE, NUMBER, "STOP", "SM-1", NOW)
        )

        assert stop.outcome.reply is ReplyKind.OPT_OUT_CONFIRMATION
        assert set(stop.write.event_ids).isdisjoint(first.write.event_ids)
        checked = await app.checks.can_send(PHONE, "acme", "promo", token=stop.write.token)
        assert checked.decision.reason is Reason.REVOKED, checked.decision


def test_a_text_before_an_opt_out_lets_no_reply_of_a_later_consent_past_the_caps():
    # "hi", then STOP, then a new opt-in on the web: the STOP closed the conversation
    # the "hi" opened, so a reply labelled a conversation reply is a message like any
    # other, as its recorded send counts (``earns_exemption``).
    capped = campaign(frequency_caps=(FrequencyCap(1, timedelta(days=2)),))
    s = state_of(
        granted(at(0)),
        sent(at(1)),
        inbound(at(10), "hi", "promo"),
        revoked(at(11)),
        granted(at(12)),
    )
    d = decide(s, capped, at(20), MessageKind.CONVERSATION_REPLY)
    assert not d.allowed and d.reason is Reason.FREQUENCY_CAP_REACHED
    assert not earns_exemption(digest_of(s), capped, at(20), MessageKind.CONVERSATION_REPLY)


def _recorded_as_written(events, rules):
    """``events`` recorded in list order, each help reply or regular send judged as the
    write judges it (``MessageSent.exempt``), against what was recorded before it."""
    kept: list = []
    for e in events:
        if isinstance(e, MessageSent) and e.kind is not MessageKind.REGULAR:
            owed = earns_exemption(digest_of(state_of(*kept)), rules, e.occurred_at, e.kind)
            e = replace(e, exempt=owed)
        kept.append(e)
    return kept


SHORT = timedelta(minutes=2)
DAY = timedelta(days=1)


@pytest.mark.parametrize(
    ("after", "counts"), [(SHORT, False), (SHORT + timedelta(seconds=1), True)]
)
def test_a_help_reply_recorded_before_its_help_counts_as_it_would_in_order(after, counts):
    """A gateway recorded the help reply it sent before the HELP it answered reached the
    ledger: judged without the HELP, the reply was recorded as not exempt and counted
    towards the cap for good, where in the facts' own order one sent within the
    campaign's reply window (here 2 minutes, shorter than the longest, 5) escapes it.
    Answered late, it counts exactly as it would have in order: just inside the window
    not, just outside it does."""
    capped = campaign(
        sender_numbers=(NUMBER,),
        frequency_caps=(FrequencyCap(1, timedelta(days=1)),),
        opt_out_confirmation_window=SHORT,
    )
    grant, help_ = granted(at(0)), inbound(at(10), "HELP", "promo")
    reply = sent(at(10) + after, "promo", MessageKind.HELP_REPLY)
    in_order = state_of(*_recorded_as_written([grant, help_, reply], capped))
    written = _recorded_as_written([grant, reply, help_], capped)
    assert written[1].exempt is False  # judged without the HELP
    reply_first = state_of(*written)
    for state in (in_order, reply_first):
        d = decide(state, capped, at(20))
        assert d.allowed is not counts, d
        if counts:
            assert d.reason is Reason.FREQUENCY_CAP_REACHED
            assert str(reply.event_id) in d.evidence
        assert decide(state, capped, at(20), MessageKind.HELP_REPLY).reason in (
            Reason.REPLY_NOT_OWED,
        )
    # Answering its HELP, the reply met no first-message obligation: the opt-out
    # language is owed. Counted, it might have: still owed (doubt owes).
    owed = decide(reply_first, PROMO, at(20)).obligations
    assert Obligation.INCLUDE_OPT_OUT_LANGUAGE in owed
    assert set(decide(in_order, PROMO, at(20)).obligations) <= set(owed)
    assert fold(retained_facts(reply_first)) == reply_first
    # The rules in force when it was sent had a shorter window: it counts. A shorter
    # one that took effect after it was sent judged nothing of it.
    shorter = after - timedelta(seconds=1)
    narrowed = replace(capped, reply_windows=(ReplyWindows(at(0), shorter, DAY),))
    d = decide(reply_first, narrowed, at(20))
    assert not d.allowed and d.reason is Reason.FREQUENCY_CAP_REACHED
    windows = (ReplyWindows(at(0), SHORT, DAY), ReplyWindows(at(15), shorter, DAY))
    later = replace(capped, reply_windows=windows)
    assert decide(reply_first, later, at(20)).allowed is not counts


def test_a_help_reply_answered_late_is_no_answer_once_another_reply_came_between():
    """Another help reply recorded after the HELP and sent between it and the reply
    recorded before it was, in the facts' own order, that HELP's answer: the reply
    recorded first counts again, and so does the other (doubt counts both)."""
    capped = campaign(
        sender_numbers=(NUMBER,), frequency_caps=(FrequencyCap(2, timedelta(days=1)),)
    )
    kind = MessageKind.HELP_REPLY
    grant, help_ = granted(at(0)), inbound(at(10), "HELP", "promo")
    late, between = sent(at(12), "promo", kind), sent(at(11), "promo", kind)
    written = _recorded_as_written([grant, late, help_, between], capped)
    state = state_of(*written)
    d = decide(state, capped, at(20))
    assert not d.allowed and d.reason is Reason.FREQUENCY_CAP_REACHED, d
    # An erasure forgets the HELP: the reply it answered counts again.
    answered = state_of(*_recorded_as_written([grant, late, help_], capped))
    assert decide(answered, capped, at(20)).allowed
    erased = state_of(
        *_recorded_as_written([grant, late, help_], capped),
        SubjectErased(event_id=uuid.uuid4(), occurred_at=at(11), phone=PHONE, brand=BRAND),
        granted(at(13)),
    )
    assert [r.event_id for r in erased.campaign("promo").sent] == [str(late.event_id)]
    assert not erased.campaign("promo").answered_late


@pytest.mark.parametrize("reply_at", [11, 13, 16])
def test_a_help_and_its_reply_in_any_order_answer_as_in_order(reply_at):
    """The facts of a HELP, its reply, a second HELP and a regular send, recorded in
    every order (each send judged as written against what came before it): CanSend
    never allows what the facts in their own order deny, and answers as they do
    whenever the reply is recorded before both HELPs. (A reply recorded after a HELP
    sent after it is judged by that HELP when written, and one recorded after a HELP
    though sent before it answers it: both count, as doubt counts, so those orders
    may deny more.)"""
    capped = campaign(
        sender_numbers=(NUMBER,),
        frequency_caps=(FrequencyCap(2, timedelta(days=1)),),
        opt_out_confirmation_window=timedelta(minutes=3),
    )
    kind = MessageKind.HELP_REPLY
    grant = granted(at(0))
    facts = [
        inbound(at(10), "HELP", "promo"),
        sent(at(reply_at), "promo", kind),
        sent(at(12), "promo"),
        inbound(at(14), "HELP", "promo"),
    ]
    moments = [at(15), at(18), at(days=1, minutes=11.5), at(days=1, minutes=12.5)]

    def answers(order):
        state = state_of(*_recorded_as_written([grant, *order], capped))
        return [
            (d.allowed, d.reason)
            for now in moments
            for d in (decide(state, capped, now), decide(state, capped, now, kind))
        ]

    in_order = answers(sorted(facts, key=lambda e: e.occurred_at))
    for order in itertools.permutations(facts):
        got = answers(order)
        for mine, theirs in zip(got, in_order, strict=True):
            assert theirs[0] or not mine[0], (order, got, in_order)
        if order.index(facts[1]) < min(order.index(facts[0]), order.index(facts[3])):
            assert got == in_order, order


@pytest.mark.parametrize(
    ("after", "counts"), [(SHORT, False), (SHORT + timedelta(seconds=1), True)]
)
@pytest.mark.parametrize("campaign_of", ["promo", None], ids=["campaign", "brand-wide"])
def test_an_opt_out_confirmation_recorded_before_its_opt_out_counts_as_in_order(
    after, counts, campaign_of
):
    """The gateway recorded the confirmation of a STOP before the STOP reached the
    ledger, and the person opted in again: judged without the opt-out, the
    confirmation was recorded as not exempt and filled the cap the new opt-in's first
    send needed. It counts as it would in order: inside the campaign's reply window
    (2 minutes) after the opt-out not, outside it, it does."""
    capped = campaign(
        sender_numbers=(NUMBER,),
        frequency_caps=(FrequencyCap(1, timedelta(days=1)),),
        opt_out_confirmation_window=SHORT,
    )
    kind = MessageKind.OPT_OUT_CONFIRMATION
    grant, stop, again = granted(at(0)), revoked(at(10), campaign_of), granted(at(15))
    reply = sent(at(10) + after, "promo", kind)
    in_order = state_of(*_recorded_as_written([grant, stop, reply, again], capped))
    written = _recorded_as_written([grant, reply, stop, again], capped)
    assert written[1].exempt is False
    reply_first = state_of(*written)
    for state in (in_order, reply_first):
        d = decide(state, capped, at(20))
        assert d.allowed is not counts, d
    assert fold(retained_facts(reply_first)) == reply_first
    # Another opt-out placed before the reply is the one it would confirm, judged by
    # what the ledger says of it: imported, its confirmation was not this service's.
    later = revoked(at(11), campaign_of, imported=True)
    doubted = state_of(*_recorded_as_written([grant, reply, stop, later, again], capped))
    assert not decide(doubted, capped, at(20)).allowed
    # Another confirmation between the opt-out and it was that opt-out's in order.
    other = sent(at(10.5), "promo", kind)
    both = state_of(*_recorded_as_written([grant, reply, stop, other, again], capped))
    assert not decide(both, capped, at(20)).allowed


@pytest.mark.parametrize("reply_at", [11, 13, 16])
def test_an_opt_out_and_its_confirmation_in_any_order_answer_as_in_order(reply_at):
    """An opt-out, its confirmation, a new opt-in and a send, recorded in every order:
    CanSend never allows what the facts in their own order deny, and answers as they
    do whenever the confirmation is recorded before the opt-out."""
    capped = campaign(
        sender_numbers=(NUMBER,),
        frequency_caps=(FrequencyCap(2, timedelta(days=1)),),
        opt_out_confirmation_window=timedelta(minutes=3),
    )
    kind = MessageKind.OPT_OUT_CONFIRMATION
    grant = granted(at(0))
    facts = [
        revoked(at(10)),
        sent(at(reply_at), "promo", kind),
        granted(at(17)),
        sent(at(18), "promo"),
    ]
    moments = [at(19), at(days=1, minutes=12.5), at(days=1, minutes=18.5)]

    def answers(order):
        state = state_of(*_recorded_as_written([grant, *order], capped))
        return [(d.allowed, d.reason) for now in moments for d in [decide(state, capped, now)]]

    in_order = answers(sorted(facts, key=lambda e: e.occurred_at))
    for order in itertools.permutations(facts):
        got = answers(order)
        for mine, theirs in zip(got, in_order, strict=True):
            assert theirs[0] or not mine[0], (order, got, in_order)
        if order.index(facts[1]) < order.index(facts[0]):
            assert got == in_order, order


def test_a_start_confirmation_recorded_before_the_consent_it_resumed_meets_no_obligation():
    """An opt-in, a STOP and its confirmation, a START and its (both with opt-out
    language), recorded in every order: a START's confirmation recorded before the
    opt-in the START resumed was judged without that consent, recorded as not owed,
    and counts. In the facts' own order it was the START's answer, which meets no
    obligation: the next send owes the opt-out language, whatever the order, and
    still once a confirmation after it, answered late, is found no longer to meet it."""
    kind = MessageKind.OPT_IN_CONFIRMATION
    facts = [
        granted(at(0)),
        revoked(at(50)),
        sent(at(51), "promo", MessageKind.OPT_OUT_CONFIRMATION),
        resumed(at(55), "promo"),
        sent(at(56), "promo", kind),
    ]
    for order in itertools.permutations(facts):
        written = _recorded_as_written(list(order), PROMO)
        state = state_of(*written)
        d = decide(state, PROMO, at(60))
        assert d.allowed and Obligation.INCLUDE_OPT_OUT_LANGUAGE in d.obligations, (order, d)
        assert fold(retained_facts(state)) == state
    late = _recorded_as_written([*facts[1:], facts[0]], PROMO)
    assert late[3].exempt is False  # judged without the consent: counts


@pytest.mark.parametrize("kind", [*OWED, MessageKind.CONVERSATION_REPLY])
@pytest.mark.parametrize(("changed_at", "counts"), [(5, True), (15, False)])
def test_a_reply_that_escaped_the_caps_counts_once_rules_dated_before_it_shorten_its_window(
    kind, changed_at, counts
):
    """A reply sent a minute after the text or opt-out it answered, inside its window
    (2 minutes; a conversation's, a day), was recorded as escaping the caps. Then a
    change of the rules dated before it shortened that window to 30 s: in the facts'
    own order the reply was sent outside it, earned nothing and counts, so the send
    after it is capped. A change that took effect after the reply judged nothing of
    it."""
    window = "conversation_window" if kind is MessageKind.CONVERSATION_REPLY else None
    window = window or "opt_out_confirmation_window"
    cap = {"sender_numbers": (NUMBER,), "frequency_caps": (FrequencyCap(1, timedelta(days=1)),)}
    defined = campaign(**cap, opt_out_confirmation_window=SHORT)
    asked = {
        MessageKind.HELP_REPLY: [granted(at(0)), inbound(at(10), "HELP", "promo")],
        MessageKind.OPT_OUT_CONFIRMATION: [granted(at(0)), revoked(at(10))],
        MessageKind.OPT_IN_CONFIRMATION: [
            granted(at(0)),
            revoked(at(5)),
            resumed(at(10), "promo"),
        ],
        MessageKind.CONVERSATION_REPLY: [granted(at(0)), inbound(at(10), "hi, hours?", "promo")],
    }[kind]
    reply = sent(at(11), "promo", kind)
    written = _recorded_as_written([*asked, reply], defined)
    assert written[-1].exempt is True
    state = state_of(*written, granted(at(20)))
    assert decide(state, defined, at(30)).allowed

    shorter = campaign(**cap, **{window: timedelta(seconds=30)}).policy
    rules = record(
        [
            CampaignDefined(**_base(at(-60)), brand=BRAND, campaign="promo", policy=defined.policy),
            CampaignPolicyChanged(
                **_base(at(changed_at)), brand=BRAND, campaign="promo", policy=shorter
            ),
        ],
        known_at=[at(-60), at(25)],
    )
    history = CampaignHistory()
    for r in rules:
        history = history.with_event(r)
    d = decide(state, history.as_of(at(30)), at(30))
    assert d.allowed is not counts, d
    if counts:
        assert d.reason is Reason.FREQUENCY_CAP_REACHED
        assert str(reply.event_id) in d.evidence
        # As the facts' own order judges it: the reply written under the shorter window.
        in_order = _recorded_as_written([*asked, reply], history.as_of(at(11)))
        assert in_order[-1].exempt is False
    # What was known before the change was recorded allowed the send.
    assert decide(state, history.as_of(at(30), at(24)), at(30)).allowed
    assert fold(retained_facts(state)) == state


@pytest.mark.parametrize("kind", [*OWED, MessageKind.CONVERSATION_REPLY])
def test_a_reply_that_counts_meets_no_first_message_whatever_order_its_facts_came_in(kind):
    """A reply with the opt-out language sent 3 minutes after what it answered, outside
    the 2-minute window then known, so recorded as counting; then a change of the rules
    dated before it that lengthened the window to 5 minutes. In the facts' own order
    the reply escaped the caps and met nothing: the send after it owes the opt-out
    language. The counted reply stood as the send that carried it, so that send owed
    less. A reply stands as neither the first message nor the one that carried the
    language, counted or not, in every order of its facts."""
    window = "conversation_window" if kind is MessageKind.CONVERSATION_REPLY else None
    window = window or "opt_out_confirmation_window"
    cap = {"sender_numbers": (NUMBER,), "frequency_caps": (FrequencyCap(3, timedelta(days=1)),)}
    asked = {
        MessageKind.HELP_REPLY: [granted(at(0)), inbound(at(10), "HELP", "promo")],
        MessageKind.OPT_OUT_CONFIRMATION: [granted(at(0)), revoked(at(10))],
        MessageKind.OPT_IN_CONFIRMATION: [granted(at(0)), revoked(at(5)), resumed(at(10), "promo")],
        MessageKind.CONVERSATION_REPLY: [granted(at(0)), inbound(at(10), "hi, hours?", "promo")],
    }[kind]
    reply = sent(at(13), "promo", kind, disclosed=True)
    short = campaign(**cap, **{window: SHORT})
    longer = campaign(**cap, **{window: timedelta(minutes=5)})
    written = _recorded_as_written([*asked, reply], short)
    assert written[-1].exempt is False  # outside the window then known: it counts
    in_order = _recorded_as_written([*asked, reply], longer)
    assert in_order[-1].exempt is True
    for order in itertools.permutations([*asked, reply]):
        for rules in (short, longer):
            state = state_of(*_recorded_as_written(list(order), rules))
            c = state.campaign("promo")
            assert c.opener is None and c.last_disclosed is None, (order, rules)
            if kind is not MessageKind.OPT_OUT_CONFIRMATION:
                d = decide(state, longer, at(30))
                assert d.allowed and Obligation.INCLUDE_OPT_OUT_LANGUAGE in d.obligations
            assert fold(retained_facts(state)) == state


ONE_A_DAY = {"sender_numbers": (NUMBER,), "frequency_caps": (FrequencyCap(1, timedelta(days=1)),)}
CAP_OF_ONE = campaign(**ONE_A_DAY)
START_AGAIN = [granted(at(0)), revoked(at(5)), resumed(at(10), "promo")]


def _counted_once_known(asked, reply, late, after, counts, *, named=None, rules=CAP_OF_ONE):
    """``reply`` written as escaping the caps after ``asked``; then ``late``, dated before
    the reply but recorded after it, and ``after``. CanSend at 30 counts the reply
    (its cap of one reached) exactly when ``counts``, as the facts written in their own
    order do; ``ListEvents`` names it when ``named`` (``counts`` unless given); and the
    state folds again from its retained facts to itself."""
    written = _recorded_as_written([*asked, reply], rules)
    assert written[-1].exempt is True
    state = state_of(*written, late, *after)
    d = decide(state, rules, at(30))
    assert d.allowed is not counts, d
    if counts:
        assert d.reason is Reason.FREQUENCY_CAP_REACHED
        assert str(reply.event_id) in d.evidence
    in_order = sorted([*asked, reply, late], key=lambda e: e.occurred_at)
    ordered = state_of(*_recorded_as_written(in_order, rules), *after)
    assert decide(ordered, rules, at(30)).allowed is not counts
    not_granted = exemptions_not_granted(record([*written, late, *after]))
    assert (str(reply.event_id) in not_granted) is (counts if named is None else named)
    assert fold(retained_facts(state)) == state


@pytest.mark.parametrize(
    ("stop_at", "of", "revoke_all", "counts"),
    [
        (10.5, "promo", False, True),
        (10.5, None, False, True),
        (10, "promo", False, True),
        (12, "promo", False, False),
        (10.5, "news", True, True),
        (12, "news", True, False),
        (10.5, "news", False, False),
    ],
)
def test_an_opt_out_placed_inside_a_conversation_before_its_reply_counts_the_reply(
    stop_at, of, revoke_all, counts
):
    """A text, and a conversation reply a minute after it recorded as escaping the caps;
    then an opt-out recorded after the reply but placed between the two (or at the
    text): in the facts' own order it closed the conversation, so the reply earned
    nothing and counts once the person opts in again. So does another campaign's
    under the revoke-all rule. One placed after the reply changes nothing."""
    _counted_once_known(
        [granted(at(0)), inbound(at(10), "hi, hours?", "promo")],
        sent(at(11), "promo", MessageKind.CONVERSATION_REPLY),
        revoked(at(stop_at), of),
        [granted(at(20))],
        counts,
        # The fold counts it for the campaign's own or the brand's opt-out; another
        # campaign's, under the revoke-all rule, is the policy's to read.
        named=counts and of in (None, "promo"),
        rules=campaign(**ONE_A_DAY, revoke_all=revoke_all),
    )


@pytest.mark.parametrize(
    ("stop_at", "of", "revoke_all", "counts"),
    [
        (10.5, "promo", False, True),
        (10.5, None, False, True),
        (12, "promo", False, False),
        (8, "promo", False, False),
        (10.5, "news", True, True),
        (12, "news", True, False),
        (10.5, "news", False, False),
    ],
)
def test_an_opt_out_placed_between_a_start_and_its_confirmation_counts_it(
    stop_at, of, revoke_all, counts
):
    """A START resumed the consent and its confirmation, sent a minute later, escaped the
    caps; then an opt-out recorded after the confirmation but placed between the two:
    in the facts' own order the START resumed nothing that still stood when the
    confirmation went out, so it earned nothing and counts once the person opts in
    again. So does another campaign's under the revoke-all rule. One placed after the
    confirmation, or before the START, changes nothing."""
    reply = sent(at(11), "promo", MessageKind.OPT_IN_CONFIRMATION)
    _counted_once_known(
        START_AGAIN,
        reply,
        revoked(at(stop_at), of),
        [granted(at(20))],
        counts,
        named=counts and of in (None, "promo"),
        rules=campaign(**ONE_A_DAY, revoke_all=revoke_all),
    )


@pytest.mark.parametrize(("granted_at", "counts"), [(10.5, True), (12, False), (9, False)])
def test_a_grant_placed_between_a_start_and_its_confirmation_counts_it(granted_at, counts):
    """A START's confirmation that escaped the caps, then an opt-in of the campaign
    recorded after it but placed between the START and it: in the facts' own order the
    consent stood on that opt-in when the confirmation went out, the START resumed
    nothing that still stood, and the confirmation earned nothing. An opt-in placed
    after the confirmation, or before the START, changes nothing of it."""
    reply = sent(at(11), "promo", MessageKind.OPT_IN_CONFIRMATION)
    _counted_once_known(START_AGAIN, reply, granted(at(granted_at)), [], counts)


@pytest.mark.parametrize(
    ("stop_at", "of", "imported", "counts"),
    [
        (10.5, "promo", True, True),
        (10.5, None, True, True),
        (12, "promo", True, False),
        (10.5, "news", True, False),
        (10.5, "promo", False, False),
    ],
)
def test_an_import_placed_between_an_opt_out_and_its_confirmation_counts_it(
    stop_at, of, imported, counts
):
    """An opt-out's confirmation that escaped the caps, then an imported opt-out of the
    campaign (or the brand) recorded after it but placed between the two: in the facts'
    own order the import was the latest opt-out when the confirmation went out, whose
    one confirmation the platform that received it owed, so it earned nothing and
    counts. One placed after it, one of another campaign, or an opt-out not imported
    (whose confirmation it then is) changes nothing of it."""
    _counted_once_known(
        [granted(at(0)), revoked(at(10))],
        sent(at(11), "promo", MessageKind.OPT_OUT_CONFIRMATION),
        revoked(at(stop_at), of, imported=imported),
        [granted(at(20))],
        counts,
    )


CONVERSATION = [granted(at(0)), inbound(at(10), "hi, hours?", "promo")]
ENDED_ELSEWHERE = {
    MessageKind.CONVERSATION_REPLY: CONVERSATION,
    MessageKind.OPT_IN_CONFIRMATION: START_AGAIN,
}


@pytest.mark.parametrize("kind", sorted(ENDED_ELSEWHERE, key=lambda k: k.value))
@pytest.mark.parametrize("revoke_all", [True, False])
def test_an_opt_out_of_another_campaign_inside_the_exchange_counts_whatever_came_after(
    kind, revoke_all
):
    """A conversation reply or START confirmation that escaped the caps; then two opt-outs
    of another campaign recorded after it, one placed inside its exchange and a later
    one after the reply. Under the revoke-all rule the first ended the exchange in the
    facts' own order, so the reply counts, though the campaign's latest opt-out came
    after it (only that one was read)."""
    _counted_once_known(
        ENDED_ELSEWHERE[kind],
        sent(at(11), "promo", kind),
        revoked(at(10.5), "news"),
        [revoked(at(12), "news"), granted(at(20))],
        revoke_all,
        named=False,
        rules=campaign(**ONE_A_DAY, revoke_all=revoke_all),
    )


@pytest.mark.parametrize("kind", sorted(ENDED_ELSEWHERE, key=lambda k: k.value))
def test_a_reply_written_before_the_revoke_all_rule_counts_once_it_is_in_force(kind):
    """Another campaign's opt-out placed inside the exchange reached the ledger before the
    reply, written when the revoke-all rule was not in force: it escaped the caps.
    Read under the rule, that opt-out ended the exchange, and the reply counts."""
    reply = sent(at(11), "promo", kind)
    written = _recorded_as_written(
        [*ENDED_ELSEWHERE[kind], revoked(at(10.5), "news"), reply], CAP_OF_ONE
    )
    assert written[-1].exempt is True
    state = state_of(*written, granted(at(20)))
    assert decide(state, CAP_OF_ONE, at(30)).allowed
    d = decide(state, campaign(**ONE_A_DAY, revoke_all=True), at(30))
    assert not d.allowed and d.reason is Reason.FREQUENCY_CAP_REACHED, d
    assert str(reply.event_id) in d.evidence
    assert fold(retained_facts(state)) == state
    assert digest_of(fold(retained_facts(state))) == digest_of(state)


@pytest.mark.parametrize(("erased_at", "counts"), [(10.5, True), (12, False)])
def test_a_reply_placed_after_an_erasure_of_its_help_counts(erased_at, counts):
    """A help reply that escaped the caps, then an erasure recorded after it but placed
    between the HELP and the reply: in the facts' own order the reply answered a
    HELP the erasure had forgotten, earned nothing, and counts under a new consent.
    An erasure placed after the reply changes nothing of it."""
    erasure = SubjectErased(
        event_id=uuid.uuid4(), occurred_at=at(erased_at), phone=PHONE, brand=BRAND
    )
    _counted_once_known(
        [granted(at(0)), inbound(at(10), "HELP", "promo")],
        sent(at(11), "promo", MessageKind.HELP_REPLY),
        erasure,
        [granted(at(20))],
        counts,
    )


@pytest.mark.parametrize(("held_at", "counts"), [(10.5, True), (12, False)])
def test_a_hold_placed_between_a_start_and_its_confirmation_counts_it(held_at, counts):
    """A START's confirmation that escaped the caps, then a reply held for review
    recorded after it but placed between the START and it, dismissed since: in the
    facts' own order the hold stood when the confirmation went out, and a START lifts
    no hold, so the confirmation earned nothing and counts. A hold placed after the
    confirmation changes nothing of it."""
    hold = flagged(at(held_at))
    dismissed = resolved(at(20), hold, CandidateResolution.DISMISSED)
    reply = sent(at(11), "promo", MessageKind.OPT_IN_CONFIRMATION)
    _counted_once_known(START_AGAIN, reply, hold, [dismissed], counts)


def _counted_though_recorded_first(asked, inside, reply, counts, *, named, read=CAP_OF_ONE):
    """``asked``, then ``inside`` (facts placed inside the reply's exchange or after it),
    all recorded before ``reply``, which was written as a write judges it on a view
    that has ``asked`` alone under ``CAP_OF_ONE`` (escaping the caps: a view behind
    the ledger, or one that keeps only the latest of each fact); then an opt-in at
    20. CanSend at 30, under ``read``, counts the reply (its cap of one reached)
    exactly when ``counts``; ``ListEvents`` names it when ``named``; and the state
    folds again from its retained facts to itself."""
    *_, written = _recorded_as_written([*asked, reply], CAP_OF_ONE)
    assert written.exempt is True
    facts = [*asked, *inside, written, granted(at(20))]
    state = state_of(*facts)
    d = decide(state, read, at(30))
    assert d.allowed is not counts, d
    if counts:
        assert d.reason is Reason.FREQUENCY_CAP_REACHED and str(reply.event_id) in d.evidence
    assert (str(reply.event_id) in exemptions_not_granted(record(facts))) is named
    assert fold(retained_facts(state)) == state


HIDDEN = {
    # An opt-out inside the exchange, a new opt-in, and an opt-out after the reply:
    # the state keeps only the latest, which hides the first.
    "conversation, hidden opt-out": (
        CONVERSATION,
        [revoked(at(10.5)), granted(at(10.7)), revoked(at(12))],
        MessageKind.CONVERSATION_REPLY,
        True,
    ),
    "conversation, hidden brand-wide opt-out": (
        CONVERSATION,
        [revoked(at(10.5), None), granted(at(10.7)), revoked(at(12), None)],
        MessageKind.CONVERSATION_REPLY,
        True,
    ),
    # Alone, an opt-out after the reply might hide one: doubt counts the reply.
    "conversation, opt-out after it": (
        CONVERSATION,
        [revoked(at(12)), granted(at(13))],
        MessageKind.CONVERSATION_REPLY,
        True,
    ),
    "conversation, opt-out before the text": (
        [granted(at(0)), revoked(at(8)), granted(at(9)), inbound(at(10), "hi", "promo")],
        [],
        MessageKind.CONVERSATION_REPLY,
        False,
    ),
    "confirmation, hidden opt-in": (
        START_AGAIN,
        [granted(at(10.5)), granted(at(12))],
        MessageKind.OPT_IN_CONFIRMATION,
        True,
    ),
    "confirmation, opt-in before the start": (
        [granted(at(0)), revoked(at(5)), granted(at(7)), revoked(at(8)), resumed(at(10), "promo")],
        [],
        MessageKind.OPT_IN_CONFIRMATION,
        False,
    ),
}


@pytest.mark.parametrize(("asked", "inside", "kind", "counts"), HIDDEN.values(), ids=list(HIDDEN))
def test_a_reply_recorded_after_a_later_fact_that_may_hide_one_inside_counts(
    asked, inside, kind, counts
):
    """A conversation reply or START confirmation written as escaping the caps by a view
    behind the ledger, recorded after an opt-out (or opt-in) placed inside its
    exchange: the state took the write's word, where in the facts' own order that fact
    closed the exchange and the reply counted. The state keeps only the latest of
    each, so a later one placed after the reply hides the first: the state now counts
    a reply whose campaign's (or brand's) latest such fact it holds was placed after
    what earned it (doubt, as the write judges); one placed before changes nothing."""
    reply = sent(at(11), "promo", kind)
    _counted_though_recorded_first(asked, inside, reply, counts, named=counts)


@pytest.mark.parametrize("kind", sorted(ENDED_ELSEWHERE, key=lambda k: k.value))
@pytest.mark.parametrize(
    ("stops", "counts"),
    [([10.5, 12], True), ([12], True), ([8], False)],
    ids=["inside and after", "after", "before"],
)
def test_another_campaigns_opt_out_hidden_by_a_later_one_counts_under_the_rule(kind, stops, counts):
    """Opt-outs of another campaign recorded before the reply, which was written as
    escaping the caps (the revoke-all rule not in force, or a view behind): one inside
    the exchange hidden by one placed after the reply went unseen, and the reply
    escaped the caps under the rule. Now a latest one placed after what earned the
    reply keeps it as ended elsewhere (doubt), and the policy counts it where the rule
    is in force; one placed before the exchange changes nothing."""
    reply = sent(at(11), "promo", kind)
    inside = [revoked(at(t), "news") for t in stops]
    rule = campaign(**ONE_A_DAY, revoke_all=True)
    _counted_though_recorded_first(
        ENDED_ELSEWHERE[kind], inside, reply, counts, named=False, read=rule
    )
    _counted_though_recorded_first(ENDED_ELSEWHERE[kind], inside, reply, False, named=False)


def test_a_hold_dismissed_before_a_start_confirmation_was_recorded_counts_it():
    """A reply held for review placed between a START and its confirmation, and dismissed,
    both recorded before the confirmation, which was written as escaping the caps: in
    the facts' own order the hold stood when it went out, and a START lifts no hold.
    The state now reads every hold it keeps."""
    hold = flagged(at(10.5))
    reply = sent(at(11), "promo", MessageKind.OPT_IN_CONFIRMATION)
    dismissed = resolved(at(10.8), hold, CandidateResolution.DISMISSED)
    _counted_though_recorded_first(START_AGAIN, [hold, dismissed], reply, True, named=True)


SUPERSEDED = {
    "opt-out": (
        CONVERSATION,
        MessageKind.CONVERSATION_REPLY,
        revoked(at(10.5)),
        [granted(at(20)), revoked(at(25)), granted(at(26))],
    ),
    "brand-wide opt-out": (
        CONVERSATION,
        MessageKind.CONVERSATION_REPLY,
        revoked(at(10.5), None),
        [granted(at(20)), revoked(at(25), None), granted(at(26))],
    ),
    "opt-in": (START_AGAIN, MessageKind.OPT_IN_CONFIRMATION, granted(at(10.5)), [granted(at(20))]),
}


@pytest.mark.parametrize(
    ("asked", "kind", "late", "after"), SUPERSEDED.values(), ids=list(SUPERSEDED)
)
def test_a_reply_counted_by_a_fact_later_replaced_stays_counted_when_folded_again(
    asked, kind, late, after
):
    """A reply counted once a fact placed inside its exchange came (``_closed_by``), then a
    later fact of that kind, which replaced it as the latest: the state no longer
    retained the first, so the state folded again from its retained facts (as the
    projection stores and loads it) let the reply escape the caps again. The counted
    reply now keeps the fact that counted it."""
    reply = sent(at(11), "promo", kind)
    _counted_once_known(asked, reply, late, after, True)
