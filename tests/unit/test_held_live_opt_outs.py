"""A live opt-out refused for its details (``RecordOptOut``, an inbound STOP) is held
for review: the hold's id, how it is told apart, what CanSend says of it, and the
opt-out recorded since that resolves it."""

from __future__ import annotations

import random
import uuid
from dataclasses import replace
from datetime import timedelta

import pytest

from ledger import commands
from ledger.commands import (
    HELD_INBOUND,
    HELD_INTENTS,
    HELD_OPT_OUT,
    BrandsInUse,
    HoldRefusedOptOut,
    RecordOptOut,
    brands_in_use,
    brands_meant,
    covered_hold_resolved,
    covers,
    held_intent,
    held_opt_out,
)
from ledger.errors import InvalidPhoneNumber, InvalidRequest
from ledger.events import (
    ANY_BRAND,
    CandidateResolution,
    RevocationCandidateResolved,
    RevocationChannel,
)
from ledger.keywords import Intent
from ledger.packet import assemble
from ledger.policy import Reason, decide
from ledger.ports import ConsistencyToken
from ledger.state import fold
from services.errors import HeldForReview
from services.usecases import UseCases
from services.usecases.imports import Item
from tests.builders import BRAND, PHONE, at, campaign, flagged, granted, record, revoked
from tests.unit.usecase_harness import NOW, define, opt_in, running

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


def test_a_live_hold_goes_at_its_own_time_under_the_ids_it_had_before():
    """A live opt-out whose time reads is held there, not when it was refused; its
    events keep the ids a hold of the same request had when it went at the refusal,
    so a retry across the upgrade holds it once."""
    for via in (HELD_OPT_OUT, HELD_INBOUND):
        hold = _live(via=via)
        [before] = held_opt_out(hold, "channel: is required", at(10))
        [placed] = held_opt_out(replace(hold, occurred_at=at(2)), "channel: is required", at(10))
        assert (before.occurred_at, placed.occurred_at) == (at(10), at(2))
        assert placed.event_id == before.event_id
        assert placed.request_fingerprint == before.request_fingerprint


def test_a_live_hold_is_marked_refused_not_imported_nor_a_reply():
    (held,) = held_opt_out(_live(), "occurred_at: is in the future", at(1))
    assert held.refused and not held.imported and not held.unattributed
    assert held.occurred_at == at(1) and held.campaign == "promo"
    (imported,) = held_opt_out(replace(_live(), via=""), "channel: is required", at(1))
    assert imported.imported and not imported.refused
    # A reply whose client named its request so is still a reply.
    reply = replace(flagged(at(1)), request_id="refused-mine")
    assert not reply.refused and not reply.imported


@pytest.mark.parametrize(
    "spelled",
    [f"{PHONE} x", f"{PHONE} (mobile)", f"mobile: {PHONE}", f"<{PHONE}>", "cell 415 555 2671"],
)
def test_a_live_opt_out_whose_number_is_written_among_words_is_held_under_it(spelled):
    """Refused for the words around its number, the opt-out was held under no number
    and the number's opt-in stood: it is held under the number it names."""
    held = held_opt_out(replace(_live(), phone=spelled), "phone: must hold only digits", at(1))
    assert PHONE in [h.phone for h in held]


def test_a_cell_naming_two_numbers_holds_its_opt_out_under_each():
    held = held_opt_out(replace(_live(), phone=f"{PHONE} / +1 212 555 0100"), "phone: ...", at(1))
    assert [h.phone for h in held] == [PHONE, "+12125550100"]


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


