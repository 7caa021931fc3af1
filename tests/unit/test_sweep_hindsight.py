"""The compliance sweep in hindsight: a send that a fact recorded after it, placed
before it in world order, shows sent without consent is found, as the proof packet
marks it "not allowed in hindsight", whatever the fact."""

from __future__ import annotations

import dataclasses
import random
from datetime import datetime, timedelta

import pytest

from ledger.campaigns import CampaignPolicy, FrequencyCap
from ledger.events import (
    ANY_BRAND,
    CampaignDefined,
    CampaignEvent,
    CampaignPolicyChanged,
    LedgerEvent,
    LedgerPosition,
    MessageKind,
    MessageSent,
    Recorded,
    RevocationCandidateFlagged,
    SubscriberLocated,
)
from ledger.packet import assemble
from ledger.policy import Obligation, Reason, decide
from ledger.state import CampaignHistory, fold, fold_campaign
from ledger.sweep import Finding, FindingKind, Sweep, sweep
from tests.builders import (
    BRAND,
    PHONE,
    _base,
    age,
    at,
    flagged,
    granted,
    inbound,
    reconfirmed,
    revoked,
    sent,
    undelivered,
)
from tests.unit.test_sweep import asked

START, END = at(days=-400), at(days=400)
NOW = at(days=30)


def _defined(campaign: str = "promo", **policy: object) -> CampaignDefined:
    return CampaignDefined(
        **_base(at(days=-60)),
        brand=BRAND,
        campaign=campaign,
        policy=CampaignPolicy(**policy),  # type: ignore[arg-type]
    )


def _in_ledger_order(events: list[LedgerEvent], recorded_at: list[datetime]) -> list[Recorded]:
    return [
        Recorded(e, LedgerPosition(0, i), t)
        for i, (e, t) in enumerate(zip(events, recorded_at, strict=True))
    ]


def _rules(*events: CampaignEvent) -> list[Recorded]:
    return [Recorded(e, LedgerPosition(1, i), e.occurred_at) for i, e in enumerate(events)]


def _promo(rules: list[Recorded]) -> CampaignHistory:
    """The campaign's history as the view gives it to the sweep: its own rules only."""
    return fold_campaign([r for r in rules if getattr(r.event, "campaign", None) == "promo"])


def _late(fact: LedgerEvent, *, revoke_all: bool = False, **policy: object) -> list[Finding]:
    """The findings of a sweep of an opt-in, a send at T0 recorded then, and ``fact``
    (placed before the send) recorded an hour after it."""
    message = asked(sent(at(0)))
    events = [granted(at(-600)), message, fact]
    stream = _in_ledger_order(events, [at(-600), at(0), at(60)])
    rules = _rules(_defined(revoke_all=revoke_all, **policy), _defined("other"))
    found = list(sweep(stream, _promo(rules), BRAND, "promo", START, END, NOW))
    assert all(f.sent.event is message for f in found)
    return found


def _stop_of_an_unknown_brand(when: datetime) -> RevocationCandidateFlagged:
    return RevocationCandidateFlagged(
        **_base(when),
        phone=PHONE,
        brand=ANY_BRAND,
        inbound_message_id="in-1",
        text="STOP",
        unattributed=True,
    )


@pytest.mark.parametrize(
    ("fact", "revoke_all", "reason"),
    [
        (revoked(at(-10)), False, Reason.REVOKED),
        (revoked(at(-10), None), False, Reason.REVOKED_BRAND_WIDE),
        (revoked(at(-10), "other"), True, Reason.REVOKED_BRAND_WIDE),
        (_stop_of_an_unknown_brand(at(-10)), False, Reason.REVOKED_BRAND_WIDE),
        (flagged(at(-10)), False, Reason.REVOCATION_PENDING_REVIEW),
    ],
    ids=["campaign", "brand-wide", "revoke-all", "unknown-brand", "candidate"],
)
def test_a_send_before_an_opt_out_recorded_after_it_is_found_in_hindsight(
    fact: LedgerEvent, revoke_all: bool, reason: Reason
):
    (finding,) = _late(fact, revoke_all=revoke_all)
    assert finding.hindsight and finding.kinds == (FindingKind.AFTER_OPT_OUT,)
    assert not finding.decision.allowed and finding.decision.reason is reason
    assert str(fact.event_id) in finding.evidence


