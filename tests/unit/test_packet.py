"""The proof-of-opt-in packet (``ledger.packet``): the template's fields and what is
missing of them, the decision replayed for each send, opt-outs and replies with their
handling, after the opt-out as before it."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from ledger.campaigns import CampaignPolicy, FrequencyCap
from ledger.commands import HoldRefusedOptOut, held_opt_out
from ledger.events import (
    ANY_BRAND,
    CampaignDefined,
    CandidateResolution,
    CollectionMethod,
    ConsentGranted,
    ConsentProof,
    ConsentRevoked,
    ConsentTier,
    InboundMessageReceived,
    LedgerPosition,
    MessageKind,
    MessageSent,
    Recorded,
    RevocationCandidateFlagged,
    RevocationChannel,
)
from ledger.packet import FIRST_MESSAGE_TEXT_NOT_RECORDED, assemble, iso
from ledger.policy import Reason, decide_as_of
from tests.builders import (
    BRAND,
    PHONE,
    _base,
    at,
    flagged,
    granted,
    inbound,
    record,
    resolved,
    resumed,
    sent,
    undelivered,
)

NOW = at(days=400)


def _defined(when=None, campaign="promo", **policy):
    return CampaignDefined(
        **_base(when or at(-60)), brand=BRAND, campaign=campaign, policy=CampaignPolicy(**policy)
    )


def _stop(when, campaign="promo", *, reply_to="", text="STOP", brand=BRAND):
    return ConsentRevoked(
        **_base(when),
        phone=PHONE,
        brand=brand,
        campaign=campaign,
        channel=RevocationChannel.KEYWORD,
        text=text,
        in_reply_to=reply_to,
    )


def _text(when, body, message_id, campaign="promo", intent="opt_out"):
    return InboundMessageReceived(
        **_base(when),
        phone=PHONE,
        brand=BRAND,
        message_id=message_id,
        to_number="+12125550100",
        body=body,
        campaign=campaign,
        intent=intent,
    )


def _life():
    """Opt-in, two messages, STOP (a text and its opt-out), the confirmation, START."""
    grant = granted(at(0))
    first, second = sent(at(5)), sent(at(days=1))
    text = _text(at(days=2), "Stop", "in-1")
    stop = _stop(at(days=2), reply_to="in-1", text="Stop")
    confirmation = sent(at(days=2, minutes=1), kind=MessageKind.OPT_OUT_CONFIRMATION)
    start = _text(at(days=3), "START", "in-2", intent="opt_in")
    resume = resumed(at(days=3), "promo")
    events = [_defined(), grant, first, second, text, stop, confirmation, start, resume]
    return events, grant, first, second, stop, confirmation


def test_a_packet_after_the_opt_out_keeps_the_proof_and_the_whole_history():
    events, grant, first, second, stop, confirmation = _life()
    packet = assemble(record(events), PHONE, BRAND, None, NOW)
    [opt_in] = packet.opt_ins
    values = {item.key: item.value for item in opt_in.template}
    assert values["name"] == "Ada Lovelace"
    assert values["email"] == "ada@example.com"
    assert values["postal_address"] == "1 Main St, Springfield"
    assert values["registered_at"] == "2026-03-02T18:00:00Z" == iso(grant.proof.registered_at)
    assert values["ip_address"] == "203.0.113.7"
    assert values["form_url"] == "https://acme.example/sms-signup?utm=spring"
    assert values["consent_text"].startswith("Yes, text me Acme offers")
    assert values["screenshot_ref"] == "s3://proofs/form-v3.png"
    assert values["screenshot_sha256"] == "9f" * 32
    assert opt_in.first_message is not None
    assert opt_in.first_message.message_id == first.message_id
    assert [m.message_id for m in packet.messages] == [
        first.message_id,
        second.message_id,
        confirmation.message_id,
    ]
    # Only the text of the first message is not in the ledger: said, not invented.
    assert [(m.field, m.why) for m in packet.missing] == [
        ("opt_ins[0].first_message.text", FIRST_MESSAGE_TEXT_NOT_RECORDED)
    ]
    [opt_out] = packet.opt_outs
    assert opt_out.event.event_id == str(stop.event_id)
    assert opt_out.confirmation == str(confirmation.event_id)
    assert "one confirmation sent" in opt_out.handling
    assert [p.kind for p in packet.timeline] == [
        "grant",
        "message",
        "message",
        "stop",
        "confirmation",
        "resume",
    ]


def test_each_send_carries_the_decision_that_allowed_it():
    events, grant, *_ = _life()
    packet = assemble(record(events), PHONE, BRAND, None, NOW)
    regular, later, confirmation = packet.messages
    assert regular.decision.allowed and regular.decision.reason == "consent_active"
    assert str(grant.event_id) in regular.decision.evidence
    # The first message since the opt-in owed the opt-out language; the second did not.
    assert "include_opt_out_language" in regular.decision.obligations
    assert "include_opt_out_language" not in later.decision.obligations
    assert confirmation.decision.allowed
    assert confirmation.decision.reason == "opt_out_confirmation_allowed"
    assert regular.decision.at == regular.event.occurred_at
    assert regular.hindsight is None


def test_a_send_after_the_stop_shows_the_denial_and_its_evidence():
    stop = _stop(at(60))
    events = [_defined(), granted(at(0)), stop, sent(at(120))]
    [message] = assemble(record(events), PHONE, BRAND, "promo", NOW).messages
    assert not message.decision.allowed
    assert message.decision.reason == "revoked"
    assert message.decision.evidence == (str(stop.event_id),)


def test_a_send_is_not_counted_against_itself():
    # One message a day: were the send itself counted, its own cap would deny it.
    capped = _defined(frequency_caps=(FrequencyCap(1, timedelta(days=1)),))
    events = [capped, granted(at(0)), sent(at(10)), sent(at(20))]
    one, two = assemble(record(events), PHONE, BRAND, "promo", NOW).messages
    assert one.decision.allowed
    assert not two.decision.allowed and two.decision.reason == "frequency_cap_reached"


def test_a_stop_recorded_after_the_send_shows_in_hindsight_only():
    # The STOP happened before the send but reached the ledger after it: CanSend could
    # not know it then; an auditor must see both answers.
    defined, grant, stop, message = _defined(), granted(at(0)), _stop(at(30)), sent(at(40))
    history = record([defined, grant, message, stop], known_at=[at(-60), at(1), at(41), at(90)])
    [m] = assemble(history, PHONE, BRAND, "promo", NOW).messages
    assert m.decision.allowed
    assert m.hindsight is not None
    assert not m.hindsight.allowed and m.hindsight.reason == "revoked"


def test_missing_template_fields_are_listed_never_invented():
    thin = ConsentProof(
        registered_at=at(0),
        name="Ada Lovelace",
        ip_address="203.0.113.7",
        form_url="https://acme.example/sms",
        consent_text="Yes, text me.",
        screenshot_ref="s3://proofs/form.png",
        email="   ",  # only blanks: left out, as GetConsent counts it
    )
    grant = dataclasses.replace(granted(at(0)), proof=thin)
    packet = assemble(record([_defined(), grant]), PHONE, BRAND, "promo", NOW)
    [opt_in] = packet.opt_ins
    values = {item.key: item.value for item in opt_in.template}
    for key in ("email", "postal_address", "screenshot_sha256", "first_message"):
        assert values[key] is None
    assert [m.field for m in packet.missing] == [
        "opt_ins[0].email",
        "opt_ins[0].postal_address",
        "opt_ins[0].screenshot_sha256",
        "opt_ins[0].first_message",
    ]
    assert packet.missing[-1].why == "no message was sent after it"


def test_another_method_of_collection_stands_for_the_ip_address_and_url():
    paper = ConsentProof(
        registered_at=at(0), name="Ada", collection_detail="signed card #42, store 7"
    )
    grant = ConsentGranted(
        **_base(at(0)),
        phone=PHONE,
        brand=BRAND,
        campaign="promo",
        tier=ConsentTier.PROMOTIONAL,
        method=CollectionMethod.PAPER,
        proof=paper,
    )
    packet = assemble(record([_defined(), grant]), PHONE, BRAND, "promo", NOW)
    items = {item.key: item for item in packet.opt_ins[0].template}
    assert items["ip_address"].value == "paper: signed card #42, store 7"
    assert items["form_url"].note == "proof.collection_detail"
    assert "opt_ins[0].ip_address" not in {m.field for m in packet.missing}
    assert "opt_ins[0].consent_text" in {m.field for m in packet.missing}


def test_no_opt_in_is_said_and_every_send_was_without_consent():
    packet = assemble(record([_defined(), sent(at(10))]), PHONE, BRAND, "promo", NOW)
    assert packet.opt_ins == ()
    assert [m.field for m in packet.missing] == ["opt_ins"]
    [m] = packet.messages
    assert not m.decision.allowed and m.decision.reason == "no_consent"


def test_a_campaign_packet_leaves_other_campaigns_out_but_keeps_brand_wide_opt_outs():
    stopall = _stop(at(days=2), None, text="STOPALL")
    events = [
        _defined(),
        _defined(campaign="alerts"),
        granted(at(0)),
        granted(at(1), "alerts"),
        sent(at(5)),
        sent(at(6), "alerts"),
        stopall,
    ]
    packet = assemble(record(events), PHONE, BRAND, "promo", NOW)
    assert [o.campaign for o in packet.opt_ins] == ["promo"]
    assert [m.campaign for m in packet.messages] == ["promo"]
    assert [o.scope for o in packet.opt_outs] == [f"every campaign of {BRAND}"]
    whole = assemble(record(events), PHONE, BRAND, None, NOW)
    assert sorted(o.campaign for o in whole.opt_ins) == ["alerts", "promo"]


def test_a_campaign_packet_shows_a_cited_send_of_another_campaign_as_evidence():
    """The one confirmation a STOP is owed went out for another campaign, and the
    campaign's own second confirmation was refused citing it: the packet of the
    campaign failed on that send, cited but not among its messages."""
    elsewhere = sent(at(1), "alerts", MessageKind.OPT_OUT_CONFIRMATION)
    second = sent(at(2), "promo", MessageKind.OPT_OUT_CONFIRMATION)
    events = [
        _defined(),
        _defined(campaign="alerts"),
        granted(at(-60)),
        _stop(at(0)),
        elsewhere,
        second,
    ]
    packet = assemble(record(events), PHONE, BRAND, "promo", NOW)
    (message,) = packet.messages
    assert message.event.event_id == str(second.event_id) and not message.decision.allowed
    assert str(elsewhere.event_id) in message.decision.evidence
    assert str(elsewhere.event_id) in {e.event_id for e in packet.events}


def test_a_stop_of_one_campaign_under_revoke_all_names_every_campaign_it_revoked():
    """Under the revoke-all rule a STOP of promo revokes alerts too (CanSend denies
    it), but the packet's opt-out named promo alone, and alerts' packet left it out:
    an auditor could not see what the STOP revoked."""
    stop = _stop(at(days=2))
    events = [
        _defined(),
        _defined(campaign="alerts"),
        _defined(campaign="news"),
        granted(at(0)),
        granted(at(1), "alerts"),
        stop,
    ]
    whole = assemble(record(events), PHONE, BRAND, None, NOW)
    [opt_out] = whole.opt_outs
    assert opt_out.scope.startswith("promo, and under the revoke-all rule"), opt_out.scope
    assert opt_out.scope.endswith("it is in force for: alerts, news" + _NEWER), opt_out.scope
    alerts = assemble(record(events), PHONE, BRAND, "alerts", NOW)
    assert [o.event.event_id for o in alerts.opt_outs] == [str(stop.event_id)]
    assert "alerts" in alerts.opt_outs[0].scope
    # Before the rule is in force (no campaign's own revoke_all), promo's alone.
    before = at(days=3)
    assert [o.scope for o in assemble(record(events), PHONE, BRAND, None, before).opt_outs] == [
        "promo"
    ]
    assert assemble(record(events), PHONE, BRAND, "alerts", before).opt_outs == ()
    # A campaign's own revoke_all: an opt-out of any other campaign revokes it.
    early = [*events[:2], _defined(campaign="news", revoke_all=True), *events[3:]]
    [scoped] = assemble(record(early), PHONE, BRAND, None, before).opt_outs
    assert scoped.scope.endswith("in force for: news" + _NEWER), scoped.scope


_NEWER = " (a consent given after the opt-out is the person's newer word)"


def test_replies_say_how_they_were_read_and_answered():
    help_text = inbound(at(10), "HELP", "promo")
    helped = sent(at(11), kind=MessageKind.HELP_REPLY)
    unanswered = _text(at(days=1), "Stop", "in-9")
    stop = _stop(at(days=1), reply_to="in-9", text="Stop")
    events = [_defined(), granted(at(0)), help_text, helped, unanswered, stop]
    packet = assemble(record(events), PHONE, BRAND, None, NOW)
    first, second = packet.replies
    assert first.read_as == "help" and first.reply_sent == str(helped.event_id)
    assert "answered at" in first.handling
    assert second.recorded == (str(stop.event_id),)
    assert second.reply_sent is None
    assert "no opt out confirmation was recorded" in second.handling
    assert packet.opt_outs[0].confirmation is None
    assert "no confirmation was recorded" in packet.opt_outs[0].handling


def test_a_text_answered_no_reply_owed_is_not_said_to_miss_one():
    """A START with nothing to resume, or a STOP while one was held, was told no reply
    was owed (``InboundMessageReceived.reply``): "no confirmation was recorded" alone
    read to an auditor as one owed and not sent. Texts from before the reply was kept
    say what they said."""
    start = dataclasses.replace(_text(at(days=1), "START", "in-7", intent="opt_in"), reply="none")
    stop = dataclasses.replace(_text(at(days=2), "Stop", "in-8"), reply="none")
    owed = dataclasses.replace(_text(at(days=3), "HELP", "in-9", intent="help"), reply="help")
    older = _text(at(days=4), "START", "in-10", intent="opt_in")
    packet = assemble(record([_defined(), start, stop, owed, older]), PHONE, BRAND, None, NOW)
    said = {r.message_id: r.handling for r in packet.replies}
    for message_id in ("in-7", "in-8"):
        assert said[message_id].endswith("no reply was owed when it came"), said[message_id]
    assert said["in-9"].endswith("no help reply was recorded"), said["in-9"]
    assert said["in-10"].endswith("no opt in confirmation was recorded"), said["in-10"]


def test_an_imported_opt_out_says_its_confirmation_was_the_other_platforms():
    """``CanSend`` allows no confirmation of an imported opt-out: "no confirmation was
    recorded" alone read to an auditor as one owed and not sent."""
    stop = dataclasses.replace(_stop(at(days=1)), imported=True)
    packet = assemble(record([_defined(), granted(at(0)), stop]), PHONE, BRAND, None, NOW)
    [opt_out] = packet.opt_outs
    assert opt_out.handling.startswith("imported: received by another platform, which owed")
    assert opt_out.handling.endswith("revoked from then on; no confirmation was recorded")
    live = assemble(
        record([_defined(), granted(at(0)), _stop(at(days=1))]), PHONE, BRAND, None, NOW
    )
    assert "imported" not in live.opt_outs[0].handling


