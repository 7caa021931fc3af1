"""Turning requests into facts: validation, idempotent ids, inbound handling."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import fields, replace
from datetime import time, timedelta
from zoneinfo import ZoneInfo

import pytest

from ledger.campaigns import PROOF_TEMPLATE_FIELDS, CampaignPolicy, FrequencyCap, QuietHours
from ledger.commands import (
    TEXT_LIMITS,
    ChangeCampaignPolicy,
    DefineCampaign,
    HandleInboundMessage,
    RecordAgeVerification,
    RecordDeliveryOutcome,
    RecordMessageSent,
    RecordMessagesSent,
    RecordOptIn,
    RecordOptOut,
    RecordReconfirmation,
    RecordSubscriberLocation,
    ReplyKind,
    ResolveRevocationCandidate,
    SentMessage,
    check_consent_after_opt_outs,
    check_required_proof,
    covered_hold_resolved,
    event_id_for,
    fingerprint_as_spelled,
    handle_inbound,
    request_fingerprint,
    revoked_after_held,
    to_events,
    unattributed_opt_out,
)
from ledger.errors import (
    InvalidCampaignPolicy,
    InvalidPhoneNumber,
    InvalidRequest,
    MissingProofError,
    PurchasedListError,
)
from ledger.events import (
    CandidateResolution,
    CollectionMethod,
    ConsentGranted,
    ConsentProof,
    ConsentResumed,
    ConsentRevoked,
    ConsentTier,
    DeliveryOutcome,
    InboundMessageReceived,
    ListSource,
    MessageKind,
    ReliedAnswer,
    RevocationCandidateFlagged,
    RevocationChannel,
    is_21_plus,
)
from ledger.keywords import Intent
from ledger.personal_data import ERASED, SEALED
from ledger.policy import Reason, decide
from ledger.retention import (
    PlaceLegalHold,
    ReleaseLegalHold,
    RequestErasure,
    Retention,
    erasure_event,
    erasure_verdict,
    hold_event,
)
from ledger.state import fold
from ledger.validation import (
    _OPENS_NO_PLACEHOLDER,
    _TYPED_PROOF,
    PLACEHOLDER_WORDS,
    is_blank,
)
from tests.builders import BRAND, PHONE, at, campaign, granted, proof, record, revoked
from tests.builders import opt_in as an_opt_in

NOW = at(60)


def opt_in(**changes):
    """An opt-in whose number is written as people write it, not in E.164."""
    return an_opt_in(at(0), **{"phone": "+1 (415) 555-2671", **changes})


def test_opt_in_normalises_the_number_to_e164():
    (event,) = to_events(opt_in(), NOW)
    assert isinstance(event, ConsentGranted) and event.phone == PHONE


def test_the_same_request_id_gives_the_same_event_id():
    assert to_events(opt_in(), NOW)[0].event_id == to_events(opt_in(), NOW)[0].event_id
    other = to_events(opt_in(request_id="req-2"), NOW)[0]
    assert other.event_id != to_events(opt_in(), NOW)[0].event_id


@pytest.mark.parametrize("source", [ListSource.PURCHASED, ListSource.RENTED, ListSource.SHARED])
def test_consent_from_a_bought_list_is_refused(source):
    with pytest.raises(PurchasedListError) as err:
        to_events(opt_in(source=source), NOW)
    assert err.value.field == "source"


@pytest.mark.parametrize("missing", ["name", "ip_address", "form_url", "screenshot_sha256"])
def test_web_form_consent_without_a_proof_field_is_refused(missing):
    with pytest.raises(MissingProofError) as err:
        to_events(opt_in(proof=proof(**{missing: ""})), NOW)
    assert err.value.field == f"proof.{missing}"


def test_consent_wording_may_be_given_as_hash_and_version():
    p = proof(consent_text="", consent_text_sha256="ab" * 32, consent_text_version="v3")
    assert to_events(opt_in(proof=p), NOW)


def test_consent_without_wording_is_refused():
    with pytest.raises(MissingProofError) as err:
        to_events(opt_in(proof=proof(consent_text="")), NOW)
    assert err.value.field == "proof.consent_text"


def test_keyword_opt_in_needs_the_inbound_message_as_collection_detail():
    p = ConsentProof(registered_at=at(0), consent_text="Reply YES to join")
    with pytest.raises(MissingProofError):
        to_events(opt_in(method=CollectionMethod.KEYWORD_REPLY, proof=p), NOW)
    ok = replace(p, collection_detail="inbound SM123 'JOIN' to +12125551234")
    assert to_events(opt_in(method=CollectionMethod.KEYWORD_REPLY, proof=ok), NOW)


@pytest.mark.parametrize("phone", ["", "hello", "+1555123456", "4155552671"])
def test_unparseable_or_invalid_numbers_are_refused(phone):
    with pytest.raises(InvalidPhoneNumber) as err:
        to_events(opt_in(phone=phone), NOW)
    assert err.value.field == "phone"


def test_event_ids_name_the_whole_request_and_not_how_its_times_are_written():
    first = to_events(opt_in(), NOW)[0].event_id
    # The same instants in another time zone object: the same request, the same id.
    la = ZoneInfo("America/Los_Angeles")
    same = opt_in(occurred_at=at(0).astimezone(la), proof=proof(at(0).astimezone(la)))
    assert to_events(same, NOW)[0].event_id == first
    # Anything else the request says makes it another request, with other ids.
    for other in (
        opt_in(campaign="alerts"),
        opt_in(occurred_at=at(1), proof=proof(at(1))),
        opt_in(proof=proof(email="someone@example.com")),
        opt_in(tier=ConsentTier.INFORMATIONAL),
    ):
        assert to_events(other, NOW)[0].event_id != first


def test_event_ids_are_pinned_so_a_retry_across_an_upgrade_stays_a_retry():
    # Golden values: if one changes, retries spanning the release record facts again
    # (README, "Idempotent writes"). Change them only knowingly.
    policy = CampaignPolicy(sender_numbers=("+12125551234",))
    assert {
        str(to_events(opt_in(), NOW)[0].event_id),
        str(to_events(stop_at("req-2", at(1)), NOW)[0].event_id),
        str(to_events(DefineCampaign("def-1", BRAND, "promo", policy, at(0)), NOW)[0].event_id),
    } == {
        "55a2f7e1-f07d-5579-bac4-79c3dedcd8ce",
        "2d9baa5c-d2ac-5fda-84b5-5d408c768c10",
        "bb5c8a37-1721-5a32-a83f-ca2a9b209fc2",
    }
    # The opt-in spells its number "+1 (415) ...": its id is now its E.164 form's, and
    # the id it had before numbers were digested in E.164 is still found from it, so a
    # retry of a request recorded then is answered as that request.
    assert str(to_events(opt_in(phone="+14155552671"), NOW)[0].event_id) == (
        "55a2f7e1-f07d-5579-bac4-79c3dedcd8ce"
    )
    as_spelled = fingerprint_as_spelled(opt_in())
    assert as_spelled is not None and fingerprint_as_spelled(opt_in(phone="+14155552671")) is None
    assert str(event_id_for("req-1", 0, BRAND, as_spelled)) == (
        "dfafb060-f43a-5f65-8816-cc0c57d3707e"
    )


def test_a_batch_of_sends_has_pinned_ids_too():
    # Golden values, as above: a batch digests nested messages, enums, an answer relied
    # on and instants down to the microsecond (``_canonical`` writes each by its type).
    evidence = "0c6f7d1e-4b8a-5c2d-9e3f-1a2b3c4d5e6f"
    relied = ReliedAnswer("subscribers:3:1042", True, "consent_active", (evidence,))
    cmd = RecordMessagesSent(
        "batch-1",
        BRAND,
        (
            SentMessage(PHONE, "promo", "SM1", MessageKind.REGULAR, at(1), True, True, relied),
            SentMessage(
                PHONE,
                "promo",
                "SM2",
                MessageKind.HELP_REPLY,
                at(2) + timedelta(microseconds=7),
                from_number="+12125551234",
            ),
        ),
    )
    assert request_fingerprint(cmd) == "70998cbd5780f44b776f3c7510bcea2f"
    assert [str(e.event_id) for e in to_events(cmd, NOW)] == [
        "6a83b745-71a9-50e9-9ae8-3ea9f0e380ab",
        "0e8d9ece-12c3-5ed8-bfb9-d44a84e10f33",
    ]
    # The value pinned before evidence had to name an event: the digest is unchanged.
    short = dataclasses.replace(relied, evidence=("0c6f7d1e",))
    first = dataclasses.replace(cmd.messages[0], relied_on=short)
    earlier = dataclasses.replace(cmd, messages=(first, cmd.messages[1]))
    assert request_fingerprint(earlier) == "2c1ceeb2dfbd4acc0c8ac26017303de4"


def test_a_batch_spelling_its_numbers_otherwise_has_the_fingerprint_of_its_e164_form():
    # The batch reads each number once and digests the form it read: the same digest
    # ``request_fingerprint`` makes of the whole request, numbers spelled as sent.
    evidence = "0c6f7d1e-4b8a-5c2d-9e3f-1a2b3c4d5e6f"
    relied = ReliedAnswer("subscribers:3:1042", True, "consent_active", (evidence,))
    spelled = SentMessage(
        "+1 (415) 555-2671", "promo", "SM1", MessageKind.REGULAR, at(1), True, True, relied
    )
    plain = SentMessage(PHONE, "promo", "SM2", MessageKind.REGULAR, at(2), relied_on=relied)
    sender = SentMessage(
        PHONE, "promo", "SM3", MessageKind.HELP_REPLY, at(3), from_number="+1 212-555-1234"
    )
    cmd = RecordMessagesSent("batch-2", BRAND, (spelled, plain, sender))
    fingerprint = request_fingerprint(cmd)
    events = to_events(cmd, NOW)
    assert [e.request_fingerprint for e in events] == [fingerprint] * 3
    assert [e.event_id for e in events] == [
        event_id_for("batch-2", i, BRAND, fingerprint) for i in range(3)
    ]
    assert [(e.phone, e.from_number) for e in events] == [
        (PHONE, ""),
        (PHONE, ""),
        (PHONE, "+12125551234"),
    ]
    assert events[0].relied_on == relied and events[1].relied_on == relied


def test_a_bad_message_among_messages_sharing_its_campaign_and_answer_is_named_alone():
    # What a call's messages share is checked once a call: a message refused for one of
    # its own fields still names it, and the ones around it pass.
    relied = ReliedAnswer("subscribers:3:1042", True, "consent_active", ())
    good = SentMessage(PHONE, "promo", "SM1", MessageKind.REGULAR, at(1), relied_on=relied)
    bad_relied = ReliedAnswer("subscribers:3:1042", False, "consent_active", ())
    cmd = RecordMessagesSent(
        "batch-3",
        BRAND,
        (
            good,
            replace(good, message_id="SM2", phone="+1415555"),
            replace(good, message_id="SM3", campaign="Not A Name"),
            replace(good, message_id="SM4", relied_on=bad_relied),
            replace(good, message_id="SM5"),
        ),
    )
    with pytest.raises(InvalidPhoneNumber) as refused:  # the first refusal's type
        to_events(cmd, NOW)
    assert [field for field, _ in refused.value.violations] == [
        "messages[1].phone",
        "messages[2].campaign",
        "messages[3].relied_on.allowed",
    ]


def test_a_field_added_later_with_its_default_changes_no_fingerprint():
    cmd = stop_at("req-2", at(1))
    fields = [(f.name, f.type, f) for f in dataclasses.fields(RecordOptOut)]
    later = dataclasses.make_dataclass(
        "RecordOptOut", [*fields, ("locale", str, dataclasses.field(default=""))], frozen=True
    )
    same = later(**{f.name: getattr(cmd, f.name) for f in dataclasses.fields(cmd)})
    assert request_fingerprint(same) == request_fingerprint(cmd)
    assert request_fingerprint(replace(same, locale="fr")) != request_fingerprint(cmd)


def stop_at(request_id, occurred_at):
    return RecordOptOut(request_id, PHONE, BRAND, "promo", RevocationChannel.API, occurred_at)


def test_an_opt_in_stamped_ahead_of_the_clock_takes_its_place_now():
    """A consent cannot have been given after the ledger held it: one stamped ahead
    (within the skew allowed) would outrank an opt-out made after it was recorded."""
    ahead = NOW + timedelta(minutes=4)
    (granted_now,) = to_events(opt_in(occurred_at=ahead, proof=proof(ahead)), NOW)
    assert granted_now.occurred_at == NOW and granted_now.proof.registered_at == ahead


def test_an_opt_out_stamped_ahead_keeps_the_time_it_said_beside_its_place():
    """Placed when recorded, an opt-out stamped ahead keeps the time it said, so a
    consent stamped between the two can be told from one after it; one that is not
    ahead keeps none. A retry once the clock has passed its time is the same request:
    the same event id, placed at its own time now."""
    ahead = NOW + timedelta(seconds=40)
    (stop,) = to_events(stop_at("stop-ahead", ahead), NOW)
    assert isinstance(stop, ConsentRevoked)
    assert (stop.occurred_at, stop.stated_at, stop.stated) == (NOW, ahead, ahead)
    (retried,) = to_events(stop_at("stop-ahead", ahead), NOW + timedelta(minutes=1))
    assert retried.event_id == stop.event_id
    assert retried.request_fingerprint == stop.request_fingerprint
    assert (retried.occurred_at, retried.stated_at) == (ahead, None)
    (on_time,) = to_events(stop_at("stop-on-time", NOW), NOW)
    assert (on_time.stated_at, on_time.stated) == (None, NOW)
    # A STOP texted ahead, and a reviewer's "revoked" stamped ahead, keep theirs too.
    outcome = handle_inbound(
        HandleInboundMessage("in-stop", PHONE, "+14155550100", "STOP", "SM9", ahead),
        campaign(),
        fold([]),
        NOW,
    )
    (texted,) = [e for e in outcome.events if isinstance(e, ConsentRevoked)]
    assert (texted.occurred_at, texted.stated_at) == (NOW, ahead)
    candidate = str(uuid.uuid4())
    resolve = ResolveRevocationCandidate(
        "resolve-1", PHONE, BRAND, candidate, CandidateResolution.REVOKED, ahead
    )
    revoked_by_review = to_events(resolve, NOW)[0]
    assert isinstance(revoked_by_review, ConsentRevoked)
    assert (revoked_by_review.occurred_at, revoked_by_review.stated_at) == (NOW, ahead)


def test_a_held_opt_out_stamped_ahead_keeps_the_time_it_said():
    """An opt-out held for review (an undefined campaign, a reply that reads like one)
    stamped ahead is placed now and keeps the time it said, as an opt-out does."""
    ahead = NOW + timedelta(seconds=40)
    cmd = RecordOptOut("held-1", PHONE, BRAND, "nope", RevocationChannel.API, ahead)
    (held,) = unattributed_opt_out(cmd, NOW)
    assert isinstance(held, RevocationCandidateFlagged)
    assert (held.occurred_at, held.stated_at, held.stated) == (NOW, ahead, ahead)
    (on_time,) = unattributed_opt_out(replace(cmd, occurred_at=NOW), NOW)
    assert (on_time.stated_at, on_time.stated) == (None, NOW)
    outcome = handle_inbound(
        HandleInboundMessage("in-1", PHONE, "+14155550100", "can you not message me", "SM9", ahead),
        campaign(),
        fold([]),
        NOW,
    )
    (flagged,) = [e for e in outcome.events if isinstance(e, RevocationCandidateFlagged)]
    assert (flagged.occurred_at, flagged.stated_at) == (NOW, ahead)


def test_a_revoked_resolution_takes_effect_no_earlier_than_the_words_it_reviewed():
    """Its ConsentRevoked is at the later of the resolution's time and the time the
    candidate said: revoked at T+10 s, a hold stamped T+40 s is placed at T+10 s with
    T+40 s kept; revoked at T+60 s but dated T+1 s, it is placed at T+40 s. The ids
    and the resolution itself stay as the request made them."""
    t = NOW
    said = t + timedelta(seconds=40)
    (held,) = unattributed_opt_out(
        RecordOptOut("held-1", PHONE, BRAND, "nope", RevocationChannel.API, said), t
    )
    assert isinstance(held, RevocationCandidateFlagged)

    def resolved(dated, now):
        cmd = ResolveRevocationCandidate(
            "resolve-1", PHONE, BRAND, str(held.event_id), CandidateResolution.REVOKED, dated
        )
        made = to_events(cmd, now)
        return made, revoked_after_held(made, held, now)

    made, (soon, resolution) = resolved(t + timedelta(seconds=10), t + timedelta(seconds=10))
    assert isinstance(soon, ConsentRevoked)
    assert (soon.occurred_at, soon.stated_at) == (t + timedelta(seconds=10), said)
    assert resolution == made[1]
    assert (soon.event_id, soon.request_fingerprint) == (
        made[0].event_id,
        made[0].request_fingerprint,
    )
    _, (late, _) = resolved(t + timedelta(seconds=1), t + timedelta(seconds=60))
    assert (late.occurred_at, late.stated_at) == (said, None)
    # A resolution later than what it reviewed keeps its own time; a dismissal has none.
    made, placed = resolved(t + timedelta(seconds=50), t + timedelta(seconds=60))
    assert placed == made
    dismissed = ResolveRevocationCandidate(
        "resolve-2", PHONE, BRAND, str(held.event_id), CandidateResolution.DISMISSED, t
    )
    assert revoked_after_held(to_events(dismissed, t), held, t) == to_events(dismissed, t)
    # An opt-out that covers a hold stamped ahead resolves it no earlier, too.
    refused = replace(held, request_id="refused-x", unattributed=False)
    (covered, _) = covered_hold_resolved(revoked(t), refused, t + timedelta(seconds=5))
    assert isinstance(covered, ConsentRevoked)
    assert (covered.occurred_at, covered.stated_at) == (t + timedelta(seconds=5), said)


def _stop_placed(placed, stated=None):
    return replace(revoked(placed), stated_at=stated)


def test_a_consent_stated_before_an_opt_out_placed_before_it_is_refused():
    """An opt-out stamped 40 s ahead took its place at T; a consent stated T+20 s would
    be placed after it and outrank it, though by their own times the opt-out came
    later: refused on occurred_at, recorded 25 s later or backfilled a week later.
    A consent stated after the opt-out's time, or placed no later than the opt-out
    (the fold ranks it first anyway), is not."""
    t = NOW
    stop = _stop_placed(t, t + timedelta(seconds=40))
    between = t + timedelta(seconds=20)
    for now in (t + timedelta(seconds=25), t + timedelta(days=7)):
        with pytest.raises(InvalidRequest) as err:
            check_consent_after_opt_outs([stop], between, between, now)
        assert err.value.field == "occurred_at"
        assert (t + timedelta(seconds=40)).isoformat() in err.value.reason
    # At the very time the opt-out said: the opt-out wins a tie, so that is refused too.
    at_its_time = t + timedelta(seconds=40)
    with pytest.raises(InvalidRequest):
        check_consent_after_opt_outs([stop], at_its_time, at_its_time, t + timedelta(minutes=1))
    after = t + timedelta(seconds=41)
    check_consent_after_opt_outs([stop], after, after, t + timedelta(minutes=1))
    # Stated before the opt-out's place: placed before it, it allows nothing after it.
    check_consent_after_opt_outs([stop], t - timedelta(seconds=1), t - timedelta(seconds=1), t)
    # An opt-out that took its place at its own time keeps no stated time: nothing to tell.
    check_consent_after_opt_outs([_stop_placed(t)], between, between, between)


def test_a_consent_stamped_ahead_in_doubt_of_an_opt_out_that_keeps_no_stated_time():
    """An opt-out recorded before stated times were kept may have been stamped ahead:
    an opt-in stamped ahead within the skew of it is refused when asked to doubt it."""
    t = NOW
    ahead = t + timedelta(minutes=1)
    unstated = _stop_placed(t - timedelta(minutes=1))
    with pytest.raises(InvalidRequest):
        check_consent_after_opt_outs([unstated], ahead, t, t, unstated_in_doubt=True)
    check_consent_after_opt_outs([unstated], ahead, t, t)
    check_consent_after_opt_outs(
        [_stop_placed(t - timedelta(minutes=1), t)], ahead, t, t, unstated_in_doubt=True
    )


def test_a_timestamp_in_the_future_beyond_the_skew_is_refused():
    def stop(occurred_at):
        return RecordOptOut("req-2", PHONE, BRAND, "promo", RevocationChannel.API, occurred_at)

    with pytest.raises(InvalidRequest) as err:
        to_events(stop(NOW + timedelta(minutes=6)), NOW)
    assert err.value.field == "occurred_at"
    assert to_events(stop(NOW + timedelta(minutes=4)), NOW)
    with pytest.raises(InvalidRequest) as err:  # an opt-in's, too
        to_events(opt_in(occurred_at=NOW + timedelta(minutes=6)), NOW)
    assert err.value.field == "occurred_at"


def test_a_consent_keeps_the_time_it_was_given_however_late_it_is_recorded():
    # Registered at 09:00, imported at 11:00: stamped 11:00, it would outrank an
    # opt-out made at 10:00.
    registered = at(0)
    late = opt_in(proof=proof(registered), occurred_at=registered + timedelta(hours=2))
    with pytest.raises(InvalidRequest) as err:
        to_events(late, NOW + timedelta(hours=2))
    assert err.value.field == "occurred_at"
    assert "proof.registered_at" in err.value.reason
    early = opt_in(proof=proof(registered), occurred_at=registered - timedelta(minutes=6))
    with pytest.raises(InvalidRequest):
        to_events(early, NOW)
    for skew in (timedelta(minutes=5), -timedelta(minutes=5), timedelta(0)):
        (event,) = to_events(opt_in(proof=proof(registered), occurred_at=registered + skew), NOW)
        assert event.occurred_at == registered + skew


def test_an_age_record_that_contradicts_its_own_date_of_birth_is_refused():
    under_21 = RecordAgeVerification(
        "age-1", PHONE, BRAND, "id-scan", at(0), date_of_birth="2010-05-01", verified_21_plus=True
    )
    with pytest.raises(InvalidRequest) as err:
        to_events(under_21, NOW)
    assert err.value.field == "verified_21_plus"
    (event,) = to_events(replace(under_21, date_of_birth="1990-05-01"), NOW)
    assert is_21_plus(event.verified_21_plus, event.date_of_birth, NOW)
    # Recorded before the check: the date of birth decides, not the flag.
    assert not is_21_plus(True, "2010-05-01", NOW)


def test_a_naive_timestamp_is_refused():
    with pytest.raises(InvalidRequest):
        to_events(opt_in(occurred_at=at(0).replace(tzinfo=None)), NOW)


@pytest.mark.parametrize("brand", ["", "Acme", "a b", "x" * 65])
def test_brand_ids_are_validated(brand):
    with pytest.raises(InvalidRequest) as err:
        to_events(opt_in(brand=brand), NOW)
    assert err.value.field == "brand"


def test_missing_request_id_is_refused():
    with pytest.raises(InvalidRequest) as err:
        to_events(opt_in(request_id=""), NOW)
    assert err.value.field == "request_id"


def test_an_overlong_request_id_is_refused_for_its_length_not_as_missing():
    with pytest.raises(InvalidRequest) as err:
        to_events(opt_in(request_id="r" * 129), NOW)
    assert err.value.field == "request_id"
    assert err.value.reason == "must be at most 128 characters, got 129"
    assert to_events(opt_in(request_id="r" * 128), NOW)


def test_opt_out_without_campaign_is_brand_wide():
    (event,) = to_events(RecordOptOut("r", PHONE, BRAND, None, RevocationChannel.CALL, at(0)), NOW)
    assert isinstance(event, ConsentRevoked) and event.brand_wide


def test_age_verification_needs_a_date_or_the_21_plus_flag():
    with pytest.raises(InvalidRequest) as err:
        to_events(RecordAgeVerification("r", PHONE, BRAND, "id-scan", at(0)), NOW)
    assert err.value.field == "date_of_birth"


@pytest.mark.parametrize("method", ["", " ", "\u200b", "\u3164", "\u2800"])
def test_an_age_verification_naming_no_method_a_reader_can_see_is_refused(method):
    # A Hangul filler or a blank Braille pattern named no way of verifying, yet opened
    # the age gate of an alcohol or gambling campaign.
    cmd = RecordAgeVerification("r", PHONE, BRAND, method, at(0), verified_21_plus=True)
    with pytest.raises(InvalidRequest) as err:
        to_events(cmd, NOW)
    assert err.value.field == "method"


def test_inconsistent_campaign_policy_is_refused():
    bad = CampaignPolicy(
        quiet_hours=QuietHours(
            start=at(0).time().replace(hour=21), end=at(0).time().replace(hour=8)
        )
    )
    with pytest.raises(InvalidCampaignPolicy) as err:
        to_events(DefineCampaign("r", BRAND, "promo", bad, at(0)), NOW)
    assert err.value.field == "policy.quiet_hours"


@pytest.mark.parametrize(("start", "end"), [(7, 21), (8, 22), (0, 23)])
def test_a_campaign_may_only_narrow_the_default_quiet_hours(start, end):
    wide = CampaignPolicy(quiet_hours=QuietHours(time(start), time(end)))
    with pytest.raises(InvalidCampaignPolicy) as err:
        to_events(DefineCampaign("r", BRAND, "promo", wide, at(0)), NOW)
    assert err.value.field == "policy.quiet_hours" and "08:00-21:00" in err.value.reason
    narrow = CampaignPolicy(quiet_hours=QuietHours(time(9), time(20)))
    assert to_events(DefineCampaign("r", BRAND, "promo", narrow, at(0)), NOW)


def test_cap_windows_longer_than_a_month_are_refused():
    bad = CampaignPolicy(frequency_caps=(FrequencyCap(4, timedelta(days=60)),))
    with pytest.raises(InvalidCampaignPolicy) as err:
        to_events(DefineCampaign("r", BRAND, "promo", bad, at(0)), NOW)
    assert err.value.field == "policy.frequency_caps[0].window"


@pytest.mark.parametrize(
    ("field", "window", "reason"),
    [
        ("opt_out_confirmation_window", timedelta(days=3650), "at most 5 minutes"),
        ("opt_out_confirmation_window", timedelta(minutes=5, seconds=1), "at most 5 minutes"),
        ("opt_out_confirmation_window", timedelta(0), "must be positive"),
        ("opt_out_confirmation_window", timedelta(minutes=-1), "must be positive"),
        ("conversation_window", timedelta(hours=24, seconds=1), "at most 24 hours"),
        ("conversation_window", timedelta(days=3650), "at most 24 hours"),
        ("conversation_window", timedelta(0), "must be positive"),
        ("first_message_window", timedelta(days=30, seconds=1), "at most 30 days"),
        ("first_message_window", timedelta(days=3650), "at most 30 days"),
        ("first_message_window", timedelta(0), "must be positive"),
    ],
)
def test_a_window_that_allows_sends_without_consent_may_only_be_shortened(field, window, reason):
    wide = replace(CampaignPolicy(), **{field: window})
    with pytest.raises(InvalidCampaignPolicy) as err:
        to_events(DefineCampaign("r", BRAND, "promo", wide, at(0)), NOW)
    assert err.value.field == f"policy.{field}" and reason in err.value.reason
    short = replace(CampaignPolicy(), **{field: timedelta(minutes=2)})
    assert to_events(DefineCampaign("r", BRAND, "promo", short, at(0)), NOW)


def _inbound(body: str, request_id: str = "in-1") -> HandleInboundMessage:
    return HandleInboundMessage(request_id, PHONE, "+12125551234", body, "SM1", at(10))


def test_inbound_stop_records_the_message_and_a_campaign_revocation():
    out = handle_inbound(_inbound("Stop"), campaign(), fold(record([granted(at(0))])), NOW)
    assert [type(e) for e in out.events] == [InboundMessageReceived, ConsentRevoked]
    assert out.events[1].campaign == "promo" and out.events[1].in_reply_to == "SM1"
    assert out.reply == ReplyKind.OPT_OUT_CONFIRMATION


def test_an_opt_out_or_a_text_stamped_ahead_of_the_clock_takes_its_place_now():
    """Ahead, an opt-out had its one confirmation refused until its time came, and a
    START texted after it was outranked; a text's facts keep one time."""
    ahead = NOW + timedelta(minutes=4)
    (stop,) = to_events(stop_at("req-2", ahead), NOW)
    assert stop.occurred_at == NOW
    text = replace(_inbound("STOP"), occurred_at=ahead)
    out = handle_inbound(text, campaign(), fold(record([granted(at(0))])), NOW)
    assert [e.occurred_at for e in out.events] == [NOW, NOW]
    earlier = replace(_inbound("START"), occurred_at=NOW - timedelta(minutes=1))
    out = handle_inbound(earlier, campaign(), fold([]), NOW)
    assert [e.occurred_at for e in out.events] == [earlier.occurred_at] * 2


