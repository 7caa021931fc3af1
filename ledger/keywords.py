"""Reading an inbound text: opt-out, opt-in and help keywords, and replies that
only *read like* an opt-out.

A keyword must be the whole message; case, spaces and punctuation do not count,
so "Stop.", " stop " and "opt-out" all match. Anything else that sounds like a
wish to stop is a revocation candidate: it blocks sending until a person decides,
because a revocation may arrive "by any reasonable means".
"""

from __future__ import annotations

import enum
import re

OPT_OUT_KEYWORDS = frozenset({"STOP", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"})
BRAND_WIDE_OPT_OUT_KEYWORDS = frozenset({"STOPALL"})
OPT_IN_KEYWORDS = frozenset({"START", "UNSTOP", "YES"})
HELP_KEYWORDS = frozenset({"HELP", "INFO"})

_CANDIDATE_PATTERNS = re.compile(
    r"\b("
    r"stop (texting|messaging|sending|contacting)"
    r"|(don'?t|do not|never) (text|message|contact)"
    r"|remove me|take me off|unsubscribe me|opt me out|leave me alone"
    r"|wrong number|no more (texts|messages)|not interested"
    r")\b"
)


class Intent(enum.Enum):
    OPT_OUT = "opt_out"
    OPT_OUT_BRAND_WIDE = "opt_out_brand_wide"
    OPT_IN = "opt_in"
    HELP = "help"
    REVOCATION_CANDIDATE = "revocation_candidate"
    CONVERSATION = "conversation"


def normalise(text: str) -> str:
    """Upper-case letters and digits only: the form keywords are compared in."""
    return "".join(ch for ch in text.upper() if ch.isalnum())


def classify(text: str) -> Intent:
    """What an inbound message asks for."""
    word = normalise(text)
    if word in BRAND_WIDE_OPT_OUT_KEYWORDS:
        return Intent.OPT_OUT_BRAND_WIDE
    if word in OPT_OUT_KEYWORDS:
        return Intent.OPT_OUT
    if word in OPT_IN_KEYWORDS:
        return Intent.OPT_IN
    if word in HELP_KEYWORDS:
        return Intent.HELP
    spaced = " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())
    if _CANDIDATE_PATTERNS.search(spaced):
        return Intent.REVOCATION_CANDIDATE
    return Intent.CONVERSATION
