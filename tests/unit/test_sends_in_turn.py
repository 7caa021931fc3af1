"""Sends to one number asked about together (``ledger.policy.with_sends_pending`` and
``in_turn``): each judged as if those allowed before it had gone out, so a batch
that names a number twice cannot pass a cap, nor get a reply owed once twice."""

from __future__ import annotations

from datetime import timedelta

from ledger.campaigns import CampaignPolicy, CampaignPurpose, FrequencyCap
from ledger.digest import digest_of
from ledger.events import CampaignDefined, MessageKind
from ledger.policy import (
    PENDING_SEND,
    Check,
    Obligation,
    Reason,
    decide_as_of,
    in_turn,
    with_sends_pending,
)
from ledger.state import fold
from tests.builders import (
    BRAND,
    _base,
    at,
    campaign,
    granted,
    inbound,
    record,
    resumed,
    revoked,
    sent,
)

FLORIDA = "+13055550123"  # Miami: a cap of three solicitations in 24 hours


def digest(*events):
    return digest_of(fold(record(list(events))))


def turns(check: Check, d, count: int, name: str = "promo"):
    """``count`` entries for the digest's number, answered in turn."""

    def decide(pending: int):
        return check(with_sends_pending(d, name, check.kind, check.now, pending))

    return in_turn(decide, [f"phones[{i}]" for i in range(count)])


def test_a_send_pending_counts_towards_the_cap_and_is_never_named():
    capped = campaign(frequency_caps=(FrequencyCap(2, timedelta(hours=24)),))
    one = sent(at(1))
    d = digest(granted(at(0)), one)
    check = Check(capped, at(5))

    assert check(d).allowed
    after = check(with_sends_pending(d, "promo", MessageKind.REGULAR, at(5), 1))
    assert not after.allowed and after.reason is Reason.FREQUENCY_CAP_REACHED
    assert after.detail.startswith("2 of 2 messages")
    assert str(one.event_id) in after.evidence and PENDING_SEND not in after.evidence
    # The digest asked about is left as it was.
    assert check(d).allowed


def test_with_room_for_one_the_first_entry_is_allowed_and_the_rest_denied():
    capped = campaign(frequency_caps=(FrequencyCap(2, timedelta(hours=24)),))
    d = digest(granted(at(0)), sent(at(1)))

    answers = turns(Check(capped, at(5)), d, 3)

    assert [a.allowed for a in answers] == [True, False, False]
    assert {a.reason for a in answers[1:]} == {Reason.FREQUENCY_CAP_REACHED}
    assert "phones[0]" in answers[1].detail and "phones[0]" in answers[2].detail
    assert answers[1].rule == "campaign"


def test_with_room_for_two_two_entries_are_allowed():
    capped = campaign(frequency_caps=(FrequencyCap(3, timedelta(hours=24)),))
    d = digest(granted(at(0)), sent(at(1)))

    answers = turns(Check(capped, at(5)), d, 4)

    assert [a.allowed for a in answers] == [True, True, False, False]
    assert "phones[0], phones[1]" in answers[2].detail
    assert answers[2].detail.startswith("3 of 3 messages")


def test_the_daily_cap_counts_the_entries_allowed_on_the_local_day():
    d = digest(granted(at(0)))

    answers = turns(Check(campaign(daily_cap=1), at(5)), d, 2)

    assert answers[0].allowed
    assert not answers[1].allowed and answers[1].reason is Reason.DAILY_CAP_REACHED
    assert "phones[0]" in answers[1].detail


def test_a_states_cap_counts_the_entries_allowed_before():
    # A promotional campaign with no cap of its own: Florida's three in 24 hours.
    d = digest(granted(at(0), phone=FLORIDA), sent(at(1), phone=FLORIDA))

    answers = turns(Check(campaign(), at(5)), d, 4)

    assert [a.allowed for a in answers] == [True, True, False, False]
    assert answers[2].reason is Reason.FREQUENCY_CAP_REACHED
    assert answers[2].rule == "state:FL"
    assert "phones[0], phones[1]" in answers[2].detail


