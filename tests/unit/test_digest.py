"""The digest: what the policy reads, as the projection stores it.

``decide`` digests its state before asking the rules, so every policy test already
runs the rules on digests. These tests cover what that cannot: a digest read back
from its stored bytes is the digest that was written, and one ``Check`` asked of
many numbers (a batch) answers each as if asked alone.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.digest import (
    EMPTY_CAMPAIGN,
    EPOCH,
    CampaignDigest,
    Digest,
    digest_of,
    from_micros,
    micros,
)
from ledger.events import MessageKind
from ledger.policy import Check, Reason, decide
from ledger.state import SubscriberState, fold
from services.wire.digest import FORMAT, decode_digest, decode_payload, encode_digest, payload_of
from tests.builders import (
    age,
    at,
    campaign,
    flagged,
    granted,
    record,
    revoked,
    sent,
)
from tests.unit.test_compact_digests import digests as any_digest
from tests.unit.test_properties import CAMPAIGNS, histories

LOS_ANGELES = "+14155552671"
NEW_YORK = "+12125551234"


def test_microseconds_round_trip_and_order_like_datetimes():
    moments = [
        EPOCH,
        datetime(2026, 3, 2, 18, 0, 0, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(2099, 1, 1, tzinfo=UTC) - timedelta(microseconds=1),
    ]
    assert [from_micros(micros(m)) for m in moments] == moments
    assert sorted(moments, key=micros) == sorted(moments)


@settings(max_examples=300, deadline=None)
@given(events=histories, flag=st.booleans())
def test_a_stored_digest_reads_back_equal(events, flag):
    if flag:
        events = [*events, flagged(at(1), "stop it")]
    digest = digest_of(fold(record(events)))

    stored = encode_digest(digest)

    assert stored[0] == FORMAT
    assert decode_digest(stored) == digest
    # What the replica keeps: the bytes after the version byte.
    assert decode_payload(payload_of(stored)) == digest
    decoded = decode_digest(stored)
    assert decoded is not None
    for name in (*digest.campaigns, "never-granted"):
        asked = decoded.campaign(name)
        assert isinstance(asked, CampaignDigest)
        assert asked == digest.campaign(name)


@settings(max_examples=200, deadline=None)
@given(events=histories, asked=CAMPAIGNS, minutes=st.integers(0, 60 * 24 * 45))
def test_a_stored_digest_gets_the_decision_the_state_gets(events, asked, minutes):
    state = fold(record(events))
    rules = campaign(asked, daily_cap=2)
    stored = decode_digest(encode_digest(digest_of(state)))
    assert stored is not None
    for kind in MessageKind:
        assert Check(rules, at(minutes), kind)(stored) == decide(state, rules, at(minutes), kind)


@settings(max_examples=200, deadline=None)
@given(digest=any_digest)
def test_any_digest_reads_back_equal(digest):
    """Every field, those no folded history of the generator fills included."""
    assert decode_digest(encode_digest(digest)) == digest


def test_no_digest_or_another_format_reads_as_none():
    digest = digest_of(fold(record([granted(at(0))])))
    other_format = bytes([FORMAT + 1]) + msgpack.packb(tuple(digest))

    assert decode_digest(None) is None
    assert decode_digest(b"") is None
    assert decode_digest(other_format) is None
    for unusable in (b"", other_format):
        with pytest.raises(ValueError):
            payload_of(unusable)
    # The right format byte with a field too many or too few is not read either.
    fields = tuple(digest)
    assert decode_digest(bytes([FORMAT]) + msgpack.packb((*fields, 0))) is None
    assert decode_digest(bytes([FORMAT]) + msgpack.packb(fields[:-1])) is None
    campaigns = {"promo": (*EMPTY_CAMPAIGN, 0)}
    assert decode_digest(bytes([FORMAT]) + msgpack.packb((*fields[:8], campaigns))) is None
    for wrong_age in (("e-1", True), ("e-1", True, "1980-01-01", 0)):
        payload = (*fields[:5], wrong_age, *fields[6:])
        assert decode_digest(bytes([FORMAT]) + msgpack.packb(payload)) is None
    right_age = (*fields[:5], ("e-1", True, "1980-01-01"), *fields[6:])
    assert decode_digest(bytes([FORMAT]) + msgpack.packb(right_age)).age.date_of_birth == (
        "1980-01-01"
    )


def test_the_digest_keeps_the_numbers_time_zones():
    assert digest_of(fold(record([granted(at(0), phone=NEW_YORK)]))).zones == ("America/New_York",)
    assert digest_of(SubscriberState(phone="not a number", brand="acme")).zones == ()


def test_one_check_asked_of_many_numbers_answers_each_in_its_own_zone():
    rules = campaign()
    # 02:30 UTC: 18:30 in Los Angeles (allowed), 21:30 in New York (quiet hours).
    when = datetime(2026, 3, 3, 2, 30, tzinfo=UTC)
    west = digest_of(fold(record([granted(at(0), phone=LOS_ANGELES)])))
    east = digest_of(fold(record([granted(at(0), phone=NEW_YORK)])))
    check = Check(rules, when)

    answers = [check(d) for d in (west, east, west, east)]

    assert [a.allowed for a in answers] == [True, False, True, False]
    assert answers[1].reason is Reason.QUIET_HOURS and "America/New_York" in answers[1].detail
    assert answers[0].evidence == (west.campaign("promo").grant.event_id,)
    assert answers[1].evidence == (east.campaign("promo").grant.event_id,)


def test_one_check_asked_of_many_numbers_keeps_their_facts_apart():
    rules = campaign(daily_cap=1)
    when = at(30)
    fresh = digest_of(fold(record([granted(at(0))])))
    capped = digest_of(fold(record([granted(at(0)), sent(at(10))])))
    gone = digest_of(fold(record([granted(at(0)), revoked(at(20))])))
    check = Check(rules, when)

    assert [check(d).reason for d in (fresh, capped, gone, fresh)] == [
        Reason.CONSENT_ACTIVE,
        Reason.DAILY_CAP_REACHED,
        Reason.REVOKED,
        Reason.CONSENT_ACTIVE,
    ]


def test_an_empty_digest_has_no_consent():
    assert Check(campaign(), at(0))(Digest(brand="acme")).reason is Reason.NO_CONSENT


def test_age_is_read_from_the_digest():
    rules = campaign(category="alcohol")
    young = digest_of(fold(record([granted(at(0)), age(at(1), dob="2010-01-01")])))
    old = digest_of(fold(record([granted(at(0)), age(at(1), dob="1980-01-01")])))

    assert Check(rules, at(5))(young).reason is Reason.AGE_VERIFICATION_REQUIRED
    assert Check(rules, at(5))(old).allowed