def test_a_hold_for_a_request_id_used_before_says_so_not_its_details():
    """Answers and the packet told a client's reused request id apart from a detail
    refused only in the sealed text: the hold's own id now says which it was."""
    reused = replace(_live(), reused_id=True)
    assert reused.request_id.startswith("refused-id-")
    assert reused.request_id != _live().request_id
    assert not _live().request_id.startswith("refused-id-")  # hex follows "refused-"
    (held,) = held_opt_out(reused, "request_id: was used before", at(1))
    assert held.refused and held.reused_id and not held.imported
    (detail,) = held_opt_out(_live(), "occurred_at: is in the future", at(1))
    assert not detail.reused_id
    state = fold(record([granted(at(0)), held]))
    d = decide(state, PROMO, at(2))
    assert d.reason is Reason.REVOCATION_PENDING_REVIEW
    assert d.detail.startswith("an opt-out refused for a request id used before (")
    packet = assemble(record([granted(at(0)), held]), PHONE, BRAND, None, at(2))
    (line,) = [e.summary for e in packet.events if e.event_id == str(held.event_id)]
    assert line.startswith("opt-out refused for a request id used before, held for review: ")


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


def test_an_opt_out_naming_no_readable_brand_from_a_caller_of_every_brand_is_held_for_all():
    """Its brand left out or unreadable, a caller of every brand cannot tell which it
    meant: the use cases hold it under "*", which denies every brand until reviewed."""
    unread = replace(_live(), brand=ANY_BRAND, unread_brand=True)
    (held,) = held_opt_out(unread, "brand: is required", at(1))
    assert held.brand == ANY_BRAND


@pytest.mark.parametrize(
    "spelled",
    [
        *("ACME ", "\uff21\uff23\uff2d\uff25", "acme\u200b", "\u2060acme", "\ufeffAcme\u00a0"),
        *("acme.", "acme-", "acme_", " acme. "),  # a separator typed after it
        # invisible but no format characters: a Hangul filler (and its halfwidth
        # form), a combining grapheme joiner, a variation selector, a choseong filler
        *("acme\u3164", "acme\uffa0", "ac\u034fme", "acme\ufe0f", "acme\u115f"),
    ],
)
def test_a_refused_opt_out_is_held_under_the_brand_its_name_spells(spelled):
    (held,) = held_opt_out(replace(_live(), brand=spelled), "brand: is no name", at(1))
    assert held.brand == "acme"


@pytest.mark.parametrize(
    "spelled",
    [
        *("ac\x00me", "acme\n", "acm\ufffe\x7fe", "ac\n*me", "Acme!", "ac me", "\x85ACME\x9b"),
        *("ac\u200dme", "ac\U000e0001me", "acme\u3164", "\uff41\uff43\uff4d\uff45", "ac.me"),
    ],
)
def test_a_brand_with_controls_or_symbols_inside_means_the_brand_in_use(spelled):
    """A refused opt-out is held under the brand it means (``brands_meant``), not
    under every brand for a caller of every brand: "ac\x00me" is acme to a reader."""
    assert brands_meant(spelled, ["acme", "globex"]) == ["acme"]


@pytest.mark.parametrize("spelled", ["", "  ", "N/A", "*", "acmé", "ac\u0661me", "acme2", "acme"])
def test_a_brand_that_reads_as_no_other_brand_in_use_means_none(spelled):
    assert brands_meant(spelled, ["acme", "globex"]) == []


def test_a_brand_that_reads_as_two_brands_in_use_means_both():
    assert brands_meant("ac\x00me", ["ac-me", "acme", "globex"]) == ["ac-me", "acme"]


def test_the_brands_in_use_are_read_once_per_list_not_once_per_opt_out(monkeypatch):
    """Each opt-out read every brand in use again (``_letters_and_digits`` per brand
    per opt-out); filed once per list, an opt-out reads only its own brand."""
    read: list[str] = []
    letters = commands._letters_and_digits
    monkeypatch.setattr(commands, "_letters_and_digits", lambda v: read.append(v) or letters(v))
    in_use = ["acme", "ac-me", "globex", f"initech-{uuid.uuid4().hex[:8]}"]  # a list not seen
    spelled = ["ac\x00me", "Acme!", "globex", "nobody", "ac.me", "*"]
    answers = [brands_meant(s, in_use) for s in spelled]
    assert answers == [["acme", "ac-me"], ["acme", "ac-me"], [], [], ["acme", "ac-me"], []]
    assert sorted(read) == sorted([*in_use, *(s for s in spelled if s not in in_use)])
    read.clear()
    filed = brands_in_use(tuple(in_use))  # the same list again: filed already
    assert [filed.meant(s) for s in spelled] == answers
    assert sorted(read) == sorted(s for s in spelled if s not in in_use)


