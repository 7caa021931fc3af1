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