def test_a_reconfirmation_age_or_location_stamped_ahead_takes_its_place_now():
    """Ahead, an age verification let CanSend allow an age-gated campaign at once,
    while CanSendAsOf and the sweep, for that moment, still found none."""
    ahead, earlier = NOW + timedelta(minutes=4), NOW - timedelta(minutes=1)
    for when, placed in ((ahead, NOW), (earlier, earlier)):
        commands = (
            RecordReconfirmation("r", PHONE, BRAND, "promo", RevocationChannel.WEB, when),
            RecordAgeVerification("r", PHONE, BRAND, "id-scan", when, verified_21_plus=True),
            RecordSubscriberLocation("r", PHONE, BRAND, "TX", when),
        )
        for command in commands:
            (event,) = to_events(command, NOW)
            assert event.occurred_at == placed, type(command).__name__


def test_a_resolution_stamped_ahead_of_the_clock_takes_its_place_now():
    """Ahead, a dismissal lifted the hold at once for CanSend, while CanSendAsOf and
    the sweep, reading world time, still held it: an allowed send judged not allowed."""
    ahead = NOW + timedelta(minutes=4)
    candidate = str(uuid.uuid4())
    for resolution in CandidateResolution:
        resolve = ResolveRevocationCandidate("r", PHONE, BRAND, candidate, resolution, ahead)
        assert {e.occurred_at for e in to_events(resolve, NOW)} == {NOW}, resolution
    earlier = NOW - timedelta(minutes=1)
    resolve = ResolveRevocationCandidate(
        "r", PHONE, BRAND, candidate, CandidateResolution.REVOKED, earlier
    )
    assert {e.occurred_at for e in to_events(resolve, NOW)} == {earlier}