@pytest.mark.parametrize("seed", range(4))
def test_brands_filed_once_mean_what_reading_each_again_meant(seed):
    """The brands an opt-out means, filed once, are those reading each brand in use
    again for it gave, in the order they are listed."""
    rng = random.Random(seed)
    parts = ["ac", "me", "-", "_", ".", "\x00", "A", "\u200d", "!", "glo", "bex", "", "1"]

    def name() -> str:
        return "".join(rng.choice(parts) for _ in range(rng.randint(0, 4)))

    for _ in range(50):
        in_use = [name() for _ in range(rng.randint(0, 6))]
        filed = BrandsInUse(in_use)
        for brand in [name() for _ in range(10)] + in_use:
            bare = commands._letters_and_digits(brand)
            again = [o for o in in_use if bare and commands._letters_and_digits(o) == bare]
            expected = [] if brand in in_use else again
            assert filed.meant(brand) == brands_meant(brand, in_use) == expected, (in_use, brand)


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
        ("0011 44 20 7946 0018", "+442079460018"),  # dialled from Australia
        ("+0011 1 415 555 2671", "+14155552671"),
        ("tel:+14155552671", "+14155552671"),  # a link's number
        ("Tel:+1-415-555-2671;phone-context=example.com", "+14155552671"),
        ("+14155552671;ext=12", "+14155552671"),  # the line an extension is on
        ("+1 415 555 2671 ext. 12", "+14155552671"),
        ("+1 (415) 555-2671 x12", "+14155552671"),
        ("+14155552671 #12", "+14155552671"),
        ("\u202a+14155552671\u202c", "+14155552671"),  # bidi marks around it
        ("+1415\u200b5552671", "+14155552671"),
        ("tel:14155552671", "+14155552671"),  # both at once: a link without its "+"
        ("+00 1 415 555 2671", "+14155552671"),  # a "+" before the international prefix
        ("+011 44 20 7946 0018", "+442079460018"),
        ("+0044 20 7946 0018", "+442079460018"),
        ("+01 415 555 2671", "+14155552671"),  # a 0 before the country code, as in "+01"
        ("+0 1 415 555 2671", "+14155552671"),
        ("+044 20 7946 0018", "+442079460018"),
        ("+52 1 55 1234 5678", "+525512345678"),  # Mexico's old mobile "1", dropped in 2019
        ("+5215512345678", "+525512345678"),
        ("+55 11 8765 4321", "+5511987654321"),  # Brazil's mobiles before their 9, by 2016
        ("+551187654321", "+5511987654321"),
        ("+14155552671\0", "+14155552671"),  # control characters an export left in
        ("\x01+14155552671", "+14155552671"),
        ("+1415\x005552671", "+14155552671"),
        ("+1 415\n555 2671", "+14155552671"),
        ("+14155552671\x7f", "+14155552671"),
        ("'+14155552671", "+14155552671"),  # a spreadsheet's marks of a number kept as text
        ('="+14155552671"', "+14155552671"),
        ('= "+1 415 555 2671" ', "+14155552671"),
        ("14155552671.0", "+14155552671"),  # a number column read as floats
    ],
)
def test_a_refused_opt_out_is_held_under_its_number_however_written(written, held_under):
    (held,) = held_opt_out(replace(_live(), phone=written), "channel: is required", at(1))
    assert held.phone == held_under