def test_a_send_in_the_hours_a_state_learnt_late_closes_is_found_in_hindsight():
    located = SubscriberLocated(**_base(at(days=-1)), phone=PHONE, brand=BRAND, region="FL")
    message = asked(sent(at(hours=7)))  # 17:00 in Los Angeles, 20:00 in Florida
    events = [granted(at(-600)), message, located]
    stream = _in_ledger_order(events, [at(-600), at(hours=7), at(hours=8)])
    (finding,) = sweep(stream, fold_campaign(_rules(_defined())), BRAND, "promo", START, END, NOW)
    assert finding.hindsight and finding.kinds == (FindingKind.QUIET_HOURS,)
    assert finding.decision.rule == "state:FL"


def test_a_send_under_rules_defined_back_in_time_after_it_is_found_in_hindsight():
    """A cap put in force, by a change recorded after the send, from before it."""
    first, second = asked(sent(at(0))), asked(sent(at(30)))
    capped = CampaignPolicyChanged(
        **_base(at(-60)), brand=BRAND, campaign="promo", policy=CampaignPolicy(daily_cap=1)
    )
    history = fold_campaign(
        [*_rules(_defined()), Recorded(capped, LedgerPosition(0, 9), at(hours=2))]
    )
    events = [granted(at(-600)), first, second]
    stream = _in_ledger_order(events, [at(-600), at(0), at(30)])
    (finding,) = sweep(stream, history, BRAND, "promo", START, END, NOW)
    assert finding.sent.event is second and finding.hindsight
    assert finding.kinds == (FindingKind.OVER_CAP,)


def test_a_stop_of_an_unknown_brand_read_before_the_brands_facts_is_weighed():
    """The use case feeds a partition's STOPs of an unknown brand first: one recorded
    after a send but placed before it still counts against it in hindsight."""
    grant, message = granted(at(-600)), asked(sent(at(0)))
    stop = _stop_of_an_unknown_brand(at(-10))
    stream = _in_ledger_order([grant, message, stop], [at(-600), at(0), at(60)])
    swept = Sweep(fold_campaign(_rules(_defined())), BRAND, "promo", START, END, NOW)
    assert [swept.feed(r) for r in (stream[2], stream[0], stream[1])] == [None] * 3
    assert swept.to_review == {PHONE}
    (finding,) = swept.review(PHONE, stream)
    assert finding.hindsight and finding.kinds == (FindingKind.AFTER_OPT_OUT,)


def test_a_send_recorded_in_world_order_is_not_judged_again():
    grant, message, stop = granted(at(-600)), asked(sent(at(0))), revoked(at(10))
    stream = _in_ledger_order([grant, message, stop], [at(-600), at(0), at(10)])
    swept = Sweep(fold_campaign(_rules(_defined())), BRAND, "promo", START, END, NOW)
    assert [swept.feed(r) for r in stream] == [None] * 3
    assert swept.to_review == frozenset()


TWO_SPELLINGS = ("+5491112344101", "+541112344101")
"""One Buenos Aires mobile: the spelling it is kept under, and the one an earlier
version kept apart (``ledger.phone.forms_stored_before``), in another partition."""


def _history_of(
    rng: random.Random, spellings: tuple[str, ...] = (PHONE,)
) -> tuple[list[Recorded], list[Recorded]]:
    """A number's facts and its brand's rules, some reported late, in ledger order;
    with two ``spellings``, each fact under one of them, in that spelling's partition."""
    texts = ["STOP", "START", "HELP", "what are your hours?", "stop texting me"]
    rules: list[CampaignEvent] = [
        _defined(
            daily_cap=rng.choice([None, 2]),
            frequency_caps=rng.choice([(), (FrequencyCap(3, timedelta(days=7)),)]),
            reconfirm_interval=rng.choice([None, timedelta(days=2)]),
            revoke_all=rng.random() < 0.3,
            age_gated=rng.random() < 0.2,
        ),
        _defined("other"),
    ]
    recorded_rules = _rules(*rules)
    if rng.random() < 0.3:  # rules changed back in time, recorded later
        changed = CampaignPolicyChanged(
            **_base(at(minutes=rng.randint(-300, 2000))),
            brand=BRAND,
            campaign="promo",
            policy=CampaignPolicy(daily_cap=1),
        )
        recorded_rules.append(
            Recorded(changed, LedgerPosition(1, 9), at(minutes=rng.randint(0, 5000)))
        )
    events: list[LedgerEvent] = []
    recorded_at: list[datetime] = []
    partitions: list[int] = []
    clock = at(days=-1)
    for _ in range(rng.randint(5, 30)):
        clock += timedelta(minutes=rng.randint(1, 240))
        # Most facts are recorded as they happen; some are reported (or imported) late.
        lateness = timedelta(minutes=rng.choice([0, 0, 0, 1, rng.randint(2, 3000)]))
        when = clock - lateness
        roll = rng.random()
        event: LedgerEvent
        if roll < 0.12:
            event = granted(when, rng.choice(["promo", "other"]))
        elif roll < 0.22:
            event = revoked(when, rng.choice(["promo", "other", None]))
        elif roll < 0.26:
            event = _stop_of_an_unknown_brand(when)
        elif roll < 0.3:
            event = flagged(when)
        elif roll < 0.36:
            event = inbound(when, rng.choice(texts), rng.choice(["promo", None]))
        elif roll < 0.39:
            region = rng.choice(["FL", "AL", "CA"])
            event = SubscriberLocated(**_base(when), phone=PHONE, brand=BRAND, region=region)
        elif roll < 0.41:
            event = reconfirmed(when)
        elif roll < 0.43:
            event = age(when, plus21=rng.random() < 0.5)
        else:
            kind = rng.choice(list(MessageKind))
            ahead = timedelta(minutes=rng.choice([0, 0, 2]))  # a sender's clock ahead
            message = sent(when + ahead, rng.choice(["promo", "promo", "other"]), kind)
            event = asked(message) if rng.random() < 0.8 else message
        partition = rng.randrange(len(spellings)) if len(spellings) > 1 else 0
        if spellings[partition] != PHONE:
            event = dataclasses.replace(event, phone=spellings[partition])
        events.append(event)
        recorded_at.append(clock)
        partitions.append(partition)
    offsets = [partitions[: i + 1].count(p) - 1 for i, p in enumerate(partitions)]
    facts = [
        Recorded(e, LedgerPosition(p, o), t)
        for e, p, o, t in zip(events, partitions, offsets, recorded_at, strict=True)
    ]
    return facts, recorded_rules