def test_inbound_stopall_revokes_brand_wide():
    out = handle_inbound(_inbound("STOPALL"), campaign(), fold([]), NOW)
    assert out.events[1].campaign is None and out.intent is Intent.OPT_OUT_BRAND_WIDE
    # A STOPALL covers every campaign: the campaigns that held the number add nothing.
    out = handle_inbound(_inbound("STOPALL"), campaign(), fold([]), NOW, ["old"])
    assert [getattr(e, "campaign", "") for e in out.events[1:]] == [None]


def test_a_stop_sent_before_the_number_moved_revokes_the_campaigns_that_held_it_then():
    out = handle_inbound(_inbound("STOP"), campaign(), fold([]), NOW, ["old", "promo", "b"])
    revoked = out.events[1:]
    assert [(type(e), e.campaign) for e in revoked] == [
        (ConsentRevoked, "promo"), (ConsentRevoked, "b"), (ConsentRevoked, "old")
    ]  # fmt: skip
    assert len({e.event_id for e in out.events}) == 4
    # Sent to one other campaign's number, the STOP is that campaign's text; a text
    # that is no STOP is its text alone (its conversation, its HELP).
    out = handle_inbound(_inbound("STOP"), campaign(), fold([]), NOW, ["old"])
    assert [e.campaign for e in out.events] == ["old", "old", "promo"]
    for body in ("HELP", "what time do you open?"):
        out = handle_inbound(_inbound(body), campaign(), fold([]), NOW, ["old"])
        assert [(type(e), e.campaign) for e in out.events] == [(InboundMessageReceived, "old")]
        assert out.campaign == "old"