def test_ten_digits_that_read_as_two_numbers_are_held_under_each_once():
    """(646) 555-2671 is a New York number without its country code and, with a "+",
    +64 6555 2671 in New Zealand: a hold under one reading left the other allowed."""
    hold = replace(_live(), phone="(646) 555-2671")
    foreign, home = held_opt_out(hold, "phone: needs its country code", at(1))
    assert (foreign.phone, home.phone) == ("+6465552671", "+16465552671")
    assert foreign.event_id != home.event_id
    assert foreign.request_id == home.request_id == hold.request_id
    assert "reads as +6465552671 and as +16465552671: held under each" in home.text
    again = held_opt_out(hold, "phone: needs its country code", at(2))
    assert [e.event_id for e in again] == [foreign.event_id, home.event_id]  # a retry's
    assert covers(revoked(at(2), None, phone="+16465552671"), home)
    assert not covers(revoked(at(2), None, phone="+16465552671"), foreign)


@pytest.mark.parametrize(
    "written",
    ["555-2671", "(415) 555-267", "+415 555 2671", "415 555 267a", "1.41556E+10", "415.5"],
)
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


def test_only_a_brand_wide_opt_out_of_the_same_number_and_brand_covers_a_live_hold():
    """A hold denies every campaign of its brand: an opt-out of one campaign, of
    another number or brand, a hold that is a reply, or an import's hold and a live
    opt-out, is left to a reviewer."""
    (held,) = held_opt_out(_live(), "occurred_at: is in the future", at(1))
    assert covers(revoked(at(2), None), held)
    assert not covers(revoked(at(2), "promo"), held)
    assert covers(revoked(at(2), "promo"), held, every_campaign=True)  # revoke-all
    assert not covers(revoked(at(2), None, phone="+14155550000"), held)
    assert not covers(revoked(at(2), None, brand="globex"), held)
    (imported,) = held_opt_out(replace(_live(), via=""), "channel: is required", at(1))
    assert not covers(revoked(at(2), None), imported)
    # An import's hold, by an imported opt-out of its reach: its corrected record.
    assert covers(revoked(at(2), None, imported=True), imported)
    assert not covers(revoked(at(2), "promo", imported=True), imported)
    assert not covers(revoked(at(2), None), flagged(at(1)))


def test_a_covered_hold_is_resolved_revoked_at_now_naming_the_opt_out():
    """Revoked again at now, not dismissed: the opt-out may carry an earlier time than
    the STOP held, with an opt-in between them, which must not come back."""
    (held,) = held_opt_out(_live(), "occurred_at: is in the future", at(3))
    stop = revoked(at(1), None)
    events = covered_hold_resolved(stop, held, at(5))
    again, resolution = events  # the opt-out first: an append is not atomic
    assert resolution.candidate_event_id == held.event_id
    assert resolution.resolution is CandidateResolution.REVOKED
    assert resolution.resolved_by == f"opt-out {stop.event_id}"
    assert resolution.request_id.startswith("covered-")
    assert again.campaign is None and again.occurred_at == at(5)  # the brand, at now
    assert covered_hold_resolved(stop, held, at(6))[0].request_id == resolution.request_id
    state = fold(record([granted(at(0)), stop, granted(at(2)), held, *events]))
    assert not state.pending_candidates()
    d = decide(state, PROMO, at(5) + timedelta(minutes=1))
    assert d.reason is Reason.REVOKED_BRAND_WIDE, d  # the opt-in at 2 does not come back
    # What a hold dismissed would have let through: the opt-in after the opt-out.
    dismissed = fold(record([granted(at(0)), stop, granted(at(2))]))
    assert decide(dismissed, PROMO, at(5) + timedelta(minutes=1)).allowed


async def _hold_live(app) -> str:
    """Hold ``_live()``, refused as stamped ahead, and wait until the view has it."""
    refusal = InvalidRequest("occurred_at", "is in the future")
    with pytest.raises(HeldForReview) as held:
        await app.writes.hold_refused_opt_out(_live(), refusal, lambda brand: None)
    token = ConsistencyToken.decode(held.value.metadata["consistency_token"])
    assert await app.guard.wait_for_token(token)
    return held.value.metadata["candidate_event_id"]


