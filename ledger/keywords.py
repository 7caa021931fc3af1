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

Anything else that may be a wish to stop is a revocation candidate: it blocks
sending until a person decides, because a revocation may arrive "by any
reasonable means". Flagging too much delays texts until a reviewer resolves the
reply; flagging too little keeps texting someone who asked to stop; so where
the rule is in doubt it flags. The candidate reading also drops accents
("arrêt" is "arret"). A message is a candidate when

- one of its words (runs of letters: "STOP2" holds the word stop) means stop
  whatever surrounds it: stop, stopall,
  unsubscribe, optout, revoke, or "opt out" ("Stop please", "STOP IT",
  "unsubscribe please", even "stop by the store at 5?");
- one of its words is cancel, end or quit, which also have everyday meanings,
  and the message is at most four words ("CANCEL ALL", "I quit", "the end",
  "cancel my appointment"); in a longer message only a phrase counts: "cancel
  all", "I quit", "want to cancel", "quit texting", or the verb before the
  texts or the subscription ("please cancel my subscription to these alerts").
  "I'll be at the end of the street" is conversation;
- it is in Spanish or French: parar and arrêt (arret, arrête, arrêtez,
  arrêter) count like stop, alto and baja (also "high" and "low") like cancel,
  and "de baja" (darme de baja) like a phrase. No policy text names these as
  keywords, so they never revoke by themselves: a person reads them;
- it says so in other words: "don't text me", "remove me", "take me off",
  "leave me alone", "wrong number", "no more texts", "not interested".
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

# The candidate rules of the module docstring, over the words without accents.
_STOP_WORDS = frozenset(
    {"stop", "stopall", "unsubscribe", "optout", "revoke"}
    | {"parar", "arret", "arrete", "arretez", "arreter"}
)
_AMBIGUOUS_STOP_WORDS = frozenset({"cancel", "end", "quit", "alto", "baja"})
_SHORT_MESSAGE_WORDS = 4
_VERB = r"(cancel|end|quit)"
_CANDIDATE_PHRASES = re.compile(
    r"\b("
    r"(don'?t|do not|never) (text|message|contact)"
    r"|remove me|take me off|opt(ed)? (me )?out|leave me alone"
    r"|wrong number|no more (texts|messages)|not interested"
    rf"|{_VERB} (it all|all|everything)|i quit|(want|wish|like|need) to {_VERB}"
    rf"|{_VERB} (texting|messaging|sending|contacting)"
    rf"|{_VERB} ((my|the|these|this|those|your|all|any) )*"
    r"(subscriptions?|texts?|messages?|alerts?|notifications?|sms|list|membership|service"
    r"|promotions?|offers?)"
    r"|de baja"
    r")\b"
)
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")


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
    if _reads_like_an_opt_out(_bare_words(text)):
        return Intent.REVOCATION_CANDIDATE
    return Intent.CONVERSATION


def _bare_words(text: str) -> list[str]:
    """The folded text's words without accents; an apostrophe inside a word stays."""
    decomposed = unicodedata.normalize("NFD", _fold(text))
    return _WORD.findall("".join(ch for ch in decomposed if not unicodedata.combining(ch)))


def _reads_like_an_opt_out(words: list[str]) -> bool:
    """Whether the words make a revocation candidate (see the module docstring)."""
    if not _STOP_WORDS.isdisjoint(words):
        return True
    if len(words) <= _SHORT_MESSAGE_WORDS and not _AMBIGUOUS_STOP_WORDS.isdisjoint(words):
        return True
    return _CANDIDATE_PHRASES.search(" ".join(words)) is not None