def test_inbound_start_without_prior_consent_owes_no_reply_and_allows_nothing():
    out = handle_inbound(_inbound("START"), campaign(), fold([]), NOW)
    # The START is recorded as what it asked for; the fold finds no grant to resume.
    assert [(type(e), getattr(e, "campaign", None)) for e in out.events[1:]] == [
        (ConsentResumed, "promo")
    ]
    assert out.reply == ReplyKind.NONE and out.notes
    after = fold(record(out.events))
    assert not decide(after, campaign(), NOW + timedelta(minutes=1)).allowed


def test_inbound_start_records_the_same_facts_whatever_state_it_reads():
    # A view read a moment early (the STOP not applied yet) or late: the same facts.
    history = [granted(at(0)), revoked(at(5), None)]
    states = [fold([]), fold(record(history[:1])), fold(record(history))]
    outcomes = [handle_inbound(_inbound("START"), campaign(), s, NOW) for s in states]
    assert len({tuple(out.events) for out in outcomes}) == 1
    assert [o.reply for o in outcomes] == [
        ReplyKind.NONE,
        ReplyKind.OPT_IN_CONFIRMATION,
        ReplyKind.OPT_IN_CONFIRMATION,
    ]


def test_inbound_start_after_stopall_resumes_only_the_campaign_it_was_sent_to():
    history = [granted(at(0)), granted(at(0), "b"), revoked(at(5), None)]
    s = fold(record(history))
    out = handle_inbound(_inbound("START"), campaign(), s, NOW)
    assert [(type(e), e.campaign) for e in out.events[1:]] == [(ConsentResumed, "promo")]
    after = fold(record(history + out.events))
    later = NOW + timedelta(minutes=1)
    assert decide(after, campaign(), later).allowed
    assert decide(after, campaign("b"), later).reason is Reason.REVOKED_BRAND_WIDE