async def test_a_brand_wide_opt_out_resolves_the_live_hold_it_covers():
    async with running() as (app, _):
        await app.writes.record(define())
        await app.writes.record(opt_in("r-in"))
        hold_id = await _hold_live(app)
        one = RecordOptOut("r-one", PHONE, BRAND, "promo", RevocationChannel.API, at(2))
        scoped = await app.writes.record(one, recorded_by="acme-app")
        assert await app.guard.wait_for_token(scoped.token)
        state = (await app.view.subscriber_states(BRAND, [PHONE]))[PHONE]
        assert [str(c.event_id) for c in state.pending_candidates()] == [hold_id]  # one campaign
        every = replace(one, request_id="r-every", campaign=None)

        written = await app.writes.record(every, recorded_by="acme-app")
        await app.writes.record(every, recorded_by="acme-app")  # a retry resolves nothing new

        checked = await app.checks.can_send(PHONE, BRAND, "promo", token=written.token)
        assert checked.decision.reason is Reason.REVOKED_BRAND_WIDE, checked.decision
        history = await app.view.history(PHONE, BRAND)
        resolutions = [r.event for r in history if isinstance(r.event, RevocationCandidateResolved)]
        assert [str(r.candidate_event_id) for r in resolutions] == [hold_id]
        assert resolutions[0].resolved_by == f"opt-out {written.event_ids[0]}"
        assert resolutions[0].recorded_by == "acme-app"


async def test_a_retried_opt_out_leaves_a_hold_recorded_after_it():
    """Only holds before the opt-out in ledger order are its to resolve: a hold
    recorded after it is a later STOP's, which a retry of the opt-out, reading a newer
    state, used to resolve in the retry's name."""
    async with running() as (app, _):
        await app.writes.record(define())
        await app.writes.record(opt_in("r-in"))
        every = RecordOptOut("r-every", PHONE, BRAND, None, RevocationChannel.API, at(2))
        first = await app.writes.record(every, recorded_by="acme-app")
        assert await app.guard.wait_for_token(first.token)
        hold_id = await _hold_live(app)

        again = await app.writes.record(every, recorded_by="acme-app")

        assert again.event_ids == first.event_ids
        assert await app.guard.wait_for_token(again.token)
        state = (await app.view.subscriber_states(BRAND, [PHONE]))[PHONE]
        assert [str(c.event_id) for c in state.pending_candidates()] == [hold_id]


@pytest.mark.parametrize("campaign", [None, "promo"], ids=["every campaign", "STOPALL under one"])
async def test_an_imported_opt_out_of_every_campaign_resolves_the_live_hold_it_covers(campaign):
    """An opt-out of every campaign imported answers a live hold as the same opt-out
    by ``RecordOptOut`` does: it left the hold denying for a reviewer, so CanSend said
    ``REVOCATION_PENDING_REVIEW`` where the write said ``REVOKED_BRAND_WIDE``, and an
    opt-in after it allowed the number by one path and not by the other."""
    async with running() as (app, _):
        await app.writes.record(define())
        await app.writes.record(opt_in("r-in"))
        hold_id = await _hold_live(app)
        every = RecordOptOut(
            "imp-every", PHONE, BRAND, campaign, RevocationChannel.KEYWORD, at(2), "STOPALL"
        )
        usecases = UseCases.build(app.ledger, app.view, app.guard, clock=lambda: NOW)
        imports = usecases.start_import(recorded_by="acme-app")

        result = await imports.chunk([Item(0, every, request_id=every.request_id)])
        again = await imports.chunk([Item(0, every, request_id=every.request_id)])

        assert (result.imported, result.refusals, again.present) == (1, [], 1)
        checked = await app.checks.can_send(PHONE, BRAND, "promo", token=result.token)
        assert checked.decision.reason is Reason.REVOKED_BRAND_WIDE, checked.decision
        history = await app.view.history(PHONE, BRAND)
        resolutions = [r.event for r in history if isinstance(r.event, RevocationCandidateResolved)]
        assert [str(r.candidate_event_id) for r in resolutions] == [hold_id]
        (revoked_id,) = [
            str(r.event.event_id) for r in history if r.event.request_id == "imp-every"
        ]
        assert resolutions[0].resolved_by == f"opt-out {revoked_id}"
        assert resolutions[0].recorded_by == "acme-app"
