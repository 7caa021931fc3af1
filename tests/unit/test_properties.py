"""Properties that must hold for any history, found by hypothesis."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import timedelta
from types import MappingProxyType
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.campaigns import CampaignPurpose
from ledger.digest import digest_of
from ledger.events import (
    ConsentGranted,
    ConsentResumed,
    ConsentRevoked,
    DeliveryOutcome,
    DeliveryOutcomeReported,
    InboundMessageReceived,
    MessageKind,
    MessageSent,
    SubjectErased,
)
from ledger.policy import Reason, decide
from ledger.state import EMPTY_CAMPAIGN, SubscriberState, fold, retained_facts
from ledger.status import ConsentState, consent_state
from tests.builders import (
    BRAND,
    PHONE,
    _base,
    age,
    at,
    campaign,
    granted,
    inbound,
    reconfirmed,
    record,
    resumed,
    revoked,
    sent,
)

CAMPAIGNS = st.sampled_from(["promo", "alerts"])
OWED = (MessageKind.OPT_OUT_CONFIRMATION, MessageKind.HELP_REPLY, MessageKind.OPT_IN_CONFIRMATION)
"""Replies owed to a text of the person's: allowed after a revocation too, when earned
(``test_an_owed_reply_is_allowed_only_right_after_the_text_that_asked_for_it``)."""
WINDOW = timedelta(minutes=5)
MINUTES = st.integers(min_value=0, max_value=60 * 24 * 40)


AHEAD = st.sampled_from(
    [
        lambda when: None,
        lambda when: when + timedelta(seconds=40),
        lambda when: when + timedelta(minutes=2),
    ]
)
"""How far ahead of the clock that recorded it a fact of consent was stamped (None:
not at all), kept as its ``stated_at``."""


@st.composite
def any_event(draw, *, after: int = 0, grants: bool = True):
    when = at(after + draw(MINUTES))
    name = draw(CAMPAIGNS)
    builders = [
        lambda: sent(
            when,
            name,
            draw(st.sampled_from(list(MessageKind))),
            disclosed=draw(st.booleans()),
            exempt=draw(st.one_of(st.none(), st.booleans())),
        ),
        lambda: inbound(
            when,
            draw(st.sampled_from(["hi", "STOP", "HELP", "what?"])),
            draw(st.one_of(st.none(), CAMPAIGNS)),
        ),
        lambda: reconfirmed(when, name),
        lambda: age(when, plus21=True),
        lambda: replace(
            revoked(when, draw(st.one_of(st.none(), CAMPAIGNS))),
            stated_at=draw(AHEAD)(when),
        ),
    ]
    if grants:
        builders += [
            lambda: replace(granted(when, name), stated_at=draw(AHEAD)(when)),
            lambda: replace(
                resumed(when, draw(st.one_of(st.none(), CAMPAIGNS))), stated_at=draw(AHEAD)(when)
            ),
        ]
    return draw(st.sampled_from(builders))()


histories = st.lists(any_event(), max_size=25)


@settings(max_examples=300, deadline=None)
@given(
    before=histories,
    after=st.lists(any_event(after=60 * 24 * 41, grants=False), max_size=10),
    brand_wide=st.booleans(),
    asked=CAMPAIGNS,
    delay_minutes=st.integers(min_value=0, max_value=60 * 24 * 60),
    kind=st.sampled_from([k for k in MessageKind if k not in OWED]),
)
def test_an_acknowledged_revocation_without_a_new_grant_never_allows(
    before, after, brand_wide, asked, delay_minutes, kind
):
    stop_at = at(days=41)
    stop = revoked(stop_at, None if brand_wide else asked)
    state = fold(record([*before, stop, *after]))
    now = stop_at + timedelta(minutes=delay_minutes)
    for purpose in CampaignPurpose:
        d = decide(state, campaign(asked, purpose=purpose), now, kind)
        assert not d.allowed, d


@st.composite
def no_opt_in(draw, *, after: int):
    """A fact after an erasure that is no opt-in: anything ``any_event`` makes but a
    grant (a send, a text, a STOP, a reconfirmation, an age verification), or a START."""
    when = at(after + draw(MINUTES))
    if draw(st.booleans()):
        return draw(any_event(after=after, grants=False))
    return replace(
        resumed(when, draw(st.one_of(st.none(), CAMPAIGNS))), stated_at=draw(AHEAD)(when)
    )


_SAID_AS = {
    ConsentState.ERASED: Reason.SUBJECT_ERASED,
    ConsentState.REVOKED: Reason.REVOKED,
    ConsentState.REVOKED_BRAND_WIDE: Reason.REVOKED_BRAND_WIDE,
}
"""The reason CanSend gives for each state GetConsent may give after an erasure."""


@settings(max_examples=300, deadline=None)
@given(
    before=histories,
    late=st.lists(any_event(), max_size=6),
    after=st.lists(no_opt_in(after=60 * 24 * 41), max_size=8),
    asked=CAMPAIGNS,
    delay_minutes=st.integers(min_value=0, max_value=60 * 24 * 60),
    kind=st.sampled_from([k for k in MessageKind if k not in OWED]),
)
def test_an_erased_subscriber_is_never_allowed_without_a_fresh_grant(
    before, late, after, asked, delay_minutes, kind
):
    """Whatever was recorded before the erasure, or is recorded after it but happened
    before it (a grant imported late, a START, a text), allows nothing; nor does
    anything after it but an opt-in. CanSend says why as GetConsent says it: erased,
    or the opt-out that stands."""
    erased_at = at(days=41)
    erasure = SubjectErased(event_id=uuid.uuid4(), occurred_at=erased_at, phone=PHONE, brand=BRAND)
    state = fold(record([*before, erasure, *late, *after]))
    now = erased_at + timedelta(minutes=delay_minutes)
    stands = consent_state(digest_of(state), asked)
    for purpose in CampaignPurpose:
        d = decide(state, campaign(asked, purpose=purpose), now, kind)
        assert (d.allowed, d.reason) == (False, _SAID_AS[stands]), d


@settings(max_examples=200, deadline=None)
@given(
    before=histories,
    brand_wide=st.booleans(),
    asked=CAMPAIGNS,
    delay_minutes=st.integers(min_value=0, max_value=60 * 24),
)
def test_at_most_the_one_confirmation_is_allowed_after_a_revocation(
    before, brand_wide, asked, delay_minutes
):
    stop_at = at(days=41)
    confirm = sent(stop_at + timedelta(seconds=30), asked, MessageKind.OPT_OUT_CONFIRMATION)
    state = fold(record([*before, revoked(stop_at, None if brand_wide else asked), confirm]))
    now = stop_at + timedelta(minutes=1 + delay_minutes)
    assert not decide(state, campaign(asked), now, MessageKind.OPT_OUT_CONFIRMATION).allowed


@settings(max_examples=300, deadline=None)
@given(events=histories, cut=st.integers(min_value=0, max_value=25))
def test_folding_in_batches_gives_the_same_state(events, cut):
    recorded = record(events)
    assert fold(recorded[cut:], fold(recorded[:cut])) == fold(recorded)


@settings(max_examples=200, deadline=None)
@given(events=histories)
def test_a_state_refolded_from_its_retained_facts_is_equal(events):
    state = fold(record(events))
    assert fold(retained_facts(state)) == state


MESSAGE_IDS = st.sampled_from(["SM1", "SM2", "SM3"])


@st.composite
def with_delivery_errors(draw):
    """A history whose sends share a few message ids, with errors reported on them
    (the fold keeps an error on the send that met an obligation, ``undisclosed``),
    perhaps erased part way (which forgets the consent the sends met)."""
    events: list[Any] = []
    history = draw(st.lists(any_event(), max_size=20))
    if history and draw(st.booleans()):
        cut = draw(st.integers(min_value=0, max_value=len(history)))
        erasure = SubjectErased(
            event_id=uuid.uuid4(),
            occurred_at=at(draw(MINUTES)),
            phone=PHONE,
            brand=BRAND,
        )
        history.insert(cut, erasure)
    for event in history:
        if isinstance(event, MessageSent):
            event = replace(event, message_id=draw(MESSAGE_IDS))
        events.append(event)
        if draw(st.booleans()) and isinstance(event, MessageSent):
            events.append(
                DeliveryOutcomeReported(
                    **_base(event.occurred_at + timedelta(minutes=1)),
                    phone=PHONE,
                    brand=BRAND,
                    message_id=draw(MESSAGE_IDS),
                    campaign=draw(CAMPAIGNS),
                    outcome=draw(st.sampled_from(list(DeliveryOutcome))),
                    error_code="",
                )
            )
    return events


@settings(max_examples=200, deadline=None)
@given(events=with_delivery_errors())
def test_a_state_with_delivery_errors_refolded_from_its_retained_facts_is_equal(events):
    state = fold(record(events))
    # An erasure leaves a campaign it emptied in place, which a refold has no fact of.
    assert _emptied_left_out(fold(retained_facts(state))) == _emptied_left_out(state)


def _emptied_left_out(state: SubscriberState) -> SubscriberState:
    kept = {name: c for name, c in state.campaigns.items() if c != EMPTY_CAMPAIGN}
    return replace(state, campaigns=MappingProxyType(kept))


@settings(max_examples=200, deadline=None)
@given(events=histories, asked=CAMPAIGNS, minutes=MINUTES, kind=st.sampled_from(list(MessageKind)))
def test_a_decision_is_deterministic(events, asked, minutes, kind):
    state = fold(record(events))
    c = campaign(asked)
    assert decide(state, c, at(minutes), kind) == decide(fold(record(events)), c, at(minutes), kind)


@settings(max_examples=300, deadline=None)
@given(events=histories, asked=CAMPAIGNS, minutes=MINUTES)
def test_an_owed_reply_is_allowed_only_right_after_the_text_that_asked_for_it(
    events, asked, minutes
):
    state, now, rules = fold(record(events)), at(minutes), campaign(asked)

    def recent(event) -> bool:
        return event.occurred_at <= now <= event.occurred_at + WINDOW

    if decide(state, rules, now, MessageKind.HELP_REPLY).allowed:
        helps = [
            e
            for e in events
            if isinstance(e, InboundMessageReceived) and e.intent == "help" and e.campaign == asked
        ]
        assert helps
        latest = max(e.occurred_at for e in helps)
        assert recent(next(e for e in helps if e.occurred_at == latest))
        replies = [
            e
            for e in events
            if isinstance(e, MessageSent)
            and e.kind is MessageKind.HELP_REPLY
            and e.campaign == asked
            and e.occurred_at >= latest
        ]
        assert not replies
    if decide(state, rules, now, MessageKind.OPT_IN_CONFIRMATION).allowed:
        resumes = [e for e in events if isinstance(e, ConsentResumed) and e.campaign == asked]
        assert any(recent(e) for e in resumes)
        grants = [e for e in events if isinstance(e, ConsentGranted) and e.campaign == asked]
        assert grants
    if decide(state, rules, now, MessageKind.OPT_OUT_CONFIRMATION).allowed:
        stops = [e for e in events if isinstance(e, ConsentRevoked) and e.campaign in (None, asked)]
        assert any(recent(e) for e in stops)