def test_inbound_start_after_a_campaign_stop_resumes_that_campaign():
    s = fold(record([granted(at(0)), revoked(at(5), "promo")]))
    out = handle_inbound(_inbound("UNSTOP"), campaign(), s, NOW)
    assert out.events[1].campaign == "promo"
    assert out.reply == ReplyKind.OPT_IN_CONFIRMATION


def test_inbound_start_lifts_the_stopall_and_this_campaigns_own_stop_only():
    history = [granted(at(0)), granted(at(0), "b"), revoked(at(5), "promo"), revoked(at(8), None)]
    s = fold(record(history))
    out = handle_inbound(_inbound("START"), campaign(), s, NOW)  # sent to promo's number
    assert [(type(e), e.campaign) for e in out.events[1:]] == [(ConsentResumed, "promo")]
    assert len({e.event_id for e in out.events}) == 2
    after = fold(record(history + out.events))
    later = NOW + timedelta(minutes=1)
    assert decide(after, campaign(), later).allowed
    assert decide(after, campaign("b"), later).reason is Reason.REVOKED_BRAND_WIDE
    out = handle_inbound(_inbound("START"), campaign("b"), s, NOW)  # to b's number
    assert [e.campaign for e in out.events[1:]] == ["b"]
    after = fold(record(history + out.events))
    assert decide(after, campaign("b"), later).allowed
    assert not decide(after, campaign(), later).allowed  # the STOPALL, and its own STOP