def test_a_flagged_reply_shows_its_deadline_and_resolution():
    candidate = RevocationCandidateFlagged(
        **_base(at(10)), phone=PHONE, brand=BRAND, inbound_message_id="in-5", text="leave me be"
    )
    decided = dataclasses.replace(
        resolved(at(days=1), candidate, CandidateResolution.REVOKED), resolved_by="reviewer-7"
    )
    packet = assemble(
        record([_defined(), granted(at(0)), candidate, decided]), PHONE, BRAND, None, NOW
    )
    [flag] = packet.opt_outs
    assert flag.kind == "candidate"
    assert flag.due is not None and flag.due > at(10)
    assert flag.resolution is not None and flag.resolution.startswith("revoked by reviewer-7")


def test_an_imported_opt_out_held_is_described_as_one_not_as_a_reply():
    hold = HoldRefusedOptOut("stop-7", PHONE, BRAND, "said")
    (held,) = held_opt_out(hold, "channel: is required", at(10))
    packet = assemble(record([_defined(), granted(at(0)), held]), PHONE, BRAND, None, NOW)
    (line,) = [e.summary for e in packet.events if e.event_id == str(held.event_id)]
    assert line.startswith("imported opt-out held for review: ")
    assert "stop-7" in line and "channel: is required" in line


