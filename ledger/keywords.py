"""Reading an inbound text: opt-out, opt-in and help keywords, and replies that
only *read like* an opt-out.

Both readings below see the message folded: Unicode compatibility forms unified
(NFKC, so a full-width or mathematical-bold STOP is STOP), typographic apostrophes
(U+2019, U+2018, U+02BC and the like) made ', and case folded.

A keyword must be the whole message; case, spaces and punctuation do not count,
so "Stop.", " stop " and "opt-out" all match. A message made only of opt-out
keywords ("STOP STOP", "stop. stop!", "stop, unsubscribe") is that opt-out. If
any of them is STOPALL it is brand-wide: "STOP STOPALL" asks for the campaign
and for every campaign, and the wider reading is the safe one, since a wrongful
brand-wide stop costs the person a START while a campaign-only one would let
the brand's other campaigns text someone who asked them all to stop.

Anything else that sounds like a wish to stop is a revocation candidate: it
blocks sending until a person decides, because a revocation may arrive "by any
reasonable means".
"""

from __future__ import annotations

import enum
import re
import unicodedata

OPT_OUT_KEYWORDS = frozenset({"STOP", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"})
BRAND_WIDE_OPT_OUT_KEYWORDS = frozenset({"STOPALL"})
OPT_IN_KEYWORDS = frozenset({"START", "UNSTOP", "YES"})
HELP_KEYWORDS = frozenset({"HELP", "INFO"})

_OPT_OUT_RUN = re.compile(
    "(?:"
    + "|".join(sorted(OPT_OUT_KEYWORDS | BRAND_WIDE_OPT_OUT_KEYWORDS, key=len, reverse=True))
    + ")+"
)

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


# Mapped before NFKC, which would make the acute accent (U+00B4) a space and a combining mark.
_APOSTROPHES = str.maketrans(dict.fromkeys("\u2019\u2018\u02bc\u2032\u00b4`", "'"))


def _fold(text: str) -> str:
    """``text`` with compatibility forms unified, apostrophes made ', and case folded."""
    return unicodedata.normalize("NFKC", text.translate(_APOSTROPHES)).casefold()


def normalise(text: str) -> str:
    """Upper-case letters and digits of the folded text: the form keywords are compared in."""
    return "".join(ch for ch in _fold(text) if ch.isalnum()).upper()


def classify(text: str) -> Intent:
    """What an inbound message asks for."""
    word = normalise(text)
    if _OPT_OUT_RUN.fullmatch(word):
        # One opt-out keyword or several; a STOPALL in it makes it brand-wide
        # however the run splits into keywords.
        if any(keyword in word for keyword in BRAND_WIDE_OPT_OUT_KEYWORDS):
            return Intent.OPT_OUT_BRAND_WIDE
        return Intent.OPT_OUT
    if word in OPT_IN_KEYWORDS:
        return Intent.OPT_IN
    if word in HELP_KEYWORDS:
        return Intent.HELP
    spaced = " ".join(re.sub(r"[^a-z0-9' ]+", " ", _fold(text)).split())
    if _CANDIDATE_PATTERNS.search(spaced):
        return Intent.REVOCATION_CANDIDATE
    return Intent.CONVERSATION