def test_inbound_help_asks_for_a_help_reply_and_changes_no_consent():
    out = handle_inbound(_inbound("HELP"), campaign(), fold([]), NOW)
    assert len(out.events) == 1 and out.reply == ReplyKind.HELP


def test_inbound_that_reads_like_an_opt_out_is_flagged():
    out = handle_inbound(_inbound("pls stop texting me"), campaign(), fold([]), NOW)
    assert isinstance(out.events[1], RevocationCandidateFlagged)


def test_inbound_ids_are_stable_for_a_retried_request():
    a = handle_inbound(_inbound("STOP"), campaign(), fold([]), NOW)
    b = handle_inbound(_inbound("STOP"), campaign(), fold([]), NOW)
    assert [e.event_id for e in a.events] == [e.event_id for e in b.events]


# --- free text: bounded, so a fact always fits one ledger record -------------------

LONGEST_SMS = "x" * 1_600  # what carriers deliver at most, as one message


def _requests_with(field: str, value: str) -> list[object]:
    """Every request that has ``field`` (a ``TEXT_LIMITS`` name), holding ``value``."""
    if field.startswith("proof."):
        return [opt_in(proof=proof(**{field.removeprefix("proof."): value}))]
    if field.startswith("policy."):
        policy = replace(CampaignPolicy(), **{field.removeprefix("policy."): value})
        return [DefineCampaign("r", BRAND, "promo", policy, at(0))]
    base: list[object] = [
        RecordOptOut("r", PHONE, BRAND, "promo", RevocationChannel.API, at(0)),
        RecordReconfirmation("r", PHONE, BRAND, "promo", RevocationChannel.WEB, at(0)),
        RecordMessageSent("r", PHONE, BRAND, "promo", "SM1", MessageKind.REGULAR, at(0)),
        RecordDeliveryOutcome("r", PHONE, BRAND, "SM1", DeliveryOutcome.FAILED, at(0)),
        RecordAgeVerification("r", PHONE, BRAND, "id-scan", at(0), verified_21_plus=True),
        ResolveRevocationCandidate(
            "r", PHONE, BRAND, str(uuid.uuid4()), CandidateResolution.DISMISSED, at(0)
        ),
        _inbound("hello"),
        RequestErasure("r", PHONE, BRAND),
        PlaceLegalHold("r", PHONE, BRAND, "smith-v-acme"),
        ReleaseLegalHold("r", PHONE, BRAND, "smith-v-acme"),
    ]
    return [replace(r, **{field: value}) for r in base if field in r.__dataclass_fields__]  # type: ignore[call-overload, attr-defined]


def _build(request: object) -> list[object]:
    if isinstance(request, PlaceLegalHold | ReleaseLegalHold):
        return [hold_event(request, NOW, "law")]
    if isinstance(request, RequestErasure):
        return [erasure_event(request, NOW, erasure_verdict([], Retention(), NOW), "dpo")]
    if isinstance(request, HandleInboundMessage):
        return list(handle_inbound(request, campaign(), fold([]), NOW).events)
    return list(to_events(request, NOW))  # type: ignore[arg-type]


@pytest.mark.parametrize("field", sorted(TEXT_LIMITS))
def test_free_text_longer_than_its_limit_is_refused_by_field(field):
    limit = TEXT_LIMITS[field]
    requests = _requests_with(field, "é" * (limit + 1))
    assert requests, f"no request has {field}"
    for request in requests:
        with pytest.raises(InvalidRequest) as err:
            _build(request)
        assert err.value.field == field
        assert f"at most {limit:,} characters, got {limit + 1:,}" in err.value.reason
    if field == "policy.category":  # a name from a vocabulary: at its limit it names none
        return
    if field.removeprefix("proof.") in _TYPED_PROOF:  # read by its type: no "é" parses
        return
    for request in _requests_with(field, "é" * limit):
        assert _build(request)  # at the limit is fine