def test_a_hold_past_its_deadline_is_overdue_in_the_packet_as_cansend_says():
    """A held opt-out past its ten business days counts as a revocation for CanSend
    (REVOCATION_OVERDUE); the packet made then described it as only "due"."""
    hold = HoldRefusedOptOut("stop-8", PHONE, BRAND, "said")
    (held,) = held_opt_out(hold, "channel: is required", at(10))
    history = record([_defined(), granted(at(0)), held])
    due = assemble(history, PHONE, BRAND, "promo", at(days=1)).opt_outs[0].due
    assert due is not None
    for moment, reason in (
        (due - timedelta(seconds=1), Reason.REVOCATION_PENDING_REVIEW),
        (due, Reason.REVOCATION_OVERDUE),
    ):
        assert decide_as_of(history, "promo", moment, moment).reason is reason
        [line] = assemble(history, PHONE, BRAND, "promo", moment).opt_outs
        assert line.overdue is (reason is Reason.REVOCATION_OVERDUE)
        if line.overdue:
            assert line.handling.startswith(f"overdue since {iso(due)}"), line.handling
            assert "counts as a revocation" in line.handling
        else:
            assert "overdue" not in line.handling and f"due {iso(due)}" in line.handling


def test_an_unattributed_hold_counts_as_an_opt_out_of_every_campaign_in_the_packet():
    """CanSend counts an opt-out no defined campaign could take as one of every
    campaign (REVOKED_BRAND_WIDE) from the start; the packet said only that it
    "blocks every send", as of a hold that merely awaited review."""
    hold = dataclasses.replace(
        RevocationCandidateFlagged(
            **_base(at(10)), phone=PHONE, brand=BRAND, inbound_message_id="", text="no more"
        ),
        unattributed=True,
        campaign="winter-sale",
    )
    history = record([_defined(), granted(at(0)), hold])
    moment = at(days=1)
    assert decide_as_of(history, "promo", moment, moment).reason is Reason.REVOKED_BRAND_WIDE
    [line] = assemble(history, PHONE, BRAND, "promo", moment).opt_outs
    assert line.kind == "unattributed" and not line.overdue and line.resolution is None
    assert "counts as an opt-out of every campaign" in line.handling, line.handling
    assert line.due is not None and f"due {iso(line.due)}" in line.handling
    # A reply flagged for review still only awaits it.
    reply = record([_defined(), granted(at(0)), flagged(at(10))])
    [line] = assemble(reply, PHONE, BRAND, "promo", moment).opt_outs
    assert line.kind == "candidate" and "counts as" not in line.handling, line.handling


