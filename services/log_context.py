"""What every log line carries and what none may carry.

Each gRPC call runs with a request id (``services.grpc_api.interceptors``) in the
contextvar ``REQUEST_ID``; ``LogContext``, a filter on the log handler, adds it to
every record as ``request_id`` (``-`` outside a call), so one call's lines can be
found together, tasks it starts included (they copy the context).

The same filter keeps personal data out of the logs: above DEBUG, phone numbers in
a line's message, its arguments and its traceback are masked (``+1415*****71``),
keeping the country and area code, which locate a problem, and the last two
digits, which tell two numbers apart in one line. ``-v`` (DEBUG) shows them whole,
for a person debugging on a machine they are trusted with.
"""

from __future__ import annotations

import contextvars
import logging
import re

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

_PHONE = re.compile(
    r"""
    \+\d(?:[\s().-]?\d){6,15}               # international: +1 415 555 2671, +14155552671
    | (?<![\w.])\(?\d{3}\)?[\s.-]\d{3}[\s.-]\d{4}(?!\w)   # national: (415) 555-2671
    | (?<![\w.:-])\d{10,15}(?![\w.:-])      # bare digits: 4155552671
    """,
    re.VERBOSE,
)


def _mask_one(match: re.Match[str]) -> str:
    text = match.group()
    digits = "".join(c for c in text if c.isdigit())
    plus = "+" if text.startswith("+") else ""
    return plus + digits[:4] + "*" * (len(digits) - 6) + digits[-2:]


def mask_phones(text: str) -> str:
    """``text`` with every phone number in it masked: ``+14155552671`` becomes
    ``+1415*****71`` (separators inside a number are dropped)."""
    return _PHONE.sub(_mask_one, text)


class LogContext(logging.Filter):
    """Adds ``request_id`` to every record and masks phone numbers above DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get() or "-"
        if record.levelno <= logging.DEBUG:
            return True
        message = record.getMessage()
        masked = mask_phones(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info:
            # Formatted here, once, so the traceback's text is masked too; both
            # formatters print exc_text when exc_info is gone.
            text = record.exc_text or logging.Formatter().formatException(record.exc_info)
            record.exc_text, record.exc_info = mask_phones(text), None
        elif record.exc_text:
            record.exc_text = mask_phones(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_phones(record.stack_info)
        return True