def test_every_free_text_field_of_every_request_has_a_limit():
    checked_otherwise = {
        "request_id",  # 1-128 characters
        "phone",  # phonenumbers refuses over 250 characters, and what is not a number
        "from_phone",
        "to_phone",
        "brand",  # check_name: 1-64 characters
        "campaign",
        "candidate_event_id",  # a UUID
        "date_of_birth",  # an ISO date
        "region",  # proof.region: a USPS code (ledger.regions.normalise_region)
        "from_number",  # E.164, as phone
    }
    requests = (
        RecordOptIn,
        RecordOptOut,
        RecordReconfirmation,
        RecordMessageSent,
        RecordDeliveryOutcome,
        RecordAgeVerification,
        ResolveRevocationCandidate,
        DefineCampaign,
        ChangeCampaignPolicy,
        HandleInboundMessage,
        RequestErasure,
        PlaceLegalHold,
        ReleaseLegalHold,
    )
    text = {
        f.name
        for cls in requests
        for f in fields(cls)
        if f.type in ("str", "str | None") and f.name not in checked_otherwise
    }
    text |= {
        f"proof.{f.name}"
        for f in fields(ConsentProof)
        if f.type == "str" and f.name not in checked_otherwise
    }
    text |= {f"policy.{f.name}" for f in fields(CampaignPolicy) if f.type == "str"}
    assert text == set(TEXT_LIMITS)


def test_a_longest_sms_is_taken_as_an_inbound_body_and_as_an_opt_out_text():
    out = handle_inbound(_inbound(f"STOP {LONGEST_SMS}"), campaign(), fold([]), NOW)
    assert out.events[0].body.endswith(LONGEST_SMS)
    stop = RecordOptOut("r", PHONE, BRAND, None, RevocationChannel.WEB, at(0), LONGEST_SMS * 10)
    assert to_events(stop, NOW)


def test_a_proof_reports_what_it_lacks_of_the_provider_s_template():
    assert proof().template_missing(CollectionMethod.WEB_FORM) == []
    thin = proof(email="", postal_address="", screenshot_ref="")
    assert thin.template_missing(CollectionMethod.WEB_FORM) == [
        "proof.email",
        "proof.postal_address",
        "proof.screenshot_ref",
    ]
    # Another method's details stand for the IP address and the URL, as the template says.
    paper = proof(ip_address="", form_url="", collection_detail="signed at the desk")
    assert paper.template_missing(CollectionMethod.PAPER) == []
    assert paper.template_missing(CollectionMethod.WEB_FORM) == [
        "proof.ip_address",
        "proof.form_url",
    ]


@pytest.mark.parametrize(
    ("value", "blank"),
    [
        ("", True),
        ("   \t\n", True),
        ("\u200b", True),  # a zero-width space (format, Cf)
        ("\u200f \u2060\u00a0", True),  # a bidi mark, a word joiner, a no-break space
        ("a", False),
        ("\u200b a", False),  # invisible first, then something to see
        ("   a.", False),
        # Invisible, though no format character: each was taken as proof.
        ("\u3164", True),  # a Hangul filler (a letter, Lo)
        ("\u115f\u1160\uffa0", True),  # the other Hangul fillers
        ("\u034f", True),  # a combining grapheme joiner
        ("\ufe0f", True),  # a variation selector
        ("\u17b4", True),  # a Khmer inherent vowel
        ("\u2800", True),  # a blank Braille pattern
        ("\u3164a", False),
    ],
)
def test_a_proof_field_of_only_space_and_invisible_characters_is_missing(value, blank):
    assert is_blank(value) is blank
    missing = proof(email=value).template_missing(CollectionMethod.WEB_FORM)
    assert ("proof.email" in missing) is blank


def test_a_web_form_opt_in_whose_proof_is_invisible_characters_is_refused():
    # Every required field a Hangul filler: nothing a reader could see was proof, and
    # the opt-in was recorded and allowed.
    filled = {f: "\u3164" for f in ("name", "ip_address", "form_url", "screenshot_ref")}
    with pytest.raises(MissingProofError) as err:
        to_events(opt_in(proof=proof(**filled)), NOW)
    assert err.value.field == "proof.name"


PLACEHOLDERS = (
    *("N/A", "n/a", "n.a.", "N.A.", " None ", "NULL", "NaN", "undefined", "Unknown"),
    *("TBD", "tba", "test", "not applicable", "Not provided"),
    *("-", "--", ".", "?", "...", "—", "***", "\u0301"),  # no letter or digit at all
    *("x", "XX", "xxx", "0", "000", "0.0.0.0", "::", "0" * 64),  # only x or only 0
)


@pytest.mark.parametrize("value", PLACEHOLDERS)
@pytest.mark.parametrize(
    "field", ["name", "ip_address", "form_url", "screenshot_ref", "screenshot_sha256"]
)
def test_a_web_form_proof_field_holding_a_placeholder_is_missing(field, value):
    # "N/A" as the person's name, "-" as the IP address: each was taken as proof, and
    # CanSend allowed. A placeholder says the value was not given.
    with pytest.raises(MissingProofError) as err:
        to_events(opt_in(proof=proof(**{field: value})), NOW)
    assert err.value.field == f"proof.{field}"
    lacking = proof(**{field: value}).template_missing(CollectionMethod.WEB_FORM)
    assert (f"proof.{field}" in lacking) is (field in PROOF_TEMPLATE_FIELDS)


NAMES_OF_PLACEHOLDER_LETTERS = ("Na", "NA", " na ", "Nil", "NIL")
"""A surname (Na, 나) or a given name (Nil) written alone, as a placeholder's letters."""


@pytest.mark.parametrize("value", NAMES_OF_PLACEHOLDER_LETTERS)
@pytest.mark.parametrize("field", ["ip_address", "form_url", "screenshot_ref"])
def test_placeholder_letters_that_are_names_are_missing_from_any_other_field(field, value):
    with pytest.raises(MissingProofError) as err:
        to_events(opt_in(proof=proof(**{field: value})), NOW)
    assert err.value.field == f"proof.{field}"


@pytest.mark.parametrize("value", NAMES_OF_PLACEHOLDER_LETTERS)
def test_a_name_of_a_placeholder_s_letters_alone_is_a_name(value):
    # "Na" read as "n/a": a person named Na could not be recorded at all.
    (event,) = to_events(opt_in(proof=proof(name=value)), NOW)
    assert isinstance(event, ConsentGranted) and event.proof.name == value
    assert "proof.name" not in event.proof.template_missing(CollectionMethod.WEB_FORM)


@pytest.mark.parametrize("version", ["0", "0.0", "00"])
def test_a_consent_text_version_of_zeros_is_a_version(version):
    # A document store's first version is often "0": read as a placeholder, an opt-in
    # proven by its wording's hash and version was refused for lacking the wording.
    given = proof(consent_text="", consent_text_sha256="ab" * 32, consent_text_version=version)
    (event,) = to_events(opt_in(proof=given), NOW)
    assert isinstance(event, ConsentGranted)
    assert event.proof.consent_text_version == version