def test_a_stop_whose_brand_was_unknown_is_in_every_brands_packet():
    anyone = _stop(at(30), None, brand=ANY_BRAND)
    history = [
        *record([_defined(), granted(at(0))]),
        Recorded(anyone, LedgerPosition(0, 9), at(30)),
    ]
    packet = assemble(history, PHONE, BRAND, "promo", NOW)
    assert [o.scope for o in packet.opt_outs] == ["every brand (the brand was unknown)"]


def test_another_brands_facts_never_enter_the_packet():
    theirs = dataclasses.replace(granted(at(0)), brand="globex")
    packet = assemble(record([_defined(), granted(at(0)), theirs]), PHONE, BRAND, None, NOW)
    assert [o.event.event_id for o in packet.opt_ins] != [] and all(
        e.event_id != str(theirs.event_id) for e in packet.events
    )


def _naive(history, now):
    """Each send's decisions from every fact, as ``decide_as_of`` alone gives them."""
    subscriber = [r for r in history if not isinstance(r.event, CampaignDefined)]
    rules = [r for r in history if isinstance(r.event, CampaignDefined)]
    found = {}
    for i, r in enumerate(subscriber):
        e = r.event
        if isinstance(e, MessageSent):
            before = subscriber[:i]
            others = subscriber[:i] + subscriber[i + 1 :]
            then = decide_as_of([*rules, *before], e.campaign, e.occurred_at, r.recorded_at, e.kind)
            later = decide_as_of([*rules, *others], e.campaign, e.occurred_at, now, e.kind)
            found[str(e.event_id)] = (then, later)
    return found