@pytest.mark.parametrize("spellings", [(PHONE,), TWO_SPELLINGS], ids=["one", "two-spellings"])
@pytest.mark.parametrize("seed", range(6))
def test_the_sweep_finds_the_sends_the_packet_marks_not_allowed_in_hindsight(
    seed: int, spellings: tuple[str, ...]
):
    """The sweep's findings are the packet's: the sends it marks not allowed in
    hindsight, and those its answer as recorded does not allow. With facts under a
    number's earlier spelling (which the packet counts as the number's), a send after
    an opt-out recorded under the other spelling was not found."""
    rng = random.Random(seed)
    hindsight_seen = 0
    number, earlier = spellings[0], spellings[1:]
    for _round in range(40):
        facts, rules = _history_of(rng, spellings)
        packet = assemble([*facts, *rules], number, BRAND, None, NOW, earlier=earlier)
        messages = [m for m in packet.messages if m.campaign == "promo"]
        marked = {
            m.event.event_id: m.hindsight.reason
            for m in messages
            if m.hindsight is not None and not m.hindsight.allowed
        }
        then = {m.event.event_id: (m.decision.allowed, m.decision.reason) for m in messages}
        # The campaign's own packet, which an auditor reads beside the sweep, says the same.
        scoped = assemble([*facts, *rules], number, BRAND, "promo", NOW, earlier=earlier).messages
        assert scoped == tuple(messages)
        history = _promo(rules)
        found = list(sweep(facts, history, BRAND, "promo", START, END, NOW))
        ids = [f.sent.event.event_id for f in found]
        assert len(ids) == len(set(ids))  # one finding per send
        late = {str(f.sent.event.event_id): f.decision.reason.value for f in found if f.hindsight}
        assert late == marked, (seed, _round)
        denied = {key for key, (allowed, _) in then.items() if not allowed}
        assert denied <= set(map(str, ids)), (seed, _round)
        for f in found:
            as_recorded = f.as_recorded if f.hindsight else f.decision
            assert as_recorded is not None
            as_packet = then[str(f.sent.event.event_id)]
            assert (as_recorded.allowed, as_recorded.reason.value) == as_packet
            assert set(f.hindsight_kinds) <= set(f.kinds)
        sends = [r for r in facts if isinstance(r.event, MessageSent)]
        assert len(then) == sum(1 for r in sends if r.event.campaign == "promo")
        hindsight_seen += len(marked)
    assert hindsight_seen > 0  # the histories do reach the case


