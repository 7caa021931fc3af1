"""A live opt-out refused for its details (``RecordOptOut``, an inbound STOP) is held
for review: the hold's id, how it is told apart, and what CanSend says of it."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from ledger.commands import (
    HELD_INBOUND,
    HELD_INTENTS,
    HELD_OPT_OUT,
    HoldRefusedOptOut,
    held_intent,
    held_opt_out,
)
from ledger.errors import InvalidPhoneNumber, InvalidRequest
from ledger.events import ANY_BRAND
from ledger.keywords import Intent
from ledger.packet import assemble
from ledger.policy import Reason, decide
from ledger.state import fold
from tests.builders import BRAND, PHONE, at, campaign, flagged, granted, record

PROMO = campaign("promo")


def _live(request_id: str = "r-1", record_: str = "said", via: str = HELD_OPT_OUT):
    return HoldRefusedOptOut(request_id, PHONE, BRAND, record_, "promo", via=via)


def test_a_live_hold_has_an_id_of_its_own_derived_from_the_request():
    """The client's corrected retry takes the client's request id: the hold must not.
    The same request holds under the same id, another request under another."""
    hold = _live()
    assert hold.request_id.startswith("refused-") and hold.request_id != "r-1"
    assert _live().request_id == hold.request_id
    assert _live(record_="other").request_id != hold.request_id
    assert _live(via=HELD_INBOUND).request_id != hold.request_id
    # An import's hold keeps its id (its re-runs find it present).
    assert replace(hold, via="").request_id.startswith("held-")


def test_a_live_hold_is_marked_refused_not_imported_nor_a_reply():
    (held,) = held_opt_out(_live(), "occurred_at: is in the future", at(1))
    assert held.refused and not held.imported and not held.unattributed
    assert held.occurred_at == at(1) and held.campaign == "promo"
    (imported,) = held_opt_out(replace(_live(), via=""), "channel: is required", at(1))
    assert imported.imported and not imported.refused
    # A reply whose client named its request so is still a reply.
    reply = replace(flagged(at(1)), request_id="refused-mine")
    assert not reply.refused and not reply.imported


def test_canSend_says_an_opt_out_refused_for_its_details_awaits_review():
    (held,) = held_opt_out(_live(), "occurred_at: is in the future", at(1))
    state = fold(record([granted(at(0)), held]))
    d = decide(state, PROMO, at(2))
    assert d.reason is Reason.REVOCATION_PENDING_REVIEW
    assert d.detail.startswith("an opt-out refused for its details (RecordOptOut opt-out ")
    assert "reply" not in d.detail and "imported" not in d.detail
    late = decide(state, PROMO, at(2) + timedelta(days=30))
    assert late.reason is Reason.REVOCATION_OVERDUE
    assert late.detail.startswith("an opt-out refused for its details")
    assert "after it was held" in late.detail


def test_the_proof_packet_names_a_live_hold():
    (held,) = held_opt_out(_live(), "text: contains a NUL", at(1))
    packet = assemble(record([granted(at(0)), held]), PHONE, BRAND, None, at(2))
    (line,) = [e.summary for e in packet.events if e.event_id == str(held.event_id)]
    assert line.startswith("opt-out refused for its details, held for review: ")


def test_only_an_inbound_stop_is_held_for_every_brand():
    """A STOP to a number no campaign sends from, from a caller of any brand, is kept
    for every brand when recorded; refused, it is held so. A RecordOptOut names its
    brand, and "*" is no brand to hold it under."""
    inbound = replace(_live(via=HELD_INBOUND), brand=ANY_BRAND)
    (held,) = held_opt_out(inbound, "occurred_at: is required", at(1))
    assert held.brand == ANY_BRAND
    with pytest.raises(InvalidRequest):
        held_opt_out(replace(_live(), brand=ANY_BRAND), "occurred_at: is required", at(1))


@pytest.mark.parametrize(
    "spelled", ["ACME ", "\uff21\uff23\uff2d\uff25", "acme\u200b", "\u2060acme", "\ufeffAcme\u00a0"]
)
def test_a_refused_opt_out_is_held_under_the_brand_its_name_spells(spelled):
    (held,) = held_opt_out(replace(_live(), brand=spelled), "brand: is no name", at(1))
    assert held.brand == "acme"


@pytest.mark.parametrize("spelled", ["ACMÉ", "ac me", "acme!"])
def test_a_brand_that_spells_another_name_holds_nothing(spelled):
    with pytest.raises(InvalidRequest):
        held_opt_out(replace(_live(), brand=spelled), "brand: is no name", at(1))


@pytest.mark.parametrize(
    ("written", "held_under"),
    [
        ("(415) 555-2671", "+14155552671"),  # a US number as at home: no country code
        ("415.555.2671", "+14155552671"),
        ("1 415 555 2671", "+14155552671"),  # its country code without the "+"
        ("011 44 20 7946 0018", "+442079460018"),  # dialled from North America
    ],
)
def test_a_refused_opt_out_is_held_under_its_number_however_written(written, held_under):
    (held,) = held_opt_out(replace(_live(), phone=written), "channel: is required", at(1))
    assert held.phone == held_under


@pytest.mark.parametrize("written", ["555-2671", "(415) 555-267", "+415 555 2671", "415 555 267a"])
def test_a_refused_opt_out_whose_number_cannot_be_read_holds_nothing(written):
    with pytest.raises(InvalidPhoneNumber):
        held_opt_out(replace(_live(), phone=written), "channel: is required", at(1))


@pytest.mark.parametrize(
    ("body", "intent"),
    [
        ("STOP\0", Intent.OPT_OUT),
        ("\0stopall", Intent.OPT_OUT_BRAND_WIDE),
        ("STOP" + " " * 5000, Intent.OPT_OUT),
        ("please stop texting me\0", Intent.REVOCATION_CANDIDATE),
    ],
)
def test_a_refused_text_is_read_for_a_stop_through_its_nuls_and_length(body, intent):
    assert held_intent(body) is intent and intent in HELD_INTENTS


@pytest.mark.parametrize("body", ["see you at 5\0", "HELP\0", "START\0", "x" * 5000])
def test_a_refused_text_that_reads_as_no_stop_is_not_held(body):
    assert held_intent(body) not in HELD_INTENTS