@pytest.mark.parametrize("late", [False, True])
def test_the_compact_replay_decides_as_decide_as_of_over_every_fact(late):
    capped = _defined(frequency_caps=(FrequencyCap(3, timedelta(days=1)),))
    events = [capped, granted(at(0))]
    events += [sent(at(hours=h)) for h in (1, 2, 3, 4, 30, 31)]
    events += [
        _stop(at(hours=40)),
        sent(at(hours=40, minutes=1), kind=MessageKind.OPT_OUT_CONFIRMATION),
    ]
    events += [sent(at(hours=41)), resumed(at(hours=50), "promo"), sent(at(hours=51))]
    history = record(events)
    if late:  # a STOP reported a day late, and a send stamped before facts it follows
        stop = Recorded(_stop(at(hours=3, minutes=30)), LedgerPosition(0, 99), at(hours=60))
        early = Recorded(sent(at(hours=20)), LedgerPosition(0, 100), at(hours=61))
        history = [*history, stop, early]
    packet = assemble(history, PHONE, BRAND, None, NOW)
    expected = _naive(history, NOW)
    assert len(packet.messages) == len(expected)
    for m in packet.messages:
        then, later = expected[m.event.event_id]
        assert (m.decision.allowed, m.decision.reason) == (then.allowed, then.reason.value)
        assert m.decision.evidence == then.evidence
        shown = m.hindsight or m.decision
        assert (shown.allowed, shown.reason) == (later.allowed, later.reason.value)
    assert any(m.hindsight for m in packet.messages) is late