def test_a_placeholder_in_a_proof_field_the_method_does_not_need_is_dropped():
    # Stored as sent, an "N/A" email read as missing everywhere, yet it was kept as a
    # value: the ledger holds "not given" as the field left empty, on every path.
    given = proof(email="N/A", postal_address="-", collection_detail=" unknown ")
    (event,) = to_events(opt_in(proof=given), NOW)
    assert isinstance(event, ConsentGranted)
    assert (event.proof.email, event.proof.postal_address, event.proof.collection_detail) == (
        "",
        "",
        "",
    )
    assert event.proof.name == given.name
    # The request is the one sent: its fingerprint, and so its event's id, unchanged.
    assert event.request_fingerprint == request_fingerprint(opt_in(proof=given))


def test_a_value_answered_by_its_first_character_can_be_no_placeholder():
    # is_placeholder answers a value opening with one of these at once: no placeholder
    # word may open with one, nor may a run of x's or zeros.
    assert not {word[0] for word in PLACEHOLDER_WORDS} & {c.lower() for c in _OPENS_NO_PLACEHOLDER}
    assert not set("xX0") & _OPENS_NO_PLACEHOLDER


@pytest.mark.parametrize(
    "value", ["Na Li", "Nil Hasan", "Xavier", "0x", "Test Person", "Ada 0", "x@example.com"]
)
def test_a_value_that_only_holds_a_placeholder_s_letters_is_proof(value):
    assert proof(name=value, email=value).template_missing(CollectionMethod.WEB_FORM) == []


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("ip_address", "banana", "is not an IP address"),
        ("ip_address", "203.0.113", "is not an IP address"),
        ("ip_address", "203.0.113.7:443", "is not an IP address"),
        ("form_url", "acme.example/join", "is not an absolute http(s) URL"),
        ("form_url", "ftp://acme.example/join", "is not an absolute http(s) URL"),
        ("form_url", "https:///join", "is not an absolute http(s) URL"),
        ("form_url", "http://[::1/join", "is not an absolute http(s) URL"),
        ("screenshot_sha256", "9f86d0...", "is not a SHA-256"),
        ("screenshot_sha256", "9f" * 31, "is not a SHA-256"),
        ("screenshot_sha256", "zz" * 32, "is not a SHA-256"),
        ("consent_text_sha256", "abc123", "is not a SHA-256"),
    ],
)
def test_a_typed_proof_field_that_does_not_parse_is_refused(field, value, reason):
    with pytest.raises(InvalidRequest) as err:
        to_events(opt_in(proof=proof(**{field: value})), NOW)
    assert not isinstance(err.value, MissingProofError)
    assert err.value.field == f"proof.{field}"
    assert reason in err.value.reason
    # Not required by the method, it is refused all the same: it is no IP address.
    paper = opt_in(
        method=CollectionMethod.PAPER,
        proof=proof(**{field: value, "collection_detail": "signed at the desk"}),
    )
    with pytest.raises(InvalidRequest) as err:
        to_events(paper, NOW)
    assert err.value.field == f"proof.{field}"
    # Recorded before this was checked, it is reported as missing, not as proof.
    lacking = proof(**{field: value}).template_missing(CollectionMethod.WEB_FORM)
    assert (f"proof.{field}" in lacking) is (field in PROOF_TEMPLATE_FIELDS)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ip_address", "2001:db8::7"),
        ("ip_address", " 203.0.113.7 "),
        ("ip_address", "fe80::1%eth0"),
        ("form_url", "http://203.0.113.7:8080/join"),
        ("form_url", "HTTPS://Acme.example"),
        ("screenshot_sha256", "9F" * 32),
        ("consent_text_sha256", "ab" * 32),
    ],
)
def test_a_typed_proof_field_that_parses_is_proof(field, value):
    assert to_events(opt_in(proof=proof(**{field: value})), NOW)
    assert proof(**{field: value}).template_missing(CollectionMethod.WEB_FORM) == []


def test_a_sealed_or_erased_proof_field_stays_given():
    # An event whose personal data is sealed or erased shows these in its fields:
    # the proof was given, and what it said is only hidden.
    for shown in (SEALED, ERASED):
        sealed = proof(name=shown, ip_address=shown, email=shown)
        assert sealed.template_missing(CollectionMethod.WEB_FORM) == []


def test_a_campaign_may_require_only_the_template_s_proof_fields():
    required = CampaignPolicy(required_proof_fields=("email", "postal_address"))
    assert to_events(DefineCampaign("r", BRAND, "promo", required, at(0)), NOW)
    unknown = CampaignPolicy(required_proof_fields=("email", "proof.email"))
    with pytest.raises(InvalidCampaignPolicy) as err:
        to_events(DefineCampaign("r", BRAND, "promo", unknown, at(0)), NOW)
    assert err.value.field == "policy.required_proof_fields[1]"


def test_an_opt_in_lacking_a_required_proof_field_is_refused_naming_it():
    policy = CampaignPolicy(required_proof_fields=("screenshot_ref", "postal_address"))
    check_required_proof(opt_in(), policy)
    for missing in ("postal_address", "screenshot_ref"):
        cmd = opt_in(proof=proof(**{missing: ""}))
        with pytest.raises(MissingProofError) as err:
            check_required_proof(cmd, policy)
        assert err.value.field == f"proof.{missing}"
    check_required_proof(opt_in(proof=proof(email="")), policy)  # not required


@pytest.mark.parametrize("text", ["STOPALL", "stop all", "Stop All!", "STOP STOPALL"])
def test_an_opt_out_of_one_campaign_that_says_stopall_ends_every_campaign(text):
    """The person's words say what they revoked: a STOPALL a caller filed under one
    campaign ends the brand's others too, as the same text sent in does."""
    cmd = RecordOptOut("r", PHONE, BRAND, "promo", RevocationChannel.KEYWORD, at(0), text=text)
    (event,) = to_events(cmd, NOW)
    assert isinstance(event, ConsentRevoked) and event.campaign is None and event.text == text


@pytest.mark.parametrize("text", ["", "STOP", "please stop texting me about promo"])
def test_an_opt_out_of_one_campaign_in_other_words_stays_that_campaigns(text):
    cmd = RecordOptOut("r", PHONE, BRAND, "promo", RevocationChannel.KEYWORD, at(0), text=text)
    (event,) = to_events(cmd, NOW)
    assert isinstance(event, ConsentRevoked) and event.campaign == "promo"


def test_an_overdue_opt_out_of_an_undefined_campaign_is_not_called_a_reply():
    """A RecordOptOut of a campaign not defined is held as an opt-out no campaign could
    take; past its ten business days the answer called it a reply that read like one."""
    cmd = RecordOptOut("r", PHONE, BRAND, "nope", RevocationChannel.API, at(0), text="STOP")
    after = fold(record([granted(at(-10)), *unattributed_opt_out(cmd, NOW)]))
    overdue = decide(after, campaign(), NOW + timedelta(days=30))
    assert overdue.reason is Reason.REVOCATION_OVERDUE, overdue
    assert overdue.detail.startswith("opt-out 'STOP' naming no defined campaign was not"), overdue