def test_a_send_without_asking_over_a_cap_in_hindsight_is_one_finding_with_both():
    """Found as recorded for not asking, and over a cap once an older send recorded
    after it is read: one finding names both, the answer in hindsight first."""
    unasked, older = sent(at(30)), asked(sent(at(10)))
    events = [granted(at(-60)), asked(sent(at(0))), unasked, older]
    stream = _in_ledger_order(events, [at(-60), at(0), at(30), at(40)])
    history = _promo(_rules(_defined(frequency_caps=(FrequencyCap(2, timedelta(days=1)),))))
    (finding,) = sweep(stream, history, BRAND, "promo", START, END, NOW)
    assert finding.sent.event is unasked and finding.hindsight
    assert finding.kinds == (FindingKind.SENT_WITHOUT_ASKING, FindingKind.OVER_CAP)
    assert finding.hindsight_kinds == (FindingKind.OVER_CAP,)
    assert finding.decision.reason is Reason.FREQUENCY_CAP_REACHED
    assert finding.as_recorded is not None and finding.as_recorded.allowed


def test_a_send_in_quiet_hours_before_a_late_opt_out_is_one_finding_with_both():
    message = asked(sent(at(hours=12)))  # 22:00 in Los Angeles
    stop = revoked(at(hours=11))
    events = [granted(at(-600)), message, stop]
    stream = _in_ledger_order(events, [at(-600), at(hours=12), at(hours=13)])
    (finding,) = sweep(stream, _promo(_rules(_defined())), BRAND, "promo", START, END, NOW)
    assert finding.kinds == (FindingKind.QUIET_HOURS, FindingKind.AFTER_OPT_OUT)
    assert finding.hindsight and finding.hindsight_kinds == (FindingKind.AFTER_OPT_OUT,)
    assert finding.decision.reason is Reason.REVOKED
    assert str(stop.event_id) in finding.evidence
    assert finding.as_recorded is not None
    assert finding.as_recorded.reason is Reason.QUIET_HOURS


def test_a_send_found_only_as_recorded_carries_no_answer_in_hindsight():
    (finding,) = sweep(
        _in_ledger_order([granted(at(-600)), sent(at(0))], [at(-600), at(0)]),
        _promo(_rules(_defined())),
        BRAND,
        "promo",
        START,
        END,
        NOW,
    )
    assert finding.kinds == (FindingKind.SENT_WITHOUT_ASKING,) and not finding.hindsight
    assert finding.as_recorded is None and finding.hindsight_kinds == ()


@pytest.mark.parametrize(("after", "owed"), [(2, True), (2.5, False)])
@pytest.mark.parametrize("text", ["HELP", "STOP"])
def test_a_reply_recorded_before_its_text_is_judged_as_the_caps_count_it(
    after: float, owed: bool, text: str
):
    """A help reply (or an opt-out's confirmation) the gateway recorded before the HELP
    (the STOP) it answered reached the ledger, judged without it, not exempt. Sent
    inside the campaign's reply window (2 minutes) after the text, CanSend leaves it
    out of the cap as the text's answer (after an opt-in again, for a STOP), and the
    packet (in hindsight) and the sweep judge it owed; sent outside it, all three
    count it as not owed."""
    if text == "HELP":
        kind, asked_by, again = MessageKind.HELP_REPLY, inbound(at(10), "HELP", "promo"), []
    else:
        kind, asked_by, again = MessageKind.OPT_OUT_CONFIRMATION, revoked(at(10)), [granted(at(16))]
    reply = asked(dataclasses.replace(sent(at(10 + after), "promo", kind), exempt=False))
    events = [granted(at(-600)), reply, asked_by, *again]
    stream = _in_ledger_order(events, [at(-600), at(10 + after), at(15), at(16)][: len(events)])
    cap = (FrequencyCap(1, timedelta(days=1)),)
    rules = _rules(_defined(frequency_caps=cap, opt_out_confirmation_window=timedelta(minutes=2)))
    history = _promo(rules)
    current = history.current()
    assert current is not None
    can_send = decide(fold(stream), current, at(20))
    found = list(sweep(stream, history, BRAND, "promo", START, END, NOW))
    (message,) = assemble([*stream, *rules], PHONE, BRAND, "promo", NOW).messages
    assert not message.decision.allowed  # as recorded, no HELP known
    if owed:
        assert can_send.allowed, can_send
        assert message.hindsight is not None and message.hindsight.allowed
        assert message.hindsight.reason in (
            Reason.HELP_REPLY_ALLOWED.value,
            Reason.OPT_OUT_CONFIRMATION_ALLOWED.value,
        )
        assert found == []
    else:
        assert can_send.reason is Reason.FREQUENCY_CAP_REACHED, can_send
        assert message.hindsight is None
        (finding,) = found
        assert finding.kinds in ((FindingKind.NOT_ALLOWED,), (FindingKind.AFTER_OPT_OUT,))
        assert finding.decision.reason in (
            Reason.REPLY_NOT_OWED,
            Reason.OPT_OUT_CONFIRMATION_NOT_ALLOWED,
        )


