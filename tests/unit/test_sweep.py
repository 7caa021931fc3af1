"""The compliance sweep: each kind of finding, a clean send, and the policy's own
answer for each send's moment."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from ledger.campaigns import CampaignPolicy, FrequencyCap
from ledger.events import (
    ANY_BRAND,
    CampaignDefined,
    LedgerEvent,
    LedgerPosition,
    MessageKind,
    MessageSent,
    Recorded,
    ReliedAnswer,
    RevocationCandidateFlagged,
    SubjectErased,
)
from ledger.policy import Obligation, Reason, decide_as_of
from ledger.state import CampaignHistory, fold_campaign
from ledger.sweep import Finding, FindingKind, Sweep, sweep
from tests.builders import (
    BRAND,
    PHONE,
    T0,
    _base,
    at,
    granted,
    inbound,
    reconfirmed,
    resumed,
    revoked,
    sent,
)

ALABAMA = "+12055550123"  # Birmingham: America/Chicago, closed on Sundays
OTHER = "+14155550199"
ALLOWED = ReliedAnswer("subscribers:0:1", True, "consent_active", ("e1",))
MINUTE = timedelta(minutes=1)
START, END = T0 - timedelta(days=400), T0 + timedelta(days=400)


def _history(**policy: object) -> CampaignHistory:
    defined = CampaignDefined(
        **_base(T0 - timedelta(days=60)),
        brand=BRAND,
        campaign="promo",
        policy=CampaignPolicy(**policy),  # type: ignore[arg-type]
    )
    return fold_campaign([Recorded(defined, LedgerPosition(0, 0), defined.occurred_at)])


def asked(event: MessageSent, answer: ReliedAnswer | None = ALLOWED) -> MessageSent:
    return dataclasses.replace(event, relied_on=answer)


def send(when: datetime, **kw: object) -> MessageSent:
    return asked(sent(when, **kw))  # type: ignore[arg-type]


def recorded(events: list[LedgerEvent]) -> list[Recorded]:
    return [Recorded(e, LedgerPosition(0, i), e.occurred_at) for i, e in enumerate(events)]


def findings(events: list[LedgerEvent], **policy: object) -> list[Finding]:
    return list(sweep(recorded(events), _history(**policy), BRAND, "promo", START, END))


def test_a_compliant_send_the_sender_asked_about_makes_no_finding():
    swept = Sweep(_history(), BRAND, "promo", START, END)
    found = [swept.feed(r) for r in recorded([granted(at(-5)), send(at(0))])]
    assert found == [None, None] and swept.sends_judged == 1 and swept.events_read == 2


def test_a_send_without_consent_is_found_with_its_id():
    message = send(at(0))
    (finding,) = findings([message])
    assert finding.kinds == (FindingKind.NO_CONSENT,)
    assert finding.decision.reason is Reason.NO_CONSENT
    assert finding.evidence[0] == str(message.event_id)


def test_a_consent_of_another_campaign_is_none():
    (finding,) = findings([granted(at(-5), "other"), send(at(0))])
    assert finding.kinds == (FindingKind.NO_CONSENT,)


def test_a_send_after_an_erasure_is_one_without_consent_whatever_came_between():
    # With a START between, the policy once answered CONSENT_TIER_INSUFFICIENT (no
    # consent); without, SUBJECT_ERASED was filed as "another reason".
    erased = SubjectErased(**_base(at(-30)), phone=PHONE, brand=BRAND)
    for between in ([], [inbound(at(-20), "START", "promo"), resumed(at(-20), "promo")]):
        (finding,) = findings([granted(at(-60)), erased, *between, send(at(0))])
        assert finding.kinds == (FindingKind.NO_CONSENT,)
        assert finding.decision.reason is Reason.SUBJECT_ERASED


def test_a_send_after_an_opt_out_is_found_with_the_opt_out_as_evidence():
    grant, stop = granted(at(-60)), revoked(at(-10))
    (finding,) = findings([grant, stop, send(at(0))])
    assert finding.kinds == (FindingKind.AFTER_OPT_OUT,)
    assert str(stop.event_id) in finding.evidence


def test_the_one_opt_out_confirmation_is_clean_and_a_second_is_found():
    stop = revoked(at(-1))
    first = send(at(0), kind=MessageKind.OPT_OUT_CONFIRMATION)
    second = send(at(1), kind=MessageKind.OPT_OUT_CONFIRMATION)
    (finding,) = findings([granted(at(-60)), stop, first, second])
    assert finding.message == second and finding.kinds == (FindingKind.AFTER_OPT_OUT,)
    assert finding.decision.reason is Reason.OPT_OUT_CONFIRMATION_NOT_ALLOWED
    assert str(first.event_id) in finding.evidence


def test_a_send_at_ten_at_night_in_the_recipients_zone_is_found():
    late = send(at(hours=12))  # 22:00 in Los Angeles
    (finding,) = findings([granted(at(-60)), send(at(0)), late])
    assert finding.message == late and finding.kinds == (FindingKind.QUIET_HOURS,)
    assert finding.decision.rule == "federal"


def test_a_send_on_a_day_the_recipients_state_closes_is_found():
    sunday_noon = datetime(2026, 12, 20, 18, tzinfo=UTC)  # 12:00 in Birmingham
    monday_noon = sunday_noon + timedelta(days=1)
    events: list[LedgerEvent] = [
        granted(sunday_noon - timedelta(days=30), phone=ALABAMA),
        send(monday_noon - timedelta(days=7), phone=ALABAMA),
        send(sunday_noon, phone=ALABAMA),
        send(monday_noon, phone=ALABAMA),
    ]
    (finding,) = findings(events)
    assert finding.message.occurred_at == sunday_noon
    assert finding.kinds == (FindingKind.QUIET_HOURS,) and finding.decision.rule == "state:AL"


def test_a_send_over_the_daily_cap_is_found_with_the_sends_it_counted():
    first = send(at(0))
    (finding,) = findings([granted(at(-60)), first, send(at(30))], daily_cap=1)
    assert finding.kinds == (FindingKind.OVER_CAP,)
    assert finding.decision.reason is Reason.DAILY_CAP_REACHED
    assert str(first.event_id) in finding.evidence


def test_a_send_before_the_range_counts_towards_a_cap_but_is_not_judged():
    history = _history(frequency_caps=(FrequencyCap(1, timedelta(days=7)),))
    events = recorded([granted(at(-60)), sent(at(0)), send(at(days=1))])  # first: unasked
    swept = Sweep(history, BRAND, "promo", at(hours=1), END)
    found = [f for f in map(swept.feed, events) if f is not None]
    assert swept.sends_judged == 1
    assert [f.kinds for f in found] == [(FindingKind.OVER_CAP,)]


def test_sends_recorded_newest_first_show_the_one_over_the_cap_in_hindsight():
    """Each send judged against what was recorded before it passes a cap of two when
    three are recorded newest first; in world order the newest is over it."""
    newest, middle, oldest = send(at(30)), send(at(20)), send(at(10))
    events = [granted(at(-60)), newest, middle, oldest]
    late = [Recorded(e, LedgerPosition(0, i), at(40 + i)) for i, e in enumerate(events)]
    history = _history(frequency_caps=(FrequencyCap(2, timedelta(days=1)),))
    swept = Sweep(history, BRAND, "promo", START, END)
    assert [swept.feed(r) for r in late] == [None] * 4  # judged as recorded: none over
    (finding,) = list(sweep(late, history, BRAND, "promo", START, END))
    assert finding.sent.event is newest and finding.hindsight
    assert finding.kinds == (FindingKind.OVER_CAP,)
    assert finding.decision.reason is Reason.FREQUENCY_CAP_REACHED


def test_a_first_message_without_opt_out_language_is_found():
    (finding,) = findings([granted(at(-60)), send(at(0), disclosed=False)])
    assert finding.kinds == (FindingKind.OBLIGATIONS_UNMET,)
    assert finding.unmet == (Obligation.INCLUDE_OPT_OUT_LANGUAGE,)
    assert finding.decision.allowed


def test_a_later_send_need_not_repeat_the_opt_out_language():
    assert findings([granted(at(-60)), send(at(0)), send(at(5), disclosed=False)]) == []


def test_a_send_that_does_not_name_the_sender_is_found():
    anonymous = dataclasses.replace(send(at(0)), identified_sender=False)
    (finding,) = findings([granted(at(-60)), anonymous])
    assert finding.unmet == (Obligation.IDENTIFY_SENDER,)


def test_a_reconfirmation_due_is_owed_by_the_message_and_met_by_a_request():
    grant = granted(at(days=-90))
    regular = findings([grant, send(at(0))], reconfirm_interval=timedelta(days=60))
    assert regular[0].unmet == (Obligation.RECONFIRM_IN_THIS_MESSAGE,)
    request = send(at(0), kind=MessageKind.RECONFIRMATION_REQUEST)
    assert findings([grant, request], reconfirm_interval=timedelta(days=60)) == []
    renewed = [grant, reconfirmed(at(-5)), send(at(0))]
    assert findings(renewed, reconfirm_interval=timedelta(days=60)) == []


def test_a_compliant_send_without_asking_is_found_for_that_alone():
    (finding,) = findings([granted(at(-60)), sent(at(0))])
    assert finding.kinds == (FindingKind.SENT_WITHOUT_ASKING,) and finding.decision.allowed


def test_a_send_against_a_not_allowed_is_found_beside_what_it_lacked():
    refused = ReliedAnswer("subscribers:0:3", False, "revoked", ("x",))
    (finding,) = findings([granted(at(-60)), revoked(at(-5)), asked(sent(at(0)), refused)])
    assert finding.kinds == (FindingKind.AFTER_OPT_OUT, FindingKind.SENT_AGAINST_NOT_ALLOWED)
    (clean,) = findings([granted(at(-60)), asked(sent(at(0)), refused)])
    assert clean.kinds == (FindingKind.SENT_AGAINST_NOT_ALLOWED,)


def test_a_stop_whose_brand_was_unknown_stops_the_brands_sends():
    stop = RevocationCandidateFlagged(
        **_base(at(-5)),
        phone=PHONE,
        brand=ANY_BRAND,
        inbound_message_id="in-1",
        text="STOP",
        unattributed=True,
    )
    (finding,) = findings([granted(at(-60)), stop, send(at(0))])
    assert finding.kinds == (FindingKind.AFTER_OPT_OUT,) and str(stop.event_id) in finding.evidence


def test_other_brands_and_campaigns_are_not_judged_but_a_campaigns_own_facts_count():
    theirs = dataclasses.replace(send(at(0)), brand="globex")
    other_campaign = send(at(0), campaign="other")
    swept = Sweep(_history(), BRAND, "promo", START, END)
    events = recorded([theirs, other_campaign, granted(at(-60), phone=OTHER)])
    assert [swept.feed(r) for r in events] == [None, None, None]
    assert swept.sends_judged == 0


def test_a_campaign_defined_after_the_send_makes_it_one_without_a_campaign():
    (finding,) = findings([granted(at(-60)), send(at(days=-90))])
    assert finding.kinds == (FindingKind.NOT_ALLOWED,)
    assert finding.decision.reason is Reason.CAMPAIGN_UNKNOWN


def test_findings_wait_for_the_end_of_the_events_that_may_add_to_them():
    """A fact recorded after a send may add a reason to its finding, so a finding is
    given once the events are read (the use case: once a partition is)."""
    read = []

    def events() -> Iterator[Recorded]:
        for r in recorded([sent(at(0)), granted(at(5))]):
            read.append(r)
            yield r

    first = next(sweep(events(), _history(), BRAND, "promo", START, END))
    assert first.kinds[0] is FindingKind.NO_CONSENT and len(read) == 2


def test_each_send_is_judged_as_can_send_as_of_answers_for_its_moment():
    _judged_as_can_send_as_of(random.Random(22), ["START"])


def test_replies_owed_once_are_judged_in_ledger_order_after_a_fact_stamped_late():
    """The fold grants a help reply its exemption when it is the first after its HELP
    in ledger order. A fact stamped after a send made the sweep fold the number's
    other facts first and its sends after them, so a reply that counted was judged
    as owed (or the other way round), and the sweep disagreed with CanSendAsOf."""
    _judged_as_can_send_as_of(random.Random(2), ["START", "HELP"])


def _judged_as_can_send_as_of(rng: random.Random, texts: list[str]) -> None:
    for _round in range(30):
        events: list[LedgerEvent] = []
        for _ in range(25):
            when = at(minutes=rng.randint(-300, 900), days=rng.randint(0, 3))
            roll = rng.random()
            if roll < 0.15:
                events.append(granted(when, rng.choice(["promo", "other"])))
            elif roll < 0.25:
                events.append(revoked(when, rng.choice(["promo", None])))
            elif roll < 0.3:
                events.append(inbound(when, rng.choice(texts), "promo"))
            else:
                kind = rng.choice(list(MessageKind))
                events.append(send(when, kind=kind, disclosed=rng.random() < 0.5))
        history = _history(daily_cap=2)
        stream = [
            # Some facts reach the ledger late, some early (a sender's clock ahead).
            Recorded(e, LedgerPosition(0, i), e.occurred_at + rng.randint(-4, 60) * MINUTE)
            for i, e in enumerate(events)
        ]
        swept = Sweep(history, BRAND, "promo", START, END)
        for i, r in enumerate(stream):
            if isinstance(r.event, MessageSent) and r.event.campaign == "promo":
                expected = decide_as_of(
                    [*history.facts(), *stream[:i]],
                    "promo",
                    r.event.occurred_at,
                    r.recorded_at,
                    r.event.kind,
                )
                assert swept.decision(r) == expected, (i, r)
            swept.feed(r)
