"""Recall of the revocation reading on a labelled corpus of inbound replies.

tests/unit/corpus/replies.tsv holds replies written from public sources (each
group cites its own): revocations a reasonable person could read as a wish to
receive no more messages, and ordinary replies. Missing a revocation keeps
texting someone who asked to stop, so recall must stay at 99 % or more;
flagging an ordinary reply only delays a text until a person looks, so the
share flagged is reported and must stay under 15 %. Both figures are printed
in the test summary (tests/conftest.py).
"""

from __future__ import annotations

import itertools
from pathlib import Path

from ledger.keywords import HELP_KEYWORDS, OPT_IN_KEYWORDS, Intent, classify, normalise

CORPUS = Path(__file__).parent / "corpus" / "replies.tsv"
REVOKES = frozenset({Intent.OPT_OUT, Intent.OPT_OUT_BRAND_WIDE, Intent.REVOCATION_CANDIDATE})
MIN_RECALL = 0.99
MAX_FLAGGED = 0.15


def _corpus() -> list[tuple[str, str]]:
    rows = []
    for number, line in enumerate(CORPUS.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        label, _, text = line.partition("\t")
        assert label in {"R", "O"} and text, f"replies.tsv:{number}: want R|O<TAB>text"
        rows.append((label, text))
    return rows


ROWS = _corpus()
REVOCATIONS = [text for label, text in ROWS if label == "R"]
ORDINARY = [text for label, text in ROWS if label == "O"]


def test_the_corpus_is_big_enough_and_has_no_duplicates():
    assert len(REVOCATIONS) >= 280
    assert len(ORDINARY) >= 170
    texts = [text for _, text in ROWS]
    assert len(set(texts)) == len(texts), sorted({t for t in texts if texts.count(t) > 1})


def test_revocations_are_recalled_and_few_ordinary_replies_are_flagged(record_corpus_figures):
    missed = [text for text in REVOCATIONS if classify(text) not in REVOKES]
    flagged = [text for text in ORDINARY if classify(text) in REVOKES]
    recall = 1 - len(missed) / len(REVOCATIONS)
    flagged_share = len(flagged) / len(ORDINARY)
    record_corpus_figures(
        f"revocation corpus: recall {recall:.1%} "
        f"({len(REVOCATIONS) - len(missed)}/{len(REVOCATIONS)} revocations), "
        f"ordinary replies flagged {flagged_share:.1%} ({len(flagged)}/{len(ORDINARY)})"
    )
    assert recall >= MIN_RECALL, f"missed revocations: {missed}"
    assert flagged_share < MAX_FLAGGED, f"flagged ordinary replies: {flagged}"


def test_keywords_in_the_corpus_keep_their_keyword_reading():
    # HELP, START, YES and the like are ordinary replies the corpus must not
    # turn into candidates: they answer with their own intent.
    keywords = [text for text in ORDINARY if normalise(text) in HELP_KEYWORDS | OPT_IN_KEYWORDS]
    assert len(keywords) >= 8
    assert {classify(text) for text in keywords} <= {Intent.HELP, Intent.OPT_IN}


def _templated() -> list[str]:
    """Requests built from parts, every combination: the held-out check that the
    rules read structure, not the corpus's sentences."""
    texts = []
    negations = [
        "don't",
        "do not",
        "dont",
        "please don't",
        "pls dont",
        "never",
        "can you not",
        "could you please not",
        "I'd like you to not",
        "I don't want you to",
        "DO NOT",
        "please do not ever",
    ]
    verbs = [
        "text",
        "txt",
        "message",
        "msg",
        "contact",
        "call",
        "email",
        "e-mail",
        "write to",
        "reach out to",
        "sms",
        "ping",
    ]
    objects = ["me", "this number", "my phone", "us"]
    endings = ["", " again", " anymore", " please", ", thanks"]
    for n, v, o, e in itertools.product(negations, verbs, objects, endings):
        texts.append(f"{n} {v} {o}{e}")
    stoppers = [
        "stop",
        "quit",
        "please stop",
        "pls stop",
        "u need to stop",
        "can you stop",
        "cease",
    ]
    doing = [
        "texting",
        "txting",
        "messaging",
        "msging",
        "contacting",
        "calling",
        "emailing",
        "sending me texts",
        "sending me stuff",
        "bothering",
    ]
    for s, d, e in itertools.product(stoppers, doing, endings):
        texts.append(f"{s} {d}{'' if ' ' in d else ' me'}{e}")
    removers = ["remove", "delete", "erase", "take", "unsubscribe", "drop"]
    whom = ["me", "my number", "this number", "my info", "us"]
    where = ["from your list", "from the list", "from your database", "off your list", "off"]
    for p, r, w, x in itertools.product(
        ["", "please ", "can you ", "kindly "], removers, whom, where
    ):
        if r != "take" and x == "off":
            continue
        texts.append(f"{p}{r} {w} {x}")
    es_neg = [
        "no me",
        "ya no me",
        "nunca más me",
        "por favor no me",
        "no me vuelvan a",
        "favor de no",
    ]
    es_verbs = [
        "envíen",
        "envies",
        "manden",
        "mandes",
        "escriban",
        "escribas",
        "llamen",
        "contacten",
        "molesten",
        "enviar",
        "mandar",
        "escribir",
    ]
    es_objects = ["", " mensajes", " más mensajes", " más", " nada"]
    for n, v, o in itertools.product(es_neg, es_verbs, es_objects):
        texts.append(f"{n} {v}{o}")
    es_stop = ["dejen de", "deja de", "paren de", "que dejen de", "ya dejen de"]
    es_doing = [
        "escribirme",
        "mandarme mensajes",
        "enviarme mensajes",
        "llamarme",
        "molestarme",
        "contactarme",
    ]
    texts += [f"{s} {d}" for s, d in itertools.product(es_stop, es_doing)]
    return texts


def test_every_templated_combination_is_a_candidate(record_corpus_figures):
    texts = _templated()
    missed = [text for text in texts if classify(text) not in REVOKES]
    record_corpus_figures(
        f"templated requests: {len(texts) - len(missed)}/{len(texts)} read as revocations"
    )
    assert missed == []