@pytest.mark.parametrize("disclosed", [False, True])
def test_a_reply_with_the_opt_out_language_meets_no_first_message_in_any_order(disclosed: bool):
    """A help reply with the opt-out language recorded before the HELP it answered,
    then a regular send. The reply stood as the first message as recorded, so the send
    owed no opt-out language, where in the facts' own order the reply was the HELP's
    answer and the send owed it. A reply stands as no first message, counted or not
    (``ledger.state.COUNTED_KINDS``): the send owes the language as recorded and in
    order, and one without it is found as recorded, with nothing told in hindsight."""
    reply = asked(
        dataclasses.replace(sent(at(10.5), "promo", MessageKind.HELP_REPLY), exempt=False)
    )
    message = asked(sent(at(11), disclosed=disclosed))
    help_ = inbound(at(10), "HELP", "promo")
    rules = _rules(_defined(opt_out_confirmation_window=timedelta(minutes=2)))
    history = _promo(rules)
    events = [granted(at(-600)), reply, message, help_]
    stream = _in_ledger_order(events, [at(-600), at(10.5), at(11), at(15)])
    in_order = _in_ledger_order(
        [granted(at(-600)), help_, dataclasses.replace(reply, exempt=True), message],
        [at(-600), at(10), at(10.5), at(11)],
    )

    def of_the_send(events: list[Recorded]) -> list[Finding]:
        found = sweep(events, history, BRAND, "promo", START, END, NOW)
        return [f for f in found if f.sent.event.event_id == message.event_id]

    packet = assemble([*stream, *rules], PHONE, BRAND, "promo", NOW).messages
    (shown,) = [m for m in packet if m.message_id == message.message_id]
    assert Obligation.INCLUDE_OPT_OUT_LANGUAGE.value in shown.decision.obligations
    assert shown.hindsight is None
    found, found_in_order = of_the_send(stream), of_the_send(in_order)
    if disclosed:
        assert found == found_in_order == []
        return
    for (finding,) in (found, found_in_order):
        assert finding.kinds == (FindingKind.OBLIGATIONS_UNMET,) and not finding.hindsight
        assert finding.unmet == (Obligation.INCLUDE_OPT_OUT_LANGUAGE,)


@pytest.mark.parametrize("disclosed", [False, True])
def test_a_send_that_owed_the_opt_out_language_in_order_is_found_in_hindsight(disclosed: bool):
    """A first message with the opt-out language, then a send; a delivery error on the
    first, placed between the two, recorded after the second. As recorded the send owed
    no opt-out language; in the facts' own order the language had reached no one, and
    the send owed it. A send without it is found (obligations unmet, in hindsight), as
    the proof packet marks it, and as a sweep of the facts in order finds it as
    recorded."""
    first = asked(sent(at(0), disclosed=True))
    message = asked(sent(at(11), disclosed=disclosed))
    failure = undelivered(first, at(5))
    rules = _rules(_defined())
    history = _promo(rules)
    events = [granted(at(-600)), first, message, failure]
    stream = _in_ledger_order(events, [at(-600), at(0), at(11), at(15)])
    in_order = _in_ledger_order(
        [granted(at(-600)), first, failure, message], [at(-600), at(0), at(5), at(11)]
    )

    def of_the_send(events: list[Recorded]) -> list[Finding]:
        found = sweep(events, history, BRAND, "promo", START, END, NOW)
        return [f for f in found if f.sent.event.event_id == message.event_id]

    assert of_the_send(stream[:3]) == []
    found, found_in_order = of_the_send(stream), of_the_send(in_order)
    packet = assemble([*stream, *rules], PHONE, BRAND, "promo", NOW).messages
    (shown,) = [m for m in packet if m.message_id == message.message_id]
    # The packet shows what the send owed in hindsight, met or not.
    assert shown.hindsight is not None and shown.hindsight.allowed
    assert Obligation.INCLUDE_OPT_OUT_LANGUAGE.value in shown.hindsight.obligations
    assert Obligation.INCLUDE_OPT_OUT_LANGUAGE.value not in shown.decision.obligations
    if disclosed:
        assert found == found_in_order == []
        return
    (finding,) = found
    assert finding.sent.event is message and finding.hindsight
    assert finding.kinds == (FindingKind.OBLIGATIONS_UNMET,)
    (ordered,) = found_in_order
    assert ordered.kinds == (FindingKind.OBLIGATIONS_UNMET,) and not ordered.hindsight
    assert finding.unmet == ordered.unmet == (Obligation.INCLUDE_OPT_OUT_LANGUAGE,)
