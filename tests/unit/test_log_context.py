"""Log lines carry the call's request id and no phone number above DEBUG."""

from __future__ import annotations

import dataclasses
import io
import json
import logging

import pytest

from services.cli import main as cli
from services.grpc_api.interceptors import call_id
from services.log_context import REQUEST_ID, LogContext, mask_phones
from services.settings import Settings


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("+14155552671", "+1415*****71"),
        ("number +14155552671 opted out", "number +1415*****71 opted out"),
        ("+1 415-555-2671", "+1415*****71"),
        ("+44 20 7946 0958", "+4420******58"),
        ("(415) 555-2671", "4155****71"),
        ("415.555.2671", "4155****71"),
        ("phone=4155552671,", "phone=4155****71,"),
        ("'+14155552671' and '+12125550150'", "'+1415*****71' and '+1212*****50'"),
    ],
)
def test_phone_numbers_are_masked(text, masked):
    assert mask_phones(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        "subscribers:0:1234567890,campaigns:3:12",
        "2026-10-25T00:17:56.164767Z",
        "event 78fc5b6c-1e4f-4a8e-9d3c-2f5a6b7c8d9e",
        "offset 123456 of partition 7",
        "took 0.1234567891 s",
        "127.0.0.1:50051",
    ],
)
def test_what_is_not_a_phone_number_is_left_alone(text):
    assert mask_phones(text) == text


def settings(log_format: str) -> Settings:
    return dataclasses.replace(Settings.from_env(embedded=True, env={}), log_format=log_format)


def emit(handler: logging.Handler, level: int, msg: str, *args: object, exc: bool = False) -> None:
    logger = logging.getLogger("test.log_context")
    logger.propagate = False
    logger.handlers = [handler]
    logger.setLevel(logging.DEBUG)
    if exc:
        try:
            raise ValueError("cannot parse +14155552671")
        except ValueError:
            logger.log(level, msg, *args, exc_info=True)
    else:
        logger.log(level, msg, *args)


@pytest.mark.parametrize("level", [logging.INFO, logging.WARNING, logging.ERROR])
def test_text_lines_mask_phones_in_message_args_and_traceback(level):
    out = io.StringIO()
    handler = cli._log_handler(settings("text"), out)
    emit(handler, level, "refused %s for %s", "+12125550150", "acme", exc=True)
    text = out.getvalue()
    assert "refused +1212*****50 for acme" in text
    assert "ValueError: cannot parse +1415*****71" in text
    assert "2125550150" not in text and "4155552671" not in text


def test_debug_lines_keep_numbers_whole():
    out = io.StringIO()
    emit(cli._log_handler(settings("text"), out), logging.DEBUG, "looked up %s", "+14155552671")
    assert "looked up +14155552671" in out.getvalue()


def test_json_lines_carry_the_request_id_and_mask_phones():
    out = io.StringIO()
    handler = cli._log_handler(settings("json"), out)
    token = REQUEST_ID.set("req-42")
    try:
        emit(handler, logging.ERROR, "failed for %s", "+14155552671", exc=True)
    finally:
        REQUEST_ID.reset(token)
    emit(handler, logging.INFO, "outside a call")
    inside, outside = (json.loads(line) for line in out.getvalue().splitlines())
    assert inside["request_id"] == "req-42"
    assert inside["message"] == "failed for +1415*****71"
    assert "cannot parse +1415*****71" in inside["exc_info"]
    assert "4155552671" not in out.getvalue()
    assert outside["request_id"] == "-"


def test_text_lines_carry_the_request_id():
    out = io.StringIO()
    handler = cli._log_handler(settings("text"), out)
    token = REQUEST_ID.set("abc123")
    try:
        emit(handler, logging.INFO, "inside")
    finally:
        REQUEST_ID.reset(token)
    emit(handler, logging.INFO, "outside")
    inside, outside = out.getvalue().splitlines()
    assert "[abc123]: inside" in inside
    assert "[-]: outside" in outside


def test_the_filter_alone_sets_request_id_on_records():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    token = REQUEST_ID.set("r1")
    try:
        assert LogContext().filter(record)
    finally:
        REQUEST_ID.reset(token)
    assert record.request_id == "r1"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("metadata", "taken"),
    [
        ((("x-request-id", "abc-123"),), "abc-123"),
        ((("authorization", "Bearer x"), ("x-request-id", "7f3e:span/1")), "7f3e:span/1"),
    ],
)
def test_the_callers_request_id_is_taken(metadata, taken):
    assert call_id(metadata) == taken


@pytest.mark.parametrize(
    "value",
    ["", "two words", "line\nbreak", "x" * 129, 'quote"', "ünïcode"],
)
def test_an_unusable_request_id_is_replaced_by_a_new_one(value):
    made = call_id((("x-request-id", value),))
    assert made != value and len(made) == 32 and int(made, 16) >= 0


def test_each_call_without_an_id_gets_its_own():
    assert call_id(()) != call_id(None)