def test_a_reported_delivery_failure_is_listed_with_its_error_code():
    message = sent(at(5))
    failure = undelivered(message, at(6))
    packet = assemble(
        record([_defined(), granted(at(0)), message, failure]), PHONE, BRAND, None, NOW
    )
    [listed] = [e for e in packet.events if e.type == "DeliveryOutcomeReported"]
    assert listed.summary == f"{message.message_id} reported undeliverable (error 30003)"


def test_a_send_that_did_not_reconfirm_when_it_had_to_shows_the_obligation_unmet():
    """The packet left the reconfirmation out of a send's unmet obligations, while the
    sweep finds the same send for it: the packet showed compliant a send that was not."""
    events = [_defined(reconfirm_interval=timedelta(days=60)), granted(at(days=-90)), sent(at(0))]
    [message] = assemble(record(events), PHONE, BRAND, "promo", NOW).messages
    assert "reconfirm_in_this_message" in message.decision.obligations
    assert message.unmet_obligations == ("reconfirm_in_this_message",)


def test_the_timeline_at_one_instant_is_ordered_by_the_facts_not_their_places():
    """Facts of one instant were listed in the order they were placed, and each drew
    the state the facts placed before it left: two ledgers holding the same facts in
    two orders gave two timelines. At one instant the person's text comes first, then
    what gives consent, then what withdraws it, then what was sent, one kind by event
    id; every fact of the instant leaves the state they leave together."""
    grant = granted(at(0))
    help_text = _text(at(5), "HELP", "in-1", intent="help")
    messages = [sent(at(5)) for _ in range(3)]
    help_reply = sent(at(5), kind=MessageKind.HELP_REPLY)
    stop, opt_in = _stop(at(days=1), text="Stop"), granted(at(days=1))
    facts = [grant, help_text, *messages, help_reply, stop, opt_in]
    orders = [facts, facts[::-1], [grant, *messages[::-1], opt_in, help_reply, stop, help_text]]
    packets = [assemble(record([_defined(), *o]), PHONE, BRAND, None, NOW) for o in orders]
    timelines = {p.timeline for p in packets}
    assert len(timelines) == 1, timelines
    [timeline] = timelines
    ids = sorted(str(m.event_id) for m in (*messages, help_reply))
    assert [(p.kind, p.event_id, p.state) for p in timeline] == [
        ("grant", str(grant.event_id), "active"),
        ("reply", str(help_text.event_id), None),
        *(("message", i, None) for i in ids),
        ("grant", str(opt_in.event_id), "revoked"),
        ("stop", str(stop.event_id), "revoked"),
    ]
