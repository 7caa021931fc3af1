"""Many sends to one number: the fold keeps exactly the sends a cap can count, and
CanSend counts them, whatever order they come in, with sends of one moment, sends
recorded twice and sends older than the window among them; a proof packet replays
each from every fact before it."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from ledger.campaigns import MAX_CAP_WINDOW, FrequencyCap
from ledger.digest import digest_of
from ledger.events import MAX_CLOCK_SKEW, CampaignDefined, LedgerPosition, MessageKind, Recorded
from ledger.packet import replays
from ledger.policy import Check, Reason, decide_as_of
from ledger.state import SubscriberState, fold, retained_facts
from tests.builders import BRAND, PHONE, _base, at, campaign, granted, sent

LIMIT, WINDOW = 400, timedelta(hours=1)

Kept = tuple[datetime, str, str]
"""A send as a cap counts it: its moment, event id and message id."""


def dense_history(seed: int) -> list[Recorded]:
    """An opt-in, a month of sparse sends of two campaigns, then 600 sends of one in
    an hour, shuffled a little, some sharing a moment, some recorded twice."""
    rng = random.Random(seed)
    events = [granted(at(days=-40)), granted(at(days=-40), campaign="news")]
    events += [sent(at(days=-33 + i / 10), "news" if i % 3 else "promo") for i in range(330)]
    moments = [at(rng.uniform(0, 60)) for _ in range(560)] + [at(30)] * 40
    dense = [sent(moment) for moment in moments]
    rng.shuffle(dense)
    events += dense
    facts = [Recorded(e, LedgerPosition(0, i), e.occurred_at) for i, e in enumerate(events)]
    again = rng.sample(facts[-300:], 30) + rng.sample(facts[2:200], 10)
    offset = len(facts)
    for i, r in enumerate(again):  # the same send appended again later
        facts.append(Recorded(r.event, LedgerPosition(0, offset + i), at(61)))
    return facts


def kept_as_before(facts: list[Recorded]) -> tuple[list[Kept], dict[str, list[Kept]]]:
    """What the fold kept of the sends, by the rule as it was first written: skip a
    send the brand's list holds; otherwise add it to both lists, cut each at the
    longest window (and the clock skew) before its newest send, and sort it again."""
    horizon = MAX_CAP_WINDOW + MAX_CLOCK_SKEW
    brand: list[tuple[datetime, str, str, str]] = []
    campaigns: dict[str, list[tuple[datetime, str, str, str]]] = {}
    for r in facts:
        e = r.event
        if not hasattr(e, "message_id") or not hasattr(e, "kind"):
            continue
        record = (e.occurred_at, str(e.event_id), e.message_id, e.campaign)
        if record in brand:
            continue
        newest = max([record[0], *(s[0] for s in brand)])
        brand = sorted(
            (s for s in [*brand, record] if s[0] >= newest - horizon), key=lambda s: s[:2]
        )
        own = [*campaigns.get(e.campaign, []), record]
        latest = max(s[0] for s in own)
        campaigns[e.campaign] = sorted(
            (s for s in own if s[0] >= latest - horizon), key=lambda s: s[:2]
        )
    return [s[:3] for s in brand], {k: [s[:3] for s in v] for k, v in campaigns.items()}


def kept(state: SubscriberState) -> tuple[list[Kept], dict[str, list[Kept]]]:
    brand = [(s.at, s.event_id, s.message_id) for s in state.brand_sent]
    return brand, {
        name: [(s.at, s.event_id, s.message_id) for s in c.sent]
        for name, c in state.campaigns.items()
    }


def test_the_fold_keeps_the_sends_a_cap_counts_of_a_dense_history():
    for seed in range(3):
        facts = dense_history(seed)
        state = fold(facts, SubscriberState(phone=PHONE, brand=BRAND))
        assert kept(state) == kept_as_before(facts)
        assert len(state.campaign("promo").sent) > 600
        # A projection stores a state as its retained facts: folding them gives it again.
        assert kept(fold(retained_facts(state), SubscriberState(PHONE, BRAND))) == kept(state)


def test_cansend_counts_every_send_of_a_dense_hour_against_the_cap():
    facts = dense_history(0)
    rules = campaign(frequency_caps=(FrequencyCap(LIMIT, WINDOW),))
    digest = digest_of(fold(facts, SubscriberState(phone=PHONE, brand=BRAND)))
    _, campaigns = kept_as_before(facts)
    for minutes in range(0, 125, 5):
        now = at(minutes)
        counted = [s for s in campaigns["promo"] if now - WINDOW < s[0]]
        decision = Check(rules, now, MessageKind.REGULAR)(digest)
        if len(counted) < LIMIT:
            assert decision.allowed, (minutes, decision)
            continue
        assert (decision.allowed, decision.reason) == (False, Reason.FREQUENCY_CAP_REACHED)
        assert decision.detail == f"{len(counted)} of {LIMIT} messages in {WINDOW}"
        # The opt-in it rests on, then the oldest and the latest send counted.
        assert decision.evidence[-2:] == (counted[0][1], counted[-1][1])


def test_a_packet_replays_each_send_of_a_dense_hour_from_every_fact_before_it():
    rng = random.Random(7)
    rules = campaign(frequency_caps=(FrequencyCap(100, WINDOW),))
    defined = CampaignDefined(**_base(at(-60)), brand=BRAND, campaign="promo", policy=rules.policy)
    moments = sorted(at(rng.uniform(0, 60)) for _ in range(150))
    moments[40:45] = [moments[40]] * 5  # one moment's sends
    moments[90], moments[91] = moments[91], moments[90]  # one out of order
    events = [granted(at(-30)), *(sent(moment) for moment in moments)]
    subscriber = [Recorded(e, LedgerPosition(0, i), e.occurred_at) for i, e in enumerate(events)]
    campaign_facts = [Recorded(defined, LedgerPosition(1, 0), at(-60))]
    wanted = {str(r.event.event_id) for r in subscriber[1:]}
    replayed = replays(subscriber, campaign_facts, at(120), wanted)
    denied = 0
    for i, r in enumerate(subscriber[1:], start=1):
        e = r.event
        every = decide_as_of(
            [*campaign_facts, *subscriber[:i]], "promo", e.occurred_at, r.recorded_at
        )
        assert replayed[str(e.event_id)][0] == every
        denied += not every.allowed
    assert denied > 40