def test_an_entry_denied_for_another_reason_counts_nothing():
    capped = campaign(
        frequency_caps=(FrequencyCap(1, timedelta(hours=24)),),
        quiet_hours_apply_to_all=True,
    )
    night = at(hours=13)  # 23:00 in Los Angeles
    d = digest(granted(at(0)))

    quiet = turns(Check(capped, night), d, 3)
    unconsented = turns(Check(capped, at(5)), digest(), 2)

    assert {a.reason for a in quiet} == {Reason.QUIET_HOURS}
    assert "phones" not in quiet[2].detail
    assert {a.reason for a in unconsented} == {Reason.NO_CONSENT}


def test_one_entry_is_answered_as_the_number_alone():
    capped = campaign(frequency_caps=(FrequencyCap(1, timedelta(hours=24)),))
    d = digest(granted(at(0)))
    check = Check(capped, at(5))
    asked: list[int] = []

    def decide(pending: int):
        asked.append(pending)
        return check(d)

    assert in_turn(decide, ["phone"]) == [check(d)]
    assert asked == [0]


def test_every_entry_allowed_still_owes_the_first_messages_obligations():
    # Nothing says which of them goes out first, nor that it reaches the person: the
    # opt-out language and the reconfirmation owed are owed by each until a send is
    # recorded as carrying them.
    late = digest(granted(at(days=-40)))

    answers = turns(Check(campaign(), at(5)), late, 2)

    assert all(a.allowed for a in answers)
    assert answers[0].obligations == answers[1].obligations
    assert Obligation.INCLUDE_OPT_OUT_LANGUAGE in answers[1].obligations
    assert Obligation.RECONFIRM_IN_THIS_MESSAGE in answers[1].obligations


def test_a_reply_owed_once_is_allowed_to_the_first_entry_only():
    stop = revoked(at(5))
    stopped = digest(granted(at(0)), stop)
    helped = digest(granted(at(0)), inbound(at(5), "HELP", "promo"))
    started = digest(granted(at(-60)), revoked(at(-30)), resumed(at(5), "promo"))
    cases = [
        (MessageKind.OPT_OUT_CONFIRMATION, stopped, Reason.OPT_OUT_CONFIRMATION_NOT_ALLOWED),
        (MessageKind.HELP_REPLY, helped, Reason.REPLY_NOT_OWED),
        (MessageKind.OPT_IN_CONFIRMATION, started, Reason.REPLY_NOT_OWED),
    ]
    for kind, d, denied in cases:
        answers = turns(Check(campaign(), at(6), kind), d, 2)
        assert answers[0].allowed, (kind, answers[0])
        assert not answers[1].allowed and answers[1].reason is denied, (kind, answers[1])
        assert PENDING_SEND not in answers[1].evidence
    confirmation = turns(Check(campaign(), at(6), MessageKind.OPT_OUT_CONFIRMATION), stopped, 2)
    assert confirmation[1].evidence == (str(stop.event_id),)


def test_replies_inside_a_conversation_escape_the_caps_in_turn_too():
    chat = campaign(
        "chat",
        purpose=CampaignPurpose.CONVERSATIONAL,
        frequency_caps=(FrequencyCap(1, timedelta(days=1)),),
    )
    d = digest(inbound(at(0), campaign="chat"))

    answers = turns(Check(chat, at(5), MessageKind.CONVERSATION_REPLY), d, 3, "chat")

    assert all(a.allowed for a in answers)
    # Outside one, a reply is a message like any other, and counts.
    capped = campaign(frequency_caps=(FrequencyCap(1, timedelta(days=1)),))
    other = turns(Check(capped, at(5), MessageKind.CONVERSATION_REPLY), digest(granted(at(0))), 2)
    assert [a.reason for a in other] == [Reason.CONSENT_ACTIVE, Reason.FREQUENCY_CAP_REACHED]


def test_an_answer_as_of_a_past_moment_counts_the_sends_pending_then():
    rules = CampaignPolicy(frequency_caps=(FrequencyCap(2, timedelta(hours=24)),))
    defined = CampaignDefined(**_base(at(-60)), brand=BRAND, campaign="promo", policy=rules)
    history = record([defined, granted(at(0)), sent(at(1))])
    alone = decide_as_of(history, "promo", at(5), at(60))
    after = decide_as_of(history, "promo", at(5), at(60), pending=1)
    in_hindsight = decide_as_of(history, "promo", at(5), at(60), allowing_by=at(10), pending=1)

    assert alone.allowed
    assert not after.allowed and after.reason is Reason.FREQUENCY_CAP_REACHED
    assert not in_hindsight.allowed and in_hindsight.reason is Reason.FREQUENCY_CAP_REACHED
