"""Input is canonical or refused: every identifier is one exact string, no text
holds control characters, times and dates are in range, and one refusal names
every bad field of the request."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from consent.v1 import consent_service_pb2 as api_pb2
from consent.v1 import ledger_pb2

from ledger.commands import (
    HandleInboundMessage,
    RecordAgeVerification,
    RecordOptOut,
    ResolveRevocationCandidate,
    check_inbound,
    check_name,
    to_events,
)
from ledger.errors import DomainError, InvalidPhoneNumber, InvalidRequest
from ledger.events import CandidateResolution, ConsentRevoked, RevocationChannel
from ledger.phone import to_e164
from services.grpc_api.errors import to_status
from services.wire import api
from tests.unit.test_grpc_errors import field_violations
from tests.unit.test_wire_api import WRITES, name_of

NOW = datetime(2025, 6, 1, 14, 31, tzinfo=UTC)
AT = datetime(2025, 6, 1, 14, 30, 5, 123456, tzinfo=UTC)
PHONE = "+14155550123"


def opt_out(**changes: Any) -> RecordOptOut:
    given: dict[str, Any] = {
        "request_id": "r1",
        "phone": PHONE,
        "brand": "acme",
        "campaign": "promo",
        "channel": RevocationChannel.WEB,
        "occurred_at": AT,
    }
    return RecordOptOut(**{**given, **changes})


def refused_fields(run: Any) -> list[str]:
    with pytest.raises(DomainError) as err:
        run()
    return [field for field, _ in err.value.violations]


# --- names are matched whole -------------------------------------------------------


@pytest.mark.parametrize("name", ["acme\n", "acme\r\n", "acme\x00", "\nacme", "acme ", "Acme"])
def test_a_brand_or_campaign_with_anything_around_it_is_refused(name: str) -> None:
    # "acme\n" passed ``^...$`` with ``match``: an opt-out under it stopped nothing for acme.
    for field in ("brand", "campaign"):
        with pytest.raises(InvalidRequest) as err:
            check_name(name, field)
        assert err.value.field == field
        assert refused_fields(lambda f=field: to_events(opt_out(**{f: name}), NOW)) == [field]


@pytest.mark.parametrize("name", ["acme.", "acme-", "acme_", "acme..", "promo-_"])
def test_a_name_ending_in_a_separator_is_refused(name: str) -> None:
    # "acme." was a brand of its own: an opt-out written under it was accepted and
    # stopped nothing sent under "acme", the name a person reads in it.
    for field in ("brand", "campaign"):
        with pytest.raises(InvalidRequest) as err:
            check_name(name, field)
        assert err.value.field == field
        assert "ending alphanumeric" in err.value.reason
        assert refused_fields(lambda f=field: to_events(opt_out(**{f: name}), NOW)) == [field]


@pytest.mark.parametrize("name", ["a", "7", "ac-me", "spring_sale.2026", "a" * 64])
def test_a_name_between_separators_is_still_a_name(name: str) -> None:
    assert check_name(name, "brand") == name


def test_an_accepted_opt_out_names_the_brand_a_check_asks_about() -> None:
    (event,) = to_events(opt_out(), NOW)
    assert isinstance(event, ConsentRevoked)
    assert (event.brand, event.campaign) == ("acme", "promo")


# --- identifiers: printable, no spaces around -------------------------------------

HOSTILE_IDENTIFIERS = [
    "a\x00b",  # NUL
    "a\x1bb",  # escape
    "a\x85b",  # C1 next line
    "a\u200bb",  # zero-width space
    "a\u202eb",  # right-to-left override
    "a\ufeffb",  # byte order mark
    "a\u2028b",  # line separator
    "a\nb",
    "a\tb",
    " ab",
    "ab ",
]


@pytest.mark.parametrize("value", [*HOSTILE_IDENTIFIERS, "", " ", "\t\n"])
def test_a_request_id_that_is_blank_or_not_exact_is_refused(value: str) -> None:
    assert refused_fields(lambda: to_events(opt_out(request_id=value), NOW)) == ["request_id"]


@pytest.mark.parametrize("value", HOSTILE_IDENTIFIERS)
def test_message_ids_are_exact_identifiers(value: str) -> None:
    assert refused_fields(lambda: to_events(opt_out(in_reply_to=value), NOW)) == ["in_reply_to"]
    inbound = HandleInboundMessage("r1", PHONE, "+14155550100", "STOP", value, AT)
    assert refused_fields(lambda: check_inbound(inbound, NOW)) == ["message_id"]


def test_an_identifier_may_hold_any_printable_character_inside() -> None:
    (event,) = to_events(opt_out(request_id="ordre n° 7 ✓", in_reply_to="SM-é/1"), NOW)
    assert isinstance(event, ConsentRevoked) and event.in_reply_to == "SM-é/1"


# --- free text: no control characters but line breaks where text runs over lines ----


@pytest.mark.parametrize("char", ["\x00", "\x07", "\x1b", "\x7f", "\x85", "\x9b"])
def test_free_text_refuses_control_characters(char: str) -> None:
    assert refused_fields(lambda: to_events(opt_out(text=f"stop{char}"), NOW)) == ["text"]
    inbound = HandleInboundMessage("r1", PHONE, "+14155550100", f"STOP{char}", "SM1", AT)
    assert refused_fields(lambda: check_inbound(inbound, NOW)) == ["body"]


def test_free_text_keeps_line_breaks_emoji_and_bidi_marks() -> None:
    text = "Stop\r\n\tplease 👩\u200d👩\u200d👧 \u200f\u05e9\u05dc\u05d5\u05dd"
    (event,) = to_events(opt_out(text=text), NOW)
    assert isinstance(event, ConsentRevoked) and event.text == text


def test_a_one_line_text_field_refuses_a_line_break() -> None:
    (request, _) = WRITES[0]
    msg = type(request).FromString(request.SerializeToString())
    msg.proof.name = "Ada\nLovelace"
    command = api.command_from_proto(msg)
    assert refused_fields(lambda: to_events(command, NOW)) == ["proof.name"]  # type: ignore[arg-type]


# --- phone numbers -----------------------------------------------------------------


@pytest.mark.parametrize(
    "raw", ["+14155550123\x00", "+1415555\u200b0123", "\u202d+14155550123", "+14155550123\n"]
)
def test_a_phone_number_with_a_control_or_format_character_is_refused(raw: str) -> None:
    # The library read through them, and "+1415555<ZWSP>0123" was stored as a number.
    with pytest.raises(InvalidPhoneNumber) as err:
        to_e164(raw)
    assert "E.164, for example +14155552671" in err.value.reason


@pytest.mark.parametrize("raw", ["not a number", "+", "+1", "12", "+99912345"])
def test_an_unparseable_number_says_what_form_is_expected(raw: str) -> None:
    with pytest.raises(InvalidPhoneNumber) as err:
        to_e164(raw, field="from_phone")
    assert err.value.field == "from_phone"
    assert "E.164, for example +14155552671" in err.value.reason
    assert "Missing or invalid" not in err.value.reason  # the library's own words


def test_a_number_with_an_extension_is_refused_and_spacing_is_read_through() -> None:
    with pytest.raises(InvalidPhoneNumber):
        to_e164("+14155550123 ext. 12")
    assert to_e164("+1 (415) 555-0123") == PHONE


@pytest.mark.parametrize(
    "raw",
    [
        "+1\u00a0415\u00a0555\u00a00123",  # a spreadsheet's no-break space
        "+1\u202f415\u2009555\u20090123",  # narrow and thin spaces
        "+1\u3000415\u3000555\u30000123",  # an ideographic space
        "+1\u2013415\u2013555\u20130123",  # a word processor's en dash
        "+1\u2212415\u2011555\u20100123",  # minus sign, non-breaking hyphen, hyphen
        "\uff0b1\uff08415\uff09555\uff0e0123",  # full-width + ( ) .
        "\uff0b\uff11\uff14\uff11\uff15\uff15\uff15\uff15\uff10\uff11\uff12\uff13",
    ],
)
def test_a_number_spaced_or_dashed_by_other_characters_reads_as_the_number(raw: str) -> None:
    # Refused, an opt-out written so was lost, while the same number written plainly
    # elsewhere (its opt-in, the sender's CanSend) stayed opted in.
    assert to_e164(raw) == PHONE


# --- times and dates ---------------------------------------------------------------


@pytest.mark.parametrize("nanos", [-1, 1_000_000_000, -999_999_999, 2**31 - 1])
@pytest.mark.parametrize(("request_msg", "expected"), WRITES, ids=name_of)
def test_a_timestamp_with_nanos_out_of_range_is_refused(
    request_msg: Any, expected: Any, nanos: int
) -> None:
    msg = type(request_msg).FromString(request_msg.SerializeToString())
    msg.occurred_at.nanos = nanos
    assert refused_fields(lambda: api.command_from_proto(msg)) == ["occurred_at"]


def test_a_nested_timestamp_with_nanos_out_of_range_is_refused() -> None:
    (request, _) = WRITES[0]
    msg = type(request).FromString(request.SerializeToString())
    msg.proof.registered_at.nanos = -5
    assert refused_fields(lambda: api.command_from_proto(msg)) == ["proof.registered_at"]


def test_a_check_at_a_timestamp_with_nanos_out_of_range_is_refused() -> None:
    msg = api_pb2.CanSendRequest(phone=PHONE, brand="acme", campaign="promo")
    msg.at.seconds, msg.at.nanos = 1_700_000_000, -1
    assert refused_fields(lambda: api.optional_time(msg, "at")) == ["at"]


@pytest.mark.parametrize(
    "when",
    [datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC), datetime(1970, 1, 1, tzinfo=UTC)],
)
def test_a_fact_from_before_the_service_could_exist_is_refused(when: datetime) -> None:
    assert refused_fields(lambda: to_events(opt_out(occurred_at=when), NOW)) == ["occurred_at"]
    assert to_events(opt_out(occurred_at=datetime(2000, 1, 1, tzinfo=UTC)), NOW)


def age(date_of_birth: str) -> RecordAgeVerification:
    return RecordAgeVerification("r1", PHONE, "acme", "id card", AT, date_of_birth)


@pytest.mark.parametrize(
    "dob",
    [
        "19900101",  # fromisoformat reads these three too; one spelling is stored
        "1990-W01-1",
        "1990-01-01T00:00",
        "1990-1-1",
        "\uff11\uff19\uff19\uff10-01-01",  # full-width digits
        " 1990-01-01",
        "1990-01-01\n",
        "1899-12-31",
        "1990-02-30",
        "2025-06-02",  # the day after NOW
    ],
)
def test_a_date_of_birth_is_one_iso_date_from_1900_to_today(dob: str) -> None:
    assert refused_fields(lambda: to_events(age(dob), NOW)) == ["date_of_birth"]


def test_a_date_of_birth_in_range_is_stored_as_given() -> None:
    (event,) = to_events(age("1990-01-01"), NOW)
    assert event.date_of_birth == "1990-01-01"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "candidate",
    [
        "{12345678-1234-5678-1234-567812345678}",
        "urn:uuid:12345678-1234-5678-1234-567812345678",
        "12345678123456781234567812345678",
        " 12345678-1234-5678-1234-567812345678",
    ],
)
def test_a_candidate_id_is_an_event_id_as_the_service_gives_it(candidate: str) -> None:
    cmd = ResolveRevocationCandidate(
        "r1", PHONE, "acme", candidate, CandidateResolution.DISMISSED, AT
    )
    assert refused_fields(lambda: to_events(cmd, NOW)) == ["candidate_event_id"]


# --- every bad field in one answer --------------------------------------------------


def test_every_bad_field_of_a_command_is_named_in_one_refusal() -> None:
    cmd = opt_out(
        request_id=" ",
        phone="nope",
        brand="Acme",
        campaign="promo\n",
        text="\x00",
        in_reply_to="a\u200b",
    )
    assert sorted(refused_fields(lambda: to_events(cmd, NOW))) == sorted(
        ["request_id", "phone", "brand", "campaign", "text", "in_reply_to"]
    )


def test_a_wire_error_and_the_domain_s_are_named_in_one_refusal() -> None:
    msg = api_pb2.RecordOptInRequest(
        request_id="r1",
        phone="+1415555012",
        brand="acme\n",
        campaign="promo",
        method=ledger_pb2.COLLECTION_METHOD_WEB_FORM,
    )
    fields = refused_fields(lambda: api.command_from_proto(msg))
    assert sorted(fields) == sorted(["tier", "proof", "occurred_at", "phone", "brand"])


def test_one_bad_request_carries_every_violation() -> None:
    cmd = opt_out(phone="nope", brand="Acme")
    with pytest.raises(DomainError) as err:
        to_events(cmd, NOW)
    status = to_status(err.value)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    found = field_violations(status)
    assert [f for f, _ in found] == ["phone", "brand"]
    assert "E.164, for example +14155552671" in found[0][1]


def test_every_missing_proof_field_is_named() -> None:
    (request, _) = WRITES[0]
    msg = type(request).FromString(request.SerializeToString())
    msg.proof.ClearField("name")
    msg.proof.ClearField("form_url")
    command = api.command_from_proto(msg)
    fields = refused_fields(lambda: to_events(command, NOW))  # type: ignore[arg-type]
    assert sorted(fields) == ["proof.form_url", "proof.name"]


def test_a_command_with_one_bad_field_keeps_its_error_type() -> None:
    with pytest.raises(InvalidPhoneNumber):
        to_events(opt_out(phone="nope"), NOW)
    many = dataclasses.replace(opt_out(phone="nope"), brand="x y")
    with pytest.raises(InvalidPhoneNumber) as err:
        to_events(many, NOW)
    assert len(err.value.violations) == 2


def test_the_clock_skew_bound_still_holds_for_a_far_future_fact() -> None:
    late = opt_out(occurred_at=NOW + timedelta(hours=1))
    assert refused_fields(lambda: to_events(late, NOW)) == ["occurred_at"]


# --- a batch answers a non-number in its place --------------------------------------


async def test_a_batch_answers_a_non_number_in_its_place_and_the_others_as_usual() -> None:
    from ledger.policy import Reason
    from tests.unit.usecase_harness import define, opt_in, running

    async with running() as (app, _):
        await app.writes.record(define())
        written = await app.writes.record(opt_in("r1"))
        phones = ["+14155552671", "not a number", "+1415555\u200b2671", "+15551234567"]
        result = await app.checks.can_send_batch(phones, "acme", "promo", token=written.token)
        reasons = [d.reason for d in result.decisions]
        assert reasons[0] != Reason.INVALID_PHONE and result.decisions[0].allowed
        assert reasons[1:] == [Reason.INVALID_PHONE] * 3
        assert not any(d.allowed for d in result.decisions[1:])
        assert all("E.164, for example +14155552671" in d.detail for d in result.decisions[1:])
        with pytest.raises(DomainError) as err:  # a bad brand or campaign fails it whole
            await app.checks.can_send_batch(phones, "acme", "promo\n")
        assert [f for f, _ in err.value.violations] == ["campaign"]
        with pytest.raises(DomainError) as err:  # and a single check names every bad field
            await app.checks.can_send("nope", "Acme", "promo\n")
        assert [f for f, _ in err.value.violations] == ["brand", "campaign", "phone"]


# --- tokens and settings: ASCII digits, the whole text ------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "subscribers:0: 5",
        "subscribers:0:+5",
        "subscribers:0:5_0",
        "subscribers:\u0660:5",
        "subscribers:0:5\n",
        "subscribers:-1:5",
        "campaigns:0:5 ",
        # A partition named twice: read as either offset, it could pass a check
        # (``past_the_end``) as the other.
        "subscribers:0:999999,subscribers:0:1",
        "subscribers:0:1,campaigns:0:1,subscribers:00:1",
    ],
)
def test_a_consistency_token_is_read_only_as_the_service_writes_it(text: str) -> None:
    from ledger.ports import ConsistencyToken

    with pytest.raises(ValueError):
        ConsistencyToken.decode(text)
    assert ConsistencyToken.decode("campaigns:0:1,subscribers:3:7").encode() == (
        "campaigns:0:1,subscribers:3:7"
    )


def test_a_page_token_is_only_the_text_the_service_issued() -> None:
    import base64

    from services.grpc_api.servicer import _listing, _page_start, _page_token

    listing = _listing(PHONE, "acme")
    assert _page_start(_page_token(100, listing), listing) == 100
    issued = _page_token(100, listing)
    for other in (
        issued + "!",
        "!" + issued,
        base64.urlsafe_b64encode(f"{listing}: 100".encode()).decode(),
        base64.urlsafe_b64encode(f"{listing}:1_00".encode()).decode(),
        base64.urlsafe_b64encode(f"{listing}:+100".encode()).decode(),
        base64.urlsafe_b64encode(b"o:100").decode(),  # of no listing (before this version)
        _page_token(100, _listing("+14155550124", "acme")),
        _page_token(100, _listing(PHONE, "globex")),
        _page_token(100, _listing(PHONE, None)),
    ):
        with pytest.raises(InvalidRequest) as err:
            _page_start(other, listing)
        assert err.value.field == "page_token"
    assert _listing("+1 (415) 555-0123", "acme") == listing  # one number, spelt otherwise


@pytest.mark.parametrize("port", ["\u00b2", "\u0665\u0660", "50051\n", " 50051", "+1"])
def test_a_listen_address_port_is_ascii_digits_alone(port: str) -> None:
    from services.settings import SettingsError, host_and_port

    with pytest.raises(SettingsError):  # "²" passed isdigit() and then broke int()
        host_and_port(f"127.0.0.1:{port}", "CONSENT_GRPC_LISTEN")


def test_port_sharing_is_off_unless_asked_for() -> None:
    from services.grpc_api.server import server_options
    from services.settings import Settings, SettingsError

    env = {"CONSENT_POSTGRES_DSN": "postgresql://x/y", "CONSENT_AUTH_TOKENS_FILE": "t.json"}
    env["CONSENT_LEDGER"] = "postgres"
    assert not Settings.from_env(env).reuse_port
    assert Settings.from_env({**env, "CONSENT_GRPC_REUSE_PORT": "true"}).reuse_port
    with pytest.raises(SettingsError, match="CONSENT_GRPC_REUSE_PORT"):
        Settings.from_env({**env, "CONSENT_GRPC_REUSE_PORT": "yes"})
    assert ("grpc.so_reuseport", 0) in server_options(False)
    assert ("grpc.so_reuseport", 1) in server_options(True)


def test_a_second_lock_of_one_data_directory_is_refused_naming_it(tmp_path: Any) -> None:
    import os

    from services.bootstrap import StartError, lock_data_dir

    held = lock_data_dir(tmp_path / "data")
    try:
        with pytest.raises(StartError, match=r"data directory .*data \(CONSENT_DATA_DIR\)"):
            lock_data_dir(tmp_path / "data")
    finally:
        os.close(held)
    os.close(lock_data_dir(tmp_path / "data"))  # let go: free again


@pytest.mark.parametrize("name", ["ops\n", "ops\x00", " ops", "o\u202eps"])
def test_a_caller_name_that_is_no_exact_identifier_is_refused(name: str) -> None:
    # It is written on every event the caller records (recorded_by).
    from services.grpc_api.auth import TokenAuthenticator

    entry = {"name": name, "sha256": "ab" * 32, "scopes": ["check"], "brands": "*"}
    with pytest.raises(ValueError, match=r"tokens\[0\]\.name must"):
        TokenAuthenticator.from_data({"tokens": [entry]})
    TokenAuthenticator.from_data({"tokens": [{**entry, "name": "ops team"}]})


def test_gathered_violations_keep_the_first_error_s_type_and_reason() -> None:
    from ledger.errors import ProhibitedContent
    from ledger.validation import Violations

    found = Violations()
    found.add(ProhibitedContent("policy.category", "is never allowed", "cannabis"))
    found.add(InvalidRequest("brand", "must be 1-64 chars"))
    with pytest.raises(ProhibitedContent) as err:
        found.raise_if_any()
    assert err.value.violations == (
        ("policy.category", "is never allowed"),
        ("brand", "must be 1-64 chars"),
    )
    assert err.value.metadata == {"category": "cannabis"}
    assert err.value.error_reason == "CONTENT_PROHIBITED"
    status = to_status(err.value)
    assert [f for f, _ in field_violations(status)] == ["policy.category", "brand"]


@pytest.mark.parametrize(
    "raw",
    ["+1415K5552671", "+1415555Z2671", "+1-800-FLOWERS", "+14155552671#", "+1 415 555 2671 x"],
)
def test_a_letter_or_symbol_in_a_phone_number_is_refused_not_dropped(raw: str) -> None:
    # The library dropped a stray letter and read words as keypad letters.
    with pytest.raises(InvalidPhoneNumber) as err:
        to_e164(raw)
    assert "E.164, for example +14155552671" in err.value.reason


@pytest.mark.parametrize("raw", ["+1:415:555:2671", "+1;415;555;2671", "+1_415_555_2671"])
def test_a_refused_phone_number_lists_only_the_punctuation_read(raw: str) -> None:
    # "spaces and + - ( ) . / : a phone number" read as if ":" were allowed, and a
    # number written with colons was refused by a reason that seemed to allow them.
    with pytest.raises(InvalidPhoneNumber) as err:
        to_e164(raw)
    listed = err.value.reason.split("spaces and ", 1)[1].split(",", 1)[0]
    assert listed.split() == ["+", "-", "(", ")", ".", "/"], err.value.reason


@pytest.mark.parametrize(
    "raw",
    [
        "+1 415.555/2671",
        "+1 (415) 555-2671",
        "+\u0661\u0664\u0661\u0665\u0665\u0665\u0665\u0662\u0666\u0667\u0661",
    ],
)
def test_digits_of_any_script_and_the_usual_punctuation_are_read(raw: str) -> None:
    assert to_e164(raw) == "+14155552671"


def test_a_tokens_file_brand_ending_in_a_newline_is_refused() -> None:
    # "acme\n" passed the old pattern: a token limited to it could act for no brand.
    from services.grpc_api.auth import TokenAuthenticator

    entry = {"name": "ops", "sha256": "ab" * 32, "scopes": ["check"], "brands": ["acme\n"]}
    with pytest.raises(ValueError, match="brands"):
        TokenAuthenticator.from_data({"tokens": [entry]})
